//! A test guest that faults on demand, so the end-to-end tests can prove the host contains
//! every kind of guest fault and keeps running.
//!
//! It targets `zdr:projector@0.2.0`, so a replay gives it events in runs (`handle-events`): a
//! fault in the middle of a run proves the host rolls the run back and names the faulting
//! event exactly by giving the events again one at a time.
//!
//! Every event's id is first inserted into `seen` (with `send`, the write without an answer);
//! then the event's class decides: `Trap` executes `unreachable`, `Panic` panics, `Fail`
//! returns an error, `Loop` spins forever (the host's deadline must stop it), `Slow` spins for
//! 50 ms and succeeds, `Alloc` allocates without bound (the host's memory cap must stop it),
//! `FailWhenReplaying` returns an error only in an instance that
//! was told `for-replay` (a clone fails while live goes on), `FailWhenLive` only in one that
//! was not (live stops while a replay can rebuild past it), `Swallow` inserts the event's id a
//! second time and ignores the unique violation (a projector that catches a database error and
//! carries on), `SwallowWhenReplaying` does so only in a replaying instance, `SendDuplicate`
//! sends the duplicate insert with `send` and returns before any answer (a write that fails
//! after the projector has moved on, which a pipelining host finds at the end of the call).
//! Any other class is
//! applied normally. Because the fault comes after the insert, a test can also check that the
//! host rolled the batch back: no faulting event's id may be left in `seen`.
//!
//! `BreakPromote` also records the id -2 in `seen`; a `promote` that finds it there sends that
//! insert again (a duplicate) and says yes without asking how it went: a write that fails
//! unseen inside the promote.
//!
//! `use-connection` tries to insert the id -1 into `seen` and logs what the host answered: the
//! handle lives inside a batch transaction, so a statement there must be refused.

mod bindings {
    //! Bindings for the `projector` world, generated from the repository's WIT.
    #![allow(
        clippy::too_many_arguments,
        reason = "generated code for the event record"
    )]
    wit_bindgen::generate!({
        world: "projector",
        path: "../../../wit",
    });
}

use std::cell::{Cell, RefCell};

use bindings::zdr::projector::database::Connection;
use bindings::zdr::projector::log::{Level, log};
use bindings::zdr::projector::types::{Description, Event, EventFailure, Table, Value};

/// The DDL of the table of events seen.
const CREATE_SEEN: &str = "CREATE TABLE seen (event_id INTEGER PRIMARY KEY)";
/// Records one event: `$1` its id.
const RECORD_SEEN: &str = "INSERT INTO seen (event_id) VALUES ($1)";
/// The id `BreakPromote` records in `seen`, which makes `promote` fail unseen.
const BREAK_PROMOTE: i64 = -2;
/// The size of each allocation `Alloc` makes and keeps.
const MIB: usize = 1 << 20;

/// The answer to `handle-events` before the host has handed over a connection.
const NO_CONNECTION: &str = "no connection: use-connection was not called";

thread_local! {
    // Wasm guests are single-threaded; a thread-local keeps the handle without a lock.
    /// The handle to this instance's target, set once by `use-connection`.
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
    /// Whether `for-replay` was called on this instance.
    static REPLAYING: Cell<bool> = const { Cell::new(false) };
}

/// The exported projector.
struct Faulty;

impl bindings::Guest for Faulty {
    fn describe() -> Description {
        Description {
            name: "faulty".to_owned(),
            version: "1".to_owned(),
            tables: vec![Table {
                name: "seen".to_owned(),
                ddl: vec![CREATE_SEEN.to_owned()],
            }],
            handles: Vec::new(),
        }
    }

    fn use_connection(conn: Connection) {
        let outcome = conn.execute(RECORD_SEEN, &[Value::Integer(-1)]);
        log(
            Level::Info,
            &format!("faulty: a statement in use-connection: {outcome:?}"),
        );
        CONNECTION.set(Some(conn));
    }

    fn for_replay() {
        REPLAYING.set(true);
        log(Level::Debug, "faulty: replaying");
    }

    fn handle_events(events: Vec<Event>) -> Result<(), EventFailure> {
        for (index, event) in events.iter().enumerate() {
            handle_event(event).map_err(|message| EventFailure {
                // A run holds at most a few hundred events.
                index: u32::try_from(index).unwrap_or(u32::MAX),
                message,
            })?;
        }
        Ok(())
    }

