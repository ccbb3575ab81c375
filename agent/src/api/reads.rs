//! A small pool of read-only store connections, used on blocking threads.
//!
//! Invariant: at most [`READERS`] queries run at once (a semaphore), so a burst of requests queues
//! here instead of spawning a blocking thread per request and competing with ingest for the CPU.
//! (Measured with `--bench api`: one reader on two cores did not protect ingest from a
//! series-heavy load any better than four; what costs is the rows a query reads.)

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::ApiError;
use crate::store::{self, StoreError};

/// Concurrent read queries.
pub const READERS: usize = 4;

/// Read connections.
pub struct ReadPool {
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Semaphore,
}

impl ReadPool {
    /// Opens [`READERS`] read-only connections.
    pub fn open(path: &Path) -> Result<ReadPool, StoreError> {
        let conns = (0..READERS)
            .map(|_| store::open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReadPool {
            idle: Arc::new(Mutex::new(conns)),
            permits: Semaphore::new(READERS),
        })
    }

    /// Runs `f` on a connection (one snapshot per call).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("the API is stopping".into()))?;
        let idle = self.idle.clone();
        let conn = idle
            .lock()
            .map_err(|_| ApiError::Internal("read pool poisoned".into()))?
            .pop()
            .ok_or_else(|| ApiError::Internal("read pool empty".into()))?;
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = f(&conn);
            (conn, out)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("read task failed: {e}")))?;
        if let Ok(mut v) = idle.lock() {
            v.push(conn);
        }
        out
    }
}
