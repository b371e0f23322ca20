//! The daemon behind `zdr serve`: a supervisor and one worker per live projector.
//!
//! The supervisor looks for live projectors and starts a worker for each one it can own (a
//! per-projector lock that dies with the process, so a second daemon on the same database
//! leaves it alone). A worker runs on a blocking thread: it polls the head of the event
//! store and runs live batches (live and projecting clones in one transaction) while there is
//! work. At each batch it reads which target is live; after a promote that is a new target
//! with a new version, and the worker loads it there and then: the hot swap, no restart.
//!
//! `run` takes a `shutdown` future (Ctrl-C or SIGTERM in the CLI, anything in tests); on
//! shutdown every worker finishes its current transaction and is awaited.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::backend::Db;
use crate::config::Settings;
use crate::projection::{LiveBatch, Projection, ProjectionError};
use crate::runtime::Runtime;

/// How often the supervisor looks for newly deployed projectors and for workers that ended.
const SUPERVISOR_INTERVAL: Duration = Duration::from_millis(500);

/// How long a worker waits after an unexpected error before trying again.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

struct Worker {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
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

/// Runs the daemon until `shutdown` resolves.
///
/// # Errors
/// When the database cannot be opened or is not initialised.
pub async fn run(
    settings: Settings,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let db = Db::open(&settings.database_url)?;
    db.ensure_ready()?;
    let db = Arc::new(db);
    tracing::info!(database = %settings.database_url, "zdr serve started");
    let mut workers = Workers::default();
    tokio::pin!(shutdown);
    loop {
        workers.0.retain(|name, worker| {
            let running = !worker.handle.is_finished();
            if !running {
                tracing::info!(projector = %name, "worker ended");
            }
            running
        });
        let names = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || {
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
                    match spawn_worker(&settings, &runtime, &name) {
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
            Err(err) => tracing::error!("cannot list live projectors: {err}"),
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(SUPERVISOR_INTERVAL) => {}
        }
    }
    tracing::info!(
        "shutting down: waiting for {} worker(s) to finish their batch",
        workers.0.len()
    );
    workers.stop_all();
    for (name, worker) in std::mem::take(&mut workers.0) {
        if let Err(err) = worker.handle.await {
            tracing::error!(projector = %name, "worker panicked: {err}");
        }
    }
    tracing::info!("zdr serve stopped");
    Ok(())
}

/// Starts a worker for `projector` if this daemon can own it.
fn spawn_worker(
    settings: &Settings,
    runtime: &Arc<Runtime>,
    projector: &str,
) -> anyhow::Result<Option<Worker>> {
    let db = Db::open(&settings.database_url)?;
    let Some(ownership) = db.try_lock(&format!("projector-{projector}"))? else {
        tracing::debug!(projector, "owned by another daemon");
        return Ok(None);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let worker_stop = stop.clone();
    let runtime = runtime.clone();
    let name = projector.to_string();
    let batch_size = settings.batch_size;
    let poll = settings.poll_interval;
    let handle = tokio::task::spawn_blocking(move || {
        let _ownership = ownership;
        work(&runtime, &db, &name, batch_size, poll, &worker_stop);
    });
    tracing::info!(projector, "worker started");
    Ok(Some(Worker { stop, handle }))
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

/// The worker loop of one projector.
fn work(
    runtime: &Runtime,
    db: &Db,
    projector: &str,
    batch_size: usize,
    poll: Duration,
    stop: &AtomicBool,
) {
    let mut projection = Projection::new(runtime, db, batch_size);
    let mut serving: Option<(i64, String)> = None;
    let mut paused_logged = false;
    while !stop.load(Ordering::Relaxed) {
        let live = match db.live_target(projector) {
            Ok(Some(live)) => live,
            Ok(None) => {
                tracing::info!(projector, "no longer deployed");
                return;
            }
            Err(err) => {
                tracing::error!(projector, "cannot read the live target: {err}");
                nap(ERROR_BACKOFF, stop);
                continue;
            }
        };
        if serving.as_ref().is_none_or(|(id, _)| *id != live.id) {
            match &serving {
                Some((_, old)) if *old != live.version => {
                    tracing::info!(projector, from = %old, to = %live.version, "hot swap: now serving version {}", live.version)
                }
                _ => {
                    tracing::info!(projector, version = %live.version, "serving version {}", live.version)
                }
            }
            // Instantiate right away, so a promote is picked up even before the next event.
            if let Err(err) = projection.instance(&live) {
                tracing::error!(
                    projector,
                    "cannot instantiate version {}: {err}",
                    live.version
                );
            }
            serving = Some((live.id, live.version.clone()));
        }
        if let Some(failure) = &live.failure {
            if !paused_logged {
                tracing::warn!(
                    projector,
                    event_id = failure.event_id,
                    "paused at a failure: {}; fix it and run `zdr projector resume {projector}`",
                    failure.message
                );
                paused_logged = true;
            }
            nap(poll.max(Duration::from_millis(500)), stop);
            continue;
        }
        paused_logged = false;
        let head = match db.head() {
            Ok(head) => head,
            Err(err) => {
                tracing::error!(projector, "cannot read the event store: {err}");
                nap(ERROR_BACKOFF, stop);
                continue;
            }
        };
        if head <= live.checkpoint {
            idle(db, poll, stop);
            continue;
        }
        match projection.live_batch(projector) {
            Ok(LiveBatch::Applied {
                events,
                checkpoint,
                clones,
            }) => {
                tracing::debug!(projector, events, checkpoint, clones, "batch committed");
            }
            Ok(LiveBatch::Idle | LiveBatch::Paused) => idle(db, poll, stop),
            Err(err @ ProjectionError::Guest { .. }) => {
                tracing::error!(
                    projector,
                    "{err}; paused until `zdr projector resume {projector}`"
                );
            }
            Err(err) => {
                tracing::error!(projector, "batch failed, retrying: {err}");
                nap(ERROR_BACKOFF, stop);
            }
        }
    }
}
