//! Storage: the database that holds the event store, zdr's own `zdr_*` tables and every
//! projector's read-model tables.
//!
//! Today the backend is SQLite (embedded, WAL mode), driven synchronously with rusqlite on a
//! blocking thread: a batch (read events, call the guest, run its statements, checkpoint,
//! commit) runs on one thread without a hop per statement, which is what makes it fast.
//! Nothing here knows about Wasm: a guest's statements arrive through [`GuestConnection`].

mod sqlite;
mod value;

pub use sqlite::{Db, ReplayRow, RunLock, SqliteConnection};
pub use value::{DbError, RowSet, Value};

/// The most rows one guest query may return; more answers `limit-exceeded`.
pub const MAX_QUERY_ROWS: usize = 10_000;

/// A guest's database handle as the runtime sees it: one target's tables, inside the current
/// batch transaction. Statements pass the SQL guard before they reach the database.
pub trait GuestConnection: Send {
    /// Runs one INSERT, UPDATE or DELETE and returns the rows changed.
    ///
    /// # Errors
    /// [`DbError`]: denied by the guard, invalid SQL, a constraint, a limit, or another failure.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;

    /// Runs one SELECT and returns its rows (at most [`MAX_QUERY_ROWS`]).
    ///
    /// # Errors
    /// As [`GuestConnection::execute`].
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<RowSet, DbError>;
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL is not one zdr understands.
    #[error("unsupported database url {0:?}: use sqlite://PATH (e.g. sqlite://zdr.db)")]
    Url(String),
    /// The database could not be opened.
    #[error("cannot open database {url}: {source}")]
    Open {
        /// The URL as given.
        url: String,
        /// The driver's error.
        source: rusqlite::Error,
    },
    /// zdr's tables are missing.
    #[error("database {0} is not initialised for zdr: run `zdr init` first")]
    NotInitialised(String),
    /// zdr's tables were written by a newer zdr.
    #[error(
        "database schema version {found} is newer than this zdr supports ({supported}); upgrade zdr"
    )]
    SchemaTooNew {
        /// The version in `zdr_meta`.
        found: i64,
        /// The newest this binary knows.
        supported: i64,
    },
    /// An existing `stored_events` table lacks a required column.
    #[error(
        "the existing stored_events table has no column {0:?}; zdr expects Spatie's stored_events schema"
    )]
    EventTable(String),
    /// A driver error during an operation.
    #[error("{context}: {source}")]
    Sqlite {
        /// What zdr was doing.
        context: String,
        /// The driver's error.
        source: rusqlite::Error,
    },
    /// The database holds something zdr cannot interpret.
    #[error("corrupt zdr state: {0}")]
    Corrupt(String),
    /// A read-model DDL statement was refused by the guard.
    #[error("table DDL refused: {0}")]
    Ddl(String),
}

/// Adds what zdr was doing to a driver error.
pub(crate) trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn context(self, what: impl Into<String>) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite {
            context: what.into(),
            source,
        })
    }
}
