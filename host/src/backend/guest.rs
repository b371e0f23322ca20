//! A guest's database handle, in two halves: what every backend shares, written once here,
//! and each backend's raw execution of a statement the guard already checked and rewrote.
//!
//! The shared half ([`GuardedConnection`]) puts in front of every statement:
//! - the SQL guard (parsed once per distinct text, checked, rewritten to physical names);
//! - the shape of the call (`query` takes a SELECT, the parameters match the placeholders);
//! - the call's deadline: a statement sent after it is refused, and the backend interrupts
//!   one that is still running when it passes (SQLite's progress handler, a cancel request
//!   on PostgreSQL), so no guest work outlives it;
//! - byte caps: no parameter and no value a statement builds may exceed
//!   [`MAX_VALUE_BYTES`], no result more than [`MAX_QUERY_ROWS`] rows or
//!   [`MAX_RESULT_BYTES`] bytes;
//! - what a failed statement does to the transaction: on PostgreSQL the first failure aborts
//!   it, so every later statement of the event is refused without a round trip and the
//!   projection learns of the failure ([`GuestConnection::take_aborted`]) even when the guest
//!   swallowed the error; a database out of space or memory is remembered the same way on
//!   every backend, as it is the database's failure, not the event's;
//! - the answers of writes sent without waiting (`send`): a backend that pipelines them
//!   (PostgreSQL) runs them later, and their row counts are matched back to the order they
//!   were sent in when the guest asks (`flush`).

use std::time::Instant;

use super::value::{DbError, RowSet, Value};
use crate::sandbox::{Checked, GuardCache, Mode, StatementKind, time_param_allowed};

/// The most rows one guest query may return; more answers `limit-exceeded`.
pub const MAX_QUERY_ROWS: usize = 10_000;

/// The longest value, in bytes, a guest statement may bind or build: a text or blob
/// parameter, or any string or blob the database computes for it (SQLite refuses to build a
/// longer one; on PostgreSQL no result row may be longer). Read-model rows are small; a value
/// this large is a mistake or an attack on the host's memory.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// The most bytes one guest query may return, counted over every value of every row.
pub const MAX_RESULT_BYTES: usize = 16 * 1024 * 1024;

/// The most row counts of sent writes kept for one `flush`. A guest that sends more between
/// two flushes still has them run; only its `flush` answers `limit-exceeded`.
pub const MAX_SENT_COUNTS: usize = 65_536;

/// The guest call a statement is part of.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// When the call's deadline passes: no statement may run past it.
    pub deadline: Instant,
}

/// A guest's database handle as the runtime sees it: one target's tables, inside the current
/// batch transaction. Statements pass the SQL guard before they reach the database.
pub trait GuestConnection: Send {
    /// Runs one INSERT, UPDATE or DELETE and returns the rows changed.
    ///
    /// # Errors
    /// [`DbError`]: denied by the guard, invalid SQL, a constraint, a limit, or another failure.
    fn execute(&mut self, sql: &str, params: &[Value], call: Call) -> Result<u64, DbError>;

    /// Runs one SELECT and returns its rows (at most [`MAX_QUERY_ROWS`] and
    /// [`MAX_RESULT_BYTES`]).
    ///
    /// # Errors
    /// As [`GuestConnection::execute`].
    fn query(&mut self, sql: &str, params: &[Value], call: Call) -> Result<RowSet, DbError>;

    /// Runs one INSERT, UPDATE or DELETE whose row count the guest does not wait for. It is
    /// checked at once; a backend that pipelines writes (PostgreSQL) only queues it, and its
    /// failure comes back from a later statement, [`GuestConnection::flush`], or the end of
    /// the call ([`GuestConnection::end_call`]).
    ///
    /// # Errors
    /// As [`GuestConnection::execute`], or an earlier sent write's failure.
    fn send(&mut self, sql: &str, params: &[Value], call: Call) -> Result<(), DbError>;

    /// Waits for every write sent since the last flush and returns the rows each changed, in
    /// the order they were sent.
    ///
    /// # Errors
    /// The first sent write that failed, or `limit-exceeded` past [`MAX_SENT_COUNTS`] sends.
    fn flush(&mut self, call: Call) -> Result<Vec<u64>, DbError>;

    /// Ends a guest call: runs the writes still queued (their failure is kept for
    /// [`GuestConnection::take_aborted`]) and forgets row counts the guest did not ask for.
    fn end_call(&mut self, call: Call);

    /// The database error that left the current transaction unusable since this was last
    /// asked, if any. PostgreSQL aborts a transaction at its first failed statement: the event
    /// that ran it has failed, whatever the guest answered.
    fn take_aborted(&mut self) -> Option<DbError>;
}

