//! Storage: the database that holds the event store, zdr's own `zdr_*` tables and every
//! projector's read-model tables.
//!
//! Two backends implement one interface, [`Store`]: SQLite (embedded, WAL mode, driven with
//! rusqlite) and PostgreSQL (driven with sqlx). [`Db`] is what the rest of zdr holds: it picks
//! the backend from the URL (`sqlite://…` or `postgres://…`) and adds [`Db::write`], the one
//! write transaction every lifecycle step and live batch runs in. Nothing outside this module
//! branches on the backend.
//!
//! The interface is synchronous on purpose: a batch (read events, call the guest, run its
//! statements, checkpoint, commit) runs on one blocking thread without a task hop per
//! statement. The PostgreSQL backend drives sqlx's async connection from that thread.
//! Nothing here knows about Wasm: a guest's statements arrive through [`GuestConnection`].

mod bookkeeping;
mod guest;
mod highwater;
mod postgres;
mod sqlite;
mod value;

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use bookkeeping::{SkipRecord, WorkerReport, WorkerState};
pub use guest::{Call, GuestConnection, MAX_QUERY_ROWS, MAX_RESULT_BYTES, MAX_VALUE_BYTES};
pub use value::{DbError, RowSet, Value};

use crate::events::{NewEvent, ReadEvent};
use crate::model::{Description, ReplayState, Role, Target};
use crate::sandbox::{Dialect, Guard};

/// The version of zdr's own tables this binary writes; a database with a higher one is
/// refused, one with a lower one is upgraded by `zdr init`.
///
/// 2: `zdr_workers` (what each daemon worker reports), `zdr_skips` (events an operator let a
/// live projector pass) and `zdr_targets.skip_event_id`.
pub const SCHEMA_VERSION: i64 = 2;

/// Columns of Spatie's `stored_events` that zdr reads.
const EVENT_COLUMNS: [&str; 8] = [
    "id",
    "aggregate_uuid",
    "aggregate_version",
    "event_version",
    "event_class",
    "event_properties",
    "meta_data",
    "created_at",
];

