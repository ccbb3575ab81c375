//! A small pool of read-only store connections.
//!
//! Invariants:
//! - At most [`READERS`] queries run at once (a semaphore), so a burst of requests queues here
//!   instead of spawning a blocking thread per request and competing with ingest for the CPU.
//!   (Measured with `--bench api`: one reader on two cores did not protect ingest from a
//!   series-heavy load any better than four; what costs is the rows a query reads.)
//! - Each call sees one snapshot: `f` runs inside one read transaction.
//! - Range queries ([`ReadPool::run`]: pages of events, series, lists of every device) run on a
//!   blocking thread. Point lookups ([`ReadPool::lookup`]: a few index probes, tens of
//!   microseconds) run on the HTTP worker itself: handing them to another thread and back cost
//!   more than the query (the api bench's cost part, under ingest: 119 µs of API CPU per
//!   `devices/{id}/latest` with the hand-off, 91 µs without; see README Figures).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::ApiError;
use crate::store::{self, StoreError};

/// Concurrent read queries.
pub const READERS: usize = 4;

/// Read connections.
pub struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl ReadPool {
    /// Opens [`READERS`] read-only connections.
    pub fn open(path: &Path) -> Result<ReadPool, StoreError> {
        let conns = (0..READERS)
            .map(|_| store::open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReadPool {
            idle: Mutex::new(conns),
            permits: Semaphore::new(READERS),
        })
    }

    /// Runs a range query `f` on a blocking thread (one snapshot per call).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self.permit().await?;
        let conn = self.take()?;
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = store::read_snapshot(&conn, f);
            (conn, out)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("read task failed: {e}")))?;
        self.give_back(conn);
        out
    }

    /// Runs a point lookup `f` on the calling task (one snapshot per call). Only for queries that
    /// probe a few index entries: it holds the HTTP worker while it runs.
    pub async fn lookup<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let _permit = self.permit().await?;
        let conn = self.take()?;
        let out = store::read_snapshot(&conn, f);
        self.give_back(conn);
        out
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.permits
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("the API is stopping".into()))
    }

    fn take(&self) -> Result<Connection, ApiError> {
        self.idle
            .lock()
            .map_err(|_| ApiError::Internal("read pool poisoned".into()))?
            .pop()
            .ok_or_else(|| ApiError::Internal("read pool empty".into()))
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut v) = self.idle.lock() {
            v.push(conn);
        }
    }
}
