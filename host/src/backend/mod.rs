//! Storage: the database that holds the event store, zdr's own `zdr_*` tables and every
//! projector's read-model tables.
//!
//! Three backends implement one interface, [`Store`]: SQLite (embedded, WAL mode, driven with
//! rusqlite), PostgreSQL and MySQL/MariaDB (both driven with sqlx). [`Db`] is what the rest of
//! zdr holds: it picks the backend from the URL (`sqlite://…`, `postgres://…` or `mysql://…`)
//! and adds [`Db::write`], the one
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
mod mysql;
pub mod naming;
mod postgres;
mod rt;
mod server;
mod sqlite;
#[cfg(test)]
pub(crate) mod testing;
mod value;

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub use bookkeeping::{ParkedEvent, SkipRecord, WorkerReport, WorkerState};
pub use guest::{Call, GuestConnection, MAX_QUERY_ROWS, MAX_RESULT_BYTES, MAX_VALUE_BYTES};
pub use value::{DbError, RowSet, Value};

use crate::events::{NewEvent, ReadEvent};
use crate::model::{Description, ReplayState, Role, Target};
use crate::sandbox::{Dialect, Guard, GuardCache, Mode, PhysicalName};

/// The version of zdr's own tables this binary writes; a database with a higher one is
/// refused, one with a lower one is upgraded by `zdr init`.
///
/// 2: `zdr_workers` (what each daemon worker reports), `zdr_skips` (events an operator let a
/// live projector pass) and `zdr_targets.skip_event_id`.
/// 3: `zdr_parked`, the dead-letter table of live projectors whose policy is `park`.
/// 4: `zdr_partitions`, the checkpoints of a replay split by aggregate.
/// 5: `zdr_component_chunks`, components stored in chunks rather than in one row (a MySQL
/// server takes no statement larger than its `max_allowed_packet`).
pub const SCHEMA_VERSION: i64 = 5;

/// One of `count` parts of history split by aggregate: the events whose aggregate id hashes
/// to `index` modulo `count`, the database's own hash (`hashtext` on PostgreSQL, `CRC32` on
/// MySQL). Events without an aggregate are all in part 0. Every event is in exactly one
/// part, and all the events of one aggregate are in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Which part, from 0.
    pub index: u32,
    /// Into how many parts history is split.
    pub count: u32,
}

impl Partition {
    /// History whole, not split.
    pub const WHOLE: Partition = Partition { index: 0, count: 1 };

    /// Whether this is all of history.
    pub fn is_whole(self) -> bool {
        self.count <= 1
    }
}

/// One partition of a target's replay split by aggregate, as `zdr_partitions` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRow {
    /// Which part of history.
    pub part: Partition,
    /// The last event of the part applied (the events of other parts in between are not).
    pub checkpoint: i64,
    /// The head the split began at: the part is done when its checkpoint reaches it.
    pub head: i64,
}

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

/// What each backend implements: only what differs between the databases. Everything written
/// once for both — zdr's bookkeeping ([`bookkeeping`]), physical names ([`naming`]), the
/// shared half of a guest's handle ([`guest`]), `init` and the table DDL loop — lives on
/// [`Db`] and reaches the database through the `sql_*` methods here.
///
/// What stays per backend: connecting (and reconnecting), the write transaction and locks,
/// reading and appending events (gap-safe on PostgreSQL), the catalog, moving tables for a
/// promote, the raw side of a guest's statements, and waking up on new events.
pub trait Store: Send + Sync {
    /// The URL this database was opened with (without a password).
    fn url(&self) -> &str;
    /// The SQL dialect guest statements are checked and rewritten for, and zdr's own
    /// statements are made ready for.
    fn dialect(&self) -> Dialect;
    /// How this backend names a target's tables.
    fn layout(&self) -> naming::Layout;

    /// Runs one of zdr's own statements (placeholders in the backend's form) and returns the
    /// rows it changed.
    fn sql_execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    /// Runs one of zdr's own queries and returns its rows.
    fn sql_rows(&self, sql: &str, params: &[Value]) -> Result<RowSet, StoreError>;
    /// Runs statements of zdr's own without parameters or results, separated by `;`.
    fn sql_batch(&self, sql: &str) -> Result<(), StoreError>;

