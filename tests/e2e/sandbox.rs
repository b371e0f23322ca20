//! Hostile and faulty guests: a projector that sends SQL outside its declared tables gets
//! `denied` and touches nothing, and a projector that fails, traps or hangs is stopped at its
//! event while the host and the other projectors keep running.

use serde_json::{Value, json};

use crate::support::{
    Backend, Env, Generator, NewEvent, PATIENCE, assert_same_rows, both_backends, fold_v1, guests,
    wait_until,
};

both_backends!(
    hostile_sql_is_denied_touches_nothing_and_the_host_keeps_running,
    a_guest_returning_an_error_stops_only_itself_at_that_event,
    a_trapping_guest_stops_only_itself_and_the_daemon_survives,
    a_guest_stuck_in_a_loop_is_cut_by_the_deadline_and_stops_only_itself,
    deploying_a_guest_that_fails_on_history_is_refused_with_the_event_and_leaves_nothing_live,
    a_clone_failing_while_dual_writing_drops_out_and_live_keeps_projecting,
    a_replay_replaces_a_live_projector_stopped_at_a_failure,
    queries_past_the_row_cap_and_oversized_statements_answer_limit_exceeded,
);

/// Refused by the SQL guard's allow-list.
pub const DENIED: &[&str] = &["denied"];
/// Refused either by the allow-list or because the guard's parser does not accept the syntax.
pub const REFUSED: &[&str] = &["denied", "invalid-sql"];

/// One statement a probe event carries, and the outcomes that are right for it.
pub struct Probe {
    sql: &'static str,
    mode: &'static str,
    expect: &'static [&'static str],
}