    fn promote() -> Result<(), String> {
        CONNECTION.with_borrow(|conn| {
            let conn = conn.as_ref().ok_or(NO_CONNECTION)?;
            let marked = conn
                .query(
                    "SELECT event_id FROM seen WHERE event_id = $1",
                    &[Value::Integer(BREAK_PROMOTE)],
                )
                .map_err(|error| format!("promote: {error:?}"))?;
            if !marked.rows.is_empty() {
                // The duplicate fails; where the host pipelines, only after this call.
                let ignored = conn.send(RECORD_SEEN, &[Value::Integer(BREAK_PROMOTE)]);
                log(
                    Level::Info,
                    &format!("faulty: promote sent a duplicate insert: {ignored:?}"),
                );
            }
            log(Level::Info, "faulty: promoted to live");
            Ok(())
        })
    }

    fn remove_target() -> Result<(), String> {
        log(Level::Info, "faulty: target removed");
        Ok(())
    }
}

/// Records one event in `seen`, then faults as its class asks.
fn handle_event(event: &Event) -> Result<(), String> {
    let id = event.id;
    CONNECTION.with_borrow(|conn| {
        let conn = conn.as_ref().ok_or(NO_CONNECTION)?;
        conn.send(RECORD_SEEN, &[Value::Integer(id)])
            .map_err(|error| format!("event {id}: recording it failed: {error:?}"))
    })?;
    match event.event_class.as_str() {
        "Trap" => trap(),
        "Panic" => panic!("faulty: asked to panic at event {id}"),
        "Fail" => Err("asked to fail".to_owned()),
        "FailWhenReplaying" if REPLAYING.get() => Err("asked to fail while replaying".to_owned()),
        "FailWhenLive" if !REPLAYING.get() => Err("asked to fail while live".to_owned()),
        "Swallow" => swallow(id),
        "SendDuplicate" => send_duplicate(id),
        "BreakPromote" => CONNECTION.with_borrow(|conn| {
            let conn = conn.as_ref().ok_or(NO_CONNECTION)?;
            conn.send(RECORD_SEEN, &[Value::Integer(BREAK_PROMOTE)])
                .map_err(|error| format!("event {id}: marking the promote failed: {error:?}"))
        }),
        "SwallowWhenReplaying" if REPLAYING.get() => swallow(id),
        "Loop" => spin(),
        "Slow" => {
            dawdle();
            Ok(())
        }
        "Alloc" => hoard(),
        _ => Ok(()),
    }
}

/// Inserts event `id` into `seen` a second time and ignores the unique violation, as a
/// projector does that catches a database error and carries on; then records nothing else.
fn swallow(id: i64) -> Result<(), String> {
    CONNECTION.with_borrow(|conn| {
        let conn = conn.as_ref().ok_or(NO_CONNECTION)?;
        let ignored = conn.execute(RECORD_SEEN, &[Value::Integer(id)]);
        log(
            Level::Info,
            &format!("faulty: ignoring the answer to a duplicate insert: {ignored:?}"),
        );
        Ok(())
    })
}

/// Sends the event's id to `seen` a second time and never asks how it went.
fn send_duplicate(id: i64) -> Result<(), String> {
    CONNECTION.with_borrow(|conn| {
        let conn = conn.as_ref().ok_or(NO_CONNECTION)?;
        let ignored = conn.send(RECORD_SEEN, &[Value::Integer(id)]);
        log(
            Level::Info,
            &format!("faulty: sent a duplicate insert, answer so far: {ignored:?}"),
        );
        Ok(())
    })
}

/// Traps with the `unreachable` instruction.
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    // Only so that the crate also checks on the build machine; the guest is always wasm32.
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// Spins forever; `black_box` keeps the optimiser from reasoning the loop away.
fn spin() -> ! {
    let mut turns: u64 = 0;
    loop {
        turns = core::hint::black_box(turns.wrapping_add(1));
    }
}

/// Spins for 50 ms of the monotonic clock: one event well inside any deadline a test sets, a
/// run of many of them well past it.
fn dawdle() {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(50) {
        core::hint::spin_loop();
    }
}

/// Allocates 1 MiB blocks and keeps them all, until the host's memory cap stops it (the
/// failed `memory.grow` makes the allocator abort, which traps).
fn hoard() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // A non-zero fill writes every byte, so each block really occupies memory.
        hoard.push(core::hint::black_box(vec![0xA5; MIB]));
    }
}

bindings::export!(Faulty with_types_in bindings);
