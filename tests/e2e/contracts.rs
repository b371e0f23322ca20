//! The versions of the WIT contract side by side: a component built against
//! `zdr:projector@0.1.0` (the test guest `balance-wit-0-1`, built from the frozen copy of that
//! WIT in `wit/0.1.0/`) deploys, replays and serves beside the bundled 0.2.0 ones, in both
//! directions of a replay; and a 0.2.0 component that fails inside a run of events given in
//! one `handle-events` call is stopped at exactly the event that fails, with nothing of its
//! batch left behind.

use serde_json::json;

use crate::support::{
    Backend, Env, Generator, NewEvent, assert_same_rows, both_backends, fold_v1, fold_v2, guests,
};

both_backends!(
    a_component_built_against_0_1_deploys_replays_and_serves_beside_a_0_2_one,
    a_fault_inside_a_run_of_events_is_named_exactly_and_nothing_of_its_batch_stays,
);

/// `plugin inspect` says which contract each component targets.
#[test]
fn inspect_names_the_contract_a_component_targets() {
    let g = guests();
    let env = Env::new(Backend::Sqlite);
    for (file, contract) in [
        (&g.balance_wit_0_1, "zdr:projector@0.1.0"),
        (&g.balance_v2, "zdr:projector@0.2.0"),
        (&g.balance_js_v2, "zdr:projector@0.2.0"),
        (&g.balance_py_v2, "zdr:projector@0.2.0"),
    ] {
        let inspection = env.json(&["plugin", "inspect", file, "--json"]);
        assert_eq!(inspection["contract"], contract, "{file}: {inspection:#}");
        assert_eq!(inspection["matches_world"], true, "{file}: {inspection:#}");
        let out = env.ok(&["plugin", "inspect", file]);
        assert!(out.contains(&format!("contract: {contract}")), "{out}");
    }
}

fn a_component_built_against_0_1_deploys_replays_and_serves_beside_a_0_2_one(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(61);
    env.import(&generator.open_accounts(25));
    env.import(&generator.money(1_500));

    // Deploy the 0.1.0 component: one `handle-event` call per event.
    env.deploy("balance", &g.balance_wit_0_1);
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live after deploying the 0.1.0 component",
    );
    let mut daemon = env.serve();
    env.import(&generator.money(100));
    env.wait_live("balance", "1");

    // Replay into the 0.2.0 component while the 0.1.0 one serves; the daemon then writes every
    // new event to both, each through its own contract.
    env.create_balance_replay("to_v2", &g.balance_v2);
    env.ok(&["replay", "start", "to_v2"]);
    env.ok(&["replay", "project", "to_v2"]);
    env.import(&generator.money(300));
    env.wait_live("balance", "1");
    env.wait_replay_caught_up("to_v2");
    let events = env.stored_events();
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "the 0.1.0 component live while the 0.2.0 one projects beside it",
    );
    assert_same_rows(
        &env.balances_v2(&env.clone_table("to_v2", "balances")),
        &fold_v2(&events),
        "the 0.2.0 clone beside the 0.1.0 live one",
    );
    env.ok(&["replay", "promote", "to_v2"]);
    env.import(&generator.money(100));
    env.wait_live("balance", "2");
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&env.stored_events()),
        "the 0.2.0 component live after the hot swap",
    );

    // And back: a replay rebuilds history through the 0.1.0 component and promotes it.
    env.create_balance_replay("back", &g.balance_wit_0_1);
    env.ok(&["replay", "start", "back"]);
    env.ok(&["replay", "project", "back"]);
    env.import(&generator.money(200));
    env.wait_replay_caught_up("back");
    env.ok(&["replay", "promote", "back"]);
    env.import(&generator.money(100));
    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "the 0.1.0 component live again after a replay back to it",
    );
    daemon.assert_running();
    let log = daemon.stop();
    assert!(
        log.contains("hot swap: now serving version 2")
            && log.contains("hot swap: now serving version 1"),
        "the daemon swapped between the two contracts in place:\n{log}"
    );
}

