//! The safe high-water mark of a PostgreSQL event store: the id up to which reading events
//! can never skip one that commits late.
//!
//! Event ids come from a sequence, and sequence values are handed out when an `INSERT` runs,
//! not when its transaction commits. Writer A can take id 10, writer B id 11, B commits first:
//! a reader that sees 11 and moves its checkpoint past it would never see 10. The largest
//! visible id is therefore not safe; a *gap* (an id below it that is not visible) may be an
//! insert still in flight, or a value lost for ever (a rolled-back insert, a sequence cache).
//!
//! The mark works like this, per reader:
//! - `settled` is an id up to which every id that will ever exist is visible. Ids above it with
//!   no gap below them are safe at once (every id up to the largest is visible).
//! - When a gap is seen, the head stops just before it. The gap's holder, if it still runs,
//!   took its id before the gap was seen. A confirmation snapshot taken [`CONFIRM_DELAY`]
//!   later records `xmax`, the first transaction id not yet started; once the oldest running
//!   transaction (`xmin`) is at or past it, every transaction that could hold the gap has
//!   ended, so ids up to the largest id seen with the gap are final and `settled` moves there.
//!   If the holder commits meanwhile, the gap fills and the head simply moves on.
//!
//! The delay covers the instant between an insert drawing its id and its transaction getting
//! a transaction id; an insert stalled there for longer (say a `BEFORE INSERT` trigger that
//! sleeps) could still be overtaken. `docs/architecture.md` discusses the choice.
//!
//! The backend waits out the delay inside the call that first sees a gap, so a gap left by a
//! long-gone rollback costs one reader [`CONFIRM_DELAY`] once, not a stop; a gap whose
//! holder still runs holds the head until it ends. This module is the pure decision; the
//! PostgreSQL backend runs the queries.

use std::time::{Duration, Instant};

/// How long after a gap is first seen its confirmation snapshot is taken.
pub const CONFIRM_DELAY: Duration = Duration::from_millis(50);

/// What one look at the event store found, above the current `settled` mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The largest visible id (or `settled` when there is none above it).
    pub max_id: i64,
    /// The smallest id in `(settled, max_id]` that is not visible, if any.
    pub first_gap: Option<i64>,
}

/// The transaction horizon of a snapshot: `pg_snapshot_xmin` and `pg_snapshot_xmax`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Horizon {
    /// The oldest transaction still running.
    pub xmin: i64,
    /// The first transaction id not yet assigned.
    pub xmax: i64,
}

/// Gaps seen but not yet known to be final.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// The largest id seen together with the gap: final once the gap is.
    up_to: i64,
    /// When the gap was first seen.
    seen_at: Instant,
    /// `xmax` of the confirmation snapshot, once taken.
    confirm_xmax: Option<i64>,
}

/// One reader's high-water mark.
#[derive(Debug, Default)]
pub struct HighWater {
    settled: i64,
    pending: Option<Pending>,
}

impl HighWater {
    /// The id below which the next [`Scan`] must start.
    pub fn settled(&self) -> i64 {
        self.settled
    }

    /// Settles pending gaps whose holders have all ended, given a fresh snapshot horizon.
    /// Call before scanning.
    pub fn resolve(&mut self, horizon: Horizon, now: Instant) {
        let Some(pending) = &mut self.pending else {
            return;
        };
        match pending.confirm_xmax {
            Some(xmax) if horizon.xmin >= xmax => {
                self.settled = self.settled.max(pending.up_to);
                self.pending = None;
            }
            Some(_) => {}
            None if now.duration_since(pending.seen_at) >= CONFIRM_DELAY => {
                pending.confirm_xmax = Some(horizon.xmax);
            }
            None => {}
        }
    }

    /// How long until the pending gap's confirmation snapshot is due, when one is awaited.
    pub fn confirmation_due(&self, now: Instant) -> Option<Duration> {
        let pending = self.pending.as_ref()?;
        if pending.confirm_xmax.is_some() {
            return None;
        }
        Some(CONFIRM_DELAY.saturating_sub(now.duration_since(pending.seen_at)))
    }

