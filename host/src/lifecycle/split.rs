//! A replay split by aggregate: history replayed into a clone (or a new projector's tables,
//! built by its first deploy) by several workers at once, each with its own connection, its
//! own instance of the projector and its own checkpoint.
//!
//! Only for a projector of the `partitioned-projector` world (its rows are keyed by
//! aggregate, so the events of different aggregates commute) on a database with several
//! writers (PostgreSQL, MySQL). The split is recorded first (`zdr_partitions`: one row per
//! part, each with the head the split began at), so that a `replay start` killed half-way
//! resumes every part from its own checkpoint, with the same number of parts. When every
//! part has reached that head, they are joined in one transaction: the target's checkpoint
//! becomes the head and the rows go. Until then the target's own checkpoint stays where the
//! split began, and nothing catches it up from there ([`crate::projection::Projection::catch_up`]
//! refuses while parts remain).

use std::sync::mpsc;

use super::{LifecycleError, Result};
use crate::backend::{Db, PartitionRow, StoreError};
use crate::model::Target;
use crate::projection::{CatchUpTime, Progress, Projection, ProjectionError};
use crate::runtime::Runtime;

/// Progress reports of the workers not yet printed, at most.
const PROGRESS_QUEUE: usize = 64;

/// Replays `target` split into parts: resumes the parts an earlier run left, or splits it
/// into `requested` parts when its projector is partitioned, the database can split history
/// and there is more than one batch of history to replay. Returns the events applied; when
/// it returns, the target is whole again (its checkpoint at the head the split began at) or
/// was never split.
///
/// # Errors
/// The first failure of a part (a guest failure is recorded on the target as in a whole
/// replay, and stops the other parts at their next batch); the parts stay recorded, and the
/// next `replay start` carries on from their checkpoints.
pub(super) fn replay_split(
    runtime: &Runtime,
    db: &Db,
    target: &Target,
    requested: u32,
    batch_size: usize,
    progress: &mut dyn FnMut(&Target, Progress),
) -> Result<u64> {
    let mut parts = db.partitions(target.id)?;
    if parts.is_empty() {
        if requested <= 1 || !db.splits_history() {
            return Ok(0);
        }
        let description = db.description(target.version_id)?;
        if !description.is_partitioned() {
            return Ok(0);
        }
        // A history of one batch or less is replayed whole: workers and connections of
        // their own would cost more than they gain.
        let head = db.head()?;
        if head - target.checkpoint <= i64::try_from(batch_size).unwrap_or(i64::MAX) {
            return Ok(0);
        }
        db.write(|db| db.split_into_partitions(target.id, requested, target.checkpoint, head))?;
        parts = db.partitions(target.id)?;
        tracing::info!(projector = %target.projector, parts = requested, from = target.checkpoint, head, "replaying split by aggregate");
    } else {
        tracing::info!(projector = %target.projector, parts = parts.len(), "resuming a replay split by aggregate");
    }
    let applied = run_parts(runtime, db, target, &parts, batch_size, progress)?;
    join(db, target)?;
    Ok(applied)
}

/// Runs every part not yet at its head on a thread of its own, reporting their progress as
/// one: the smallest checkpoint, the events applied by all, their time summed.
fn run_parts(
    runtime: &Runtime,
    db: &Db,
    target: &Target,
    parts: &[PartitionRow],
    batch_size: usize,
    progress: &mut dyn FnMut(&Target, Progress),
) -> Result<u64> {
    // Bounded: workers wait for the reporter rather than pile up reports.
    let (tx, rx) = mpsc::sync_channel::<(usize, Target, Progress)>(PROGRESS_QUEUE);
    let outcomes: Vec<std::result::Result<u64, LifecycleError>> = std::thread::scope(|scope| {
        let workers: Vec<_> =
            parts
                .iter()
                .enumerate()
                .filter(|(_, row)| row.checkpoint < row.head)
                .map(|(slot, row)| {
                    let tx = tx.clone();
                    let row = *row;
                    scope.spawn(move || -> std::result::Result<u64, LifecycleError> {
                        let own = db.open_another()?;
                        let mut projection = Projection::new(runtime, &own, batch_size);
                        let mut report = |t: &Target, p: Progress| {
                            // The receiver lives until every worker has ended.
                            let _ = tx.send((slot, t.clone(), p));
                        };
                        Ok(projection.catch_up_partition(
                            target.id,
                            row.part,
                            row.head,
                            &mut report,
                        )?)
                    })
                })
                .collect();
        drop(tx);
        let mut latest: Vec<(i64, u64, CatchUpTime)> = parts
            .iter()
            .map(|row| (row.checkpoint, 0, CatchUpTime::default()))
            .collect();
        let head = parts.first().map_or(0, |row| row.head);
        for (slot, reported, p) in rx {
            if let Some(entry) = latest.get_mut(slot) {
                *entry = (p.checkpoint, p.applied, p.time);
            }
            let time = latest
                .iter()
                .fold(CatchUpTime::default(), |sum, (_, _, t)| CatchUpTime {
                    reading: sum.reading + t.reading,
                    projector: sum.projector + t.projector,
                    committing: sum.committing + t.committing,
                });
            progress(
                &reported,
                Progress {
                    checkpoint: latest.iter().map(|(c, _, _)| *c).min().unwrap_or(head),
                    head,
                    applied: latest.iter().map(|(_, a, _)| a).sum(),
                    time,
                },
            );
        }
        workers
            .into_iter()
            .map(|worker| {
                worker.join().unwrap_or_else(|_| {
                    Err(StoreError::Corrupt(
                        "a worker of the split replay panicked; see the log".into(),
                    )
                    .into())
                })
            })
            .collect()
    });
    let mut applied = 0;
    let mut failure: Option<LifecycleError> = None;
    for outcome in outcomes {
        match outcome {
            Ok(n) => applied += n,
            // The part that failed says why; the others stopped because it did.
            Err(err) if failure.is_none() || is_stopped_by_another(&failure) => {
                failure = Some(err);
            }
            Err(_) => {}
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(applied),
    }
}

/// Whether the failure kept is only a part stopping because another failed first.
fn is_stopped_by_another(failure: &Option<LifecycleError>) -> bool {
    matches!(
        failure,
        Some(LifecycleError::Projection(ProjectionError::Stopped { .. }))
    )
}

/// Joins the parts of `target` once every one has reached the head the split began at: its
/// checkpoint becomes that head and the parts are forgotten, in one transaction.
fn join(db: &Db, target: &Target) -> Result<()> {
    db.write(|db| {
        let parts = db.partitions(target.id)?;
        let Some(head) = parts.first().map(|row| row.head) else {
            return Ok(());
        };
        if let Some(behind) = parts.iter().find(|row| row.checkpoint < row.head) {
            return Err(StoreError::Corrupt(format!(
                "part {} of {} is at event {}, short of the head {head}, after its worker ended",
                behind.part.index, target.projector, behind.checkpoint
            ))
            .into());
        }
        db.set_checkpoint(target.id, head)?;
        db.forget_partitions(target.id)?;
        Ok::<_, LifecycleError>(())
    })
}
