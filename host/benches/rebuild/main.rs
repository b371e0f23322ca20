//! The rebuild benchmark: zdr side by side with a native projector and the raw driver, in one
//! run, so that the ratios hold however fast or loaded the machine is.
//!
//! ```text
//! bash plugins/build-all.sh --demo
//! cargo bench -p zdr --bench rebuild -- [--events N] [--batch B] [--runs R] [--postgres URL]
//! ```
//!
//! It generates N events of the bank example (50,000 accounts), imports them once, and then,
//! R times back to back, each time on a fresh copy of that database:
//!
//! 1. **zdr deploy**: `zdr projector deploy` of balance v1, which builds its table from history;
//! 2. **zdr replay**: `zdr replay start` of balance v2 into a clone, the zero-downtime rebuild;
//! 3. **native**: the same v2 rebuild without Wasm and without the guard: the events read with
//!    zdr's query, parsed by the same `balance-common` code, written with the same SQL, the same
//!    connection settings and the same batches, each committed with a checkpoint;
//! 4. **raw** (SQLite only): a loop of upserts on 10,000 keys, without reading events: what the
//!    driver and the database can do at all on this machine.
//!
//! zdr's rows give the peak resident memory of the `zdr` process and the split zdr reports of
//! its own time (reading events, the projector, the rest of each transaction). The last table
//! gives each path's minimum and median and the ratios of the medians. With `--postgres URL` (a
//! server URL without a database) the same runs go to PostgreSQL, in databases the benchmark
//! creates and drops; the native path then makes one round trip per statement.

mod live;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balance_common::{BalanceEvent, Change, RawEvent};
use clap::Parser;

/// Where the bundled guests are built (`plugins/build-all.sh`).
const GUESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../plugins/target/wasm32-wasip2/release"
);
/// How many accounts the generated history opens.
const ACCOUNTS: usize = 50_000;
/// How many keys the raw loop updates.
const HOT_KEYS: usize = 10_000;

/// The v2 table and its SQL, as `plugins/balance-v2` has them.
const CREATE_BALANCES: &str = "CREATE TABLE native_balances (account_uuid TEXT PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL, transaction_count INTEGER NOT NULL DEFAULT 0, last_activity TEXT)";
const INDEX_BY_NAME: &str = "CREATE INDEX native_balances_by_name ON native_balances (name)";
const OPEN_ACCOUNT: &str = "INSERT INTO native_balances (account_uuid, name, balance, transaction_count, last_activity) VALUES ($1, $2, 0, 0, $3)";
const ADD_MONEY: &str = "UPDATE native_balances SET balance = balance + $1, transaction_count = transaction_count + 1, last_activity = $2 WHERE account_uuid = $3";
const SUBTRACT_MONEY: &str = "UPDATE native_balances SET balance = balance - $1, transaction_count = transaction_count + 1, last_activity = $2 WHERE account_uuid = $3";
/// What two native rebuilds must agree on.
const DIGEST: &str = "SELECT COUNT(*) || ' rows, balance ' || COALESCE(SUM(balance), 0) || ', transactions ' || COALESCE(SUM(transaction_count), 0) FROM native_balances";
/// zdr's rebuild read (`backend/sqlite/events.rs`): the classes balance handles, `$n` placeholders.
const READ_EVENTS: &str = "SELECT id, aggregate_uuid, aggregate_version, COALESCE(event_version, 1), event_class, \
     COALESCE(event_properties, '{}'), COALESCE(meta_data, '{}'), COALESCE(CAST(created_at AS TEXT), '') \
     FROM stored_events WHERE id > $1 AND id <= $2 \
     AND event_class IN ('AccountOpened', 'MoneyAdded', 'MoneySubtracted') ORDER BY id LIMIT $3";

