//! The replay lifecycle and projector deployment. Which command fits which state is the one
//! table of [`crate::machine`]; here each command does its work and applies its move as a
//! compare-and-set of the replay's row: the database is the only coordinator, so two CLIs
//! racing on one replay get one winner and one clear error ([`LifecycleError::Raced`]).
//!
//! Every function here blocks (SQLite and wasmtime run synchronously); call it from a blocking
//! thread, never on the async runtime.

mod parked;
mod rollback;
mod run;
mod split;
mod verify;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::backend::{Db, ReplayRow, RunLock, SkipRecord, StoreError, WorkerReport, WorkerState};
use crate::diff::{self, DiffError, ProjectorDiff, TableFilter};
use crate::machine::{self, Cell, Command, Next};
use crate::model::{self, Description, ReplayState, Role, Target};
use crate::projection::{Progress, Projection, ProjectionError};
use crate::runtime::{Runtime, content_hash};
use crate::sandbox::check_declared_ddl;
pub use parked::{Retried, parked, retry_parked};
pub use rollback::rollback;
pub use run::{RunError, RunOptions, RunStage, RunStep, run};
pub use verify::{Check, CheckOutcome, Verification};

/// Why a lifecycle command failed. Every message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// Bad operator input (a name, a key, a component).
    #[error("{0}")]
    Invalid(String),
    /// The command does not fit the projector's current state, or a step of it failed in a
    /// way that leaves everything as it was.
    #[error("{0}")]
    WrongState(String),
    /// The command does not fit the replay's state: the machine's table refuses it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A check before the promote found live and the clone different; nothing was promoted.
    #[error(
        "replay {key} was not promoted: a check failed (see below); fix the projector and replay \
         again, or pass --force to promote anyway\n{verification}"
    )]
    Unverified {
        /// The replay.
        key: String,
        /// What the checks found.
        verification: Verification,
    },
    /// Another process changed the replay's state between this command's check and its move.
    #[error(
        "replay {key} changed state meanwhile (it was {state} when `{command}` began); check `zdr replay show {key}`"
    )]
    Raced {
        /// The replay.
        key: String,
        /// The state the command saw.
        state: ReplayState,
        /// The command.
        command: Command,
    },
    /// No such replay or projector.
    #[error("{0}")]
    NotFound(String),
    /// Another process holds the replay.
    #[error("{0}")]
    Busy(String),
    /// Projecting failed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, LifecycleError>;

impl From<DiffError> for LifecycleError {
    fn from(err: DiffError) -> Self {
        match err {
            DiffError::Unknown(message) => LifecycleError::Invalid(message),
            DiffError::Store(err) => LifecycleError::Store(err),
        }
    }
}

/// A command the replay's state does not allow, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay {key} {}", hint.replace("{key}", key))]
pub struct Refusal {
    /// The replay.
    pub key: String,
    /// Its state.
    pub state: ReplayState,
    /// What was asked.
    pub command: Command,
    /// Why not, and what to do (`{key}` stands for the key).
    pub hint: &'static str,
}

/// Where `command` moves replay `row`, or the refusal the table gives.
fn checked_move(row: &ReplayRow, command: Command) -> Result<Next> {
    match machine::cell(row.state, command) {
        Cell::Move(next) => Ok(next),
        Cell::Refuse(hint) => Err(Refusal {
            key: row.key.clone(),
            state: row.state,
            command,
            hint,
        }
        .into()),
    }
}

/// Applies `command`'s move of replay `row` to `to` as a compare-and-set from the state the
/// command saw, inside the caller's transaction.
fn apply_move(db: &Db, row: &ReplayRow, command: Command, to: ReplayState) -> Result<()> {
    if db.transition(&row.key, &[row.state], to, None)? {
        Ok(())
    } else {
        Err(LifecycleError::Raced {
            key: row.key.clone(),
            state: row.state,
            command,
        })
    }
}

/// A projector component to register: the name the operator gave and the file's bytes.
pub struct ComponentSpec {
    /// The projector name it must describe itself as.
    pub name: String,
    /// Where it came from, for messages.
    pub source: String,
    /// The component's bytes.
    pub wasm: Vec<u8>,
}

/// Loads, describes and checks a component before anything is written.
fn describe_checked(runtime: &Runtime, db: &Db, spec: &ComponentSpec) -> Result<Description> {
    model::validate_projector_name(&spec.name).map_err(LifecycleError::Invalid)?;
    let description = runtime
        .describe(&spec.wasm)
        .map_err(|err| LifecycleError::Invalid(format!("{}: {err:#}", spec.source)))?;
    if description.name != spec.name {
        return Err(LifecycleError::Invalid(format!(
            "{} describes itself as projector {:?}, not {:?}; use the name it declares",
            spec.source, description.name, spec.name
        )));
    }
    let mut seen = BTreeSet::new();
    for table in &description.tables {
        if !seen.insert(table.name.to_ascii_lowercase()) {
            return Err(LifecycleError::Invalid(format!(
                "{} declares table {:?} twice",
                spec.source, table.name
            )));
        }
        check_declared_ddl(db.dialect(), &table.name, &table.ddl).map_err(|err| {
            LifecycleError::Invalid(format!("{}: table {}: {err}", spec.source, table.name))
        })?;
    }
    Ok(description)
}

/// Refuses tables that another projector owns, or that exist in the database without zdr
/// knowing them, or that views and triggers depend on.
fn check_tables_free(db: &Db, description: &Description) -> Result<()> {
    for live in db.live_targets()? {
        if live.projector == description.name {
            continue;
        }
        let other = db.description(live.version_id)?;
        for table in &description.tables {
            if other
                .tables
                .iter()
                .any(|t| t.name.eq_ignore_ascii_case(&table.name))
            {
                return Err(LifecycleError::Invalid(format!(
                    "table {:?} already belongs to projector {:?}; each table has one owner",
                    table.name, live.projector
                )));
            }
        }
    }
    Ok(())
}

