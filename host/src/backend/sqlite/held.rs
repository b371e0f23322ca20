//! [`WorkerConnection`]: a worker's SQLite connection together with the guest statements it
//! keeps prepared.
//!
//! A guest runs the same few statements for every event. rusqlite's own statement cache looks
//! each one up by its SQL text, copies that text into a new key every time, and hashes it again
//! to put the statement back: about a twentieth of a replay's work on the applying thread
//! (`docs/benchmarks.md`). Here a guest statement stays prepared in a map beside its
//! connection, found by one hash of its text and never taken out, so running it again costs a
//! lookup, its bindings and SQLite's own work.
//!
//! A statement borrows its connection, so the two live in one cell ([`self_cell`]): the
//! statements are finalized before the connection closes, and neither can be reached without
//! the other. The map is bounded ([`MAX_HELD_STATEMENTS`] statements of at most
//! [`MAX_HELD_SQL_BYTES`]); past that, statements go through rusqlite's bounded cache as before.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Deref;

use rusqlite::{Connection, PrepFlags, Statement};

/// The most guest statements one connection keeps prepared. A projector uses a handful; the
/// bound keeps a guest that generates SQL text from holding SQLite's memory without end.
pub(super) const MAX_HELD_STATEMENTS: usize = 128;

/// The longest SQL text held prepared. A projector's statements are a few hundred bytes; a
/// guest may send up to 64 KiB, whose prepared form is large, so long ones are not held and
/// the memory held stays small whatever a guest sends.
pub(super) const MAX_HELD_SQL_BYTES: usize = 4096;

/// Prepared guest statements by their SQL text (as checked and rewritten by the guard).
type HeldStatements<'conn> =
    RefCell<HashMap<Box<str>, Statement<'conn>, foldhash::fast::RandomState>>;

self_cell::self_cell!(
    /// A worker's SQLite connection and the guest statements prepared on it. It dereferences
    /// to the [`Connection`] for everything else zdr runs.
    pub struct WorkerConnection {
        owner: Connection,
        #[not_covariant]
        dependent: HeldStatements,
    }
);

// SAFETY: rusqlite's `Connection` is `Send`; its `Statement`s are not, only because a statement
// must not be used on one thread while its connection is used on another. Here the statements
// live inside the same cell as their connection and are reached only through it (and the
// worker's mutex around it), so the whole moves between threads as one, exactly as rusqlite's
// own statement cache does (it is `Send` for the same reason).
unsafe impl Send for WorkerConnection {}

impl WorkerConnection {
    /// `conn`, holding no statements yet.
    pub(super) fn hold(conn: Connection) -> Self {
        WorkerConnection::new(conn, |_| HeldStatements::default())
    }

    /// Runs `run` on the statement for `sql`, prepared the first time and kept for the next.
    /// The statement's bindings are cleared afterwards, so a held statement keeps no copy of
    /// a guest's values (up to 4 MiB each) between two runs.
    ///
    /// # Errors
    /// SQLite's, from preparing the statement; what `run` answers is returned as it is.
    pub(super) fn with_statement<T>(
        &self,
        sql: &str,
        run: impl FnOnce(&mut Statement<'_>) -> T,
    ) -> rusqlite::Result<T> {
        self.with_dependent(|conn, held| {
            // `run` gets a statement, never this connection, so the map is never borrowed
            // twice; were it ever, the statement would go through rusqlite's cache below
            // instead of panicking.
            if let Ok(mut held) = held.try_borrow_mut() {
                if let Some(statement) = held.get_mut(sql) {
                    let result = run(statement);
                    statement.clear_bindings();
                    return Ok(result);
                }
                if held.len() < MAX_HELD_STATEMENTS && sql.len() <= MAX_HELD_SQL_BYTES {
                    let mut statement =
                        conn.prepare_with_flags(sql, PrepFlags::SQLITE_PREPARE_PERSISTENT)?;
                    let result = run(&mut statement);
                    statement.clear_bindings();
                    held.insert(sql.into(), statement);
                    return Ok(result);
                }
            }
            // Past the bounds: rusqlite's cache, which is bounded and evicts.
            let mut statement = conn.prepare_cached(sql)?;
            Ok(run(&mut statement))
        })
    }

    /// How many statements are held.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.with_dependent(|_, held| held.borrow().len())
    }
}

