//! The local API with odd data: NaN and infinite readings served as strings on every route, and
//! device ids, request ids and times at the edges of what the protocol and the store accept.
use std::time::Duration;

use ferry_agent::Agent;
use serde_json::Value;

use crate::api::{get, ok, read_sse};
use crate::api_contract::validate;
use crate::common::{agent, TempDir};
use crate::poll::try_poll_until;

/// Sends `values` per sensor from one device over a real link (seqs 0.., 10 ms apart, sensors
/// interleaved in the order given) and waits until all are acked. Returns (device, API base).
async fn store_readings(
    agent: &Agent,
    device: &str,
    sensors: &[(&str, &[f32])],
) -> (crate::common::DeviceLink, u32) {
    let mut link = crate::common::DeviceLink::connect(
        agent.tcp_addr.unwrap(),
        device,
        0x0D1_0001,
        &sensors.iter().map(|(n, _)| (*n, "u")).collect::<Vec<_>>(),
    )
    .await;
    let longest = sensors.iter().map(|(_, v)| v.len()).max().unwrap();
    let mut values = Vec::new();
    for i in 0..longest {
        for (s, (_, vs)) in sensors.iter().enumerate() {
            if let Some(v) = vs.get(i) {
                values.push((s as u8, *v));
            }
        }
    }
    link.send(0, &values).await;
    let n = values.len() as u32;
    link.wait_acked(n, Duration::from_secs(15)).await;
    (link, n)
}

/// The JSON form of a reading (D1).
fn json_value(v: f32) -> Value {
    if v.is_nan() {
        Value::from("NaN")
    } else if v == f32::INFINITY {
        Value::from("Infinity")
    } else if v == f32::NEG_INFINITY {
        Value::from("-Infinity")
    } else {
        serde_json::json!(f64::from(v))
    }
}

/// A value of the API's JSON as a number (D1's strings included).
fn from_json(v: &Value) -> f64 {
    match v.as_str() {
        Some("NaN") => f64::NAN,
        Some("Infinity") => f64::INFINITY,
        Some("-Infinity") => f64::NEG_INFINITY,
        _ => v.as_f64().unwrap_or_else(|| panic!("{v} is not a value")),
    }
}