/// Events before, at and after a fault, many more than one `handle-events` call takes, so the
/// fault sits inside a run: `Tick`s (which `faulty` only records) around one `fault`.
fn ticks_with(fault: &str, fault_at: usize, total: usize) -> Vec<NewEvent> {
    (1..=total)
        .map(|n| {
            let class = if n == fault_at { fault } else { "Tick" };
            NewEvent::new(class, Some("t"), json!({}))
        })
        .collect()
}

fn a_fault_inside_a_run_of_events_is_named_exactly_and_nothing_of_its_batch_stays(
    backend: Backend,
) {
    let g = guests();
    // `Swallow` and `SendDuplicate` fail only where a failed statement fails the event
    // whatever the guest answers (PostgreSQL and MariaDB; on SQLite it fails alone). On
    // PostgreSQL the sent duplicate fails only when the host runs it, at the end of the call.
    let faults: &[&str] = match backend {
        Backend::Postgres | Backend::Mariadb => &[
            "Fail",
            "Trap",
            "Panic",
            "Alloc",
            "Loop",
            "Swallow",
            "SendDuplicate",
        ],
        Backend::Sqlite => &["Fail", "Trap", "Panic", "Alloc", "Loop"],
    };
    for fault in faults {
        let env = Env::new(backend);
        // Batches of 1,000, so the fault's batch starts well before it: one run of events
        // ends at 256 and the fault is inside the next one.
        env.write_config("[projectors.faulty]\ncall_timeout_ms = 500\nmemory_mib = 64\n");
        env.import(&ticks_with("Tick", 0, 20));
        env.deploy("faulty", &g.faulty);
        let fault_id = env.head() + 300;
        env.import(&ticks_with(fault, 300, 700));
        env.ok(&[
            "replay",
            "create",
            "r",
            "--projector",
            &format!("faulty={}", g.faulty),
        ]);
        let err = env.fail(&["replay", "start", "r"]);
        assert!(
            err.contains(&format!("event {fault_id}")),
            "{fault}: the failure names the event inside the run: {err}"
        );
        let show = env.show("r");
        assert_eq!(show["state"], "failed", "{fault}: {show:#}");
        let target = &show["projectors"][0];
        let checkpoint = target["checkpoint"].as_i64().expect("a checkpoint");
        assert!(checkpoint < fault_id, "{fault}: {show:#}");
        // Nothing of the failed batch stayed in the clone: it holds exactly the events up to
        // its checkpoint, each once.
        let clone = env.clone_table("r", "seen");
        assert_eq!(
            env.ids(&format!("SELECT event_id FROM {clone} ORDER BY event_id")),
            (1..=checkpoint).collect::<Vec<_>>(),
            "{fault}: the clone disagrees with its checkpoint"
        );
        let failure = env.scalar(&format!(
            "SELECT COUNT(*) FROM zdr_failures WHERE projector = 'faulty' AND event_id = {fault_id}"
        ));
        assert_eq!(failure, 1, "{fault}: the failure is recorded on the event");
    }
}

/// A 0.2.0 component whose run fails only because the run as a whole outlasts the call's
/// deadline is not stopped: the host gives the same events one at a time, and each fits.
#[test]
fn a_run_that_outlasts_its_deadline_is_given_again_one_event_at_a_time() {
    let g = guests();
    let env = Env::new(Backend::Sqlite);
    // `Slow` events spin 50 ms each (by the monotonic clock): a run of 40 outlasts the 400 ms
    // deadline whatever the machine, and one alone fits in it.
    env.write_config("[projectors.faulty]\ncall_timeout_ms = 400\n");
    env.deploy("faulty", &g.faulty);
    env.import(&ticks_with("Tick", 0, 5));
    env.import(
        &(0..40)
            .map(|_| NewEvent::new("Slow", Some("t"), json!({})))
            .collect::<Vec<_>>(),
    );
    env.ok(&[
        "replay",
        "create",
        "r",
        "--projector",
        &format!("faulty={}", g.faulty),
    ]);
    let out = env.ok(&["replay", "start", "r"]);
    assert!(out.contains("applied 45 event(s)"), "{out}");
    let clone = env.clone_table("r", "seen");
    assert_eq!(
        env.ids(&format!("SELECT event_id FROM {clone} ORDER BY event_id")),
        (1..=45).collect::<Vec<_>>(),
        "every event applied once, one at a time"
    );
    assert_eq!(env.show("r")["state"], "started");
}

