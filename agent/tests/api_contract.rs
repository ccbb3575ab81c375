//! The local API against its own contract: the OpenAPI document covers every route and real
//! responses validate against it; random query strings never get a 5xx.
use std::time::Duration;

use serde_json::Value;

use crate::api::{agent_with_data, get, ok};

/// Validates `value` against a schema of the OpenAPI document (refs resolve inside the document).
pub(crate) fn validate(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    let v = jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("{what}: schema: {e}"));
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_covers_every_route_and_real_responses_validate_against_it() {
    let (_dir, agent, base) = agent_with_data("api-openapi").await;
    let doc = ok(&format!("{base}/api/v1/openapi.json")).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    // The router's routes (api/mod.rs), besides the dashboard's static files.
    let mut served = vec![
        "GET /api/v1/devices",
        "GET /api/v1/devices/{id}",
        "GET /api/v1/devices/{id}/latest",
        "POST /api/v1/devices/{id}/commands",
        "GET /api/v1/devices/{id}/commands/{request_id}",
        "POST /api/v1/firmware/bundles",
        "GET /api/v1/firmware/bundles",
        "POST /api/v1/firmware/updates",
        "GET /api/v1/firmware/updates",
        "GET /api/v1/firmware/updates/{id}",
        "POST /api/v1/firmware/updates/{id}/cancel",
        "POST /api/v1/replays",
        "GET /api/v1/replays",
        "GET /api/v1/replays/{id}",
        "POST /api/v1/replays/{id}/cancel",
        "GET /api/v1/latest",
        "GET /api/v1/events",
        "GET /api/v1/series",
        "GET /api/v1/stream",
        "GET /api/v1/status",
        "GET /api/v1/openapi.json",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    ];
    served.sort();
    assert_eq!(documented, served);

    // Real responses against their documented 200 schemas.
    let schema_of = |path: &str, status: &str| -> Value {
        let op = &doc["paths"][path]["get"]["responses"][status]["content"]["application/json"]
            ["schema"];
        assert!(!op.is_null(), "{path} {status} has a JSON schema");
        op.clone()
    };
    let cases = [
        ("/api/v1/devices", "/api/v1/devices"),
        ("/api/v1/devices/{id}", "/api/v1/devices/sim-0000"),
        (
            "/api/v1/devices/{id}/latest",
            "/api/v1/devices/sim-0000/latest",
        ),
        ("/api/v1/latest", "/api/v1/latest"),
        ("/api/v1/events", "/api/v1/events?limit=20"),
        ("/api/v1/events", "/api/v1/events?device=sim-0000&limit=20"),
        (
            "/api/v1/series",
            "/api/v1/series?device=sim-0000&sensor=temperature&since=-1d&bucket=1h&agg=last",
        ),
        ("/api/v1/status", "/api/v1/status"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
    ];
    for (path, url) in cases {
        let v = ok(&format!("{base}{url}")).await;
        validate(&doc, &schema_of(path, "200"), &v, url);
    }
    // Errors match ErrorDoc.
    let (_, e) = get(&format!("{base}/api/v1/events?limit=0")).await;
    validate(&doc, &schema_of("/api/v1/events", "400"), &e, "400");
    let (_, e) = get(&format!("{base}/api/v1/devices/ghost")).await;
    validate(&doc, &schema_of("/api/v1/devices/{id}", "404"), &e, "404");
    // This agent forwards nowhere: replays are a conflict with its config.
    let (status, e) = get(&format!("{base}/api/v1/replays")).await;
    assert_eq!(status, 409, "{e}");
    validate(&doc, &schema_of("/api/v1/replays", "409"), &e, "409");
    agent.stop().await.unwrap();
}

#[test]
fn random_query_strings_never_get_a_5xx() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (dir, agent, base) = rt.block_on(agent_with_data("api-fuzz"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let key = prop_oneof![
        Just("device"),
        Just("sensor"),
        Just("since"),
        Just("until"),
        Just("limit"),
        Just("cursor"),
        Just("bucket"),
        Just("agg"),
        Just("last_event_id"),
        Just("access_token"),
        Just("x"),
    ];
    let value = prop_oneof![
        Just("sim-0000".to_owned()),
        Just("temperature".to_owned()),
        Just("-1h".to_owned()),
        Just("now".to_owned()),
        Just("0".to_owned()),
        Just("1000".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("t1.1".to_owned()),
        Just("s99999999999".to_owned()),
        Just("1s".to_owned()),
        Just("last".to_owned()),
        Just("2026-11-24T10:00:00Z".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("%".to_owned()),
        "\\PC{0,24}",
        "[0-9a-z.:+-]{0,16}",
    ];
    let path = prop_oneof![
        Just("/api/v1/events"),
        Just("/api/v1/series"),
        Just("/api/v1/devices"),
        Just("/api/v1/latest"),
        Just("/api/v1/devices/sim-0000/latest"),
        Just("/api/v1/devices/%00/latest"),
        Just("/api/v1/status"),
        Just("/api/v1/stream"),
        Just("/api/v1/devices/sim-0000/commands/x"),
    ];
    let strategy = (path, proptest::collection::vec((key, value), 0..6));
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 400,
        failure_persistence: None,
        ..Default::default()
    });
    let checked = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&strategy, |(path, pairs)| {
            let query: String = pairs
                .iter()
                .map(|(k, v)| {
                    // Raw (sometimes invalid) encodings go through as they are.
                    let v = if v.starts_with('%') {
                        v.clone()
                    } else {
                        form_urlencoded::byte_serialize(v.as_bytes()).collect()
                    };
                    format!("{k}={v}")
                })
                .collect::<Vec<_>>()
                .join("&");
            let url = format!("{base}{path}?{query}");
            let status = rt.block_on(async {
                let r = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
                let s = r.status().as_u16();
                if path != "/api/v1/stream" || s != 200 {
                    let body = r.text().await.unwrap_or_default();
                    if s != 200 {
                        let v: Value = serde_json::from_str(&body).map_err(|_| {
                            TestCaseError::fail(format!("{url}: {s} body is not JSON: {body}"))
                        })?;
                        prop_assert!(
                            v["error"].is_string() && v["detail"].is_string(),
                            "{url}: {v}"
                        );
                    }
                }
                Ok::<u16, TestCaseError>(s)
            })?;
            checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            prop_assert!(status < 500, "{url} answered {status}");
            Ok(())
        })
        .unwrap();
    println!(
        "{} random requests, none answered 5xx",
        checked.into_inner()
    );
    rt.block_on(agent.stop()).unwrap();
    drop(dir);
}
