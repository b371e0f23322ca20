//! Concurrency: events appended while `replay start` runs and between `project` and
//! `promote` land exactly once in live and clone; readers of the live table never see it
//! missing, empty, partial or half old and half new while `promote` swaps it (SQLite here;
//! PostgreSQL's readers are in `postgres.rs`); two daemons on one database never both apply
//! an event, and one takes over when the other dies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::support::{
    Appender, Backend, Env, Generator, PATIENCE, StoredEvent, assert_same_rows, both_backends,
    fold_v1, fold_v2, guests, through, wait_until,
};

both_backends!(
    events_appended_during_start_and_while_projecting_land_exactly_once_in_live_and_clone,
    two_daemons_never_apply_an_event_twice_and_one_takes_over_when_the_owner_dies,
);

#[test]
fn replay_start_ends_while_writers_keep_reopening_gaps_on_postgres() {
    replay_start_ends_while_writers_keep_reopening_gaps(Backend::Postgres);
}

#[test]
fn replay_start_ends_while_writers_keep_reopening_gaps_on_mariadb() {
    replay_start_ends_while_writers_keep_reopening_gaps(Backend::Mariadb);
}

/// A rebuild that reaches a head held back by a gap in the ids waits for the gap to settle,
/// but at most `HELD_HEAD_PATIENCE` (5 s) in all: writers that keep reopening a gap under the
/// safe head (two each hold their insert 300 ms, half a hold apart, the next begun at once,
/// while a third commits events above them) must not keep `replay start` going for as long as they write. It ends at
/// the safe head while they still write, and nothing it applied is skipped or doubled.
/// (SQLite has no gaps: its writers take turns.)
fn replay_start_ends_while_writers_keep_reopening_gaps(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config("rebuild_partitions = 1\n");
    let mut generator = Generator::new(31);
    env.import(&generator.open_accounts(10));
    env.import(&generator.money(200));
    env.deploy("balance", &g.balance_v1);
    env.create_balance_replay("v2", &g.balance_v2);

    // Two writers each hold an insert 300 ms, half a hold apart, so that one of them always
    // holds an id below one the other (or the third writer) committed.
    let accounts = generator.accounts().to_vec();
    let committing = Appender::start(&env, 32, accounts.clone());
    let hold = Duration::from_millis(300);
    let writing_for = Duration::from_secs(40);
    let holding = Appender::holding(&env, 33, accounts.clone(), hold, writing_for);
    std::thread::sleep(hold / 2);
    let holding_too = Appender::holding(&env, 34, accounts, hold, writing_for);
    holding.wait_for(2);
    holding_too.wait_for(2);
    committing.wait_for(30);
    env.ok(&["replay", "start", "v2"]);
    assert!(
        !holding.finished() && !holding_too.finished(),
        "replay start ended only once the writers holding gaps stopped"
    );
    committing.stop();
    holding.stop();
    holding_too.stop();

    env.ok(&["replay", "start", "v2"]);
    assert_same_rows(
        &env.balances_v2(&env.clone_table("v2", "balances")),
        &fold_v2(&env.stored_events()),
        "the clone after the writers stopped",
    );
}

fn events_appended_during_start_and_while_projecting_land_exactly_once_in_live_and_clone(
    backend: Backend,
) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(2);
    env.import(&generator.open_accounts(40));
    env.import(&generator.money(20_000));
    env.deploy("balance", &g.balance_v1);
    let mut daemon = env.serve();

    let appender = Appender::start(&env, 21, generator.accounts().to_vec());
    appender.wait_for(30);
    env.create_balance_replay("v2", &g.balance_v2);
    let before_start = appender.appended();
    env.ok(&["replay", "start", "v2"]);
    assert!(
        appender.appended() > before_start,
        "no event was appended while `replay start` ran"
    );
    env.ok(&["replay", "start", "v2"]);
    env.ok(&["replay", "project", "v2"]);
    appender.wait_for(300);
    let appended = appender.stop();

    // Both targets caught up: each holds every event exactly once.
    env.wait_live("balance", "1");
    env.wait_replay_caught_up("v2");
    let events = env.stored_events();
    assert_eq!(
        events.len() as u64,
        40 + 20_000 + appended,
        "every appended event is stored"
    );
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "live v1 under concurrent appends",
    );
    assert_same_rows(
        &env.balances_v2(&env.clone_table("v2", "balances")),
        &fold_v2(&events),
        "clone under concurrent appends",
    );
    let money = events.iter().filter(|e| e.is_money()).count() as i64;
    assert_eq!(
        env.scalar(&format!(
            "SELECT SUM(transaction_count) FROM {}",
            env.clone_table("v2", "balances")
        )),
        money,
        "the clone counted every money event exactly once"
    );

    // Promote with the appender running again.
    let appender = Appender::start(&env, 22, generator.accounts().to_vec());
    appender.wait_for(100);
    env.ok(&["replay", "promote", "v2"]);
    let retired_checkpoint = env.show("v2")["projectors"][0]["checkpoint"]
        .as_i64()
        .expect("a checkpoint");
    appender.wait_for(100);
    appender.stop();
    env.wait_live("balance", "2");

    let events = env.stored_events();
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&events),
        "live v2 after a promote under load",
    );
    let money = events.iter().filter(|e| e.is_money()).count() as i64;
    assert_eq!(
        env.scalar("SELECT SUM(transaction_count) FROM balances"),
        money,
        "live counted every money event exactly once"
    );
    assert_same_rows(
        &env.balances_v1(&env.retired_table("v2", "balances")),
        &fold_v1(through(&events, retired_checkpoint)),
        "the retired v1 tables hold every event up to the promote exactly once",
    );
    env.ok(&["replay", "remove", "v2"]);
    daemon.assert_running();
    daemon.stop();
}

