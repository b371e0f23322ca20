//! Replays split by aggregate (`replay start --partitions N` of a projector of the
//! `partitioned-projector` world, balance v2): killed with SIGKILL half-way, several times,
//! each part holds exactly its own events up to its own checkpoint, and the replay resumes
//! with the same parts to the fold of every event; a part that fails names its event, stops
//! the others and leaves the parts to resume; a first deploy builds from history split the
//! same way. SQLite, whose single writer would only make parts take turns, replays whole.

use serde_json::Value;

use crate::crash::kill_replay_start_after;
use crate::support::{
    Backend, Env, Generator, NewEvent, assert_same_rows, both_backends, fold_v2, guests,
};

both_backends!(
    a_split_replay_killed_half_way_resumes_its_parts_to_the_fold,
    a_part_that_fails_names_its_event_and_the_split_resumes_after_the_fix,
    a_first_deploy_builds_from_history_split_by_aggregate,
);

/// Parts of every split in this module.
const PARTS: u32 = 3;

/// The SQL condition that picks the events of `part` of [`PARTS`], as zdr splits them.
fn in_part(backend: Backend, part: u32) -> String {
    match backend {
        Backend::Postgres => format!(
            "CASE WHEN aggregate_uuid IS NULL THEN 0 \
             ELSE mod(hashtext(aggregate_uuid::text)::bigint + 2147483648, {PARTS}) END = {part}"
        ),
        Backend::Mariadb => format!(
            "CASE WHEN aggregate_uuid IS NULL THEN 0 ELSE CRC32(aggregate_uuid) % {PARTS} END = {part}"
        ),
        Backend::Sqlite => unreachable!("SQLite replays whole"),
    }
}

