//! Either side of one device link, for tests that play the gateway ([`GatewayLink`]) or a device
//! written from PROTOCOL.md alone ([`DeviceLink`]) themselves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use ferry_wire::owned::DeviceMessage;
use ferry_wire::{
    encode, Ack, Decoder, Hello, Message, Rejected, Sample, Samples, SensorInfo, Welcome,
    MAX_ENCODED_LEN, MAX_SAMPLES_PER_FRAME,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The plumbing both sides share: frames encoded to `io`, bytes read from it into `buf` and
/// decoded (`buf[start..end]` is read but not yet fed to the decoder).
struct Frames<S> {
    io: S,
    decoder: Box<Decoder>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Frames<S> {
    fn new(io: S) -> Self {
        Frames {
            io,
            decoder: Box::new(Decoder::new()),
            buf: vec![0; 4096],
            start: 0,
            end: 0,
        }
    }

    async fn send(&mut self, m: &Message<'_>) -> anyhow::Result<()> {
        let mut out = [0u8; MAX_ENCODED_LEN];
        let n = encode(m, &mut out).map_err(|e| anyhow!("encode: {e}"))?;
        self.io.write_all(&out[..n]).await?;
        Ok(())
    }

    /// Feeds frames to `on` until it returns an outcome; reads from `io` when the buffer runs
    /// dry, and fails when the link closes.
    async fn next<T>(
        &mut self,
        mut on: impl FnMut(Result<Message<'_>, Rejected<'_>>) -> Option<anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        loop {
            let mut input = &self.buf[self.start..self.end];
            let before = input.len();
            let got = self.decoder.feed(&mut input).and_then(&mut on);
            self.start += before - input.len();
            match got {
                Some(r) => return r,
                None if self.start < self.end => continue,
                None => {}
            }
            self.start = 0;
            self.end = self.io.read(&mut self.buf).await?;
            if self.end == 0 {
                return Err(anyhow!("link closed"));
            }
        }
    }
}

/// Decodes device frames from `io` and sends gateway frames to it.
pub struct GatewayLink<S> {
    frames: Frames<S>,
    /// Rejected frames seen so far.
    pub rejected: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> GatewayLink<S> {
    /// Wraps an open link.
    pub fn new(io: S) -> Self {
        GatewayLink {
            frames: Frames::new(io),
            rejected: 0,
        }
    }

    /// Next valid device message within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<DeviceMessage> {
        tokio::time::timeout(timeout, self.recv_inner())
            .await
            .context("no frame from the device in time")?
    }

    async fn recv_inner(&mut self) -> anyhow::Result<DeviceMessage> {
        let rejected = &mut self.rejected;
        self.frames
            .next(|frame| match frame {
                Ok(m) => Some(
                    DeviceMessage::from_message(&m)
                        .ok_or_else(|| anyhow!("device sent a gateway-direction message")),
                ),
                Err(Rejected { .. }) => {
                    *rejected += 1;
                    None
                }
            })
            .await
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &Message<'_>) -> anyhow::Result<()> {
        self.frames.send(m).await
    }
}

/// A gateway → device message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downlink {
    /// See [`ferry_wire::Welcome`].
    Welcome(Welcome),
    /// See [`ferry_wire::Ack`].
    Ack(Ack),
    /// A command, by id (tests that play a device here do not execute commands).
    Command(u32),
    /// See [`ferry_wire::Message::HelloRequest`].
    HelloRequest,
}

/// Encodes device frames to `io` and decodes gateway frames from it: a device that sends exactly
/// the samples a test chooses.
pub struct DeviceLink<S> {
    frames: Frames<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> DeviceLink<S> {
    /// Wraps an open link.
    pub fn new(io: S) -> Self {
        DeviceLink {
            frames: Frames::new(io),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &Message<'_>) -> anyhow::Result<()> {
        self.frames.send(m).await
    }

    /// Next valid gateway message within `timeout`; `Ok(None)` when none came in time.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Option<Downlink>> {
        match tokio::time::timeout(timeout, self.recv_inner()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    async fn recv_inner(&mut self) -> anyhow::Result<Downlink> {
        self.frames
            .next(|frame| match frame {
                Ok(Message::Welcome(w)) => Some(Ok(Downlink::Welcome(w))),
                Ok(Message::Ack(a)) => Some(Ok(Downlink::Ack(a))),
                Ok(Message::Command(c)) => Some(Ok(Downlink::Command(c.id))),
                Ok(Message::HelloRequest) => Some(Ok(Downlink::HelloRequest)),
                Ok(other) => Some(Err(anyhow!("gateway sent a device message: {other:?}"))),
                Err(Rejected { reason, .. }) => {
                    Some(Err(anyhow!("gateway sent a bad frame: {reason:?}")))
                }
            })
            .await
    }

    /// Plays one boot of a device with one sensor (`sensor`, index 0, 1 kHz ticks) that sends
    /// `values` as samples 0, 1, 2 ... one tick apart: Hello until Welcome, then Samples frames
    /// (at most `window` samples unacked, go-back-N after 2 s without a releasing ack) until the
    /// gateway has acked every one. Returns the Welcome.
    pub async fn send_boot(
        &mut self,
        device_id: &str,
        boot_id: u32,
        sensor: &str,
        values: &[f32],
        window: u32,
        timeout: Duration,
    ) -> anyhow::Result<Welcome> {
        const HELLO_TICKS: u64 = 1_000;
        let deadline = tokio::time::Instant::now() + timeout;
        let hello = Message::Hello(Hello {
            device_id,
            firmware: "test",
            boot_id,
            tick_hz: 1000,
            ticks: HELLO_TICKS,
            next_seq: 0,
            sensors: [SensorInfo {
                index: 0,
                name: sensor,
                unit: "",
                interval_ms: 1,
            }]
            .into_iter()
            .collect(),
        });
        let welcome = loop {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no Welcome in time");
            self.send(&hello).await?;
            match self.recv(Duration::from_secs(1)).await? {
                Some(Downlink::Welcome(w)) if w.boot_id == boot_id => break w,
                _ => {}
            }
        };
        let n = u32::try_from(values.len()).context("too many values")?;
        let (mut acked, mut sent) = (welcome.next_seq.min(n), welcome.next_seq.min(n));
        while acked < n {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{acked} of {n} samples acked in time"
            );
            while sent < n && sent - acked < window {
                let k = (n - sent).min(MAX_SAMPLES_PER_FRAME as u32);
                let samples = (sent..sent + k)
                    .map(|seq| Sample {
                        ticks: HELLO_TICKS + u64::from(seq),
                        sensor: 0,
                        value: values[seq as usize],
                    })
                    .collect();
                self.send(&Message::Samples(Samples {
                    oldest: acked,
                    first_seq: sent,
                    samples,
                }))
                .await?;
                sent += k;
            }
            match self.recv(Duration::from_secs(2)).await? {
                Some(Downlink::Ack(a)) if a.boot_id == boot_id && a.next_seq > acked => {
                    acked = a.next_seq.min(n);
                }
                Some(Downlink::HelloRequest) => anyhow::bail!("the gateway lost the session"),
                Some(_) => {}
                None => sent = acked, // go back: send again from the oldest unacked
            }
        }
        Ok(welcome)
    }
}

/// Milliseconds since the Unix epoch.
pub fn utc_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
