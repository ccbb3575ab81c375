//! A real `mosquitto` for tests: an ephemeral loopback port, its config, persistence and log in
//! a temp dir, restartable on the same port.
//!
//! `stop()` sends SIGTERM and waits, so mosquitto writes its persistence file: queued QoS 1
//! messages and persistent sessions (with their subscriptions) survive `start_again()`.
//! `kill()` is the crash (SIGKILL: only what the last autosave wrote survives). Dropping the
//! handle kills the broker.
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The test PKI lives in [`crate::pki`] (the agent's tests include it by path).
pub use crate::pki::TestPki;
use crate::{free_port, poll_until_blocking, require_tool_in, try_poll_until_blocking};

const INSTALL: &str = "apt-get install -y --no-install-recommends mosquitto mosquitto-clients";

/// How to configure the broker.
#[derive(Debug, Clone)]
pub struct MosquittoOptions {
    /// A TLS listener instead of plain TCP.
    pub tls: Option<MosquittoTls>,
    /// Users for a password file; empty: anonymous access.
    pub users: Vec<(String, String)>,
    /// `message_size_limit` in bytes (0: mosquitto's default).
    pub message_size_limit: u32,
    /// `max_inflight_messages`: unacked QoS 1 messages per client in each direction (MQTT 5
    /// clients may ask for less with their receive maximum).
    pub max_inflight_messages: u16,
    /// `autosave_interval` in seconds (persistence is also written at SIGTERM).
    pub autosave_interval_s: u32,
    /// Extra lines for the config file.
    pub extra: String,
}

impl Default for MosquittoOptions {
    fn default() -> Self {
        MosquittoOptions {
            tls: None,
            users: Vec::new(),
            message_size_limit: 0,
            max_inflight_messages: 1000,
            autosave_interval_s: 60,
            extra: String::new(),
        }
    }
}

/// Files of a TLS listener.
#[derive(Debug, Clone)]
pub struct MosquittoTls {
    /// CA that signed the server certificate (and client certificates).
    pub cafile: PathBuf,
    /// Server certificate (PEM).
    pub certfile: PathBuf,
    /// Server key (PEM).
    pub keyfile: PathBuf,
    /// Mutual TLS: clients must present a certificate signed by `cafile`.
    pub require_certificate: bool,
}

/// A running (or stopped) broker.
pub struct Mosquitto {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker; panics with the install step when mosquitto is not installed.
    pub fn start(opts: MosquittoOptions) -> Mosquitto {
        let bin = require_tool_in("mosquitto", &["/usr/sbin"], INSTALL);
        let mut dir = tempfile::Builder::new()
            .prefix("ferry-mosquitto-")
            .tempdir()
            .expect("temp dir");
        if !opts.users.is_empty() {
            let passwd = require_tool_in("mosquitto_passwd", &["/usr/bin"], INSTALL);
            let file = dir.path().join("passwd");
            for (i, (user, pass)) in opts.users.iter().enumerate() {
                let mut cmd = Command::new(&passwd);
                if i == 0 {
                    cmd.arg("-c");
                }
                let out = cmd
                    .arg("-b")
                    .arg(&file)
                    .arg(user)
                    .arg(pass)
                    .output()
                    .expect("run mosquitto_passwd");
                assert!(out.status.success(), "mosquitto_passwd: {out:?}");
            }
        }
        // A port can be taken between choosing and binding it: try a few.
        for _ in 0..5 {
            let port = free_port();
            write_config(dir.path(), port, &opts);
            let mut m = Mosquitto {
                bin: bin.clone(),
                dir,
                port,
                child: None,
            };
            if m.spawn().is_ok() {
                return m;
            }
            dir = std::mem::replace(&mut m.dir, tempfile::TempDir::new().expect("temp dir"));
        }
        panic!("mosquitto did not start on any of 5 ports");
    }

    /// The listener's port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The temp dir (config, persistence, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM and wait (mosquitto saves persistence on the way out); SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, nix::sys::signal::Signal::SIGTERM);
            // Waited for on a thread, not polled: the exit is seen at once, so a restart's
            // downtime is mosquitto's own (tests set it against their clients' reconnect backoff).
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let (exited, wait) = std::sync::mpsc::channel();
            let waiter = std::thread::spawn(move || {
                let _ = c.wait();
                let _ = exited.send(());
            });
            if wait.recv_timeout(Duration::from_secs(10)).is_err() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = waiter.join();
        }
    }

    /// SIGKILL (a crash: only the last autosave survives).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port with the same persistence.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "mosquitto is still running");
        // The port may linger briefly after the old process; retry for a few seconds.
        let what = format!("mosquitto to restart on port {}", self.port);
        poll_until_blocking(Duration::from_secs(10), what, || self.spawn());
    }

    /// Starts the process and waits until this run has logged "running" (all listeners bound)
    /// and the port accepts: the port alone may be another test's listener that took it.
    fn spawn(&mut self) -> Result<(), String> {
        let from = self.log().len();
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.bin.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let listening = try_poll_until_blocking(
            Duration::from_secs(10),
            format_args!("mosquitto to listen on {addr}"),
            || match child.try_wait() {
                Ok(Some(status)) => Ok(Err(format!("mosquitto exited ({status})"))),
                _ if !self.log().get(from..).unwrap_or("").contains(" running") => {
                    Err(std::io::Error::other("no \"running\" line in its log yet"))
                }
                _ => TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map(Ok),
            },
        );
        self.child = Some(crate::started(child, listening, || self.log())?);
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "--- mosquitto log on port {} (last {} lines) ---\n{}\n--- end of mosquitto log ---",
                self.port,
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

fn signal(c: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    let _ = nix::sys::signal::kill(pid, sig);
}

fn write_config(dir: &Path, port: u16, o: &MosquittoOptions) {
    let d = dir.display();
    let mut c = String::new();
    // Running as root, mosquitto would switch to the `mosquitto` user, who cannot write here.
    if crate::is_root() {
        c.push_str("user root\n");
    }
    let _ = writeln!(c, "listener {port} 127.0.0.1");
    if let Some(t) = &o.tls {
        let _ = writeln!(
            c,
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}",
            t.cafile.display(),
            t.certfile.display(),
            t.keyfile.display(),
            t.require_certificate
        );
    }
    if o.users.is_empty() {
        c.push_str("allow_anonymous true\n");
    } else {
        let _ = writeln!(c, "allow_anonymous false\npassword_file {d}/passwd");
    }
    let _ = writeln!(
        c,
        "persistence true\npersistence_location {d}/\nautosave_interval {}\n\
         max_queued_messages 1000000\nmax_queued_bytes 0\nmax_inflight_messages {}",
        o.autosave_interval_s, o.max_inflight_messages
    );
    if o.message_size_limit > 0 {
        let _ = writeln!(c, "message_size_limit {}", o.message_size_limit);
    }
    let _ = writeln!(
        c,
        "log_dest file {d}/mosquitto.log\nlog_type error\nlog_type warning\nlog_type notice\n\
         log_type information\nconnection_messages true\nlog_timestamp_format %H:%M:%S"
    );
    c.push_str(&o.extra);
    std::fs::write(dir.join("mosquitto.conf"), c).expect("write mosquitto.conf");
}
