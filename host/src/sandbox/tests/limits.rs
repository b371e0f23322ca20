//! Every bound a guest can hit: size, words and operators, nesting, placeholders. Deep inputs
//! run on a thread with a 2 MiB stack, the size of a tokio blocking thread, and must come back
//! with an error instead of overflowing it.

use super::clone_guard;
use crate::sandbox::{
    Checked, Dialect, GuardError, MAX_NESTING, MAX_PARAMETERS, MAX_PATTERN_OPERATORS,
    MAX_STATEMENT_BYTES, MAX_SYNTAX_TOKENS, Mode,
};

/// Checks `sql` on a fresh thread with a 2 MiB stack.
fn check_on_small_stack(dialect: Dialect, sql: String) -> Result<Checked, GuardError> {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || clone_guard(dialect).check(&sql, Mode::Data))
        .unwrap()
        .join()
        .expect("the guard must not overflow a 2 MiB stack")
}

fn is_limit(result: &Result<Checked, GuardError>) -> bool {
    matches!(result, Err(GuardError::LimitExceeded(_)))
}

#[test]
fn ten_thousand_nested_parentheses_are_refused() {
    let sql = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(sql.len() < MAX_STATEMENT_BYTES);
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        let result = check_on_small_stack(dialect, sql.clone());
        assert!(is_limit(&result), "{dialect:?}: {result:?}");
    }
}

#[test]
fn other_deep_nestings_are_refused() {
    let nestings = [
        format!(
            "SELECT * FROM balances WHERE id IN {}1{}",
            "(".repeat(5_000),
            ")".repeat(5_000)
        ),
        format!("SELECT {}1{}", "(SELECT ".repeat(5_000), ")".repeat(5_000)),
        format!("SELECT {}1{}", "abs(".repeat(5_000), ")".repeat(5_000)),
        format!("SELECT {}1", "- ".repeat(20_000)),
        format!(
            "SELECT {}1{}",
            "CASE WHEN ".repeat(3_000),
            " THEN 1 END".repeat(3_000)
        ),
        format!(
            "SELECT * FROM {}balances{}",
            "(".repeat(5_000),
            ")".repeat(5_000)
        ),
    ];
    for sql in nestings {
        assert!(sql.len() < MAX_STATEMENT_BYTES);
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let result = check_on_small_stack(dialect, sql.clone());
            assert!(result.is_err(), "{dialect:?} {}…", &sql[..40]);
        }
    }
}

/// Chains the parser builds in a loop rather than by recursion.
fn chains(links: usize) -> Vec<String> {
    vec![
        format!("SELECT 1{}", " + 1".repeat(links)),
        format!("SELECT 1{}", " AND 1".repeat(links)),
        format!("SELECT 1{}", " || 'a'".repeat(links)),
        format!("SELECT 1{}", "::int".repeat(links)),
        format!("SELECT 1{}", " IS NULL".repeat(links)),
        format!("SELECT x{}", "[1]".repeat(links)),
        format!("SELECT x{}", " -> 1".repeat(links)),
        format!("SELECT 'a'{}", " GLOB 'a'".repeat(links)),
        format!("SELECT 1 FROM balances{}", " UNION SELECT 1".repeat(links)),
    ]
}

#[test]
fn long_operator_chains_are_refused_without_overflowing() {
    // Within the byte limit, but far over the token limit.
    for sql in chains(6_000) {
        let sql: String = sql.chars().take(MAX_STATEMENT_BYTES).collect();
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let result = check_on_small_stack(dialect, sql.clone());
            assert!(is_limit(&result), "{dialect:?} {}…: {result:?}", &sql[..20]);
        }
    }
    // Within the token limit, so the parser builds the whole deep tree: the walk refuses it,
    // and dropping it must not overflow either.
    for sql in chains(MAX_SYNTAX_TOKENS / 2 - 10) {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let result = check_on_small_stack(dialect, sql.clone());
            assert!(result.is_err(), "{dialect:?} {}…", &sql[..20]);
        }
    }
}

#[test]
fn nesting_up_to_the_limit_is_accepted_and_beyond_it_refused() {
    let chain = |links: usize| format!("SELECT balance{} FROM balances", " + 1".repeat(links));
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        let accepted = check_on_small_stack(dialect, chain(MAX_NESTING - 10));
        assert!(accepted.is_ok(), "{dialect:?}: {accepted:?}");
        let refused = check_on_small_stack(dialect, chain(MAX_NESTING + 1));
        assert!(
            matches!(&refused, Err(GuardError::LimitExceeded(m)) if m.contains("nests")),
            "{dialect:?}: {refused:?}"
        );
    }
}

#[test]
fn the_syntax_token_limit_names_itself() {
    let sql = format!(
        "SELECT {} FROM balances",
        vec!["balance"; MAX_SYNTAX_TOKENS].join(", ")
    );
    let result = clone_guard(Dialect::Sqlite).check(&sql, Mode::Data);
    assert!(
        matches!(&result, Err(GuardError::LimitExceeded(m)) if m.contains("words and operators")),
        "{result:?}"
    );
}

#[test]
fn placeholders_up_to_the_limit_are_accepted() {
    let rows: Vec<String> = (1..=MAX_PARAMETERS / 3)
        .map(|row| format!("(${}, ${}, ${})", 3 * row - 2, 3 * row - 1, 3 * row))
        .collect();
    let sql = format!(
        "INSERT INTO balances (id, account_id, balance) VALUES {}",
        rows.join(", ")
    );
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        let checked = clone_guard(dialect).check(&sql, Mode::Data).unwrap();
        assert_eq!(checked.param_count, MAX_PARAMETERS);
    }
    let bare = format!("SELECT {}", vec!["?"; MAX_PARAMETERS + 1].join(", "));
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        assert!(is_limit(&clone_guard(dialect).check(&bare, Mode::Data)));
    }
    let numbered = format!("SELECT ${}", MAX_PARAMETERS + 1);
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        assert!(is_limit(&clone_guard(dialect).check(&numbered, Mode::Data)));
    }
}

#[test]
fn a_statement_at_the_byte_limit_is_parsed() {
    let head = "SELECT '";
    let tail = "' FROM balances";
    let padding = "x".repeat(MAX_STATEMENT_BYTES - head.len() - tail.len());
    let sql = format!("{head}{padding}{tail}");
    assert_eq!(sql.len(), MAX_STATEMENT_BYTES);
    assert!(clone_guard(Dialect::Sqlite).check(&sql, Mode::Data).is_ok());
    let over = format!("{sql} ");
    assert!(is_limit(
        &clone_guard(Dialect::Sqlite).check(&over, Mode::Data)
    ));
}

#[test]
fn pattern_operator_chains_are_bounded() {
    let chain = |links: usize| format!("SELECT 'a'{}", " GLOB 'a'".repeat(links));
    let accepted = check_on_small_stack(Dialect::Sqlite, chain(MAX_PATTERN_OPERATORS));
    assert!(accepted.is_ok(), "{accepted:?}");
    let refused = check_on_small_stack(Dialect::Sqlite, chain(MAX_PATTERN_OPERATORS + 1));
    assert!(
        matches!(&refused, Err(GuardError::LimitExceeded(m)) if m.contains("GLOB")),
        "{refused:?}"
    );
}
