//! Statements a guest must not get through, for both dialects, each with the kind of refusal
//! expected and a word the message must name.

use super::clone_guard;
use crate::sandbox::{Dialect, GuardError, MAX_STATEMENT_BYTES, Mode};

/// The refusal a case expects in one dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// `GuardError::Denied`.
    D,
    /// `GuardError::InvalidSql`.
    I,
    /// `GuardError::LimitExceeded`.
    L,
    /// Not meaningful in this dialect (for example a word that is only a column name there).
    Skip,
}

use Want::{D, I, L, Skip};

/// (statement, SQLite, PostgreSQL, a word a denial must mention).
const CASES: &[(&str, Want, Want, &str)] = &[
    // Tables that are not declared, however they are spelled or qualified.
    ("SELECT * FROM other_table", D, D, "other_table"),
    ("SELECT * FROM stored_events", D, D, "stored_events"),
    ("SELECT * FROM \"stored_events\"", D, D, "stored_events"),
    ("SELECT * FROM `stored_events`", D, I, "stored_events"),
    ("SELECT * FROM [stored_events]", D, I, "stored_events"),
    ("SELECT * FROM zdr_projectors", D, D, "zdr_projectors"),
    ("SELECT * FROM zdr_checkpoints", D, D, "zdr_checkpoints"),
    ("SELECT * FROM sqlite_master", D, D, "sqlite_master"),
    ("SELECT * FROM sqlite_schema", D, D, "sqlite_schema"),
    (
        "SELECT name FROM sqlite_temp_master",
        D,
        D,
        "sqlite_temp_master",
    ),
    ("SELECT * FROM pg_tables", D, D, "pg_tables"),
    (
        "SELECT * FROM pg_catalog.pg_tables",
        D,
        D,
        "pg_catalog.pg_tables",
    ),
    (
        "SELECT * FROM information_schema.tables",
        D,
        D,
        "information_schema.tables",
    ),
    ("SELECT * FROM main.balances", D, D, "main.balances"),
    ("SELECT * FROM \"main\".\"balances\"", D, D, "main.balances"),
    ("SELECT * FROM `main`.`balances`", D, I, "main.balances"),
    ("SELECT * FROM [main].[balances]", D, I, "main.balances"),
    ("SELECT * FROM Main.\"Balances\"", D, D, "main.balances"),
    ("SELECT * FROM temp.x", D, D, "temp.x"),
    ("SELECT * FROM public.balances", D, D, "public.balances"),
    (
        "SELECT * FROM other_schema.balances",
        D,
        D,
        "other_schema.balances",
    ),
    ("SELECT * FROM ONLY stored_events", D, D, "only"),
    (
        "INSERT INTO main.balances (id) VALUES (1)",
        D,
        D,
        "main.balances",
    ),
    (
        "UPDATE main.balances SET balance = 1",
        D,
        D,
        "main.balances",
    ),
    ("DELETE FROM temp.balances", D, D, "temp.balances"),
    // Other tables reached from inside an allowed statement.
    (
        "SELECT * FROM balances WHERE id IN (SELECT aggregate_uuid FROM stored_events)",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT * FROM balances WHERE EXISTS (SELECT 1 FROM zdr_replays)",
        D,
        D,
        "zdr_replays",
    ),
    (
        "SELECT (SELECT count(*) FROM stored_events)",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT * FROM balances ORDER BY (SELECT max(id) FROM stored_events)",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT CASE WHEN id > 0 THEN (SELECT 1 FROM stored_events) END FROM balances",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT count(*) FILTER (WHERE id IN (SELECT id FROM stored_events)) FROM balances",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT row_number() OVER (ORDER BY (SELECT 1 FROM stored_events)) FROM balances",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT 1 FROM balances LIMIT (SELECT count(*) FROM stored_events)",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT * FROM balances JOIN stored_events ON 1 = 1",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT * FROM balances NATURAL JOIN stored_events",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT * FROM balances CROSS JOIN zdr_projectors",
        D,
        D,
        "zdr_projectors",
    ),
    (
        "SELECT * FROM (SELECT * FROM stored_events) AS s",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT * FROM balances JOIN (accounts JOIN stored_events USING (id)) USING (id)",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT id FROM balances UNION SELECT id FROM stored_events",
        D,
        D,
        "stored_events",
    ),
    (
        "SELECT group_concat(name) FROM (SELECT name FROM sqlite_master)",
        D,
        D,
        "sqlite_master",
    ),
    (
        "WITH x AS (SELECT * FROM stored_events) SELECT * FROM x",
        D,
        D,
        "stored_events",
    ),
    (
        "INSERT INTO balances SELECT id, 0 FROM stored_events",
        D,
        D,
        "stored_events",
    ),
    (
        "INSERT INTO stored_events (id) VALUES (1)",
        D,
        D,
        "stored_events",
    ),
    (
        "INSERT INTO balances (id) VALUES ((SELECT max(id) FROM stored_events))",
        D,
        D,
        "stored_events",
    ),
    (
        "INSERT INTO balances (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET balance = (SELECT count(*) FROM stored_events)",
        D,
        D,
        "stored_events",
    ),
    (
        "INSERT INTO balances (id) VALUES (1) RETURNING (SELECT 1 FROM stored_events)",
        D,
        D,
        "stored_events",
    ),
    (
        "UPDATE balances SET balance = 0 FROM zdr_checkpoints WHERE balances.id = zdr_checkpoints.id",
        D,
        D,
        "zdr_checkpoints",
    ),
    (
        "UPDATE stored_events SET event_class = 'x'",
        D,
        D,
        "stored_events",
    ),
    (
        "UPDATE balances SET balance = (SELECT 1 FROM sqlite_master)",
        D,
        D,
        "sqlite_master",
    ),
    (
        "DELETE FROM balances USING stored_events WHERE balances.id = stored_events.id",
        D,
        D,
        "stored_events",
    ),
    ("DELETE FROM stored_events", D, D, "stored_events"),
    (
        "DELETE FROM balances WHERE id IN (SELECT id FROM zdr_projectors)",
        D,
        D,
        "zdr_projectors",
    ),
    // A CTE named like a real table must not redirect a write to it.
    (
        "WITH stored_events AS (SELECT 1) INSERT INTO stored_events VALUES (1)",
        D,
        D,
        "stored_events",
    ),
    ("WITH c AS (SELECT 1) DELETE FROM c", D, D, "\"c\""),
    // Statement kinds outside the allow-list.
    ("ATTACH DATABASE 'other.db' AS other", D, D, "attach"),
    ("DETACH DATABASE other", D, D, "detach"),
    ("PRAGMA writable_schema = 1", D, D, "pragma"),
    ("PRAGMA table_info(balances)", D, D, "pragma"),
    ("BEGIN", D, D, "begin"),
    ("BEGIN IMMEDIATE", D, D, "begin"),
    ("COMMIT", D, D, "commit"),
    ("ROLLBACK", D, D, "rollback"),
    ("END", D, D, "end"),
    ("SAVEPOINT s1", D, D, "savepoint"),
    ("RELEASE SAVEPOINT s1", D, D, "release"),
    ("ROLLBACK TO SAVEPOINT s1", D, D, "rollback"),
    ("DROP TABLE balances", D, D, "drop table"),
    ("DROP INDEX by_balance", D, D, "drop index"),
    (
        "ALTER TABLE balances ADD COLUMN x INTEGER",
        D,
        D,
        "alter table",
    ),
    ("ALTER TABLE balances RENAME TO b2", D, D, "alter table"),
    ("CREATE TABLE evil (id INTEGER)", D, D, "create table"),
    ("CREATE TABLE balances (id INTEGER)", D, D, "create table"),
    ("CREATE INDEX i ON balances (id)", D, D, "create index"),
    (
        "CREATE VIEW v AS SELECT * FROM stored_events",
        D,
        D,
        "create view",
    ),
    ("CREATE TEMP TABLE x (a INTEGER)", D, D, "create temp table"),
    (
        "CREATE VIRTUAL TABLE f USING fts5(x)",
        D,
        D,
        "create virtual table",
    ),
    ("VACUUM", D, D, "vacuum"),
    ("ANALYZE balances", D, D, "analyze"),
    ("EXPLAIN SELECT * FROM balances", D, D, "explain"),
    ("REINDEX balances", D, D, "reindex"),
    ("COPY balances TO '/tmp/x'", D, D, "copy"),
    ("COPY balances FROM PROGRAM 'id'", D, D, "copy"),
    ("SET search_path = other", D, D, "set"),
    ("SET LOCAL lock_timeout = 0", D, D, "set"),
    ("GRANT ALL ON balances TO public", D, D, "grant"),
    ("REVOKE ALL ON balances FROM public", D, D, "revoke"),
    ("LISTEN chan", D, D, "listen"),
    ("NOTIFY chan, 'x'", D, D, "notify"),
    ("UNLISTEN chan", D, D, "unlisten"),
    ("LOCK TABLE balances IN ACCESS EXCLUSIVE MODE", D, D, "lock"),
    ("CALL proc()", D, D, "call"),
    ("PREPARE p AS SELECT 1", D, D, "prepare"),
    ("EXECUTE p", D, D, "execute"),
    ("DEALLOCATE p", D, D, "deallocate"),
    ("TRUNCATE balances", D, D, "truncate"),
    ("LOAD 'x'", D, D, "load"),
    ("DO $$ BEGIN PERFORM 1; END $$", D, D, ""),
    ("TABLE stored_events", D, D, "table"),
    ("SELECT * INTO newtable FROM balances", D, D, "into"),
    // More than one statement, however it is hidden.
    (
        "SELECT 1; DELETE FROM balances",
        D,
        D,
        "multiple statements",
    ),
    (
        "SELECT 1; -- x\nDROP TABLE balances",
        D,
        D,
        "multiple statements",
    ),
    (
        "SELECT 1 /* ; */; ATTACH 'x' AS y",
        D,
        D,
        "multiple statements",
    ),
    ("SELECT ';'; VACUUM", D, D, "multiple statements"),
    (
        "CREATE TRIGGER t AFTER INSERT ON balances BEGIN DELETE FROM accounts; END",
        D,
        D,
        "create trigger",
    ),
    // Functions that read the clock, randomness, files, the server or the session.
    ("SELECT load_extension('evil.so')", D, D, "load_extension"),
    ("SELECT random()", D, D, "random"),
    ("SELECT randomblob(16)", D, D, "randomblob"),
    ("SELECT abs(random())", D, D, "random"),
    (
        "INSERT INTO balances (id, at) VALUES (1, datetime('now'))",
        D,
        D,
        "datetime",
    ),
    ("SELECT date('now')", D, D, "date"),
    ("SELECT time('now')", D, D, "time"),
    ("SELECT julianday('now')", D, D, "julianday"),
    ("SELECT strftime('%s', 'now')", D, D, "strftime"),
    ("SELECT CURRENT_TIMESTAMP", D, D, "current_timestamp"),
    ("SELECT CURRENT_DATE", D, D, "current_date"),
    ("SELECT current_time", D, D, "current_time"),
    ("SELECT now()", D, D, "now"),
    ("SELECT 'now'::timestamp", D, D, "now"),
    ("SELECT TIMESTAMP 'now'", D, D, "now"),
    // The clock through date and time input: any cast or typed literal of a date or time
    // type whose operand is not a parameter or a literal written in full; on PostgreSQL also
    // a bare string that it would read as a time relative to now.
    (
        "SELECT CAST('tomorrow 10:00' AS timestamp)",
        D,
        D,
        "tomorrow",
    ),
    ("SELECT TIMESTAMP 'yesterday 12:00'", D, D, "yesterday"),
    ("SELECT DATE 'today' + 1", D, D, "today"),
    ("SELECT CAST('n' || 'ow' AS timestamptz)", D, D, "cast to"),
    ("SELECT CAST(upper('now') AS date)", D, D, "cast to"),
    (
        "SELECT CAST(CAST('today' AS text) AS date)",
        D,
        D,
        "cast to",
    ),
    ("SELECT ' Now '::timestamptz", D, D, "now"),
    ("SELECT '10:00 tomorrow'::time", D, D, "tomorrow"),
    (
        "SELECT CAST(name AS timestamp) FROM balances",
        D,
        D,
        "cast to",
    ),
    ("SELECT CAST('31/01/2024' AS date)", D, D, "in full"),
    (
        "UPDATE balances SET at = 'tomorrow 10:00' WHERE id = 1",
        Skip,
        D,
        "tomorrow",
    ),
    ("SELECT id FROM balances WHERE at < 'now'", Skip, D, "now"),
    ("SELECT readfile('/etc/passwd')", D, D, "readfile"),
    ("SELECT writefile('/tmp/x', 'y')", D, D, "writefile"),
    ("SELECT edit('x')", D, D, "edit"),
    ("SELECT fts3_tokenizer('simple')", D, D, "fts3_tokenizer"),
    ("SELECT sqlite_version()", D, D, "sqlite_version"),
    (
        "SELECT printf('%s', sqlite_version())",
        D,
        D,
        "sqlite_version",
    ),
    ("SELECT changes()", D, D, "changes"),
    ("SELECT last_insert_rowid()", D, D, "last_insert_rowid"),
    ("SELECT zeroblob(1000000000)", D, D, "zeroblob"),
    ("SELECT pg_read_file('/etc/passwd')", D, D, "pg_read_file"),
    (
        "SELECT pg_read_binary_file('/etc/passwd')",
        D,
        D,
        "pg_read_binary_file",
    ),
    ("SELECT pg_ls_dir('.')", D, D, "pg_ls_dir"),
    ("SELECT pg_sleep(10)", D, D, "pg_sleep"),
    ("SELECT pg_catalog.pg_sleep(1)", D, D, "pg_catalog.pg_sleep"),
    ("SELECT dblink('host=x', 'select 1')", D, D, "dblink"),
    (
        "SELECT * FROM dblink('host=x', 'select 1') AS t(a)",
        D,
        D,
        "dblink",
    ),
    ("SELECT lo_import('/etc/passwd')", D, D, "lo_import"),
    ("SELECT lo_export(1, '/tmp/x')", D, D, "lo_export"),
    (
        "SELECT set_config('search_path', 'x', false)",
        D,
        D,
        "set_config",
    ),
    (
        "SELECT current_setting('search_path')",
        D,
        D,
        "current_setting",
    ),
    ("SELECT txid_current()", D, D, "txid_current"),
    ("SELECT nextval('seq')", D, D, "nextval"),
    ("SELECT pg_advisory_lock(1)", D, D, "pg_advisory_lock"),
    (
        "SELECT query_to_xml('select * from stored_events', true, true, '')",
        D,
        D,
        "query_to_xml",
    ),
    ("SELECT version()", D, D, "version"),
    ("SELECT pg_catalog.now()", D, D, "pg_catalog.now"),
    ("SELECT pg_catalog.lower('x')", D, D, "pg_catalog.lower"),
    ("SELECT current_user", Skip, D, "current_user"),
    ("SELECT session_user", Skip, D, "session_user"),
    ("SELECT user", Skip, D, "user"),
    // Table-valued functions and LATERAL.
    (
        "SELECT * FROM pragma_table_info('balances')",
        D,
        D,
        "pragma_table_info",
    ),
    (
        "SELECT * FROM pragma_database_list",
        D,
        D,
        "pragma_database_list",
    ),
    ("SELECT * FROM json_each('[1,2]')", D, D, "json_each"),
    (
        "SELECT * FROM generate_series(1, 10)",
        D,
        D,
        "generate_series",
    ),
    ("SELECT * FROM read_csv('x.csv')", D, D, "read_csv"),
    (
        "SELECT * FROM balances, LATERAL (SELECT * FROM accounts) AS a",
        D,
        D,
        "lateral",
    ),
    ("SELECT x FROM balances WHERE x IN stored_events", I, I, ""),
    // Recursive and shadowing CTEs.
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
        D,
        D,
        "recursive",
    ),
    (
        "WITH r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
        D,
        D,
        "\"r\"",
    ),
    (
        "WITH balances AS (SELECT 1 AS x UNION ALL SELECT x + 1 FROM balances) SELECT * FROM balances",
        D,
        D,
        "balances",
    ),
    (
        "WITH zdr_r_k1__balances AS (SELECT * FROM balances) SELECT * FROM zdr_r_k1__balances",
        D,
        D,
        "zdr_r_k1__balances",
    ),
    // Types, operators and expression forms outside the allow-list.
    ("SELECT 'x'::regclass", D, D, "regclass"),
    ("SELECT CAST('stored_events' AS regclass)", D, D, "regclass"),
    (
        "SELECT CAST(balance AS other.money) FROM balances",
        D,
        D,
        "other.money",
    ),
    ("SELECT balance::int[] FROM balances", Skip, D, "array"),
    ("SELECT CAST(balance AS int[]) FROM balances", I, D, "array"),
    (
        "SELECT name COLLATE \"pg_catalog\".\"C\" FROM balances",
        D,
        D,
        "pg_catalog.c",
    ),
    ("SELECT name FROM balances WHERE name ~ 'a'", D, D, "~"),
    (
        "SELECT name FROM balances WHERE name REGEXP 'a'",
        D,
        D,
        "regexp",
    ),
    ("SELECT * FROM balances WHERE id = ANY($1)", D, D, "any"),
    ("SELECT ARRAY[1, 2]", Skip, D, "array"),
    ("SELECT (balances).id FROM balances", D, D, "field access"),
    ("SELECT * FROM balances FOR UPDATE", D, D, "for update"),
    (
        "SELECT main.balances.id FROM balances",
        D,
        D,
        "main.balances.id",
    ),
    // Other write forms.
    (
        "REPLACE INTO stored_events VALUES (1)",
        D,
        I,
        "stored_events",
    ),
    (
        "INSERT INTO balances (id) VALUES (1) ON CONFLICT ON CONSTRAINT pk DO NOTHING",
        D,
        D,
        "on constraint",
    ),
    (
        "INSERT OR REPLACE INTO balances (id) VALUES (1)",
        Skip,
        D,
        "insert or",
    ),
    // Placeholders the guard does not accept.
    ("SELECT :name", I, I, ""),
    ("SELECT @name", I, D, ""),
    ("SELECT $name", I, I, ""),
    ("SELECT ?, $1", I, I, ""),
    ("SELECT ?1", I, I, ""),
    ("SELECT $0", I, I, ""),
    ("SELECT $1000", L, L, ""),
    ("SELECT $99999999999999999999999999", L, L, ""),
    // Literals that sqlparser would print back with another meaning.
    ("SELECT 0x10", I, I, ""),
    // Nothing, or nesting beyond the parser's limit.
    ("", I, I, ""),
    ("-- just a comment", I, I, ""),
    (";;", I, I, ""),
];

