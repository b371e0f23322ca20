//! The server backends under pressure, each scenario written once for PostgreSQL
//! (`postgres.rs`) and MariaDB (`mariadb.rs`), which bring only how their connections append,
//! read and hold an id they have not written yet.
//!
//! - **Appenders committing out of order** ([`appenders_commit_out_of_order`]): eight appenders
//!   write small transactions that stay open a while, so that ids are drawn in one order and
//!   committed in another, and one in eight rolls back (a real gap); slow writers of three
//!   shapes hold an id longer still. Through it all a daemon serves live and a rebuild is
//!   started again and again. At the end live and the clone must each equal the fold of every
//!   committed event: a skipped event is missing from some balance, one applied twice counted
//!   twice.
//! - **Readers through promotes** ([`readers_see_one_whole_version`]): readers query the live
//!   table back to back while promote swaps version 1 and version 2 under it; every read must
//!   see one whole version, never an error, a missing table or a mix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{Backend, Env, Generator, assert_same_rows, fold_v1, fold_v2, guests};

/// A class of the shared store that the balance projector does not handle.
pub const OTHER_CLASS: &str = "App\\Orders\\OrderPlaced";

/// How many rows one [`SlowShape::MultiRow`] statement inserts.
pub const MULTI_ROW: u64 = 3_000;

/// The ways a writer can hold an event id it has not written yet, each slower than the
/// appenders around it.
#[derive(Debug, Clone, Copy)]
pub enum SlowShape {
    /// The id is drawn, then a value takes a while to compute.
    SlowValue,
    /// One statement inserts [`MULTI_ROW`] rows: the first row's id is drawn long before the
    /// last.
    MultiRow,
    /// A long first statement, then the insert, in one transaction.
    LongFirstStatement,
}

/// A connection that appends events the way the application owning the store would.
pub trait EventClient {
    /// Begins a transaction.
    fn begin(&mut self);
    /// Inserts one event in the open transaction.
    fn insert(&mut self, aggregate: &str, class: &str, properties: &str);
    /// Commits the open transaction.
    fn commit(&mut self);
    /// Rolls the open transaction back.
    fn rollback(&mut self);
}

/// What one backend brings to the scenario.
pub struct Writers<C> {
    /// Opens an appender's connection to the database at a URL.
    pub connect: fn(&str) -> C,
    /// Writes `rounds` slow inserts of a shape for an account; returns the events committed.
    pub slow: fn(&str, SlowShape, String, u64) -> u64,
}

/// The scale of one backend's run.
pub struct Scale {
    /// Events the eight appenders commit in all.
    pub events: u64,
    /// Rounds of each slow shape: slow value, multi-row, long first statement.
    pub slow_rounds: [u64; 3],
}

/// What one appender did.
#[derive(Debug, Default)]
struct Appended {
    committed_events: u64,
    committed_transactions: u64,
    rolled_back_transactions: u64,
}

/// Appends `events` money events on `accounts` through `client`, in transactions of one to five
/// events that stay open for 0–20 ms (between their inserts too); one transaction in eight is
/// rolled back. With `others`, about a third of the events are of a class the balance
/// projector does not handle, as in a store many projectors share.
fn append_slowly(
    client: &mut impl EventClient,
    seed: u64,
    accounts: Vec<String>,
    events: u64,
    others: bool,
) -> Appended {
    let mut generator = Generator::with_accounts(seed, accounts);
    let mut done = Appended::default();
    while done.committed_events < events {
        let n = (1 + generator.below(5)).min(events - done.committed_events);
        let batch = generator.money(usize::try_from(n).expect("a small batch"));
        client.begin();
        for e in &batch {
            let class = if others && generator.below(3) == 0 {
                OTHER_CLASS
            } else {
                e.class.as_str()
            };
            let aggregate = e
                .aggregate
                .as_deref()
                .expect("money events have an account");
            client.insert(aggregate, class, &e.properties.to_string());
            std::thread::sleep(Duration::from_millis(generator.below(6)));
        }
        std::thread::sleep(Duration::from_millis(generator.below(21)));
        if generator.below(8) == 0 {
            client.rollback();
            done.rolled_back_transactions += 1;
        } else {
            client.commit();
            done.committed_transactions += 1;
            done.committed_events += n;
        }
    }
    done
}

