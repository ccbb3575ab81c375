//! A private PostgreSQL cluster for tests: `initdb` into a temp dir, the server on an ephemeral
//! loopback port (unix socket in the temp dir), one database `ferry`, trust authentication.
//! Started with [`Postgres::start_tls`], the server has `ssl = on` with the given certificate and
//! `pg_hba.conf` admits TCP clients over TLS only (`hostssl`); the harness's own connections
//! ([`Postgres::client`], `createdb`) then use the unix socket.
//!
//! Durability settings stay at their defaults (`fsync` on, `synchronous_commit` on): tests of
//! the bridge's guarantees run against a server that keeps its promises. (Only `initdb` itself
//! runs with `--no-sync`, which cannot affect the server's behaviour.)
//!
//! PostgreSQL refuses to run as root; as root the harness runs `initdb` and `postgres` as
//! `nobody` through `setpriv` (which execs, so the child *is* the postmaster) and hands the
//! temp dir to that user. Dropping the handle stops the server immediately (SIGQUIT) and
//! removes the dir.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, missing_tool, poll_until_blocking, try_poll_until_blocking};

const INSTALL: &str = "apt-get install -y --no-install-recommends postgresql";

/// Server settings beyond the harness's own.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Extra `postgresql.conf` lines, e.g. `max_wal_size = '4GB'`.
    pub conf: Vec<String>,
}

/// The server's certificate and key (PEM), copied into the data directory (PostgreSQL wants
/// the key owned by its user with mode 0600).
#[derive(Debug, Clone)]
pub struct PostgresTls {
    /// Server certificate (chain).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// A running (or stopped) cluster.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
}

/// Finds the directory holding `initdb`, `postgres` and `pg_ctl`: PATH, `/usr/local/bin`, then
/// the newest `/usr/lib/postgresql/*/bin`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/local/bin")])
            .map(|p| p.join("initdb"))
            .find(|p| p.is_file())
    });
    let initdb = on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| {
                let e = e.ok()?;
                let v = e.file_name().to_str()?.parse().ok()?;
                let p = e.path().join("bin/initdb");
                p.is_file().then_some((v, p))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, p)| p)
    })?;
    // /usr/local/bin/initdb is often a symlink into the versioned dir that also has postgres.
    let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
    real.parent().map(Path::to_owned)
}

impl Postgres {
    /// Starts a cluster; panics with the install step when PostgreSQL is not installed.
    pub fn start(opts: PostgresOptions) -> Postgres {
        Self::start_inner(opts, None)
    }

    /// [`start`](Self::start), TLS only: `ssl = on` with `tls`'s certificate, and TCP clients
    /// admitted over TLS only (`hostssl`).
    pub fn start_tls(opts: PostgresOptions, tls: PostgresTls) -> Postgres {
        Self::start_inner(opts, Some(tls))
    }

    fn start_inner(opts: PostgresOptions, tls: Option<PostgresTls>) -> Postgres {
        let Some(bin) = postgres_bin_dir().filter(|b| b.join("postgres").is_file()) else {
            missing_tool(
                "initdb",
                "looked on PATH, in /usr/local/bin and /usr/lib/postgresql/*/bin",
                INSTALL,
            )
        };
        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-")
            .tempdir()
            .expect("temp dir");
        let run_as = crate::is_root().then(nobody);
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"), run_as)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "ferry",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = 50\nlogging_collector = off\n",
            dir.path().display()
        );
        if let Some(tls) = &tls {
            for (from, to) in [(&tls.cert, "server.crt"), (&tls.key, "server.key")] {
                let dest = data.join(to);
                std::fs::copy(from, &dest).expect("copy the server certificate");
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod the server certificate");
                if let Some((uid, gid)) = run_as {
                    std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).expect("chown");
                }
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            // TCP only over TLS; the unix socket (the harness's own connections) stays open.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n\
                 hostssl all all ::1/128 trust\n",
            )
            .expect("write pg_hba.conf");
        }
        for line in &opts.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        all.push_str(&conf);
        std::fs::write(&conf_path, all).expect("write postgresql.conf");

        let mut pg = Postgres {
            bin,
            dir,
            port: 0,
            tls: tls.is_some(),
            run_as,
            child: None,
        };
        for _ in 0..5 {
            pg.port = free_port();
            match pg.spawn() {
                Ok(()) => {
                    pg.create_database();
                    return pg;
                }
                Err(e) => eprintln!("postgres did not start on port {}: {e}", pg.port),
            }
        }
        panic!(
            "postgres did not start on any of 5 ports; log:\n{}",
            pg.log()
        );
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq-style connection string for database `ferry`.
    pub fn conn_str(&self) -> String {
        format!("host=127.0.0.1 port={} user=ferry dbname=ferry", self.port)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// A libpq-style connection string for database `ferry` over the unix socket.
    pub fn socket_conn_str(&self) -> String {
        format!(
            "host={} port={} user=ferry dbname=ferry",
            self.dir.path().display(),
            self.port
        )
    }

    /// A client connection (its connection task runs on the current tokio runtime); over the
    /// unix socket when the server takes TCP clients over TLS only.
    pub async fn client(&self) -> tokio_postgres::Client {
        let conn_str = if self.tls {
            self.socket_conn_str()
        } else {
            self.conn_str()
        };
        let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Immediate stop (SIGQUIT, like `pg_ctl stop -m immediate`): a crash as far as the
    /// bridge can tell, but committed data is safe.
    pub fn stop_immediate(&mut self) {
        self.stop_with(nix::sys::signal::Signal::SIGQUIT);
    }

    /// Starts the server again on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres is still running");
        poll_until_blocking(Duration::from_secs(20), "postgres to restart", || {
            self.spawn()
        });
    }

    fn stop_with(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, sig);
            let exited =
                try_poll_until_blocking(Duration::from_secs(10), "postgres to exit", || {
                    !matches!(c.try_wait(), Ok(None))
                });
            if exited.is_err() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("open postgres.log");
        let mut child = command(&self.bin.join("postgres"), self.run_as)
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning postgres: {e}"))?;
        let ready =
            try_poll_until_blocking(Duration::from_secs(30), "postgres to be ready", || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(format!("postgres exited ({status})")));
                }
                // Line 8 of postmaster.pid is the status; "ready" once it accepts connections.
                let pid_file =
                    std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
                let ready = pid_file.lines().nth(7).is_some_and(|l| l.trim() == "ready");
                ready.then_some(Ok(()))
            });
        self.child = Some(crate::started(child, ready, || self.log())?);
        Ok(())
    }

    fn create_database(&self) {
        let host = if self.tls {
            self.dir.path().display().to_string()
        } else {
            "127.0.0.1".to_owned()
        };
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                &host,
                "-p",
                &self.port.to_string(),
                "-U",
                "ferry",
                "ferry",
            ])
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_with(nix::sys::signal::Signal::SIGQUIT);
    }
}

/// `nobody`'s uid and gid.
fn nobody() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id")
            .args([flag, "nobody"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .expect("id prints a number")
    };
    (id("-u"), id("-g"))
}

/// `program`, run as `run_as` (uid, gid) through setpriv when given.
fn command(program: &Path, run_as: Option<(u32, u32)>) -> Command {
    match run_as {
        None => Command::new(program),
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            // The caller's working directory may be closed to `nobody`.
            c.current_dir("/");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            c
        }
    }
}
