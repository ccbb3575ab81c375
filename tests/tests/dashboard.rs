//! The dashboard in a real headless Chromium, against the real `ferry` binary serving its local
//! API over HTTPS (`[api] tls_cert`, a certificate made in the test; Chromium trusts exactly that
//! certificate's key) with a token, and simulated devices on its TCP listener; `ferry flash` runs
//! against the same HTTPS address with the test CA (`--ca-file`). The page must ask for the token, list the
//! devices online, show latest values that change, grow a live chart from the SSE stream when a
//! device is clicked, and show the ingest counter rising, all without an error banner or a script
//! error. Every check waits for a condition with a deadline; a timeout fails with the page's
//! state, its console and a screenshot. The final screenshot is
//! `<target>/test-output/dashboard/dashboard.png`.
use std::path::PathBuf;
use std::time::Duration;

use ferry_tests::agent::AgentProc;
use ferry_tests::browser::Browser;
use ferry_tests::mosquitto::TestPki;
use ferry_tests::{poll_until, try_poll_until};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const FAILED_PNG: &str = "dashboard-failed.png";
const TOKEN: &str = "dashboard-test-token-0123";
/// Deadline of each check (the page polls every 2 to 3 s; other tests may share the 2 cores).
const WAIT: Duration = Duration::from_secs(30);

/// `<target>/test-output/dashboard/`, next to the profile folder this test binary runs from.
fn output_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/e2e-…
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binary is in <target>/<profile>/deps");
    target.join("test-output").join("dashboard")
}

/// Evaluates `script` in the page until `check` accepts the result (a script error,
/// e.g. while the page reloads, counts as not yet). At the deadline: panics naming `what`, with the
/// last result, the banner, the console and a screenshot.
async fn wait_until<T>(
    browser: &Browser,
    what: &str,
    script: &str,
    mut check: impl FnMut(&Value) -> Option<T>,
) -> T {
    let mut last = Value::Null;
    let found = try_poll_until(WAIT, what, async || {
        last = browser
            .eval(script)
            .unwrap_or_else(|e| Value::String(format!("script error: {e:#}")));
        check(&last)
    })
    .await;
    found.unwrap_or_else(|e| {
        let shot = output_dir().join(FAILED_PNG);
        let saved = browser
            .screenshot(&shot)
            .map(|()| shot.display().to_string());
        let banner = browser.eval("return document.querySelector('#error-banner').textContent");
        panic!(
            "dashboard: {e}; last {last}; banner {banner:?}; screenshot {saved:?}; console:\n{}",
            browser.console().unwrap_or_default().join("\n")
        );
    })
}

/// Clicks `css`, retrying while it is missing or replaced (the device table is redrawn every 3 s).
async fn click(browser: &Browser, css: &str) {
    poll_until(WAIT, format!("a click on {css}"), async || {
        browser.click(css)
    })
    .await;
}

