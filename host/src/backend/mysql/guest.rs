//! The raw side of a guest's handle on MySQL and MariaDB: statements the guard already checked
//! (placeholders positional, parameters in [`Checked::param_order`]), run on the worker's
//! shared connection, stopped at the guest's deadline with `KILL QUERY`, and result values
//! converted to the guest's types.

use futures_util::TryStreamExt;
use sqlx::mysql::MySqlValueRef;
use sqlx::{Column, Decode, TypeInfo, ValueRef};

use super::*;
use crate::backend::guest::RowCollector;
use crate::backend::server::until_deadline;
use crate::sandbox::Checked;

/// The raw side of a guest's handle: runs checked statements on the worker's shared
/// connection and stops one still running at the guest's deadline.
pub(super) struct MyGuestConnection {
    pub(super) conn: Shared,
    pub(super) id: ConnectionId,
    pub(super) rt: Arc<Rt>,
    /// For the second connection that stops a statement at the deadline.
    pub(super) options: MySqlConnectOptions,
}

/// Stops the statement running on connection `id` with `KILL QUERY`, from a connection of
/// its own: what [`until_deadline`] does at a guest's deadline. The statement then ends with
/// "Query execution was interrupted".
async fn kill_query(options: &MySqlConnectOptions, id: u64) -> Result<(), String> {
    async {
        let mut conn = MySqlConnection::connect_with(options).await?;
        sqlx::raw_sql(sql(format!("KILL QUERY {id}")))
            .execute(&mut conn)
            .await?;
        conn.close().await
    }
    .await
    .map_err(|err| describe(&err))
}

impl RawGuestConnection for MyGuestConnection {
    fn failure_aborts_transaction(&self) -> bool {
        // MySQL undoes only the failed statement, except after a deadlock or a lost
        // connection, when the whole transaction is gone; the event fails either way, as on
        // PostgreSQL, so that a batch never commits around a hole.
        true
    }

    fn execute(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
    ) -> Result<u64, DbError> {
        let mut conn = lock(&self.conn);
        let id = self.id.load(Ordering::Relaxed);
        self.rt.block_on(until_deadline(
            async {
                bind(&checked.sql, &checked.param_order, params)
                    .execute(&mut *conn)
                    .await
                    .map(|done| done.rows_affected())
                    .map_err(db_error)
            },
            deadline,
            kill_query(&self.options, id),
        ))
    }

    fn query(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
        out: &mut RowCollector,
    ) -> Result<(), DbError> {
        let mut conn = lock(&self.conn);
        let id = self.id.load(Ordering::Relaxed);
        self.rt.block_on(until_deadline(
            async {
                let mut stream = bind(&checked.sql, &checked.param_order, params).fetch(&mut *conn);
                let mut first = true;
                while let Some(row) = stream.try_next().await.map_err(db_error)? {
                    if first {
                        out.columns(row.columns().iter().map(|c| c.name().to_string()).collect());
                        first = false;
                    }
                    // The collector refuses a value past MAX_VALUE_BYTES: MySQL has no way
                    // to keep it on the server, as PostgreSQL does.
                    out.push((0..row.len()).map(|i| value_of(&row, i)).collect())?;
                }
                Ok(())
            },
            deadline,
            kill_query(&self.options, id),
        ))
    }
}

pub(super) fn row_set(rows: &[MySqlRow]) -> RowSet {
    let columns: Vec<String> = rows
        .first()
        .map(|r| r.columns().iter().map(|c| c.name().to_string()).collect())
        .unwrap_or_default();
    let rows = rows
        .iter()
        .map(|row| (0..row.len()).map(|i| value_of(row, i)).collect())
        .collect();
    RowSet { columns, rows }
}

/// Converts one column of a row to a guest value: integers (an unsigned one above the
/// signed range as its decimal text), reals, text (JSON and decimals as their text), blobs,
/// booleans, and dates and times as text (`2024-01-31 12:00:00.5`); anything else is
/// `unsupported` with the type's name.
fn value_of(row: &MySqlRow, index: usize) -> Value {
    let Ok(raw) = row.try_get_raw(index) else {
        return Value::Unsupported("unreadable".into());
    };
    if raw.is_null() {
        return Value::Null;
    }
    let info = raw.type_info();
    let type_name = info.name().to_string();
    // sqlx names a text column of a binary collation (utf8mb4_bin, which zdr gives every
    // text column) as a binary type; only the `binary` character set (63) holds bytes, and
    // sqlx shows a column's collation only in its debug form, so it is looked at only for
    // the types that need it, not for every value.
    let holds_bytes = || format!("{:?}", *info).contains("collation: Collation(63)");
    fn decode<'r, T: Decode<'r, MySql>>(raw: MySqlValueRef<'r>) -> Option<T> {
        T::decode(raw).ok()
    }
    let value = match type_name.as_str() {
        "BOOLEAN" => decode::<bool>(raw).map(Value::Boolean),
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
            decode::<i64>(raw).map(Value::Integer)
        }
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
        | "BIGINT UNSIGNED" => decode::<u64>(raw).map(|v| match i64::try_from(v) {
            Ok(v) => Value::Integer(v),
            Err(_) => Value::Text(v.to_string()),
        }),
        "FLOAT" => decode::<f32>(raw).map(|v| Value::Real(v.into())),
        "DOUBLE" => decode::<f64>(raw).map(Value::Real),
        "DECIMAL" | "CHAR" | "VARCHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT"
        | "JSON" | "ENUM" | "SET" => decode::<String>(raw).map(Value::Text),
        "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB"
            if !holds_bytes() =>
        {
            decode::<String>(raw).map(Value::Text)
        }
        "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BIT" => {
            decode::<Vec<u8>>(raw).map(Value::Blob)
        }
        "DATE" | "DATETIME" | "TIMESTAMP" => {
            decode::<&[u8]>(raw).and_then(date_text).map(Value::Text)
        }
        "TIME" => decode::<&[u8]>(raw).and_then(time_text).map(Value::Text),
        _ => None,
    };
    value.unwrap_or(Value::Unsupported(type_name))
}

