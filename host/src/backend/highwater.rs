//! The safe high-water mark of a PostgreSQL event store: the id up to which reading events
//! can never skip one that commits late.
//!
//! Event ids come from a sequence, and sequence values are handed out while an `INSERT` runs,
//! not when its transaction commits. Writer A can take id 10, writer B id 11, B commits first:
//! a reader that sees 11 and moves its checkpoint past it would never see 10. The largest
//! visible id is therefore not safe; a *gap* (an id below it that is not visible) may be an
//! insert still in flight, or a value lost for ever (a rolled-back insert, a sequence cache).
//!
//! Who can still fill a gap? Every writer that holds an id it has not written yet holds a
//! lock on the event table or on its sequence, and has held it since before it drew the id:
//! an `INSERT` (of any shape: a slow value, many rows, after a long first statement) takes
//! `ROW EXCLUSIVE` on the table before it evaluates the id's default, `nextval` takes it on
//! the sequence, and both are kept until the transaction ends. Ids from a sequence without
//! a cache are drawn in increasing order, so a missing id below a visible one was drawn
//! before the scan that saw the gap. So:
//!
//! - `settled` is an id up to which every id that will ever exist is visible. Ids above it
//!   with no gap below them are safe at once.
//! - When a scan finds a gap, the head stops just before it and the backend records the
//!   writers holding those locks right after the scan ([`HighWater::wait_for`]). The gap's
//!   holder, if it still runs, is one of them. Once all of them have ended (and reads from
//!   then on see everything they committed), every id up to the largest seen with the gap is
//!   final and `settled` moves there. With no such writer at all the gap is final at once.
//! - The set is fixed when the gap is seen: writers that arrive later hold only larger ids, so
//!   a busy store never starves the mark; the next gap gets a set of its own.
//!
//! Not covered, by construction (`docs/architecture.md` lists them and how zdr reports them):
//! a writer that calls `nextval` in one transaction and inserts the value in another, ids not
//! drawn from the table's sequence, and a sequence with `CACHE` above 1. `zdr init` warns about
//! the last two; an id that appears below a head already returned is reported as late
//! ([`HighWater::late_candidates`]).
//!
//! This module is the pure decision, and the rate of the look for late events that both
//! server backends share ([`check_late`]); each backend runs its own queries.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StoreError;

/// How often a store looks for events written below a head it already returned.
pub const LATE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How many final gaps are remembered to notice an event that commits after all.
const REMEMBERED_GAPS: usize = 10_000;

/// How long a final gap is remembered.
const REMEMBER_FOR: Duration = Duration::from_secs(600);

/// What one look at the event store found, above the current `settled` mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The largest visible id (or `settled` when there is none above it).
    pub max_id: i64,
    /// The smallest id in `(settled, max_id]` that is not visible, if any.
    pub first_gap: Option<i64>,
}

/// What the backend must do after [`HighWater::observe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The head is known.
    Head(i64),
    /// A new gap: record the writers holding the event table's locks now and pass them to
    /// [`HighWater::wait_for`] with `up_to`.
    Gap {
        /// The head until the gap is resolved.
        head: i64,
        /// The largest id seen with the gap.
        up_to: i64,
    },
}

/// A gap seen and the writers it waits for.
#[derive(Clone, Debug)]
struct Pending {
    /// The largest id seen together with the gap: final once the writers have ended.
    up_to: i64,
    /// The virtual transaction ids of the writers that held the locks when the gap was seen.
    writers: Vec<String>,
}

/// One reader's high-water mark.
#[derive(Debug, Default)]
pub struct HighWater {
    settled: i64,
    pending: Option<Pending>,
    /// Ids given up as never to be written, with when, to notice one that is written after
    /// all (a writer the mark cannot see).
    finals: VecDeque<(i64, Instant)>,
}

impl HighWater {
    /// The id above which the next [`Scan`] must look.
    pub fn settled(&self) -> i64 {
        self.settled
    }

    /// The writers a pending gap waits for, if one does: check whether any still runs before
    /// the next scan, and call [`HighWater::writers_ended`] when none does.
    pub fn awaited(&self) -> Option<&[String]> {
        self.pending.as_ref().map(|p| p.writers.as_slice())
    }

    /// Whether the head stops below a gap that may still be filled: the last scan saw events
    /// above it.
    pub fn held_back(&self) -> bool {
        self.pending.is_some()
    }

    /// Every writer the pending gap waited for has ended: ids up to its mark are final.
    /// Returns the range whose missing ids are now given up, `(from, to]`.
    pub fn writers_ended(&mut self) -> Option<(i64, i64)> {
        let pending = self.pending.take()?;
        self.settle(pending.up_to)
    }

