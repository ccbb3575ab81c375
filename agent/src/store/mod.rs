//! The durable buffer: one SQLite database in WAL mode.
//!
//! Invariants:
//! - **One writer.** Only the writer thread ([`writer`]) writes rows; everything else opens read-only
//!   connections ([`read`]), so reads never block ingest (WAL). The [`checkpoint`] thread has its
//!   own connection and only copies committed WAL pages into the database file.
//! - **Acked means committed.** A device is acked for a sample only after the transaction holding it
//!   committed (fsynced with `durability = "full"`).
//! - **Exactly once, in order.** Per `(device, boot)` the writer accepts samples only in sequence
//!   order from `boots.next_seq`, which it updates in the same transaction as the rows.
//! - **Checked at open.** A file that is not SQLite, not Ferry's, corrupt, or written by a newer
//!   schema is refused with a clear [`StoreError`]; the agent never runs on it.

pub mod checkpoint;
pub mod codec;
pub mod log;
pub mod query;
pub mod read;
pub mod retention;
pub mod rollup;
pub mod schema;
pub mod tail;
pub mod wear;
pub mod writer;

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::config::{Durability, StoreSettings};

/// Store failures, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is not a SQLite database, or SQLite found it damaged.
    #[error("{path}: database is corrupt or not a database ({detail}); move it aside to start a new one")]
    Corrupt {
        /// File.
        path: String,
        /// What SQLite said.
        detail: String,
    },
    /// The store cannot be opened now, for a reason outside the file: a full disk, an I/O error,
    /// missing permissions. Nothing says the database is damaged.
    #[error("{path}: cannot open the store now ({detail}); the database is not known to be damaged: check free space, the disk and permissions")]
    Unavailable {
        /// File.
        path: String,
        /// What SQLite said.
        detail: String,
    },
    /// A SQLite database that belongs to another application.
    #[error("{path}: not a Ferry database (application_id {found:#x})")]
    Foreign {
        /// File.
        path: String,
        /// Its application id.
        found: i64,
    },
    /// Written by a newer Ferry.
    #[error("{path}: schema version {found} is newer than this ferry supports ({supported}); upgrade ferry")]
    TooNew {
        /// File.
        path: String,
        /// Version found.
        found: i64,
        /// Version supported.
        supported: i64,
    },
    /// The disk refused a write.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Any other SQLite failure.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A write failed and was rolled back (nothing in it was acked).
    #[error("write failed and was rolled back: {0}")]
    Failed(String),
    /// The writer thread is gone (shutting down).
    #[error("store writer stopped")]
    Stopped,
}

impl StoreError {
    /// A cloneable copy for replies to several waiters.
    pub fn shared(&self) -> StoreError {
        match self {
            StoreError::DiskFull(m) => StoreError::DiskFull(m.clone()),
            other => StoreError::Failed(other.to_string()),
        }
    }

    /// Classifies a failed write to the sample log.
    pub fn from_log(e: std::io::Error) -> StoreError {
        if e.raw_os_error() == Some(nix::libc::ENOSPC)
            || e.kind() == std::io::ErrorKind::StorageFull
        {
            StoreError::DiskFull(format!("sample log: {e}"))
        } else {
            StoreError::Failed(format!("sample log: {e}"))
        }
    }

    /// Classifies a SQLite error from a write.
    pub fn from_write(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::DiskFull(e.to_string()),
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Free bytes for unprivileged writers on the filesystem holding the database `db`.
pub fn fs_free_bytes(db: &Path) -> Option<u64> {
    let dir = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// An error opening or checking the file: damage only when SQLite says so (corrupt, not a
/// database); a full disk or an I/O error is [`StoreError::Unavailable`], never advice to move a
/// good store aside.
fn corrupt(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match e.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) | None => damaged(path, e.to_string()),
        Some(_) => StoreError::Unavailable {
            path: path.display().to_string(),
            detail: e.to_string(),
        },
    }
}

fn damaged(path: &Path, detail: String) -> StoreError {
    StoreError::Corrupt {
        path: path.display().to_string(),
        detail,
    }
}

/// Opens (creating if needed) and migrates the database for writing, after checking it.
pub fn open_writer(settings: &StoreSettings) -> Result<Connection, StoreError> {
    let path = settings.path.as_path();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Sqlite(rusqlite::Error::InvalidPath(dir.join(e.to_string())))
        })?;
    }
    let conn = Connection::open(path).map_err(|e| corrupt(path, e))?;
    check(&conn, path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| corrupt(path, e))?;
    let sync = match settings.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "cache_size", -8_192)?; // 8 MiB: the hot set is the events tail and index leaves
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints run on their own thread (see `checkpoint`), never inside a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Where the sample log of the database `db` lives: a directory beside it (`ferry.db.log`).
pub fn log_dir(db: &Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".log");
    name.into()
}

/// Opens the database read-only (for queries and the CLI); it must already exist and be valid.
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| corrupt(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Every query the API runs, with each `series` and `events` variant, stays prepared.
    conn.set_prepared_statement_cache_capacity(64);
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| corrupt(path, e))?;
    if v > schema::LATEST {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found: v,
            supported: schema::LATEST,
        });
    }
    Ok(conn)
}

/// Runs `f` in one read transaction on `conn` (one snapshot for all its statements), or inside the
/// transaction already open on it. The statements are cached: a reader runs them per request.
pub fn read_snapshot<T, E: From<StoreError>>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    if !conn.is_autocommit() {
        return f(conn);
    }
    let run = |sql: &str| -> Result<(), StoreError> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    run("BEGIN")?;
    let out = f(conn);
    // A read transaction has nothing to keep: end it whatever `f` returned.
    let end = run("COMMIT");
    let out = out?;
    end?;
    Ok(out)
}

/// Refuses foreign, corrupt and too-new files. Runs `PRAGMA quick_check` (linear in the file size).
fn check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| corrupt(path, e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| corrupt(path, e))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| corrupt(path, e))?;
    if app != schema::APPLICATION_ID && (app != 0 || tables > 0) {
        return Err(StoreError::Foreign {
            path: path.display().to_string(),
            found: app,
        });
    }
    if version > schema::LATEST {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found: version,
            supported: schema::LATEST,
        });
    }
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| corrupt(path, e))?;
    if verdict != "ok" {
        return Err(damaged(path, verdict));
    }
    Ok(())
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mut version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let from = version;
    while version < schema::LATEST {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(schema::MIGRATIONS[version as usize])
            .map_err(StoreError::from_write)?;
        version += 1;
        tx.pragma_update(None, "user_version", version)?;
        tx.pragma_update(None, "application_id", schema::APPLICATION_ID)?;
        tx.commit().map_err(StoreError::from_write)?;
        tracing::debug!(path = %path.display(), version, "Store schema migration step done.");
    }
    // One line, not one per step: a fresh store is created, an older one upgraded.
    if from == 0 && version > 0 {
        tracing::info!(path = %path.display(), version, "New store created.");
    } else if from < version {
        tracing::info!(path = %path.display(), from, to = version, "Store schema upgraded.");
    }
    Ok(())
}
