//! The SQL guard: every statement a projector sends is parsed, checked against an allow-list and
//! rewritten before the host runs it.
//!
//! A projector writes SQL against *logical* table names (`balances`). Each target it writes to
//! (the live tables, or a replay's clone) maps those names to *physical* ones (`zdr_r_k1__balances`
//! on SQLite, `zdr_r_k1.balances` on PostgreSQL). A [`Guard`] holds one such mapping; its
//! [`Guard::check`] parses one statement, refuses anything outside the allow-list with a
//! [`GuardError`] that names the offending table, function or statement kind, and returns the
//! statement rewritten to physical names and the backend's native placeholders. [`GuardCache`]
//! memoises that per SQL text so parsing stays off the per-event path.
//!
//! Nothing here does I/O: the module is pure functions over `sqlparser`'s AST, tested with tables
//! of cases. The files split by concern: `parse` (tokens, limits, placeholders, one statement),
//! `rewrite` (the allow-list walk over statements and queries), `writes` (the walk over
//! `INSERT`, `UPDATE` and `DELETE`), `expr` (the walk over expressions), `ddl` (setup-mode
//! `CREATE TABLE` and `CREATE INDEX`, and [`check_declared_ddl`]), `verify` (an independent
//! re-check of the result), `allow` (the lists of functions, operators and types), `names`
//! (identifier normalisation and quoting), `cache` ([`GuardCache`]).

mod allow;
mod cache;
mod ddl;
mod expr;
mod mysql;
mod names;
mod parse;
mod rewrite;
#[cfg(test)]
mod tests;
mod verify;
mod writes;

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};

use sqlparser::ast::Statement;

pub use cache::{GuardCache, MAX_CACHED_BYTES, MAX_CACHED_STATEMENTS};
pub use ddl::check_declared_ddl;
pub use mysql::{KEY_TEXT_LENGTH, SESSION_SQL_MODE, TableKeys, own_statement, positional};

/// The longest statement the guard accepts, in bytes.
///
/// A projector's statements are short and fixed (values travel as parameters), so anything this
/// long is a mistake or an attack; the bound keeps the parser's time and memory, and the size of
/// cached statements, small.
pub const MAX_STATEMENT_BYTES: usize = 64 * 1024;

/// The most placeholders one statement may use (the highest `$N`, or the number of `?`).
///
/// 999 is SQLite's historical default for `SQLITE_MAX_VARIABLE_NUMBER`, so a statement that passes
/// here binds on every SQLite build; PostgreSQL allows more, but a projector needs far fewer.
pub const MAX_PARAMETERS: usize = 999;

/// The most words and operators one statement may contain (literals, placeholders, commas and
/// parentheses are not counted).
///
/// The parser builds chains such as `a + b + c + …` or `x::int::int…` in a loop, not by recursion,
/// so its own recursion limit does not bound how deep the resulting tree is; dropping or walking a
/// tree tens of thousands of levels deep overflows the stack. Bounding the operators bounds the
/// depth. Multi-row `VALUES` lists of literals and parameters are not affected.
pub const MAX_SYNTAX_TOKENS: usize = 4096;

/// The most `GLOB`, `REGEXP` and `MATCH` operators one SQLite statement may contain.
///
/// `sqlparser` parses these SQLite operators by cloning everything to their left, so a chain of
/// them costs quadratic time and a clone as deep as the chain, which overflows the stack long
/// before [`MAX_SYNTAX_TOKENS`] is reached. Real statements use one or two.
pub const MAX_PATTERN_OPERATORS: usize = 32;

/// How deeply expressions and subqueries may nest in an accepted statement.
///
/// The guard walks the tree recursively, and so do printing and the host's driver; a bound keeps
/// every one of those walks far from the end of the stack.
pub const MAX_NESTING: usize = 128;

/// The SQL dialect of the backend a target lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// SQLite: physical names are prefixed tables in the main database; placeholders are `?N`.
    Sqlite,
    /// PostgreSQL: physical names may be schema-qualified; placeholders are `$N`.
    Postgres,
    /// MySQL and MariaDB: statements are read as on PostgreSQL and printed for a session in
    /// [`SESSION_SQL_MODE`]; physical names may be database-qualified; placeholders are `?`,
    /// bound in the order [`Checked::param_order`] gives.
    MySql,
}

/// What a statement is being checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A statement sent by a guest: `SELECT`, `INSERT`, `UPDATE` or `DELETE` on declared tables.
    Data,
    /// The declared DDL the host runs when it creates a target: `CREATE TABLE` and
    /// `CREATE [UNIQUE] INDEX` on declared tables.
    Setup,
}