/// What each backend implements: running a statement the guard already checked and rewrote,
/// on the connection that holds the current transaction.
pub trait RawGuestConnection: Send {
    /// Whether a failed statement aborts the whole transaction (PostgreSQL) rather than only
    /// itself (SQLite).
    fn failure_aborts_transaction(&self) -> bool;

    /// Runs an INSERT, UPDATE or DELETE; interrupts it at `deadline`.
    ///
    /// # Errors
    /// The database's error, mapped onto the guest's closed set.
    fn execute(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
    ) -> Result<u64, DbError>;

    /// Runs a SELECT, handing each row to `rows` (which enforces the caps); interrupts it at
    /// `deadline`.
    ///
    /// # Errors
    /// The database's error, or the collector's limit.
    fn query(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
        rows: &mut RowCollector,
    ) -> Result<(), DbError>;

    /// Runs, or queues, an INSERT, UPDATE or DELETE whose row count may come later:
    /// `Some(rows)` when it ran at once, `None` when it waits for
    /// [`RawGuestConnection::flush`]. By default it runs at once.
    ///
    /// # Errors
    /// The database's error, this write's or an earlier queued one's.
    fn send(
        &mut self,
        checked: &Checked,
        params: &[Value],
        deadline: Instant,
    ) -> Result<Option<u64>, DbError> {
        self.execute(checked, params, deadline).map(Some)
    }

    /// Runs every queued write, in order, and returns the rows changed by each write queued
    /// since the last flush, in order. Nothing is queued by default.
    ///
    /// # Errors
    /// The first queued write that failed.
    fn flush(&mut self, deadline: Instant) -> Result<Vec<u64>, DbError> {
        let _ = deadline;
        Ok(Vec::new())
    }
}

/// Collects a query's rows up to the row and byte caps.
#[derive(Debug, Default)]
pub struct RowCollector {
    set: RowSet,
    bytes: usize,
    exceeded: bool,
}

impl RowCollector {
    /// Sets the column names.
    pub fn columns(&mut self, columns: Vec<String>) {
        self.set.columns = columns;
    }

    /// Adds one row.
    ///
    /// # Errors
    /// `limit-exceeded` past [`MAX_QUERY_ROWS`] rows or [`MAX_RESULT_BYTES`] bytes.
    pub fn push(&mut self, row: Vec<Value>) -> Result<(), DbError> {
        if self.set.rows.len() == MAX_QUERY_ROWS {
            self.exceeded = true;
            return Err(DbError::LimitExceeded(format!(
                "a query may return at most {MAX_QUERY_ROWS} rows; add a LIMIT or aggregate in SQL"
            )));
        }
        // One value past the cap (a backend that cannot keep it on the server, MySQL, sends
        // it): refused like a result past the byte cap, leaving the statement intact.
        if row.iter().any(|v| {
            matches!(v, Value::Text(_) | Value::Blob(_)) && value_bytes(v) > MAX_VALUE_BYTES
        }) {
            self.exceeded = true;
            return Err(DbError::LimitExceeded(format!(
                "a result value is longer than the limit of {MAX_VALUE_BYTES} bytes"
            )));
        }
        self.bytes += row.iter().map(value_bytes).sum::<usize>();
        if self.bytes > MAX_RESULT_BYTES {
            self.exceeded = true;
            return Err(DbError::LimitExceeded(format!(
                "a query may return at most {} MiB; select fewer or smaller values",
                MAX_RESULT_BYTES / (1024 * 1024)
            )));
        }
        self.set.rows.push(row);
        Ok(())
    }
}

/// The bytes a value occupies in a result.
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::Text(text) => text.len(),
        Value::Blob(bytes) => bytes.len(),
        Value::Unsupported(name) => name.len(),
        Value::Null | Value::Integer(_) | Value::Real(_) | Value::Boolean(_) => 8,
    }
}

/// The shared half of every guest connection: guard, call shape, deadline, caps and
/// transaction state, in front of a backend's [`RawGuestConnection`].
pub struct GuardedConnection {
    raw: Box<dyn RawGuestConnection>,
    guard: GuardCache,
    /// The failure that aborted the current transaction (PostgreSQL), until taken.
    aborted: Option<DbError>,
    /// The answers of the writes sent since the guest last flushed, in order: a row count, or
    /// `None` for a write the backend queued. At most [`MAX_SENT_COUNTS`].
    sent: Vec<Option<u64>>,
    /// Whether more writes were sent since the last flush than `sent` keeps.
    sent_overflowed: bool,
}

