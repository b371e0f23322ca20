//! Safe promote end to end: `replay diff` names what a wrong version gets wrong, `promote
//! --verify` refuses it, `--force` promotes it anyway and `rollback` brings the former version
//! back with readers querying throughout; `replay run` does the whole rebuild in one command
//! and finishes the job when run again after a kill; a redeploy of other code under a live
//! version string is refused unless allowed.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::json;

use crate::support::{
    Appender, Backend, Env, Generator, NewEvent, PATIENCE, Reader, assert_same_rows, both_backends,
    fold_v1, fold_v2, guests, wait_until,
};

both_backends!(
    a_wrong_version_is_named_by_diff_refused_by_verify_forced_then_rolled_back,
    replay_run_rebuilds_under_a_running_daemon_and_finishes_when_run_again_after_a_kill,
    replay_run_without_a_daemon_stops_at_a_failed_check_and_carries_on_when_run_again,
    other_code_under_the_live_version_is_refused_unless_allowed,
    a_projectors_own_check_runs_read_only_on_the_clone_and_refuses_what_it_finds_wrong,
    a_check_that_traps_refuses_the_promote_and_leaves_live_serving,
);

/// The accounts the tests open.
const ACCOUNTS: usize = 20;

fn a_wrong_version_is_named_by_diff_refused_by_verify_forced_then_rolled_back(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(12);
    env.import(&generator.open_accounts(ACCOUNTS));
    env.import(&generator.money(600));
    env.deploy("balance", &g.balance_v1);
    let mut daemon = env.serve();
    env.wait_live("balance", "1");
    // `balance-off` opens the accounts ending in -00000 with 1 instead of 0.
    let wrong = generator.accounts()[0].clone();
    assert!(wrong.ends_with("-00000"), "test bug: {wrong}");
    env.create_balance_replay("off", &g.balance_off);
    env.ok(&["replay", "start", "off"]);
    env.ok(&["replay", "project", "off"]);
    // Events keep arriving while the daemon writes live and clone together.
    let appender = Appender::start(&env, 77, generator.accounts().to_vec());
    appender.wait_for(30);

    // diff: one account differs, on balance, by one; the new columns are named.
    let out = env.ok(&["replay", "diff", "off"]);
    assert!(
        out.contains(&format!("account_uuid=\"{wrong}\": balance ")),
        "the diff names the wrong account:\n{out}"
    );
    assert!(out.contains("1 differ"), "{out}");
    assert!(
        out.contains("columns only the clone has: transaction_count, last_activity"),
        "{out}"
    );
    assert!(out.contains("the tables differ"), "{out}");
    let diff = env.json(&["replay", "diff", "off", "--json"]);
    let table = &diff[0]["tables"][0];
    assert_eq!(table["table"], "balances", "{diff:#}");
    assert_eq!(table["live_rows"], ACCOUNTS, "{diff:#}");
    assert_eq!(table["replay_rows"], ACCOUNTS, "{diff:#}");
    assert_eq!(table["differing"], 1, "{diff:#}");
    assert_eq!(table["only_in_live"], 0, "{diff:#}");
    assert_eq!(table["key"], json!(["account_uuid"]), "{diff:#}");
    assert_eq!(
        table["only_replay_columns"],
        json!(["transaction_count", "last_activity"]),
        "{diff:#}"
    );
    let sample = &table["samples"][0];
    assert_eq!(sample["kind"], "differs", "{diff:#}");
    assert_eq!(sample["key"], json!([["account_uuid", wrong]]), "{diff:#}");
    let column = &sample["columns"][0];
    assert_eq!(column["column"], "balance", "{diff:#}");
    let live_balance = column["live"].as_i64().expect("an integer balance");
    assert_eq!(column["replay"], live_balance + 1, "{diff:#}");
    // A filter on a column that is the same everywhere finds nothing.
    let out = env.ok(&["replay", "diff", "off", "--table", "balances:name"]);
    assert!(out.contains("same rows on every compared column"), "{out}");
    let err = env.fail(&["replay", "diff", "off", "--table", "balances:nope"]);
    assert!(err.contains("no column \"nope\""), "{err}");

    // verify: the expected-same check fails and names the account; nothing is promoted.
    let err = env.fail(&[
        "replay",
        "promote",
        "off",
        "--verify",
        "--expect-same",
        "balances:balance",
    ]);
    assert!(
        err.contains("FAILED: --expect-same balances:balance"),
        "{err}"
    );
    assert!(
        err.contains(&wrong),
        "the refusal shows the diff sample:\n{err}"
    );
    assert!(
        err.contains("--force"),
        "the refusal says what to do:\n{err}"
    );
    // An operator's query, through the projector's guard, tells the same.
    let err = env.fail(&[
        "replay",
        "promote",
        "off",
        "--check",
        "SELECT count(*), sum(balance) FROM balances",
    ]);
    assert!(
        err.contains("FAILED: --check \"SELECT count(*), sum(balance) FROM balances\""),
        "{err}"
    );
    // ... and a query the guard refuses is an error, not a pass.
    let err = env.fail(&[
        "replay",
        "promote",
        "off",
        "--check",
        "SELECT count(*) FROM zdr_targets",
    ]);
    assert!(err.contains("can run the check"), "{err}");
    assert_eq!(env.show("off")["state"], "projecting");
    assert_eq!(env.projector("balance")["version"], "1");

    // Readers of the live table, from here through the forced promote and the rollback.
    let reader = Reader::start(&env, "SELECT count(*), sum(balance) FROM balances");
    let out = env.ok(&[
        "replay",
        "promote",
        "off",
        "--expect-same",
        "balances:name",
        "--expect-same",
        "balances:balance",
        "--force",
    ]);
    assert!(out.contains("passed: --expect-same balances:name"), "{out}");
    assert!(
        out.contains("FAILED: --expect-same balances:balance"),
        "{out}"
    );
    assert!(
        out.contains("passed: the check exported by balance version 3"),
        "every account has a name, so version 3's own check passes:\n{out}"
    );
    assert!(out.contains("promoted balance version 3"), "{out}");
    env.wait_live("balance", "3");
    // Events projected by version 3 only: the former tables must catch up on them.
    appender.wait_for(60);
    let out = env.ok(&["replay", "diff", "off"]);
    assert!(
        out.contains("balance: live version 3") && out.contains("former live tables version 1"),
        "after a promote the diff compares the former live tables:\n{out}"
    );

    let out = env.ok(&["replay", "rollback", "off"]);
    assert!(
        out.contains("rolled back balance: version 1 is live again"),
        "{out}"
    );
    env.wait_live("balance", "1");
    appender.wait_for(60);
    let reads = reader.stop();
    appender.stop();
    env.wait_live("balance", "1");

    assert!(reads.len() > 20, "only {} reads", reads.len());
    for (i, read) in reads.iter().enumerate() {
        let rows = read
            .as_ref()
            .unwrap_or_else(|err| panic!("read {i} of the live table failed: {err}"));
        assert_eq!(
            rows[0][0],
            ACCOUNTS.to_string(),
            "read {i} saw a missing or partial table: {rows:?}"
        );
    }
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live after the rollback: version 1's fold of every event, those under version 3 too",
    );
    let show = env.show("off");
    assert_eq!(show["state"], "rolled-back", "{show:#}");
    assert_eq!(show["projectors"][0]["version"], "3", "{show:#}");
    assert_eq!(show["projectors"][0]["role"], "retired", "{show:#}");
    let list = env.ok(&["replay", "list"]);
    assert!(list.contains("rolled-back"), "{list}");
    let text = env.ok(&["replay", "show", "off"]);
    assert!(text.contains("replay off: rolled-back"), "{text}");

    let err = env.fail(&["replay", "rollback", "off"]);
    assert!(err.contains("already rolled back"), "{err}");
    let err = env.fail(&["replay", "promote", "off"]);
    assert!(err.contains("replay off"), "{err}");
    env.ok(&["replay", "remove", "off"]);
    let err = env.fail(&["replay", "rollback", "off"]);
    assert!(
        err.contains("no replay named \"off\"") && err.contains("zdr replay list"),
        "{err}"
    );
    let log = daemon.log();
    assert!(log.contains("hot swap"), "{log}");
    daemon.assert_running();
    daemon.stop();
}

