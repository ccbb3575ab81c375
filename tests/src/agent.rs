//! The `ferry` agent binary as a process a test can SIGKILL and start again on the same store,
//! with its log captured (kept across restarts) for assertions and failure messages.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{try_poll_until, workspace_bin};

/// One agent process: its config file, device TCP listener (if any) and log.
pub struct AgentProc {
    bin: PathBuf,
    config: PathBuf,
    tcp: Option<SocketAddr>,
    child: Option<tokio::process::Child>,
    log: Arc<Mutex<String>>,
}

impl AgentProc {
    /// Writes `toml` to `dir/ferry.toml`. With `tcp`, the config must set `devices.tcp_listen`
    /// to `127.0.0.1:{tcp}`, and [`AgentProc::start`] waits until that port accepts.
    pub fn new(dir: &Path, toml: &str, tcp: Option<u16>) -> AgentProc {
        let config = dir.join("ferry.toml");
        std::fs::write(&config, toml).expect("write ferry.toml");
        AgentProc {
            bin: workspace_bin("ferry-agent", "ferry").expect("build ferry"),
            config,
            tcp: tcp.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            child: None,
            log: Arc::default(),
        }
    }

    /// The device TCP listener.
    pub fn tcp(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// Starts `ferry run` (log level info) and, with a TCP listener, waits (≤ 15 s) until this
    /// run has logged binding it and the port accepts. The log line, not the port alone: a port
    /// chosen free may be taken by another test's listener in between, and a connect would then
    /// succeed while this agent exits with "address in use".
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let from = self.log.lock().expect("log lock").len();
        let mut child = tokio::process::Command::new(&self.bin)
            .args(["--log", "info", "run", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ferry");
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let sink = self.log.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let mut s = sink.lock().expect("log lock");
                s.push_str(&l);
                s.push('\n');
            }
        });
        self.child = Some(child);
        let Some(tcp) = self.tcp else { return };
        let (log, child) = (&self.log, self.child.as_mut().expect("started"));
        let bound = format!("addr={tcp}");
        let listening = try_poll_until(
            Duration::from_secs(15),
            format!("the agent to accept devices on {tcp}"),
            async || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Ok(Err(status));
                }
                let logged = log.lock().expect("log lock")[from..]
                    .lines()
                    .any(|l| l.contains("Listening for devices over TCP.") && l.contains(&bound));
                if !logged {
                    return Err(std::io::Error::other(
                        "no \"Listening for devices\" line yet",
                    ));
                }
                tokio::net::TcpStream::connect(tcp).await.map(|_| Ok(()))
            },
        )
        .await;
        match listening {
            Ok(Ok(())) => {}
            Ok(Err(status)) => panic!("agent did not start ({status}); log:\n{}", self.log()),
            Err(e) => panic!("agent did not start: {e}; log:\n{}", self.log()),
        }
    }

    /// Everything the agent logged so far (all runs).
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits until a log line contains every one of `needles`: that line, or `None` at the
    /// deadline or when the process has exited.
    /// The `addr=` of the log line that contains `message` (e.g. "Serving the local API"), waiting
    /// up to `timeout` for it.
    pub async fn logged_addr(&mut self, message: &str, timeout: Duration) -> SocketAddr {
        let line = self.wait_log_line(&[message, "addr="], timeout).await;
        let line = line.unwrap_or_else(|| panic!("no {message:?} line; log:\n{}", self.log()));
        line.split_whitespace()
            .find_map(|f| f.strip_prefix("addr="))
            .and_then(|a| a.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
    }

    pub async fn wait_log_line(&mut self, needles: &[&str], timeout: Duration) -> Option<String> {
        let (log, child) = (&self.log, &mut self.child);
        let line = try_poll_until(
            timeout,
            format!("a log line with {needles:?}"),
            async || {
                let found = log
                    .lock()
                    .expect("log lock")
                    .lines()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .map(str::to_owned);
                let exited = child
                    .as_mut()
                    .is_none_or(|c| c.try_wait().ok().flatten().is_some());
                if found.is_some() || exited {
                    Ok(found)
                } else {
                    Err("not logged yet")
                }
            },
        );
        line.await.ok().flatten()
    }

    /// SIGKILL (the crash) and reap.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM; asserts a clean exit within 20 s.
    pub async fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id().expect("running") as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let status = tokio::time::timeout(Duration::from_secs(20), c.wait())
                .await
                .expect("agent stops within 20 s")
                .expect("wait for agent");
            assert!(
                status.success(),
                "agent exit status {status}; log:\n{}",
                self.log()
            );
        }
    }
}

/// A test that panics while the agent is (or was) running prints the agent's log, so a failure
/// in CI says what the agent saw and did.
impl Drop for AgentProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- ferry log ({}) ---\n{}--- end of ferry log ---",
                self.config.display(),
                self.log()
            );
        }
    }
}
