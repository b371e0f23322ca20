//! The daemon behind `zdr serve`: a supervisor and one worker per live projector.
//!
//! The supervisor looks for live projectors and starts a worker for each one it can own (a
//! per-projector lock that dies with the process, so a second daemon on the same database
//! leaves it alone). A worker runs on a blocking thread: it polls the head of the event
//! store and runs live batches (live and projecting clones in one transaction) while there is
//! work. At each batch it reads which target is live; after a promote that is a new target
//! with a new version, and the worker loads it there and then: the hot swap, no restart.
//!
//! Faults, and what the daemon does about them:
//! - a connection the server dropped: the worker reconnects with bounded backoff and carries
//!   on from the checkpoint; its ownership lock died with the old session, so it takes it
//!   again, or stops if another daemon took the projector meanwhile;
//! - any other failure to make progress: the worker retries with bounded backoff and reports
//!   itself `stuck`, with the reason, in `zdr_workers`;
//! - a damaged, deleted or replaced database file, or a schema it does not write: the daemon
//!   stops with the reason, rather than retry for ever or write to a file nobody reads.
//!
//! Every worker reports what it is doing at least every [`HEARTBEAT`]; `zdr projector list`
//! reads those reports, so a projector whose daemon went quiet never shows as `running`.
//!
//! `run` takes a `shutdown` future (Ctrl-C or SIGTERM in the CLI, anything in tests); on
//! shutdown every worker finishes its current transaction and is awaited.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::backend::{Db, RunLock, StoreError, WorkerState};
use crate::config::{FailurePolicy, Settings};
use crate::projection::{LiveBatch, Projection, ProjectionError};
use crate::runtime::Runtime;

/// How often the supervisor looks for newly deployed projectors and for workers that ended.
const SUPERVISOR_INTERVAL: Duration = Duration::from_millis(500);

/// How often a worker reports that it is alive, at the least.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How often a worker checks that it still holds its projector's ownership lock.
const OWNERSHIP_CHECK: Duration = Duration::from_secs(5);

/// The first pause before retrying after a failure; it doubles up to a bound.
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// The longest pause between two attempts to reconnect.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// The longest pause between two attempts at a batch that keeps failing.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

struct Worker {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<(), StoreError>>,
}

/// The running workers. Dropping the set tells every worker to stop, so that an early return
/// or a panic in the supervisor never leaves blocking threads running (the runtime would wait
/// for them for ever on exit).
#[derive(Default)]
struct Workers(HashMap<String, Worker>);