    /// Begins the transaction `zdr init` creates or upgrades the tables in (serialised
    /// against other `init`s; on SQLite after checking the file's integrity), and creates
    /// the namespace the tables live in.
    fn begin_init(&self) -> Result<(), StoreError>;
    /// Creates what only this backend has, inside the init transaction: the event store when
    /// absent, the columns later schema versions added, and backend extras (PostgreSQL: the
    /// trigger that notifies daemons, the function that caps result rows).
    fn init_backend(&self) -> Result<(), StoreError>;
    /// Checks that `stored_events` has every column zdr reads.
    fn check_event_table(&self) -> Result<(), StoreError>;
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
    /// Checks, before sending it, that a value of `size` bytes (`what`: a chunk of a projector
    /// component) fits in one statement. Only MySQL has a limit that one may pass
    /// (`max_allowed_packet`); the others take it.
    ///
    /// # Errors
    /// [`StoreError::Database`] naming the limit and the setting to raise; a failure to read
    /// the limit.
    fn check_value_fits(&self, what: &str, size: usize) -> Result<(), StoreError> {
        let _ = (what, size);
        Ok(())
    }
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
    /// Begins a rebuild's batch transaction (see [`Db::rebuild_write`]): on PostgreSQL without
    /// the writer lock, on SQLite the same single-writer transaction as [`Store::begin_write`].
    fn begin_rebuild_write(&self) -> Result<(), StoreError> {
        self.begin_write()
    }
    /// Begins a read-only transaction whose reads all see one snapshot of the database (a
    /// comparison of live and a clone while the daemon writes both). Ended with `commit`.
    fn begin_snapshot(&self) -> Result<(), StoreError>;
    /// Commits the current transaction.
    fn commit(&self) -> Result<(), StoreError>;
    /// Rolls the current transaction back.
    fn rollback(&self) -> Result<(), StoreError>;

