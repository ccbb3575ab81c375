//! The serialised body of `GET /api/v1/latest` (every device, every sensor), kept between
//! requests: a dashboard polling it should cost one build per change, not one per request.
//!
//! Invariants:
//! - A body is tagged with the highest committed event id read *before* the store was queried, so
//!   it holds at least every commit up to its tag.
//! - A body is served while no event was committed since its tag (for up to `IDLE_MAX`, which
//!   bounds how long a change without events, such as a renamed sensor, can go unseen), or while it
//!   is younger than `LAG_MAX` even though events were committed: under ingest the answer lags the
//!   newest commit by at most `LAG_MAX` plus one build.
//! - One build at a time: while one runs, other requests get the previous body if there is one,
//!   or wait for the build.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;

/// Longest a body is served while events keep being committed.
pub const LAG_MAX: Duration = Duration::from_millis(100);
/// Longest a body is served while nothing is committed.
pub const IDLE_MAX: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Built {
    committed: i64,
    at: Instant,
    body: Bytes,
}

/// A cached response body (see the module header).
#[derive(Default)]
pub struct Snapshot {
    last: Mutex<Option<Built>>,
    building: tokio::sync::Mutex<()>,
}

/// Whether a body built at `at` with tag `tag` may be served now that `committed` is the newest id.
fn servable(tag: i64, age: Duration, committed: i64) -> bool {
    (tag == committed && age < IDLE_MAX) || age < LAG_MAX
}

impl Snapshot {
    fn current(&self, committed: i64) -> Option<Bytes> {
        let last = self.last.lock().expect("snapshot lock");
        last.as_ref()
            .filter(|b| servable(b.committed, b.at.elapsed(), committed))
            .map(|b| b.body.clone())
    }

    fn any(&self) -> Option<Bytes> {
        let last = self.last.lock().expect("snapshot lock");
        last.as_ref().map(|b| b.body.clone())
    }

    /// The body to serve: a cached one if servable, else one `build` makes (with the id committed
    /// before it ran as its tag).
    pub async fn get<F, Fut, E>(&self, committed: impl Fn() -> i64, build: F) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, E>>,
    {
        if let Some(b) = self.current(committed()) {
            return Ok(b);
        }
        let _building = match self.building.try_lock() {
            Ok(g) => g,
            Err(_) => {
                if let Some(b) = self.any() {
                    return Ok(b);
                }
                self.building.lock().await
            }
        };
        // Someone may have built it while this request waited.
        let tag = committed();
        if let Some(b) = self.current(tag) {
            return Ok(b);
        }
        let body = build().await?;
        *self.last.lock().expect("snapshot lock") = Some(Built {
            committed: tag,
            at: Instant::now(),
            body: body.clone(),
        });
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_served_until_events_commit_and_then_for_at_most_the_lag() {
        let ms = Duration::from_millis;
        assert!(servable(7, ms(900), 7), "nothing new");
        assert!(!servable(7, IDLE_MAX, 7), "idle bound");
        assert!(servable(7, ms(50), 9), "new events, young body");
        assert!(!servable(7, LAG_MAX, 9), "new events, old body");
    }

    #[tokio::test]
    async fn builds_once_per_change() {
        let s = Snapshot::default();
        let builds = std::sync::atomic::AtomicU32::new(0);
        let committed = std::sync::atomic::AtomicI64::new(1);
        let build = || async {
            let n = builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Ok::<_, ()>(Bytes::from(n.to_string()))
        };
        let now = || committed.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(s.get(now, build).await.unwrap(), "1");
        assert_eq!(s.get(now, build).await.unwrap(), "1");
        committed.store(2, std::sync::atomic::Ordering::SeqCst);
        // Young enough: still the first body.
        assert_eq!(s.get(now, build).await.unwrap(), "1");
        s.last.lock().unwrap().as_mut().unwrap().at -= LAG_MAX;
        assert_eq!(s.get(now, build).await.unwrap(), "2");
        assert_eq!(s.get(now, build).await.unwrap(), "2");
    }
}