/// Refuses declared tables that already exist in the database without belonging to this
/// projector (`owned`: the tables its live version has): zdr never takes over a table it does
/// not manage.
fn check_unmanaged_free(db: &Db, description: &Description, owned: &[String]) -> Result<()> {
    for table in &description.tables {
        let is_owned = owned.iter().any(|o| o.eq_ignore_ascii_case(&table.name));
        if !is_owned && db.object_exists(&table.name)? {
            return Err(LifecycleError::Invalid(format!(
                "a table named {:?} already exists and zdr does not manage it; drop or rename it, or rename the projector's table",
                table.name
            )));
        }
    }
    Ok(())
}

fn check_no_dependents(db: &Db, tables: &[String]) -> Result<()> {
    for table in tables {
        let dependents = db.dependents_of(table)?;
        if !dependents.is_empty() {
            return Err(LifecycleError::Invalid(format!(
                "table {table:?} is used by {}; zdr swaps tables by renaming them, which these would not follow. \
                 Drop them or move them into the projector",
                dependents.join(", ")
            )));
        }
    }
    Ok(())
}

// ----- projectors ---------------------------------------------------------------------------

/// What `deploy` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployed {
    /// A new projector, built from history and now live.
    New {
        /// Version string.
        version: String,
        /// Events replayed to build it.
        events: u64,
    },
    /// The same component is already live; nothing changed.
    Unchanged {
        /// Version string.
        version: String,
    },
    /// An existing projector upgraded with a zero-downtime replay under `key`.
    Upgraded {
        /// The version that was live.
        from: String,
        /// The version now live.
        to: String,
        /// The content hash of the code that was live.
        from_hash: String,
        /// The content hash of the code now live.
        to_hash: String,
        /// The replay that did it.
        key: String,
    },
}

/// Deploys a projector. A new one is built from history into tables of its own, then renamed
/// into place under the write lock, so it never serves a half-built read model. An existing
/// one is upgraded by a full replay (create, start, project, promote, remove) under a generated
/// key: zero downtime, and the live read model stays the fold of all events through the version
/// that is live.
///
/// # Errors
/// An invalid component, tables that are taken, a guest failure while building, or a
/// database failure.
pub fn deploy(
    runtime: &Runtime,
    db: &Db,
    spec: &ComponentSpec,
    options: &DeployOptions,
    progress: &mut dyn FnMut(&Target, Progress),
) -> Result<Deployed> {
    let batch_size = options.batch_size;
    let description = describe_checked(runtime, db, spec)?;
    let hash = content_hash(&spec.wasm);
    if let Some(live) = db.live_target(&spec.name)? {
        let (_, live_hash) = db.description_and_hash(live.version_id)?;
        if live_hash == hash {
            return Ok(Deployed::Unchanged {
                version: live.version,
            });
        }
        if live.version == description.version && !options.allow_same_version {
            return Err(LifecycleError::Invalid(format!(
                "{} version {} is live with other code (content {} live, {} in {}): give the new \
                 build a new version in describe(), or pass --allow-same-version to replace the \
                 live code with a zero-downtime replay",
                spec.name,
                live.version,
                short_hash(&live_hash),
                short_hash(&hash),
                spec.source
            )));
        }
        // The promote at the end would refuse; say so before the replay, with what deploy
        // (which has no --force) can do instead.
        let parked = db.count_parked(live.id)?;
        if parked > 0 {
            return Err(LifecycleError::WrongState(format!(
                "projector {name} has {parked} parked event(s) on its live version {version} \
                 (see `zdr projector parked {name}`): retry or skip them first, so that the \
                 version you replace leaves nothing behind unseen; or upgrade with `zdr replay \
                 run KEY --projector {name}={source} --promote --force`, which promotes anyway \
                 (the new version applies every event, the parked ones too)",
                name = spec.name,
                version = live.version,
                source = spec.source
            )));
        }
        let key = format!("upgrade_{}", &hash[..12]);
        create(runtime, db, &key, std::slice::from_ref(spec))?;
        let rebuilt = start(runtime, db, &key, batch_size, options.partitions, progress)
            .and_then(|_| project(runtime, db, &key, batch_size, progress))
            .and_then(|()| promote(runtime, db, &key, &PromoteOptions::default()));
        if let Err(err) = rebuilt {
            // All or nothing: the old version keeps serving and the half-built clone goes.
            if let Err(cleanup) = remove(runtime, db, &key, true) {
                tracing::error!(
                    key,
                    "could not drop the aborted upgrade's replay: {cleanup}"
                );
            }
            return Err(LifecycleError::WrongState(format!(
                "upgrade of {} to version {} aborted, version {} keeps serving: {err}",
                spec.name, description.version, live.version
            )));
        }
        remove(runtime, db, &key, false)?;
        return Ok(Deployed::Upgraded {
            from: live.version,
            to: description.version,
            from_hash: live_hash,
            to_hash: hash,
            key,
        });
    }
    check_tables_free(db, &description)?;
    check_unmanaged_free(db, &description, &[])?;
    let _deploying = take_lock(db, &format!("deploy-{}", spec.name), || {
        format!(
            "projector {} is being deployed by another zdr process; wait for it to finish",
            spec.name
        )
    })?;
    // A build left by a deploy that was killed: no process holds it (we have the deploy
    // lock), so discard it and build afresh.
    for leftover in db.targets_of_projector(&spec.name)? {
        if leftover.role == Role::Building {
            tracing::info!(projector = %spec.name, "discarding an unfinished earlier deploy");
            discard_build(db, &leftover)?;
        }
    }
    let target = db.write(|db| {
        let version_id = db.register_version(&hash, &spec.wasm, &description)?;
        let target = db.insert_target(&spec.name, version_id, Role::Building, None)?;
        db.create_tables(&target, &description)?;
        Ok::<_, LifecycleError>(target)
    })?;
    let mut projection = Projection::new(runtime, db, batch_size);
    // Split by aggregate where the projector and the database allow it, like a replay.
    let built = split::replay_split(
        runtime,
        db,
        &target,
        options.partitions,
        batch_size,
        progress,
    )
    .and_then(|split| Ok(split + projection.catch_up(target.id, progress)?));
    let events = match built {
        Ok(events) => events,
        Err(err) => {
            // Nothing half-built is left behind: fix the projector and deploy again.
            discard_build(db, &target)?;
            return Err(err);
        }
    };
    // The last gap closes inside the write lock, together with the switch to live.
    db.write(|db| {
        let building = db.target(target.id)?.ok_or_else(|| {
            LifecycleError::NotFound(format!("the build of {} disappeared", spec.name))
        })?;
        projection.apply_up_to(&building, db.head()?)?;
        db.rename_tables(&building, &description, Role::Live, None)?;
        db.set_role(building.id, Role::Live, None)?;
        Ok::<_, LifecycleError>(())
    })?;
    Ok(Deployed::New {
        version: description.version,
        events,
    })
}

