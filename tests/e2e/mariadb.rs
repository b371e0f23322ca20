//! MariaDB under pressure: appenders whose transactions commit out of id order (InnoDB draws
//! auto-increment ids when a row is inserted, not when it commits), and readers of the live
//! table while promote swaps it back and forth with one `RENAME TABLE`.
//!
//! The rest of the lifecycle runs on every backend in the other modules (`both_backends!`),
//! among them two daemons on one database handing a projector over when its owner is killed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::support::{
    Backend, Env, Generator, MyClient, assert_same_rows, fold_v1, fold_v2, guests,
};

/// The columns an appender writes, and the class of the shared store the balance projector
/// does not handle.
const COLUMNS: &str = "INSERT INTO stored_events (aggregate_uuid, event_class, event_properties, meta_data, created_at)";
const OTHER_CLASS: &str = "App\\Orders\\OrderPlaced";

/// `text` as a SQL string (zdr's session mode: no backslash escapes).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Appends `events` money events on `accounts` in transactions of one to five events that
/// stay open for 0–20 ms (between their inserts too), so that ids are drawn in one order and
/// committed in another; one transaction in eight is rolled back, leaving a real gap. With
/// `others`, about a third of the events are of a class the balance projector does not handle.
/// Returns the events committed.
fn append_slowly(url: &str, seed: u64, accounts: Vec<String>, events: u64, others: bool) -> u64 {
    let mut client = MyClient::connect(url);
    let mut generator = Generator::with_accounts(seed, accounts);
    let mut committed = 0;
    while committed < events {
        let n = (1 + generator.below(5)).min(events - committed);
        let batch = generator.money(usize::try_from(n).expect("a small batch"));
        client
            .execute("START TRANSACTION")
            .expect("an appender cannot begin");
        for e in &batch {
            let class = if others && generator.below(3) == 0 {
                OTHER_CLASS
            } else {
                e.class.as_str()
            };
            client
                .execute(&format!(
                    "{COLUMNS} VALUES ({}, {}, {}, '{{}}', UTC_TIMESTAMP(6))",
                    quote(e.aggregate.as_deref().unwrap_or_default()),
                    quote(class),
                    quote(&e.properties.to_string())
                ))
                .unwrap_or_else(|err| panic!("an appender cannot insert: {err}"));
            std::thread::sleep(Duration::from_millis(generator.below(6)));
        }
        std::thread::sleep(Duration::from_millis(generator.below(21)));
        if generator.below(8) == 0 {
            client
                .execute("ROLLBACK")
                .expect("an appender cannot roll back");
        } else {
            client.execute("COMMIT").expect("an appender cannot commit");
            committed += n;
        }
    }
    committed
}

/// The ways a writer can hold an id it has not committed, each slower than the appenders
/// around it.
#[derive(Debug, Clone, Copy)]
enum SlowShape {
    /// The row's value takes a while to compute.
    SlowValue,
    /// One statement inserts many rows: InnoDB reserves their ids as it goes.
    MultiRow,
    /// A long first statement, then the insert, in one transaction.
    LongFirstStatement,
}

/// Writes `rounds` slow inserts of `shape` for `account`; returns the events committed.
fn append_slow_shape(url: &str, shape: SlowShape, account: String, rounds: u64) -> u64 {
    let mut client = MyClient::connect(url);
    client
        .execute("SET SESSION max_recursive_iterations = 100000")
        .expect("a slow writer's session");
    let account = quote(&account);
    let mut committed = 0;
    for _ in 0..rounds {
        let (sql, rows) = match shape {
            SlowShape::SlowValue => (
                format!(
                    "{COLUMNS} SELECT {account}, 'MoneyAdded', '{{\"amount\": 7}}', '{{}}', UTC_TIMESTAMP(6) \
                     FROM (SELECT SLEEP(0.2) AS s) AS slow"
                ),
                1,
            ),
            SlowShape::MultiRow => (
                format!(
                    "{COLUMNS} WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3000) \
                     SELECT {account}, 'MoneyAdded', CONCAT('{{\"amount\": ', n % 7 + 1, '}}'), '{{}}', \
                     UTC_TIMESTAMP(6) FROM g"
                ),
                3000,
            ),
            SlowShape::LongFirstStatement => (
                format!(
                    "DO SLEEP(0.2); {COLUMNS} VALUES ({account}, 'MoneyAdded', '{{\"amount\": 7}}', '{{}}', \
                     UTC_TIMESTAMP(6))"
                ),
                1,
            ),
        };
        client
            .execute(&format!("START TRANSACTION; {sql}; COMMIT"))
            .unwrap_or_else(|err| panic!("a slow writer ({shape:?}) failed: {err}"));
        committed += rows;
    }
    committed
}

