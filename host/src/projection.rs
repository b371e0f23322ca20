//! The batch driver: read events → call the guest → commit the rows and the checkpoint.
//!
//! This is the one straight walk every event takes. A [`Projection`] owns the instances of one
//! worker (the daemon's worker for a projector, or a CLI command), one per target, each bound
//! to its target's tables through the database's shared connection. Every batch is one write
//! transaction: apply N events, move the checkpoint, commit. A crash anywhere leaves rows and
//! checkpoint consistent. A projector error on event X rolls the batch back and records
//! (target, X, message): nothing is skipped silently, and the target resumes from its
//! checkpoint once fixed.
//!
//! What counts as a failure on event X: the guest returned an error or trapped; the row could
//! not be decoded; or one of the guest's statements failed in a way that aborted the
//! transaction (PostgreSQL), even if the guest swallowed the error and carried on.
//!
//! Two rules keep the write lock short: a batch stops taking events after
//! [`BATCH_TIME_BUDGET`] (a rebuild's after [`REBUILD_TIME_BUDGET`]; it commits what it has,
//! the rest comes next), and components are compiled before a write transaction begins
//! ([`Projection::prepare`]), never inside one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{Db, DbError, Partition, StoreError};
use crate::config::FailurePolicy;
use crate::events::{Event, ReadEvent};
use crate::model::{Description, Role, Target};
use crate::read_ahead::ReadAhead;
use crate::runtime::{
    Contract, GuestError, Instance, LoadedComponent, MAX_EVENTS_PER_CALL, Runtime,
};

/// Events per transaction: large enough to amortise the commit, small enough that the write
/// lock is held for milliseconds and a failed batch costs little to redo.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// How long a batch goes on taking events: after this it commits what it applied, so that a
/// slow projector (each of its calls within its own deadline) never holds the write lock for
/// long; the application's writers wait at most this plus one call.
pub const BATCH_TIME_BUDGET: Duration = Duration::from_secs(1);

/// Events per transaction of a rebuild (deploy, `replay start`, catch-ups): a commit writes
/// each page its batch dirtied once, however many of the batch's events touched it (on SQLite,
/// to the WAL), so a rebuild takes fifty times live's batch, bounded in time by
/// [`REBUILD_TIME_BUDGET`] and read [`READ_CHUNK`] events at a time.
pub const REBUILD_BATCH_SIZE: usize = 50_000;

/// How long a rebuild's transaction goes on taking events. A rebuild holds zdr's writer lock
/// (and SQLite's write lock) per transaction, so live batches and the application's writers
/// wait at most this plus one call while a rebuild runs.
pub const REBUILD_TIME_BUDGET: Duration = Duration::from_millis(250);

/// The most events a rebuild reads at a time by default (`rebuild_read_chunk`), ahead or in its
/// transaction: a transaction of more takes several such chunks, so the events held in memory
/// stay bounded (about two chunks) whatever the rebuild's batch size.
pub const READ_CHUNK: usize = 10_000;

/// How long, in all, a rebuild that reached a head held back by a gap in the ids waits for such
/// gaps to settle (filled, or given up as never written) before it stops at the safe head:
/// longer than MySQL's grace for a gap, so that a gap nobody fills does not end a `replay
/// start` short of events already committed after it.
pub const HELD_HEAD_PATIENCE: Duration = Duration::from_secs(5);

/// How often a rebuild waiting on a held-back head looks again.
const HELD_HEAD_POLL: Duration = Duration::from_millis(100);

/// Why projecting stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored component could not be loaded.
    #[error("cannot load projector {projector} version {version}: {message}")]
    Load {
        /// Projector name.
        projector: String,
        /// Version string.
        version: String,
        /// What went wrong.
        message: String,
    },
    /// The projector failed on an event; the failure is recorded on the target.
    #[error("projector {projector} failed on event {event_id} ({target}): {error}")]
    Guest {
        /// Projector name.
        projector: String,
        /// Which target, e.g. `live` or `replay v2`.
        target: String,
        /// The event it failed on.
        event_id: i64,
        /// What the guest did.
        error: GuestError,
        /// Whether a database error that may pass on a new attempt (a serialization failure,
        /// a deadlock, a lock timeout) made the event fail.
        retryable: bool,
    },
    /// The projector could not be started (instantiated and bound) for its next event; the
    /// failure is recorded on the target. Not the event's fault, so never parked.
    #[error("projector {projector} ({target}) cannot start before event {event_id}: {error}")]
    Start {
        /// Projector name.
        projector: String,
        /// Which target.
        target: String,
        /// The event it was to handle next.
        event_id: i64,
        /// What the guest did.
        error: GuestError,
    },
    /// A row of the event store could not be decoded; the failure is recorded on the target.
    #[error(
        "projector {projector} ({target}) cannot read event {event_id}: {reason}; fix the row, \
         or let live pass it with `zdr projector skip {projector} --event {event_id} --reason …`"
    )]
    BadEvent {
        /// Projector name.
        projector: String,
        /// Which target.
        target: String,
        /// The row's id.
        event_id: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// A run of events given in one `handle-events` call failed inside a rebuild's batch. The
    /// batch is rolled back and run again with the run's events one per call, which names the
    /// event that fails: [`Projection::catch_up`] handles this and never returns it.
    #[error("a run of events of projector {projector} ending at event {through} failed: {message}")]
    RunFailed {
        /// Projector name.
        projector: String,
        /// The target the run was given to.
        target_id: i64,
        /// The id of the run's last event.
        through: i64,
        /// How the run failed.
        message: String,
    },
    /// The target is stopped at a recorded failure.
    #[error("projector {projector} ({target}) is stopped at event {event_id}: {message}")]
    Stopped {
        /// Projector name.
        projector: String,
        /// Which target.
        target: String,
        /// The event it failed on.
        event_id: i64,
        /// The recorded message.
        message: String,
    },
}

