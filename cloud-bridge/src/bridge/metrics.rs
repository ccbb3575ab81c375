//! Counters, health flags and per-gateway lag, exposed as OpenMetrics text by `prometheus-client`
//! without I/O.
//!
//! Every refused message increments `ferry_bridge_dead_letters_total{reason=...}`; every
//! duplicate the database ignored increments `ferry_bridge_duplicates_total`. The `gateway`
//! label is bounded: the first [`MAX_GATEWAY_LABELS`] gateways seen get their own series, the
//! rest are counted in `ferry_bridge_gateways_unlabelled` and folded into the `_max` series.
//!
//! Counters and the histogram are updated where things happen (an atomic add; the histogram
//! takes a short lock once per commit). Gauges that depend on the time (lag, age) or on health
//! flags are set from the current state at each scrape, in [`Metrics::render`].
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::inbound::ReasonClass;
use super::rows::{ms_since_epoch, GatewayProgress};

/// Most gateways with their own label values.
pub const MAX_GATEWAY_LABELS: usize = 200;

/// Upper bounds of the insert-latency histogram, seconds.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// One label, e.g. `reason="malformed"`.
type Label = [(&'static str, String); 1];
/// A gauge holding seconds.
type Seconds = Gauge<f64, AtomicU64>;

/// The bridge's live numbers, shared by its tasks.
#[derive(Debug)]
pub struct Metrics {
    /// PUBLISH packets received.
    pub messages: Counter,
    /// Events offered to the sink (valid batches only).
    pub events_received: Counter,
    /// Events newly stored.
    pub events_inserted: Counter,
    /// Events the database already had.
    pub duplicates: Counter,
    /// Committed transactions (or flushed jsonl writes).
    pub batches: Counter,
    /// Messages acknowledged to the broker.
    pub acks: Counter,
    /// Acks withheld because the connection they belonged to was gone (the broker redelivers).
    pub acks_stale: Counter,
    /// Failed commits (retried).
    pub commit_failures: Counter,
    /// Batches retried with ON CONFLICT after another writer committed some of their rows.
    pub conflict_retries: Counter,
    /// MQTT connections lost.
    pub mqtt_reconnects: Counter,
    /// Whether the MQTT session is up and subscribed.
    pub mqtt_up: AtomicBool,
    /// Whether the sink is usable (always true for jsonl).
    pub db_up: AtomicBool,
    /// Whether a database is in use at all.
    pub db_used: AtomicBool,
    dead: Family<Label, Counter>,
    insert_seconds: Histogram,
    up: Family<Label, Gauge>,
    lag: Family<Label, Seconds>,
    age: Family<Label, Seconds>,
    lag_max: Seconds,
    age_max: Seconds,
    unlabelled: Gauge,
    gateways: Mutex<Gateways>,
    registry: Registry,
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under its exposed name (`prometheus-client` appends
    /// `_total` to counters, and a period to each help text).
    pub fn new() -> Metrics {
        let m = Metrics {
            messages: Counter::default(),
            events_received: Counter::default(),
            events_inserted: Counter::default(),
            duplicates: Counter::default(),
            batches: Counter::default(),
            acks: Counter::default(),
            acks_stale: Counter::default(),
            commit_failures: Counter::default(),
            conflict_retries: Counter::default(),
            mqtt_reconnects: Counter::default(),
            mqtt_up: AtomicBool::new(false),
            db_up: AtomicBool::new(false),
            db_used: AtomicBool::new(false),
            dead: Family::default(),
            insert_seconds: Histogram::new(LATENCY_BUCKETS_S),
            up: Family::default(),
            lag: Family::default(),
            age: Family::default(),
            lag_max: Seconds::default(),
            age_max: Seconds::default(),
            unlabelled: Gauge::default(),
            gateways: Mutex::default(),
            registry: Registry::default(),
        };
        // Every reason is exposed from the start (at 0), so alerts can use rate() at once.
        for c in ReasonClass::ALL {
            let _ = m.dead.get_or_create(&[("reason", c.label().to_owned())]);
        }
        let mut r = Registry::default();
        let counters: [(&str, &str, &Counter); 10] = [
            ("ferry_bridge_messages", "MQTT messages received", &m.messages),
            ("ferry_bridge_events_received", "Events in valid messages received", &m.events_received),
            ("ferry_bridge_events_inserted", "Events newly stored", &m.events_inserted),
            ("ferry_bridge_duplicates", "Events already stored (redeliveries, resends), ignored", &m.duplicates),
            ("ferry_bridge_batches", "Committed transactions (jsonl: flushed writes)", &m.batches),
            ("ferry_bridge_acks", "Messages acknowledged to the broker after their commit", &m.acks),
            ("ferry_bridge_acks_withheld", "Committed messages not acked because their connection was gone (redelivered)", &m.acks_stale),
            ("ferry_bridge_commit_failures", "Failed commits, retried", &m.commit_failures),
            ("ferry_bridge_conflict_retries", "Batches retried with ON CONFLICT DO NOTHING after a concurrent writer stored some rows", &m.conflict_retries),
            ("ferry_bridge_mqtt_connection_lost", "MQTT connections lost", &m.mqtt_reconnects),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        register_the_rest(&mut r, &m);
        Metrics { registry: r, ..m }
    }

    /// Counts a dead letter.
    pub fn dead_letter(&self, class: ReasonClass) {
        self.dead
            .get_or_create(&[("reason", class.label().to_owned())])
            .inc();
    }

    /// Dead letters of `class` so far.
    pub fn dead_letters(&self, class: ReasonClass) -> u64 {
        self.dead
            .get_or_create(&[("reason", class.label().to_owned())])
            .get()
    }

    /// Records how long one commit took.
    pub fn insert_latency(&self, d: Duration) {
        self.insert_seconds.observe(d.as_secs_f64());
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

    /// The OpenMetrics text exposition at `now`.
    pub fn render(&self, now: SystemTime) -> String {
        let h = self.health();
        self.up.clear();
        self.up
            .get_or_create(&[("link", "mqtt".to_owned())])
            .set(i64::from(h.mqtt));
        if let Some(db) = h.database {
            self.up
                .get_or_create(&[("link", "database".to_owned())])
                .set(i64::from(db));
        }
        self.set_gateways(now);
        let mut o = String::with_capacity(4096);
        encode(&mut o, &self.registry).expect("writing to a String");
        o
    }

    fn set_gateways(&self, now: SystemTime) {
        let g = self.gateways.lock().expect("metrics lock");
        let now_ms = ms_since_epoch(now);
        let lag = |p: &GatewayProgress| (now_ms - p.newest_event_ms) as f64 / 1e3;
        let age = |p: &GatewayProgress| {
            now.duration_since(p.last_received_at)
                .unwrap_or_default()
                .as_secs_f64()
        };
        for (name, p) in &g.labelled {
            let label = [("gateway", escape_label(name))];
            self.lag.get_or_create(&label).set(lag(p));
            self.age.get_or_create(&label).set(age(p));
        }
        let all = g.labelled.values().chain(g.others.iter());
        let max = |f: &dyn Fn(&GatewayProgress) -> f64| {
            all.clone()
                .map(f)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
                .unwrap_or(0.0)
        };
        self.lag_max.set(max(&lag));
        self.age_max.set(max(&age));
        self.unlabelled.set(g.unlabelled as i64);
    }
}

/// The metrics other than the plain counters, one line each.
#[rustfmt::skip]
fn register_the_rest(r: &mut Registry, m: &Metrics) {
    r.register("ferry_bridge_dead_letters", "Messages refused, by reason class", m.dead.clone());
    r.register("ferry_bridge_insert_seconds", "Time to commit one batch", m.insert_seconds.clone());
    r.register("ferry_bridge_up", "Whether a connection is up (mqtt, database)", m.up.clone());
    r.register("ferry_bridge_gateway_lag_seconds", "Now minus the newest event time stored for the gateway", m.lag.clone());
    r.register("ferry_bridge_gateway_last_message_age_seconds", "Time since the gateway's last stored message", m.age.clone());
    r.register("ferry_bridge_gateway_lag_max_seconds", "Largest gateway lag, over every gateway", m.lag_max.clone());
    r.register("ferry_bridge_gateway_last_message_age_max_seconds", "Largest last-message age, over every gateway", m.age_max.clone());
    r.register("ferry_bridge_gateways_unlabelled", format!("Gateways beyond the label limit ({MAX_GATEWAY_LABELS})"), m.unlabelled.clone());
}

/// Escapes a label value (backslash, quote, newline): `prometheus-client` 0.24 writes label
/// values as given, and a gateway id may hold any of these.
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
        m.messages.inc_by(3);
        m.events_inserted.inc_by(250);
        m.duplicates.inc_by(50);
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
            "ferry_bridge_gateway_lag_seconds{gateway=\"gw\\\"1\"} 5.0",
            "ferry_bridge_gateway_last_message_age_seconds{gateway=\"gw\\\"1\"} 3.0",
            "ferry_bridge_gateway_lag_max_seconds 5.0",
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
        assert!(text.contains("ferry_bridge_gateway_lag_max_seconds 1000.0"));
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
