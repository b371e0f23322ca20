//! Wrong-state commands and bad input: each fails with a clear message and changes nothing.

use std::io::BufRead;
use std::io::BufReader;
use std::process::Stdio;

use serde_json::json;

use crate::support::{
    Backend, Env, Generator, PATIENCE, assert_same_rows, both_backends, fold_v1, fold_v2, guests,
    signal, wait_child,
};

both_backends!(
    promote_before_project_is_refused_in_every_earlier_state_and_changes_nothing,
    a_second_start_while_one_runs_is_refused_and_the_first_finishes_correctly,
    creating_an_existing_key_is_refused_and_keeps_the_replay,
    the_reserved_key_live_and_malformed_keys_are_refused,
    unknown_keys_and_projectors_get_a_clear_error,
    commands_that_do_not_fit_the_state_are_refused_and_change_nothing,
    malformed_events_and_invalid_components_are_refused_and_lose_nothing,
    commands_on_an_uninitialised_database_say_to_run_init,
    bad_invocations_get_an_error_message_never_a_panic,
    a_database_written_by_a_newer_zdr_is_refused_and_left_alone,
);

/// An env with `balance` v1 live over a small history and replay `v2` created.
fn with_replay(backend: Backend) -> (Env, Generator) {
    let g = guests();
    let env = Env::new(backend);
    let mut generator = Generator::new(9);
    env.import(&generator.open_accounts(10));
    env.import(&generator.money(300));
    env.deploy("balance", &g.balance_v1);
    env.create_balance_replay("v2", &g.balance_v2);
    (env, generator)
}

/// Everything a failed command must leave as it was.
fn snapshot(
    env: &Env,
) -> (
    serde_json::Value,
    serde_json::Value,
    Vec<String>,
    Vec<Vec<String>>,
) {
    (
        env.json(&["replay", "list", "--json"]),
        env.json(&["projector", "list", "--json"]),
        env.schema_objects(),
        env.balances_v1("balances"),
    )
}

fn promote_before_project_is_refused_in_every_earlier_state_and_changes_nothing(backend: Backend) {
    let (env, _) = with_replay(backend);
    for (state, prepare) in [("created", None), ("started", Some("start"))] {
        if let Some(command) = prepare {
            env.ok(&["replay", command, "v2"]);
        }
        assert_eq!(env.show("v2")["state"], state);
        let before = snapshot(&env);
        let err = env.fail(&["replay", "promote", "v2"]);
        assert!(
            err.contains("not projecting") && err.contains("replay project v2"),
            "{state}: {err}"
        );
        assert_eq!(
            snapshot(&env),
            before,
            "a refused promote in state {state} changed something"
        );
    }
    // And after all, the normal path still works.
    env.ok(&["replay", "project", "v2"]);
    env.ok(&["replay", "promote", "v2"]);
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&env.stored_events()),
        "live after the promote",
    );
}

fn a_second_start_while_one_runs_is_refused_and_the_first_finishes_correctly(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    // Small batches, each reported on its own progress line.
    env.write_config("batch_size = 10\n");
    env.deploy("balance", &g.balance_v1);
    let mut generator = Generator::new(10);
    let mut history = generator.open_accounts(20);
    history.extend(generator.money(3_000));
    env.import(&history);
    let head = env.head();
    env.create_balance_replay("v2", &g.balance_v2);

    // The first start is stopped (SIGSTOP) at its first progress line, holding its run lock in
    // the middle of the history, so the race below happens however fast the machine is.
    let mut first = env
        .command(&["replay", "start", "v2"])
        .env("ZDR_PROGRESS_INTERVAL_MS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot spawn replay start");
    let mut progress = BufReader::new(first.stderr.take().expect("a piped stderr"));
    let mut line = String::new();
    let read = progress.read_line(&mut line).expect("reading the progress");
    assert!(
        read > 0,
        "the first start ended before its first progress line"
    );
    let paused = Paused::new(first.id());
    // The rest of its progress is drained, so that it never blocks on a full pipe.
    let drain = std::thread::spawn(move || std::io::copy(&mut progress, &mut std::io::sink()));

    let checkpoint = env.show("v2")["projectors"][0]["checkpoint"]
        .as_i64()
        .expect("a checkpoint");
    assert!(
        checkpoint < head,
        "the first start is mid-history when paused: {checkpoint} of {head}"
    );
    for command in ["start", "project", "remove"] {
        let err = env.fail(&["replay", command, "v2"]);
        assert!(
            err.contains("another zdr process"),
            "a concurrent `replay {command}` names the other process: {err}"
        );
    }
    let show = env.show("v2");
    assert_eq!(show["state"], "started", "{show:#}");
    assert_eq!(show["error"], json!(null), "{show:#}");
    assert!(
        first.try_wait().expect("try_wait").is_none(),
        "the first start finished during the race"
    );

    drop(paused);
    let status = wait_child(&mut first, PATIENCE, "the first replay start");
    assert!(status.success(), "the first start failed: {status}");
    drain
        .join()
        .expect("the progress reader panicked")
        .expect("reading the progress");
    let show = env.show("v2");
    assert_eq!(show["projectors"][0]["checkpoint"], head, "{show:#}");
    assert_same_rows(
        &env.balances_v2(&env.clone_table("v2", "balances")),
        &fold_v2(&env.stored_events()),
        "the clone of the start that won",
    );
}