/// Where a logical table lives in one target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PhysicalName {
    /// The schema (PostgreSQL) the table lives in, or `None` for the connection's default.
    pub schema: Option<String>,
    /// The table's name inside that schema.
    pub name: String,
}

impl PhysicalName {
    /// A name in the connection's default schema (or SQLite's main database).
    pub fn unqualified(name: impl Into<String>) -> Self {
        Self {
            schema: None,
            name: name.into(),
        }
    }

    /// A name inside `schema`.
    pub fn qualified(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: Some(schema.into()),
            name: name.into(),
        }
    }

    /// The name quoted for SQL: `"schema"."name"` or `"name"`.
    pub fn quoted(&self) -> String {
        let quote = |part: &str| format!("\"{}\"", part.replace('"', "\"\""));
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&self.name)),
            None => quote(&self.name),
        }
    }
}

impl std::fmt::Display for PhysicalName {
    /// The name as a person reads it (and SQL accepts for zdr's own names): `schema.name`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What a checked statement does, so the host knows how to run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// The statement returns rows: `SELECT`, `VALUES`, or an `INSERT`, `UPDATE` or `DELETE` with a
    /// `RETURNING` clause (which also writes).
    Query,
    /// `INSERT`, `UPDATE` or `DELETE` without `RETURNING`: runs for its effect and a row count.
    Execute,
    /// `CREATE TABLE` or `CREATE INDEX` (setup mode only).
    Ddl,
}

/// A statement that passed the guard, rewritten for one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The statement with physical table names and native placeholders, ready to prepare.
    pub sql: String,
    /// Whether it returns rows.
    pub kind: StatementKind,
    /// The logical tables it touches, sorted and without duplicates.
    pub tables: Vec<String>,
    /// How many parameters it expects: the highest placeholder number.
    pub param_count: usize,
    /// The placeholders (numbered from 1) cast to a date or time type: a text value bound to
    /// one must be a date or time written in full ([`time_param_allowed`]), or it could read
    /// the clock (`'now'`).
    pub time_params: Vec<usize>,
    /// On MySQL, where placeholders are a bare `?` each: the parameter (numbered from 1) each
    /// `?` binds, in order. Empty on the other backends, which number their placeholders.
    pub param_order: Vec<usize>,
}

/// Whether `text`, bound to a placeholder that is cast to a date or time type, is a date or
/// time written in full (nothing that reads the clock, such as `'now'` or `'tomorrow'`).
pub fn time_param_allowed(text: &str) -> bool {
    allow::is_fixed_time_literal(text)
}

/// Why a statement was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The statement parses but is outside the allow-list; the message names what is not allowed
    /// and says what is.
    #[error("statement denied: {0}")]
    Denied(String),
    /// The statement does not parse, is empty, or uses placeholders the guard does not accept.
    #[error("invalid sql: {0}")]
    InvalidSql(String),
    /// The statement is too long, nests too deeply or uses too many placeholders.
    #[error("statement exceeds a limit: {0}")]
    LimitExceeded(String),
}

impl GuardError {
    /// The message without the variant's prefix, for callers that carry the kind separately
    /// (such as the typed error a guest receives).
    pub fn message(&self) -> &str {
        match self {
            Self::Denied(m) | Self::InvalidSql(m) | Self::LimitExceeded(m) => m,
        }
    }
}

/// One declared table as a guard knows it.
#[derive(Clone, Debug)]
struct Declared {
    /// The logical name as declared, in lowercase.
    logical: String,
    /// Where it lives in this guard's target.
    physical: PhysicalName,
}

/// The SQL guard of one target: the projector's logical tables and where they live.
#[derive(Clone, Debug)]
pub struct Guard {
    dialect: Dialect,
    /// Declared tables by lowercase logical name.
    tables: BTreeMap<String, Declared>,
    index_prefix: Option<String>,
    /// `balances, accounts`: the declared names, for messages.
    declared_list: String,
    /// What each declared table's DDL says about its keys, by lowercase logical name (MySQL
    /// needs it to translate upserts and to size indexed text columns).
    keys: BTreeMap<String, TableKeys>,
}

