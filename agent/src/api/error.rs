//! API errors by meaning: each maps to one status and a JSON body `{"error", "detail"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDoc {
    /// Kind: `bad_request` (400, and 413/414/431 for a body, target or head too large),
    /// `unauthorized` (401), `not_found` (404), `method_not_allowed` (405), `conflict` (409),
    /// `too_many_streams`
    /// (503), `unavailable` (503), `internal` (500).
    pub error: String,
    /// What is wrong, naming the parameter.
    pub detail: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A client mistake in a parameter or body.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token.
    #[error(
        "a valid `Authorization: Bearer <token>` header (or access_token parameter) is required"
    )]
    Unauthorized,
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the agent's state (another replay runs, forwarding is off).
    #[error("{0}")]
    Conflict(String),
    /// Too many live streams open.
    #[error("{0} live streams are open; close one or retry later")]
    TooManyStreams(usize),
    /// The agent cannot answer now (store stopping, busy).
    #[error("{0}")]
    Unavailable(String),
    /// A failure on our side (a bug or a broken store).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A bad parameter: `name: detail`.
    pub fn param(name: &str, detail: impl std::fmt::Display) -> ApiError {
        ApiError::BadRequest(format!("{name}: {detail}"))
    }

    fn status_kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooManyStreams(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Stopped => ApiError::Unavailable("the store is stopping".into()),
            other => ApiError::Internal(format!("store: {other}")),
        }
    }
}

/// A JSON error response with a given status (also used to rewrite axum's plain-text rejections).
pub fn error_response(status: StatusCode, kind: &str, detail: String) -> Response {
    let body = ErrorDoc {
        error: kind.to_owned(),
        detail,
    };
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_kind();
        if status.is_server_error() && !matches!(self, ApiError::TooManyStreams(_)) {
            tracing::warn!(error = %self, "API request failed on the agent's side.");
        }
        let mut r = error_response(status, kind, self.to_string());
        if matches!(self, ApiError::Unauthorized) {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ferry\""),
            );
        }
        r
    }
}