/// A process stopped with SIGSTOP until this is dropped (SIGCONT), even when the test panics.
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Self {
        signal(pid, "STOP");
        Self(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // Not `signal`: a panic while the test already unwinds would abort the test binary.
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

fn creating_an_existing_key_is_refused_and_keeps_the_replay(backend: Backend) {
    let g = guests();
    let (env, _) = with_replay(backend);
    env.ok(&["replay", "start", "v2"]);
    let before = snapshot(&env);
    let show = env.show("v2");
    for file in [&g.balance_v2, &g.veto] {
        let err = env.fail(&[
            "replay",
            "create",
            "v2",
            "--projector",
            &format!("balance={file}"),
        ]);
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(env.show("v2"), show, "a refused create changed the replay");
        assert_eq!(snapshot(&env), before, "a refused create changed something");
    }
}

fn the_reserved_key_live_and_malformed_keys_are_refused(backend: Backend) {
    let g = guests();
    let (env, _) = with_replay(backend);
    let before = snapshot(&env);
    let show = env.show("v2");
    let err = env.fail(&["replay", "remove", "live"]);
    assert!(err.contains("reserved"), "{err}");
    for args in [
        vec!["replay", "create", "live", "--projector"],
        vec!["replay", "create", "Bad Key", "--projector"],
        vec!["replay", "create", "x;drop table balances", "--projector"],
        vec!["replay", "create", "2v", "--projector"],
    ] {
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        args.push(format!("balance={}", g.balance_v2));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = env.fail(&args);
        assert!(err.contains("invalid replay key"), "{args:?}: {err}");
    }
    for command in ["start", "show", "lag", "project", "promote", "remove"] {
        let err = env.fail(&["replay", command, "Bad Key"]);
        assert!(
            err.contains("invalid replay key"),
            "replay {command}: {err}"
        );
    }
    assert_eq!(env.show("v2"), show, "bad keys changed the replay");
    assert_eq!(snapshot(&env), before, "bad keys changed something");
    assert!(env.table_exists("balances"));
}

fn unknown_keys_and_projectors_get_a_clear_error(backend: Backend) {
    let g = guests();
    let (env, _) = with_replay(backend);
    let before = snapshot(&env);
    for command in ["start", "show", "lag", "project", "promote", "remove"] {
        let err = env.fail(&["replay", command, "nosuch"]);
        assert!(
            err.contains("no replay named \"nosuch\""),
            "replay {command}: {err}"
        );
    }
    let err = env.fail(&[
        "replay",
        "create",
        "other",
        "--projector",
        &format!("nosuch={}", g.balance_v2),
    ]);
    assert!(
        err.contains("describes itself as projector \"balance\""),
        "{err}"
    );
    let err = env.fail(&[
        "replay",
        "create",
        "other",
        "--projector",
        &format!("sql-probe={}", g.sql_probe),
    ]);
    assert!(err.contains("not deployed"), "{err}");
    let err = env.fail(&["projector", "resume", "nosuch"]);
    assert!(err.contains("nosuch"), "{err}");
    assert_eq!(snapshot(&env), before, "errors changed something");
}

fn commands_that_do_not_fit_the_state_are_refused_and_change_nothing(backend: Backend) {
    let (env, _) = with_replay(backend);
    env.ok(&["replay", "start", "v2"]);
    env.ok(&["replay", "project", "v2"]);
    let before = snapshot(&env);
    let show = env.show("v2");
    for (args, message) in [
        (vec!["replay", "start", "v2"], "is projecting"),
        (vec!["replay", "project", "v2"], "already projecting"),
        (vec!["replay", "remove", "v2"], "--force"),
        (vec!["projector", "resume", "balance"], "not stopped"),
    ] {
        let err = env.fail(&args);
        assert!(err.contains(message), "{args:?}: {err}");
        assert_eq!(env.show("v2"), show, "{args:?} changed the replay");
        assert_eq!(snapshot(&env), before, "{args:?} changed something");
    }
    env.ok(&["replay", "promote", "v2"]);
    let show = env.show("v2");
    for (args, message) in [
        (vec!["replay", "start", "v2"], "already promoted"),
        (vec!["replay", "project", "v2"], "already promoted"),
        (vec!["replay", "promote", "v2"], "not projecting"),
    ] {
        let err = env.fail(&args);
        assert!(err.contains(message), "{args:?}: {err}");
        assert_eq!(env.show("v2"), show, "{args:?} changed the promoted replay");
    }
}

fn malformed_events_and_invalid_components_are_refused_and_lose_nothing(backend: Backend) {
    let g = guests();
    let (env, mut generator) = with_replay(backend);
    let before = snapshot(&env);
    let head = env.head();

    let good = generator.money(2);
    let lines = [
        good[0].jsonl(),
        good[1].jsonl(),
        "{\"event_class\": \"MoneyAdded\", \"event_properties\": [1]}".to_string(),
        "not json".to_string(),
    ];
    let path = env.dir().join("bad.jsonl");
    std::fs::write(&path, lines.join("\n")).expect("write the JSONL file");
    let err = env.fail(&["events", "import", path.to_str().expect("UTF-8 path")]);
    assert!(
        err.contains("line 3") && err.contains("line 4") && err.contains("nothing was imported"),
        "{err}"
    );
    assert_eq!(env.head(), head, "a refused import stored events");
    let err = env.fail(&[
        "events",
        "append",
        "--class",
        "MoneyAdded",
        "--properties",
        "{not json",
    ]);
    assert!(err.contains("not valid JSON"), "{err}");
    assert_eq!(env.head(), head, "a refused append stored an event");

    let not_wasm = env.dir().join("not.wasm");
    std::fs::write(&not_wasm, b"\0asm but not really").expect("write the fake component");
    let not_wasm = not_wasm.to_str().expect("UTF-8 path");
    let err = env.fail(&["projector", "deploy", "balance", not_wasm]);
    assert!(err.contains("not.wasm"), "the error names the file: {err}");
    let err = env.fail(&[
        "replay",
        "create",
        "v3",
        "--projector",
        &format!("balance={not_wasm}"),
    ]);
    assert!(err.contains("not.wasm"), "the error names the file: {err}");
    let err = env.fail(&[
        "replay",
        "create",
        "v3",
        "--projector",
        "balance=missing.wasm",
    ]);
    assert!(err.contains("missing.wasm"), "{err}");
    let err = env.fail(&["projector", "deploy", "balance", &g.sql_probe]);
    assert!(
        err.contains("sql-probe"),
        "a component with another name is refused: {err}"
    );
    env.fail(&["replay", "show", "v3"]);

    assert_eq!(snapshot(&env), before, "bad input changed something");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live after bad input",
    );
}

fn commands_on_an_uninitialised_database_say_to_run_init(backend: Backend) {
    let env = Env::uninitialised(backend);
    for args in [
        &["events", "count"][..],
        &["projector", "list"],
        &["replay", "list"],
        &["replay", "show", "v2"],
        &["serve"],
    ] {
        let err = env.fail(args);
        assert!(err.contains("zdr init"), "{args:?}: {err}");
    }
    env.ok(&["init"]);
    env.ok(&["init"]);
    assert_eq!(
        env.json(&["events", "count", "--json"]),
        json!({"count": 0, "last_id": 0})
    );
}

fn bad_invocations_get_an_error_message_never_a_panic(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.ok(&["init"]);
    let missing = env.dir().join("missing.wasm");
    let missing = missing.to_str().expect("a UTF-8 path");
    let not_wasm = env.dir().join("not.wasm");
    std::fs::write(&not_wasm, b"hello, I am not WebAssembly").expect("write a file");
    let not_wasm = not_wasm.to_str().expect("a UTF-8 path");
    let bad: &[&[&str]] = &[
        &["replay"],
        &["replay", "create"],
        &["replay", "create", "v2"],
        &["replay", "create", "v2", "--projector", "balance"],
        &[
            "replay",
            "create",
            "v2",
            "--projector",
            &format!("balance={missing}"),
        ],
        &[
            "replay",
            "create",
            "v2",
            "--projector",
            &format!("balance={not_wasm}"),
        ],
        &[
            "replay",
            "create",
            "UPPER",
            "--projector",
            &format!("balance={}", g.balance_v2),
        ],
        &[
            "replay",
            "create",
            &"k".repeat(200),
            "--projector",
            &format!("balance={}", g.balance_v2),
        ],
        &["replay", "start", ""],
        &["replay", "start", "nope"],
        &["replay", "show", "../../etc/passwd"],
        &["replay", "lag", "x;drop table stored_events"],
        &["replay", "promote", "tab\there"],
        &["replay", "remove", "live"],
        &["projector", "deploy", "balance", missing],
        &["projector", "deploy", "balance", not_wasm],
        &["projector", "deploy", "Bad Name", &g.balance_v1],
        &["projector", "deploy", "other", &g.balance_v1],
        &["projector", "resume", "nope"],
        &["events", "append"],
        &["events", "append", "--class", ""],
        &[
            "events",
            "append",
            "--class",
            "X",
            "--properties",
            "{not json",
        ],
        &["events", "append", "--class", "X", "--properties", "[1, 2]"],
        &["events", "import", missing],
        &["events", "count", "--json", "--bogus"],
        &["serve", "--poll-interval-ms", "-5"],
        &["demo", "--events", "lots"],
        &["no-such-command"],
        &["--database-url", "mysql://nope", "events", "count"],
        &["--database-url", "sqlite:///no/such/dir/zdr.db", "init"],
        &["--config", missing, "events", "count"],
        // Every subcommand, with what it cannot honour.
        &["init", "--bogus"],
        &["--database-url", "mysql://nope", "init"],
        &[
            "--database-url",
            "mysql://nope",
            "demo",
            "--events",
            "10",
            "--v1",
            &g.balance_v1,
            "--v2",
            &g.balance_v2,
        ],
        &[
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
            "events",
            "count",
        ],
        &["events", "count", "extra"],
        &["events", "import"],
        &["events", "append", "--class", "X", "--meta", "[]"],
        &["projector"],
        &["projector", "list", "--bogus"],
        &["projector", "deploy"],
        &["projector", "resume"],
        &["projector", "skip", "balance"],
        &[
            "projector",
            "skip",
            "balance",
            "--event",
            "x",
            "--reason",
            "r",
        ],
        &["projector", "skip", "nope", "--event", "1", "--reason", "r"],
        &["plugin"],
        &["plugin", "inspect", missing],
        &["plugin", "inspect", not_wasm],
        &["plugin", "build", missing],
        &["plugin", "test", missing],
        &["plugin", "new", "x"],
        &["plugin", "new", "x", "--lang", "cobol"],
        &["plugin", "new", "Bad Name", "--lang", "rust"],
        &["replay", "list", "extra"],
        &["replay", "lag"],
        &["replay", "show"],
        &["replay", "project", "nope"],
        &["replay", "promote", "nope"],
        &["replay", "remove", "nope"],
        &["serve", "extra"],
        &["demo", "--v1", missing],
    ];
    for args in bad {
        let output = env.zdr(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded:\n{stderr}");
        assert!(
            output.status.code().is_some(),
            "{args:?} was killed by a signal"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
        assert!(
            stderr.to_lowercase().contains("error") || stderr.contains("Usage"),
            "{args:?} gave no message:\n{stderr}"
        );
    }
    assert_eq!(env.head(), 0, "nothing was appended by the bad invocations");
}

fn a_database_written_by_a_newer_zdr_is_refused_and_left_alone(backend: Backend) {
    let env = Env::new(backend);
    env.ok(&["events", "append", "--class", "Hello"]);
    // Pretend a newer zdr wrote it.
    env.execute("UPDATE zdr_meta SET value = '99' WHERE \"key\" = 'schema_version'");
    for args in [
        &["init"][..],
        &["events", "count"],
        &["events", "append", "--class", "Hello"],
        &["projector", "list"],
        &["replay", "list"],
        &["serve"],
    ] {
        let err = env.fail(args);
        assert!(
            err.contains("newer") && err.contains("upgrade zdr"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(env.head(), 1, "nothing was appended");
    assert_eq!(
        env.rows("SELECT value FROM zdr_meta WHERE \"key\" = 'schema_version'"),
        [["99"]]
    );
}
