//! zdr's own bookkeeping written once for every backend: what each daemon worker reports
//! (`zdr_workers`) and the events an operator let a live projector pass (`zdr_skips`).
//!
//! The statements are plain SQL that SQLite and PostgreSQL both accept. They differ in two
//! places only, which [`portable`] fills in per backend: placeholders are written `$1, $2…`
//! (SQLite gets `?1, ?2…`) and `{now}` stands for the database clock in seconds since the
//! Unix epoch. Times are stored as such numbers, and the age of a report is computed by the
//! database, so the clocks of the machines that run zdr never have to agree.

use super::{Db, RowSet, StoreError, Value};
use crate::model::{Target, iso_utc};
use crate::sandbox::Dialect;

/// The tables of schema version 2, in SQL both backends accept.
pub(super) const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS zdr_workers (
    projector TEXT PRIMARY KEY,
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
";

/// A statement written for both backends, made ready for `dialect`.
pub(super) fn portable(sql: &str, dialect: Dialect) -> String {
    match dialect {
        Dialect::Postgres => sql.replace(
            "{now}",
            "EXTRACT(EPOCH FROM clock_timestamp())::double precision",
        ),
        Dialect::Sqlite => sql
            .replace("{now}", "((julianday('now') - 2440587.5) * 86400.0)")
            .replace('$', "?"),
    }
}

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

impl Db {
    fn run(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.sql_execute(&portable(sql, self.dialect()), params)
    }

    fn select(&self, sql: &str, params: &[Value]) -> Result<RowSet, StoreError> {
        self.sql_rows(&portable(sql, self.dialect()), params)
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
            WorkerState::Stuck(reason) => ("stuck", Value::Text(reason.clone())),
        };
        self.run(
            "INSERT INTO zdr_workers (projector, daemon, state, reason, since, seen_at) \
             VALUES ($1, $2, $3, $4, {now}, {now}) \
             ON CONFLICT (projector) DO UPDATE SET \
             since = CASE WHEN zdr_workers.state = excluded.state AND zdr_workers.daemon = excluded.daemon \
                     THEN zdr_workers.since ELSE excluded.since END, \
             daemon = excluded.daemon, state = excluded.state, reason = excluded.reason, \
             seen_at = excluded.seen_at",
            &[
                Value::Text(projector.into()),
                Value::Text(daemon.into()),
                Value::Text(name.into()),
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
        self.run(
            "DELETE FROM zdr_workers WHERE projector = $1 AND daemon = $2",
            &[Value::Text(projector.into()), Value::Text(daemon.into())],
        )?;
        Ok(())
    }

    /// The last report of every worker.
    ///
    /// # Errors
    /// A database failure, or a row zdr did not write.
    pub fn worker_reports(&self) -> Result<Vec<WorkerReport>, StoreError> {
        let rows = self.select(
            "SELECT projector, daemon, state, reason, since, seen_at, {now} - seen_at FROM zdr_workers",
            &[],
        )?;
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
        self.run(
            "INSERT INTO zdr_skips (target_id, projector, event_id, reason, skipped_by, at) \
             VALUES ($1, $2, $3, $4, $5, {now})",
            &[
                Value::Integer(live.id),
                Value::Text(live.projector.clone()),
                Value::Integer(event_id),
                Value::Text(reason.into()),
                Value::Text(by.into()),
            ],
        )?;
        self.run(
            "UPDATE zdr_targets SET error_event_id = NULL, error = NULL, \
             skip_event_id = CASE WHEN skip_event_id IS NULL OR skip_event_id < $2 THEN $2 \
             ELSE skip_event_id END WHERE id = $1",
            &[Value::Integer(live.id), Value::Integer(event_id)],
        )?;
        Ok(())
    }

    /// The events skipped on target `target_id` with ids above `after`, in order.
    ///
    /// # Errors
    /// A database failure.
    pub fn skipped_after(&self, target_id: i64, after: i64) -> Result<Vec<i64>, StoreError> {
        let rows = self.select(
            "SELECT event_id FROM zdr_skips WHERE target_id = $1 AND event_id > $2 ORDER BY event_id",
            &[Value::Integer(target_id), Value::Integer(after)],
        )?;
        rows.rows.iter().map(|row| integer(row, 0)).collect()
    }

    /// The events skipped on target `target_id`, oldest first.
    ///
    /// # Errors
    /// A database failure.
    pub fn skips(&self, target_id: i64) -> Result<Vec<SkipRecord>, StoreError> {
        let rows = self.select(
            "SELECT event_id, reason, skipped_by, at FROM zdr_skips WHERE target_id = $1 ORDER BY at, event_id",
            &[Value::Integer(target_id)],
        )?;
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
}

fn text(row: &[Value], i: usize) -> Result<String, StoreError> {
    match row.get(i) {
        Some(Value::Text(text)) => Ok(text.clone()),
        other => Err(unexpected(i, "text", other)),
    }
}

fn integer(row: &[Value], i: usize) -> Result<i64, StoreError> {
    match row.get(i) {
        Some(Value::Integer(v)) => Ok(*v),
        other => Err(unexpected(i, "an integer", other)),
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

    #[test]
    fn statements_are_made_ready_for_each_backend() {
        let sql = "UPDATE t SET at = {now} WHERE id = $1 AND n = $2";
        assert_eq!(
            portable(sql, Dialect::Sqlite),
            "UPDATE t SET at = ((julianday('now') - 2440587.5) * 86400.0) WHERE id = ?1 AND n = ?2"
        );
        assert!(portable(sql, Dialect::Postgres).contains("clock_timestamp()"));
        assert!(portable(sql, Dialect::Postgres).ends_with("$1 AND n = $2"));
    }
}