impl ProjectionError {
    /// Whether the event itself failed (the projector failed on it, or it cannot be decoded),
    /// so that a live projector whose policy is `park` may set it aside and go on.
    pub fn is_parkable(&self) -> bool {
        matches!(
            self,
            ProjectionError::Guest { .. } | ProjectionError::BadEvent { .. }
        )
    }

    /// Whether this failure came from a database error that may pass on a new attempt.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProjectionError::Guest {
                retryable: true,
                ..
            }
        )
    }

    /// The event this failure stops its target at, and the message to record: for a guest
    /// failure or an undecodable row; `None` for anything else (the database, a load).
    pub fn failed_event(&self) -> Option<(i64, String)> {
        match self {
            ProjectionError::Guest {
                event_id, error, ..
            }
            | ProjectionError::Start {
                event_id, error, ..
            } => Some((*event_id, error.to_string())),
            ProjectionError::BadEvent {
                event_id, reason, ..
            } => Some((*event_id, format!("the event cannot be decoded: {reason}"))),
            _ => None,
        }
    }
}

/// Progress of a catch-up, reported after every committed batch.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The target's checkpoint after the batch.
    pub checkpoint: i64,
    /// The head of the event store when the batch was read.
    pub head: i64,
    /// Events applied so far in this run.
    pub applied: u64,
    /// Where this run's time went so far.
    pub time: CatchUpTime,
}

/// Where a catch-up's time went, summed over its batches: what an operator (and the rebuild
/// benchmark) needs to see whether the database, the projector or the commits bound a rebuild.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchUpTime {
    /// Reading the head and the events.
    pub reading: Duration,
    /// The projector's `handle-events` calls, with the statements they ran.
    pub projector: Duration,
    /// The rest of each transaction: beginning it, the checkpoint and the commit.
    pub committing: Duration,
}

impl fmt::Display for CatchUpTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reading events {:.2} s, projector {:.2} s, checkpoints and commits {:.2} s",
            self.reading.as_secs_f64(),
            self.projector.as_secs_f64(),
            self.committing.as_secs_f64()
        )
    }
}

/// What one live batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveBatch {
    /// No live target, or nothing new.
    Idle,
    /// The live target is stopped at a failure.
    Paused,
    /// A target to write was of a version not loaded yet: nothing was done; load it outside
    /// the write lock ([`Projection::prepare`]) and run the batch again.
    NeedsLoad(Vec<Target>),
    /// Events applied to live (and to `clones` projecting clones) up to `checkpoint`.
    Applied {
        /// Events in the batch.
        events: usize,
        /// The new live checkpoint.
        checkpoint: i64,
        /// Projecting clones written as well.
        clones: usize,
    },
    /// Live failed on an event and its policy is `park`: the batch was rolled back and the
    /// event parked; the next batch passes over it.
    Parked {
        /// The event.
        event_id: i64,
        /// Why it failed.
        message: String,
    },
}

/// The savepoint a run of events given in one `handle-events` call is written under.
const RUN_SAVEPOINT: &str = "zdr_events";

/// The database failed a guest's statement for a reason of its own: the connection dropped,
/// or it ran out of space or memory. Not the projector's failure, nor the event's: the batch
/// rolls back and is tried again once the database is back (the daemon reconnects or waits;
/// a command says what to do). `None` for any other failure.
fn database_failure(target: &Target, event_id: i64, err: &DbError) -> Option<ProjectionError> {
    let context = format!(
        "running a statement of projector {} on event {event_id}",
        target.projector
    );
    let message = err.to_string();
    let failure = if err.is_connection_lost() {
        StoreError::ConnectionLost { context, message }
    } else if err.is_out_of_resources() {
        StoreError::OutOfResources { context, message }
    } else {
        return None;
    };
    Some(failure.into())
}

/// A short name for a target in messages.
pub fn target_label(target: &Target) -> String {
    match (target.role, &target.replay_key) {
        (Role::Live, _) => "live".into(),
        (Role::Clone, Some(key)) => format!("replay {key}"),
        (Role::Retired, Some(key)) => format!("retired by replay {key}"),
        (Role::Building, _) => "building".into(),
        (_, None) => format!("target {}", target.id),
    }
}

/// How many events a rebuild's next transaction reads, after one that read `read` (asking for
/// `limit`) and applied `applied` before its time budget ran out: a quarter more than it
/// applied when the budget cut it short, otherwise twice as many, never above `batch_size`.
fn next_read_limit(limit: usize, applied: usize, read: usize, batch_size: usize) -> usize {
    let next = if applied < read {
        applied + applied / 4
    } else if read < limit {
        // Fewer events than asked for were there: the head was reached, nothing to learn.
        limit
    } else {
        limit.saturating_mul(2)
    };
    next.clamp(1, batch_size.max(1))
}

