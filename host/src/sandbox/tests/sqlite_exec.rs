//! The rewritten SQL runs on a real SQLite (in memory) and touches only the clone's tables:
//! SQLite's authorizer reports every table each statement reads or writes.

use std::sync::{Arc, Mutex};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, params_from_iter, types::Value};

use super::allowed::ALLOWED;
use super::{clone_guard, live_guard};
use crate::sandbox::{Dialect, Guard, Mode, StatementKind, check_declared_ddl};

/// The test projector's declared tables and their DDL.
const DECLARED: &[(&str, &[&str])] = &[
    (
        "balances",
        &[
            "CREATE TABLE balances (id INTEGER PRIMARY KEY, account_id INTEGER, \
             balance INTEGER NOT NULL DEFAULT 0, updated_at TEXT)",
            "CREATE INDEX balances_by_account ON balances (account_id)",
        ],
    ),
    (
        "accounts",
        &[
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, data TEXT)",
            "CREATE UNIQUE INDEX accounts_by_name ON accounts (name)",
        ],
    ),
];

/// Tables the authorizer saw since the last `take`.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A database with the live tables and the clone `k1`, both created from the declared DDL by
/// their guards, live holding one sentinel row per table.
fn database() -> (Connection, Seen) {
    let connection = Connection::open_in_memory().unwrap();
    for (table, ddl) in DECLARED {
        let ddl: Vec<String> = ddl.iter().map(|s| (*s).to_owned()).collect();
        check_declared_ddl(Dialect::Sqlite, table, &ddl).unwrap();
        for guard in [live_guard(Dialect::Sqlite), clone_guard(Dialect::Sqlite)] {
            for statement in &ddl {
                let checked = guard.check(statement, Mode::Setup).unwrap();
                connection.execute_batch(&checked.sql).unwrap();
            }
        }
    }
    connection
        .execute_batch(
            "INSERT INTO balances VALUES (1, 1, 999, 'live');
             INSERT INTO accounts VALUES (1, 'live', NULL);
             INSERT INTO zdr_r_k1__accounts VALUES (1, 'alice', '{\"amount\": 5}'), (2, 'bob', NULL);
             INSERT INTO zdr_r_k1__balances VALUES (1, 1, 10, NULL), (2, 2, -5, NULL);",
        )
        .unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    connection.authorizer(Some(move |context: AuthContext<'_>| {
        let table = match context.action {
            AuthAction::Read { table_name, .. }
            | AuthAction::Insert { table_name }
            | AuthAction::Update { table_name, .. }
            | AuthAction::Delete { table_name } => Some(table_name.to_owned()),
            _ => None,
        };
        record.0.lock().unwrap().extend(table);
        Authorization::Allow
    }));
    (connection, seen)
}

/// Runs a checked statement with `params`, returning its rows (empty for an `Execute`).
fn run(connection: &Connection, guard: &Guard, sql: &str, params: &[Value]) -> Vec<Vec<Value>> {
    let checked = guard
        .check(sql, Mode::Data)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert!(params.len() >= checked.param_count, "{sql}");
    let params = params_from_iter(&params[..checked.param_count]);
    let mut statement = connection
        .prepare(&checked.sql)
        .unwrap_or_else(|e| panic!("{}: {e}", checked.sql));
    match checked.kind {
        StatementKind::Execute => {
            statement
                .execute(params)
                .unwrap_or_else(|e| panic!("{}: {e}", checked.sql));
            Vec::new()
        }
        StatementKind::Query => {
            let width = statement.column_count();
            statement
                .query_map(params, |row| {
                    (0..width).map(|i| row.get::<_, Value>(i)).collect()
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{}: {e}", checked.sql))
        }
        StatementKind::Ddl => unreachable!("data mode returns no DDL"),
    }
}

fn assert_only_clone_tables(seen: &Seen, sql: &str) {
    for table in seen.take() {
        assert!(
            table == "zdr_r_k1__balances" || table == "zdr_r_k1__accounts",
            "{sql} touched {table}"
        );
    }
}

fn live_is_untouched(connection: &Connection) {
    let live: (i64, i64, String) = connection
        .query_row(
            "SELECT count(*), sum(balance), group_concat(updated_at) FROM balances",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    assert_eq!(live, (1, 999, "live".to_owned()));
    let accounts: String = connection
        .query_row("SELECT group_concat(name) FROM accounts", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(accounts, "live");
}

#[test]
fn every_allowed_statement_runs_on_sqlite_against_the_clone_only() {
    let (connection, seen) = database();
    let guard = clone_guard(Dialect::Sqlite);
    let mut next = 1000;
    for case in ALLOWED {
        let params: Vec<Value> = (0..3)
            .map(|_| {
                next += 1;
                Value::Integer(next)
            })
            .collect();
        seen.take();
        run(&connection, &guard, case.sql, &params);
        assert_only_clone_tables(&seen, case.sql);
    }
    live_is_untouched(&connection);
}

#[test]
fn a_projector_fold_runs_on_the_clone() {
    let (connection, seen) = database();
    let guard = clone_guard(Dialect::Sqlite);
    let int = Value::Integer;
    let text = |s: &str| Value::Text(s.to_owned());
    let upsert = "INSERT INTO balances (id, account_id, balance) VALUES ($1, $2, $3) \
                  ON CONFLICT (id) DO UPDATE SET balance = balances.balance + excluded.balance";
    run(&connection, &guard, upsert, &[int(1), int(1), int(5)]);
    run(&connection, &guard, upsert, &[int(3), int(2), int(7)]);
    run(&connection, &guard, upsert, &[int(3), int(2), int(1)]);
    let update = "UPDATE balances SET balance = balances.balance * 2, updated_at = ? \
                  WHERE balances.account_id = ?";
    run(&connection, &guard, update, &[text("2024-01-01"), int(2)]);
    run(
        &connection,
        &guard,
        "DELETE FROM balances WHERE balance < $1",
        &[int(0)],
    );
    let report = "WITH totals AS (SELECT account_id, sum(balance) AS total FROM balances \
                  GROUP BY account_id) \
                  SELECT a.name, t.total, (SELECT count(*) FROM balances WHERE account_id = a.id) \
                  FROM accounts AS a JOIN totals AS t ON t.account_id = a.id \
                  WHERE a.id IN (SELECT account_id FROM balances) ORDER BY a.name";
    let rows = run(&connection, &guard, report, &[]);
    assert_eq!(
        rows,
        vec![
            vec![text("alice"), int(15), int(1)],
            vec![text("bob"), int(16), int(1)],
        ]
    );
    let json = "SELECT json_extract(data, '$.amount') + 1, upper(name) || '!' FROM accounts \
                WHERE data IS NOT NULL";
    assert_eq!(
        run(&connection, &guard, json, &[]),
        vec![vec![int(6), text("ALICE!")]]
    );
    assert_only_clone_tables(&seen, "the fold");
    live_is_untouched(&connection);
}

#[test]
fn clone_indexes_get_the_prefix() {
    let (connection, _) = database();
    let mut statement = connection
        .prepare("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name")
        .unwrap();
    let indexes: Vec<(String, String)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected = [
        ("accounts_by_name", "accounts"),
        ("balances_by_account", "balances"),
        ("zdr_r_k1__accounts_by_name", "zdr_r_k1__accounts"),
        ("zdr_r_k1__balances_by_account", "zdr_r_k1__balances"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(indexes, expected);
}