impl GuardedConnection {
    /// A guest connection running through `guard` on `raw`.
    pub fn new(raw: Box<dyn RawGuestConnection>, guard: GuardCache) -> Self {
        Self {
            raw,
            guard,
            aborted: None,
            sent: Vec::new(),
            sent_overflowed: false,
        }
    }

    /// Everything checked before a statement may run: the transaction is usable, the
    /// deadline has not passed, the guard allows the statement, the call fits it and the
    /// parameters are within the caps.
    fn admit(
        &mut self,
        sql: &str,
        params: &[Value],
        call: Call,
        want_rows: bool,
    ) -> Result<std::sync::Arc<Checked>, DbError> {
        self.usable(call)?;
        let checked = self.guard.check(sql, Mode::Data)?;
        check_call(&checked, params, want_rows)?;
        check_params(params)?;
        check_time_params(&checked, params)?;
        Ok(checked)
    }

    /// Refuses any work once the transaction is aborted or the call's deadline has passed.
    fn usable(&self, call: Call) -> Result<(), DbError> {
        if let Some(first) = self.aborted.as_ref().filter(|e| e.is_out_of_resources()) {
            return Err(DbError::Other {
                message: format!(
                    "not run: the database is out of space or memory ({first}); the batch is \
                     rolled back and tried again once there is room"
                ),
                sqlstate: first.sqlstate().map(str::to_string),
            });
        }
        if let Some(first) = &self.aborted {
            return Err(DbError::Other {
                message: format!(
                    "not run: an earlier statement of this event failed ({first}) and the database \
                     aborted the transaction; this event fails and its batch is rolled back"
                ),
                sqlstate: Some("25P02".into()),
            });
        }
        if Instant::now() >= call.deadline {
            return Err(DbError::LimitExceeded(
                "the call's deadline has passed; no more statements run in it".into(),
            ));
        }
        Ok(())
    }

    /// Matches the row counts of the queued writes back to the order every write was sent
    /// in, and starts the next flush empty.
    fn take_sent(&mut self, queued: Vec<u64>) -> Result<Vec<u64>, DbError> {
        let sent = std::mem::take(&mut self.sent);
        if std::mem::take(&mut self.sent_overflowed) {
            return Err(DbError::LimitExceeded(format!(
                "more than {MAX_SENT_COUNTS} writes were sent since the last flush; they ran, \
                 but flush at least that often to read their row counts"
            )));
        }
        let mut queued = queued.into_iter();
        let counts: Option<Vec<u64>> = sent
            .into_iter()
            .map(|answer| answer.or_else(|| queued.next()))
            .collect();
        match counts {
            Some(counts) if queued.next().is_none() => Ok(counts),
            _ => Err(DbError::Other {
                message: "the row counts of the sent writes do not match the writes sent \
                          (a bug in zdr); the batch is rolled back"
                    .into(),
                sqlstate: None,
            }),
        }
    }

    /// Remembers a database failure that aborted the transaction, or that is the database's
    /// own (out of space or memory), whatever the guest does with it: the projection then
    /// fails the batch without blaming the event.
    fn failed(&mut self, err: &DbError) {
        let remembered = self.raw.failure_aborts_transaction() || err.is_out_of_resources();
        if remembered && self.aborted.is_none() {
            self.aborted = Some(err.clone());
        }
    }
}

impl GuestConnection for GuardedConnection {
    fn execute(&mut self, sql: &str, params: &[Value], call: Call) -> Result<u64, DbError> {
        let checked = self.admit(sql, params, call, false)?;
        self.raw
            .execute(&checked, params, call.deadline)
            .inspect_err(|err| self.failed(err))
    }

    fn query(&mut self, sql: &str, params: &[Value], call: Call) -> Result<RowSet, DbError> {
        let checked = self.admit(sql, params, call, true)?;
        let mut rows = RowCollector::default();
        match self.raw.query(&checked, params, call.deadline, &mut rows) {
            Ok(()) => Ok(rows.set),
            // Stopping early to keep the caps leaves the statement itself intact.
            Err(err) if rows.exceeded => Err(err),
            Err(err) => {
                self.failed(&err);
                Err(err)
            }
        }
    }

    fn send(&mut self, sql: &str, params: &[Value], call: Call) -> Result<(), DbError> {
        let checked = self.admit(sql, params, call, false)?;
        let answer = self
            .raw
            .send(&checked, params, call.deadline)
            .inspect_err(|err| self.failed(err))?;
        if self.sent.len() < MAX_SENT_COUNTS {
            self.sent.push(answer);
        } else {
            self.sent_overflowed = true;
        }
        Ok(())
    }

