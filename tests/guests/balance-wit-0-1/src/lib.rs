//! The bank example's `balance` projector, version 1, built against the first contract,
//! `zdr:projector@0.1.0` (the frozen copy in `wit/0.1.0/`): one `handle-event` call per event.
//!
//! It is `plugins/balance-v1` as it was before the bundled projectors moved to 0.2.0, kept so
//! the tests prove that a component built against 0.1.0 still deploys, replays and serves
//! beside 0.2.0 ones. Do not update it to a newer contract.
//!
//! This crate owns the version-1 table layout and its SQL, and the glue to the `projector`
//! world: the connection the host hands over, the replay flag and logging. What the events
//! mean is read by `balance-common`. SQL uses numbered placeholders (`$1`, `$2`), which the
//! host rewrites for its backend.

mod bindings {
    //! Bindings for the `projector` world of `zdr:projector@0.1.0`.
    #![allow(
        clippy::too_many_arguments,
        reason = "the generated `handle-event` export takes the event record's fields flattened"
    )]
    wit_bindgen::generate!({
        world: "projector",
        path: "../../../wit/0.1.0",
    });
}

use std::cell::{Cell, RefCell};

use balance_common::{BalanceEvent, Change, RawEvent};
use bindings::zdr::projector::database::Connection;
use bindings::zdr::projector::log::{Level, log};
use bindings::zdr::projector::types::{Description, Error, Event, Table, Value};

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

/// The answer to `handle-event` before the host has handed over a connection.
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

    fn handle_event(event: Event) -> Result<(), String> {
        CONNECTION.with_borrow(|conn| {
            let conn = conn.as_ref().ok_or(NO_CONNECTION)?;
            let raw = RawEvent {
                id: event.id,
                aggregate_uuid: event.aggregate_uuid.as_deref(),
                event_class: &event.event_class,
                properties: &event.event_properties,
            };
            match balance_common::parse(&raw)? {
                Some(parsed) => apply(conn, event.id, &parsed),
                None => Ok(()),
            }
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

/// Applies one parsed event to the `balances` table.
fn apply(conn: &Connection, event_id: i64, event: &BalanceEvent) -> Result<(), String> {
    let account = Value::Text(event.account.clone());
    let (sql, params) = match &event.change {
        Change::Opened { name } => {
            let params = [account, Value::Text(name.clone())];
            execute(conn, event_id, OPEN_ACCOUNT, &params)?;
            return Ok(());
        }
        Change::Added { amount } => (ADD_MONEY, [Value::Integer(*amount), account]),
        Change::Subtracted { amount } => (SUBTRACT_MONEY, [Value::Integer(*amount), account]),
    };
    match execute(conn, event_id, sql, &params)? {
        0 => Err(balance_common::no_account(&event.account, event_id)),
        _ => Ok(()),
    }
}

/// Runs one statement, turning a database error into a message that names the event.
fn execute(conn: &Connection, event_id: i64, sql: &str, params: &[Value]) -> Result<u64, String> {
    conn.execute(sql, params)
        .map_err(|error| format!("event {event_id}: {}", describe_error(&error)))
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
