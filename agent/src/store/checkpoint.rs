//! WAL checkpoints off the commit path.
//!
//! The writer connection has `wal_autocheckpoint = 0`: an automatic checkpoint runs inside a commit
//! (copying WAL pages into the database file and fsyncing it), which put multi-millisecond stalls
//! into device ack latency. Instead this thread runs `PASSIVE` checkpoints every 100 ms on its own
//! connection; they copy committed pages concurrently with commits and never block the writer.
//! (Measured: every 100 ms beats 50 ms and 2 s; large, rare checkpoints stalled commits ~95 ms.)
//! Under continuous commits a passive checkpoint never reaches the very end of the WAL, so the WAL
//! seldom resets by itself: once its content exceeds [`RESTART_ABOVE`], the writer runs a passive
//! checkpoint itself between transactions ([`restart_if_large`]); with no write in progress it
//! reaches the end, and the next transaction starts the WAL over. Almost every page is already
//! copied by then (the thread runs every 100 ms), so it costs the writer little. (`RESTART` or
//! `FULL` would make the writer wait for the whole copy.) The WAL's content is the frame count the
//! thread's last checkpoint reported ([`Checkpointer::frames`]), not the file's length: the file
//! keeps its length after a restart, and new frames overwrite it from the start.
//! (Measured at 650-860k samples/s: with 256 MiB the WAL file grew to 260-300 MB and the capacity
//! ladder topped out at 770k without API load; with 32 MiB it stayed at 38-74 MB and reached
//! 800-830k.)
//!
//! On a tight disk the WAL must not grow into the last free bytes: a restart happens only now and
//! then on its own, and between restarts the WAL grows to a few MB at 1,600 samples/s (measured:
//! 3.7 MB). So once the WAL's content is over [`TIGHT_WAL`] and the filesystem has less than
//! [`TIGHT_FACTOR`] times that free, the writer catches up at every check (every 200 ms), which
//! keeps the WAL cycling inside the file it has. That costs one extra fsync per check, paid only
//! when the disk is nearly full anyway ([`should_restart`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

const PERIOD: Duration = Duration::from_millis(100);
/// WAL content above which the writer catches up itself: at most one stall of a few ms per 32 MiB
/// of WAL (well over a second of commits at 10k samples/s, about one at 800k).
pub const RESTART_ABOVE: u64 = 32 * 1024 * 1024;
/// On a tight disk, the WAL size above which the writer catches up at every check.
pub const TIGHT_WAL: u64 = 256 * 1024;
/// The disk is tight when it has less than this many times the WAL's size free.
pub const TIGHT_FACTOR: u64 = 4;

/// The running checkpointer; stop it before the writer's final checkpoint.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    frames: Arc<AtomicU64>,
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
        let frames = Arc::new(AtomicU64::new(0));
        let (s, f) = (stop.clone(), frames.clone());
        let join = std::thread::Builder::new()
            .name("ferry-checkpoint".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(PERIOD);
                    // The second column is the number of frames in the WAL.
                    match conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
                    {
                        Ok(n) => f.store(n.max(0) as u64, Ordering::Relaxed),
                        Err(e) => tracing::debug!(error = %e, "Checkpoint skipped."),
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            stop,
            frames,
            join: Some(join),
        })
    }

    /// Frames in the WAL as of the thread's last checkpoint (updated every 100 ms).
    pub fn frames(&self) -> Arc<AtomicU64> {
        self.frames.clone()
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

/// Whether the writer should catch up so the WAL starts over: its content is over
/// [`RESTART_ABOVE`], or over [`TIGHT_WAL`] with less than [`TIGHT_FACTOR`] times its size free on
/// the filesystem.
pub fn should_restart(wal_bytes: u64, fs_free: Option<u64>) -> bool {
    wal_bytes > RESTART_ABOVE
        || (wal_bytes > TIGHT_WAL
            && fs_free.is_some_and(|f| f < wal_bytes.saturating_mul(TIGHT_FACTOR)))
}

/// Called by the writer between transactions with the WAL's content in bytes: restarts the WAL
/// when [`should_restart`] says so.
pub fn restart_if_large(conn: &Connection, db: &Path, wal_bytes: u64) {
    // Free space matters only past TIGHT_WAL: no statvfs for a small WAL.
    let fs_free = (wal_bytes > TIGHT_WAL)
        .then(|| super::fs_free_bytes(db))
        .flatten();
    if should_restart(wal_bytes, fs_free) {
        // PASSIVE never waits for the checkpoint lock; run by the only writer between
        // transactions it reaches the end of the WAL, so the next transaction starts it over.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL catch-up checkpoint skipped; will retry.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_restarts_when_large_or_when_the_disk_is_tight() {
        const MB: u64 = 1024 * 1024;
        // Roomy disk (or unknown free space): only past RESTART_ABOVE.
        assert!(!should_restart(16 * MB, Some(100_000 * MB)));
        assert!(!should_restart(RESTART_ABOVE, None));
        assert!(should_restart(RESTART_ABOVE + 1, None));
        // Tight disk: free space under 4x the WAL.
        assert!(should_restart(MB, Some(3 * MB)));
        assert!(!should_restart(MB, Some(4 * MB)));
        // A small WAL is left alone even on a full disk.
        assert!(!should_restart(TIGHT_WAL, Some(0)));
        assert!(should_restart(TIGHT_WAL + 1, Some(0)));
    }
}
