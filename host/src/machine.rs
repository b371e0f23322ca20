//! The replay state machine: one table of which command moves a replay from which state to
//! which, and why every other pair is refused. No I/O: the lifecycle applies a move as a
//! compare-and-set of the replay's row (so two processes racing on one replay get one winner),
//! and the projection reports a clone's failure through [`Command::CloneFailed`].
//!
//! ```text
//! created ──start──▶ started ──project──▶ projecting ──promote──▶ promoted ──rollback──▶ rolled-back
//!    │                  │ ↺ start             │
//!    │ clone failed     │ clone failed        │ clone failed
//!    └──────────────▶ failed ◀────────────────┘
//!                       └──start──▶ started
//!
//! remove: from every state to (gone), except projecting, which needs remove --force
//! ```
//!
//! A projecting replay needs `--force` to be removed, since its clone receives new events. A
//! clone fails from `created`, `started` or `projecting`; a replay that already failed stays
//! failed, and a promoted one has no clone left to fail.

use std::fmt;

use crate::model::ReplayState;

/// What is asked of a replay: an operator's command, or an outcome the projection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// `replay start`: replay history into the clone (again, after a failure).
    Start,
    /// `replay project`: close the last gap and turn on dual writes.
    Project,
    /// `replay promote`: swap the clone in as live.
    Promote,
    /// `replay remove`: drop what the replay left.
    Remove,
    /// `replay remove --force`: also a replay whose clone still receives events.
    ForceRemove,
    /// `replay rollback`: swap the former live tables back in after a promote.
    Rollback,
    /// The projection reports that a clone's projector failed on an event.
    CloneFailed,
}

impl Command {
    /// Every command, for tables and tests.
    pub const ALL: [Command; 7] = [
        Command::Start,
        Command::Project,
        Command::Promote,
        Command::Remove,
        Command::ForceRemove,
        Command::Rollback,
        Command::CloneFailed,
    ];
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Start => "start",
            Command::Project => "project",
            Command::Promote => "promote",
            Command::Remove => "remove",
            Command::ForceRemove => "remove --force",
            Command::Rollback => "rollback",
            Command::CloneFailed => "clone failed",
        })
    }
}

/// Where a command leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The replay moves to (or stays in) this state.
    State(ReplayState),
    /// The replay and what it left are dropped.
    Gone,
}

/// One row of the table: a move, or a refusal with what to do instead. In a refusal `{key}`
/// stands for the replay's key; the text follows `replay {key} `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// The command moves the replay.
    Move(Next),
    /// The command does not fit the state.
    Refuse(&'static str),
}

use Cell::{Move, Refuse};
use Command::{CloneFailed, ForceRemove, Project, Promote, Remove, Rollback, Start};
use Next::{Gone, State};
use ReplayState::{Created, Failed, Projecting, Promoted, RolledBack, Started};

/// A rollback before a promote.
const NOTHING_TO_ROLL_BACK: Cell = Refuse(
    "has not been promoted: nothing to roll back (remove it with `zdr replay remove {key}` to drop its clone)",
);

