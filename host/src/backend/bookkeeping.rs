//! zdr's own bookkeeping, written once for every backend: projector versions and their
//! components, targets and their checkpoints and failures, replays, run history, what each
//! daemon worker reports (`zdr_workers`) and the events an operator let a live projector pass
//! (`zdr_skips`).
//!
//! The statements are plain SQL that SQLite and PostgreSQL both accept. They differ in a few
//! places only, which [`portable`] fills in per backend: placeholders are written `$1, $2…`
//! (SQLite gets `?1, ?2…`), and tokens in braces stand for what each database spells its own
//! way — `{now}` (the database clock in seconds since the Unix epoch), `{timestamp}` (the
//! current time in a timestamp column), `{iso:COLUMN}` (a timestamp column as ISO-8601 text in
//! UTC), and in the table definitions `{serial}`, `{bytes}` and `{created}`. Each statement is
//! made ready once per backend and kept ([`Sql`]). A backend only runs them
//! ([`super::Store::sql_execute`], [`super::Store::sql_rows`], [`super::Store::sql_batch`]).

use std::sync::OnceLock;

use super::{Db, Partition, PartitionRow, ReplayRow, RowSet, StoreError, Value};
use crate::machine::{self, Command};
use crate::model::{Description, Failure, ReplayState, Role, Target, iso_utc};
use crate::sandbox::Dialect;

