//! The batch driver: read events → call the guest → commit the rows and the checkpoint.
//!
//! This is the one straight walk every event takes. A [`Projection`] owns the instances of one
//! worker (the daemon's worker for a projector, or a CLI command), one per target, each bound
//! to its target's tables through the database's shared connection. Every batch is one write
//! transaction: apply N events, move the checkpoint, commit. A crash anywhere leaves rows and
//! checkpoint consistent. A projector error on event X rolls the batch back and records
//! (target, X, message): nothing is skipped silently, and the target resumes from its
//! checkpoint once fixed.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::{Db, StoreError};
use crate::events::Event;
use crate::model::{Description, ReplayState, Role, Target};
use crate::runtime::{GuestError, Instance, LoadedComponent, Runtime};

/// Events per transaction: large enough to amortise the commit, small enough that the write
/// lock is held for milliseconds and a failed batch costs little to redo.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

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

/// Progress of a catch-up, reported after every committed batch.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The target's checkpoint after the batch.
    pub checkpoint: i64,
    /// The head of the event store when the batch was read.
    pub head: i64,
    /// Events applied so far in this run.
    pub applied: u64,
}

/// What one live batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveBatch {
    /// No live target, or nothing new.
    Idle,
    /// The live target is stopped at a failure.
    Paused,
    /// Events applied to live (and to `clones` projecting clones) up to `checkpoint`.
    Applied {
        /// Events in the batch.
        events: usize,
        /// The new live checkpoint.
        checkpoint: i64,
        /// Projecting clones written as well.
        clones: usize,
    },
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

struct Loaded {
    component: Arc<LoadedComponent>,
    description: Arc<Description>,
}

