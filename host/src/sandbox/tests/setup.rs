//! Setup mode (the declared DDL the host runs for each target) and `check_declared_ddl`.

use super::clone_guard;
use crate::sandbox::{Dialect, GuardError, Mode, StatementKind, check_declared_ddl};

/// (declared DDL, SQLite clone, PostgreSQL clone; empty when not meaningful there).
const REWRITTEN: &[(&str, &str, &str)] = &[
    (
        "CREATE TABLE balances (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE zdr_r_k1__balances (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE zdr_r_k1.balances (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL DEFAULT 0)",
    ),
    (
        "CREATE TABLE IF NOT EXISTS \"Accounts\" (id INTEGER, name TEXT, CONSTRAINT accounts_pk \
         PRIMARY KEY (id), UNIQUE (name), CHECK (length(name) > 0))",
        "CREATE TABLE IF NOT EXISTS zdr_r_k1__accounts (id INTEGER, name TEXT, CONSTRAINT \
         accounts_pk PRIMARY KEY (id), UNIQUE (name), CHECK (length(name) > 0))",
        "CREATE TABLE IF NOT EXISTS zdr_r_k1.accounts (id INTEGER, name TEXT, CONSTRAINT \
         accounts_pk PRIMARY KEY (id), UNIQUE (name), CHECK (length(name) > 0))",
    ),
    (
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT COLLATE NOCASE) \
         WITHOUT ROWID",
        "CREATE TABLE zdr_r_k1__accounts (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT COLLATE \
         NOCASE) WITHOUT ROWID",
        "",
    ),
    (
        "CREATE TABLE accounts (id INTEGER, name ANY) STRICT",
        "CREATE TABLE zdr_r_k1__accounts (id INTEGER, name ANY) STRICT",
        "",
    ),
    (
        "CREATE TABLE accounts (id bigserial PRIMARY KEY, at timestamptz NOT NULL, data jsonb, \
         amount numeric(10,2), twice int GENERATED ALWAYS AS (id * 2) STORED)",
        "CREATE TABLE zdr_r_k1__accounts (id bigserial PRIMARY KEY, at TIMESTAMPTZ NOT NULL, data \
         JSONB, amount NUMERIC(10,2), twice INT GENERATED ALWAYS AS (id * 2) STORED)",
        "CREATE TABLE zdr_r_k1.accounts (id bigserial PRIMARY KEY, at TIMESTAMPTZ NOT NULL, data \
         JSONB, amount NUMERIC(10,2), twice INT GENERATED ALWAYS AS (id * 2) STORED)",
    ),
    (
        "CREATE UNIQUE INDEX IF NOT EXISTS by_balance ON balances (balance)",
        "CREATE UNIQUE INDEX IF NOT EXISTS zdr_r_k1__by_balance ON zdr_r_k1__balances(balance)",
        "CREATE UNIQUE INDEX IF NOT EXISTS by_balance ON zdr_r_k1.balances(balance)",
    ),
    (
        "CREATE INDEX \"ByName\" ON accounts (lower(name) DESC, id) WHERE name IS NOT NULL",
        "CREATE INDEX zdr_r_k1__byname ON zdr_r_k1__accounts(lower(name) DESC, id) WHERE name IS \
         NOT NULL",
        "CREATE INDEX byname ON zdr_r_k1.accounts(lower(name) DESC, id) WHERE name IS NOT NULL",
    ),
    (
        "CREATE INDEX by_data ON accounts USING gin (data jsonb_path_ops)",
        "",
        "CREATE INDEX by_data ON zdr_r_k1.accounts USING GIN (data jsonb_path_ops)",
    ),
];

#[test]
fn declared_ddl_is_rewritten_for_each_clone() {
    for &(sql, sqlite, postgres) in REWRITTEN {
        for (dialect, expected) in [(Dialect::Sqlite, sqlite), (Dialect::Postgres, postgres)] {
            if expected.is_empty() {
                continue;
            }
            let checked = clone_guard(dialect)
                .check(sql, Mode::Setup)
                .unwrap_or_else(|e| panic!("{dialect:?} {sql}: {e}"));
            assert_eq!(checked.sql, expected, "{dialect:?}");
            assert_eq!(checked.kind, StatementKind::Ddl);
            assert_eq!(checked.tables.len(), 1);
        }
    }
}

