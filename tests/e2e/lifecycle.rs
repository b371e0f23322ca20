//! The replay lifecycle end to end: create → start → lag → start → project → promote → remove
//! with the daemon serving throughout, and a promote the projector vetoes.

use crate::support::{
    Env, Generator, PATIENCE, assert_same_rows, fold_v1, fold_v2, guests, through, wait_until,
};

#[test]
fn full_lifecycle_ends_with_live_equal_to_the_v2_fold_served_by_the_same_daemon() {
    let g = guests();
    let env = Env::new();
    let mut generator = Generator::new(1);
    env.import(&generator.open_accounts(30));
    env.import(&generator.money(2_000));
    env.deploy("balance", &g.balance_v1);
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "balances after deploy",
    );

    let mut daemon = env.serve();
    let pid = daemon.pid();
    env.import(&generator.money(200));
    env.wait_live("balance", "1");
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&env.stored_events()),
        "live v1 while serving",
    );

    // create: clone tables from v2's DDL, beside the live ones.
    let out = env.create_balance_replay("v2", &g.balance_v2);
    assert!(
        out.contains("created replay v2 for balance version 2"),
        "{out}"
    );
    let show = env.show("v2");
    assert_eq!(show["state"], "created", "{show:#}");
    assert_eq!(
        show["projectors"][0]["tables"][0], "zdr_r_v2__balances",
        "{show:#}"
    );
    assert!(env.table_exists("zdr_r_v2__balances"));
    assert!(
        env.balances_v2("zdr_r_v2__balances").is_empty(),
        "a new clone starts empty"
    );

    // start: history into the clone.
    env.ok(&["replay", "start", "v2"]);
    assert_same_rows(
        &env.balances_v2("zdr_r_v2__balances"),
        &fold_v2(&env.stored_events()),
        "clone after the first start",
    );

    // More events arrive (one by one through the CLI, and a batch): the clone falls behind.
    let more = generator.money(105);
    for event in &more[..5] {
        env.append(event);
    }
    env.import(&more[5..]);
    let lag = env.json(&["replay", "lag", "v2", "--json"]);
    assert_eq!(lag["lag"], 105, "{lag:#}");
    assert_eq!(lag["head"], env.head(), "{lag:#}");
    assert_eq!(lag["projectors"][0]["lag"], 105, "{lag:#}");

    // start again catches up.
    let out = env.ok(&["replay", "start", "v2"]);
    assert!(
        out.contains("applied 105 event(s)"),
        "the second start applies only what arrived: {out}"
    );
    let lag = env.json(&["replay", "lag", "v2", "--json"]);
    assert_eq!(lag["lag"], 0, "{lag:#}");
    assert_eq!(lag["projectors"][0]["checkpoint"], env.head(), "{lag:#}");

    // project: from now on the daemon writes every new event to live and clone.
    env.ok(&["replay", "project", "v2"]);
    assert_eq!(env.show("v2")["state"], "projecting");
    env.import(&generator.money(150));
    env.wait_live("balance", "1");
    env.wait_replay_caught_up("v2");
    let events = env.stored_events();
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "live v1 while projecting",
    );
    assert_same_rows(
        &env.balances_v2("zdr_r_v2__balances"),
        &fold_v2(&events),
        "clone while projecting",
    );

    // promote: the clone becomes live, the daemon hot-swaps to v2.
    let out = env.ok(&["replay", "promote", "v2"]);
    assert!(out.contains("promoted balance version 2"), "{out}");
    let show = env.show("v2");
    assert_eq!(show["state"], "promoted", "{show:#}");
    let retired_checkpoint = show["projectors"][0]["checkpoint"]
        .as_i64()
        .expect("a checkpoint");
    env.import(&generator.money(150));
    env.wait_live("balance", "2");
    wait_until(PATIENCE, "the serve log to report the hot swap", || {
        daemon.log().contains("hot swap")
    });
    let events = env.stored_events();
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&events),
        "live v2 after promote",
    );
    // The former live tables are kept for rollback, frozen at the promote.
    assert_eq!(
        retired_checkpoint,
        show["head"].as_i64().expect("a head"),
        "promote happens caught up"
    );
    assert_same_rows(
        &env.balances_v1("zdr_p_v2__balances"),
        &fold_v1(through(&events, retired_checkpoint)),
        "the retired v1 tables",
    );
    assert!(
        !env.table_exists("zdr_r_v2__balances"),
        "the clone was renamed into place"
    );

    // remove: the retired tables go; live stays and keeps being served.
    let out = env.ok(&["replay", "remove", "v2"]);
    assert!(out.contains("removed replay v2"), "{out}");
    assert!(
        !env.table_exists("zdr_p_v2__balances"),
        "remove drops the retired tables"
    );
    assert!(
        env.schema_objects()
            .iter()
            .all(|o| !o.contains("zdr_p_v2") && !o.contains("zdr_r_v2"))
    );
    assert_eq!(
        env.json(&["replay", "list", "--json"]),
        serde_json::json!([])
    );
    env.fail(&["replay", "show", "v2"]);
    env.import(&generator.money(50));
    env.wait_live("balance", "2");
    assert_same_rows(
        &env.balances_v2("balances"),
        &fold_v2(&env.stored_events()),
        "live v2 after remove",
    );

    daemon.assert_running();
    assert_eq!(daemon.pid(), pid);
    let log = daemon.stop();
    assert!(
        log.contains("hot swap: now serving version 2"),
        "no hot swap in the log:\n{log}"
    );
    assert_eq!(
        log.matches("zdr serve started").count(),
        1,
        "the daemon restarted:\n{log}"
    );
}

#[test]
fn a_vetoed_promote_swaps_nothing_and_live_keeps_serving() {
    let g = guests();
    let env = Env::new();
    let mut generator = Generator::new(7);
    env.import(&generator.open_accounts(10));
    env.import(&generator.money(500));
    env.deploy("balance", &g.balance_v1);
    env.create_balance_replay("veto", &g.veto);
    env.ok(&["replay", "start", "veto"]);
    env.ok(&["replay", "project", "veto"]);
    let before = env.show("veto");
    let objects = env.schema_objects();

    let err = env.fail(&["replay", "promote", "veto"]);
    assert!(err.contains("veto"), "the error names the veto: {err}");

    assert_eq!(
        env.show("veto"),
        before,
        "a vetoed promote changes no state"
    );
    assert_eq!(
        env.schema_objects(),
        objects,
        "a vetoed promote renames nothing"
    );
    let live = env.projector("balance");
    assert_eq!(live["version"], "1", "{live:#}");
    let events = env.stored_events();
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "live after the veto",
    );
    assert_same_rows(
        &env.balances_v1("zdr_r_veto__balances"),
        &fold_v1(&events),
        "clone after the veto",
    );

    // Live keeps serving, and the clone keeps projecting, after the veto.
    let mut daemon = env.serve();
    env.import(&generator.money(100));
    env.wait_live("balance", "1");
    env.wait_replay_caught_up("veto");
    let events = env.stored_events();
    assert_same_rows(
        &env.balances_v1("balances"),
        &fold_v1(&events),
        "live served after the veto",
    );
    env.fail(&["replay", "promote", "veto"]);
    env.ok(&["replay", "remove", "veto", "--force"]);
    assert!(!env.table_exists("zdr_r_veto__balances"));
    assert!(env.table_exists("balances"));
    daemon.assert_running();
    daemon.stop();
}
