//! Statements a projector may run, with the exact text each dialect's clone receives.
//!
//! The SQLite column is also executed against a real database in `sqlite_exec`; the PostgreSQL
//! column was checked by hand against a PostgreSQL 15 server (see the module report).

use super::{clone_guard, live_guard};
use crate::sandbox::{Dialect, Guard, Mode, PhysicalName, StatementKind};

use StatementKind::{Execute, Query};

/// One allowed statement and what each dialect's clone guard makes of it.
pub(super) struct Allowed {
    pub sql: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
    pub kind: StatementKind,
    pub tables: &'static [&'static str],
}

/// Typical projector statements.
pub(super) const ALLOWED: &[Allowed] = &[
    Allowed {
        sql: "SELECT balance FROM balances WHERE id = $1",
        sqlite: "SELECT balance FROM zdr_r_k1__balances AS balances WHERE id = ?1",
        postgres: "SELECT balance FROM zdr_r_k1.balances WHERE id = $1",
        kind: Query,
        tables: &["balances"],
    },
    Allowed {
        sql: "SELECT b.id, a.name FROM balances AS b JOIN accounts AS a ON a.id = b.account_id WHERE b.balance > $1 ORDER BY b.id DESC LIMIT 10",
        sqlite: "SELECT b.id, a.name FROM zdr_r_k1__balances AS b JOIN zdr_r_k1__accounts AS a ON a.id = b.account_id WHERE b.balance > ?1 ORDER BY b.id DESC LIMIT 10",
        postgres: "SELECT b.id, a.name FROM zdr_r_k1.balances AS b JOIN zdr_r_k1.accounts AS a ON a.id = b.account_id WHERE b.balance > $1 ORDER BY b.id DESC LIMIT 10",
        kind: Query,
        tables: &["accounts", "balances"],
    },
    Allowed {
        sql: "SELECT balances.id, accounts.name FROM balances JOIN accounts ON accounts.id = balances.account_id",
        sqlite: "SELECT balances.id, accounts.name FROM zdr_r_k1__balances AS balances JOIN zdr_r_k1__accounts AS accounts ON accounts.id = balances.account_id",
        postgres: "SELECT balances.id, accounts.name FROM zdr_r_k1.balances JOIN zdr_r_k1.accounts ON accounts.id = balances.account_id",
        kind: Query,
        tables: &["accounts", "balances"],
    },
    Allowed {
        sql: "INSERT INTO balances (id, balance) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET balance = balances.balance + excluded.balance",
        sqlite: "INSERT INTO zdr_r_k1__balances AS balances (id, balance) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET balance = balances.balance + excluded.balance",
        postgres: "INSERT INTO zdr_r_k1.balances (id, balance) VALUES ($1, $2) ON CONFLICT(id) DO UPDATE SET balance = balances.balance + excluded.balance",
        kind: Execute,
        tables: &["balances"],
    },
    Allowed {
        sql: "INSERT INTO balances (id, balance) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
        sqlite: "INSERT INTO zdr_r_k1__balances AS balances (id, balance) VALUES (?1, ?2) ON CONFLICT(id) DO NOTHING",
        postgres: "INSERT INTO zdr_r_k1.balances (id, balance) VALUES ($1, $2) ON CONFLICT(id) DO NOTHING",
        kind: Execute,
        tables: &["balances"],
    },
    Allowed {
        sql: "INSERT INTO balances (id, balance) SELECT id, 0 FROM accounts WHERE name = $1",
        sqlite: "INSERT INTO zdr_r_k1__balances AS balances (id, balance) SELECT id, 0 FROM zdr_r_k1__accounts AS accounts WHERE name = ?1",
        postgres: "INSERT INTO zdr_r_k1.balances (id, balance) SELECT id, 0 FROM zdr_r_k1.accounts WHERE name = $1",
        kind: Execute,
        tables: &["accounts", "balances"],
    },
    Allowed {
        sql: "INSERT INTO balances (id, balance) VALUES ($1, 0) RETURNING id, balance",
        sqlite: "INSERT INTO zdr_r_k1__balances AS balances (id, balance) VALUES (?1, 0) RETURNING id, balance",
        postgres: "INSERT INTO zdr_r_k1.balances (id, balance) VALUES ($1, 0) RETURNING id, balance",
        kind: Query,
        tables: &["balances"],
    },
    Allowed {
        sql: "UPDATE balances SET balance = balances.balance - $1, updated_at = $3 WHERE balances.id = $2",
        sqlite: "UPDATE zdr_r_k1__balances AS balances SET balance = balances.balance - ?1, updated_at = ?3 WHERE balances.id = ?2",
        postgres: "UPDATE zdr_r_k1.balances SET balance = balances.balance - $1, updated_at = $3 WHERE balances.id = $2",
        kind: Execute,
        tables: &["balances"],
    },
    Allowed {
        sql: "UPDATE balances SET balance = 0 FROM accounts WHERE accounts.id = balances.account_id AND accounts.name = $1",
        sqlite: "UPDATE zdr_r_k1__balances AS balances SET balance = 0 FROM zdr_r_k1__accounts AS accounts WHERE accounts.id = balances.account_id AND accounts.name = ?1",
        postgres: "UPDATE zdr_r_k1.balances SET balance = 0 FROM zdr_r_k1.accounts WHERE accounts.id = balances.account_id AND accounts.name = $1",
        kind: Execute,
        tables: &["accounts", "balances"],
    },
    Allowed {
        sql: "DELETE FROM balances WHERE id = $1",
        sqlite: "DELETE FROM zdr_r_k1__balances AS balances WHERE id = ?1",
        postgres: "DELETE FROM zdr_r_k1.balances WHERE id = $1",
        kind: Execute,
        tables: &["balances"],
    },
    Allowed {
        sql: "DELETE FROM balances WHERE id IN (SELECT id FROM accounts WHERE name = $1)",
        sqlite: "DELETE FROM zdr_r_k1__balances AS balances WHERE id IN (SELECT id FROM zdr_r_k1__accounts AS accounts WHERE name = ?1)",
        postgres: "DELETE FROM zdr_r_k1.balances WHERE id IN (SELECT id FROM zdr_r_k1.accounts WHERE name = $1)",
        kind: Execute,
        tables: &["accounts", "balances"],
    },
    Allowed {
        sql: "WITH totals AS (SELECT account_id, sum(balance) AS total FROM balances GROUP BY account_id) SELECT accounts.name, totals.total FROM accounts JOIN totals ON totals.account_id = accounts.id",
        sqlite: "WITH totals AS (SELECT account_id, sum(balance) AS total FROM zdr_r_k1__balances AS balances GROUP BY account_id) SELECT accounts.name, totals.total FROM zdr_r_k1__accounts AS accounts JOIN totals ON totals.account_id = accounts.id",
        postgres: "WITH totals AS (SELECT account_id, sum(balance) AS total FROM zdr_r_k1.balances GROUP BY account_id) SELECT accounts.name, totals.total FROM zdr_r_k1.accounts JOIN totals ON totals.account_id = accounts.id",
        kind: Query,
        tables: &["accounts", "balances"],
    },
    Allowed {
        sql: "SELECT id FROM balances UNION ALL SELECT id FROM accounts",
        sqlite: "SELECT id FROM zdr_r_k1__balances AS balances UNION ALL SELECT id FROM zdr_r_k1__accounts AS accounts",
        postgres: "SELECT id FROM zdr_r_k1.balances UNION ALL SELECT id FROM zdr_r_k1.accounts",
        kind: Query,
        tables: &["accounts", "balances"],
    },
    Allowed {
        sql: "SELECT count(*), coalesce(sum(balance), 0), max(balance) FROM balances WHERE balance BETWEEN $1 AND $2 GROUP BY account_id HAVING count(*) > 1",
        sqlite: "SELECT count(*), coalesce(sum(balance), 0), max(balance) FROM zdr_r_k1__balances AS balances WHERE balance BETWEEN ?1 AND ?2 GROUP BY account_id HAVING count(*) > 1",
        postgres: "SELECT count(*), coalesce(sum(balance), 0), max(balance) FROM zdr_r_k1.balances WHERE balance BETWEEN $1 AND $2 GROUP BY account_id HAVING count(*) > 1",
        kind: Query,
        tables: &["balances"],
    },
    Allowed {
        sql: "SELECT id, row_number() OVER (PARTITION BY account_id ORDER BY balance DESC) FROM balances",
        sqlite: "SELECT id, row_number() OVER (PARTITION BY account_id ORDER BY balance DESC) FROM zdr_r_k1__balances AS balances",
        postgres: "SELECT id, row_number() OVER (PARTITION BY account_id ORDER BY balance DESC) FROM zdr_r_k1.balances",
        kind: Query,
        tables: &["balances"],
    },
    Allowed {
        sql: "SELECT CAST($1 AS timestamp), '2024-01-31 12:00:00Z'::timestamptz, '2024-01-31'::date FROM balances WHERE id = $2",
        sqlite: "SELECT CAST(?1 AS TIMESTAMP), CAST('2024-01-31 12:00:00Z' AS TIMESTAMPTZ), CAST('2024-01-31' AS DATE) FROM zdr_r_k1__balances AS balances WHERE id = ?2",
        postgres: "SELECT CAST($1 AS TIMESTAMP), '2024-01-31 12:00:00Z'::TIMESTAMPTZ, '2024-01-31'::DATE FROM zdr_r_k1.balances WHERE id = $2",
        kind: Query,
        tables: &["balances"],
    },
    Allowed {
        sql: "SELECT CASE WHEN balance < 0 THEN 'debt' ELSE 'ok' END, CAST(balance AS TEXT), balance::text FROM balances",
        sqlite: "SELECT CASE WHEN balance < 0 THEN 'debt' ELSE 'ok' END, CAST(balance AS TEXT), CAST(balance AS TEXT) FROM zdr_r_k1__balances AS balances",
        postgres: "SELECT CASE WHEN balance < 0 THEN 'debt' ELSE 'ok' END, CAST(balance AS TEXT), balance::TEXT FROM zdr_r_k1.balances",
        kind: Query,
        tables: &["balances"],
    },
    Allowed {
        sql: "SELECT json_extract(data, '$.amount'), lower(name) || '-' || upper(name) FROM accounts WHERE name LIKE $1 AND data IS NOT NULL",
        sqlite: "SELECT json_extract(data, '$.amount'), lower(name) || '-' || upper(name) FROM zdr_r_k1__accounts AS accounts WHERE name LIKE ?1 AND data IS NOT NULL",
        postgres: "SELECT json_extract(data, '$.amount'), lower(name) || '-' || upper(name) FROM zdr_r_k1.accounts WHERE name LIKE $1 AND data IS NOT NULL",
        kind: Query,
        tables: &["accounts"],
    },
    Allowed {
        sql: "WITH c AS (SELECT id FROM accounts) UPDATE balances SET balance = 0 WHERE account_id IN (SELECT id FROM c)",
        sqlite: "WITH c AS (SELECT id FROM zdr_r_k1__accounts AS accounts) UPDATE zdr_r_k1__balances AS balances SET balance = 0 WHERE account_id IN (SELECT id FROM c)",
        postgres: "WITH c AS (SELECT id FROM zdr_r_k1.accounts) UPDATE zdr_r_k1.balances SET balance = 0 WHERE account_id IN (SELECT id FROM c)",
        kind: Execute,
        tables: &["accounts", "balances"],
    },
    Allowed {
        sql: "INSERT INTO balances DEFAULT VALUES",
        sqlite: "INSERT INTO zdr_r_k1__balances AS balances DEFAULT VALUES",
        postgres: "INSERT INTO zdr_r_k1.balances DEFAULT VALUES",
        kind: Execute,
        tables: &["balances"],
    },
    Allowed {
        sql: "SELECT 1",
        sqlite: "SELECT 1",
        postgres: "SELECT 1",
        kind: Query,
        tables: &[],
    },
    Allowed {
        sql: "VALUES (1, 'a'), (2, 'b')",
        sqlite: "VALUES (1, 'a'), (2, 'b')",
        postgres: "VALUES (1, 'a'), (2, 'b')",
        kind: Query,
        tables: &[],
    },
    Allowed {
        sql: "SELECT * FROM balances b WHERE b.id = $2 AND b.account_id = $1 AND b.balance > $2",
        sqlite: "SELECT * FROM zdr_r_k1__balances b WHERE b.id = ?2 AND b.account_id = ?1 AND b.balance > ?2",
        postgres: "SELECT * FROM zdr_r_k1.balances b WHERE b.id = $2 AND b.account_id = $1 AND b.balance > $2",
        kind: Query,
        tables: &["balances"],
    },
    Allowed {
        sql: "UPDATE balances AS b SET balance = 1 WHERE b.id = 1",
        sqlite: "UPDATE zdr_r_k1__balances AS b SET balance = 1 WHERE b.id = 1",
        postgres: "UPDATE zdr_r_k1.balances AS b SET balance = 1 WHERE b.id = 1",
        kind: Execute,
        tables: &["balances"],
    },
    Allowed {
        sql: "DELETE FROM balances AS b WHERE b.id = 1",
        sqlite: "DELETE FROM zdr_r_k1__balances AS b WHERE b.id = 1",
        postgres: "DELETE FROM zdr_r_k1.balances AS b WHERE b.id = 1",
        kind: Execute,
        tables: &["balances"],
    },
];

