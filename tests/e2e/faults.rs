//! Trust under faults: connections cut under the daemon, writers that hold an event id they
//! have not written yet, clones that swallow database errors, statements that run past the
//! guest's deadline, oversized values, undecodable rows, deleted and damaged database files,
//! poison events, and a status that says so whenever nothing moves.
//!
//! Every scenario here reproduces a defect found from outside the suite; each failed on the
//! code before its fix.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::sandbox::probe_event;
use crate::support::{
    Backend, Env, Generator, NewEvent, PATIENCE, Writer, assert_same_rows, both_backends, fold_v1,
    fold_v2, guests, pg_error, postgres_connect, wait_for, wait_until,
};

both_backends!(
    a_clone_that_swallows_a_database_error_drops_out_and_live_goes_on,
    a_live_projector_that_swallows_a_database_error_never_retries_for_ever,
    a_statement_past_the_deadline_is_interrupted_and_never_holds_the_store,
    oversized_values_and_results_answer_limit_exceeded,
    statements_in_use_connection_are_denied,
    a_poison_event_can_be_skipped_on_live_and_the_skip_is_recorded,
    a_write_that_fails_unseen_in_promote_refuses_the_promote,
);

/// The status `projector list --json` gives `name`, with its reason.
fn status(env: &Env, name: &str) -> (String, String) {
    let p = env.projector(name);
    (
        p["status"].as_str().unwrap_or_default().to_string(),
        p["status_reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Waits until `projector list` shows `name` with `want` status, and returns its entry.
fn wait_status(env: &Env, name: &str, want: &str) -> Value {
    let mut entry = Value::Null;
    wait_for(PATIENCE, &format!("{name} to be {want}"), || {
        entry = env.projector(name);
        if entry["status"] == want {
            Ok(())
        } else {
            Err(entry.to_string())
        }
    });
    entry
}

/// Every event id in the store, in order.
fn all_ids(env: &Env) -> Vec<i64> {
    env.ids("SELECT id FROM stored_events ORDER BY id")
}

/// An env on `backend` with `accounts` opened and `money` events after them, and `balance` v1
/// deployed over them.
fn balance_env(backend: Backend, seed: u64, accounts: usize, money: usize) -> (Env, Generator) {
    let env = Env::new(backend);
    let mut generator = Generator::new(seed);
    env.import(&generator.open_accounts(accounts));
    if money > 0 {
        env.import(&generator.money(money));
    }
    env.deploy("balance", &guests().balance_v1);
    (env, generator)
}

// ----- PostgreSQL: ids drawn before the row is written -------------------------------------------

/// An `INSERT` draws its id from the sequence before it computes a slow value; another writer
/// commits a later id meanwhile. The daemon must wait for the slow writer, not pass its id.
#[test]
fn an_insert_that_drew_its_id_before_writing_its_row_is_never_skipped() {
    let (env, mut generator) = balance_env(Backend::Postgres, 101, 3, 10);
    let mut daemon = env.serve();
    env.wait_live("balance", "1");
    let account = generator.accounts()[0].clone();
    for round in 0..3 {
        let (url, slow_account) = (env.url().to_string(), account.clone());
        let slow = std::thread::spawn(move || {
            let mut client = postgres_connect(&url);
            client
                .execute(
                    "INSERT INTO stored_events (aggregate_uuid, event_class, event_properties, meta_data, created_at) \
                     VALUES ($1, 'MoneyAdded', (SELECT '{\"amount\": 1000}' FROM pg_sleep(0.8))::jsonb, '{}', now())",
                    &[&slow_account],
                )
                .unwrap_or_else(|e| panic!("the slow insert failed: {}", pg_error(&e)));
        });
        std::thread::sleep(Duration::from_millis(150));
        // A later id, committed while the slow insert still computes its value.
        Writer::Postgres(postgres_connect(env.url())).append(&generator.money(1));
        slow.join().expect("the slow writer panicked");
        env.wait_live("balance", "1");
        assert_same_rows(
            &env.balances_v1("balances"),
            &fold_v1(&env.stored_events()),
            &format!("round {round}: live after a slow insert and an overtaking one"),
        );
    }
    daemon.assert_running();
    daemon.stop();
}

// ----- PostgreSQL: connections cut under the daemon and under `replay start` ----------------------

/// Terminates every backend of `role` (or, with `None`, every `zdr` backend) on the env's
/// database; returns how many were terminated.
fn terminate(env: &Env, role: Option<&str>) -> u64 {
    let mut admin = postgres_connect(env.url());
    let database = env
        .url()
        .rsplit('/')
        .next()
        .expect("a database name")
        .split('?')
        .next()
        .expect("a database name")
        .to_string();
    let rows = match role {
        Some(role) => admin.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&database, &role],
        ),
        None => admin.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 \
             AND application_name = 'zdr' AND pid <> pg_backend_pid()",
            &[&database],
        ),
    }
    .unwrap_or_else(|e| panic!("terminating backends: {}", pg_error(&e)));
    rows.len() as u64
}

/// A login role of the test's own (dropped when dropped), so that the daemon's connections can
/// be cut and kept out while the test's own stay in.
struct Role {
    name: String,
    url: String,
}