fn replay_run_rebuilds_under_a_running_daemon_and_finishes_when_run_again_after_a_kill(
    backend: Backend,
) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(13);
    env.import(&generator.open_accounts(ACCOUNTS));
    env.import(&generator.money(5_000));
    env.deploy("balance", &g.balance_v1);
    let mut daemon = env.serve();
    let appender = Appender::start(&env, 78, generator.accounts().to_vec());
    let projector = format!("balance={}", g.balance_v2);
    let args = [
        "replay",
        "run",
        "v2",
        "--projector",
        &projector,
        "--promote",
        "--verify",
        "--expect-same",
        "balances:name,balance",
    ];

    // Killed as soon as it has created the replay: mid-way through replaying history.
    let mut run = env
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot spawn zdr replay run");
    let stdout = run.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("replay run printed nothing")
        .expect("stdout is UTF-8");
    assert!(first.contains("created replay v2"), "{first}");
    run.kill().expect("cannot kill replay run");
    run.wait().expect("cannot reap replay run");
    let state = env.show("v2")["state"].clone();
    assert!(
        state == "created" || state == "started" || state == "projecting",
        "killed mid-way, the replay is {state}"
    );

    // The same command again finishes the job.
    let out = env.ok(&args);
    assert!(
        out.contains("replay v2 exists") && out.contains("carrying on"),
        "{out}"
    );
    assert!(
        out.contains("passed: --expect-same balances:name,balance"),
        "{out}"
    );
    assert!(out.contains("promoted balance version 2"), "{out}");
    assert!(out.contains("replay v2: done"), "{out}");
    env.wait_live("balance", "2");
    appender.wait_for(30);
    appender.stop();
    env.wait_live("balance", "2");
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&env.stored_events()),
        "live after replay run",
    );
    // Once more: nothing left to do.
    let out = env.ok(&args);
    assert!(out.contains("exists (promoted)"), "{out}");
    // Another component under the same key is refused.
    let other = format!("balance={}", g.balance_off);
    let err = env.fail(&["replay", "run", "v2", "--projector", &other]);
    assert!(
        err.contains("already exists with other components"),
        "{err}"
    );
    wait_until(PATIENCE, "the hot swap in the log", || {
        daemon.log().contains("hot swap")
    });
    daemon.assert_running();
    daemon.stop();
}

