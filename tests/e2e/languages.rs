//! Projectors in any Wasm language: the `balance` projector built from Rust, JavaScript
//! (componentize-js) and Python (componentize-py) sources folds the same events into the
//! same rows, byte for byte; a replay may mix languages and the daemon hot-swaps across them.
//! The JavaScript and Python builds send their writes and flush once per call, like the Rust
//! one: on every backend they fold history exactly and a write that found no account still
//! fails its own event. Their version 2 declares `partition-by` like the Rust one, so on the
//! server backends their replays split by aggregate.

use crate::support::{
    Backend, Env, Generator, NewEvent, PATIENCE, V1_COLUMNS, V2_COLUMNS, assert_same_rows,
    both_backends, fold_v1, fold_v2, guests, wait_until,
};

both_backends!(javascript_and_python_send_and_flush_and_still_name_the_failing_event);

/// Every row of `table`, each column rendered with SQLite's `quote()`, which spells the
/// storage class too (`'text'`, `42`, `NULL`, `X'..'`): equal renderings are equal bytes.
fn exact_rows(env: &Env, table: &str, columns: &str) -> Vec<Vec<String>> {
    let quoted: Vec<String> = columns.split(", ").map(|c| format!("quote({c})")).collect();
    env.rows(&format!(
        "SELECT {} FROM {table} ORDER BY account_uuid",
        quoted.join(", ")
    ))
}

/// Creates replay `key` of `balance` from `file` and replays all history into its clone.
fn replay_into_clone(env: &Env, key: &str, file: &str) -> String {
    env.create_balance_replay(key, file);
    let out = env.ok(&["replay", "start", key]);
    assert!(out.contains("applied"), "replay start {key}: {out}");
    format!("zdr_r_{key}__balances")
}

#[test]
fn rust_javascript_and_python_balance_fold_ten_thousand_events_into_identical_rows() {
    let g = guests();
    let env = Env::new(Backend::Sqlite);
    let mut generator = Generator::new(5);
    env.import(&generator.open_accounts(200));
    env.import(&generator.money(9_800));
    let events = env.stored_events();
    assert_eq!(events.len(), 10_000);

    // Version 1: Rust live, JavaScript and Python each into a clone of their own.
    env.deploy("balance", &g.balance_v1);
    let rust_v1 = exact_rows(&env, "balances", V1_COLUMNS);
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "Rust v1 against the reference fold",
    );
    for (key, file) in [("js1", &g.balance_js_v1), ("py1", &g.balance_py_v1)] {
        let clone = replay_into_clone(&env, key, file);
        assert_same_rows(
            &exact_rows(&env, &clone, V1_COLUMNS),
            &rust_v1,
            &format!("{key} (v1) against Rust v1, byte for byte"),
        );
    }

    // Version 2 (adds a transaction count and the event time): all three into clones.
    let mut v2 = Vec::new();
    for (key, file) in [
        ("rs2", &g.balance_v2),
        ("js2", &g.balance_js_v2),
        ("py2", &g.balance_py_v2),
    ] {
        let clone = replay_into_clone(&env, key, file);
        assert_same_rows(
            &env.balances_v2(&clone),
            &fold_v2(&events),
            &format!("{key} against the reference fold"),
        );
        v2.push((key, exact_rows(&env, &clone, V2_COLUMNS)));
    }
    for (key, rows) in &v2[1..] {
        assert_same_rows(
            rows,
            &v2[0].1,
            &format!("{key} against Rust v2, byte for byte"),
        );
    }
    // The clones' indexes came from the guests' DDL, whatever the language.
    let indexes = env.scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND sql LIKE '%(name)%' \
         AND tbl_name LIKE 'zdr_r_%'",
    );
    assert_eq!(indexes, 3, "each v2 clone has its index by name");
}

