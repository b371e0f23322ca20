//! The MySQL and MariaDB backend: zdr's state, the event store and the read models in one
//! server, driven with sqlx. A Laravel application's own database works as it is: zdr reads
//! Spatie's `stored_events` with the column types of its migration.
//!
//! - **Sessions.** Every zdr connection runs with `sql_mode` [`SESSION_SQL_MODE`] (the guard
//!   prints statements for it), `time_zone = '+00:00'` and `READ COMMITTED`.
//! - **Writers.** Every [`Db::write`](super::Db::write) transaction holds zdr's writer lock, a
//!   named lock (`GET_LOCK`) of the connection, taken before `START TRANSACTION` and released
//!   after the commit or rollback: live batches, the switch to projecting and a promote are
//!   serialised as on the other backends, and the server releases the lock with a dead
//!   connection.
//! - **Names.** [`Layout::Databases`]: live tables are in the URL's database, a clone in
//!   database `zdr_r_<key>_<hash>`, and so on. A promote moves every table in one
//!   `RENAME TABLE`, atomic in MySQL and MariaDB, under a `lock_wait_timeout` of one second
//!   (the shortest the server takes), retried by the promote: readers wait for the metadata
//!   lock, then read the new table; none sees a missing one.
//! - **DDL commits.** MySQL commits the open transaction before every DDL statement. Where zdr
//!   runs DDL inside a write transaction (creating a target's tables, a promote's move), what
//!   came before in that transaction is committed there, and the transaction goes on after it
//!   (`START TRANSACTION` again). zdr's lifecycle steps are written so that this is safe: the
//!   DDL comes before the bookkeeping it goes with, each step is idempotent, and a promote
//!   reads before its move and writes after it (see `docs/architecture.md`).
//! - **Reading events.** InnoDB draws auto-increment ids when a row is inserted, not when its
//!   transaction commits, so ids commit out of order as on PostgreSQL. [`Store::head`] is the
//!   gap-safe high-water mark of [`super::highwater`]: a gap is waited out until no writer
//!   holds the record lock of one of its ids, and a short grace has passed (`events`).
//! - **Waking.** MySQL has no `LISTEN`: [`Store::wait_for_events`] polls the largest id.
//! - **Locks.** A [`RunLock`] is a named lock (`GET_LOCK`) held on a connection of its own; it
//!   dies with the connection, so a killed daemon's projectors are free for another one.
//! - **Faults.** Errors keep the server's words, error number and SQLSTATE; a connection the
//!   server dropped is [`StoreError::ConnectionLost`], and [`Store::reconnect`] replaces it. A
//!   guest's statement still running at the guest's deadline is stopped from a second
//!   connection (`KILL QUERY`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::mysql::{MySqlArguments, MySqlConnectOptions, MySqlDatabaseError, MySqlRow};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, MySql, MySqlConnection, Row};

use super::guest::RawGuestConnection;
use super::highwater::HighWater;
use super::naming::Layout;
use super::rt::Rt;
use super::value::{SQLSTATE_DISK_FULL, SQLSTATE_OUT_OF_MEMORY};
use super::{
    DbError, HeldLock, Partition, RowSet, RunLock, Store, StoreError, TableColumn, Value,
    check_event_columns, redact,
};
use crate::events::{NewEvent, ReadEvent};
use crate::sandbox::{Dialect, PhysicalName, SESSION_SQL_MODE, positional};

mod events;
mod guest;
#[cfg(test)]
mod tests;

use guest::{MyGuestConnection, row_set};

/// How long a promote's `RENAME TABLE` waits for readers before giving up (and being
/// retried), in seconds: MySQL takes whole seconds only, so this is its shortest wait.
const RENAME_LOCK_WAIT_SECS: u32 = 1;

/// How long a write transaction waits for zdr's writer lock before giving up, in seconds.
const WRITER_LOCK_WAIT_SECS: u32 = 30;

/// How long `zdr init` waits for another `zdr init` on the same database, in seconds.
const INIT_LOCK_WAIT_SECS: u32 = 60;

/// How long connecting may take before zdr gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`Store::wait_for_events`] looks for new events.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The most zdr statements whose positional form a store keeps (they are a fixed set, plus a
/// few shapes of event reads).
const MAX_POSITIONAL: usize = 1024;

