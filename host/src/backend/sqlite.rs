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

use super::bookkeeping::SCHEMA_V2;
use super::guest::{MAX_VALUE_BYTES, RawGuestConnection, RowCollector};
use super::{
    DbError, HeldLock, ReplayRow, RowSet, RunLock, SCHEMA_VERSION, Store, StoreError, Value,
    check_event_columns, readiness, refuse_newer,
};
use crate::events::{Event, NewEvent, ReadEvent, Undecodable};
use crate::model::{Description, Failure, ReplayState, Role, Target};
use crate::sandbox::{Checked, Dialect, Guard, Mode, PhysicalName};

/// How long a writer waits for SQLite's write lock before giving up. Batches are short (ms),
/// so a wait this long means something is stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

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

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS zdr_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS zdr_components (
    hash TEXT PRIMARY KEY,
    wasm BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS zdr_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    projector TEXT NOT NULL,
    version TEXT NOT NULL,
    component_hash TEXT NOT NULL REFERENCES zdr_components (hash),
    description TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (projector, component_hash)
);
CREATE TABLE IF NOT EXISTS zdr_targets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    projector TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES zdr_versions (id),
    role TEXT NOT NULL CHECK (role IN ('live', 'clone', 'retired', 'building')),
    replay_key TEXT,
    checkpoint INTEGER NOT NULL DEFAULT 0,
    error_event_id INTEGER,
    error TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX IF NOT EXISTS zdr_targets_one_live ON zdr_targets (projector) WHERE role = 'live';
CREATE TABLE IF NOT EXISTS zdr_replays (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS zdr_failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target_id INTEGER NOT NULL,
    projector TEXT NOT NULL,
    replay_key TEXT,
    event_id INTEGER NOT NULL,
    message TEXT NOT NULL,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS zdr_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    replay_key TEXT,
    projector TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_event INTEGER NOT NULL,
    to_event INTEGER NOT NULL,
    events INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
"#;

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

/// How many SQLite virtual-machine steps pass between two looks at the guest's deadline.
const PROGRESS_STEPS: std::os::raw::c_int = 1000;

/// A connection shared between the batch driver and the guest handles of one worker thread.
/// Only one thread uses it at a time; the mutex makes the sharing safe, never contended.
pub type SqliteConnection = Arc<Mutex<Connection>>;

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
        _ => StoreError::Database {
            context,
            message: err.to_string(),
        },
    }
}

fn lock(conn: &SqliteConnection) -> MutexGuard<'_, Connection> {
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
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
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
            conn: Arc::new(Mutex::new(conn)),
            identity: FileIdentity::of(&path),
            path,
            url: url.to_string(),
            deadline,
        })
    }

    /// The physical name of `logical` in a target with this role.
    fn physical(target_id: i64, role: Role, replay_key: Option<&str>, logical: &str) -> String {
        let key = replay_key.unwrap_or("");
        match role {
            Role::Live => logical.to_string(),
            Role::Clone => format!("zdr_r_{key}__{logical}"),
            Role::Retired => format!("zdr_p_{key}__{logical}"),
            Role::Building => format!("zdr_b{target_id}__{logical}"),
        }
    }

    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        lock(&self.conn)
            .execute_batch(sql)
            .context(format!("running {sql}"))
    }

    fn targets_where(
        &self,
        condition: &str,
        params: &[&dyn ToSql],
    ) -> Result<Vec<Target>, StoreError> {
        let conn = lock(&self.conn);
        let sql = format!(
            "SELECT t.id, t.projector, t.version_id, v.version, t.role, t.replay_key, t.checkpoint, \
             t.error_event_id, t.error, t.skip_event_id FROM zdr_targets t \
             JOIN zdr_versions v ON v.id = t.version_id WHERE {condition} ORDER BY t.projector, t.id"
        );
        let mut stmt = conn
            .prepare_cached(&sql)
            .context("preparing a target query")?;
        let rows = stmt
            .query_map(params, |r| {
                let role: String = r.get(4)?;
                let error_event_id: Option<i64> = r.get(7)?;
                let error: Option<String> = r.get(8)?;
                Ok((
                    Target {
                        id: r.get(0)?,
                        projector: r.get(1)?,
                        version_id: r.get(2)?,
                        version: r.get(3)?,
                        role: Role::Live,
                        replay_key: r.get(5)?,
                        checkpoint: r.get(6)?,
                        failure: error_event_id.map(|event_id| Failure {
                            event_id,
                            message: error.unwrap_or_default(),
                        }),
                        skip_event_id: r.get(9)?,
                    },
                    role,
                ))
            })
            .context("reading targets")?;
        let mut targets = Vec::new();
        for row in rows {
            let (mut target, role) = row.context("reading targets")?;
            target.role = Role::parse(&role).ok_or_else(|| {
                StoreError::Corrupt(format!("target {} has unknown role {role:?}", target.id))
            })?;
            targets.push(target);
        }
        Ok(targets)
    }

    fn replays_where(
        &self,
        condition: &str,
        params: &[&dyn ToSql],
    ) -> Result<Vec<ReplayRow>, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT key, state, error, created_at, updated_at FROM zdr_replays WHERE {condition} ORDER BY created_at, key"
            ))
            .context("reading replays")?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .context("reading replays")?;
        let mut replays = Vec::new();
        for row in rows {
            let (key, state, error, created_at, updated_at) = row.context("reading replays")?;
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
}

