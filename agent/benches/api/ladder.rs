//! The capacity ladder: the highest offered ingest rate each API load sustains.

use std::collections::BTreeMap;

use crate::ingest::{ingest_run, Load, INGEST_SENSORS};
use crate::report::print_ingest;
use crate::Cfg;

/// Attempts per ladder step and variant; the step is sustained if any attempt is.
pub const LADDER_ATTEMPTS: usize = 2;

/// The highest offered rate each variant sustains (every sample committed and acked, none evicted
/// from a device ring, and for API variants every request answered 2xx at >= 99 % of the paced
/// rate), climbing `cfg.ladder` (device counts; 10 sensors at 1 kHz each) in `cfg.ingest_runs`
/// rounds. At each step the variants still climbing run in turn, so a noisy stretch of the machine
/// hits all of them; a step gets [`LADDER_ATTEMPTS`] tries, and a variant stops at its first step
/// that no attempt sustained.
/// Returns the summary lines: per round, then the median over rounds against no API load.
pub async fn capacity_ladder(cfg: &Cfg) -> Vec<String> {
    let variants = [Load::None, Load::Mix, Load::NoSeries, Load::LatestOnly];
    let mut best: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut out = vec![format!(
        "\n== capacity ladder: highest offered samples/s sustained (steps {:?} x 10,000/s, {} s each) ==",
        cfg.ladder, cfg.ingest_secs
    )];
    for round in 1..=cfg.ingest_runs {
        let mut climbing: Vec<Load> = variants.to_vec();
        let mut reached: BTreeMap<&str, usize> = BTreeMap::new();
        for &devices in &cfg.ladder {
            for load in climbing.clone() {
                // A step counts when either of two attempts sustains it: one disk stall of a
                // few hundred ms (this VM has them, minutes apart) fails a run by itself.
                let mut sustained = false;
                for attempt in 1..=LADDER_ATTEMPTS {
                    let retry = if attempt > 1 { " retry" } else { "" };
                    let label = format!("{} {}k #{round}{retry}", load.label(), devices * 10);
                    println!("ladder run: {label} ...");
                    let row = ingest_run(label, load, cfg.ingest_secs, devices).await;
                    print_ingest("ladder run", std::slice::from_ref(&row));
                    if row.sustained {
                        sustained = true;
                        break;
                    }
                }
                if sustained {
                    reached.insert(load.label(), devices * INGEST_SENSORS * 1000);
                } else {
                    climbing.retain(|l| *l != load);
                }
            }
            if climbing.is_empty() {
                break;
            }
        }
        let line: Vec<String> = variants
            .iter()
            .map(|l| {
                format!(
                    "{} {}",
                    l.label(),
                    reached.get(l.label()).copied().unwrap_or(0)
                )
            })
            .collect();
        out.push(format!("round {round}: {}", line.join(", ")));
        for l in variants {
            best.entry(l.label())
                .or_default()
                .push(reached.get(l.label()).copied().unwrap_or(0));
        }
    }
    let median = |v: &Vec<usize>| {
        let mut v = v.clone();
        v.sort_unstable();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2] as f64
        } else {
            (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
        }
    };
    let base = median(&best[Load::None.label()]);
    out.push(format!(
        "ingest capacity, no API load: median {base:.0} samples/s sustained"
    ));
    for l in variants.into_iter().filter(|l| *l != Load::None) {
        let m = median(&best[l.label()]);
        let drop = 100.0 * (base - m) / base.max(1.0);
        out.push(format!(
            "ingest capacity, {}: median {m:.0} samples/s sustained, {drop:.1} % below (target <= 10 %: {})",
            l.describe(),
            if drop <= 10.0 { "met" } else { "NOT met" }
        ));
    }
    out
}
