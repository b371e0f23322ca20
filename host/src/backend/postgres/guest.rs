//! The raw side of a guest's handle on PostgreSQL: statements the guard already checked, run
//! on the worker's shared connection with their parameters typed, cancelled at the guest's
//! deadline, and result rows longer than the value cap kept on the server.
//!
//! Writes the guest sends without waiting (`send`) are pipelined: each distinct statement is
//! prepared on the server once (`PREPARE`), and the writes are queued as `EXECUTE`s with
//! their parameters written as literals. The queue goes to the server as one simple-query
//! message (one round trip for up to [`MAX_QUEUED_WRITES`] writes) when the guest flushes or
//! runs another statement, and at the end of its call. sqlx cannot pipeline statements of the
//! extended protocol; a simple-query message of several statements is the one way to run many
//! writes per round trip through it, and `EXECUTE` keeps the server from parsing and planning
//! each write again.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::*;
use crate::backend::guest::MAX_SENT_COUNTS;
use crate::backend::server::until_deadline;

/// The most writes queued before they go to the server without waiting for a flush.
pub(super) const MAX_QUEUED_WRITES: usize = 1_000;

/// The most bytes of queued `EXECUTE`s before they go to the server.
const MAX_QUEUED_BYTES: usize = 1024 * 1024;

/// The most statements prepared for sent writes on one connection; past it they are all
/// deallocated and prepared again as they come (a guest that writes this many distinct
/// statements gains nothing from keeping them).
const MAX_PREPARED_WRITES: usize = 128;

/// The prefix of the names of statements prepared for sent writes (sqlx names its own
/// `sqlx_s_…`).
const PREPARED_PREFIX: &str = "zdr_send_";

/// The raw side of a guest's handle: runs checked statements on the worker's shared
/// connection, cancels one still running at the guest's deadline, and keeps result rows
/// longer than [`MAX_VALUE_BYTES`] on the server.
pub(super) struct PgGuestConnection {
    pub(super) conn: Shared,
    pub(super) pid: BackendPid,
    pub(super) rt: Arc<Rt>,
    /// For the second connection that cancels a statement at the deadline.
    pub(super) options: PgConnectOptions,
    /// Sent writes not yet run, and the statements prepared for them.
    pub(super) pipeline: Pipeline,
}

/// The writes a guest sent and the server has not run yet.
#[derive(Debug, Default)]
pub(super) struct Pipeline {
    /// The statements prepared for sent writes on the shared connection, shared by every
    /// guest handle on it.
    pub(super) prepared: Arc<Mutex<PreparedWrites>>,
    /// `EXECUTE …;` for each queued write, in the order sent.
    queued: String,
    queued_writes: usize,
    /// The connection (see [`PreparedWrites::connection`]) the queue was started on. Its
    /// writes belong to that connection's transaction: after a reconnect they must never run
    /// on the new one.
    queued_on: u64,
    /// The row counts of queued writes that already ran, not yet handed to a flush; at most
    /// [`MAX_SENT_COUNTS`].
    done: Vec<u64>,
}

/// The statements prepared for sent writes on one shared connection: every guest handle on
/// it (each projector, and the fresh instance that replaces a failed one) finds those already
/// prepared, so none is prepared twice and the server holds at most [`MAX_PREPARED_WRITES`].
#[derive(Debug, Default)]
pub(super) struct PreparedWrites {
    /// The name of the statement prepared for each typed statement text (see
    /// [`PgGuestConnection::typed_sql`]).
    names: HashMap<String, String>,
    /// Which connection the shared handle holds: one more at each reconnect.
    connection: u64,
    /// The number in the next prepared statement's name.
    next: u64,
}

impl Pipeline {
    /// An empty queue for a guest handle on the connection whose prepared writes are
    /// `prepared`.
    pub(super) fn new(prepared: Arc<Mutex<PreparedWrites>>) -> Self {
        Self {
            prepared,
            ..Self::default()
        }
    }
}

impl PreparedWrites {
    /// The shared handle holds a new connection: nothing is prepared on it, and writes
    /// queued for the old one must not run.
    pub(super) fn reconnected(&mut self) {
        self.names.clear();
        self.connection += 1;
    }
}

