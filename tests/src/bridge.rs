//! The real `ferry-bridge` binary as a child process, a QoS 1 test publisher, and helpers to
//! make batches and check what landed.
//!
//! Finding the binary: `CARGO_BIN_EXE_*` exists only inside the bridge's own package, and
//! cargo does not build a dependency's binaries. So [`ferry_bridge_bin`] runs
//! `cargo build -p ferry-cloud-bridge --bin ferry-bridge` once per test process, with the
//! profile and target dir of the running test executable (`<target>/<profile>/deps/<exe>`), and
//! returns `<target>/<profile>/ferry-bridge`. The library is already built for the test, so this
//! only compiles and links the binary's own crate.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_contract::{events_topic, Compression, Encoding, Event, EventBatch, SCHEMA_VERSION};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::{free_port, try_poll_until};

/// Builds (once per test process) and returns the `ferry-bridge` binary.
pub fn ferry_bridge_bin() -> anyhow::Result<PathBuf> {
    crate::workspace_bin("ferry-cloud-bridge", "ferry-bridge")
}

/// A running `ferry-bridge`.
pub struct BridgeProcess {
    child: Child,
    /// Where `/metrics` and `/healthz` are.
    pub listen: SocketAddr,
    logs: Arc<Mutex<String>>,
    stdout: Option<ChildStdout>,
}

impl BridgeProcess {
    /// Starts the binary with `args` plus `--listen 127.0.0.1:<free port>`; stdout is piped
    /// (see [`take_stdout`](Self::take_stdout)), stderr is kept for [`logs`](Self::logs).
    pub async fn start(args: &[String]) -> anyhow::Result<BridgeProcess> {
        Self::start_with_env(args, &[]).await
    }

    /// [`start`](Self::start) with extra environment variables for the child.
    pub async fn start_with_env(
        args: &[String],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<BridgeProcess> {
        let bin = ferry_bridge_bin()?;
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = Command::new(bin)
            .args(args)
            .arg("--listen")
            .arg(listen.to_string())
            .env("RUST_LOG", "info,ferry_cloud_bridge=debug")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning ferry-bridge")?;
        let logs = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let sink = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let mut s = sink.lock().expect("log lock");
                s.push_str(&l);
                s.push('\n');
            }
        });
        let stdout = child.stdout.take();
        Ok(BridgeProcess {
            child,
            listen,
            logs,
            stdout,
        })
    }

    /// Everything the bridge logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("log lock").clone()
    }

    /// The bridge's stdout (the jsonl sink); once.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// `GET path` on the bridge's HTTP listener: (status, body).
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.listen, path).await
    }

    /// Waits until `/healthz` answers 200.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let (listen, child) = (self.listen, &mut self.child);
        let healthy = try_poll_until(timeout, "ferry-bridge to be healthy", async || {
            let state = match http_get(listen, "/healthz").await {
                Ok((200, _)) => return Ok(Ok(())),
                Ok((status, body)) => format!("/healthz {status} {body}"),
                Err(e) => format!("/healthz: {e:#}"),
            };
            match child.try_wait() {
                Ok(Some(exit)) => Ok(Err(exit)),
                _ => Err(state),
            }
        })
        .await;
        match healthy {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => bail!("ferry-bridge exited ({status}); logs:\n{}", self.logs()),
            Err(e) => bail!("{e}; logs:\n{}", self.logs()),
        }
    }

    /// A sample from `/metrics`: `series` is the metric name with its labels, as printed.
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let (_, body) = self.get("/metrics").await?;
        parse_metric(&body, series).with_context(|| format!("{series} not in /metrics"))
    }

    /// Starts `ferry-bridge` from `broker` into the PostgreSQL at `database`, committing at
    /// least every `batch_ms`, and waits (≤ 30 s) until it is healthy.
    pub async fn start_healthy(
        broker: &str,
        client_id: &str,
        database: &str,
        batch_ms: u64,
    ) -> anyhow::Result<BridgeProcess> {
        let mut bridge = Self::start(&[
            "--broker".into(),
            broker.into(),
            "--client-id".into(),
            client_id.into(),
            "--database".into(),
            database.into(),
            "--batch-ms".into(),
            batch_ms.to_string(),
        ])
        .await?;
        bridge.wait_healthy(Duration::from_secs(30)).await?;
        Ok(bridge)
    }

    /// Waits until the bridge has acked (after commit) at least `messages` messages; fails with
    /// its log after `timeout`.
    pub async fn wait_acked(&self, messages: u64, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("ferry-bridge to ack {messages} messages");
        let acked = try_poll_until(timeout, what, async || {
            let n = self.metric("ferry_bridge_acks_total").await?;
            anyhow::ensure!(n >= messages as f64, "{n} acked");
            Ok(())
        });
        acked
            .await
            .map_err(|e| anyhow::anyhow!("{e}; logs:\n{}", self.logs()))
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub async fn terminate(mut self) -> anyhow::Result<(ExitStatus, String)> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("ferry-bridge did not exit within 30 s of SIGTERM")??;
        // Let the stderr reader catch up with the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok((status, self.logs()))
    }

    /// SIGKILL (a crash).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Finds `series value` in Prometheus text.
