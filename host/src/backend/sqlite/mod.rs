//! The SQLite backend: zdr's state, the event store and the read models in one database file.
//!
//! SQLite serialises writers, so `BEGIN IMMEDIATE` is the per-projector lock the design asks
//! for: a live batch, the switch to projecting and a promote each hold the single write lock
//! for one short transaction, and event ids commit in order (no gaps to wait for). WAL mode is
//! required: readers never block on the writer and see the tables either before or after a
//! promote's renames, never between them.
//!
//! Physical names: live tables keep their logical names; a replay's clone is
//! `zdr_r_<key>__<table>`, the former live tables after a promote `zdr_p_<key>__<table>`, a
//! new projector being built `zdr_b<target>__<table>`. SQLite index names are global and do
//! not follow a renamed table, so every index is created as `zdr_i<target>_<index>`, unique
//! for ever because target ids are never reused.
//!
//! Waking: an idle daemon looks every few milliseconds at `PRAGMA data_version`, which moves
//! when another connection commits (SQLite has no notifications between processes).
//!
//! Faults: only `zdr init` creates the file; a file deleted or replaced under an open store is
//! noticed before the next write ([`Store::verify_open`]); a damaged file is an error of its
//! own kind ([`StoreError::Damaged`]), never retried. A guest statement runs under a progress
//! handler that interrupts it at the guest's deadline, and under a length limit on every
//! string and blob it builds.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::limits::Limit;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, ToSql, params};

use super::guest::{MAX_VALUE_BYTES, RawGuestConnection, RowCollector};
use super::naming::Layout;
use super::value::{SQLSTATE_DISK_FULL, SQLSTATE_OUT_OF_MEMORY};
use super::{
    DbError, HeldLock, Partition, RowSet, RunLock, Store, StoreError, TableColumn, Value,
    check_event_columns,
};
use crate::events::{Event, NewEvent, ReadEvent, Undecodable};
use crate::sandbox::{Checked, Dialect, PhysicalName};

mod events;
mod guest;
mod held;

use guest::{SqlValue, SqliteGuestConnection, value_of};
use held::WorkerConnection;

/// How long a writer waits for SQLite's write lock before giving up. Batches are short (ms),
/// so a wait this long means something is stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a writer sleeps between two tries of SQLite's write lock.
const BUSY_RETRY: Duration = Duration::from_millis(1);

/// zdr's busy handler: tries the write lock again every millisecond, for up to
/// [`BUSY_TIMEOUT`]. SQLite's own (`busy_timeout`) sleeps ever longer, up to 100 ms at a time,
/// so a live batch that met an application's write waited tens of milliseconds after the lock
/// was free (measured in `docs/benchmarks.md`).
fn wait_for_the_write_lock(tries: i32) -> bool {
    let tries = u32::try_from(tries).unwrap_or(u32::MAX);
    if BUSY_RETRY * tries >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_RETRY);
    true
}

/// Settings of zdr's own connection that make a replay cheaper. They are per connection: the
/// application's connections to the same file keep their own.
///
/// - `cache_size`: a page cache of at most 16 MiB instead of SQLite's 2 MiB, so a batch of
///   updates spread over a read model larger than 2 MiB stops re-reading its pages from the
///   operating system. Memory stays bounded, whatever the length of history.
/// - `wal_autocheckpoint`: checkpoint after 10,000 WAL pages (about 40 MiB) instead of 1,000.
///   A batch rewrites mostly the same pages as the one before it, and a checkpoint copies each
///   page once however many times the WAL holds it, so rarer checkpoints copy far less.
/// - `journal_size_limit`: once a checkpoint has emptied the WAL, cut the file back to 64 MiB.
///
/// Measured in `docs/benchmarks.md`.
const REPLAY_PRAGMAS: &str = "PRAGMA cache_size = -16384; \
     PRAGMA wal_autocheckpoint = 10000; \
     PRAGMA journal_size_limit = 67108864;";

const EVENT_TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS stored_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_uuid TEXT,
    aggregate_version INTEGER,
    event_version INTEGER NOT NULL DEFAULT 1,
    event_class TEXT NOT NULL,
    event_properties TEXT NOT NULL,
    meta_data TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"#;

