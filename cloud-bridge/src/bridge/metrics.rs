//! Counters, health flags and per-gateway lag, rendered as Prometheus text without I/O.
//!
//! Every refused message increments `ferry_bridge_dead_letters_total{reason=...}`; every
//! duplicate the database ignored increments `ferry_bridge_duplicates_total`. The `gateway`
//! label is bounded: the first [`MAX_GATEWAY_LABELS`] gateways seen get their own series, the
//! rest are counted in `ferry_bridge_gateways_unlabelled` and folded into the `_max` series.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::inbound::ReasonClass;
use super::rows::{ms_since_epoch, GatewayProgress};

/// Most gateways with their own label values.
pub const MAX_GATEWAY_LABELS: usize = 200;

/// Upper bounds of the insert-latency histogram, seconds.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// The bridge's live numbers, shared by its tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    /// PUBLISH packets received.
    pub messages: AtomicU64,
    /// Events offered to the sink (valid batches only).
    pub events_received: AtomicU64,
    /// Events newly stored.
    pub events_inserted: AtomicU64,
    /// Events the database already had.
    pub duplicates: AtomicU64,
    /// Committed transactions (or flushed jsonl writes).
    pub batches: AtomicU64,
    /// Messages acknowledged to the broker.
    pub acks: AtomicU64,
    /// Acks withheld because the connection they belonged to was gone (the broker redelivers).
    pub acks_stale: AtomicU64,
    /// Failed commits (retried).
    pub commit_failures: AtomicU64,
    /// Batches retried with ON CONFLICT after another writer committed some of their rows.
    pub conflict_retries: AtomicU64,
    /// MQTT connections lost.
    pub mqtt_reconnects: AtomicU64,
    /// Whether the MQTT session is up and subscribed.
    pub mqtt_up: AtomicBool,
    /// Whether the sink is usable (always true for jsonl).
    pub db_up: AtomicBool,
    /// Whether a database is in use at all.
    pub db_used: AtomicBool,
    dead: [AtomicU64; ReasonClass::ALL.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    gateways: Mutex<Gateways>,
}

#[derive(Debug, Default)]
struct Gateways {
    labelled: BTreeMap<String, GatewayProgress>,
    /// Newest event and last receive over gateways without a label.
    others: Option<GatewayProgress>,
    unlabelled: u64,
    /// Gateways known to be unlabelled (bounded by the same cap, for counting only).
    seen_unlabelled: std::collections::HashSet<String>,
}

/// What `/healthz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// MQTT session up and subscribed.
    pub mqtt: bool,
    /// Database reachable (`None` when the sink is not PostgreSQL).
    pub database: Option<bool>,
}

impl Health {
    /// Whether everything in use is up.
    pub fn ok(&self) -> bool {
        self.mqtt && self.database.unwrap_or(true)
    }

    /// The JSON body.
    pub fn to_json(self) -> String {
        let up = |b: bool| if b { "up" } else { "down" };
        serde_json::json!({
            "status": if self.ok() { "ok" } else { "unavailable" },
            "mqtt": up(self.mqtt),
            "database": self.database.map_or("not used", up),
        })
        .to_string()
    }
}

impl Metrics {
    /// Counts a dead letter.
    pub fn dead_letter(&self, class: ReasonClass) {
        let i = ReasonClass::ALL
            .iter()
            .position(|c| *c == class)
            .expect("listed");
        self.dead[i].fetch_add(1, Relaxed);
    }

    /// Dead letters of `class` so far.
    pub fn dead_letters(&self, class: ReasonClass) -> u64 {
        let i = ReasonClass::ALL
            .iter()
            .position(|c| *c == class)
            .expect("listed");
        self.dead[i].load(Relaxed)
    }