struct Loaded {
    component: Arc<LoadedComponent>,
    description: Arc<Description>,
}

/// Where a catch-up reads history from and keeps its place.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    /// All of history, from the target's checkpoint to the store's head.
    Whole,
    /// One partition of history split by aggregate, from its own checkpoint to the head the
    /// split began at.
    Partition { partition: Partition, head: i64 },
}

impl Cursor {
    /// Moves the checkpoint this cursor reads from, in the batch's transaction.
    fn set_checkpoint(self, db: &Db, target_id: i64, checkpoint: i64) -> Result<(), StoreError> {
        match self {
            Cursor::Whole => db.set_checkpoint(target_id, checkpoint),
            Cursor::Partition { partition, .. } => {
                db.set_partition_checkpoint(target_id, partition.index, checkpoint)
            }
        }
    }
}

/// The instances of one worker and the database they write through.
pub struct Projection<'a> {
    runtime: &'a Runtime,
    db: &'a Db,
    batch_size: usize,
    versions: HashMap<i64, Loaded>,
    /// Keyed by (target id, role): a role change renames the tables, so it needs a new binding.
    instances: HashMap<(i64, Role), Instance>,
    /// The events skipped on a target, by target id, with the largest skipped id they were
    /// read for.
    skipped: HashMap<i64, (i64, Vec<i64>)>,
    /// How a failed run of events is undone before its events are given again one at a time.
    run_undo: RunUndo,
    /// Per target id, the last event of a run that failed in a rebuild's batch: up to it,
    /// events go one per call when the batch runs again.
    one_at_a_time_through: HashMap<i64, i64>,
}

/// How [`Projection::give`] undoes a run of events that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunUndo {
    /// Under a savepoint per run, rolled back on failure: for a caller's transaction zdr
    /// cannot run again (a switch under the lock).
    Savepoint,
    /// By failing the whole batch ([`ProjectionError::RunFailed`]), which the rebuild runs
    /// again: nothing to pay while runs succeed (a savepoint journals every page a run
    /// touches; on SQLite that cost a fifth of a rebuild's time).
    RetryBatch,
}

impl<'a> Projection<'a> {
    /// A driver over `db` with guests from `runtime`.
    pub fn new(runtime: &'a Runtime, db: &'a Db, batch_size: usize) -> Self {
        Self {
            runtime,
            db,
            batch_size: batch_size.max(1),
            versions: HashMap::new(),
            instances: HashMap::new(),
            skipped: HashMap::new(),
            run_undo: RunUndo::Savepoint,
            one_at_a_time_through: HashMap::new(),
        }
    }

    /// The events above its checkpoint an operator let `target` pass (read when its largest
    /// skipped id changes).
    fn skipped(&mut self, target: &Target) -> Result<&[i64], ProjectionError> {
        let Some(largest) = target.skip_event_id.filter(|id| *id > target.checkpoint) else {
            return Ok(&[]);
        };
        let stale = self
            .skipped
            .get(&target.id)
            .is_none_or(|(read_for, _)| *read_for != largest);
        if stale {
            let ids = self.db.skipped_after(target.id, 0)?;
            self.skipped.insert(target.id, (largest, ids));
        }
        Ok(self
            .skipped
            .get(&target.id)
            .map_or(&[][..], |(_, ids)| ids.as_slice()))
    }

    /// The description of a target's projector version: from the loaded component when there
    /// is one, otherwise from the database (no compile).
    ///
    /// # Errors
    /// When the version cannot be read.
    pub fn description(&mut self, target: &Target) -> Result<Arc<Description>, ProjectionError> {
        match self.versions.get(&target.version_id) {
            Some(loaded) => Ok(loaded.description.clone()),
            None => Ok(Arc::new(self.db.description(target.version_id)?)),
        }
    }

    /// Compiles (or loads from the compile cache) the versions of `targets` that are not
    /// loaded yet. Call it before a write transaction: a compile can take seconds, and every
    /// writer would wait for it inside one.
    ///
    /// # Errors
    /// When a version cannot be read or compiled.
    pub fn prepare(&mut self, targets: &[Target]) -> Result<(), ProjectionError> {
        for target in targets {
            self.loaded(target)?;
        }
        Ok(())
    }

    /// Whether `target`'s version is loaded (its instance can be made without a compile).
    fn is_loaded(&self, target: &Target) -> bool {
        self.versions.contains_key(&target.version_id)
    }

    fn loaded(&mut self, target: &Target) -> Result<&Loaded, ProjectionError> {
        if !self.versions.contains_key(&target.version_id) {
            if self.db.in_write() {
                // A bug to fix, not a failure: say so loudly, then do what was asked.
                tracing::warn!(projector = %target.projector, version = %target.version,
                    "loading a component inside the write lock; every writer waits for the compile");
            }
            let (description, _hash, wasm) = self.db.version(target.version_id)?;
            let component = self
                .runtime
                .load(&wasm)
                .map_err(|err| ProjectionError::Load {
                    projector: target.projector.clone(),
                    version: target.version.clone(),
                    message: err.to_string(),
                })?;
            self.versions.insert(
                target.version_id,
                Loaded {
                    component,
                    description: Arc::new(description),
                },
            );
        }
        self.versions.get(&target.version_id).ok_or_else(|| {
            StoreError::Corrupt(format!("version {} not loaded", target.version_id)).into()
        })
    }

