//! A test guest: the `balance` projector in version 2's table layout, deployed as version 3,
//! that gets one account's balance wrong: an account whose uuid ends in `-00000` (the first
//! account each test generator opens) opens with a balance of 1 instead of 0.
//!
//! It lets the end-to-end tests prove that `zdr replay diff` names the wrong account with both
//! values, that `promote --verify` refuses it, and that `rollback` undoes a forced promote.
//! Event parsing comes from `plugins/balance-common`; the SQL is version 2's but for the
//! opening balance.
//!
//! It implements the `checked-projector` world: its `check` (run by `promote --verify` on the
//! clone) refuses a read model where an account has no holder's name, and first makes sure the
//! host does not let a check write. A nameless account named `acct-trap` makes it trap instead
//! (a panic is a trap in a guest), so the tests can see the host contain a check that crashes.

mod bindings {
    //! Bindings for the `checked-projector` world, generated from the repository's WIT.
    #![allow(
        clippy::too_many_arguments,
        reason = "the generated `handle-event` export takes the event record's fields flattened"
    )]
    wit_bindgen::generate!({
        world: "checked-projector",
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
const VERSION: &str = "3";

/// The DDL of the `balances` table, as in version 2.
const CREATE_BALANCES: &str = "CREATE TABLE balances (account_uuid TEXT PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL, transaction_count INTEGER NOT NULL DEFAULT 0, last_activity TEXT)";
/// The index by holder's name, as in version 2.
const INDEX_BY_NAME: &str = "CREATE INDEX balances_by_name ON balances (name)";
/// Opens an account: `$1` account, `$2` holder's name, `$3` the event's time, `$4` the
/// (wrong) opening balance.
const OPEN_ACCOUNT: &str = "INSERT INTO balances (account_uuid, name, balance, transaction_count, last_activity) VALUES ($1, $2, $4, 0, $3)";
/// The suffix of the account uuids whose opening balance this version gets wrong.
const WRONG_ACCOUNT_SUFFIX: &str = "-00000";
/// Adds money: `$1` amount, `$2` the event's time, `$3` account.
const ADD_MONEY: &str = "UPDATE balances SET balance = balance + $1, transaction_count = transaction_count + 1, last_activity = $2 WHERE account_uuid = $3";
/// Subtracts money: `$1` amount, `$2` the event's time, `$3` account.
const SUBTRACT_MONEY: &str = "UPDATE balances SET balance = balance - $1, transaction_count = transaction_count + 1, last_activity = $2 WHERE account_uuid = $3";

/// The accounts without a holder's name, the first few: what `check` looks for.
const NAMELESS: &str =
    "SELECT account_uuid FROM balances WHERE name = '' ORDER BY account_uuid LIMIT 5";
/// The nameless account whose presence makes `check` trap.
const TRAP_ACCOUNT: &str = "acct-trap";
/// A write `check` tries, which the host must deny.
const WRITE_IN_CHECK: &str = "UPDATE balances SET balance = balance WHERE account_uuid = ''";

/// The answer to `handle-event` before the host has handed over a connection.
const NO_CONNECTION: &str = "no connection: use-connection was not called";

thread_local! {
    // Wasm guests are single-threaded; thread-locals keep the per-instance state without a lock.
    /// The handle to this instance's target, set once by `use-connection`.
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
    /// Whether this instance replays history into a clone (it has no side effects to skip).
    static REPLAYING: Cell<bool> = const { Cell::new(false) };
}

/// The exported projector, wrong on one account.
struct BalanceOff;

impl bindings::Guest for BalanceOff {
    fn describe() -> Description {
        Description {
            name: NAME.to_owned(),
            version: VERSION.to_owned(),
            tables: vec![Table {
                name: "balances".to_owned(),
                ddl: vec![CREATE_BALANCES.to_owned(), INDEX_BY_NAME.to_owned()],
            }],
            handles: balance_common::HANDLED_CLASSES.map(str::to_owned).to_vec(),
        }
    }

    fn use_connection(conn: Connection) {
        CONNECTION.set(Some(conn));
    }

    fn for_replay() {
        REPLAYING.set(true);
        log(
            Level::Debug,
            "balance v3 (off by one): replaying, side effects off",
        );
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
                Some(parsed) => apply(conn, &event, &parsed),
                None => Ok(()),
            }
        })
    }

    fn promote() -> Result<(), String> {
        let was_replaying = REPLAYING.replace(false);
        log(
            Level::Info,
            &format!("balance v3 (off by one): promoted to live (was replaying: {was_replaying})"),
        );
        Ok(())
    }

    fn remove_target() -> Result<(), String> {
        log(Level::Info, "balance v3 (off by one): target removed");
        Ok(())
    }

    fn check() -> Result<(), String> {
        CONNECTION.with_borrow(|conn| {
            let conn = conn.as_ref().ok_or(NO_CONNECTION)?;
            match conn.execute(WRITE_IN_CHECK, &[]) {
                Err(Error::Denied(_)) => {}
                Err(other) => {
                    return Err(format!(
                        "a write in check failed, but was not denied: {}",
                        describe_error(&other)
                    ));
                }
                Ok(_) => return Err("the host let check write".to_owned()),
            }
            let nameless = conn
                .query(NAMELESS, &[])
                .map_err(|error| format!("reading the balances: {}", describe_error(&error)))?;
            let accounts: Vec<String> = nameless
                .rows
                .iter()
                .filter_map(|row| match row.first() {
                    Some(Value::Text(account)) => Some(account.clone()),
                    _ => None,
                })
                .collect();
            if accounts.iter().any(|account| account == TRAP_ACCOUNT) {
                panic!("check traps on purpose: {TRAP_ACCOUNT} is in the read model");
            }
            if accounts.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "accounts without a holder's name: {}",
                    accounts.join(", ")
                ))
            }
        })
    }
}

/// Applies one parsed event to the `balances` table; every event stamps `last_activity`
/// with the time the event was recorded.
fn apply(conn: &Connection, stored: &Event, event: &BalanceEvent) -> Result<(), String> {
    let event_id = stored.id;
    let account = Value::Text(event.account.clone());
    let at = Value::Text(stored.created_at.clone());
    let (sql, params) = match &event.change {
        Change::Opened { name } => {
            let opening = i64::from(event.account.ends_with(WRONG_ACCOUNT_SUFFIX));
            let params = [
                account,
                Value::Text(name.clone()),
                at,
                Value::Integer(opening),
            ];
            execute(conn, event_id, OPEN_ACCOUNT, &params)?;
            return Ok(());
        }
        Change::Added { amount } => (ADD_MONEY, [Value::Integer(*amount), at, account]),
        Change::Subtracted { amount } => (SUBTRACT_MONEY, [Value::Integer(*amount), at, account]),
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

bindings::export!(BalanceOff with_types_in bindings);
