//! A minimal reference gateway that keeps everything in memory: the test receiver for the
//! simulator's own tests and benchmarks, and a readable model of what the agent does per link.
//!
//! It follows PROTOCOL.md exactly: Welcome on every Hello, `ferry_wire::Acceptor` for ordering and
//! dedup, HelloRequest for data on a link without a session, and one cumulative Ack per read chunk
//! (also for a chunk whose samples were all duplicates, so the device releases them).
//! "Durable" here means "recorded in memory", so it acks at once (unless told to withhold acks).
//! [`Receiver::command`] sends a command to a connected device; every `CommandResult` is recorded
//! with the boot of the session it arrived in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_wire::{
    encode, Acceptor, Ack, Command, CommandKind, CommandStatus, Decoder, Heartbeat, Message,
    Sample, Welcome, MAX_ENCODED_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the receiver knows about one `(device, boot)`.
#[derive(Debug, Clone)]
pub struct BootLog {
    /// Next expected seq (everything below is stored or was dropped by the device).
    pub acceptor: Acceptor,
    /// Samples stored.
    pub stored: u64,
    /// Seqs the device reported as dropped (its `oldest` skipped them).
    pub dropped_by_device: u64,
    /// Retransmitted samples ignored as duplicates.
    pub duplicates: u64,
    /// Messages ignored because a frame before them was lost.
    pub holes: u64,
    /// Stored samples with their seq, when the receiver keeps them.
    pub samples: Vec<(u32, Sample)>,
    /// Last heartbeat.
    pub heartbeat: Option<Heartbeat>,
}

/// A `CommandResult` as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultLog {
    /// Device of the link's session.
    pub device: String,
    /// Boot of the link's session when the result arrived (the last Hello before it).
    pub boot_id: u32,
    /// Command id.
    pub id: u32,
    /// Outcome.
    pub status: CommandStatus,
    /// Result payload.
    pub data: Vec<u8>,
}

/// A command queued for one link.
type LinkCommand = (u32, CommandKind<'static>);

/// Everything the receiver saw.
#[derive(Debug, Default)]
pub struct ReceiverState {
    /// Per `(device_id, boot_id)`.
    pub boots: HashMap<(String, u32), BootLog>,
    /// Frames rejected by the decoder.
    pub rejected: u64,
    /// Hellos received.
    pub hellos: u64,
    /// HelloRequests sent.
    pub hello_requests: u64,
    /// Links accepted.
    pub links: u64,
    /// When true, no acks are sent (the devices will retransmit and eventually drop).
    pub withhold_acks: bool,
    /// Keep every stored sample in `BootLog::samples`.
    pub keep_samples: bool,
    /// Every command result, in arrival order.
    pub results: Vec<ResultLog>,
    /// The link of each device with a session, for [`Receiver::command`].
    links_by_device: HashMap<String, mpsc::UnboundedSender<LinkCommand>>,
}

impl ReceiverState {
    /// Total stored samples.
    pub fn stored(&self) -> u64 {
        self.boots.values().map(|b| b.stored).sum()
    }
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Shared state (lock briefly; never across an await).
    pub state: Arc<Mutex<ReceiverState>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Receiver {
    /// Listens on `addr` (port 0 for an ephemeral port).
    pub async fn bind(addr: SocketAddr, keep_samples: bool) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ReceiverState {
            keep_samples,
            ..Default::default()
        }));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (st, sd, tr) = (state.clone(), shutdown.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    r = listener.accept() => {
                        let Ok((sock, _)) = r else { continue };
                        let _ = sock.set_nodelay(true);
                        tr.spawn(serve_link(sock, st.clone(), sd.clone()));
                    }
                }
            }
        });
        Ok(Receiver {
            addr,
            state,
            shutdown,
            tracker,
        })
    }

    /// Serves one already-open link (e.g. the slave end of a pty) until it closes or shutdown.
    pub fn attach<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, link: S) {
        self.tracker
            .spawn(serve_link(link, self.state.clone(), self.shutdown.clone()));
    }

    /// Sends `Command { id, kind }` on the link of `device`'s latest session; false if the device
    /// has no open link.
    pub fn command(&self, device: &str, id: u32, kind: CommandKind<'static>) -> bool {
        let st = self.state.lock().unwrap();
        st.links_by_device
            .get(device)
            .is_some_and(|link| link.send((id, kind)).is_ok())
    }

    /// Stops every link and waits for them.
    pub async fn stop(self) -> Arc<Mutex<ReceiverState>> {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.state
    }
}

fn utc_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn push(out: &mut Vec<u8>, m: &Message<'_>) {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    if let Ok(n) = encode(m, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
}

