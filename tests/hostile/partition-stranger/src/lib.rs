//! A broken guest of the `partitioned-projector` world: valid in every export but
//! `partition-by`, which names a table its `describe` does not declare (and not the one it
//! does). The host must refuse the component when it is deployed or put in a replay: a split
//! replay trusts that list.

mod bindings {
    //! Bindings for the `partitioned-projector` world of `zdr:projector@0.2.0`.
    #![allow(
        clippy::too_many_arguments,
        reason = "generated code for the event record"
    )]
    wit_bindgen::generate!({
        world: "partitioned-projector",
        path: "../../../wit",
    });
}

use bindings::zdr::projector::database::Connection;
use bindings::zdr::projector::types::{Description, Event, EventFailure, Table};

/// The exported projector.
struct PartitionStranger;

impl bindings::Guest for PartitionStranger {
    fn describe() -> Description {
        Description {
            name: "balance".to_owned(),
            version: "partition-stranger".to_owned(),
            tables: vec![Table {
                name: "notes".to_owned(),
                ddl: vec!["CREATE TABLE notes (id TEXT PRIMARY KEY)".to_owned()],
            }],
            handles: Vec::new(),
        }
    }

    fn partition_by() -> Vec<(String, String)> {
        vec![("accounts".to_owned(), "id".to_owned())]
    }

    fn use_connection(_conn: Connection) {}

    fn for_replay() {}

    fn handle_events(_events: Vec<Event>) -> Result<(), EventFailure> {
        Ok(())
    }

    fn promote() -> Result<(), String> {
        Ok(())
    }

    fn remove_target() -> Result<(), String> {
        Ok(())
    }
}

bindings::export!(PartitionStranger with_types_in bindings);
