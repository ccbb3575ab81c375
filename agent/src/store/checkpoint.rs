//! WAL checkpoints off the commit path.
//!
//! The writer connection has `wal_autocheckpoint = 0`: an automatic checkpoint runs inside a commit
//! (copying WAL pages into the database file and fsyncing it), which put multi-millisecond stalls
//! into device ack latency. Instead this thread runs `PASSIVE` checkpoints every 100 ms on its own
//! connection; they proceed concurrently with commits and never block the writer. If the WAL still
//! outgrows `MAX_WAL` (a reader pinning old pages, a very slow disk), a `RESTART` checkpoint waits
//! for the writer's current transaction and resets it: bounded disk use wins over latency then.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

const PERIOD: Duration = Duration::from_millis(100);
const MAX_WAL: u64 = 256 * 1024 * 1024;

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
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let join = std::thread::Builder::new()
            .name("ferry-checkpoint".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(PERIOD);
                    let big = std::fs::metadata(&wal)
                        .map(|m| m.len() > MAX_WAL)
                        .unwrap_or(false);
                    let mode = if big { "RESTART" } else { "PASSIVE" };
                    if let Err(e) =
                        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
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
