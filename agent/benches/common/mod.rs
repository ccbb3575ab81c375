//! What the agent benchmarks share: reading a process's CPU time and memory from `/proc`, and
//! stopping an agent process with what it used and stored.
#![allow(dead_code)]

/// A `key:` field of `/proc/{pid}/status` (in kB for the memory fields), e.g. `VmHWM:`.
pub fn proc_field(pid: u32, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of a process (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

fn cpu_seconds_of(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[path = "port.rs"]
mod port;
pub use port::free_port;

/// A loopback address whose port is free right now.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// An empty scratch directory `ferry-bench-{name}-{pid}` under the temp dir.
pub fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `toml` to `dir/ferry.toml` and starts `ferry --log warn run` on it, killed on drop.
pub fn spawn_agent(dir: &std::path::Path, toml: &str) -> tokio::process::Child {
    let cfg = dir.join("ferry.toml");
    std::fs::write(&cfg, toml).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--log", "warn", "run", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferry")
}

/// CPU seconds (user + system) of the threads of process `pid` named `comm`, alive now.
pub fn threads_cpu_seconds(pid: u32, comm: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .filter_map(|t| {
            let tid: u32 = t.file_name().to_str()?.parse().ok()?;
            Some(cpu_seconds_of(&format!("/proc/{pid}/task/{tid}/stat")))
        })
        .sum()
}

/// SIGTERM to the agent `child` (store at `db`), waits up to `wait`; returns (peak RSS MB, CPU s,
/// events stored; -1 if the store is unreadable).
pub async fn stop_and_measure(
    child: &mut tokio::process::Child,
    db: &std::path::Path,
    wait: std::time::Duration,
) -> (f64, f64, i64) {
    let pid = child.id().expect("agent running");
    let rss_mb = proc_field(pid, "VmHWM:").unwrap_or(0.0) / 1024.0;
    let cpu = cpu_seconds(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the agent");
    let _ = tokio::time::timeout(wait, child.wait()).await;
    let stored = ferry_agent::store::open_reader(db)
        .and_then(|c| ferry_agent::store::read::event_count(&c))
        .unwrap_or(-1);
    (rss_mb, cpu, stored)
}