/// How a deploy goes about it.
#[derive(Debug, Clone, Copy)]
pub struct DeployOptions {
    /// Events per transaction while building or replaying.
    pub batch_size: usize,
    /// Replace a live version with different code of the same version string.
    pub allow_same_version: bool,
    /// Into how many parts the build from history (or an upgrade's replay) may split it (see
    /// [`start`]).
    pub partitions: u32,
}

/// The first twelve hex digits of a content hash: enough to tell builds apart in a message.
pub fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Drops the tables and the row of a `building` target.
fn discard_build(db: &Db, target: &Target) -> Result<()> {
    let description = db.description(target.version_id)?;
    db.write(|db| {
        db.drop_tables(target, &description)?;
        db.delete_target(target.id)
    })?;
    Ok(())
}

/// Clears a live projector's recorded failure so the daemon retries from its checkpoint.
///
/// # Errors
/// An unknown projector, or one that is not stopped.
pub fn resume_projector(db: &Db, name: &str) -> Result<i64> {
    let live = db.live_target(name)?.ok_or_else(|| {
        LifecycleError::NotFound(format!(
            "no live projector named {name:?}; see `zdr projector list`"
        ))
    })?;
    if live.failure.is_none() {
        return Err(LifecycleError::WrongState(format!(
            "projector {name} is not stopped; nothing to resume"
        )));
    }
    db.clear_failure(live.id)?;
    Ok(live.checkpoint)
}

// ----- replays ------------------------------------------------------------------------------

fn replay_row(db: &Db, key: &str) -> Result<ReplayRow> {
    model::validate_replay_key(key).map_err(LifecycleError::Invalid)?;
    db.replay(key)?.ok_or_else(|| {
        LifecycleError::NotFound(format!("no replay named {key:?}; see `zdr replay list`"))
    })
}

/// How long a command waits for a replay's run lock before saying another process holds it:
/// long enough to ride out a lock held for an instant (a process that just ended, a child
/// process that inherited the lock for the moment between its fork and its exec), short enough
/// that a running `replay start` is reported at once.
const RUN_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(250);