impl Role {
    fn create(env: &Env) -> Role {
        let name = format!("zdr_daemon_{}", std::process::id());
        let mut admin = postgres_connect(env.url());
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN SUPERUSER"
            ))
            .unwrap_or_else(|e| panic!("creating role {name}: {}", pg_error(&e)));
        let url = env
            .url()
            .replacen("://postgres@", &format!("://{name}@"), 1);
        assert_ne!(
            url,
            env.url(),
            "test bug: the test server's user is not `postgres`"
        );
        Role { name, url }
    }

    fn set_login(&self, env: &Env, login: bool) {
        let mut admin = postgres_connect(env.url());
        let what = if login { "LOGIN" } else { "NOLOGIN" };
        admin
            .batch_execute(&format!("ALTER ROLE {} {what}", self.name))
            .unwrap_or_else(|e| panic!("ALTER ROLE: {}", pg_error(&e)));
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Ok(mut admin) =
            postgres::Client::connect(&crate::support::postgres_server_url(), postgres::NoTls)
        {
            let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {}", self.name));
        }
    }
}

/// The daemon's connections are terminated and it cannot log in again for a while: it keeps
/// trying with bounded backoff, `projector list` says it is stuck (never `running`) with the
/// reason, and once it can log in it carries on from the checkpoint without a restart.
#[test]
fn a_daemon_cut_off_from_postgres_says_stuck_and_recovers_by_itself() {
    let (env, mut generator) = balance_env(Backend::Postgres, 102, 5, 50);
    let role = Role::create(&env);
    let mut daemon = env.serve_as(&role.url, "serve.log");
    wait_status(&env, "balance", "running");

    role.set_login(&env, false);
    assert!(
        terminate(&env, Some(&role.name)) > 0,
        "the daemon had no connection"
    );
    env.import(&generator.money(20));
    let entry = wait_status(&env, "balance", "stuck");
    let reason = entry["status_reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "a stuck projector says why: {entry:#}");
    assert!(
        entry["lag"].as_i64().unwrap_or_default() > 0,
        "events wait while it is stuck: {entry:#}"
    );
    daemon.assert_running();

    role.set_login(&env, true);
    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live after the daemon reconnected",
    );
    daemon.assert_running();
    let log = daemon.stop();
    assert!(
        log.contains("terminating connection due to administrator command"),
        "the log keeps the server's reason for the cut:\n{log}"
    );
    assert!(
        log.contains("not permitted to log in"),
        "the log says why reconnecting failed:\n{log}"
    );
    assert!(
        log.contains("reconnected"),
        "the log says it recovered:\n{log}"
    );
}

/// The acceptance scenario: an appender keeps writing while the daemon's backends are
/// terminated ten times at random moments; the daemon recovers every time without a restart,
/// and live equals the reference fold with nothing skipped or doubled.
#[test]
fn ten_cuts_under_load_lose_nothing_and_need_no_restart() {
    let (env, mut generator) = balance_env(Backend::Postgres, 103, 20, 200);
    let mut daemon = env.serve();
    wait_status(&env, "balance", "running");
    let appender = crate::support::Appender::start(&env, 1030, generator.accounts().to_vec());
    let mut cuts = 0;
    for round in 0..10 {
        std::thread::sleep(Duration::from_millis(150 + generator.below(900)));
        if terminate(&env, None) > 0 {
            cuts += 1;
        }
        daemon.assert_running();
        appender.wait_for(5 + round);
    }
    appender.stop();
    assert!(
        cuts >= 8,
        "only {cuts} of 10 rounds found the daemon connected"
    );
    env.wait_live("balance", "1");
    let events = env.stored_events();
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "live after ten cuts",
    );
    daemon.assert_running();
    let log = daemon.stop();
    assert!(log.contains("reconnected"), "{log}");
}