/// A catch-up inside a caller's transaction (the last gap of a switch, under the writer lock)
/// cannot run its batch again, so a failed run there is rolled back to a savepoint and given
/// again one event per call: a fault is named exactly and nothing of its run stays, and a run
/// that failed only as a whole (past its deadline) is applied one event at a time.
#[test]
fn a_failed_run_inside_a_callers_transaction_is_undone_to_its_savepoint() {
    use std::collections::HashMap;
    use zdr::backend::Db;
    use zdr::lifecycle;
    use zdr::projection::{Projection, ProjectionError};
    use zdr::runtime::{Limits, Runtime};

    let limits = Limits {
        call_timeout: std::time::Duration::from_millis(400),
        ..Limits::default()
    };
    let runtime = Runtime::new(
        Limits::default(),
        HashMap::from([("faulty".to_string(), limits)]),
        Some(crate::support::compile_cache_dir()),
    )
    .expect("a wasmtime runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = Db::create(&format!("sqlite://{}", dir.path().join("zdr.db").display()))
        .expect("a SQLite database");
    db.init().expect("init");
    let path = &guests().faulty;
    let spec = lifecycle::ComponentSpec {
        name: "faulty".into(),
        source: path.clone(),
        wasm: std::fs::read(path).expect("the faulty component"),
    };
    let options = lifecycle::DeployOptions {
        batch_size: 1000,
        allow_same_version: false,
        partitions: 1,
    };
    lifecycle::deploy(&runtime, &db, &spec, &options, &mut |_, _| {}).expect("deploy");
    let event = |class: &str| zdr::events::NewEvent::new(class, None, "{}", "{}").expect("event");
    let seen = |db: &Db| -> Vec<String> {
        db.read_rows("SELECT event_id FROM seen ORDER BY event_id")
            .expect("seen")
            .rows
            .into_iter()
            .map(|row| format!("{:?}", row[0]))
            .collect()
    };

    // 40 `Slow` events (50 ms each) in one run outlast its 400 ms deadline; one at a time
    // each fits.
    db.append_events(&(0..40).map(|_| event("Slow")).collect::<Vec<_>>())
        .expect("append");
    let mut projection = Projection::new(&runtime, &db, 1000);
    let live = db.live_target("faulty").expect("read").expect("live");
    projection
        .prepare(std::slice::from_ref(&live))
        .expect("prepare");
    let checkpoint = db
        .write(|db| projection.apply_up_to(&live, db.head()?))
        .expect("the slow run applied one event at a time");
    assert_eq!(checkpoint, 40);
    assert_eq!(seen(&db).len(), 40, "every event once: {:?}", seen(&db));

    // A fault inside a run of 300: named exactly, and the transaction the caller rolls back
    // holds nothing of the run.
    let mut events: Vec<_> = (0..300).map(|_| event("Tick")).collect();
    events[199] = event("Fail");
    db.append_events(&events).expect("append");
    let live = db.live_target("faulty").expect("read").expect("live");
    let failed = db.write(|db| projection.apply_up_to(&live, db.head()?));
    match failed {
        Err(ProjectionError::Guest { event_id, .. }) => assert_eq!(event_id, 240),
        other => panic!("expected the Fail event named: {other:?}"),
    }
    assert_eq!(seen(&db).len(), 40, "nothing of the failed batch stayed");
}