#[test]
fn allowed_statements_are_rewritten_exactly() {
    let sqlite = clone_guard(Dialect::Sqlite);
    let postgres = clone_guard(Dialect::Postgres);
    for case in ALLOWED {
        for (guard, expected) in [(&sqlite, case.sqlite), (&postgres, case.postgres)] {
            let checked = guard
                .check(case.sql, Mode::Data)
                .unwrap_or_else(|e| panic!("{:?} {}: {e}", guard.dialect(), case.sql));
            assert_eq!(checked.sql, expected, "{:?} {}", guard.dialect(), case.sql);
            assert_eq!(checked.kind, case.kind, "{}", case.sql);
            assert_eq!(checked.tables, case.tables, "{}", case.sql);
        }
    }
}

#[test]
fn live_tables_keep_their_names_and_get_no_alias() {
    let cases = [
        (
            "INSERT INTO balances (id, balance) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET balance = balances.balance + excluded.balance",
            "INSERT INTO balances (id, balance) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET balance = balances.balance + excluded.balance",
            "INSERT INTO balances (id, balance) VALUES ($1, $2) ON CONFLICT(id) DO UPDATE SET balance = balances.balance + excluded.balance",
        ),
        (
            "SELECT * FROM \"Balances\" JOIN [accounts] ON 1 = 1",
            "SELECT * FROM balances JOIN accounts ON 1 = 1",
            "",
        ),
        (
            "DELETE FROM BALANCES WHERE id = ?",
            "DELETE FROM balances WHERE id = ?1",
            "DELETE FROM balances WHERE id = $1",
        ),
    ];
    for (sql, sqlite, postgres) in cases {
        let checked = live_guard(Dialect::Sqlite).check(sql, Mode::Data).unwrap();
        assert_eq!(checked.sql, sqlite);
        if !postgres.is_empty() {
            let checked = live_guard(Dialect::Postgres)
                .check(sql, Mode::Data)
                .unwrap();
            assert_eq!(checked.sql, postgres);
        }
    }
}

#[test]
fn physical_names_that_need_quotes_are_quoted() {
    let guard = Guard::new(
        Dialect::Postgres,
        [
            (
                "order".to_owned(),
                PhysicalName::qualified("Live Schema", "order"),
            ),
            (
                "items".to_owned(),
                PhysicalName::unqualified("zdr_r_K1__items"),
            ),
        ],
        None,
    );
    let checked = guard
        .check(
            "UPDATE \"order\" SET total = (SELECT sum(price) FROM items WHERE items.order_id = \"order\".id)",
            Mode::Data,
        )
        .unwrap();
    assert_eq!(
        checked.sql,
        "UPDATE \"Live Schema\".\"order\" SET total = (SELECT sum(price) FROM \"zdr_r_K1__items\" AS \"items\" WHERE items.order_id = \"order\".id)"
    );
}

#[test]
fn placeholders_count_the_highest_number() {
    let guard = clone_guard(Dialect::Sqlite);
    let count = |sql| guard.check(sql, Mode::Data).unwrap().param_count;
    assert_eq!(count("SELECT 1"), 0);
    assert_eq!(count("SELECT $3, $1"), 3);
    assert_eq!(count("SELECT ?, ?, ?"), 3);
    assert_eq!(count("SELECT $999"), 999);
}