/// What one reader saw in one read transaction.
struct Sample {
    started: Instant,
    elapsed: Duration,
    columns: usize,
    rows: usize,
    balance_sum: i64,
    checkpoint: i64,
    version: String,
}

/// Reads the whole live `balances` table and the live checkpoint in one read transaction.
fn sample(path: &std::path::Path) -> Result<Sample, String> {
    let started = Instant::now();
    let mut conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let (columns, rows, balance_sum) = {
        let mut stmt = tx
            .prepare("SELECT * FROM balances")
            .map_err(|e| e.to_string())?;
        // The column count is taken from the rows, not from the prepared statement: SQLite
        // re-prepares a statement whose schema changed between prepare and step.
        let rows: Vec<(i64, usize)> = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>("balance")?, r.as_ref().column_count()))
            })
            .map_err(|e| e.to_string())?
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let columns = rows.first().map_or(0, |(_, columns)| *columns);
        if rows.iter().any(|(_, c)| *c != columns) {
            return Err("rows with different column counts in one read".into());
        }
        (columns, rows.len(), rows.iter().map(|(b, _)| b).sum())
    };
    let (checkpoint, version) = tx
        .query_row(
            "SELECT t.checkpoint, v.version FROM zdr_targets t JOIN zdr_versions v ON v.id = t.version_id \
             WHERE t.projector = 'balance' AND t.role = 'live'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok(Sample {
        started,
        elapsed: started.elapsed(),
        columns,
        rows,
        balance_sum,
        checkpoint,
        version,
    })
}

/// The sum of all balances after each event: `(event id, sum)` in id order.
fn balance_sums(events: &[StoredEvent]) -> Vec<(i64, i64)> {
    let mut sum = 0;
    events
        .iter()
        .map(|e| {
            if e.is_money() {
                let properties: serde_json::Value =
                    serde_json::from_str(&e.properties).expect("JSON properties");
                let amount = properties["amount"].as_i64().expect("an integer amount");
                sum += if e.event_class.ends_with("MoneySubtracted") {
                    -amount
                } else {
                    amount
                };
            }
            (e.id, sum)
        })
        .collect()
}

/// The sum of all balances after the events up to `checkpoint`.
fn balance_sum_at(sums: &[(i64, i64)], checkpoint: i64) -> i64 {
    let end = sums.partition_point(|(id, _)| *id <= checkpoint);
    if end == 0 { 0 } else { sums[end - 1].1 }
}

