//! WAL checkpoints off the commit path.
//!
//! The writer connection has `wal_autocheckpoint = 0`: an automatic checkpoint runs inside a commit
//! (copying WAL pages into the database file and fsyncing it), which put multi-millisecond stalls
//! into device ack latency. Instead this thread runs `PASSIVE` checkpoints every 100 ms on its own
//! connection; they copy committed pages concurrently with commits and never block the writer.
//! (Measured: every 100 ms beats 50 ms and 2 s; large, rare checkpoints stalled commits ~95 ms.)
//! Under continuous commits a passive checkpoint never reaches the very end of the WAL, so the WAL
//! cannot reset by itself: once it exceeds [`RESTART_ABOVE`], the writer runs a passive checkpoint
//! itself between transactions ([`restart_if_large`]); with no write in progress it reaches the end,
//! and the next transaction starts the WAL over. Almost every page is already copied by then, so it
//! costs the writer little. (`RESTART` or `FULL` would make the writer wait for the whole copy.)

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

const PERIOD: Duration = Duration::from_millis(100);
/// WAL size above which the writer catches up itself (a stall of a few tens of ms: kept rare).
pub const RESTART_ABOVE: u64 = 256 * 1024 * 1024;

/// The running checkpointer; stop it before the writer's final checkpoint.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path`.
    pub fn start(path: &Path) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // A checkpoint streams pages from the WAL to the database file: no cache needed.
        conn.pragma_update(None, "cache_size", 16)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let join = std::thread::Builder::new()
            .name("ferry-checkpoint".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(PERIOD);
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "Checkpoint skipped.");
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            stop,
            join: Some(join),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Called by the writer between transactions: restarts the WAL when it has grown large.
pub fn restart_if_large(conn: &Connection, wal: &Path) {
    if std::fs::metadata(wal)
        .map(|m| m.len() > RESTART_ABOVE)
        .unwrap_or(false)
    {
        // PASSIVE never waits for the checkpoint lock; run by the only writer between
        // transactions it reaches the end of the WAL, so the next transaction starts it over.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL catch-up checkpoint skipped; will retry.");
        }
    }
}