fn replay_run_without_a_daemon_stops_at_a_failed_check_and_carries_on_when_run_again(
    backend: Backend,
) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(14);
    env.import(&generator.open_accounts(ACCOUNTS));
    env.import(&generator.money(300));
    env.deploy("balance", &g.balance_v1);
    let projector = format!("balance={}", g.balance_off);
    let run = |extra: &[&'static str]| -> Vec<String> {
        ["replay", "run", "off", "--projector", projector.as_str()]
            .iter()
            .chain(extra)
            .map(ToString::to_string)
            .collect()
    };
    let err = env.fail(&strs(&run(&["--verify"])));
    assert!(err.contains("add --promote"), "{err}");

    let err = env.fail(&strs(&run(&[
        "--promote",
        "--expect-same",
        "balances:balance",
    ])));
    assert!(
        err.contains("replay run off stopped while promoting; the replay is left projecting"),
        "{err}"
    );
    assert!(err.contains("run the same command again"), "{err}");
    assert!(
        err.contains("FAILED: --expect-same balances:balance"),
        "{err}"
    );
    assert_eq!(env.projector("balance")["version"], "1");

    // Events arrive with no daemon running; the rerun promotes (forced) and the daemon,
    // started afterwards, carries version 3 on from the promoted checkpoint.
    env.import(&generator.money(50));
    let out = env.ok(&strs(&run(&[
        "--promote",
        "--expect-same",
        "balances:balance",
        "--force",
    ])));
    assert!(out.contains("exists (projecting)"), "{out}");
    assert!(out.contains("promoted balance version 3"), "{out}");
    let daemon = env.serve();
    env.wait_live("balance", "3");
    let expected: Vec<Vec<String>> = fold_v2(&env.stored_events())
        .into_iter()
        .map(|mut row| {
            if row[0].ends_with("-00000") {
                let balance: i64 = row[2].parse().expect("an integer balance");
                row[2] = (balance + 1).to_string();
            }
            row
        })
        .collect();
    assert_same_rows(
        &env.balances_v2("balances"),
        &expected,
        "version 3's fold, one account off by one",
    );
    daemon.stop();
}

fn other_code_under_the_live_version_is_refused_unless_allowed(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(15);
    env.import(&generator.open_accounts(5));
    env.import(&generator.money(40));
    env.deploy("balance", &g.balance_v1);
    let rust_hash = env.projector("balance")["content_hash"]
        .as_str()
        .expect("projector list --json has content_hash")
        .to_string();
    assert_eq!(rust_hash.len(), 64, "{rust_hash}");
    let list = env.ok(&["projector", "list"]);
    assert!(
        list.contains("CODE") && list.contains(&rust_hash[..12]),
        "projector list shows the content hash:\n{list}"
    );

    // The same component again: nothing to do.
    let out = env.ok(&["projector", "deploy", "balance", &g.balance_v1]);
    assert!(out.contains("already live; nothing to do"), "{out}");
    // The JavaScript build of version 1: same name and version, other code.
    let err = env.fail(&["projector", "deploy", "balance", &g.balance_js_v1]);
    assert!(
        err.contains("balance version 1 is live with other code")
            && err.contains(&rust_hash[..12])
            && err.contains("--allow-same-version"),
        "{err}"
    );
    assert_eq!(env.projector("balance")["content_hash"], rust_hash.as_str());

    let out = env.ok(&[
        "projector",
        "deploy",
        "balance",
        &g.balance_js_v1,
        "--allow-same-version",
    ]);
    assert!(
        out.contains("replaced the code of balance version 1")
            && out.contains("with zero downtime (replay upgrade_"),
        "{out}"
    );
    let js_hash = env.projector("balance")["content_hash"].clone();
    assert_ne!(js_hash, rust_hash.as_str());
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live after the same-version replacement",
    );
}