    /// Appends events in one transaction and returns the ids of the first and last.
    fn append_events(&self, events: &[NewEvent]) -> Result<Option<(i64, i64)>, StoreError>;
    /// The safe high-water mark: every event with an id at or below it is committed and
    /// visible, and no event with a lower id can commit later.
    fn head(&self) -> Result<i64, StoreError>;
    /// Ids that became visible below a head this store already returned: events whose
    /// writer the gap-safe read could not see (see `docs/architecture.md`), found since the
    /// last call. Empty on SQLite, where ids commit in order.
    fn late_events(&self) -> Result<Vec<i64>, StoreError>;
    /// Whether the last [`Store::head`] stopped below a gap that may still be filled (an
    /// insert in flight, or on MySQL a gap not yet past its grace): events above it are
    /// visible but not yet safe to read. Never on SQLite, where ids commit in order.
    fn head_held_back(&self) -> bool {
        false
    }
    /// Reads up to `limit` events with `after < id <= up_to`, in id order. A row that cannot
    /// be decoded is returned as such, with the reason, so the projection can stop there.
    fn read_events(
        &self,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<ReadEvent>, StoreError> {
        self.read_events_of(after, up_to, limit, &[])
    }
    /// [`Store::read_events`], leaving out in the database the events a projector that
    /// handles `classes` would pass over (none left out when `classes` is empty). The filter
    /// may let through more than [`Description::handles`](crate::model::Description::handles)
    /// accepts, never less; rows whose class is NULL or not text are always read, so that an
    /// undecodable row still stops the projection.
    fn read_events_of(
        &self,
        after: i64,
        up_to: i64,
        limit: usize,
        classes: &[String],
    ) -> Result<Vec<ReadEvent>, StoreError> {
        self.read_events_in(after, up_to, limit, classes, Partition::WHOLE)
    }
    /// [`Store::read_events_of`], of one partition of history only: the events whose
    /// aggregate falls in `partition` (see [`Partition`]).
    ///
    /// # Errors
    /// A database failure; on a backend that cannot split history
    /// ([`Store::splits_history`] is false), any partition but the whole.
    fn read_events_in(
        &self,
        after: i64,
        up_to: i64,
        limit: usize,
        classes: &[String],
        partition: Partition,
    ) -> Result<Vec<ReadEvent>, StoreError>;
    /// Whether a replay may be split by aggregate across several connections writing at
    /// once: not on SQLite, whose single writer would only make them take turns.
    fn splits_history(&self) -> bool {
        false
    }

    /// Whether a table (or view, index…) with this physical name exists (`schema.name` or a
    /// name in the live tables' namespace).
    fn object_exists(&self, name: &str) -> Result<bool, StoreError>;
    /// Names of views, triggers or foreign keys outside the projector that mention live table
    /// `table`: objects that would break (or be broken by) moving its tables.
    fn dependents_of(&self, table: &str) -> Result<Vec<String>, StoreError>;
    /// The columns of a table, in order, with their declared types and their place in the
    /// primary key.
    fn table_columns(&self, name: &PhysicalName) -> Result<Vec<TableColumn>, StoreError>;
    /// Creates the namespace a target's tables live in, if the backend has them (PostgreSQL
    /// schemas).
    fn create_namespace(&self, namespace: &str) -> Result<(), StoreError>;
    /// Drops a namespace zdr created once nothing is left in it.
    fn drop_namespace_if_empty(&self, namespace: &str) -> Result<(), StoreError>;
    /// Moves tables from the first name of each pair to the second, inside the current
    /// transaction (a promote's swap): renames on SQLite, schema moves on PostgreSQL, under a
    /// short lock timeout there.
    fn move_tables(&self, moves: &[(PhysicalName, PhysicalName)]) -> Result<(), StoreError>;

    /// The raw side of a guest connection bound to this database's connection (and so its
    /// current transaction): it runs statements the guard already checked and rewrote.
    /// [`Db::guest_connection`] puts the guard and the limits in front of it.
    fn raw_guest_connection(&self) -> Box<dyn guest::RawGuestConnection>;

    /// Waits up to `timeout` for new events and says whether it was woken by one: on
    /// PostgreSQL by the notification of the trigger `zdr init` installs (without it, it just
    /// sleeps); on SQLite by a commit of another connection (`PRAGMA data_version`).
    fn wait_for_events(&self, timeout: Duration) -> bool;
}

/// An open database of either backend: what lifecycle, projection and daemon code holds.
/// It dereferences to [`Store`] for every operation.
pub struct Db {
    store: Box<dyn Store>,
    /// Whether a [`Db::write`] transaction is open on this database's connection.
    in_write: AtomicBool,
    /// The URL as given (password included), to open more connections to the same database.
    url: String,
    /// Whether a rebuild may read its next batch on a connection of its own while it applies
    /// one ([`crate::read_ahead`]; `rebuild_read_ahead`).
    read_ahead: AtomicBool,
    /// The most events a rebuild reads at a time (`rebuild_read_chunk`).
    read_chunk: AtomicUsize,
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
            Backend::MySql => Box::new(mysql::MyStore::open(url)?),
            Backend::Sqlite => Box::new(sqlite::SqliteStore::open(url, create)?),
        };
        Ok(Db {
            store,
            in_write: AtomicBool::new(false),
            url: url.to_owned(),
            read_ahead: AtomicBool::new(true),
            read_chunk: AtomicUsize::new(crate::projection::READ_CHUNK),
        })
    }

    /// Another connection to the same database, for a worker of its own (a partition of a
    /// replay).
    ///
    /// # Errors
    /// As [`Db::open`].
    pub fn open_another(&self) -> Result<Db, StoreError> {
        let another = Self::connect(&self.url, false)?;
        another.set_reading(self.reads_ahead(), self.read_chunk());
        Ok(another)
    }

    /// Whether rebuilds on this database read their next batch ahead, on a connection of
    /// their own ([`crate::read_ahead`]). On by default.
    pub fn reads_ahead(&self) -> bool {
        self.read_ahead.load(Ordering::Relaxed)
    }

    /// The most events a rebuild reads at a time, ahead or in its transaction
    /// ([`crate::projection::READ_CHUNK`] by default).
    pub fn read_chunk(&self) -> usize {
        self.read_chunk.load(Ordering::Relaxed)
    }

    /// Sets how rebuilds read history: ahead on a connection of their own or not
    /// (`rebuild_read_ahead` in zdr.toml), and at most `chunk` events at a time
    /// (`rebuild_read_chunk`).
    pub fn set_reading(&self, ahead: bool, chunk: usize) {
        self.read_ahead.store(ahead, Ordering::Relaxed);
        self.read_chunk.store(chunk.max(1), Ordering::Relaxed);
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
            GuardCache::new(self.guard_for(target, description)),
        ))
    }

    /// Creates zdr's tables (or upgrades those an older zdr made) and, when absent, the event
    /// store, in one transaction. Idempotent; an existing `stored_events` (a Laravel database)
    /// is checked and used as it is. Returns warnings the operator should read: writers of the
    /// event store that zdr cannot read safely (see [`Store::head`]).
    ///
    /// # Errors
    /// A damaged file, a schema from a newer zdr, an incompatible `stored_events`, or a
    /// database failure.
    pub fn init(&self) -> Result<Vec<String>, StoreError> {
        self.store.begin_init()?;
        let created = (|| {
            refuse_newer(self.schema_version(self.object_exists("zdr_meta")?)?)?;
            self.store.init_backend()?;
            self.create_zdr_tables()?;
            self.record_schema_version()
        })();
        match created {
            Ok(()) => self.store.commit()?,
            Err(err) => {
                let _ = self.store.rollback();
                return Err(err);
            }
        }
        self.store.check_event_table()?;
        self.store.event_writer_warnings()
    }

    /// Checks that `init` has run and the schema is one this binary writes.
    ///
    /// # Errors
    /// [`StoreError::NotInitialised`], [`StoreError::SchemaTooNew`],
    /// [`StoreError::SchemaTooOld`], or a database failure.
    pub fn ensure_ready(&self) -> Result<(), StoreError> {
        let found = self.schema_version(self.object_exists("zdr_meta")?)?;
        readiness(found, self.store.url())
    }

    /// Opens a savepoint inside the current transaction.
    ///
    /// # Errors
    /// A database failure.
    pub fn savepoint(&self, name: &str) -> Result<(), StoreError> {
        self.sql_batch(&format!("SAVEPOINT {name}"))
    }

    /// Keeps what was done since the savepoint.
    ///
    /// # Errors
    /// A database failure (on PostgreSQL, an aborted transaction among them).
    pub fn release(&self, name: &str) -> Result<(), StoreError> {
        self.sql_batch(&format!("RELEASE SAVEPOINT {name}"))
    }

    /// Undoes what was done since the savepoint and closes it.
    ///
    /// # Errors
    /// A database failure.
    pub fn rollback_to(&self, name: &str) -> Result<(), StoreError> {
        self.sql_batch(&format!(
            "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
        ))
    }

    /// Runs `f` in one read-only transaction whose reads all see the same snapshot, and ends
    /// it whatever `f` returns.
    ///
    /// # Errors
    /// `f`'s error, or a failure to begin.
    pub fn read_snapshot<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, E>,
    ) -> Result<T, E> {
        self.store.verify_open().map_err(E::from)?;
        self.store.begin_snapshot().map_err(E::from)?;
        let outcome = f(self);
        // Nothing was written: ending the transaction either way only releases the snapshot.
        let _ = self.store.commit();
        outcome
    }

    /// Runs a trusted, host-written SELECT (never guest SQL) and returns its rows: for the
    /// demo and for tests that compare read models.
    ///
    /// # Errors
    /// A database failure.
    pub fn read_rows(&self, sql: &str) -> Result<RowSet, StoreError> {
        self.sql_rows(sql, &[])
    }

    /// The guard for a target: its declared tables mapped to their physical names.
    pub fn guard_for(&self, target: &Target, description: &Description) -> Guard {
        let layout = self.layout();
        let tables = description.tables.iter().map(|t| {
            (
                t.name.clone(),
                layout.physical(
                    target.id,
                    target.role,
                    target.replay_key.as_deref(),
                    &t.name,
                ),
            )
        });
        Guard::new(
            self.dialect(),
            tables,
            Some(naming::index_prefix(target.id)),
        )
        .with_declared_ddl(
            description
                .tables
                .iter()
                .map(|t| (t.name.as_str(), t.ddl.as_slice())),
        )
    }

    /// The physical names a target's tables would have in `role` (as SQL can name them:
    /// `schema.table` or `table`).
    pub fn physical_names(
        &self,
        target: &Target,
        description: &Description,
        role: Role,
        key: Option<&str>,
    ) -> Vec<String> {
        let layout = self.layout();
        description
            .tables
            .iter()
            .map(|t| layout.physical(target.id, role, key, &t.name).to_string())
            .collect()
    }

    /// Creates a target's tables from the projector's declared DDL (checked and rewritten by
    /// the guard in setup mode), inside the current transaction.
    ///
    /// # Errors
    /// DDL the guard refuses, or a database failure.
    pub fn create_tables(
        &self,
        target: &Target,
        description: &Description,
    ) -> Result<(), StoreError> {
        let layout = self.layout();
        if let Some(namespace) =
            layout.namespace(target.id, target.role, target.replay_key.as_deref())
        {
            self.store.create_namespace(&namespace)?;
        }
        let guard = self.guard_for(target, description);
        for table in &description.tables {
            for ddl in &table.ddl {
                let checked = guard
                    .check(ddl, Mode::Setup)
                    .map_err(|e| StoreError::Ddl(format!("{}: {e}", table.name)))?;
                self.sql_batch(&checked.sql)?;
            }
        }
        Ok(())
    }

    /// Drops a target's tables (their indexes go with them), and the namespace they leave
    /// empty.
    ///
    /// # Errors
    /// A database failure.
    pub fn drop_tables(
        &self,
        target: &Target,
        description: &Description,
    ) -> Result<(), StoreError> {
        let layout = self.layout();
        for table in &description.tables {
            let name = layout.physical(
                target.id,
                target.role,
                target.replay_key.as_deref(),
                &table.name,
            );
            self.sql_batch(&format!("DROP TABLE IF EXISTS {}", name.quoted()))?;
        }
        if let Some(namespace) =
            layout.namespace(target.id, target.role, target.replay_key.as_deref())
        {
            self.store.drop_namespace_if_empty(&namespace)?;
        }
        Ok(())
    }

    /// Moves a target's tables to the names of `new_role`, inside the current transaction.
    ///
    /// # Errors
    /// A lock timeout ([`StoreError::LockTimeout`], retried by the promote) or a database
    /// failure.
    pub fn rename_tables(
        &self,
        target: &Target,
        description: &Description,
        new_role: Role,
        new_key: Option<&str>,
    ) -> Result<(), StoreError> {
        self.store
            .move_tables(&self.table_moves(target, description, new_role, new_key))
    }

    /// The moves that take a target's tables to the names of `new_role`: several targets'
    /// moves handed to [`Store::move_tables`] at once swap them in one step (on MySQL one
    /// `RENAME TABLE`, which commits implicitly, so a promote must not split it).
    pub fn table_moves(
        &self,
        target: &Target,
        description: &Description,
        new_role: Role,
        new_key: Option<&str>,
    ) -> Vec<(PhysicalName, PhysicalName)> {
        let layout = self.layout();
        description
            .tables
            .iter()
            .map(|t| {
                (
                    layout.physical(
                        target.id,
                        target.role,
                        target.replay_key.as_deref(),
                        &t.name,
                    ),
                    layout.physical(target.id, new_role, new_key, &t.name),
                )
            })
            .collect()
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
        self.transaction(|store| store.begin_write(), f)
    }

    /// Runs one batch of a rebuild (`replay start`, the bulk of `project` and `rollback`, a
    /// deploy's build from history) like [`Db::write`], but on PostgreSQL without zdr's writer
    /// lock, so that live batches never wait for a rebuild's long transaction. Safe because
    /// nothing else writes the target a rebuild catches up: its tables and checkpoint are a
    /// clone's, a new projector's or a retired set's, which no daemon serves, and the command's
    /// run lock keeps every other lifecycle step of the same replay or projector out. What
    /// must not interleave with live batches (the switch to projecting, a promote, a deploy's
    /// switch to live) still goes through [`Db::write`].
    ///
    /// # Errors
    /// `f`'s error, or a failure to begin or commit.
    pub fn rebuild_write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, E>,
    ) -> Result<T, E> {
        self.transaction(|store| store.begin_rebuild_write(), f)
    }

    fn transaction<T, E: From<StoreError>>(
        &self,
        begin: impl FnOnce(&dyn Store) -> Result<(), StoreError>,
        f: impl FnOnce(&Db) -> Result<T, E>,
    ) -> Result<T, E> {
        self.store.verify_open().map_err(E::from)?;
        begin(self.store.as_ref()).map_err(E::from)?;
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
    /// `mysql://…` or `mariadb://…`.
    MySql,
}

