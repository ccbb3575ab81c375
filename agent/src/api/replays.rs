//! Replay routes: send a stored range to the cloud again, follow it, cancel it. The work is the
//! uplink's ([`crate::uplink::replay`]); these only translate. Without an uplink every route
//! answers `409` before looking at the request.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorDoc};
use super::params::Params;
use super::ApiState;
use crate::uplink::replay::{ReplayRequest, ReplayView, Replays, StartError};

/// Replays since the agent started, newest first (at most 20).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplaysDoc {
    /// The replays.
    pub replays: Vec<ReplayView>,
}

fn replays(s: &ApiState) -> Result<&Replays, ApiError> {
    s.inner.replays.as_ref().ok_or_else(|| {
        ApiError::Conflict(
            "forwarding is off (no [uplink] broker in the agent's config): there is no cloud to replay to"
                .into(),
        )
    })
}

/// The path's replay id (decimal digits, positive), after checking the route takes no parameters.
fn replay_id(id: &str, raw: Option<&str>) -> Result<u64, ApiError> {
    Params::parse(raw, &[])?;
    id.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| id.parse::<u64>().ok())
        .flatten()
        .filter(|i| *i > 0)
        .ok_or_else(|| {
            ApiError::param(
                "id",
                format!("{id:?} is not a replay id (a positive integer)"),
            )
        })
}

fn not_found(id: u64) -> ApiError {
    ApiError::NotFound(format!(
        "no replay {id} (the agent keeps the last 20 since it started)"
    ))
}

/// Sends the stored events of a time range (device time, `since <= ts < until`) to the cloud
/// again, of one device or of all; the cloud deduplicates what it already has. Answers at once
/// with the replay; follow it with `GET /api/v1/replays/{id}`.
#[utoipa::path(post, path = "/api/v1/replays", tag = "replays",
    request_body = ReplayRequest,
    responses((status = 202, body = ReplayView), (status = 400, body = ErrorDoc),
        (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc), (status = 503, body = ErrorDoc)))]
pub async fn post_replay(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ReplayView>), ApiError> {
    let r = replays(&s)?;
    Params::parse(raw.as_deref(), &[])?;
    let req: ReplayRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::param("body", e))?;
    match r.start(&req).await {
        Ok(v) => Ok((StatusCode::ACCEPTED, Json(v))),
        Err(e @ StartError::BadRequest(_)) => Err(ApiError::BadRequest(e.to_string())),
        Err(e @ StartError::UnknownDevice(_)) => Err(ApiError::NotFound(e.to_string())),
        Err(e @ StartError::Busy(_)) => Err(ApiError::Conflict(e.to_string())),
        Err(StartError::Store(e)) => Err(e.into()),
        Err(e @ StartError::Read(_)) => Err(ApiError::Internal(e.to_string())),
    }
}

/// The replays since the agent started, newest first.
#[utoipa::path(get, path = "/api/v1/replays", tag = "replays",
    responses((status = 200, body = ReplaysDoc), (status = 409, body = ErrorDoc)))]
pub async fn list(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ReplaysDoc>, ApiError> {
    let r = replays(&s)?;
    Params::parse(raw.as_deref(), &[])?;
    Ok(Json(ReplaysDoc { replays: r.list() }))
}

/// One replay, with its progress.
#[utoipa::path(get, path = "/api/v1/replays/{id}", tag = "replays",
    params(("id" = u64, Path, description = "Replay id")),
    responses((status = 200, body = ReplayView), (status = 400, body = ErrorDoc),
        (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc)))]
pub async fn get(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ReplayView>, ApiError> {
    let r = replays(&s)?;
    let id = replay_id(&id, raw.as_deref())?;
    r.get(id).map(Json).ok_or_else(|| not_found(id))
}

/// Cancels a running replay: no further message goes to the uplink, and it ends `cancelled` (what
/// the broker acked stays delivered). Cancelling a replay that ended changes nothing.
#[utoipa::path(post, path = "/api/v1/replays/{id}/cancel", tag = "replays",
    params(("id" = u64, Path, description = "Replay id")),
    responses((status = 200, body = ReplayView), (status = 400, body = ErrorDoc),
        (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc)))]
pub async fn cancel(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ReplayView>, ApiError> {
    let r = replays(&s)?;
    let id = replay_id(&id, raw.as_deref())?;
    r.cancel(id).ok_or_else(|| not_found(id))?;
    // The replay thread ends it within a moment; answer with its state then.
    for _ in 0..50 {
        match r.get(id) {
            Some(v) if v.state != crate::uplink::replay::ReplayState::Running => {
                return Ok(Json(v))
            }
            None => return Err(not_found(id)),
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    r.get(id).map(Json).ok_or_else(|| not_found(id))
}
