//! `cloud-bridge/asyncapi.yaml` against the `ferry-contract` crate: the document is read as it is (YAML →
//! JSON), each message's payload schema is resolved through its `$ref` and compiled (JSON Schema
//! draft 7, the base of AsyncAPI's schema format; no network), and then
//! - payloads made by the contract's own encoders validate, for every message and variant;
//! - every `examples` entry validates and decodes with the contract;
//! - payloads that break a rule (missing required field, unknown field, wrong enum, out of range)
//!   fail validation *and* are refused by the contract;
//! - channel addresses, subscriptions and limits in the document equal the contract's;
//! - readings keep their bits through every encoding (non-finite ones included), binary and
//!   deflate payloads are refused unless canonical and complete;
//! - the PostgreSQL tables the document describes are the ones ferry-bridge creates.
//!
//! One file on purpose: it walks one document top to bottom, and its checks share the loaded
//! document and the compiled schemas.
use std::sync::OnceLock;

use ferry_contract::{
    self as contract, CommandOutcome, CommandRequest, CommandSpec, Compression, Encoding, Event,
    EventBatch, LinkState, OutcomeStatus, Status, BINARY_MAGIC, DEFLATE_MAGIC, SCHEMA_VERSION,
};
use serde_json::{json, Value};

/// The messages of the document, by their key under `components.messages`.
const MESSAGES: [&str; 8] = [
    "eventBatch",
    "status",
    "commandRequest",
    "commandOutcome",
    "firmwareBundle",
    "firmwareBundleResult",
    "firmwareUpdateRequest",
    "firmwareUpdateResult",
];

/// D2's range and D3's lengths (checked against contract.rs in
/// `limits_in_the_schemas_are_the_contracts`).
const MIN_TS_MS: i64 = -62_135_596_800_000;
const MAX_TS_MS: i64 = 253_402_300_799_999;
const MAX_DEVICE_ID_LEN: usize = 32;
const MAX_GATEWAY_ID_LEN: usize = 64;

fn doc() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi.yaml");
        let text = std::fs::read_to_string(path).expect("read asyncapi.yaml");
        serde_yaml_ng::from_str(&text).expect("asyncapi.yaml is YAML that maps to JSON")
    })
}

/// Follows a local `$ref` (`#/a/b`) to what it names.
fn resolve(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.strip_prefix('#').expect("local $ref");
            resolve(
                doc()
                    .pointer(ptr)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => v,
    }
}

fn message(name: &str) -> &'static Value {
    resolve(&doc()["components"]["messages"][name])
}