/// Setup statements each dialect refuses, with a word the message names.
const REFUSED: &[(&str, &str)] = &[
    ("DROP TABLE balances", "drop table"),
    ("ALTER TABLE balances ADD COLUMN x INTEGER", "alter table"),
    (
        "CREATE VIEW balances_view AS SELECT * FROM balances",
        "create view",
    ),
    (
        "CREATE TRIGGER t AFTER INSERT ON balances BEGIN SELECT 1; END",
        "create trigger",
    ),
    ("CREATE TEMP TABLE balances (x INTEGER)", "temporary"),
    ("CREATE TABLE other (x INTEGER)", "other"),
    ("CREATE TABLE main.balances (x INTEGER)", "main.balances"),
    (
        "CREATE TABLE balances AS SELECT * FROM stored_events",
        "as select",
    ),
    (
        "CREATE TABLE balances (x INTEGER REFERENCES accounts (id))",
        "foreign keys",
    ),
    (
        "CREATE TABLE balances (x INTEGER, FOREIGN KEY (x) REFERENCES stored_events (id))",
        "foreign keys",
    ),
    (
        "CREATE TABLE balances (x INTEGER DEFAULT CURRENT_TIMESTAMP)",
        "current_timestamp",
    ),
    (
        "CREATE TABLE balances (x INTEGER DEFAULT (random()))",
        "random",
    ),
    (
        "CREATE TABLE balances (x INTEGER CHECK (x IN (SELECT id FROM stored_events)))",
        "stored_events",
    ),
    ("CREATE TABLE balances (x regclass)", "regclass"),
    ("CREATE TABLE balances (x other.money)", "other.money"),
    ("CREATE INDEX i ON stored_events (id)", "stored_events"),
    ("CREATE INDEX i ON main.balances (x)", "main.balances"),
    ("CREATE INDEX main.i ON balances (x)", "main.i"),
    ("CREATE INDEX sqlite_i ON balances (x)", "sqlite_i"),
    ("CREATE INDEX zdr_i ON balances (x)", "zdr_i"),
    (
        "CREATE INDEX CONCURRENTLY i ON balances (x)",
        "concurrently",
    ),
    ("CREATE INDEX i ON balances (random())", "random"),
    ("INSERT INTO balances (id) VALUES (1)", "insert"),
    ("SELECT * FROM balances", "select"),
    ("PRAGMA foreign_keys = OFF", "pragma"),
    ("ATTACH DATABASE 'x' AS y", "attach"),
];

#[test]
fn other_ddl_is_refused_in_setup() {
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        let guard = clone_guard(dialect);
        for &(sql, needle) in REFUSED {
            match guard.check(sql, Mode::Setup) {
                Err(GuardError::Denied(message)) => {
                    assert!(
                        message.to_lowercase().contains(needle),
                        "{dialect:?} {sql}: {message}"
                    );
                }
                other => panic!("{dialect:?} {sql}: {other:?}"),
            }
        }
    }
}

#[test]
fn keywords_sqlparser_would_drop_are_refused() {
    let cases = [
        (
            Dialect::Postgres,
            "CREATE TABLE balances (id INTEGER PRIMARY KEY AUTOINCREMENT)",
        ),
        (
            Dialect::Sqlite,
            "CREATE TABLE balances (id INTEGER PRIMARY KEY AUTO_INCREMENT)",
        ),
        (
            Dialect::Postgres,
            "CREATE TABLE balances (id INTEGER IDENTITY)",
        ),
    ];
    for (dialect, sql) in cases {
        assert!(
            matches!(
                clone_guard(dialect).check(sql, Mode::Setup),
                Err(GuardError::InvalidSql(_))
            ),
            "{dialect:?} {sql}"
        );
    }
}

#[test]
fn an_unnamed_index_needs_a_name_when_indexes_are_prefixed() {
    assert!(matches!(
        clone_guard(Dialect::Sqlite).check("CREATE INDEX ON balances (x)", Mode::Setup),
        Err(GuardError::InvalidSql(_) | GuardError::Denied(_))
    ));
    let checked = clone_guard(Dialect::Postgres)
        .check("CREATE INDEX ON balances (x)", Mode::Setup)
        .unwrap();
    assert_eq!(checked.sql, "CREATE INDEX ON zdr_r_k1.balances(x)");
}

fn ddl(statements: &[&str]) -> Vec<String> {
    statements.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn declared_ddl_that_is_accepted() {
    let cases: &[(&str, &[&str])] = &[
        (
            "balances",
            &["CREATE TABLE balances (id INTEGER PRIMARY KEY, balance INTEGER)"],
        ),
        (
            "balances",
            &[
                "CREATE TABLE \"Balances\" (id INTEGER PRIMARY KEY, balance INTEGER)",
                "CREATE INDEX balances_by_balance ON balances (balance)",
                "CREATE UNIQUE INDEX IF NOT EXISTS balances_unique ON Balances (id, balance)",
            ],
        ),
        ("_private", &["CREATE TABLE _private (x TEXT)"]),
    ];
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        for &(table, statements) in cases {
            assert_eq!(
                check_declared_ddl(dialect, table, &ddl(statements)),
                Ok(()),
                "{dialect:?} {table}"
            );
        }
    }
}