    /// Records how long one commit took.
    pub fn insert_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *le {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Records a committed gateway's progress.
    pub fn gateway_progress(&self, gateway: &str, p: GatewayProgress) {
        let mut g = self.gateways.lock().expect("metrics lock");
        let merge = |old: &mut GatewayProgress| {
            old.newest_event_ms = old.newest_event_ms.max(p.newest_event_ms);
            old.last_received_at = old.last_received_at.max(p.last_received_at);
        };
        if let Some(old) = g.labelled.get_mut(gateway) {
            merge(old);
        } else if g.labelled.len() < MAX_GATEWAY_LABELS {
            g.labelled.insert(gateway.to_owned(), p);
        } else {
            if g.seen_unlabelled.len() < MAX_GATEWAY_LABELS * 50
                && g.seen_unlabelled.insert(gateway.to_owned())
            {
                g.unlabelled += 1;
            }
            match &mut g.others {
                Some(o) => merge(o),
                None => g.others = Some(p),
            }
        }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        Health {
            mqtt: self.mqtt_up.load(Relaxed),
            database: self.db_used.load(Relaxed).then(|| self.db_up.load(Relaxed)),
        }
    }

    /// Prometheus text exposition at `now`.
    pub fn render(&self, now: SystemTime) -> String {
        let mut o = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(o, "{name} {}", v.load(Relaxed));
        };
        counter(
            "ferry_bridge_messages_total",
            "MQTT messages received.",
            &self.messages,
        );
        counter(
            "ferry_bridge_events_received_total",
            "Events in valid messages received.",
            &self.events_received,
        );
        counter(
            "ferry_bridge_events_inserted_total",
            "Events newly stored.",
            &self.events_inserted,
        );
        counter(
            "ferry_bridge_duplicates_total",
            "Events already stored (redeliveries, resends), ignored.",
            &self.duplicates,
        );
        counter(
            "ferry_bridge_batches_total",
            "Committed transactions (jsonl: flushed writes).",
            &self.batches,
        );
        counter(
            "ferry_bridge_acks_total",
            "Messages acknowledged to the broker after their commit.",
            &self.acks,
        );
        counter(
            "ferry_bridge_acks_withheld_total",
            "Committed messages not acked because their connection was gone (redelivered).",
            &self.acks_stale,
        );
        counter(
            "ferry_bridge_commit_failures_total",
            "Failed commits, retried.",
            &self.commit_failures,
        );
        counter(
            "ferry_bridge_conflict_retries_total",
            "Batches retried with ON CONFLICT DO NOTHING after a concurrent writer stored some rows.",
            &self.conflict_retries,
        );
        counter(
            "ferry_bridge_mqtt_connection_lost_total",
            "MQTT connections lost.",
            &self.mqtt_reconnects,
        );
        let _ = writeln!(
            o,
            "# HELP ferry_bridge_dead_letters_total Messages refused, by reason class.\n\
             # TYPE ferry_bridge_dead_letters_total counter"
        );
        for (i, c) in ReasonClass::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "ferry_bridge_dead_letters_total{{reason=\"{}\"}} {}",
                c.label(),
                self.dead[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP ferry_bridge_insert_seconds Time to commit one batch.\n\
             # TYPE ferry_bridge_insert_seconds histogram"
        );
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            let _ = writeln!(
                o,
                "ferry_bridge_insert_seconds_bucket{{le=\"{le}\"}} {}",
                self.latency_buckets[i].load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            o,
            "ferry_bridge_insert_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             ferry_bridge_insert_seconds_sum {}\n\
             ferry_bridge_insert_seconds_count {count}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let h = self.health();
        let _ = writeln!(
            o,
            "# HELP ferry_bridge_up Whether a connection is up (mqtt, database).\n\
             # TYPE ferry_bridge_up gauge\n\
             ferry_bridge_up{{link=\"mqtt\"}} {}",
            u8::from(h.mqtt)
        );
        if let Some(db) = h.database {
            let _ = writeln!(o, "ferry_bridge_up{{link=\"database\"}} {}", u8::from(db));
        }
        self.render_gateways(&mut o, now);
        o
    }

    fn render_gateways(&self, o: &mut String, now: SystemTime) {
        let g = self.gateways.lock().expect("metrics lock");
        let now_ms = ms_since_epoch(now);
        let lag = |p: &GatewayProgress| (now_ms - p.newest_event_ms) as f64 / 1e3;
        let age = |p: &GatewayProgress| {
            now.duration_since(p.last_received_at)
                .unwrap_or_default()
                .as_secs_f64()
        };
        let _ = writeln!(
            o,
            "# HELP ferry_bridge_gateway_lag_seconds Now minus the newest event time stored for the gateway.\n\
             # TYPE ferry_bridge_gateway_lag_seconds gauge"
        );
        for (name, p) in &g.labelled {
            let _ = writeln!(
                o,
                "ferry_bridge_gateway_lag_seconds{{gateway=\"{}\"}} {:.3}",
                escape_label(name),
                lag(p)
            );
        }
        let _ = writeln!(
            o,
            "# HELP ferry_bridge_gateway_last_message_age_seconds Time since the gateway's last stored message.\n\
             # TYPE ferry_bridge_gateway_last_message_age_seconds gauge"
        );
        for (name, p) in &g.labelled {
            let _ = writeln!(
                o,
                "ferry_bridge_gateway_last_message_age_seconds{{gateway=\"{}\"}} {:.3}",
                escape_label(name),
                age(p)
            );
        }
        let all = g.labelled.values().chain(g.others.iter());
        let max_lag = all
            .clone()
            .map(lag)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let max_age = all
            .map(age)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let _ = writeln!(
            o,
            "# HELP ferry_bridge_gateway_lag_max_seconds Largest gateway lag, over every gateway.\n\
             # TYPE ferry_bridge_gateway_lag_max_seconds gauge\n\
             ferry_bridge_gateway_lag_max_seconds {:.3}\n\
             # HELP ferry_bridge_gateway_last_message_age_max_seconds Largest last-message age, over every gateway.\n\
             # TYPE ferry_bridge_gateway_last_message_age_max_seconds gauge\n\
             ferry_bridge_gateway_last_message_age_max_seconds {:.3}\n\
             # HELP ferry_bridge_gateways_unlabelled Gateways beyond the label limit ({MAX_GATEWAY_LABELS}).\n\
             # TYPE ferry_bridge_gateways_unlabelled gauge\n\
             ferry_bridge_gateways_unlabelled {}",
            max_lag.unwrap_or(0.0),
            max_age.unwrap_or(0.0),
            g.unlabelled
        );
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn renders_counters_histogram_and_lag() {
        let m = Metrics::default();
        m.messages.fetch_add(3, Relaxed);
        m.events_inserted.fetch_add(250, Relaxed);
        m.duplicates.fetch_add(50, Relaxed);
        m.dead_letter(ReasonClass::Malformed);
        m.dead_letter(ReasonClass::Malformed);
        m.dead_letter(ReasonClass::TopicMismatch);
        m.insert_latency(Duration::from_millis(3));
        m.insert_latency(Duration::from_millis(30));
        m.gateway_progress(
            "gw\"1",
            GatewayProgress {
                newest_event_ms: 10_000,
                last_received_at: at(11_000),
            },
        );
        m.gateway_progress(
            "gw\"1",
            GatewayProgress {
                newest_event_ms: 9_000,
                last_received_at: at(12_000),
            },
        );
        m.mqtt_up.store(true, Relaxed);
        let text = m.render(at(15_000));
        for line in [
            "ferry_bridge_messages_total 3",
            "ferry_bridge_events_inserted_total 250",
            "ferry_bridge_duplicates_total 50",
            "ferry_bridge_dead_letters_total{reason=\"malformed\"} 2",
            "ferry_bridge_dead_letters_total{reason=\"topic_mismatch\"} 1",
            "ferry_bridge_dead_letters_total{reason=\"version\"} 0",
            "ferry_bridge_insert_seconds_bucket{le=\"0.002\"} 0",
            "ferry_bridge_insert_seconds_bucket{le=\"0.005\"} 1",
            "ferry_bridge_insert_seconds_bucket{le=\"0.05\"} 2",
            "ferry_bridge_insert_seconds_bucket{le=\"+Inf\"} 2",
            "ferry_bridge_insert_seconds_sum 0.033",
            "ferry_bridge_insert_seconds_count 2",
            "ferry_bridge_gateway_lag_seconds{gateway=\"gw\\\"1\"} 5.000",
            "ferry_bridge_gateway_last_message_age_seconds{gateway=\"gw\\\"1\"} 3.000",
            "ferry_bridge_gateway_lag_max_seconds 5.000",
            "ferry_bridge_up{link=\"mqtt\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("link=\"database\""), "jsonl has no database");
    }

    #[test]
    fn gateway_labels_are_bounded() {
        let m = Metrics::default();
        for i in 0..MAX_GATEWAY_LABELS + 10 {
            m.gateway_progress(
                &format!("gw-{i}"),
                GatewayProgress {
                    newest_event_ms: i as i64,
                    last_received_at: at(0),
                },
            );
        }
        let text = m.render(at(1_000_000));
        let labelled = text
            .lines()
            .filter(|l| l.starts_with("ferry_bridge_gateway_lag_seconds{"))
            .count();
        assert_eq!(labelled, MAX_GATEWAY_LABELS);
        assert!(text.contains("ferry_bridge_gateways_unlabelled 10"));
        // The oldest data (gateway 0, ts 0) sets the max even among the labelled.
        assert!(text.contains("ferry_bridge_gateway_lag_max_seconds 1000.000"));
    }

    #[test]
    fn health_names_what_is_down() {
        let m = Metrics::default();
        m.db_used.store(true, Relaxed);
        m.mqtt_up.store(true, Relaxed);
        let h = m.health();
        assert!(!h.ok());
        let v: serde_json::Value = serde_json::from_str(&h.to_json()).unwrap();
        assert_eq!(v["status"], "unavailable");
        assert_eq!(v["mqtt"], "up");
        assert_eq!(v["database"], "down");
        m.db_up.store(true, Relaxed);
        assert!(m.health().ok());
        m.db_used.store(false, Relaxed);
        m.db_up.store(false, Relaxed);
        assert_eq!(m.health().database, None);
        assert!(m.health().ok());
    }
}
