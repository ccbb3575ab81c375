//! The OpenAPI 3 document, generated from the handlers' annotations and the response types.
//! `agent/tests/api.rs` checks it against the router and validates real responses against it.

use axum::Json;
use utoipa::OpenApi;

use super::error::ErrorDoc;
use super::model::*;

/// The document's source.
#[derive(OpenApi)]
#[openapi(
    info(title = "Ferry local API", description = "Query the gateway's store, follow live samples, send device commands, update device firmware, replay stored ranges to the cloud. Human guide: agent/API.md."),
    paths(
        super::routes::devices,
        super::routes::device,
        super::routes::device_latest,
        super::routes::all_latest,
        super::routes::events,
        super::routes::series,
        super::routes::post_command,
        super::routes::command_state,
        super::firmware::post_bundle,
        super::firmware::bundles,
        super::firmware::post_update,
        super::firmware::updates,
        super::firmware::update,
        super::firmware::cancel_update,
        super::replays::post_replay,
        super::replays::list,
        super::replays::get,
        super::replays::cancel,
        super::stream::stream,
        super::ops::status,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        document,
    ),
    components(schemas(ErrorDoc, DevicesDoc, DeviceDoc, LatestDoc, AllLatestDoc, EventsPage, EventDoc, SeriesDoc, PointDoc, CommandAccepted, CommandStateDoc, HealthDoc, ReadyDoc, StatusDoc,
        super::firmware::BundleStored, super::firmware::BundlesDoc, super::firmware::UpdatesDoc,
        crate::firmware::BundleInfo, crate::firmware::RolloutSpec, crate::firmware::RolloutView, crate::firmware::JobView,
        super::replays::ReplaysDoc, crate::uplink::replay::ReplayRequest, crate::uplink::replay::ReplayView,
        crate::uplink::replay::ReplayState, crate::uplink::replay::InstantArg)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required when [api] token is set (always for a non-loopback listen address).",
                    ))
                    .build(),
            ),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