/// Borrows owned arguments for `Env::ok` and `Env::fail`.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn a_projectors_own_check_runs_read_only_on_the_clone_and_refuses_what_it_finds_wrong(
    backend: Backend,
) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(21);
    env.import(&generator.open_accounts(4));
    // An account opened without a holder's name: both versions store it, and version 3's own
    // check (`balance-off` exports one) refuses a read model that holds it.
    env.import(&[NewEvent::new(
        "AccountOpened",
        Some("acct-nameless"),
        json!({ "name": "" }),
    )]);
    env.import(&generator.money(40));
    env.deploy("balance", &g.balance_v1);
    env.create_balance_replay("own", &g.balance_off);
    env.ok(&["replay", "start", "own"]);
    env.ok(&["replay", "project", "own"]);

    // The operator's check passes (the names are the same on both sides); the projector's
    // fails, says why, and the promote is refused.
    let err = env.fail(&["replay", "promote", "own", "--expect-same", "balances:name"]);
    assert!(err.contains("passed: --expect-same balances:name"), "{err}");
    assert!(
        err.contains("FAILED: the check exported by balance version 3"),
        "{err}"
    );
    assert!(
        err.contains("accounts without a holder's name: acct-nameless"),
        "the refusal carries what the check found:\n{err}"
    );
    // The check tries a write first and fails differently when the host does not deny it.
    assert!(
        !err.contains("let check write") && !err.contains("not denied"),
        "a check may only read:\n{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(env.show("own")["state"], "projecting");
    assert_eq!(env.projector("balance")["version"], "1");

    // With --force the failed check is shown and the promote goes through.
    let out = env.ok(&[
        "replay",
        "promote",
        "own",
        "--expect-same",
        "balances:name",
        "--force",
    ]);
    assert!(
        out.contains("FAILED: the check exported by balance version 3"),
        "{out}"
    );
    assert!(out.contains("promoted balance version 3"), "{out}");
    assert_eq!(env.projector("balance")["version"], "3");
}

/// A projector's check that crashes (a trap) is a failed check, never a crash of zdr: the
/// promote is refused with the trap named, live keeps its version and goes on serving, and
/// with --force the promote still goes through on a fresh instance.
fn a_check_that_traps_refuses_the_promote_and_leaves_live_serving(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(22);
    env.import(&generator.open_accounts(4));
    // `balance-off`'s check traps when this nameless account is in the read model.
    env.import(&[NewEvent::new(
        "AccountOpened",
        Some("acct-trap"),
        json!({ "name": "" }),
    )]);
    env.import(&generator.money(40));
    env.deploy("balance", &g.balance_v1);
    let daemon = env.serve();
    env.wait_live("balance", "1");
    env.create_balance_replay("trap", &g.balance_off);
    env.ok(&["replay", "start", "trap"]);
    env.ok(&["replay", "project", "trap"]);

    // The operator's check passes, so the refusal is the trapped check's alone.
    let err = env.fail(&[
        "replay",
        "promote",
        "trap",
        "--expect-same",
        "balances:name",
    ]);
    assert!(err.contains("passed: --expect-same balances:name"), "{err}");
    assert!(
        err.contains("FAILED: the check exported by balance version 3"),
        "{err}"
    );
    assert!(
        err.contains("the check could not run: the projector trapped"),
        "the refusal says the check trapped:\n{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(env.show("trap")["state"], "projecting");
    assert_eq!(env.projector("balance")["version"], "1");

    // Live keeps serving after the trap, and the clone keeps up with it.
    env.import(&generator.money(20));
    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live after a trapped check",
    );

    let out = env.ok(&[
        "replay",
        "promote",
        "trap",
        "--expect-same",
        "balances:name",
        "--force",
    ]);
    assert!(out.contains("promoted balance version 3"), "{out}");
    assert_eq!(env.projector("balance")["version"], "3");
    daemon.stop();
}
