//! The PostgreSQL backend: zdr's state, the event store and the read models in one database,
//! driven with sqlx.
//!
//! - **Writers.** Every [`Db::write`](super::Db::write) transaction takes one transaction-level
//!   advisory lock, zdr's writer lock: live batches, the switch to projecting and a promote
//!   are serialised exactly as SQLite's `BEGIN IMMEDIATE` serialises them, while the
//!   application's own event writers never touch it.
//! - **Names.** Live tables are `<schema>.<table>` (schema `public`, or `?schema=NAME` in the
//!   URL); a replay's clone is `zdr_r_<key>.<table>`, the former live tables after a promote
//!   `zdr_p_<key>.<table>`, a projector being built `zdr_b<target>.<table>`. A promote moves
//!   tables between schemas with `ALTER TABLE … SET SCHEMA` under a short `lock_timeout`, so a
//!   reader waits milliseconds at most; indexes and sequences move with their table.
//! - **Reading events.** [`Store::head`] is the gap-safe high-water mark of [`super::highwater`]:
//!   a gap is waited out until every writer that held a lock on the event table or its
//!   sequence when the gap was seen has ended (their virtual transaction ids in `pg_locks`).
//! - **Waking.** `zdr init` installs a statement trigger on `stored_events` that sends
//!   `NOTIFY zdr_events`; [`Store::wait_for_events`] listens for it and falls back to sleeping
//!   when the trigger is absent.
//! - **Locks.** A [`RunLock`] is a session advisory lock held on its own connection: it dies
//!   with the connection, so a killed daemon's projectors are free for another one at once.
//!
//! - **Faults.** Errors keep the server's own words and SQLSTATE; a connection the server
//!   dropped is [`StoreError::ConnectionLost`], and [`Store::reconnect`] replaces it. A guest's
//!   statement still running at the guest's deadline is cancelled from a second connection
//!   (`pg_cancel_backend`), and no result row longer than [`MAX_VALUE_BYTES`] leaves the
//!   server.
//!
//! The interface is synchronous: each call drives the async connection to completion on the
//! calling thread (a blocking thread of the tokio runtime, or a private runtime when there is
//! none).

use std::future::Future;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::postgres::{
    PgConnectOptions, PgDatabaseError, PgListener, PgRow, PgTypeInfo, PgValueRef,
};
use sqlx::{AssertSqlSafe, Column, ConnectOptions, Connection, PgConnection, Row, TypeInfo};
use sqlx::{Decode, Postgres, ValueRef};

use super::bookkeeping::SCHEMA_V2;
use super::guest::{MAX_VALUE_BYTES, RawGuestConnection, RowCollector};
use super::highwater::{HighWater, Observed, Scan};
use super::{
    DbError, HeldLock, ReplayRow, RowSet, RunLock, SCHEMA_VERSION, Store, StoreError, Value,
    check_event_columns, readiness, redact, refuse_newer,
};
use crate::events::{Event, NewEvent, ReadEvent, Undecodable};
use crate::model::{Description, Failure, ReplayState, Role, Target};
use crate::sandbox::{Checked, Dialect, Guard, Mode, PhysicalName};

/// The advisory lock key of zdr's writer lock (`'zdr!'` as a number).
const WRITER_LOCK: i64 = 0x7a64_7221;

/// The advisory lock key that serialises `zdr init`.
const INIT_LOCK: i64 = 0x7a64_7269;

/// The channel the event trigger notifies.
const CHANNEL: &str = "zdr_events";

/// How long a promote's table moves wait for readers before giving up (and being retried).
const RENAME_LOCK_TIMEOUT: &str = "100ms";

/// The longest any one statement may run on a zdr connection: a backstop for zdr's own
/// statements. A guest's statement is cancelled at the guest's deadline, long before.
const STATEMENT_TIMEOUT: &str = "30s";

/// How long connecting may take before zdr gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a daemon that lost its notification connection polls before listening again.
const LISTEN_RETRY: Duration = Duration::from_secs(10);

