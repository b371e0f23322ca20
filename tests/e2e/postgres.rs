//! PostgreSQL under pressure: appenders whose transactions commit out of id order, readers
//! of the live table while promote swaps it back and forth six times, and a projector
//! trying PostgreSQL's own ways out of its tables.
//!
//! The rest of the lifecycle runs on both backends in the other modules (`both_backends!`),
//! among them two daemons on one database handing a projector over when its owner is killed
//! (`concurrency::two_daemons_never_apply_an_event_twice_and_one_takes_over_when_the_owner_dies`).

use std::process::Stdio;
use std::time::Duration;

use crate::pressure::{
    EventClient, LiveReader, MULTI_ROW, Readers, Scale, SlowShape, Writers,
    appenders_commit_out_of_order, readers_see_one_whole_version,
};
use crate::sandbox::{PG_ESCAPES, check_outcomes, probes};
use crate::support::{
    Backend, Env, Generator, PATIENCE, PG_APPEND, assert_same_rows, fold_v1, fold_v2, guests,
    pg_error, postgres_connect, wait_child, wait_until,
};

/// An appender's connection: the application's own transactions, through the `postgres`
/// crate.
impl EventClient for postgres::Client {
    fn begin(&mut self) {
        self.batch_execute("BEGIN")
            .unwrap_or_else(|e| panic!("an appender cannot begin: {}", pg_error(&e)));
    }

    fn insert(&mut self, aggregate: &str, class: &str, properties: &str) {
        self.execute(PG_APPEND, &[&aggregate, &class, &properties])
            .unwrap_or_else(|e| panic!("an appender cannot insert: {}", pg_error(&e)));
    }

    fn commit(&mut self) {
        self.batch_execute("COMMIT")
            .unwrap_or_else(|e| panic!("an appender cannot commit: {}", pg_error(&e)));
    }

    fn rollback(&mut self) {
        self.batch_execute("ROLLBACK")
            .unwrap_or_else(|e| panic!("an appender cannot roll back: {}", pg_error(&e)));
    }
}

/// Writes `rounds` slow inserts of `shape` for `account`; returns the events committed.
fn append_slow_shape(url: &str, shape: SlowShape, account: String, rounds: u64) -> u64 {
    const COLUMNS: &str = "INSERT INTO stored_events (aggregate_uuid, event_class, event_properties, meta_data, created_at)";
    let mut client = postgres_connect(url);
    let mut committed = 0;
    for _ in 0..rounds {
        let mut tx = client
            .transaction()
            .unwrap_or_else(|e| panic!("a slow writer cannot begin: {}", pg_error(&e)));
        let written = match shape {
            SlowShape::SlowValue => tx.execute(
                &format!(
                    "{COLUMNS} VALUES ($1, 'MoneyAdded', \
                     (SELECT '{{\"amount\": 7}}' FROM pg_sleep(0.2))::jsonb, '{{}}', clock_timestamp())"
                ),
                &[&account],
            ),
            SlowShape::MultiRow => tx.execute(
                &format!(
                    "{COLUMNS} SELECT $1, 'MoneyAdded', jsonb_build_object('amount', g % 7 + 1), '{{}}', \
                     clock_timestamp() FROM generate_series(1, {MULTI_ROW}) AS g"
                ),
                &[&account],
            ),
            SlowShape::LongFirstStatement => tx.execute("SELECT pg_sleep(0.2)", &[]).and_then(|_| {
                tx.execute(
                    PG_APPEND,
                    &[&account, &"MoneyAdded", &"{\"amount\": 7}"],
                )
            }),
        }
        .unwrap_or_else(|e| panic!("a slow writer ({shape:?}) failed: {}", pg_error(&e)));
        tx.commit()
            .unwrap_or_else(|e| panic!("a slow writer cannot commit: {}", pg_error(&e)));
        committed += written;
    }
    committed
}

#[test]
fn eight_appenders_committing_out_of_order_lose_no_event_and_repeat_none() {
    appenders_commit_out_of_order(
        Backend::Postgres,
        Scale {
            events: 20_000,
            slow_rounds: [40, 3, 40],
        },
        Writers {
            connect: postgres_connect,
            slow: append_slow_shape,
        },
    );
}

/// What the readers query: the columns both versions share and, through the row as JSON,
/// version 2's own (NULL on version 1), so that the statement's result type stays the same
/// when the table under the name changes and the prepared statement is planned again.
const READ_LIVE: &str = "SELECT account_uuid, name, balance::text, \
     to_jsonb(b) ->> 'transaction_count', to_jsonb(b) ->> 'last_activity' FROM balances b";

/// A reader of the live table through one prepared statement, as an application would.
struct PgReader {
    client: postgres::Client,
    statement: postgres::Statement,
}

impl PgReader {
    fn connect(url: &str) -> Self {
        let mut client = postgres_connect(url);
        let statement = client
            .prepare(READ_LIVE)
            .unwrap_or_else(|e| panic!("preparing the reader's statement: {}", pg_error(&e)));
        Self { client, statement }
    }
}

