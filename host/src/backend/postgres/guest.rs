//! The raw side of a guest's handle on PostgreSQL: statements the guard already checked, run
//! on the worker's shared connection with their parameters typed, cancelled at the guest's
//! deadline, and result rows longer than the value cap kept on the server.

use super::*;
use crate::backend::server::until_deadline;

/// The raw side of a guest's handle: runs checked statements on the worker's shared
/// connection, cancels one still running at the guest's deadline, and keeps result rows
/// longer than [`MAX_VALUE_BYTES`] on the server.
pub(super) struct PgGuestConnection {
    pub(super) conn: Shared,
    pub(super) pid: BackendPid,
    pub(super) rt: Arc<Rt>,
    /// For the second connection that cancels a statement at the deadline.
    pub(super) options: PgConnectOptions,
}

/// A guest's query (a SELECT, or a write with RETURNING), wrapped so that the server refuses
/// to send a row longer than [`MAX_VALUE_BYTES`]: each row is measured on the server with
/// `pg_column_size` before it is sent. A common table expression takes either kind of
/// statement; the rows keep the guest's order.
fn capped_select(sql: &str) -> String {
    format!(
        "WITH zdr_q AS ({sql}) SELECT * FROM zdr_q WHERE pg_column_size(zdr_q.*) <= {MAX_VALUE_BYTES} \
         OR zdr_row_too_large(pg_column_size(zdr_q.*)::bigint, {MAX_VALUE_BYTES})"
    )
}

/// Cancels the statement running in server process `pid`, from a connection of its own:
/// what [`until_deadline`] does at a guest's deadline. The statement then ends with
/// "canceling statement due to user request".
async fn cancel(options: &PgConnectOptions, pid: i32) -> Result<(), String> {
    async {
        let mut conn = PgConnection::connect_with(options).await?;
        sqlx::query("SELECT pg_cancel_backend($1)")
            .bind(pid)
            .execute(&mut conn)
            .await?;
        conn.close().await
    }
    .await
    .map_err(|err| describe(&err))
}

impl RawGuestConnection for PgGuestConnection {
    fn failure_aborts_transaction(&self) -> bool {
        true
    }

    fn execute(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
    ) -> Result<u64, DbError> {
        let mut conn = lock(&self.conn);
        let pid = self.pid.load(Ordering::Relaxed);
        self.rt.block_on(until_deadline(
            async {
                Self::bound(&checked.sql, params)
                    .execute(&mut *conn)
                    .await
                    .map(|done| done.rows_affected())
                    .map_err(db_error)
            },
            deadline,
            cancel(&self.options, pid),
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
        let pid = self.pid.load(Ordering::Relaxed);
        let text = capped_select(&checked.sql);
        self.rt.block_on(until_deadline(
            async {
                let mut stream = Self::bound(&text, params).fetch(&mut *conn);
                let mut first = true;
                while let Some(row) = stream.try_next().await.map_err(db_error)? {
                    if first {
                        out.columns(row.columns().iter().map(|c| c.name().to_string()).collect());
                        first = false;
                    }
                    out.push((0..row.len()).map(|i| value_of(&row, i)).collect())?;
                }
                Ok(())
            },
            deadline,
            cancel(&self.options, pid),
        ))
    }
}

/// The type a parameter is sent as; `None` for a NULL, which is sent untyped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ParamType {
    Integer,
    Real,
    Text,
    Blob,
    Boolean,
}

fn param_type(value: &Value) -> Option<ParamType> {
    match value {
        Value::Null | Value::Unsupported(_) => None,
        Value::Integer(_) => Some(ParamType::Integer),
        Value::Real(_) => Some(ParamType::Real),
        Value::Text(_) => Some(ParamType::Text),
        Value::Blob(_) => Some(ParamType::Blob),
        Value::Boolean(_) => Some(ParamType::Boolean),
    }
}

impl PgGuestConnection {
    /// The statement text to send: the guarded SQL plus a comment naming the type each
    /// parameter is sent as.
    ///
    /// The server fixes a prepared statement's parameter types when it is prepared (an
    /// untyped NULL gets the type its place implies), and sqlx caches statements by their
    /// text. Sent to a statement prepared for other types, binary values would be misread;
    /// with the types in the text, each combination gets a statement of its own.
    fn typed_sql(text: &str, params: &[Value]) -> String {
        let signature: String = params
            .iter()
            .map(|value| match param_type(value) {
                None => 'n',
                Some(ParamType::Integer) => 'i',
                Some(ParamType::Real) => 'r',
                Some(ParamType::Text) => 't',
                Some(ParamType::Blob) => 'b',
                Some(ParamType::Boolean) => 'o',
            })
            .collect();
        if signature.is_empty() {
            text.to_string()
        } else {
            format!("{text} /* {signature} */")
        }
    }

