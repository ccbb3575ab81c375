//! The gateway side of one device link, for tests that play the gateway themselves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use ferry_sim::uplink::Uplink;
use ferry_wire::{encode, Decoder, Message, Rejected, MAX_ENCODED_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Decodes device frames from `io` and sends gateway frames to it.
pub struct GatewayLink<S> {
    io: S,
    decoder: Box<Decoder>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Rejected frames seen so far.
    pub rejected: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> GatewayLink<S> {
    /// Wraps an open link.
    pub fn new(io: S) -> Self {
        GatewayLink {
            io,
            decoder: Box::new(Decoder::new()),
            buf: vec![0; 4096],
            start: 0,
            end: 0,
            rejected: 0,
        }
    }

    /// Next valid device message within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Uplink> {
        tokio::time::timeout(timeout, self.recv_inner())
            .await
            .context("no frame from the device in time")?
    }

    async fn recv_inner(&mut self) -> anyhow::Result<Uplink> {
        loop {
            let mut input = &self.buf[self.start..self.end];
            let before = input.len();
            let got = match self.decoder.feed(&mut input) {
                Some(Ok(m)) => Some(Uplink::from_message(&m)),
                Some(Err(Rejected { .. })) => {
                    self.rejected += 1;
                    None
                }
                None => None,
            };
            self.start += before - input.len();
            match got {
                Some(Some(u)) => return Ok(u),
                Some(None) => return Err(anyhow!("device sent a gateway-direction message")),
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

    /// Sends one message.
    pub async fn send(&mut self, m: &Message<'_>) -> anyhow::Result<()> {
        let mut out = [0u8; MAX_ENCODED_LEN];
        let n = encode(m, &mut out).map_err(|e| anyhow!("encode: {e}"))?;
        self.io.write_all(&out[..n]).await?;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub fn utc_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