pub fn parse_metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A minimal HTTP/1.1 GET (Connection: close): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, &format!("GET {path} HTTP/1.1\r\n"), "").await
}

/// A minimal HTTP/1.1 POST of a JSON body (Connection: close): (status, body).
pub async fn http_post_json(
    addr: SocketAddr,
    path: &str,
    json: &str,
) -> anyhow::Result<(u16, String)> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        json.len()
    );
    http_request(addr, &head, json).await
}

/// Sends `head` (request line and headers, each ending in CRLF) with `Host` and
/// `Connection: close` added, then `body`; reads the whole answer: (status, body).
async fn http_request(addr: SocketAddr, head: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(format!("{head}Host: {addr}\r\nConnection: close\r\n\r\n{body}").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_owned()))
}

/// Messages handed to rumqttc and not yet written: (topic, payload).
type Fifo = std::collections::VecDeque<(String, Vec<u8>)>;

/// A QoS 1 publisher (MQTT 5) that counts successful PUBACKs.
///
/// rumqttc resends unacked publishes after a reconnect. Beyond that, a PUBACK with reason
/// "no matching subscribers" (16) counts as not delivered and the message is published again:
/// mosquitto 2.0 does not restore *shared* subscriptions from its persistence file, so right
/// after a broker restart, until the bridge has subscribed again, the broker drops messages
/// and says so with that reason code. (An uplink should do the same.)
pub struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    /// Publishes handed to rumqttc, not yet written (their packet id is not known yet).
    queued: Arc<Mutex<Fifo>>,
    republished: Arc<AtomicU64>,
    published: AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Connects (in the background; publishes queue until connected).
    pub fn connect(port: u16, client_id: &str) -> Publisher {
        use rumqttc::v5::mqttbytes::v5::PubAckReason;
        use std::collections::HashMap;
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(Some(64 << 20));
        let (client, mut eventloop) = AsyncClient::new(o, 100_000);
        let acked = Arc::new(AtomicU64::new(0));
        let republished = Arc::new(AtomicU64::new(0));
        let queued: Arc<Mutex<Fifo>> = Arc::default();
        let (count, again, fifo, resend) = (
            acked.clone(),
            republished.clone(),
            queued.clone(),
            client.clone(),
        );
        let task = tokio::spawn(async move {
            // Packet id -> message, for every publish written and not yet acked.
            let mut in_flight: HashMap<u16, (String, Vec<u8>)> = HashMap::new();
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                        // A resend after a reconnect keeps its id; a new id is the next request.
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            in_flight.entry(pkid)
                        {
                            if let Some(m) = fifo.lock().expect("fifo").pop_front() {
                                slot.insert(m);
                            }
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                        let m = in_flight.remove(&ack.pkid);
                        if ack.reason == PubAckReason::NoMatchingSubscribers {
                            if let Some((topic, payload)) = m {
                                again.fetch_add(1, Relaxed);
                                let mut fifo = fifo.lock().expect("fifo");
                                if resend
                                    .try_publish(
                                        topic.clone(),
                                        QoS::AtLeastOnce,
                                        false,
                                        payload.clone(),
                                    )
                                    .is_ok()
                                {
                                    fifo.push_back((topic, payload));
                                }
                            }
                        } else {
                            count.fetch_add(1, Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher {
            client,
            acked,
            queued,
            republished,
            published: AtomicU64::new(0),
            task,
        }
    }

    /// Publishes `payload` on `topic` at QoS 1.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        // Queue order must equal request order: both happen under the FIFO's lock (the
        // event loop republishes under it too).
        let t0 = Instant::now();
        loop {
            {
                let mut fifo = self.queued.lock().expect("fifo");
                match self
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload.clone())
                {
                    Ok(()) => {
                        fifo.push_back((topic.to_owned(), payload));
                        break;
                    }
                    Err(rumqttc::v5::ClientError::TryRequest(_)) => {}
                    Err(e) => bail!("publish: {e}"),
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("publish queue full for 60 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.published.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Messages published again after a "no matching subscribers" PUBACK.
    pub fn republished(&self) -> u64 {
        self.republished.load(Relaxed)
    }

    /// Publishes `b` (JSON) on its events topic.
    pub async fn publish_batch(&self, b: &EventBatch, encoding: Encoding) -> anyhow::Result<()> {
        self.publish(
            &events_topic(&b.gateway, &b.device),
            b.encode(encoding, Compression::None),
        )
        .await
    }

    /// Successful PUBACKs received.
    pub fn acked(&self) -> u64 {
        self.acked.load(Relaxed)
    }

    /// Waits until every message published so far is acked by the broker.
    pub async fn wait_all_acked(&self, timeout: Duration) -> anyhow::Result<()> {
        let want = self.published.load(Relaxed);
        let what = format!("the broker to ack all {want} publishes");
        try_poll_until(timeout, what, async || {
            let acked = self.acked();
            (acked >= want)
                .then_some(())
                .ok_or(format!("{acked} acked"))
        })
        .await?;
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value a test event carries, so stored rows can be checked.
pub fn test_value(boot: u32, seq: u32) -> f64 {
    f64::from(seq) * 0.25 + f64::from(boot) * 1000.0
}

/// The sample time a test event carries.
pub fn test_ts_ms(seq: u32) -> i64 {
    1_760_000_000_000 + i64::from(seq) * 10
}

/// A batch of `seqs` for one boot of one device, values from [`test_value`].
pub fn test_batch(
    gateway: &str,
    device: &str,
    boot: u32,
    seqs: impl IntoIterator<Item = u32>,
) -> EventBatch {
    EventBatch {
        v: SCHEMA_VERSION,
        gateway: gateway.into(),
        device: device.into(),
        boot,
        boot_id: 0xB000 + boot,
        events: seqs
            .into_iter()
            .map(|seq| Event {
                seq,
                sensor: if seq % 2 == 0 {
                    "temperature"
                } else {
                    "humidity"
                }
                .into(),
                ts_ms: test_ts_ms(seq),
                value: test_value(boot, seq),
            })
            .collect(),
    }
}

/// Checks `ferry_events` holds exactly `expected`: per (gateway, device, boot), seqs
/// `0..n` each once, with the values of [`test_batch`].
pub async fn assert_exactly_once(
    db: &tokio_postgres::Client,
    expected: &[(String, String, u32, u32)],
) -> anyhow::Result<()> {
    let rows = db
        .query(
            "SELECT gateway, device, boot, count(*), min(seq), max(seq), \
             count(*) FILTER (WHERE value <> seq * 0.25 + boot * 1000.0 \
               OR ts <> 'epoch'::timestamptz + (1760000000000 + seq * 10) * interval '1 millisecond' \
               OR boot_id <> 45056 + boot \
               OR sensor <> CASE WHEN seq % 2 = 0 THEN 'temperature' ELSE 'humidity' END) \
             FROM ferry_events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            &[],
        )
        .await?;
    let mut got: Vec<(String, String, u32, u32)> = Vec::new();
    for r in &rows {
        let (g, d, boot): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        let (n, min, max, wrong): (i64, i64, i64, i64) = (r.get(3), r.get(4), r.get(5), r.get(6));
        anyhow::ensure!(
            wrong == 0,
            "{g}/{d} boot {boot}: {wrong} rows with wrong values"
        );
        anyhow::ensure!(
            min == 0 && max == n - 1,
            "{g}/{d} boot {boot}: {n} rows but seq {min}..={max} (gaps)"
        );
        got.push((g, d, boot as u32, n as u32));
    }
    let mut want = expected.to_vec();
    want.sort();
    anyhow::ensure!(
        got == want,
        "stored (gateway, device, boot, count):\n{got:?}\nexpected:\n{want:?}"
    );
    Ok(())
}
