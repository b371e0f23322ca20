//! Setup mode: the `CREATE TABLE` and `CREATE INDEX` statements a projector declares, checked
//! when it is registered ([`check_declared_ddl`]) and rewritten for each target the host creates.
//!
//! Declared DDL may define columns, keys, `CHECK`s, defaults and indexes of the projector's own
//! tables, nothing else: no foreign keys (a reference to a table outside the projector would break
//! the swap of clone and live tables), no `AS SELECT`, no temporary tables, no views or triggers.

use std::mem;

use sqlparser::ast::helpers::stmt_create_table::CreateTableBuilder;
use sqlparser::ast::{
    CheckConstraint, ColumnDef, ColumnOption, ColumnOptionDef, CreateIndex, CreateTable,
    IndexColumn, IndexType, ObjectName, PrimaryKeyConstraint, Statement, TableConstraint,
    UniqueConstraint,
};
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

use super::expr::check_data_type;
use super::names::{self, quoted, single_ident, validate_declared_name, written};
use super::rewrite::{Walker, kind_not_allowed};
use super::{Dialect, Guard, GuardError, Mode, PhysicalName, StatementKind};

/// What setup mode allows, for messages.
const SETUP_ALLOWED: &str = "setup runs only CREATE TABLE and CREATE [UNIQUE] INDEX on declared \
                             tables";

/// The foreign-key refusal, shared by column and table constraints.
const NO_FOREIGN_KEYS: &str = "foreign keys (REFERENCES) are not allowed: a projector's tables may \
                               not reference other tables, or the swap of clone and live tables \
                               would break them";

/// Checks the DDL a projector declares for one table when the host registers it.
///
/// `table` must be a valid logical name (`^[a-z_][a-z0-9_]{0,62}$`, not starting with `zdr_`,
/// `sqlite_` or `pg_`, not `stored_events`); `ddl[0]` must be `CREATE TABLE <table> (…)` with
/// exactly that name, unqualified; every later statement must be a named
/// `CREATE [UNIQUE] INDEX … ON <table>`.
///
/// # Errors
///
/// [`GuardError::Denied`] naming the offending name, statement or clause;
/// [`GuardError::InvalidSql`] or [`GuardError::LimitExceeded`] as from [`Guard::check`].
pub fn check_declared_ddl(dialect: Dialect, table: &str, ddl: &[String]) -> Result<(), GuardError> {
    validate_declared_name("table", table).map_err(GuardError::Denied)?;
    let guard = Guard::new(
        dialect,
        [(table.to_owned(), PhysicalName::unqualified(table))],
        None,
    )
    .with_declared_ddl([(table, ddl)]);
    let Some((create_table, indexes)) = ddl.split_first() else {
        return Err(GuardError::Denied(format!(
            "table {} declares no DDL: its first statement must be CREATE TABLE {table} (…)",
            quoted(table)
        )));
    };
    let (statement, _) = guard.analyze(create_table, Mode::Setup)?;
    if !matches!(statement, Statement::CreateTable(_)) {
        return Err(GuardError::Denied(format!(
            "the first DDL statement of table {} must be CREATE TABLE {table} (…)",
            quoted(table)
        )));
    }
    for sql in indexes {
        let (statement, _) = guard.analyze(sql, Mode::Setup)?;
        let Statement::CreateIndex(index) = statement else {
            return Err(GuardError::Denied(format!(
                "the DDL statements after CREATE TABLE {table} must be CREATE [UNIQUE] INDEX … \
                 ON {table}"
            )));
        };
        if index.name.is_none() {
            return Err(GuardError::Denied(format!(
                "every index on table {} needs a name: CREATE INDEX name ON {table} (…)",
                quoted(table)
            )));
        }
    }
    Ok(())
}