/// Spatie's `stored_events` as its Laravel migration makes it on MySQL: `id` bigint unsigned
/// auto-increment, `aggregate_uuid` char(36), `aggregate_version` bigint unsigned,
/// `event_version` tinyint unsigned, `event_class` varchar(255), `event_properties` and
/// `meta_data` json, `created_at` timestamp; and its indexes.
/// The journal of a move of tables (`move_tables`): written and committed before its
/// `RENAME TABLE`, cleared in the transaction that records the move. Rows left behind mean the
/// process died in between.
const MOVES_TABLE: &str = "CREATE TABLE IF NOT EXISTS zdr_moves (seq BIGINT NOT NULL PRIMARY KEY, \
     from_db VARCHAR(64) NOT NULL, from_name VARCHAR(64) NOT NULL, \
     to_db VARCHAR(64) NOT NULL, to_name VARCHAR(64) NOT NULL) \
     CHARACTER SET utf8mb4 COLLATE utf8mb4_bin";

const EVENT_TABLE: &str = "CREATE TABLE IF NOT EXISTS stored_events (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    aggregate_uuid CHAR(36) NULL,
    aggregate_version BIGINT UNSIGNED NULL,
    event_version TINYINT UNSIGNED NOT NULL DEFAULT 1,
    event_class VARCHAR(255) NOT NULL,
    event_properties JSON NOT NULL,
    meta_data JSON NOT NULL,
    created_at TIMESTAMP NOT NULL,
    INDEX stored_events_event_class_index (event_class),
    INDEX stored_events_aggregate_uuid_index (aggregate_uuid),
    UNIQUE INDEX stored_events_aggregate_uuid_aggregate_version_unique (aggregate_uuid, aggregate_version)
)";

/// A connection shared between the batch driver and the guest handles of one worker thread.
/// [`Store::reconnect`] replaces the connection inside it, so every holder moves with it.
type Shared = Arc<Mutex<MySqlConnection>>;

/// The server's id of the shared connection, for stopping a guest's statement.
type ConnectionId = Arc<AtomicU64>;

fn lock(conn: &Shared) -> MutexGuard<'_, MySqlConnection> {
    // A poisoned mutex means a panic while a statement ran; the connection is still usable
    // (the next START TRANSACTION ends whatever was left open), so recover it.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One open MySQL or MariaDB database.
pub struct MyStore {
    conn: Shared,
    id: ConnectionId,
    rt: Arc<Rt>,
    options: MySqlConnectOptions,
    /// The URL as given, with any password removed.
    url: String,
    /// The database of the live tables, zdr's tables and `stored_events`.
    database: String,
    high_water: Mutex<HighWater>,
    /// When the gap the high-water mark waits for was seen.
    gap_seen: Mutex<Option<Instant>>,
    /// When the store last looked for late events.
    late_checked: Mutex<Option<Instant>>,
    /// zdr's statements with `$N` made positional, by text.
    positional: Mutex<HashMap<String, (String, Vec<usize>)>>,
    /// Whether this connection holds zdr's writer lock (or the init lock): released at the
    /// end of the transaction.
    holding: Mutex<Option<String>>,
    /// Whether a transaction was begun and not yet ended: DDL commits it, so the store
    /// begins it again after its own DDL.
    in_transaction: AtomicBool,
    /// The largest event id [`Store::wait_for_events`] saw.
    seen_max: AtomicI64,
}

/// Adds what zdr was doing to a driver error: the server's own words, error number and
/// SQLSTATE are kept; a broken connection and a lock timeout become errors of their own.
trait MyContext<T> {
    fn context(self, what: impl Into<String>) -> Result<T, StoreError>;
}

impl<T> MyContext<T> for Result<T, sqlx::Error> {
    fn context(self, what: impl Into<String>) -> Result<T, StoreError> {
        self.map_err(|source| store_error(&source, what.into()))
    }
}

/// What to do about a statement larger than the server's `max_allowed_packet`.
const RAISE_MAX_ALLOWED_PACKET: &str = "raise it in the server's configuration (for example \
     max_allowed_packet = 256M, or SET GLOBAL max_allowed_packet = 268435456) and run the \
     command again";

/// Room in a statement's packet for its SQL text and the other values beside one large value.
const PACKET_OVERHEAD: u64 = 64 * 1024;

fn store_error(err: &sqlx::Error, context: String) -> StoreError {
    let message = describe(err);
    match error_number(err) {
        Some(1205) => StoreError::LockTimeout(context),
        // The server drops the connection after it, but sending the statement again cannot
        // help. Components are measured before they are sent (`check_value_fits`); this is
        // what any other statement that large gets.
        Some(1153) => StoreError::Database {
            context,
            message: format!(
                "{message}; the statement is larger than the server's max_allowed_packet: \
                 {RAISE_MAX_ALLOWED_PACKET}"
            ),
        },
        _ if out_of_resources(err).is_some() => StoreError::OutOfResources { context, message },
        _ if connection_lost(err) => StoreError::ConnectionLost { context, message },
        _ => StoreError::Database { context, message },
    }
}