    /// The instance bound to `target`, instantiated and bound on first use or after a trap.
    ///
    /// # Errors
    /// A load failure, or a trap while instantiating or binding (recorded by the caller).
    pub fn instance(&mut self, target: &Target) -> Result<&mut Instance, ProjectionError> {
        let key = (target.id, target.role);
        let usable = self.instances.get(&key).map(|i| !i.is_poisoned());
        if usable != Some(true) {
            if usable == Some(false) {
                tracing::info!(projector = %target.projector, target = %target_label(target), "recreating instance after a trap");
            }
            let label = target_label(target);
            let runtime = self.runtime;
            let db = self.db;
            let loaded = self.loaded(target)?;
            let tag = format!("{}@{} [{}]", target.projector, target.version, label);
            let guest = |error: GuestError| ProjectionError::Start {
                projector: target.projector.clone(),
                target: label.clone(),
                event_id: target.checkpoint + 1,
                error,
            };
            let mut instance = runtime
                .instantiate(&loaded.component, &target.projector, &tag)
                .map_err(guest)?;
            let connection = db.guest_connection(target, &loaded.description);
            // Every target but live is being rebuilt or caught up: side effects stay off.
            let for_replay = target.role != Role::Live;
            instance.bind(connection, for_replay).map_err(guest)?;
            tracing::debug!(projector = %target.projector, version = %target.version, target = %label, "instance bound");
            self.instances.insert(key, instance);
        }
        self.instances
            .get_mut(&key)
            .ok_or_else(|| StoreError::Corrupt("instance vanished".into()).into())
    }

    /// Forgets the instances of targets not in `keep` (after a promote or a remove).
    pub fn retain_targets(&mut self, keep: &[&Target]) {
        self.instances
            .retain(|(id, role), _| keep.iter().any(|t| t.id == *id && t.role == *role));
    }

    /// Applies `events` to `target` inside the caller's transaction, in order, until they are
    /// done or `until` has passed. Events of classes the projector does not handle, and the
    /// event an operator let this target skip, are passed over. Returns the id of the last
    /// event applied or passed over (the target's checkpoint when none was).
    ///
    /// The handled events go to the guest in runs of up to [`MAX_EVENTS_PER_CALL`] (one
    /// `handle-events` call each on a 0.2.0 component); see [`Projection::give`].
    ///
    /// # Errors
    /// [`ProjectionError::Guest`] or [`ProjectionError::BadEvent`] naming the event.
    pub fn apply(
        &mut self,
        target: &Target,
        events: &[ReadEvent],
        until: Option<Instant>,
    ) -> Result<i64, ProjectionError> {
        let description = self.loaded(target)?.description.clone();
        let skipped = self.skipped(target)?.to_vec();
        let mut last = target.checkpoint;
        // Handled events not yet given to the guest; all of them come before `last`, and they
        // are given before this returns.
        let mut run: Vec<&Event> = Vec::new();
        for row in events {
            if until.is_some_and(|until| Instant::now() >= until) {
                break;
            }
            let id = row.id();
            if skipped.binary_search(&id).is_ok() {
                tracing::info!(projector = %target.projector, event_id = id, "passing over an event skipped by an operator");
                last = id;
                continue;
            }
            match row {
                ReadEvent::Event(event) if description.handles(&event.event_class) => {
                    run.push(event);
                    if run.len() == MAX_EVENTS_PER_CALL {
                        self.give(target, &run)?;
                        run.clear();
                    }
                }
                ReadEvent::Event(_) => {}
                ReadEvent::Undecodable(bad) => {
                    let handled = bad
                        .event_class
                        .as_deref()
                        .is_none_or(|class| description.handles(class));
                    if handled {
                        // The events before it come first: one of them may be what fails.
                        self.give(target, &run)?;
                        return Err(ProjectionError::BadEvent {
                            projector: target.projector.clone(),
                            target: target_label(target),
                            event_id: id,
                            reason: bad.reason.clone(),
                        });
                    }
                }
            }
            last = id;
        }
        self.give(target, &run)?;
        Ok(last)
    }

