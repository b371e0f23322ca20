//! A test guest that runs the SQL its events carry and records how the host answered.
//!
//! The end-to-end tests append `Probe` events holding a statement, its mode and its
//! parameters; this projector runs the statement through its connection and writes the
//! outcome to `probe_results`, so a test can check what the host's SQL guard allowed or
//! denied while the host kept running. A refused or failing probe is an outcome, never an
//! error; only a failure to record it is. `ProbeNote` events insert into `probe_notes`, a
//! second declared table that probes can read or write. Other events are ignored.
//!
//! A probe event's properties: `{"sql": "...", "mode": "execute" | "query", "params": [...]}`.
//! `mode` defaults to `execute` and `params` to none. Parameters map from JSON as: null,
//! boolean, integer, other numbers as real, string as text; `{"blob": [bytes]}` is a blob and
//! `{"unsupported": "type"}` an `unsupported` value. The outcome is `ok` (detail: rows
//! changed for `execute`, rows returned for `query`) or the error's kind: `denied`,
//! `invalid-sql`, `constraint`, `limit-exceeded`, `other` (detail: its message).

mod bindings {
    //! Bindings for the `projector` world, generated from the repository's WIT.
    #![allow(
        clippy::too_many_arguments,
        reason = "the generated `handle-event` export takes the event record's fields flattened"
    )]
    wit_bindgen::generate!({
        world: "projector",
        path: "../../../wit/0.1.0",
    });
}

use std::cell::RefCell;

use bindings::zdr::projector::database::Connection;
use bindings::zdr::projector::log::{Level, log};
use bindings::zdr::projector::types::{Description, Error, Event, Table, Value};
use serde_json::{Map, Value as Json};

/// The DDL of the table of probe outcomes.
const CREATE_RESULTS: &str =
    "CREATE TABLE probe_results (event_id INTEGER PRIMARY KEY, outcome TEXT NOT NULL, detail TEXT)";
/// The DDL of the table of notes.
const CREATE_NOTES: &str = "CREATE TABLE probe_notes (id INTEGER PRIMARY KEY, note TEXT)";
/// Records one probe's outcome: `$1` event id, `$2` outcome, `$3` detail.
const RECORD_OUTCOME: &str =
    "INSERT INTO probe_results (event_id, outcome, detail) VALUES ($1, $2, $3)";
/// Records one note: `$1` event id, `$2` the note.
const RECORD_NOTE: &str = "INSERT INTO probe_notes (id, note) VALUES ($1, $2)";

/// The answer to `handle-event` before the host has handed over a connection.
const NO_CONNECTION: &str = "no connection: use-connection was not called";

thread_local! {
    // Wasm guests are single-threaded; a thread-local keeps the handle without a lock.
    /// The handle to this instance's target, set once by `use-connection`.
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// The exported projector.
struct SqlProbe;

impl bindings::Guest for SqlProbe {
    fn describe() -> Description {
        Description {
            name: "sql-probe".to_owned(),
            version: "1".to_owned(),
            tables: vec![
                Table {
                    name: "probe_results".to_owned(),
                    ddl: vec![CREATE_RESULTS.to_owned()],
                },
                Table {
                    name: "probe_notes".to_owned(),
                    ddl: vec![CREATE_NOTES.to_owned()],
                },
            ],
            handles: Vec::new(),
        }
    }

    fn use_connection(conn: Connection) {
        CONNECTION.set(Some(conn));
    }

    fn for_replay() {
        log(Level::Debug, "sql-probe: replaying");
    }

    fn handle_event(event: Event) -> Result<(), String> {
        CONNECTION.with_borrow(|conn| {
            let conn = conn.as_ref().ok_or(NO_CONNECTION)?;
            match short_class(&event.event_class) {
                "Probe" => probe(conn, &event),
                "ProbeNote" => note(conn, &event),
                _ => Ok(()),
            }
        })
    }

    fn promote() -> Result<(), String> {
        log(Level::Info, "sql-probe: promoted to live");
        Ok(())
    }

    fn remove_target() -> Result<(), String> {
        log(Level::Info, "sql-probe: target removed");
        Ok(())
    }
}

/// Runs the probe's statement and records its outcome.
fn probe(conn: &Connection, event: &Event) -> Result<(), String> {
    let id = event.id;
    let properties = properties(event)?;
    let Some(Json::String(sql)) = properties.get("sql") else {
        return Err(format!("probe event {id}: missing string field `sql`"));
    };
    let params = match properties.get("params") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(items)) => items
            .iter()
            .map(to_value)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("probe event {id}: {e}"))?,
        Some(other) => {
            return Err(format!(
                "probe event {id}: `params` must be an array, got {other}"
            ));
        }
    };
    let outcome = match properties.get("mode").and_then(Json::as_str) {
        None | Some("execute") => conn
            .execute(sql, &params)
            .map(|changed| changed.to_string()),
        Some("query") => conn
            .query(sql, &params)
            .map(|rows| rows.rows.len().to_string()),
        Some(other) => {
            return Err(format!(
                "probe event {id}: `mode` must be \"execute\" or \"query\", got {other:?}"
            ));
        }
    };
    let (outcome, detail) = match outcome {
        Ok(count) => ("ok", count),
        Err(error) => kind_and_message(error),
    };
    log(
        Level::Debug,
        &format!("sql-probe: event {id}: {outcome}: {detail}"),
    );
    let row = [
        Value::Integer(id),
        Value::Text(outcome.to_owned()),
        Value::Text(detail),
    ];
    conn.execute(RECORD_OUTCOME, &row)
        .map(drop)
        .map_err(|error| format!("event {id}: recording the probe outcome failed: {error:?}"))
}