/// Command-line arguments.
#[derive(Parser)]
#[command(about = "zdr's rebuild against a native projector and the raw driver, in one run")]
struct Args {
    /// Events in the generated history.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Events per transaction (zdr's `rebuild_batch_size`, and the native path's batch); zdr's
    /// default by default.
    #[arg(long, default_value_t = zdr::projection::REBUILD_BATCH_SIZE)]
    batch: usize,
    /// How many times each path runs, back to back.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A PostgreSQL server URL without a database name; the runs go there instead of SQLite.
    #[arg(long)]
    postgres: Option<String>,
    /// Another build of zdr to measure in the same runs ("baseline deploy", "baseline replay"),
    /// for a before-and-after comparison of a change.
    #[arg(long, value_name = "ZDR_BINARY")]
    baseline: Option<PathBuf>,
    /// The folder of the baseline's `balance_v1.wasm` and `balance_v2.wasm` (default: the
    /// same components as this build), e.g. the guests of an earlier commit, to compare two
    /// versions of the contract. With no `--baseline`, the baseline is this build of zdr.
    #[arg(long, value_name = "DIR")]
    baseline_guests: Option<PathBuf>,
    /// Lines added to the baseline's `zdr.toml` (e.g. `rebuild_read_ahead = false`), to
    /// measure a setting against the default. With no `--baseline`, the baseline is this
    /// build of zdr.
    #[arg(long, value_name = "TOML")]
    baseline_config: Option<String>,
    /// Instead of the rebuild runs: run `zdr serve` for this many seconds under appending
    /// writers and report append-to-visible latency, then promote a replay under readers and
    /// report how long they stalled.
    #[arg(long, value_name = "SECONDS")]
    live: Option<u64>,
    /// Live run: events appended per second, in all.
    #[arg(long, default_value_t = 2_000)]
    rate: u32,
    /// Live run: concurrent writers.
    #[arg(long, default_value_t = 4)]
    writers: u32,
    /// Live run: how long each writer's transaction stays open before it commits, in ms
    /// (default 5 on PostgreSQL; 0 on SQLite, whose writers take turns).
    #[arg(long)]
    hold_ms: Option<u64>,
    /// Percent of the money events replaced by events of a class the balance projector does
    /// not handle (a store shared by many projectors).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100))]
    other_classes: u64,
    /// PostgreSQL: also run zdr's replay (`replay start --partitions N`) and the native
    /// rebuild split by aggregate into this many partitions, each on a thread and a
    /// connection of its own (events of one aggregate stay in order); the plain `zdr replay`
    /// row replays whole (`--partitions 1`).
    #[arg(long, default_value_t = 1)]
    partitions: usize,
    /// `cargo bench` passes this to every bench binary.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(message) = run(&args) {
        eprintln!("rebuild bench: {message}");
        std::process::exit(1);
    }
}

/// One measured run of one path.
struct Sample {
    path: String,
    seconds: f64,
    /// Peak resident memory of the zdr process, in KiB.
    peak_kib: Option<i64>,
    /// zdr's own split of its time, as it printed it.
    split: Option<String>,
}