/// Takes lock `name`, waiting up to [`RUN_LOCK_PATIENCE`]; `busy` says who holds it.
fn take_lock(db: &Db, name: &str, busy: impl FnOnce() -> String) -> Result<RunLock> {
    let started = std::time::Instant::now();
    loop {
        if let Some(lock) = db.try_lock(name)? {
            return Ok(lock);
        }
        if started.elapsed() >= RUN_LOCK_PATIENCE {
            return Err(LifecycleError::Busy(busy()));
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

fn run_lock(db: &Db, key: &str) -> Result<RunLock> {
    take_lock(db, &format!("replay-{key}"), || {
        format!(
            "replay {key} is held by another zdr process (a `replay start`, `project` or `promote` is running); wait for it to finish"
        )
    })
}

/// Creates replay `key`: registers each projector's new version and creates its clone tables
/// beside the live ones, from the new version's DDL.
///
/// # Errors
/// A bad key, a key in use, an invalid component, a projector that is not deployed, or a
/// database failure. Nothing is written unless every check passes.
pub fn create(
    runtime: &Runtime,
    db: &Db,
    key: &str,
    specs: &[ComponentSpec],
) -> Result<Vec<Target>> {
    model::validate_replay_key(key).map_err(LifecycleError::Invalid)?;
    if specs.is_empty() {
        return Err(LifecycleError::Invalid(
            "a replay needs at least one projector: --projector NAME=FILE.wasm".into(),
        ));
    }
    let mut checked = Vec::new();
    for spec in specs {
        if checked
            .iter()
            .any(|(s, _): &(&ComponentSpec, Description)| s.name == spec.name)
        {
            return Err(LifecycleError::Invalid(format!(
                "projector {} is named twice",
                spec.name
            )));
        }
        let description = describe_checked(runtime, db, spec)?;
        let live = db.live_target(&spec.name)?.ok_or_else(|| {
            LifecycleError::NotFound(format!(
                "projector {:?} is not deployed; deploy it first with `zdr projector deploy {} FILE.wasm`",
                spec.name, spec.name
            ))
        })?;
        check_tables_free(db, &description)?;
        let live_description = db.description(live.version_id)?;
        check_unmanaged_free(db, &description, &live_description.table_names())?;
        check_no_dependents(db, &live_description.table_names())?;
        checked.push((spec, description));
    }
    if db.replay(key)?.is_some() {
        return Err(LifecycleError::WrongState(format!(
            "replay {key} already exists; pick another key, or remove it with `zdr replay remove {key}`"
        )));
    }
    db.write(|db| {
        if !db.insert_replay(key)? {
            return Err(LifecycleError::WrongState(format!("replay {key} already exists")));
        }
        let mut targets = Vec::new();
        for (spec, description) in &checked {
            let version_id = db.register_version(&content_hash(&spec.wasm), &spec.wasm, description)?;
            let target = db.insert_target(&spec.name, version_id, Role::Clone, Some(key))?;
            for name in db.physical_names(&target, description, Role::Clone, Some(key)) {
                if db.object_exists(&name)? {
                    return Err(LifecycleError::WrongState(format!(
                        "table {name} already exists (left over from an earlier replay?); drop it first"
                    )));
                }
            }
            db.create_tables(&target, description)?;
            targets.push(target);
        }
        Ok(targets)
    })
}

/// Replays history into the clone(s) of `key`, batch by batch, until they reach the head of
/// the store. Resumable: each batch commits with its checkpoint, and a failed replay restarts
/// at the event that failed.
///
/// A projector of the `partitioned-projector` world is replayed split by aggregate into
/// `partitions` parts, each on a worker and a connection of its own, where the database
/// allows it (PostgreSQL, MySQL; see `split.rs`); 1 replays it whole.
///
/// # Errors
/// A wrong state, another run holding the replay, a guest failure (the replay goes to
/// `failed`), or a database failure.
pub fn start(
    runtime: &Runtime,
    db: &Db,
    key: &str,
    batch_size: usize,
    partitions: u32,
    progress: &mut dyn FnMut(&Target, Progress),
) -> Result<u64> {
    let replay = replay_row(db, key)?;
    let Next::State(to) = checked_move(&replay, Command::Start)? else {
        return Err(StoreError::Corrupt("start leads to a state".into()).into());
    };
    let _lock = run_lock(db, key)?;
    // Read again under the run lock: the state may have moved since.
    let replay = replay_row(db, key)?;
    checked_move(&replay, Command::Start)?;
    db.write(|db| {
        apply_move(db, &replay, Command::Start, to)?;
        for target in db.replay_targets(key)? {
            db.clear_failure(target.id)?;
        }
        Ok::<_, LifecycleError>(())
    })?;
    let mut projection = Projection::new(runtime, db, batch_size);
    let mut total = 0;
    for target in db.replay_targets(key)? {
        // Split by aggregate where the projector and the database allow it, then whole
        // from where the parts joined to the head.
        let outcome = split::replay_split(runtime, db, &target, partitions, batch_size, progress)
            .and_then(|split| Ok(split + projection.catch_up(target.id, progress)?));
        let to = match db.target(target.id) {
            Ok(found) => found.map_or(target.checkpoint, |t| t.checkpoint),
            Err(err) if outcome.is_err() => {
                tracing::debug!("cannot read the checkpoint after a failed run: {err}");
                target.checkpoint
            }
            Err(err) => return Err(err.into()),
        };
        let applied = *outcome.as_ref().unwrap_or(&0);
        let result = match &outcome {
            Ok(_) => "ok".to_string(),
            Err(err) => format!("failed: {err}"),
        };
        let recorded = db.record_run(
            &target,
            "start",
            target.checkpoint,
            to,
            applied as i64,
            &result,
        );
        // The run's own error says why it stopped; a failure to record it (often the same
        // cause, seen second) must not hide it.
        total += outcome?;
        recorded?;
    }
    Ok(total)
}

/// Catches the clone(s) of `key` up, then — inside the per-projector lock — closes the last
/// gap for both live and clone and turns on dual writes, so that no event can fall between the
/// lag check and the switch.
///
/// # Errors
/// A wrong state (never started, failed, already projecting), another run, a guest failure,
/// or a database failure.
pub fn project(
    runtime: &Runtime,
    db: &Db,
    key: &str,
    batch_size: usize,
    progress: &mut dyn FnMut(&Target, Progress),
) -> Result<()> {
    let replay = replay_row(db, key)?;
    let Next::State(to) = checked_move(&replay, Command::Project)? else {
        return Err(StoreError::Corrupt("project leads to a state".into()).into());
    };
    let _lock = run_lock(db, key)?;
    let mut projection = Projection::new(runtime, db, batch_size);
    for target in db.replay_targets(key)? {
        // A `replay start` stopped half-way through a split leaves parts to finish first.
        split::replay_split(runtime, db, &target, 1, batch_size, progress)?;
        projection.catch_up(target.id, progress)?;
        // Both versions are compiled before the write lock is taken, never under it.
        if let Some(live) = db.live_target(&target.projector)? {
            projection.prepare(&[live, target])?;
        }
    }
    db.write(|db| {
        let head = db.head()?;
        for clone in db.replay_targets(key)? {
            let live = db.live_target(&clone.projector)?.ok_or_else(|| {
                LifecycleError::WrongState(format!("projector {} has no live version any more", clone.projector))
            })?;
            // A live projector stopped at a failure does not move; the clone is what will
            // replace it, so only the clone is brought to the head (promote does the rest).
            let targets: Vec<&Target> = if live.failure.is_some() {
                tracing::warn!(projector = %live.projector, "live is stopped at a failure: projecting into the clone only");
                vec![&clone]
            } else {
                vec![&live, &clone]
            };
            for target in targets {
                projection.apply_up_to(target, head)?;
            }
        }
        apply_move(db, &replay, Command::Project, to)
    })
}

/// Swaps the clone(s) of `key` in as live, in one transaction between two live batches: the
/// projector may veto, the live tables are renamed out (kept for rollback until `remove`), the
/// clone's renamed in, and the live target and its checkpoint switch over. Readers see the
/// old tables or the new ones, never neither. The daemon notices the new live version at its
/// next batch and hot-swaps the running code.
///
/// # Errors
/// A wrong state (not projecting, a clone failed or out of step), a veto, or a database failure.
pub fn promote(
    runtime: &Runtime,
    db: &Db,
    key: &str,
    options: &PromoteOptions,
) -> Result<Promoted> {
    let replay = replay_row(db, key)?;
    checked_move(&replay, Command::Promote)?;
    if let Some(max_lag) = options.max_lag {
        wait_for_lag(db, key, max_lag, options.timeout)?;
    }
    let _lock = run_lock(db, key)?;
    if !options.force {
        for clone in db.replay_targets(key)? {
            let Some(live) = db.live_target(&clone.projector)? else {
                continue;
            };
            let parked = db.count_parked(live.id)?;
            if parked > 0 {
                return Err(LifecycleError::WrongState(format!(
                    "projector {} has {parked} parked event(s) on its live version {} (see `zdr \
                     projector parked {}`): retry or skip them first, so that the version you \
                     replace leaves nothing behind unseen, or pass --force to promote anyway (the \
                     clone applied them all, as every replay does)",
                    live.projector, live.version, live.projector
                )));
            }
        }
    }
    let verification = match &options.verify {
        Some(checks) => {
            let verification = verify::verify(runtime, db, key, checks, diff::DEFAULT_SAMPLE)?;
            if !verification.passed() {
                if !options.force {
                    return Err(LifecycleError::Unverified {
                        key: key.to_string(),
                        verification,
                    });
                }
                tracing::warn!(
                    key,
                    "promoting although a check failed (--force):\n{verification}"
                );
            }
            Some(verification)
        }
        None => None,
    };
    let mut projection = Projection::new(runtime, db, crate::projection::DEFAULT_BATCH_SIZE);
    // The new version is compiled and instantiated before the write lock is taken: a
    // component not yet in the compile cache takes seconds, and every writer would wait.
    for clone in db.replay_targets(key)? {
        projection.prepare(std::slice::from_ref(&clone))?;
        projection.instance(&clone).map_err(|err| {
            LifecycleError::WrongState(format!(
                "cannot start version {} of {} to promote it: {err}",
                clone.version, clone.projector
            ))
        })?;
    }
    let targets = retry_on_lock_timeout(|| promote_once(&mut projection, db, &replay))?;
    Ok(Promoted {
        targets,
        verification,
    })
}

/// How a promote goes about it.
#[derive(Debug, Clone)]
pub struct PromoteOptions {
    /// Checks to pass first (`--verify`); `Some` with no checks compares every table both
    /// versions have on their common columns. `None` promotes without checking.
    pub verify: Option<Vec<Check>>,
    /// Promote even when a check fails.
    pub force: bool,
    /// Wait until every clone is within this many events of the head before taking the lock,
    /// so the catch-up under the lock stays short.
    pub max_lag: Option<i64>,
    /// How long to wait for that.
    pub timeout: Duration,
}

impl Default for PromoteOptions {
    fn default() -> Self {
        Self {
            verify: None,
            force: false,
            max_lag: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// What a promote did.
#[derive(Debug, Clone)]
pub struct Promoted {
    /// The targets now live.
    pub targets: Vec<Target>,
    /// What the checks found, when asked for.
    pub verification: Option<Verification>,
}

/// Waits until every clone of replay `key` is within `max_lag` events of the head.
fn wait_for_lag(db: &Db, key: &str, max_lag: i64, timeout: Duration) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let status = status(db, key)?;
        let behind = status.projectors.iter().find(|p| p.lag > max_lag);
        let Some(part) = behind else {
            return Ok(());
        };
        if started.elapsed() >= timeout {
            return Err(LifecycleError::WrongState(format!(
                "the clone of {} in replay {key} is still {} event(s) behind the head after {} s \
                 (--max-lag {max_lag}): is `zdr serve` running to project it? Try again, or raise \
                 --max-lag or --timeout",
                part.projector,
                part.lag,
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How often a promote is retried when readers hold the tables past the lock timeout.
const PROMOTE_ATTEMPTS: u32 = 40;

/// Runs `attempt` again while it fails only because a table lock timed out (PostgreSQL
/// gives up waiting for readers after a short `lock_timeout`, so that readers queued behind
/// the promote never wait long); each failed attempt rolled back completely.
fn retry_on_lock_timeout<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tries = 1;
    loop {
        match attempt() {
            Err(LifecycleError::Store(StoreError::LockTimeout(what)))
                if tries < PROMOTE_ATTEMPTS =>
            {
                tracing::debug!(tries, "{what}: lock timeout, retrying");
                std::thread::sleep(std::time::Duration::from_millis(
                    20 * u64::from(tries.min(10)),
                ));
                tries += 1;
            }
            other => return other,
        }
    }
}

/// One attempt at a promote: one transaction that swaps every clone of replay `replay` in.
fn promote_once(
    projection: &mut Projection<'_>,
    db: &Db,
    replay: &ReplayRow,
) -> Result<Vec<Target>> {
    let key = replay.key.as_str();
    db.write(|db| {
        let clones = db.replay_targets(key)?;
        let mut promoted = Vec::new();
        for clone in &clones {
            let live = db.live_target(&clone.projector)?.ok_or_else(|| {
                LifecycleError::WrongState(format!("projector {} has no live version", clone.projector))
            })?;
            if let Some(failure) = &clone.failure {
                return Err(LifecycleError::WrongState(format!(
                    "the clone of {} failed at event {}: {}",
                    clone.projector, failure.event_id, failure.message
                )));
            }
            if live.failure.is_some() {
                // Live is stopped, so nothing dual-wrote the clone: it catches up to the head
                // here, inside the lock, and replaces the stopped version.
                projection.apply_up_to(clone, db.head()?)?;
            } else if clone.checkpoint != live.checkpoint {
                return Err(LifecycleError::WrongState(format!(
                    "the clone of {} is at event {} but live is at {}: not caught up; run `zdr replay lag {key}`",
                    clone.projector, clone.checkpoint, live.checkpoint
                )));
            }
            projection.instance(clone)?.promote().map_err(|err| {
                LifecycleError::WrongState(format!("projector {} vetoed the promote: {err}", clone.projector))
            })?;
            let live_description = projection.description(&live)?;
            let clone_description = projection.description(clone)?;
            // One move of both sets: on MySQL it is one RENAME TABLE, atomic for readers.
            let mut moves = db.table_moves(&live, &live_description, Role::Retired, Some(key));
            moves.extend(db.table_moves(clone, &clone_description, Role::Live, None));
            db.move_tables(&moves)?;
            db.set_role(live.id, Role::Retired, Some(key))?;
            db.set_role(clone.id, Role::Live, None)?;
            promoted.push(clone.clone());
        }
        apply_move(db, replay, Command::Promote, ReplayState::Promoted)?;
        Ok(promoted)
    })
}

/// Drops what replay `key` left: its clone tables (not yet promoted) or the former live tables
/// (after a promote). Never touches the live tables. A projecting replay is only removed with
/// `force`, since removing it stops its dual writes.
///
/// # Errors
/// An unknown key, a projecting replay without `force`, another run, or a database failure.
pub fn remove(runtime: &Runtime, db: &Db, key: &str, force: bool) -> Result<usize> {
    let replay = replay_row(db, key)?;
    let command = if force {
        Command::ForceRemove
    } else {
        Command::Remove
    };
    checked_move(&replay, command)?;
    let _lock = run_lock(db, key)?;
    let mut projection = Projection::new(runtime, db, 1);
    // Compiled outside the write lock, to call `remove-target` inside it.
    for target in db.replay_targets(key)? {
        if let Err(err) = projection.prepare(std::slice::from_ref(&target)) {
            tracing::warn!(projector = %target.projector, "cannot load the version to call remove(): {err}");
        }
    }
    db.write(|db| {
        let targets = db.replay_targets(key)?;
        for target in &targets {
            if target.role == Role::Live {
                return Err(LifecycleError::WrongState(format!(
                    "target {} of replay {key} is live; refusing to drop live tables",
                    target.id
                )));
            }
            let description = projection.description(target)?;
            match projection.instance(target).map(|i| i.remove()) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(projector = %target.projector, "remove() failed, dropping anyway: {err}"),
                Err(err) => tracing::warn!(projector = %target.projector, "could not call remove(), dropping anyway: {err}"),
            }
            db.drop_tables(target, &description)?;
            db.delete_target(target.id)?;
        }
        db.delete_replay(key)?;
        Ok(targets.len())
    })
}

/// One projector's part of a replay, for `show` and `lag`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayPart {
    /// Projector name.
    pub projector: String,
    /// The version in the replay's target.
    pub version: String,
    /// The target's role: clone, or retired after a promote.
    pub role: Role,
    /// The target's checkpoint.
    pub checkpoint: i64,
    /// Events in the store after the checkpoint.
    pub lag: i64,
    /// The live version and checkpoint, for comparison.
    pub live_version: Option<String>,
    /// The live target's checkpoint.
    pub live_checkpoint: Option<i64>,
    /// Whether the live projector moves: while projecting, the clone moves with it.
    pub live_status: Option<ServingStatus>,
    /// Why the live projector is stopped, stuck or unserved.
    pub live_status_reason: Option<String>,
    /// The recorded failure, if any.
    pub failure: Option<model::Failure>,
    /// Physical table names.
    pub tables: Vec<String>,
    /// While `replay start` replays it split by aggregate: each part's checkpoint, up to the
    /// head the split began at (the target's own checkpoint moves when they join).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitPart>,
}

/// One part of a replay split by aggregate, as `replay show` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SplitPart {
    /// Which part, from 0.
    pub part: u32,
    /// Into how many parts history is split.
    pub parts: u32,
    /// The last event of this part applied.
    pub checkpoint: i64,
    /// The head the split began at.
    pub head: i64,
}

/// A replay with its parts, for `show`, `lag` and `list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayStatus {
    /// The key.
    pub key: String,
    /// Lifecycle state.
    pub state: ReplayState,
    /// The last error.
    pub error: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last state change.
    pub updated_at: String,
    /// The head of the event store.
    pub head: i64,
    /// The largest lag of its parts.
    pub lag: i64,
    /// One entry per projector.
    pub projectors: Vec<ReplayPart>,
}

/// Compares each projector's tables in replay `key` with live, in one read snapshot: the
/// clone before a promote, the former live tables after one. `filters` pick tables and
/// columns (each must name a table some projector of the replay has in both versions).
///
/// # Errors
/// An unknown key, a filter that names nothing, or a database failure.
pub fn diff(
    db: &Db,
    key: &str,
    filters: &[TableFilter],
    sample: usize,
) -> Result<Vec<ProjectorDiff>> {
    replay_row(db, key)?;
    let filters = TableFilter::merged(filters);
    let filters = filters.as_slice();
    db.read_snapshot(|db| {
        let mut diffs = Vec::new();
        for target in db.replay_targets(key)? {
            let live = db.live_target(&target.projector)?.ok_or_else(|| {
                LifecycleError::NotFound(format!(
                    "projector {} has no live version to compare replay {key} with",
                    target.projector
                ))
            })?;
            let live_description = db.description(live.version_id)?;
            let replay_description = db.description(target.version_id)?;
            diffs.push(diff::diff_targets(
                db,
                &live,
                &live_description,
                &target,
                &replay_description,
                filters,
                sample,
            )?);
        }
        for filter in filters {
            let found = diffs.iter().any(|d| {
                d.tables
                    .iter()
                    .any(|t| t.table.eq_ignore_ascii_case(&filter.table))
            });
            if !found {
                return Err(LifecycleError::Invalid(format!(
                    "no projector of replay {key} has a table {:?} in both versions",
                    filter.table
                )));
            }
        }
        Ok(diffs)
    })
}

/// The state of replay `key` with each projector's checkpoint and lag.
///
/// # Errors
/// An unknown key or a database failure.
pub fn status(db: &Db, key: &str) -> Result<ReplayStatus> {
    let row = replay_row(db, key)?;
    status_of(db, row)
}

/// The status of every replay.
///
/// # Errors
/// A database failure.
pub fn list(db: &Db) -> Result<Vec<ReplayStatus>> {
    db.replays()?
        .into_iter()
        .map(|row| status_of(db, row))
        .collect()
}

fn status_of(db: &Db, row: ReplayRow) -> Result<ReplayStatus> {
    let head = db.head()?;
    let reports = db.worker_reports()?;
    let mut projectors = Vec::new();
    for target in db.replay_targets(&row.key)? {
        let live = db.live_target(&target.projector)?;
        let description = db.description(target.version_id)?;
        let (live_status, live_status_reason) = match &live {
            Some(live) => {
                let report = reports.iter().find(|r| r.projector == live.projector);
                let (status, reason, _) = serving_status(live, report);
                (Some(status), reason)
            }
            None => (None, None),
        };
        projectors.push(ReplayPart {
            projector: target.projector.clone(),
            version: target.version.clone(),
            role: target.role,
            checkpoint: target.checkpoint,
            lag: (head - target.checkpoint).max(0),
            live_version: live.as_ref().map(|l| l.version.clone()),
            live_checkpoint: live.as_ref().map(|l| l.checkpoint),
            live_status,
            live_status_reason,
            failure: target.failure.clone(),
            split: db
                .partitions(target.id)?
                .into_iter()
                .map(|row| SplitPart {
                    part: row.part.index,
                    parts: row.part.count,
                    checkpoint: row.checkpoint,
                    head: row.head,
                })
                .collect(),
            tables: db.physical_names(
                &target,
                &description,
                target.role,
                target.replay_key.as_deref(),
            ),
        });
    }
    let lag = projectors.iter().map(|p| p.lag).max().unwrap_or(0);
    Ok(ReplayStatus {
        key: row.key,
        state: row.state,
        error: row.error,
        created_at: row.created_at,
        updated_at: row.updated_at,
        head,
        lag,
        projectors,
    })
}

/// How long a worker may stay silent before its projector counts as stuck: several
/// heartbeats, and longer than the longest batch (its time budget plus one guest call).
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// Whether a live projector is moving, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServingStatus {
    /// A daemon projects it: events are applied as they arrive.
    Running,
    /// Stopped at a failure on an event until resumed, skipped past or replaced.
    Stopped,
    /// Its daemon cannot make progress (a lost connection, a database error), or has gone
    /// quiet: events wait.
    Stuck,
    /// No `zdr serve` projects it: new events wait until one does.
    Unserved,
}

impl std::fmt::Display for ServingStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServingStatus::Running => "running",
            ServingStatus::Stopped => "stopped",
            ServingStatus::Stuck => "stuck",
            ServingStatus::Unserved => "unserved",
        })
    }
}