/// `replay start` whose connection is terminated fails cleanly, says why in the server's
/// words, and a second `start` finishes the job.
#[test]
fn a_cut_under_replay_start_keeps_the_servers_reason_and_resumes() {
    let g = guests();
    let env = Env::new(Backend::Postgres);
    let mut generator = Generator::new(104);
    env.import(&generator.open_accounts(20));
    for _ in 0..6 {
        env.import(&generator.money(5_000));
    }
    env.deploy("balance", &g.balance_v1);
    env.create_balance_replay("v2", &g.balance_v2);
    let child = env
        .command(&["replay", "start", "v2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replay start");
    // The replay is split by aggregate (balance v2 declares it; two parts by default on
    // two cores): until the parts join, their checkpoints move, not the clone's.
    wait_until(PATIENCE, "the replay to commit a batch", || {
        env.scalar(
            "SELECT GREATEST((SELECT COALESCE(MAX(checkpoint), 0) FROM zdr_targets WHERE role = 'clone'), \
             (SELECT COALESCE(MAX(checkpoint), 0) FROM zdr_partitions))",
        ) > 0
    });
    assert!(terminate(&env, None) > 0, "replay start had no connection");
    let output = child.wait_with_output().expect("wait for replay start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "replay start survived the cut?\n{stderr}"
    );
    assert!(
        stderr.contains("terminating connection due to administrator command"),
        "the error keeps the server's reason:\n{stderr}"
    );
    env.ok(&["replay", "start", "v2"]);
    assert_same_rows(
        &env.balances_v2(&env.clone_table("v2", "balances")),
        &crate::support::fold_v2(&env.stored_events()),
        "the clone after a resumed start",
    );
}

// ----- clones and live projectors that swallow database errors ------------------------------------

/// Ticks, then `class`, then ticks: events for `faulty`, which ignores classes it has no fault
/// for.
fn ticks_around(class: &str) -> Vec<NewEvent> {
    let tick = || NewEvent::new("Tick", Some("t"), json!({}));
    let mut events = vec![tick(), tick(), tick()];
    events.push(NewEvent::new(class, Some("t"), json!({})));
    events.extend([tick(), tick(), tick()]);
    events
}

/// A projector whose `promote` sends a write that fails and answers yes without asking how
/// it went (`faulty` after a `BreakPromote` event): on PostgreSQL the host runs the write only
/// at the end of the call, on MariaDB at once; either way the promote is refused with the
/// database's reason and nothing is swapped. (Before, PostgreSQL went on into an aborted
/// transaction and failed on zdr's next statement with "current transaction is aborted", and
/// MariaDB promoted.) On SQLite the failed statement fails alone and the promote goes through.
fn a_write_that_fails_unseen_in_promote_refuses_the_promote(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.import(&ticks_around("BreakPromote"));
    env.deploy("faulty", &g.faulty);
    env.ok(&[
        "replay",
        "create",
        "r",
        "--projector",
        &format!("faulty={}", g.faulty),
    ]);
    env.ok(&["replay", "start", "r"]);
    env.ok(&["replay", "project", "r"]);
    let before = env.show("r");
    match backend {
        Backend::Postgres | Backend::Mariadb => {
            let err = env.fail(&["replay", "promote", "r"]);
            assert!(
                err.contains("vetoed the promote") && err.to_lowercase().contains("duplicate"),
                "the promote is refused with the database's reason: {err}"
            );
            assert_eq!(env.show("r"), before, "a refused promote changes no state");
        }
        Backend::Sqlite => {
            env.ok(&["replay", "promote", "r"]);
        }
    }
}

/// A clone whose projector catches a database error and carries on: on PostgreSQL the
/// statement aborted the transaction, so the clone fails at that event and drops out of
/// projecting with the reason; on SQLite a failed statement aborts only itself, so the clone
/// goes on. Either way live never stalls.
fn a_clone_that_swallows_a_database_error_drops_out_and_live_goes_on(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.import(&ticks_around("Tick"));
    env.deploy("faulty", &g.faulty);
    env.ok(&[
        "replay",
        "create",
        "r",
        "--projector",
        &format!("faulty={}", g.faulty),
    ]);
    env.ok(&["replay", "start", "r"]);
    env.ok(&["replay", "project", "r"]);
    let mut daemon = env.serve();
    let first = env.head() + 1;
    env.import(&ticks_around("SwallowWhenReplaying"));
    let swallowed = first + 3;
    env.wait_live("faulty", "1");
    assert_eq!(
        env.ids("SELECT event_id FROM seen ORDER BY event_id"),
        all_ids(&env),
        "live applied every event once"
    );
    let show = env.show("r");
    match backend {
        // A failed statement fails its event on both servers (MariaDB: so that a batch never
        // commits around a statement a deadlock undid).
        Backend::Postgres | Backend::Mariadb => {
            assert_eq!(show["state"], "failed", "{show:#}");
            let error = show["error"].as_str().unwrap_or_default().to_lowercase();
            assert!(
                error.contains(&format!("event {swallowed}")) && error.contains("duplicate"),
                "the replay names the event and the database error it swallowed: {show:#}"
            );
        }
        Backend::Sqlite => {
            assert_eq!(show["state"], "projecting", "{show:#}");
            env.wait_replay_caught_up("r");
        }
    }
    // Live keeps going afterwards.
    env.import(&ticks_around("Tick"));
    env.wait_live("faulty", "1");
    daemon.assert_running();
    let log = daemon.stop();
    assert!(
        !log.contains("batch failed, retrying"),
        "live retried:\n{log}"
    );
}

/// A live projector that swallows a database error: on PostgreSQL the batch cannot commit, so
/// the projector stops at that event with the reason (it must not retry the batch for ever);
/// on SQLite the statement alone failed and live goes on.
fn a_live_projector_that_swallows_a_database_error_never_retries_for_ever(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.import(&ticks_around("Tick"));
    env.deploy("faulty", &g.faulty);
    let mut daemon = env.serve();
    let first = env.head() + 1;
    env.import(&ticks_around("Swallow"));
    let swallowed = first + 3;
    match backend {
        Backend::Postgres | Backend::Mariadb => {
            let entry = wait_status(&env, "faulty", "stopped");
            assert_eq!(entry["failure"]["event_id"], swallowed, "{entry:#}");
            let message = entry["failure"]["message"].as_str().unwrap_or_default();
            assert!(message.to_lowercase().contains("duplicate"), "{entry:#}");
            assert_eq!(
                entry["checkpoint"],
                first - 1,
                "the batch rolled back: {entry:#}"
            );
        }
        Backend::Sqlite => {
            env.wait_live("faulty", "1");
            assert_eq!(
                env.ids("SELECT event_id FROM seen ORDER BY event_id"),
                all_ids(&env)
            );
        }
    }
    daemon.assert_running();
    let log = daemon.stop();
    assert!(
        !log.contains("batch failed, retrying"),
        "live retried:\n{log}"
    );
}

// ----- statements past the deadline ---------------------------------------------------------------

/// A cross join of a ten-row table with itself twelve times: 10^12 rows.
const RUNAWAY: &str = "WITH t(x) AS (VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10)) \
     SELECT count(*) FROM t a, t b, t c, t d, t e, t f, t g, t h, t i, t j, t k, t l";

/// A guest statement that would run for hours is interrupted at the guest's deadline (here
/// one second): the projector stops at that event naming the deadline, and meanwhile the
/// application's appends go through.
fn a_statement_past_the_deadline_is_interrupted_and_never_holds_the_store(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config("[projectors.sql-probe]\ncall_timeout_ms = 1000\n");
    env.deploy("sql-probe", &g.sql_probe);
    let mut daemon = env.serve();
    let started = Instant::now();
    env.import(&[probe_event(RUNAWAY, "query", json!([]))]);
    let probe = env.head();
    std::thread::sleep(Duration::from_millis(1500));
    // The application appends while the probe runs (SQLite: it needs the write lock).
    let appended = env.zdr(&["events", "append", "--class", "Hello"]);
    assert!(
        appended.status.success(),
        "an append was blocked by the guest's statement: {}",
        String::from_utf8_lossy(&appended.stderr)
    );
    let entry = wait_status(&env, "sql-probe", "stopped");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the statement ran {:?}, far past its 1 s deadline",
        started.elapsed()
    );
    assert_eq!(entry["failure"]["event_id"], probe, "{entry:#}");
    let message = entry["failure"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("deadline"), "{entry:#}");
    if backend == Backend::Postgres {
        assert_eq!(
            env.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%t a, t b, t c%' \
                 AND pid <> pg_backend_pid()"
            ),
            0,
            "the statement still runs in the database"
        );
    }
    if backend == Backend::Mariadb {
        // The server answered the stopped statement already; its thread may still be
        // cleaning up for a moment after that.
        wait_until(
            PATIENCE,
            "the stopped statement to leave the server",
            || {
                env.scalar(
                "SELECT count(*) FROM information_schema.processlist WHERE info LIKE '%t a, t b, t c%' \
                 AND id <> CONNECTION_ID()",
            ) == 0
            },
        );
    }
    daemon.assert_running();
    daemon.stop();
}