fn run(args: &Args) -> Result<(), String> {
    let guests = Path::new(GUESTS);
    let baseline_guests = args.baseline_guests.as_deref().unwrap_or(guests);
    for guest in ["balance_v1.wasm", "balance_v2.wasm"]
        .iter()
        .flat_map(|file| [guests.join(file), baseline_guests.join(file)])
    {
        if !guest.is_file() {
            return Err(format!(
                "{} is missing; build the guests first: bash plugins/build-all.sh --demo",
                guest.display()
            ));
        }
    }
    let work = tempfile::tempdir().map_err(|e| format!("creating a temporary folder: {e}"))?;
    let dir = work.path();
    let events = dir.join("events.jsonl");
    write_history(&events, args.events, args.other_classes)?;
    let config = format!("rebuild_batch_size = {}\n", args.batch);
    let baseline_config = format!(
        "{config}{}\n",
        args.baseline_config.as_deref().unwrap_or_default()
    );
    for (file, text) in [("zdr.toml", config), ("zdr-baseline.toml", baseline_config)] {
        std::fs::write(dir.join(file), text)
            .map_err(|e| format!("writing the configuration: {e}"))?;
    }
    let backend: Box<dyn Backend> = match &args.postgres {
        Some(server) => Box::new(Postgres::new(server)?),
        None => Box::new(Sqlite {
            dir: dir.to_path_buf(),
        }),
    };
    let this_build = PathBuf::from(env!("CARGO_BIN_EXE_zdr"));
    let zdr = Zdr::new(this_build.clone(), dir, guests, "zdr.toml");
    let compared =
        args.baseline.is_some() || args.baseline_guests.is_some() || args.baseline_config.is_some();
    let baseline = compared.then(|| {
        let binary = args.baseline.clone().unwrap_or(this_build);
        Zdr::new(binary, dir, baseline_guests, "zdr-baseline.toml")
    });

    // Both components compiled into the cache first (on an empty database of their own), so
    // that no measured step includes a cold compile.
    for (name, build) in [("warm", Some(&zdr)), ("warm_baseline", baseline.as_ref())] {
        let Some(build) = build else { continue };
        let url = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
        build.run(&url, &["init"])?;
        build.run(
            &url,
            &["projector", "deploy", "balance", &path_str(&build.v1)],
        )?;
        build.create_replay(&url)?;
    }

    // The history is imported once; each run starts from a copy of it.
    let pristine = backend.pristine_url();
    zdr.run(&pristine, &["init"])?;
    zdr.run(&pristine, &["events", "import", &path_str(&events)])?;
    backend.freeze()?;
    if let Some(seconds) = args.live {
        let mut builds = vec![("zdr", &zdr)];
        builds.extend(baseline.iter().map(|b| ("baseline", b)));
        return live_run(args, seconds, backend.as_ref(), &builds);
    }
    println!(
        "{} events, batch {}, {} run(s), {}",
        args.events,
        args.batch,
        args.runs,
        backend.name()
    );

    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let builds = [("zdr deploy", "zdr replay", &zdr)].into_iter().chain(
            baseline
                .iter()
                .map(|b| ("baseline deploy", "baseline replay", b)),
        );
        // Each build, and the native and raw paths, start from a copy of their own.
        for (deploy_label, replay_label, zdr) in builds {
            let copy = format!("run{run}_{}", deploy_label.replace(' ', "_"));
            let url = backend.copy(&copy)?;
            let v1 = path_str(&zdr.v1);
            // Whole, whatever the configuration's default.
            let deploy: Vec<&str> = if zdr.splits {
                vec!["projector", "deploy", "balance", &v1, "--partitions", "1"]
            } else {
                vec!["projector", "deploy", "balance", &v1]
            };
            let deploy = zdr.timed(&url, &deploy)?;
            samples.push(deploy.into_sample(deploy_label));
            zdr.create_replay(&url)?;
            // Whole, whatever the configuration's default.
            let whole: &[&str] = if zdr.splits {
                &["replay", "start", "v2", "--partitions", "1"]
            } else {
                &["replay", "start", "v2"]
            };
            let replay = zdr.timed(&url, whole)?;
            samples.push(replay.into_sample(replay_label));
            backend.drop_copy(&copy)?;
            if args.partitions > 1 && zdr.splits {
                // The same replay split by aggregate, on a copy of its own.
                let url = backend.copy(&copy)?;
                zdr.timed(
                    &url,
                    &["projector", "deploy", "balance", &path_str(&zdr.v1)],
                )?;
                zdr.create_replay(&url)?;
                let parts = args.partitions.to_string();
                let split = zdr.timed(&url, &["replay", "start", "v2", "--partitions", &parts])?;
                samples.push(split.into_sample(&format!("{replay_label}, {parts} parts")));
                backend.drop_copy(&copy)?;
            }
        }
        let copy = format!("run{run}_native");
        let url = backend.copy(&copy)?;
        let started = Instant::now();
        backend.native(&url, args.batch, 1)?;
        samples.push(Sample::plain("native", started.elapsed()));
        if args.partitions > 1 {
            let whole = backend.digest(&url)?;
            backend.drop_copy(&copy)?;
            let url = backend.copy(&copy)?;
            let started = Instant::now();
            backend.native(&url, args.batch, args.partitions)?;
            samples.push(Sample::plain(
                &format!("native, {} partitions", args.partitions),
                started.elapsed(),
            ));
            let split = backend.digest(&url)?;
            if split != whole {
                return Err(format!(
                    "the partitioned native rebuild differs from the whole one: {split} against {whole}"
                ));
            }
        }
        if let Some(raw) = backend.raw(&url, args.events, args.batch)? {
            samples.push(Sample::plain("raw", raw));
        }
        backend.drop_copy(&copy)?;
        print_run(run, &samples, args.events);
    }
    print_summary(&samples, args.events);
    Ok(())
}

