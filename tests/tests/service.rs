//! `ferry run` as a systemd service (`Type=notify`, `WatchdogSec=`): READY=1 only once the store is
//! open and the listeners are bound, and watchdog pings only while the store writer makes
//! progress (its thread frozen with ptrace, the pings stop; running again, they resume). The
//! package test runs the same check on the installed binary, as the `ferry` user.
use std::net::SocketAddr;

use ferry_tests::service::{check_service_protocol, ServiceRun};
use ferry_tests::{free_port, workspace_bin};

#[tokio::test(flavor = "multi_thread")]
async fn ready_after_bind_and_no_watchdog_pings_while_the_writer_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tcp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = ferry_tests::service::minimal_config(dir.path(), tcp, api);
    let ferry = workspace_bin("ferry-agent", "ferry").expect("build ferry");
    let log = check_service_protocol(
        dir.path(),
        ServiceRun {
            prefix: &[],
            ferry: &ferry,
            config: &config,
            env: &[],
            api,
            tcp,
        },
    )
    .await;
    assert!(log.contains("systemd watchdog on"), "{log}");
    assert!(
        log.contains("New store created."),
        "one line for a new store:\n{log}"
    );
    assert!(!log.contains("Store schema migrat"), "{log}");
}