/// How often the store looks for events written below a head it already returned.
const LATE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS zdr_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS zdr_components (
    hash TEXT PRIMARY KEY,
    wasm BYTEA NOT NULL,
    size BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS zdr_versions (
    id BIGSERIAL PRIMARY KEY,
    projector TEXT NOT NULL,
    version TEXT NOT NULL,
    component_hash TEXT NOT NULL REFERENCES zdr_components (hash),
    description TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (projector, component_hash)
);
CREATE TABLE IF NOT EXISTS zdr_targets (
    id BIGSERIAL PRIMARY KEY,
    projector TEXT NOT NULL,
    version_id BIGINT NOT NULL REFERENCES zdr_versions (id),
    role TEXT NOT NULL CHECK (role IN ('live', 'clone', 'retired', 'building')),
    replay_key TEXT,
    checkpoint BIGINT NOT NULL DEFAULT 0,
    error_event_id BIGINT,
    error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS zdr_targets_one_live ON zdr_targets (projector) WHERE role = 'live';
CREATE TABLE IF NOT EXISTS zdr_replays (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS zdr_failures (
    id BIGSERIAL PRIMARY KEY,
    target_id BIGINT NOT NULL,
    projector TEXT NOT NULL,
    replay_key TEXT,
    event_id BIGINT NOT NULL,
    message TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS zdr_runs (
    id BIGSERIAL PRIMARY KEY,
    replay_key TEXT,
    projector TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_event BIGINT NOT NULL,
    to_event BIGINT NOT NULL,
    events BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#;

/// Spatie's `stored_events` as its Laravel migration makes it on PostgreSQL, except that the
/// aggregate id is `text` (any string, not only UUIDs).
const EVENT_TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS stored_events (
    id BIGSERIAL PRIMARY KEY,
    aggregate_uuid TEXT,
    aggregate_version BIGINT,
    event_version SMALLINT NOT NULL DEFAULT 1,
    event_class TEXT NOT NULL,
    event_properties JSONB NOT NULL,
    meta_data JSONB NOT NULL,
    created_at TIMESTAMP NOT NULL
);
"#;

/// The trigger that wakes daemons: one notification per inserting statement.
const NOTIFY_TRIGGER: &str = r#"
CREATE OR REPLACE FUNCTION zdr_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('zdr_events', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS zdr_notify_events ON stored_events;
CREATE TRIGGER zdr_notify_events AFTER INSERT ON stored_events
    FOR EACH STATEMENT EXECUTE FUNCTION zdr_notify_events();
"#;

/// Raises the error a guest's query gets when one of its result rows is longer than
/// [`MAX_VALUE_BYTES`]: the server refuses to send it (see [`capped_select`]).
const ROW_CAP_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION zdr_row_too_large(size bigint, cap bigint) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'a result row of % bytes is longer than the limit of % bytes', size, cap
        USING ERRCODE = '54000';
END
$$;
"#;

/// How a timestamp column is shown: the same ISO form the SQLite backend stores.
const ISO: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"#;

/// Runs futures to completion from synchronous code, on a current-thread runtime of the
/// store's own.
///
/// The store's connections are registered with this runtime, so the thread that waits for a
/// reply also reads it from the socket. On the process's shared runtime every round trip also
/// needed a hand-off between threads (the I/O driver's thread wakes the waiting one); without
/// it a replay is 5–20% faster (`docs/benchmarks.md`). Several threads may call
/// [`Rt::block_on`] at once: the first drives the I/O and wakes the others.
struct Rt {
    /// Always `Some`; taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Rt {
    fn new() -> Result<Rt, std::io::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Rt {
            runtime: Some(runtime),
        })
    }

    /// Drives `future` to completion on this thread. On a worker thread of another runtime
    /// the thread is first handed over to blocking work, as a runtime may not be entered from
    /// inside another one's task; on any other thread it simply blocks.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        // Invariant: `runtime` is `Some` until `drop`, and `drop` has `&mut self`.
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| runtime.block_on(future))
        } else {
            runtime.block_on(future)
        }
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        // A plain drop waits for the runtime's tasks, which panics on another runtime's worker
        // thread. This runtime spawns no tasks, so there is nothing to wait for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A connection shared between the batch driver and the guest handles of one worker thread.
/// [`Store::reconnect`] replaces the connection inside it, so every holder moves with it.
type Shared = Arc<Mutex<PgConnection>>;

/// The server process of the shared connection, for cancelling a guest's statement.
type BackendPid = Arc<AtomicI32>;

fn lock(conn: &Shared) -> MutexGuard<'_, PgConnection> {
    // A poisoned mutex means a panic while a statement ran; the connection is still usable
    // (the next BEGIN fails cleanly if a transaction was left open), so recover it.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One open PostgreSQL database.
pub struct PgStore {
    conn: Shared,
    pid: BackendPid,
    rt: Arc<Rt>,
    options: PgConnectOptions,
    /// The URL as given, with any password removed.
    url: String,
    /// The schema of the live tables, zdr's tables and `stored_events`.
    schema: String,
    high_water: Mutex<HighWater>,
    /// The relations whose lock holders a gap waits for: `stored_events` and its sequence.
    event_relations: Mutex<Option<Vec<i64>>>,
    /// When the store last looked for late events.
    late_checked: Mutex<Option<Instant>>,
    listener: Mutex<Listening>,
}

/// Whether this store listens for new-event notifications.
enum Listening {
    /// Not tried yet.
    Unknown,
    /// Listening on its own connection.
    On(Box<PgListener>),
    /// No trigger, or listening failed: sleep and poll (until the given time, then try again).
    Off(Option<Instant>),
}

/// Adds what zdr was doing to a driver error: the server's own words and SQLSTATE are kept, a
/// broken connection and a lock timeout become errors of their own.
trait PgContext<T> {
    fn context(self, what: impl Into<String>) -> Result<T, StoreError>;
}

impl<T> PgContext<T> for Result<T, sqlx::Error> {
    fn context(self, what: impl Into<String>) -> Result<T, StoreError> {
        self.map_err(|source| store_error(&source, what.into()))
    }
}

fn store_error(err: &sqlx::Error, context: String) -> StoreError {
    let message = describe(err);
    if sqlstate(err).as_deref() == Some("55P03") {
        StoreError::LockTimeout(context)
    } else if connection_lost(err) {
        StoreError::ConnectionLost { context, message }
    } else {
        StoreError::Database { context, message }
    }
}

/// Whether the error means the connection is gone: the network, the server restarting or
/// shutting down, an administrator terminating the session.
fn connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => sqlstate(err).is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_str(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// An error as the user should read it: the server's message with its detail, hint and
/// SQLSTATE, or the driver's description of what failed.
fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => {
            let mut text = db.message().to_string();
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                if let Some(detail) = pg.detail() {
                    text.push_str(&format!("; {detail}"));
                }
                if let Some(hint) = pg.hint() {
                    text.push_str(&format!("; hint: {hint}"));
                }
            }
            match db.code() {
                Some(code) => format!("{text} (SQLSTATE {code})"),
                None => text,
            }
        }
        sqlx::Error::Io(io) => format!("network error: {io}"),
        other => other.to_string(),
    }
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A dynamic statement: zdr's own SQL built from validated names, or guest SQL that passed
/// the guard and was rewritten by it.
fn sql(text: impl Into<String>) -> AssertSqlSafe<String> {
    AssertSqlSafe(text.into())
}

/// Quotes an identifier.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Connects (within [`CONNECT_TIMEOUT`]) and asks for the server process id of the new
/// session; the error is the server's reason, in its words.
async fn connect(options: &PgConnectOptions) -> Result<(PgConnection, i32), String> {
    let connecting = async {
        let mut conn = PgConnection::connect_with(options).await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        Ok::<_, sqlx::Error>((conn, pid))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(err)) => Err(describe(&err)),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// A stable advisory-lock key for a lock name.
fn lock_key(name: &str) -> i64 {
    let digest = Sha256::digest(format!("zdr:{name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Splits `?schema=NAME` off a URL; returns the URL for the driver and the schema.
fn split_schema(url: &str) -> Result<(String, String), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), "public".to_string()));
    };
    let mut schema = "public".to_string();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", value)) => schema = value.to_string(),
            _ => rest.push(pair),
        }
    }
    let valid = schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with("pg_")
        && !schema.starts_with("zdr_");
    if !valid {
        return Err(StoreError::Url(format!(
            "{url} (schema {schema:?} must be lower-case letters, digits and _, not starting with pg_ or zdr_)"
        )));
    }
    let driver_url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((driver_url, schema))
}