    /// Takes a scan made from `settled()` and returns the safe head.
    pub fn observe(&mut self, scan: Scan, now: Instant) -> i64 {
        match scan.first_gap {
            None => {
                self.settled = self.settled.max(scan.max_id);
                if self.pending.is_some_and(|p| p.up_to <= self.settled) {
                    self.pending = None;
                }
            }
            Some(gap) => {
                self.settled = self.settled.max(gap - 1);
                if self.pending.is_none() {
                    self.pending = Some(Pending {
                        up_to: scan.max_id,
                        seen_at: now,
                        confirm_xmax: None,
                    });
                }
            }
        }
        self.settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(x: i64) -> Horizon {
        Horizon { xmin: x, xmax: x }
    }

    #[test]
    fn no_gap_is_safe_at_once() {
        let mut hw = HighWater::default();
        let now = Instant::now();
        hw.resolve(idle(5), now);
        let head = hw.observe(
            Scan {
                max_id: 10,
                first_gap: None,
            },
            now,
        );
        assert_eq!(head, 10);
        assert_eq!(hw.settled(), 10);
    }

    #[test]
    fn a_gap_holds_the_head_until_its_holders_end() {
        let mut hw = HighWater::default();
        let t0 = Instant::now();
        // Ids 1..=4 visible, 5 missing, 6..=8 visible; transaction 100 may hold 5.
        let scan = Scan {
            max_id: 8,
            first_gap: Some(5),
        };
        hw.resolve(
            Horizon {
                xmin: 100,
                xmax: 103,
            },
            t0,
        );
        assert_eq!(hw.observe(scan, t0), 4);
        // Too soon to confirm: nothing moves.
        hw.resolve(
            Horizon {
                xmin: 100,
                xmax: 103,
            },
            t0,
        );
        assert_eq!(hw.observe(scan, t0), 4);
        // The confirmation snapshot: transactions below 104 may still hold the gap.
        let t1 = t0 + CONFIRM_DELAY;
        hw.resolve(
            Horizon {
                xmin: 100,
                xmax: 104,
            },
            t1,
        );
        assert_eq!(hw.observe(scan, t1), 4);
        // 100 still runs: still held.
        hw.resolve(
            Horizon {
                xmin: 101,
                xmax: 106,
            },
            t1,
        );
        assert_eq!(hw.observe(scan, t1), 4);
        // Everything that ran at confirmation has ended: the gap is final.
        hw.resolve(
            Horizon {
                xmin: 104,
                xmax: 106,
            },
            t1,
        );
        assert_eq!(hw.settled(), 8);
        let head = hw.observe(
            Scan {
                max_id: 9,
                first_gap: None,
            },
            t1,
        );
        assert_eq!(head, 9);
    }

    #[test]
    fn a_gap_that_fills_moves_on_without_waiting() {
        let mut hw = HighWater::default();
        let t0 = Instant::now();
        hw.resolve(idle(10), t0);
        assert_eq!(
            hw.observe(
                Scan {
                    max_id: 8,
                    first_gap: Some(5)
                },
                t0
            ),
            4
        );
        // The holder committed id 5: the next scan from 4 finds no gap.
        hw.resolve(Horizon { xmin: 10, xmax: 12 }, t0);
        assert_eq!(
            hw.observe(
                Scan {
                    max_id: 8,
                    first_gap: None
                },
                t0
            ),
            8
        );
        assert!(hw.pending.is_none());
    }

    #[test]
    fn a_later_gap_waits_for_its_own_confirmation() {
        let mut hw = HighWater::default();
        let t0 = Instant::now();
        hw.observe(
            Scan {
                max_id: 8,
                first_gap: Some(5),
            },
            t0,
        );
        let t1 = t0 + CONFIRM_DELAY;
        hw.resolve(Horizon { xmin: 50, xmax: 60 }, t1);
        hw.resolve(Horizon { xmin: 60, xmax: 61 }, t1);
        assert_eq!(hw.settled(), 8);
        // A new gap above the settled mark: the head stops before it again.
        let head = hw.observe(
            Scan {
                max_id: 20,
                first_gap: Some(12),
            },
            t1,
        );
        assert_eq!(head, 11);
        hw.resolve(Horizon { xmin: 61, xmax: 61 }, t1);
        assert_eq!(hw.settled(), 11, "the new gap is not confirmed yet");
        assert_eq!(hw.confirmation_due(t1), Some(CONFIRM_DELAY));
        assert_eq!(
            hw.confirmation_due(t1 + CONFIRM_DELAY),
            Some(Duration::ZERO)
        );
        hw.resolve(Horizon { xmin: 61, xmax: 62 }, t1 + CONFIRM_DELAY);
        assert_eq!(hw.confirmation_due(t1 + CONFIRM_DELAY), None);
    }
}
