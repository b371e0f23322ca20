//! The `{{name}}` projector: counts events per class into `{{ident}}_counts`.
//!
//! Build with `zdr plugin build` (or `cargo build --release --target wasm32-wasip2`), then
//! `zdr projector deploy {{name}} target/wasm32-wasip2/release/{{ident}}.wasm`.

mod bindings {
    //! Bindings for the `projector` world, generated from `wit/projector.wit`.
    #![allow(
        clippy::too_many_arguments,
        reason = "the generated `handle-event` export takes the event record's fields flattened"
    )]
    wit_bindgen::generate!({ world: "projector", path: "wit" });
}

use std::cell::RefCell;

use bindings::zdr::projector::database::Connection;
use bindings::zdr::projector::log::{Level, log};
use bindings::zdr::projector::types::{Description, Event, Table, Value};

/// The table, written with its logical name; the host rewrites it for each target.
const CREATE_TABLE: &str =
    "CREATE TABLE {{ident}}_counts (event_class TEXT PRIMARY KEY, events INTEGER NOT NULL)";
/// Counts one event of class `$1`.
const COUNT_EVENT: &str = "INSERT INTO {{ident}}_counts (event_class, events) VALUES ($1, 1) \
     ON CONFLICT (event_class) DO UPDATE SET events = events + 1";

thread_local! {
    // Wasm guests are single-threaded: a thread-local holds the instance's handle.
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

struct Projector;

impl bindings::Guest for Projector {
    fn describe() -> Description {
        Description {
            name: "{{name}}".to_owned(),
            version: "1".to_owned(),
            tables: vec![Table {
                name: "{{ident}}_counts".to_owned(),
                ddl: vec![CREATE_TABLE.to_owned()],
            }],
            // Empty: every event. List event classes here to receive only those.
            handles: Vec::new(),
        }
    }

    fn use_connection(conn: Connection) {
        CONNECTION.set(Some(conn));
    }

    fn for_replay() {
        log(Level::Debug, "{{name}}: replaying, side effects off");
    }

    fn handle_event(event: Event) -> Result<(), String> {
        CONNECTION.with_borrow(|conn| {
            let conn = conn.as_ref().ok_or("use-connection was not called")?;
            conn.execute(COUNT_EVENT, &[Value::Text(event.event_class)])
                .map(|_| ())
                .map_err(|error| format!("event {}: {error:?}", event.id))
        })
    }

    fn promote() -> Result<(), String> {
        Ok(())
    }

    fn remove_target() -> Result<(), String> {
        Ok(())
    }
}

bindings::export!(Projector with_types_in bindings);
