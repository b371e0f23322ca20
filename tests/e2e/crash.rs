//! Crashes: a `replay start` killed with SIGKILL mid-history (several times) leaves a clone
//! consistent with its checkpoint each time, and resumes from that checkpoint to
//! the same tables as an uninterrupted run, and a daemon killed while dual-writing restarts
//! without losing or repeating an event.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::support::{
    Appender, Backend, Env, Generator, PATIENCE, assert_same_rows, both_backends, fold_v1, fold_v2,
    guests, signal, through, wait_child, wait_until,
};

both_backends!(
    a_replay_killed_mid_start_resumes_to_the_same_tables_as_an_uninterrupted_run,
    a_daemon_killed_while_dual_writing_restarts_without_losing_or_repeating_events,
    a_daemon_whose_log_reader_went_away_still_stops_on_sigterm,
);

fn a_replay_killed_mid_start_resumes_to_the_same_tables_as_an_uninterrupted_run(backend: Backend) {
    const HISTORY: usize = 10_000;
    const KILLS: usize = 4;
    let g = guests();
    let env = Env::new(backend);
    // Small batches, each reported on its own progress line; history replayed whole (a
    // replay split by aggregate has a checkpoint per part: `split::`).
    env.write_config("batch_size = 10\nrebuild_partitions = 1\n");
    // Deployed on an empty store, so the history is only replayed into the clone.
    env.deploy("balance", &g.balance_v1);
    let mut generator = Generator::new(4);
    let mut history = generator.open_accounts(200);
    history.extend(generator.money(HISTORY));
    env.import(&history);
    let head = env.head();
    env.create_balance_replay("v2", &g.balance_v2);

    let events = env.stored_events();

    // Kill it several times, each time at a progress line of its own.
    let mut checkpoint = 0;
    for kill in 1..=KILLS {
        let line = kill_replay_start_after(&env, "v2", kill * 5);
        assert!(line.contains("applied"), "not a progress line: {line}");

        // What the crash left is consistent: the clone holds exactly the events up to its checkpoint.
        let previous = checkpoint;
        let show = env.show("v2");
        assert_eq!(show["state"], "started", "{show:#}");
        checkpoint = show["projectors"][0]["checkpoint"]
            .as_i64()
            .expect("a checkpoint");
        assert!(
            checkpoint > previous && checkpoint < head,
            "checkpoint {checkpoint} after kill {kill}, head {head}"
        );
        assert_same_rows(
            &env.balances_v2(&env.clone_table("v2", "balances")),
            &fold_v2(through(&events, checkpoint)),
            &format!("the clone after kill {kill}, against its own checkpoint {checkpoint}"),
        );
    }

    // Starting again resumes at the checkpoint and finishes.
    let out = env.ok(&["replay", "start", "v2"]);
    assert!(
        out.contains(&format!("applied {} event(s)", head - checkpoint)),
        "the second start resumes after event {checkpoint}: {out}"
    );
    assert_eq!(env.json(&["replay", "lag", "v2", "--json"])["lag"], 0);
    assert_same_rows(
        &env.balances_v2(&env.clone_table("v2", "balances")),
        &fold_v2(&events),
        "the resumed clone",
    );

    // An uninterrupted replay of the same history in a second replay gives the same table.
    env.create_balance_replay("again", &g.balance_v2);
    env.ok(&["replay", "start", "again"]);
    assert_eq!(
        env.balances_v2(&env.clone_table("v2", "balances")),
        env.balances_v2(&env.clone_table("again", "balances")),
        "killed-and-resumed and uninterrupted replays differ"
    );
}

/// Runs `zdr replay start KEY` with a progress line per batch, reads `lines` lines of its
/// stderr, then kills it with SIGKILL and waits for it; returns the last line read.
///
/// The pipe it writes its progress to holds one page: once the test stops reading, the replay
/// can get at most a few dozen batches further before a full pipe holds it, so it never
/// finishes before the kill.
pub(crate) fn kill_replay_start_after(env: &Env, key: &str, lines: usize) -> String {
    let mut start = env
        .command(&["replay", "start", key])
        .env("ZDR_PROGRESS_INTERVAL_MS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot spawn replay start");
    let stderr = start.stderr.take().expect("a piped stderr");
    shrink_pipe(&stderr);
    let mut progress = BufReader::new(stderr);
    let mut line = String::new();
    for _ in 0..lines {
        line.clear();
        let read = progress.read_line(&mut line).expect("reading the progress");
        assert!(read > 0, "replay start ended before it was killed");
    }
    signal(start.id(), "KILL");
    let status = wait_child(&mut start, PATIENCE, "the killed replay start");
    assert!(!status.success(), "replay start was not killed: {status}");
    line
}

/// Makes a pipe hold a single page (Linux's smallest), so that its writer blocks soon after
/// its reader stops.
fn shrink_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this process owns changes only its capacity.
    let set = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(set >= 4096, "cannot shrink the progress pipe");
}

fn a_daemon_killed_while_dual_writing_restarts_without_losing_or_repeating_events(
    backend: Backend,
) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config("batch_size = 7\n");
    let mut generator = Generator::new(5);
    env.import(&generator.open_accounts(25));
    env.import(&generator.money(1_000));
    env.deploy("balance", &g.balance_v1);
    env.create_balance_replay("v2", &g.balance_v2);
    env.ok(&["replay", "start", "v2"]);
    env.ok(&["replay", "project", "v2"]);

    let appender = Appender::start(&env, 51, generator.accounts().to_vec());
    for round in 0..3 {
        let daemon = env.serve();
        appender.wait_for(150);
        let checkpoint = env.projector("balance")["checkpoint"]
            .as_i64()
            .expect("a checkpoint");
        wait_until(PATIENCE, "the daemon to apply some events", || {
            env.projector("balance")["checkpoint"]
                .as_i64()
                .expect("a checkpoint")
                > checkpoint
        });
        let log = daemon.crash();
        assert!(
            log.contains("zdr serve started"),
            "round {round}: the daemon never started:\n{log}"
        );
    }
    appender.stop();

    let mut daemon = env.serve();
    env.wait_live("balance", "1");
    env.wait_replay_caught_up("v2");
    let events = env.stored_events();
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "live after three crashes",
    );
    assert_same_rows(
        &env.balances_v2(&env.clone_table("v2", "balances")),
        &fold_v2(&events),
        "clone after three crashes",
    );
    env.ok(&["replay", "promote", "v2"]);
    env.wait_live("balance", "2");
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&env.stored_events()),
        "live v2 after the promote",
    );
    daemon.assert_running();
    daemon.stop();
}

fn a_daemon_whose_log_reader_went_away_still_stops_on_sigterm(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.deploy("balance", &g.balance_v1);
    // Like `zdr serve 2>&1 | head`: the log's reader reads a few lines and goes away.
    let mut child = env
        .command(&["serve", "--poll-interval-ms", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot spawn zdr serve");
    let mut log = BufReader::new(child.stderr.take().expect("a piped stderr"));
    let mut line = String::new();
    while !line.contains("serving version 1") {
        line.clear();
        let read = log.read_line(&mut line).expect("reading the serve log");
        assert!(read > 0, "zdr serve exited before serving");
    }
    drop(log);
    signal(child.id(), "TERM");
    // Shutting down takes a batch at most; the bound is generous and only stops a hang.
    let status = wait_child(
        &mut child,
        Duration::from_secs(20),
        "zdr serve after SIGTERM, its stderr closed",
    );
    assert!(
        status.code().is_some(),
        "zdr serve died of a signal: {status}"
    );
}