impl Store for SqliteStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn init(&self) -> Result<Vec<String>, StoreError> {
        let conn = lock(&self.conn);
        self.check_integrity(&conn)?;
        refuse_newer(schema_version(&conn)?)?;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {EVENT_TABLE} {SCHEMA} {SCHEMA_V2} COMMIT;"
        ))
        .context("creating zdr tables")?;
        let has_skip_column = conn
            .query_row(
                "SELECT 1 FROM pragma_table_info('zdr_targets') WHERE name = 'skip_event_id'",
                [],
                |_| Ok(()),
            )
            .optional()
            .context("inspecting zdr_targets")?
            .is_some();
        if !has_skip_column {
            conn.execute_batch("ALTER TABLE zdr_targets ADD COLUMN skip_event_id INTEGER")
                .context("upgrading zdr_targets")?;
        }
        conn.execute(
            "INSERT INTO zdr_meta (key, value) VALUES ('schema_version', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value \
             WHERE CAST(zdr_meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)",
            [SCHEMA_VERSION.to_string()],
        )
        .context("recording the schema version")?;
        check_event_table(&conn)?;
        Ok(Vec::new())
    }

    fn ensure_ready(&self) -> Result<(), StoreError> {
        let conn = lock(&self.conn);
        readiness(schema_version(&conn)?, &self.url)
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

    fn savepoint(&self, name: &str) -> Result<(), StoreError> {
        self.exec(&format!("SAVEPOINT {name}"))
    }

    fn release(&self, name: &str) -> Result<(), StoreError> {
        self.exec(&format!("RELEASE {name}"))
    }

    fn rollback_to(&self, name: &str) -> Result<(), StoreError> {
        self.exec(&format!("ROLLBACK TO {name}; RELEASE {name}"))
    }

    fn append_events(&self, events: &[NewEvent]) -> Result<Option<(i64, i64)>, StoreError> {
        self.exec("BEGIN IMMEDIATE")?;
        let appended = (|| {
            let conn = lock(&self.conn);
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO stored_events (aggregate_uuid, aggregate_version, event_version, event_class, \
                     event_properties, meta_data, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, COALESCE(?7, strftime('%Y-%m-%d %H:%M:%f', 'now')))",
                )
                .context("preparing the event insert")?;
            let mut range = None;
            for e in events {
                stmt.execute(params![
                    e.aggregate_uuid,
                    e.aggregate_version,
                    e.event_version,
                    e.event_class,
                    e.event_properties,
                    e.meta_data,
                    e.created_at
                ])
                .context("appending an event")?;
                let id = conn.last_insert_rowid();
                range = Some(range.map_or((id, id), |(first, _)| (first, id)));
            }
            Ok(range)
        })();
        match appended {
            Ok(range) => {
                self.exec("COMMIT")?;
                Ok(range)
            }
            Err(err) => {
                let _ = self.exec("ROLLBACK");
                Err(err)
            }
        }
    }

    fn count_events(&self) -> Result<i64, StoreError> {
        lock(&self.conn)
            .query_row("SELECT COUNT(*) FROM stored_events", [], |r| r.get(0))
            .context("counting events")
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

    fn read_events(
        &self,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<ReadEvent>, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, aggregate_uuid, aggregate_version, COALESCE(event_version, 1), event_class, \
                 COALESCE(event_properties, '{}'), COALESCE(meta_data, '{}'), COALESCE(CAST(created_at AS TEXT), '') \
                 FROM stored_events WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
            )
            .context("preparing the event read")?;
        let rows = stmt
            .query_map(params![after, up_to, limit as i64], decode_event)
            .context("reading events")?;
        rows.collect::<Result<Vec<_>, _>>()
            .context("reading events")
    }

    fn register_version(
        &self,
        hash: &str,
        wasm: &[u8],
        description: &Description,
    ) -> Result<i64, StoreError> {
        let conn = lock(&self.conn);
        conn.execute(
            "INSERT INTO zdr_components (hash, wasm, size) VALUES (?1, ?2, ?3) ON CONFLICT (hash) DO NOTHING",
            params![hash, wasm, wasm.len() as i64],
        )
        .context("storing the component")?;
        let json =
            serde_json::to_string(description).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        conn.execute(
            "INSERT INTO zdr_versions (projector, version, component_hash, description) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (projector, component_hash) DO NOTHING",
            params![description.name, description.version, hash, json],
        )
        .context("registering the version")?;
        conn.query_row(
            "SELECT id FROM zdr_versions WHERE projector = ?1 AND component_hash = ?2",
            params![description.name, hash],
            |r| r.get(0),
        )
        .context("reading the version id")
    }

    fn version(&self, version_id: i64) -> Result<(Description, String, Vec<u8>), StoreError> {
        let conn = lock(&self.conn);
        let (json, hash, wasm): (String, String, Vec<u8>) = conn
            .query_row(
                "SELECT v.description, v.component_hash, c.wasm FROM zdr_versions v \
                 JOIN zdr_components c ON c.hash = v.component_hash WHERE v.id = ?1",
                [version_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .context(format!("loading projector version {version_id}"))?;
        let description = serde_json::from_str(&json).map_err(|e| {
            StoreError::Corrupt(format!("description of version {version_id}: {e}"))
        })?;
        Ok((description, hash, wasm))
    }

    fn description(&self, version_id: i64) -> Result<Description, StoreError> {
        let json: String = lock(&self.conn)
            .query_row(
                "SELECT description FROM zdr_versions WHERE id = ?1",
                [version_id],
                |r| r.get(0),
            )
            .context(format!("loading projector version {version_id}"))?;
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
        let id = {
            let conn = lock(&self.conn);
            conn.execute(
                "INSERT INTO zdr_targets (projector, version_id, role, replay_key) VALUES (?1, ?2, ?3, ?4)",
                params![projector, version_id, role.as_str(), replay_key],
            )
            .context("creating a target")?;
            conn.last_insert_rowid()
        };
        self.target(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("target {id} vanished after insert")))
    }

    fn target(&self, id: i64) -> Result<Option<Target>, StoreError> {
        Ok(self.targets_where("t.id = ?1", params![id])?.pop())
    }

    fn live_target(&self, projector: &str) -> Result<Option<Target>, StoreError> {
        Ok(self
            .targets_where("t.projector = ?1 AND t.role = 'live'", params![projector])?
            .pop())
    }

    fn live_targets(&self) -> Result<Vec<Target>, StoreError> {
        self.targets_where("t.role = 'live'", params![])
    }

    fn targets_of_projector(&self, projector: &str) -> Result<Vec<Target>, StoreError> {
        self.targets_where("t.projector = ?1", params![projector])
    }

    fn replay_targets(&self, key: &str) -> Result<Vec<Target>, StoreError> {
        self.targets_where("t.replay_key = ?1", params![key])
    }

    fn projecting_clones(&self, projector: &str) -> Result<Vec<Target>, StoreError> {
        self.targets_where(
            "t.projector = ?1 AND t.role = 'clone' AND t.error_event_id IS NULL \
             AND t.replay_key IN (SELECT key FROM zdr_replays WHERE state = 'projecting')",
            params![projector],
        )
    }

    fn set_checkpoint(&self, target_id: i64, checkpoint: i64) -> Result<(), StoreError> {
        lock(&self.conn)
            .prepare_cached("UPDATE zdr_targets SET checkpoint = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![target_id, checkpoint]))
            .context("saving a checkpoint")?;
        Ok(())
    }

    fn record_failure(
        &self,
        target: &Target,
        event_id: i64,
        message: &str,
    ) -> Result<(), StoreError> {
        let conn = lock(&self.conn);
        conn.execute(
            "UPDATE zdr_targets SET error_event_id = ?2, error = ?3, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
            params![target.id, event_id, message],
        )
        .context("recording a failure")?;
        conn.execute(
            "INSERT INTO zdr_failures (target_id, projector, replay_key, event_id, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![target.id, target.projector, target.replay_key, event_id, message],
        )
        .context("recording a failure")?;
        Ok(())
    }

    fn clear_failure(&self, target_id: i64) -> Result<(), StoreError> {
        lock(&self.conn)
            .execute(
                "UPDATE zdr_targets SET error_event_id = NULL, error = NULL WHERE id = ?1",
                [target_id],
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
        lock(&self.conn)
            .execute(
                "UPDATE zdr_targets SET role = ?2, replay_key = ?3, \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
                params![target_id, role.as_str(), replay_key],
            )
            .context("changing a target's role")?;
        Ok(())
    }

    fn delete_target(&self, target_id: i64) -> Result<(), StoreError> {
        lock(&self.conn)
            .execute("DELETE FROM zdr_targets WHERE id = ?1", [target_id])
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
        lock(&self.conn)
            .execute(
                "INSERT INTO zdr_runs (replay_key, projector, kind, from_event, to_event, events, outcome) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![target.replay_key, target.projector, kind, from_event, to_event, events, outcome],
            )
            .context("recording run history")?;
        Ok(())
    }

    fn guard_for(&self, target: &Target, description: &Description) -> Guard {
        let tables = description.tables.iter().map(|t| {
            let name = Self::physical(
                target.id,
                target.role,
                target.replay_key.as_deref(),
                &t.name,
            );
            (t.name.clone(), PhysicalName { schema: None, name })
        });
        Guard::new(
            Dialect::Sqlite,
            tables,
            Some(format!("zdr_i{}_", target.id)),
        )
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

    fn create_tables(&self, target: &Target, description: &Description) -> Result<(), StoreError> {
        let guard = self.guard_for(target, description);
        let conn = lock(&self.conn);
        for table in &description.tables {
            for ddl in &table.ddl {
                let checked = guard
                    .check(ddl, Mode::Setup)
                    .map_err(|e| StoreError::Ddl(format!("{}: {e}", table.name)))?;
                conn.execute_batch(&checked.sql)
                    .context(format!("creating table {} ({})", table.name, checked.sql))?;
            }
        }
        Ok(())
    }

    fn drop_tables(&self, target: &Target, description: &Description) -> Result<(), StoreError> {
        let conn = lock(&self.conn);
        for table in &description.tables {
            let name = Self::physical(
                target.id,
                target.role,
                target.replay_key.as_deref(),
                &table.name,
            );
            conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(&name)))
                .context(format!("dropping table {name}"))?;
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
        let conn = lock(&self.conn);
        conn.execute_batch("PRAGMA legacy_alter_table = ON")
            .context("enabling legacy_alter_table")?;
        for table in &description.tables {
            let from = Self::physical(
                target.id,
                target.role,
                target.replay_key.as_deref(),
                &table.name,
            );
            let to = Self::physical(target.id, new_role, new_key, &table.name);
            conn.execute_batch(&format!(
                "ALTER TABLE {} RENAME TO {}",
                quote(&from),
                quote(&to)
            ))
            .context(format!("renaming {from} to {to}"))?;
        }
        conn.execute_batch("PRAGMA legacy_alter_table = OFF")
            .context("disabling legacy_alter_table")?;
        Ok(())
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
            .map(|t| Self::physical(target.id, role, key, &t.name))
            .collect()
    }

    fn raw_guest_connection(&self) -> Box<dyn RawGuestConnection> {
        Box::new(SqliteGuestConnection {
            conn: self.conn.clone(),
            deadline: self.deadline.clone(),
        })
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

    fn read_rows(&self, sql: &str) -> Result<RowSet, StoreError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare(sql).context(format!("preparing {sql}"))?;
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let width = columns.len();
        let rows = stmt
            .query_map([], |row| {
                (0..width)
                    .map(|i| row.get_ref(i).map(value_of))
                    .collect::<Result<Vec<_>, _>>()
            })
            .context(format!("running {sql}"))?
            .collect::<Result<Vec<_>, _>>()
            .context(format!("running {sql}"))?;
        Ok(RowSet { columns, rows })
    }

    fn insert_replay(&self, key: &str) -> Result<bool, StoreError> {
        let inserted = lock(&self.conn)
            .execute(
                "INSERT INTO zdr_replays (key, state) VALUES (?1, 'created') ON CONFLICT (key) DO NOTHING",
                [key],
            )
            .context("creating the replay")?;
        Ok(inserted == 1)
    }

    fn replay(&self, key: &str) -> Result<Option<ReplayRow>, StoreError> {
        Ok(self.replays_where("key = ?1", params![key])?.pop())
    }

    fn replays(&self) -> Result<Vec<ReplayRow>, StoreError> {
        self.replays_where("1 = 1", params![])
    }

    fn transition(
        &self,
        key: &str,
        from: &[ReplayState],
        to: ReplayState,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let placeholders = (0..from.len())
            .map(|i| format!("?{}", i + 4))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE zdr_replays SET state = ?2, error = ?3, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE key = ?1 AND state IN ({placeholders})"
        );
        let mut values: Vec<rusqlite::types::Value> = vec![
            key.to_string().into(),
            to.as_str().to_string().into(),
            error.map(str::to_string).into(),
        ];
        values.extend(
            from.iter()
                .map(|s| rusqlite::types::Value::from(s.as_str().to_string())),
        );
        let changed = lock(&self.conn)
            .execute(&sql, rusqlite::params_from_iter(values))
            .context("changing the replay state")?;
        Ok(changed == 1)
    }

    fn delete_replay(&self, key: &str) -> Result<(), StoreError> {
        lock(&self.conn)
            .execute("DELETE FROM zdr_replays WHERE key = ?1", [key])
            .context("deleting the replay")?;
        Ok(())
    }

    fn wait_for_events(&self, timeout: Duration) -> bool {
        std::thread::sleep(timeout);
        false
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

/// Decodes one row of the event read; a column of the wrong type or text that is not UTF-8
/// makes the row [`ReadEvent::Undecodable`] with the reason.
fn decode_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<ReadEvent> {
    let id: i64 = row.get(0)?;
    let class = text_column(row, 4, "event_class");
    let decoded = (|| {
        Ok::<_, String>(Event {
            id,
            aggregate_uuid: optional_text_column(row, 1, "aggregate_uuid")?,
            aggregate_version: optional_integer_column(row, 2, "aggregate_version")?,
            event_version: optional_integer_column(row, 3, "event_version")?.unwrap_or(1),
            event_class: class.clone()?,
            event_properties: text_column(row, 5, "event_properties")?,
            meta_data: text_column(row, 6, "meta_data")?,
            created_at: text_column(row, 7, "created_at")?,
        })
    })();
    Ok(match decoded {
        Ok(event) => ReadEvent::Event(event),
        Err(reason) => ReadEvent::Undecodable(Undecodable {
            id,
            event_class: class.ok(),
            reason,
        }),
    })
}

/// A text column that may not be NULL; `Err` holds why it cannot be read.
fn text_column(row: &rusqlite::Row<'_>, index: usize, name: &str) -> Result<String, String> {
    optional_text_column(row, index, name)?.ok_or_else(|| format!("{name} is NULL"))
}

fn optional_text_column(
    row: &rusqlite::Row<'_>,
    index: usize,
    name: &str,
) -> Result<Option<String>, String> {
    match row.get_ref(index).map_err(|e| format!("{name}: {e}"))? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| format!("{name} is not valid UTF-8 text")),
        ValueRef::Integer(v) => Ok(Some(v.to_string())),
        ValueRef::Real(v) => Ok(Some(v.to_string())),
        ValueRef::Blob(bytes) => Err(format!(
            "{name} is a BLOB of {} bytes, not text",
            bytes.len()
        )),
    }
}

fn optional_integer_column(
    row: &rusqlite::Row<'_>,
    index: usize,
    name: &str,
) -> Result<Option<i64>, String> {
    match row.get_ref(index).map_err(|e| format!("{name}: {e}"))? {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(v) => Ok(Some(v)),
        ValueRef::Text(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{name} is text that is not an integer")),
        ValueRef::Real(_) => Err(format!("{name} is a real number, not an integer")),
        ValueRef::Blob(_) => Err(format!("{name} is a BLOB, not an integer")),
    }
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn schema_version(conn: &Connection) -> Result<Option<i64>, StoreError> {
    let has_meta = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'zdr_meta'",
            [],
            |_| Ok(()),
        )
        .optional()
        .context("reading the schema")?
        .is_some();
    if !has_meta {
        return Ok(None);
    }
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM zdr_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .context("reading the schema version")?;
    match version {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("schema_version {v:?} is not a number"))),
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

/// The raw side of a guest's handle: runs checked statements on the worker's shared
/// connection, under the guest's deadline and the value length cap.
struct SqliteGuestConnection {
    conn: SqliteConnection,
    deadline: Arc<Deadline>,
}

/// The guest's bounds on a connection for one statement: the deadline the progress handler
/// watches and the longest string or blob SQLite may build. Both are lifted when dropped, so
/// zdr's own statements (which read whole components) run unbounded.
struct Bounded<'a> {
    conn: &'a Connection,
    deadline: &'a Deadline,
    length: std::os::raw::c_int,
}

impl<'a> Bounded<'a> {
    fn new(conn: &'a Connection, deadline: &'a Deadline, until: Instant) -> Self {
        deadline.set(Some(until));
        let cap =
            std::os::raw::c_int::try_from(MAX_VALUE_BYTES).unwrap_or(std::os::raw::c_int::MAX);
        let length = conn
            .set_limit(Limit::SQLITE_LIMIT_LENGTH, cap)
            .unwrap_or(cap);
        Bounded {
            conn,
            deadline,
            length,
        }
    }
}

impl Drop for Bounded<'_> {
    fn drop(&mut self) {
        self.deadline.set(None);
        let _ = self.conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, self.length);
    }
}