/// The status of live target `live` given its worker's last report: the status, why, and
/// since when.
fn serving_status(
    live: &Target,
    report: Option<&WorkerReport>,
) -> (ServingStatus, Option<String>, Option<String>) {
    if let Some(failure) = &live.failure {
        return (
            ServingStatus::Stopped,
            Some(format!(
                "at event {}: {}",
                failure.event_id, failure.message
            )),
            None,
        );
    }
    match report {
        None => (
            ServingStatus::Unserved,
            Some("no `zdr serve` is projecting it".into()),
            None,
        ),
        Some(report) if report.seen_secs_ago > STALE_AFTER.as_secs_f64() => (
            ServingStatus::Stuck,
            Some(format!(
                "no word from its daemon {} since {} ({:.0} s ago): it stopped or cannot reach the database",
                report.daemon, report.seen_at, report.seen_secs_ago
            )),
            Some(report.seen_at.clone()),
        ),
        Some(WorkerReport {
            state: WorkerState::Stuck(reason),
            since,
            ..
        }) => (
            ServingStatus::Stuck,
            Some(reason.clone()),
            Some(since.clone()),
        ),
        Some(report) => (ServingStatus::Running, None, Some(report.since.clone())),
    }
}

/// A live projector, for `projector list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectorStatus {
    /// Name.
    pub name: String,
    /// Live version.
    pub version: String,
    /// The SHA-256 of the live version's component: two builds of one version differ here.
    pub content_hash: String,
    /// Live checkpoint.
    pub checkpoint: i64,
    /// Events after the checkpoint.
    pub lag: i64,
    /// Live table names.
    pub tables: Vec<String>,
    /// Handled event classes (empty: all).
    pub handles: Vec<String>,
    /// Whether it moves.
    pub status: ServingStatus,
    /// Why it is stopped, stuck or unserved.
    pub status_reason: Option<String>,
    /// Since when it is in that status, where known (ISO-8601, UTC).
    pub status_since: Option<String>,
    /// The daemon serving it (`host:pid`), if one reports.
    pub daemon: Option<String>,
    /// The failure it is stopped at.
    pub failure: Option<model::Failure>,
    /// Events an operator let it pass, oldest first.
    pub skipped: Vec<SkipRecord>,
    /// Events it parked (`on_failure = "park"`) and nobody retried or skipped yet.
    pub parked: i64,
}

