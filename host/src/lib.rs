//! zdr: zero-downtime replays for event-sourcing projectors compiled to WebAssembly components.
//!
//! The layers, each using only those below it:
//!
//! | layer | module | owns |
//! | --- | --- | --- |
//! | 6 | [`cli`] | one file per subcommand; output formatting |
//! | 5 | [`daemon`] | `zdr serve`: a worker per live projector, hot swap, shutdown |
//! | 4 | [`lifecycle`] | deploy and the replay state machine, as compare-and-set |
//! | 3 | [`projection`] | the batch driver: events → guest → rows and checkpoint |
//! | 3 | [`diff`] | comparing a replay's tables with live, in the database |
//! | 3 | [`plugin`] | authoring: manifest, build, scaffold, inspect |
//! | 2 | [`events`], [`runtime`] | event shapes; wasmtime, bindings, guest limits |
//! | 1 | [`backend`], [`sandbox`], [`config`], [`model`], [`machine`] | storage; the SQL guard; settings; shared vocabulary; the replay state machine |

pub mod backend;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod diff;
pub mod events;
pub mod lifecycle;
pub mod machine;
pub mod model;
pub mod plugin;
pub mod projection;
pub mod read_ahead;
pub mod runtime;
pub mod sandbox;
