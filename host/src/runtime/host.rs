//! The state a guest's store carries and the host functions the guest imports.
//!
//! [`HostState`] owns the WASI context (nothing granted: no files, network or environment),
//! the resource table, the memory limits and the instance's database binding. The binding is a
//! [`GuestConnection`] bound to one target; the runtime never learns which backend is behind it.

use std::sync::Arc;

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::ConnectionHandle;
use super::output::GuestOutput;
use crate::backend::{Call, DbError, GuestConnection, RowSet, Value};

/// Everything a projector instance's store holds.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    /// The target this instance writes to, once bound; `None` answers `denied`.
    pub(super) connection: Option<Box<dyn GuestConnection>>,
    /// The export call under way that may use the connection (`handle-events`, `promote`,
    /// `remove-target`), with its deadline; `None` outside them, where statements are denied.
    pub(super) call: Option<Call>,
    /// Whether the call under way may only read (`check`): `execute` answers `denied`.
    pub(super) read_only: bool,
    /// `name@version [target]`, used to tag every log line of this instance.
    pub(super) tag: Arc<str>,
    /// The memory cap, kept to explain an out-of-memory trap.
    pub(super) memory_bytes: usize,
}

impl HostState {
    /// A fresh state for one instance: no WASI capabilities, output to the host log.
    pub fn new(tag: Arc<str>, memory_bytes: usize) -> Self {
        // Nothing is inherited: no environment, arguments, directories or stdin; sockets are
        // off. The wall clock is frozen at the Unix epoch, so a projector cannot make its read
        // model depend on when it ran: time comes from the event's created-at.
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestOutput::new(tag.clone(), "stdout"))
            .stderr(GuestOutput::new(tag.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .instances(64)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            connection: None,
            call: None,
            read_only: false,
            tag,
            memory_bytes,
        }
    }
}

/// A wall clock that always reads the Unix epoch.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// `execute` of either contract version: checks that a call may write, then runs the
    /// statement on the bound target.
    fn run_execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, GuestFailure> {
        let (connection, call, tag) = self.writable()?;
        connection
            .execute(sql, &params, call)
            .map_err(|err| GuestFailure::from_db(tag, sql, err))
    }

    /// `send` (0.2.0): checked like `execute`, but the backend may run it later; its
    /// failure may come back from a later statement, `flush` or the end of the call.
    fn run_send(&mut self, sql: &str, params: Vec<Value>) -> Result<(), GuestFailure> {
        let (connection, call, tag) = self.writable()?;
        connection
            .send(sql, &params, call)
            .map_err(|err| GuestFailure::from_db(tag, sql, err))
    }

    /// `flush` (0.2.0): waits for the writes sent in this call and returns their row counts.
    fn run_flush(&mut self) -> Result<Vec<u64>, GuestFailure> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(GuestFailure::Denied(revoked()));
        };
        let Some(call) = self.call else {
            return Err(GuestFailure::Denied(outside_a_call(&self.tag)));
        };
        connection
            .flush(call)
            .map_err(|err| GuestFailure::from_db(&self.tag, "flush", err))
    }

    /// The connection, call and log tag of a statement that writes: bound, inside a call, and
    /// not in `check`.
    fn writable(&mut self) -> Result<(&mut dyn GuestConnection, Call, &str), GuestFailure> {
        let Self {
            connection,
            call,
            read_only,
            tag,
            ..
        } = self;
        let Some(connection) = connection.as_deref_mut() else {
            return Err(GuestFailure::Denied(revoked()));
        };
        let Some(call) = *call else {
            return Err(GuestFailure::Denied(outside_a_call(tag)));
        };
        if *read_only {
            return Err(GuestFailure::Denied(
                "check may only read: execute and send are denied while the read model is checked"
                    .into(),
            ));
        }
        Ok((connection, call, tag))
    }

    /// `query` of either contract version.
    fn run_query(&mut self, sql: &str, params: Vec<Value>) -> Result<RowSet, GuestFailure> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(GuestFailure::Denied(revoked()));
        };
        let Some(call) = self.call else {
            return Err(GuestFailure::Denied(outside_a_call(&self.tag)));
        };
        connection
            .query(sql, &params, call)
            .map_err(|err| GuestFailure::from_db(&self.tag, sql, err))
    }

    /// `log` of either contract version.
    fn write_log(&self, level: Level, message: &str) {
        let message = truncate(message, super::output::MAX_LINE_BYTES);
        let tag = &*self.tag;
        match level {
            Level::Trace => tracing::trace!(projector = %tag, "{message}"),
            Level::Debug => tracing::debug!(projector = %tag, "{message}"),
            Level::Info => tracing::info!(projector = %tag, "{message}"),
            Level::Warn => tracing::warn!(projector = %tag, "{message}"),
            Level::Error => tracing::error!(projector = %tag, "{message}"),
        }
    }
}

