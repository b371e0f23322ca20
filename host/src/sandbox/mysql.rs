//! MySQL and MariaDB: what the guard does differently for them.
//!
//! A projector writes the same SQL for every backend, so on MySQL the guard parses it as it
//! does for PostgreSQL (double-quoted identifiers, `$N` placeholders, standard strings) and
//! prints a statement that MySQL reads with the same meaning. That holds because zdr runs every
//! MySQL session with `sql_mode` `ANSI_QUOTES` (`"x"` is an identifier), `PIPES_AS_CONCAT`
//! (`||` concatenates) and `NO_BACKSLASH_ESCAPES` (a backslash in a string is itself), see
//! [`SESSION_SQL_MODE`]. What this module adds:
//!
//! - refusals of what only MySQL executes: comments MySQL runs (`/*! … */`, `/*+ … */`),
//!   backtick-quoted names and user or system variables (`@x`, `@@x`), each with a message
//!   that says what to write instead ([`refuse_mysql_tokens`]);
//! - placeholders: MySQL binds `?` by position, so `$2, $1, $2` becomes `?, ?, ?` binding
//!   parameters 2, 1, 2 ([`positional`]);
//! - upserts: `INSERT … ON CONFLICT` becomes `ON DUPLICATE KEY UPDATE` where the meaning is the
//!   same, and is refused with what to write otherwise ([`translate_upsert`]);
//! - casts and column types spelt MySQL's way ([`cast_type`], [`column_type`]).
//!
//! The upsert rule: MySQL's `ON DUPLICATE KEY UPDATE` fires on a duplicate of *any* unique key
//! and its assignments run left to right, each seeing the columns assigned before it; so
//! `ON CONFLICT (cols) DO UPDATE SET …` is translated only when `cols` are the table's one
//! unique key (its primary key, and no other unique constraint or index), there is no `WHERE`,
//! and no assignment reads a column assigned before it. `excluded.c` becomes `VALUES(c)`.
//! `DO NOTHING` becomes a no-op update of the key (`SET k = k`), under the same condition when
//! it names columns. Everything else is refused with a message that says what to write.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Assignment, AssignmentTarget, CharacterLength, ColumnOption, ConflictTarget, DataType,
    DoUpdate, ExactNumberInfo, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, Ident, ObjectName, ObjectNamePart, OnConflict, OnConflictAction, OnInsert,
    Statement, TableConstraint, VisitMut, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};

use super::GuardError;
use super::names::quoted;

/// The `sql_mode` every zdr session on MySQL or MariaDB runs with: the guard prints statements
/// for it (`"x"` is a name, `||` concatenates, a backslash in a string is itself), and writes
/// refuse bad values instead of storing something else.
pub const SESSION_SQL_MODE: &str = "ANSI_QUOTES,PIPES_AS_CONCAT,NO_BACKSLASH_ESCAPES,\
STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION";

/// The length a text column gets on MySQL when it is part of a key or an index (MySQL cannot
/// index `TEXT` without a prefix length).
pub const KEY_TEXT_LENGTH: u64 = 255;

/// What the declared DDL of one table says about its keys: whether an upsert may be translated,
/// and which text columns must have a length.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TableKeys {
    /// Every unique key (the primary key among them), as lowercase column lists.
    pub unique: Vec<Vec<String>>,
    /// The primary key's columns, lowercase, if it has one.
    pub primary: Option<Vec<String>>,
    /// Every column that is part of a key or an index, lowercase.
    pub indexed: BTreeSet<String>,
}

