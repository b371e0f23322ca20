//! What the `describe-*` hostile guests share: the bindings of the real `projector` world and
//! [`describe_only!`], which exports a projector whose `describe` returns the given
//! description and whose other exports do nothing.
//!
//! `describe` takes no arguments and the host calls it before any state exists, so each bad
//! description needs a component of its own; this crate keeps each of them to a few lines.

pub mod bindings {
    //! Bindings for the `projector` world, generated from the repository's WIT, with a public
    //! export macro so that each guest crate can export its own projector.
    #![allow(
        clippy::too_many_arguments,
        reason = "the generated `handle-event` export takes the event record's fields flattened"
    )]
    wit_bindgen::generate!({
        world: "projector",
        path: "../../../wit/0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_projector",
        default_bindings_module: "hostile_common::bindings",
    });
}

pub use bindings::Guest;
pub use bindings::zdr::projector::database::Connection;
pub use bindings::zdr::projector::types::{Description, Event, Table};

/// The projector name the `describe-*` guests claim, so that they reach the table checks of
/// `zdr replay create KEY --projector balance=FILE` (the name is checked first).
pub const NAME: &str = "balance";

/// A description named [`NAME`] with version `version` and the given tables, each a name and
/// its DDL statements, handling every event.
pub fn description(version: &str, tables: &[(&str, &[&str])]) -> Description {
    description_of(NAME, version, tables)
}

/// Like [`description`], under the projector name `name`.
pub fn description_of(name: &str, version: &str, tables: &[(&str, &[&str])]) -> Description {
    Description {
        name: name.to_owned(),
        version: version.to_owned(),
        tables: tables
            .iter()
            .map(|(name, ddl)| Table {
                name: (*name).to_owned(),
                ddl: ddl.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect(),
        handles: Vec::new(),
    }
}

/// Exports a projector whose `describe` evaluates `$describe` (a [`Description`]) and whose
/// other exports accept everything and do nothing.
#[macro_export]
macro_rules! describe_only {
    ($describe:expr) => {
        /// The exported projector: only its description matters.
        struct Hostile;

        impl $crate::Guest for Hostile {
            fn describe() -> $crate::Description {
                $describe
            }

            fn use_connection(_conn: $crate::Connection) {}

            fn for_replay() {}

            fn handle_event(_event: $crate::Event) -> Result<(), String> {
                Ok(())
            }

            fn promote() -> Result<(), String> {
                Ok(())
            }

            fn remove_target() -> Result<(), String> {
                Ok(())
            }
        }

        $crate::bindings::export_projector!(Hostile with_types_in $crate::bindings);
    };
}
