//! The `{{name}}` projector: counts events per class into `{{ident}}_counts`.
//!
//! Build with `zdr plugin build` (or `cargo build --release --target wasm32-wasip2`), then
//! `zdr projector deploy {{name}} target/wasm32-wasip2/release/{{ident}}.wasm`.
//! Test with `zdr plugin test` (or `cargo test`): the tests run natively, with a fake database
//! in place of the host's connection.

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
use bindings::zdr::projector::types::{Description, Error, Event, Table, Value};

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

/// What the projector needs from its database: one statement at a time. The host's
/// [`Connection`] is one; the tests use a fake that records what it is asked.
trait Database {
    /// Runs one statement with bound parameters; returns the rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, Error>;
}

impl Database for Connection {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, Error> {
        Connection::execute(self, sql, params)
    }
}

/// Folds one event into the read model: the projector's logic, free of the host's glue.
fn project(db: &impl Database, event: &Event) -> Result<(), String> {
    db.execute(COUNT_EVENT, &[Value::Text(event.event_class.clone())])
        .map(|_| ())
        .map_err(|error| format!("event {}: {error:?}", event.id))
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
            project(conn, &event)
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::bindings::Guest as _;
    use super::*;

    /// A database that records every statement and keeps the counts the statements stand for.
    #[derive(Default)]
    struct FakeDatabase {
        statements: RefCell<Vec<(String, Vec<Value>)>>,
        counts: RefCell<BTreeMap<String, i64>>,
        /// When set, every statement fails with this error.
        fail_with: Option<Error>,
    }

    impl Database for FakeDatabase {
        fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, Error> {
            if let Some(error) = &self.fail_with {
                return Err(error.clone());
            }
            self.statements
                .borrow_mut()
                .push((sql.to_owned(), params.to_vec()));
            match (sql, params) {
                (COUNT_EVENT, [Value::Text(class)]) => {
                    *self.counts.borrow_mut().entry(class.clone()).or_default() += 1;
                    Ok(1)
                }
                _ => panic!("unexpected statement {sql:?} with {params:?}"),
            }
        }
    }

    fn event(id: i64, event_class: &str) -> Event {
        Event {
            id,
            aggregate_uuid: Some("11111111-2222-3333-4444-555555555555".to_owned()),
            aggregate_version: Some(id),
            event_version: 1,
            event_class: event_class.to_owned(),
            event_properties: "{}".to_owned(),
            meta_data: "{}".to_owned(),
            created_at: "2026-01-01 00:00:00".to_owned(),
        }
    }

    #[test]
    fn describes_its_one_table() {
        let description = Projector::describe();
        assert_eq!(description.name, "{{name}}");
        assert_eq!(description.tables.len(), 1);
        assert_eq!(description.tables[0].name, "{{ident}}_counts");
        assert_eq!(description.tables[0].ddl, [CREATE_TABLE]);
        assert!(description.handles.is_empty(), "it handles every event");
    }

    #[test]
    fn counts_each_event_under_its_class() {
        let db = FakeDatabase::default();
        for (id, class) in [(1, "AccountOpened"), (2, "MoneyAdded"), (3, "MoneyAdded")] {
            project(&db, &event(id, class)).unwrap();
        }
        let counts: Vec<_> = db.counts.into_inner().into_iter().collect();
        assert_eq!(
            counts,
            [("AccountOpened".to_owned(), 1), ("MoneyAdded".to_owned(), 2)]
        );
        assert_eq!(db.statements.borrow().len(), 3, "one statement per event");
    }

    #[test]
    fn a_database_error_names_the_event() {
        let db = FakeDatabase {
            fail_with: Some(Error::Denied("table not declared".to_owned())),
            ..FakeDatabase::default()
        };
        let error = project(&db, &event(42, "MoneyAdded")).unwrap_err();
        assert!(error.starts_with("event 42: "), "{error}");
        assert!(error.contains("table not declared"), "{error}");
    }
}