impl TableKeys {
    /// Reads the keys from a table's declared DDL (`CREATE TABLE` and `CREATE INDEX`
    /// statements as a projector declares them). Statements that do not parse add nothing:
    /// the guard refuses them on their own.
    pub fn from_ddl(ddl: &[String]) -> TableKeys {
        let mut keys = TableKeys::default();
        for text in ddl {
            let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, text) else {
                continue;
            };
            for statement in statements {
                keys.add(&statement);
            }
        }
        keys
    }

    fn add(&mut self, statement: &Statement) {
        match statement {
            Statement::CreateTable(table) => {
                for column in &table.columns {
                    let name = column.name.value.to_ascii_lowercase();
                    for option in &column.options {
                        match &option.option {
                            ColumnOption::PrimaryKey(_) => self.key(vec![name.clone()], true),
                            ColumnOption::Unique(_) => self.key(vec![name.clone()], false),
                            _ => {}
                        }
                    }
                }
                for constraint in &table.constraints {
                    match constraint {
                        TableConstraint::PrimaryKey(key) => {
                            self.key(index_columns(&key.columns), true)
                        }
                        TableConstraint::Unique(unique) => {
                            self.key(index_columns(&unique.columns), false)
                        }
                        _ => {}
                    }
                }
            }
            Statement::CreateIndex(index) => {
                let columns = index_columns(&index.columns);
                if index.unique {
                    self.key(columns, false);
                } else {
                    self.indexed.extend(columns);
                }
            }
            _ => {}
        }
    }

    fn key(&mut self, columns: Vec<String>, primary: bool) {
        self.indexed.extend(columns.iter().cloned());
        if primary {
            self.primary = Some(columns.clone());
        }
        self.unique.push(columns);
    }

    /// The table's one unique key, when it has exactly one (its primary key or a lone unique
    /// constraint).
    fn only_key(&self) -> Option<&[String]> {
        let mut distinct: Vec<BTreeSet<&String>> = Vec::new();
        for key in &self.unique {
            let set: BTreeSet<&String> = key.iter().collect();
            if !distinct.contains(&set) {
                distinct.push(set);
            }
        }
        match distinct.len() {
            1 => self.unique.first().map(Vec::as_slice),
            _ => None,
        }
    }
}