/// Runs the scenario on `backend` at `scale`.
pub fn appenders_commit_out_of_order<C: EventClient + 'static>(
    backend: Backend,
    scale: Scale,
    writers: Writers<C>,
) {
    const APPENDERS: u64 = 8;
    const ACCOUNTS: usize = 50;
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(32);
    env.import(&generator.open_accounts(ACCOUNTS));
    env.deploy("balance", &g.balance_v1);
    // A rebuild runs beside live through the appends (below), without the writer lock and
    // reading only the classes it handles.
    env.create_balance_replay("v2", &g.balance_v2);
    let mut daemon = env.serve();

    let connect = writers.connect;
    let appenders: Vec<JoinHandle<Appended>> = (0..APPENDERS)
        .map(|i| {
            let (url, accounts) = (env.url().to_string(), generator.accounts().to_vec());
            // Half of the appenders mix in events of another class.
            let others = i % 2 == 1;
            let events = scale.events / APPENDERS;
            std::thread::spawn(move || {
                append_slowly(&mut connect(&url), 3_200 + i, accounts, events, others)
            })
        })
        .collect();
    // Writers that hold an id they have not written yet, of every shape, among the appenders.
    let [slow_value, multi_row, long_first] = scale.slow_rounds;
    let slow: Vec<JoinHandle<u64>> = [
        (SlowShape::SlowValue, slow_value),
        (SlowShape::MultiRow, multi_row),
        (SlowShape::LongFirstStatement, long_first),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (shape, rounds))| {
        let (url, account) = (env.url().to_string(), generator.accounts()[i].clone());
        let write = writers.slow;
        std::thread::spawn(move || write(&url, shape, account, rounds))
    })
    .collect();
    // `replay start` again and again while the appenders run: each catches the clone up to
    // the safe head of that moment.
    let mut starts = 0;
    while appenders.iter().any(|a| !a.is_finished()) {
        env.ok(&["replay", "start", "v2"]);
        starts += 1;
    }
    let done: Vec<Appended> = appenders
        .into_iter()
        .map(|a| a.join().expect("an appender panicked"))
        .collect();
    let slow_events: u64 = slow
        .into_iter()
        .map(|s| s.join().expect("a slow writer panicked"))
        .sum();
    let committed: u64 = done.iter().map(|d| d.committed_events).sum();
    let rolled_back: u64 = done.iter().map(|d| d.rolled_back_transactions).sum();
    let transactions: u64 = done.iter().map(|d| d.committed_transactions).sum();
    assert_eq!(
        committed, scale.events,
        "test bug: the appenders' accounting"
    );
    assert_eq!(
        slow_events,
        slow_value + MULTI_ROW * multi_row + long_first,
        "test bug: the slow writers' accounting"
    );

    env.wait_live("balance", "1");
    let events = env.stored_events();
    let head = env.head();
    assert_eq!(
        events.len() as u64,
        ACCOUNTS as u64 + scale.events + slow_events,
        "every committed event is stored, and nothing else"
    );
    assert!(
        head > events.len() as i64,
        "test bug: no rolled-back transaction left a gap in the ids (head {head})"
    );
    eprintln!(
        "{} events in {transactions} transactions by {APPENDERS} appenders, \
         {rolled_back} transactions rolled back; ids end at {head} with {} gaps",
        scale.events,
        head - events.len() as i64
    );
    let live = env.projector("balance");
    assert_eq!(live["checkpoint"], head, "{live:#}");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "live v1 after 8 appenders committing out of order",
    );
    // The rebuild, run during the appends and once more after them, skipped nothing either.
    env.ok(&["replay", "start", "v2"]);
    // Each start chases the head until it catches up, so on a loaded machine the first may
    // last as long as the appends; at least one ran beside them either way.
    assert!(
        starts >= 1,
        "test bug: the rebuild never ran during the appends"
    );
    assert_eq!(env.show("v2")["projectors"][0]["checkpoint"], head);
    assert_same_rows(
        &env.balances_v2(&env.clone_table("v2", "balances")),
        &fold_v2(&events),
        "the clone rebuilt during 8 appenders committing out of order",
    );
    daemon.assert_running();
    daemon.stop();
}

/// A table's rows, each value as text.
type Rows = Vec<Vec<String>>;

/// A connection that reads the live table as an application would.
pub trait LiveReader {
    /// Reads every account of the live table, each row as text (`NULL` for a null), in any
    /// order.
    ///
    /// # Errors
    /// The database's error, as text.
    fn read(&mut self) -> Result<Rows, String>;
}

/// One reader's account of its reads.
#[derive(Debug, Default)]
struct ReaderLog {
    reads: u64,
    v1: u64,
    v2: u64,
    errors: Vec<String>,
    wrong: Vec<String>,
    longest: Duration,
}