/// The live scenario (`--live`, see `live.rs`), for this build and then for the baseline.
fn live_run(
    args: &Args,
    seconds: u64,
    backend: &dyn Backend,
    builds: &[(&str, &Zdr)],
) -> Result<(), String> {
    let hold =
        Duration::from_millis(
            args.hold_ms
                .unwrap_or(if args.postgres.is_some() { 5 } else { 0 }),
        );
    println!(
        "live: {} events/s from {} writers, transactions held {} ms, {seconds} s, {}",
        args.rate,
        args.writers,
        hold.as_millis(),
        backend.name()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let percentiles = |p: &live::Percentiles| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(p.p50),
            ms(p.p99),
            ms(p.max)
        )
    };
    for (label, zdr) in builds {
        let copy = format!("live_{}", label.replace(' ', "_"));
        let url = backend.copy(&copy)?;
        zdr.run(
            &url,
            &["projector", "deploy", "balance", &path_str(&zdr.v1)],
        )?;
        let log_path = zdr.dir.join(format!("{copy}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("creating the serve log: {e}"))?;
        let serve = zdr
            .command(&url, &["serve"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run zdr serve: {e}"))?;
        let db: Arc<dyn live::LiveDatabase> = match &args.postgres {
            Some(_) => Arc::new(live::PostgresLive { url: url.clone() }),
            None => Arc::new(live::SqliteLive {
                path: url.trim_start_matches("sqlite://").to_owned(),
            }),
        };
        let settings = live::LiveSettings {
            seconds,
            rate: args.rate,
            writers: args.writers,
            hold,
            accounts: ACCOUNTS.min(args.events),
        };
        let run_zdr = |command: &[&str]| zdr.run(&url, command).map(drop);
        let report = match live::run(db, &settings, &run_zdr, serve, &path_str(&zdr.v2)) {
            Ok(report) => report,
            Err(e) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("{label}: {e}\nthe daemon's log:\n{log}"));
            }
        };
        println!(
            "{label}: appended {} events in {:.1} s ({:.0} events/s)",
            report.appended,
            report.seconds,
            report.appended as f64 / report.seconds
        );
        println!(
            "{label}: append to visible, steady: {}; while a replay starts, projects and promotes: {}",
            percentiles(&report.latency),
            percentiles(&report.latency_during_replay)
        );
        println!(
            "{label}: promote {:.1} ms; {} readers: {} queries overlapped it, the longest {:.1} ms (median query before it {:.2} ms)",
            ms(report.promote),
            report.readers,
            report.reads_during_promote,
            ms(report.longest_read_during_promote),
            ms(report.median_read_before_promote)
        );
        backend.drop_copy(&copy)?;
    }
    Ok(())
}

impl Sample {
    fn plain(path: &str, elapsed: Duration) -> Self {
        Sample {
            path: path.to_owned(),
            seconds: elapsed.as_secs_f64(),
            peak_kib: None,
            split: None,
        }
    }
}

/// Prints one run's rows.
fn print_run(run: usize, samples: &[Sample], events: usize) {
    let mut paths: Vec<&str> = Vec::new();
    for sample in samples.iter().rev() {
        if paths.contains(&sample.path.as_str()) {
            break;
        }
        paths.push(&sample.path);
    }
    for sample in samples
        .iter()
        .rev()
        .take(paths.len())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let memory = sample
            .peak_kib
            .map(|kib| format!(", peak RSS {:.1} MiB", kib as f64 / 1024.0))
            .unwrap_or_default();
        let split = sample
            .split
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        println!(
            "run {run}: {:<11} {:>8.2} s {:>10.0} events/s{memory}{split}",
            sample.path,
            sample.seconds,
            events as f64 / sample.seconds
        );
    }
}

/// Prints each path's minimum and median throughput and the ratios of the medians, as a
/// Markdown table.
fn print_summary(samples: &[Sample], events: usize) {
    let mut paths: Vec<&str> = Vec::new();
    for sample in samples {
        if !paths.contains(&sample.path.as_str()) {
            paths.push(&sample.path);
        }
    }
    let median_of = |path: &str| {
        let mut rates: Vec<f64> = samples
            .iter()
            .filter(|s| s.path == path)
            .map(|s| events as f64 / s.seconds)
            .collect();
        rates.sort_by(f64::total_cmp);
        (rates[0], rates[rates.len() / 2], rates[rates.len() - 1])
    };
    let native = median_of("native").1;
    println!();
    println!("| path | events/s min | median | max | median / native |");
    println!("| --- | --- | --- | --- | --- |");
    for path in paths {
        let (min, median, max) = median_of(path);
        println!(
            "| {path} | {min:.0} | {median:.0} | {max:.0} | {:.2} |",
            median / native
        );
    }
}

/// The `zdr` binary, run with the benchmark's configuration and a cache folder of its own,
/// and the balance components it deploys and replays.
struct Zdr {
    binary: PathBuf,
    dir: PathBuf,
    /// `balance_v1.wasm`, deployed.
    v1: PathBuf,
    /// `balance_v2.wasm`, replayed.
    v2: PathBuf,
    /// Whether this is the build under test, which takes `replay start --partitions` (a
    /// baseline may predate it).
    splits: bool,
    /// Its configuration file.
    config: PathBuf,
}

/// What a timed `zdr` command took.
struct Timed {
    elapsed: Duration,
    peak_kib: i64,
    stderr: String,
}

impl Timed {
    fn into_sample(self, path: &str) -> Sample {
        Sample {
            path: path.to_owned(),
            seconds: self.elapsed.as_secs_f64(),
            peak_kib: Some(self.peak_kib),
            // The progress reporter's last line ends with zdr's own split of its time.
            split: self.stderr.lines().rev().find_map(|line| {
                line.split_once("; time: ")
                    .map(|(_, split)| split.to_owned())
            }),
        }
    }
}

impl Zdr {
    fn new(binary: PathBuf, dir: &Path, guests: &Path, config: &str) -> Self {
        Self {
            config: dir.join(config),
            splits: binary == Path::new(env!("CARGO_BIN_EXE_zdr")),
            binary,
            dir: dir.to_path_buf(),
            v1: guests.join("balance_v1.wasm"),
            v2: guests.join("balance_v2.wasm"),
        }
    }