impl LiveReader for PgReader {
    fn read(&mut self) -> Result<Vec<Vec<String>>, String> {
        let rows = self
            .client
            .query(&self.statement, &[])
            .map_err(|e| pg_error(&e))?;
        Ok(rows
            .iter()
            .map(|r| {
                (0..5)
                    .map(|i| {
                        r.get::<_, Option<String>>(i)
                            .unwrap_or_else(|| "NULL".into())
                    })
                    .collect()
            })
            .collect())
    }
}

#[test]
fn eight_readers_see_one_whole_version_through_six_promotes() {
    // Eight readers reading back to back keep both cores of a CI machine busy: with sixteen
    // and ten promotes this one test took 90 s alone and starved every test beside it.
    readers_see_one_whole_version(
        Backend::Postgres,
        8,
        6,
        2_000,
        Readers {
            connect: PgReader::connect,
            // Version 1's rows have no version 2 columns: NULL through the JSON projection.
            states: |v1, v2| {
                let v1 = v1
                    .into_iter()
                    .map(|mut row| {
                        row.extend(["NULL".to_string(), "NULL".to_string()]);
                        row
                    })
                    .collect();
                [v1, v2]
            },
        },
    );
}

#[test]
fn a_projector_trying_postgres_escapes_is_denied_and_the_daemon_keeps_serving() {
    let g = guests();
    let env = Env::new(Backend::Postgres);
    let mut generator = Generator::new(34);
    env.import(&generator.open_accounts(5));
    env.import(&generator.money(50));
    env.deploy("balance", &g.balance_v1);
    env.deploy("sql-probe", &g.sql_probe);
    let mut daemon = env.serve();
    env.wait_live("sql-probe", "1");

    let objects = env.schema_objects();
    let large_objects = env.scalar("SELECT COUNT(*) FROM pg_largeobject_metadata");
    let first = env.head() + 1;
    let escapes: Vec<_> = PG_ESCAPES.iter().collect();
    env.import(&probes(&escapes, 3000));
    let events = env.rows("SELECT * FROM stored_events ORDER BY id");
    env.wait_live("sql-probe", "1");
    check_outcomes(
        &env,
        &escapes,
        first,
        "PostgreSQL escapes sent to the live projector",
    );
    daemon.assert_running();

    assert_eq!(
        env.rows("SELECT * FROM stored_events ORDER BY id"),
        events,
        "stored_events was modified"
    );
    assert_eq!(env.schema_objects(), objects, "the schema changed");
    assert_eq!(
        env.scalar("SELECT COUNT(*) FROM pg_largeobject_metadata"),
        large_objects,
        "a large object was created"
    );
    assert!(
        !std::path::Path::new("/tmp/zdr-evil").exists(),
        "COPY or lo_export wrote a file"
    );
    assert_eq!(
        env.rows("SELECT id, note FROM probe_notes ORDER BY id"),
        [["3000", "legit"]]
    );

    // Still serving both projectors afterwards, with nothing lost.
    env.import(&generator.money(20));
    env.wait_live("balance", "1");
    env.wait_live("sql-probe", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "the other projector's table",
    );
    daemon.assert_running();
    daemon.stop();
}

/// A rebuild's transaction never holds up live: with `replay start` stopped inside a batch (a
/// reader holds its clone table's strongest lock), the daemon still applies new events, and the
/// rebuild finishes correctly once the lock is gone.
#[test]
fn live_batches_go_on_while_a_rebuild_batch_is_held_up() {
    let g = guests();
    let env = Env::new(Backend::Postgres);
    // The held-up statement must not reach its deadline while the test looks at live.
    env.write_config("call_timeout_ms = 600000\n");
    let mut generator = Generator::new(31);
    env.import(&generator.open_accounts(20));
    env.import(&generator.money(200));
    env.deploy("balance", &g.balance_v1);
    env.create_balance_replay("v2", &g.balance_v2);
    let clone = env.clone_table("v2", "balances");
    let _daemon = env.serve();

    let mut holder = env.postgres();
    let mut lock = holder.transaction().expect("begin");
    lock.batch_execute(&format!("LOCK TABLE {clone} IN ACCESS EXCLUSIVE MODE"))
        .expect("lock the clone");
    let mut start = env
        .command(&["replay", "start", "v2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot spawn replay start");
    let mut observer = env.postgres();
    wait_until(
        PATIENCE,
        "replay start to wait for its clone's lock",
        || {
            let waiting: i64 = observer
            .query_one(
                "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND relation = $1::text::regclass",
                &[&clone],
            )
            .expect("pg_locks")
            .get(0);
            waiting > 0
        },
    );

    env.import(&generator.money(30));
    let events = env.stored_events();
    wait_until(
        Duration::from_secs(60),
        "live to apply new events while a rebuild's batch is held up",
        || env.balances_v1("balances") == fold_v1(&events),
    );
    assert!(
        start.try_wait().expect("try_wait").is_none(),
        "replay start finished while its clone was locked"
    );

    lock.commit().expect("release the clone");
    let status = wait_child(&mut start, PATIENCE, "replay start");
    assert!(status.success(), "replay start failed: {status}");
    assert_same_rows(
        &env.balances_v2(&clone),
        &fold_v2(&env.stored_events()),
        "the clone of the held-up rebuild",
    );
}
