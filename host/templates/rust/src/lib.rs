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
        reason = "generated code for the event record"
    )]
    wit_bindgen::generate!({ world: "projector", path: "wit" });
}

use std::cell::RefCell;

use bindings::zdr::projector::database::Connection;
use bindings::zdr::projector::log::{Level, log};
use bindings::zdr::projector::types::{Description, Error, Event, EventFailure, Table, Value};

/// The table, written with its logical name; the host rewrites it for each target.
const CREATE_TABLE: &str =
    "CREATE TABLE {{ident}}_counts (event_class TEXT PRIMARY KEY, events INTEGER NOT NULL)";
/// Makes sure class `$1` has its row.
const ADD_CLASS: &str = "INSERT INTO {{ident}}_counts (event_class, events) VALUES ($1, 0) \
     ON CONFLICT (event_class) DO NOTHING";
/// Counts one event of class `$1`: changes exactly one row.
const COUNT_EVENT: &str = "UPDATE {{ident}}_counts SET events = events + 1 WHERE event_class = $1";

thread_local! {
    // Wasm guests are single-threaded: a thread-local holds the instance's handle.
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// What the projector needs from its database: one statement at a time. The host's
/// [`Connection`] is one; the tests use a fake that records what it is asked.
trait Database {
    /// Runs one write whose row count is not needed; its failure may come back later.
    fn send(&self, sql: &str, params: &[Value]) -> Result<(), Error>;
    /// Runs one statement with bound parameters; returns the rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, Error>;
}

impl Database for Connection {
    fn send(&self, sql: &str, params: &[Value]) -> Result<(), Error> {
        Connection::send(self, sql, params)
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, Error> {
        Connection::execute(self, sql, params)
    }
}

/// Applies events in order; a failure names the event by its position in `events`.
///
/// When a call fails, the host rolls it back and runs its events again one at a time, so the
/// projector keeps nothing in memory that its tables do not also hold.
fn project_all(db: &impl Database, events: &[Event]) -> Result<(), EventFailure> {
    for (index, event) in events.iter().enumerate() {
        project(db, event).map_err(|message| EventFailure {
            // The host gives at most a few hundred events per call.
            index: u32::try_from(index).unwrap_or(u32::MAX),
            message,
        })?;
    }
    Ok(())
}

/// Folds one event into the read model: the projector's logic, free of the host's glue.
fn project(db: &impl Database, event: &Event) -> Result<(), String> {
    let failed = |error: Error| format!("event {}: {error:?}", event.id);
    let class = [Value::Text(event.event_class.clone())];
    // `send` for a write whose row count is not needed: the host may answer its failure later.
    db.send(ADD_CLASS, &class).map_err(failed)?;
    // `execute` where the row count is checked.
    match db.execute(COUNT_EVENT, &class).map_err(failed)? {
        1 => Ok(()),
        changed => Err(format!(
            "event {}: counted {changed} rows for class {}, not 1",
            event.id, event.event_class
        )),
    }
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

    fn handle_events(events: Vec<Event>) -> Result<(), EventFailure> {
        CONNECTION.with_borrow(|conn| match conn {
            Some(conn) => project_all(conn, &events),
            None => Err(EventFailure {
                index: 0,
                message: "use-connection was not called".to_owned(),
            }),
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

    /// A database that records every statement and keeps the rows the statements stand for.
    #[derive(Default)]
    struct FakeDatabase {
        statements: RefCell<Vec<(&'static str, String, Vec<Value>)>>,
        counts: RefCell<BTreeMap<String, i64>>,
        /// A statement about this class fails with the error.
        fail: Option<(&'static str, Error)>,
    }

    impl FakeDatabase {
        fn run(&self, kind: &'static str, sql: &str, params: &[Value]) -> Result<u64, Error> {
            let [Value::Text(class)] = params else {
                panic!("unexpected parameters {params:?}");
            };
            if let Some((fail_class, error)) = &self.fail
                && class == fail_class
            {
                return Err(error.clone());
            }
            self.statements
                .borrow_mut()
                .push((kind, sql.to_owned(), params.to_vec()));
            let mut counts = self.counts.borrow_mut();
            match (sql, counts.get_mut(class)) {
                (ADD_CLASS, _) => {
                    counts.entry(class.clone()).or_default();
                    Ok(1)
                }
                (COUNT_EVENT, Some(count)) => {
                    *count += 1;
                    Ok(1)
                }
                (COUNT_EVENT, None) => Ok(0),
                _ => panic!("unexpected statement {sql:?}"),
            }
        }
    }

    impl Database for FakeDatabase {
        fn send(&self, sql: &str, params: &[Value]) -> Result<(), Error> {
            self.run("send", sql, params).map(|_| ())
        }

        fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, Error> {
            self.run("execute", sql, params)
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
        project_all(&db, &[event(1, "AccountOpened"), event(2, "MoneyAdded")]).unwrap();
        project_all(&db, &[event(3, "MoneyAdded")]).unwrap();
        let counts: Vec<_> = db.counts.into_inner().into_iter().collect();
        assert_eq!(
            counts,
            [
                ("AccountOpened".to_owned(), 1),
                ("MoneyAdded".to_owned(), 2)
            ]
        );
        let kinds: Vec<_> = db.statements.borrow().iter().map(|s| s.0).collect();
        assert_eq!(
            kinds,
            ["send", "execute"].repeat(3),
            "a send and an execute per event"
        );
    }

    #[test]
    fn a_database_error_names_the_event_and_its_position() {
        let db = FakeDatabase {
            fail: Some(("Broken", Error::Denied("table not declared".to_owned()))),
            ..FakeDatabase::default()
        };
        let events = [
            event(41, "MoneyAdded"),
            event(42, "Broken"),
            event(43, "MoneyAdded"),
        ];
        let failure = project_all(&db, &events).unwrap_err();
        assert_eq!(failure.index, 1, "{failure:?}");
        assert!(failure.message.starts_with("event 42: "), "{failure:?}");
        assert!(
            failure.message.contains("table not declared"),
            "{failure:?}"
        );
    }
}