#[test]
fn declared_ddl_that_is_refused() {
    let long = "a".repeat(64);
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "Balances",
            &["CREATE TABLE balances (x INTEGER)"],
            "lowercase",
        ),
        (
            "1balances",
            &["CREATE TABLE balances (x INTEGER)"],
            "1balances",
        ),
        (&long, &["CREATE TABLE balances (x INTEGER)"], "aaaa"),
        (
            "zdr_balances",
            &["CREATE TABLE zdr_balances (x INTEGER)"],
            "reserved",
        ),
        (
            "stored_events",
            &["CREATE TABLE stored_events (x INTEGER)"],
            "reserved",
        ),
        (
            "sqlite_stat9",
            &["CREATE TABLE sqlite_stat9 (x INTEGER)"],
            "reserved",
        ),
        (
            "pg_balances",
            &["CREATE TABLE pg_balances (x INTEGER)"],
            "reserved",
        ),
        ("balances", &[], "no ddl"),
        ("balances", &["CREATE INDEX i ON balances (x)"], "first"),
        (
            "balances",
            &["CREATE TABLE accounts (x INTEGER)"],
            "accounts",
        ),
        (
            "balances",
            &["CREATE TABLE main.balances (x INTEGER)"],
            "main.balances",
        ),
        (
            "balances",
            &["CREATE TEMP TABLE balances (x INTEGER)"],
            "temporary",
        ),
        (
            "balances",
            &["CREATE TABLE balances AS SELECT 1 AS x"],
            "as select",
        ),
        (
            "balances",
            &["CREATE TABLE balances (x INTEGER REFERENCES accounts (id))"],
            "foreign keys",
        ),
        (
            "balances",
            &[
                "CREATE TABLE balances (x INTEGER)",
                "CREATE TABLE balances (y INTEGER)",
            ],
            "create [unique] index",
        ),
        (
            "balances",
            &[
                "CREATE TABLE balances (x INTEGER)",
                "CREATE INDEX i ON accounts (x)",
            ],
            "accounts",
        ),
        (
            "balances",
            &[
                "CREATE TABLE balances (x INTEGER)",
                "CREATE INDEX ON balances (x)",
            ],
            "name",
        ),
        (
            "balances",
            &[
                "CREATE TABLE balances (x INTEGER)",
                "CREATE VIEW v AS SELECT * FROM balances",
            ],
            "create view",
        ),
        (
            "balances",
            &[
                "CREATE TABLE balances (x INTEGER)",
                "CREATE TRIGGER t AFTER INSERT ON balances BEGIN DELETE FROM balances; END",
            ],
            "create trigger",
        ),
        (
            "balances",
            &["CREATE TABLE balances (x INTEGER)", "DROP TABLE balances"],
            "drop table",
        ),
    ];
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        for &(table, statements, needle) in cases {
            match check_declared_ddl(dialect, table, &ddl(statements)) {
                Err(GuardError::Denied(message)) => assert!(
                    message.to_lowercase().contains(needle),
                    "{dialect:?} {table} {statements:?}: {message}"
                ),
                other => panic!("{dialect:?} {table} {statements:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn declared_ddl_is_spelt_for_mysql() {
    let ddl = [
        "CREATE TABLE balances (account_uuid TEXT PRIMARY KEY, name TEXT NOT NULL, \
         note TEXT, doc JSONB, raw BYTEA, n BIGINT)"
            .to_owned(),
        "CREATE INDEX by_name ON balances (name)".to_owned(),
    ];
    let guard = clone_guard(Dialect::MySql).with_declared_ddl([("balances", &ddl[..])]);
    let table = guard.check(&ddl[0], Mode::Setup).expect("the table");
    let text = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin";
    assert_eq!(
        table.sql,
        format!(
            "CREATE TABLE zdr_r_k1_0a1b2c3d.balances (account_uuid VARCHAR(255) {text} PRIMARY KEY, \
             name VARCHAR(255) {text} NOT NULL, note LONGTEXT {text}, doc JSON, raw LONGBLOB, n BIGINT)"
        )
    );
    let index = guard.check(&ddl[1], Mode::Setup).expect("the index");
    assert_eq!(
        index.sql,
        "CREATE INDEX by_name ON zdr_r_k1_0a1b2c3d.balances(name)"
    );
    assert!(matches!(
        guard.check(
            "CREATE TABLE balances (id BIGINT AUTO_INCREMENT)",
            Mode::Setup
        ),
        Err(GuardError::InvalidSql(_))
    ));
}