pub const fn execute(sql: &'static str, expect: &'static [&'static str]) -> Probe {
    Probe {
        sql,
        mode: "execute",
        expect,
    }
}

pub const fn query(sql: &'static str, expect: &'static [&'static str]) -> Probe {
    Probe {
        sql,
        mode: "query",
        expect,
    }
}

/// Statements that reach outside the probe's two declared tables, or outside plain DML, with
/// the same right answer on both backends.
const HOSTILE: &[Probe] = &[
    // Another projector's table.
    execute(
        "INSERT INTO balances (account_uuid, name, balance) VALUES ('evil', 'x', 1)",
        DENIED,
    ),
    execute("UPDATE balances SET balance = 0", DENIED),
    query("SELECT * FROM balances", DENIED),
    query(
        "SELECT n.id FROM probe_notes n JOIN balances b ON 1 = 1",
        DENIED,
    ),
    // The event store.
    execute("DELETE FROM stored_events", DENIED),
    execute(
        "INSERT INTO stored_events (event_class, event_properties, meta_data, created_at) VALUES ('X', '{}', '{}', 'now')",
        DENIED,
    ),
    query("SELECT * FROM stored_events", DENIED),
    query("SELECT * FROM main.stored_events", DENIED),
    query(
        "WITH e AS (SELECT * FROM stored_events) SELECT * FROM e",
        DENIED,
    ),
    execute(
        "INSERT INTO probe_notes (id, note) SELECT id, event_class FROM stored_events",
        DENIED,
    ),
    execute("DROP TABLE stored_events", DENIED),
    // The same, spelled differently.
    query("SELECT * FROM \"stored_events\"", DENIED),
    query("SELECT * FROM [stored_events]", REFUSED),
    query("SELECT * FROM `stored_events`", REFUSED),
    execute("DELETE FROM STORED_EVENTS", DENIED),
    execute("DELETE FROM \"main\".\"stored_events\"", DENIED),
    query(
        "SELECT * FROM json_each((SELECT group_concat(event_class) FROM stored_events))",
        DENIED,
    ),
    // zdr's own tables.
    execute("UPDATE zdr_targets SET checkpoint = 0", DENIED),
    execute("DELETE FROM zdr_replays", DENIED),
    query("SELECT * FROM zdr_components", DENIED),
    execute(
        "INSERT INTO probe_notes (id, note) VALUES ((SELECT COUNT(*) FROM zdr_targets), 'x')",
        DENIED,
    ),
    // The schema.
    query("SELECT name FROM sqlite_master", DENIED),
    query("SELECT name FROM sqlite_schema", DENIED),
    query("SELECT name FROM sqlite_temp_master", DENIED),
    query("SELECT * FROM pragma_table_info('stored_events')", REFUSED),
    // Two statements in one call, even when each alone would be allowed.
    execute(
        "INSERT INTO probe_notes (id, note) VALUES (1, 'a'); DELETE FROM stored_events",
        DENIED,
    ),
    execute(
        "INSERT INTO probe_notes (id, note) VALUES (2, 'b'); INSERT INTO probe_notes (id, note) VALUES (3, 'c')",
        DENIED,
    ),
    // DDL outside the host's setup of a target.
    execute("CREATE TABLE evil (x INTEGER)", DENIED),
    execute("CREATE TEMP TABLE evil (x INTEGER)", DENIED),
    execute("DROP TABLE probe_notes", DENIED),
    execute("ALTER TABLE probe_notes RENAME TO evil", REFUSED),
    execute("CREATE VIEW evil AS SELECT * FROM stored_events", REFUSED),
    execute(
        "CREATE TRIGGER evil AFTER INSERT ON probe_notes BEGIN DELETE FROM stored_events; END",
        REFUSED,
    ),
    // Database-level statements and dangerous functions.
    execute("ATTACH DATABASE 'evil.db' AS evil", REFUSED),
    execute("DETACH DATABASE main", REFUSED),
    execute("PRAGMA writable_schema = ON", REFUSED),
    execute("PRAGMA journal_mode = DELETE", REFUSED),
    query("SELECT load_extension('evil')", REFUSED),
    query("SELECT readfile('/etc/passwd')", REFUSED),
    execute("VACUUM", REFUSED),
    execute("ANALYZE", REFUSED),
    execute("REINDEX", REFUSED),
    // Transaction control would break the host's batch transaction.
    execute("COMMIT", REFUSED),
    execute("ROLLBACK", REFUSED),
    execute("BEGIN", REFUSED),
    execute("SAVEPOINT evil", REFUSED),
    // Subqueries hidden in allowed statements.
    execute(
        "INSERT INTO probe_notes (id, note) VALUES (9, 'x') ON CONFLICT (id) DO UPDATE SET note = (SELECT event_class FROM stored_events LIMIT 1)",
        DENIED,
    ),
    execute(
        "UPDATE probe_notes SET note = (SELECT name FROM sqlite_master LIMIT 1)",
        DENIED,
    ),
];

/// What a projector could try on PostgreSQL to escape its tables or the host's control: other
/// schemas, the catalogs, server files, large objects, session settings, locks, sequences,
/// anonymous code blocks and functions that run SQL of their own. Refused on both backends
/// (on SQLite they are not even meaningful, which the guard must not mistake for harmless).
pub const PG_ESCAPES: &[Probe] = &[
    // Other schemas: the live schema spelled out, a replay's clone, the rollback tables.
    query("SELECT * FROM public.stored_events", DENIED),
    query("SELECT * FROM \"public\".\"stored_events\"", DENIED),
    execute("DELETE FROM public.balances", DENIED),
    query("SELECT * FROM zdr_r_x.t", DENIED),
    execute(
        "INSERT INTO zdr_r_x.balances (account_uuid) VALUES ('evil')",
        DENIED,
    ),
    query("SELECT * FROM zdr_p_x.balances", DENIED),
    // The catalogs.
    query("SELECT relname FROM pg_catalog.pg_class", DENIED),
    query("SELECT relname FROM pg_class", DENIED),
    query("SELECT table_name FROM information_schema.tables", DENIED),
    query("SELECT usename, passwd FROM pg_shadow", DENIED),
    query("SELECT query FROM pg_stat_activity", DENIED),
    // Files on the server, programs, large objects.
    execute("COPY probe_notes TO '/tmp/zdr-evil'", REFUSED),
    execute("COPY probe_notes FROM PROGRAM 'id'", REFUSED),
    execute("COPY (SELECT * FROM stored_events) TO STDOUT", REFUSED),
    query("SELECT pg_read_file('/etc/passwd')", DENIED),
    query("SELECT pg_read_binary_file('/etc/passwd')", DENIED),
    query("SELECT pg_ls_dir('.')", DENIED),
    query("SELECT lo_import('/etc/passwd')", DENIED),
    query("SELECT lo_export(1, '/tmp/zdr-evil')", DENIED),
    execute(
        "INSERT INTO probe_notes (id, note) VALUES (7, pg_read_file('/etc/passwd'))",
        DENIED,
    ),
    // Session state: settings, roles, locks, notifications, prepared statements.
    execute("SET search_path TO zdr_r_x, public", REFUSED),
    execute("SET LOCAL statement_timeout = 0", REFUSED),
    execute("SET ROLE postgres", REFUSED),
    execute("RESET ALL", REFUSED),
    query(
        "SELECT set_config('search_path', 'pg_catalog', false)",
        DENIED,
    ),
    query("SELECT current_setting('data_directory')", DENIED),
    query("SELECT pg_advisory_lock(1)", DENIED),
    query("SELECT pg_terminate_backend(pg_backend_pid())", DENIED),
    execute("LISTEN zdr_events", REFUSED),
    execute("NOTIFY zdr_events", REFUSED),
    execute("PREPARE evil AS SELECT 1", REFUSED),
    execute("LOCK TABLE probe_notes IN ACCESS EXCLUSIVE MODE", REFUSED),
    // Code of its own, other databases, stalls, the event store's sequence.
    execute("DO $$BEGIN DELETE FROM stored_events; END$$", REFUSED),
    query(
        "SELECT * FROM dblink('dbname=test', 'SELECT 1') AS t(x integer)",
        REFUSED,
    ),
    query(
        "SELECT query_to_xml('SELECT * FROM stored_events', true, true, '')",
        DENIED,
    ),
    query("SELECT pg_sleep(10)", DENIED),
    query("SELECT nextval('stored_events_id_seq')", DENIED),
    execute("TRUNCATE stored_events", REFUSED),
    execute("CREATE EXTENSION dblink", REFUSED),
    execute("GRANT ALL ON probe_notes TO PUBLIC", REFUSED),
    execute("CALL evil()", REFUSED),
    // The clock, read through date and time input that PostgreSQL evaluates when the
    // statement runs: a read model must be a pure fold of the events.
    query("SELECT CAST('tomorrow 10:00' AS timestamp)", DENIED),
    query("SELECT TIMESTAMP 'yesterday 12:00'", DENIED),
    query("SELECT CAST('n' || 'ow' AS timestamptz)", DENIED),
    query("SELECT CAST(upper('now') AS date)", DENIED),
    query("SELECT ' Now '::timestamptz", DENIED),
    query("SELECT '10:00 tomorrow'::timestamp", DENIED),
    query("SELECT CAST(note AS timestamp) FROM probe_notes", DENIED),
    execute(
        "INSERT INTO probe_notes (id, note) VALUES (8, CAST(CAST('today' AS date) AS text))",
        DENIED,
    ),
    execute(
        "UPDATE probe_notes SET note = 'x' WHERE CAST(note AS date) < 'tomorrow'",
        DENIED,
    ),
];

/// Statements whose right answer depends on the backend's SQL dialect: on SQLite.
const ON_SQLITE: &[Probe] = &[execute(
    "REPLACE INTO balances (account_uuid, name, balance) VALUES ('evil', 'x', 1)",
    DENIED,
)];

/// Statements whose right answer depends on the backend's SQL dialect: on PostgreSQL (where
/// `REPLACE INTO` is not SQL at all).
const ON_POSTGRES: &[Probe] = &[execute(
    "REPLACE INTO balances (account_uuid, name, balance) VALUES ('evil', 'x', 1)",
    REFUSED,
)];

/// Statements whose right answer depends on the backend's SQL dialect: on MariaDB, where
/// these are what only MySQL executes.
const ON_MARIADB: &[Probe] = &[
    execute(
        "REPLACE INTO balances (account_uuid, name, balance) VALUES ('evil', 'x', 1)",
        REFUSED,
    ),
    query("SELECT /*! SLEEP(10) */ 1", DENIED),
    query("SELECT /*!50000 LOAD_FILE('/etc/passwd') */ 1", DENIED),
    query("SELECT /*+ MAX_EXECUTION_TIME(1) */ 1", DENIED),
    query("SELECT * FROM `stored_events`", DENIED),
    query("SELECT @x", DENIED),
    query("SELECT @@version", DENIED),
    query("SELECT LOAD_FILE('/etc/passwd')", DENIED),
    query("SELECT SLEEP(5)", DENIED),
    query("SELECT BENCHMARK(100000000, md5('x'))", DENIED),
    query("SELECT GET_LOCK('zdr-writer', 0)", DENIED),
    query(
        "SELECT * FROM probe_notes INTO OUTFILE '/tmp/zdr-evil'",
        REFUSED,
    ),
    execute("HANDLER probe_notes OPEN", REFUSED),
    execute("LOCK TABLES probe_notes WRITE", REFUSED),
    execute("SET @x = 1", REFUSED),
    execute("SET SESSION sql_mode = ''", REFUSED),
    execute("START TRANSACTION", REFUSED),
    execute("COMMIT", REFUSED),
    query("SELECT utc_timestamp", DENIED),
    query("SELECT * FROM mysql.user", DENIED),
    query("SELECT * FROM information_schema.processlist", DENIED),
    execute(
        "INSERT INTO probe_notes (id, note) VALUES (9, 'x') ON DUPLICATE KEY UPDATE note = 'y'",
        REFUSED,
    ),
];

/// Every hostile statement of the table-driven test on `backend`.
fn hostile(backend: Backend) -> Vec<&'static Probe> {
    let specific = match backend {
        Backend::Sqlite => ON_SQLITE,
        Backend::Postgres => ON_POSTGRES,
        Backend::Mariadb => ON_MARIADB,
    };
    HOSTILE.iter().chain(PG_ESCAPES).chain(specific).collect()
}

/// A `Probe` event carrying `sql` for the `sql-probe` guest.
pub fn probe_event(sql: &str, mode: &str, params: Value) -> NewEvent {
    NewEvent::new(
        "Probe",
        Some("probe"),
        json!({ "sql": sql, "mode": mode, "params": params }),
    )
}

/// The probes of `hostile`, then a legitimate insert of note `legit_id` and a query that
/// reads it.
pub fn probes(hostile: &[&Probe], legit_id: i64) -> Vec<NewEvent> {
    let mut events: Vec<NewEvent> = hostile
        .iter()
        .map(|p| probe_event(p.sql, p.mode, json!([])))
        .collect();
    events.push(probe_event(
        "INSERT INTO probe_notes (id, note) VALUES ($1, $2)",
        "execute",
        json!([legit_id, "legit"]),
    ));
    events.push(probe_event(
        "SELECT id, note FROM probe_notes WHERE id = $1",
        "query",
        json!([legit_id]),
    ));
    events
}

/// Checks the outcome recorded for each probe of `hostile` (then the legitimate pair of
/// [`probes`]), the first of which is event `first_id`.
pub fn check_outcomes(env: &Env, hostile: &[&Probe], first_id: i64, round: &str) {
    let results = env.rows(&format!(
        "SELECT event_id, outcome, detail FROM probe_results WHERE event_id >= {first_id} ORDER BY event_id"
    ));
    assert_eq!(
        results.len(),
        hostile.len() + 2,
        "{round}: one outcome per probe: {results:?}"
    );
    let mut wrong = Vec::new();
    for (probe, row) in hostile.iter().zip(&results) {
        if !probe.expect.contains(&row[1].as_str()) {
            wrong.push(format!(
                "  {} -> {} ({}), expected {:?}",
                probe.sql, row[1], row[2], probe.expect
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{round}: hostile SQL was not refused:\n{}",
        wrong.join("\n")
    );
    let legit = &results[hostile.len()..];
    assert_eq!(
        legit[0][1..],
        ["ok", "1"],
        "{round}: the legitimate insert changes one row"
    );
    assert_eq!(
        legit[1][1..],
        ["ok", "1"],
        "{round}: the legitimate query returns one row"
    );
}

fn hostile_sql_is_denied_touches_nothing_and_the_host_keeps_running(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    let hostile = hostile(backend);
    assert!(
        hostile.len() >= 60,
        "the table holds {} hostile statements, fewer than the 60 promised",
        hostile.len()
    );
    let mut generator = Generator::new(6);
    env.import(&generator.open_accounts(5));
    env.import(&generator.money(50));
    env.deploy("balance", &g.balance_v1);

    // Round 1: probes in the history a new projector is built from (the build target's tables).
    let first = env.head() + 1;
    env.import(&probes(&hostile, 1000));
    let events_before = env.rows("SELECT * FROM stored_events ORDER BY id");
    let objects_before = env.schema_objects();
    env.deploy("sql-probe", &g.sql_probe);
    check_outcomes(&env, &hostile, first, "probes replayed by deploy");
    assert_eq!(
        env.rows("SELECT * FROM stored_events ORDER BY id"),
        events_before,
        "stored_events was modified"
    );
    let new_objects: Vec<_> = env
        .schema_objects()
        .into_iter()
        .filter(|o| !objects_before.contains(o))
        .collect();
    assert!(
        !new_objects.is_empty() && new_objects.iter().all(|o| o.contains("probe_")),
        "deploy created only the probe's tables: {new_objects:?}"
    );
    assert_eq!(
        env.rows("SELECT id, note FROM probe_notes"),
        [["1000", "legit"]]
    );

    // Round 2: the same probes against the live tables, sent through the daemon.
    let mut daemon = env.serve();
    let targets_before = env.rows(
        "SELECT id, projector, version_id, role, replay_key, error FROM zdr_targets ORDER BY id",
    );
    let others_before: Vec<_> = ["zdr_replays", "zdr_versions", "zdr_meta"]
        .iter()
        .map(|t| env.rows(&format!("SELECT * FROM {t} ORDER BY 1")))
        .collect();
    let objects_before = env.schema_objects();
    let first = env.head() + 1;
    env.import(&probes(&hostile, 2000));
    let events_before = env.rows("SELECT * FROM stored_events ORDER BY id");
    env.wait_live("sql-probe", "1");
    env.wait_live("balance", "1");
    check_outcomes(&env, &hostile, first, "probes sent to the live projector");
    daemon.assert_running();

    assert_eq!(
        env.rows("SELECT * FROM stored_events ORDER BY id"),
        events_before,
        "stored_events was modified"
    );
    assert_eq!(env.schema_objects(), objects_before, "the schema changed");
    assert_eq!(
        env.rows(
            "SELECT id, projector, version_id, role, replay_key, error FROM zdr_targets ORDER BY id"
        ),
        targets_before,
        "zdr_targets changed beyond checkpoints"
    );
    let others_after: Vec<_> = ["zdr_replays", "zdr_versions", "zdr_meta"]
        .iter()
        .map(|t| env.rows(&format!("SELECT * FROM {t} ORDER BY 1")))
        .collect();
    assert_eq!(others_after, others_before, "zdr tables changed");
    assert_eq!(
        env.rows("SELECT id, note FROM probe_notes ORDER BY id"),
        [["1000", "legit"], ["2000", "legit"]]
    );
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "the other projector's table",
    );
    assert!(
        !env.dir().join("evil.db").exists(),
        "ATTACH created a database file"
    );
    assert!(
        !env.dir().join("evil").exists(),
        "ATTACH or load_extension touched the filesystem"
    );

    // Still serving afterwards.
    env.import(&generator.money(20));
    env.wait_live("balance", "1");
    env.wait_live("sql-probe", "1");
    daemon.assert_running();
    daemon.stop();
}

/// Deploys `balance` and `faulty`, serves, and sends `fault` among ordinary events: the
/// daemon must stop `faulty` at that event and keep everything else going.
fn a_guest_fault_stops_only_that_projector(backend: Backend, fault: &str) {
    let g = guests();
    let env = Env::new(backend);
    // A short deadline for faulty alone (a per-projector limit) so that `Loop` is cut quickly;
    // small batches so earlier events commit.
    env.write_config(
        "batch_size = 10\n[projectors.faulty]\ncall_timeout_ms = 300\nmemory_mib = 64\n",
    );
    let mut generator = Generator::new(8);
    env.import(&generator.open_accounts(8));
    env.import(&generator.money(40));
    env.deploy("balance", &g.balance_v1);
    env.deploy("faulty", &g.faulty);
    let mut daemon = env.serve();

    env.import(&generator.money(25));
    let fault_id = env.head() + 1;
    env.import(&[NewEvent::new(fault, None, json!({}))]);
    env.import(&generator.money(25));

    let mut faulty = Value::Null;
    wait_until(
        PATIENCE,
        &format!("faulty to stop at the {fault} event {fault_id}"),
        || {
            faulty = env.projector("faulty");
            faulty["status"] == "stopped"
        },
    );
    assert_eq!(faulty["failure"]["event_id"], fault_id, "{faulty:#}");
    if fault == "Loop" {
        let message = faulty["failure"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("300ms"),
            "faulty's own deadline applies, not the default: {message}"
        );
    }
    let checkpoint = faulty["checkpoint"].as_i64().expect("a checkpoint");
    assert!(
        checkpoint < fault_id,
        "faulty went past its failure: {faulty:#}"
    );
    assert!(faulty["lag"].as_i64().expect("a lag") > 0, "{faulty:#}");
    // Every event before the checkpoint was applied exactly once; nothing of the failed batch.
    let seen = env.ids("SELECT event_id FROM seen ORDER BY event_id");
    assert_eq!(
        seen,
        (1..=checkpoint).collect::<Vec<_>>(),
        "the seen table disagrees with the checkpoint"
    );

    // The other projector is not held back.
    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "balance next to a faulty guest",
    );
    env.import(&generator.money(10));
    env.wait_live("balance", "1");
    daemon.assert_running();

    // Resuming retries the same event: nothing is skipped.
    let out = env.ok(&["projector", "resume", "faulty"]);
    assert!(out.contains("resumed faulty"), "{out}");
    wait_until(
        PATIENCE,
        "faulty to fail again on the same event after resume",
        || {
            env.scalar(&format!("SELECT COUNT(*) FROM zdr_failures WHERE projector = 'faulty' AND event_id = {fault_id}")) >= 2
        },
    );
    wait_until(PATIENCE, "faulty to be stopped again", || {
        env.projector("faulty")["status"] == "stopped"
    });
    let faulty = env.projector("faulty");
    assert_eq!(faulty["failure"]["event_id"], fault_id, "{faulty:#}");
    assert!(
        faulty["checkpoint"].as_i64().expect("a checkpoint") < fault_id,
        "{faulty:#}"
    );
    assert_eq!(
        env.scalar(&format!(
            "SELECT COUNT(*) FROM seen WHERE event_id >= {fault_id}"
        )),
        0
    );

    daemon.assert_running();
    let log = daemon.stop();
    assert!(
        log.contains("faulty"),
        "the failure is logged with the projector's name:\n{log}"
    );
}

fn a_guest_returning_an_error_stops_only_itself_at_that_event(backend: Backend) {
    a_guest_fault_stops_only_that_projector(backend, "Fail");
}

fn a_trapping_guest_stops_only_itself_and_the_daemon_survives(backend: Backend) {
    a_guest_fault_stops_only_that_projector(backend, "Trap");
}

fn a_guest_stuck_in_a_loop_is_cut_by_the_deadline_and_stops_only_itself(backend: Backend) {
    a_guest_fault_stops_only_that_projector(backend, "Loop");
}

fn deploying_a_guest_that_fails_on_history_is_refused_with_the_event_and_leaves_nothing_live(
    backend: Backend,
) {
    let g = guests();
    for fault in ["Fail", "Trap", "Panic", "Loop", "Alloc"] {
        let env = Env::new(backend);
        env.write_config("call_timeout_ms = 300\nmemory_mib = 32\n");
        env.import(&[
            NewEvent::new("Hello", None, json!({})),
            NewEvent::new(fault, None, json!({})),
            NewEvent::new("Hello", None, json!({})),
        ]);
        let err = env.fail(&["projector", "deploy", "faulty", &g.faulty]);
        assert!(
            err.contains("event 2"),
            "{fault}: the error names the event: {err}"
        );
        let list = env.json(&["projector", "list", "--json"]);
        assert_eq!(
            list,
            json!([]),
            "{fault}: a failed deploy leaves nothing live"
        );
        assert!(
            !env.table_exists("seen"),
            "{fault}: a failed deploy leaves no live table"
        );
        assert_eq!(env.head(), 3, "{fault}: the events are kept");
    }
}

fn a_clone_failing_while_dual_writing_drops_out_and_live_keeps_projecting(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config("batch_size = 10\n");
    env.import(&vec![NewEvent::new("Hello", None, json!({})); 20]);
    env.deploy("faulty", &g.faulty);
    let daemon = env.serve();
    // Rebuild faulty into a clone (the same component: a replay need not change the version).
    env.ok(&[
        "replay",
        "create",
        "again",
        "--projector",
        &format!("faulty={}", g.faulty),
    ]);
    env.ok(&["replay", "start", "again"]);
    env.ok(&["replay", "project", "again"]);
    assert_eq!(env.show("again")["state"], "projecting");

    // An event only the replaying instance fails on: the clone's savepoint is rolled back and
    // it drops out; live applies it and goes on.
    env.import(&vec![NewEvent::new("Hello", None, json!({})); 5]);
    let fault_id = env.head() + 1;
    env.import(&[NewEvent::new("FailWhenReplaying", None, json!({}))]);
    env.import(&vec![NewEvent::new("Hello", None, json!({})); 15]);
    let head = env.head();
    wait_until(PATIENCE, "live faulty to reach the head", || {
        env.projector("faulty")["checkpoint"] == head
    });
    let live = env.projector("faulty");
    assert_eq!(live["status"], "running", "{live:#}");
    let seen = env.ids("SELECT event_id FROM seen ORDER BY event_id");
    assert_eq!(
        seen,
        (1..=head).collect::<Vec<_>>(),
        "live saw every event once"
    );

    let replay = env.show("again");
    assert_eq!(replay["state"], "failed", "{replay:#}");
    let part = &replay["projectors"][0];
    assert_eq!(part["failure"]["event_id"], fault_id, "{replay:#}");
    assert_eq!(
        part["checkpoint"],
        fault_id - 1,
        "the clone stops just before the event: {replay:#}"
    );
    let clone_seen = env.ids(&format!(
        "SELECT event_id FROM {} ORDER BY event_id",
        env.clone_table("again", "seen")
    ));
    assert_eq!(
        clone_seen,
        (1..fault_id).collect::<Vec<_>>(),
        "the clone holds exactly the events before its failure"
    );
    // A failed clone cannot be promoted; starting it again fails at the same event.
    let err = env.fail(&["replay", "promote", "again"]);
    assert!(err.contains("not projecting"), "{err}");
    let err = env.fail(&["replay", "start", "again"]);
    assert!(err.contains(&format!("event {fault_id}")), "{err}");
    drop(daemon);
}

fn a_replay_replaces_a_live_projector_stopped_at_a_failure(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config("batch_size = 10\n");
    env.import(&vec![NewEvent::new("Hello", None, json!({})); 30]);
    env.deploy("faulty", &g.faulty);
    let daemon = env.serve();
    let fault_id = env.head() + 1;
    env.import(&[NewEvent::new("FailWhenLive", None, json!({}))]);
    env.import(&vec![NewEvent::new("Hello", None, json!({})); 12]);
    wait_until(PATIENCE, "live faulty to stop at the failure", || {
        env.projector("faulty")["status"] == "stopped"
    });
    assert_eq!(env.projector("faulty")["failure"]["event_id"], fault_id);

    // The fix is rebuilt beside the stopped live version and promoted over it; the clone
    // catches up to the head inside the promote, since nothing dual-writes a stopped live.
    env.ok(&[
        "replay",
        "create",
        "fix",
        "--projector",
        &format!("faulty={}", g.faulty),
    ]);
    env.ok(&["replay", "start", "fix"]);
    env.ok(&["replay", "project", "fix"]);
    env.import(&vec![NewEvent::new("Hello", None, json!({})); 7]);
    env.ok(&["replay", "promote", "fix"]);
    let head = env.head();
    wait_until(
        PATIENCE,
        "the promoted version to serve up to the head",
        || {
            let live = env.projector("faulty");
            live["status"] == "running" && live["checkpoint"] == head
        },
    );
    assert_eq!(
        env.ids("SELECT event_id FROM seen ORDER BY event_id"),
        (1..=head).collect::<Vec<_>>(),
        "the new live table holds every event exactly once"
    );
    env.ok(&["replay", "remove", "fix"]);
    drop(daemon);
}

fn queries_past_the_row_cap_and_oversized_statements_answer_limit_exceeded(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    // 101 notes: their cross join is 10,201 rows, over the 10,000-row cap of one query.
    let mut events: Vec<NewEvent> = (0..101)
        .map(|i| NewEvent::new("ProbeNote", None, json!({ "note": format!("n{i}") })))
        .collect();
    let cross_join = env.head() + events.len() as i64 + 1;
    events.push(probe_event(
        "SELECT a.id, b.id FROM probe_notes a, probe_notes b",
        "query",
        json!([]),
    ));
    let small_join = cross_join + 1;
    events.push(probe_event(
        "SELECT a.id FROM probe_notes a, probe_notes b LIMIT 10000",
        "query",
        json!([]),
    ));
    let oversized = small_join + 1;
    let long_sql = format!(
        "SELECT id FROM probe_notes WHERE note IN ({})",
        vec!["'x'"; 20_000].join(", ")
    );
    events.push(probe_event(&long_sql, "query", json!([])));
    env.import(&events);
    env.deploy("sql-probe", &g.sql_probe);
    let outcome = |id: i64| {
        env.rows(&format!(
            "SELECT outcome FROM probe_results WHERE event_id = {id}"
        ))
    };
    assert_eq!(outcome(cross_join), [["limit-exceeded"]], "the row cap");
    assert_eq!(outcome(small_join), [["ok"]], "a query at the cap is fine");
    assert_eq!(
        outcome(oversized),
        [["limit-exceeded"]],
        "the statement size cap"
    );
    // Not stopped: every cap answered the guest, which recorded it and went on.
    assert_eq!(env.projector("sql-probe")["status"], "unserved");
    assert!(env.projector("sql-probe")["failure"].is_null());
}