impl Walker<'_> {
    /// Checks and rewrites one statement of declared DDL.
    pub(super) fn setup_statement(
        &mut self,
        statement: &mut Statement,
        kind_name: &str,
    ) -> Result<StatementKind, GuardError> {
        match statement {
            Statement::CreateTable(table) => self.create_table(table)?,
            Statement::CreateIndex(index) => self.create_index(index)?,
            _ => return Err(kind_not_allowed(Mode::Setup, kind_name)),
        }
        Ok(StatementKind::Ddl)
    }

    fn create_table(&mut self, table: &mut CreateTable) -> Result<(), GuardError> {
        if table.temporary {
            return Err(GuardError::Denied(
                "temporary tables are not allowed: declared tables are permanent".to_owned(),
            ));
        }
        if table.query.is_some() {
            return Err(GuardError::Denied(
                "the form CREATE TABLE … AS SELECT is not allowed: declare the columns".to_owned(),
            ));
        }
        if table.like.is_some() || table.clone.is_some() {
            return Err(GuardError::Denied(
                "the form CREATE TABLE … LIKE or CLONE is not allowed: declare the columns"
                    .to_owned(),
            ));
        }
        if !only_plain_parts(table) {
            return Err(GuardError::Denied(format!(
                "this CREATE TABLE option is not allowed: a declared table has columns, \
                 constraints and optionally IF NOT EXISTS, WITHOUT ROWID or STRICT; {SETUP_ALLOWED}"
            )));
        }
        let logical = table
            .name
            .0
            .last()
            .and_then(sqlparser::ast::ObjectNamePart::as_ident)
            .map(|ident| ident.value.clone())
            .unwrap_or_default();
        self.target_relation(&mut table.name)?;
        for column in &mut table.columns {
            self.column_def(column)?;
        }
        if self.dialect() == Dialect::MySql {
            let indexed = self
                .table_keys(&logical)
                .map(|keys| keys.indexed.clone())
                .unwrap_or_default();
            for column in &mut table.columns {
                let is_indexed = indexed.contains(&column.name.value.to_ascii_lowercase());
                let (mysql, text) = super::mysql::column_type(&column.data_type, is_indexed);
                if let Some(mysql) = mysql {
                    column.data_type = mysql;
                }
                if text {
                    // Text compares byte for byte, as on the other backends.
                    column.options.splice(
                        0..0,
                        super::mysql::text_options()
                            .into_iter()
                            .map(|option| ColumnOptionDef { name: None, option }),
                    );
                }
            }
        }
        for constraint in &mut table.constraints {
            self.table_constraint(constraint)?;
        }
        Ok(())
    }

    fn column_def(&mut self, column: &mut ColumnDef) -> Result<(), GuardError> {
        let ColumnDef {
            name: _,
            data_type,
            options,
        } = column;
        check_data_type(data_type)?;
        for ColumnOptionDef { name: _, option } in options {
            match option {
                ColumnOption::Null | ColumnOption::NotNull | ColumnOption::OnConflict(_) => {}
                ColumnOption::Default(expr) => self.expr(expr)?,
                ColumnOption::Check(check) => self.check_constraint(check)?,
                ColumnOption::PrimaryKey(key) => self.primary_key(key)?,
                ColumnOption::Unique(unique) => self.unique(unique)?,
                ColumnOption::Collation(collation) => plain_name("collation", collation)?,
                ColumnOption::DialectSpecific(tokens) if self.is_autoincrement(tokens) => {}
                ColumnOption::Generated {
                    generated_as: _,
                    sequence_options,
                    generation_expr,
                    generation_expr_mode: _,
                    generated_keyword: _,
                } if sequence_options.as_ref().is_none_or(Vec::is_empty) => {
                    if let Some(expr) = generation_expr {
                        self.expr(expr)?;
                    }
                }
                ColumnOption::ForeignKey(_) => {
                    return Err(GuardError::Denied(NO_FOREIGN_KEYS.to_owned()));
                }
                _ => {
                    return Err(GuardError::Denied(
                        "this column option is not allowed: use NULL, NOT NULL, DEFAULT, CHECK, \
                         PRIMARY KEY, UNIQUE, COLLATE or GENERATED"
                            .to_owned(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// SQLite's `AUTOINCREMENT`, which `sqlparser` keeps as raw tokens.
    fn is_autoincrement(&self, tokens: &[Token]) -> bool {
        self.dialect() == Dialect::Sqlite
            && matches!(tokens, [Token::Word(word)] if word.keyword == Keyword::AUTOINCREMENT)
    }

    fn table_constraint(&mut self, constraint: &mut TableConstraint) -> Result<(), GuardError> {
        match constraint {
            TableConstraint::PrimaryKey(key) => self.primary_key(key),
            TableConstraint::Unique(unique) => self.unique(unique),
            TableConstraint::Check(check) => self.check_constraint(check),
            TableConstraint::ForeignKey(_) => Err(GuardError::Denied(NO_FOREIGN_KEYS.to_owned())),
            _ => Err(GuardError::Denied(
                "this table constraint is not allowed: use PRIMARY KEY, UNIQUE or CHECK".to_owned(),
            )),
        }
    }

    fn primary_key(&mut self, key: &mut PrimaryKeyConstraint) -> Result<(), GuardError> {
        let PrimaryKeyConstraint {
            name: _,
            index_name,
            index_type,
            columns,
            include,
            index_options,
            characteristics: _,
        } = key;
        if index_name.is_some()
            || index_type.is_some()
            || !include.is_empty()
            || !index_options.is_empty()
        {
            return Err(key_options());
        }
        self.index_columns(columns)
    }

    fn unique(&mut self, unique: &mut UniqueConstraint) -> Result<(), GuardError> {
        let UniqueConstraint {
            name: _,
            index_name,
            index_type_display: _,
            index_type,
            columns,
            include,
            index_options,
            characteristics: _,
            nulls_distinct: _,
        } = unique;
        if index_name.is_some()
            || index_type.is_some()
            || !include.is_empty()
            || !index_options.is_empty()
        {
            return Err(key_options());
        }
        self.index_columns(columns)
    }

    fn check_constraint(&mut self, check: &mut CheckConstraint) -> Result<(), GuardError> {
        let CheckConstraint {
            name: _,
            expr,
            no_inherit: _,
            enforced: _,
        } = check;
        self.expr(expr)
    }

    fn index_columns(&mut self, columns: &mut [IndexColumn]) -> Result<(), GuardError> {
        for IndexColumn {
            column,
            operator_class,
        } in columns
        {
            if let Some(class) = operator_class {
                plain_name("operator class", class)?;
            }
            self.order_by_expr(column)?;
        }
        Ok(())
    }

    fn create_index(&mut self, index: &mut CreateIndex) -> Result<(), GuardError> {
        let CreateIndex {
            name,
            table_name,
            using,
            columns,
            unique: _,
            concurrently,
            r#async,
            if_not_exists: _,
            include: _,
            nulls_distinct: _,
            with,
            predicate,
            index_options,
            alter_options,
        } = index;
        if *concurrently {
            return Err(GuardError::Denied(
                "the form CREATE INDEX CONCURRENTLY is not allowed: setup runs in a transaction"
                    .to_owned(),
            ));
        }
        if *r#async || !with.is_empty() || !index_options.is_empty() || !alter_options.is_empty() {
            return Err(GuardError::Denied(format!(
                "this CREATE INDEX option is not allowed: write CREATE [UNIQUE] INDEX [IF NOT \
                 EXISTS] name ON table [USING method] (columns) [WHERE …]; {SETUP_ALLOWED}"
            )));
        }
        match using {
            None
            | Some(
                IndexType::BTree
                | IndexType::Hash
                | IndexType::GIN
                | IndexType::GiST
                | IndexType::SPGiST
                | IndexType::BRIN,
            ) => {}
            Some(_) => {
                return Err(GuardError::Denied(
                    "this index method is not allowed: use btree, hash, gin, gist, spgist or brin"
                        .to_owned(),
                ));
            }
        }
        self.target_relation(table_name)?;
        self.index_columns(columns)?;
        if let Some(predicate) = predicate {
            self.expr(predicate)?;
        }
        match name {
            Some(name) => self.index_name(name),
            None if self.index_prefix().is_some() => Err(GuardError::Denied(
                "an index needs a name: CREATE INDEX name ON table (…)".to_owned(),
            )),
            None => Ok(()),
        }
    }

    /// An index name stays unqualified (it lives beside its table) and, with an index prefix,
    /// is renamed to prefix + name.
    fn index_name(&self, name: &mut ObjectName) -> Result<(), GuardError> {
        let Some(ident) = single_ident(name) else {
            return Err(GuardError::Denied(format!(
                "index name {} is qualified: an index lives beside its table, name it alone",
                quoted(&written(name))
            )));
        };
        let folded = names::fold(ident);
        validate_declared_name("index", &folded).map_err(GuardError::Denied)?;
        let physical = match self.index_prefix() {
            Some(prefix) => format!("{prefix}{folded}"),
            None => folded,
        };
        *name = ObjectName::from(vec![names::ident(&physical)]);
        Ok(())
    }
}

/// Whether a `CREATE TABLE` has nothing beyond a name, columns, constraints, `IF NOT EXISTS`,
/// `WITHOUT ROWID` and `STRICT`: the rest must equal what a bare `CREATE TABLE` parses to, so
/// every other option (of any dialect `sqlparser` knows) is refused without being listed.
fn only_plain_parts(table: &mut CreateTable) -> bool {
    let name = mem::replace(&mut table.name, ObjectName(Vec::new()));
    let columns = mem::take(&mut table.columns);
    let constraints = mem::take(&mut table.constraints);
    let if_not_exists = mem::take(&mut table.if_not_exists);
    let without_rowid = mem::take(&mut table.without_rowid);
    let strict = mem::take(&mut table.strict);
    let plain = *table == CreateTableBuilder::new(ObjectName(Vec::new())).build();
    table.name = name;
    table.columns = columns;
    table.constraints = constraints;
    table.if_not_exists = if_not_exists;
    table.without_rowid = without_rowid;
    table.strict = strict;
    plain
}

fn key_options() -> GuardError {
    GuardError::Denied(
        "index options on PRIMARY KEY or UNIQUE are not allowed: list the columns".to_owned(),
    )
}

/// A collation or operator class named alone.
fn plain_name(what: &str, name: &ObjectName) -> Result<(), GuardError> {
    if single_ident(name).is_some() {
        Ok(())
    } else {
        Err(GuardError::Denied(format!(
            "{what} {} is qualified: name it alone",
            quoted(&written(name))
        )))
    }
}