impl RawGuestConnection for SqliteGuestConnection {
    fn failure_aborts_transaction(&self) -> bool {
        // A failed statement rolls back only itself; the transaction goes on.
        false
    }

    fn execute(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
    ) -> Result<u64, DbError> {
        let conn = lock(&self.conn);
        let _bounded = Bounded::new(&conn, &self.deadline, deadline);
        let mut stmt = conn.prepare_cached(&checked.sql).map_err(db_error)?;
        let changed = stmt
            .execute(rusqlite::params_from_iter(params.iter().map(SqlValue)))
            .map_err(db_error)?;
        Ok(changed as u64)
    }

    fn query(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
        out: &mut RowCollector,
    ) -> Result<(), DbError> {
        let conn = lock(&self.conn);
        let _bounded = Bounded::new(&conn, &self.deadline, deadline);
        let mut stmt = conn.prepare_cached(&checked.sql).map_err(db_error)?;
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let width = columns.len();
        out.columns(columns);
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter().map(SqlValue)))
            .map_err(db_error)?;
        while let Some(row) = rows.next().map_err(db_error)? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(value_of(row.get_ref(i).map_err(db_error)?));
            }
            out.push(values)?;
        }
        Ok(())
    }
}

fn value_of(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Integer(v),
        ValueRef::Real(v) => Value::Real(v),
        ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
        ValueRef::Blob(v) => Value::Blob(v.to_vec()),
    }
}