/// The compiled payload schema of a message. The schema refers to shared definitions in
/// `components.schemas`, so it is compiled inside a root that carries them.
fn validator(name: &str) -> &'static jsonschema::Validator {
    static V: OnceLock<Vec<(&'static str, jsonschema::Validator)>> = OnceLock::new();
    let all = V.get_or_init(|| {
        MESSAGES
            .iter()
            .map(|m| {
                let payload = &message(m)["payload"];
                let target = payload["$ref"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{m}: payload is a $ref to components.schemas"));
                let root = json!({
                    "allOf": [{ "$ref": target }],
                    "components": { "schemas": doc()["components"]["schemas"] },
                });
                let v = jsonschema::draft7::new(&root)
                    .unwrap_or_else(|e| panic!("{m}: schema does not compile: {e}"));
                (*m, v)
            })
            .collect()
    });
    &all.iter()
        .find(|(m, _)| *m == name)
        .expect("known message")
        .1
}

fn schema_errors(name: &str, payload: &Value) -> Vec<String> {
    validator(name)
        .iter_errors(payload)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn assert_valid(name: &str, payload: &Value) {
    let errors = schema_errors(name, payload);
    assert!(
        errors.is_empty(),
        "{name} payload fails the document's schema: {errors:?}\n{payload}"
    );
}

/// What contract.rs makes of a JSON payload of `name`: `Err` with the reason if it refuses it.
/// Status and outcomes have no decoder beyond their serde shape.
fn decode(name: &str, payload: &Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(payload).unwrap();
    match name {
        "eventBatch" => EventBatch::decode(&bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "commandRequest" => CommandRequest::decode(&bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "status" => serde_json::from_slice::<Status>(&bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "commandOutcome" => serde_json::from_slice::<CommandOutcome>(&bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        // The bundle message is binary; its schema is the manifest line's.
        "firmwareBundle" => serde_json::from_slice::<contract::BundleManifest>(&bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "firmwareBundleResult" => serde_json::from_slice::<contract::BundleResult>(&bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "firmwareUpdateRequest" => contract::UpdateRequest::decode(&bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        "firmwareUpdateResult" => serde_json::from_slice::<contract::UpdateResult>(&bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
        other => panic!("unknown message {other}"),
    }
}

fn examples(name: &str) -> Vec<(String, Value)> {
    message(name)["examples"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} has examples"))
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("example name").to_owned(),
                e["payload"].clone(),
            )
        })
        .collect()
}

fn batch(device: &str, boot: u32, seqs: std::ops::Range<u32>) -> EventBatch {
    EventBatch {
        v: SCHEMA_VERSION,
        gateway: "gw-1".into(),
        device: device.into(),
        boot,
        boot_id: u32::MAX,
        events: seqs
            .map(|seq| Event {
                seq,
                sensor: if seq % 2 == 0 { "temperature" } else { "h" }.into(),
                ts_ms: 1_790_000_000_000 + i64::from(seq),
                value: f64::from(seq) * -0.25,
            })
            .collect(),
    }
}

fn every_command() -> Vec<CommandSpec> {
    // A new variant fails to compile here until it is added to the list (and the document).
    let all = vec![
        CommandSpec::SetInterval {
            sensor: 255,
            interval_ms: u32::MAX,
        },
        CommandSpec::Identify { duration_ms: 0 },
        CommandSpec::Reboot,
        CommandSpec::Opaque {
            hex: contract::encode_hex(&[0xab; contract::MAX_OPAQUE_LEN]),
        },
    ];
    for c in &all {
        match c {
            CommandSpec::SetInterval { .. }
            | CommandSpec::Identify { .. }
            | CommandSpec::Reboot
            | CommandSpec::Opaque { .. } => {}
        }
    }
    all
}

fn every_status() -> Vec<OutcomeStatus> {
    use OutcomeStatus::*;
    let all = vec![
        Ok,
        UnknownSensor,
        InvalidArgument,
        Unsupported,
        Failed,
        Expired,
        Rejected,
    ];
    for s in &all {
        match s {
            Ok | UnknownSensor | InvalidArgument | Unsupported | Failed | Expired | Rejected => {}
        }
    }
    all
}

fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v).unwrap() {
        Value::String(s) => s,
        Value::Object(o) => o.keys().next().expect("one key").clone(),
        other => panic!("unexpected enum form {other}"),
    }
}

#[test]
fn channel_addresses_and_subscriptions_are_the_contracts() {
    let d = doc();
    assert_eq!(d["asyncapi"], "3.0.0");
    let (gw, dev) = ("gw-1", "a/b+c#d%e");
    let fill = |address: &str| {
        address
            .replace("{gateway}", &contract::segment(gw))
            .replace("{device}", &contract::segment(dev))
    };
    let address = |channel: &str| {
        d["channels"][channel]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("channel {channel} has an address"))
            .to_owned()
    };
    use contract::Topic;
    for (channel, topic, parsed) in [
        (
            "events",
            contract::events_topic(gw, dev),
            Topic::Events {
                gateway: gw.into(),
                device: dev.into(),
            },
        ),
        (
            "status",
            contract::status_topic(gw),
            Topic::Status { gateway: gw.into() },
        ),
        (
            "commands",
            contract::commands_topic(gw, dev),
            Topic::Commands {
                gateway: gw.into(),
                device: dev.into(),
            },
        ),
        (
            "commandResults",
            contract::command_result_topic(gw, dev),
            Topic::CommandResult {
                gateway: gw.into(),
                device: dev.into(),
            },
        ),
        (
            "firmwareBundle",
            contract::firmware_bundle_topic(gw),
            Topic::Firmware {
                gateway: gw.into(),
                what: contract::FirmwareTopic::Bundle,
            },
        ),
        (
            "firmwareBundleResults",
            contract::firmware_result_topic(gw, contract::FirmwareTopic::Bundle),
            Topic::FirmwareResult {
                gateway: gw.into(),
                what: contract::FirmwareTopic::Bundle,
            },
        ),
        (
            "firmwareUpdates",
            contract::firmware_update_topic(gw),
            Topic::Firmware {
                gateway: gw.into(),
                what: contract::FirmwareTopic::Update,
            },
        ),
        (
            "firmwareUpdateResults",
            contract::firmware_result_topic(gw, contract::FirmwareTopic::Update),
            Topic::FirmwareResult {
                gateway: gw.into(),
                what: contract::FirmwareTopic::Update,
            },
        ),
    ] {
        let a = fill(&address(channel));
        assert_eq!(a, topic, "channel {channel}");
        assert_eq!(contract::parse_topic(&a), Some(parsed), "channel {channel}");
        // Every parameter in the address is declared, and nothing else.
        let mut declared: Vec<&str> = d["channels"][channel]["parameters"]
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        declared.sort_unstable();
        let raw = address(channel);
        let mut used: Vec<&str> = ["device", "gateway"]
            .into_iter()
            .filter(|p| raw.contains(&format!("{{{p}}}")))
            .collect();
        used.sort_unstable();
        assert_eq!(declared, used, "parameters of {channel}");
    }
    assert_eq!(
        d["channels"].as_object().unwrap().len(),
        8,
        "no other channels"
    );
    for (channel, topic) in [
        ("firmwareBundle", contract::firmware_bundle_topic(gw)),
        ("firmwareUpdates", contract::firmware_update_topic(gw)),
    ] {
        let sub = d["channels"][channel]["x-ferry-subscriptions"]["agent"]
            .as_str()
            .unwrap();
        assert_eq!(
            fill(sub),
            topic,
            "the agent subscribes to {channel} by name"
        );
    }
    assert_eq!(
        d["channels"]["events"]["x-ferry-subscriptions"]["ferry-bridge"],
        contract::EVENTS_SHARED_FILTER
    );
    let agent_filter = d["channels"]["commands"]["x-ferry-subscriptions"]["agent"]
        .as_str()
        .unwrap();
    assert_eq!(fill(agent_filter), contract::commands_filter(gw));
    // The escaping rule the document states is the code's.
    let info = d["info"]["description"].as_str().unwrap();
    for (c, esc) in [
        ('%', "%25"),
        ('/', "%2F"),
        ('+', "%2B"),
        ('#', "%23"),
        ('\0', "%00"),
    ] {
        assert_eq!(contract::segment(&c.to_string()), esc);
        assert!(info.contains(&format!("`{esc}`")), "info names {esc}");
    }
    assert!(info.contains(contract::EVENTS_SHARED_FILTER));
}

#[test]
fn operations_are_the_agents_with_qos_1_and_retain_only_for_status() {
    let d = doc();
    let ops = d["operations"].as_object().unwrap();
    let mut seen = Vec::new();
    for (name, op) in ops {
        let channel = op["channel"]["$ref"].as_str().unwrap();
        let ch = channel.rsplit('/').next().unwrap();
        assert!(resolve(&op["channel"]).get("address").is_some(), "{name}");
        let mqtt = &op["bindings"]["mqtt"];
        assert_eq!(mqtt["qos"], 1, "{name}: QoS 1");
        let retain = mqtt["retain"].as_bool().unwrap_or(false);
        assert_eq!(retain, ch == "status", "{name}: retained only on status");
        for m in op["messages"].as_array().unwrap() {
            let r = m["$ref"].as_str().unwrap();
            assert!(
                r.starts_with(&format!("{channel}/messages/")),
                "{name}: {r}"
            );
            assert!(resolve(m).get("payload").is_some(), "{name}: {r}");
        }
        seen.push((ch.to_owned(), op["action"].as_str().unwrap().to_owned()));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("commandResults", "send"),
            ("commands", "receive"),
            ("events", "send"),
            ("firmwareBundle", "receive"),
            ("firmwareBundleResults", "send"),
            ("firmwareUpdateResults", "send"),
            ("firmwareUpdates", "receive"),
            ("status", "send")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // The last will is the retained offline status.
    let will = &d["servers"]["broker"]["bindings"]["mqtt"]["lastWill"];
    assert_eq!(will["topic"], d["channels"]["status"]["address"]);
    assert_eq!((&will["qos"], &will["retain"]), (&json!(1), &json!(true)));
}

#[test]
fn limits_in_the_schemas_are_the_contracts() {
    let s = &doc()["components"]["schemas"];
    assert_eq!(s["SchemaVersion"]["const"], SCHEMA_VERSION);
    assert_eq!(s["Name"]["maxLength"], contract::MAX_NAME_LEN);
    assert_eq!(s["GatewayId"]["maxLength"], contract::MAX_GATEWAY_ID_LEN);
    assert_eq!(s["DeviceId"]["maxLength"], contract::MAX_DEVICE_ID_LEN);
    assert_eq!(s["UtcMillis"]["minimum"], contract::MIN_TS_MS);
    assert_eq!(s["UtcMillis"]["maximum"], contract::MAX_TS_MS);
    // The figures the tests below write as literals (they also run against older builds).
    assert_eq!(
        (MIN_TS_MS, MAX_TS_MS, MAX_DEVICE_ID_LEN, MAX_GATEWAY_ID_LEN),
        (
            contract::MIN_TS_MS,
            contract::MAX_TS_MS,
            contract::MAX_DEVICE_ID_LEN,
            contract::MAX_GATEWAY_ID_LEN
        )
    );
    assert_eq!(
        s["EventBatch"]["properties"]["events"]["maxItems"],
        contract::MAX_EVENTS_PER_BATCH
    );
    assert_eq!(
        s["CommandRequest"]["properties"]["id"]["maxLength"],
        contract::MAX_COMMAND_ID_LEN
    );
    let opaque = s["CommandSpec"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["title"] == "opaque")
        .unwrap();
    assert_eq!(
        opaque["properties"]["opaque"]["properties"]["hex"]["pattern"],
        format!("^([0-9a-fA-F]{{2}}){{0,{}}}$", contract::MAX_OPAQUE_LEN)
    );
    let enum_of = |v: &Value| -> Vec<String> {
        v["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let statuses: Vec<String> = every_status().iter().map(wire_name).collect();
    assert_eq!(enum_of(&s["OutcomeStatus"]), statuses);
    let states: Vec<String> = [LinkState::Online, LinkState::Offline]
        .iter()
        .map(wire_name)
        .collect();
    assert_eq!(enum_of(&s["Status"]["properties"]["state"]), states);
    let commands: Vec<String> = every_command().iter().map(wire_name).collect();
    let titles: Vec<String> = s["CommandSpec"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["title"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(titles, commands);
    // The encodings' first bytes as the text states them.
    let text = message("eventBatch")["description"].as_str().unwrap();
    for b in [BINARY_MAGIC, DEFLATE_MAGIC] {
        assert!(text.contains(&format!("`{b:#04X}`")), "names {b:#04X}");
    }
    assert!(text.contains(&format!("at most {} MiB", contract::MAX_INFLATED_LEN >> 20)));
}

#[test]
fn payloads_from_the_encoders_validate() {
    // Event batches in every encoding: what a consumer decodes is what the schema describes.
    for b in [batch("sim-0000", 1, 0..3), batch("dev/7", u32::MAX, 7..8)] {
        for enc in [Encoding::Json, Encoding::Binary] {
            for comp in [Compression::None, Compression::Deflate] {
                let wire = b.encode(enc, comp);
                let first = match (enc, comp) {
                    (_, Compression::Deflate) => DEFLATE_MAGIC,
                    (Encoding::Binary, _) => BINARY_MAGIC,
                    (Encoding::Json, _) => b'{',
                };
                assert_eq!(wire[0], first, "{enc:?} {comp:?}");
                let decoded = EventBatch::decode(&wire).unwrap();
                assert_valid("eventBatch", &serde_json::to_value(&decoded).unwrap());
            }
        }
        let json: Value = serde_json::from_slice(&b.encode(Encoding::Json, Compression::None))
            .expect("JSON encoding");
        assert_valid("eventBatch", &json);
    }
    for state in [LinkState::Online, LinkState::Offline] {
        let s = Status {
            v: SCHEMA_VERSION,
            gateway: "gw-1".into(),
            state,
            at_ms: 1_790_000_000_000,
            agent: env!("CARGO_PKG_VERSION").into(),
        };
        assert_valid("status", &serde_json::to_value(&s).unwrap());
    }
    for command in every_command() {
        for ttl_s in [None, Some(0), Some(u32::MAX)] {
            let r = CommandRequest {
                v: SCHEMA_VERSION,
                id: "x".repeat(contract::MAX_COMMAND_ID_LEN),
                command: command.clone(),
                ttl_s,
            };
            let json = serde_json::to_value(&r).unwrap();
            assert_valid("commandRequest", &json);
            assert_eq!(
                CommandRequest::decode(&serde_json::to_vec(&json).unwrap()).unwrap(),
                r
            );
        }
    }
    for status in every_status() {
        for (detail, data_hex) in [
            (None, None),
            (
                Some("why".to_owned()),
                Some(contract::encode_hex(&[0, 0xff])),
            ),
        ] {
            let o = CommandOutcome {
                v: SCHEMA_VERSION,
                id: "c-1".into(),
                gateway: "gw-1".into(),
                device: "dev/7".into(),
                status,
                detail,
                data_hex,
                at_ms: MIN_TS_MS,
            };
            assert_valid("commandOutcome", &serde_json::to_value(&o).unwrap());
        }
    }
}

#[test]
fn every_example_validates_and_decodes() {
    let mut commands = Vec::new();
    let mut statuses = Vec::new();
    let mut states = Vec::new();
    for m in MESSAGES {
        let ex = examples(m);
        assert!(!ex.is_empty(), "{m} has examples");
        for (name, payload) in ex {
            let errors = schema_errors(m, &payload);
            assert!(errors.is_empty(), "{m} example {name}: {errors:?}");
            decode(m, &payload)
                .unwrap_or_else(|e| panic!("{m} example {name}: contract.rs refuses it: {e}"));
            match m {
                "commandRequest" => commands.push(wire_name(&payload["command"])),
                "commandOutcome" => statuses.push(payload["status"].as_str().unwrap().to_owned()),
                "status" => states.push(payload["state"].as_str().unwrap().to_owned()),
                _ => {}
            }
        }
    }
    // Together the examples show every variant.
    for c in every_command() {
        assert!(commands.contains(&wire_name(&c)), "no example for {c:?}");
    }
    for s in every_status() {
        assert!(statuses.contains(&wire_name(&s)), "no example for {s:?}");
    }
    for s in [LinkState::Online, LinkState::Offline] {
        assert!(states.contains(&wire_name(&s)), "no example for {s:?}");
    }
}

#[test]
fn the_binary_example_is_what_the_encoder_writes() {
    let ex = &message("eventBatch")["x-binary-example"];
    let hex = ex["hex"].as_str().unwrap();
    let b: EventBatch = serde_json::from_value(ex["payload"].clone()).unwrap();
    assert_valid("eventBatch", &ex["payload"]);
    assert_eq!(
        contract::encode_hex(&b.encode(Encoding::Binary, Compression::None)),
        hex
    );
    assert_eq!(
        EventBatch::decode(&contract::decode_hex(hex).unwrap()).unwrap(),
        b
    );
}

/// Applies `edit` to a copy of `base`.
fn edited(base: &Value, edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = base.clone();
    edit(&mut v);
    v
}

fn assert_refused_by_both(m: &str, what: &str, payload: &Value) {
    assert!(
        !schema_errors(m, payload).is_empty(),
        "{m}, {what}: the document's schema accepts it\n{payload}"
    );
    assert!(
        decode(m, payload).is_err(),
        "{m}, {what}: contract.rs accepts it\n{payload}"
    );
}

fn assert_accepted_by_both(m: &str, what: &str, payload: &Value) {
    let errors = schema_errors(m, payload);
    assert!(errors.is_empty(), "{m}, {what}: {errors:?}\n{payload}");
    if let Err(e) = decode(m, payload) {
        panic!("{m}, {what}: contract.rs refuses it: {e}\n{payload}");
    }
}

#[test]
fn missing_or_unknown_fields_are_refused_by_schema_and_code() {
    for m in MESSAGES {
        let base = examples(m).remove(0).1;
        let schema = resolve(&message(m)["payload"]);
        let required = schema["required"].as_array().unwrap();
        assert!(!required.is_empty());
        for field in required {
            let f = field.as_str().unwrap();
            let p = edited(&base, |v| {
                v.as_object_mut().unwrap().remove(f);
            });
            assert_refused_by_both(m, &format!("without `{f}`"), &p);
        }
        let p = edited(&base, |v| v["colour"] = json!("red"));
        assert_refused_by_both(m, "with an unknown field", &p);
        let p = edited(&base, |v| v["v"] = json!(2));
        if matches!(m, "eventBatch" | "commandRequest") {
            assert_refused_by_both(m, "with v = 2", &p);
        } else {
            // contract.rs has no decoder for what only the agent sends (status, outcomes):
            // their consumers check `v` themselves, as the document says.
            assert!(!schema_errors(m, &p).is_empty(), "{m}, with v = 2");
        }
    }
}

#[test]
fn wrong_values_are_refused_by_schema_and_code() {
    let ev = examples("eventBatch").remove(0).1;
    let name_129 = "n".repeat(contract::MAX_NAME_LEN + 1);
    for (what, p) in [
        ("boot 0", edited(&ev, |v| v["boot"] = json!(0))),
        ("boot 2^32", edited(&ev, |v| v["boot"] = json!(1u64 << 32))),
        ("boot_id -1", edited(&ev, |v| v["boot_id"] = json!(-1))),
        ("no events", edited(&ev, |v| v["events"] = json!([]))),
        ("empty device", edited(&ev, |v| v["device"] = json!(""))),
        (
            "gateway too long",
            edited(&ev, |v| v["gateway"] = json!(name_129)),
        ),
        ("seq -1", edited(&ev, |v| v["events"][0]["seq"] = json!(-1))),
        (
            "seq a string",
            edited(&ev, |v| v["events"][0]["seq"] = json!("0")),
        ),
        (
            "empty sensor",
            edited(&ev, |v| v["events"][0]["sensor"] = json!("")),
        ),
        (
            "value null",
            edited(&ev, |v| v["events"][0]["value"] = json!(null)),
        ),
        (
            "ts_ms a float",
            edited(&ev, |v| v["events"][0]["ts_ms"] = json!(1.5)),
        ),
        (
            "event without seq",
            edited(&ev, |v| {
                v["events"][0].as_object_mut().unwrap().remove("seq");
            }),
        ),
        (
            "event with an unknown field",
            edited(&ev, |v| v["events"][0]["unit"] = json!("C")),
        ),
        (
            "ts_ms before year 1",
            edited(&ev, |v| v["events"][0]["ts_ms"] = json!(MIN_TS_MS - 1)),
        ),
        (
            "ts_ms after year 9999",
            edited(&ev, |v| v["events"][1]["ts_ms"] = json!(MAX_TS_MS + 1)),
        ),
        (
            "ts_ms i64::MAX",
            edited(&ev, |v| v["events"][0]["ts_ms"] = json!(i64::MAX)),
        ),
        (
            "device 33 bytes",
            edited(&ev, |v| {
                v["device"] = json!("d".repeat(MAX_DEVICE_ID_LEN + 1))
            }),
        ),
        (
            "device with NUL",
            edited(&ev, |v| v["device"] = json!("d\0")),
        ),
        (
            "gateway 65 bytes",
            edited(&ev, |v| {
                v["gateway"] = json!("g".repeat(MAX_GATEWAY_ID_LEN + 1))
            }),
        ),
        (
            "gateway with +",
            edited(&ev, |v| v["gateway"] = json!("g+w")),
        ),
        (
            "gateway with /",
            edited(&ev, |v| v["gateway"] = json!("g/w")),
        ),
        (
            "gateway with #",
            edited(&ev, |v| v["gateway"] = json!("g#")),
        ),
        (
            "gateway with NUL",
            edited(&ev, |v| v["gateway"] = json!("g\0w")),
        ),
        (
            "sensor with NUL",
            edited(&ev, |v| v["events"][1]["sensor"] = json!("t\0")),
        ),
        (
            "value a string other than the three",
            edited(&ev, |v| v["events"][0]["value"] = json!("nan")),
        ),
    ] {
        assert_refused_by_both("eventBatch", what, &p);
    }

    let st = examples("status").remove(0).1;
    assert_refused_by_both(
        "status",
        "state sleeping",
        &edited(&st, |v| v["state"] = json!("sleeping")),
    );
    assert_refused_by_both(
        "status",
        "state as a number",
        &edited(&st, |v| v["state"] = json!(1)),
    );

    let rq = json!({"v": 1, "id": "c", "command": "reboot"});
    let with_command = |c: Value| edited(&rq, |v| v["command"] = c);
    for (what, p) in [
        ("command explode", with_command(json!("explode"))),
        (
            "unknown command object",
            with_command(json!({"explode": {}})),
        ),
        (
            "set_interval as a bare string",
            with_command(json!("set_interval")),
        ),
        (
            "set_interval without interval_ms",
            with_command(json!({"set_interval": {"sensor": 0}})),
        ),
        (
            "sensor 256",
            with_command(json!({"set_interval": {"sensor": 256, "interval_ms": 1}})),
        ),
        (
            "set_interval with an unknown field",
            with_command(json!({"set_interval": {"sensor": 0, "interval_ms": 1, "x": 1}})),
        ),
        (
            "two commands at once",
            with_command(json!({"identify": {"duration_ms": 1}, "reboot": null})),
        ),
        (
            "identify -1",
            with_command(json!({"identify": {"duration_ms": -1}})),
        ),
        ("hex zz", with_command(json!({"opaque": {"hex": "zz"}}))),
        ("hex odd", with_command(json!({"opaque": {"hex": "abc"}}))),
        ("hex +f+f", with_command(json!({"opaque": {"hex": "+f+f"}}))),
        (
            "hex 129 bytes",
            with_command(json!({"opaque": {"hex": "00".repeat(contract::MAX_OPAQUE_LEN + 1)}})),
        ),
        ("empty id", edited(&rq, |v| v["id"] = json!(""))),
        (
            "id 65 bytes",
            edited(&rq, |v| {
                v["id"] = json!("i".repeat(contract::MAX_COMMAND_ID_LEN + 1))
            }),
        ),
        ("ttl_s -1", edited(&rq, |v| v["ttl_s"] = json!(-1))),
        (
            "ttl_s 2^32",
            edited(&rq, |v| v["ttl_s"] = json!(1u64 << 32)),
        ),
    ] {
        assert_refused_by_both("commandRequest", what, &p);
    }

    let oc = examples("commandOutcome").remove(0).1;
    assert_refused_by_both(
        "commandOutcome",
        "status done",
        &edited(&oc, |v| v["status"] = json!("done")),
    );
    assert_refused_by_both(
        "commandOutcome",
        "status in another case",
        &edited(&oc, |v| v["status"] = json!("OK")),
    );
}

#[test]
fn what_the_decoder_also_accepts_the_schema_accepts() {
    let rq = json!({"v": 1, "id": "c", "command": "reboot"});
    for (what, p) in [
        ("ttl_s null", edited(&rq, |v| v["ttl_s"] = json!(null))),
        (
            "reboot in object form",
            edited(&rq, |v| v["command"] = json!({"reboot": null})),
        ),
        (
            "empty opaque",
            edited(&rq, |v| v["command"] = json!({"opaque": {"hex": ""}})),
        ),
        (
            "uppercase hex",
            edited(&rq, |v| v["command"] = json!({"opaque": {"hex": "ABCDEF"}})),
        ),
    ] {
        assert_accepted_by_both("commandRequest", what, &p);
    }
    let ev = examples("eventBatch").remove(0).1;
    for (what, p) in [
        (
            "integer value",
            edited(&ev, |v| v["events"][0]["value"] = json!(-3)),
        ),
        (
            "value NaN",
            edited(&ev, |v| v["events"][0]["value"] = json!("NaN")),
        ),
        (
            "value -Infinity",
            edited(&ev, |v| v["events"][1]["value"] = json!("-Infinity")),
        ),
        (
            "ts_ms at both ends of years 1..=9999",
            edited(&ev, |v| {
                v["events"][0]["ts_ms"] = json!(MIN_TS_MS);
                v["events"][1]["ts_ms"] = json!(MAX_TS_MS);
            }),
        ),
        (
            "device 32 bytes with a slash",
            edited(&ev, |v| {
                v["device"] = json!(format!("a/{}", "d".repeat(MAX_DEVICE_ID_LEN - 2)))
            }),
        ),
        (
            "gateway 64 bytes with a percent",
            edited(&ev, |v| {
                v["gateway"] = json!(format!("%{}", "g".repeat(MAX_GATEWAY_ID_LEN - 1)))
            }),
        ),
    ] {
        assert_accepted_by_both("eventBatch", what, &p);
    }
    let oc = examples("commandOutcome").remove(0).1;
    assert_accepted_by_both(
        "commandOutcome",
        "detail null",
        &edited(&oc, |v| v["detail"] = json!(null)),
    );
}

/// Rules the descriptions state because JSON Schema cannot: the schema accepts these, the
/// decoder does not. If one of them starts to fail, the document's text needs a look.
#[test]
fn rules_beyond_the_schema_are_enforced_by_the_code() {
    let ev = examples("eventBatch").remove(0).1;
    let p = edited(&ev, |v| {
        v["events"][1]["seq"] = v["events"][0]["seq"].clone()
    });
    assert!(schema_errors("eventBatch", &p).is_empty());
    let e = decode("eventBatch", &p).unwrap_err();
    assert!(e.contains("does not increase"), "{e}");
    let text = message("eventBatch")["description"].as_str().unwrap();
    assert!(text.contains("`seq` strictly increases"));
    // Limits count bytes: 66 bytes in 33 characters pass the schema, not the code.
    let rq = json!({"v": 1, "id": format!("{}é", "ü".repeat(31)), "command": "reboot"});
    assert_eq!(rq["id"].as_str().unwrap().len(), 64);
    assert_accepted_by_both("commandRequest", "64-byte id", &rq);
    let rq = json!({"v": 1, "id": format!("{}é", "ü".repeat(32)), "command": "reboot"});
    assert!(schema_errors("commandRequest", &rq).is_empty());
    assert!(decode("commandRequest", &rq).is_err());
    // Integers written with a fraction: JSON Schema calls 1.0 an integer, the decoders do not,
    // and the document says so.
    for (field, p) in [
        ("boot", edited(&ev, |v| v["boot"] = json!(1.0))),
        ("v", edited(&ev, |v| v["v"] = json!(1.0))),
        ("seq", edited(&ev, |v| v["events"][0]["seq"] = json!(0.0))),
        (
            "ts_ms",
            edited(&ev, |v| {
                v["events"][0]["ts_ms"] = json!(1_790_000_000_000.0)
            }),
        ),
    ] {
        assert!(
            schema_errors("eventBatch", &p).is_empty(),
            "{field}: the schema refuses 1.0 after all"
        );
        let e = decode("eventBatch", &p).unwrap_err();
        assert!(e.contains("floating point"), "{field}: {e}");
    }
    let rq = json!({"v": 1, "id": "c", "command": "reboot", "ttl_s": 60.0});
    assert!(schema_errors("commandRequest", &rq).is_empty());
    assert!(decode("commandRequest", &rq).is_err());
    let info = doc()["info"]["description"].as_str().unwrap();
    assert!(
        info.contains("**Integers are JSON integers**") && info.contains("`1.0`"),
        "the document states that integers have no fraction"
    );
    // A too-long command id is refused naming the field, as a command (not a batch).
    let rq = json!({"v": 1, "id": "i".repeat(65), "command": "reboot"});
    assert_eq!(
        decode("commandRequest", &rq).unwrap_err(),
        "invalid command: id is 65 bytes; it must be 1..=64 bytes"
    );
    // The topic's ids must match the payload's.
    let b: EventBatch = serde_json::from_value(ev).unwrap();
    assert!(b.check_topic("gw-1", "sim-0000").is_ok());
    assert!(b.check_topic("gw-1", "sim-0001").is_err());
}

/// splitmix64: reproducible random bits without a dependency.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A batch of one device holding `values` as consecutive events.
fn batch_of(values: &[f64]) -> EventBatch {
    EventBatch {
        v: SCHEMA_VERSION,
        gateway: "gw-1".into(),
        device: "d".into(),
        boot: 1,
        boot_id: 7,
        events: values
            .iter()
            .zip(0..)
            .map(|(&value, seq)| Event {
                seq,
                sensor: "t".into(),
                ts_ms: 1_790_000_000_000 + i64::from(seq),
                value,
            })
            .collect(),
    }
}

/// Every f32 a device can send, widened as the gateway stores it, comes out of every encoding
/// with the same bits. JSON numbers used to be parsed one ulp off for some long mantissas by
/// the `ferry-bridge` binary; in this test binary serde_json always parses exactly (jsonschema,
/// a dev-dependency, turns on its `float_roundtrip`), so the binary itself is checked end to end
/// by the e2e test `values` (tests/tests/values.rs).
#[test]
fn json_numbers_arrive_with_the_bits_they_were_written_from() {
    let mut state = 0x0F32_B175;
    let mut values: Vec<f64> = (0..40_000)
        .map(|_| f32::from_bits(next_random(&mut state) as u32))
        .filter(|v| v.is_finite())
        .map(f64::from)
        .collect();
    // Any double too, not only widened f32s (13 % of random doubles used to change).
    values.extend(
        (0..20_000)
            .map(|_| f64::from_bits(next_random(&mut state)))
            .filter(|v| v.is_finite()),
    );
    // From the report: 15.066666603088379 (an f32) was stored as 0x402e222220000001.
    let reported = f64::from_bits(0x402e_2222_2000_0000);
    assert_eq!(reported, 15.066666603088379);
    values.push(reported);
    values.extend(
        [
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x807f_ffff),
            f32::EPSILON,
            0.1,
            -0.0,
        ]
        .map(f64::from),
    );
    for enc in [Encoding::Json, Encoding::Binary] {
        for comp in [Compression::None, Compression::Deflate] {
            let mut wrong = Vec::new();
            for chunk in values.chunks(5_000) {
                let b = batch_of(chunk);
                let got = EventBatch::decode(&b.encode(enc, comp)).unwrap();
                for (sent, e) in chunk.iter().zip(&got.events) {
                    if sent.to_bits() != e.value.to_bits() {
                        wrong.push((*sent, e.value));
                    }
                }
            }
            assert!(
                wrong.is_empty(),
                "{enc:?} {comp:?}: {} of {} values changed, e.g. {:?}",
                wrong.len(),
                values.len(),
                wrong
                    .iter()
                    .take(3)
                    .map(|(a, b)| format!("{a:?} ({:#x}) -> {:#x}", a.to_bits(), b.to_bits()))
                    .collect::<Vec<_>>()
            );
        }
    }
}

/// NaN and the infinities are readings (D1): strings in JSON, the schema says so, and every
/// encoding brings them back (a JSON NaN as the quiet NaN).
#[test]
fn non_finite_readings_are_strings_in_json_and_bits_in_binary() {
    let values = [
        f64::NAN,
        f64::INFINITY,
        21.5,
        f64::NEG_INFINITY,
        f64::from(f32::from_bits(0x7fc0_0000)),
    ];
    let b = batch_of(&values);
    let json: Value = serde_json::from_slice(&b.encode(Encoding::Json, Compression::None))
        .expect("JSON encoding");
    assert_valid("eventBatch", &json);
    let written: Vec<Value> = json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].clone())
        .collect();
    assert_eq!(
        written,
        [
            json!("NaN"),
            json!("Infinity"),
            json!(21.5),
            json!("-Infinity"),
            json!("NaN")
        ]
    );
    for enc in [Encoding::Json, Encoding::Binary] {
        for comp in [Compression::None, Compression::Deflate] {
            let got = EventBatch::decode(&b.encode(enc, comp))
                .unwrap_or_else(|e| panic!("{enc:?} {comp:?}: {e}"));
            let bits: Vec<u64> = got.events.iter().map(|e| e.value.to_bits()).collect();
            let want: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, want, "{enc:?} {comp:?}");
        }
    }
}

/// One batch, one binary form: bytes after the batch and longer varints are malformed.
#[test]
fn binary_payloads_are_canonical_and_complete() {
    let ex = &message("eventBatch")["x-binary-example"];
    let good = contract::decode_hex(ex["hex"].as_str().unwrap()).unwrap();
    assert!(EventBatch::decode(&good).is_ok());
    let mut trailing = good.clone();
    trailing.push(0);
    let e = EventBatch::decode(&trailing).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "malformed payload: binary: 1 byte(s) after the batch, from offset {}",
            good.len()
        )
    );
    // `boot` (offset 7) as the two-byte varint 81 00 instead of 01.
    assert_eq!(good[7], 0x01);
    let mut long = good[..7].to_vec();
    long.extend([0x81, 0x00]);
    long.extend(&good[8..]);
    let e = EventBatch::decode(&long).unwrap_err().to_string();
    assert_eq!(
        e,
        "malformed payload: binary: not canonical at offset 7 \
         (every varint must be in its shortest form)"
    );
    // A longer string length prefix (02 for "gw" as 82 00) too.
    let mut long = good[..2].to_vec();
    long.extend([0x82, 0x00]);
    long.extend(&good[3..]);
    assert!(EventBatch::decode(&long).is_err());
    let text = message("eventBatch")["description"].as_str().unwrap();
    assert!(text.contains("shortest form") && text.contains("bytes after the batch"));
}

/// The deflate stream must end where the payload ends.
#[test]
fn deflate_streams_end_where_the_payload_ends() {
    for enc in [Encoding::Json, Encoding::Binary] {
        let b = batch("d", 1, 0..20);
        let good = b.encode(enc, Compression::Deflate);
        assert_eq!(EventBatch::decode(&good).unwrap(), b);
        let mut trailing = good.clone();
        trailing.extend(b"junk");
        let e = EventBatch::decode(&trailing).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "bad compression: 4 byte(s) after the end of the deflate stream, from offset {}",
                good.len()
            ),
            "{enc:?}"
        );
        let e = EventBatch::decode(&good[..good.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad compression:"), "{enc:?} truncated: {e}");
    }
    let text = message("eventBatch")["description"].as_str().unwrap();
    assert!(text.contains("the deflate stream must end where the payload ends"));
}

/// The PostgreSQL tables under `x-ferry-postgres` are the ones the bridge creates: same tables,
/// columns in order, types, NOT NULL and primary keys.
#[test]
fn the_bridge_tables_are_documented_as_created() {
    type Table = (Vec<(String, String, bool)>, Vec<String>);
    let mut created: Vec<(String, Table)> = Vec::new();
    for stmt in ferry_cloud_bridge::bridge::SCHEMA.split(';') {
        let Some((head, body)) = stmt.split_once('(') else {
            continue;
        };
        let name = head
            .trim()
            .strip_prefix("CREATE TABLE IF NOT EXISTS ")
            .expect("only CREATE TABLE statements")
            .trim()
            .to_owned();
        let body = body.trim().strip_suffix(')').expect("closing parenthesis");
        let (mut columns, mut key) = (Vec::new(), Vec::new());
        for line in body.lines().map(|l| l.trim().trim_end_matches(',')) {
            if line.is_empty() {
                continue;
            }
            if let Some(k) = line.strip_prefix("PRIMARY KEY (") {
                key = k
                    .trim_end_matches(')')
                    .split(',')
                    .map(|c| c.trim().to_owned())
                    .collect();
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let end = words
                .iter()
                .position(|w| *w == "NOT" || *w == "PRIMARY")
                .unwrap_or(words.len());
            let ty = words[1..end].join(" ");
            let primary = line.contains("PRIMARY KEY");
            if primary {
                key = vec![words[0].to_owned()];
            }
            columns.push((
                words[0].to_owned(),
                ty,
                primary || line.contains("NOT NULL"),
            ));
        }
        created.push((name, (columns, key)));
    }
    let doc_tables = doc()["x-ferry-postgres"]["tables"]
        .as_object()
        .expect("x-ferry-postgres.tables");
    let mut documented: Vec<(String, Table)> = Vec::new();
    for (name, t) in doc_tables {
        assert!(
            t["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        let columns = t["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                assert!(
                    c["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{name}.{}",
                    c["name"]
                );
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["type"].as_str().unwrap().to_owned(),
                    c["notNull"].as_bool().unwrap(),
                )
            })
            .collect();
        let key = t["primaryKey"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        documented.push((name.clone(), (columns, key)));
    }
    created.sort();
    documented.sort();
    assert_eq!(created.len(), 3, "{created:?}");
    assert_eq!(documented, created);
}