/// A log level, whichever contract version named it.
#[derive(Clone, Copy)]
enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// What a guest's statement answers when it fails: the closed set of the contract's `error`
/// variant, before it is turned into one version's generated type.
enum GuestFailure {
    Denied(String),
    InvalidSql(String, Option<String>),
    Constraint(String, Option<String>),
    LimitExceeded(String),
    Other(String, Option<String>),
}

impl GuestFailure {
    /// Converts a backend error into the closed set the guest sees, logging denials and limits
    /// so the operator learns about them even when the guest swallows them.
    fn from_db(tag: &str, sql: &str, err: DbError) -> Self {
        match err {
            DbError::Denied(reason) => {
                tracing::warn!(projector = %tag, sql = %truncate(sql, 200), "statement denied: {reason}");
                Self::Denied(reason)
            }
            DbError::InvalidSql { message, sqlstate } => Self::InvalidSql(message, sqlstate),
            DbError::Constraint { message, sqlstate } => Self::Constraint(message, sqlstate),
            DbError::LimitExceeded(reason) => {
                tracing::warn!(projector = %tag, "limit exceeded: {reason}");
                Self::LimitExceeded(reason)
            }
            DbError::Other { message, sqlstate } => Self::Other(message, sqlstate),
        }
    }
}

/// Implements one contract version's imports on [`HostState`] over that version's generated
/// types: the conversions, `execute`, `query` and `log`, plus the functions only that version
/// has (`$extra`). The work itself is in the `run_*` methods above, shared by every version.
macro_rules! imports_of_version {
    ($version:ident { $($extra:item)* }) => {
        mod $version {
            use wasmtime::component::Resource;

            use super::super::bindings::ConnectionHandle;
            use super::super::bindings::$version::zdr::projector::{database, log, types};
            use super::{GuestFailure, HostState, Level};
            use crate::backend::{RowSet, Value};

            impl types::Host for HostState {}

            impl database::Host for HostState {}

            impl database::HostConnection for HostState {
                fn execute(
                    &mut self,
                    _handle: Resource<ConnectionHandle>,
                    sql: String,
                    params: Vec<types::Value>,
                ) -> wasmtime::Result<Result<u64, types::Error>> {
                    let params = params.into_iter().map(from_guest).collect();
                    Ok(self.run_execute(&sql, params).map_err(to_guest_error))
                }

                fn query(
                    &mut self,
                    _handle: Resource<ConnectionHandle>,
                    sql: String,
                    params: Vec<types::Value>,
                ) -> wasmtime::Result<Result<types::RowSet, types::Error>> {
                    let params = params.into_iter().map(from_guest).collect();
                    Ok(self
                        .run_query(&sql, params)
                        .map(row_set_to_guest)
                        .map_err(to_guest_error))
                }

                $($extra)*

                fn drop(&mut self, handle: Resource<ConnectionHandle>) -> wasmtime::Result<()> {
                    // The handle carries no state of its own; the binding lives as long as the
                    // instance.
                    let _ = self.table.delete(handle);
                    Ok(())
                }
            }

            impl log::Host for HostState {
                fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
                    let level = match level {
                        log::Level::Trace => Level::Trace,
                        log::Level::Debug => Level::Debug,
                        log::Level::Info => Level::Info,
                        log::Level::Warn => Level::Warn,
                        log::Level::Error => Level::Error,
                    };
                    self.write_log(level, &message);
                    Ok(())
                }
            }

            fn from_guest(value: types::Value) -> Value {
                match value {
                    types::Value::Null => Value::Null,
                    types::Value::Integer(v) => Value::Integer(v),
                    types::Value::Real(v) => Value::Real(v),
                    types::Value::Text(v) => Value::Text(v),
                    types::Value::Blob(v) => Value::Blob(v),
                    types::Value::Boolean(v) => Value::Boolean(v),
                    types::Value::Unsupported(v) => Value::Unsupported(v),
                }
            }

            fn to_guest(value: Value) -> types::Value {
                match value {
                    Value::Null => types::Value::Null,
                    Value::Integer(v) => types::Value::Integer(v),
                    Value::Real(v) => types::Value::Real(v),
                    Value::Text(v) => types::Value::Text(v),
                    Value::Blob(v) => types::Value::Blob(v),
                    Value::Boolean(v) => types::Value::Boolean(v),
                    Value::Unsupported(v) => types::Value::Unsupported(v),
                }
            }

            fn row_set_to_guest(rows: RowSet) -> types::RowSet {
                types::RowSet {
                    columns: rows.columns,
                    rows: rows
                        .rows
                        .into_iter()
                        .map(|row| row.into_iter().map(to_guest).collect())
                        .collect(),
                }
            }

            fn to_guest_error(failure: GuestFailure) -> types::Error {
                let sql = |message, sqlstate| types::SqlFailure { message, sqlstate };
                match failure {
                    GuestFailure::Denied(reason) => types::Error::Denied(reason),
                    GuestFailure::InvalidSql(message, sqlstate) => {
                        types::Error::InvalidSql(sql(message, sqlstate))
                    }
                    GuestFailure::Constraint(message, sqlstate) => {
                        types::Error::Constraint(sql(message, sqlstate))
                    }
                    GuestFailure::LimitExceeded(reason) => types::Error::LimitExceeded(reason),
                    GuestFailure::Other(message, sqlstate) => {
                        types::Error::Other(sql(message, sqlstate))
                    }
                }
            }
        }
    };
}