    fn command(&self, url: &str, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("ZDR_DATABASE_URL", url)
            .env("ZDR_CACHE_DIR", self.dir.join("cache"))
            .env_remove("ZDR_LOG");
        command
    }

    /// Runs a command that must succeed.
    fn run(&self, url: &str, args: &[&str]) -> Result<String, String> {
        let output = self
            .command(url, args)
            .output()
            .map_err(|e| format!("cannot run zdr: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "zdr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Creates replay `v2` of balance with this build's v2 component.
    fn create_replay(&self, url: &str) -> Result<String, String> {
        let projector = format!("balance={}", path_str(&self.v2));
        self.run(url, &["replay", "create", "v2", "--projector", &projector])
    }

    /// Runs a command that must succeed, with its wall time and peak resident memory.
    fn timed(&self, url: &str, args: &[&str]) -> Result<Timed, String> {
        let started = Instant::now();
        let mut child = self
            .command(url, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run zdr: {e}"))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut s) = stdout {
                let _ = std::io::Read::read_to_string(&mut s, &mut out);
            }
            if let Some(mut s) = stderr {
                let _ = std::io::Read::read_to_string(&mut s, &mut err);
            }
            (out, err)
        });
        let (status, peak_kib) = wait_with_peak_memory(child.id())?;
        let elapsed = started.elapsed();
        let (_, stderr) = reader.join().map_err(|_| "the output reader panicked")?;
        if status != 0 {
            return Err(format!("zdr {} failed: {stderr}", args.join(" ")));
        }
        Ok(Timed {
            elapsed,
            peak_kib,
            stderr,
        })
    }
}

/// Waits for child `pid` and returns its exit status and its peak resident memory in KiB.
fn wait_with_peak_memory(pid: u32) -> Result<(i32, i64), String> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped (std's `Child` is not waited on), and both
    // out-pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if reaped < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, usage.ru_maxrss))
}

/// Where the runs go: the pristine database, a copy per run, and the native and raw paths.
trait Backend {
    fn name(&self) -> String;
    fn pristine_url(&self) -> String;
    /// Called once the pristine database is complete.
    fn freeze(&self) -> Result<(), String>;
    /// A fresh copy of the pristine database named `name`; its URL.
    fn copy(&self, name: &str) -> Result<String, String>;
    fn drop_copy(&self, name: &str) -> Result<(), String>;
    /// The native v2 rebuild of the whole history into `native_balances`, split by aggregate
    /// into `partitions` running side by side.
    fn native(&self, url: &str, batch: usize, partitions: usize) -> Result<(), String>;
    /// Row count and sums of the native path's table, to check two native runs agree.
    fn digest(&self, url: &str) -> Result<String, String>;
    /// The raw upsert loop, when there is one; its time.
    fn raw(&self, url: &str, events: usize, batch: usize) -> Result<Option<Duration>, String>;
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Writes the bank example's history as zdr's JSON lines: every account opened, then money
/// added (70%) and subtracted (30%) at random, with a fixed seed; `other_percent` of those
/// events are instead of classes the balance projector does not handle, as in a store shared
/// by many projectors.
fn write_history(path: &Path, events: usize, other_percent: u64) -> Result<(), String> {
    use std::io::Write;
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut random = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        // xorshift64: fast, deterministic, good enough to spread accounts.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let accounts = ACCOUNTS.min(events);
    let write = |out: &mut std::io::BufWriter<std::fs::File>, line: String| {
        out.write_all(line.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    for account in 0..accounts {
        write(
            &mut out,
            format!(
                "{{\"aggregate_uuid\":\"acct-{account}\",\"event_class\":\"AccountOpened\",\"event_properties\":{{\"name\":\"n{account}\"}}}}\n"
            ),
        )?;
    }
    for _ in accounts..events {
        let account = next() as usize % accounts;
        if next() % 100 < other_percent {
            write(
                &mut out,
                format!(
                    "{{\"aggregate_uuid\":\"order-{account}\",\"event_class\":\"App\\\\Orders\\\\OrderPlaced\",\"event_properties\":{{\"lines\":3,\"note\":\"a payload of another domain, of about the size of the others\"}}}}\n"
                ),
            )?;
            continue;
        }
        let class = if next() % 10 < 3 {
            "MoneySubtracted"
        } else {
            "MoneyAdded"
        };
        let amount = 1 + next() % 100;
        write(
            &mut out,
            format!(
                "{{\"aggregate_uuid\":\"acct-{account}\",\"event_class\":\"{class}\",\"event_properties\":{{\"amount\":{amount}}}}}\n"
            ),
        )?;
    }
    out.flush().map_err(|e| format!("{}: {e}", path.display()))
}

/// One event as the native path reads it.
struct NativeEvent {
    id: i64,
    aggregate_uuid: Option<String>,
    event_class: String,
    event_properties: String,
    created_at: String,
}

impl NativeEvent {
    /// The SQL and parameters that balance v2 runs for this event, if any.
    fn statement(&self) -> Result<Option<(&'static str, [NativeValue; 3])>, String> {
        let raw = RawEvent {
            id: self.id,
            aggregate_uuid: self.aggregate_uuid.as_deref(),
            event_class: &self.event_class,
            properties: &self.event_properties,
        };
        let Some(BalanceEvent { account, change }) = balance_common::parse(&raw)? else {
            return Ok(None);
        };
        let at = NativeValue::Text(self.created_at.clone());
        Ok(Some(match change {
            Change::Opened { name } => (
                OPEN_ACCOUNT,
                [NativeValue::Text(account), NativeValue::Text(name), at],
            ),
            Change::Added { amount } => (
                ADD_MONEY,
                [NativeValue::Integer(amount), at, NativeValue::Text(account)],
            ),
            Change::Subtracted { amount } => (
                SUBTRACT_MONEY,
                [NativeValue::Integer(amount), at, NativeValue::Text(account)],
            ),
        }))
    }
}

/// A statement parameter of the native path.
enum NativeValue {
    Integer(i64),
    Text(String),
}

/// The SQLite runs: a file in the benchmark's folder, copied for each run.
struct Sqlite {
    dir: PathBuf,
}

impl Sqlite {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A connection with zdr's settings (`backend/sqlite/mod.rs`).
    fn open(url: &str) -> Result<rusqlite::Connection, String> {
        let path = url.trim_start_matches("sqlite://");
        let conn = rusqlite::Connection::open(path).map_err(|e| format!("{path}: {e}"))?;
        conn.busy_timeout(Duration::from_secs(30))
            .and_then(|()| {
                conn.execute_batch(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                     PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 10000; \
                     PRAGMA journal_size_limit = 67108864;",
                )
            })
            .map_err(|e| format!("{path}: {e}"))?;
        conn.set_prepared_statement_cache_capacity(256);
        Ok(conn)
    }
}

/// `$n` placeholders as SQLite's `?n`, as zdr rewrites them.
fn sqlite_placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

impl Backend for Sqlite {
    fn name(&self) -> String {
        "SQLite".into()
    }

    fn pristine_url(&self) -> String {
        format!("sqlite://{}", self.file("pristine.db").display())
    }

    fn freeze(&self) -> Result<(), String> {
        // Folds the write-ahead log into the file, so that one file is the whole database.
        let conn = Self::open(&self.pristine_url())?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .map_err(|e| format!("checkpointing the pristine database: {e}"))
    }

    fn copy(&self, name: &str) -> Result<String, String> {
        let copy = self.file(&format!("{name}.db"));
        std::fs::copy(self.file("pristine.db"), &copy)
            .map_err(|e| format!("copying the pristine database: {e}"))?;
        Ok(format!("sqlite://{}", copy.display()))
    }

    fn drop_copy(&self, name: &str) -> Result<(), String> {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(self.file(&format!("{name}.db{suffix}")));
        }
        let _ = std::fs::remove_dir_all(self.file(&format!("{name}.db.zdr-locks")));
        Ok(())
    }

    fn native(&self, url: &str, batch: usize, partitions: usize) -> Result<(), String> {
        if partitions > 1 {
            return Err("--partitions is for PostgreSQL: SQLite has a single writer".into());
        }
        let mut conn = Self::open(url)?;
        let fail = |e: rusqlite::Error| format!("native path: {e}");
        conn.execute_batch(&format!(
            "{CREATE_BALANCES}; {INDEX_BY_NAME}; \
             CREATE TABLE native_checkpoint (id INTEGER PRIMARY KEY, checkpoint INTEGER NOT NULL); \
             INSERT INTO native_checkpoint VALUES (1, 0);"
        ))
        .map_err(fail)?;
        let read = sqlite_placeholders(READ_EVENTS);
        let head: i64 = conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM stored_events", [], |r| {
                r.get(0)
            })
            .map_err(fail)?;
        let mut checkpoint = 0;
        while checkpoint < head {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(fail)?;
            let events = {
                let mut stmt = tx.prepare_cached(&read).map_err(fail)?;
                stmt.query_map(rusqlite::params![checkpoint, head, batch as i64], |row| {
                    Ok(NativeEvent {
                        id: row.get(0)?,
                        aggregate_uuid: row.get(1)?,
                        event_class: row.get(4)?,
                        event_properties: row.get(5)?,
                        created_at: row.get(7)?,
                    })
                })
                .map_err(fail)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?
            };
            for event in &events {
                let Some((sql, params)) = event.statement()? else {
                    continue;
                };
                let mut stmt = tx.prepare_cached(&sqlite_placeholders(sql)).map_err(fail)?;
                let params = params.map(|p| match p {
                    NativeValue::Integer(v) => rusqlite::types::Value::Integer(v),
                    NativeValue::Text(v) => rusqlite::types::Value::Text(v),
                });
                let changed = stmt
                    .execute(rusqlite::params_from_iter(params))
                    .map_err(fail)?;
                if changed == 0 {
                    return Err(format!("native path: event {} changed no row", event.id));
                }
            }
            checkpoint = events.last().map_or(head, |e| e.id);
            tx.execute(
                "UPDATE native_checkpoint SET checkpoint = ?1 WHERE id = 1",
                [checkpoint],
            )
            .map_err(fail)?;
            tx.commit().map_err(fail)?;
        }
        Ok(())
    }

