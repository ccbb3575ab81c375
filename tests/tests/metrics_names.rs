//! `/metrics` names and label sets of the agent and the bridge are an external contract: dashboards
//! and alerts are written against them. This test runs both services with traffic flowing
//! (simulated devices → `ferry` → mosquitto → `ferry-bridge` → PostgreSQL), scrapes both, and
//! compares every metric family's name and type and every series' name with its label *keys*
//! against `tests/fixtures/metrics/{agent,bridge}.txt`, which were captured from the code before
//! the metrics moved to `prometheus-client` (issue 14). `FERRY_WRITE_METRICS_FIXTURES=1` rewrites
//! the fixtures instead (only when a metric is added or renamed on purpose, with the docs).
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use ferry_tests::agent::AgentProc;
use ferry_tests::bridge::{ferry_bridge_bin, http_get, BridgeProcess};
use ferry_tests::free_port;
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::postgres::{Postgres, PostgresOptions};
use tokio_util::sync::CancellationToken;

/// The shape of an exposition: `family <name> <type>` for each `# TYPE` line and
/// `series <name>{<sorted label keys>}` for each sample line. Values and label values are left
/// out: they depend on timing and on device ids. A counter family is named as in the Prometheus
/// text format (`foo_total`) whether the exposition is that format or OpenMetrics (whose `# TYPE`
/// line names the family `foo` and whose samples are `foo_total`): the series a query names are
/// the same either way.
fn shape(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = match rest.split_once(' ') {
                Some((name, "counter")) if !name.ends_with("_total") => {
                    format!("{name}_total counter")
                }
                _ => rest.to_owned(),
            };
            out.insert(format!("family {family}"));
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, keys) = match series.split_once('{') {
            Some((name, labels)) => {
                let mut keys: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim()))
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                (name, keys.join(","))
            }
            None => (series, String::new()),
        };
        out.insert(format!("series {name}{{{keys}}}"));
    }
    out
}

fn compare(which: &str, exposition: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/metrics")
        .join(format!("{which}.txt"));
    let now = shape(exposition);
    if std::env::var_os("FERRY_WRITE_METRICS_FIXTURES").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut text = String::new();
        for l in &now {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        return;
    }
    let before: BTreeSet<String> = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect();
    let gone: Vec<_> = before.difference(&now).collect();
    let new: Vec<_> = now.difference(&before).collect();
    assert!(
        gone.is_empty() && new.is_empty(),
        "{which} /metrics changed shape\n  gone: {gone:#?}\n  new: {new:#?}\n--- exposition ---\n{exposition}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn agent_and_bridge_metrics_keep_their_names_and_labels() {
    let broker = Mosquitto::start(MosquittoOptions::default());
    let pg = Postgres::start(PostgresOptions::default());
    ferry_bridge_bin().expect("build ferry-bridge");
    let bridge = BridgeProcess::start_healthy(&broker.addr(), "bridge-names", &pg.conn_str(), 20)
        .await
        .expect("start ferry-bridge");

    let dir = std::env::temp_dir().join(format!("ferry-metric-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (tcp, api) = (free_port(), free_port());
    let mut agent = AgentProc::new(
        &dir,
        &format!(
            "[api]\nlisten = \"127.0.0.1:{api}\"\n[gateway]\nid = \"gw-names\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:{tcp}\"\n\
             [uplink]\nbroker = \"127.0.0.1:{}\"\n",
            dir.join("ferry.db").display().to_string(),
            broker.port()
        ),
        Some(tcp),
    );
    agent.start().await;
    let sim = ferry_sim::SimConfig::tcp(format!("127.0.0.1:{tcp}").parse().unwrap(), 2, 2, 10)
        .for_secs(2);
    let report = ferry_sim::run(sim, CancellationToken::new()).await;
    assert!(report.devices.iter().all(|d| !d.boots.is_empty()));
    bridge
        .wait_acked(1, Duration::from_secs(30))
        .await
        .expect("the bridge received a batch");

    let (status, agent_metrics) = http_get(([127, 0, 0, 1], api).into(), "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, bridge_metrics) = bridge.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    compare("agent", &agent_metrics);
    compare("bridge", &bridge_metrics);

    agent.terminate().await;
    let _ = bridge.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
}
