//! `zdr replay rollback KEY`: after a promote and before `remove`, the former live tables are
//! brought up to date and swapped back in, as atomically as the promote.
//!
//! The former live tables stopped at the promote's checkpoint. They are caught up with the
//! events projected since by their own (former) version — in batches outside the write lock,
//! then the last gap inside it, as `project` and `promote` close theirs — so readers never see
//! data older than they saw before. Inside one write transaction the restored version may veto
//! (its `promote` export), the promoted tables move to a temporary name, the former live ones
//! to the live names, the promoted ones to the retired names, and the targets swap roles: a
//! reader sees one whole version or the other, never neither. The daemon notices the new live
//! target at its next turn and serves the restored version again (the hot swap, backwards).

use super::{
    LifecycleError, Result, apply_move, checked_move, replay_row, retry_on_lock_timeout, run_lock,
};
use crate::backend::Db;
use crate::machine::Command;
use crate::model::{ReplayState, Role, Target};
use crate::projection::{Progress, Projection};
use crate::runtime::Runtime;

/// Rolls replay `key` back: the version its promote replaced serves again, with its tables up
/// to date; the promoted version's tables are kept (as the replay's) until `remove`.
///
/// # Errors
/// A state the machine refuses (not promoted, already rolled back), another run, a failure
/// of the restored version while catching up (recorded on its target; the promoted version
/// keeps serving), a veto, or a database failure.
pub fn rollback(
    runtime: &Runtime,
    db: &Db,
    key: &str,
    batch_size: usize,
    progress: &mut dyn FnMut(&Target, Progress),
) -> Result<Vec<Target>> {
    let replay = replay_row(db, key)?;
    checked_move(&replay, Command::Rollback)?;
    let _lock = run_lock(db, key)?;
    let replay = replay_row(db, key)?;
    checked_move(&replay, Command::Rollback)?;
    let mut projection = Projection::new(runtime, db, batch_size);
    let retired: Vec<Target> = db
        .replay_targets(key)?
        .into_iter()
        .filter(|t| t.role == Role::Retired)
        .collect();
    if retired.is_empty() {
        return Err(LifecycleError::NotFound(format!(
            "replay {key} kept no former live tables to roll back to"
        )));
    }
    for target in &retired {
        // Outside the lock: the bulk of what happened since the promote.
        projection.catch_up(target.id, progress)?;
        let live = db.live_target(&target.projector)?.ok_or_else(|| {
            LifecycleError::NotFound(format!(
                "projector {} has no live version to roll back from",
                target.projector
            ))
        })?;
        projection.prepare(&[target.clone(), live])?;
        if let Some(caught_up) = db.target(target.id)? {
            projection.instance(&caught_up)?;
        }
    }
    retry_on_lock_timeout(|| {
        db.write(|db| {
            let mut restored = Vec::new();
            for target in db.replay_targets(key)? {
                if target.role != Role::Retired {
                    continue;
                }
                let live = db.live_target(&target.projector)?.ok_or_else(|| {
                    LifecycleError::NotFound(format!(
                        "projector {} has no live version to roll back from",
                        target.projector
                    ))
                })?;
                // The last gap, inside the lock: the restored tables are at least as new as
                // the ones readers saw.
                let checkpoint = projection.apply_up_to(&target, db.head()?)?;
                let target = Target {
                    checkpoint,
                    ..target
                };
                projection.instance(&target)?.promote().map_err(|err| {
                    LifecycleError::WrongState(format!(
                        "projector {} version {} vetoed its return: {err}",
                        target.projector, target.version
                    ))
                })?;
                let live_description = projection.description(&live)?;
                let retired_description = projection.description(&target)?;
                // Promoted tables out of the way, the former ones in, the promoted ones kept.
                // One move of the three sets (on MySQL one RENAME TABLE, atomic for readers).
                let parked = Target {
                    role: Role::Building,
                    ..live.clone()
                };
                let mut moves = db.table_moves(&live, &live_description, Role::Building, None);
                moves.extend(db.table_moves(&target, &retired_description, Role::Live, None));
                moves.extend(db.table_moves(&parked, &live_description, Role::Retired, Some(key)));
                db.move_tables(&moves)?;
                db.set_role(live.id, Role::Retired, Some(key))?;
                db.set_role(target.id, Role::Live, None)?;
                restored.push(target);
            }
            apply_move(db, &replay, Command::Rollback, ReplayState::RolledBack)?;
            Ok(restored)
        })
    })
}