impl Workers {
    fn stop_all(&self) {
        for worker in self.0.values() {
            worker.stop.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// This daemon's name in the workers' reports: `host:pid`.
fn daemon_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Runs the daemon until `shutdown` resolves.
///
/// # Errors
/// When the database cannot be opened or is not initialised, or becomes unusable while the
/// daemon runs (a damaged, deleted or replaced file).
pub async fn run(
    settings: Settings,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let db = Db::open(&settings.database_url)?;
    db.ensure_ready()?;
    for warning in db.event_writer_warnings()? {
        tracing::warn!("{warning}");
    }
    let db = Arc::new(db);
    let daemon = daemon_name();
    tracing::info!(database = %settings.database_url, daemon = %daemon, "zdr serve started");
    let mut workers = Workers::default();
    tokio::pin!(shutdown);
    let fatal = loop {
        if let Some(err) = reap(&mut workers).await {
            break Some(err);
        }
        let names = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || {
                db.verify_open()?;
                db.live_targets()
                    .map(|t| t.into_iter().map(|t| t.projector).collect::<Vec<_>>())
            })
            .await?
        };
        match names {
            Ok(names) => {
                for name in names {
                    if workers.0.contains_key(&name) {
                        continue;
                    }
                    match spawn_worker(&settings, &runtime, &name, &daemon) {
                        Ok(Some(worker)) => {
                            workers.0.insert(name, worker);
                        }
                        Ok(None) => {}
                        Err(err) => {
                            tracing::error!(projector = %name, "cannot start a worker: {err:#}")
                        }
                    }
                }
            }
            Err(err) if err.is_fatal() => break Some(err),
            Err(err) => {
                tracing::error!("cannot list live projectors: {err}");
                if err.is_connection_lost() {
                    let db = db.clone();
                    match tokio::task::spawn_blocking(move || db.reconnect()).await? {
                        Ok(()) => tracing::info!("the supervisor reconnected"),
                        Err(err) => tracing::warn!("the supervisor cannot reconnect yet: {err}"),
                    }
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => break None,
            _ = tokio::time::sleep(SUPERVISOR_INTERVAL) => {}
        }
    };
    tracing::info!(
        "shutting down: waiting for {} worker(s) to finish their batch",
        workers.0.len()
    );
    workers.stop_all();
    for (name, worker) in std::mem::take(&mut workers.0) {
        match worker.handle.await {
            Ok(_) => {}
            Err(err) => tracing::error!(projector = %name, "worker panicked: {err}"),
        }
    }
    if let Some(err) = fatal {
        tracing::error!(database = %settings.database_url, "zdr serve stops: {err}");
        return Err(anyhow::Error::new(err).context(format!(
            "zdr serve stopped (database {})",
            settings.database_url
        )));
    }
    tracing::info!("zdr serve stopped");
    Ok(())
}

/// Removes the workers that ended; returns the fatal error one of them ended with, if any.
async fn reap(workers: &mut Workers) -> Option<StoreError> {
    let ended: Vec<String> = workers
        .0
        .iter()
        .filter(|(_, w)| w.handle.is_finished())
        .map(|(name, _)| name.clone())
        .collect();
    let mut fatal = None;
    for name in ended {
        let Some(worker) = workers.0.remove(&name) else {
            continue;
        };
        match worker.handle.await {
            Ok(Ok(())) => tracing::info!(projector = %name, "worker ended"),
            Ok(Err(err)) => fatal = Some(err),
            Err(err) => tracing::error!(projector = %name, "worker panicked: {err}"),
        }
    }
    fatal
}

/// Starts a worker for `projector` if this daemon can own it.
fn spawn_worker(
    settings: &Settings,
    runtime: &Arc<Runtime>,
    projector: &str,
    daemon: &str,
) -> anyhow::Result<Option<Worker>> {
    let db = Db::open(&settings.database_url)?;
    db.set_reading(settings.rebuild_read_ahead, settings.rebuild_read_chunk);
    let lock_name = format!("projector-{projector}");
    let Some(ownership) = db.try_lock(&lock_name)? else {
        tracing::debug!(projector, "owned by another daemon");
        return Ok(None);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let worker_stop = stop.clone();
    let runtime = runtime.clone();
    let context = WorkerContext {
        projector: projector.to_string(),
        daemon: daemon.to_string(),
        lock_name,
        batch_size: settings.batch_size,
        poll: settings.poll_interval,
        policy: settings.failure_policy(projector),
    };
    let handle = tokio::task::spawn_blocking(move || {
        let outcome = work(&runtime, &db, &context, ownership, &worker_stop);
        if outcome.is_ok()
            && let Err(err) = db.forget_worker(&context.projector, &context.daemon)
        {
            tracing::debug!(projector = %context.projector, "cannot clear the worker's report: {err}");
        }
        outcome
    });
    tracing::info!(projector, "worker started");
    Ok(Some(Worker { stop, handle }))
}

/// What a worker needs to know besides its database and runtime.
struct WorkerContext {
    projector: String,
    daemon: String,
    lock_name: String,
    batch_size: usize,
    poll: Duration,
    /// What to do when live fails on an event (`on_failure`).
    policy: FailurePolicy,
}

/// Waits up to `total` for new events (woken early by a notification where the backend has
/// them), in short slices so that a stop request is honoured quickly.
fn idle(db: &Db, total: Duration, stop: &AtomicBool) {
    let slice = Duration::from_millis(100);
    let mut left = total;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let step = left.min(slice);
        if db.wait_for_events(step) {
            return;
        }
        left -= step;
    }
}

/// Sleeps for `total` in short slices so that a stop request is honoured quickly.
fn nap(total: Duration, stop: &AtomicBool) {
    let slice = Duration::from_millis(20);
    let mut left = total;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let step = left.min(slice);
        std::thread::sleep(step);
        left -= step;
    }
}

/// Pauses that double from [`FIRST_RETRY`] up to a bound.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            next: FIRST_RETRY,
            max,
        }
    }

    fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

/// Writes what the worker is doing to `zdr_workers`: at once when it changes, otherwise at
/// most every [`HEARTBEAT`]. A report that cannot be written (the database is away) is
/// dropped; the next one tries again.
struct Reporter<'a> {
    db: &'a Db,
    context: &'a WorkerContext,
    last: Option<(WorkerState, Instant)>,
}

impl Reporter<'_> {
    fn report(&mut self, state: WorkerState) {
        let due = match &self.last {
            Some((last, at)) => *last != state || at.elapsed() >= HEARTBEAT,
            None => true,
        };
        if !due {
            return;
        }
        match self
            .db
            .report_worker(&self.context.projector, &self.context.daemon, &state)
        {
            Ok(()) => self.last = Some((state, Instant::now())),
            Err(err) => {
                tracing::debug!(projector = %self.context.projector, "cannot report the worker's state: {err}")
            }
        }
    }
}