    fn flush(&mut self, call: Call) -> Result<Vec<u64>, DbError> {
        self.usable(call)?;
        let queued = self
            .raw
            .flush(call.deadline)
            .inspect_err(|err| self.failed(err));
        match queued {
            Ok(queued) => self.take_sent(queued),
            Err(err) => {
                self.sent.clear();
                self.sent_overflowed = false;
                Err(err)
            }
        }
    }

    fn end_call(&mut self, call: Call) {
        if let Err(err) = self.raw.flush(call.deadline)
            && self.aborted.is_none()
        {
            // Kept whatever the backend: the event whose write failed has failed.
            self.aborted = Some(err);
        }
        self.sent.clear();
        self.sent_overflowed = false;
    }

    fn take_aborted(&mut self) -> Option<DbError> {
        self.aborted.take()
    }
}

/// Checks a guarded statement against how the guest called it: `query` takes a SELECT,
/// `execute` anything else, and the parameters must match the placeholders.
fn check_call(checked: &Checked, params: &[Value], want_rows: bool) -> Result<(), DbError> {
    let is_query = matches!(checked.kind, StatementKind::Query);
    if want_rows && !is_query {
        return Err(DbError::InvalidSql {
            message: "query() takes a SELECT; use execute() for INSERT, UPDATE and DELETE".into(),
            sqlstate: None,
        });
    }
    if !want_rows && is_query {
        return Err(DbError::InvalidSql {
            message: "execute() takes INSERT, UPDATE or DELETE; use query() for SELECT".into(),
            sqlstate: None,
        });
    }
    if params.len() != checked.param_count {
        return Err(DbError::InvalidSql {
            message: format!(
                "the statement has {} placeholder(s) but {} parameter(s) were bound",
                checked.param_count,
                params.len()
            ),
            sqlstate: None,
        });
    }
    Ok(())
}

/// Refuses a text or blob parameter longer than [`MAX_VALUE_BYTES`].
fn check_params(params: &[Value]) -> Result<(), DbError> {
    for (i, value) in params.iter().enumerate() {
        let len = match value {
            Value::Text(text) => text.len(),
            Value::Blob(bytes) => bytes.len(),
            _ => 0,
        };
        if len > MAX_VALUE_BYTES {
            return Err(DbError::LimitExceeded(format!(
                "parameter ${} is {len} bytes; a value may be at most {} MiB",
                i + 1,
                MAX_VALUE_BYTES / (1024 * 1024)
            )));
        }
    }
    Ok(())
}

