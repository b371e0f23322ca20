//! Tests of the guard as a whole, one file per concern; shared fixtures here.

mod allowed;
mod fuzz;
mod hostile;
mod limits;
mod setup;
mod sqlite_exec;

use super::{Dialect, Guard, PhysicalName};

/// The declared tables of the test projector.
pub(super) const TABLES: [&str; 2] = ["balances", "accounts"];

/// A replay clone's guard: SQLite tables `zdr_r_k1__*`, PostgreSQL schema `zdr_r_k1`, MySQL
/// database `zdr_r_k1_0a1b2c3d`.
pub(super) fn clone_guard(dialect: Dialect) -> Guard {
    let tables = TABLES.iter().map(|table| {
        let physical = match dialect {
            Dialect::Sqlite => PhysicalName::unqualified(format!("zdr_r_k1__{table}")),
            Dialect::Postgres => PhysicalName::qualified("zdr_r_k1", *table),
            Dialect::MySql => PhysicalName::qualified("zdr_r_k1_0a1b2c3d", *table),
        };
        ((*table).to_owned(), physical)
    });
    let prefix = match dialect {
        Dialect::Sqlite => Some("zdr_r_k1__".to_owned()),
        Dialect::Postgres | Dialect::MySql => None,
    };
    Guard::new(dialect, tables, prefix)
}

/// The live tables' guard: physical names equal the logical ones.
pub(super) fn live_guard(dialect: Dialect) -> Guard {
    let tables = TABLES
        .iter()
        .map(|table| ((*table).to_owned(), PhysicalName::unqualified(*table)));
    Guard::new(dialect, tables, None)
}