/// The JavaScript and Python projectors send every event's write and read the row counts
/// from one `flush` per call (pipelined on PostgreSQL). Their replays fold the whole history,
/// and a deposit into an account never opened still fails its own event, named, although its
/// write was sent along with the rest of its call.
fn javascript_and_python_send_and_flush_and_still_name_the_failing_event(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(13);
    let mut history = generator.open_accounts(40);
    history.extend(generator.money(600));
    env.import(&history);
    env.deploy("balance", &g.balance_v1);
    // On MariaDB the Python component (18 MB) is larger than the server's default
    // `max_allowed_packet` (16 MiB): it is stored, and read back, in parts.
    let projectors = [
        ("js2", "jsbad", &g.balance_js_v2),
        ("py2", "pybad", &g.balance_py_v2),
    ];
    for &(key, _, file) in &projectors {
        replay_into_clone(&env, key, file);
        assert_same_rows(
            &env.balances_v2(&env.clone_table(key, "balances")),
            &fold_v2(&env.stored_events()),
            &format!("{key} against the reference fold"),
        );
    }

    let stray = env.append(&NewEvent::new(
        "MoneyAdded",
        Some("acct-stray"),
        serde_json::json!({"amount": 5}),
    ));
    env.import(&generator.money(100));
    for &(_, key, file) in &projectors {
        env.create_balance_replay(key, file);
        let err = env.fail(&["replay", "start", key]);
        assert!(
            err.contains(&format!("no account acct-stray for event {stray}")),
            "{key}: the failure names the event: {err}"
        );
        let show = env.show(key);
        assert_eq!(show["state"], "failed", "{key}: {show:#}");
        assert_eq!(
            show["projectors"][0]["failure"]["event_id"], stray,
            "{key}: {show:#}"
        );
    }
}

#[test]
fn a_python_v2_promoted_over_a_rust_v1_is_served_by_the_same_daemon() {
    let g = guests();
    let env = Env::new(Backend::Sqlite);
    let mut generator = Generator::new(6);
    env.import(&generator.open_accounts(20));
    env.import(&generator.money(500));
    env.deploy("balance", &g.balance_v1);

    let mut daemon = env.serve();
    let pid = daemon.pid();
    env.import(&generator.money(100));
    env.wait_live("balance", "1");

    let out = env.create_balance_replay("py", &g.balance_py_v2);
    assert!(
        out.contains("created replay py for balance version 2"),
        "{out}"
    );
    env.ok(&["replay", "start", "py"]);
    env.ok(&["replay", "project", "py"]);
    // While projecting, the daemon writes every new event through Rust v1 to live and through
    // Python v2 to the clone, in one transaction.
    env.import(&generator.money(100));
    env.wait_live("balance", "1");
    env.wait_replay_caught_up("py");
    let events = env.stored_events();
    assert_same_rows(
        &env.balances_v2("zdr_r_py__balances"),
        &fold_v2(&events),
        "the Python clone while projecting",
    );

    let out = env.ok(&["replay", "promote", "py"]);
    assert!(out.contains("promoted balance version 2"), "{out}");
    env.import(&generator.money(100));
    env.wait_live("balance", "2");
    wait_until(PATIENCE, "the serve log to report the hot swap", || {
        daemon.log().contains("hot swap: now serving version 2")
    });
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&env.stored_events()),
        "live Python v2 after promote",
    );

    daemon.assert_running();
    assert_eq!(daemon.pid(), pid, "the same daemon serves Python v2");
    let log = daemon.stop();
    assert_eq!(
        log.matches("zdr serve started").count(),
        1,
        "the daemon restarted:\n{log}"
    );
}

/// Waits until live projector `name` is stopped at event `event_id` and returns its entry.
fn wait_stopped_at(env: &Env, name: &str, event_id: i64) -> serde_json::Value {
    let mut seen = serde_json::Value::Null;
    wait_until(
        PATIENCE,
        &format!("{name} to stop at event {event_id}"),
        || {
            seen = env.projector(name);
            seen["status"] == "stopped"
        },
    );
    assert_eq!(seen["failure"]["event_id"], event_id, "{seen:#}");
    assert!(
        seen["checkpoint"].as_i64().expect("a checkpoint") < event_id,
        "{name} went past its failure: {seen:#}"
    );
    seen
}

