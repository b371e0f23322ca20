//! Random SQL-ish input, for both dialects: the guard never panics, and whatever it accepts, read
//! back by `sqlparser`, reaches only the physical tables of declared tables (or the statement's
//! own CTEs).

use std::ops::ControlFlow;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use sqlparser::ast::{ObjectName, Query, Statement, Visit, Visitor};
use sqlparser::parser::Parser;

use super::clone_guard;
use crate::sandbox::{Dialect, Guard, Mode, parse};

/// Words and symbols the token soup is made of: keywords, declared and undeclared tables,
/// qualified names, quotes, functions, placeholders, comments.
const VOCABULARY: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "WITH",
    "RECURSIVE",
    "AS",
    "JOIN",
    "LEFT",
    "ON",
    "USING",
    "UNION",
    "ALL",
    "ORDER",
    "BY",
    "LIMIT",
    "GROUP",
    "HAVING",
    "AND",
    "OR",
    "NOT",
    "IN",
    "EXISTS",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "CAST",
    "NULL",
    "LATERAL",
    "ATTACH",
    "PRAGMA",
    "DROP",
    "TABLE",
    "CREATE",
    "INDEX",
    "BEGIN",
    "RETURNING",
    "CONFLICT",
    "DO",
    "NOTHING",
    "DISTINCT",
    "balances",
    "accounts",
    "stored_events",
    "zdr_projectors",
    "sqlite_master",
    "main",
    "temp",
    "pg_catalog",
    "information_schema",
    "zdr_r_k1__balances",
    "id",
    "balance",
    "name",
    "excluded",
    "b",
    "c",
    "\"Balances\"",
    "[balances]",
    "`balances`",
    "\"stored_events\"",
    "main.balances",
    "balances.id",
    "excluded.balance",
    "count(*)",
    "sum(",
    "random()",
    "abs(",
    "load_extension(",
    "json_each(",
    "pragma_table_info(",
    "now()",
    "lower(",
    "CURRENT_TIMESTAMP",
    "(",
    ")",
    ",",
    ".",
    ";",
    "*",
    "=",
    "+",
    "-",
    "<",
    "||",
    "::",
    "'",
    "\"",
    "`",
    "[",
    "]",
    "1",
    "0x1",
    "'a'",
    "'it''s'",
    "$1",
    "$2",
    "?",
    "?1",
    ":x",
    "@y",
    "$z",
    "-- c\n",
    "/* c */",
    "$$",
    "x'00'",
];

/// A run of vocabulary words, joined by single spaces.
fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(VOCABULARY), 1..40).prop_map(|words| words.join(" "))
}

/// Mostly declared tables (however spelled) and CTEs, sometimes anything else.
fn relation() -> impl Strategy<Value = String> {
    let declared = prop::sample::select(
        &[
            "balances",
            "accounts",
            "\"Balances\"",
            "[accounts]",
            "c",
            "(SELECT * FROM accounts)",
        ][..],
    );
    let other = prop::sample::select(
        &[
            "stored_events",
            "zdr_projectors",
            "sqlite_master",
            "main.balances",
            "public.accounts",
            "zdr_r_k1__balances",
            "pragma_table_info('x')",
            "(SELECT * FROM stored_events)",
        ][..],
    );
    prop_oneof![4 => declared, 1 => other].prop_map(str::to_owned)
}

/// Expressions, possibly with subqueries over random relations.
fn expression() -> impl Strategy<Value = String> {
    let plain = prop::sample::select(
        &[
            "id",
            "balance",
            "b.id",
            "balances.balance",
            "excluded.balance",
            "1",
            "'x'",
            "NULL",
            "$1",
            "$2",
        ][..],
    );
    let odd = prop::sample::select(
        &[
            "?",
            ":x",
            "random()",
            "CURRENT_TIMESTAMP",
            "user",
            "0x10",
            "x'00'",
        ][..],
    );
    let leaf = prop_oneof![6 => plain, 1 => odd].prop_map(str::to_owned);
    leaf.prop_recursive(4, 24, 3, |inner| {
        let operator = prop::sample::select(&["+", "=", "AND", "||", "<", "GLOB"][..]);
        let function = prop::sample::select(
            &[
                "abs",
                "lower",
                "coalesce",
                "count",
                "load_extension",
                "json_extract",
            ][..],
        );
        prop_oneof![
            (inner.clone(), operator, inner.clone())
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            (function, inner.clone()).prop_map(|(f, a)| format!("{f}({a})")),
            (inner.clone(), relation()).prop_map(|(e, r)| format!("(SELECT {e} FROM {r})")),
            (inner.clone(), relation()).prop_map(|(e, r)| format!("EXISTS (SELECT {e} FROM {r})")),
            (inner.clone(), relation()).prop_map(|(e, r)| format!("{e} IN (SELECT id FROM {r})")),
            inner.prop_map(|e| format!("CASE WHEN {e} THEN 1 ELSE 2 END")),
        ]
    })
}

