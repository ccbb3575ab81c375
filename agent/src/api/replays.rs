//! Replay routes: send a stored range to the cloud again, and follow it. The work is the
//! uplink's ([`crate::uplink::replay`]); these only translate.

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

/// Sends the stored events of a time range (device time, `since <= ts < until`) to the cloud
/// again, of one device or of all; the cloud deduplicates what it already has. Answers at once
/// with the replay; follow it with `GET /api/v1/replays/{id}`.
#[utoipa::path(post, path = "/api/v1/replays", tag = "replays",
    request_body = ReplayRequest,
    responses((status = 202, body = ReplayView), (status = 400, body = ErrorDoc),
        (status = 404, body = ErrorDoc), (status = 409, body = ErrorDoc)))]
pub async fn post_replay(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ReplayView>), ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    let r = replays(&s)?;
    let req: ReplayRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::param("body", e))?;
    match r.start(&req).await {
        Ok(v) => Ok((StatusCode::ACCEPTED, Json(v))),
        Err(e @ StartError::BadRequest(_)) => Err(ApiError::BadRequest(e.to_string())),
        Err(e @ StartError::UnknownDevice(_)) => Err(ApiError::NotFound(e.to_string())),
        Err(e @ StartError::Busy(_)) => Err(ApiError::Conflict(e.to_string())),
        Err(StartError::Store(e)) => Err(ApiError::Internal(format!("store: {e}"))),
    }
}

/// The replays since the agent started, newest first.
#[utoipa::path(get, path = "/api/v1/replays", tag = "replays",
    responses((status = 200, body = ReplaysDoc), (status = 409, body = ErrorDoc)))]
pub async fn list(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ReplaysDoc>, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    Ok(Json(ReplaysDoc {
        replays: replays(&s)?.list(),
    }))
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
    Params::parse(raw.as_deref(), &[])?;
    let id: u64 = id.parse().ok().filter(|i| *i > 0).ok_or_else(|| {
        ApiError::param(
            "id",
            format!("{id:?} is not a replay id (a positive integer)"),
        )
    })?;
    replays(&s)?.get(id).map(Json).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no replay {id} (replays are kept in memory: the last 20 since the agent started)"
        ))
    })
}