async fn serve_link<S: AsyncRead + AsyncWrite + Unpin>(
    mut link: S,
    state: Arc<Mutex<ReceiverState>>,
    shutdown: CancellationToken,
) {
    state.lock().unwrap().links += 1;
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<LinkCommand>();
    let mut dec: Box<Decoder> = Box::new(Decoder::new());
    let mut session: Option<(String, u32)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut last_hello_request: Option<std::time::Instant> = None;
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = link.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            Some((id, kind)) = cmd_rx.recv() => {
                push(&mut out, &Message::Command(Command { id, kind }));
                if link.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                continue;
            }
        };
        let mut input = &buf[..n];
        let mut ack: Option<Ack> = None;
        {
            let mut st = state.lock().unwrap();
            while let Some(r) = dec.feed(&mut input) {
                let m = match r {
                    Ok(m) => m,
                    Err(_) => {
                        st.rejected += 1;
                        continue;
                    }
                };
                match (&m, &session) {
                    (Message::Hello(h), _) => {
                        st.hellos += 1;
                        let key = (h.device_id.to_owned(), h.boot_id);
                        let log = st.boots.entry(key.clone()).or_insert_with(|| BootLog {
                            acceptor: Acceptor::new(0),
                            stored: 0,
                            dropped_by_device: 0,
                            duplicates: 0,
                            holes: 0,
                            samples: Vec::new(),
                            heartbeat: None,
                        });
                        let next_seq = log.acceptor.next();
                        push(
                            &mut out,
                            &Message::Welcome(Welcome {
                                boot_id: h.boot_id,
                                utc_ms: utc_ms(),
                                next_seq,
                            }),
                        );
                        st.links_by_device.insert(key.0.clone(), cmd_tx.clone());
                        session = Some(key);
                    }
                    (Message::Samples(s), Some(key)) => {
                        let keep = st.keep_samples;
                        let withhold = st.withhold_acks;
                        let log = st.boots.get_mut(key).expect("session has a log");
                        let a = log.acceptor.accept(s.oldest, s.first_seq, s.samples.len());
                        log.dropped_by_device += u64::from(a.dropped_by_device);
                        log.duplicates += a.duplicates as u64;
                        log.holes += u64::from(a.hole);
                        log.stored += a.keep.len() as u64;
                        if keep {
                            let first = s.first_seq;
                            log.samples
                                .extend(a.keep.clone().map(|i| (first + i as u32, s.samples[i])));
                        }
                        if !withhold {
                            ack = Some(Ack {
                                boot_id: key.1,
                                next_seq: log.acceptor.next(),
                            });
                        }
                    }
                    (Message::Heartbeat(h), Some(key)) => {
                        if let Some(log) = st.boots.get_mut(key) {
                            log.heartbeat = Some(*h);
                        }
                    }
                    (Message::CommandResult(r), Some((device, boot_id))) => {
                        st.results.push(ResultLog {
                            device: device.clone(),
                            boot_id: *boot_id,
                            id: r.id,
                            status: r.status,
                            data: r.data.to_vec(),
                        });
                    }
                    // Data on a link without a session: at most one HelloRequest per 200 ms.
                    (
                        Message::Samples(_) | Message::Heartbeat(_) | Message::CommandResult(_),
                        None,
                    ) if last_hello_request.is_none_or(|t| t.elapsed().as_millis() >= 200) => {
                        last_hello_request = Some(std::time::Instant::now());
                        st.hello_requests += 1;
                        push(&mut out, &Message::HelloRequest);
                    }
                    _ => {} // rate-limited, or a gateway → device message echoed back: ignore
                }
            }
        }
        if let Some(a) = ack {
            push(&mut out, &Message::Ack(a));
        }
        if !out.is_empty() {
            if link.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// Result of checking a simulator report against what the receiver stored.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct Verification {
    /// Device boots compared.
    pub boots: u64,
    /// Samples the devices saw acked.
    pub acked: u64,
    /// Acked samples the receiver does not have (must be 0).
    pub missing_acked: u64,
    /// Samples the receiver stored.
    pub stored: u64,
    /// Stored samples out of seq order or stored twice (must be 0; only checked with kept samples).
    pub misordered: u64,
}

/// Checks that every sample a device saw acked was stored, once, in order.
///
/// The receiver's acceptance keeps a gap-free prefix `0..next` of each boot (minus seqs the device
/// reported dropped), so "acked ⇒ stored" is `next >= acked_next` for every boot.
pub fn verify(report: &crate::Report, state: &ReceiverState) -> Verification {
    let mut v = verify_positions(report, state.stored(), |device, boot| {
        state
            .boots
            .get(&(device.to_owned(), boot))
            .map_or(0, |log| log.acceptor.next())
    });
    for log in state.boots.values() {
        v.misordered += log.samples.windows(2).filter(|w| w[1].0 <= w[0].0).count() as u64;
    }
    v
}

/// The "acked ⇒ stored" check against any gateway that keeps, per `(device, boot)`, the position
/// below which every sample is stored (`next_for`), e.g. the agent's `boots.next_seq`.
pub fn verify_positions(
    report: &crate::Report,
    stored: u64,
    next_for: impl Fn(&str, u32) -> u32,
) -> Verification {
    let mut v = Verification {
        stored,
        ..Default::default()
    };
    for d in &report.devices {
        for b in &d.boots {
            v.boots += 1;
            v.acked += b.acked;
            v.missing_acked += u64::from(
                b.acked_next
                    .saturating_sub(next_for(&d.device_id, b.boot_id)),
            );
        }
    }
    v
}
