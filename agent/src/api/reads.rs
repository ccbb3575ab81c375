//! A small pool of read-only store connections.
//!
//! Invariants:
//! - At most [`READERS`] queries run at once (a semaphore), so a burst of requests queues here
//!   instead of spawning a blocking thread per request and competing with ingest for the CPU.
//!   (Measured with `--bench api`: one reader on two cores did not protect ingest from a
//!   series-heavy load any better than four; what costs is the rows a query reads.)
//! - A connection always comes back, whatever happens to the request. It is lent as a [`Lease`]
//!   that owns the connection and an owned semaphore permit and puts the connection back when it
//!   is dropped: at the end of a query, when a blocking query finishes after its client went away
//!   (the lease travels into the blocking closure, so the request future being dropped does not
//!   drop it), and while unwinding from a panic. A connection handed back inside a transaction
//!   (a panic between `BEGIN` and `COMMIT`) is rolled back first, or closed if that fails; a
//!   missing connection is reopened on the next lease. So the pool can only be short of
//!   connections while the store file cannot be opened, and [`ReadPool::probe`] (`/readyz`) says so.
//! - A client that goes away stops its query: dropping the request future interrupts the
//!   statement running for it (never one running for a later lease of the same connection).
//! - Each call sees one snapshot: `f` runs inside one read transaction.
//! - Range queries ([`ReadPool::run`]: pages of events, series, lists of every device) run on a
//!   blocking thread. Point lookups ([`ReadPool::lookup`]: a few index probes, tens of
//!   microseconds) run on the HTTP worker itself: handing them to another thread and back cost
//!   more than the query (the api bench's cost part, under ingest: 119 µs of API CPU per
//!   `devices/{id}/latest` with the hand-off, 91 µs without; see `docs/decisions/api-reads.md`).
//! - A request waits at most [`READ_WAIT`] for a connection, then gets `503 unavailable`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::store::tail::{SharedTail, TailView};
use crate::store::{self, StoreError};

/// Concurrent read queries.
pub const READERS: usize = 4;

/// Longest a request waits for a read connection.
pub const READ_WAIT: Duration = Duration::from_secs(10);

/// Read connections.
pub struct ReadPool {
    shared: Arc<Shared>,
    tail: Option<SharedTail>,
}

struct Shared {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

/// Whether reads can be served now ([`ReadPool::probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadHealth {
    /// A connection was leased and answered a query.
    pub ok: bool,
    /// Why not, when not.
    pub problem: Option<String>,
    /// Leases out now (queries running or waiting on a blocking thread), not counting the probe.
    pub in_use: usize,
}

impl ReadPool {
    /// Opens [`READERS`] read-only connections.
    pub fn open(path: &Path) -> Result<ReadPool, StoreError> {
        let conns = (0..READERS)
            .map(|_| store::open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReadPool {
            tail: None,
            shared: Arc::new(Shared {
                path: path.to_owned(),
                idle: Mutex::new(conns),
                permits: Arc::new(Semaphore::new(READERS)),
            }),
        })
    }

    /// Reads see the writer's tail (acked samples not yet in the database) with every snapshot.
    pub fn with_tail(mut self, tail: SharedTail) -> ReadPool {
        self.tail = Some(tail);
        self
    }