/// How often an idle daemon looks whether another connection committed (new events, most
/// likely): the longest an appended event waits before a worker wakes for it.
const DATA_VERSION_INTERVAL: Duration = Duration::from_millis(5);

/// How many SQLite virtual-machine steps pass between two looks at the guest's deadline.
const PROGRESS_STEPS: std::os::raw::c_int = 1000;

/// A connection shared between the batch driver and the guest handles of one worker thread,
/// with the guest statements it keeps prepared. Only one thread uses it at a time; the mutex
/// makes the sharing safe, never contended.
pub type SqliteConnection = Arc<Mutex<WorkerConnection>>;

/// One open SQLite database.
pub struct SqliteStore {
    conn: SqliteConnection,
    path: PathBuf,
    url: String,
    /// The file's identity when it was opened, to notice a deletion or a replacement.
    identity: Option<FileIdentity>,
    /// The deadline of the guest statement running on `conn`, if one is (see [`Deadline`]).
    deadline: Arc<Deadline>,
}

/// A device and inode: which file a path named when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> Option<FileIdentity> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).ok().map(|m| FileIdentity {
                device: m.dev(),
                inode: m.ino(),
            })
        }
        #[cfg(not(unix))]
        {
            std::fs::metadata(path).ok().map(|_| FileIdentity {
                device: 0,
                inode: 0,
            })
        }
    }
}

/// The deadline of the guest statement running on a connection, read by its progress handler
/// every [`PROGRESS_STEPS`] steps: nanoseconds after a process-wide origin, 0 for none.
#[derive(Debug, Default)]
struct Deadline(AtomicU64);

impl Deadline {
    fn origin() -> Instant {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        *ORIGIN.get_or_init(Instant::now)
    }

    fn set(&self, deadline: Option<Instant>) {
        let nanos = deadline.map_or(0, |d| {
            u64::try_from(d.saturating_duration_since(Self::origin()).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        self.0.store(nanos, Ordering::Relaxed);
    }

    fn passed(&self) -> bool {
        let nanos = self.0.load(Ordering::Relaxed);
        nanos != 0 && Self::origin().elapsed().as_nanos() >= u128::from(nanos)
    }
}

/// Adds what zdr was doing to a driver error, and sorts out a damaged file.
trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn context(self, what: impl Into<String>) -> Result<T, StoreError> {
        self.map_err(|err| store_error(err, what.into()))
    }
}

fn store_error(err: rusqlite::Error, context: String) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) =>
        {
            StoreError::Damaged {
                message: format!("{context}: {err}"),
            }
        }
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, ErrorCode::DiskFull | ErrorCode::OutOfMemory) =>
        {
            StoreError::OutOfResources {
                context,
                message: err.to_string(),
            }
        }
        _ => StoreError::Database {
            context,
            message: err.to_string(),
        },
    }
}

fn lock(conn: &SqliteConnection) -> MutexGuard<'_, WorkerConnection> {
    // A poisoned mutex means a panic while a statement ran; the connection itself is still
    // usable (SQLite rolls back on the next BEGIN), so recover it instead of panicking again.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteStore {
    /// Opens the SQLite database named by `url` (`sqlite://PATH`, `sqlite:PATH`), in WAL mode
    /// with a busy timeout; creates the file only when `create` is set (`zdr init`).
    ///
    /// # Errors
    /// An unsupported URL, a missing file (without `create`), or a file that cannot be opened
    /// as SQLite in WAL mode.
    pub fn open(url: &str, create: bool) -> Result<SqliteStore, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| StoreError::Url(url.to_string()))?;
        let path = PathBuf::from(path.split('?').next().unwrap_or(path));
        if !create && !path.exists() {
            return Err(StoreError::Open {
                url: url.to_string(),
                message: format!(
                    "there is no database file {}; run `zdr init` to create one (no other command creates it)",
                    path.display()
                ),
            });
        }
        let open_err = |source: rusqlite::Error| match store_error(source, "opening".into()) {
            damaged @ StoreError::Damaged { .. } => damaged,
            other => StoreError::Open {
                url: url.to_string(),
                message: other.to_string(),
            },
        };
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&path, flags).map_err(open_err)?;
        conn.busy_handler(Some(wait_for_the_write_lock))
            .map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "{url}: SQLite refused WAL mode (got {mode}); zdr needs WAL so readers never see a promote half done"
            )));
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(open_err)?;
        conn.execute_batch(REPLAY_PRAGMAS).map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(256);
        let deadline = Arc::new(Deadline::default());
        let watched = deadline.clone();
        conn.progress_handler(PROGRESS_STEPS, Some(move || watched.passed()));
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(WorkerConnection::hold(conn))),
            identity: FileIdentity::of(&path),
            path,
            url: url.to_string(),
            deadline,
        })
    }

    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        lock(&self.conn)
            .execute_batch(sql)
            .context(format!("running {sql}"))
    }
}

