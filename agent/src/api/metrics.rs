//! `/metrics`: the agent's counters, gauges and histograms as OpenMetrics text, encoded by
//! `prometheus-client` (the same library and format as `ferry-bridge`).
//!
//! The live numbers stay where they are updated (lock-free atomics in [`Metrics`] and
//! `UplinkStats`, the two latency histograms, figures read from the store): each scrape builds a
//! small registry of constant values from them and encodes it, so nothing on the ingest path
//! changes for the exposition. Names, types and labels are the contract
//! (`tests/fixtures/metrics/agent.txt`); labels are low-cardinality by construction (reasons and
//! units from fixed lists, never device ids).
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::ops::Snapshot;
use super::ApiState;
use crate::metrics::{Metrics, REASONS};

/// One label, e.g. `reason="bad_crc"`.
type Label = [(&'static str, &'static str); 1];

/// A counter family with one label, from `(label value, count)` pairs.
fn by_label(key: &'static str, values: &[(&'static str, u64)]) -> Family<Label, Counter> {
    let f = Family::<Label, Counter>::default();
    for (v, n) in values {
        f.get_or_create(&[(key, *v)]).inc_by(*n);
    }
    f
}

/// The exposition for one scrape.
pub(super) fn render(s: &ApiState, snap: &Snapshot) -> String {
    let i = &s.inner;
    let m = &i.metrics;
    let u = &i.uplink;
    let c = |a: &AtomicU64| ConstCounter::new(a.load(Relaxed));
    let flag = |b: bool| ConstGauge::new(i64::from(b));
    let count = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
    let mut r = Registry::default();

    // Help texts end without a period: the encoder adds one.
    let counters = [
        (
            "ferry_frames_ok",
            "Frames decoded successfully",
            c(&m.frames_ok),
        ),
        (
            "ferry_frames_unexpected",
            "Valid frames a gateway should never receive",
            c(&m.frames_unexpected),
        ),
        (
            "ferry_samples_received",
            "Samples received (before dedup)",
            c(&m.samples_received),
        ),
        (
            "ferry_samples_committed",
            "Samples committed to the store",
            c(&m.samples_committed),
        ),
        (
            "ferry_samples_duplicate",
            "Retransmitted samples already stored",
            c(&m.samples_duplicate),
        ),
        (
            "ferry_samples_out_of_order",
            "Samples ignored after a lost frame (the device resends them)",
            c(&m.samples_out_of_order),
        ),
        (
            "ferry_samples_out_of_range",
            "Samples not stored because their time is out of range (acked, frame quarantined)",
            c(&m.samples_out_of_range),
        ),
        (
            "ferry_events_pruned_forwarded",
            "Forwarded events deleted by retention",
            c(&m.events_pruned_forwarded),
        ),
        (
            "ferry_quarantined",
            "Rejected frames written to quarantine",
            c(&m.quarantined),
        ),
        (
            "ferry_commits",
            "Store transactions committed",
            c(&m.commits),
        ),
        (
            "ferry_commit_failures",
            "Store transactions rolled back (nothing in them acked; a flush of acked samples from the log is retried)",
            c(&m.commit_failures),
        ),
        ("ferry_acks_sent", "Acks sent to devices", c(&m.acks_sent)),
        ("ferry_hellos", "Device Hellos answered", c(&m.hellos)),
        (
            "ferry_links_opened",
            "Device links opened",
            c(&m.links_total),
        ),
        (
            "ferry_uplink_connects",
            "Successful broker connects",
            c(&u.connects),
        ),
        (
            "ferry_uplink_disconnects",
            "Broker connection losses",
            c(&u.disconnects),
        ),
        (
            "ferry_uplink_messages_sent",
            "Messages written, including republished ones",
            c(&u.messages_sent),
        ),
        (
            "ferry_uplink_messages_republished",
            "Messages republished after a reconnect",
            c(&u.messages_republished),
        ),
        (
            "ferry_uplink_messages_acked",
            "Messages acked by the broker",
            c(&u.messages_acked),
        ),
        (
            "ferry_uplink_events_forwarded",
            "Events in messages the broker acked",
            c(&u.events_acked),
        ),
        (
            "ferry_uplink_events_replayed",
            "Stored events sent again by replays, in messages the broker acked",
            c(&u.events_replayed),
        ),
        (
            "ferry_uplink_messages_unrouted",
            "Messages with no subscriber (held and sent again)",
            c(&u.messages_unrouted),
        ),
        (
            "ferry_uplink_commands_refused_topic",
            "Commands on a topic naming no valid device (acked and dropped)",
            c(&u.commands_refused_topic),
        ),
    ];
    for (name, help, v) in counters {
        r.register(name, help, v);
    }

    let gauges = [
        (
            "ferry_links_open",
            "Device links open",
            count(m.links_open.load(Relaxed)),
        ),
        ("ferry_devices", "Devices known", count(snap.devices)),
        (
            "ferry_devices_online",
            "Devices online",
            count(snap.devices_online),
        ),
        (
            "ferry_db_used_bytes",
            "Bytes the database uses",
            count(snap.disk.db_used_bytes),
        ),
        (
            "ferry_disk_full",
            "1 while the disk refuses writes",
            flag(snap.store.disk_full),
        ),
        (
            "ferry_backpressure",
            "1 while max_db_size with backpressure refuses samples",
            flag(snap.store.backpressure),
        ),
        (
            "ferry_store_writable",
            "1 while the store accepts samples",
            flag(snap.store.writable),
        ),
        (
            "ferry_uplink_enabled",
            "1 when forwarding is configured",
            flag(i.forwarding_on),
        ),
        (
            "ferry_uplink_connected",
            "1 while connected to the broker",
            flag(u.connected.load(Relaxed)),
        ),
        (
            "ferry_uplink_backlog_events",
            "Events not yet forwarded (estimate)",
            ConstGauge::new(snap.uplink.backlog_events),
        ),
        (
            "ferry_api_streams_open",
            "Live API streams open",
            count((super::MAX_STREAMS - i.streams.available_permits()) as u64),
        ),
    ];
    for (name, help, v) in gauges {
        r.register(name, help, v);
    }
    if let Some(w) = snap.disk.written_bytes {
        r.register(
            "ferry_store_bytes_written",
            "Bytes the agent has written to storage since it started (database, WAL, sample log; the kernel's write_bytes)",
            ConstCounter::new(w),
        );
    }
    if let Some(max) = snap.disk.max_db_size {
        r.register("ferry_db_max_bytes", "store.max_db_size", count(max));
    }
    if let Some(free) = snap.disk.fs_free_bytes {
        r.register(
            "ferry_fs_free_bytes",
            "Free bytes on the database's filesystem",
            count(free),
        );
    }
    r.register(
        "ferry_uplink_lag_seconds",
        "Age of the oldest unforwarded event (0 when none)",
        ConstGauge::new(snap.uplink.oldest_unforwarded_age_s.unwrap_or(0.0)),
    );
    r.register(
        "ferry_uptime_seconds",
        "Seconds since the agent started",
        ConstGauge::new(i.started.elapsed().as_secs_f64()),
    );

    let rejected: Vec<(&'static str, u64)> = REASONS
        .iter()
        .zip(&m.frames_rejected)
        .map(|(r, n)| (*r, Metrics::get(n)))
        .collect();
    r.register(
        "ferry_frames_rejected",
        "Frames rejected, by reason",
        by_label("reason", &rejected),
    );
    r.register(
        "ferry_samples_dropped",
        "Samples or events lost to a full ring or full store, by reason",
        by_label(
            "reason",
            &[
                ("device_ring", Metrics::get(&m.samples_dropped_by_device)),
                ("refused", Metrics::get(&m.samples_refused)),
                ("drop_oldest", Metrics::get(&m.events_dropped_oldest)),
            ],
        ),
    );
    r.register(
        "ferry_uplink_quarantined",
        "Messages and events the broker refused, kept in quarantine",
        by_label(
            "unit",
            &[
                ("messages", u.messages_quarantined.load(Relaxed)),
                ("events", u.events_quarantined.load(Relaxed)),
            ],
        ),
    );

    r.register(
        "ferry_commit_duration_seconds",
        "Time from a batch's first statement to COMMIT returning",
        m.commit_time.clone(),
    );
    r.register(
        "ferry_ack_delay_seconds",
        "Time from reading a Samples frame off its link to writing the ack that covers it",
        m.ack_delay.clone(),
    );

    let mut o = String::with_capacity(8192);
    encode(&mut o, &r).expect("writing to a String");
    o
}