/// A number shown by the page (`1,234.5` → 1234.5).
fn number(v: &Value) -> Option<f64> {
    v.as_str()?.replace(',', "").parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver"]
async fn dashboard_shows_devices_values_and_live_charts() {
    let _ = std::fs::remove_file(output_dir().join(FAILED_PNG));
    let dir = tempfile::Builder::new()
        .prefix("ferry-dashboard-")
        .tempdir()
        .unwrap();
    let pki = TestPki::generate(dir.path());
    let browser = Browser::start_trusting(&std::fs::read_to_string(&pki.server_key).unwrap());
    let mut agent = AgentProc::new(
        dir.path(),
        &format!(
            "[gateway]\nid = \"gw-dashboard\"\n[store]\npath = {:?}\n\
             [devices]\ntcp_listen = \"127.0.0.1:0\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            dir.path().join("ferry.db").display().to_string(),
            pki.server_cert.display().to_string(),
            pki.server_key.display().to_string(),
        ),
        None,
    );
    agent.start().await;
    let devices_addr = agent
        .logged_addr("Listening for devices over TCP", WAIT)
        .await;
    let api = agent.logged_addr("Serving the local API", WAIT).await;

    // A vendor key and a signed image for the firmware panel (the CLI, as a vendor would).
    let ferry = ferry_tests::workspace_bin("ferry-agent", "ferry").unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&ferry)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "ferry {args:?}: {out:?}");
    };
    run(&["firmware", "keygen", "--out", "vendor"]);
    let image = ferry_sim::firmware::make_image("1.1.0", 96 * 1024, true).unwrap();
    std::fs::write(dir.path().join("app.bin"), image).unwrap();
    run(&[
        "firmware",
        "sign",
        "app.bin",
        "--key",
        "vendor.key",
        "--version",
        "1.1.0",
        "--board",
        "ferry-sim",
        "-o",
        "app.fwb",
    ]);
    let public = std::fs::read_to_string(dir.path().join("vendor.pub")).unwrap();
    let public = ferry_agent::firmware::bundle::read_public_key(&public).unwrap();

    // Three devices, three channels each (temperature, humidity, counter) at 20 Hz, on links
    // paced like a 115,200 baud UART (so an update takes seconds, long enough to watch).
    let stop = CancellationToken::new();
    let sim = tokio::spawn(ferry_sim::run(
        ferry_sim::SimConfig {
            update: Some(ferry_sim::SimUpdate {
                public_key: public,
                version: "1.0.0".into(),
                trial_timeout_ms: 10_000,
            }),
            line_rate: Some(11_520),
            ..ferry_sim::SimConfig::tcp(devices_addr, 3, 3, 50)
        },
        stop.clone(),
    ));

    // No token yet: the page asks for one; the token is kept and the page starts over with it.
    browser.goto(&format!("https://{api}/")).unwrap();
    wait_until(
        &browser,
        "the token prompt",
        "return !document.querySelector('#token-form').hidden",
        |v| v.as_bool().filter(|shown| *shown),
    )
    .await;
    browser.type_into("#token-input", TOKEN).unwrap();
    click(&browser, "#token-form button").await;

    let online = wait_until(
        &browser,
        "three simulated devices online",
        "return [...document.querySelectorAll('#devices tr[data-device][data-online=true]')]
             .map(row => row.dataset.device)",
        |v| {
            let ids: Vec<&str> = v.as_array()?.iter().filter_map(Value::as_str).collect();
            (ids == ["sim-0000", "sim-0001", "sim-0002"]).then(|| ids.join(", "))
        },
    )
    .await;
    eprintln!("devices online: {online}");

    let counter = "return document.querySelector(
        '#devices tr[data-device=\"sim-0002\"] [data-sensor=\"counter\"]')?.textContent ?? null";
    let first = wait_until(&browser, "a latest counter value", counter, number).await;
    let later = wait_until(&browser, "the latest counter value change", counter, |v| {
        number(v).filter(|n| *n != first)
    })
    .await;
    eprintln!("latest counter of sim-0002: {first} then {later}");

    // Clicking a row selects that device: one chart per sensor, fed by the live stream.
    click(&browser, "#devices tr[data-device=\"sim-0001\"] td").await;
    let charts = "return document.querySelector('#selected-device').textContent === 'sim-0001'
        ? [...document.querySelectorAll('#charts .chart')]
            .map(c => [c.dataset.sensor, Number(c.dataset.points)])
        : null";
    let points = |v: &Value| -> Option<u64> {
        let charts = v.as_array()?;
        let names: Vec<&str> = charts.iter().filter_map(|c| c[0].as_str()).collect();
        (names == ["temperature", "humidity", "counter"]).then_some(())?;
        charts[0][1].as_u64().filter(|n| *n > 0)
    };
    let p0 = wait_until(&browser, "sim-0001's three charts", charts, points).await;
    let p1 = wait_until(&browser, "the temperature chart grow", charts, |v| {
        points(v).filter(|n| *n >= p0 + 3)
    })
    .await;
    eprintln!("temperature chart of sim-0001: {p0} then {p1} points");

    let committed = "return document.querySelector('#samples-committed').textContent";
    let c0 = wait_until(&browser, "samples committed", committed, number).await;
    let c1 = wait_until(&browser, "samples committed rise", committed, |v| {
        number(v).filter(|n| *n > c0)
    })
    .await;
    eprintln!("samples committed: {c0} then {c1}");

    // A firmware update started from the command line shows up with live progress, then done.
    let flash = tokio::process::Command::new(&ferry)
        .args([
            "flash",
            "sim-0001",
            "app.fwb",
            "--api",
            &format!("https://{api}"),
            "--ca-file",
            &pki.ca.display().to_string(),
            "--token",
            TOKEN,
        ])
        .current_dir(dir.path())
        .output();
    let flash = tokio::spawn(flash);
    let job = "const row = document.querySelector('#firmware-jobs tr[data-device=\"sim-0001\"]');
        return row ? [row.querySelector('.badge').textContent, row.querySelector('progress').value]
                   : null";
    let moving = wait_until(&browser, "the update's progress on the page", job, |v| {
        (v[0] == "transferring" && v[1].as_f64()? > 0.0).then(|| v.to_string())
    })
    .await;
    eprintln!("firmware job on the page: {moving}");
    wait_until(&browser, "the update done on the page", job, |v| {
        (v[0] == "done").then_some(())
    })
    .await;
    let out = flash.await.unwrap().unwrap();
    assert!(out.status.success(), "ferry flash: {out:?}");
    let firmware = "return document.querySelector('#devices tr[data-device=\"sim-0001\"] .muted')?.textContent";
    wait_until(
        &browser,
        "the new version in the device table",
        firmware,
        |v| (v == "1.1.0").then_some(()),
    )
    .await;

    let state = browser
        .eval(
            "return [document.querySelector('#uplink-state').textContent,
                     document.querySelector('#error-banner').hidden]",
        )
        .unwrap();
    assert_eq!(
        state,
        serde_json::json!(["off", true]),
        "uplink state, banner hidden"
    );
    let console = browser.console().unwrap();
    assert!(
        !console.iter().any(|l| l.contains("Uncaught")),
        "script errors:\n{}",
        console.join("\n")
    );

    let shot = output_dir().join("dashboard.png");
    browser.screenshot(&shot).unwrap();
    eprintln!("screenshot: {}", shot.display());

    stop.cancel();
    sim.await.unwrap();
    agent.terminate().await;
}
