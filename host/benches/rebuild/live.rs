//! The live half of the benchmark: how long an appended event takes to show in the read model
//! under `zdr serve`, and how long readers stall while a replay is promoted under them.
//!
//! Writers append `MoneyAdded` events at a steady rate, each transaction holding its rows for
//! `hold` before it commits (ids then commit out of order, as with real application writers).
//! An observer polls the live target's checkpoint every millisecond: an event's latency is the
//! time from its commit to the first poll that sees the checkpoint at or past it (the read
//! model and the checkpoint commit together). Then, with the writers still going, a replay of
//! balance v2 is started, projected and promoted while readers query `balances` in a loop; the
//! longest query that overlapped the promote is the stall.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How the live run is shaped.
pub struct LiveSettings {
    pub seconds: u64,
    pub rate: u32,
    pub writers: u32,
    pub hold: Duration,
    /// How many accounts the history opened (writers add money to them).
    pub accounts: usize,
}

/// What a live run measured.
pub struct LiveReport {
    pub appended: usize,
    pub seconds: f64,
    /// Events committed in the steady window, before the replay began.
    pub latency: Percentiles,
    /// Events committed while the replay was started, projected and promoted.
    pub latency_during_replay: Percentiles,
    pub readers: usize,
    pub reads_during_promote: usize,
    pub promote: Duration,
    pub longest_read_during_promote: Duration,
    pub median_read_before_promote: Duration,
}