impl PgStore {
    /// Connects to the database named by `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DB`,
    /// optionally `?schema=NAME` for the live tables).
    ///
    /// # Errors
    /// A malformed URL, or a server that cannot be reached or refuses the login.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let shown = redact(url);
        let open_err = |message: String| StoreError::Open {
            url: shown.clone(),
            message,
        };
        let (driver_url, schema) = split_schema(url)?;
        let options: PgConnectOptions = driver_url
            .parse()
            .map_err(|e| open_err(format!("{e}; expected postgres://USER@HOST:PORT/DATABASE")))?;
        let options = options
            .application_name("zdr")
            .options([
                ("search_path", schema.as_str()),
                ("statement_timeout", STATEMENT_TIMEOUT),
            ])
            .disable_statement_logging();
        let rt = Rt::new().map_err(|e| open_err(format!("cannot start an I/O runtime: {e}")))?;
        let (conn, pid) = rt.block_on(connect(&options)).map_err(|message| {
            open_err(format!(
                "{message}; is the server running and the database created?"
            ))
        })?;
        Ok(PgStore {
            conn: Arc::new(Mutex::new(conn)),
            pid: Arc::new(AtomicI32::new(pid)),
            rt: Arc::new(rt),
            options,
            url: shown,
            schema,
            high_water: Mutex::new(HighWater::default()),
            event_relations: Mutex::new(None),
            late_checked: Mutex::new(None),
            listener: Mutex::new(Listening::Unknown),
        })
    }

    /// Runs statements that return nothing (several may be separated by `;`).
    fn batch(&self, text: impl Into<String>, what: &str) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(sqlx::raw_sql(sql(text)).execute(&mut *conn))
            .context(what)?;
        Ok(())
    }

    /// The schema and table of `logical` in a target with this role.
    fn physical(
        &self,
        target_id: i64,
        role: Role,
        key: Option<&str>,
        logical: &str,
    ) -> PhysicalName {
        let key = key.unwrap_or("");
        let schema = match role {
            Role::Live => self.schema.clone(),
            Role::Clone => format!("zdr_r_{key}"),
            Role::Retired => format!("zdr_p_{key}"),
            Role::Building => format!("zdr_b{target_id}"),
        };
        PhysicalName {
            schema: Some(schema),
            name: logical.to_string(),
        }
    }

    fn qualified(name: &PhysicalName) -> String {
        match &name.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&name.name)),
            None => quote(&name.name),
        }
    }

    /// Drops `schema` if it is a zdr schema and nothing is left in it.
    fn drop_schema_if_empty(&self, schema: &str) -> Result<(), StoreError> {
        if schema == self.schema {
            return Ok(());
        }
        let mut conn = lock(&self.conn);
        let empty: bool = self
            .rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1)",
                )
                .bind(schema)
                .fetch_one(&mut *conn),
            )
            .context(format!("inspecting schema {schema}"))?;
        if empty {
            self.rt
                .block_on(
                    sqlx::raw_sql(sql(format!("DROP SCHEMA IF EXISTS {}", quote(schema))))
                        .execute(&mut *conn),
                )
                .context(format!("dropping schema {schema}"))?;
        }
        Ok(())
    }

    fn targets_where(&self, condition: &str, arg: Arg<'_>) -> Result<Vec<Target>, StoreError> {
        let text = format!(
            "SELECT t.id, t.projector, t.version_id, v.version, t.role, t.replay_key, t.checkpoint, \
             t.error_event_id, t.error, t.skip_event_id FROM zdr_targets t \
             JOIN zdr_versions v ON v.id = t.version_id WHERE {condition} ORDER BY t.projector, t.id"
        );
        let query = arg.bind(sqlx::query(sql(text)));
        let rows = {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(query.fetch_all(&mut *conn))
                .context("reading targets")?
        };
        rows.iter()
            .map(|r| {
                let read = || -> Result<Target, sqlx::Error> {
                    let error_event_id: Option<i64> = r.try_get(7)?;
                    let error: Option<String> = r.try_get(8)?;
                    let role: String = r.try_get(4)?;
                    let id: i64 = r.try_get(0)?;
                    let role = Role::parse(&role).ok_or_else(|| {
                        sqlx::Error::Decode(format!("target {id} has unknown role {role:?}").into())
                    })?;
                    Ok(Target {
                        id,
                        projector: r.try_get(1)?,
                        version_id: r.try_get(2)?,
                        version: r.try_get(3)?,
                        role,
                        replay_key: r.try_get(5)?,
                        checkpoint: r.try_get(6)?,
                        failure: error_event_id.map(|event_id| Failure {
                            event_id,
                            message: error.unwrap_or_default(),
                        }),
                        skip_event_id: r.try_get(9)?,
                    })
                };
                read().context("reading targets")
            })
            .collect()
    }

    fn replays_where(&self, condition: &str, arg: Arg<'_>) -> Result<Vec<ReplayRow>, StoreError> {
        let text = format!(
            "SELECT key, state, error, to_char(created_at AT TIME ZONE 'UTC', {ISO}), \
             to_char(updated_at AT TIME ZONE 'UTC', {ISO}) FROM zdr_replays WHERE {condition} \
             ORDER BY created_at, key"
        );
        let query = arg.bind(sqlx::query(sql(text)));
        let rows = {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(query.fetch_all(&mut *conn))
                .context("reading replays")?
        };
        let mut replays = Vec::with_capacity(rows.len());
        for r in &rows {
            let (key, state, error, created_at, updated_at): (
                String,
                String,
                Option<String>,
                String,
                String,
            ) = (|| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })()
            .context("reading replays")?;
            let state = ReplayState::parse(&state).ok_or_else(|| {
                StoreError::Corrupt(format!("replay {key} has unknown state {state:?}"))
            })?;
            replays.push(ReplayRow {
                key,
                state,
                error,
                created_at,
                updated_at,
            });
        }
        Ok(replays)
    }

    fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        let mut conn = lock(&self.conn);
        let has_meta: bool = self
            .rt
            .block_on(
                sqlx::query_scalar("SELECT to_regclass('zdr_meta') IS NOT NULL")
                    .fetch_one(&mut *conn),
            )
            .context("reading the schema")?;
        if !has_meta {
            return Ok(None);
        }
        let version: Option<String> = self
            .rt
            .block_on(
                sqlx::query_scalar("SELECT value FROM zdr_meta WHERE key = 'schema_version'")
                    .fetch_optional(&mut *conn),
            )
            .context("reading the schema version")?;
        match version {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("schema_version {v:?} is not a number"))),
        }
    }

    fn check_event_table(&self) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        let columns: Vec<String> = self
            .rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass('stored_events') \
                     AND attnum > 0 AND NOT attisdropped",
                )
                .fetch_all(&mut *conn),
            )
            .context("inspecting stored_events")?;
        check_event_columns(&columns)
    }

    /// The statement that appends one event, with each text value cast to the type its
    /// column has: zdr's own table uses `text` and `jsonb`, a Laravel one `uuid`, `json` or
    /// `timestamp(0)`, and a parameter sent as text converts to any of them.
    fn event_insert(&self) -> Result<String, StoreError> {
        let mut conn = lock(&self.conn);
        let types: Vec<(String, String)> = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = to_regclass('stored_events') AND attnum > 0 AND NOT attisdropped",
                )
                .fetch_all(&mut *conn),
            )
            .context("inspecting stored_events")?;
        let type_of = |column: &str| {
            types
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(column))
                .map(|(_, ty)| ty.clone())
                .ok_or_else(|| StoreError::EventTable(column.to_string()))
        };
        Ok(format!(
            "INSERT INTO stored_events (aggregate_uuid, aggregate_version, event_version, event_class, \
             event_properties, meta_data, created_at) \
             VALUES ($1::text::{}, $2, $3, $4, $5::text::{}, $6::text::{}, \
             COALESCE($7::text::{created}, localtimestamp::{created})) RETURNING id",
            type_of("aggregate_uuid")?,
            type_of("event_properties")?,
            type_of("meta_data")?,
            created = type_of("created_at")?,
        ))
    }

    /// The relations whose writers a gap waits for: `stored_events` and the sequence its ids
    /// come from (looked up once).
    fn event_relations(&self, conn: &mut PgConnection) -> Result<Vec<i64>, StoreError> {
        let mut known = self
            .event_relations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(relations) = &*known {
            return Ok(relations.clone());
        }
        let (table, sequence): (Option<i64>, Option<i64>) = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT to_regclass('stored_events')::oid::bigint, \
                     to_regclass(pg_get_serial_sequence('stored_events', 'id'))::oid::bigint",
                )
                .fetch_one(conn),
            )
            .context("looking up stored_events and its id sequence")?;
        let relations: Vec<i64> = table.into_iter().chain(sequence).collect();
        *known = Some(relations.clone());
        Ok(relations)
    }

    /// The virtual transaction ids of the sessions (but this one) that hold a write lock on
    /// the event table or its sequence now: every writer that may hold an id it has not
    /// written yet.
    fn event_writers(&self, conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
        let relations = self.event_relations(conn)?;
        self.rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT DISTINCT virtualtransaction FROM pg_locks WHERE locktype = 'relation' \
                     AND relation::bigint = ANY($1) AND mode <> 'AccessShareLock' \
                     AND pid IS DISTINCT FROM pg_backend_pid()",
                )
                .bind(relations)
                .fetch_all(conn),
            )
            .context("looking for writers of stored_events")
    }

    /// Whether any of `writers` still holds a write lock on the event table or its sequence.
    fn any_still_writing(
        &self,
        conn: &mut PgConnection,
        writers: &[String],
    ) -> Result<bool, StoreError> {
        let relations = self.event_relations(conn)?;
        self.rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'relation' \
                     AND relation::bigint = ANY($1) AND mode <> 'AccessShareLock' \
                     AND virtualtransaction = ANY($2))",
                )
                .bind(relations)
                .bind(writers)
                .fetch_one(conn),
            )
            .context("looking for writers of stored_events")
    }

    /// Remembers the ids in `(from, to]` that are missing now that they are final (at most a
    /// thousand), to notice one written after all.
    fn remember_given_up(
        &self,
        conn: &mut PgConnection,
        high_water: &mut HighWater,
        (from, to): (i64, i64),
    ) -> Result<(), StoreError> {
        let missing: Vec<i64> = self
            .rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT g FROM generate_series($1 + 1, LEAST($2, $1 + 100000)) AS g \
                     WHERE NOT EXISTS (SELECT 1 FROM stored_events WHERE id = g) ORDER BY g LIMIT 1000",
                )
                .bind(from)
                .bind(to)
                .fetch_all(conn),
            )
            .context("listing event ids never written")?;
        high_water.remember_final_gaps(&missing, Instant::now());
        Ok(())
    }

    /// The smallest id in `(settled, max_id]` that is not visible, if any.
    fn first_gap(
        &self,
        conn: &mut PgConnection,
        settled: i64,
        max_id: i64,
    ) -> Result<Option<i64>, StoreError> {
        // A gap right above `settled` is `settled + 1` missing; otherwise the first visible
        // id whose successor is missing.
        let gap: Option<i64> = self
            .rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM stored_events WHERE id = $1 + 1) THEN $1 + 1 \
                     ELSE (SELECT g.id + 1 FROM (SELECT id, lead(id) OVER (ORDER BY id) AS next \
                           FROM stored_events WHERE id > $1 AND id <= $2) g \
                           WHERE g.next IS NOT NULL AND g.next > g.id + 1 ORDER BY g.id LIMIT 1) END",
                )
                .bind(settled)
                .bind(max_id)
                .fetch_one(conn),
            )
            .context("looking for uncommitted event ids")?;
        Ok(gap.filter(|g| *g <= max_id))
    }

    /// Listens for the event trigger's notifications, if the trigger exists.
    fn start_listening(&self) -> Listening {
        let exists: Result<bool, _> = {
            let mut conn = lock(&self.conn);
            self.rt.block_on(
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'zdr_notify_events' \
                     AND tgrelid = to_regclass('stored_events'))",
                )
                .fetch_one(&mut *conn),
            )
        };
        match exists {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(
                    "no notify trigger on stored_events (run `zdr init` to install it): polling for new events"
                );
                return Listening::Off(None);
            }
            Err(err) => {
                tracing::warn!("cannot look for the notify trigger, polling instead: {err}");
                return Listening::Off(None);
            }
        }
        let listen = async {
            let mut conn = PgListener::connect_with(
                &sqlx::pool::PoolOptions::<Postgres>::new()
                    .max_connections(1)
                    .connect_lazy_with(self.options.clone()),
            )
            .await?;
            conn.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(conn)
        };
        match self.rt.block_on(listen) {
            Ok(listener) => {
                tracing::debug!("listening for new events on channel {CHANNEL}");
                Listening::On(Box::new(listener))
            }
            Err(err) => {
                tracing::warn!(
                    "cannot LISTEN for new events, polling instead: {}",
                    describe(&err)
                );
                Listening::Off(Some(Instant::now() + LISTEN_RETRY))
            }
        }
    }
}

