//! The `ferry` agent binary as a process a test can SIGKILL and start again on the same store.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::workspace_bin;

/// One agent process: its config file and device TCP port; started, killed and restarted by
/// the test.
pub struct AgentProc {
    bin: PathBuf,
    config: PathBuf,
    tcp: u16,
    child: Option<tokio::process::Child>,
}

impl AgentProc {
    /// Writes `toml` to `dir/ferry.toml`. The config must set `devices.tcp_listen` to
    /// `127.0.0.1:{tcp}`: [`AgentProc::start`] waits for that port.
    pub fn new(dir: &Path, toml: &str, tcp: u16) -> AgentProc {
        let config = dir.join("ferry.toml");
        std::fs::write(&config, toml).expect("write ferry.toml");
        AgentProc {
            bin: workspace_bin("ferry-agent", "ferry").expect("build ferry"),
            config,
            tcp,
            child: None,
        }
    }

    /// Starts `ferry run` and waits (≤ 10 s) until it accepts device connections.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let child = tokio::process::Command::new(&self.bin)
            .args(["--log", "warn", "run", "--config"])
            .arg(&self.config)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ferry");
        self.child = Some(child);
        let t = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.tcp))
            .await
            .is_err()
        {
            assert!(t.elapsed() < Duration::from_secs(10), "agent did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
            assert!(status.success(), "agent exit status {status}");
        }
    }
}