imports_of_version!(v0_1 {});

imports_of_version!(v0_2 {
    fn send(
        &mut self,
        _handle: Resource<ConnectionHandle>,
        sql: String,
        params: Vec<types::Value>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let params = params.into_iter().map(from_guest).collect();
        Ok(self.run_send(&sql, params).map_err(to_guest_error))
    }

    fn flush(
        &mut self,
        _handle: Resource<ConnectionHandle>,
    ) -> wasmtime::Result<Result<Vec<u64>, types::Error>> {
        Ok(self.run_flush().map_err(to_guest_error))
    }
});

impl HostState {
    /// Puts a new `connection` handle into the resource table for the guest to own.
    pub(super) fn new_connection_handle(&mut self) -> wasmtime::Result<Resource<ConnectionHandle>> {
        Ok(self.table.push(ConnectionHandle)?)
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The answer to a statement sent outside `handle-events` (`handle-event` in 0.1.0),
/// `promote` and `remove-target`: the handle belongs to a batch transaction, and there is none
/// then.
fn outside_a_call(tag: &str) -> String {
    let reason = "statements may run only inside handle-events (handle-event in 0.1.0), promote \
                  and remove-target: the connection belongs to the batch transaction, and \
                  use-connection, for-replay and describe run outside any";
    tracing::warn!(projector = %tag, "statement denied: {reason}");
    reason.into()
}

fn revoked() -> String {
    "this connection is not bound to a target (revoked or not yet bound)".into()
}
