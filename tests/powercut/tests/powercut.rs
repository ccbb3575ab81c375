//! The power-cut volume loses what a real power cut would lose: mounted through FUSE, written
//! with plain `std::fs` calls, cut, and read back.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use ferry_powercut::{Policy, PowerCut, Trigger};

fn volume(name: &str, policy: Policy) -> (tempfile::TempDir, PowerCut) {
    let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
    let pc = PowerCut::mount(&dir.path().join("disk"), &dir.path().join("mnt"), policy)
        .expect("mount (needs /dev/fuse and root)");
    (dir, pc)
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

#[test]
#[ignore = "needs /dev/fuse and root"]
fn unsynced_writes_are_lost_and_synced_ones_survive() {
    let (_d, mut pc) = volume("pc-sync", Policy::LoseAll);
    let m = pc.path().to_path_buf();
    let mut kept = File::create(m.join("synced")).unwrap();
    kept.write_all(b"on the disk").unwrap();
    kept.sync_all().unwrap();
    drop(kept);
    fs::write(m.join("name synced, data not"), b"lost").unwrap();
    sync_dir(&m);
    fs::write(m.join("unsynced"), b"gone after the cut").unwrap();
    // Written after its sync: lost, the synced content stays.
    OpenOptions::new()
        .append(true)
        .open(m.join("synced"))
        .unwrap()
        .write_all(b" and more")
        .unwrap();
    assert_eq!(
        fs::read(m.join("synced")).unwrap(),
        b"on the disk and more",
        "readers see it"
    );
    pc.freeze();
    let report = pc.cut().unwrap();
    assert!(!m.join("unsynced").exists(), "{report:?}");
    assert_eq!(fs::read(m.join("name synced, data not")).unwrap(), b"");
    assert_eq!(fs::read(m.join("synced")).unwrap(), b"on the disk");
    assert_eq!(fs::read(pc.disk().join("synced")).unwrap(), b"on the disk");
}

#[test]
#[ignore = "needs /dev/fuse and root"]
fn a_rename_without_a_directory_sync_is_undone() {
    let (_d, mut pc) = volume("pc-rename", Policy::LoseAll);
    let m = pc.path().to_path_buf();
    for (name, text) in [("old", "old content"), ("new.tmp", "new content")] {
        let mut f = File::create(m.join(name)).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    sync_dir(&m);
    fs::rename(m.join("new.tmp"), m.join("old")).unwrap();
    assert_eq!(fs::read_to_string(m.join("old")).unwrap(), "new content");
    pc.freeze();
    pc.cut().unwrap();
    assert_eq!(fs::read_to_string(m.join("old")).unwrap(), "old content");
    assert_eq!(
        fs::read_to_string(m.join("new.tmp")).unwrap(),
        "new content"
    );
}

#[test]
#[ignore = "needs /dev/fuse and root"]
fn after_the_freeze_nothing_is_written_and_no_sync_succeeds() {
    let (_d, mut pc) = volume("pc-freeze", Policy::Random(7));
    let m = pc.path().to_path_buf();
    let mut f = File::create(m.join("f")).unwrap();
    pc.freeze();
    assert!(f.write_all(b"x").and_then(|()| f.sync_all()).is_err());
    assert!(File::create(m.join("g")).is_err());
    drop(f);
    pc.cut().unwrap();
    File::create(m.join("g")).expect("writable again after the cut");
}

#[test]
#[ignore = "needs /dev/fuse and root"]
fn a_trigger_cuts_at_the_sync_it_names_and_the_sync_fails() {
    let (_d, mut pc) = volume("pc-trigger", Policy::LoseAll);
    let m = pc.path().to_path_buf();
    pc.arm(Trigger::checkpoint_sync("data.db", 2));
    let mut f = File::create(m.join("data.db")).unwrap();
    sync_dir(&m);
    f.write_all(b"first").unwrap();
    f.sync_all().unwrap();
    assert!(!pc.fired(), "the first sync is not the second");
    // Another file's sync does not count.
    File::create(m.join("data.db-wal"))
        .unwrap()
        .sync_all()
        .unwrap();
    f.write_all(b" second").unwrap();
    let e = f.sync_all().unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(5),
        "the interrupted sync fails with EIO: {e}"
    );
    assert!(pc.fired());
    assert!(f.write_all(b"x").is_err(), "frozen after the trigger");
    drop(f);
    pc.cut().unwrap();
    assert_eq!(
        fs::read(m.join("data.db")).unwrap(),
        b"first",
        "the second sync never happened"
    );
}

#[test]
#[ignore = "needs /dev/fuse and root"]
fn a_full_disk_refuses_growth_until_space_returns() {
    let (_d, pc) = volume("pc-full", Policy::LoseAll);
    let m = pc.path().to_path_buf();
    fs::write(m.join("a"), vec![1u8; 8192]).unwrap();
    pc.set_capacity(Some(12 * 1024));
    let mut f = File::create(m.join("b")).unwrap();
    f.write_all(&[2u8; 4096]).unwrap();
    let e = f.write_all(&[3u8; 4096]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(28), "ENOSPC: {e}");
    assert_eq!(pc.enospc_count(), 1);
    assert_eq!(
        fs::metadata(m.join("b")).unwrap().len(),
        4096,
        "the refused write changed nothing"
    );
    // Overwriting in place needs no room.
    OpenOptions::new()
        .write(true)
        .open(m.join("a"))
        .unwrap()
        .write_all(&[9u8; 8192])
        .unwrap();
    pc.set_capacity(None);
    f.write_all(&[3u8; 4096]).unwrap();
    assert_eq!(pc.used().unwrap(), 8192 + 8192);
}

#[test]
#[ignore = "needs /dev/fuse and root"]
fn random_cuts_keep_or_lose_unsynced_changes_and_never_synced_ones() {
    let (_d, mut pc) = volume("pc-random", Policy::Random(42));
    let m = pc.path().to_path_buf();
    let (mut renames_kept, mut renames_undone) = (0, 0);
    for round in 0..40 {
        let mut f = File::create(m.join("durable")).unwrap();
        f.write_all(format!("round {round}").as_bytes()).unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs::write(m.join("tmp"), b"renamed").unwrap();
        File::open(m.join("tmp")).unwrap().sync_all().unwrap();
        sync_dir(&m);
        fs::rename(m.join("tmp"), m.join("target")).unwrap();
        pc.freeze();
        pc.cut().unwrap();
        assert_eq!(
            fs::read_to_string(m.join("durable")).unwrap(),
            format!("round {round}")
        );
        if m.join("target").exists() {
            renames_kept += 1;
            assert!(!m.join("tmp").exists());
            fs::remove_file(m.join("target")).unwrap();
        } else {
            renames_undone += 1;
            fs::remove_file(m.join("tmp")).unwrap();
        }
        sync_dir(&m);
    }
    assert!(
        renames_kept > 0 && renames_undone > 0,
        "{renames_kept} kept, {renames_undone} undone"
    );
}

/// Python's sqlite3 in a child process: the FUSE server runs in this process, and SQLite maps its
/// `-shm` file, so a client in the same process could deadlock against the server (an `munmap`
/// holding the memory map's lock waits for a write the server cannot read without that lock).
const SQLITE: &str = r#"
import sqlite3, sys
path, sync, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(path, isolation_level=None)
c.execute("PRAGMA journal_mode = WAL")
c.execute(f"PRAGMA synchronous = {sync}")
c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
if n < 0:
    print(c.execute("PRAGMA integrity_check").fetchone()[0], c.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
    sys.exit(0)
for i in range(n):
    c.execute("INSERT INTO t (v) VALUES (?)", (bytes([i % 256]) * 300,))
print("committed", flush=True)
sys.stdin.read()  # until killed: the cut comes while the database is open
"#;

fn sqlite(path: &Path, sync: &str, n: i64) -> std::process::Child {
    std::process::Command::new("python3")
        .args(["-c", SQLITE])
        .arg(path)
        .arg(sync)
        .arg(n.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3")
}

/// (`integrity_check`, rows) of the database.
fn check(path: &Path) -> (String, i64) {
    let out = sqlite(path, "FULL", -1).wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (ok, rows) = text.trim().split_once(' ').expect("two words");
    (ok.to_owned(), rows.parse().unwrap())
}

/// Commits `n` rows (one transaction each) while the database stays open, cuts the power, kills
/// the writer; returns how many committed rows are missing (the file must pass
/// `integrity_check`).
fn committed_rows_lost(pc: &mut PowerCut, sync: &str, n: i64) -> i64 {
    use std::io::BufRead;
    let path = pc.path().join("store.db");
    let before = if path.exists() { check(&path).1 } else { 0 };
    let mut child = sqlite(&path, sync, n);
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "committed");
    pc.freeze();
    child.kill().unwrap();
    child.wait().unwrap();
    pc.cut().unwrap();
    let (ok, after) = check(&path);
    assert_eq!(ok, "ok");
    before + n - after
}

#[test]
#[ignore = "needs /dev/fuse, root and python3"]
fn sqlite_with_synchronous_full_keeps_every_commit_through_cuts() {
    let (_d, mut pc) = volume("pc-sqlite-full", Policy::Random(1));
    for round in 0..10 {
        assert_eq!(committed_rows_lost(&mut pc, "FULL", 50), 0, "round {round}");
    }
}

#[test]
#[ignore = "needs /dev/fuse, root and python3"]
fn sqlite_with_synchronous_off_loses_commits_at_a_cut() {
    let (_d, mut pc) = volume("pc-sqlite-off", Policy::LoseAll);
    let lost = committed_rows_lost(&mut pc, "OFF", 50);
    assert!(lost > 0, "a cut must cost an unsynced store its commits");
}