/// The parts `replay show` reports for the one projector of replay `key`, as (part, parts,
/// checkpoint, head).
fn split_of(env: &Env, key: &str) -> Vec<(u32, u32, i64, i64)> {
    let show = env.show(key);
    let number = |v: &Value, field: &str| v[field].as_i64().expect("a number in the split");
    show["projectors"][0]["split"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| {
                    (
                        u32::try_from(number(p, "part")).expect("a part"),
                        u32::try_from(number(p, "parts")).expect("parts"),
                        number(p, "checkpoint"),
                        number(p, "head"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn a_split_replay_killed_half_way_resumes_its_parts_to_the_fold(backend: Backend) {
    const HISTORY: usize = 6_000;
    const KILLS: usize = 3;
    let g = guests();
    let env = Env::new(backend);
    // Small batches, each reported on its own progress line.
    env.write_config(&format!("batch_size = 10\nrebuild_partitions = {PARTS}\n"));
    env.deploy("balance", &g.balance_v1);
    let mut generator = Generator::new(9);
    let mut history = generator.open_accounts(60);
    history.extend(generator.money(HISTORY));
    env.import(&history);
    let head = env.head();
    env.create_balance_replay("v2", &g.balance_v2);
    let events = env.stored_events();
    let clone = env.clone_table("v2", "balances");

    if backend == Backend::Sqlite {
        let out = env.ok(&["replay", "start", "v2", "--partitions", "4"]);
        assert!(
            out.contains(&format!("applied {} event(s)", events.len())),
            "{out}"
        );
        assert!(split_of(&env, "v2").is_empty(), "SQLite split a replay");
        assert_same_rows(&env.balances_v2(&clone), &fold_v2(&events), "the clone");
        return;
    }

    let mut applied_before = 0;
    for kill in 1..=KILLS {
        kill_replay_start_after(&env, "v2", kill * 5);

        // The split is recorded, with the parts it began with, and the target's own
        // checkpoint stays where the split began.
        let show = env.show("v2");
        assert_eq!(show["state"], "started", "{show:#}");
        assert_eq!(show["projectors"][0]["checkpoint"], 0, "{show:#}");
        let split = split_of(&env, "v2");
        assert_eq!(split.len(), PARTS as usize, "{show:#}");
        assert!(
            split
                .iter()
                .all(|&(_, parts, _, h)| parts == PARTS && h == head),
            "{split:?}"
        );

        // Each part holds exactly its own events up to its own checkpoint.
        let mut expected = Vec::new();
        for &(part, _, checkpoint, _) in &split {
            expected.extend(env.stored_events_where(&format!(
                "id <= {checkpoint} AND {}",
                in_part(backend, part)
            )));
        }
        expected.sort_by_key(|e| e.id);
        assert!(
            expected.len() > applied_before && expected.len() < events.len(),
            "kill {kill}: {} events applied, {applied_before} before, {} in all",
            expected.len(),
            events.len()
        );
        applied_before = expected.len();
        assert_same_rows(
            &env.balances_v2(&clone),
            &fold_v2(&expected),
            &format!("the clone after kill {kill}, against each part's checkpoint"),
        );
    }

    // Started again, the parts resume and join; a smaller --partitions does not change them.
    let out = env.ok(&["replay", "start", "v2", "--partitions", "2"]);
    assert!(
        out.contains(&format!(
            "applied {} event(s)",
            events.len() - applied_before
        )),
        "the last start applies only what the parts had left: {out}"
    );
    assert!(split_of(&env, "v2").is_empty(), "the parts did not join");
    assert_eq!(env.show("v2")["projectors"][0]["checkpoint"], head);
    assert_same_rows(
        &env.balances_v2(&clone),
        &fold_v2(&events),
        "the joined clone",
    );

    // The rest of the lifecycle is that of any replay.
    env.ok(&["replay", "project", "v2"]);
    env.ok(&["replay", "promote", "v2"]);
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&env.stored_events()),
        "live after the promote",
    );
}

fn a_part_that_fails_names_its_event_and_the_split_resumes_after_the_fix(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config(&format!("batch_size = 20\nrebuild_partitions = {PARTS}\n"));
    env.deploy("balance", &g.balance_v1);
    let mut generator = Generator::new(12);
    let mut history = generator.open_accounts(30);
    history.extend(generator.money(400));
    env.import(&history);
    // Money for an account never opened: balance v2 fails on it ("no account").
    let stray = env.append(&NewEvent::new(
        "MoneyAdded",
        Some("acct-stray"),
        serde_json::json!({"amount": 5}),
    ));
    env.import(&generator.money(400));
    env.create_balance_replay("v2", &g.balance_v2);

    let err = env.fail(&["replay", "start", "v2"]);
    assert!(
        err.contains(&stray.to_string()) && err.contains("acct-stray"),
        "the failure names the event: {err}"
    );
    let show = env.show("v2");
    assert_eq!(show["state"], "failed", "{show:#}");
    assert_eq!(
        show["projectors"][0]["failure"]["event_id"], stray,
        "{show:#}"
    );
    if backend == Backend::Sqlite {
        return;
    }
    // The part of the stray event stopped before it; the others stopped at a batch, or
    // finished first.
    let split = split_of(&env, "v2");
    assert_eq!(split.len(), PARTS as usize, "{show:#}");
    let (_, _, checkpoint, _) = split
        .iter()
        .copied()
        .find(|&(part, ..)| {
            env.scalar(&format!(
                "SELECT COUNT(*) FROM stored_events WHERE id = {stray} AND {}",
                in_part(backend, part)
            )) == 1
        })
        .expect("the stray event is in one part");
    assert!(
        checkpoint < stray,
        "its part passed the failed event: {split:?}"
    );

    // The fix: the stray event is skipped on the clone's way (the operator deletes it here,
    // as a stand-in for a fixed projector); the next start resumes the parts.
    env.execute(&format!("DELETE FROM stored_events WHERE id = {stray}"));
    env.ok(&["replay", "start", "v2"]);
    assert!(split_of(&env, "v2").is_empty(), "the parts did not join");
    assert_same_rows(
        &env.balances_v2(&env.clone_table("v2", "balances")),
        &fold_v2(&env.stored_events()),
        "the clone resumed after the fix",
    );
}

fn a_first_deploy_builds_from_history_split_by_aggregate(backend: Backend) {
    let g = guests();
    let env = Env::new(backend);
    env.write_config(&format!("batch_size = 50\nrebuild_partitions = {PARTS}\n"));
    let mut generator = Generator::new(21);
    let mut history = generator.open_accounts(40);
    history.extend(generator.money(2_000));
    env.import(&history);
    let out = env.zdr(&["projector", "deploy", "balance", &g.balance_v2]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy failed: {stderr}");
    assert_eq!(
        stderr.contains("replaying split by aggregate"),
        backend != Backend::Sqlite,
        "split on the server backends only: {stderr}"
    );
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&env.stored_events()),
        "the deployed table",
    );
}