// ----- bytes ------------------------------------------------------------------------------------

/// Statements that build values or results far past the byte caps are refused with
/// `limit-exceeded`, and the daemon's memory stays bounded. On SQLite a failed statement fails
/// alone, so the probe records the answer; on PostgreSQL it aborts the transaction, so the
/// projector stops at the probe's event with the reason (and is skipped past it), except for
/// a result the host stops reading, which leaves the transaction intact.
fn oversized_values_and_results_answer_limit_exceeded(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.deploy("sql-probe", &g.sql_probe);
    let mut daemon = env.serve();
    // Built in the database: refused there.
    let built: &[&str] = match backend {
        Backend::Sqlite => &[
            "SELECT replace(printf('%.*c', 3000000, 'x'), 'x', 'xxxxxxxxxx')",
            "WITH t(x) AS (VALUES (1), (2), (3), (4), (5), (6)) \
             SELECT length(group_concat(printf('%.*c', 4000000, 'x'))) FROM t a, t b",
        ],
        Backend::Postgres => &[
            "SELECT format('%100000000s', 'x')",
            "WITH t(x) AS (VALUES (1), (2), (3), (4), (5), (6)) \
             SELECT string_agg(format('%4000000s', 'x'), '') FROM t a, t b",
        ],
        // MySQL answers NULL for a value past max_allowed_packet, so these stay below it (5
        // and 6 MB); MariaDB's replace() takes minutes on megabytes, and does not stop for
        // KILL QUERY while it runs, so the values are built with concat().
        Backend::Mariadb => &[
            "WITH p(s) AS (SELECT replace(replace(replace(replace(replace('x', 'x', 'xxxxxxxxxx'), \
             'x', 'xxxxxxxxxx'), 'x', 'xxxxxxxxxx'), 'x', 'xxxxxxxxxx'), 'x', 'xxxxxxxxxx')) \
             SELECT concat(s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s) FROM p",
            "WITH p(s) AS (SELECT replace(replace(replace(replace(replace('y', 'y', 'yyyyyyyyyy'), \
             'y', 'yyyyyyyyyy'), 'y', 'yyyyyyyyyy'), 'y', 'yyyyyyyyyy'), 'y', 'yyyyyyyyyy')) \
             SELECT concat(s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s) FROM p",
        ],
    };
    // 5,000 rows of 4,000 bytes: each row is small, the result is not.
    let result = match backend {
        Backend::Sqlite => {
            "WITH t(x) AS (VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10)) \
             SELECT printf('%.*c', 4000, 'x') FROM t a, t b, t c, t d LIMIT 5000"
        }
        Backend::Postgres => {
            "WITH t(x) AS (VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10)) \
             SELECT format('%4000s', 'x') FROM t a, t b, t c, t d LIMIT 5000"
        }
        Backend::Mariadb => {
            "WITH t(x) AS (VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10)) \
             SELECT replace(replace(replace('xxxx', 'x', 'xxxxxxxxxx'), 'x', 'xxxxxxxxxx'), 'x', \
             'xxxxxxxxxx') FROM t a, t b, t c, t d LIMIT 5000"
        }
    };
    for sql in built {
        env.import(&[probe_event(sql, "query", json!([]))]);
        let probe = env.head();
        match backend {
            // MariaDB sends the value and the host refuses to read it: the statement fails
            // alone, the transaction is intact, and the probe records the answer.
            Backend::Sqlite | Backend::Mariadb => {
                env.wait_live("sql-probe", "1");
                let outcome = env.rows(&format!(
                    "SELECT outcome, detail FROM probe_results WHERE event_id = {probe}"
                ));
                assert_eq!(outcome[0][0], "limit-exceeded", "{sql}: {outcome:?}");
            }
            Backend::Postgres => {
                let entry = wait_status(&env, "sql-probe", "stopped");
                assert_eq!(entry["failure"]["event_id"], probe, "{sql}: {entry:#}");
                let message = entry["failure"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("longer than the limit"),
                    "{sql}: {entry:#}"
                );
                env.ok(&[
                    "projector",
                    "skip",
                    "sql-probe",
                    "--event",
                    &probe.to_string(),
                    "--reason",
                    "a probe of the byte cap",
                ]);
            }
        }
    }
    env.import(&[probe_event(result, "query", json!([]))]);
    let probe = env.head();
    env.wait_live("sql-probe", "1");
    let outcome = env.rows(&format!(
        "SELECT outcome, detail FROM probe_results WHERE event_id = {probe}"
    ));
    assert_eq!(outcome[0][0], "limit-exceeded", "{result}: {outcome:?}");
    assert!(outcome[0][1].contains("MiB"), "{outcome:?}");

    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .expect("the daemon's /proc status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status");
    assert!(
        peak_kib < 400 * 1024,
        "the daemon's memory peaked at {} MiB",
        peak_kib / 1024
    );
    daemon.assert_running();
    daemon.stop();
}