    /// Takes a scan made above `settled()` and says what the head is, or that a new gap needs
    /// its writers recorded.
    pub fn observe(&mut self, scan: Scan) -> Observed {
        match scan.first_gap {
            None => {
                self.settled = self.settled.max(scan.max_id);
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.up_to <= self.settled)
                {
                    self.pending = None;
                }
                Observed::Head(self.settled)
            }
            Some(gap) => {
                self.settled = self.settled.max(gap - 1);
                if self.pending.is_some() {
                    Observed::Head(self.settled)
                } else {
                    Observed::Gap {
                        head: self.settled,
                        up_to: scan.max_id,
                    }
                }
            }
        }
    }

    /// Records the writers that held the event table's locks right after the scan that found
    /// a gap below `up_to`. With none, the gap is final at once. Returns the head and, when
    /// ids were given up, their range `(from, to]`.
    pub fn wait_for(&mut self, up_to: i64, writers: Vec<String>) -> (i64, Option<(i64, i64)>) {
        if writers.is_empty() {
            let given_up = self.settle(up_to);
            return (self.settled, given_up);
        }
        self.pending = Some(Pending { up_to, writers });
        (self.settled, None)
    }

    fn settle(&mut self, up_to: i64) -> Option<(i64, i64)> {
        let from = self.settled;
        self.settled = self.settled.max(up_to);
        (self.settled > from).then_some((from, self.settled))
    }

    /// Raises `settled` to `mark`, an id below which the backend knows every id is final (on
    /// MySQL: a checkpoint some reader committed, which was a safe head when it was taken),
    /// so that a fresh reader need not wait out gaps others already settled.
    pub fn raise_to(&mut self, mark: i64) {
        self.settled = self.settled.max(mark);
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.up_to <= self.settled)
        {
            self.pending = None;
        }
    }

    /// Remembers ids given up, to notice later whether one of them was written after all.
    pub fn remember_final_gaps(&mut self, ids: &[i64], now: Instant) {
        for id in ids {
            if self.finals.len() == REMEMBERED_GAPS {
                self.finals.pop_front();
            }
            self.finals.push_back((*id, now));
        }
    }

    /// The ids given up recently, to look for in the store.
    pub fn late_candidates(&mut self, now: Instant) -> Vec<i64> {
        while self
            .finals
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > REMEMBER_FOR)
        {
            self.finals.pop_front();
        }
        self.finals.iter().map(|(id, _)| *id).collect()
    }

    /// Forgets ids found in the store (reported once).
    pub fn found_late(&mut self, ids: &[i64]) {
        self.finals.retain(|(id, _)| !ids.contains(id));
    }
}