/// Every live projector with its version, checkpoint and status.
///
/// # Errors
/// A database failure.
pub fn projectors(db: &Db) -> Result<Vec<ProjectorStatus>> {
    let head = db.head()?;
    let reports = db.worker_reports()?;
    let mut out = Vec::new();
    for live in db.live_targets()? {
        let (description, content_hash) = db.description_and_hash(live.version_id)?;
        let report = reports.iter().find(|r| r.projector == live.projector);
        let (status, status_reason, status_since) = serving_status(&live, report);
        out.push(ProjectorStatus {
            name: live.projector.clone(),
            version: live.version.clone(),
            content_hash,
            checkpoint: live.checkpoint,
            lag: (head - live.checkpoint).max(0),
            tables: description.table_names(),
            handles: description.handles.clone(),
            status,
            status_reason,
            status_since,
            daemon: report.map(|r| r.daemon.clone()),
            failure: live.failure.clone(),
            skipped: db.skips(live.id)?,
            parked: db.count_parked(live.id)?,
        });
    }
    Ok(out)
}

/// What `skip_event` let go of.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The live target, as it was.
    pub live: Target,
    /// Whether the event was parked (rather than the one live was stopped at).
    pub was_parked: bool,
}

/// Lets live projector `name`, stopped at event `event_id`, pass that event: the skip is
/// recorded with `reason` and `by`, the failure cleared, and the daemon goes on after it. An
/// event the projector parked leaves the dead-letter table for the skips instead. Only
/// live projectors skip; a replay must be exact, so it fails at the same event until the
/// projector handles it.
///
/// # Errors
/// No such projector, one that is not stopped or stopped at another event, an empty reason,
/// or a database failure.
pub fn skip_event(db: &Db, name: &str, event_id: i64, reason: &str, by: &str) -> Result<Skipped> {
    if reason.trim().is_empty() {
        return Err(LifecycleError::Invalid(
            "say why the event is skipped with --reason; it is recorded with the skip".into(),
        ));
    }
    db.write(|db| {
        let live = db.live_target(name)?.ok_or_else(|| {
            LifecycleError::NotFound(format!(
                "no live projector named {name:?}; see `zdr projector list`"
            ))
        })?;
        if db.skip_parked(&live, event_id, reason.trim(), by)? {
            return Ok(Skipped {
                live,
                was_parked: true,
            });
        }
        match &live.failure {
            None => Err(LifecycleError::WrongState(format!(
                "projector {name} is not stopped at event {event_id}, nor has it parked it; only \
                 the event a projector is stopped at, or one it parked, can be skipped"
            ))),
            Some(failure) if failure.event_id != event_id => {
                Err(LifecycleError::WrongState(format!(
                    "projector {name} is stopped at event {}, not {event_id}; skip that one, or fix it",
                    failure.event_id
                )))
            }
            Some(_) => {
                db.skip_event(&live, event_id, reason.trim(), by)?;
                Ok(Skipped {
                    live,
                    was_parked: false,
                })
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Failure;

    fn live(failure: Option<Failure>) -> Target {
        Target {
            id: 1,
            projector: "balance".into(),
            version_id: 1,
            version: "1".into(),
            role: Role::Live,
            replay_key: None,
            checkpoint: 10,
            failure,
            skip_event_id: None,
        }
    }

    fn report(state: WorkerState, seen_secs_ago: f64) -> WorkerReport {
        WorkerReport {
            projector: "balance".into(),
            daemon: "host:1".into(),
            state,
            since: "2026-11-30T10:00:00.000Z".into(),
            seen_at: "2026-11-30T10:00:05.000Z".into(),
            seen_secs_ago,
        }
    }

    #[test]
    fn nothing_reads_running_unless_a_daemon_says_so_recently() {
        let running = report(WorkerState::Running, 1.0);
        assert_eq!(
            serving_status(&live(None), Some(&running)).0,
            ServingStatus::Running
        );
        assert_eq!(serving_status(&live(None), None).0, ServingStatus::Unserved);
        let quiet = report(WorkerState::Running, STALE_AFTER.as_secs_f64() + 1.0);
        let (status, reason, since) = serving_status(&live(None), Some(&quiet));
        assert_eq!(status, ServingStatus::Stuck);
        assert!(reason.is_some_and(|r| r.contains("host:1") && r.contains("since")));
        assert_eq!(since.as_deref(), Some("2026-11-30T10:00:05.000Z"));
        let stuck = report(WorkerState::Stuck("lost the connection".into()), 1.0);
        let (status, reason, since) = serving_status(&live(None), Some(&stuck));
        assert_eq!(status, ServingStatus::Stuck);
        assert_eq!(reason.as_deref(), Some("lost the connection"));
        assert_eq!(since.as_deref(), Some("2026-11-30T10:00:00.000Z"));
        let failed = live(Some(Failure {
            event_id: 11,
            message: "boom".into(),
        }));
        let (status, reason, _) = serving_status(&failed, Some(&running));
        assert_eq!(status, ServingStatus::Stopped);
        assert_eq!(reason.as_deref(), Some("at event 11: boom"));
    }
}
