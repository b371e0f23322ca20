//! A broken guest: the zdr:projector world one export short. It imports the real `database`
//! and `log` interfaces and exports every function of the contract with its real types, except
//! `remove-target`. The host must refuse it at deploy time, not fail later when a replay is
//! removed.

mod bindings {
    //! Bindings for the contract's world minus `remove-target`, written inline against the
    //! repository's WIT so the interfaces and types are the real ones.
    #![allow(
        clippy::too_many_arguments,
        reason = "the generated `handle-event` export takes the event record's fields flattened"
    )]
    wit_bindgen::generate!({
        path: "../../../wit/0.1.0",
        inline: r"
            package evil:missing;

            world projector-without-remove {
                import zdr:projector/database@0.1.0;
                import zdr:projector/log@0.1.0;

                use zdr:projector/types@0.1.0.{event, description};
                use zdr:projector/database@0.1.0.{connection};

                export describe: func() -> description;
                export use-connection: func(conn: connection);
                export for-replay: func();
                export handle-event: func(event: event) -> result<_, string>;
                export promote: func() -> result<_, string>;
            }
        ",
        world: "projector-without-remove",
        generate_all,
    });
}

use bindings::zdr::projector::database::Connection;
use bindings::zdr::projector::types::{Description, Event, Table};

/// The exported projector, without `remove-target`.
struct MissingExport;

impl bindings::Guest for MissingExport {
    fn describe() -> Description {
        Description {
            name: "balance".to_owned(),
            version: "missing-export".to_owned(),
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
}

bindings::export!(MissingExport with_types_in bindings);
