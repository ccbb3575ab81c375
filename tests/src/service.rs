//! A process under a test as systemd would run it (`Type=notify`, `WatchdogSec=`): the test
//! listens on its own `NOTIFY_SOCKET`, and can freeze one thread of the process (ptrace) to make
//! it hang while the others run.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// The datagram socket a service manager listens on (`NOTIFY_SOCKET`).
pub struct NotifySocket {
    sock: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds `dir/notify.sock`.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = tokio::net::UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket { sock, path }
    }

    /// What `NOTIFY_SOCKET` is set to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next message (its lines, e.g. `READY=1`), if one comes within `within`.
    pub async fn next(&self, within: Duration) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(within, self.sock.recv(&mut buf))
            .await
            .ok()?
            .expect("recv on the notify socket");
        Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
    }

    /// Waits up to `within` for a message equal to `want`; returns the ones before it.
    pub async fn wait_for(&self, want: &str, within: Duration) -> Result<Vec<String>, Vec<String>> {
        let end = Instant::now() + within;
        let mut before = Vec::new();
        while let Some(m) = self
            .next(end.saturating_duration_since(Instant::now()))
            .await
        {
            if m == want {
                return Ok(before);
            }
            before.push(m);
        }
        Err(before)
    }

    /// Every message that comes within `window`.
    pub async fn collect(&self, window: Duration) -> Vec<String> {
        let end = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(m) = self
            .next(end.saturating_duration_since(Instant::now()))
            .await
        {
            out.push(m);
        }
        out
    }
}

/// A thread of another process, stopped with `PTRACE_INTERRUPT` (the other threads run on);
/// it runs again when this is dropped.
pub struct FrozenThread {
    tid: Pid,
}

impl FrozenThread {
    /// Stops the thread of `pid` whose name (`/proc/PID/task/TID/comm`) is `name`.
    pub fn freeze(pid: u32, name: &str) -> FrozenThread {
        let tid = thread_named(pid, name)
            .unwrap_or_else(|| panic!("process {pid} has no thread named {name:?}"));
        let tid = Pid::from_raw(tid as i32);
        ptrace::seize(tid, ptrace::Options::empty())
            .expect("PTRACE_SEIZE (needs root or ptrace rights)");
        ptrace::interrupt(tid).expect("PTRACE_INTERRUPT");
        waitpid(tid, Some(WaitPidFlag::__WALL)).expect("the thread stops");
        FrozenThread { tid }
    }
}

impl Drop for FrozenThread {
    fn drop(&mut self) {
        let _ = ptrace::detach(self.tid, None);
    }
}

/// The id of the thread of `pid` named `name`.
pub fn thread_named(pid: u32, name: &str) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// Writes `dir/ferry.toml`: the store in `dir`, the device listener on `tcp`, the API on `api`.
pub fn minimal_config(dir: &Path, tcp: std::net::SocketAddr, api: std::net::SocketAddr) -> PathBuf {
    let config = dir.join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = {:?}\n[devices]\ntcp_listen = \"{tcp}\"\n[api]\nlisten = \"{api}\"\n",
            dir.join("ferry.db").display().to_string()
        ),
    )
    .expect("write ferry.toml");
    config
}

/// How a [`check_service_protocol`] run starts `ferry`.
pub struct ServiceRun<'a> {
    /// Runs before the shell that execs `ferry` (e.g. `setpriv` to drop to the `ferry` user);
    /// it must exec, not fork, so the process stays the one the test started.
    pub prefix: &'a [&'a str],
    /// The `ferry` binary.
    pub ferry: &'a Path,
    /// Its config file.
    pub config: &'a Path,
    /// Extra environment (e.g. listen addresses).
    pub env: &'a [(&'a str, String)],
    /// Where the local API will listen.
    pub api: std::net::SocketAddr,
    /// Where the device listener will listen.
    pub tcp: std::net::SocketAddr,
}

/// Runs `ferry run` as systemd would with `Type=notify` and `WatchdogSec=4s`, and checks the
/// protocol: `READY=1` comes, and when it does the API and the device listener already accept;
/// `WATCHDOG=1` comes every second; it stops once the store writer's thread has been frozen for
/// half the interval and comes again once it runs; SIGTERM sends `STOPPING=1` and the agent exits
/// 0. Returns its log.
pub async fn check_service_protocol(dir: &Path, run: ServiceRun<'_>) -> String {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, BufReader};

    // The agent may run as another user: it must reach the socket.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify = NotifySocket::bind(dir);
    std::fs::set_permissions(notify.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = tokio::process::Command::new(run.prefix.first().copied().unwrap_or("sh"));
    if !run.prefix.is_empty() {
        cmd.args(&run.prefix[1..]).arg("sh");
    }
    // systemd sets WATCHDOG_PID to the service's pid: the shell's, which execs ferry.
    cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(run.ferry)
        .args(["--log", "info", "run", "--config"])
        .arg(run.config)
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", "4000000")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in run.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start ferry");
    let pid = child.id().expect("running");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            let mut s = sink.lock().unwrap();
            s.push_str(&l);
            s.push('\n');
        }
    });
    let logged = || log.lock().unwrap().clone();

    let before = notify
        .wait_for("READY=1", Duration::from_secs(30))
        .await
        .unwrap_or_else(|m| panic!("no READY=1 (got {m:?}); log:\n{}", logged()));
    // Bound before READY=1, not after: both accept right away.
    for addr in [run.api, run.tcp] {
        tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{addr} not accepting at READY=1: {e}; log:\n{}", logged()));
    }
    assert!(
        before.iter().all(|m| m != "WATCHDOG=1"),
        "a watchdog ping before READY=1: {before:?}"
    );
    assert!(
        !logged().contains('\u{1b}'),
        "colour codes in a log that is not a terminal:\n{}",
        logged()
    );

    // Pings every second (a quarter of the watchdog interval) while everything runs.
    let running = notify.collect(Duration::from_millis(3500)).await;
    let pings = running.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        pings >= 2,
        "pings while running: {running:?}; log:\n{}",
        logged()
    );

    // The store writer hangs: the pings stop once it has not answered for half the interval
    // (2 s; a shorter stall is no reason for a restart: the unit tests show that), at the
    // latest a tick (1 s) later.
    let frozen = FrozenThread::freeze(pid, "ferry-store");
    let _ = notify.collect(Duration::from_millis(3500)).await;
    let hung = notify.collect(Duration::from_secs(4)).await;
    assert!(
        hung.iter().all(|m| m != "WATCHDOG=1"),
        "pinged while the writer was frozen: {hung:?}; log:\n{}",
        logged()
    );
    assert!(
        logged().contains("the store writer made no progress"),
        "the stall is logged:\n{}",
        logged()
    );
    // It runs again: so do the pings.
    drop(frozen);
    notify
        .wait_for("WATCHDOG=1", Duration::from_secs(5))
        .await
        .unwrap_or_else(|m| {
            panic!(
                "no ping after the writer ran again ({m:?}); log:\n{}",
                logged()
            )
        });

    nix::sys::signal::kill(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    notify
        .wait_for("STOPPING=1", Duration::from_secs(10))
        .await
        .unwrap_or_else(|m| panic!("no STOPPING=1 ({m:?}); log:\n{}", logged()));
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("ferry stops within a minute")
        .unwrap();
    assert!(status.success(), "{status}; log:\n{}", logged());
    logged()
}
