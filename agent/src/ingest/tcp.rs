//! TCP listener for networked devices (default `127.0.0.1:7879`): same framing as serial, one link
//! task per connection, at most `max_connections` at once (further connections are closed at once
//! and logged).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{link, LinkCtx};

/// Accepts connections until `shutdown`.
pub async fn run(
    listener: TcpListener,
    ctx: LinkCtx,
    max: usize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    beat: crate::service::Beat,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut wake = tokio::time::interval(crate::service::BEAT_EVERY);
    loop {
        beat.beat();
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.tick() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if open.load(Ordering::Relaxed) >= max {
            tracing::warn!(%peer, max, "Too many device connections; refusing this one.");
            continue;
        }
        let _ = sock.set_nodelay(true);
        open.fetch_add(1, Ordering::Relaxed);
        let (ctx, open, sd) = (ctx.clone(), open.clone(), shutdown.clone());
        tracker.spawn(async move {
            link::serve(sock, format!("tcp:{peer}"), ctx, sd).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
