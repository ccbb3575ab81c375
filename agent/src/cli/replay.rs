//! `ferry replay`: sends a stored range to the cloud again through the agent's local API, with a
//! progress bar until the broker acked every event of it.

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{ApiClient, CliError};
use crate::uplink::replay::{InstantArg, ReplayRequest, ReplayState, ReplayView};

/// Progress polling period.
const POLL: Duration = Duration::from_millis(250);
/// Without a terminal, a progress line at most this often.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// One line for a replay.
pub fn describe(v: &ReplayView) -> String {
    let what = v.device.as_deref().unwrap_or("every device");
    let mut s = format!(
        "replay {}: {} — {} from {} to {}: {} of {} events acked by the broker",
        v.id,
        match v.state {
            ReplayState::Running => "running",
            ReplayState::Done => "done",
            ReplayState::Failed => "failed",
            ReplayState::Cancelled => "cancelled",
        },
        what,
        v.since,
        v.until,
        v.events_acked,
        v.events_total
    );
    if v.events_skipped > 0 {
        s.push_str(&format!(
            ", {} skipped (the contract refuses them; see the quarantine)",
            v.events_skipped
        ));
    }
    if let Some(e) = &v.error {
        s.push_str(&format!("; error: {e}"));
    }
    s
}

/// Starts a replay and, unless `detach`, follows it to its end. Ok(true) when it is done.
pub async fn replay(
    c: &ApiClient,
    since: &str,
    until: Option<&str>,
    device: Option<String>,
    detach: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<bool, CliError> {
    let req = ReplayRequest {
        since: InstantArg::Text(since.to_owned()),
        until: until.map(|u| InstantArg::Text(u.to_owned())),
        device,
    };
    let body = serde_json::to_vec(&req).expect("request serializes");
    let started: ReplayView = c
        .post(
            &["api", "v1", "replays"],
            body,
            "application/json",
            Duration::from_secs(60),
        )
        .await?;
    let id = started.id.to_string();
    if detach {
        write_view(&started, json, out)?;
        return Ok(true);
    }
    if !json {
        writeln!(
            out,
            "replay {id}: {} events of {} from {} to {}; Ctrl-C stops watching, not the replay (ferry replay --status {id}, --cancel {id})",
            started.events_total,
            started.device.as_deref().unwrap_or("every device"),
            started.since,
            started.until
        )?;
        out.flush()?;
    }
    let bar = ProgressBar::with_draw_target(
        Some(started.events_total),
        ProgressDrawTarget::stderr_with_hz(8),
    );
    bar.set_style(
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} events acked ({per_sec}, {eta} left)")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut last_line = std::time::Instant::now();
    let last = loop {
        let v: ReplayView = c.get(&["api", "v1", "replays", &id], &[]).await?;
        bar.set_position(v.events_acked);
        if bar.is_hidden() && !json && last_line.elapsed() >= LINE_EVERY {
            writeln!(out, "{}", describe(&v))?;
            out.flush()?;
            last_line = std::time::Instant::now();
        }
        if v.state != ReplayState::Running {
            break v;
        }
        tokio::time::sleep(POLL).await;
    };
    bar.finish_and_clear();
    write_view(&last, json, out)?;
    Ok(last.state == ReplayState::Done)
}

/// Shows replay `id`, or the recent ones.
pub async fn status(
    c: &ApiClient,
    id: Option<u64>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let views: Vec<ReplayView> = c
        .one_or_list(
            &["api", "v1", "replays"],
            id.map(|i| i.to_string()),
            "replays",
        )
        .await?;
    super::client::write_views(
        out,
        json,
        &views,
        "no replays since the agent started",
        |v, out| Ok(writeln!(out, "{}", describe(v))?),
    )
}

/// Cancels replay `id`; Ok(true) once it no longer runs.
pub async fn cancel(
    c: &ApiClient,
    id: u64,
    json: bool,
    out: &mut impl Write,
) -> Result<bool, CliError> {
    let v: ReplayView = c
        .post(
            &["api", "v1", "replays", &id.to_string(), "cancel"],
            Vec::new(),
            "application/json",
            Duration::from_secs(10),
        )
        .await?;
    write_view(&v, json, out)?;
    Ok(v.state != ReplayState::Running)
}

fn write_view(v: &ReplayView, json: bool, out: &mut impl Write) -> Result<(), CliError> {
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_default()
        )?;
    } else {
        writeln!(out, "{}", describe(v))?;
    }
    out.flush()?;
    Ok(())
}
