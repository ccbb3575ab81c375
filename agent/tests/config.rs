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