/// Statements shaped like projector SQL, over random relations and expressions.
fn shaped() -> impl Strategy<Value = String> {
    prop_oneof![
        (expression(), relation(), relation(), expression()).prop_map(|(e, r1, r2, w)| {
            format!("SELECT {e} FROM {r1} AS b JOIN {r2} ON {w} WHERE {w} ORDER BY 1 LIMIT $1")
        }),
        (relation(), expression(), expression()).prop_map(|(r, cte, e)| {
            format!("WITH c AS (SELECT {cte} AS id FROM {r}) SELECT {e} FROM c")
        }),
        (relation(), expression(), expression()).prop_map(|(r, e, f)| {
            format!(
                "INSERT INTO {r} (id, balance) VALUES ({e}, $2) ON CONFLICT (id) DO UPDATE SET \
                 balance = balances.balance + {f}"
            )
        }),
        (relation(), relation(), expression())
            .prop_map(|(r, s, e)| { format!("INSERT INTO {r} (id) SELECT {e} FROM {s}") }),
        (relation(), relation(), expression())
            .prop_map(|(r, s, e)| { format!("UPDATE {r} SET balance = {e} FROM {s} WHERE {e}") }),
        (relation(), relation(), expression())
            .prop_map(|(r, s, e)| { format!("DELETE FROM {r} USING {s} WHERE {e} RETURNING id") }),
        (relation(), expression()).prop_map(|(r, e)| format!("{e}; DELETE FROM {r}")),
    ]
}

/// Every relation the rewritten statement names, read back with `sqlparser`.
struct Relations {
    names: Vec<String>,
    ctes: Vec<String>,
}

impl Visitor for Relations {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.names.push(relation.to_string());
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            self.ctes.extend(
                with.cte_tables
                    .iter()
                    .map(|cte| cte.alias.name.value.to_lowercase()),
            );
        }
        ControlFlow::Continue(())
    }
}

/// Checks `sql`; if the guard accepts it, re-parses the result and checks every relation.
/// Returns whether it was accepted.
fn accepted_statement_stays_inside(guard: &Guard, sql: &str) -> Result<bool, TestCaseError> {
    let Ok(checked) = guard.check(sql, Mode::Data) else {
        return Ok(false);
    };
    let dialect = parse::parser_dialect(guard.dialect());
    let statements: Vec<Statement> = Parser::parse_sql(dialect, &checked.sql).map_err(|e| {
        TestCaseError::fail(format!("{sql:?} → {:?} does not parse: {e}", checked.sql))
    })?;
    prop_assert_eq!(statements.len(), 1);
    let mut relations = Relations {
        names: Vec::new(),
        ctes: Vec::new(),
    };
    let _ = statements[0].visit(&mut relations);
    let physical: Vec<String> = guard
        .tables()
        .map(|(_, physical)| match &physical.schema {
            Some(schema) => format!("{schema}.{}", physical.name),
            None => physical.name.clone(),
        })
        .collect();
    for name in &relations.names {
        prop_assert!(
            physical.contains(name) || relations.ctes.contains(&name.to_lowercase()),
            "{:?} → {:?} reaches {}",
            sql,
            checked.sql,
            name
        );
    }
    for table in &checked.tables {
        prop_assert!(guard.tables().any(|(logical, _)| logical == table));
    }
    Ok(true)
}

proptest! {
    #![proptest_config(Config { cases: 2000, ..Config::default() })]

    #[test]
    fn token_soup_never_escapes(sql in token_soup()) {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            accepted_statement_stays_inside(&clone_guard(dialect), &sql)?;
        }
    }

    #[test]
    fn shaped_statements_never_escape(sql in shaped()) {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            accepted_statement_stays_inside(&clone_guard(dialect), &sql)?;
        }
    }

    #[test]
    fn arbitrary_text_never_panics(sql in "\\PC{0,200}") {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            for mode in [Mode::Data, Mode::Setup] {
                let _ = clone_guard(dialect).check(&sql, mode);
            }
        }
    }
}

#[test]
fn the_shaped_generator_produces_accepted_statements() {
    let mut runner = TestRunner::deterministic();
    let strategy = shaped();
    let guard = clone_guard(Dialect::Sqlite);
    let mut accepted = 0;
    for _ in 0..500 {
        let sql = strategy.new_tree(&mut runner).unwrap().current();
        if accepted_statement_stays_inside(&guard, &sql).unwrap() {
            accepted += 1;
        }
    }
    assert!(
        accepted >= 50,
        "only {accepted} of 500 generated statements were accepted"
    );
}
