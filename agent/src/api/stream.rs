//! `GET /api/v1/stream`: Server-Sent Events of samples as they commit, and of firmware update
//! progress.
//!
//! Invariant for samples: the store is the only source. A stream holds a position (an `events.id`); when the
//! writer announces a higher committed id it reads everything above its position from the store, in
//! id order, and moves the position to what it sent. So a slow client never loses events (it just
//! reads later), and a reconnect with `Last-Event-ID` resumes exactly after the last one it got.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::error::{ApiError, ErrorDoc};
use super::model::EventDoc;
use super::params::StreamQuery;
use super::{ApiState, MAX_STREAMS};
use crate::store::query::{self, EventFilter, EventRow};

/// Events read per store query.
const PAGE: usize = 500;

struct Follow {
    state: ApiState,
    filter: EventFilter,
    device: Option<String>,
    pos: i64,
    buf: VecDeque<EventRow>,
    committed: watch::Receiver<i64>,
    _permit: OwnedSemaphorePermit,
}

impl Follow {
    /// The next message, or `None` when the agent stops or the store fails.
    async fn next(&mut self) -> Option<EventRow> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return Some(e);
            }
            let upto = *self.committed.borrow_and_update();
            if self.pos < upto {
                let (filter, device, pos) = (self.filter.clone(), self.device.clone(), self.pos);
                let read = self
                    .state
                    .inner
                    .reads
                    .run_events(move |c, t| {
                        let mut f = filter;
                        if let Some(name) = &device {
                            match query::device_key(c, name)? {
                                Some(k) => f.device = Some(k),
                                // Unknown in this snapshot: none of its events exist up to `upto`.
                                None => return Ok((Vec::new(), upto, None)),
                            }
                        }
                        let key = f.device;
                        let (rows, reached) = query::events_by_id(c, t, &f, pos, upto, PAGE)?;
                        Ok((rows, reached, key))
                    })
                    .await;
                match read {
                    Ok((rows, reached, key)) => {
                        if key.is_some() {
                            self.filter.device = key;
                            self.device = None;
                        }
                        self.pos = reached;
                        self.buf.extend(rows);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Live stream ended on a store error; the client resumes with Last-Event-ID.");
                        return None;
                    }
                }
            }
            tokio::select! {
                changed = self.committed.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = self.state.inner.stop.cancelled() => return None,
            }
        }
    }
}

/// Live samples as Server-Sent Events (`event: sample`, `id:` = event id, `data:` = the event),
/// and firmware update progress (`event: firmware`, no id, `data:` = the job as in
/// `GET /api/v1/firmware/updates/{id}`), for the filtered device only when `device` is given.
/// Progress events carry no id: they are live only, never replayed, and leave the client's
/// Last-Event-ID (its sample position) as it was.
#[utoipa::path(get, path = "/api/v1/stream", tag = "events",
    params(
        ("device" = Option<String>, Query, description = "Only this device"),
        ("sensor" = Option<String>, Query, description = "Only this sensor name"),
        ("last_event_id" = Option<i64>, Query, description = "Resume after this id (the Last-Event-ID header wins)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this id: replays stored events first"),
    ),
    responses(
        (status = 200, description = "text/event-stream of `sample` events whose data is an Event, and `firmware` events whose data is a firmware job", content_type = "text/event-stream", body = EventDoc),
        (status = 400, body = ErrorDoc),
        (status = 503, body = ErrorDoc, description = "too many streams open")))]
pub async fn stream(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let header = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("invalid"));
    let q = StreamQuery::parse(raw.as_deref(), header)?;
    let permit = s
        .inner
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyStreams(MAX_STREAMS))?;
    let jobs = s.inner.firmware.subscribe();
    let job_device = q.device.clone();
    let mut committed = s.inner.store.committed();
    let pos = match q.last_event_id {
        Some(id) => id,
        None => *committed.borrow_and_update(),
    };
    let follow = Follow {
        filter: EventFilter {
            sensor: q.sensor,
            ..EventFilter::default()
        },
        device: q.device,
        state: s,
        pos,
        buf: VecDeque::new(),
        committed,
        _permit: permit,
    };
    // An id-only block first: it dispatches nothing, but a client (EventSource, `ferry tail`) that
    // reconnects before its first sample resumes from here instead of from "now".
    let start = futures_util::stream::once(async move {
        Ok::<Event, Infallible>(Event::default().id(pos.to_string()))
    });
    let events = futures_util::stream::unfold(follow, |mut f| async move {
        let e = f.next().await?;
        let id = e.id;
        let msg = Event::default()
            .event("sample")
            .id(id.to_string())
            .json_data(EventDoc::from(e))
            .unwrap_or_else(|_| Event::default().comment("unencodable event"));
        Some((Ok(msg), f))
    });
    let progress = tokio_stream::wrappers::BroadcastStream::new(jobs).filter_map(move |j| {
        // A lagging client skips progress it missed: the next event says where the job is.
        let keep = j
            .ok()
            .filter(|j| job_device.as_ref().is_none_or(|d| *d == j.device))
            .and_then(|j| Event::default().event("firmware").json_data(j).ok());
        async move { keep.map(Ok::<Event, Infallible>) }
    });
    // The stream ends with the samples (agent stopping, store error), progress or not: the
    // samples' end is marked by a `None` that stops the merged stream.
    let samples = events
        .map(Some)
        .chain(futures_util::stream::once(async { None }));
    let merged = futures_util::stream::select(samples, progress.map(Some))
        .take_while(|x| futures_util::future::ready(x.is_some()))
        .filter_map(futures_util::future::ready);
    Ok(Sse::new(start.chain(merged)).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    ))
}