#[test]
fn eight_appenders_committing_out_of_order_lose_no_event_and_repeat_none() {
    const APPENDERS: u64 = 8;
    const EVENTS: u64 = 8_000;
    const ACCOUNTS: usize = 50;
    let g = guests();
    let env = Env::new(Backend::Mariadb);
    let mut generator = Generator::new(32);
    env.import(&generator.open_accounts(ACCOUNTS));
    env.deploy("balance", &g.balance_v1);
    // A rebuild runs beside live through the appends, reading only the classes it handles.
    env.create_balance_replay("v2", &g.balance_v2);
    let mut daemon = env.serve();

    let appenders: Vec<JoinHandle<u64>> = (0..APPENDERS)
        .map(|i| {
            let (url, accounts) = (env.url().to_string(), generator.accounts().to_vec());
            let others = i % 2 == 1;
            std::thread::spawn(move || {
                append_slowly(&url, 3_200 + i, accounts, EVENTS / APPENDERS, others)
            })
        })
        .collect();
    let slow: Vec<JoinHandle<u64>> = [
        (SlowShape::SlowValue, 20),
        (SlowShape::MultiRow, 2),
        (SlowShape::LongFirstStatement, 20),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (shape, rounds))| {
        let (url, account) = (env.url().to_string(), generator.accounts()[i].clone());
        std::thread::spawn(move || append_slow_shape(&url, shape, account, rounds))
    })
    .collect();
    // `replay start` again and again while the appenders run.
    let mut starts = 0;
    while appenders.iter().any(|a| !a.is_finished()) {
        env.ok(&["replay", "start", "v2"]);
        starts += 1;
    }
    let committed: u64 = appenders
        .into_iter()
        .map(|a| a.join().expect("an appender panicked"))
        .sum();
    let slow_events: u64 = slow
        .into_iter()
        .map(|s| s.join().expect("a slow writer panicked"))
        .sum();
    assert_eq!(committed, EVENTS, "test bug: the appenders' accounting");
    assert_eq!(
        slow_events,
        20 + 2 * 3000 + 20,
        "test bug: the slow writers"
    );

    env.wait_live("balance", "1");
    let events = env.stored_events();
    let head = env.head();
    assert_eq!(
        events.len() as u64,
        ACCOUNTS as u64 + EVENTS + slow_events,
        "every committed event is stored, and nothing else"
    );
    assert!(
        head > events.len() as i64,
        "test bug: no rolled-back transaction left a gap in the ids (head {head})"
    );
    let live = env.projector("balance");
    assert_eq!(live["checkpoint"], head, "{live:#}");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "live v1 after 8 appenders committing out of order",
    );
    env.ok(&["replay", "start", "v2"]);
    assert!(
        starts > 1,
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

/// One reader's account of its reads.
#[derive(Debug, Default)]
struct ReaderLog {
    reads: u64,
    v1: u64,
    v2: u64,
    errors: Vec<String>,
    wrong: Vec<String>,
}

/// Reads every column of the live table until `stop`: version 1 has three columns, version
/// 2 five, so each result is one of the two known states or a fault.
fn read_live(url: &str, states: &[Vec<Vec<String>>; 2], stop: &AtomicBool) -> ReaderLog {
    let mut client = MyClient::connect(url);
    let mut log = ReaderLog::default();
    while !stop.load(Ordering::Relaxed) {
        log.reads += 1;
        match client.rows("SELECT * FROM balances") {
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

#[test]
fn eight_readers_see_one_whole_version_through_six_promotes() {
    const READERS: usize = 8;
    const PROMOTES: usize = 6;
    const ACCOUNTS: usize = 40;
    let g = guests();
    let env = Env::new(Backend::Mariadb);
    let mut generator = Generator::new(33);
    env.import(&generator.open_accounts(ACCOUNTS));
    env.import(&generator.money(1_000));
    env.deploy("balance", &g.balance_v1);
    let mut daemon = env.serve();
    env.wait_live("balance", "1");

    let events = env.stored_events();
    let states = Arc::new([fold_v1(&events), fold_v2(&events)]);
    assert_eq!(states[0].len(), ACCOUNTS);

    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(READERS + 1));
    let readers: Vec<JoinHandle<ReaderLog>> = (0..READERS)
        .map(|_| {
            let (url, states, stop, ready) = (
                env.url().to_string(),
                states.clone(),
                stop.clone(),
                ready.clone(),
            );
            std::thread::spawn(move || {
                ready.wait();
                read_live(&url, &states, &stop)
            })
        })
        .collect();
    ready.wait();
    for round in 0..PROMOTES {
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
    }
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<ReaderLog> = readers
        .into_iter()
        .map(|r| r.join().expect("a reader panicked"))
        .collect();
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
    env.import(&generator.money(50));
    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live after six promotes",
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

/// Kills every connection to the env's database but the caller's own (the daemon's batch,
/// lock and polling connections among them); returns how many were killed.
fn kill_connections(env: &Env) -> u64 {
    let mut admin = env.mariadb();
    let ids = admin
        .rows(&format!(
            "SELECT id FROM information_schema.processlist WHERE db = '{}' AND id <> CONNECTION_ID()",
            env.database_name()
        ))
        .expect("listing connections");
    for id in &ids {
        // One may have ended meanwhile.
        let _ = admin.execute(&format!("KILL {}", id[0]));
    }
    ids.len() as u64
}

/// The daemon's connections are killed five times while events arrive: it reconnects with
/// bounded backoff (its ownership lock taken again), and live equals the reference fold with
/// nothing skipped or doubled, without a restart.
#[test]
fn five_cuts_of_the_daemons_connections_lose_nothing_and_need_no_restart() {
    let g = guests();
    let env = Env::new(Backend::Mariadb);
    let mut generator = Generator::new(34);
    env.import(&generator.open_accounts(20));
    env.import(&generator.money(200));
    env.deploy("balance", &g.balance_v1);
    let mut daemon = env.serve();
    env.wait_live("balance", "1");
    let mut cuts = 0;
    for round in 0..5 {
        env.import(&generator.money(40));
        if kill_connections(&env) > 0 {
            cuts += 1;
        }
        env.import(&generator.money(10));
        env.wait_live("balance", "1");
        assert_same_rows(
            &env.balances_v1("balances"),
            &fold_v1(&env.stored_events()),
            &format!("live after cut {round}"),
        );
        daemon.assert_running();
    }
    assert_eq!(cuts, 5, "the daemon was connected at every cut");
    let log = daemon.stop();
    assert!(
        log.contains("reconnected"),
        "the log says it recovered:\n{log}"
    );
}
