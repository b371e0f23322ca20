//! A broken guest: the whole zdr:projector world plus an export named `check` that is not the
//! checked-projector world's (`func() -> result<_, string>`) but `func() -> u32`. The host must
//! refuse the component when it is deployed or put in a replay, not call the export later.

mod bindings {
    //! Bindings for the contract's world plus a wrongly typed `check`, written inline against
    //! the repository's WIT.
    #![allow(
        clippy::too_many_arguments,
        reason = "the generated `handle-event` export takes the event record's fields flattened"
    )]
    wit_bindgen::generate!({
        path: "../../../wit/0.1.0",
        inline: r"
            package evil:check;

            world projector-with-a-wrong-check {
                include zdr:projector/projector@0.1.0;
                export check: func() -> u32;
            }
        ",
        world: "projector-with-a-wrong-check",
        generate_all,
    });
}

use bindings::zdr::projector::database::Connection;
use bindings::zdr::projector::types::{Description, Event, Table};

/// The exported projector: valid in every export but `check`.
struct WrongCheck;

impl bindings::Guest for WrongCheck {
    fn describe() -> Description {
        Description {
            name: "balance".to_owned(),
            version: "check-wrong-type".to_owned(),
            tables: vec![Table {
                name: "notes".to_owned(),
                ddl: vec!["CREATE TABLE notes (id INTEGER PRIMARY KEY)".to_owned()],
            }],
            handles: Vec::new(),
        }
    }

    fn use_connection(_conn: Connection) {}

    fn for_replay() {}

    fn handle_event(_event: Event) -> Result<(), String> {
        Ok(())
    }

    fn promote() -> Result<(), String> {
        Ok(())
    }

    fn remove_target() -> Result<(), String> {
        Ok(())
    }

    fn check() -> u32 {
        7
    }
}

bindings::export!(WrongCheck with_types_in bindings);