impl Store for SqliteStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn layout(&self) -> Layout {
        Layout::Prefixed
    }

    fn sql_execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let changed = lock(&self.conn)
            .prepare_cached(sql)
            .and_then(|mut stmt| {
                stmt.execute(rusqlite::params_from_iter(params.iter().map(SqlValue)))
            })
            .context(format!("running {sql}"))?;
        Ok(changed as u64)
    }

    fn sql_rows(&self, sql: &str, params: &[Value]) -> Result<RowSet, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached(sql)
            .context(format!("preparing {sql}"))?;
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let width = columns.len();
        let rows = stmt
            .query_map(
                rusqlite::params_from_iter(params.iter().map(SqlValue)),
                |row| {
                    (0..width)
                        .map(|i| row.get_ref(i).map(value_of))
                        .collect::<Result<Vec<_>, _>>()
                },
            )
            .context(format!("running {sql}"))?
            .collect::<Result<Vec<_>, _>>()
            .context(format!("running {sql}"))?;
        Ok(RowSet { columns, rows })
    }

    fn sql_batch(&self, sql: &str) -> Result<(), StoreError> {
        self.exec(sql)
    }

    fn begin_init(&self) -> Result<(), StoreError> {
        let conn = lock(&self.conn);
        self.check_integrity(&conn)?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .context("beginning the init transaction")
    }

    fn init_backend(&self) -> Result<(), StoreError> {
        let conn = lock(&self.conn);
        conn.execute_batch(EVENT_TABLE)
            .context("creating stored_events")?;
        let has_targets = conn
            .query_row(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'zdr_targets'",
                [],
                |_| Ok(()),
            )
            .optional()
            .context("inspecting zdr_targets")?
            .is_some();
        let has_skip_column = conn
            .query_row(
                "SELECT 1 FROM pragma_table_info('zdr_targets') WHERE name = 'skip_event_id'",
                [],
                |_| Ok(()),
            )
            .optional()
            .context("inspecting zdr_targets")?
            .is_some();
        if has_targets && !has_skip_column {
            // Schema 2: the table of a database an older zdr made gains the column.
            conn.execute_batch("ALTER TABLE zdr_targets ADD COLUMN skip_event_id INTEGER")
                .context("upgrading zdr_targets")?;
        }
        Ok(())
    }

    fn check_event_table(&self) -> Result<(), StoreError> {
        check_event_table(&lock(&self.conn))
    }

    fn event_writer_warnings(&self) -> Result<Vec<String>, StoreError> {
        // SQLite has one writer at a time: ids commit in order, whoever writes them.
        Ok(Vec::new())
    }

    fn verify_open(&self) -> Result<(), StoreError> {
        let Some(opened) = self.identity else {
            return Ok(());
        };
        let what = match FileIdentity::of(&self.path) {
            Some(now) if now == opened => return Ok(()),
            Some(_) => "replaced by another file",
            None => "deleted",
        };
        Err(StoreError::FileGone {
            path: self.path.display().to_string(),
            what: what.into(),
        })
    }

    fn reconnect(&self) -> Result<(), StoreError> {
        // An embedded database has no connection to lose; only the file can go.
        self.verify_open()
    }

    fn try_lock(&self, name: &str) -> Result<Option<RunLock>, StoreError> {
        let dir = lock_dir(&self.path);
        let io = |e: std::io::Error| {
            StoreError::Corrupt(format!("lock directory {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{name}.lock")))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(RunLock::new(FileLock(file)))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    fn begin_write(&self) -> Result<(), StoreError> {
        self.exec("BEGIN IMMEDIATE")
    }

    fn commit(&self) -> Result<(), StoreError> {
        self.exec("COMMIT")
    }

    fn rollback(&self) -> Result<(), StoreError> {
        self.exec("ROLLBACK")
    }

    fn append_events(&self, events: &[NewEvent]) -> Result<Option<(i64, i64)>, StoreError> {
        self.append(events)
    }

    fn head(&self) -> Result<i64, StoreError> {
        lock(&self.conn)
            .query_row("SELECT COALESCE(MAX(id), 0) FROM stored_events", [], |r| {
                r.get(0)
            })
            .context("reading the last event id")
    }

    fn late_events(&self) -> Result<Vec<i64>, StoreError> {
        Ok(Vec::new())
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

    fn object_exists(&self, name: &str) -> Result<bool, StoreError> {
        lock(&self.conn)
            .query_row(
                "SELECT 1 FROM sqlite_schema WHERE lower(name) = lower(?1)",
                [name],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .context("looking up a table")
    }

    fn begin_snapshot(&self) -> Result<(), StoreError> {
        // A deferred transaction takes its snapshot at its first read and keeps it (WAL).
        self.exec("BEGIN DEFERRED")
    }

    fn table_columns(&self, name: &PhysicalName) -> Result<Vec<TableColumn>, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare("SELECT name, lower(type), pk FROM pragma_table_info(?1)")
            .context("reading a table's columns")?;
        let columns = stmt
            .query_map([&name.name], |r| {
                let pk: i64 = r.get(2)?;
                Ok(TableColumn {
                    name: r.get(0)?,
                    type_name: r.get(1)?,
                    key_position: (pk > 0).then_some(pk),
                })
            })
            .context("reading a table's columns")?
            .collect::<Result<Vec<_>, _>>()
            .context("reading a table's columns")?;
        Ok(columns)
    }

    fn create_namespace(&self, _namespace: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn drop_namespace_if_empty(&self, _namespace: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn move_tables(&self, moves: &[(PhysicalName, PhysicalName)]) -> Result<(), StoreError> {
        // The legacy form of ALTER TABLE renames the table alone: views or triggers that would
        // follow it do not exist (create refuses them), and it never rewrites other tables.
        let conn = lock(&self.conn);
        conn.execute_batch("PRAGMA legacy_alter_table = ON")
            .context("enabling legacy_alter_table")?;
        for (from, to) in moves {
            conn.execute_batch(&format!(
                "ALTER TABLE {} RENAME TO {}",
                from.quoted(),
                PhysicalName::unqualified(to.name.clone()).quoted()
            ))
            .context(format!("renaming {from} to {to}"))?;
        }
        conn.execute_batch("PRAGMA legacy_alter_table = OFF")
            .context("disabling legacy_alter_table")
    }

    fn dependents_of(&self, table: &str) -> Result<Vec<String>, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare(
                "SELECT type || ' ' || name FROM sqlite_schema WHERE type IN ('view', 'trigger') \
                 AND (lower(tbl_name) = lower(?1) OR lower(sql) LIKE '%' || lower(?1) || '%')",
            )
            .context("looking for views and triggers")?;
        let names = stmt
            .query_map([table], |r| r.get(0))
            .context("looking for views and triggers")?
            .collect::<Result<Vec<String>, _>>()
            .context("looking for views and triggers")?;
        Ok(names)
    }

    fn raw_guest_connection(&self) -> Box<dyn RawGuestConnection> {
        Box::new(SqliteGuestConnection {
            conn: self.conn.clone(),
            deadline: self.deadline.clone(),
        })
    }

    fn wait_for_events(&self, timeout: Duration) -> bool {
        // SQLite has no notifications across processes, but `PRAGMA data_version` changes on
        // this connection whenever another connection commits: a read of the WAL index in
        // shared memory, cheap enough to look every few milliseconds.
        let until = Instant::now() + timeout;
        let first = self.data_version();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(DATA_VERSION_INTERVAL));
            let now = self.data_version();
            if now.is_some() && now != first {
                return true;
            }
        }
    }
}