/// Locks the registry of prepared writes; a panic while it was held left it consistent (each
/// change is one assignment).
fn lock_prepared(prepared: &Mutex<PreparedWrites>) -> MutexGuard<'_, PreparedWrites> {
    prepared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        // Cloned so that the queue (in `self`) can be run while the connection is held.
        let shared = Arc::clone(&self.conn);
        let mut conn = lock(&shared);
        let pid = self.pid.load(Ordering::Relaxed);
        self.run_queued(&mut conn, pid, deadline)?;
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
        // Cloned so that the queue (in `self`) can be run while the connection is held.
        let shared = Arc::clone(&self.conn);
        let mut conn = lock(&shared);
        let pid = self.pid.load(Ordering::Relaxed);
        self.run_queued(&mut conn, pid, deadline)?;
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

    fn send(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
    ) -> Result<Option<u64>, DbError> {
        if let Some(i) = params
            .iter()
            .position(|v| matches!(v, Value::Text(t) if t.contains('\0')))
        {
            // What the server answers for such a parameter; as a literal it would end the
            // message early.
            return Err(DbError::InvalidSql {
                message: format!(
                    "invalid byte sequence for encoding \"UTF8\": 0x00 (parameter ${})",
                    i + 1
                ),
                sqlstate: Some("22021".into()),
            });
        }
        // Cloned so that the queue (in `self`) can be run while the connection is held.
        let shared = Arc::clone(&self.conn);
        let mut conn = lock(&shared);
        let pid = self.pid.load(Ordering::Relaxed);
        let name = self.prepared_name(&mut conn, pid, checked, params, deadline)?;
        let pipeline = &mut self.pipeline;
        if pipeline.queued.is_empty() {
            pipeline.queued_on = lock_prepared(&pipeline.prepared).connection;
        }
        execute_statement(&mut pipeline.queued, &name, params);
        pipeline.queued_writes += 1;
        if pipeline.queued_writes >= MAX_QUEUED_WRITES || pipeline.queued.len() >= MAX_QUEUED_BYTES
        {
            self.run_queued(&mut conn, pid, deadline)?;
        }
        Ok(None)
    }

    fn flush(&mut self, deadline: Instant) -> Result<Vec<u64>, DbError> {
        if !self.pipeline.queued.is_empty() {
            // Cloned so that the queue (in `self`) can be run while the connection is held.
            let shared = Arc::clone(&self.conn);
            let mut conn = lock(&shared);
            let pid = self.pid.load(Ordering::Relaxed);
            self.run_queued(&mut conn, pid, deadline)?;
        }
        Ok(std::mem::take(&mut self.pipeline.done))
    }
}