fn index_columns(columns: &[sqlparser::ast::IndexColumn]) -> Vec<String> {
    columns
        .iter()
        .filter_map(|c| match &c.column.expr {
            Expr::Identifier(ident) => Some(ident.value.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Refuses what only MySQL reads from the text of a statement, before it is parsed: comments
/// that MySQL executes, backtick-quoted names and user or system variables.
///
/// # Errors
/// `Denied` naming the construct and what to write instead.
pub(super) fn refuse_mysql_tokens(tokens: &[TokenWithSpan]) -> Result<(), GuardError> {
    for token in tokens {
        match &token.token {
            Token::Whitespace(Whitespace::MultiLineComment(text))
                if text.starts_with('!') || text.starts_with('+') =>
            {
                return Err(GuardError::Denied(format!(
                    "the comment {} is not allowed: MySQL runs /*! … */ and /*+ … */ comments \
                     as part of the statement; write plain SQL",
                    quoted(&format!("/*{text}*/"))
                )));
            }
            Token::Char('`') => {
                return Err(GuardError::Denied(
                    "backtick-quoted names are not allowed: write names plain or in double quotes"
                        .to_owned(),
                ));
            }
            Token::AtSign | Token::AtAt => return Err(variables()),
            Token::Word(word) if word.value.starts_with('@') => return Err(variables()),
            Token::Placeholder(text) if text.starts_with('@') => return Err(variables()),
            _ => {}
        }
    }
    Ok(())
}

fn variables() -> GuardError {
    GuardError::Denied(
        "user and system variables (@name, @@name) are not allowed: they outlive the statement \
         and read the server's state; pass values as parameters"
            .to_owned(),
    )
}

/// The statement with every `$N` placeholder replaced by `?`, and the parameter number each
/// `?` binds, in order (a number used twice binds twice). Placeholders inside strings,
/// names and comments are left alone: the text is tokenized, not searched.
///
/// `sql` is a statement the guard printed or one of zdr's own; one that does not tokenize is
/// returned unchanged, with no parameters, and fails at the server.
pub fn positional(sql: &str) -> (String, Vec<usize>) {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return (sql.to_owned(), Vec::new());
    };
    let mut order = Vec::new();
    let mut out = String::with_capacity(sql.len());
    for token in tokens {
        match &token {
            Token::Placeholder(text)
                if text.len() > 1 && text[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                match text[1..].parse::<usize>() {
                    Ok(n) if text.starts_with('$') => {
                        order.push(n);
                        out.push('?');
                    }
                    _ => out.push_str(text),
                }
            }
            other => out.push_str(&other.to_string()),
        }
    }
    (out, order)
}

/// Translates an upsert's `ON CONFLICT` into MySQL's `ON DUPLICATE KEY UPDATE`, or refuses it.
///
/// `keys` is what the target table's declared DDL says about its keys; `None` for zdr's own
/// statements, which are trusted to name their table's one key.
///
/// # Errors
/// `Denied` when the meaning would differ, with what to write instead.
pub(super) fn translate_upsert(
    on: &mut Option<OnInsert>,
    keys: Option<&TableKeys>,
) -> Result<(), GuardError> {
    let Some(OnInsert::OnConflict(OnConflict {
        conflict_target,
        action,
    })) = on
    else {
        return Ok(());
    };
    let target: Option<Vec<String>> = match conflict_target {
        None => None,
        Some(ConflictTarget::Columns(columns)) => Some(
            columns
                .iter()
                .map(|c| c.value.to_ascii_lowercase())
                .collect(),
        ),
        Some(ConflictTarget::OnConstraint(_)) => {
            return Err(GuardError::Denied(
                "ON CONFLICT ON CONSTRAINT is not allowed: name the conflict columns".to_owned(),
            ));
        }
    };
    // The key to name in a no-op update, and whether the conflict target is the only key.
    let key: Option<Vec<String>> = match (keys, &target) {
        (None, Some(target)) => Some(target.clone()),
        (None, None) => None,
        (Some(keys), target) => {
            let only = keys.only_key();
            match target {
                Some(target) => {
                    let same = only.is_some_and(|only| {
                        only.iter().collect::<BTreeSet<_>>() == target.iter().collect()
                    });
                    if !same {
                        return Err(not_translatable(keys, target));
                    }
                    Some(target.clone())
                }
                None => match (&action, keys.unique.first()) {
                    (OnConflictAction::DoNothing, first) => first.cloned(),
                    (OnConflictAction::DoUpdate(_), _) => {
                        return Err(GuardError::Denied(
                            "ON CONFLICT DO UPDATE must name its conflict columns".to_owned(),
                        ));
                    }
                },
            }
        }
    };
    let assignments = match action {
        OnConflictAction::DoNothing => match key.as_ref().and_then(|k| k.first()) {
            // A no-op update of the key: the row stays as it is, as with DO NOTHING.
            Some(column) => vec![Assignment {
                target: AssignmentTarget::ColumnName(ObjectName::from(vec![Ident::new(
                    column.clone(),
                )])),
                value: Expr::Identifier(Ident::new(column.clone())),
            }],
            // A table without a unique key never conflicts.
            None => {
                *on = None;
                return Ok(());
            }
        },
        OnConflictAction::DoUpdate(DoUpdate {
            assignments,
            selection,
        }) => {
            if selection.is_some() {
                return Err(GuardError::Denied(
                    "ON CONFLICT … DO UPDATE … WHERE has no equivalent on MySQL and MariaDB: \
                     move the condition into the assignments, SET c = CASE WHEN condition THEN \
                     excluded.c ELSE c END"
                        .to_owned(),
                ));
            }
            let mut assigned: Vec<String> = Vec::new();
            let mut translated = Vec::with_capacity(assignments.len());
            for assignment in assignments.iter() {
                let mut assignment = assignment.clone();
                let AssignmentTarget::ColumnName(name) = &assignment.target else {
                    return Err(GuardError::Denied(
                        "a tuple assignment in ON CONFLICT … DO UPDATE is not allowed on MySQL \
                         and MariaDB: assign each column on its own"
                            .to_owned(),
                    ));
                };
                let column = name
                    .0
                    .last()
                    .and_then(ObjectNamePart::as_ident)
                    .map(|i| i.value.to_ascii_lowercase())
                    .unwrap_or_default();
                let mut check = Excluded {
                    assigned: &assigned,
                    rewrite: false,
                    problem: None,
                };
                let _ = assignment.value.visit(&mut check);
                if let Some(problem) = check.problem {
                    return Err(GuardError::Denied(problem));
                }
                let mut rewrite = Excluded {
                    assigned: &assigned,
                    rewrite: true,
                    problem: None,
                };
                let _ = assignment.value.visit(&mut rewrite);
                assigned.push(column);
                translated.push(assignment);
            }
            translated
        }
    };
    *on = Some(OnInsert::DuplicateKeyUpdate(assignments));
    Ok(())
}

fn not_translatable(keys: &TableKeys, target: &[String]) -> GuardError {
    let listed = |key: &[String]| format!("({})", key.join(", "));
    let found = if keys.unique.is_empty() {
        "no primary key or unique constraint".to_owned()
    } else {
        keys.unique
            .iter()
            .map(|k| listed(k))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    GuardError::Denied(format!(
        "ON CONFLICT {} cannot be translated for MySQL and MariaDB, whose ON DUPLICATE KEY UPDATE \
         fires on any unique key: it is translated only when the conflict columns are the \
         table's one unique key (this table has {found}); on MySQL write the update as \
         UPDATE … WHERE, and an INSERT only when no row was updated",
        listed(target)
    ))
}

/// In one assignment's value: first (`rewrite` false) finds what MySQL would read
/// differently — a column assigned earlier in the list (MySQL assigns left to right) or a
/// subquery; then (`rewrite` true) rewrites `excluded.c` to `VALUES(c)`.
struct Excluded<'a> {
    assigned: &'a [String],
    rewrite: bool,
    problem: Option<String>,
}

impl VisitorMut for Excluded<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if self.rewrite && !matches!(expr, Expr::CompoundIdentifier(_)) {
            return ControlFlow::Continue(());
        }
        let column = match expr {
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [table, column] if table.value.eq_ignore_ascii_case("excluded") => {
                    if self.rewrite {
                        *expr = values_call(column.clone());
                    }
                    return ControlFlow::Continue(());
                }
                [_, column] => Some(column.value.to_ascii_lowercase()),
                _ => None,
            },
            Expr::Identifier(ident) => Some(ident.value.to_ascii_lowercase()),
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                self.problem = Some(
                    "a subquery in ON CONFLICT … DO UPDATE is not allowed on MySQL and MariaDB: \
                     compute the value first and pass it as a parameter"
                        .to_owned(),
                );
                return ControlFlow::Break(());
            }
            _ => None,
        };
        if let Some(column) = column
            && self.assigned.contains(&column)
        {
            self.problem = Some(format!(
                "ON CONFLICT … DO UPDATE reads column {} after assigning it: MySQL and MariaDB \
                 assign left to right, so the value would differ; assign {} last, or read \
                 excluded values only",
                quoted(&column),
                quoted(&column)
            ));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// `VALUES(column)`: the value an `INSERT` tried to write, in `ON DUPLICATE KEY UPDATE`.
fn values_call(column: Ident) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new("VALUES")]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(
                Expr::Identifier(column),
            ))],
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