    fn digest(&self, url: &str) -> Result<String, String> {
        Self::open(url)?
            .query_row(DIGEST, [], |row| row.get(0))
            .map_err(|e| format!("native digest: {e}"))
    }

    fn raw(&self, url: &str, events: usize, batch: usize) -> Result<Option<Duration>, String> {
        let mut conn = Self::open(url)?;
        let fail = |e: rusqlite::Error| format!("raw path: {e}");
        conn.execute_batch("CREATE TABLE raw_balances (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            .map_err(fail)?;
        let keys: Vec<String> = (0..HOT_KEYS).map(|k| format!("acct-{k}")).collect();
        let started = Instant::now();
        let mut done = 0;
        while done < events {
            let tx = conn.transaction().map_err(fail)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO raw_balances (k, v) VALUES (?1, ?2) \
                         ON CONFLICT (k) DO UPDATE SET v = v + excluded.v",
                    )
                    .map_err(fail)?;
                for i in done..(done + batch).min(events) {
                    stmt.execute(rusqlite::params![keys[i % HOT_KEYS], 1])
                        .map_err(fail)?;
                }
            }
            tx.commit().map_err(fail)?;
            done += batch;
        }
        Ok(Some(started.elapsed()))
    }
}

/// The PostgreSQL runs: a pristine database and a copy of it per run (`CREATE DATABASE …
/// TEMPLATE`), all dropped at the end.
struct Postgres {
    server: String,
    prefix: String,
}