    pub(super) fn bound<'q>(text: &str, params: &'q [Value]) -> PgQuery<'q> {
        let mut query = sqlx::query(sql(Self::typed_sql(text, params)));
        for value in params {
            query = match value {
                // An untyped NULL: the server infers its type from where it is used.
                Value::Null | Value::Unsupported(_) => query.bind(UntypedNull),
                Value::Integer(v) => query.bind(*v),
                Value::Real(v) => query.bind(*v),
                Value::Text(v) => query.bind(v.as_str()),
                Value::Blob(v) => query.bind(v.as_slice()),
                Value::Boolean(v) => query.bind(*v),
            };
        }
        query
    }
}

/// A NULL parameter of no declared type.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

pub(super) fn row_set(rows: &[PgRow]) -> RowSet {
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

/// Converts one column of a row to a guest value; types with no counterpart are
/// `unsupported` with the type's name (cast them in SQL to read them).
fn value_of(row: &PgRow, index: usize) -> Value {
    let Ok(raw) = row.try_get_raw(index) else {
        return Value::Unsupported("unreadable".into());
    };
    if raw.is_null() {
        return Value::Null;
    }
    let type_name = raw.type_info().name().to_string();
    fn decode<'r, T: Decode<'r, Postgres>>(raw: PgValueRef<'r>) -> Option<T> {
        T::decode(raw).ok()
    }
    let value = match type_name.as_str() {
        "INT2" => decode::<i16>(raw).map(|v| Value::Integer(v.into())),
        "INT4" => decode::<i32>(raw).map(|v| Value::Integer(v.into())),
        "INT8" => decode::<i64>(raw).map(Value::Integer),
        "FLOAT4" => decode::<f32>(raw).map(|v| Value::Real(v.into())),
        "FLOAT8" => decode::<f64>(raw).map(Value::Real),
        "BOOL" => decode::<bool>(raw).map(Value::Boolean),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "UNKNOWN" => {
            decode::<String>(raw).map(Value::Text)
        }
        "BYTEA" => decode::<Vec<u8>>(raw).map(Value::Blob),
        _ => None,
    };
    value.unwrap_or(Value::Unsupported(type_name))
}

/// Maps a driver error onto the closed set a guest sees, keeping the server's message and
/// SQLSTATE (they name the column or constraint the guest got wrong, never a host secret).
fn db_error(err: sqlx::Error) -> DbError {
    // A broken connection is told apart by its SQLSTATE class (08, connection exception),
    // so the projection treats it as the connection's failure, never the projector's.
    let code = sqlstate(&err).or_else(|| connection_lost(&err).then(|| "08006".to_string()));
    let message = match &err {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => describe(other),
    };
    match code.as_deref() {
        Some(c) if c.starts_with("23") => DbError::Constraint {
            message,
            sqlstate: code,
        },
        Some(c) if c.starts_with("42") || c.starts_with("22") => DbError::InvalidSql {
            message,
            sqlstate: code,
        },
        Some("57014") | Some("54001") | Some("54000") => DbError::LimitExceeded(message),
        _ => DbError::Other {
            message,
            sqlstate: code,
        },
    }
}