/// The SQLSTATE zdr gives a server out of disk space or memory (`SQLSTATE_DISK_FULL`,
/// `SQLSTATE_OUT_OF_MEMORY`), which MySQL reports by error number, not SQLSTATE: 1021 (disk
/// full), 1114 (table full), a storage engine's or a file's errno 28 (below), 1037, 1038 and
/// 1041 (out of memory or resources).
fn out_of_resources(err: &sqlx::Error) -> Option<&'static str> {
    match err {
        sqlx::Error::Database(db) => resource_failure(error_number(err)?, db.message()),
        _ => None,
    }
}

/// [`out_of_resources`] of the server's error `number` and `message`. Besides its own numbers,
/// the server passes a full disk on as the storage engine's failure (1030, "Got error 28 …")
/// or a file's (1026, "… (Errcode: 28 …)"): the system's ENOSPC, 28, is only in the message.
/// A temporary file it cannot write (1878) is a full disk in practice, and in any case not an
/// event's fault.
fn resource_failure(number: u16, message: &str) -> Option<&'static str> {
    match number {
        1021 | 1114 | 1878 => Some(SQLSTATE_DISK_FULL),
        1030 | 1026 if names_enospc(message) => Some(SQLSTATE_DISK_FULL),
        1037 | 1038 | 1041 => Some(SQLSTATE_OUT_OF_MEMORY),
        _ => None,
    }
}

/// Whether a server message carries the system error 28 (ENOSPC): "error 28", "errno: 28",
/// "Errcode: 28", or its text.
fn names_enospc(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("no space left on device")
        || ["error 28", "errno: 28", "errcode: 28", "errno 28"]
            .iter()
            .any(|code| {
                lower.match_indices(code).any(|(at, found)| {
                    !lower[at + found.len()..].starts_with(|c: char| c.is_ascii_digit())
                })
            })
}

/// The server's error number (1062, 1205…), if the server answered with an error.
fn error_number(err: &sqlx::Error) -> Option<u16> {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// Whether the error means the connection is gone: the network, the server restarting or
/// shutting down, an administrator killing the session.
fn connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Server shutdown, connection killed (MariaDB), lost or gone away.
        sqlx::Error::Database(_) => matches!(
            error_number(err),
            Some(1053 | 1077 | 1152 | 1153 | 1158..=1161 | 1927 | 2006 | 2013)
        ),
        _ => false,
    }
}

/// The server's message with its error number and SQLSTATE.
fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => {
            let text = db.message().to_string();
            match (error_number(err), db.code()) {
                (Some(number), Some(code)) => format!("{text} (error {number}, SQLSTATE {code})"),
                (None, Some(code)) => format!("{text} (SQLSTATE {code})"),
                _ => text,
            }
        }
        sqlx::Error::Io(io) => format!("network error: {io}"),
        other => other.to_string(),
    }
}

/// A dynamic statement: zdr's own SQL built from validated names, or guest SQL that passed
/// the guard and was rewritten by it.
fn sql(text: impl Into<String>) -> AssertSqlSafe<String> {
    AssertSqlSafe(text.into())
}

/// Quotes an identifier (zdr's sessions run with `ANSI_QUOTES`).
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The statements every zdr session starts with.
fn session_setup() -> String {
    format!(
        "SET SESSION sql_mode = '{SESSION_SQL_MODE}', time_zone = '+00:00'; \
         SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
    )
}

/// Connects (within [`CONNECT_TIMEOUT`]), sets the session up and asks for the connection's
/// id; the error is the server's reason, in its words.
async fn connect(options: &MySqlConnectOptions) -> Result<(MySqlConnection, u64), String> {
    let connecting = async {
        let mut conn = MySqlConnection::connect_with(options).await?;
        sqlx::raw_sql(sql(session_setup()))
            .execute(&mut conn)
            .await?;
        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut conn)
            .await?;
        Ok::<_, sqlx::Error>((conn, id))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(err)) => Err(describe(&err)),
        Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// A named lock's name: at most 64 characters, and told apart per database (named locks are
/// global to the server).
fn lock_name(database: &str, name: &str) -> String {
    let full = format!("zdr:{database}:{name}");
    if full.len() <= 64 {
        full
    } else {
        format!(
            "zdr:{}",
            hex::encode(&Sha256::digest(full.as_bytes())[..20])
        )
    }
}

type MyQuery<'q> = sqlx::query::Query<'q, MySql, MySqlArguments>;