/// zdr's tables, in SQL both backends accept once [`portable`] has filled in the tokens.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS zdr_meta (
    \"key\" {name} PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS zdr_components (
    hash {name} PRIMARY KEY,
    wasm {bytes} NOT NULL,
    size BIGINT NOT NULL,
    created_at {created}
);
CREATE TABLE IF NOT EXISTS zdr_component_chunks (
    hash {name} NOT NULL REFERENCES zdr_components (hash),
    seq BIGINT NOT NULL,
    bytes {bytes} NOT NULL,
    PRIMARY KEY (hash, seq)
);
CREATE TABLE IF NOT EXISTS zdr_versions (
    id {serial},
    projector {name} NOT NULL,
    version TEXT NOT NULL,
    component_hash {name} NOT NULL REFERENCES zdr_components (hash),
    description TEXT NOT NULL,
    created_at {created},
    UNIQUE (projector, component_hash)
);
CREATE TABLE IF NOT EXISTS zdr_targets (
    id {serial},
    projector {name} NOT NULL,
    version_id BIGINT NOT NULL REFERENCES zdr_versions (id),
    role TEXT NOT NULL CHECK (role IN ('live', 'clone', 'retired', 'building')),
    replay_key TEXT,
    checkpoint BIGINT NOT NULL DEFAULT 0,
    error_event_id BIGINT,
    error TEXT,
    created_at {created},
    updated_at {created},
    skip_event_id BIGINT{live_column}
);
{live_index};
CREATE TABLE IF NOT EXISTS zdr_replays (
    \"key\" {name} PRIMARY KEY,
    state TEXT NOT NULL,
    error TEXT,
    created_at {created},
    updated_at {created}
);
CREATE TABLE IF NOT EXISTS zdr_failures (
    id {serial},
    target_id BIGINT NOT NULL,
    projector TEXT NOT NULL,
    replay_key TEXT,
    event_id BIGINT NOT NULL,
    message TEXT NOT NULL,
    at {created}
);
CREATE TABLE IF NOT EXISTS zdr_runs (
    id {serial},
    replay_key TEXT,
    projector TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_event BIGINT NOT NULL,
    to_event BIGINT NOT NULL,
    events BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    at {created}
);
CREATE TABLE IF NOT EXISTS zdr_workers (
    projector {name} PRIMARY KEY,
    daemon TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    since DOUBLE PRECISION NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS zdr_skips (
    target_id BIGINT NOT NULL,
    projector TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    reason TEXT NOT NULL,
    skipped_by TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (target_id, event_id)
);
CREATE TABLE IF NOT EXISTS zdr_parked (
    target_id BIGINT NOT NULL,
    projector TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    error TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 1,
    parked_at DOUBLE PRECISION NOT NULL,
    last_attempt_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (target_id, event_id)
);
CREATE TABLE IF NOT EXISTS zdr_partitions (
    target_id BIGINT NOT NULL,
    part BIGINT NOT NULL,
    parts BIGINT NOT NULL,
    checkpoint BIGINT NOT NULL,
    head BIGINT NOT NULL,
    PRIMARY KEY (target_id, part)
);
";

/// A statement written for both backends, made ready for each the first time it is used.
pub(super) struct Sql {
    text: &'static str,
    sqlite: OnceLock<String>,
    postgres: OnceLock<String>,
    mysql: OnceLock<String>,
}

impl Sql {
    const fn new(text: &'static str) -> Self {
        Self {
            text,
            sqlite: OnceLock::new(),
            postgres: OnceLock::new(),
            mysql: OnceLock::new(),
        }
    }

    /// The statement for `dialect`.
    pub(super) fn get(&self, dialect: Dialect) -> &str {
        let cell = match dialect {
            Dialect::Sqlite => &self.sqlite,
            Dialect::Postgres => &self.postgres,
            Dialect::MySql => &self.mysql,
        };
        cell.get_or_init(|| portable(self.text, dialect))
    }
}

/// A statement (or several) written for both backends, made ready for `dialect`.
pub(super) fn portable(sql: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let token = &rest[open + 1..open + close];
        match (token, dialect) {
            // A text column that is part of a key: MySQL cannot index TEXT, and compares
            // text without regard to case unless told otherwise.
            ("name", Dialect::MySql) => {
                out.push_str("VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            }
            ("name", _) => out.push_str("TEXT"),
            // One live target per projector: a partial unique index where the database has
            // them; on MySQL a unique generated column that is NULL except for live targets.
            ("live_column", Dialect::MySql) => out.push_str(
                ",\n    live_projector VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin \
                 AS (CASE WHEN role = 'live' THEN projector END) STORED UNIQUE",
            ),
            ("live_column", _) => {}
            ("live_index", Dialect::MySql) => out.push_str("SELECT 1"),
            ("live_index", _) => out.push_str(
                "CREATE UNIQUE INDEX IF NOT EXISTS zdr_targets_one_live ON zdr_targets (projector) \
                 WHERE role = 'live'",
            ),
            ("now", Dialect::MySql) => out.push_str("UNIX_TIMESTAMP(SYSDATE(6))"),
            ("timestamp", Dialect::MySql) => out.push_str("CURRENT_TIMESTAMP(6)"),
            ("serial", Dialect::MySql) => out.push_str("BIGINT AUTO_INCREMENT PRIMARY KEY"),
            ("bytes", Dialect::MySql) => out.push_str("LONGBLOB"),
            ("created", Dialect::MySql) => {
                out.push_str("TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)")
            }
            // zdr's MySQL sessions run in UTC (`time_zone = '+00:00'`).
            (column, Dialect::MySql) if column.starts_with("iso:") => out.push_str(&format!(
                "CONCAT(DATE_FORMAT({c}, '%Y-%m-%dT%H:%i:%s.'), \
                 LPAD(FLOOR(MICROSECOND({c}) / 1000), 3, '0'), 'Z')",
                c = &column[4..]
            )),
            ("now", Dialect::Sqlite) => out.push_str("((julianday('now') - 2440587.5) * 86400.0)"),
            ("now", Dialect::Postgres) => {
                out.push_str("EXTRACT(EPOCH FROM clock_timestamp())::double precision")
            }
            ("timestamp", Dialect::Sqlite) => out.push_str("strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"),
            ("timestamp", Dialect::Postgres) => out.push_str("now()"),
            ("serial", Dialect::Sqlite) => out.push_str("INTEGER PRIMARY KEY AUTOINCREMENT"),
            ("serial", Dialect::Postgres) => out.push_str("BIGSERIAL PRIMARY KEY"),
            ("bytes", Dialect::Sqlite) => out.push_str("BLOB"),
            ("bytes", Dialect::Postgres) => out.push_str("BYTEA"),
            ("created", Dialect::Sqlite) => {
                out.push_str("TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
            }
            ("created", Dialect::Postgres) => out.push_str("TIMESTAMPTZ NOT NULL DEFAULT now()"),
            (column, Dialect::Sqlite) if column.starts_with("iso:") => out.push_str(&column[4..]),
            (column, Dialect::Postgres) if column.starts_with("iso:") => out.push_str(&format!(
                "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
                &column[4..]
            )),
            // Not a token (none of zdr's statements has other braces): kept as written.
            _ => out.push_str(&rest[open..=open + close]),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    match dialect {
        Dialect::Postgres => out,
        Dialect::Sqlite => out.replace('$', "?"),
        // Upserts and casts spelt MySQL's way; `$N` stays, bound by position by the backend.
        // zdr's own statements always translate (a test runs every one).
        Dialect::MySql => out
            .split_inclusive(';')
            .map(|statement| {
                crate::sandbox::own_statement(statement.trim_end_matches(';'))
                    .map(|s| if statement.ends_with(';') { s + ";" } else { s })
                    .unwrap_or_else(|_| statement.to_owned())
            })
            .collect(),
    }
}

static TARGET_BY_ID: Sql = Sql::new(
    "SELECT t.id, t.projector, t.version_id, v.version, t.role, t.replay_key, t.checkpoint, \
     t.error_event_id, t.error, t.skip_event_id FROM zdr_targets t \
     JOIN zdr_versions v ON v.id = t.version_id WHERE t.id = $1",
);
static LIVE_TARGET: Sql = Sql::new(
    "SELECT t.id, t.projector, t.version_id, v.version, t.role, t.replay_key, t.checkpoint, \
     t.error_event_id, t.error, t.skip_event_id FROM zdr_targets t \
     JOIN zdr_versions v ON v.id = t.version_id WHERE t.projector = $1 AND t.role = 'live'",
);
static LIVE_TARGETS: Sql = Sql::new(
    "SELECT t.id, t.projector, t.version_id, v.version, t.role, t.replay_key, t.checkpoint, \
     t.error_event_id, t.error, t.skip_event_id FROM zdr_targets t \
     JOIN zdr_versions v ON v.id = t.version_id WHERE t.role = 'live' ORDER BY t.projector, t.id",
);
static PROJECTOR_TARGETS: Sql = Sql::new(
    "SELECT t.id, t.projector, t.version_id, v.version, t.role, t.replay_key, t.checkpoint, \
     t.error_event_id, t.error, t.skip_event_id FROM zdr_targets t \
     JOIN zdr_versions v ON v.id = t.version_id WHERE t.projector = $1 ORDER BY t.projector, t.id",
);
static REPLAY_TARGETS: Sql = Sql::new(
    "SELECT t.id, t.projector, t.version_id, v.version, t.role, t.replay_key, t.checkpoint, \
     t.error_event_id, t.error, t.skip_event_id FROM zdr_targets t \
     JOIN zdr_versions v ON v.id = t.version_id WHERE t.replay_key = $1 ORDER BY t.projector, t.id",
);
static PROJECTING_CLONES: Sql = Sql::new(
    "SELECT t.id, t.projector, t.version_id, v.version, t.role, t.replay_key, t.checkpoint, \
     t.error_event_id, t.error, t.skip_event_id FROM zdr_targets t \
     JOIN zdr_versions v ON v.id = t.version_id WHERE t.projector = $1 AND t.role = 'clone' \
     AND t.error_event_id IS NULL \
     AND t.replay_key IN (SELECT \"key\" FROM zdr_replays WHERE state = 'projecting') \
     ORDER BY t.projector, t.id",
);
static SET_CHECKPOINT: Sql = Sql::new("UPDATE zdr_targets SET checkpoint = $2 WHERE id = $1");
static INSERT_TARGET: Sql = Sql::new(
    "INSERT INTO zdr_targets (projector, version_id, role, replay_key) VALUES ($1, $2, $3, $4) RETURNING id",
);
static SET_FAILURE: Sql = Sql::new(
    "UPDATE zdr_targets SET error_event_id = $2, error = $3, updated_at = {timestamp} WHERE id = $1",
);
static ADD_FAILURE: Sql = Sql::new(
    "INSERT INTO zdr_failures (target_id, projector, replay_key, event_id, message) VALUES ($1, $2, $3, $4, $5)",
);
static CLEAR_FAILURE: Sql = Sql::new(
    "UPDATE zdr_targets SET error_event_id = NULL, error = NULL, updated_at = {timestamp} WHERE id = $1",
);
static SET_ROLE: Sql = Sql::new(
    "UPDATE zdr_targets SET role = $2, replay_key = $3, updated_at = {timestamp} WHERE id = $1",
);
static DELETE_TARGET: Sql = Sql::new("DELETE FROM zdr_targets WHERE id = $1");
static PARTITIONS: Sql = Sql::new(
    "SELECT part, parts, checkpoint, head FROM zdr_partitions WHERE target_id = $1 ORDER BY part",
);
static ADD_PARTITION: Sql = Sql::new(
    "INSERT INTO zdr_partitions (target_id, part, parts, checkpoint, head) VALUES ($1, $2, $3, $4, $5)",
);
static SET_PARTITION_CHECKPOINT: Sql =
    Sql::new("UPDATE zdr_partitions SET checkpoint = $3 WHERE target_id = $1 AND part = $2");
static PARTITION_CHECKPOINT: Sql =
    Sql::new("SELECT checkpoint FROM zdr_partitions WHERE target_id = $1 AND part = $2");
static FORGET_PARTITIONS: Sql = Sql::new("DELETE FROM zdr_partitions WHERE target_id = $1");
static ADD_RUN: Sql = Sql::new(
    "INSERT INTO zdr_runs (replay_key, projector, kind, from_event, to_event, events, outcome) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)",
);
static COMPONENT_STORED: Sql = Sql::new("SELECT 1 FROM zdr_components WHERE hash = $1");
static ADD_COMPONENT: Sql = Sql::new(
    "INSERT INTO zdr_components (hash, wasm, size) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
);
static ADD_COMPONENT_CHUNK: Sql = Sql::new(
    "INSERT INTO zdr_component_chunks (hash, seq, bytes) VALUES ($1, $2, $3) \
     ON CONFLICT (hash, seq) DO NOTHING",
);
static COMPONENT_CHUNKS: Sql =
    Sql::new("SELECT bytes FROM zdr_component_chunks WHERE hash = $1 ORDER BY seq");
static ADD_VERSION: Sql = Sql::new(
    "INSERT INTO zdr_versions (projector, version, component_hash, description) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (projector, component_hash) DO NOTHING",
);
static VERSION_ID: Sql =
    Sql::new("SELECT id FROM zdr_versions WHERE projector = $1 AND component_hash = $2");
static VERSION: Sql = Sql::new(
    "SELECT v.description, v.component_hash, c.wasm, c.size FROM zdr_versions v \
     JOIN zdr_components c ON c.hash = v.component_hash WHERE v.id = $1",
);
static DESCRIPTION: Sql =
    Sql::new("SELECT description, component_hash FROM zdr_versions WHERE id = $1");
static ADD_REPLAY: Sql = Sql::new(
    "INSERT INTO zdr_replays (\"key\", state) VALUES ($1, 'created') ON CONFLICT (\"key\") DO NOTHING",
);
static REPLAY: Sql = Sql::new(
    "SELECT \"key\", state, error, {iso:created_at}, {iso:updated_at} FROM zdr_replays WHERE \"key\" = $1",
);
static REPLAYS: Sql = Sql::new(
    "SELECT \"key\", state, error, {iso:created_at}, {iso:updated_at} FROM zdr_replays ORDER BY created_at, \"key\"",
);
static DELETE_REPLAY: Sql = Sql::new("DELETE FROM zdr_replays WHERE \"key\" = $1");
static SCHEMA_VERSION: Sql =
    Sql::new("SELECT value FROM zdr_meta WHERE \"key\" = 'schema_version'");
static SET_SCHEMA_VERSION: Sql = Sql::new(
    "INSERT INTO zdr_meta (\"key\", value) VALUES ('schema_version', $1) \
     ON CONFLICT (\"key\") DO UPDATE SET value = CASE \
     WHEN CAST(zdr_meta.value AS BIGINT) < CAST(excluded.value AS BIGINT) THEN excluded.value \
     ELSE zdr_meta.value END",
);
static COUNT_EVENTS: Sql = Sql::new("SELECT COUNT(*) FROM stored_events");
static REPORT_WORKER: Sql = Sql::new(
    "INSERT INTO zdr_workers (projector, daemon, state, reason, since, seen_at) \
     VALUES ($1, $2, $3, $4, {now}, {now}) \
     ON CONFLICT (projector) DO UPDATE SET \
     since = CASE WHEN zdr_workers.state = excluded.state AND zdr_workers.daemon = excluded.daemon \
             THEN zdr_workers.since ELSE excluded.since END, \
     daemon = excluded.daemon, state = excluded.state, reason = excluded.reason, \
     seen_at = excluded.seen_at",
);
static FORGET_WORKER: Sql =
    Sql::new("DELETE FROM zdr_workers WHERE projector = $1 AND daemon = $2");
static WORKERS: Sql = Sql::new(
    "SELECT projector, daemon, state, reason, since, seen_at, {now} - seen_at FROM zdr_workers",
);
static ADD_SKIP: Sql = Sql::new(
    "INSERT INTO zdr_skips (target_id, projector, event_id, reason, skipped_by, at) \
     VALUES ($1, $2, $3, $4, $5, {now})",
);
static MARK_SKIP: Sql = Sql::new(
    "UPDATE zdr_targets SET error_event_id = NULL, error = NULL, \
     skip_event_id = CASE WHEN skip_event_id IS NULL OR skip_event_id < $2 THEN $2 \
     ELSE skip_event_id END WHERE id = $1",
);
static SKIPS: Sql = Sql::new(
    "SELECT event_id, reason, skipped_by, at FROM zdr_skips WHERE target_id = $1 ORDER BY at, event_id",
);
static SKIPPED_AFTER: Sql = Sql::new(
    "SELECT event_id FROM zdr_skips WHERE target_id = $1 AND event_id > $2 \
     UNION SELECT event_id FROM zdr_parked WHERE target_id = $1 AND event_id > $2 ORDER BY 1",
);
static PARK: Sql = Sql::new(
    "INSERT INTO zdr_parked (target_id, projector, event_id, error, attempts, parked_at, last_attempt_at) \
     VALUES ($1, $2, $3, $4, 1, {now}, {now}) \
     ON CONFLICT (target_id, event_id) DO UPDATE SET error = excluded.error, \
     attempts = zdr_parked.attempts + 1, last_attempt_at = excluded.last_attempt_at",
);
static PARKED: Sql = Sql::new(
    "SELECT event_id, error, attempts, parked_at, last_attempt_at FROM zdr_parked \
     WHERE target_id = $1 ORDER BY event_id",
);
static COUNT_PARKED: Sql = Sql::new("SELECT COUNT(*) FROM zdr_parked WHERE target_id = $1");
static UNPARK: Sql = Sql::new("DELETE FROM zdr_parked WHERE target_id = $1 AND event_id = $2");
static FORGET_PARKED: Sql = Sql::new("DELETE FROM zdr_parked WHERE target_id = $1");

/// What a daemon worker says about the projector it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Projecting: events are applied as they arrive.
    Running,
    /// Trying and failing to make progress, for the reason given (a lost connection, a
    /// database error); the worker keeps retrying with backoff.
    Stuck(String),
}

/// The last report of the worker that serves a projector.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerReport {
    /// The projector.
    pub projector: String,
    /// The daemon (`host:pid`).
    pub daemon: String,
    /// What it reported.
    pub state: WorkerState,
    /// When it entered that state (ISO-8601, UTC).
    pub since: String,
    /// When it last reported (ISO-8601, UTC).
    pub seen_at: String,
    /// How long ago that was, by the database's clock, in seconds.
    pub seen_secs_ago: f64,
}

/// An event a live projector whose policy is `park` failed on and passed over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedEvent {
    /// The event.
    pub event_id: i64,
    /// The latest error it failed with.
    pub error: String,
    /// How many times it failed (parked, then retried).
    pub attempts: i64,
    /// When it was first parked (ISO 8601, UTC).
    pub parked_at: String,
    /// When it last failed.
    pub last_attempt_at: String,
}

/// An event an operator let a live projector pass.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkipRecord {
    /// The event.
    pub event_id: i64,
    /// Why, as the operator said.
    pub reason: String,
    /// Who, as the operator said (or their login name).
    pub by: String,
    /// When (ISO-8601, UTC).
    pub at: String,
}

/// How many bytes of a component one row of `zdr_component_chunks` holds: far below the
/// smallest `max_allowed_packet` a MySQL server is likely to run with (1 MiB; MariaDB's default
/// is 16 MiB, MySQL 8's 64 MiB), and large enough that an 18 MB component is 36 rows.
pub const COMPONENT_CHUNK: usize = 512 * 1024;

fn text_value(text: &str) -> Value {
    Value::Text(text.to_string())
}

fn optional_text(text: Option<&str>) -> Value {
    text.map_or(Value::Null, text_value)
}

impl Db {
    fn run(&self, sql: &Sql, params: &[Value]) -> Result<u64, StoreError> {
        self.sql_execute(sql.get(self.dialect()), params)
    }

    fn select(&self, sql: &Sql, params: &[Value]) -> Result<RowSet, StoreError> {
        self.sql_rows(sql.get(self.dialect()), params)
    }

    /// Creates zdr's tables that are missing, in the current transaction.
    pub(super) fn create_zdr_tables(&self) -> Result<(), StoreError> {
        self.sql_batch(&portable(SCHEMA, self.dialect()))
    }

    /// The version of zdr's tables (`None` when the table that records it is missing or
    /// empty); `has_meta` says whether `zdr_meta` exists (a catalog question each backend
    /// answers).
    pub(super) fn schema_version(&self, has_meta: bool) -> Result<Option<i64>, StoreError> {
        if !has_meta {
            return Ok(None);
        }
        let rows = self.select(&SCHEMA_VERSION, &[])?;
        match rows.rows.first() {
            None => Ok(None),
            Some(row) => {
                let text = text(row, 0)?;
                text.parse().map(Some).map_err(|_| {
                    StoreError::Corrupt(format!("schema_version {text:?} is not a number"))
                })
            }
        }
    }

    /// Records that zdr's tables are at [`super::SCHEMA_VERSION`] (never lowering it).
    pub(super) fn record_schema_version(&self) -> Result<(), StoreError> {
        self.run(
            &SET_SCHEMA_VERSION,
            &[Value::Text(super::SCHEMA_VERSION.to_string())],
        )?;
        Ok(())
    }

    /// The number of stored events.
    ///
    /// # Errors
    /// A database failure.
    pub fn count_events(&self) -> Result<i64, StoreError> {
        let rows = self.select(&COUNT_EVENTS, &[])?;
        rows.rows.first().map_or(Ok(0), |row| integer(row, 0))
    }

    /// Stores a component's bytes (once per content hash) and registers it as a version of
    /// `description.name`; returns the version id (the existing one when already registered).
    /// Runs inside the write transaction, so a component is stored whole or not at all.
    ///
    /// # Errors
    /// A database that takes no statement as large as one chunk, or a database failure.
    pub fn register_version(
        &self,
        hash: &str,
        wasm: &[u8],
        description: &Description,
    ) -> Result<i64, StoreError> {
        let json =
            serde_json::to_string(description).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if self
            .select(&COMPONENT_STORED, &[text_value(hash)])?
            .rows
            .is_empty()
        {
            self.store_component(&description.name, hash, wasm)?;
        }
        self.run(
            &ADD_VERSION,
            &[
                text_value(&description.name),
                text_value(&description.version),
                text_value(hash),
                Value::Text(json),
            ],
        )?;
        let rows = self.select(
            &VERSION_ID,
            &[text_value(&description.name), text_value(hash)],
        )?;
        rows.rows
            .first()
            .ok_or_else(|| StoreError::Corrupt(format!("version {hash} vanished after insert")))
            .and_then(|row| integer(row, 0))
    }

    /// Stores a component's bytes in chunks of [`COMPONENT_CHUNK`] bytes, each its own
    /// statement: no statement grows with the component, so none passes a limit like
    /// MySQL's `max_allowed_packet`. The `zdr_components` row keeps the size and no bytes.
    fn store_component(&self, projector: &str, hash: &str, wasm: &[u8]) -> Result<(), StoreError> {
        self.check_value_fits(
            &format!("the component of {projector}"),
            wasm.len().min(COMPONENT_CHUNK),
        )?;
        self.run(
            &ADD_COMPONENT,
            &[
                text_value(hash),
                Value::Blob(Vec::new()),
                Value::Integer(i64::try_from(wasm.len()).unwrap_or(i64::MAX)),
            ],
        )?;
        for (seq, chunk) in (0_i64..).zip(wasm.chunks(COMPONENT_CHUNK)) {
            self.run(
                &ADD_COMPONENT_CHUNK,
                &[
                    text_value(hash),
                    Value::Integer(seq),
                    Value::Blob(chunk.to_vec()),
                ],
            )?;
        }
        Ok(())
    }

    /// A version's description, content hash and component bytes.
    ///
    /// # Errors
    /// An unknown version, a component whose stored bytes are not all there, or a database
    /// failure.
    pub fn version(&self, version_id: i64) -> Result<(Description, String, Vec<u8>), StoreError> {
        let rows = self.select(&VERSION, &[Value::Integer(version_id)])?;
        let row = rows.rows.first().ok_or_else(|| {
            StoreError::Corrupt(format!("projector version {version_id} does not exist"))
        })?;
        let description = parse_description(version_id, &text(row, 0)?)?;
        let hash = text(row, 1)?;
        let size = integer(row, 3)?;
        let wasm = match row.get(2) {
            // Stored whole, by a zdr before schema version 5.
            Some(Value::Blob(bytes)) if !bytes.is_empty() => bytes.clone(),
            Some(Value::Blob(_)) => self.component_chunks(&hash, size)?,
            other => return Err(unexpected(2, "a blob", other)),
        };
        Ok((description, hash, wasm))
    }

    /// Reads the chunks of component `hash` back into its `size` bytes.
    fn component_chunks(&self, hash: &str, size: i64) -> Result<Vec<u8>, StoreError> {
        let rows = self.select(&COMPONENT_CHUNKS, &[text_value(hash)])?;
        let mut wasm = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        for row in &rows.rows {
            match row.first() {
                Some(Value::Blob(bytes)) => wasm.extend_from_slice(bytes),
                other => return Err(unexpected(0, "a blob", other)),
            }
        }
        if i64::try_from(wasm.len()).ok() != Some(size) {
            return Err(StoreError::Corrupt(format!(
                "component {hash} is {size} bytes, but zdr_component_chunks holds {} of them \
                 in {} chunks (zdr writes them in one transaction: they were changed outside \
                 zdr); restore zdr_component_chunks from a backup",
                wasm.len(),
                rows.rows.len()
            )));
        }
        Ok(wasm)
    }

    /// A version's description alone (no component bytes).
    ///
    /// # Errors
    /// An unknown version, or a database failure.
    pub fn description(&self, version_id: i64) -> Result<Description, StoreError> {
        Ok(self.description_and_hash(version_id)?.0)
    }

    /// A version's description and the content hash of its component (no component bytes).
    ///
    /// # Errors
    /// An unknown version, or a database failure.
    pub fn description_and_hash(
        &self,
        version_id: i64,
    ) -> Result<(Description, String), StoreError> {
        let rows = self.select(&DESCRIPTION, &[Value::Integer(version_id)])?;
        let row = rows.rows.first().ok_or_else(|| {
            StoreError::Corrupt(format!("projector version {version_id} does not exist"))
        })?;
        Ok((
            parse_description(version_id, &text(row, 0)?)?,
            text(row, 1)?,
        ))
    }

    /// Inserts a target row and returns it.
    ///
    /// # Errors
    /// A database failure (a second live target of one projector among them).
    pub fn insert_target(
        &self,
        projector: &str,
        version_id: i64,
        role: Role,
        replay_key: Option<&str>,
    ) -> Result<Target, StoreError> {
        let rows = self.select(
            &INSERT_TARGET,
            &[
                text_value(projector),
                Value::Integer(version_id),
                text_value(role.as_str()),
                optional_text(replay_key),
            ],
        )?;
        let id = rows
            .rows
            .first()
            .ok_or_else(|| StoreError::Corrupt("a target insert returned no id".into()))
            .and_then(|row| integer(row, 0))?;
        self.target(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("target {id} vanished after insert")))
    }

    fn targets(&self, sql: &Sql, params: &[Value]) -> Result<Vec<Target>, StoreError> {
        self.select(sql, params)?
            .rows
            .iter()
            .map(|row| target_of(row))
            .collect()
    }

    /// One target by id.
    ///
    /// # Errors
    /// A database failure.
    pub fn target(&self, id: i64) -> Result<Option<Target>, StoreError> {
        Ok(self.targets(&TARGET_BY_ID, &[Value::Integer(id)])?.pop())
    }

    /// The live target of a projector, if it has one.
    ///
    /// # Errors
    /// A database failure.
    pub fn live_target(&self, projector: &str) -> Result<Option<Target>, StoreError> {
        Ok(self.targets(&LIVE_TARGET, &[text_value(projector)])?.pop())
    }

    /// Every live target, by projector name.
    ///
    /// # Errors
    /// A database failure.
    pub fn live_targets(&self) -> Result<Vec<Target>, StoreError> {
        self.targets(&LIVE_TARGETS, &[])
    }

    /// Every target of a projector (any role).
    ///
    /// # Errors
    /// A database failure.
    pub fn targets_of_projector(&self, projector: &str) -> Result<Vec<Target>, StoreError> {
        self.targets(&PROJECTOR_TARGETS, &[text_value(projector)])
    }

    /// The targets a replay owns (clones, or retired tables after a promote).
    ///
    /// # Errors
    /// A database failure.
    pub fn replay_targets(&self, key: &str) -> Result<Vec<Target>, StoreError> {
        self.targets(&REPLAY_TARGETS, &[text_value(key)])
    }

    /// The clones of `projector` whose replay is projecting and that have not failed: the
    /// targets a live batch writes to as well.
    ///
    /// # Errors
    /// A database failure.
    pub fn projecting_clones(&self, projector: &str) -> Result<Vec<Target>, StoreError> {
        self.targets(&PROJECTING_CLONES, &[text_value(projector)])
    }

    /// Moves a target's checkpoint (inside the batch transaction).
    ///
    /// # Errors
    /// A database failure.
    pub fn set_checkpoint(&self, target_id: i64, checkpoint: i64) -> Result<(), StoreError> {
        self.run(
            &SET_CHECKPOINT,
            &[Value::Integer(target_id), Value::Integer(checkpoint)],
        )?;
        Ok(())
    }

    /// The partitions of a target's partitioned replay still under way (none when it is not
    /// split, or its parts were joined), in order.
    ///
    /// # Errors
    /// A database failure, or a row that does not make sense.
    pub fn partitions(&self, target_id: i64) -> Result<Vec<PartitionRow>, StoreError> {
        let rows = self.select(&PARTITIONS, &[Value::Integer(target_id)])?;
        rows.rows
            .iter()
            .map(|row| {
                let number = |i| {
                    integer(row, i).and_then(|n| {
                        u32::try_from(n).map_err(|_| {
                            StoreError::Corrupt(format!("zdr_partitions holds {n} as a part"))
                        })
                    })
                };
                Ok(PartitionRow {
                    part: Partition {
                        index: number(0)?,
                        count: number(1)?,
                    },
                    checkpoint: integer(row, 2)?,
                    head: integer(row, 3)?,
                })
            })
            .collect()
    }

    /// Splits a target's replay into `count` partitions, each starting at `checkpoint` and
    /// going to `head`.
    ///
    /// # Errors
    /// A database failure (rows already there included).
    pub fn split_into_partitions(
        &self,
        target_id: i64,
        count: u32,
        checkpoint: i64,
        head: i64,
    ) -> Result<(), StoreError> {
        for index in 0..count {
            self.run(
                &ADD_PARTITION,
                &[
                    Value::Integer(target_id),
                    Value::Integer(index.into()),
                    Value::Integer(count.into()),
                    Value::Integer(checkpoint),
                    Value::Integer(head),
                ],
            )?;
        }
        Ok(())
    }

    /// The checkpoint of one partition of a target's replay.
    ///
    /// # Errors
    /// A database failure, or no such partition.
    pub fn partition_checkpoint(&self, target_id: i64, index: u32) -> Result<i64, StoreError> {
        let rows = self.select(
            &PARTITION_CHECKPOINT,
            &[Value::Integer(target_id), Value::Integer(index.into())],
        )?;
        match rows.rows.first() {
            Some(row) => integer(row, 0),
            None => Err(StoreError::Corrupt(format!(
                "partition {index} of target {target_id} is gone"
            ))),
        }
    }

    /// Moves one partition's checkpoint, in the batch that applied its events.
    ///
    /// # Errors
    /// A database failure.
    pub fn set_partition_checkpoint(
        &self,
        target_id: i64,
        index: u32,
        checkpoint: i64,
    ) -> Result<(), StoreError> {
        self.run(
            &SET_PARTITION_CHECKPOINT,
            &[
                Value::Integer(target_id),
                Value::Integer(index.into()),
                Value::Integer(checkpoint),
            ],
        )?;
        Ok(())
    }

    /// Forgets a target's partitions: once joined (its checkpoint set to their head).
    ///
    /// # Errors
    /// A database failure.
    pub fn forget_partitions(&self, target_id: i64) -> Result<(), StoreError> {
        self.run(&FORGET_PARTITIONS, &[Value::Integer(target_id)])?;
        Ok(())
    }

    /// Records that a target's projector failed on an event: the target stops there.
    ///
    /// # Errors
    /// A database failure.
    pub fn record_failure(
        &self,
        target: &Target,
        event_id: i64,
        message: &str,
    ) -> Result<(), StoreError> {
        self.run(
            &SET_FAILURE,
            &[
                Value::Integer(target.id),
                Value::Integer(event_id),
                text_value(message),
            ],
        )?;
        self.run(
            &ADD_FAILURE,
            &[
                Value::Integer(target.id),
                text_value(&target.projector),
                optional_text(target.replay_key.as_deref()),
                Value::Integer(event_id),
                text_value(message),
            ],
        )?;
        Ok(())
    }

    /// Clears a target's failure so it runs again from its checkpoint.
    ///
    /// # Errors
    /// A database failure.
    pub fn clear_failure(&self, target_id: i64) -> Result<(), StoreError> {
        self.run(&CLEAR_FAILURE, &[Value::Integer(target_id)])?;
        Ok(())
    }

    /// Changes a target's role (and owning replay) in the current transaction.
    ///
    /// # Errors
    /// A database failure.
    pub fn set_role(
        &self,
        target_id: i64,
        role: Role,
        replay_key: Option<&str>,
    ) -> Result<(), StoreError> {
        self.run(
            &SET_ROLE,
            &[
                Value::Integer(target_id),
                text_value(role.as_str()),
                optional_text(replay_key),
            ],
        )?;
        Ok(())
    }

    /// Deletes a target row.
    ///
    /// # Errors
    /// A database failure.
    pub fn delete_target(&self, target_id: i64) -> Result<(), StoreError> {
        self.run(&FORGET_PARKED, &[Value::Integer(target_id)])?;
        self.run(&FORGET_PARTITIONS, &[Value::Integer(target_id)])?;
        self.run(&DELETE_TARGET, &[Value::Integer(target_id)])?;
        Ok(())
    }

    /// Appends a line of run history.
    ///
    /// # Errors
    /// A database failure.
    pub fn record_run(
        &self,
        target: &Target,
        kind: &str,
        from_event: i64,
        to_event: i64,
        events: i64,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.run(
            &ADD_RUN,
            &[
                optional_text(target.replay_key.as_deref()),
                text_value(&target.projector),
                text_value(kind),
                Value::Integer(from_event),
                Value::Integer(to_event),
                Value::Integer(events),
                text_value(outcome),
            ],
        )?;
        Ok(())
    }

    /// Inserts a replay row in state `created`; `false` when the key is taken.
    ///
    /// # Errors
    /// A database failure.
    pub fn insert_replay(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.run(&ADD_REPLAY, &[text_value(key)])? == 1)
    }

    /// A replay's state and last error.
    ///
    /// # Errors
    /// A database failure.
    pub fn replay(&self, key: &str) -> Result<Option<ReplayRow>, StoreError> {
        Ok(self.replay_rows(&REPLAY, &[text_value(key)])?.pop())
    }

    /// Every replay, oldest first.
    ///
    /// # Errors
    /// A database failure.
    pub fn replays(&self) -> Result<Vec<ReplayRow>, StoreError> {
        self.replay_rows(&REPLAYS, &[])
    }

    fn replay_rows(&self, sql: &Sql, params: &[Value]) -> Result<Vec<ReplayRow>, StoreError> {
        self.select(sql, params)?
            .rows
            .iter()
            .map(|row| {
                let key = text(row, 0)?;
                let state = text(row, 1)?;
                let state = ReplayState::parse(&state).ok_or_else(|| {
                    StoreError::Corrupt(format!("replay {key} has unknown state {state:?}"))
                })?;
                Ok(ReplayRow {
                    key,
                    state,
                    error: optional(row, 2)?,
                    created_at: text(row, 3)?,
                    updated_at: text(row, 4)?,
                })
            })
            .collect()
    }

    /// Compare-and-set of a replay's state: moves it to `to` only if it is in one of `from`.
    /// Returns whether it moved.
    ///
    /// # Errors
    /// A database failure.
    pub fn transition(
        &self,
        key: &str,
        from: &[ReplayState],
        to: ReplayState,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        if from.is_empty() {
            return Ok(false);
        }
        let states: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = portable(
            &format!(
                "UPDATE zdr_replays SET state = $2, error = $3, updated_at = {{timestamp}} \
                 WHERE \"key\" = $1 AND state IN ({})",
                states.join(", ")
            ),
            self.dialect(),
        );
        let mut params = vec![
            text_value(key),
            text_value(to.as_str()),
            optional_text(error),
        ];
        params.extend(from.iter().map(|s| text_value(s.as_str())));
        Ok(self.sql_execute(&sql, &params)? == 1)
    }

    /// Marks replay `key` failed with `message`: a clone's projector failed. The move is the
    /// state machine's ([`crate::machine::Command::CloneFailed`]), applied from whichever
    /// state allows it; returns whether the replay moved.
    ///
    /// # Errors
    /// A database failure.
    pub fn fail_replay(&self, key: &str, message: &str) -> Result<bool, StoreError> {
        self.transition(
            key,
            &machine::sources(Command::CloneFailed),
            ReplayState::Failed,
            Some(message),
        )
    }

    /// Deletes a replay row.
    ///
    /// # Errors
    /// A database failure.
    pub fn delete_replay(&self, key: &str) -> Result<(), StoreError> {
        self.run(&DELETE_REPLAY, &[text_value(key)])?;
        Ok(())
    }

    /// Records what the worker of `daemon` says about `projector`, keeping the time the
    /// state began while it stays the same.
    ///
    /// # Errors
    /// A database failure.
    pub fn report_worker(
        &self,
        projector: &str,
        daemon: &str,
        state: &WorkerState,
    ) -> Result<(), StoreError> {
        let (name, reason) = match state {
            WorkerState::Running => ("running", Value::Null),
            WorkerState::Stuck(reason) => ("stuck", text_value(reason)),
        };
        self.run(
            &REPORT_WORKER,
            &[
                text_value(projector),
                text_value(daemon),
                text_value(name),
                reason,
            ],
        )?;
        Ok(())
    }

    /// Forgets `daemon`'s report on `projector`: it stopped serving it cleanly.
    ///
    /// # Errors
    /// A database failure.
    pub fn forget_worker(&self, projector: &str, daemon: &str) -> Result<(), StoreError> {
        self.run(&FORGET_WORKER, &[text_value(projector), text_value(daemon)])?;
        Ok(())
    }

    /// The last report of every worker.
    ///
    /// # Errors
    /// A database failure, or a row zdr did not write.
    pub fn worker_reports(&self) -> Result<Vec<WorkerReport>, StoreError> {
        let rows = self.select(&WORKERS, &[])?;
        rows.rows
            .iter()
            .map(|row| {
                let state = match (text(row, 2)?.as_str(), row.get(3)) {
                    ("running", _) => WorkerState::Running,
                    ("stuck", Some(Value::Text(reason))) => WorkerState::Stuck(reason.clone()),
                    (other, _) => {
                        return Err(StoreError::Corrupt(format!(
                            "zdr_workers has state {other:?}"
                        )));
                    }
                };
                Ok(WorkerReport {
                    projector: text(row, 0)?,
                    daemon: text(row, 1)?,
                    state,
                    since: iso_utc(real(row, 4)?),
                    seen_at: iso_utc(real(row, 5)?),
                    seen_secs_ago: real(row, 6)?,
                })
            })
            .collect()
    }

    /// Lets live target `live`, stopped at event `event_id`, pass it: records who and why,
    /// marks the target as having skips (`skip_event_id`, the largest skipped id) and clears
    /// the failure, in the current transaction.
    ///
    /// # Errors
    /// A database failure (an event skipped twice on one target among them).
    pub fn skip_event(
        &self,
        live: &Target,
        event_id: i64,
        reason: &str,
        by: &str,
    ) -> Result<(), StoreError> {
        self.record_skip(live, event_id, reason, by)?;
        self.run(
            &MARK_SKIP,
            &[Value::Integer(live.id), Value::Integer(event_id)],
        )?;
        Ok(())
    }

    /// Lets go of event `event_id`, parked on live target `live`, for good: it leaves the
    /// dead-letter table and joins the skips, with `reason` and `by`. Returns whether it was
    /// parked (nothing is written when it was not).
    ///
    /// # Errors
    /// A database failure.
    pub fn skip_parked(
        &self,
        live: &Target,
        event_id: i64,
        reason: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        if !self.unpark(live.id, event_id)? {
            return Ok(false);
        }
        self.record_skip(live, event_id, reason, by)?;
        Ok(true)
    }

    /// Adds a line to the skips of live target `live`.
    fn record_skip(
        &self,
        live: &Target,
        event_id: i64,
        reason: &str,
        by: &str,
    ) -> Result<(), StoreError> {
        self.run(
            &ADD_SKIP,
            &[
                Value::Integer(live.id),
                text_value(&live.projector),
                Value::Integer(event_id),
                text_value(reason),
                text_value(by),
            ],
        )?;
        Ok(())
    }

    /// The events skipped on target `target_id`, oldest first.
    ///
    /// # Errors
    /// A database failure.
    pub fn skips(&self, target_id: i64) -> Result<Vec<SkipRecord>, StoreError> {
        let rows = self.select(&SKIPS, &[Value::Integer(target_id)])?;
        rows.rows
            .iter()
            .map(|row| {
                Ok(SkipRecord {
                    event_id: integer(row, 0)?,
                    reason: text(row, 1)?,
                    by: text(row, 2)?,
                    at: iso_utc(real(row, 3)?),
                })
            })
            .collect()
    }

    /// Parks event `event_id` of live target `live` with `error`: recorded in the dead-letter
    /// table, and passed over by the target from now on (as a skip is) until retried. Parking
    /// it again counts another attempt and keeps the latest error.
    ///
    /// # Errors
    /// A database failure.
    pub fn park_event(&self, live: &Target, event_id: i64, error: &str) -> Result<(), StoreError> {
        self.run(
            &PARK,
            &[
                Value::Integer(live.id),
                text_value(&live.projector),
                Value::Integer(event_id),
                text_value(error),
            ],
        )?;
        self.run(
            &MARK_SKIP,
            &[Value::Integer(live.id), Value::Integer(event_id)],
        )?;
        Ok(())
    }

    /// The events parked on target `target_id`, in id order.
    ///
    /// # Errors
    /// A database failure.
    pub fn parked(&self, target_id: i64) -> Result<Vec<ParkedEvent>, StoreError> {
        let rows = self.select(&PARKED, &[Value::Integer(target_id)])?;
        rows.rows
            .iter()
            .map(|row| {
                Ok(ParkedEvent {
                    event_id: integer(row, 0)?,
                    error: text(row, 1)?,
                    attempts: integer(row, 2)?,
                    parked_at: iso_utc(real(row, 3)?),
                    last_attempt_at: iso_utc(real(row, 4)?),
                })
            })
            .collect()
    }

    /// How many events are parked on target `target_id`.
    ///
    /// # Errors
    /// A database failure.
    pub fn count_parked(&self, target_id: i64) -> Result<i64, StoreError> {
        let rows = self.select(&COUNT_PARKED, &[Value::Integer(target_id)])?;
        rows.rows.first().map_or(Ok(0), |row| integer(row, 0))
    }

    /// Takes event `event_id` off target `target_id`'s dead-letter table (it was applied, or
    /// skipped). Returns whether it was parked.
    ///
    /// # Errors
    /// A database failure.
    pub fn unpark(&self, target_id: i64, event_id: i64) -> Result<bool, StoreError> {
        let changed = self.run(
            &UNPARK,
            &[Value::Integer(target_id), Value::Integer(event_id)],
        )?;
        Ok(changed > 0)
    }

    /// The events skipped on target `target_id` with ids above `after`, in order.
    ///
    /// # Errors
    /// A database failure.
    pub fn skipped_after(&self, target_id: i64, after: i64) -> Result<Vec<i64>, StoreError> {
        let rows = self.select(
            &SKIPPED_AFTER,
            &[Value::Integer(target_id), Value::Integer(after)],
        )?;
        rows.rows.iter().map(|row| integer(row, 0)).collect()
    }
}

