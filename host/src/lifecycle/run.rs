//! `zdr replay run KEY --projector NAME=FILE.wasm [--promote]`: the whole rebuild in one
//! command. It creates the replay (or finds the one an earlier run left), replays history into
//! the clone, projects, and promotes when asked, each step only when the replay's state says it
//! is still to do. Interrupted or stopped at a problem, the replay stays in a state the next
//! run carries on from: the same command, run again, finishes the job.

use super::{
    ComponentSpec, LifecycleError, PromoteOptions, Promoted, Result, create, project, promote,
    start,
};
use crate::backend::Db;
use crate::model::{ReplayState, Target};
use crate::projection::Progress;
use crate::runtime::{Runtime, content_hash};

/// A step of `replay run`, reported as it ends.
#[derive(Debug)]
pub enum RunStep {
    /// The replay and its clone tables were created.
    Created(Vec<Target>),
    /// An earlier run's replay was found in this state, with the same components.
    Resumed(ReplayState),
    /// History was replayed into the clone(s): this many events in this run.
    Replayed(u64),
    /// The clone(s) caught up and receive new events with live.
    Projecting,
    /// The clone(s) were promoted.
    Promoted(Promoted),
}

/// The step `replay run` was at when it stopped, for the message that says what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStage {
    /// Checking or creating the replay.
    Create,
    /// Replaying history into the clone.
    Start,
    /// Closing the last gap and turning on dual writes.
    Project,
    /// Checking and promoting.
    Promote,
}

impl std::fmt::Display for RunStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStage::Create => "creating the replay",
            RunStage::Start => "replaying history into the clone",
            RunStage::Project => "projecting",
            RunStage::Promote => "promoting",
        })
    }
}

/// `replay run` stopped: at which step, and why.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct RunError {
    /// The step it stopped at.
    pub stage: RunStage,
    /// Why.
    #[source]
    pub source: LifecycleError,
}

/// How far `replay run` goes, and how.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Events per transaction.
    pub batch_size: usize,
    /// Into how many parts `start` may split history (see [`start`]).
    pub partitions: u32,
    /// Promote at the end, so; `None` stops at `projecting`.
    pub promote: Option<PromoteOptions>,
}

/// Runs replay `key` of `specs` as far as it goes: to `projecting`, or to `promoted` when
/// `options.promote` is given. Steps an earlier run finished are not done again; a replay under this
/// key with other components is refused. `report` hears of each step as it ends.
///
/// # Errors
/// [`RunError`] naming the step that failed; the replay is left where that step left it.
pub fn run(
    runtime: &Runtime,
    db: &Db,
    key: &str,
    specs: &[ComponentSpec],
    options: &RunOptions,
    progress: &mut dyn FnMut(&Target, Progress),
    report: &mut dyn FnMut(RunStep),
) -> std::result::Result<(), RunError> {
    let batch_size = options.batch_size;
    let at = |stage: RunStage| move |source: LifecycleError| RunError { stage, source };
    let state = match db.replay(key).map_err(|e| at(RunStage::Create)(e.into()))? {
        None => {
            let targets = create(runtime, db, key, specs).map_err(at(RunStage::Create))?;
            report(RunStep::Created(targets));
            ReplayState::Created
        }
        Some(row) => {
            same_components(db, key, row.state, specs).map_err(at(RunStage::Create))?;
            report(RunStep::Resumed(row.state));
            row.state
        }
    };
    let state = match state {
        ReplayState::Created | ReplayState::Started | ReplayState::Failed => {
            let applied = start(runtime, db, key, batch_size, options.partitions, progress)
                .map_err(at(RunStage::Start))?;
            report(RunStep::Replayed(applied));
            project(runtime, db, key, batch_size, progress).map_err(at(RunStage::Project))?;
            report(RunStep::Projecting);
            ReplayState::Projecting
        }
        other => other,
    };
    match (state, &options.promote) {
        (ReplayState::Projecting, Some(options)) => {
            let promoted = promote(runtime, db, key, options).map_err(at(RunStage::Promote))?;
            report(RunStep::Promoted(promoted));
            Ok(())
        }
        (ReplayState::Projecting | ReplayState::Promoted, _) => Ok(()),
        (ReplayState::RolledBack, _) => Err(RunError {
            stage: RunStage::Create,
            source: LifecycleError::WrongState(format!(
                "replay {key} was rolled back: its version is out again; remove it with \
                 `zdr replay remove {key}` (or pick another key) to rebuild once more"
            )),
        }),
        (other, _) => Err(RunError {
            stage: RunStage::Start,
            source: LifecycleError::WrongState(format!(
                "replay {key} is {other} after its steps ran; see `zdr replay show {key}`"
            )),
        }),
    }
}

/// Checks that replay `key` (made by an earlier run, now in `state`) rebuilds exactly the
/// projectors and the code of `specs`, so that rerunning a command never carries on someone
/// else's replay.
fn same_components(db: &Db, key: &str, state: ReplayState, specs: &[ComponentSpec]) -> Result<()> {
    let mut theirs: Vec<(String, String)> = Vec::new();
    for target in db.replay_targets(key)? {
        // After a promote the replay keeps the former live version; the one it built is live.
        let built = match state {
            ReplayState::Promoted => db.live_target(&target.projector)?.unwrap_or(target),
            _ => target,
        };
        let (_, hash) = db.description_and_hash(built.version_id)?;
        theirs.push((built.projector.clone(), hash));
    }
    let mut ours: Vec<(String, String)> = specs
        .iter()
        .map(|s| (s.name.clone(), content_hash(&s.wasm)))
        .collect();
    theirs.sort();
    ours.sort();
    if theirs == ours {
        return Ok(());
    }
    let listed = |parts: &[(String, String)]| {
        parts
            .iter()
            .map(|(name, hash)| format!("{name} ({})", super::short_hash(hash)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(LifecycleError::WrongState(format!(
        "replay {key} already exists with other components: it rebuilds {}, this command asks \
         for {}; pick another key, or drop it with `zdr replay remove {key}`",
        listed(&theirs),
        listed(&ours)
    )))
}