/// The instances of one worker and the database they write through.
pub struct Projection<'a> {
    runtime: &'a Runtime,
    db: &'a Db,
    batch_size: usize,
    versions: HashMap<i64, Loaded>,
    /// Keyed by (target id, role): a role change renames the tables, so it needs a new binding.
    instances: HashMap<(i64, Role), Instance>,
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
        }
    }

    /// The description of a target's projector version (loaded once per version).
    ///
    /// # Errors
    /// When the version cannot be read or compiled.
    pub fn description(&mut self, target: &Target) -> Result<Arc<Description>, ProjectionError> {
        Ok(self.loaded(target)?.description.clone())
    }

    fn loaded(&mut self, target: &Target) -> Result<&Loaded, ProjectionError> {
        if !self.versions.contains_key(&target.version_id) {
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
            let guest = |error: GuestError| ProjectionError::Guest {
                projector: target.projector.clone(),
                target: label.clone(),
                event_id: target.checkpoint + 1,
                error,
            };
            let mut instance = runtime
                .instantiate(&loaded.component, &target.projector, &tag)
                .map_err(guest)?;
            let connection = db.guest_connection(target, &loaded.description);
            let for_replay = matches!(target.role, Role::Clone | Role::Building);
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

    /// Applies `events` to `target` inside the caller's transaction, skipping the classes the
    /// projector does not handle. Returns the id of the last event.
    ///
    /// # Errors
    /// [`ProjectionError::Guest`] naming the event the projector failed on.
    pub fn apply(&mut self, target: &Target, events: &[Event]) -> Result<i64, ProjectionError> {
        let description = self.loaded(target)?.description.clone();
        let instance = self.instance(target)?;
        let mut last = target.checkpoint;
        for event in events {
            if description.handles(&event.event_class) {
                instance
                    .handle_event(event)
                    .map_err(|error| ProjectionError::Guest {
                        projector: target.projector.clone(),
                        target: target_label(target),
                        event_id: event.id,
                        error,
                    })?;
            }
            last = event.id;
        }
        Ok(last)
    }

    /// Brings `target` to `head` inside the caller's transaction (the last gap before a switch
    /// that must happen under the lock), reading in batches so memory stays bounded, and moves
    /// its checkpoint. Returns the new checkpoint.
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
            checkpoint = self.apply(&at, &events)?;
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
    /// A recorded guest failure (the target is stopped), or a database failure.
    pub fn catch_up(
        &mut self,
        target_id: i64,
        progress: &mut dyn FnMut(&Target, Progress),
    ) -> Result<u64, ProjectionError> {
        let mut applied = 0u64;
        loop {
            let db = self.db;
            let batch = db.write(|db| {
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
                let head = db.head()?;
                let events = db.read_events(target.checkpoint, head, self.batch_size)?;
                if events.is_empty() {
                    return Ok(None);
                }
                let last = self.apply(&target, &events)?;
                db.set_checkpoint(target.id, last)?;
                Ok(Some((target, events.len(), last, head)))
            });
            match batch {
                Ok(None) => return Ok(applied),
                Ok(Some((target, count, last, head))) => {
                    applied += count as u64;
                    progress(
                        &target,
                        Progress {
                            checkpoint: last,
                            head,
                            applied,
                        },
                    );
                }
                Err(err) => {
                    self.record(target_id, &err)?;
                    return Err(err);
                }
            }
        }
    }

    /// Records a guest failure on its target in a transaction of its own (the batch that
    /// failed was rolled back).
    fn record(&mut self, target_id: i64, err: &ProjectionError) -> Result<(), ProjectionError> {
        let ProjectionError::Guest {
            event_id, error, ..
        } = err
        else {
            return Ok(());
        };
        let db = self.db;
        db.write(|db| {
            if let Some(target) = db.target(target_id)? {
                db.record_failure(&target, *event_id, &error.to_string())?;
                if let (Role::Clone, Some(key)) = (target.role, &target.replay_key) {
                    db.transition(
                        key,
                        &[
                            ReplayState::Created,
                            ReplayState::Started,
                            ReplayState::Projecting,
                        ],
                        ReplayState::Failed,
                        Some(&err.to_string()),
                    )?;
                }
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(())
    }

    /// One live batch of `projector`, inside the per-projector lock (the write transaction):
    /// the next events go to the live target and, in the same transaction, to every projecting
    /// clone, each clone under a savepoint so that a failing clone drops out without stalling
    /// live. The live target is read afresh each batch: after a promote it is another target
    /// with another version, and the new instance is loaded here (the hot swap).
    ///
    /// # Errors
    /// A live guest failure (recorded; the projector is paused) or a database failure.
    pub fn live_batch(&mut self, projector: &str) -> Result<LiveBatch, ProjectionError> {
        let db = self.db;
        let mut live_id = None;
        let outcome = db.write(|db| {
            let Some(live) = db.live_target(projector)? else {
                return Ok(LiveBatch::Idle);
            };
            live_id = Some(live.id);
            if live.failure.is_some() {
                return Ok(LiveBatch::Paused);
            }
            let head = db.head()?;
            let events = db.read_events(live.checkpoint, head, self.batch_size)?;
            let mut clones = db.projecting_clones(projector)?;
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
            let mut last_ok: Vec<i64> = clones.iter().map(|c| c.checkpoint).collect();
            let mut failed: Vec<Option<(i64, String)>> = vec![None; clones.len()];
            for event in &events {
                self.apply(&live, std::slice::from_ref(event))?;
                for (i, clone) in clones.iter().enumerate() {
                    if failed[i].is_some() {
                        continue;
                    }
                    db.savepoint("zdr_clone")?;
                    match self.apply(clone, std::slice::from_ref(event)) {
                        Ok(_) => {
                            db.release("zdr_clone")?;
                            last_ok[i] = event.id;
                        }
                        Err(ProjectionError::Guest { error, .. }) => {
                            db.rollback_to("zdr_clone")?;
                            failed[i] = Some((event.id, error.to_string()));
                        }
                        Err(other) => {
                            db.rollback_to("zdr_clone")?;
                            failed[i] = Some((event.id, other.to_string()));
                        }
                    }
                }
            }
            let last = events.last().map_or(live.checkpoint, |e| e.id);
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
                            db.transition(
                                key,
                                &[ReplayState::Projecting],
                                ReplayState::Failed,
                                Some(&format!("projector {projector} failed on event {event_id}: {message}")),
                            )?;
                        }
                    }
                }
            }
            Ok(LiveBatch::Applied {
                events: events.len(),
                checkpoint: last,
                clones: written,
            })
        });
        match outcome {
            Err(err @ ProjectionError::Guest { .. }) => {
                if let Some(id) = live_id {
                    self.record(id, &err)?;
                }
                Err(err)
            }
            other => other,
        }
    }
}