/// Reads through `reader` until `stop`, comparing each result with the two states the live
/// table may be in.
fn read_live(mut reader: impl LiveReader, states: &[Rows; 2], stop: &AtomicBool) -> ReaderLog {
    let mut log = ReaderLog::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = reader.read();
        log.longest = log.longest.max(started.elapsed());
        log.reads += 1;
        match result {
            Err(e) => {
                if log.errors.len() < 5 {
                    log.errors.push(e);
                }
            }
            Ok(mut rows) => {
                rows.sort();
                if rows == states[0] {
                    log.v1 += 1;
                } else if rows == states[1] {
                    log.v2 += 1;
                } else if log.wrong.len() < 5 {
                    log.wrong
                        .push(format!("{} rows, first: {:?}", rows.len(), rows.first()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    log
}

/// What one backend brings to the readers scenario.
pub struct Readers<R> {
    /// Opens a reader's connection to the database at a URL.
    pub connect: fn(&str) -> R,
    /// The two states the live table can be in, as this backend's reader sees them, from
    /// version 1's and version 2's folds.
    pub states: fn(Rows, Rows) -> [Rows; 2],
}

/// Runs the readers scenario on `backend`: `readers` readers through `promotes` promotes, on a
/// history of `money` money events.
pub fn readers_see_one_whole_version<R: LiveReader + 'static>(
    backend: Backend,
    readers: usize,
    promotes: usize,
    money: usize,
    how: Readers<R>,
) {
    const ACCOUNTS: usize = 40;
    assert!(
        promotes.is_multiple_of(2),
        "test bug: version 1 is live again only after an even number of promotes"
    );
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(33);
    env.import(&generator.open_accounts(ACCOUNTS));
    env.import(&generator.money(money));
    env.deploy("balance", &g.balance_v1);
    let mut daemon = env.serve();
    env.wait_live("balance", "1");

    // No events arrive from here on: the live table is in one of two known states, which
    // the folds give.
    let events = env.stored_events();
    let states = Arc::new((how.states)(fold_v1(&events), fold_v2(&events)));
    assert_eq!(states[0].len(), ACCOUNTS);
    assert_ne!(states[0], states[1]);

    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(readers + 1));
    let connect = how.connect;
    let handles: Vec<JoinHandle<ReaderLog>> = (0..readers)
        .map(|_| {
            let (url, states, stop, ready) = (
                env.url().to_string(),
                states.clone(),
                stop.clone(),
                ready.clone(),
            );
            std::thread::spawn(move || {
                // Connect after the barrier: a reader that cannot connect panics, and must not
                // leave the others waiting at the barrier for ever.
                ready.wait();
                read_live(connect(&url), &states, &stop)
            })
        })
        .collect();
    ready.wait();

    let mut versions = std::collections::BTreeMap::new();
    for round in 0..promotes {
        let (version, file) = if round % 2 == 0 {
            ("2", &g.balance_v2)
        } else {
            ("1", &g.balance_v1)
        };
        let key = format!("p{round}");
        env.create_balance_replay(&key, file);
        env.ok(&["replay", "start", &key]);
        env.ok(&["replay", "project", &key]);
        let out = env.ok(&["replay", "promote", &key]);
        assert!(
            out.contains(&format!("promoted balance version {version}")),
            "round {round}: {out}"
        );
        env.ok(&["replay", "remove", &key]);
        *versions.entry(version).or_insert(0) += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<ReaderLog> = handles
        .into_iter()
        .map(|r| r.join().expect("a reader panicked"))
        .collect();

    let reads: u64 = logs.iter().map(|l| l.reads).sum();
    let longest = logs.iter().map(|l| l.longest).max().unwrap_or_default();
    eprintln!(
        "{readers} readers, {reads} reads during {promotes} promotes ({versions:?}); \
         the longest reader stall was {longest:?}"
    );
    for (i, log) in logs.iter().enumerate() {
        assert!(
            log.errors.is_empty(),
            "reader {i} got errors (first 5): {:#?}",
            log.errors
        );
        assert!(
            log.wrong.is_empty(),
            "reader {i} saw a table in neither state (first 5): {:#?}",
            log.wrong
        );
    }
    assert!(
        logs.iter().map(|l| l.v1).sum::<u64>() > 0 && logs.iter().map(|l| l.v2).sum::<u64>() > 0,
        "the readers never saw both versions: {logs:?}"
    );

    // An even number of promotes later, version 1 is live again, its table the fold, and the
    // daemon that hot-swapped each time still serves it.
    env.import(&generator.money(50));
    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        &format!("live after {promotes} promotes"),
    );
    assert!(
        env.schema_objects()
            .iter()
            .all(|o| !o.contains("zdr_r_p") && !o.contains("zdr_p_p")),
        "a removed replay left something: {:?}",
        env.schema_objects()
    );
    daemon.assert_running();
    let log = daemon.stop();
    assert!(log.contains("hot swap"), "no hot swap in the log:\n{log}");
}