fn kind(result: &Result<crate::sandbox::Checked, GuardError>) -> Option<Want> {
    match result {
        Ok(_) => None,
        Err(GuardError::Denied(_)) => Some(D),
        Err(GuardError::InvalidSql(_)) => Some(I),
        Err(GuardError::LimitExceeded(_)) => Some(L),
    }
}

#[test]
fn hostile_statements_are_refused_in_both_dialects() {
    assert!(CASES.len() >= 60, "{} cases", CASES.len());
    let mut failures = Vec::new();
    for dialect in [Dialect::Sqlite, Dialect::Postgres, Dialect::MySql] {
        let guard = clone_guard(dialect);
        for &(sql, sqlite, postgres, needle) in CASES {
            // MySQL statements are read as PostgreSQL's: the same cases hold.
            let want = match dialect {
                Dialect::Sqlite => sqlite,
                Dialect::Postgres | Dialect::MySql => postgres,
            };
            if want == Skip {
                continue;
            }
            let result = guard.check(sql, Mode::Data);
            // MySQL refuses backtick-quoted names by name, where PostgreSQL cannot parse them.
            let backtick = dialect == Dialect::MySql && sql.contains('`') && want == I;
            if kind(&result) != Some(want) && !(backtick && kind(&result) == Some(D)) {
                failures.push(format!(
                    "{dialect:?} {sql:?}: want {want:?}, got {result:?}"
                ));
                continue;
            }
            if let Err(GuardError::Denied(message)) = &result
                && !backtick
                && !message.to_lowercase().contains(needle)
            {
                failures.push(format!(
                    "{dialect:?} {sql:?}: {message:?} does not name {needle:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn denials_are_lowercase_and_say_what_is_allowed() {
    for dialect in [Dialect::Sqlite, Dialect::Postgres, Dialect::MySql] {
        let guard = clone_guard(dialect);
        for &(sql, ..) in CASES {
            if let Err(GuardError::Denied(message)) = guard.check(sql, Mode::Data) {
                let first = message.chars().next().unwrap_or(' ');
                assert!(
                    first.is_lowercase() || first == '"',
                    "{dialect:?} {sql:?}: {message}"
                );
                assert!(
                    message.contains(": ") || message.contains("(declared:"),
                    "{dialect:?} {sql:?}: {message}"
                );
            }
        }
    }
}

#[test]
fn undeclared_tables_are_named_with_the_declared_ones() {
    let error = clone_guard(Dialect::Sqlite)
        .check("SELECT * FROM stored_events", Mode::Data)
        .unwrap_err();
    assert_eq!(
        error.message(),
        "table \"stored_events\" is not declared by this projector (declared: accounts, balances)"
    );
    let error = clone_guard(Dialect::Postgres)
        .check("ATTACH DATABASE 'x' AS y", Mode::Data)
        .unwrap_err();
    assert_eq!(
        error.message(),
        "statement kind ATTACH is not allowed: projectors may run SELECT, INSERT, UPDATE and \
         DELETE on their declared tables"
    );
}

#[test]
fn a_statement_over_the_size_limit_is_refused_before_parsing() {
    let padding = "x".repeat(MAX_STATEMENT_BYTES);
    let sql = format!("SELECT '{padding}'");
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        assert!(matches!(
            clone_guard(dialect).check(&sql, Mode::Data),
            Err(GuardError::LimitExceeded(m)) if m.contains("bytes")
        ));
    }
}

/// What only MySQL and MariaDB execute, each refused with a message naming it.
const MYSQL_CASES: &[(&str, &str)] = &[
    ("SELECT /*! SLEEP(10) */ 1 FROM balances", "/*!"),
    ("SELECT /*!50000 LOAD_FILE('/etc/passwd') */ 1", "/*!"),
    ("SELECT /*+ MAX_EXECUTION_TIME(1) */ 1 FROM balances", "/*+"),
    ("SELECT * FROM `balances`", "backtick"),
    ("SELECT * FROM balances WHERE name = `x`", "backtick"),
    ("SELECT @x", "variables"),
    ("SELECT @@version", "variables"),
    (
        "UPDATE balances SET balance = @@global.max_connections",
        "variables",
    ),
    ("SELECT LOAD_FILE('/etc/passwd')", "load_file"),
    ("SELECT SLEEP(5)", "sleep"),
    ("SELECT BENCHMARK(100000000, md5('x'))", "benchmark"),
    ("SELECT GET_LOCK('zdr:app:writer', 0)", "get_lock"),
    ("SELECT RELEASE_LOCK('zdr:app:writer')", "release_lock"),
    ("SELECT * FROM balances INTO OUTFILE '/tmp/x'", ""),
    ("HANDLER balances OPEN", "handler"),
    ("LOCK TABLES balances WRITE", "lock"),
    ("SET @x = 1", "set"),
    ("SET SESSION sql_mode = ''", "set"),
    ("START TRANSACTION", "start"),
    ("COMMIT", "commit"),
    ("SELECT utc_timestamp FROM balances", "clock"),
    ("SELECT NOW()", "clock"),
    ("SELECT SYSDATE()", "sysdate"),
    ("SELECT UUID()", "uuid"),
    ("SELECT current_user", "session"),
    ("SELECT name->'$.a' FROM balances", "json_extract"),
    (
        "INSERT INTO balances (id) VALUES (1) ON DUPLICATE KEY UPDATE id = 2",
        "",
    ),
    ("INSERT INTO balances AS b (id) VALUES (1)", "alias"),
    ("REPLACE INTO balances (id) VALUES (1)", ""),
    ("SELECT * FROM mysql.user", "qualified"),
    ("SELECT * FROM information_schema.tables", "qualified"),
    ("SELECT * FROM zdr_r_k1_0a1b2c3d.balances", "qualified"),
    ("SELECT 1 # comment", ""),
    ("SELECT $$x$$ FROM balances", ""),
];

#[test]
fn what_only_mysql_executes_is_refused() {
    let guard = clone_guard(Dialect::MySql);
    let mut failures = Vec::new();
    for &(sql, needle) in MYSQL_CASES {
        match guard.check(sql, Mode::Data) {
            Ok(checked) => failures.push(format!("{sql:?} passed as {:?}", checked.sql)),
            Err(err) if !err.message().to_lowercase().contains(needle) => {
                failures.push(format!("{sql:?}: {err} does not name {needle:?}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn mysql_statements_are_printed_for_its_session() {
    let guard = clone_guard(Dialect::MySql).with_declared_ddl([
        (
            "balances",
            &["CREATE TABLE balances (id TEXT PRIMARY KEY, name TEXT, balance BIGINT)".to_owned()]
                [..],
        ),
        (
            "accounts",
            &["CREATE TABLE accounts (id TEXT PRIMARY KEY, email TEXT UNIQUE)".to_owned()][..],
        ),
    ]);
    let check = |sql: &str| guard.check(sql, Mode::Data);
    let checked = check("SELECT $2, CAST($1 AS BIGINT), x::text FROM balances WHERE id = $2")
        .expect("a select");
    assert_eq!(
        checked.sql,
        "SELECT ?, CAST(? AS SIGNED), CAST(x AS CHAR) FROM zdr_r_k1_0a1b2c3d.balances WHERE id = ?"
    );
    assert_eq!(checked.param_order, [2, 1, 2]);
    let upsert = check(
        "INSERT INTO balances (id, balance) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE \
         SET balance = balances.balance + excluded.balance, name = excluded.name",
    )
    .expect("an upsert on the primary key");
    assert_eq!(
        upsert.sql,
        "INSERT INTO zdr_r_k1_0a1b2c3d.balances (id, balance) VALUES (?, ?) ON DUPLICATE KEY \
         UPDATE balance = balances.balance + VALUES(balance), name = VALUES(name)"
    );
    let nothing = check("INSERT INTO balances (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .expect("do nothing");
    assert!(
        nothing.sql.ends_with("ON DUPLICATE KEY UPDATE id = id"),
        "{}",
        nothing.sql
    );
    for (sql, needle) in [
        (
            "INSERT INTO accounts (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET email = excluded.email",
            "one unique key",
        ),
        (
            "INSERT INTO balances (id) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            "one unique key",
        ),
        (
            "INSERT INTO balances (id, balance) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE \
             SET balance = excluded.balance WHERE balances.balance < excluded.balance",
            "case when",
        ),
        (
            "INSERT INTO balances (id, balance) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE \
             SET balance = excluded.balance, name = balance",
            "left to right",
        ),
        (
            "INSERT INTO balances (id) VALUES ($1) ON CONFLICT (id) DO UPDATE \
             SET name = (SELECT name FROM accounts)",
            "subquery",
        ),
    ] {
        match check(sql) {
            Err(GuardError::Denied(message)) => {
                assert!(message.to_lowercase().contains(needle), "{sql}: {message}")
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
}