/// Refuses a database whose `zdr_*` tables a newer zdr wrote (`found` is their version).
fn refuse_newer(found: Option<i64>) -> Result<(), StoreError> {
    match found {
        Some(found) if found > SCHEMA_VERSION => Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

/// Whether a database with tables of version `found` is ready for use.
fn readiness(found: Option<i64>, url: &str) -> Result<(), StoreError> {
    match found {
        None => Err(StoreError::NotInitialised(url.to_string())),
        Some(found) if found < SCHEMA_VERSION => Err(StoreError::SchemaTooOld {
            found,
            current: SCHEMA_VERSION,
        }),
        Some(_) => refuse_newer(found),
    }
}

/// Checks that an event table with these columns has every column zdr reads.
fn check_event_columns(columns: &[String]) -> Result<(), StoreError> {
    match EVENT_COLUMNS
        .iter()
        .find(|needed| !columns.iter().any(|c| c.eq_ignore_ascii_case(needed)))
    {
        Some(missing) => Err(StoreError::EventTable(missing.to_string())),
        None => Ok(()),
    }
}

/// One open database: everything zdr reads and writes, whatever the backend.
///
/// Physical names are backend-specific strings: `zdr_r_v2__balances` on SQLite,
/// `zdr_r_v2.balances` on PostgreSQL. Methods that change state run inside the transaction
/// [`Db::write`] opened when called from its closure.
pub trait Store: Send + Sync {
    /// The URL this database was opened with (without a password).
    fn url(&self) -> &str;
    /// The SQL dialect guest statements are checked and rewritten for.
    fn dialect(&self) -> Dialect;
    /// Creates zdr's tables (or upgrades those an older zdr made) and, when absent, the event
    /// store. Idempotent; an existing `stored_events` (a Laravel database) is checked and used
    /// as it is. Returns warnings the operator should read: writers of the event store that
    /// zdr cannot read safely (see [`Store::head`]).
    fn init(&self) -> Result<Vec<String>, StoreError>;
    /// Checks that `init` has run and the schema is one this binary understands.
    fn ensure_ready(&self) -> Result<(), StoreError>;
    /// Writers of the event store that the gap-safe read cannot cover, as warnings (empty when
    /// every writer that draws ids from the table's sequence is covered).
    fn event_writer_warnings(&self) -> Result<Vec<String>, StoreError>;
    /// Checks that what this store opened is still there: on SQLite, that the database file
    /// was neither deleted nor replaced since it was opened (a connection to a deleted file
    /// would go on writing into a file nobody can open).
    ///
    /// # Errors
    /// [`StoreError::FileGone`].
    fn verify_open(&self) -> Result<(), StoreError>;
    /// Replaces a connection the server dropped with a new one (PostgreSQL); the next
    /// statement runs on it. Transactions open on the old one are gone.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses the login: the cause, in its words.
    fn reconnect(&self) -> Result<(), StoreError>;
    /// Takes the lock named `name` (e.g. `replay-v2`) if no other process holds it; the lock
    /// is released when the returned value is dropped or the process dies.
    fn try_lock(&self, name: &str) -> Result<Option<RunLock>, StoreError>;

    /// Begins the write transaction: zdr's writers (batches, lifecycle steps) are serialised.
    fn begin_write(&self) -> Result<(), StoreError>;
    /// Commits the write transaction.
    fn commit(&self) -> Result<(), StoreError>;
    /// Rolls the write transaction back.
    fn rollback(&self) -> Result<(), StoreError>;
    /// Opens a savepoint inside the current transaction.
    fn savepoint(&self, name: &str) -> Result<(), StoreError>;
    /// Keeps what was done since the savepoint.
    fn release(&self, name: &str) -> Result<(), StoreError>;
    /// Undoes what was done since the savepoint and closes it.
    fn rollback_to(&self, name: &str) -> Result<(), StoreError>;

    /// Appends events in one transaction and returns the ids of the first and last.
    fn append_events(&self, events: &[NewEvent]) -> Result<Option<(i64, i64)>, StoreError>;
    /// The number of stored events.
    fn count_events(&self) -> Result<i64, StoreError>;
    /// The safe high-water mark: every event with an id at or below it is committed and
    /// visible, and no event with a lower id can commit later.
    fn head(&self) -> Result<i64, StoreError>;
    /// Ids that became visible below a head this store already returned: events whose
    /// writer the gap-safe read could not see (see `docs/architecture.md`), found since the
    /// last call. Empty on SQLite, where ids commit in order.
    fn late_events(&self) -> Result<Vec<i64>, StoreError>;
    /// Reads up to `limit` events with `after < id <= up_to`, in id order. A row that cannot
    /// be decoded is returned as such, with the reason, so the projection can stop there.
    fn read_events(
        &self,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<ReadEvent>, StoreError>;

    /// Stores a component's bytes (once per content hash) and registers it as a version of
    /// `description.name`; returns the version id (the existing one when already registered).
    fn register_version(
        &self,
        hash: &str,
        wasm: &[u8],
        description: &Description,
    ) -> Result<i64, StoreError>;
    /// A version's description, content hash and component bytes.
    fn version(&self, version_id: i64) -> Result<(Description, String, Vec<u8>), StoreError>;
    /// A version's description alone (no component bytes).
    fn description(&self, version_id: i64) -> Result<Description, StoreError>;

    /// Inserts a target row and returns it.
    fn insert_target(
        &self,
        projector: &str,
        version_id: i64,
        role: Role,
        replay_key: Option<&str>,
    ) -> Result<Target, StoreError>;
    /// One target by id.
    fn target(&self, id: i64) -> Result<Option<Target>, StoreError>;
    /// The live target of a projector, if it has one.
    fn live_target(&self, projector: &str) -> Result<Option<Target>, StoreError>;
    /// Every live target, by projector name.
    fn live_targets(&self) -> Result<Vec<Target>, StoreError>;
    /// Every target of a projector (any role).
    fn targets_of_projector(&self, projector: &str) -> Result<Vec<Target>, StoreError>;
    /// The targets a replay owns (clones, or retired tables after a promote).
    fn replay_targets(&self, key: &str) -> Result<Vec<Target>, StoreError>;
    /// The clones of `projector` whose replay is projecting and that have not failed: the
    /// targets a live batch writes to as well.
    fn projecting_clones(&self, projector: &str) -> Result<Vec<Target>, StoreError>;
    /// Moves a target's checkpoint (inside the batch transaction).
    fn set_checkpoint(&self, target_id: i64, checkpoint: i64) -> Result<(), StoreError>;
    /// Records that a target's projector failed on an event: the target stops there.
    fn record_failure(
        &self,
        target: &Target,
        event_id: i64,
        message: &str,
    ) -> Result<(), StoreError>;
    /// Clears a target's failure so it runs again from its checkpoint.
    fn clear_failure(&self, target_id: i64) -> Result<(), StoreError>;
    /// Changes a target's role (and owning replay) in the current transaction.
    fn set_role(
        &self,
        target_id: i64,
        role: Role,
        replay_key: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Deletes a target row.
    fn delete_target(&self, target_id: i64) -> Result<(), StoreError>;
    /// Appends a line of run history.
    fn record_run(
        &self,
        target: &Target,
        kind: &str,
        from_event: i64,
        to_event: i64,
        events: i64,
        outcome: &str,
    ) -> Result<(), StoreError>;

    /// The guard for a target: its declared tables mapped to their physical names.
    fn guard_for(&self, target: &Target, description: &Description) -> Guard;
    /// Whether a table (or view, index…) with this physical name exists.
    fn object_exists(&self, name: &str) -> Result<bool, StoreError>;
    /// Names of views, triggers or foreign keys outside the projector that mention `table`:
    /// objects that would break (or be broken by) moving its tables.
    fn dependents_of(&self, table: &str) -> Result<Vec<String>, StoreError>;
    /// Creates a target's tables from the projector's declared DDL (checked and rewritten by
    /// the guard in setup mode), inside the current transaction.
    fn create_tables(&self, target: &Target, description: &Description) -> Result<(), StoreError>;
    /// Drops a target's tables (their indexes go with them).
    fn drop_tables(&self, target: &Target, description: &Description) -> Result<(), StoreError>;
    /// Moves a target's tables to the names of `new_role`, inside the current transaction.
    fn rename_tables(
        &self,
        target: &Target,
        description: &Description,
        new_role: Role,
        new_key: Option<&str>,
    ) -> Result<(), StoreError>;
    /// The physical names a target's tables would have in `role`.
    fn physical_names(
        &self,
        target: &Target,
        description: &Description,
        role: Role,
        key: Option<&str>,
    ) -> Vec<String>;
    /// The raw side of a guest connection bound to this database's connection (and so its
    /// current transaction): it runs statements the guard already checked and rewrote.
    /// [`Db::guest_connection`] puts the guard and the limits in front of it.
    fn raw_guest_connection(&self) -> Box<dyn guest::RawGuestConnection>;
    /// Runs one of zdr's own statements written for both backends (placeholders `$1…`, see
    /// [`bookkeeping`]) and returns the rows it changed.
    fn sql_execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    /// Runs one of zdr's own queries written for both backends and returns its rows.
    fn sql_rows(&self, sql: &str, params: &[Value]) -> Result<RowSet, StoreError>;
    /// Runs a trusted, host-written SELECT (never guest SQL) and returns its rows: for the
    /// demo and for tests that compare read models.
    fn read_rows(&self, sql: &str) -> Result<RowSet, StoreError>;

    /// Inserts a replay row in state `created`; `false` when the key is taken.
    fn insert_replay(&self, key: &str) -> Result<bool, StoreError>;
    /// A replay's state and last error.
    fn replay(&self, key: &str) -> Result<Option<ReplayRow>, StoreError>;
    /// Every replay, oldest first.
    fn replays(&self) -> Result<Vec<ReplayRow>, StoreError>;
    /// Compare-and-set of a replay's state: moves it to `to` only if it is in one of `from`.
    /// Returns whether it moved.
    fn transition(
        &self,
        key: &str,
        from: &[ReplayState],
        to: ReplayState,
        error: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Deletes a replay row.
    fn delete_replay(&self, key: &str) -> Result<(), StoreError>;

    /// Waits up to `timeout` for new events and says whether it was woken by one: on
    /// PostgreSQL by the notification of the trigger `zdr init` installs (without it, it just
    /// sleeps); on SQLite it sleeps.
    fn wait_for_events(&self, timeout: Duration) -> bool;
}

/// An open database of either backend: what lifecycle, projection and daemon code holds.
/// It dereferences to [`Store`] for every operation.
pub struct Db {
    store: Box<dyn Store>,
    /// Whether a [`Db::write`] transaction is open on this database's connection.
    in_write: AtomicBool,
}

impl Db {
    /// Opens the existing database named by `url`: `sqlite://PATH` or
    /// `postgres://USER@HOST:PORT/DATABASE` (also `postgresql://`). A SQLite file that does
    /// not exist is an error: only [`Db::create`] (`zdr init`) makes one.
    ///
    /// # Errors
    /// An unsupported URL, or a database that cannot be opened or reached.
    pub fn open(url: &str) -> Result<Db, StoreError> {
        Self::connect(url, false)
    }

    /// Opens the database named by `url`, creating the SQLite file when it does not exist:
    /// for `zdr init` and the demo.
    ///
    /// # Errors
    /// As [`Db::open`].
    pub fn create(url: &str) -> Result<Db, StoreError> {
        Self::connect(url, true)
    }

    fn connect(url: &str, create: bool) -> Result<Db, StoreError> {
        let store: Box<dyn Store> = match Backend::of(url)? {
            Backend::Postgres => Box::new(postgres::PgStore::open(url)?),
            Backend::Sqlite => Box::new(sqlite::SqliteStore::open(url, create)?),
        };
        Ok(Db {
            store,
            in_write: AtomicBool::new(false),
        })
    }

    /// Whether a [`Db::write`] transaction is open: what must not happen inside one (a
    /// compile, a wait) can check.
    pub fn in_write(&self) -> bool {
        self.in_write.load(Ordering::Relaxed)
    }

    /// A guest connection bound to `target`: the guard, the call limits and the byte caps in
    /// front of this database's connection, inside its current transaction.
    pub fn guest_connection(
        &self,
        target: &Target,
        description: &Description,
    ) -> Box<dyn GuestConnection> {
        Box::new(guest::GuardedConnection::new(
            self.store.raw_guest_connection(),
            crate::sandbox::GuardCache::new(self.store.guard_for(target, description)),
        ))
    }

    /// Runs `f` in one write transaction, committing when it returns `Ok` and rolling back
    /// otherwise. On SQLite this is `BEGIN IMMEDIATE`, the single-writer lock; on PostgreSQL a
    /// transaction holding zdr's writer lock (an advisory lock), so zdr's own writers are
    /// serialised the same way on both while the application's event writers are not.
    ///
    /// # Errors
    /// `f`'s error, or a failure to begin or commit.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, E>,
    ) -> Result<T, E> {
        self.store.verify_open().map_err(E::from)?;
        self.store.begin_write().map_err(E::from)?;
        self.in_write.store(true, Ordering::Relaxed);
        let outcome = match f(self) {
            Ok(value) => match self.store.commit() {
                Ok(()) => Ok(value),
                Err(err) => {
                    let _ = self.store.rollback();
                    Err(E::from(err))
                }
            },
            Err(err) => {
                let _ = self.store.rollback();
                Err(err)
            }
        };
        self.in_write.store(false, Ordering::Relaxed);
        outcome
    }
}

/// The database systems zdr runs on, named by the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH` or `sqlite:PATH`.
    Sqlite,
    /// `postgres://…` or `postgresql://…`.
    Postgres,
}

impl Backend {
    /// The backend a URL names.
    ///
    /// # Errors
    /// [`StoreError::Url`] for any other scheme.
    pub fn of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(StoreError::Url(redact(url)))
        }
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Deref for Db {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        self.store.as_ref()
    }
}

/// A lock held for as long as this value lives, released when the process dies: the
/// per-replay run lock of `replay start` and the per-projector ownership of a daemon. On
/// SQLite it is an OS file lock; on PostgreSQL a session advisory lock on its own connection,
/// which the server releases when that connection is cut, so [`RunLock::is_held`] tells.
pub struct RunLock {
    held: Box<dyn HeldLock>,
}

/// Whatever keeps a [`RunLock`] held.
trait HeldLock: Send {
    /// Whether the lock is still held (its connection is alive).
    fn is_held(&mut self) -> bool;
}

impl RunLock {
    /// Wraps whatever keeps the lock held.
    fn new(held: impl HeldLock + 'static) -> Self {
        RunLock {
            held: Box::new(held),
        }
    }

    /// Whether the lock is still held: `false` once the server dropped the connection that
    /// held it (another process may take it now).
    pub fn is_held(&mut self) -> bool {
        self.held.is_held()
    }

    /// A lock that is not held: for an owner that lost its lock and could not take it again
    /// yet; [`RunLock::is_held`] says so, and the owner tries again.
    pub fn unheld() -> RunLock {
        RunLock::new(Unheld)
    }
}

struct Unheld;

impl HeldLock for Unheld {
    fn is_held(&mut self) -> bool {
        false
    }
}

/// A replay as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRow {
    /// The key.
    pub key: String,
    /// Its lifecycle state.
    pub state: ReplayState,
    /// The last error, when failed.
    pub error: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// When its state last changed.
    pub updated_at: String,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL is not one zdr understands.
    #[error(
        "unsupported database url {0:?}: use sqlite://PATH (e.g. sqlite://zdr.db) or postgres://USER@HOST:PORT/DATABASE"
    )]
    Url(String),
    /// The database could not be opened or reached.
    #[error("cannot open database {url}: {message}")]
    Open {
        /// The URL as given (without a password).
        url: String,
        /// What went wrong, and what to do about it.
        message: String,
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
    /// zdr's tables were written by an older zdr and need `zdr init` to be upgraded.
    #[error(
        "database schema version {found} is older than this zdr's ({current}); run `zdr init` to upgrade it (nothing is lost)"
    )]
    SchemaTooOld {
        /// The version in `zdr_meta`.
        found: i64,
        /// The version this binary writes.
        current: i64,
    },
    /// An existing `stored_events` table lacks a required column.
    #[error(
        "the existing stored_events table has no column {0:?}; zdr expects Spatie's stored_events schema"
    )]
    EventTable(String),
    /// The database refused or failed an operation: what zdr was doing and the database's
    /// own words (with its SQLSTATE where it has one).
    #[error("{context}: {message}")]
    Database {
        /// What zdr was doing.
        context: String,
        /// The database's message.
        message: String,
    },
    /// The connection to the server broke (a restart, a failover, an administrator, the
    /// network); a new connection may succeed. `message` keeps the server's reason.
    #[error("{context}: lost the connection to the database: {message}")]
    ConnectionLost {
        /// What zdr was doing.
        context: String,
        /// Why, in the server's or the operating system's words.
        message: String,
    },
    /// The SQLite file is damaged: nothing more may be written to it.
    #[error(
        "the database file is damaged ({message}): stop every process that uses it, check it with \
         `sqlite3 FILE 'PRAGMA integrity_check'` and restore it from a backup"
    )]
    Damaged {
        /// SQLite's message and, where known, the file.
        message: String,
    },
    /// The SQLite file was deleted or replaced while zdr had it open.
    #[error(
        "the database file {path} was {what} while zdr had it open; zdr stopped so that nothing \
         is written to a file nobody can read. Restore it from a backup (or run `zdr init` for a \
         new one) and start zdr again"
    )]
    FileGone {
        /// The file.
        path: String,
        /// `deleted` or `replaced by another file`.
        what: String,
    },
    /// A lock could not be taken within the lock timeout (readers or a long transaction held
    /// the tables); the operation was rolled back and can be retried.
    #[error("{0}: timed out waiting for a table lock held by another session; try again")]
    LockTimeout(String),
    /// The database holds something zdr cannot interpret.
    #[error("corrupt zdr state: {0}")]
    Corrupt(String),
    /// A read-model DDL statement was refused by the guard.
    #[error("table DDL refused: {0}")]
    Ddl(String),
}

impl StoreError {
    /// Whether the connection broke: reconnecting, then carrying on from the checkpoint, is
    /// the way forward.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, StoreError::ConnectionLost { .. })
    }

    /// Whether nothing more may be done with this database until an operator acts: a
    /// damaged, deleted or replaced file, or a schema this binary does not write.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::Damaged { .. }
                | StoreError::FileGone { .. }
                | StoreError::SchemaTooNew { .. }
                | StoreError::SchemaTooOld { .. }
                | StoreError::NotInitialised(_)
        )
    }
}