/// Refuses text bound to a placeholder that the statement casts to a date or time, unless it
/// is a date or time written in full: `'now'` or `'tomorrow'` there would read the clock.
fn check_time_params(checked: &Checked, params: &[Value]) -> Result<(), DbError> {
    for &n in &checked.time_params {
        if let Some(Value::Text(text)) = n.checked_sub(1).and_then(|i| params.get(i))
            && !time_param_allowed(text)
        {
            return Err(DbError::Denied(format!(
                "parameter ${n} is cast to a date or time but holds {text:?}: pass a date or time \
                 written in full (like 2024-01-31 12:00:00); words such as 'now' read the clock, \
                 and a read model must equal the pure fold of the events"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_collector_stops_at_the_row_and_byte_caps() {
        let mut rows = RowCollector::default();
        for _ in 0..MAX_QUERY_ROWS {
            rows.push(vec![Value::Integer(1)]).expect("within the cap");
        }
        assert!(matches!(
            rows.push(vec![Value::Integer(1)]),
            Err(DbError::LimitExceeded(m)) if m.contains("rows")
        ));
        assert!(rows.exceeded);

        let mut rows = RowCollector::default();
        let big = Value::Text("x".repeat(MAX_VALUE_BYTES));
        for _ in 0..MAX_RESULT_BYTES / MAX_VALUE_BYTES {
            rows.push(vec![big.clone()]).expect("within the cap");
        }
        assert!(matches!(
            rows.push(vec![big]),
            Err(DbError::LimitExceeded(m)) if m.contains("MiB")
        ));
    }

    #[test]
    fn text_cast_to_a_time_must_be_written_in_full() {
        let guard = crate::sandbox::Guard::new(
            crate::sandbox::Dialect::Postgres,
            [(
                "t".to_string(),
                crate::sandbox::PhysicalName::unqualified("t"),
            )],
            None,
        );
        let checked = guard
            .check("SELECT CAST($2 AS timestamptz), $1", Mode::Data)
            .expect("allowed");
        assert_eq!(checked.time_params, [2]);
        let text = |t: &str| Value::Text(t.into());
        assert!(check_time_params(&checked, &[text("now"), text("2024-01-31 12:00:00")]).is_ok());
        assert!(check_time_params(&checked, &[text("x"), Value::Null]).is_ok());
        for clock in ["now", "tomorrow 10:00", " Today "] {
            let err = check_time_params(&checked, &[text("x"), text(clock)]).expect_err(clock);
            assert!(matches!(err, DbError::Denied(m) if m.contains("$2")));
        }
    }

    /// A backend that runs the sends it is told to at once and queues the others, answering
    /// each write's row count as its first parameter.
    struct HalfQueued {
        queue_next: bool,
        queued: Vec<u64>,
    }

    impl RawGuestConnection for HalfQueued {
        fn failure_aborts_transaction(&self) -> bool {
            true
        }

        fn execute(&mut self, _: &Checked, params: &[Value], _: Instant) -> Result<u64, DbError> {
            match params.first() {
                Some(Value::Integer(rows)) => Ok(u64::try_from(*rows).unwrap_or(0)),
                _ => Err(DbError::Constraint {
                    message: "no count".into(),
                    sqlstate: Some("23502".into()),
                }),
            }
        }

        fn query(
            &mut self,
            _: &Checked,
            _: &[Value],
            _: Instant,
            _: &mut RowCollector,
        ) -> Result<(), DbError> {
            Ok(())
        }

        fn send(
            &mut self,
            checked: &Checked,
            params: &[Value],
            deadline: Instant,
        ) -> Result<Option<u64>, DbError> {
            self.queue_next = !self.queue_next;
            let rows = self.execute(checked, params, deadline)?;
            if self.queue_next {
                self.queued.push(rows);
                Ok(None)
            } else {
                Ok(Some(rows))
            }
        }

        fn flush(&mut self, _: Instant) -> Result<Vec<u64>, DbError> {
            Ok(std::mem::take(&mut self.queued))
        }
    }

    fn half_queued() -> GuardedConnection {
        let guard = crate::sandbox::Guard::new(
            crate::sandbox::Dialect::Postgres,
            [(
                "t".to_string(),
                crate::sandbox::PhysicalName::unqualified("t"),
            )],
            None,
        );
        GuardedConnection::new(
            Box::new(HalfQueued {
                queue_next: false,
                queued: Vec::new(),
            }),
            GuardCache::new(guard),
        )
    }

    #[test]
    fn flush_answers_counts_in_the_order_sent_whichever_ran_at_once() {
        let mut conn = half_queued();
        let call = Call {
            deadline: Instant::now() + std::time::Duration::from_secs(30),
        };
        let update = "UPDATE t SET n = $1";
        for rows in [3, 0, 1, 7, 2] {
            conn.send(update, &[Value::Integer(rows)], call)
                .expect("sent");
        }
        assert_eq!(conn.flush(call).expect("flush"), [3, 0, 1, 7, 2]);
        assert_eq!(conn.flush(call).expect("flush"), Vec::<u64>::new());

        // Past the cap the writes still go, but their counts are not kept.
        for _ in 0..=MAX_SENT_COUNTS {
            conn.send(update, &[Value::Integer(1)], call).expect("sent");
        }
        let err = conn.flush(call).expect_err("past the cap");
        assert!(matches!(err, DbError::LimitExceeded(m) if m.contains("flush")));
        conn.send(update, &[Value::Integer(4)], call).expect("sent");
        assert_eq!(conn.flush(call).expect("flush"), [4]);

        // A send that fails at once aborts the transaction: no flush answers counts after it,
        // and the end of the call forgets what was sent.
        conn.send(update, &[Value::Integer(5)], call).expect("sent");
        conn.send(update, &[Value::Null], call)
            .expect_err("fails at once");
        assert!(conn.flush(call).is_err());
        conn.end_call(call);
        assert!(conn.take_aborted().is_some());
        conn.send(update, &[Value::Integer(6)], call).expect("sent");
        assert_eq!(conn.flush(call).expect("flush"), [6]);
    }

    #[test]
    fn parameters_past_the_value_cap_are_refused() {
        assert!(check_params(&[Value::Text("x".repeat(MAX_VALUE_BYTES))]).is_ok());
        let err = check_params(&[Value::Null, Value::Blob(vec![0; MAX_VALUE_BYTES + 1])])
            .expect_err("over the cap");
        assert!(matches!(err, DbError::LimitExceeded(m) if m.contains("$2")));
    }
}
