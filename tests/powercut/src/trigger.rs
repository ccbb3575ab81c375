//! When to cut, by what the program does rather than by the clock: a [`Trigger`] names an
//! operation on a file (a write below some offset, a sync, a size change); armed on a volume it
//! fires at its `nth` match, and the volume freezes at that instant. Pure matching, no I/O.
//!
//! Where a fired operation ends: a write or size change reaches the volume's unsynced state (the
//! page cache got it, then the power went), so the cut may keep any part of it; a sync does not
//! complete (the caller gets `EIO`), so nothing it would have made durable is.
//!
//! The moments SQLite's write path has, on a store `ferry.db` in WAL mode:
//! - a checkpoint copying pages into the database: a write to `ferry.db`;
//! - the checkpoint's sync of the database: a sync of `ferry.db`;
//! - a WAL restart (the next writer after a complete checkpoint rewrites the WAL header):
//!   a write to `ferry.db-wal` below offset 32;
//! - a WAL truncation (`journal_size_limit`): a size change of `ferry.db-wal`.

/// The kinds of operation a trigger can wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `write` (with its offset).
    Write,
    /// `fsync`/`fdatasync` of the file.
    Sync,
    /// `ftruncate`/`truncate`.
    SetSize,
}

/// An operation as the volume sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A write at `off`.
    Write {
        /// Offset of the write.
        off: u64,
    },
    /// A sync.
    Sync,
    /// A size change.
    SetSize,
}

impl Op {
    fn kind(self) -> OpKind {
        match self {
            Op::Write { .. } => OpKind::Write,
            Op::Sync => OpKind::Sync,
            Op::SetSize => OpKind::SetSize,
        }
    }
}

/// A moment to cut at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// Matches files whose name ends with this (`"ferry.db"` does not match `ferry.db-wal`).
    pub file_suffix: String,
    /// The operation.
    pub op: OpKind,
    /// For writes: only those that start below this offset.
    pub below: Option<u64>,
    /// Fires at this match (1 = the first).
    pub nth: u32,
}

impl Trigger {
    /// The `nth` checkpoint write into the database file `db_name`.
    pub fn checkpoint_write(db_name: &str, nth: u32) -> Trigger {
        Trigger::new(db_name, OpKind::Write, None, nth)
    }

    /// The `nth` sync of the database file (a checkpoint's end).
    pub fn checkpoint_sync(db_name: &str, nth: u32) -> Trigger {
        Trigger::new(db_name, OpKind::Sync, None, nth)
    }

    /// The `nth` rewrite of the WAL header (a WAL restart).
    pub fn wal_restart(db_name: &str, nth: u32) -> Trigger {
        Trigger::new(&format!("{db_name}-wal"), OpKind::Write, Some(32), nth)
    }

    /// The `nth` write to a segment of a sample log (files `….log`).
    pub fn log_write(nth: u32) -> Trigger {
        Trigger::new(".log", OpKind::Write, None, nth)
    }

    /// The `nth` sync of a sample log segment (what an ack waits for).
    pub fn log_sync(nth: u32) -> Trigger {
        Trigger::new(".log", OpKind::Sync, None, nth)
    }

    /// The `nth` size change of the WAL (a truncation).
    pub fn wal_truncate(db_name: &str, nth: u32) -> Trigger {
        Trigger::new(&format!("{db_name}-wal"), OpKind::SetSize, None, nth)
    }

    fn new(suffix: &str, op: OpKind, below: Option<u64>, nth: u32) -> Trigger {
        Trigger {
            file_suffix: suffix.to_owned(),
            op,
            below,
            nth: nth.max(1),
        }
    }

    fn matches(&self, file: &str, op: Op) -> bool {
        if op.kind() != self.op || !file.ends_with(&self.file_suffix) {
            return false;
        }
        match (op, self.below) {
            (Op::Write { off }, Some(limit)) => off < limit,
            _ => true,
        }
    }
}

/// A trigger and how often it matched so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Armed {
    trigger: Trigger,
    seen: u32,
}

impl Armed {
    /// Waits for `trigger`.
    pub fn new(trigger: Trigger) -> Armed {
        Armed { trigger, seen: 0 }
    }

    /// Counts `op` on `file`; true exactly once, at the trigger's `nth` match.
    pub fn fires(&mut self, file: &str, op: Op) -> bool {
        if self.seen >= self.trigger.nth || !self.trigger.matches(file, op) {
            return false;
        }
        self.seen += 1;
        self.seen == self.trigger.nth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_at_the_nth_match_of_its_file_and_operation() {
        let mut a = Armed::new(Trigger::checkpoint_write("ferry.db", 2));
        assert!(
            !a.fires("ferry.db-wal", Op::Write { off: 0 }),
            "another file"
        );
        assert!(!a.fires("ferry.db", Op::Sync), "another operation");
        assert!(!a.fires("ferry.db", Op::Write { off: 4096 }), "first match");
        assert!(a.fires("ferry.db", Op::Write { off: 8192 }), "second match");
        assert!(!a.fires("ferry.db", Op::Write { off: 0 }), "fired already");
    }

    #[test]
    fn a_wal_restart_is_a_write_of_the_header() {
        let mut a = Armed::new(Trigger::wal_restart("ferry.db", 1));
        assert!(
            !a.fires("ferry.db-wal", Op::Write { off: 32 }),
            "a frame, not the header"
        );
        assert!(!a.fires("ferry.db", Op::Write { off: 0 }), "the database");
        assert!(a.fires("ferry.db-wal", Op::Write { off: 0 }));
    }

    #[test]
    fn nth_zero_means_the_first() {
        let mut a = Armed::new(Trigger::wal_truncate("x.db", 0));
        assert!(a.fires("x.db-wal", Op::SetSize));
    }
}
