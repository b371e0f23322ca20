//! The raw side of a guest's handle on SQLite: statements the guard already checked, run on
//! the worker's shared connection under the guest's deadline (the progress handler interrupts
//! them) and the value length cap, each kept prepared on that connection
//! ([`super::held::WorkerConnection`]).

use super::*;

/// The raw side of a guest's handle: runs checked statements on the worker's shared
/// connection, under the guest's deadline and the value length cap.
pub(super) struct SqliteGuestConnection {
    pub(super) conn: SqliteConnection,
    pub(super) deadline: Arc<Deadline>,
}

/// The guest's bounds on a connection for one statement: the deadline the progress handler
/// watches and the longest string or blob SQLite may build. Both are lifted when dropped, so
/// zdr's own statements (which read whole components) run unbounded.
struct Bounded<'a> {
    conn: &'a Connection,
    deadline: &'a Deadline,
    length: std::os::raw::c_int,
}

impl<'a> Bounded<'a> {
    fn new(conn: &'a Connection, deadline: &'a Deadline, until: Instant) -> Self {
        deadline.set(Some(until));
        let cap =
            std::os::raw::c_int::try_from(MAX_VALUE_BYTES).unwrap_or(std::os::raw::c_int::MAX);
        let length = conn
            .set_limit(Limit::SQLITE_LIMIT_LENGTH, cap)
            .unwrap_or(cap);
        Bounded {
            conn,
            deadline,
            length,
        }
    }
}

impl Drop for Bounded<'_> {
    fn drop(&mut self) {
        self.deadline.set(None);
        let _ = self.conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, self.length);
    }
}

impl RawGuestConnection for SqliteGuestConnection {
    fn failure_aborts_transaction(&self) -> bool {
        // A failed statement rolls back only itself; the transaction goes on.
        false
    }

    fn execute(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
    ) -> Result<u64, DbError> {
        let conn = lock(&self.conn);
        let _bounded = Bounded::new(&conn, &self.deadline, deadline);
        let changed = conn
            .with_statement(&checked.sql, |stmt| {
                stmt.execute(rusqlite::params_from_iter(params.iter().map(SqlValue)))
            })
            .and_then(|changed| changed)
            .map_err(db_error)?;
        Ok(changed as u64)
    }

    fn query(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
        out: &mut RowCollector,
    ) -> Result<(), DbError> {
        let conn = lock(&self.conn);
        let _bounded = Bounded::new(&conn, &self.deadline, deadline);
        conn.with_statement(&checked.sql, |stmt| {
            let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
            let width = columns.len();
            out.columns(columns);
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params.iter().map(SqlValue)))
                .map_err(db_error)?;
            while let Some(row) = rows.next().map_err(db_error)? {
                let mut values = Vec::with_capacity(width);
                for i in 0..width {
                    values.push(value_of(row.get_ref(i).map_err(db_error)?));
                }
                out.push(values)?;
            }
            Ok(())
        })
        .map_err(db_error)?
    }
}

pub(super) fn value_of(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Integer(v),
        ValueRef::Real(v) => Value::Real(v),
        ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
        ValueRef::Blob(v) => Value::Blob(v.to_vec()),
    }
}

pub(super) struct SqlValue<'a>(pub(super) &'a Value);

impl ToSql for SqlValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null | Value::Unsupported(_) => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Value::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Value::Boolean(v) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*v))),
        })
    }
}

/// Maps a driver error onto the closed set a guest sees. The driver's message is kept (it
/// names the column or constraint the guest got wrong) but never a host path or secret:
/// SQLite's messages are about the statement only.
fn db_error(err: rusqlite::Error) -> DbError {
    match &err {
        rusqlite::Error::SqliteFailure(e, message) => {
            let message = message.clone().unwrap_or_else(|| e.to_string());
            match e.code {
                ErrorCode::ConstraintViolation => DbError::Constraint {
                    message,
                    sqlstate: None,
                },
                ErrorCode::DiskFull => DbError::Other {
                    message,
                    sqlstate: Some(SQLSTATE_DISK_FULL.into()),
                },
                ErrorCode::OutOfMemory => DbError::Other {
                    message,
                    sqlstate: Some(SQLSTATE_OUT_OF_MEMORY.into()),
                },
                ErrorCode::OperationInterrupted => DbError::LimitExceeded(
                    "the statement was interrupted: it ran past the deadline of the guest's call"
                        .into(),
                ),
                ErrorCode::TooBig => DbError::LimitExceeded(format!(
                    "the statement would build a string, blob or row over {} MiB ({message})",
                    MAX_VALUE_BYTES / (1024 * 1024)
                )),
                _ if message.contains("no such column") || message.contains("syntax error") => {
                    DbError::InvalidSql {
                        message,
                        sqlstate: None,
                    }
                }
                _ => DbError::Other {
                    message,
                    sqlstate: None,
                },
            }
        }
        rusqlite::Error::InvalidParameterCount(..) | rusqlite::Error::InvalidParameterName(_) => {
            DbError::InvalidSql {
                message: err.to_string(),
                sqlstate: None,
            }
        }
        _ => DbError::Other {
            message: err.to_string(),
            sqlstate: None,
        },
    }
}
