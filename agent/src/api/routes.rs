//! Request/response routes over the store: devices, latest values, events pages, series, commands.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_contract::CommandRequest;

use super::error::{ApiError, ErrorDoc};
use super::model::*;
use super::params::{Cursor, EventsQuery, Params, SeriesQuery};
use super::time::format_ms;
use super::ApiState;
use crate::store::query::{self, EventFilter, ForwardPosition};

/// The path's device id: one the link protocol can carry (D3), or a 400 naming `id`.
fn check_device_id(id: &str) -> Result<(), ApiError> {
    crate::commands::check_device_id(id).map_err(|e| ApiError::param("id", e))
}

/// One path segment for a URL: every byte but RFC 3986's unreserved characters percent-encoded,
/// so any id (with `/`, `?`, `%`, spaces...) stays one segment and reads back unchanged.
pub fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn device_docs(s: &ApiState, only: Option<String>) -> Result<Vec<DeviceDoc>, ApiError> {
    let one = only.is_some();
    let forwarding_on = s.inner.forwarding_on;
    let read = move |c: &rusqlite::Connection, t: &crate::store::tail::TailView| {
        let pos = if forwarding_on {
            Some(ForwardPosition::read(c)?)
        } else {
            None
        };
        let now = crate::utc_now_ms();
        Ok(query::devices(c, t, only.as_deref(), pos)?
            .into_iter()
            .map(|d| DeviceDoc::new(d, forwarding_on, now))
            .collect())
    };
    let _ = one;
    s.inner.reads.run_events(read).await
}

/// Every device.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    responses((status = 200, body = DevicesDoc), (status = 400, body = ErrorDoc)))]
pub async fn devices(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<DevicesDoc>, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    Ok(Json(DevicesDoc {
        devices: device_docs(&s, None).await?,
    }))
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceDoc), (status = 404, body = ErrorDoc)))]
pub async fn device(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<DeviceDoc>, ApiError> {
    check_device_id(&id)?;
    Params::parse(raw.as_deref(), &[])?;
    device_docs(&s, Some(id.clone()))
        .await?
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))
}

/// The last value of each sensor of a device.
#[utoipa::path(get, path = "/api/v1/devices/{id}/latest", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = LatestDoc), (status = 404, body = ErrorDoc)))]
pub async fn device_latest(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<LatestDoc>, ApiError> {
    check_device_id(&id)?;
    Params::parse(raw.as_deref(), &[])?;
    let want = id.clone();
    let (known, rows) = s
        .inner
        .reads
        .run_events(move |c, t| {
            Ok((
                query::device_key(c, &want)?.is_some(),
                query::latest(c, t, Some(&want))?,
            ))
        })
        .await?;
    if !known {
        return Err(ApiError::NotFound(format!("no device {id:?}")));
    }
    let values = rows.into_iter().next().map(|(_, v)| v).unwrap_or_default();
    Ok(Json(LatestDoc::new(id, values)))
}

/// The last value of each sensor of every device. Under ingest the answer may lag the newest
/// commit by up to 100 ms (it is built at most once per change, see `api::snapshot`).
#[utoipa::path(get, path = "/api/v1/latest", tag = "devices",
    responses((status = 200, body = AllLatestDoc), (status = 400, body = ErrorDoc)))]