#[test]
fn a_looping_javascript_guest_and_a_hoarding_or_raising_python_guest_stop_only_themselves() {
    let g = guests();
    let env = Env::new(Backend::Sqlite);
    // Each hostile guest gets tight limits of its own; balance keeps the defaults.
    env.write_config(
        "batch_size = 10\n[projectors.js-loop]\ncall_timeout_ms = 500\n\
         [projectors.py-alloc]\nmemory_mib = 96\ncall_timeout_ms = 3000\n",
    );
    let mut generator = Generator::new(9);
    env.import(&generator.open_accounts(5));
    env.import(&generator.money(20));
    env.deploy("balance", &g.balance_v1);
    env.deploy("js-loop", &g.js_loop);
    env.deploy("py-alloc", &g.py_alloc);
    let mut daemon = env.serve();

    let loop_id = env.head() + 1;
    env.import(&[crate::support::NewEvent::new(
        "Loop",
        None,
        serde_json::json!({}),
    )]);
    env.import(&generator.money(10));
    let alloc_id = env.head() + 1;
    env.import(&[crate::support::NewEvent::new(
        "Alloc",
        None,
        serde_json::json!({}),
    )]);
    env.import(&generator.money(10));

    let js = wait_stopped_at(&env, "js-loop", loop_id);
    let message = js["failure"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("500ms"),
        "cut by its own deadline: {message}"
    );
    wait_stopped_at(&env, "py-alloc", alloc_id);

    // balance is not held back, and the daemon is still up.
    env.import(&generator.money(10));
    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "balance beside hostile JavaScript and Python guests",
    );
    daemon.assert_running();
    daemon.stop();

    // An uncaught Python exception is contained the same way, here at deploy time: the
    // deploy is refused with the event named and nothing goes live.
    let env = Env::new(Backend::Sqlite);
    env.import(&generator.money(5));
    let raise_id = env.head() + 1;
    env.import(&[crate::support::NewEvent::new(
        "Raise",
        None,
        serde_json::json!({}),
    )]);
    let err = env.fail(&["projector", "deploy", "py-alloc", &g.py_alloc]);
    assert!(err.contains(&format!("event {raise_id}")), "{err}");
    assert!(!env.table_exists("py_seen"), "nothing went live");
}

#[test]
fn javascript_and_python_replays_split_by_aggregate_on_postgres() {
    javascript_and_python_replays_split_by_aggregate(Backend::Postgres);
}

#[test]
fn javascript_and_python_replays_split_by_aggregate_on_mariadb() {
    javascript_and_python_replays_split_by_aggregate(Backend::Mariadb);
}

/// The JavaScript and Python builds of balance v2 declare `partition-by`: `plugin inspect`
/// says so, and `replay start --partitions 3` splits their history by account (each part an
/// instance of its own) and still folds it exactly.
fn javascript_and_python_replays_split_by_aggregate(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config("batch_size = 50\n");
    let mut generator = Generator::new(33);
    let mut history = generator.open_accounts(30);
    history.extend(generator.money(600));
    env.import(&history);
    env.deploy("balance", &g.balance_v1);
    let events = env.stored_events();
    for (key, file) in [("js2", &g.balance_js_v2), ("py2", &g.balance_py_v2)] {
        let inspected = env.ok(&["plugin", "inspect", file]);
        assert!(
            inspected.contains("split:    by aggregate (balances.account_uuid)"),
            "{key}: {inspected}"
        );
        env.create_balance_replay(key, file);
        let out = env.zdr(&["replay", "start", key, "--partitions", "3"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{key}: {stderr}");
        assert!(
            stderr.contains("replaying split by aggregate"),
            "{key} split its replay: {stderr}"
        );
        assert_same_rows(
            &env.balances_v2(&env.clone_table(key, "balances")),
            &fold_v2(&events),
            &format!("{key} split three ways against the reference fold"),
        );
    }
    let rust_v1 = env.ok(&["plugin", "inspect", &g.balance_v1]);
    assert!(
        rust_v1.contains("split:    no (no partition-by"),
        "{rust_v1}"
    );
}