/// `Store::late_events` of a server backend: at most every [`LATE_CHECK_INTERVAL`] (tracked in
/// `checked`), the ids given up recently that are in the store after all. `find` runs the
/// backend's query: which of the candidate ids exist, in order.
///
/// # Errors
/// `find`'s.
pub fn check_late(
    checked: &Mutex<Option<Instant>>,
    high_water: &Mutex<HighWater>,
    find: impl FnOnce(&[i64]) -> Result<Vec<i64>, StoreError>,
) -> Result<Vec<i64>, StoreError> {
    {
        let mut checked = checked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if checked.is_some_and(|at| at.elapsed() < LATE_CHECK_INTERVAL) {
            return Ok(Vec::new());
        }
        *checked = Some(Instant::now());
    }
    let mut high_water = high_water
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let candidates = high_water.late_candidates(Instant::now());
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let late = find(&candidates)?;
    high_water.found_late(&late);
    Ok(late)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writers(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn no_gap_is_safe_at_once() {
        let mut hw = HighWater::default();
        let seen = hw.observe(Scan {
            max_id: 10,
            first_gap: None,
        });
        assert_eq!(seen, Observed::Head(10));
        assert_eq!(hw.settled(), 10);
        assert!(hw.awaited().is_none());
    }

    #[test]
    fn a_gap_holds_the_head_until_the_writers_seen_with_it_end() {
        let mut hw = HighWater::default();
        // Ids 1..=4 visible, 5 missing, 6..=8 visible.
        let scan = Scan {
            max_id: 8,
            first_gap: Some(5),
        };
        assert_eq!(hw.observe(scan), Observed::Gap { head: 4, up_to: 8 });
        assert_eq!(hw.wait_for(8, writers(&["3/7", "4/2"])), (4, None));
        assert_eq!(hw.awaited(), Some(writers(&["3/7", "4/2"]).as_slice()));
        // While they run, later scans keep the head before the gap and record nothing new.
        assert_eq!(
            hw.observe(Scan {
                max_id: 12,
                first_gap: Some(5)
            }),
            Observed::Head(4)
        );
        // They ended: everything up to 8 is final; 9..=12 come with the next scan.
        assert_eq!(hw.writers_ended(), Some((4, 8)));
        assert_eq!(hw.settled(), 8);
        assert_eq!(
            hw.observe(Scan {
                max_id: 12,
                first_gap: None
            }),
            Observed::Head(12)
        );
    }

    #[test]
    fn a_gap_with_no_writer_left_is_final_at_once() {
        let mut hw = HighWater::default();
        assert_eq!(
            hw.observe(Scan {
                max_id: 8,
                first_gap: Some(5)
            }),
            Observed::Gap { head: 4, up_to: 8 }
        );
        assert_eq!(hw.wait_for(8, Vec::new()), (8, Some((4, 8))));
        assert!(hw.awaited().is_none());
    }

    #[test]
    fn a_gap_that_fills_moves_on_without_waiting() {
        let mut hw = HighWater::default();
        hw.observe(Scan {
            max_id: 8,
            first_gap: Some(5),
        });
        hw.wait_for(8, writers(&["3/7"]));
        // The holder committed id 5: the next scan from 4 finds no gap.
        assert_eq!(
            hw.observe(Scan {
                max_id: 8,
                first_gap: None
            }),
            Observed::Head(8)
        );
        assert!(hw.awaited().is_none());
    }

    #[test]
    fn a_known_final_mark_passes_the_gaps_below_it() {
        let mut hw = HighWater::default();
        hw.observe(Scan {
            max_id: 8,
            first_gap: Some(5),
        });
        hw.wait_for(8, writers(&["5"]));
        hw.raise_to(6);
        assert_eq!(hw.settled(), 6);
        assert!(hw.awaited().is_some(), "7 and 8 still wait");
        hw.raise_to(8);
        assert!(hw.awaited().is_none());
        hw.raise_to(3);
        assert_eq!(hw.settled(), 8, "never lowered");
    }

    #[test]
    fn a_later_gap_gets_writers_of_its_own() {
        let mut hw = HighWater::default();
        hw.observe(Scan {
            max_id: 8,
            first_gap: Some(5),
        });
        hw.wait_for(8, writers(&["3/7"]));
        hw.writers_ended();
        assert_eq!(
            hw.observe(Scan {
                max_id: 20,
                first_gap: Some(12)
            }),
            Observed::Gap {
                head: 11,
                up_to: 20
            }
        );
        hw.wait_for(20, writers(&["5/1"]));
        assert_eq!(hw.awaited(), Some(writers(&["5/1"]).as_slice()));
    }

    #[test]
    fn given_up_ids_are_remembered_for_a_while_and_reported_once() {
        let mut hw = HighWater::default();
        let t0 = Instant::now();
        hw.remember_final_gaps(&[5, 9], t0);
        assert_eq!(hw.late_candidates(t0), [5, 9]);
        hw.found_late(&[5]);
        assert_eq!(hw.late_candidates(t0), [9]);
        assert!(
            hw.late_candidates(t0 + REMEMBER_FOR + Duration::from_secs(1))
                .is_empty()
        );
    }

    #[test]
    fn late_events_are_looked_for_at_most_every_interval_and_reported_once() {
        let checked = Mutex::new(None);
        let high_water = Mutex::new(HighWater::default());
        high_water
            .lock()
            .expect("lock")
            .remember_final_gaps(&[7, 9], Instant::now());
        let asked = std::cell::RefCell::new(Vec::new());
        let find = |candidates: &[i64]| {
            asked.borrow_mut().push(candidates.to_vec());
            Ok(vec![9])
        };
        assert_eq!(check_late(&checked, &high_water, find).expect("look"), [9]);
        assert_eq!(*asked.borrow(), [vec![7, 9]]);
        // Within the interval nothing is asked.
        assert!(
            check_late(&checked, &high_water, find)
                .expect("look")
                .is_empty()
        );
        assert_eq!(asked.borrow().len(), 1);
        // After it, only the id not found yet is a candidate.
        *checked.lock().expect("lock") = Instant::now().checked_sub(LATE_CHECK_INTERVAL);
        check_late(&checked, &high_water, find).expect("look");
        assert_eq!(asked.borrow().last(), Some(&vec![7]));
    }
}
