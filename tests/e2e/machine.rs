//! The replay state machine, cell by cell: for every (state, command) pair of
//! `zdr::machine::TABLE`, a replay is brought to the state in process (the library itself, on a
//! SQLite file, with the real `faulty` guest), the command is run the way the CLI runs it, and
//! the outcome must be the table's: the move (and nothing else), or the typed refusal with the
//! replay left as it was.

use std::collections::HashMap;

use zdr::backend::Db;
use zdr::lifecycle::{self, ComponentSpec, LifecycleError};
use zdr::machine::{Cell, Command, Next, TABLE};
use zdr::model::ReplayState;
use zdr::runtime::{Limits, Runtime};

use crate::support::{compile_cache_dir, guests};

const KEY: &str = "r";

fn runtime() -> Runtime {
    Runtime::new(Limits::default(), HashMap::new(), Some(compile_cache_dir()))
        .expect("a wasmtime runtime")
}

fn faulty() -> ComponentSpec {
    let path = &guests().faulty;
    ComponentSpec {
        name: "faulty".into(),
        source: path.clone(),
        wasm: std::fs::read(path).expect("the faulty component"),
    }
}

/// A database with `faulty` live over a few events and replay `r` in `state`.
fn replay_in(runtime: &Runtime, state: ReplayState) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = Db::create(&format!("sqlite://{}", dir.path().join("zdr.db").display()))
        .expect("a SQLite database");
    db.init().expect("init");
    let ticks: Vec<zdr::events::NewEvent> = (0..5)
        .map(|_| zdr::events::NewEvent::new("Tick", None, "{}", "{}").expect("an event"))
        .collect();
    db.append_events(&ticks).expect("append");
    let options = lifecycle::DeployOptions {
        batch_size: 100,
        allow_same_version: false,
        partitions: 1,
    };
    lifecycle::deploy(runtime, &db, &faulty(), &options, &mut |_, _| {}).expect("deploy");
    lifecycle::create(runtime, &db, KEY, &[faulty()]).expect("create");
    let steps: &[Command] = match state {
        ReplayState::Created => &[],
        ReplayState::Started => &[Command::Start],
        ReplayState::Failed => &[Command::Start, Command::CloneFailed],
        ReplayState::Projecting => &[Command::Start, Command::Project],
        ReplayState::Promoted => &[Command::Start, Command::Project, Command::Promote],
        ReplayState::RolledBack => &[
            Command::Start,
            Command::Project,
            Command::Promote,
            Command::Rollback,
        ],
    };
    for step in steps {
        run(runtime, &db, *step).unwrap_or_else(|err| panic!("reaching {state}: {step}: {err}"));
    }
    assert_eq!(db.replay(KEY).expect("read").map(|r| r.state), Some(state));
    (dir, db)
}

/// Runs `command` on replay `r` as the CLI (or, for a clone's failure, the projection) does.
fn run(runtime: &Runtime, db: &Db, command: Command) -> Result<(), LifecycleError> {
    match command {
        Command::Start => lifecycle::start(runtime, db, KEY, 100, 1, &mut |_, _| {}).map(drop),
        Command::Project => lifecycle::project(runtime, db, KEY, 100, &mut |_, _| {}),
        Command::Promote => {
            lifecycle::promote(runtime, db, KEY, &lifecycle::PromoteOptions::default()).map(drop)
        }
        Command::Rollback => lifecycle::rollback(runtime, db, KEY, 100, &mut |_, _| {}).map(drop),
        Command::Remove => lifecycle::remove(runtime, db, KEY, false).map(drop),
        Command::ForceRemove => lifecycle::remove(runtime, db, KEY, true).map(drop),
        Command::CloneFailed => {
            if db.fail_replay(KEY, "the clone failed")? {
                Ok(())
            } else {
                let state = db.replay(KEY)?.map(|r| r.state);
                Err(LifecycleError::WrongState(format!(
                    "a clone failure does not move a replay in {state:?}"
                )))
            }
        }
    }
}

#[test]
fn every_state_and_command_does_what_the_table_says() {
    let runtime = runtime();
    let mut wrong = Vec::new();
    for (state, command, cell) in TABLE {
        let (_dir, db) = replay_in(&runtime, state);
        let outcome = run(&runtime, &db, command);
        let after = db.replay(KEY).expect("read the replay").map(|r| r.state);
        let right = match (cell, &outcome) {
            (Cell::Move(Next::State(to)), Ok(())) => after == Some(to),
            (Cell::Move(Next::Gone), Ok(())) => {
                after.is_none() && db.replay_targets(KEY).expect("targets").is_empty()
            }
            (Cell::Refuse(hint), Err(LifecycleError::Refused(refusal))) => {
                refusal.state == state
                    && refusal.command == command
                    && refusal.hint == hint
                    && after == Some(state)
                    && refusal.to_string().starts_with(&format!("replay {KEY} "))
                    && !refusal.to_string().contains("{key}")
            }
            (Cell::Refuse(_), Err(LifecycleError::WrongState(_))) => {
                // A clone's failure the table refuses: the compare-and-set did not move it.
                command == Command::CloneFailed && after == Some(state)
            }
            _ => false,
        };
        if !right {
            wrong.push(format!(
                "{state} × {command}: the table says {cell:?}; got {} and the replay is now {after:?}",
                match &outcome {
                    Ok(()) => "success".to_string(),
                    Err(err) => format!("error {err}"),
                }
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