    /// Gives a run of handled events to `target`'s instance inside the caller's transaction.
    ///
    /// A 0.2.0 component gets them in one `handle-events` call. When that call fails in any
    /// way (the guest's error, a trap, a statement that failed and aborted the transaction),
    /// what it wrote is undone, the instance is replaced by a fresh one (the old one may hold
    /// state of the undone writes), and the same events are given again one per call: the
    /// event that fails is then known exactly. In a rebuild ([`RunUndo::RetryBatch`]) the
    /// whole batch is rolled back and run again; elsewhere the run is rolled back to a
    /// savepoint and its events given again at once. A failure that does not come back one
    /// at a time (a run that ran out of its deadline, say) leaves the events applied one by
    /// one.
    fn give(&mut self, target: &Target, events: &[&Event]) -> Result<(), ProjectionError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let again = self
            .one_at_a_time_through
            .get(&target.id)
            .is_some_and(|through| first.id <= *through);
        let instance = self.instance(target)?;
        if events.len() == 1 || again || instance.contract() == Contract::V0_1 {
            return self.give_one_by_one(target, events);
        }
        let savepoint = self.run_undo == RunUndo::Savepoint;
        if savepoint {
            self.db.savepoint(RUN_SAVEPOINT)?;
        }
        let instance = self.instance(target)?;
        let outcome = instance.handle_events(events);
        let aborted = instance.take_aborted();
        if let Some(failure) = aborted
            .as_ref()
            .and_then(|e| database_failure(target, events[0].id, e))
        {
            return Err(failure);
        }
        let failure = match (outcome, aborted) {
            (Ok(()), None) => {
                if savepoint {
                    self.db.release(RUN_SAVEPOINT)?;
                }
                return Ok(());
            }
            (Err(failure), _) => {
                let named = failure.index.map(|index| events[index].id);
                (named, failure.error.to_string())
            }
            (Ok(()), Some(database)) => (
                None,
                GuestError::Swallowed(database.to_string()).to_string(),
            ),
        };
        self.instances.remove(&(target.id, target.role));
        if !savepoint {
            return Err(ProjectionError::RunFailed {
                projector: target.projector.clone(),
                target_id: target.id,
                through: last.id,
                message: failure.1,
            });
        }
        self.db.rollback_to(RUN_SAVEPOINT)?;
        tracing::debug!(projector = %target.projector, target = %target_label(target), events = events.len(),
            "a run of events failed ({}); giving them again one at a time to name the event", failure.1);
        self.give_one_by_one(target, events)?;
        tracing::warn!(projector = %target.projector, target = %target_label(target),
            named_event = failure.0, "a run of {} events failed ({}), but each event succeeded alone; \
             they are applied one by one", events.len(), failure.1);
        Ok(())
    }

    /// Gives events to `target`'s instance one per call; the first that fails is named.
    fn give_one_by_one(
        &mut self,
        target: &Target,
        events: &[&Event],
    ) -> Result<(), ProjectionError> {
        for event in events {
            let id = event.id;
            let instance = self.instance(target)?;
            let outcome = instance.handle_events(std::slice::from_ref(event));
            // Asked even when the guest failed, so the next event starts clean.
            let aborted = instance.take_aborted();
            if let Some(failure) = aborted
                .as_ref()
                .and_then(|e| database_failure(target, id, e))
            {
                return Err(failure);
            }
            let retryable = aborted.as_ref().is_some_and(DbError::is_transient);
            let error = match (outcome, aborted) {
                (Err(failure), _) => Some(failure.error),
                (Ok(()), Some(database)) => Some(GuestError::Swallowed(database.to_string())),
                (Ok(()), None) => None,
            };
            if let Some(error) = error {
                return Err(ProjectionError::Guest {
                    projector: target.projector.clone(),
                    target: target_label(target),
                    event_id: id,
                    error,
                    retryable,
                });
            }
        }
        Ok(())
    }

    /// Brings `target` to `head` inside the caller's transaction (the last gap before a switch
    /// that must happen under the lock), reading in batches so memory stays bounded, and moves
    /// its checkpoint. Returns the new checkpoint. Load the target's version first
    /// ([`Projection::prepare`]).
    ///
    /// # Errors
    /// [`ProjectionError::Guest`] naming the event, or a database failure.
    pub fn apply_up_to(&mut self, target: &Target, head: i64) -> Result<i64, ProjectionError> {
        let mut checkpoint = target.checkpoint;
        loop {
            let events = self.db.read_events(checkpoint, head, self.batch_size)?;
            if events.is_empty() {
                break;
            }
            let at = Target {
                checkpoint,
                ..target.clone()
            };
            checkpoint = self.apply(&at, &events, None)?;
        }
        if checkpoint != target.checkpoint {
            self.db.set_checkpoint(target.id, checkpoint)?;
        }
        Ok(checkpoint)
    }

    /// Replays history into one target, batch by batch, until it reaches the head of the
    /// store. Each batch commits its rows with the checkpoint; interrupted at any point, the
    /// next call resumes from the checkpoint.
    ///
    /// # Errors
    /// A recorded failure (the target is stopped), or a database failure.
    pub fn catch_up(
        &mut self,
        target_id: i64,
        progress: &mut dyn FnMut(&Target, Progress),
    ) -> Result<u64, ProjectionError> {
        self.catch_up_cursor(target_id, Cursor::Whole, progress)
    }

    /// Replays one partition of a target's history split by aggregate ([`Partition`]), batch
    /// by batch, up to `head`, the head the split began at. Each batch commits its rows with
    /// the partition's own checkpoint (`zdr_partitions`), not the target's: the target's
    /// checkpoint moves when every partition is done and they are joined.
    ///
    /// # Errors
    /// As [`Projection::catch_up`].
    pub fn catch_up_partition(
        &mut self,
        target_id: i64,
        partition: Partition,
        head: i64,
        progress: &mut dyn FnMut(&Target, Progress),
    ) -> Result<u64, ProjectionError> {
        self.catch_up_cursor(target_id, Cursor::Partition { partition, head }, progress)
    }

    /// [`Projection::catch_up`] from where `cursor` says.
    fn catch_up_cursor(
        &mut self,
        target_id: i64,
        cursor: Cursor,
        progress: &mut dyn FnMut(&Target, Progress),
    ) -> Result<u64, ProjectionError> {
        let mut applied = 0u64;
        if let Some(target) = self.db.target(target_id)? {
            self.prepare(std::slice::from_ref(&target))?;
        }
        // A target split into parts is caught up by its parts; from its own checkpoint (where
        // the split began) it would apply their events a second time.
        if matches!(cursor, Cursor::Whole) && !self.db.partitions(target_id)?.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "target {target_id} is being replayed split by aggregate and its parts have not \
                 joined yet; run `zdr replay start` again to finish them"
            ))
            .into());
        }
        // How many events the next transaction reads: the batch size, or a little more than
        // the time budget let the last one apply (PostgreSQL applies far fewer than 10,000 in
        // 250 ms; reading what will not be applied is wasted).
        let mut limit = self.batch_size;
        let mut time = CatchUpTime::default();
        // A failed run fails the batch, which is run again below: no savepoint per run.
        self.run_undo = RunUndo::RetryBatch;
        let outcome = self.catch_up_batches(
            target_id,
            cursor,
            &mut limit,
            &mut time,
            &mut applied,
            progress,
        );
        self.run_undo = RunUndo::Savepoint;
        self.one_at_a_time_through.remove(&target_id);
        outcome.map(|()| applied)
    }

    /// The batches of [`Projection::catch_up`], until the head.
    fn catch_up_batches(
        &mut self,
        target_id: i64,
        cursor: Cursor,
        limit: &mut usize,
        time: &mut CatchUpTime,
        applied: &mut u64,
        progress: &mut dyn FnMut(&Target, Progress),
    ) -> Result<(), ProjectionError> {
        // The events of the next batch are read while this one is applied (`read_ahead`).
        let mut ahead: Option<ReadAhead> = None;
        let mut held_since: Option<Instant> = None;
        loop {
            let db = self.db;
            let batch_started = Instant::now();
            let (mut reading, mut projector) = (Duration::ZERO, Duration::ZERO);
            // A rebuild's transaction: live batches do not wait for it (see `rebuild_write`).
            let batch = db.rebuild_write(|db| {
                let target = db.target(target_id)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("target {target_id} disappeared"))
                })?;
                if let Some(failure) = &target.failure {
                    return Err(ProjectionError::Stopped {
                        projector: target.projector.clone(),
                        target: target_label(&target),
                        event_id: failure.event_id,
                        message: failure.message.clone(),
                    });
                }
                // Events the projector does not handle are left out in the database: a
                // projector of a few classes in a store of many reads only its own. They are
                // read in chunks of at most `rebuild_read_chunk` ([`READ_CHUNK`]), so that the
                // events held in memory stay bounded whatever the transaction's size.
                let chunk = self.batch_size.min(db.read_chunk());
                let handles = &self.loaded(&target)?.description.handles;
                let read_started = Instant::now();
                let (target, head, partition) = match cursor {
                    Cursor::Whole => (target, db.head()?, Partition::WHOLE),
                    Cursor::Partition { partition, head } => {
                        let checkpoint = db.partition_checkpoint(target.id, partition.index)?;
                        (
                            Target {
                                checkpoint,
                                ..target
                            },
                            head,
                            partition,
                        )
                    }
                };
                let ahead = ahead.get_or_insert_with(|| {
                    ReadAhead::new(db.reads_ahead(), handles.clone(), partition, chunk)
                });
                let (events, complete) =
                    ahead.read(db, target.checkpoint, head, (*limit).min(chunk))?;
                reading += read_started.elapsed();
                if events.is_empty() {
                    if target.checkpoint >= head {
                        return Ok(None);
                    }
                    // Nothing it handles up to the head: the checkpoint passes over the rest.
                    cursor.set_checkpoint(db, target.id, head)?;
                    return Ok(Some((target, 0, 0, head, head)));
                }
                // The transaction takes chunk after chunk until it holds `limit` events, its
                // time budget runs out or the head is reached.
                let until = Instant::now() + REBUILD_TIME_BUDGET;
                let (mut last, mut count, mut read) = (target.checkpoint, 0, 0);
                let (mut events, mut complete) = (events, complete);
                loop {
                    let apply_started = Instant::now();
                    // At most `last`: the id of the last event applied or passed over, or
                    // `last` itself when the budget ran out before the first.
                    let mut applied_through = self.apply(&target, events, Some(until))?.max(last);
                    projector += apply_started.elapsed();
                    let applied = events
                        .iter()
                        .take_while(|e| e.id() <= applied_through)
                        .count();
                    let whole = applied == events.len();
                    // A read that held every handled event up to the head: once they are
                    // all applied, the events after the last of them are passed over too.
                    if complete && whole {
                        applied_through = head;
                    }
                    (last, count, read) = (applied_through, count + applied, read + events.len());
                    if !whole || complete || read >= *limit || Instant::now() >= until {
                        break;
                    }
                    let read_started = Instant::now();
                    (events, complete) = ahead.read(db, last, head, (*limit - read).min(chunk))?;
                    reading += read_started.elapsed();
                    if events.is_empty() {
                        // Nothing more it handles up to the head.
                        if complete {
                            last = head;
                        }
                        break;
                    }
                }
                cursor.set_checkpoint(db, target.id, last)?;
                Ok(Some((target, count, read, last, head)))
            });
            match batch {
                Ok(None) => {
                    // Caught up with a head that a gap holds back, events after the gap
                    // already committed: wait a while for the gap to settle rather than stop
                    // short of them, at most `HELD_HEAD_PATIENCE` in all from the first such
                    // wait (writers that keep opening new gaps must not keep the rebuild
                    // going). A part of a split has a fixed head and never waits.
                    let held = matches!(cursor, Cursor::Whole) && db.head_held_back();
                    let since = *held_since.get_or_insert_with(Instant::now);
                    if !held || since.elapsed() >= HELD_HEAD_PATIENCE {
                        if held {
                            tracing::info!(
                                target_id,
                                "caught up with the safe head; events after a gap in the ids \
                                 that is not settled yet are left for the next catch-up"
                            );
                        }
                        return Ok(());
                    }
                    std::thread::sleep(HELD_HEAD_POLL);
                }
                Ok(Some((target, count, read, last, head))) => {
                    *limit = next_read_limit(*limit, count, read, self.batch_size);
                    *applied += count as u64;
                    time.reading += reading;
                    time.projector += projector;
                    time.committing += batch_started.elapsed().saturating_sub(reading + projector);
                    progress(
                        &target,
                        Progress {
                            checkpoint: last,
                            head,
                            applied: *applied,
                            time: *time,
                        },
                    );
                }
                Err(ProjectionError::RunFailed {
                    projector,
                    target_id,
                    through,
                    message,
                }) => {
                    // The batch rolled back; it runs again with the run's events one per
                    // call, and the one that fails is then named.
                    tracing::info!(
                        projector,
                        through,
                        "a run of events failed ({message}); running the batch again with its events one at a time"
                    );
                    self.one_at_a_time_through.insert(target_id, through);
                }
                Err(err) => {
                    self.record_or_log(target_id, &err);
                    return Err(err);
                }
            }
        }
    }

    /// Records a failure as [`Projection::record`] does; a failure to record it is logged, so
    /// that it never hides the failure itself (the target then retries the event).
    fn record_or_log(&mut self, target_id: i64, err: &ProjectionError) {
        if let Err(recording) = self.record(target_id, err) {
            tracing::error!("cannot record the failure ({err}): {recording}");
        }
    }

    /// Records a failure on an event on its target, in a transaction of its own (the batch
    /// that failed was rolled back); a clone's replay goes to `failed`.
    fn record(&mut self, target_id: i64, err: &ProjectionError) -> Result<(), ProjectionError> {
        let Some((event_id, message)) = err.failed_event() else {
            return Ok(());
        };
        let db = self.db;
        db.write(|db| {
            if let Some(target) = db.target(target_id)? {
                db.record_failure(&target, event_id, &message)?;
                if let (Role::Clone, Some(key)) = (target.role, &target.replay_key) {
                    db.fail_replay(key, &err.to_string())?;
                }
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(())
    }

    /// Stops live target `live_id` at event `event_id` with `message`, in a transaction of its
    /// own: for a failure found outside a batch (an event written after the store's head had
    /// passed its id).
    ///
    /// # Errors
    /// A database failure.
    pub fn stop_live(
        &mut self,
        live_id: i64,
        event_id: i64,
        message: &str,
    ) -> Result<(), ProjectionError> {
        self.db.write(|db| {
            if let Some(target) = db.target(live_id)?
                && target.failure.is_none()
            {
                db.record_failure(&target, event_id, message)?;
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(())
    }

    /// One live batch of `projector`, inside the per-projector lock (the write transaction):
    /// the next events go to the live target and, in the same transaction, to every projecting
    /// clone, each clone under a savepoint so that a failing clone drops out without stalling
    /// live. The live target is read afresh each batch: after a promote it is another target
    /// with another version, and the new instance is made here (the hot swap); a version not
    /// loaded yet is reported ([`LiveBatch::NeedsLoad`]) instead of compiled under the lock.
    ///
    /// A live failure on an event follows `policy`: `park` parks the event (the batch rolls
    /// back and the next one passes over it), `retry` leaves a failure a new attempt may cure
    /// unrecorded for the caller to try again, and anything else is recorded, which stops the
    /// projector.
    ///
    /// # Errors
    /// A live failure on an event (recorded, unless the caller is to retry it) or a database
    /// failure.
    pub fn live_batch(
        &mut self,
        projector: &str,
        policy: FailurePolicy,
    ) -> Result<LiveBatch, ProjectionError> {
        let db = self.db;
        let mut live_id = None;
        let outcome = db.write(|db| -> Result<LiveBatch, ProjectionError> {
            let Some(live) = db.live_target(projector)? else {
                return Ok(LiveBatch::Idle);
            };
            live_id = Some(live.id);
            if live.failure.is_some() {
                return Ok(LiveBatch::Paused);
            }
            let mut clones = db.projecting_clones(projector)?;
            let unloaded: Vec<Target> = std::iter::once(&live)
                .chain(&clones)
                .filter(|t| !self.is_loaded(t))
                .cloned()
                .collect();
            if !unloaded.is_empty() {
                return Ok(LiveBatch::NeedsLoad(unloaded));
            }
            let head = db.head()?;
            let events = db.read_events(live.checkpoint, head, self.batch_size)?;
            // Instances of targets that are no longer written here (promoted, removed) go.
            self.retain_targets(&std::iter::once(&live).chain(&clones).collect::<Vec<_>>());
            if events.is_empty() {
                return Ok(LiveBatch::Idle);
            }
            clones.retain(|clone| {
                if clone.checkpoint == live.checkpoint {
                    return true;
                }
                tracing::error!(projector, clone = %target_label(clone), "clone checkpoint {} differs from live {}; dropping it from projecting", clone.checkpoint, live.checkpoint);
                false
            });
            let until = Instant::now() + BATCH_TIME_BUDGET;
            let mut last = live.checkpoint;
            let mut applied = 0;
            let mut last_ok: Vec<i64> = clones.iter().map(|c| c.checkpoint).collect();
            let mut failed: Vec<Option<(i64, String)>> = vec![None; clones.len()];
            for event in &events {
                if applied > 0 && Instant::now() >= until {
                    break;
                }
                let one = std::slice::from_ref(event);
                let live_at = Target { checkpoint: last, ..live.clone() };
                self.apply(&live_at, one, None)?;
                for (i, clone) in clones.iter().enumerate() {
                    if failed[i].is_some() {
                        continue;
                    }
                    let clone_at = Target { checkpoint: last_ok[i], ..clone.clone() };
                    db.savepoint("zdr_clone")?;
                    let outcome = self
                        .apply(&clone_at, one, None)
                        .and_then(|_| db.release("zdr_clone").map_err(ProjectionError::from));
                    match outcome {
                        Ok(()) => last_ok[i] = event.id(),
                        Err(ProjectionError::Store(err)) if err.is_connection_lost() || err.is_fatal() => {
                            return Err(err.into());
                        }
                        Err(err) => {
                            db.rollback_to("zdr_clone")?;
                            failed[i] = Some(
                                err.failed_event()
                                    .unwrap_or_else(|| (event.id(), err.to_string())),
                            );
                        }
                    }
                }
                last = event.id();
                applied += 1;
            }
            db.set_checkpoint(live.id, last)?;
            let mut written = 0;
            for (i, clone) in clones.iter().enumerate() {
                db.set_checkpoint(clone.id, last_ok[i])?;
                match &failed[i] {
                    None => written += 1,
                    Some((event_id, message)) => {
                        tracing::error!(projector, clone = %target_label(clone), event_id, "clone failed and stops projecting: {message}");
                        db.record_failure(clone, *event_id, message)?;
                        if let Some(key) = &clone.replay_key {
                            db.fail_replay(
                                key,
                                &format!("projector {projector} failed on event {event_id}: {message}"),
                            )?;
                        }
                    }
                }
            }
            Ok(LiveBatch::Applied {
                events: applied,
                checkpoint: last,
                clones: written,
            })
        });
        let (Err(err), Some(live_id)) = (&outcome, live_id) else {
            return outcome;
        };
        let Some((event_id, message)) = err.failed_event() else {
            return outcome;
        };
        match policy {
            FailurePolicy::Park if err.is_parkable() => {
                tracing::warn!(
                    projector,
                    event_id,
                    "parking the event (on_failure = park): {message}"
                );
                self.park(live_id, event_id, &message)?;
                Ok(LiveBatch::Parked { event_id, message })
            }
            FailurePolicy::Retry { .. } if err.is_retryable() => outcome,
            _ => {
                self.record_or_log(live_id, err);
                outcome
            }
        }
    }

    /// Parks event `event_id` of live target `live_id`, in a transaction of its own (the
    /// batch that failed was rolled back).
    fn park(&mut self, live_id: i64, event_id: i64, message: &str) -> Result<(), ProjectionError> {
        self.db.write(|db| {
            if let Some(live) = db.target(live_id)? {
                db.park_event(&live, event_id, message)?;
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::next_read_limit;

    #[test]
    fn a_rebuild_reads_about_what_its_time_budget_lets_it_apply() {
        // Cut short by the budget: a quarter more than it applied next time.
        assert_eq!(next_read_limit(10_000, 2_000, 10_000, 10_000), 2_500);
        // Applied all it read: twice as many, up to the batch size.
        assert_eq!(next_read_limit(2_500, 2_500, 2_500, 10_000), 5_000);
        assert_eq!(next_read_limit(8_000, 8_000, 8_000, 10_000), 10_000);
        // The head was reached: keep the limit.
        assert_eq!(next_read_limit(4_000, 300, 300, 10_000), 4_000);
        // Never zero, however little was applied, and never above the batch size.
        assert_eq!(next_read_limit(10, 0, 10, 10_000), 1);
        assert_eq!(next_read_limit(10_000, 10_000, 10_000, 10_000), 10_000);
    }
}