struct SqlValue<'a>(&'a Value);

impl ToSql for SqlValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null | Value::Unsupported(_) => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Value::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Value::Boolean(v) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*v))),
        })
    }
}

/// Maps a driver error onto the closed set a guest sees. The driver's message is kept (it
/// names the column or constraint the guest got wrong) but never a host path or secret:
/// SQLite's messages are about the statement only.
fn db_error(err: rusqlite::Error) -> DbError {
    match &err {
        rusqlite::Error::SqliteFailure(e, message) => {
            let message = message.clone().unwrap_or_else(|| e.to_string());
            match e.code {
                ErrorCode::ConstraintViolation => DbError::Constraint {
                    message,
                    sqlstate: None,
                },
                ErrorCode::OperationInterrupted => DbError::LimitExceeded(
                    "the statement was interrupted: it ran past the deadline of the guest's call"
                        .into(),
                ),
                ErrorCode::TooBig => DbError::LimitExceeded(format!(
                    "the statement would build a string, blob or row over {} MiB ({message})",
                    MAX_VALUE_BYTES / (1024 * 1024)
                )),
                _ if message.contains("no such column") || message.contains("syntax error") => {
                    DbError::InvalidSql {
                        message,
                        sqlstate: None,
                    }
                }
                _ => DbError::Other {
                    message,
                    sqlstate: None,
                },
            }
        }
        rusqlite::Error::InvalidParameterCount(..) | rusqlite::Error::InvalidParameterName(_) => {
            DbError::InvalidSql {
                message: err.to_string(),
                sqlstate: None,
            }
        }
        _ => DbError::Other {
            message: err.to_string(),
            sqlstate: None,
        },
    }
}
