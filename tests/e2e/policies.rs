//! Failure policies of live projectors (`on_failure` in `zdr.toml`): with `park` a poison
//! event is set aside in the dead-letter table and live goes on, `projector retry` applies it
//! once its cause is fixed, a replay still fails at it, and a promote is refused while the
//! version it replaces has parked events; with `retry` a deadlock on PostgreSQL is retried
//! instead of stopping the projector.

use serde_json::json;

use crate::support::{
    Backend, Env, Generator, NewEvent, PATIENCE, assert_same_rows, both_backends, fold_v1, guests,
    wait_until,
};

both_backends!(
    a_parked_poison_event_lets_live_go_on_and_retry_applies_it_after_the_fix,
    a_promote_is_refused_while_the_replaced_version_has_parked_events,
);

/// The account the poison event names before anyone opened it.
const GHOST: &str = "acct-ghost";

fn a_parked_poison_event_lets_live_go_on_and_retry_applies_it_after_the_fix(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config("[projectors.balance]\non_failure = \"park\"\n");
    let mut generator = Generator::new(21);
    env.import(&generator.open_accounts(5));
    env.import(&generator.money(50));
    env.deploy("balance", &g.balance_v1);
    let mut daemon = env.serve();
    env.wait_live("balance", "1");

    // Money for an account nobody opened yet: version 1 fails on it.
    let poison = env.append(&NewEvent::new(
        "MoneyAdded",
        Some(GHOST),
        json!({ "amount": 7 }),
    ));
    env.import(&generator.money(20));
    env.wait_live("balance", "1");
    let live = env.projector("balance");
    assert_eq!(live["parked"], 1, "{live:#}");
    assert!(live["failure"].is_null(), "live did not stop: {live:#}");
    let list = env.ok(&["projector", "list"]);
    assert!(list.contains("running; 1 parked"), "{list}");
    let parked = env.json(&["projector", "parked", "balance", "--json"]);
    assert_eq!(parked[0]["event_id"], poison, "{parked:#}");
    assert_eq!(parked[0]["attempts"], 1, "{parked:#}");
    assert!(
        parked[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(GHOST)),
        "{parked:#}"
    );
    let text = env.ok(&["projector", "parked", "balance"]);
    assert!(text.contains("zdr projector retry balance"), "{text}");
    let without_poison: Vec<_> = env
        .stored_events()
        .into_iter()
        .filter(|e| e.id != poison)
        .collect();
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&without_poison),
        "live applied every event but the parked one",
    );
    assert!(
        daemon.log().contains("parking the event"),
        "{}",
        daemon.log()
    );

    // A replay never parks: it fails at the event, as it always did.
    env.create_balance_replay("r", &g.balance_v2);
    let err = env.fail(&["replay", "start", "r"]);
    assert!(err.contains(&format!("event {poison}")), "{err}");
    assert_eq!(env.show("r")["state"], "failed");
    env.ok(&["replay", "remove", "r"]);
    // An upgrade by deploy would replace the version that parked it: refused up front, with
    // the way forward (deploy has no --force of its own).
    let err = env.fail(&["projector", "deploy", "balance", &g.balance_v2]);
    assert!(
        err.contains("1 parked event(s)")
            && err.contains("zdr projector parked balance")
            && err.contains("replay run")
            && !err.contains("aborted"),
        "{err}"
    );
    assert_eq!(env.projector("balance")["version"], "1");
    assert!(
        env.ok(&["replay", "list"])
            .lines()
            .all(|l| !l.contains("upgrade_"))
    );

    // Retried before the fix: it fails again and stays parked, one more attempt counted.
    let err = env.fail(&["projector", "retry", "balance"]);
    assert!(err.contains("1 of 1 parked event(s) failed again"), "{err}");
    let parked = env.json(&["projector", "parked", "balance", "--json"]);
    assert_eq!(parked[0]["attempts"], 2, "{parked:#}");

    // The fix: the account is opened. The retry applies the parked event, out of order.
    let opened = env.append(&NewEvent::new(
        "AccountOpened",
        Some(GHOST),
        json!({ "name": "Late" }),
    ));
    env.wait_live("balance", "1");
    let out = env.ok(&["projector", "retry", "balance"]);
    assert!(
        out.contains(&format!("applied parked event {poison} of balance")),
        "{out}"
    );
    let out = env.ok(&["projector", "parked", "balance"]);
    assert!(out.contains("balance has no parked events"), "{out}");
    env.import(&generator.money(10));
    env.wait_live("balance", "1");
    // The reference: the parked event applied right after the account's opening.
    let mut events = env.stored_events();
    let at = events
        .iter()
        .position(|e| e.id == poison)
        .expect("the poison event is stored");
    let moved = events.remove(at);
    let after = events
        .iter()
        .position(|e| e.id == opened)
        .expect("the opening is stored");
    events.insert(after + 1, moved);
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "live after the retry",
    );
    assert_eq!(env.projector("balance")["parked"], 0);
    let err = env.fail(&["projector", "retry", "balance"]);
    assert!(err.contains("no parked events"), "{err}");
    daemon.assert_running();
    daemon.stop();
}