impl Postgres {
    fn new(server: &str) -> Result<Self, String> {
        let this = Postgres {
            server: server.trim_end_matches('/').to_owned(),
            prefix: format!("zdr_bench_{}", std::process::id()),
        };
        this.admin(&format!("CREATE DATABASE {}_pristine", this.prefix))?;
        Ok(this)
    }

    fn url(&self, database: &str) -> String {
        format!("{}/{}_{database}", self.server, self.prefix)
    }

    /// Runs one statement on the server's `postgres` database.
    fn admin(&self, sql: &str) -> Result<(), String> {
        let url = format!("{}/postgres", self.server);
        let mut client =
            postgres::Client::connect(&url, postgres::NoTls).map_err(|e| format!("{url}: {e}"))?;
        client.batch_execute(sql).map_err(|e| format!("{sql}: {e}"))
    }
}

impl Backend for Postgres {
    fn name(&self) -> String {
        format!("PostgreSQL at {}", self.server)
    }

    fn pristine_url(&self) -> String {
        self.url("pristine")
    }

    fn freeze(&self) -> Result<(), String> {
        Ok(())
    }

    fn copy(&self, name: &str) -> Result<String, String> {
        self.admin(&format!(
            "CREATE DATABASE {0}_{name} TEMPLATE {0}_pristine",
            self.prefix
        ))?;
        let url = self.url(name);
        let mut client =
            postgres::Client::connect(&url, postgres::NoTls).map_err(|e| format!("{url}: {e}"))?;
        client
            .batch_execute("VACUUM ANALYZE")
            .map_err(|e| format!("VACUUM ANALYZE: {e}"))?;
        Ok(url)
    }

    fn drop_copy(&self, name: &str) -> Result<(), String> {
        self.admin(&format!(
            "DROP DATABASE IF EXISTS {}_{name} WITH (FORCE)",
            self.prefix
        ))
    }