    /// Runs a query of events `f` on a blocking thread: one snapshot of the database and of the
    /// tail above it per call (see [`store::tail`]).
    pub async fn run_events<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &TailView) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let lease = self.lease(READ_WAIT).await?;
        let handle = Arc::new(Mutex::new(Some(lease.conn().get_interrupt_handle())));
        let _interrupt = InterruptOnDrop(handle.clone());
        let running = Running { handle, lease };
        let tail = self.tail.clone();
        let out = tokio::task::spawn_blocking(move || {
            let running = running;
            store::tail::read_with_tail(running.lease.conn(), tail.as_ref(), f)
        })
        .await;
        match out {
            Ok(out) => out,
            Err(e) if e.is_panic() => Err(ApiError::Internal("a read query panicked".into())),
            Err(e) => Err(ApiError::Internal(format!("read task failed: {e}"))),
        }
    }

    /// Runs a range query `f` on a blocking thread (one snapshot per call).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let lease = self.lease(READ_WAIT).await?;
        let handle = Arc::new(Mutex::new(Some(lease.conn().get_interrupt_handle())));
        let _interrupt = InterruptOnDrop(handle.clone());
        let running = Running { handle, lease };
        let out = tokio::task::spawn_blocking(move || {
            let running = running;
            store::read_snapshot(running.lease.conn(), f)
        })
        .await;
        match out {
            Ok(out) => out,
            Err(e) if e.is_panic() => Err(ApiError::Internal("a read query panicked".into())),
            Err(e) => Err(ApiError::Internal(format!("read task failed: {e}"))),
        }
    }

    /// Runs a point lookup `f` on the calling task (one snapshot per call). Only for queries that
    /// probe a few index entries: it holds the HTTP worker while it runs.
    pub async fn lookup<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let lease = self.lease(READ_WAIT).await?;
        store::read_snapshot(lease.conn(), f)
    }

    /// Leases a connection (waiting at most `within`) and runs a trivial query on it: whether
    /// reads can be served now.
    pub async fn probe(&self, within: Duration) -> ReadHealth {
        let in_use = || READERS - self.shared.permits.available_permits();
        let lease = match self.lease(within).await {
            Ok(l) => l,
            Err(e) => {
                return ReadHealth {
                    ok: false,
                    problem: Some(e.to_string()),
                    in_use: in_use(),
                }
            }
        };
        let busy = in_use() - 1;
        let checked = store::read_snapshot(lease.conn(), |c| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(StoreError::from)
        });
        ReadHealth {
            ok: checked.is_ok(),
            problem: checked
                .err()
                .map(|e| format!("a read connection failed a query: {e}")),
            in_use: busy,
        }
    }

    /// A connection and its permit, waiting at most `within` for a free one.
    async fn lease(&self, within: Duration) -> Result<Lease, ApiError> {
        let permits = self.shared.permits.clone();
        let permit = match tokio::time::timeout(within, permits.acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(ApiError::Unavailable("the API is stopping".into())),
            Err(_) => {
                return Err(ApiError::Unavailable(format!(
                    "all {READERS} read connections stayed busy for {} ms; retry later",
                    within.as_millis()
                )))
            }
        };
        let idle = self
            .shared
            .idle
            .lock()
            .map_err(|_| ApiError::Internal("read pool lock poisoned".into()))?
            .pop();
        let conn = match idle {
            Some(c) => c,
            // One was closed (see `Lease::drop`): each permit stands for one connection, so
            // open its replacement.
            None => store::open_reader(&self.shared.path).map_err(|e| {
                ApiError::Unavailable(format!("no read connection: reopening the store: {e}"))
            })?,
        };
        Ok(Lease {
            conn: Some(conn),
            shared: self.shared.clone(),
            _permit: permit,
        })
    }
}

/// A leased connection; it goes back to the pool (then the permit is released) on drop.
struct Lease {
    conn: Option<Connection>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // A transaction left open (a panic inside a query) would pin an old snapshot and make
        // `read_snapshot` reuse it forever.
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            tracing::warn!("A read connection could not end its transaction; reopening it.");
            return;
        }
        match self.shared.idle.lock() {
            Ok(mut idle) => idle.push(conn),
            Err(poisoned) => poisoned.into_inner().push(conn),
        }
    }
}

/// A lease inside a blocking query. On drop (the query returned or panicked) it disarms the
/// request's [`InterruptOnDrop`] before the lease gives the connection back.
struct Running {
    handle: Arc<Mutex<Option<rusqlite::InterruptHandle>>>,
    lease: Lease,
}

impl Drop for Running {
    fn drop(&mut self) {
        match self.handle.lock() {
            Ok(mut h) => *h = None,
            Err(poisoned) => *poisoned.into_inner() = None,
        }
        // `lease` drops after this: the connection goes back only once no interrupt can hit it.
    }
}

