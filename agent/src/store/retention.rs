//! Retention policy for a size-capped store, as a pure function of the measured usage.
//!
//! With a cap, the store runs between a low and a high watermark (90 % and 97 % of the cap):
//! reaching the high mark makes room down to the low mark, forwarded events first (oldest first);
//! only when forwarded events are gone does `when_full` apply to unforwarded ones: `drop_oldest`
//! deletes the oldest (counted), `backpressure` refuses new samples until usage is below the low
//! mark again (devices keep them in their rings).

use crate::config::WhenFull;

/// Fraction of the cap at which room is made.
pub const HIGH: f64 = 0.97;
/// Fraction of the cap down to which room is made.
pub const LOW: f64 = 0.90;

/// What the writer should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing: accept samples.
    Accept,
    /// Delete the oldest forwarded events (in chunks) and measure again.
    PruneForwarded,
    /// Delete the oldest unforwarded events (in chunks, counted) and measure again.
    DropOldest,
    /// Refuse new samples until usage falls below the low mark.
    Refuse,
}

/// Decides the next step. `refusing` is whether the store refuses samples now (hysteresis).
pub fn decide(
    used_bytes: u64,
    cap: Option<u64>,
    have_forwarded: bool,
    policy: WhenFull,
    refusing: bool,
) -> Step {
    let Some(cap) = cap else { return Step::Accept };
    let used = used_bytes as f64;
    let cap = cap as f64;
    let over_high = used >= cap * HIGH;
    let over_low = used >= cap * LOW;
    if refusing && over_low {
        return if have_forwarded {
            Step::PruneForwarded
        } else {
            Step::Refuse
        };
    }
    if !over_high {
        return Step::Accept;
    }
    if have_forwarded {
        return Step::PruneForwarded;
    }
    match policy {
        WhenFull::DropOldest => Step::DropOldest,
        WhenFull::Backpressure => Step::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WhenFull::*;

    const CAP: Option<u64> = Some(1000);

    #[test]
    fn no_cap_always_accepts() {
        assert_eq!(
            decide(u64::MAX, None, false, Backpressure, true),
            Step::Accept
        );
    }

    #[test]
    fn forwarded_goes_first_then_the_policy() {
        assert_eq!(decide(960, CAP, true, DropOldest, false), Step::Accept);
        assert_eq!(
            decide(970, CAP, true, DropOldest, false),
            Step::PruneForwarded
        );
        assert_eq!(decide(970, CAP, false, DropOldest, false), Step::DropOldest);
        assert_eq!(decide(970, CAP, false, Backpressure, false), Step::Refuse);
        assert_eq!(
            decide(970, CAP, true, Backpressure, false),
            Step::PruneForwarded
        );
    }

    #[test]
    fn refusal_holds_until_the_low_mark() {
        assert_eq!(decide(950, CAP, false, Backpressure, true), Step::Refuse);
        assert_eq!(decide(899, CAP, false, Backpressure, true), Step::Accept);
        // while refusing, forwarded data that appears is pruned first
        assert_eq!(
            decide(950, CAP, true, Backpressure, true),
            Step::PruneForwarded
        );
    }
}