// ----- use-connection ---------------------------------------------------------------------------

/// `faulty` runs a statement in `use-connection`, outside any event: the host must refuse it
/// (the handle belongs to a batch transaction that does not exist yet), at deploy and when the
/// daemon binds its instance.
fn statements_in_use_connection_are_denied(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.import(&ticks_around("Tick"));
    env.deploy("faulty", &g.faulty);
    let daemon = env.serve();
    env.import(&ticks_around("Tick"));
    env.wait_live("faulty", "1");
    assert_eq!(
        env.ids("SELECT event_id FROM seen ORDER BY event_id"),
        all_ids(&env),
        "nothing but events reached the table"
    );
    let log = daemon.stop();
    assert!(
        log.contains("a statement in use-connection: Err(Error::Denied("),
        "the guest was told no:\n{log}"
    );
}

// ----- promote and the compile ------------------------------------------------------------------

/// Promote with a component that is not in the compile cache (a Python component takes
/// seconds to compile): the compile must happen before the write lock is taken, so the
/// application's writes never wait for it.
#[test]
fn promote_compiles_before_it_takes_the_write_lock() {
    let (env, _) = balance_env(Backend::Sqlite, 108, 5, 200);
    env.create_balance_replay("v2", &guests().balance_py_v2);
    env.ok(&["replay", "start", "v2"]);
    env.ok(&["replay", "project", "v2"]);
    let cold_cache = env.dir().join("cold-cache");
    let mut promote = env
        .command(&["replay", "promote", "v2"])
        .env("ZDR_CACHE_DIR", &cold_cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replay promote");
    // Probe the write lock the way an application's writer would, without waiting for it.
    let probe = rusqlite::Connection::open(env.db_path()).expect("open");
    probe.busy_timeout(Duration::ZERO).expect("busy_timeout");
    let mut longest = Duration::ZERO;
    let mut busy_since: Option<Instant> = None;
    while promote.try_wait().expect("try_wait").is_none() {
        match probe.execute_batch("BEGIN IMMEDIATE; ROLLBACK") {
            Ok(()) => busy_since = None,
            Err(_) => {
                let since = *busy_since.get_or_insert_with(Instant::now);
                longest = longest.max(since.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = promote.wait_with_output().expect("promote output");
    assert!(
        output.status.success(),
        "promote failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        std::fs::read_dir(&cold_cache).is_ok_and(|mut d| d.next().is_some()),
        "test bug: the promote did not compile anything"
    );
    assert!(
        longest < Duration::from_secs(2),
        "the write lock was held for {longest:?} in one stretch while promote ran"
    );
}

// ----- SQLite: rows zdr cannot decode, deleted and damaged files -----------------------------------

/// Rows whose aggregate id is a BLOB or whose properties are not UTF-8 stop the projector at
/// that event with the reason (never a retry loop); a skip gets past each.
#[test]
fn an_undecodable_row_stops_the_projector_there_and_can_be_skipped() {
    let (env, mut generator) = balance_env(Backend::Sqlite, 109, 3, 20);
    let mut daemon = env.serve();
    env.wait_live("balance", "1");
    let account = generator.accounts()[0].clone();
    env.execute(&format!(
        "INSERT INTO stored_events (aggregate_uuid, event_class, event_properties, meta_data, created_at) \
         VALUES (X'00FF', 'MoneyAdded', '{{\"amount\": 1}}', '{{}}', '2024-01-01 00:00:00'); \
         INSERT INTO stored_events (aggregate_uuid, event_class, event_properties, meta_data, created_at) \
         VALUES ('{account}', 'MoneyAdded', CAST(X'7B22616D6F756E74223A20C328207D' AS TEXT), '{{}}', '2024-01-01 00:00:00');"
    ));
    let blob = env.head() - 1;
    let not_utf8 = env.head();
    for (id, what) in [(blob, "aggregate_uuid"), (not_utf8, "event_properties")] {
        let entry = wait_status(&env, "balance", "stopped");
        assert_eq!(entry["failure"]["event_id"], id, "{entry:#}");
        let message = entry["failure"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(what),
            "the reason names the column: {entry:#}"
        );
        env.ok(&[
            "projector",
            "skip",
            "balance",
            "--event",
            &id.to_string(),
            "--reason",
            "written by a broken importer",
        ]);
    }
    env.import(&generator.money(5));
    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events_where(&format!("id NOT IN ({blob}, {not_utf8})"))),
        "live after skipping the two rows",
    );
    daemon.assert_running();
    let log = daemon.stop();
    assert!(!log.contains("batch failed, retrying"), "{log}");
}

/// The database file is deleted under a running daemon: the daemon stops with a message naming
/// the file (it must not go on writing to a file nobody can open); afterwards no command but
/// `init` creates a new file.
#[test]
fn a_deleted_database_file_stops_the_daemon_and_no_command_recreates_it() {
    let (env, _) = balance_env(Backend::Sqlite, 110, 3, 0);
    let daemon = env.serve();
    wait_status(&env, "balance", "running");
    let path = env.db_path();
    std::fs::remove_file(&path).expect("delete the database file");
    let (status, log) = daemon.wait_exit(PATIENCE);
    assert!(!status.success(), "the daemon exited cleanly?\n{log}");
    assert!(
        log.contains(&path.display().to_string()) && log.contains("deleted"),
        "the daemon names the file and what happened:\n{log}"
    );
    for args in [&["events", "count"][..], &["projector", "list"], &["serve"]] {
        let err = env.fail(args);
        assert!(
            err.contains(&path.display().to_string()) && err.contains("zdr init"),
            "{args:?}: {err}"
        );
        assert!(!path.exists(), "{args:?} created {}", path.display());
    }
    env.ok(&["init"]);
    assert!(path.exists());
}

/// Garbage pages in the middle of the file: `init` checks the file and says what to do, and a
/// daemon that reads the damaged pages stops with the same advice instead of retrying.
#[test]
fn a_damaged_database_file_is_named_with_what_to_do() {
    let (env, mut generator) = balance_env(Backend::Sqlite, 111, 5, 0);
    for _ in 0..4 {
        env.import(&generator.money(5_000));
    }
    // Everything into the main file, then garbage over pages that hold the unprojected events.
    env.execute("PRAGMA wal_checkpoint(TRUNCATE)");
    let path = env.db_path();
    let mut bytes = std::fs::read(&path).expect("read the database");
    let page = 4096;
    let at = (bytes.len() * 3 / 4) / page * page;
    for byte in &mut bytes[at..at + 8 * page] {
        *byte = 0xA5;
    }
    std::fs::write(&path, bytes).expect("write the damaged database");

    let err = env.fail(&["init"]);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("integrity_check"),
        "init names the file and the check to run: {err}"
    );
    let daemon = env.serve();
    let (status, log) = daemon.wait_exit(PATIENCE);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&path.display().to_string()) && log.contains("backup"),
        "the daemon names the file and what to do:\n{log}"
    );
}