impl Backend {
    /// The backend a URL names.
    ///
    /// # Errors
    /// [`StoreError::Url`] for any other scheme.
    pub fn of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Ok(Backend::MySql)
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

/// One column of a table, as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    /// The column's name.
    pub name: String,
    /// Its declared type, as the database spells it (lowercase).
    pub type_name: String,
    /// Its place in the primary key (from 1), if it is part of it.
    pub key_position: Option<i64>,
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
    /// What was asked is not something this database does.
    #[error("not supported on this database: {0}")]
    Unsupported(String),
    /// The database URL is not one zdr understands.
    #[error(
        "unsupported database url {0:?}: use sqlite://PATH (e.g. sqlite://zdr.db), postgres://USER@HOST:PORT/DATABASE or mysql://USER@HOST:PORT/DATABASE"
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
    /// The database ran out of space, or of another resource it needs to write (SQLSTATE
    /// class 53 on PostgreSQL, `SQLITE_FULL`, MySQL's "table is full"): not the events' nor the
    /// projector's failure. The transaction rolled back; the same work succeeds once the
    /// resource is back.
    #[error(
        "{context}: the database is out of space (or memory): {message}. Nothing was lost: the \
         transaction rolled back. Free space on the database's disk (or raise its quota); a \
         daemon carries on by itself, a command when run again"
    )]
    OutOfResources {
        /// What zdr was doing.
        context: String,
        /// The database's message.
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