/// Reads `sensors` back from every route that serves values and checks each is `json_value` of
/// what was sent, and that the answers match the OpenAPI document's schemas.
async fn check_every_route(base: &str, device: &str, sensors: &[(&str, &[f32])]) {
    let doc = ok(&format!("{base}/api/v1/openapi.json")).await;
    let schema_of = |path: &str| {
        doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            .clone()
    };
    // Events, per device (time order) and in store order: every value in the order sent.
    for url in [
        format!("{base}/api/v1/events?device={device}&limit=1000"),
        format!("{base}/api/v1/events?limit=1000"),
    ] {
        let page = ok(&url).await;
        validate(&doc, &schema_of("/api/v1/events"), &page, &url);
        for (name, vs) in sensors {
            let got: Vec<Value> = page["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["device"] == device && e["sensor"] == *name)
                .map(|e| e["value"].clone())
                .collect();
            let want: Vec<Value> = vs.iter().map(|v| json_value(*v)).collect();
            assert_eq!(got, want, "{url}: {name}");
        }
    }
    // Latest, of the device and of all devices: the last value of each sensor.
    let mine = ok(&format!("{base}/api/v1/devices/{device}/latest")).await;
    validate(
        &doc,
        &schema_of("/api/v1/devices/{id}/latest"),
        &mine,
        "latest",
    );
    // The shared body may lag the newest commit by up to 100 ms (at the deadline, the last one
    // is validated).
    let mut all = Value::Null;
    let _ = try_poll_until(Duration::from_secs(5), "/latest to match", async || {
        all = ok(&format!("{base}/api/v1/latest")).await;
        let theirs = all["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == device);
        theirs == Some(&mine)
    })
    .await;
    validate(&doc, &schema_of("/api/v1/latest"), &all, "all latest");
    for (name, vs) in sensors {
        let s = mine["sensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["sensor"] == *name)
            .unwrap_or_else(|| panic!("{name} in {mine}"));
        assert_eq!(s["value"], json_value(*vs.last().unwrap()), "latest {name}");
    }
    // Series: `last`, `min` and `max` over one bucket holding every sample of a sensor.
    for (name, vs) in sensors {
        for (agg, want) in [
            ("last", *vs.last().unwrap()),
            ("min", vs.iter().copied().fold(f32::INFINITY, f32::min)),
            ("max", vs.iter().copied().fold(f32::NEG_INFINITY, f32::max)),
        ] {
            if vs.iter().any(|v| v.is_nan()) && agg != "last" {
                continue; // SQL's min/max skip the NULL a NaN is stored as
            }
            let url = format!(
                "{base}/api/v1/series?device={device}&sensor={name}&since=-1d&until=%2B1d&bucket=1d&agg={agg}"
            );
            let s = ok(&url).await;
            validate(&doc, &schema_of("/api/v1/series"), &s, &url);
            // One bucket, or two if the samples straddle a UTC midnight: fold them.
            let values: Vec<f64> = s["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| from_json(&p["value"]))
                .collect();
            let got = match agg {
                "last" => *values.last().unwrap(),
                "min" => values.iter().copied().fold(f64::INFINITY, f64::min),
                _ => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            };
            assert_eq!(json_value(got as f32), json_value(want), "{url}: {s}");
        }
    }
    // The live stream, replayed from the start: the same values, as strings in `data`.
    let r = reqwest::Client::new()
        .get(format!(
            "{base}/api/v1/stream?device={device}&last_event_id=0"
        ))
        .send()
        .await
        .unwrap();
    let total: usize = sensors.iter().map(|(_, v)| v.len()).sum();
    let msgs = read_sse(r, total).await;
    for (name, vs) in sensors {
        let got: Vec<Value> = msgs
            .iter()
            .filter(|(_, e)| e["sensor"] == *name)
            .map(|(_, e)| e["value"].clone())
            .collect();
        let want: Vec<Value> = vs.iter().map(|v| json_value(*v)).collect();
        assert_eq!(got, want, "stream: {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_readings_are_served_as_strings_on_every_route() {
    let dir = TempDir::new("api-inf");
    let agent = agent(&dir.path().join("ferry.db"), "").await;
    let base = format!("http://{}", agent.api_addr.unwrap());
    // +Inf and -Inf on separate sensors: one ten-second summary holding both would sum to NaN,
    // which is the NaN case below.
    let up: &[f32] = &[1.5, f32::INFINITY, 2.5, f32::INFINITY];
    let down: &[f32] = &[-1.5, f32::NEG_INFINITY, f32::MAX, f32::NEG_INFINITY];
    let plain: &[f32] = &[0.1, 15.066_667, -3.25, 1e-30];
    let sensors = [("up", up), ("down", down), ("plain", plain)];
    let (_link, _) = store_readings(&agent, "d1-inf", &sensors).await;
    check_every_route(&base, "d1-inf", &sensors).await;
    // `avg` over a bucket with an infinity is that infinity.
    for (sensor, want) in [("up", "Infinity"), ("down", "-Infinity")] {
        let s = ok(&format!(
            "{base}/api/v1/series?device=d1-inf&sensor={sensor}&since=-1d&until=%2B1d&bucket=1d&agg=avg"
        ))
        .await;
        let points = s["points"].as_array().unwrap();
        assert!(points.iter().any(|p| p["value"] == want), "{s}");
    }
    agent.stop().await.unwrap();
}

/// Fails at ingest until the store keeps NaN (as NULL, read back as NaN): today the commit of a
/// NaN fails and the device is never acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_readings_are_served_as_strings_on_every_route() {
    let dir = TempDir::new("api-nan");
    let agent = agent(&dir.path().join("ferry.db"), "").await;
    let base = format!("http://{}", agent.api_addr.unwrap());
    let odd: &[f32] = &[f32::NAN, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
    let plain: &[f32] = &[0.5, 0.25, 0.125, 2.0, 4.0];
    let sensors = [("odd", odd), ("plain", plain)];
    let (_link, _) = store_readings(&agent, "d1-nan", &sensors).await;
    check_every_route(&base, "d1-nan", &sensors).await;
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_ids_request_ids_and_times_at_the_edges() {
    let dir = TempDir::new("api-edges");
    let agent = agent(&dir.path().join("ferry.db"), "").await;
    let base = format!("http://{}", agent.api_addr.unwrap());
    let c = reqwest::Client::new();
    let body = |id: &str| {
        serde_json::json!({"v": 1, "id": id, "command": {"identify": {"duration_ms": 10}}})
            .to_string()
    };
    // Device ids the link protocol cannot carry: 33 bytes, a NUL. Refused, naming `id`.
    for device in [
        "d".repeat(33),
        "a%00b".to_owned(),
        "%C3%A9".repeat(16) + "x",
    ] {
        let r = c
            .post(format!("{base}/api/v1/devices/{device}/commands"))
            .body(body("r-1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{device}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "bad_request");
        assert!(e["detail"].as_str().unwrap().starts_with("id: "), "{e}");
        let (status, e) = get(&format!("{base}/api/v1/devices/{device}/latest")).await;
        assert_eq!(status, 400, "{device}: {e}");
    }
    // 32 bytes with characters that need encoding: taken, and the Location resolves.
    let device = "dev/ice ?#%+".to_owned() + &"x".repeat(20);
    assert_eq!(device.len(), 32);
    let dev_segment: String = form_urlencoded::byte_serialize(device.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    for request_id in ["../../x", "a/b", "..x", "%41 b?c#d", "é\u{0}", "./"] {
        let r = c
            .post(format!("{base}/api/v1/devices/{dev_segment}/commands"))
            .body(body(request_id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{request_id:?}");
        let accepted: Value = r.json().await.unwrap();
        assert_eq!(accepted["id"], request_id);
        assert_eq!(accepted["device"], device.as_str());
        let location = accepted["location"].as_str().unwrap();
        // Resolved like a browser would, against the API's base.
        let url = reqwest::Url::parse(&base).unwrap().join(location).unwrap();
        assert!(
            url.path().starts_with("/api/v1/devices/") && url.path().contains("/commands/"),
            "{request_id:?}: {location} -> {url}"
        );
        let state = ok(url.as_str()).await;
        assert_eq!(
            (state["device"].as_str(), state["id"].as_str()),
            (Some(device.as_str()), Some(request_id)),
            "{location}"
        );
    }
    assert_eq!(
        ok(&format!(
            "{base}/api/v1/devices/{dev_segment}/commands/..%2F..%2Fx"
        ))
        .await["id"],
        "../../x"
    );
    // `.` and `..` can be no URL's path segment: refused, naming the field.
    for request_id in [".", ".."] {
        let r = c
            .post(format!("{base}/api/v1/devices/sim-1/commands"))
            .body(body(request_id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let e: Value = r.json().await.unwrap();
        assert!(
            e["detail"].as_str().unwrap().starts_with("body.id: "),
            "{e}"
        );
    }
    // Times too far for any arithmetic are out of range, naming the parameter.
    for (route, q, name) in [
        ("events", "since=-1000000000000w", "since"),
        ("events", "until=99999999999999999999", "until"),
        ("events", "since=-10000000w", "since"),
        ("series", "device=d&sensor=s&since=-1000000000000w", "since"),
        (
            "series",
            "device=d&sensor=s&bucket=1000000000000w",
            "bucket",
        ),
    ] {
        let (status, e) = get(&format!("{base}/api/v1/{route}?{q}")).await;
        assert_eq!(status, 400, "{q}");
        let detail = e["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("{name}: ")) && detail.contains("out of range"),
            "{q}: {detail}"
        );
    }
    // Year 1 is a valid instant (D2), 1969 too.
    ok(&format!(
        "{base}/api/v1/events?since=0001-01-01T00:00:00Z&until=-1"
    ))
    .await;
    agent.stop().await.unwrap();
}