// ----- the status tells the truth ---------------------------------------------------------------

/// Without a daemon a projector is `unserved`, with one `running`; a daemon killed with
/// SIGKILL leaves it `stuck` (its reports stop) until another daemon serves it again, and a
/// clean shutdown leaves it `unserved`.
#[test]
fn projector_list_never_says_running_while_nothing_moves() {
    let (env, mut generator) = balance_env(Backend::Sqlite, 112, 3, 0);
    assert_eq!(status(&env, "balance").0, "unserved");
    let daemon = env.serve();
    wait_status(&env, "balance", "running");
    daemon.crash();
    env.import(&generator.money(3));
    let entry = wait_status(&env, "balance", "stuck");
    assert!(
        entry["status_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("since"),
        "{entry:#}"
    );
    let daemon = env.serve();
    env.wait_live("balance", "1");
    daemon.stop();
    assert_eq!(status(&env, "balance").0, "unserved");
}

// ----- poison events ----------------------------------------------------------------------------

/// A live projector stopped at a poison event can be moved past it with `projector skip`,
/// which needs a reason and the exact event, is recorded with who and why and shown in
/// `projector list`; a replay of the same projector still fails at that event.
fn a_poison_event_can_be_skipped_on_live_and_the_skip_is_recorded(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.import(&ticks_around("Tick"));
    env.deploy("faulty", &g.faulty);
    let mut daemon = env.serve();
    let first = env.head() + 1;
    env.import(&ticks_around("Fail"));
    let poison = first + 3;
    wait_status(&env, "faulty", "stopped");
    let poison_arg = poison.to_string();
    let err = env.fail(&["projector", "skip", "faulty", "--event", &poison_arg]);
    assert!(err.contains("--reason"), "{err}");
    let err = env.fail(&[
        "projector",
        "skip",
        "faulty",
        "--event",
        &(poison + 1).to_string(),
        "--reason",
        "x",
    ]);
    assert!(err.contains(&format!("stopped at event {poison}")), "{err}");
    let out = env.ok(&[
        "projector",
        "skip",
        "faulty",
        "--event",
        &poison_arg,
        "--reason",
        "poison event, fixed upstream",
        "--by",
        "ops-oncall",
    ]);
    assert!(out.contains(&format!("skipped event {poison}")), "{out}");
    env.wait_live("faulty", "1");
    let expected: Vec<i64> = all_ids(&env)
        .into_iter()
        .filter(|id| *id != poison)
        .collect();
    assert_eq!(
        env.ids("SELECT event_id FROM seen ORDER BY event_id"),
        expected
    );
    let entry = env.projector("faulty");
    let skipped = &entry["skipped"][0];
    assert_eq!(skipped["event_id"], poison, "{entry:#}");
    assert_eq!(skipped["by"], "ops-oncall", "{entry:#}");
    assert_eq!(
        skipped["reason"], "poison event, fixed upstream",
        "{entry:#}"
    );
    let listed = env.ok(&["projector", "list"]);
    assert!(listed.contains(&format!("skipped {poison}")), "{listed}");
    // Not stopped any more: nothing to skip.
    let err = env.fail(&[
        "projector",
        "skip",
        "faulty",
        "--event",
        &poison_arg,
        "--reason",
        "x",
    ]);
    assert!(err.contains("not stopped"), "{err}");
    // A replay must be exact: it fails at the same event.
    env.ok(&[
        "replay",
        "create",
        "r",
        "--projector",
        &format!("faulty={}", g.faulty),
    ]);
    env.fail(&["replay", "start", "r"]);
    let show = env.show("r");
    assert_eq!(show["state"], "failed", "{show:#}");
    assert_eq!(
        show["projectors"][0]["failure"]["event_id"], poison,
        "{show:#}"
    );
    daemon.assert_running();
    daemon.stop();
}

// ----- the command line -------------------------------------------------------------------------

/// `zdr demo` refuses a URL it cannot use instead of running on SQLite, and a closed stdout
/// (`zdr demo | head -8`) ends it quietly, never with a panic.
#[test]
fn demo_refuses_what_it_cannot_honour_and_a_closed_stdout_ends_quietly() {
    let g = guests();
    let env = Env::uninitialised(Backend::Sqlite);
    let components = ["--v1", g.balance_v1.as_str(), "--v2", g.balance_v2.as_str()];
    let mut args = vec!["demo", "--events", "10"];
    args.extend(components);
    let output = env
        .command_as("oracle://scott@127.0.0.1/orcl", &args)
        .output()
        .expect("run zdr demo");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the demo ran on another database: {err}"
    );
    assert!(
        err.contains("oracle://") && err.contains("unsupported"),
        "{err}"
    );
    assert!(
        !env.dir().join("zdr-demo.db").exists(),
        "the demo ran anyway"
    );

    let mut args = vec!["demo", "--events", "200"];
    args.extend(components);
    let mut child = env
        .command(&args)
        .arg("--file")
        .arg(env.dir().join("head.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zdr demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..8 {
        lines.next().expect("a line").expect("UTF-8");
    }
    drop(lines);
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr");
    let collected = stderr.clone();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        *collected.lock().expect("lock") = text;
    });
    let status =
        crate::support::wait_child(&mut child, PATIENCE, "zdr demo after its stdout closed");
    reader.join().expect("stderr reader");
    let stderr = stderr.lock().expect("lock").clone();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        status.success(),
        "a closed stdout is not an error: {status}\n{stderr}"
    );
}

