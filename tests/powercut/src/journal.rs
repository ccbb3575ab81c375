//! Namespace changes (create, remove, rename, mkdir, rmdir) not yet made durable, as a pure log.
//!
//! Invariants:
//! - Every change is applied to the backing directory at once (so lookups stay plain), and
//!   logged with what undoes it. A removed or replaced entry is not deleted: it is moved into the
//!   graveyard, so a cut can bring it back.
//! - A directory sync (`fsyncdir`) makes every logged change durable: the log empties and the
//!   graveyard entries it held may be deleted. (The model is pessimistic: a file's own `fsync`
//!   makes its data durable, not its name.)
//! - A cut keeps a prefix of the log, as a journaling filesystem commits its metadata in order,
//!   and undoes the rest from the newest back.

use std::path::PathBuf;

/// One namespace change, with what undoes it. Paths are relative to the volume's data root;
/// graveyard names are relative to the graveyard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A file or directory was created here: undo removes it.
    Created { path: PathBuf },
    /// The entry at `path` was moved to the graveyard as `grave`: undo moves it back.
    Removed { path: PathBuf, grave: PathBuf },
    /// `from` was renamed to `to`; what `to` held before is in the graveyard as `displaced`.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        displaced: Option<PathBuf>,
    },
}

/// The changes since the last directory sync, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Journal {
    changes: Vec<Change>,
}

/// What a cut does to the namespace.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Undo {
    /// Changes to reverse, newest first.
    pub reverse: Vec<Change>,
    /// Graveyard entries no kept change needs any more (delete them after the undo).
    pub buried: Vec<PathBuf>,
}

impl Journal {
    /// Logs a change.
    pub fn record(&mut self, c: Change) {
        self.changes.push(c);
    }

    /// Changes not yet durable.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether every change is durable.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// A directory sync: every change is durable. Returns the graveyard entries to delete.
    pub fn sync(&mut self) -> Vec<PathBuf> {
        let kept = std::mem::take(&mut self.changes);
        graves(&kept)
    }

    /// A cut that keeps the first `keep` changes (clamped to the log's length) and undoes the
    /// rest. The log is empty afterwards.
    pub fn cut(&mut self, keep: usize) -> Undo {
        let mut changes = std::mem::take(&mut self.changes);
        let undone = changes.split_off(keep.min(changes.len()));
        Undo {
            buried: graves(&changes),
            reverse: undone.into_iter().rev().collect(),
        }
    }
}

/// Graveyard entries of kept changes: what they removed stays removed.
fn graves(kept: &[Change]) -> Vec<PathBuf> {
    kept.iter()
        .filter_map(|c| match c {
            Change::Removed { grave, .. } => Some(grave.clone()),
            Change::Renamed {
                displaced: Some(g), ..
            } => Some(g.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn log() -> Journal {
        let mut j = Journal::default();
        j.record(Change::Created { path: p("a") });
        j.record(Change::Removed {
            path: p("b"),
            grave: p("1"),
        });
        j.record(Change::Renamed {
            from: p("a"),
            to: p("c"),
            displaced: Some(p("2")),
        });
        j
    }

    #[test]
    fn a_directory_sync_makes_everything_durable_and_frees_the_graveyard() {
        let mut j = log();
        assert_eq!(j.sync(), [p("1"), p("2")]);
        assert!(j.is_empty());
        assert_eq!(j.cut(0), Undo::default(), "nothing left to undo");
    }

    #[test]
    fn a_cut_keeps_a_prefix_and_undoes_the_rest_newest_first() {
        let mut j = log();
        let u = j.cut(1);
        assert_eq!(u.buried, Vec::<PathBuf>::new());
        assert_eq!(
            u.reverse,
            [
                Change::Renamed {
                    from: p("a"),
                    to: p("c"),
                    displaced: Some(p("2"))
                },
                Change::Removed {
                    path: p("b"),
                    grave: p("1")
                },
            ]
        );
        assert!(j.is_empty());
    }

    #[test]
    fn a_rename_without_a_directory_sync_may_be_undone() {
        let mut j = Journal::default();
        j.record(Change::Renamed {
            from: p("tmp"),
            to: p("final"),
            displaced: None,
        });
        assert_eq!(j.clone().cut(0).reverse.len(), 1, "undone");
        assert_eq!(j.cut(1).reverse.len(), 0, "or kept");
    }
}