    fn native(&self, url: &str, batch: usize, partitions: usize) -> Result<(), String> {
        let fail = |e: postgres::Error| format!("native path: {e}");
        let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(fail)?;
        client
            .batch_execute(&format!(
                "{CREATE_BALANCES}; {INDEX_BY_NAME}; \
                 CREATE TABLE native_checkpoint (id INTEGER PRIMARY KEY, checkpoint BIGINT NOT NULL); \
                 INSERT INTO native_checkpoint SELECT g, 0 FROM generate_series(0, {partitions} - 1) g;"
            ))
            .map_err(fail)?;
        let head: i64 = client
            .query_one(
                "SELECT COALESCE(MAX(id), 0)::BIGINT FROM stored_events",
                &[],
            )
            .map_err(fail)?
            .get(0);
        let workers: Vec<_> = (0..partitions)
            .map(|partition| {
                let url = url.to_owned();
                std::thread::spawn(move || {
                    native_partition(&url, batch, head, partitions as i32, partition as i32)
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| "a native partition panicked".to_string())??;
        }
        Ok(())
    }

    fn digest(&self, url: &str) -> Result<String, String> {
        let fail = |e: postgres::Error| format!("native digest: {e}");
        postgres::Client::connect(url, postgres::NoTls)
            .and_then(|mut client| client.query_one(DIGEST, &[]))
            .map(|row| row.get(0))
            .map_err(fail)
    }

    fn raw(&self, _url: &str, _events: usize, _batch: usize) -> Result<Option<Duration>, String> {
        Ok(None)
    }
}

/// One partition of the native PostgreSQL rebuild: the events whose aggregate hashes to
/// `partition` of `partitions`, in id order, with a checkpoint of its own.
fn native_partition(
    url: &str,
    batch: usize,
    head: i64,
    partitions: i32,
    partition: i32,
) -> Result<(), String> {
    use postgres::types::Type;
    let fail = |e: postgres::Error| format!("native path: {e}");
    let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(fail)?;
    let read = client
        .prepare(
            "SELECT id, aggregate_uuid, event_class, COALESCE(event_properties, '{}')::TEXT, \
             COALESCE(CAST(created_at AS TEXT), '') \
             FROM stored_events WHERE id > $1 AND id <= $2 \
             AND event_class IN ('AccountOpened', 'MoneyAdded', 'MoneySubtracted') \
             AND ($4 = 1 OR abs(hashtext(COALESCE(aggregate_uuid::TEXT, ''))) % $4 = $5) \
             ORDER BY id LIMIT $3",
        )
        .map_err(fail)?;
    // Typed as zdr binds them: a guest's integer is a BIGINT.
    let open = client
        .prepare_typed(OPEN_ACCOUNT, &[Type::TEXT, Type::TEXT, Type::TEXT])
        .map_err(fail)?;
    let add = client
        .prepare_typed(ADD_MONEY, &[Type::INT8, Type::TEXT, Type::TEXT])
        .map_err(fail)?;
    let subtract = client
        .prepare_typed(SUBTRACT_MONEY, &[Type::INT8, Type::TEXT, Type::TEXT])
        .map_err(fail)?;
    let mut checkpoint = 0i64;
    while checkpoint < head {
        let mut tx = client.transaction().map_err(fail)?;
        let rows = tx
            .query(
                &read,
                &[&checkpoint, &head, &(batch as i64), &partitions, &partition],
            )
            .map_err(fail)?;
        for row in &rows {
            let event = NativeEvent {
                id: row.get(0),
                aggregate_uuid: row.get(1),
                event_class: row.get(2),
                event_properties: row.get(3),
                created_at: row.get(4),
            };
            let Some((sql, params)) = event.statement()? else {
                continue;
            };
            let stmt = if sql == OPEN_ACCOUNT {
                &open
            } else if sql == ADD_MONEY {
                &add
            } else {
                &subtract
            };
            let [a, b, c] = &params;
            let changed = tx
                .execute(stmt, &[a.as_sql(), b.as_sql(), c.as_sql()])
                .map_err(fail)?;
            if changed == 0 {
                return Err(format!("native path: event {} changed no row", event.id));
            }
        }
        checkpoint = if rows.len() < batch {
            head
        } else {
            rows.last().map_or(head, |r| r.get(0))
        };
        tx.execute(
            "UPDATE native_checkpoint SET checkpoint = $1 WHERE id = $2",
            &[&checkpoint, &partition],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
    }
    Ok(())
}

impl Drop for Postgres {
    /// Drops every database of this benchmark, also when it fails half way.
    fn drop(&mut self) {
        let url = format!("{}/postgres", self.server);
        let dropped = postgres::Client::connect(&url, postgres::NoTls).and_then(|mut client| {
            let pattern = format!("{}\\_%", self.prefix);
            for row in client.query(
                "SELECT datname::TEXT FROM pg_database WHERE datname LIKE $1",
                &[&pattern],
            )? {
                let name: String = row.get(0);
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
            }
            Ok(())
        });
        if let Err(e) = dropped {
            eprintln!("rebuild bench: dropping its databases: {e}");
        }
    }
}

impl NativeValue {
    fn as_sql(&self) -> &(dyn postgres::types::ToSql + Sync) {
        match self {
            NativeValue::Integer(v) => v,
            NativeValue::Text(v) => v,
        }
    }
}