/// A target from a row of the target queries above.
fn target_of(row: &[Value]) -> Result<Target, StoreError> {
    let id = integer(row, 0)?;
    let role = text(row, 4)?;
    let role = Role::parse(&role)
        .ok_or_else(|| StoreError::Corrupt(format!("target {id} has unknown role {role:?}")))?;
    let failure = match optional_integer(row, 7)? {
        Some(event_id) => Some(Failure {
            event_id,
            message: optional(row, 8)?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Target {
        id,
        projector: text(row, 1)?,
        version_id: integer(row, 2)?,
        version: text(row, 3)?,
        role,
        replay_key: optional(row, 5)?,
        checkpoint: integer(row, 6)?,
        failure,
        skip_event_id: optional_integer(row, 9)?,
    })
}

fn parse_description(version_id: i64, json: &str) -> Result<Description, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("description of version {version_id}: {e}")))
}

fn text(row: &[Value], i: usize) -> Result<String, StoreError> {
    match row.get(i) {
        Some(Value::Text(text)) => Ok(text.clone()),
        other => Err(unexpected(i, "text", other)),
    }
}

fn optional(row: &[Value], i: usize) -> Result<Option<String>, StoreError> {
    match row.get(i) {
        Some(Value::Null) => Ok(None),
        _ => text(row, i).map(Some),
    }
}

