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

use super::guest::{MAX_VALUE_BYTES, RawGuestConnection, RowCollector};
use super::highwater::{HighWater, Observed, Scan};
use super::naming::Layout;
use super::rt::Rt;
use super::{
    DbError, HeldLock, Partition, RowSet, RunLock, Store, StoreError, TableColumn, Value,
    check_event_columns, redact,
};
use crate::events::{NewEvent, ReadEvent};
use crate::sandbox::{Checked, Dialect, PhysicalName};

mod events;
mod guest;
#[cfg(test)]
mod tests;

use guest::{PgGuestConnection, Pipeline, PreparedWrites, row_set};

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
    /// The statements prepared on the shared connection for guests' sent writes.
    prepared_writes: Arc<Mutex<PreparedWrites>>,
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
    let code = sqlstate(err);
    if code.as_deref() == Some("55P03") {
        StoreError::LockTimeout(context)
    } else if code.is_some_and(|code| code.starts_with("53")) {
        // Insufficient resources: out of disk space or memory.
        StoreError::OutOfResources { context, message }
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
            prepared_writes: Arc::default(),
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

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl Store for PgStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn layout(&self) -> Layout {
        Layout::Schemas {
            live: self.schema.clone(),
        }
    }

    fn sql_batch(&self, text: &str) -> Result<(), StoreError> {
        self.batch(text, &format!("running {text}"))
    }

    fn begin_init(&self) -> Result<(), StoreError> {
        self.batch(
            format!(
                "BEGIN; SELECT pg_advisory_xact_lock({INIT_LOCK}); CREATE SCHEMA IF NOT EXISTS {}",
                quote(&self.schema)
            ),
            "beginning the init transaction",
        )
    }

    fn init_backend(&self) -> Result<(), StoreError> {
        // Schema 2 added skip_event_id: a table an older zdr made gains it.
        self.batch(
            format!(
                "{EVENT_TABLE} ALTER TABLE IF EXISTS zdr_targets ADD COLUMN IF NOT EXISTS skip_event_id BIGINT; \
                 {NOTIFY_TRIGGER} {ROW_CAP_FUNCTION}"
            ),
            "creating the event store, the notify trigger and the row cap",
        )
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

    fn begin_snapshot(&self) -> Result<(), StoreError> {
        self.batch(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            "beginning a read snapshot",
        )
    }

    fn table_columns(&self, name: &PhysicalName) -> Result<Vec<TableColumn>, StoreError> {
        let schema = name.schema.clone().unwrap_or_else(|| self.schema.clone());
        let mut conn = lock(&self.conn);
        let rows: Vec<(String, String, Option<i32>)> = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT a.attname::text, lower(format_type(a.atttypid, a.atttypmod)), \
                     (SELECT array_position(i.indkey::int2[], a.attnum)::int FROM pg_index i \
                      WHERE i.indrelid = c.oid AND i.indisprimary) \
                     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum",
                )
                .bind(&schema)
                .bind(&name.name)
                .fetch_all(&mut *conn),
            )
            .context(format!("reading the columns of {name}"))?;
        Ok(rows
            .into_iter()
            .map(|(name, type_name, key)| TableColumn {
                name,
                type_name,
                key_position: key.map(i64::from),
            })
            .collect())
    }

    fn create_namespace(&self, namespace: &str) -> Result<(), StoreError> {
        self.batch(
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote(namespace)),
            &format!("creating schema {namespace}"),
        )
    }

    fn drop_namespace_if_empty(&self, namespace: &str) -> Result<(), StoreError> {
        if namespace == self.schema {
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
                .bind(namespace)
                .fetch_one(&mut *conn),
            )
            .context(format!("inspecting schema {namespace}"))?;
        if empty {
            self.rt
                .block_on(
                    sqlx::raw_sql(sql(format!("DROP SCHEMA IF EXISTS {}", quote(namespace))))
                        .execute(&mut *conn),
                )
                .context(format!("dropping schema {namespace}"))?;
        }
        Ok(())
    }

    fn move_tables(&self, moves: &[(PhysicalName, PhysicalName)]) -> Result<(), StoreError> {
        // Schema moves need ACCESS EXCLUSIVE locks, which wait for running readers and make new
        // ones queue: a short lock timeout bounds that, and the promote retries.
        self.batch(
            format!("SET LOCAL lock_timeout = '{RENAME_LOCK_TIMEOUT}'"),
            "preparing to move tables",
        )?;
        let mut emptied = Vec::new();
        for (from, to) in moves {
            let to_schema = to.schema.clone().unwrap_or_else(|| self.schema.clone());
            self.batch(
                format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}; ALTER TABLE {} SET SCHEMA {schema}",
                    from.quoted(),
                    schema = quote(&to_schema)
                ),
                &format!("moving {from} to schema {to_schema}"),
            )?;
            if let Some(schema) = &from.schema
                && !emptied.contains(schema)
            {
                emptied.push(schema.clone());
            }
        }
        self.batch("SET LOCAL lock_timeout = 0", "restoring the lock timeout")?;
        for schema in emptied {
            self.drop_namespace_if_empty(&schema)?;
        }
        Ok(())
    }

    fn event_writer_warnings(&self) -> Result<Vec<String>, StoreError> {
        self.writer_warnings()
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
        self.prepared_writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .reconnected();
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
                key,
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

    fn begin_rebuild_write(&self) -> Result<(), StoreError> {
        self.batch(
            "BEGIN ISOLATION LEVEL READ COMMITTED".to_string(),
            "beginning a rebuild's transaction",
        )
    }

    fn commit(&self) -> Result<(), StoreError> {
        self.batch("COMMIT", "committing")
    }

    fn rollback(&self) -> Result<(), StoreError> {
        self.batch("ROLLBACK", "rolling back")
    }

    fn append_events(&self, events: &[NewEvent]) -> Result<Option<(i64, i64)>, StoreError> {
        self.append(events)
    }

    fn head(&self) -> Result<i64, StoreError> {
        self.safe_head()
    }

    fn late_events(&self) -> Result<Vec<i64>, StoreError> {
        self.late()
    }

    fn head_held_back(&self) -> bool {
        self.high_water
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .held_back()
    }

    fn read_events_in(
        &self,
        after: i64,
        up_to: i64,
        limit: usize,
        classes: &[String],
        partition: Partition,
    ) -> Result<Vec<ReadEvent>, StoreError> {
        self.read(after, up_to, limit, classes, partition)
    }

    fn splits_history(&self) -> bool {
        true
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

    fn raw_guest_connection(&self) -> Box<dyn RawGuestConnection> {
        Box::new(PgGuestConnection {
            conn: self.conn.clone(),
            pid: self.pid.clone(),
            rt: self.rt.clone(),
            options: self.options.clone(),
            pipeline: Pipeline::new(self.prepared_writes.clone()),
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

/// A session advisory lock: held while its connection is open, released when dropped.
struct HeldSession {
    conn: PgConnection,
    /// The advisory lock's key.
    key: i64,
    /// The runtime the connection is registered with, kept as long as the connection.
    rt: Arc<Rt>,
}

impl Drop for HeldSession {
    fn drop(&mut self) {
        // The server would release the lock with the session, but only once it notices the
        // closed connection: until then whoever asks next is refused. Released here, it is
        // free when `drop` returns.
        let (conn, key) = (&mut self.conn, self.key);
        self.rt.block_on_aside(async {
            let released = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(conn);
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, released).await;
        });
    }
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