/// The 50th, 99th percentile and the maximum of a set of durations.
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Percentiles {
        samples.sort();
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Where the live run's connections come from: one per writer, reader and the observer.
pub trait LiveDatabase: Send + Sync {
    fn connect(&self) -> Result<Box<dyn LiveConnection>, String>;
}

/// What the live run does on a connection, per backend.
pub trait LiveConnection {
    /// Appends one event per account in `accounts` in one transaction, holding it open for
    /// `hold` before the commit; returns their ids.
    fn append(&mut self, accounts: &[usize], hold: Duration) -> Result<Vec<i64>, String>;
    /// The live `balance` target's checkpoint.
    fn live_checkpoint(&mut self) -> Result<i64, String>;
    /// What an application reads: one query over the whole read model.
    fn read_model(&mut self) -> Result<(), String>;
}

/// The live target's checkpoint, on either backend.
const LIVE_CHECKPOINT: &str =
    "SELECT checkpoint FROM zdr_targets WHERE projector = 'balance' AND role = 'live'";
/// The readers' query, on either backend.
const READ_MODEL: &str = "SELECT COUNT(*), SUM(balance) FROM balances";

/// Runs the live scenario on the database at `url` where balance v1 is deployed; `zdr` runs
/// the CLI (serve, replay) on it.
pub fn run(
    db: Arc<dyn LiveDatabase>,
    settings: &LiveSettings,
    zdr: &dyn Fn(&[&str]) -> Result<(), String>,
    serve: std::process::Child,
    v2: &str,
) -> Result<LiveReport, String> {
    let mut daemon = Daemon(serve);
    let stop = Arc::new(AtomicBool::new(false));
    let (commits, committed) = mpsc::channel::<(Vec<i64>, Instant)>();

    // Writers: each keeps a schedule of rate / writers events per second and appends whatever
    // is due in one transaction.
    let mut writers = Vec::new();
    for writer in 0..settings.writers {
        let db = db.clone();
        let stop = stop.clone();
        let commits = commits.clone();
        let interval =
            Duration::from_secs_f64(f64::from(settings.writers) / f64::from(settings.rate));
        let hold = settings.hold;
        let accounts = settings.accounts;
        writers.push(thread::spawn(move || -> Result<usize, String> {
            let mut conn = db.connect()?;
            let started = Instant::now();
            let mut appended = 0usize;
            let mut account = writer as usize;
            while !stop.load(Ordering::Relaxed) {
                // Events due by now on this writer's schedule; none due: sleep to the next.
                let elapsed = started.elapsed();
                let due = (elapsed.as_secs_f64() / interval.as_secs_f64()) as usize + 1;
                if due <= appended {
                    thread::sleep((interval * appended as u32).saturating_sub(elapsed));
                    continue;
                }
                let batch: Vec<usize> = (appended..due)
                    .map(|_| {
                        account = (account + 7919) % accounts;
                        account
                    })
                    .collect();
                let ids = conn.append(&batch, hold)?;
                appended += ids.len();
                if commits.send((ids, Instant::now())).is_err() {
                    break;
                }
            }
            Ok(appended)
        }));
    }
    drop(commits);

    // The observer: every millisecond, the live checkpoint; each event's latency is from its
    // commit to the first poll that sees it applied.
    let observer = {
        let db = db.clone();
        thread::spawn(move || -> Result<Vec<(Instant, Duration)>, String> {
            let mut conn = db.connect()?;
            let mut pending: BTreeMap<i64, Instant> = BTreeMap::new();
            let mut latencies = Vec::new();
            let mut writers_done = false;
            let mut drain_started: Option<Instant> = None;
            loop {
                loop {
                    match committed.try_recv() {
                        Ok((ids, at)) => pending.extend(ids.into_iter().map(|id| (id, at))),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            writers_done = true;
                            break;
                        }
                    }
                }
                let checkpoint = conn.live_checkpoint()?;
                let seen = Instant::now();
                while let Some((&id, &at)) = pending.first_key_value() {
                    if id > checkpoint {
                        break;
                    }
                    latencies.push((at, seen.saturating_duration_since(at)));
                    pending.pop_first();
                }
                if writers_done {
                    if pending.is_empty() {
                        return Ok(latencies);
                    }
                    // The daemon catches up with the last commits, or has stopped.
                    let since = *drain_started.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(30) {
                        return Err(format!(
                            "{} appended event(s) never showed in the live read model (from event {})",
                            pending.len(),
                            pending.first_key_value().map_or(0, |(id, _)| *id)
                        ));
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let measured_from = Instant::now();
    thread::sleep(Duration::from_secs(settings.seconds));
    let steady_until = Instant::now();

    // The promote, with the writers still going and readers querying the read model.
    zdr(&[
        "replay",
        "create",
        "v2",
        "--projector",
        &format!("balance={v2}"),
    ])?;
    zdr(&["replay", "start", "v2"])?;
    zdr(&["replay", "project", "v2"])?;
    let reading = Arc::new(AtomicBool::new(true));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let db = db.clone();
        let reading = reading.clone();
        readers.push(thread::spawn(
            move || -> Result<Vec<(Instant, Instant)>, String> {
                let mut conn = db.connect()?;
                let mut reads = Vec::new();
                while reading.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    conn.read_model()?;
                    reads.push((started, Instant::now()));
                }
                Ok(reads)
            },
        ));
    }
    thread::sleep(Duration::from_millis(500));
    let promote_started = Instant::now();
    zdr(&["replay", "promote", "v2"])?;
    let promote_ended = Instant::now();
    thread::sleep(Duration::from_millis(200));
    reading.store(false, Ordering::Relaxed);
    let mut reads = Vec::new();
    for reader in readers {
        reads.extend(reader.join().map_err(|_| "a reader panicked")??);
    }

    stop.store(true, Ordering::Relaxed);
    let mut appended = 0;
    for writer in writers {
        appended += writer.join().map_err(|_| "a writer panicked")??;
    }
    let seconds = measured_from.elapsed().as_secs_f64();
    let latencies = observer.join().map_err(|_| "the observer panicked")??;
    let (steady, during_replay): (Vec<_>, Vec<_>) = latencies
        .into_iter()
        .partition(|(at, _)| *at < steady_until);
    daemon.stop()?;

    let (during, before): (Vec<_>, Vec<_>) = reads
        .iter()
        .partition(|(started, ended)| *started <= promote_ended && *ended >= promote_started);
    let before: Vec<Duration> = before
        .iter()
        .filter(|(_, ended)| *ended < promote_started)
        .map(|(started, ended)| *ended - *started)
        .collect();
    Ok(LiveReport {
        appended,
        seconds,
        latency: Percentiles::of(steady.into_iter().map(|(_, d)| d).collect()),
        latency_during_replay: Percentiles::of(during_replay.into_iter().map(|(_, d)| d).collect()),
        readers: 4,
        reads_during_promote: during.len(),
        promote: promote_ended - promote_started,
        longest_read_during_promote: during
            .iter()
            .map(|(started, ended)| *ended - *started)
            .max()
            .unwrap_or_default(),
        median_read_before_promote: Percentiles::of(before).p50,
    })
}

/// `zdr serve`, stopped with SIGTERM (and killed if it does not stop) however the run ends.
struct Daemon(std::process::Child);

impl Daemon {
    fn stop(&mut self) -> Result<(), String> {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let status = self
            .0
            .wait()
            .map_err(|e| format!("waiting for zdr serve: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("zdr serve ended with {status}"))
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The live run on SQLite: writers and readers each on a connection of their own.
pub struct SqliteLive {
    pub path: String,
}

impl LiveDatabase for SqliteLive {
    fn connect(&self) -> Result<Box<dyn LiveConnection>, String> {
        let conn =
            rusqlite::Connection::open(&self.path).map_err(|e| format!("{}: {e}", self.path))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| format!("{}: {e}", self.path))?;
        Ok(Box::new(conn))
    }
}

impl LiveConnection for rusqlite::Connection {
    fn append(&mut self, accounts: &[usize], hold: Duration) -> Result<Vec<i64>, String> {
        let fail = |e: rusqlite::Error| format!("appending: {e}");
        let tx = self
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(fail)?;
        let mut ids = Vec::with_capacity(accounts.len());
        for account in accounts {
            tx.execute(
                "INSERT INTO stored_events (aggregate_uuid, event_version, event_class, event_properties, meta_data, created_at) \
                 VALUES (?1, 1, 'MoneyAdded', '{\"amount\":1}', '{}', strftime('%Y-%m-%d %H:%M:%f', 'now'))",
                [format!("acct-{account}")],
            )
            .map_err(fail)?;
            ids.push(tx.last_insert_rowid());
        }
        thread::sleep(hold);
        tx.commit().map_err(fail)?;
        Ok(ids)
    }

    fn live_checkpoint(&mut self) -> Result<i64, String> {
        self.query_row(LIVE_CHECKPOINT, [], |row| row.get(0))
            .map_err(|e| format!("reading the live checkpoint: {e}"))
    }

    fn read_model(&mut self) -> Result<(), String> {
        self.query_row(READ_MODEL, [], |_| Ok(()))
            .map_err(|e| format!("a reader's query failed: {e}"))
    }
}

/// The live run on PostgreSQL.
pub struct PostgresLive {
    pub url: String,
}

impl LiveDatabase for PostgresLive {
    fn connect(&self) -> Result<Box<dyn LiveConnection>, String> {
        postgres::Client::connect(&self.url, postgres::NoTls)
            .map(|client| Box::new(client) as Box<dyn LiveConnection>)
            .map_err(|e| format!("{}: {e}", self.url))
    }
}

impl LiveConnection for postgres::Client {
    fn append(&mut self, accounts: &[usize], hold: Duration) -> Result<Vec<i64>, String> {
        let fail = |e: postgres::Error| format!("appending: {e}");
        let mut tx = self.transaction().map_err(fail)?;
        let mut ids = Vec::with_capacity(accounts.len());
        for account in accounts {
            let row = tx
                .query_one(
                    "INSERT INTO stored_events (aggregate_uuid, event_version, event_class, event_properties, meta_data, created_at) \
                     VALUES ($1, 1, 'MoneyAdded', '{\"amount\":1}', '{}', localtimestamp) RETURNING id",
                    &[&format!("acct-{account}")],
                )
                .map_err(fail)?;
            ids.push(row.get(0));
        }
        thread::sleep(hold);
        tx.commit().map_err(fail)?;
        Ok(ids)
    }

    fn live_checkpoint(&mut self) -> Result<i64, String> {
        self.query_one(LIVE_CHECKPOINT, &[])
            .map(|row| row.get(0))
            .map_err(|e| format!("reading the live checkpoint: {e}"))
    }

    fn read_model(&mut self) -> Result<(), String> {
        self.query_one(READ_MODEL, &[])
            .map(drop)
            .map_err(|e| format!("a reader's query failed: {e}"))
    }
}