pub async fn all_latest(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    Params::parse(raw.as_deref(), &[])?;
    let committed = s.inner.store.committed();
    let body = s
        .inner
        .latest
        .get(
            || *committed.borrow(),
            || async {
                let rows = s
                    .inner
                    .reads
                    .run_events(|c, t| Ok(query::latest(c, t, None)?))
                    .await?;
                let doc = AllLatestDoc {
                    devices: rows
                        .into_iter()
                        .map(|(d, v)| LatestDoc::new(d, v))
                        .collect(),
                };
                let json =
                    serde_json::to_vec(&doc).map_err(|e| ApiError::Internal(e.to_string()))?;
                Ok::<_, ApiError>(axum::body::Bytes::from(json))
            },
        )
        .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Stored events, a page at a time (keyset pagination).
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(
        ("device" = Option<String>, Query, description = "Device id; with it rows come in (ts, id) order, without it in store order"),
        ("sensor" = Option<String>, Query, description = "Sensor name"),
        ("since" = Option<String>, Query, description = "Inclusive: RFC 3339, Unix ms, now, or relative like -1h"),
        ("until" = Option<String>, Query, description = "Exclusive; same forms as since"),
        ("limit" = Option<usize>, Query, description = "Page size, 1..=1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, body = EventsPage), (status = 400, body = ErrorDoc)))]
pub async fn events(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<EventsPage>, ApiError> {
    let q = EventsQuery::parse(raw.as_deref(), crate::utc_now_ms())?;
    let page = s
        .inner
        .reads
        .run_events(move |c, t| {
            let mut f = EventFilter {
                device: None,
                sensor: q.sensor.clone(),
                since_ms: q.since_ms,
                until_ms: q.until_ms,
            };
            match &q.device {
                Some(name) => {
                    let Some(key) = query::device_key(c, name)? else {
                        return Ok(EventsPage {
                            events: Vec::new(),
                            next_cursor: None,
                        });
                    };
                    f.device = Some(key);
                    let after = match q.cursor {
                        Some(Cursor::Time(ts, id)) => Some((ts, id)),
                        _ => None,
                    };
                    let rows = query::device_events(c, t, &f, after, q.limit)?;
                    let next = (rows.len() == q.limit)
                        .then(|| rows.last().map(|r| Cursor::Time(r.ts_ms, r.id).encode()))
                        .flatten();
                    Ok(EventsPage {
                        events: rows.into_iter().map(EventDoc::from).collect(),
                        next_cursor: next,
                    })
                }
                None => {
                    let after = match q.cursor {
                        Some(Cursor::Store(id)) => id,
                        _ => 0,
                    };
                    let upto = query::max_event_id(c, t)?;
                    let (rows, reached) = query::events_by_id(c, t, &f, after, upto, q.limit)?;
                    let next = (reached < upto).then(|| Cursor::Store(reached).encode());
                    Ok(EventsPage {
                        events: rows.into_iter().map(EventDoc::from).collect(),
                        next_cursor: next,
                    })
                }
            }
        })
        .await?;
    Ok(Json(page))
}

/// One sensor downsampled into time buckets, computed in SQL.
#[utoipa::path(get, path = "/api/v1/series", tag = "events",
    params(
        ("device" = String, Query, description = "Device id"),
        ("sensor" = String, Query, description = "Sensor name"),
        ("since" = Option<String>, Query, description = "Inclusive (default -1h)"),
        ("until" = Option<String>, Query, description = "Exclusive (default now)"),
        ("bucket" = Option<String>, Query, description = "Bucket width, e.g. 10s, 1m, 1h (default 1m, at least 1s, at most 10,000 buckets)"),
        ("agg" = Option<String>, Query, description = "avg (default), min, max, count or last"),
    ),
    responses((status = 200, body = SeriesDoc), (status = 400, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub async fn series(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<SeriesDoc>, ApiError> {
    let q = SeriesQuery::parse(raw.as_deref(), crate::utc_now_ms())?;
    let doc = s
        .inner
        .reads
        .run_events(move |c, t| {
            let key = query::device_key(c, &q.device)?
                .ok_or_else(|| ApiError::NotFound(format!("no device {:?}", q.device)))?;
            let (index, unit) = query::sensor(c, key, &q.sensor)?.ok_or_else(|| {
                ApiError::NotFound(format!(
                    "device {:?} has no sensor {:?}",
                    q.device, q.sensor
                ))
            })?;
            let points =
                query::series(c, t, key, index, q.since_ms, q.until_ms, q.bucket_ms, q.agg)?;
            Ok(SeriesDoc {
                device: q.device.clone(),
                sensor: q.sensor.clone(),
                unit,
                agg: q.agg.name().into(),
                bucket_ms: q.bucket_ms,
                since: format_ms(q.since_ms),
                until: format_ms(q.until_ms),
                points: points
                    .into_iter()
                    .map(|(t, value, count)| PointDoc {
                        ts: format_ms(t),
                        ts_ms: t,
                        value,
                        count,
                    })
                    .collect(),
            })
        })
        .await?;
    Ok(Json(doc))
}

/// How long a POSTed command may take to be stored before the request gives up.
const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends a command to a device: the same path as an MQTT downlink command.
#[utoipa::path(post, path = "/api/v1/devices/{id}/commands", tag = "commands",
    params(("id" = String, Path, description = "Device id")),
    request_body(content = Object, description = "The MQTT downlink command JSON: {\"v\":1,\"id\":\"req-1\",\"command\":{...},\"ttl_s\":60}"),
    responses((status = 202, body = CommandAccepted), (status = 400, body = ErrorDoc)))]
pub async fn post_command(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    check_device_id(&id)?;
    Params::parse(raw.as_deref(), &[])?;
    let request = CommandRequest::decode(&body).map_err(|e| ApiError::param("body", e))?;
    // URL parsers treat `.` and `..` segments (also as `%2E`) as "this" and "up": no `Location`
    // could name them. Every other id is percent-encoded into it.
    if matches!(request.id.as_str(), "." | "..") {
        return Err(ApiError::param(
            "body.id",
            format!(
                "{:?} cannot be a URL path segment, so its state could not be read back; choose another id",
                request.id
            ),
        ));
    }
    let request_id = request.id.clone();
    // Answer once it is stored: accepted means it survives a restart.
    let stored = tokio::time::timeout(
        STORE_WAIT,
        s.inner.commands.submit_stored(id.clone(), request),
    )
    .await;
    if stored != Ok(true) {
        return Err(ApiError::Unavailable(
            "the command was not stored (store busy, full or stopping); retry with the same id"
                .into(),
        ));
    }
    let location = format!(
        "/api/v1/devices/{}/commands/{}",
        path_segment(&id),
        path_segment(&request_id)
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(CommandAccepted {
            device: id,
            id: request_id,
            status: "accepted".into(),
            location,
        }),
    ))
}

/// A command's state and outcome.
#[utoipa::path(get, path = "/api/v1/devices/{id}/commands/{request_id}", tag = "commands",
    params(("id" = String, Path, description = "Device id"), ("request_id" = String, Path, description = "The command's id")),
    responses((status = 200, body = CommandStateDoc), (status = 404, body = ErrorDoc)))]
pub async fn command_state(
    State(s): State<ApiState>,
    Path((id, request_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<CommandStateDoc>, ApiError> {
    check_device_id(&id)?;
    Params::parse(raw.as_deref(), &[])?;
    let (d, r) = (id.clone(), request_id.clone());
    let row = s
        .inner
        .reads
        .lookup(move |c| Ok(query::command(c, &d, &r)?))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no command {request_id:?} for {id:?}")))?;
    let (done, outcome) = row;
    Ok(Json(CommandStateDoc {
        device: id,
        id: request_id,
        status: if done { "done" } else { "pending" }.into(),
        outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_keep_any_id_in_one_segment() {
        assert_eq!(path_segment("req-1.a_b~"), "req-1.a_b~");
        assert_eq!(path_segment("../../x"), "..%2F..%2Fx");
        assert_eq!(path_segment("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(path_segment("é\0"), "%C3%A9%00");
    }
}