/// Inserts the event's note into `probe_notes`, under the event's id.
fn note(conn: &Connection, event: &Event) -> Result<(), String> {
    let id = event.id;
    let Some(Json::String(note)) = properties(event)?.remove("note") else {
        return Err(format!("note event {id}: missing string field `note`"));
    };
    conn.execute(RECORD_NOTE, &[Value::Integer(id), Value::Text(note)])
        .map(drop)
        .map_err(|error| format!("event {id}: recording the note failed: {error:?}"))
}

/// The event's properties as a JSON object.
fn properties(event: &Event) -> Result<Map<String, Json>, String> {
    match serde_json::from_str(&event.event_properties) {
        Ok(Json::Object(properties)) => Ok(properties),
        Ok(_) => Err(format!(
            "event {}: event-properties is not a JSON object",
            event.id
        )),
        Err(e) => Err(format!(
            "event {}: event-properties is not valid JSON: {e}",
            event.id
        )),
    }
}

/// One probe parameter, from its JSON form (see the crate docs).
fn to_value(json: &Json) -> Result<Value, String> {
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Integer(i),
            (None, Some(f)) => Value::Real(f),
            (None, None) => return Err(format!("parameter {n} is not a representable number")),
        },
        Json::String(s) => Value::Text(s.clone()),
        Json::Object(o) => match (o.len(), o.get("blob"), o.get("unsupported")) {
            (1, Some(Json::Array(bytes)), _) => Value::Blob(
                bytes
                    .iter()
                    .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| format!("blob parameter {json} must list bytes 0 to 255"))?,
            ),
            (1, _, Some(Json::String(type_name))) => Value::Unsupported(type_name.clone()),
            _ => {
                return Err(format!(
                    "parameter {json} is not {{\"blob\": [..]}} or {{\"unsupported\": \"..\"}}"
                ));
            }
        },
        Json::Array(_) => {
            return Err(format!(
                "parameter {json} is an array; arrays are not values"
            ));
        }
    })
}

/// The outcome name (the error variant's WIT name) and the message of a database error.
fn kind_and_message(error: Error) -> (&'static str, String) {
    match error {
        Error::Denied(message) => ("denied", message),
        Error::InvalidSql(failure) => ("invalid-sql", failure.message),
        Error::Constraint(failure) => ("constraint", failure.message),
        Error::LimitExceeded(message) => ("limit-exceeded", message),
        Error::Other(failure) => ("other", failure.message),
    }
}

/// The short name of an event class: the last segment after a backslash.
fn short_class(event_class: &str) -> &str {
    match event_class.rfind('\\') {
        Some(at) => &event_class[at + 1..],
        None => event_class,
    }
}

bindings::export!(SqlProbe with_types_in bindings);
