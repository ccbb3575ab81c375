//! Firmware update routes: upload a signed bundle, start an update of devices (a rollout), follow
//! and cancel it. The work is the firmware actor's ([`crate::firmware`]); these only translate.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorDoc};
use super::params::Params;
use super::ApiState;
use crate::firmware::bundle::Bundle;
use crate::firmware::{BundleInfo, RolloutSpec, RolloutView};

/// Largest bundle upload (the image limit and its manifest).
pub const MAX_BUNDLE_BODY: usize = crate::firmware::bundle::MAX_IMAGE_LEN + 4096;

/// A stored bundle; `created` is false when it was stored before.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleStored {
    /// The bundle.
    #[serde(flatten)]
    pub bundle: BundleInfo,
    /// Newly stored by this request.
    pub created: bool,
}

/// Stored bundles, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundlesDoc {
    /// The bundles.
    pub bundles: Vec<BundleInfo>,
}

/// Updates (rollouts), newest first (at most 100).
#[derive(Debug, Serialize, ToSchema)]
pub struct UpdatesDoc {
    /// The updates.
    pub updates: Vec<RolloutView>,
}

/// Stores a signed bundle (the file `ferry firmware sign` writes). Verified first: a bundle whose
/// image or description was changed after signing is refused with the reason.
#[utoipa::path(post, path = "/api/v1/firmware/bundles", tag = "firmware",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bundle file"),
    responses((status = 201, body = BundleStored), (status = 200, body = BundleStored), (status = 400, body = ErrorDoc)))]
pub async fn post_bundle(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<BundleStored>), ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    let bundle = Bundle::parse(&body).map_err(|e| ApiError::param("body", e))?;
    let (info, created) = s
        .inner
        .firmware
        .add_bundle(bundle)
        .await
        .map_err(|e| ApiError::param("body", e))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(BundleStored {
            bundle: info,
            created,
        }),
    ))
}

/// Stored bundles.
#[utoipa::path(get, path = "/api/v1/firmware/bundles", tag = "firmware",
    responses((status = 200, body = BundlesDoc)))]
pub async fn bundles(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<BundlesDoc>, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    Ok(Json(BundlesDoc {
        bundles: s.inner.firmware.bundles().await,
    }))
}

/// Starts an update of devices (ids or globs) to a stored bundle.
#[utoipa::path(post, path = "/api/v1/firmware/updates", tag = "firmware",
    request_body = RolloutSpec,
    responses((status = 202, body = RolloutView), (status = 400, body = ErrorDoc)))]
pub async fn post_update(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    let spec: RolloutSpec =
        serde_json::from_slice(&body).map_err(|e| ApiError::param("body", e))?;
    let v = s
        .inner
        .firmware
        .start(spec)
        .await
        .map_err(ApiError::BadRequest)?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}

/// Updates with their jobs, newest first.
#[utoipa::path(get, path = "/api/v1/firmware/updates", tag = "firmware",
    responses((status = 200, body = UpdatesDoc)))]
pub async fn updates(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<UpdatesDoc>, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    Ok(Json(UpdatesDoc {
        updates: s.inner.firmware.list(None).await,
    }))
}

/// The path's update id (a positive integer), after checking the route takes no parameters.
fn update_id(id: &str, raw: Option<&str>) -> Result<i64, ApiError> {
    Params::parse(raw, &[])?;
    id.parse::<i64>().ok().filter(|i| *i > 0).ok_or_else(|| {
        ApiError::param(
            "id",
            format!("{id:?} is not an update id (a positive integer)"),
        )
    })
}

/// One update with its jobs.
#[utoipa::path(get, path = "/api/v1/firmware/updates/{id}", tag = "firmware",
    params(("id" = i64, Path, description = "Update id")),
    responses((status = 200, body = RolloutView), (status = 404, body = ErrorDoc)))]
pub async fn update(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<RolloutView>, ApiError> {
    let id = update_id(&id, raw.as_deref())?;
    s.inner
        .firmware
        .list(Some(id))
        .await
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no update {id}")))
}

/// Cancels an update: queued jobs end `cancelled`, transfers in progress are aborted on the
/// device; a device already told to reset into the new image finishes.
#[utoipa::path(post, path = "/api/v1/firmware/updates/{id}/cancel", tag = "firmware",
    params(("id" = i64, Path, description = "Update id")),
    responses((status = 200, body = RolloutView), (status = 404, body = ErrorDoc)))]
pub async fn cancel_update(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<RolloutView>, ApiError> {
    let id = update_id(&id, raw.as_deref())?;
    s.inner
        .firmware
        .cancel(id)
        .await
        .map(Json)
        .map_err(ApiError::NotFound)
}