/// Makes every write to `table` fail the way a server out of disk space answers it: on
/// PostgreSQL SQLSTATE 53100 (`disk_full`), on MariaDB error 1114 ("The table is full").
fn fill_the_disk_under(env: &Env, table: &str) {
    match env.backend() {
        Backend::Postgres => env.execute(&format!(
            "CREATE OR REPLACE FUNCTION zdr_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'could not extend file \"base/1/2\": No space left on device' \
             USING ERRCODE = 'disk_full'; END $$; \
             CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION zdr_test_disk_full()"
        )),
        Backend::Mariadb => {
            // A trigger lives in its table's database.
            let database = table.rsplit_once('.').map(|(db, _)| format!("{db}."));
            let database = database.as_deref().unwrap_or_default();
            for (name, on) in [("disk_full_insert", "INSERT"), ("disk_full_update", "UPDATE")] {
                env.execute(&format!(
                    "CREATE TRIGGER {database}{name} BEFORE {on} ON {table} FOR EACH ROW \
                     SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1114, \
                     MESSAGE_TEXT = 'The table is full'"
                ));
            }
        }
        Backend::Sqlite => unreachable!("SQLite has no trigger that answers SQLITE_FULL"),
    }
}

/// Gives `table` its disk back.
fn free_the_disk_under(env: &Env, table: &str) {
    match env.backend() {
        Backend::Postgres => env.execute(&format!("DROP TRIGGER disk_full ON {table}")),
        Backend::Mariadb => {
            let database = table.rsplit_once('.').map(|(db, _)| format!("{db}."));
            let database = database.as_deref().unwrap_or_default();
            for name in ["disk_full_insert", "disk_full_update"] {
                env.execute(&format!("DROP TRIGGER {database}{name}"));
            }
        }
        Backend::Sqlite => unreachable!("SQLite has no trigger that answers SQLITE_FULL"),
    }
}

#[test]
fn a_full_disk_is_the_databases_failure_never_an_events_on_postgres() {
    a_full_disk_is_the_databases_failure_never_an_events(Backend::Postgres);
}

#[test]
fn a_full_disk_is_the_databases_failure_never_an_events_on_mariadb() {
    a_full_disk_is_the_databases_failure_never_an_events(Backend::Mariadb);
}