impl Deref for WorkerConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.borrow_owner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> WorkerConnection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
            .expect("create");
        WorkerConnection::hold(conn)
    }

    fn insert(conn: &WorkerConnection, sql: &str, k: i64) -> rusqlite::Result<usize> {
        conn.with_statement(sql, |stmt| stmt.execute(rusqlite::params![k, "x"]))?
    }

    #[test]
    fn a_statement_is_prepared_once_and_run_again() {
        let conn = connection();
        let sql = "INSERT INTO t (k, v) VALUES (?1, ?2)";
        for k in 0..5 {
            assert_eq!(insert(&conn, sql, k).expect("insert"), 1);
        }
        assert_eq!(conn.held(), 1);
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 5);
    }

    #[test]
    fn a_failed_run_leaves_the_statement_usable() {
        let conn = connection();
        let sql = "INSERT INTO t (k, v) VALUES (?1, ?2)";
        insert(&conn, sql, 1).expect("first");
        let err = insert(&conn, sql, 1).expect_err("duplicate key");
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        assert_eq!(insert(&conn, sql, 2).expect("after the failure"), 1);
    }

    #[test]
    fn bindings_are_not_kept_between_runs() {
        let conn = connection();
        let sql = "SELECT ?1";
        let first: String = conn
            .with_statement(sql, |stmt| stmt.query_row(["a value"], |r| r.get(0)))
            .and_then(|answer| answer)
            .expect("bound");
        assert_eq!(first, "a value");
        // Run again without binding: a kept binding would answer the old value.
        let second: Option<String> = conn
            .with_statement(sql, |stmt| {
                let mut rows = stmt.raw_query();
                match rows.next()? {
                    Some(row) => row.get(0),
                    None => Ok(Some("no row".into())),
                }
            })
            .and_then(|answer| answer)
            .expect("unbound");
        assert_eq!(second, None);
    }

    #[test]
    fn past_the_bound_statements_still_run_but_are_not_held() {
        let conn = connection();
        for k in 0..(MAX_HELD_STATEMENTS as i64 + 20) {
            // A distinct text each time, as a guest that builds SQL would send.
            let sql = format!("INSERT INTO t (k, v) VALUES (?1, ?2) -- statement {k}");
            let changed = conn
                .with_statement(&sql, |stmt| stmt.execute(rusqlite::params![k, "x"]))
                .and_then(|changed| changed)
                .expect("insert");
            assert_eq!(changed, 1);
        }
        assert_eq!(conn.held(), MAX_HELD_STATEMENTS);
    }

    #[test]
    fn a_long_statement_runs_but_is_not_held() {
        let conn = connection();
        let padding = " ".repeat(MAX_HELD_SQL_BYTES);
        let sql = format!("INSERT INTO t (k, v) VALUES (?1, ?2){padding}");
        assert_eq!(insert(&conn, &sql, 1).expect("insert"), 1);
        assert_eq!(conn.held(), 0);
        assert_eq!(
            insert(&conn, "INSERT INTO t (k, v) VALUES (?1, ?2)", 2).expect("insert"),
            1
        );
        assert_eq!(conn.held(), 1);
    }

    #[test]
    fn a_held_statement_follows_a_schema_change() {
        let conn = connection();
        let sql = "SELECT COUNT(*) FROM t";
        let count = |conn: &WorkerConnection| {
            conn.with_statement(sql, |stmt| stmt.query_row([], |r| r.get::<_, i64>(0)))
                .and_then(|count| count)
        };
        assert_eq!(count(&conn).expect("before"), 0);
        // A promote swaps tables under held statements by renaming them.
        conn.execute_batch(
            "ALTER TABLE t RENAME TO old_t; CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT); \
             INSERT INTO t VALUES (1, 'a'), (2, 'b');",
        )
        .expect("swap");
        assert_eq!(count(&conn).expect("after the swap"), 2);
        conn.execute_batch("DROP TABLE t").expect("drop");
        let err = count(&conn).expect_err("the table is gone");
        assert!(err.to_string().contains("no such table"), "{err}");
    }
}