fn integer(row: &[Value], i: usize) -> Result<i64, StoreError> {
    match row.get(i) {
        Some(Value::Integer(v)) => Ok(*v),
        other => Err(unexpected(i, "an integer", other)),
    }
}

fn optional_integer(row: &[Value], i: usize) -> Result<Option<i64>, StoreError> {
    match row.get(i) {
        Some(Value::Null) => Ok(None),
        _ => integer(row, i).map(Some),
    }
}

fn real(row: &[Value], i: usize) -> Result<f64, StoreError> {
    match row.get(i) {
        Some(Value::Real(v)) => Ok(*v),
        // SQLite hands back a whole number of seconds as an integer.
        Some(Value::Integer(v)) => Ok(*v as f64),
        other => Err(unexpected(i, "a number", other)),
    }
}

fn unexpected(i: usize, want: &str, got: Option<&Value>) -> StoreError {
    let got = got.map_or_else(|| "nothing".to_string(), ToString::to_string);
    StoreError::Corrupt(format!(
        "column {i} of a zdr bookkeeping row is {got}, not {want}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::{MyTestDatabase, TestDatabase};
    use crate::events::{NewEvent, ReadEvent};
    use crate::model::TableDecl;

    /// A component of several chunks reads back whole; one stored whole in its row (by a zdr
    /// before schema version 5) still reads; a lost chunk is named, not loaded short.
    fn components_are_stored_in_chunks(db: &Db, description: &Description) {
        let big: Vec<u8> = (0..COMPONENT_CHUNK * 3 + 17)
            .map(|i| u8::try_from(i % 251).expect("below 256"))
            .collect();
        let chunked = Description {
            name: "chunked".into(),
            ..description.clone()
        };
        let version = db
            .register_version("hash-big", &big, &chunked)
            .expect("register a component of four chunks");
        let rows = db
            .sql_rows(
                &portable(
                    "SELECT COUNT(*) FROM zdr_component_chunks WHERE hash = 'hash-big'",
                    db.dialect(),
                ),
                &[],
            )
            .expect("count chunks");
        assert_eq!(rows.rows, vec![vec![Value::Integer(4)]]);
        let (_, _, wasm) = db.version(version).expect("read back");
        assert!(wasm == big, "the chunks read back as the component");

        db.run(
            &ADD_COMPONENT,
            &[
                text_value("hash-old"),
                Value::Blob(b"whole".to_vec()),
                Value::Integer(5),
            ],
        )
        .expect("a component stored whole");
        let old = Description {
            name: "old".into(),
            ..description.clone()
        };
        let version_old = db
            .register_version("hash-old", b"whole", &old)
            .expect("register over the whole row");
        assert_eq!(db.version(version_old).expect("read").2, b"whole");

        db.sql_execute(
            &portable(
                "DELETE FROM zdr_component_chunks WHERE hash = 'hash-big' AND seq = 2",
                db.dialect(),
            ),
            &[],
        )
        .expect("lose a chunk");
        let err = db
            .version(version)
            .expect_err("a chunk is missing")
            .to_string();
        assert!(
            err.contains("component hash-big is 1572881 bytes")
                && err.contains("holds 1048593 of them in 3 chunks")
                && err.contains("restore zdr_component_chunks from a backup"),
            "{err}"
        );
    }

    /// Version 1 of projector `name`, which owns no tables.
    fn tableless(name: &str) -> Description {
        Description {
            name: name.into(),
            version: "1".into(),
            tables: vec![],
            handles: vec![],
            partition_by: vec![],
        }
    }

    /// Every piece of bookkeeping, once, on `db`: what each backend must answer the same.
    fn exercise(db: &Db) {
        db.init().expect("init");
        db.ensure_ready().expect("ready after init");
        assert_eq!(db.count_events().expect("count"), 0);
        let description = Description {
            name: "p".into(),
            version: "1".into(),
            tables: vec![TableDecl {
                name: "t".into(),
                ddl: vec!["CREATE TABLE t (id INTEGER PRIMARY KEY)".into()],
            }],
            handles: vec![],
            partition_by: vec![],
        };
        let version = db
            .register_version("hash1", b"\0asm bytes", &description)
            .expect("register");
        assert_eq!(
            db.register_version("hash1", b"\0asm bytes", &description)
                .expect("again"),
            version,
            "the same component is one version"
        );
        let (read, hash, wasm) = db.version(version).expect("version");
        assert_eq!(
            (read, hash.as_str(), wasm.as_slice()),
            (description.clone(), "hash1", &b"\0asm bytes"[..])
        );
        assert_eq!(db.description(version).expect("description").name, "p");
        components_are_stored_in_chunks(db, &description);

        let live = db
            .insert_target("p", version, Role::Live, None)
            .expect("live");
        assert_eq!(
            (live.role, live.checkpoint, live.failure.clone()),
            (Role::Live, 0, None)
        );
        assert!(
            db.insert_target("p", version, Role::Live, None).is_err(),
            "one live target"
        );
        db.set_checkpoint(live.id, 41).expect("checkpoint");
        db.record_failure(&live, 42, "boom").expect("failure");
        let stopped = db.live_target("p").expect("read").expect("live");
        assert_eq!(stopped.checkpoint, 41);
        assert_eq!(
            stopped
                .failure
                .as_ref()
                .map(|f| (f.event_id, f.message.as_str())),
            Some((42, "boom"))
        );
        db.skip_event(&stopped, 42, "poison", "ops").expect("skip");
        let skipped = db.target(live.id).expect("read").expect("target");
        assert_eq!((skipped.failure, skipped.skip_event_id), (None, Some(42)));
        assert_eq!(db.skipped_after(live.id, 41).expect("skips"), [42]);
        assert!(db.skipped_after(live.id, 42).expect("skips").is_empty());
        let records = db.skips(live.id).expect("records");
        assert_eq!((records[0].event_id, records[0].by.as_str()), (42, "ops"));
        assert!(records[0].at.ends_with('Z'));

        assert!(db.insert_replay("k").expect("replay"));
        assert!(
            !db.insert_replay("k").expect("again"),
            "a key is taken once"
        );
        let clone = db
            .insert_target("p", version, Role::Clone, Some("k"))
            .expect("clone");
        assert_eq!(
            db.replay_targets("k").expect("targets"),
            std::slice::from_ref(&clone)
        );
        assert!(db.projecting_clones("p").expect("clones").is_empty());
        assert!(
            db.transition("k", &[ReplayState::Created], ReplayState::Started, None)
                .expect("cas")
        );
        assert!(
            !db.transition("k", &[ReplayState::Created], ReplayState::Started, None)
                .expect("cas"),
            "a stale compare-and-set does not move"
        );
        assert!(
            db.transition("k", &[ReplayState::Started], ReplayState::Projecting, None)
                .expect("cas")
        );
        assert_eq!(
            db.projecting_clones("p").expect("clones"),
            std::slice::from_ref(&clone)
        );
        assert!(db.fail_replay("k", "the clone failed").expect("fail"));
        let row = db.replay("k").expect("read").expect("row");
        assert_eq!(
            (row.state, row.error.as_deref()),
            (ReplayState::Failed, Some("the clone failed"))
        );
        assert!(row.created_at.ends_with('Z') && row.updated_at.ends_with('Z'));
        assert!(
            !db.fail_replay("k", "again").expect("fail"),
            "a failed replay stays failed"
        );
        db.set_role(clone.id, Role::Retired, Some("k"))
            .expect("role");
        assert_eq!(
            db.target(clone.id).expect("read").expect("target").role,
            Role::Retired
        );
        db.record_run(&clone, "start", 0, 5, 5, "ok").expect("run");
        db.delete_target(clone.id).expect("delete");
        db.delete_replay("k").expect("delete");
        assert!(db.replays().expect("replays").is_empty());
        assert_eq!(db.targets_of_projector("p").expect("targets").len(), 1);
        assert_eq!(db.live_targets().expect("live").len(), 1);

        db.report_worker("p", "host:1", &WorkerState::Stuck("down".into()))
            .expect("report");
        db.report_worker("p", "host:1", &WorkerState::Stuck("still down".into()))
            .expect("report");
        let reports = db.worker_reports().expect("reports");
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].state, WorkerState::Stuck("still down".into()));
        assert!(reports[0].seen_secs_ago >= 0.0 && reports[0].seen_secs_ago < 60.0);
        let since = reports[0].since.clone();
        db.report_worker("p", "host:1", &WorkerState::Running)
            .expect("report");
        assert!(
            db.worker_reports().expect("reports")[0].since >= since,
            "a new state starts anew"
        );
        db.forget_worker("p", "host:1").expect("forget");
        assert!(db.worker_reports().expect("reports").is_empty());
    }

    /// The database's class filter lets through every event `Description::handles` accepts
    /// (whole names and last segments, awkward characters included) and, for these names,
    /// nothing else.
    fn class_filter_matches_handles(db: &Db) {
        db.init().expect("init");
        let classes = [
            "MoneyAdded",
            "App\\Events\\MoneyAdded",
            "Other\\MoneyAdded",
            "NotMoneyAdded",
            "App\\Events\\NotMoneyAdded",
            "MoneyAddedLater",
            "moneyadded",
            "Money_Added",
            "Per%Cent",
            "App\\Per%Cent",
            "App\\Orders\\Shipped",
            "Shipped",
            "Orders\\Shipped",
        ];
        let events: Vec<NewEvent> = classes
            .iter()
            .map(|class| NewEvent {
                aggregate_uuid: Some("a".into()),
                aggregate_version: None,
                event_version: 1,
                event_class: (*class).into(),
                event_properties: "{}".into(),
                meta_data: "{}".into(),
                created_at: None,
            })
            .collect();
        db.append_events(&events).expect("append");
        let handles: Vec<String> = [
            "MoneyAdded",
            "Per%Cent",
            "Money_Added",
            "App\\Orders\\Shipped",
        ]
        .map(str::to_owned)
        .to_vec();
        let description = Description {
            name: "p".into(),
            version: "1".into(),
            tables: vec![],
            handles: handles.clone(),
            partition_by: vec![],
        };
        let read: Vec<String> = db
            .read_events_of(0, i64::MAX, 100, &handles)
            .expect("read")
            .iter()
            .map(|e| match e {
                ReadEvent::Event(event) => event.event_class.clone(),
                ReadEvent::Undecodable(bad) => panic!("undecodable: {}", bad.reason),
            })
            .collect();
        let expected: Vec<String> = classes
            .iter()
            .filter(|class| description.handles(class))
            .map(|class| (*class).to_owned())
            .collect();
        assert_eq!(read, expected);
        assert_eq!(
            db.read_events_of(0, i64::MAX, 100, &[])
                .expect("read")
                .len(),
            classes.len(),
            "no classes: every event"
        );
    }

    #[test]
    fn the_class_filter_matches_what_a_projector_handles_on_sqlite() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db =
            Db::create(&format!("sqlite://{}", dir.path().join("zdr.db").display())).expect("open");
        class_filter_matches_handles(&db);
    }

    #[test]
    fn the_class_filter_matches_what_a_projector_handles_on_postgres() {
        let test = TestDatabase::new("class_filter");
        let db = Db::open(&test.url()).expect("open");
        class_filter_matches_handles(&db);
    }

    /// Reads history split into 1 to 4 parts, with and without a class filter: every event
    /// is in exactly one part, in id order, all the events of one aggregate in the same part,
    /// events without an aggregate in part 0, and the split's rows keep their checkpoints.
    fn parts_cover_history_once_and_keep_aggregates_together(db: &Db) {
        db.init().expect("init");
        let events: Vec<NewEvent> = (0..300)
            .map(|i| NewEvent {
                aggregate_uuid: (i % 7 != 0).then(|| format!("agg-{}", i % 41)),
                aggregate_version: None,
                event_version: 1,
                event_class: if i % 3 == 0 { "Other" } else { "Wanted" }.into(),
                event_properties: "{}".into(),
                meta_data: "{}".into(),
                created_at: None,
            })
            .collect();
        db.append_events(&events).expect("append");
        assert!(db.splits_history());
        for classes in [vec![], vec!["Wanted".to_owned()]] {
            let whole: Vec<i64> = db
                .read_events_of(0, i64::MAX, 1000, &classes)
                .expect("read")
                .iter()
                .map(ReadEvent::id)
                .collect();
            for count in 1..=4 {
                let mut seen: Vec<i64> = Vec::new();
                let mut part_of: std::collections::HashMap<Option<String>, u32> =
                    std::collections::HashMap::new();
                for index in 0..count {
                    let part = Partition { index, count };
                    // Read in small pages, as a worker does.
                    let mut after = 0;
                    loop {
                        let page = db
                            .read_events_in(after, i64::MAX, 16, &classes, part)
                            .expect("read a part");
                        let Some(last) = page.last() else { break };
                        after = last.id();
                        for read in &page {
                            let ReadEvent::Event(event) = read else {
                                panic!("undecodable")
                            };
                            seen.push(event.id);
                            let was = part_of.insert(event.aggregate_uuid.clone(), index);
                            assert!(
                                was.is_none_or(|was| was == index),
                                "{:?} in parts {was:?} and {index} of {count}",
                                event.aggregate_uuid
                            );
                            if event.aggregate_uuid.is_none() {
                                assert_eq!(index, 0, "an event without an aggregate");
                            }
                        }
                    }
                }
                seen.sort_unstable();
                assert_eq!(seen, whole, "{count} parts, classes {classes:?}");
                if count > 1 {
                    let used: std::collections::HashSet<u32> = part_of.values().copied().collect();
                    assert!(used.len() > 1, "{count} parts: all in one ({used:?})");
                }
            }
        }

        // The split's rows.
        let description = tableless("p");
        let version = db
            .register_version("hash", b"\0asm", &description)
            .expect("register");
        let target = db
            .insert_target("p", version, Role::Clone, Some("k"))
            .expect("target")
            .id;
        assert!(db.partitions(target).expect("parts").is_empty());
        db.write(|db| db.split_into_partitions(target, 3, 5, 300))
            .expect("split");
        db.write(|db| db.set_partition_checkpoint(target, 1, 120))
            .expect("move a part");
        let parts = db.partitions(target).expect("parts");
        let checkpoints: Vec<(u32, u32, i64, i64)> = parts
            .iter()
            .map(|p| (p.part.index, p.part.count, p.checkpoint, p.head))
            .collect();
        assert_eq!(
            checkpoints,
            [(0, 3, 5, 300), (1, 3, 120, 300), (2, 3, 5, 300)]
        );
        assert_eq!(db.partition_checkpoint(target, 1).expect("part 1"), 120);
        db.write(|db| db.delete_target(target)).expect("delete");
        assert!(
            db.partitions(target).expect("parts").is_empty(),
            "rows outlive their target"
        );
    }

    #[test]
    fn parts_cover_history_once_on_postgres() {
        let test = TestDatabase::new("parts");
        let db = Db::open(&test.url()).expect("open");
        parts_cover_history_once_and_keep_aggregates_together(&db);
    }

    #[test]
    fn parts_cover_history_once_on_mysql() {
        let test = MyTestDatabase::new("parts");
        let db = Db::open(&test.url()).expect("open");
        parts_cover_history_once_and_keep_aggregates_together(&db);
    }

    #[test]
    fn sqlite_reads_history_whole_only() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db =
            Db::create(&format!("sqlite://{}", dir.path().join("zdr.db").display())).expect("open");
        db.init().expect("init");
        assert!(!db.splits_history());
        let err = db
            .read_events_in(0, 10, 10, &[], Partition { index: 1, count: 2 })
            .expect_err("SQLite cannot split");
        assert!(err.to_string().contains("single writer"), "{err}");
    }

    #[test]
    fn the_bookkeeping_answers_the_same_on_sqlite() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db =
            Db::create(&format!("sqlite://{}", dir.path().join("zdr.db").display())).expect("open");
        exercise(&db);
    }

    #[test]
    fn init_upgrades_a_database_of_whole_components_to_chunks() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("zdr.db").display());
        let db = Db::create(&url).expect("open");
        db.init().expect("init");
        // What schema version 4 was: no chunks, each component whole in its row.
        db.sql_batch(
            "DROP TABLE zdr_component_chunks; \
             UPDATE zdr_meta SET value = '4' WHERE \"key\" = 'schema_version'",
        )
        .expect("back to version 4");
        db.run(
            &ADD_COMPONENT,
            &[
                text_value("h4"),
                Value::Blob(b"four".to_vec()),
                Value::Integer(4),
            ],
        )
        .expect("a component of version 4");
        let err = db.ensure_ready().expect_err("version 4 is not ready");
        assert!(err.to_string().contains("zdr init"), "{err}");

        db.init().expect("init upgrades");
        db.ensure_ready().expect("ready");
        let description = tableless("p");
        let old = db
            .register_version("h4", b"four", &description)
            .expect("old");
        assert_eq!(db.version(old).expect("read").2, b"four");
        let new = db
            .register_version("h5", b"five!", &description)
            .expect("new");
        assert_eq!(db.version(new).expect("read").2, b"five!");
    }

    #[test]
    fn the_class_filter_matches_what_a_projector_handles_on_mysql() {
        let test = MyTestDatabase::new("class_filter");
        let db = Db::open(&test.url()).expect("open");
        class_filter_matches_handles(&db);
    }

    #[test]
    fn the_bookkeeping_answers_the_same_on_mysql() {
        let test = MyTestDatabase::new("bookkeeping");
        let db = Db::open(&test.url()).expect("open");
        exercise(&db);
    }

    #[test]
    fn the_bookkeeping_answers_the_same_on_postgres() {
        let test = TestDatabase::new("bookkeeping");
        let db = Db::open(&test.url()).expect("open");
        exercise(&db);
    }

    #[test]
    fn statements_are_made_ready_for_each_backend() {
        let sql =
            "UPDATE t SET at = {now}, ts = {timestamp} WHERE id = $1 AND n = $2 RETURNING {iso:ts}";
        assert_eq!(
            portable(sql, Dialect::Sqlite),
            "UPDATE t SET at = ((julianday('now') - 2440587.5) * 86400.0), \
             ts = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1 AND n = ?2 RETURNING ts"
        );
        let postgres = portable(sql, Dialect::Postgres);
        assert!(postgres.contains("clock_timestamp()") && postgres.contains("ts = now()"));
        assert!(postgres.contains("$1 AND n = $2"));
        assert!(
            postgres
                .ends_with("to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
        );
        assert_eq!(portable("SELECT '{}'", Dialect::Postgres), "SELECT '{}'");
    }

    #[test]
    fn the_schema_is_ready_for_both_backends() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let schema = portable(SCHEMA, dialect);
            assert!(!schema.contains('{'), "{dialect:?}: {schema}");
        }
        assert!(portable(SCHEMA, Dialect::Sqlite).contains("AUTOINCREMENT"));
        assert!(portable(SCHEMA, Dialect::Postgres).contains("BIGSERIAL"));
    }
}