impl Guard {
    /// Builds the guard of one target.
    ///
    /// `tables` maps each logical name to its physical name; logical names are matched without
    /// regard to case (a later duplicate replaces an earlier one). `index_prefix`, when `Some(p)`,
    /// renames every index created in setup mode to `p` + its declared name: SQLite clones need
    /// names distinct from the live indexes, while PostgreSQL indexes move with their schema and
    /// keep their names.
    pub fn new(
        dialect: Dialect,
        tables: impl IntoIterator<Item = (String, PhysicalName)>,
        index_prefix: Option<String>,
    ) -> Guard {
        let tables: BTreeMap<String, Declared> = tables
            .into_iter()
            .map(|(logical, physical)| {
                let logical = logical.to_ascii_lowercase();
                (logical.clone(), Declared { logical, physical })
            })
            .collect();
        let declared_list = if tables.is_empty() {
            "none".to_owned()
        } else {
            tables.keys().cloned().collect::<Vec<_>>().join(", ")
        };
        Guard {
            dialect,
            tables,
            index_prefix,
            declared_list,
            keys: BTreeMap::new(),
        }
    }

    /// This guard, knowing each table's keys from its declared DDL (logical name and
    /// statements): on MySQL an upsert is translated only when its conflict columns are the
    /// table's one unique key, and indexed text columns get a length.
    #[must_use]
    pub fn with_declared_ddl<'a>(
        mut self,
        tables: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Guard {
        self.keys = tables
            .into_iter()
            .map(|(name, ddl)| (name.to_ascii_lowercase(), TableKeys::from_ddl(ddl)))
            .collect();
        self
    }

    /// The dialect this guard parses and prints.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The declared tables: logical name (lowercase) and physical name.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &PhysicalName)> {
        self.tables
            .values()
            .map(|d| (d.logical.as_str(), &d.physical))
    }

    /// Parses `sql`, checks it against the allow-list of `mode`, and rewrites it for this target.
    ///
    /// # Errors
    ///
    /// [`GuardError::InvalidSql`] when the text does not parse as exactly one statement with
    /// `$N` or `?` placeholders; [`GuardError::LimitExceeded`] when it is longer than
    /// [`MAX_STATEMENT_BYTES`], has more than [`MAX_SYNTAX_TOKENS`] words and operators, nests
    /// deeper than [`MAX_NESTING`] or the parser's own limit, or uses more than
    /// [`MAX_PARAMETERS`] placeholders; [`GuardError::Denied`] when it parses but does anything
    /// outside the allow-list (other tables, other statement kinds, functions that are not
    /// deterministic or reach outside the read model).
    pub fn check(&self, sql: &str, mode: Mode) -> Result<Checked, GuardError> {
        self.analyze(sql, mode).map(|(_, checked)| checked)
    }

    /// [`Guard::check`], also returning the rewritten statement's tree.
    fn analyze(&self, sql: &str, mode: Mode) -> Result<(Statement, Checked), GuardError> {
        // The guard is fed hostile text. Its own code does not panic, and the limits above keep
        // the parser's recursion in bounds; should `sqlparser` still panic on some input, that
        // is one refused statement, not a crashed worker.
        panic::catch_unwind(AssertUnwindSafe(|| self.analyze_unguarded(sql, mode))).unwrap_or_else(
            |_| {
                Err(GuardError::InvalidSql(
                    "the statement could not be checked: the sql parser failed on it".to_owned(),
                ))
            },
        )
    }

    fn analyze_unguarded(&self, sql: &str, mode: Mode) -> Result<(Statement, Checked), GuardError> {
        let parsed = parse::parse_one(self.dialect, sql, mode)?;
        let mut statement = parsed.statement;
        let mut walker = rewrite::Walker::new(self);
        let kind = match mode {
            Mode::Data => walker.data_statement(&mut statement, &parsed.kind_name)?,
            Mode::Setup => walker.setup_statement(&mut statement, &parsed.kind_name)?,
        };
        let (tables, time_params) = walker.into_parts();
        verify::verify(self, &statement)?;
        let (sql, param_order) = match self.dialect {
            Dialect::MySql => positional(&statement.to_string()),
            Dialect::Sqlite | Dialect::Postgres => (statement.to_string(), Vec::new()),
        };
        let checked = Checked {
            sql,
            param_order,
            kind,
            tables,
            param_count: parsed.param_count,
            time_params,
        };
        Ok((statement, checked))
    }

    /// What a declared table's DDL says about its keys.
    fn keys(&self, logical: &str) -> Option<&TableKeys> {
        self.keys.get(&logical.to_ascii_lowercase())
    }

    /// Looks a logical name up, without regard to case.
    fn declared(&self, name: &str) -> Option<&Declared> {
        self.tables.get(&name.to_ascii_lowercase())
    }
}