impl SqliteStore {
    /// This connection's `PRAGMA data_version`, or `None` when it cannot be read (the file is
    /// gone or locked: the worker's next batch reports that).
    fn data_version(&self) -> Option<i64> {
        lock(&self.conn)
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .ok()
    }
}

fn lock_dir(db_path: &Path) -> PathBuf {
    let mut name = db_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".zdr-locks");
    db_path.with_file_name(name)
}

/// An OS file lock: held until the file is closed or the process dies.
struct FileLock(#[allow(dead_code, reason = "held for its lock, never read")] File);

impl HeldLock for FileLock {
    fn is_held(&mut self) -> bool {
        true
    }
}

impl SqliteStore {
    /// Runs SQLite's quick integrity check: a damaged file is refused with what to do.
    fn check_integrity(&self, conn: &Connection) -> Result<(), StoreError> {
        let problems: Vec<String> = conn
            .prepare("PRAGMA quick_check(5)")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .context("checking the database file")?;
        if problems.iter().all(|p| p == "ok") {
            return Ok(());
        }
        Err(StoreError::Damaged {
            message: format!(
                "{}: PRAGMA integrity_check finds: {}",
                self.path.display(),
                problems.join("; ")
            ),
        })
    }
}

fn check_event_table(conn: &Connection) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info('stored_events')")
        .context("inspecting stored_events")?;
    let columns = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .context("inspecting stored_events")?
        .collect::<Result<Vec<_>, _>>()
        .context("inspecting stored_events")?;
    check_event_columns(&columns)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::backend::Db;
    use crate::events::NewEvent;

    fn event() -> NewEvent {
        NewEvent {
            aggregate_uuid: Some("a".into()),
            aggregate_version: None,
            event_version: 1,
            event_class: "Happened".into(),
            event_properties: "{}".into(),
            meta_data: "{}".into(),
            created_at: None,
        }
    }

    /// A full database (here SQLite's page limit; a full disk answers the same `SQLITE_FULL`)
    /// is the database's failure: a guest's statement gets SQLSTATE 53100 and the failure is
    /// remembered for the projection even though SQLite undoes only the statement, and zdr's
    /// own statements fail with what to do.
    #[test]
    fn a_full_database_is_the_databases_failure_not_the_statements() {
        use crate::backend::testing::one_table_target;
        use crate::backend::{Call, StoreError, Value};
        use crate::model::Role;

        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("zdr.db").display());
        let db = Db::create(&url).expect("create");
        db.init().expect("init");
        let (clone, description) = one_table_target(
            &db,
            "items",
            &["CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT NOT NULL)"],
            Role::Clone,
        );
        let pages = db.sql_rows("PRAGMA page_count", &[]).expect("page count");
        let Some(Value::Integer(pages)) = pages.rows.first().and_then(|row| row.first()).cloned()
        else {
            panic!("no page count: {pages:?}")
        };
        db.sql_batch(&format!("PRAGMA max_page_count = {}", pages + 8))
            .expect("limit the file");

        let mut guest = db.guest_connection(&clone, &description);
        let call = || Call {
            deadline: Instant::now() + Duration::from_secs(30),
        };
        let note = Value::Text("x".repeat(64 * 1024));
        let full = (1..100)
            .find_map(|id| {
                guest
                    .execute(
                        "INSERT INTO items (id, note) VALUES ($1, $2)",
                        &[Value::Integer(id), note.clone()],
                        call(),
                    )
                    .err()
            })
            .expect("the file fills up");
        assert!(full.is_out_of_resources(), "{full:?}");
        assert_eq!(full.sqlstate(), Some("53100"));
        // The rest of the call is refused with the same reason, not as an event's failure.
        let refused = guest
            .execute(
                "INSERT INTO items (id, note) VALUES ($1, $2)",
                &[Value::Integer(1000), Value::Text("small".into())],
                call(),
            )
            .expect_err("refused after the database filled up");
        assert_eq!(refused.sqlstate(), Some("53100"), "{refused}");
        assert!(
            refused.to_string().contains("out of space") && !refused.to_string().contains("event"),
            "{refused}"
        );
        assert_eq!(
            guest.take_aborted(),
            Some(full),
            "remembered for the projection"
        );
        drop(guest);

        let events: Vec<NewEvent> = (0..200)
            .map(|_| NewEvent {
                event_properties: format!("{{\"pad\": \"{}\"}}", "y".repeat(4096)),
                ..event()
            })
            .collect();
        let err = db
            .append_events(&events)
            .expect_err("no room for the events");
        assert!(matches!(err, StoreError::OutOfResources { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("out of space") && message.contains("Nothing was lost"),
            "{message}"
        );
    }

    /// An idle daemon's wait ends with a commit of another connection (another process's
    /// append), and runs out its timeout when nothing commits.
    #[test]
    fn waiting_for_events_wakes_on_another_connections_commit() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("zdr.db").display());
        let daemon = Db::create(&url).expect("create");
        daemon.init().expect("init");
        assert!(
            !daemon.wait_for_events(Duration::from_millis(30)),
            "nothing committed, yet the wait says it was woken"
        );

        let writer = Db::open(&url).expect("open a second connection");
        let appender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.append_events(&[event()]).expect("append");
        });
        let started = Instant::now();
        let woken = daemon.wait_for_events(Duration::from_secs(10));
        appender.join().expect("the appender panicked");
        assert!(
            woken,
            "the wait ran out its timeout instead of waking on the commit"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// A writer that meets the write lock held waits for it (zdr's busy handler), and gets it
    /// once the holder commits, however long that takes within the bound.
    #[test]
    fn a_writer_waits_for_the_write_lock_and_gets_it() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("zdr.db");
        let url = format!("sqlite://{}", path.display());
        let db = Db::create(&url).expect("create");
        db.init().expect("init");

        let holder = rusqlite::Connection::open(&path).expect("open");
        holder
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            holder.execute_batch("COMMIT").expect("release the lock");
        });
        let appended = db
            .append_events(&[event()])
            .expect("the append waits, then succeeds");
        release.join().expect("the holder panicked");
        assert_eq!(appended, Some((1, 1)));
    }

    /// Each row of the read is an event, or undecodable with its reason and, when it could be
    /// read, its class.
    #[test]
    fn rows_that_do_not_decode_say_why_and_keep_their_class() {
        use crate::events::ReadEvent;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("zdr.db");
        let url = format!("sqlite://{}", path.display());
        let db = Db::create(&url).expect("create");
        db.init().expect("init");
        db.append_events(&[event(), event(), event(), event()])
            .expect("append");
        let writer = rusqlite::Connection::open(&path).expect("open");
        writer
            .execute_batch(
                "UPDATE stored_events SET event_properties = x'00ff' WHERE id = 2; \
                 UPDATE stored_events SET event_class = x'02' WHERE id = 3; \
                 UPDATE stored_events SET event_class = x'02', meta_data = x'01' WHERE id = 4;",
            )
            .expect("spoil rows");
        let read = db.read_events(0, 4, 10).expect("read");
        assert_eq!(read.len(), 4);
        match &read[0] {
            ReadEvent::Event(e) => {
                assert_eq!((e.id, e.event_class.as_str()), (1, "Happened"));
                assert_eq!(e.aggregate_uuid.as_deref(), Some("a"));
            }
            other => panic!("row 1 decodes: {other:?}"),
        }
        let undecodable = |i: usize| match &read[i] {
            ReadEvent::Undecodable(u) => (u.id, u.event_class.clone(), u.reason.clone()),
            other => panic!("row {} does not decode: {other:?}", i + 1),
        };
        assert_eq!(
            undecodable(1),
            (
                2,
                Some("Happened".to_string()),
                "event_properties is a BLOB of 2 bytes, not text".to_string()
            )
        );
        assert_eq!(
            undecodable(2),
            (
                3,
                None,
                "event_class is a BLOB of 1 bytes, not text".to_string()
            )
        );
        assert_eq!(
            undecodable(3),
            (
                4,
                None,
                "meta_data is a BLOB of 1 bytes, not text".to_string()
            )
        );
    }
}