/// The server runs out of disk space under a projector's writes. It is not the events'
/// fault: live, even under `on_failure = "park"`, parks nothing and records no failure; the
/// daemon says it is stuck and why, and once space is back it applies every event, none
/// skipped. A projecting clone that cannot write drops out with the reason while live goes on
/// (a replay never stalls live). A replay's `start` fails with the reason and what to do, the
/// replay is not failed, and run again it finishes to the fold.
fn a_full_disk_is_the_databases_failure_never_an_events(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config("[projectors.balance]\non_failure = \"park\"\n");
    let mut generator = Generator::new(31);
    env.import(&generator.open_accounts(5));
    env.import(&generator.money(30));
    env.deploy("balance", &g.balance_v1);
    let mut daemon = env.serve();
    env.wait_live("balance", "1");
    let checkpoint = env.head();

    fill_the_disk_under(&env, "balances");
    env.import(&generator.money(20));
    let stuck = wait_status(&env, "balance", "stuck");
    let reason = stuck["status_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("out of space") && reason.contains("Free space"),
        "the status says why and what to do: {stuck:#}"
    );
    let live = env.projector("balance");
    assert_eq!(live["parked"], 0, "no event parked for the disk: {live:#}");
    assert!(live["failure"].is_null(), "no event blamed: {live:#}");
    assert_eq!(live["checkpoint"], checkpoint, "nothing applied: {live:#}");

    free_the_disk_under(&env, "balances");
    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live after the disk came back: every event, none skipped",
    );
    wait_until(PATIENCE, "the log to say it moves again", || {
        daemon.log().contains("making progress again")
    });

    // A projecting clone whose own table runs out of space drops out with the reason, as
    // any clone failure does; live never stalls because of it.
    env.create_balance_replay("p", &g.balance_v2);
    env.ok(&["replay", "start", "p"]);
    env.ok(&["replay", "project", "p"]);
    let projecting = env.clone_table("p", "balances");
    fill_the_disk_under(&env, &projecting);
    env.import(&generator.money(20));
    env.wait_live("balance", "1");
    let show = env.show("p");
    assert_eq!(show["state"], "failed", "{show:#}");
    assert!(
        show["error"]
            .as_str()
            .is_some_and(|e| e.contains("out of space")),
        "the replay says why: {show:#}"
    );
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live went on while the clone could not write",
    );
    free_the_disk_under(&env, &projecting);
    env.ok(&["replay", "remove", "p"]);
    daemon.assert_running();
    daemon.stop();

    // A replay: the command fails with the reason, and resumes once space is back.
    env.create_balance_replay("r", &g.balance_v2);
    let clone = env.clone_table("r", "balances");
    fill_the_disk_under(&env, &clone);
    let err = env.fail(&["replay", "start", "r"]);
    assert!(
        err.contains("out of space") && err.contains("Free space"),
        "the command names the database's failure, not an event's: {err}"
    );
    let show = env.show("r");
    assert_ne!(show["state"], "failed", "{show:#}");
    assert!(show["projectors"][0]["failure"].is_null(), "{show:#}");
    free_the_disk_under(&env, &clone);
    env.ok(&["replay", "start", "r"]);
    assert_same_rows(
        &env.balances_v2(&clone),
        &fold_v2(&env.stored_events()),
        "the clone after the disk came back",
    );
}

/// An import that fails after some of its transactions committed says how many events it
/// stored, through which line, and how to import the rest: run again whole, the file would
/// store its first events twice. The rest, imported as it says, completes the history once.
#[test]
fn an_import_cut_short_says_where_it_stopped_and_how_to_go_on() {
    let env = Env::new(Backend::Sqlite);
    let events = Generator::new(32).open_accounts(7_000);
    let path = env.dir().join("history.jsonl");
    let lines: Vec<String> = events.iter().map(NewEvent::jsonl).collect();
    std::fs::write(&path, lines.join("\n") + "\n").expect("write the file");
    // The store refuses its 5,001st event, the way a full disk would refuse a transaction.
    env.execute(
        "CREATE TRIGGER cut_short BEFORE INSERT ON stored_events \
         WHEN (SELECT COUNT(*) FROM stored_events) >= 5000 \
         BEGIN SELECT RAISE(ABORT, 'no room for more events'); END",
    );
    let file = path.to_str().expect("UTF-8 path");
    let err = env.fail(&["events", "import", file]);
    assert!(
        err.contains("stopped after 5000 of 7000 events (through line 5000)")
            && err.contains(&format!("tail -n +5001 {file} | zdr events import -"))
            && err.contains("no room for more events"),
        "{err}"
    );
    assert_eq!(env.scalar("SELECT COUNT(*) FROM stored_events"), 5000);

    env.execute("DROP TRIGGER cut_short");
    let rest = env.dir().join("rest.jsonl");
    std::fs::write(&rest, lines[5000..].join("\n") + "\n").expect("write the rest");
    let out = env.ok(&["events", "import", rest.to_str().expect("UTF-8 path")]);
    assert!(out.contains("imported 2000 event(s)"), "{out}");
    let stored: Vec<String> = env
        .stored_events()
        .iter()
        .map(|e| e.aggregate_uuid.clone().unwrap_or_default())
        .collect();
    let wanted: Vec<String> = events
        .iter()
        .map(|e| e.aggregate.clone().unwrap_or_default())
        .collect();
    assert_eq!(stored, wanted, "every line once, in order");
}