/// What one turn of the worker loop did.
enum Turn {
    /// A batch committed: look again at once.
    Worked,
    /// Nothing to do: wait for events.
    Idle,
    /// The live target is stopped at a failure.
    Paused,
    /// The projector is no longer deployed.
    Gone,
}

/// The worker loop of one projector. Returns `Err` only for what must stop the daemon.
fn work(
    runtime: &Runtime,
    db: &Db,
    context: &WorkerContext,
    mut ownership: RunLock,
    stop: &AtomicBool,
) -> Result<(), StoreError> {
    let projector = context.projector.as_str();
    let mut projection = Projection::new(runtime, db, context.batch_size);
    let mut reporter = Reporter {
        db,
        context,
        last: None,
    };
    let mut serving: Option<(i64, String)> = None;
    let mut paused_logged = false;
    let mut failing = Backoff::new(MAX_RETRY_PAUSE);
    // Since when no turn has succeeded, while the worker retries a failure of the database.
    let mut stuck_since: Option<Instant> = None;
    // Under `on_failure = "retry"`: the event being retried and the attempts made at it.
    let mut retrying: Option<(i64, u32)> = None;
    let mut ownership_checked = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if ownership_checked.elapsed() >= OWNERSHIP_CHECK {
            ownership_checked = Instant::now();
            if !ownership.is_held() {
                match reclaim(db, context)? {
                    Some(lock) => ownership = lock,
                    None => return Ok(()),
                }
            }
        }
        match turn(&mut projection, db, projector, context.policy, &mut serving) {
            Ok(turn) => {
                failing.reset();
                retrying = None;
                if let Some(since) = stuck_since.take() {
                    tracing::info!(
                        projector,
                        "making progress again after {:.1} s",
                        since.elapsed().as_secs_f64()
                    );
                }
                reporter.report(WorkerState::Running);
                match turn {
                    Turn::Worked => {}
                    Turn::Idle => idle(db, context.poll, stop),
                    Turn::Gone => {
                        tracing::info!(projector, "no longer deployed");
                        return Ok(());
                    }
                    Turn::Paused => {
                        if !paused_logged {
                            tracing::warn!(
                                projector,
                                "paused at a failure; fix it and run `zdr projector resume {projector}` \
                                 (or `zdr projector skip`)"
                            );
                        }
                        nap(context.poll.max(Duration::from_millis(500)), stop);
                    }
                }
                paused_logged = matches!(turn, Turn::Paused);
            }
            Err(err) if err.failed_event().is_some() => {
                let retry = match (context.policy, err.failed_event()) {
                    (FailurePolicy::Retry { attempts }, Some((event_id, message)))
                        if err.is_retryable() =>
                    {
                        Some((attempts, event_id, message))
                    }
                    _ => None,
                };
                let Some((attempts, event_id, message)) = retry else {
                    // Recorded on the live target: `turn` sees it stopped from now on.
                    tracing::error!(
                        projector,
                        "{err}; paused until `zdr projector resume {projector}`"
                    );
                    continue;
                };
                let tried = match retrying {
                    Some((id, tried)) if id == event_id => tried + 1,
                    _ => 1,
                };
                if tried < attempts {
                    retrying = Some((event_id, tried));
                    let pause = failing.pause();
                    tracing::warn!(
                        projector,
                        event_id,
                        "attempt {tried} of {attempts} failed, retrying in {:.1} s (on_failure = retry): {err}",
                        pause.as_secs_f64()
                    );
                    reporter.report(WorkerState::Stuck(format!(
                        "retrying event {event_id} after attempt {tried} of {attempts}: {message}"
                    )));
                    nap(pause, stop);
                    continue;
                }
                retrying = None;
                let message = format!("{message} (gave up after {attempts} attempts)");
                let stopped = db
                    .live_target(projector)
                    .map_err(ProjectionError::from)
                    .and_then(|live| match live {
                        Some(live) => projection.stop_live(live.id, event_id, &message),
                        None => Ok(()),
                    });
                if let Err(recording) = stopped {
                    // The next turn fails again and starts a new round of attempts.
                    tracing::error!(
                        projector,
                        "cannot record the failure ({message}): {recording}"
                    );
                    continue;
                }
                tracing::error!(
                    projector,
                    event_id,
                    "{message}; paused until `zdr projector resume {projector}`"
                );
            }
            Err(ProjectionError::Store(err)) if err.is_fatal() => return Err(err),
            Err(ProjectionError::Store(err)) if err.is_connection_lost() => {
                reconnect(db, projector, &err, stop);
                // The ownership lock lived on a session of its own: look at it now.
                ownership_checked = Instant::now() - OWNERSHIP_CHECK;
            }
            Err(err) => {
                let pause = failing.pause();
                stuck_since.get_or_insert_with(Instant::now);
                tracing::error!(
                    projector,
                    "cannot make progress, retrying in {:.1} s: {err}",
                    pause.as_secs_f64()
                );
                reporter.report(WorkerState::Stuck(err.to_string()));
                nap(pause, stop);
            }
        }
    }
    Ok(())
}