fn a_promote_is_refused_while_the_replaced_version_has_parked_events(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config("on_failure = \"park\"\n");
    let tick = || NewEvent::new("Tick", Some("t"), json!({}));
    env.import(&[tick(), tick()]);
    env.deploy("faulty", &g.faulty);
    let daemon = env.serve();
    let parked_id = env.append(&NewEvent::new("FailWhenLive", Some("t"), json!({})));
    env.import(&[tick(), tick()]);
    env.wait_live("faulty", "1");
    assert_eq!(env.projector("faulty")["parked"], 1);
    let ids = env.ids("SELECT event_id FROM seen ORDER BY event_id");
    assert!(!ids.contains(&parked_id), "{ids:?}");
    assert_eq!(ids.len(), 4, "live applied every other event: {ids:?}");

    // The clone replays past it (the event fails only live) and dual-writes with live.
    let projector = format!("faulty={}", g.faulty);
    env.ok(&["replay", "create", "f", "--projector", &projector]);
    env.ok(&["replay", "start", "f"]);
    env.ok(&["replay", "project", "f"]);
    let err = env.fail(&["replay", "promote", "f"]);
    assert!(
        err.contains("projector faulty has 1 parked event(s)")
            && err.contains("zdr projector parked faulty")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(env.show("f")["state"], "projecting");
    env.ok(&["replay", "promote", "f", "--force"]);
    wait_until(PATIENCE, "the promoted clone serving", || {
        env.projector("faulty")["checkpoint"] == env.head()
    });
    let live = env.projector("faulty");
    assert_eq!(live["parked"], 0, "{live:#}");
    assert_eq!(
        env.ids("SELECT event_id FROM seen ORDER BY event_id"),
        env.ids("SELECT id FROM stored_events ORDER BY id"),
        "the promoted clone applied every event, the once-parked one too"
    );
    daemon.stop();
}

/// On PostgreSQL, a deadlock between live's batch and another session aborts the batch with
/// SQLSTATE 40P01. Under `on_failure = "retry"` the daemon tries the batch again (the other
/// session has its locks by then) instead of stopping the projector.
#[test]
fn a_deadlocked_batch_is_retried_under_the_retry_policy() {
    let g = guests();
    let env = Env::new(Backend::Postgres);
    env.write_config("[projectors.balance]\non_failure = \"retry\"\nretry_attempts = 4\n");
    let mut generator = Generator::new(22);
    env.import(&generator.open_accounts(3));
    env.deploy("balance", &g.balance_v1);
    let mut daemon = env.serve();
    env.wait_live("balance", "1");
    let (a, b) = (
        generator.accounts()[0].clone(),
        generator.accounts()[1].clone(),
    );

    // Another session locks B's row; its own deadlock checks wait long, so that the daemon's
    // session is the one that finds the deadlock.
    let mut other = env.postgres();
    other
        .batch_execute(&format!(
            "SET deadlock_timeout = '20s'; BEGIN; \
             UPDATE balances SET balance = balance WHERE account_uuid = '{b}'"
        ))
        .expect("locking B's row");
    // One transaction, so one batch: live updates A's row, then waits for B's.
    env.import(&[
        NewEvent::new("MoneyAdded", Some(&a), json!({ "amount": 5 })),
        NewEvent::new("MoneyAdded", Some(&b), json!({ "amount": 6 })),
    ]);
    let mut watcher = env.postgres();
    wait_until(PATIENCE, "live's batch waiting for B's row", || {
        let waiting = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .expect("reading pg_stat_activity");
        waiting.get::<_, i64>(0) > 0
    });
    // Now the other session wants A's row: a deadlock, which the daemon's session detects.
    other
        .batch_execute(&format!(
            "UPDATE balances SET balance = balance WHERE account_uuid = '{a}'"
        ))
        .expect("the other session gets A's row once the daemon's batch is aborted");
    other.batch_execute("ROLLBACK").expect("rolling back");

    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live after the retried batch",
    );
    let live = env.projector("balance");
    assert!(live["failure"].is_null(), "{live:#}");
    let log = daemon.log();
    assert!(
        log.contains("attempt 1 of 4 failed, retrying") && log.contains("40P01"),
        "{log}"
    );
    daemon.assert_running();
    daemon.stop();
}
