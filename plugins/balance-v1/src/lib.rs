//! The bank example's `balance` projector, version 1: one row per account with its balance.
//!
//! This crate owns the version-1 table layout and its SQL, and the glue to the `projector`
//! world: the connection the host hands over, the replay flag and logging. What the events
//! mean is read by `balance-common`. SQL uses numbered placeholders (`$1`, `$2`), which the
//! host rewrites for its backend.

mod bindings {
    //! Bindings for the `projector` world of `zdr:projector@0.2.0`, generated from the
    //! repository's WIT.
    #![allow(
        clippy::too_many_arguments,
        reason = "generated code for the event record"
    )]
    wit_bindgen::generate!({
        world: "projector",
        path: "../../wit",
        // Statement parameters borrow the projector's strings (`ValueParam<'_>`) instead of
        // owning copies of them: no allocation per value sent.
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });
}

use std::cell::{Cell, RefCell};

use balance_common::{BalanceEvent, Change, RawEvent};
use bindings::zdr::projector::database::Connection;
use bindings::zdr::projector::log::{Level, log};
use bindings::zdr::projector::types::{
    Description, Error, Event, EventFailure, Table, ValueParam as Value,
};

/// The projector's name, shared by all its versions.
const NAME: &str = "balance";
/// This build's version.
const VERSION: &str = "1";

/// The DDL of the `balances` table, version 1.
const CREATE_BALANCES: &str = "CREATE TABLE balances (account_uuid TEXT PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL)";
/// Opens an account: `$1` account, `$2` holder's name.
const OPEN_ACCOUNT: &str = "INSERT INTO balances (account_uuid, name, balance) VALUES ($1, $2, 0)";
/// Adds money: `$1` amount, `$2` account.
const ADD_MONEY: &str = "UPDATE balances SET balance = balance + $1 WHERE account_uuid = $2";
/// Subtracts money: `$1` amount, `$2` account.
const SUBTRACT_MONEY: &str = "UPDATE balances SET balance = balance - $1 WHERE account_uuid = $2";

/// The answer to `handle-events` before the host has handed over a connection.
const NO_CONNECTION: &str = "no connection: use-connection was not called";

thread_local! {
    // Wasm guests are single-threaded; thread-locals keep the per-instance state without a lock.
    /// The handle to this instance's target, set once by `use-connection`.
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
    /// Whether this instance replays history into a clone (it has no side effects to skip).
    static REPLAYING: Cell<bool> = const { Cell::new(false) };
}

/// The exported projector.
struct BalanceV1;

impl bindings::Guest for BalanceV1 {
    fn describe() -> Description {
        Description {
            name: NAME.to_owned(),
            version: VERSION.to_owned(),
            tables: vec![Table {
                name: "balances".to_owned(),
                ddl: vec![CREATE_BALANCES.to_owned()],
            }],
            handles: balance_common::HANDLED_CLASSES.map(str::to_owned).to_vec(),
        }
    }

    fn use_connection(conn: Connection) {
        CONNECTION.set(Some(conn));
    }

    fn for_replay() {
        REPLAYING.set(true);
        log(Level::Debug, "balance v1: replaying, side effects off");
    }

    /// Sends the writes of every event without waiting, then flushes once: the host runs
    /// them in one round trip where it pipelines (PostgreSQL). The row counts then show a
    /// deposit or withdrawal whose account did not exist, and the first one names its event.
    fn handle_events(events: Vec<Event>) -> Result<(), EventFailure> {
        CONNECTION.with_borrow(|conn| {
            let conn = conn
                .as_ref()
                .ok_or_else(|| failure(0, NO_CONNECTION.to_owned()))?;
            balance_common::apply_sent(
                &events,
                |event| RawEvent {
                    id: event.id,
                    aggregate_uuid: event.aggregate_uuid.as_deref(),
                    event_class: &event.event_class,
                    properties: &event.event_properties,
                },
                |event, parsed| send_write(conn, event.id, parsed),
                || conn.flush().map_err(|error| describe_error(&error)),
            )
            .map_err(|(index, message)| failure(index, message))
        })
    }

    fn promote() -> Result<(), String> {
        let was_replaying = REPLAYING.replace(false);
        log(
            Level::Info,
            &format!("balance v1: promoted to live (was replaying: {was_replaying})"),
        );
        Ok(())
    }

    fn remove_target() -> Result<(), String> {
        log(Level::Info, "balance v1: target removed");
        Ok(())
    }
}

/// Sends the write of one parsed event to the `balances` table.
fn send_write(conn: &Connection, event_id: i64, event: &BalanceEvent) -> Result<(), String> {
    let account = Value::Text(&event.account);
    let (sql, params) = match &event.change {
        Change::Opened { name } => (OPEN_ACCOUNT, [account, Value::Text(name)]),
        Change::Added { amount } => (ADD_MONEY, [Value::Integer(*amount), account]),
        Change::Subtracted { amount } => (SUBTRACT_MONEY, [Value::Integer(*amount), account]),
    };
    conn.send(sql, &params)
        .map_err(|error| format!("event {event_id}: {}", describe_error(&error)))
}

/// The failure of the event at `index` of a call.
fn failure(index: usize, message: String) -> EventFailure {
    EventFailure {
        // The host gives at most a few hundred events per call.
        index: u32::try_from(index).unwrap_or(u32::MAX),
        message,
    }
}

/// A one-line account of a database error, with its SQLSTATE where there is one.
fn describe_error(error: &Error) -> String {
    let (kind, message, sqlstate) = match error {
        Error::Denied(message) => ("denied", message, None),
        Error::LimitExceeded(message) => ("limit exceeded", message, None),
        Error::InvalidSql(failure) => ("invalid sql", &failure.message, failure.sqlstate.as_ref()),
        Error::Constraint(failure) => ("constraint", &failure.message, failure.sqlstate.as_ref()),
        Error::Other(failure) => (
            "database error",
            &failure.message,
            failure.sqlstate.as_ref(),
        ),
    };
    match sqlstate {
        Some(code) => format!("{kind}: {message} (SQLSTATE {code})"),
        None => format!("{kind}: {message}"),
    }
}

bindings::export!(BalanceV1 with_types_in bindings);
