//! Where batches land: the configured [`Sink`] (PostgreSQL, the default, in `postgres.rs`; or
//! JSON lines).
//!
//! jsonl: each event is one line on stdout (or appended to a file), flushed before the ack. It has
//! no dedup (a redelivered message is printed again) and dead letters go to the log only. The
//! file variant exists so `ferry demo` can land events with nothing installed and check them.
use std::io::Write as _;
use std::sync::Arc;

use tracing::warn;

use super::inbound::{Content, Inbound};
#[cfg(feature = "postgres")]
use super::postgres::PgStore;
use super::rows::jsonl;

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // all but `Fatal` come from PostgreSQL
pub(crate) enum StoreError {
    /// Worth retrying (connection lost, deadlock, server restarting ...).
    #[error("{0}")]
    Transient(String),
    /// The database refused the data itself.
    #[error("{0}")]
    Rejected(String),
    /// The connection cannot work until an operator acts (untrusted certificate, no TLS on the
    /// server); retried like `Transient` (the server may be fixed), logged as an error.
    #[error("{0}")]
    Misconfigured(String),
    /// The output is gone for good (jsonl: stdout closed).
    #[error("{0}")]
    Fatal(String),
}

/// What one write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub inserted: u64,
    pub duplicates: u64,
}

/// The configured sink.
pub(crate) enum Sink {
    #[cfg(feature = "postgres")]
    Postgres(Box<PgStore>),
    Jsonl,
    /// JSON lines appended to this file (opened once, shared with the blocking writes).
    JsonlFile(Arc<std::sync::Mutex<std::fs::File>>),
}

impl Sink {
    /// Whether a connection attempt is due (PostgreSQL without a connection).
    pub(crate) fn needs_connect(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let Sink::Postgres(p) = self {
            return p.needs_connect();
        }
        false
    }

    pub(crate) async fn connect(&mut self) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Sink::Postgres(p) => p.connect().await,
            Sink::Jsonl | Sink::JsonlFile(_) => Ok(()),
        }
    }

    /// Makes `msgs` durable. On success every message is stored (or dead-lettered).
    pub(crate) async fn write(&mut self, msgs: &mut [Inbound]) -> Result<Written, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Sink::Postgres(p) => p.write(msgs).await,
            Sink::Jsonl => write_jsonl(msgs, None).await,
            Sink::JsonlFile(f) => write_jsonl(msgs, Some(f.clone())).await,
        }
    }
}

/// Writes the events of `msgs` as JSON lines to `file`, or to stdout when `None`.
async fn write_jsonl(
    msgs: &[Inbound],
    file: Option<Arc<std::sync::Mutex<std::fs::File>>>,
) -> Result<Written, StoreError> {
    let mut buf = Vec::new();
    let mut w = Written::default();
    for m in msgs {
        match &m.content {
            Content::Batch(b) => {
                jsonl(b, &mut buf);
                w.inserted += b.events.len() as u64;
            }
            Content::Dead(d) => {
                warn!(topic = %d.topic, reason = %d.reason, bytes = d.payload.len(), "Dead letter (jsonl sink: logged only).");
            }
        }
    }
    if buf.is_empty() {
        return Ok(w);
    }
    let what = if file.is_some() {
        "the jsonl file"
    } else {
        "stdout"
    };
    tokio::task::spawn_blocking(move || match file {
        Some(f) => {
            let mut out = f.lock().expect("jsonl file lock");
            out.write_all(&buf)?;
            out.flush()
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()
        }
    })
    .await
    .map_err(|e| StoreError::Fatal(format!("{what} writer: {e}")))?
    .map_err(|e| StoreError::Fatal(format!("writing {what}: {e}")))?;
    Ok(w)
}