#[test]
fn readers_never_see_a_missing_empty_partial_or_mixed_table_during_promote() {
    const ACCOUNTS: usize = 60;
    const READERS: usize = 3;
    let g = guests();
    let env = Env::new(Backend::Sqlite);
    let mut generator = Generator::new(3);
    env.import(&generator.open_accounts(ACCOUNTS));
    env.import(&generator.money(3_000));
    env.deploy("balance", &g.balance_v1);
    let mut daemon = env.serve();
    env.create_balance_replay("v2", &g.balance_v2);
    env.ok(&["replay", "start", "v2"]);
    env.ok(&["replay", "project", "v2"]);
    let appender = Appender::start(&env, 31, generator.accounts().to_vec());

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<JoinHandle<Vec<Result<Sample, String>>>> = (0..READERS)
        .map(|_| {
            let (stop, path) = (stop.clone(), env.db_path());
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    samples.push(sample(&path));
                    std::thread::sleep(Duration::from_millis(1));
                }
                samples
            })
        })
        .collect();
    appender.wait_for(60);
    let promote_started = Instant::now();
    env.ok(&["replay", "promote", "v2"]);
    let promote_ended = Instant::now();
    // Keep reading until the daemon has served v2 for a while.
    env.wait_live("balance", "2");
    appender.wait_for(60);
    stop.store(true, Ordering::Relaxed);
    let per_reader: Vec<Vec<Result<Sample, String>>> = readers
        .into_iter()
        .map(|r| r.join().expect("a reader thread panicked"))
        .collect();
    appender.stop();
    env.wait_live("balance", "2");
    let events = env.stored_events();
    let sums = balance_sums(&events);
    assert_eq!(
        balance_sum_at(&sums, i64::MAX),
        fold_v1(&events)
            .iter()
            .map(|row| row[2].parse::<i64>().expect("an integer"))
            .sum::<i64>(),
        "test bug: the running sums disagree with the fold"
    );

    let mut max_stall = Duration::ZERO;
    let mut total = 0;
    for (reader, samples) in per_reader.iter().enumerate() {
        let mut seen_new = false;
        let (mut before, mut after) = (0, 0);
        for result in samples {
            let s = match result {
                Ok(s) => s,
                Err(err) => panic!("reader {reader} got an error: {err}"),
            };
            total += 1;
            max_stall = max_stall.max(s.elapsed);
            assert_eq!(
                s.rows, ACCOUNTS,
                "reader {reader} saw {} of {ACCOUNTS} accounts",
                s.rows
            );
            match (s.columns, s.version.as_str()) {
                (3, "1") => assert!(
                    !seen_new,
                    "reader {reader} saw the old table again after the new one"
                ),
                (5, "2") => seen_new = true,
                (columns, version) => {
                    panic!("reader {reader} saw {columns} columns with version {version} live")
                }
            }
            assert_eq!(
                s.balance_sum,
                balance_sum_at(&sums, s.checkpoint),
                "reader {reader}: the table does not match the live checkpoint {} it was read with",
                s.checkpoint
            );
            if s.started + s.elapsed < promote_started {
                before += 1;
                assert_eq!(
                    s.columns, 3,
                    "reader {reader} saw v2 before the promote began"
                );
            }
            if s.started > promote_ended {
                after += 1;
                assert_eq!(
                    s.columns, 5,
                    "reader {reader} saw v1 after the promote ended"
                );
            }
        }
        assert!(
            before > 0 && after > 0,
            "reader {reader} read {before} times before and {after} after the promote"
        );
    }
    eprintln!("{total} reads of the live table during the promote; the slowest took {max_stall:?}");
    wait_until(PATIENCE, "the hot swap in the log", || {
        daemon.log().contains("hot swap")
    });
    daemon.assert_running();
    daemon.stop();
}

fn two_daemons_never_apply_an_event_twice_and_one_takes_over_when_the_owner_dies(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(14);
    env.import(&generator.open_accounts(20));
    env.import(&generator.money(500));
    env.deploy("balance", &g.balance_v1);
    env.create_balance_replay("v2", &g.balance_v2);
    env.ok(&["replay", "start", "v2"]);
    env.ok(&["replay", "project", "v2"]);

    let first = env.serve();
    let second = env.serve_with_log("serve-2.log");
    let appender = Appender::start(&env, 141, generator.accounts().to_vec());
    appender.wait_for(200);
    let owns = |d: &crate::support::Daemon| {
        d.log()
            .lines()
            .any(|l| l.contains("worker started") && l.contains("projector=\"balance\""))
    };
    wait_until(PATIENCE, "one daemon to own the balance projector", || {
        owns(&first) || owns(&second)
    });
    assert!(
        !(owns(&first) && owns(&second)),
        "both daemons run a worker for balance"
    );
    let (owner, mut other) = if owns(&first) {
        (first, second)
    } else {
        (second, first)
    };
    owner.crash();
    wait_until(PATIENCE, "the other daemon to take over", || owns(&other));
    appender.wait_for(200);
    appender.stop();
    env.wait_live("balance", "1");
    env.wait_replay_caught_up("v2");
    let events = env.stored_events();
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "live served by two daemons",
    );
    assert_same_rows(
        &env.balances_v2(&env.clone_table("v2", "balances")),
        &fold_v2(&events),
        "clone served by two daemons",
    );
    other.assert_running();
    other.stop();
}
