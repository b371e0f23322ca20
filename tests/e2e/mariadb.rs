//! MariaDB under pressure: appenders whose transactions commit out of id order (InnoDB draws
//! auto-increment ids when a row is inserted, not when it commits), and readers of the live
//! table while promote swaps it back and forth with one `RENAME TABLE`.
//!
//! The rest of the lifecycle runs on every backend in the other modules (`both_backends!`),
//! among them two daemons on one database handing a projector over when its owner is killed.

use crate::pressure::{
    EventClient, LiveReader, MULTI_ROW, Readers, Scale, SlowShape, Writers,
    appenders_commit_out_of_order, readers_see_one_whole_version,
};
use crate::support::{
    Backend, Env, Generator, MyClient, assert_same_rows, fold_v1, fold_v2, guests,
};

/// The columns an appender writes.
const COLUMNS: &str = "INSERT INTO stored_events (aggregate_uuid, event_class, event_properties, meta_data, created_at)";

/// `text` as a SQL string (zdr's session mode: no backslash escapes).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// An appender's connection: the application's own transactions, each value spliced in.
impl EventClient for MyClient {
    fn begin(&mut self) {
        self.execute("START TRANSACTION")
            .unwrap_or_else(|err| panic!("an appender cannot begin: {err}"));
    }

    fn insert(&mut self, aggregate: &str, class: &str, properties: &str) {
        self.execute(&format!(
            "{COLUMNS} VALUES ({}, {}, {}, '{{}}', UTC_TIMESTAMP(6))",
            quote(aggregate),
            quote(class),
            quote(properties)
        ))
        .unwrap_or_else(|err| panic!("an appender cannot insert: {err}"));
    }

    fn commit(&mut self) {
        self.execute("COMMIT")
            .unwrap_or_else(|err| panic!("an appender cannot commit: {err}"));
    }

    fn rollback(&mut self) {
        self.execute("ROLLBACK")
            .unwrap_or_else(|err| panic!("an appender cannot roll back: {err}"));
    }
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
                    "{COLUMNS} WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {MULTI_ROW}) \
                     SELECT {account}, 'MoneyAdded', CONCAT('{{\"amount\": ', n % 7 + 1, '}}'), '{{}}', \
                     UTC_TIMESTAMP(6) FROM g"
                ),
                MULTI_ROW,
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
    appenders_commit_out_of_order(
        Backend::Mariadb,
        Scale {
            events: 8_000,
            slow_rounds: [20, 2, 20],
        },
        Writers {
            connect: MyClient::connect,
            slow: append_slow_shape,
        },
    );
}

/// A reader of every column of the live table: version 1 has three columns, version 2 five,
/// so each result is one of the two known states or a fault.
impl LiveReader for MyClient {
    fn read(&mut self) -> Result<Vec<Vec<String>>, String> {
        self.rows("SELECT * FROM balances")
    }
}

#[test]
fn eight_readers_see_one_whole_version_through_six_promotes() {
    readers_see_one_whole_version(
        Backend::Mariadb,
        8,
        6,
        1_000,
        Readers {
            connect: MyClient::connect,
            states: |v1, v2| [v1, v2],
        },
    );
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

/// A component larger than the server's `max_allowed_packet` (the 18 MB Python build against
/// MariaDB's default 16 MiB) cannot travel in one statement: zdr stores it in parts each far
/// below the limit, reads it back whole, and the projector deploys, folding history.
#[test]
fn a_component_past_max_allowed_packet_is_stored_in_parts_and_runs() {
    let g = guests();
    let env = Env::new(Backend::Mariadb);
    let mut generator = Generator::new(14);
    env.import(&generator.open_accounts(5));
    env.import(&generator.money(40));
    let limit = env.scalar("SELECT @@max_allowed_packet");
    let size = i64::try_from(
        std::fs::metadata(&g.balance_py_v2)
            .expect("the Python component is built")
            .len(),
    )
    .expect("a component's size fits in i64");
    if size < limit {
        eprintln!(
            "note: this server's max_allowed_packet ({limit}) takes the whole component \
             ({size} bytes); the parts are still checked"
        );
    }
    env.deploy("balance", &g.balance_py_v2);
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&env.stored_events()),
        "the Python projector read back from its parts",
    );
    let parts = env
        .rows("SELECT COUNT(*), SUM(LENGTH(bytes)), MAX(LENGTH(bytes)) FROM zdr_component_chunks");
    let [count, total, largest] = [0, 1, 2].map(|i| {
        parts[0][i]
            .parse::<i64>()
            .unwrap_or_else(|err| panic!("{parts:?}: {err}"))
    });
    assert!(count > 1, "stored in several parts: {parts:?}");
    assert_eq!(total, size, "the parts hold the whole component: {parts:?}");
    assert!(
        largest < limit / 2,
        "each part is far below max_allowed_packet ({limit}): {parts:?}"
    );
}