/// Interrupts the statement running for a request whose future is dropped (the client went
/// away). Disarmed (`None`) once the query is over, so a later lease of the connection is never
/// hit; the lock is held across `interrupt` so the query cannot end in between.
struct InterruptOnDrop(Arc<Mutex<Option<rusqlite::InterruptHandle>>>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Ok(h) = self.0.lock() {
            if let Some(h) = h.as_ref() {
                h.interrupt();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(tag: &str) -> (PathBuf, ReadPool) {
        let dir = std::env::temp_dir().join(format!("ferry-reads-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ferry.db");
        let settings = crate::config::StoreSettings::for_test(path.clone());
        drop(store::open_writer(&settings).unwrap());
        let p = ReadPool::open(&path).unwrap();
        (dir, p)
    }

    fn idle(p: &ReadPool) -> usize {
        p.shared.idle.lock().unwrap().len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_request_gives_its_connection_back() {
        let (dir, p) = pool("drop");
        for _ in 0..3 * READERS {
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let q = p.run(move |_| {
                started_tx.send(()).unwrap();
                let _ = release_rx.recv();
                Ok(())
            });
            // The request future is polled until its query runs, then dropped (a client abort).
            let mut q = Box::pin(q);
            tokio::select! {
                _ = &mut q => panic!("the query waits for release"),
                _ = tokio::task::spawn_blocking(move || started_rx.recv().unwrap()) => {}
            }
            drop(q);
            release_tx.send(()).unwrap();
        }
        let health = p.probe(Duration::from_secs(5)).await;
        assert!(health.ok, "{health:?}");
        wait_idle(&p, READERS).await;
        drop(dir);
    }

    async fn wait_idle(p: &ReadPool, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while idle(p) != n || p.shared.permits.available_permits() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} idle, {} permits",
                idle(p),
                p.shared.permits.available_permits()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_query_gives_back_a_connection_outside_any_transaction() {
        let (dir, p) = pool("panic");
        for _ in 0..2 * READERS {
            let e = p
                .run(|c| -> Result<(), ApiError> {
                    assert!(!c.is_autocommit(), "inside the snapshot's transaction");
                    panic!("a bug in a query");
                })
                .await
                .unwrap_err();
            assert!(e.to_string().contains("panicked"), "{e}");
        }
        wait_idle(&p, READERS).await;
        // Every connection is back and in autocommit mode: no stale snapshot is reused.
        for _ in 0..READERS {
            let auto = p.lookup(|c| Ok(c.is_autocommit())).await.unwrap();
            assert!(!auto, "lookup runs in its own fresh transaction");
        }
        assert!(p
            .shared
            .idle
            .lock()
            .unwrap()
            .iter()
            .all(Connection::is_autocommit));
        drop(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_request_interrupts_its_query() {
        let (dir, p) = pool("interrupt");
        // A query that would run for minutes: a huge recursive count.
        let q = p.run(|c| {
            c.query_row(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| ApiError::Internal(e.to_string()))
        });
        let q = tokio::time::timeout(Duration::from_millis(100), q).await;
        assert!(q.is_err(), "still running when the client goes away");
        wait_idle(&p, READERS).await;
        drop(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_pool_is_reported_and_requests_wait_a_bounded_time() {
        let (dir, p) = pool("busy");
        let p = Arc::new(p);
        let (release_tx, release_rx) = tokio::sync::broadcast::channel::<()>(1);
        let mut held = Vec::new();
        for _ in 0..READERS {
            let p = p.clone();
            let mut rx = release_rx.resubscribe();
            held.push(tokio::spawn(async move {
                p.run(move |_| {
                    let _ = rx.blocking_recv();
                    Ok(())
                })
                .await
            }));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while p.shared.permits.available_permits() != 0 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let h = p.probe(Duration::from_millis(50)).await;
        assert!(!h.ok);
        assert_eq!(h.in_use, READERS);
        assert!(h.problem.unwrap().contains("busy"));
        release_tx.send(()).unwrap();
        for h in held {
            h.await.unwrap().unwrap();
        }
        assert!(p.probe(Duration::from_millis(50)).await.ok);
        drop(dir);
    }
}