/// The table: every (state, command) pair, once.
pub const TABLE: [(ReplayState, Command, Cell); 42] = [
    (Created, Rollback, NOTHING_TO_ROLL_BACK),
    (Started, Rollback, NOTHING_TO_ROLL_BACK),
    (Failed, Rollback, NOTHING_TO_ROLL_BACK),
    (Projecting, Rollback, NOTHING_TO_ROLL_BACK),
    (Promoted, Rollback, Move(State(RolledBack))),
    (
        RolledBack,
        Rollback,
        Refuse(
            "is already rolled back: the version it had promoted is out again; replay anew (a new key) to promote it once more",
        ),
    ),
    (
        RolledBack,
        Start,
        Refuse(
            "is rolled back; create a new replay to rebuild (`zdr replay remove {key}` drops this one)",
        ),
    ),
    (
        RolledBack,
        Project,
        Refuse(
            "is rolled back; create a new replay to rebuild (`zdr replay remove {key}` drops this one)",
        ),
    ),
    (
        RolledBack,
        Promote,
        Refuse("is rolled back; replay anew (a new key) to promote its version again"),
    ),
    (RolledBack, Remove, Move(Gone)),
    (RolledBack, ForceRemove, Move(Gone)),
    (
        RolledBack,
        CloneFailed,
        Refuse("is rolled back; it has no clone left to fail"),
    ),
    (Created, Start, Move(State(Started))),
    (
        Created,
        Project,
        Refuse("has not been started; run `zdr replay start {key}` first"),
    ),
    (
        Created,
        Promote,
        Refuse(
            "is created, not projecting: run `zdr replay start {key}` and `zdr replay project {key}` first",
        ),
    ),
    (Created, Remove, Move(Gone)),
    (Created, ForceRemove, Move(Gone)),
    (Created, CloneFailed, Move(State(Failed))),
    (Started, Start, Move(State(Started))),
    (Started, Project, Move(State(Projecting))),
    (
        Started,
        Promote,
        Refuse(
            "is started, not projecting: catch up and turn on dual writes with `zdr replay project {key}` first",
        ),
    ),
    (Started, Remove, Move(Gone)),
    (Started, ForceRemove, Move(Gone)),
    (Started, CloneFailed, Move(State(Failed))),
    (Failed, Start, Move(State(Started))),
    (
        Failed,
        Project,
        Refuse(
            "failed; fix the projector and run `zdr replay start {key}` first (`zdr replay show {key}` says where)",
        ),
    ),
    (
        Failed,
        Promote,
        Refuse(
            "is failed, not projecting: fix the projector, then `zdr replay start {key}` and `zdr replay project {key}`",
        ),
    ),
    (Failed, Remove, Move(Gone)),
    (Failed, ForceRemove, Move(Gone)),
    (
        Failed,
        CloneFailed,
        Refuse("has already failed; its clone is stopped at the first failure"),
    ),
    (
        Projecting,
        Start,
        Refuse(
            "is projecting: `zdr serve` keeps it caught up; promote it with `zdr replay promote {key}`",
        ),
    ),
    (Projecting, Project, Refuse("is already projecting")),
    (Projecting, Promote, Move(State(Promoted))),
    (
        Projecting,
        Remove,
        Refuse(
            "is projecting: new events go to its clone. Promote it with `zdr replay promote {key}`, \
             or pass --force to drop the clone anyway",
        ),
    ),
    (Projecting, ForceRemove, Move(Gone)),
    (Projecting, CloneFailed, Move(State(Failed))),
    (
        Promoted,
        Start,
        Refuse("is already promoted; remove it with `zdr replay remove {key}`"),
    ),
    (
        Promoted,
        Project,
        Refuse("is already promoted; remove it with `zdr replay remove {key}`"),
    ),
    (
        Promoted,
        Promote,
        Refuse("is promoted, not projecting: nothing to promote"),
    ),
    (Promoted, Remove, Move(Gone)),
    (Promoted, ForceRemove, Move(Gone)),
    (
        Promoted,
        CloneFailed,
        Refuse("is promoted; its clone is live now and fails as live"),
    ),
];

/// The cell for `command` in `state`.
pub fn cell(state: ReplayState, command: Command) -> Cell {
    TABLE
        .iter()
        .find(|(s, c, _)| *s == state && *c == command)
        .map(|(_, _, cell)| *cell)
        // The table has every pair (a test checks); this is never reached.
        .unwrap_or(Refuse("cannot do that now"))
}

/// The states from which `command` moves a replay: the `from` list of its compare-and-set.
pub fn sources(command: Command) -> Vec<ReplayState> {
    TABLE
        .iter()
        .filter(|(_, c, cell)| *c == command && matches!(cell, Move(_)))
        .map(|(s, _, _)| *s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [ReplayState; 6] = [Created, Started, Failed, Projecting, Promoted, RolledBack];

    #[test]
    fn the_table_has_every_pair_once() {
        for state in STATES {
            for command in Command::ALL {
                let rows = TABLE
                    .iter()
                    .filter(|(s, c, _)| *s == state && *c == command)
                    .count();
                assert_eq!(rows, 1, "{state} × {command}");
            }
        }
        assert_eq!(TABLE.len(), STATES.len() * Command::ALL.len());
    }

    #[test]
    fn the_lifecycle_runs_forward_and_a_failed_replay_starts_again() {
        let mut state = Created;
        for command in [Start, Project, Promote] {
            match cell(state, command) {
                Move(State(next)) => state = next,
                other => panic!("{state} × {command}: {other:?}"),
            }
        }
        assert_eq!(state, Promoted);
        assert_eq!(cell(Promoted, Remove), Move(Gone));
        assert_eq!(cell(Promoted, Rollback), Move(State(RolledBack)));
        assert_eq!(cell(RolledBack, Remove), Move(Gone));
        assert_eq!(sources(Rollback), [Promoted]);
        assert_eq!(cell(Failed, Start), Move(State(Started)));
        assert_eq!(sources(CloneFailed), [Created, Started, Projecting]);
        assert_eq!(sources(Start), [Created, Started, Failed]);
    }

    #[test]
    fn every_refusal_says_what_to_do_or_why() {
        for (state, command, cell) in TABLE {
            if let Refuse(hint) = cell {
                assert!(
                    hint.len() > 15 && !hint.ends_with('.'),
                    "{state} × {command}: {hint:?}"
                );
            }
        }
        // Only a projecting replay needs --force to go.
        for state in STATES {
            let plain = matches!(cell(state, Remove), Move(Gone));
            assert_eq!(plain, state != Projecting, "{state}");
            assert_eq!(cell(state, ForceRemove), Move(Gone), "{state}");
        }
    }
}