/// The one parameter of a target or replay query.
#[derive(Clone, Copy)]
enum Arg<'a> {
    None,
    Int(i64),
    Text(&'a str),
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl Arg<'_> {
    fn bind(self, query: PgQuery<'_>) -> PgQuery<'_> {
        match self {
            Arg::None => query,
            Arg::Int(v) => query.bind(v),
            Arg::Text(v) => query.bind(v.to_string()),
        }
    }
}

impl Store for PgStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn init(&self) -> Result<Vec<String>, StoreError> {
        refuse_newer(self.schema_version()?)?;
        let had_events = {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(
                    sqlx::query_scalar::<_, bool>(
                        "SELECT to_regclass('stored_events') IS NOT NULL",
                    )
                    .fetch_one(&mut *conn),
                )
                .context("looking for stored_events")?
        };
        self.batch(
            format!(
                "BEGIN; SELECT pg_advisory_xact_lock({INIT_LOCK}); \
                 CREATE SCHEMA IF NOT EXISTS {schema}; {EVENT_TABLE} {SCHEMA} {SCHEMA_V2} \
                 ALTER TABLE zdr_targets ADD COLUMN IF NOT EXISTS skip_event_id BIGINT; \
                 {NOTIFY_TRIGGER} {ROW_CAP_FUNCTION} \
                 INSERT INTO zdr_meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}') \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value \
                 WHERE zdr_meta.value::bigint < excluded.value::bigint; COMMIT;",
                schema = quote(&self.schema)
            ),
            "creating zdr tables",
        )
        .inspect_err(|_| {
            let _ = self.batch("ROLLBACK", "rolling back");
        })?;
        if had_events {
            tracing::debug!("using the existing stored_events table");
        }
        self.check_event_table()?;
        self.event_writer_warnings()
    }

    fn ensure_ready(&self) -> Result<(), StoreError> {
        readiness(self.schema_version()?, &self.url)
    }

    fn event_writer_warnings(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = lock(&self.conn);
        let (sequence, cache): (Option<String>, Option<i64>) = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT pg_get_serial_sequence('stored_events', 'id'), \
                     (SELECT seqcache FROM pg_sequence \
                      WHERE seqrelid = to_regclass(pg_get_serial_sequence('stored_events', 'id')))",
                )
                .fetch_one(&mut *conn),
            )
            .context("inspecting the id sequence of stored_events")?;
        Ok(match (sequence, cache) {
            (None, _) => vec![
                "stored_events.id takes its values from no sequence (no serial or identity column): \
                 zdr cannot tell which writer still holds an id it has not written, so an event \
                 committed late may be passed over. Give the column a sequence default \
                 (see docs/architecture.md, \"Reading events\")"
                    .to_string(),
            ],
            (Some(sequence), Some(cache)) if cache > 1 => vec![format!(
                "sequence {sequence} caches {cache} ids per session, so ids are not drawn in \
                 order and an event committed late may be passed over; run \
                 `ALTER SEQUENCE {sequence} CACHE 1` (see docs/architecture.md, \"Reading events\")"
            )],
            _ => Vec::new(),
        })
    }

    fn verify_open(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn reconnect(&self) -> Result<(), StoreError> {
        let (fresh, pid) = self
            .rt
            .block_on(connect(&self.options))
            .map_err(|message| StoreError::ConnectionLost {
                context: format!("reconnecting to {}", self.url),
                message,
            })?;
        let mut conn = lock(&self.conn);
        let old = std::mem::replace(&mut *conn, fresh);
        self.pid.store(pid, Ordering::Relaxed);
        drop(conn);
        // The old connection is dead; closing it would only wait on a broken socket.
        drop(old);
        *self
            .listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Listening::Unknown;
        Ok(())
    }

    fn try_lock(&self, name: &str) -> Result<Option<RunLock>, StoreError> {
        let key = lock_key(name);
        let taken = self.rt.block_on(async {
            let mut conn = PgConnection::connect_with(&self.options).await?;
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(taken.then_some(conn))
        });
        match taken.context(format!("taking lock {name}"))? {
            Some(conn) => Ok(Some(RunLock::new(HeldSession {
                conn,
                rt: self.rt.clone(),
            }))),
            None => Ok(None),
        }
    }

    fn begin_write(&self) -> Result<(), StoreError> {
        // READ COMMITTED whatever the server's default: every statement of a batch must see
        // what committed before it (the high-water mark relies on it).
        self.batch(
            format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITER_LOCK})"
            ),
            "beginning a write transaction",
        )
    }

    fn commit(&self) -> Result<(), StoreError> {
        self.batch("COMMIT", "committing")
    }

    fn rollback(&self) -> Result<(), StoreError> {
        self.batch("ROLLBACK", "rolling back")
    }

    fn savepoint(&self, name: &str) -> Result<(), StoreError> {
        self.batch(format!("SAVEPOINT {name}"), "opening a savepoint")
    }

    fn release(&self, name: &str) -> Result<(), StoreError> {
        self.batch(format!("RELEASE SAVEPOINT {name}"), "releasing a savepoint")
    }

    fn rollback_to(&self, name: &str) -> Result<(), StoreError> {
        self.batch(
            format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
            "rolling back to a savepoint",
        )
    }

    fn append_events(&self, events: &[NewEvent]) -> Result<Option<(i64, i64)>, StoreError> {
        let insert = self.event_insert()?;
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(async {
                let mut tx = conn.begin().await?;
                let mut range = None;
                for e in events {
                    let id: i64 = sqlx::query_scalar(sql(insert.as_str()))
                        .bind(&e.aggregate_uuid)
                        .bind(e.aggregate_version)
                        .bind(i16::try_from(e.event_version).unwrap_or(i16::MAX))
                        .bind(&e.event_class)
                        .bind(&e.event_properties)
                        .bind(&e.meta_data)
                        .bind(&e.created_at)
                        .fetch_one(&mut *tx)
                        .await?;
                    range = Some(range.map_or((id, id), |(first, _)| (first, id)));
                }
                tx.commit().await?;
                Ok(range)
            })
            .context("appending events")
    }

    fn count_events(&self) -> Result<i64, StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(
                sqlx::query_scalar("SELECT COUNT(*) FROM stored_events").fetch_one(&mut *conn),
            )
            .context("counting events")
    }

    fn head(&self) -> Result<i64, StoreError> {
        let mut high_water = self
            .high_water
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut conn = lock(&self.conn);
        // The writers the pending gap waits for are checked before the scan, so that the scan
        // and every read after it see whatever they committed.
        if let Some(writers) = high_water.awaited()
            && !self.any_still_writing(&mut conn, writers)?
            && let Some(given_up) = high_water.writers_ended()
        {
            self.remember_given_up(&mut conn, &mut high_water, given_up)?;
        }
        let settled = high_water.settled();
        let (max_id, count): (i64, i64) = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT COALESCE(MAX(id), $1), COUNT(*) FROM stored_events WHERE id > $1",
                )
                .bind(settled)
                .fetch_one(&mut *conn),
            )
            .context("reading the last event id")?;
        let first_gap = if count == max_id - settled {
            None
        } else {
            self.first_gap(&mut conn, settled, max_id)?
        };
        match high_water.observe(Scan { max_id, first_gap }) {
            Observed::Head(head) => Ok(head),
            Observed::Gap { up_to, .. } => {
                let writers = self.event_writers(&mut conn)?;
                let (head, given_up) = high_water.wait_for(up_to, writers);
                if let Some(given_up) = given_up {
                    self.remember_given_up(&mut conn, &mut high_water, given_up)?;
                }
                Ok(head)
            }
        }
    }

    fn late_events(&self) -> Result<Vec<i64>, StoreError> {
        {
            let mut checked = self
                .late_checked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if checked.is_some_and(|at| at.elapsed() < LATE_CHECK_INTERVAL) {
                return Ok(Vec::new());
            }
            *checked = Some(Instant::now());
        }
        let mut high_water = self
            .high_water
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let candidates = high_water.late_candidates(Instant::now());
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = lock(&self.conn);
        let late: Vec<i64> = self
            .rt
            .block_on(
                sqlx::query_scalar("SELECT id FROM stored_events WHERE id = ANY($1) ORDER BY id")
                    .bind(&candidates)
                    .fetch_all(&mut *conn),
            )
            .context("looking for events written late")?;
        high_water.found_late(&late);
        Ok(late)
    }

    fn read_events(
        &self,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<ReadEvent>, StoreError> {
        let mut conn = lock(&self.conn);
        let rows = self
            .rt
            .block_on(
                sqlx::query(
                    "SELECT id, aggregate_uuid::text, aggregate_version::bigint, COALESCE(event_version, 1)::bigint, \
                     event_class::text, COALESCE(event_properties::text, '{}'), COALESCE(meta_data::text, '{}'), \
                     COALESCE(created_at::text, '') \
                     FROM stored_events WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3",
                )
                .bind(after)
                .bind(up_to)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&mut *conn),
            )
            .context("reading events")?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get(0).context("reading events")?;
                let decoded = (|| {
                    Ok::<_, sqlx::Error>(Event {
                        id,
                        aggregate_uuid: r.try_get(1)?,
                        aggregate_version: r.try_get(2)?,
                        event_version: r.try_get(3)?,
                        event_class: r.try_get(4)?,
                        event_properties: r.try_get(5)?,
                        meta_data: r.try_get(6)?,
                        created_at: r.try_get(7)?,
                    })
                })();
                Ok(match decoded {
                    Ok(event) => ReadEvent::Event(event),
                    Err(err) => ReadEvent::Undecodable(Undecodable {
                        id,
                        event_class: r.try_get(4).ok(),
                        reason: describe(&err),
                    }),
                })
            })
            .collect()
    }

    fn register_version(
        &self,
        hash: &str,
        wasm: &[u8],
        description: &Description,
    ) -> Result<i64, StoreError> {
        let json =
            serde_json::to_string(description).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(async {
                sqlx::query(
                    "INSERT INTO zdr_components (hash, wasm, size) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
                )
                .bind(hash)
                .bind(wasm)
                .bind(i64::try_from(wasm.len()).unwrap_or(i64::MAX))
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "INSERT INTO zdr_versions (projector, version, component_hash, description) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (projector, component_hash) DO NOTHING",
                )
                .bind(&description.name)
                .bind(&description.version)
                .bind(hash)
                .bind(&json)
                .execute(&mut *conn)
                .await?;
                sqlx::query_scalar(
                    "SELECT id FROM zdr_versions WHERE projector = $1 AND component_hash = $2",
                )
                .bind(&description.name)
                .bind(hash)
                .fetch_one(&mut *conn)
                .await
            })
            .context("registering the version")
    }

    fn version(&self, version_id: i64) -> Result<(Description, String, Vec<u8>), StoreError> {
        let (json, hash, wasm): (String, String, Vec<u8>) = {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(
                    sqlx::query_as(
                        "SELECT v.description, v.component_hash, c.wasm FROM zdr_versions v \
                         JOIN zdr_components c ON c.hash = v.component_hash WHERE v.id = $1",
                    )
                    .bind(version_id)
                    .fetch_one(&mut *conn),
                )
                .context(format!("loading projector version {version_id}"))?
        };
        let description = serde_json::from_str(&json).map_err(|e| {
            StoreError::Corrupt(format!("description of version {version_id}: {e}"))
        })?;
        Ok((description, hash, wasm))
    }

    fn description(&self, version_id: i64) -> Result<Description, StoreError> {
        let json: String = {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(
                    sqlx::query_scalar("SELECT description FROM zdr_versions WHERE id = $1")
                        .bind(version_id)
                        .fetch_one(&mut *conn),
                )
                .context(format!("loading projector version {version_id}"))?
        };
        serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("description of version {version_id}: {e}")))
    }

    fn insert_target(
        &self,
        projector: &str,
        version_id: i64,
        role: Role,
        replay_key: Option<&str>,
    ) -> Result<Target, StoreError> {
        let id: i64 = {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(
                    sqlx::query_scalar(
                        "INSERT INTO zdr_targets (projector, version_id, role, replay_key) VALUES ($1, $2, $3, $4) RETURNING id",
                    )
                    .bind(projector)
                    .bind(version_id)
                    .bind(role.as_str())
                    .bind(replay_key)
                    .fetch_one(&mut *conn),
                )
                .context("creating a target")?
        };
        self.target(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("target {id} vanished after insert")))
    }

    fn target(&self, id: i64) -> Result<Option<Target>, StoreError> {
        Ok(self.targets_where("t.id = $1", Arg::Int(id))?.pop())
    }

    fn live_target(&self, projector: &str) -> Result<Option<Target>, StoreError> {
        Ok(self
            .targets_where("t.projector = $1 AND t.role = 'live'", Arg::Text(projector))?
            .pop())
    }

    fn live_targets(&self) -> Result<Vec<Target>, StoreError> {
        self.targets_where("t.role = 'live'", Arg::None)
    }

    fn targets_of_projector(&self, projector: &str) -> Result<Vec<Target>, StoreError> {
        self.targets_where("t.projector = $1", Arg::Text(projector))
    }

    fn replay_targets(&self, key: &str) -> Result<Vec<Target>, StoreError> {
        self.targets_where("t.replay_key = $1", Arg::Text(key))
    }

    fn projecting_clones(&self, projector: &str) -> Result<Vec<Target>, StoreError> {
        self.targets_where(
            "t.projector = $1 AND t.role = 'clone' AND t.error_event_id IS NULL \
             AND t.replay_key IN (SELECT key FROM zdr_replays WHERE state = 'projecting')",
            Arg::Text(projector),
        )
    }

    fn set_checkpoint(&self, target_id: i64, checkpoint: i64) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(
                sqlx::query("UPDATE zdr_targets SET checkpoint = $2 WHERE id = $1")
                    .bind(target_id)
                    .bind(checkpoint)
                    .execute(&mut *conn),
            )
            .context("saving a checkpoint")?;
        Ok(())
    }

    fn record_failure(
        &self,
        target: &Target,
        event_id: i64,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(async {
                sqlx::query(
                    "UPDATE zdr_targets SET error_event_id = $2, error = $3, updated_at = now() WHERE id = $1",
                )
                .bind(target.id)
                .bind(event_id)
                .bind(message)
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "INSERT INTO zdr_failures (target_id, projector, replay_key, event_id, message) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(target.id)
                .bind(&target.projector)
                .bind(&target.replay_key)
                .bind(event_id)
                .bind(message)
                .execute(&mut *conn)
                .await
            })
            .context("recording a failure")?;
        Ok(())
    }

    fn clear_failure(&self, target_id: i64) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(
                sqlx::query(
                    "UPDATE zdr_targets SET error_event_id = NULL, error = NULL WHERE id = $1",
                )
                .bind(target_id)
                .execute(&mut *conn),
            )
            .context("clearing a failure")?;
        Ok(())
    }

    fn set_role(
        &self,
        target_id: i64,
        role: Role,
        replay_key: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(
                sqlx::query(
                    "UPDATE zdr_targets SET role = $2, replay_key = $3, updated_at = now() WHERE id = $1",
                )
                .bind(target_id)
                .bind(role.as_str())
                .bind(replay_key)
                .execute(&mut *conn),
            )
            .context("changing a target's role")?;
        Ok(())
    }

    fn delete_target(&self, target_id: i64) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(
                sqlx::query("DELETE FROM zdr_targets WHERE id = $1")
                    .bind(target_id)
                    .execute(&mut *conn),
            )
            .context("deleting a target")?;
        Ok(())
    }

    fn record_run(
        &self,
        target: &Target,
        kind: &str,
        from_event: i64,
        to_event: i64,
        events: i64,
        outcome: &str,
    ) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(
                sqlx::query(
                    "INSERT INTO zdr_runs (replay_key, projector, kind, from_event, to_event, events, outcome) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&target.replay_key)
                .bind(&target.projector)
                .bind(kind)
                .bind(from_event)
                .bind(to_event)
                .bind(events)
                .bind(outcome)
                .execute(&mut *conn),
            )
            .context("recording run history")?;
        Ok(())
    }

    fn guard_for(&self, target: &Target, description: &Description) -> Guard {
        let tables = description.tables.iter().map(|t| {
            (
                t.name.clone(),
                self.physical(
                    target.id,
                    target.role,
                    target.replay_key.as_deref(),
                    &t.name,
                ),
            )
        });
        Guard::new(
            Dialect::Postgres,
            tables,
            Some(format!("zdr_i{}_", target.id)),
        )
    }

    fn object_exists(&self, name: &str) -> Result<bool, StoreError> {
        let (schema, table) = name.split_once('.').unwrap_or((self.schema.as_str(), name));
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND lower(c.relname) = lower($2))",
                )
                .bind(schema)
                .bind(table)
                .fetch_one(&mut *conn),
            )
            .context("looking up a table")
    }

    fn dependents_of(&self, table: &str) -> Result<Vec<String>, StoreError> {
        let qualified = format!("{}.{}", quote(&self.schema), quote(table));
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT DISTINCT 'view ' || v.oid::regclass::text FROM pg_depend d \
                       JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class \
                       WHERE d.refobjid = to_regclass($1) AND v.oid <> d.refobjid \
                     UNION ALL SELECT 'trigger ' || tgname::text FROM pg_trigger \
                       WHERE tgrelid = to_regclass($1) AND NOT tgisinternal \
                     UNION ALL SELECT 'foreign key ' || conname::text FROM pg_constraint \
                       WHERE confrelid = to_regclass($1) AND conrelid <> confrelid",
                )
                .bind(qualified)
                .fetch_all(&mut *conn),
            )
            .context("looking for views, triggers and foreign keys")
    }

    fn create_tables(&self, target: &Target, description: &Description) -> Result<(), StoreError> {
        let guard = self.guard_for(target, description);
        let schema = self
            .physical(target.id, target.role, target.replay_key.as_deref(), "")
            .schema
            .unwrap_or_else(|| self.schema.clone());
        self.batch(
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote(&schema)),
            "creating the target's schema",
        )?;
        for table in &description.tables {
            for ddl in &table.ddl {
                let checked = guard
                    .check(ddl, Mode::Setup)
                    .map_err(|e| StoreError::Ddl(format!("{}: {e}", table.name)))?;
                self.batch(
                    checked.sql.clone(),
                    &format!("creating table {} ({})", table.name, checked.sql),
                )?;
            }
        }
        Ok(())
    }

    fn drop_tables(&self, target: &Target, description: &Description) -> Result<(), StoreError> {
        let mut schema = None;
        for table in &description.tables {
            let name = self.physical(
                target.id,
                target.role,
                target.replay_key.as_deref(),
                &table.name,
            );
            self.batch(
                format!("DROP TABLE IF EXISTS {}", Self::qualified(&name)),
                &format!("dropping table {}", Self::qualified(&name)),
            )?;
            schema = name.schema;
        }
        if let Some(schema) = schema {
            self.drop_schema_if_empty(&schema)?;
        }
        Ok(())
    }

    fn rename_tables(
        &self,
        target: &Target,
        description: &Description,
        new_role: Role,
        new_key: Option<&str>,
    ) -> Result<(), StoreError> {
        let Some(first) = description.tables.first() else {
            return Ok(());
        };
        let from_schema = self
            .physical(
                target.id,
                target.role,
                target.replay_key.as_deref(),
                &first.name,
            )
            .schema
            .unwrap_or_else(|| self.schema.clone());
        let to_schema = self
            .physical(target.id, new_role, new_key, &first.name)
            .schema
            .unwrap_or_else(|| self.schema.clone());
        self.batch(
            format!(
                "SET LOCAL lock_timeout = '{RENAME_LOCK_TIMEOUT}'; CREATE SCHEMA IF NOT EXISTS {}",
                quote(&to_schema)
            ),
            "preparing to move tables",
        )?;
        for table in &description.tables {
            let from = self.physical(
                target.id,
                target.role,
                target.replay_key.as_deref(),
                &table.name,
            );
            self.batch(
                format!(
                    "ALTER TABLE {} SET SCHEMA {}",
                    Self::qualified(&from),
                    quote(&to_schema)
                ),
                &format!("moving {} to schema {to_schema}", Self::qualified(&from)),
            )?;
        }
        self.batch("SET LOCAL lock_timeout = 0", "restoring the lock timeout")?;
        self.drop_schema_if_empty(&from_schema)
    }

    fn physical_names(
        &self,
        target: &Target,
        description: &Description,
        role: Role,
        key: Option<&str>,
    ) -> Vec<String> {
        description
            .tables
            .iter()
            .map(|t| {
                let name = self.physical(target.id, role, key, &t.name);
                match name.schema {
                    Some(schema) => format!("{schema}.{}", name.name),
                    None => name.name,
                }
            })
            .collect()
    }

    fn raw_guest_connection(&self) -> Box<dyn RawGuestConnection> {
        Box::new(PgGuestConnection {
            conn: self.conn.clone(),
            pid: self.pid.clone(),
            rt: self.rt.clone(),
            options: self.options.clone(),
        })
    }

    fn sql_execute(&self, text: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut conn = lock(&self.conn);
        let done = self
            .rt
            .block_on(PgGuestConnection::bound(text, params).execute(&mut *conn))
            .context(format!("running {text}"))?;
        Ok(done.rows_affected())
    }

    fn sql_rows(&self, text: &str, params: &[Value]) -> Result<RowSet, StoreError> {
        let mut conn = lock(&self.conn);
        let rows = self
            .rt
            .block_on(PgGuestConnection::bound(text, params).fetch_all(&mut *conn))
            .context(format!("running {text}"))?;
        Ok(row_set(&rows))
    }

    fn read_rows(&self, text: &str) -> Result<RowSet, StoreError> {
        let mut conn = lock(&self.conn);
        let rows = self
            .rt
            .block_on(sqlx::query(sql(text)).fetch_all(&mut *conn))
            .context(format!("running {text}"))?;
        Ok(row_set(&rows))
    }

    fn insert_replay(&self, key: &str) -> Result<bool, StoreError> {
        let mut conn = lock(&self.conn);
        let result = self
            .rt
            .block_on(
                sqlx::query(
                    "INSERT INTO zdr_replays (key, state) VALUES ($1, 'created') ON CONFLICT (key) DO NOTHING",
                )
                .bind(key)
                .execute(&mut *conn),
            )
            .context("creating the replay")?;
        Ok(result.rows_affected() == 1)
    }

    fn replay(&self, key: &str) -> Result<Option<ReplayRow>, StoreError> {
        Ok(self.replays_where("key = $1", Arg::Text(key))?.pop())
    }

    fn replays(&self) -> Result<Vec<ReplayRow>, StoreError> {
        self.replays_where("TRUE", Arg::None)
    }

    fn transition(
        &self,
        key: &str,
        from: &[ReplayState],
        to: ReplayState,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let from: Vec<String> = from.iter().map(|s| s.as_str().to_string()).collect();
        let mut conn = lock(&self.conn);
        let result = self
            .rt
            .block_on(
                sqlx::query(
                    "UPDATE zdr_replays SET state = $2, error = $3, updated_at = now() \
                     WHERE key = $1 AND state = ANY($4)",
                )
                .bind(key)
                .bind(to.as_str())
                .bind(error)
                .bind(from)
                .execute(&mut *conn),
            )
            .context("changing the replay state")?;
        Ok(result.rows_affected() == 1)
    }

    fn delete_replay(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(
                sqlx::query("DELETE FROM zdr_replays WHERE key = $1")
                    .bind(key)
                    .execute(&mut *conn),
            )
            .context("deleting the replay")?;
        Ok(())
    }

    fn wait_for_events(&self, timeout: Duration) -> bool {
        let mut listening = self
            .listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let retry = match &*listening {
            Listening::Unknown => true,
            Listening::Off(Some(at)) => Instant::now() >= *at,
            _ => false,
        };
        if retry {
            *listening = self.start_listening();
        }
        match &mut *listening {
            Listening::On(listener) => {
                match self
                    .rt
                    .block_on(async { tokio::time::timeout(timeout, listener.recv()).await })
                {
                    Ok(Ok(_)) => true,
                    Ok(Err(err)) => {
                        tracing::warn!(
                            "lost the LISTEN connection, polling for {} s: {}",
                            LISTEN_RETRY.as_secs(),
                            describe(&err)
                        );
                        *listening = Listening::Off(Some(Instant::now() + LISTEN_RETRY));
                        false
                    }
                    Err(_) => false,
                }
            }
            Listening::Off(_) | Listening::Unknown => {
                std::thread::sleep(timeout);
                false
            }
        }
    }
}