/// Binds `params` to a positional statement, in the order its `?` take them.
fn bind<'q>(text: &str, order: &[usize], params: &'q [Value]) -> MyQuery<'q> {
    let mut query = sqlx::query(sql(text.to_owned()));
    for number in order {
        query = match number.checked_sub(1).and_then(|i| params.get(i)) {
            None | Some(Value::Null | Value::Unsupported(_)) => query.bind(None::<i64>),
            Some(Value::Integer(v)) => query.bind(*v),
            Some(Value::Real(v)) => query.bind(*v),
            Some(Value::Text(v)) => query.bind(v.as_str()),
            Some(Value::Blob(v)) => query.bind(v.as_slice()),
            Some(Value::Boolean(v)) => query.bind(*v),
        };
    }
    query
}

impl MyStore {
    /// Connects to `mysql://USER:PASSWORD@HOST:PORT/DATABASE` (also `mariadb://`).
    ///
    /// # Errors
    /// A malformed URL, one without a database, or a server that cannot be reached or refuses
    /// the login.
    pub fn open(url: &str) -> Result<MyStore, StoreError> {
        let shown = redact(url);
        let open_err = |message: String| StoreError::Open {
            url: shown.clone(),
            message,
        };
        let driver_url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        let options: MySqlConnectOptions = driver_url
            .parse()
            .map_err(|e| open_err(format!("{e}; expected mysql://USER@HOST:PORT/DATABASE")))?;
        let database = options
            .get_database()
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                open_err(
                    "the URL names no database: add it, mysql://USER@HOST:PORT/DATABASE".into(),
                )
            })?;
        let options = options
            .timezone(Some("+00:00".to_owned()))
            .charset("utf8mb4")
            .disable_statement_logging();
        let rt = Rt::new().map_err(|e| open_err(format!("cannot start an I/O runtime: {e}")))?;
        let (conn, id) = rt.block_on(connect(&options)).map_err(|message| {
            open_err(format!(
                "{message}; is the server running and the database created?"
            ))
        })?;
        Ok(MyStore {
            conn: Arc::new(Mutex::new(conn)),
            id: Arc::new(AtomicU64::new(id)),
            rt: Arc::new(rt),
            options,
            url: shown,
            database,
            high_water: Mutex::new(HighWater::default()),
            gap_seen: Mutex::new(None),
            late_checked: Mutex::new(None),
            positional: Mutex::new(HashMap::new()),
            holding: Mutex::new(None),
            in_transaction: AtomicBool::new(false),
            seen_max: AtomicI64::new(-1),
        })
    }

    /// Records `moves` in `zdr_moves` and commits, with whatever the transaction held: the
    /// `RENAME TABLE` that follows would commit it anyway.
    fn announce_move(&self, moves: &[(PhysicalName, PhysicalName)]) -> Result<(), StoreError> {
        let what = "announcing a move of tables";
        {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(sqlx::raw_sql("DELETE FROM zdr_moves").execute(&mut *conn))
                .context(what)?;
            for (order, (from, to)) in moves.iter().enumerate() {
                let order = i64::try_from(order).unwrap_or(i64::MAX);
                self.rt
                    .block_on(
                        sqlx::query(
                            "INSERT INTO zdr_moves (seq, from_db, from_name, to_db, to_name) \
                             VALUES (?, ?, ?, ?, ?)",
                        )
                        .bind(order)
                        .bind(self.database_of(from))
                        .bind(&from.name)
                        .bind(self.database_of(to))
                        .bind(&to.name)
                        .execute(&mut *conn),
                    )
                    .context(what)?;
            }
        }
        self.ddl("COMMIT", what)
    }

    /// Whether a move of tables was announced and never recorded: its process died between
    /// its `RENAME TABLE` and the commit of the roles that go with it.
    fn move_interrupted(&self) -> Result<bool, StoreError> {
        let announced = self.scalar_i64(
            "SELECT COUNT(*) FROM zdr_moves",
            &[],
            "looking for an interrupted move of tables",
        )?;
        Ok(announced > 0)
    }

    /// Puts back the tables of a move whose process died before it recorded the move, so the
    /// tables are where the roles say: the promote (or rollback) did not happen, and running
    /// it again does it. Holds the writer lock; outside a transaction.
    fn undo_interrupted_move(&self) -> Result<(), StoreError> {
        if !self.move_interrupted()? {
            return Ok(());
        }
        let what = "reading the journal of table moves";
        let moves: Vec<(String, String, String, String)> = {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(
                    sqlx::query_as(
                        "SELECT CAST(from_db AS CHAR), CAST(from_name AS CHAR), \
                                CAST(to_db AS CHAR), CAST(to_name AS CHAR) \
                           FROM zdr_moves ORDER BY seq",
                    )
                    .fetch_all(&mut *conn),
                )
                .context(what)?
        };
        let qualified = |db: &str, name: &str| PhysicalName::qualified(db, name);
        // The RENAME moved every table or none. A destination that was no source is there
        // only if it ran (the retired tables of a promote, say).
        let witness = moves
            .iter()
            .find(|(_, _, to_db, to_name)| {
                !moves
                    .iter()
                    .any(|(from_db, from_name, _, _)| from_db == to_db && from_name == to_name)
            })
            .ok_or_else(|| {
                StoreError::Corrupt(
                    "zdr_moves holds a move with no new destination; look at it and delete its \
                     rows once the tables are where zdr_targets says"
                        .into(),
                )
            })?;
        if self.object_exists(&format!("{}.{}", witness.2, witness.3))? {
            for (from_db, _, _, _) in &moves {
                self.create_namespace(from_db)?;
            }
            let back: Vec<String> = moves
                .iter()
                .rev()
                .map(|(from_db, from_name, to_db, to_name)| {
                    format!(
                        "{} TO {}",
                        qualified(to_db, to_name).quoted(),
                        qualified(from_db, from_name).quoted()
                    )
                })
                .collect();
            self.batch(
                format!("RENAME TABLE {}", back.join(", ")),
                "putting back the tables of an interrupted move",
            )?;
            tracing::warn!(
                "a promote or rollback died between moving its tables and recording the move; \
                 its tables are back where they were, so run it again"
            );
        }
        self.batch(
            "DELETE FROM zdr_moves",
            "clearing the journal of table moves",
        )?;
        let mut emptied: Vec<&str> = moves
            .iter()
            .map(|(_, _, to_db, _)| to_db.as_str())
            .collect();
        emptied.sort_unstable();
        emptied.dedup();
        for namespace in emptied {
            self.drop_namespace_if_empty(namespace)?;
        }
        Ok(())
    }

    /// Runs statements that return nothing (several may be separated by `;`).
    fn batch(&self, text: impl Into<String>, what: &str) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(sqlx::raw_sql(sql(text)).execute(&mut *conn))
            .context(what)?;
        Ok(())
    }

    /// Runs DDL: MySQL commits the open transaction first, so a transaction that was open
    /// goes on in a new one after it.
    fn ddl(&self, text: impl Into<String>, what: &str) -> Result<(), StoreError> {
        self.batch(text, what)?;
        if self.in_transaction.load(Ordering::Relaxed) {
            self.batch(
                "START TRANSACTION",
                "beginning a transaction again after DDL",
            )?;
        }
        Ok(())
    }

    /// zdr's statement `text` with `$N` made positional, and the order to bind in.
    fn positional(&self, text: &str) -> (String, Vec<usize>) {
        let mut known = self
            .positional
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = known.get(text) {
            return found.clone();
        }
        let made = positional(text);
        if known.len() < MAX_POSITIONAL {
            known.insert(text.to_owned(), made.clone());
        }
        made
    }

    /// Takes a named lock on the shared connection, waiting up to `wait_secs`; it is released
    /// by [`MyStore::release`] when the transaction ends.
    fn take_named(&self, name: &str, wait_secs: u32, what: &str) -> Result<(), StoreError> {
        let mut holding = self
            .holding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if holding.is_some() {
            return Ok(());
        }
        let full = lock_name(&self.database, name);
        let taken: Option<i64> = {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(
                    sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
                        .bind(&full)
                        .bind(wait_secs)
                        .fetch_one(&mut *conn),
                )
                .context(what)?
        };
        if taken != Some(1) {
            return Err(StoreError::LockTimeout(format!(
                "{what}: another zdr process held the lock for {wait_secs} s"
            )));
        }
        *holding = Some(full);
        Ok(())
    }

    /// Releases the named lock the transaction held, if any.
    fn release(&self) {
        let held = self
            .holding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(name) = held {
            let mut conn = lock(&self.conn);
            // A lost connection released it already.
            let _ = self.rt.block_on(
                sqlx::query("DO RELEASE_LOCK(?)")
                    .bind(name)
                    .execute(&mut *conn),
            );
        }
    }

    fn begin(&self, what: &str) -> Result<(), StoreError> {
        self.batch("START TRANSACTION", what)?;
        self.in_transaction.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The database a physical name lives in.
    fn database_of<'a>(&'a self, name: &'a PhysicalName) -> &'a str {
        name.schema.as_deref().unwrap_or(&self.database)
    }

    fn scalar_i64(&self, text: &str, binds: &[&str], what: &str) -> Result<i64, StoreError> {
        let mut conn = lock(&self.conn);
        let mut query = sqlx::query_scalar::<_, i64>(sql(text.to_owned()));
        for b in binds {
            query = query.bind(*b);
        }
        self.rt.block_on(query.fetch_one(&mut *conn)).context(what)
    }
}