/// A date or a date and time as MySQL's text shows it, from the binary protocol's form (a
/// length, then year, month, day, and optionally hour, minute, second and microseconds) or
/// the text protocol's (the text itself).
fn date_text(bytes: &[u8]) -> Option<String> {
    let (&len, rest) = bytes.split_first()?;
    if len > 11 {
        // Text protocol: already text.
        return std::str::from_utf8(bytes).ok().map(str::to_owned);
    }
    let rest = rest.get(..usize::from(len))?;
    let field = |i: usize| rest.get(i).copied().unwrap_or(0);
    let year = u16::from_le_bytes([field(0), field(1)]);
    let mut text = format!("{year:04}-{:02}-{:02}", field(2), field(3));
    if len > 4 {
        text.push_str(&format!(" {:02}:{:02}:{:02}", field(4), field(5), field(6)));
    }
    if len > 7 {
        let micros = u32::from_le_bytes([field(7), field(8), field(9), field(10)]);
        if micros > 0 {
            let fraction = format!("{micros:06}");
            text.push('.');
            text.push_str(fraction.trim_end_matches('0'));
        }
    }
    Some(text)
}

/// A time (of day, or a duration) as MySQL's text shows it (`-01:02:03.5`), from the binary
/// protocol's form (a length, the sign, days, hours, minutes, seconds, microseconds) or the
/// text protocol's.
fn time_text(bytes: &[u8]) -> Option<String> {
    let (&len, rest) = bytes.split_first()?;
    if len > 12 {
        return std::str::from_utf8(bytes).ok().map(str::to_owned);
    }
    let rest = rest.get(..usize::from(len))?;
    let field = |i: usize| rest.get(i).copied().unwrap_or(0);
    let days = u32::from_le_bytes([field(1), field(2), field(3), field(4)]);
    let hours = u64::from(days) * 24 + u64::from(field(5));
    let sign = if field(0) == 1 { "-" } else { "" };
    let mut text = format!("{sign}{hours:02}:{:02}:{:02}", field(6), field(7));
    let micros = u32::from_le_bytes([field(8), field(9), field(10), field(11)]);
    if micros > 0 {
        let fraction = format!("{micros:06}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    Some(text)
}

/// Maps a driver error onto the closed set a guest sees, keeping the server's message,
/// error number and SQLSTATE (they name the column or key the guest got wrong, never a host
/// secret).
fn db_error(err: sqlx::Error) -> DbError {
    // A broken connection is told apart by its SQLSTATE class (08, connection exception),
    // so the projection treats it as the connection's failure, never the projector's.
    let lost = connection_lost(&err);
    let number = error_number(&err);
    let code = match &err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    let code = if lost {
        Some("08006".to_string())
    } else if let Some(resources) = out_of_resources(&err) {
        Some(resources.to_string())
    } else {
        code
    };
    let message = describe(&err);
    match (number, code.as_deref()) {
        (_, Some("08006")) => DbError::Other {
            message,
            sqlstate: code,
        },
        // Duplicate key, NOT NULL, foreign key and CHECK violations.
        (
            Some(1022 | 1048 | 1062 | 1169 | 1216 | 1217 | 1451 | 1452 | 1557 | 1586 | 3819 | 4025),
            _,
        )
        | (_, Some("23000")) => DbError::Constraint {
            message,
            sqlstate: code,
        },
        (Some(1317 | 3024 | 1969), _) => DbError::LimitExceeded(message),
        (_, Some(c)) if c.starts_with("42") || c.starts_with("22") => DbError::InvalidSql {
            message,
            sqlstate: code,
        },
        _ => DbError::Other {
            message,
            sqlstate: code,
        },
    }
}

/// [`date_text`], for the backend's tests.
#[cfg(test)]
pub(super) fn date_text_public(bytes: &[u8]) -> Option<String> {
    date_text(bytes)
}
