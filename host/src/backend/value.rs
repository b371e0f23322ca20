//! The values, row sets and errors that cross the boundary between a guest's database handle
//! and a storage backend. They mirror the WIT `types` interface but know nothing about Wasm,
//! so the backends stay free of wasmtime and the runtime stays free of drivers.

/// One SQL value: a bound parameter or a result cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Blob(Vec<u8>),
    /// A boolean; stored as 0/1 where the backend has no boolean type.
    Boolean(bool),
    /// A value the contract cannot carry; the string names the database type.
    Unsupported(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Integer(v) => write!(f, "{v}"),
            Value::Real(v) => write!(f, "{v}"),
            Value::Text(v) => f.write_str(v),
            Value::Blob(v) => write!(f, "<{} bytes>", v.len()),
            Value::Boolean(v) => write!(f, "{v}"),
            Value::Unsupported(t) => write!(f, "<{t}>"),
        }
    }
}

/// The result of a query: column names and positional rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowSet {
    /// Column names, in select-list order.
    pub columns: Vec<String>,
    /// One `Vec` per row, one value per column.
    pub rows: Vec<Vec<Value>>,
}

/// The SQLSTATE of a database out of disk space (PostgreSQL's `disk_full`), which the SQLite
/// and MySQL backends give their own "disk full" errors, so that every backend's is told apart
/// the same way ([`DbError::is_out_of_resources`]).
pub const SQLSTATE_DISK_FULL: &str = "53100";

/// The SQLSTATE of a database out of memory (PostgreSQL's `out_of_memory`), given likewise.
pub const SQLSTATE_OUT_OF_MEMORY: &str = "53200";

/// Why a guest's statement failed: the closed set the WIT `error` variant carries.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DbError {
    /// Refused by the SQL guard, or the handle was revoked.
    #[error("denied: {0}")]
    Denied(String),
    /// Unparsable SQL, or SQL the database rejected for its syntax or names.
    #[error("invalid sql: {message}")]
    InvalidSql {
        /// What the parser or database said.
        message: String,
        /// The SQLSTATE, where the backend has one.
        sqlstate: Option<String>,
    },
    /// A unique, not-null, check or foreign-key constraint was violated.
    #[error("constraint violated: {message}")]
    Constraint {
        /// What the database said.
        message: String,
        /// The SQLSTATE, where the backend has one.
        sqlstate: Option<String>,
    },
    /// A bound the host enforces was hit (statement size, parameters, rows returned).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// Any other database failure.
    #[error("database error: {message}")]
    Other {
        /// What the database said.
        message: String,
        /// The SQLSTATE, where the backend has one.
        sqlstate: Option<String>,
    },
}

impl DbError {
    /// The SQLSTATE the database gave, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            DbError::InvalidSql { sqlstate, .. }
            | DbError::Constraint { sqlstate, .. }
            | DbError::Other { sqlstate, .. } => sqlstate.as_deref(),
            DbError::Denied(_) | DbError::LimitExceeded(_) => None,
        }
    }

    /// Whether the statement failed for a reason that may pass if the transaction is tried
    /// again: a serialization failure, a deadlock, or a lock not granted in time (SQLSTATE
    /// 40001, 40P01, 55P03).
    pub fn is_transient(&self) -> bool {
        matches!(self.sqlstate(), Some("40001" | "40P01" | "55P03"))
    }

    /// Whether the statement failed because the database ran out of space or memory
    /// (SQLSTATE class 53, which the SQLite and MySQL backends give their own codes for):
    /// the database's failure, not the statement's.
    pub fn is_out_of_resources(&self) -> bool {
        self.sqlstate().is_some_and(|code| code.starts_with("53"))
    }

    /// Whether the statement failed because the connection broke (SQLSTATE class 08, or the
    /// server shutting down or terminating the session): the connection's failure, not the
    /// statement's.
    pub fn is_connection_lost(&self) -> bool {
        self.sqlstate().is_some_and(|code| {
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        })
    }
}

impl From<crate::sandbox::GuardError> for DbError {
    fn from(err: crate::sandbox::GuardError) -> Self {
        use crate::sandbox::GuardError;
        match err {
            GuardError::Denied(reason) => DbError::Denied(reason),
            GuardError::InvalidSql(message) => DbError::InvalidSql {
                message,
                sqlstate: None,
            },
            GuardError::LimitExceeded(reason) => DbError::LimitExceeded(reason),
        }
    }
}