/// A session advisory lock: held while its connection is open.
struct HeldSession {
    conn: PgConnection,
    /// The runtime the connection is registered with, kept as long as the connection.
    rt: Arc<Rt>,
}

impl HeldLock for HeldSession {
    fn is_held(&mut self) -> bool {
        // The server releases a session lock with its session: a connection that still
        // answers still holds it.
        self.rt
            .block_on(async {
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    sqlx::query("SELECT 1").execute(&mut self.conn),
                )
                .await
            })
            .is_ok_and(|answered| answered.is_ok())
    }
}

/// The raw side of a guest's handle: runs checked statements on the worker's shared
/// connection, cancels one still running at the guest's deadline, and keeps result rows
/// longer than [`MAX_VALUE_BYTES`] on the server.
struct PgGuestConnection {
    conn: Shared,
    pid: BackendPid,
    rt: Arc<Rt>,
    /// For the second connection that cancels a statement at the deadline.
    options: PgConnectOptions,
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

/// Runs `work` until `deadline`; past it, cancels the statement running in server process
/// `pid` from a connection of its own, waits for `work` to wind up, and answers
/// `limit-exceeded`.
async fn until_deadline<T>(
    work: impl Future<Output = Result<T, DbError>>,
    deadline: Instant,
    options: &PgConnectOptions,
    pid: i32,
) -> Result<T, DbError> {
    let mut work = std::pin::pin!(work);
    match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), &mut work).await {
        Ok(done) => done,
        Err(_) => {
            let cancelled = async {
                let mut conn = PgConnection::connect_with(options).await?;
                sqlx::query("SELECT pg_cancel_backend($1)")
                    .bind(pid)
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            };
            if let Err(err) = cancelled.await {
                tracing::warn!(
                    "could not cancel a guest statement past its deadline: {}",
                    describe(&err)
                );
            }
            // The statement ends with "canceling statement due to user request"; the
            // connection is then ready for the rollback that follows.
            let _ = work.await;
            Err(DbError::LimitExceeded(
                "the statement was cancelled: it ran past the deadline of the guest's call".into(),
            ))
        }
    }
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
            &self.options,
            pid,
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
            &self.options,
            pid,
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

    fn bound<'q>(text: &str, params: &'q [Value]) -> PgQuery<'q> {
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