impl PgGuestConnection {
    /// Runs the queued writes, in order, in one round trip, and keeps their row counts. The
    /// queue is empty afterwards, whatever happened; after a failure no count is kept (the
    /// call has failed, and the next flush starts afresh).
    fn run_queued(
        &mut self,
        conn: &mut PgConnection,
        pid: i32,
        deadline: Instant,
    ) -> Result<(), DbError> {
        let pipeline = &mut self.pipeline;
        if pipeline.queued.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut pipeline.queued);
        let writes = std::mem::take(&mut pipeline.queued_writes);
        if pipeline.queued_on != lock_prepared(&pipeline.prepared).connection {
            pipeline.done.clear();
            return Err(DbError::Other {
                message: format!(
                    "the connection was lost and opened again before {writes} sent write(s) \
                     ran; they belonged to the lost transaction and were dropped"
                ),
                sqlstate: Some("08006".into()),
            });
        }
        let done = &mut pipeline.done;
        let ran = self.rt.block_on(until_deadline(
            async {
                let mut results = sqlx::raw_sql(sql(text)).execute_many(&mut *conn);
                while let Some(result) = results.try_next().await.map_err(db_error)? {
                    // Past the cap a flush answers `limit-exceeded` without them.
                    if done.len() < MAX_SENT_COUNTS {
                        done.push(result.rows_affected());
                    }
                }
                Ok(())
            },
            deadline,
            cancel(&self.options, pid),
        ));
        if ran.is_err() {
            pipeline.done.clear();
        }
        ran
    }

    /// The name of the statement prepared on the server for `checked` with parameters of the
    /// types of `params`, preparing it first when this connection has not yet.
    fn prepared_name(
        &mut self,
        conn: &mut PgConnection,
        pid: i32,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
    ) -> Result<String, DbError> {
        let typed = Self::typed_sql(&checked.sql, params);
        if let Some(name) = lock_prepared(&self.pipeline.prepared).names.get(&typed) {
            return Ok(name.clone());
        }
        // The queue runs first: a failure in it must be its own, not the PREPARE's.
        self.run_queued(conn, pid, deadline)?;
        let shared = self.pipeline.prepared.clone();
        let mut prepared = lock_prepared(&shared);
        let mut text = String::new();
        if prepared.names.len() >= MAX_PREPARED_WRITES {
            for name in prepared.names.values() {
                let _ = write!(text, "DEALLOCATE {name};");
            }
            prepared.names.clear();
        }
        let name = format!("{PREPARED_PREFIX}{}", prepared.next);
        prepared.next += 1;
        let _ = write!(text, "PREPARE {name}");
        if !params.is_empty() {
            let types: Vec<&str> = params.iter().map(|v| pg_type_name(param_type(v))).collect();
            let _ = write!(text, " ({})", types.join(", "));
        }
        let _ = write!(text, " AS {}", checked.sql);
        self.rt.block_on(until_deadline(
            async {
                sqlx::raw_sql(sql(text))
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)
            },
            deadline,
            cancel(&self.options, pid),
        ))?;
        prepared.names.insert(typed, name.clone());
        Ok(name)
    }
}

/// The type a parameter is declared as in a `PREPARE`: what the extended protocol sends it
/// as (see [`PgGuestConnection::bound`]), `unknown` for a NULL (its place then gives its type).
fn pg_type_name(param: Option<ParamType>) -> &'static str {
    match param {
        None => "unknown",
        Some(ParamType::Integer) => "int8",
        Some(ParamType::Real) => "float8",
        Some(ParamType::Text) => "text",
        Some(ParamType::Blob) => "bytea",
        Some(ParamType::Boolean) => "bool",
    }
}

/// Appends `EXECUTE name(…);` to `out`, each parameter written as a literal the server reads
/// back to exactly the value given: a quoted string in the escape syntax (`E'…'`, which means
/// the same whatever `standard_conforming_strings` says) that the declared type's input
/// function parses. Text holding a NUL byte is refused before it gets here.
fn execute_statement(out: &mut String, name: &str, params: &[Value]) {
    out.push_str("EXECUTE ");
    out.push_str(name);
    if !params.is_empty() {
        out.push('(');
        for (i, value) in params.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            literal(out, value);
        }
        out.push(')');
    }
    out.push(';');
}

/// Appends one parameter as a literal (see [`execute_statement`]).
fn literal(out: &mut String, value: &Value) {
    match value {
        Value::Null | Value::Unsupported(_) => out.push_str("NULL"),
        Value::Integer(v) => {
            let _ = write!(out, "'{v}'");
        }
        Value::Real(v) if v.is_nan() => out.push_str("'NaN'"),
        Value::Real(v) if v.is_infinite() => {
            out.push_str(if *v > 0.0 {
                "'Infinity'"
            } else {
                "'-Infinity'"
            });
        }
        // Rust writes the shortest digits that read back to the same double, as PostgreSQL
        // (12 and later) does; its input rounds correctly.
        Value::Real(v) => {
            let _ = write!(out, "'{v:?}'");
        }
        Value::Boolean(v) => out.push_str(if *v { "'t'" } else { "'f'" }),
        Value::Text(text) => {
            out.push_str("E'");
            for c in text.chars() {
                match c {
                    '\'' => out.push_str("''"),
                    '\\' => out.push_str("\\\\"),
                    c => out.push(c),
                }
            }
            out.push('\'');
        }
        Value::Blob(bytes) => {
            out.push_str("E'\\\\x");
            out.push_str(&hex::encode(bytes));
            out.push('\'');
        }
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