impl Store for MyStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn dialect(&self) -> Dialect {
        Dialect::MySql
    }

    fn layout(&self) -> Layout {
        Layout::Databases {
            live: self.database.clone(),
        }
    }

    fn sql_execute(&self, text: &str, params: &[Value]) -> Result<u64, StoreError> {
        let (positional, order) = self.positional(text);
        let mut conn = lock(&self.conn);
        let done = self
            .rt
            .block_on(bind(&positional, &order, params).execute(&mut *conn))
            .context(format!("running {text}"))?;
        Ok(done.rows_affected())
    }

    fn sql_rows(&self, text: &str, params: &[Value]) -> Result<RowSet, StoreError> {
        let (positional, order) = self.positional(text);
        let mut conn = lock(&self.conn);
        let rows: Vec<MySqlRow> = self
            .rt
            .block_on(bind(&positional, &order, params).fetch_all(&mut *conn))
            .context(format!("running {text}"))?;
        Ok(row_set(&rows))
    }

    fn sql_batch(&self, text: &str) -> Result<(), StoreError> {
        // DDL (tables, indexes) commits the open transaction, which then goes on; savepoints
        // are ordinary statements.
        let first = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if matches!(first.as_str(), "CREATE" | "DROP" | "ALTER" | "RENAME") {
            self.ddl(text, &format!("running {text}"))
        } else {
            self.batch(text, &format!("running {text}"))
        }
    }

    fn begin_init(&self) -> Result<(), StoreError> {
        // MySQL has no transactional DDL: init is serialised by a named lock instead, and
        // every statement of it is idempotent, so an init cut short is finished by the next.
        self.take_named("init", INIT_LOCK_WAIT_SECS, "waiting for another zdr init")?;
        self.in_transaction.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn init_backend(&self) -> Result<(), StoreError> {
        self.batch(EVENT_TABLE, "creating the event store")?;
        self.batch(MOVES_TABLE, "creating the journal of table moves")
    }

    fn check_event_table(&self) -> Result<(), StoreError> {
        let mut conn = lock(&self.conn);
        let columns: Vec<String> = self
            .rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
                     WHERE table_schema = ? AND table_name = 'stored_events'",
                )
                .bind(&self.database)
                .fetch_all(&mut *conn),
            )
            .context("inspecting stored_events")?;
        check_event_columns(&columns)
    }

    fn event_writer_warnings(&self) -> Result<Vec<String>, StoreError> {
        self.writer_warnings()
    }

    fn verify_open(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn check_value_fits(&self, what: &str, size: usize) -> Result<(), StoreError> {
        // Sent anyway, the server answers error 1153 and drops the connection, often before
        // the client has read the answer, which then reads as a reset connection.
        let rows = self.sql_rows("SELECT @@max_allowed_packet", &[])?;
        let limit = match rows.rows.first().and_then(|row| row.first()) {
            Some(Value::Integer(limit)) => u64::try_from(*limit).unwrap_or(0),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "the server answered max_allowed_packet with {}",
                    other.map_or_else(|| "no row".to_string(), Value::to_string)
                )));
            }
        };
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        if size.saturating_add(PACKET_OVERHEAD) <= limit {
            return Ok(());
        }
        Err(StoreError::Database {
            context: format!("storing {what}"),
            message: format!(
                "zdr sends it in chunks of {size} bytes, and the server takes no statement \
                 larger than its max_allowed_packet of {limit} bytes: {RAISE_MAX_ALLOWED_PACKET}"
            ),
        })
    }

    fn reconnect(&self) -> Result<(), StoreError> {
        let (fresh, id) = self
            .rt
            .block_on(connect(&self.options))
            .map_err(|message| StoreError::ConnectionLost {
                context: format!("reconnecting to {}", self.url),
                message,
            })?;
        let mut conn = lock(&self.conn);
        let old = std::mem::replace(&mut *conn, fresh);
        self.id.store(id, Ordering::Relaxed);
        drop(conn);
        // The old connection is dead, and the named lock it held died with it.
        drop(old);
        *self
            .holding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        self.in_transaction.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn try_lock(&self, name: &str) -> Result<Option<RunLock>, StoreError> {
        let full = lock_name(&self.database, name);
        let taken = self.rt.block_on(async {
            let (mut conn, _) =
                connect(&self.options)
                    .await
                    .map_err(|message| StoreError::ConnectionLost {
                        context: format!("taking lock {name}"),
                        message,
                    })?;
            let taken: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
                .bind(&full)
                .fetch_one(&mut conn)
                .await
                .context(format!("taking lock {name}"))?;
            Ok::<_, StoreError>((taken == Some(1)).then_some(conn))
        })?;
        Ok(taken.map(|conn| {
            RunLock::new(HeldNamed {
                conn,
                name: full,
                rt: self.rt.clone(),
            })
        }))
    }

    fn begin_write(&self) -> Result<(), StoreError> {
        self.take_named("writer", WRITER_LOCK_WAIT_SECS, "taking zdr's writer lock")?;
        self.undo_interrupted_move()
            .and_then(|()| self.begin("beginning a write transaction"))
            .inspect_err(|_| self.release())
    }

    fn begin_rebuild_write(&self) -> Result<(), StoreError> {
        // A rebuild writes a target no daemon serves, without the writer lock; but not into
        // tables a crashed promote left where they do not belong.
        if self.move_interrupted()? {
            self.take_named("writer", WRITER_LOCK_WAIT_SECS, "taking zdr's writer lock")?;
            let undone = self.undo_interrupted_move();
            self.release();
            undone?;
        }
        self.begin("beginning a rebuild's transaction")
    }

    fn begin_snapshot(&self) -> Result<(), StoreError> {
        self.batch(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
             START TRANSACTION WITH CONSISTENT SNAPSHOT",
            "beginning a read snapshot",
        )?;
        self.in_transaction.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn commit(&self) -> Result<(), StoreError> {
        self.in_transaction.store(false, Ordering::Relaxed);
        let done = self.batch("COMMIT", "committing");
        self.release();
        done
    }

    fn rollback(&self) -> Result<(), StoreError> {
        self.in_transaction.store(false, Ordering::Relaxed);
        let done = self.batch("ROLLBACK", "rolling back");
        self.release();
        done
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
        let (database, table) = name
            .split_once('.')
            .unwrap_or((self.database.as_str(), name));
        let found = self.scalar_i64(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = ? AND lower(table_name) = lower(?)",
            &[database, table],
            "looking up a table",
        )?;
        Ok(found > 0)
    }

    fn dependents_of(&self, table: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT CAST(CONCAT('view ', table_schema, '.', table_name) AS CHAR) \
                       FROM information_schema.views \
                       WHERE LOCATE(CONCAT('`', ?, '`.`', ?, '`'), view_definition) > 0 \
                     UNION ALL SELECT CAST(CONCAT('trigger ', trigger_name) AS CHAR) \
                       FROM information_schema.triggers \
                       WHERE event_object_schema = ? AND event_object_table = ? \
                     UNION ALL SELECT CAST(CONCAT('foreign key ', constraint_name) AS CHAR) \
                       FROM information_schema.referential_constraints \
                       WHERE unique_constraint_schema = ? AND referenced_table_name = ? \
                       AND NOT (constraint_schema = ? AND table_name = ?)",
                )
                .bind(&self.database)
                .bind(table)
                .bind(&self.database)
                .bind(table)
                .bind(&self.database)
                .bind(table)
                .bind(&self.database)
                .bind(table)
                .fetch_all(&mut *conn),
            )
            .context("looking for views, triggers and foreign keys")
    }

    fn table_columns(&self, name: &PhysicalName) -> Result<Vec<TableColumn>, StoreError> {
        let database = self.database_of(name).to_owned();
        let mut conn = lock(&self.conn);
        let rows: Vec<(String, String, Option<i64>)> = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT CAST(c.column_name AS CHAR), CAST(lower(c.column_type) AS CHAR), \
                     CAST(k.ordinal_position AS SIGNED) \
                     FROM information_schema.columns c \
                     LEFT JOIN information_schema.key_column_usage k \
                       ON k.table_schema = c.table_schema AND k.table_name = c.table_name \
                       AND k.column_name = c.column_name AND k.constraint_name = 'PRIMARY' \
                     WHERE c.table_schema = ? AND c.table_name = ? ORDER BY c.ordinal_position",
                )
                .bind(&database)
                .bind(&name.name)
                .fetch_all(&mut *conn),
            )
            .context(format!("reading the columns of {name}"))?;
        Ok(rows
            .into_iter()
            .map(|(name, type_name, key_position)| TableColumn {
                name,
                type_name,
                key_position,
            })
            .collect())
    }

    fn create_namespace(&self, namespace: &str) -> Result<(), StoreError> {
        if namespace == self.database {
            return Ok(());
        }
        self.ddl(
            format!(
                "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                quote(namespace)
            ),
            &format!("creating database {namespace}"),
        )
    }

    fn drop_namespace_if_empty(&self, namespace: &str) -> Result<(), StoreError> {
        if namespace == self.database {
            return Ok(());
        }
        let tables = self.scalar_i64(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ?",
            &[namespace],
            &format!("inspecting database {namespace}"),
        )?;
        if tables == 0 {
            self.ddl(
                format!("DROP DATABASE IF EXISTS {}", quote(namespace)),
                &format!("dropping database {namespace}"),
            )?;
        }
        Ok(())
    }

    fn move_tables(&self, moves: &[(PhysicalName, PhysicalName)]) -> Result<(), StoreError> {
        if moves.is_empty() {
            return Ok(());
        }
        for (_, to) in moves {
            self.create_namespace(self.database_of(to))?;
        }
        // The RENAME commits what came before it, and what goes with it (the roles) commits
        // after it: announce the move first, so that a crash in between is found and undone
        // before anything else writes (`undo_interrupted_move`). The announcement is cleared
        // in the transaction that records the move.
        self.announce_move(moves)?;
        let pairs: Vec<String> = moves
            .iter()
            .map(|(from, to)| format!("{} TO {}", from.quoted(), to.quoted()))
            .collect();
        // One statement moves every table at once: readers wait on the metadata lock and
        // then see the new tables, never a missing one. A short lock wait bounds how long
        // readers queue behind it; the promote retries.
        self.batch(
            format!("SET SESSION lock_wait_timeout = {RENAME_LOCK_WAIT_SECS}"),
            "preparing to move tables",
        )?;
        let renamed = self.ddl(
            format!("RENAME TABLE {}", pairs.join(", ")),
            "moving tables",
        );
        let restored = self.batch(
            "SET SESSION lock_wait_timeout = DEFAULT",
            "restoring the lock wait timeout",
        );
        renamed?;
        restored?;
        let mut emptied: Vec<&str> = moves
            .iter()
            .filter_map(|(from, _)| from.schema.as_deref())
            .collect();
        emptied.dedup();
        for namespace in emptied {
            self.drop_namespace_if_empty(namespace)?;
        }
        // Last, after every statement that commits on its own: the journal is cleared by the
        // commit that records the move.
        self.batch(
            "DELETE FROM zdr_moves",
            "clearing the journal of table moves",
        )
    }

    fn raw_guest_connection(&self) -> Box<dyn RawGuestConnection> {
        Box::new(MyGuestConnection {
            conn: self.conn.clone(),
            id: self.id.clone(),
            rt: self.rt.clone(),
            options: self.options.clone(),
        })
    }

    fn wait_for_events(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            let max = self.scalar_i64(
                "SELECT CAST(COALESCE(MAX(id), 0) AS SIGNED) FROM stored_events",
                &[],
                "looking for new events",
            );
            match max {
                Ok(max) => {
                    let seen = self.seen_max.swap(max, Ordering::Relaxed);
                    if seen >= 0 && max != seen {
                        return true;
                    }
                }
                Err(err) => {
                    tracing::debug!("cannot poll for new events: {err}");
                }
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            std::thread::sleep(POLL_INTERVAL.min(until - now));
        }
    }
}

/// A named lock held on a connection of its own: held while the connection is open, released
/// when dropped.
struct HeldNamed {
    conn: MySqlConnection,
    name: String,
    /// The runtime the connection is registered with, kept as long as the connection.
    rt: Arc<Rt>,
}

impl Drop for HeldNamed {
    fn drop(&mut self) {
        // The server would release the lock with the session, but only once it notices the
        // closed connection: until then whoever asks next is refused. Released here, it is
        // free when `drop` returns.
        let (conn, name) = (&mut self.conn, &self.name);
        self.rt.block_on_aside(async {
            let released = sqlx::query("DO RELEASE_LOCK(?)").bind(name).execute(conn);
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, released).await;
        });
    }
}

impl HeldLock for HeldNamed {
    fn is_held(&mut self) -> bool {
        // The server releases a named lock with its session: a connection that still answers
        // that it owns the lock holds it.
        let asked = self.rt.block_on(async {
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                sqlx::query_scalar::<_, Option<i64>>(
                    "SELECT CAST(IS_USED_LOCK(?) = CONNECTION_ID() AS SIGNED)",
                )
                .bind(&self.name)
                .fetch_one(&mut self.conn),
            )
            .await
        });
        matches!(asked, Ok(Ok(Some(1))))
    }
}