fn row_set(rows: &[PgRow]) -> RowSet {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh database on the test server (`ZDR_TEST_POSTGRES_URL`, default the local
    /// `postgres` user's `test` database), dropped at the end. Fails, never skips, when the
    /// server is unreachable.
    struct TestDatabase {
        admin: String,
        name: String,
        rt: tokio::runtime::Runtime,
    }

    impl TestDatabase {
        fn new(tag: &str) -> TestDatabase {
            let admin = std::env::var("ZDR_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let name = format!("zdr_unit_{tag}_{}", std::process::id());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL at {admin} is required for this test: {e}")
                });
                for statement in [
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    format!("CREATE DATABASE {name}"),
                ] {
                    sqlx::raw_sql(sql(statement))
                        .execute(&mut conn)
                        .await
                        .expect("create the test database");
                }
            });
            TestDatabase { admin, name, rt }
        }

        fn url(&self) -> String {
            let base = self
                .admin
                .rsplit_once('/')
                .map_or(self.admin.as_str(), |(b, _)| b);
            format!("{base}/{}", self.name)
        }

        /// A plain connection of the test's own, as the application's writer.
        fn connect(&self) -> PgConnection {
            self.rt
                .block_on(PgConnection::connect(&self.url()))
                .expect("connect")
        }

        fn exec(&self, conn: &mut PgConnection, text: &str) {
            self.rt
                .block_on(sqlx::raw_sql(sql(text)).execute(conn))
                .unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let admin = self.admin.clone();
            let name = self.name.clone();
            let _ = self.rt.block_on(async move {
                let mut conn = PgConnection::connect(&admin).await?;
                sqlx::raw_sql(sql(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut conn)
                    .await
            });
        }
    }

    const INSERT: &str = "INSERT INTO stored_events (event_class, event_properties, meta_data, created_at) \
                          VALUES ('E', '{}', '{}', localtimestamp)";

    #[test]
    fn the_head_never_passes_an_insert_still_in_flight() {
        let test = TestDatabase::new("inflight");
        let store = PgStore::open(&test.url()).expect("open");
        store.init().expect("init");
        let (mut a, mut b) = (test.connect(), test.connect());
        // A draws id 1 and stays open; B draws id 2 and commits first.
        test.exec(&mut a, &format!("BEGIN; {INSERT}"));
        test.exec(&mut b, INSERT);
        assert_eq!(
            store.head().expect("head"),
            0,
            "id 2 is visible but 1 may still commit"
        );
        assert_eq!(
            store.head().expect("head"),
            0,
            "still held after the confirmation"
        );
        test.exec(&mut a, "COMMIT");
        assert_eq!(store.head().expect("head"), 2);
        let ids: Vec<i64> = store
            .read_events(0, 2, 10)
            .expect("read")
            .iter()
            .map(ReadEvent::id)
            .collect();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn a_rolled_back_id_is_passed_once_its_transaction_ended() {
        let test = TestDatabase::new("rollback");
        let store = PgStore::open(&test.url()).expect("open");
        store.init().expect("init");
        let (mut a, mut b) = (test.connect(), test.connect());
        test.exec(&mut a, &format!("BEGIN; {INSERT}"));
        test.exec(&mut b, INSERT);
        test.exec(&mut b, INSERT);
        assert_eq!(store.head().expect("head"), 0);
        test.exec(&mut a, "ROLLBACK");
        // The gap at 1 is final now. Transaction ids are cluster-wide, so a transaction of a
        // test running beside this one can hold the horizon back for a moment: look again
        // until the head moves, and check where it lands.
        let settles = |store: &PgStore| {
            (0..600)
                .map(|_| {
                    std::thread::sleep(Duration::from_millis(50));
                    store.head().expect("head")
                })
                .find(|head| *head != 0)
        };
        assert_eq!(settles(&store), Some(3));
        // A fresh reader meets the old gap and passes it, never stopping short of it.
        let fresh = PgStore::open(&test.url()).expect("open");
        assert_eq!(settles(&fresh), Some(3));
    }

    #[test]
    fn writes_roll_back_and_tables_move_between_schemas() {
        let test = TestDatabase::new("tables");
        let db = super::super::Db::open(&test.url()).expect("open");
        db.init().expect("init");
        db.ensure_ready().expect("ready");
        let description = Description {
            name: "t".into(),
            version: "1".into(),
            tables: vec![crate::model::TableDecl {
                name: "items".into(),
                ddl: vec![
                    "CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER NOT NULL)".into(),
                    "CREATE INDEX items_by_n ON items (n)".into(),
                ],
            }],
            handles: vec![],
        };
        let version = db
            .register_version("h", b"wasm", &description)
            .expect("version");
        let clone = db
            .write(|db| {
                let target = db.insert_target("t", version, Role::Clone, Some("k1"))?;
                db.create_tables(&target, &description)?;
                Ok::<_, StoreError>(target)
            })
            .expect("create");
        assert!(db.object_exists("zdr_r_k1.items").expect("exists"));
        let mut guest = db.guest_connection(&clone, &description);
        let call = || crate::backend::Call {
            deadline: Instant::now() + Duration::from_secs(30),
        };
        let refused = guest
            .execute(
                "INSERT INTO items (id, n) VALUES ($1, $2)",
                &[Value::Text("a".into()), Value::Null],
                call(),
            )
            .expect_err("NOT NULL holds");
        // The failure is remembered: PostgreSQL aborts a transaction at its first failure.
        assert_eq!(guest.take_aborted(), Some(refused));
        guest
            .execute(
                "INSERT INTO items (id, n) VALUES ($1, $2)",
                &[Value::Text("a".into()), Value::Integer(7)],
                call(),
            )
            .expect("insert");
        // The same statement with a NULL first and a number after, and a real number where an
        // integer came first: each value reaches the server as what it is.
        guest
            .execute(
                "UPDATE items SET n = $1 WHERE id = $2",
                &[Value::Real(7.0), Value::Text("a".into())],
                call(),
            )
            .expect("update with a real");
        guest
            .execute(
                "UPDATE items SET n = $1 WHERE id = $2",
                &[Value::Integer(7), Value::Text("a".into())],
                call(),
            )
            .expect("update with an integer");
        let rows = guest
            .query("SELECT id, n FROM items", &[], call())
            .expect("query");
        assert_eq!(
            rows.rows,
            vec![vec![Value::Text("a".into()), Value::Integer(7)]]
        );
        // A write with RETURNING is a query too, through the same row cap.
        let returned = guest
            .query(
                "INSERT INTO items (id, n) VALUES ($1, $2) RETURNING id, n",
                &[Value::Text("b".into()), Value::Integer(8)],
                call(),
            )
            .expect("insert returning");
        assert_eq!(returned.columns, ["id", "n"]);
        assert_eq!(
            returned.rows,
            vec![vec![Value::Text("b".into()), Value::Integer(8)]]
        );
        let sorted = guest
            .query("SELECT n FROM items ORDER BY n DESC", &[], call())
            .expect("ordered query");
        assert_eq!(
            sorted.rows,
            vec![vec![Value::Integer(8)], vec![Value::Integer(7)]]
        );
        let refused = guest
            .query("SELECT format('%5000000s', id) FROM items", &[], call())
            .expect_err("a row over the cap");
        assert!(
            matches!(&refused, DbError::LimitExceeded(m) if m.contains("longer than the limit"))
        );
        assert_eq!(guest.take_aborted(), Some(refused));
        guest
            .execute(
                "DELETE FROM items WHERE id = $1",
                &[Value::Text("b".into())],
                call(),
            )
            .expect("delete");
        assert!(matches!(
            guest.query("SELECT * FROM pg_catalog.pg_class", &[], call()),
            Err(DbError::Denied(_))
        ));
        db.write(|db| {
            db.rename_tables(&clone, &description, Role::Live, None)?;
            db.set_role(clone.id, Role::Live, None)
        })
        .expect("promote");
        assert!(db.object_exists("items").expect("exists"));
        assert!(!db.object_exists("zdr_r_k1.items").expect("exists"));
        let rows = db.read_rows("SELECT n FROM items").expect("rows");
        assert_eq!(rows.rows, vec![vec![Value::Integer(7)]]);
        let failed: Result<(), StoreError> = db.write(|db| {
            db.set_checkpoint(clone.id, 99)?;
            Err(StoreError::Corrupt("abort".into()))
        });
        assert!(failed.is_err());
        assert_eq!(
            db.target(clone.id)
                .expect("target")
                .expect("row")
                .checkpoint,
            0
        );
    }

    #[test]
    fn the_schema_comes_off_the_url() {
        assert_eq!(
            split_schema("postgres://u@h/db").unwrap(),
            ("postgres://u@h/db".into(), "public".into())
        );
        assert_eq!(
            split_schema("postgres://u@h/db?schema=app&sslmode=disable").unwrap(),
            ("postgres://u@h/db?sslmode=disable".into(), "app".into())
        );
        assert!(split_schema("postgres://u@h/db?schema=Bad-Name").is_err());
        assert!(split_schema("postgres://u@h/db?schema=pg_catalog").is_err());
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("projector-a"), lock_key("projector-a"));
        assert_ne!(lock_key("projector-a"), lock_key("projector-b"));
    }
}