/// The type a `CAST` to `data_type` is spelt with on MySQL, when it differs: MySQL casts to
/// `SIGNED`, `CHAR`, `DOUBLE`, `DECIMAL`, `DATE`, `TIME`, `DATETIME`, `BINARY` and `JSON` only.
pub(super) fn cast_type(data_type: &DataType) -> Option<DataType> {
    use DataType as T;
    Some(match data_type {
        T::Int2(_)
        | T::SmallInt(_)
        | T::Int(_)
        | T::Int4(_)
        | T::Int8(_)
        | T::Integer(_)
        | T::BigInt(_) => T::Signed,
        T::Text
        | T::Varchar(_)
        | T::CharacterVarying(_)
        | T::CharVarying(_)
        | T::Character(_)
        | T::Char(_) => T::Char(None),
        T::Real | T::Float(_) | T::Float4 | T::Float8 | T::DoublePrecision => {
            T::Double(ExactNumberInfo::None)
        }
        T::Numeric(info) | T::Dec(info) => T::Decimal(*info),
        T::Timestamp(..) => T::Datetime(None),
        _ => return None,
    })
}

/// The type a declared column gets on MySQL, and whether it holds text (which then gets
/// zdr's character set and binary collation, so that text compares as on the other
/// backends). `indexed`: the column is part of a key or an index, and text must have a length.
pub(super) fn column_type(data_type: &DataType, indexed: bool) -> (Option<DataType>, bool) {
    use DataType as T;
    match data_type {
        T::Text | T::Varchar(None) | T::CharacterVarying(None) | T::CharVarying(None) => {
            if indexed {
                (
                    Some(T::Varchar(Some(CharacterLength::IntegerLength {
                        length: KEY_TEXT_LENGTH,
                        unit: None,
                    }))),
                    true,
                )
            } else {
                (Some(T::LongText), true)
            }
        }
        T::Varchar(_)
        | T::CharacterVarying(_)
        | T::CharVarying(_)
        | T::Character(_)
        | T::Char(_) => (None, true),
        T::JSONB => (Some(T::JSON), false),
        T::Bytea => (Some(T::LongBlob), false),
        T::Custom(name, _) if name.to_string().eq_ignore_ascii_case("timestamptz") => {
            (Some(T::Datetime(Some(6))), false)
        }
        _ => (None, false),
    }
}