/// One turn: notice a promote (and load the new version outside the write lock), a
/// recorded failure, events written late, then run a live batch when there is work.
fn turn(
    projection: &mut Projection<'_>,
    db: &Db,
    projector: &str,
    policy: FailurePolicy,
    serving: &mut Option<(i64, String)>,
) -> Result<Turn, ProjectionError> {
    db.verify_open()?;
    let Some(live) = db.live_target(projector)? else {
        return Ok(Turn::Gone);
    };
    if serving.as_ref().is_none_or(|(id, _)| *id != live.id) {
        match &*serving {
            Some((_, old)) if *old != live.version => {
                tracing::info!(projector, from = %old, to = %live.version, "hot swap: now serving version {}", live.version)
            }
            _ => {
                tracing::info!(projector, version = %live.version, "serving version {}", live.version)
            }
        }
        // Compile now, outside any transaction, so a promote is picked up even before the
        // next event and no batch waits for the compile.
        projection.prepare(std::slice::from_ref(&live))?;
        *serving = Some((live.id, live.version.clone()));
    }
    if live.failure.is_some() {
        return Ok(Turn::Paused);
    }
    for id in db.late_events()? {
        if id <= live.checkpoint {
            let message = format!(
                "event {id} was written after zdr had read past its id: its writer draws ids in a \
                 way the gap-safe read cannot see (see docs/architecture.md, \"Reading events\"). \
                 The read model lacks it: rebuild it with a replay, or let it pass with \
                 `zdr projector skip {projector} --event {id} --reason …`"
            );
            tracing::error!(projector, event_id = id, "{message}");
            projection.stop_live(live.id, id, &message)?;
            return Ok(Turn::Paused);
        }
    }
    if db.head()? <= live.checkpoint {
        return Ok(Turn::Idle);
    }
    match projection.live_batch(projector, policy)? {
        LiveBatch::Applied {
            events,
            checkpoint,
            clones,
        } => {
            tracing::debug!(projector, events, checkpoint, clones, "batch committed");
            Ok(Turn::Worked)
        }
        LiveBatch::NeedsLoad(targets) => {
            projection.prepare(&targets)?;
            Ok(Turn::Worked)
        }
        LiveBatch::Parked { .. } => Ok(Turn::Worked),
        LiveBatch::Idle => Ok(Turn::Idle),
        LiveBatch::Paused => Ok(Turn::Paused),
    }
}

/// Replaces the connection the server dropped, trying again with bounded backoff until it
/// succeeds or the daemon stops. Nothing is lost meanwhile: the batch that failed rolled back
/// and the worker carries on from the checkpoint.
fn reconnect(db: &Db, projector: &str, cause: &StoreError, stop: &AtomicBool) {
    tracing::warn!(projector, "{cause}; reconnecting");
    let started = Instant::now();
    let mut backoff = Backoff::new(MAX_RECONNECT_PAUSE);
    while !stop.load(Ordering::Relaxed) {
        nap(backoff.pause(), stop);
        match db.reconnect() {
            Ok(()) => {
                tracing::info!(
                    projector,
                    "reconnected after {:.1} s; carrying on from the checkpoint",
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            Err(err) => tracing::warn!(projector, "still disconnected: {err}"),
        }
    }
}

/// Takes the projector's ownership lock again after its session was lost: `None` when
/// another daemon took the projector meanwhile (this worker then stops).
fn reclaim(db: &Db, context: &WorkerContext) -> Result<Option<RunLock>, StoreError> {
    match db.try_lock(&context.lock_name) {
        Ok(Some(lock)) => {
            tracing::info!(projector = %context.projector, "took the projector's ownership lock again");
            Ok(Some(lock))
        }
        Ok(None) => {
            tracing::info!(projector = %context.projector, "another daemon took the projector over; this worker stops");
            Ok(None)
        }
        Err(err) if err.is_fatal() => Err(err),
        Err(err) => {
            // Try again at the next check; meanwhile batches are serialised by the writer
            // lock, so a second worker could not apply an event twice.
            tracing::warn!(projector = %context.projector, "cannot take the ownership lock again yet: {err}");
            Ok(Some(RunLock::unheld()))
        }
    }
}
