//! The shipped example config loads, and `ferry config check` reports errors with file and key.
use std::path::Path;

use ferry_agent::config::{Durability, Settings, WhenFull};

#[test]
fn example_config_loads_with_documented_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ferry.example.toml");
    let s = Settings::load(&path).expect("the example config is valid");
    assert_eq!(s.store.durability, Durability::Full);
    assert_eq!(s.store.when_full, WhenFull::DropOldest);
    assert_eq!(
        s.devices.tcp_listen,
        Some("127.0.0.1:7879".parse().unwrap())
    );
    assert_eq!(s.store.max_db_size, Some(1 << 30));
}

#[test]
fn the_packaged_config_is_the_example_with_the_store_under_var_lib_ferry() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(dir.join("ferry.example.toml")).unwrap();
    let packaged = std::fs::read_to_string(dir.join("debian/ferry.toml")).unwrap();
    let differ: Vec<(&str, &str)> = example
        .lines()
        .zip(packaged.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(example.lines().count(), packaged.lines().count());
    assert_eq!(
        differ,
        [
            (
                "# Validate with:  ferry config check agent/ferry.example.toml",
                "# Validate with:  ferry config check /etc/ferry/ferry.toml   (then: systemctl restart ferry)"
            ),
            ("path = \"ferry.db\"", "path = \"/var/lib/ferry/ferry.db\""),
        ],
        "agent/debian/ferry.toml must follow agent/ferry.example.toml"
    );
    let s = Settings::load(&dir.join("debian/ferry.toml")).expect("the packaged config is valid");
    assert_eq!(s.store.path, Path::new("/var/lib/ferry/ferry.db"));
}

#[test]
fn config_check_cli_names_file_and_key() {
    let dir = crate::common::TempDir::new("cfg");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[store]\nwhen_full = \"panic\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("store.when_full") && err.contains("panic"),
        "{err}"
    );
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("ferry.example.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn corrupt_and_foreign_databases_are_refused_at_open() {
    let dir = crate::common::TempDir::new("corrupt");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let s = crate::common::settings(&format!(
        "[store]\npath = {:?}\n",
        junk.display().to_string()
    ));
    let e = ferry_agent::store::open_writer(&s.store)
        .unwrap_err()
        .to_string();
    assert!(e.contains("corrupt or not a database"), "{e}");
    // A store SQLite cannot open (here a directory in its place; a full disk or an I/O error
    // alike) is not called damaged, and the agent is not told to move it aside.
    let blocked = dir.path().join("blocked.db");
    std::fs::create_dir(&blocked).unwrap();
    let s = crate::common::settings(&format!(
        "[store]\npath = {:?}\n",
        blocked.display().to_string()
    ));
    let e = ferry_agent::store::open_writer(&s.store).unwrap_err();
    assert!(
        matches!(e, ferry_agent::store::StoreError::Unavailable { .. }),
        "{e}"
    );
    assert!(!e.to_string().contains("move it aside"), "{e}");
    let foreign = dir.path().join("foreign.db");
    let c = rusqlite::Connection::open(&foreign).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    let s = crate::common::settings(&format!(
        "[store]\npath = {:?}\n",
        foreign.display().to_string()
    ));
    let e = ferry_agent::store::open_writer(&s.store)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a Ferry database"), "{e}");
    let newer = dir.path().join("newer.db");
    let s = crate::common::settings(&format!(
        "[store]\npath = {:?}\n",
        newer.display().to_string()
    ));
    drop(ferry_agent::store::open_writer(&s.store).unwrap());
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let e = ferry_agent::store::open_writer(&s.store)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("schema version 99") && e.contains("upgrade ferry"),
        "{e}"
    );
}

/// `ferry config check` prints the settings it read; never a secret: not the uplink password,
/// not the API token, not a byte of a private key (mutual TLS to the broker, HTTPS).
#[test]
fn config_check_shows_no_secret() {
    let dir = crate::common::TempDir::new("cfg-secrets");
    let pki = crate::pki::TestPki::generate(dir.path());
    let file = dir.path().join("ferry.toml");
    let p = |p: &Path| p.display().to_string();
    let (password, token) = ("uplink-secret-pass-42", "api-secret-token-0123456789");
    std::fs::write(
        &file,
        format!(
            "[uplink]\nbroker = \"127.0.0.1:8883\"\nusername = \"gw\"\npassword = {password:?}\n\
             ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n\
             [api]\ntoken = {token:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
            p(&pki.ca),
            p(&pki.client_cert),
            p(&pki.client_key),
            p(&pki.server_cert),
            p(&pki.server_key),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains("(password set)") && shown.contains("key: (set)"),
        "{shown}"
    );
    assert!(
        !shown.contains(password) && !shown.contains(token),
        "{shown}"
    );
    for key in [&pki.client_key, &pki.server_key] {
        let pem = std::fs::read_to_string(key).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!shown.contains(&body[..24]), "a key's PEM shown: {shown}");
    }
    // File contents as byte arrays (Debug of a Vec<u8>: one number per line).
    let numbers = shown
        .lines()
        .filter(|l| l.trim().trim_end_matches(',').parse::<u8>().is_ok())
        .count();
    assert!(numbers < 16, "{numbers} lines of bytes shown: {shown}");
}