/// The options a text column gets on MySQL: `CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`.
pub(super) fn text_options() -> [ColumnOption; 2] {
    [
        ColumnOption::CharacterSet(ObjectName::from(vec![Ident::new("utf8mb4")])),
        ColumnOption::Collation(ObjectName::from(vec![Ident::new("utf8mb4_bin")])),
    ]
}

/// zdr's own statement (written for PostgreSQL and SQLite, see the backend's bookkeeping)
/// made ready for MySQL: upserts translated, casts spelt MySQL's way. Statements without
/// either are returned as they are; placeholders stay `$N` (the backend binds them with
/// [`positional`]).
///
/// # Errors
/// A statement that does not parse or cannot be translated: a bug in zdr's own SQL.
pub fn own_statement(sql: &str) -> Result<String, GuardError> {
    let upper = sql.to_ascii_uppercase();
    if !upper.contains("ON CONFLICT") && !upper.contains("CAST(") {
        return Ok(sql.to_owned());
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| GuardError::InvalidSql(e.to_string()))?;
    let mut casts = Casts;
    for statement in &mut statements {
        if let Statement::Insert(insert) = statement {
            // The driver counts a duplicate left alone by a no-op update as one row changed;
            // zdr's own DO NOTHING must count it as none (the first of two racing inserts
            // wins), so it becomes INSERT IGNORE, safe for zdr's own well-formed values.
            if let Some(OnInsert::OnConflict(OnConflict {
                action: OnConflictAction::DoNothing,
                ..
            })) = &insert.on
            {
                insert.on = None;
                insert.ignore = true;
            }
            translate_upsert(&mut insert.on, None)?;
        }
        let _ = statement.visit(&mut casts);
    }
    Ok(statements
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; "))
}

/// Spells every cast MySQL's way.
struct Casts;

impl VisitorMut for Casts {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Cast {
            kind, data_type, ..
        } = expr
        {
            *kind = sqlparser::ast::CastKind::Cast;
            if let Some(mysql) = cast_type(data_type) {
                *data_type = mysql;
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_positional_with_their_order() {
        assert_eq!(
            positional("SELECT $2, $1, $2, '$1', \"$3\""),
            ("SELECT ?, ?, ?, '$1', \"$3\"".to_owned(), vec![2, 1, 2])
        );
        assert_eq!(positional("SELECT 1"), ("SELECT 1".to_owned(), vec![]));
    }

    #[test]
    fn keys_are_read_from_the_declared_ddl() {
        let keys = TableKeys::from_ddl(&[
            "CREATE TABLE t (a TEXT PRIMARY KEY, b TEXT UNIQUE, c TEXT)".to_owned(),
            "CREATE INDEX t_c ON t (c)".to_owned(),
        ]);
        assert_eq!(keys.primary, Some(vec!["a".to_owned()]));
        assert_eq!(keys.unique.len(), 2);
        assert!(keys.indexed.contains("c") && keys.indexed.contains("b"));
        assert_eq!(keys.only_key(), None);
        let keys =
            TableKeys::from_ddl(&["CREATE TABLE t (a TEXT, b INT, PRIMARY KEY (a, b))".to_owned()]);
        assert_eq!(keys.only_key(), Some(&["a".to_owned(), "b".to_owned()][..]));
    }

    #[test]
    fn own_statements_translate_upserts_and_casts() {
        let sql = own_statement(
            "INSERT INTO zdr_meta (\"key\", value) VALUES ('v', $1) ON CONFLICT (\"key\") DO \
             UPDATE SET value = CASE WHEN CAST(zdr_meta.value AS BIGINT) < CAST(excluded.value AS \
             BIGINT) THEN excluded.value ELSE zdr_meta.value END",
        )
        .unwrap();
        assert!(sql.contains("ON DUPLICATE KEY UPDATE"), "{sql}");
        assert!(sql.contains("CAST(VALUES(value) AS SIGNED)"), "{sql}");
        assert!(!sql.contains("excluded"), "{sql}");
        let sql =
            own_statement("INSERT INTO t (h) VALUES ($1) ON CONFLICT (h) DO NOTHING").unwrap();
        assert_eq!(sql, "INSERT IGNORE INTO t (h) VALUES ($1)");
        assert_eq!(own_statement("SELECT 1").unwrap(), "SELECT 1");
    }
}
