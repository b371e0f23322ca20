//! The allow-list walk over writes: `INSERT` (with `VALUES`, `SELECT` or `DEFAULT VALUES`, and
//! `ON CONFLICT … DO NOTHING | DO UPDATE` upserts), `UPDATE` (with `FROM`) and `DELETE` (with
//! `USING`), each optionally `RETURNING` rows.
//!
//! The target of a write is always a declared table, never a CTE: databases resolve it to a real
//! table even when a CTE of the same name is in scope.

use sqlparser::ast::{
    Assignment, AssignmentTarget, ConflictTarget, Delete, DoUpdate, FromTable, Insert, OnConflict,
    OnConflictAction, OnInsert, SelectItem, TableAliasWithoutColumns, TableObject, Update,
    UpdateTableFromKind,
};

use super::rewrite::{Role, Walker, check_ident, column_name};
use super::{Dialect, GuardError};

impl Walker<'_> {
    /// `INSERT INTO t [(columns)] VALUES … | SELECT … | DEFAULT VALUES`, then optionally
    /// `ON CONFLICT …` and `RETURNING …`. Returns whether it returns rows.
    pub(super) fn insert(&mut self, insert: &mut Insert) -> Result<bool, GuardError> {
        let Insert {
            insert_token: _,
            optimizer_hints,
            or,
            ignore,
            into: _,
            table,
            table_alias,
            columns,
            overwrite,
            source,
            assignments,
            partitioned,
            after_columns,
            has_table_keyword,
            on,
            returning,
            output,
            replace_into,
            priority,
            insert_alias,
            settings,
            format_clause,
            multi_table_insert_type,
            multi_table_into_clauses,
            multi_table_when_clauses,
            multi_table_else_clause,
        } = insert;
        if !optimizer_hints.is_empty()
            || *ignore
            || *overwrite
            || !assignments.is_empty()
            || partitioned.is_some()
            || !after_columns.is_empty()
            || *has_table_keyword
            || output.is_some()
            || *replace_into
            || priority.is_some()
            || insert_alias.is_some()
            || settings.is_some()
            || format_clause.is_some()
            || multi_table_insert_type.is_some()
            || !multi_table_into_clauses.is_empty()
            || !multi_table_when_clauses.is_empty()
            || multi_table_else_clause.is_some()
        {
            return Err(GuardError::Denied(
                "this form of INSERT is not allowed: write INSERT INTO table (columns) VALUES … \
                 or SELECT …, optionally with ON CONFLICT … DO NOTHING or DO UPDATE and RETURNING"
                    .to_owned(),
            ));
        }
        if or.is_some() && self.dialect() != Dialect::Sqlite {
            return Err(GuardError::Denied(
                "the form INSERT OR … is SQLite's: write INSERT … ON CONFLICT (columns) DO NOTHING \
                 or DO UPDATE"
                    .to_owned(),
            ));
        }
        let TableObject::TableName(name) = table else {
            return Err(GuardError::Denied(format!(
                "inserting into a function or subquery is not allowed: insert into a declared \
                 table (declared: {})",
                self.declared_list()
            )));
        };
        if let Some(alias) = table_alias {
            if self.dialect() == Dialect::MySql {
                return Err(GuardError::Denied(
                    "INSERT INTO table AS alias is not allowed on MySQL and MariaDB: name the                      table itself"
                        .to_owned(),
                ));
            }
            check_ident(&alias.alias)?;
        }
        let logical = name
            .0
            .last()
            .and_then(sqlparser::ast::ObjectNamePart::as_ident)
            .map(|ident| ident.value.clone())
            .unwrap_or_default();
        let alias = self.target_relation(name)?;
        if table_alias.is_none() && self.dialect() != Dialect::MySql {
            *table_alias = alias.map(|alias| TableAliasWithoutColumns {
                explicit: true,
                alias,
            });
        }
        for column in columns.iter() {
            column_name(column)?;
        }
        if let Some(source) = source {
            self.query(source)?;
        }
        match on {
            None => {}
            Some(OnInsert::OnConflict(OnConflict {
                conflict_target,
                action,
            })) => {
                match conflict_target {
                    None | Some(ConflictTarget::Columns(_)) => {}
                    Some(ConflictTarget::OnConstraint(_)) => {
                        return Err(GuardError::Denied(
                            "the form ON CONFLICT ON CONSTRAINT is not allowed: name the conflict \
                             columns, ON CONFLICT (column, …)"
                                .to_owned(),
                        ));
                    }
                }
                match action {
                    OnConflictAction::DoNothing => {}
                    OnConflictAction::DoUpdate(DoUpdate {
                        assignments,
                        selection,
                    }) => {
                        for assignment in assignments {
                            self.assignment(assignment)?;
                        }
                        if let Some(selection) = selection {
                            self.expr(selection)?;
                        }
                    }
                }
            }
            Some(_) => {
                return Err(GuardError::Denied(
                    "the form ON DUPLICATE KEY UPDATE is not allowed: write ON CONFLICT (columns) \
                     DO UPDATE"
                        .to_owned(),
                ));
            }
        }
        if self.dialect() == Dialect::MySql {
            let keys = self.table_keys(&logical).cloned().unwrap_or_default();
            super::mysql::translate_upsert(on, Some(&keys))?;
        }
        self.returning(returning)
    }

    /// `UPDATE t [AS a] SET … [FROM …] [WHERE …] [RETURNING …]`. Returns whether it returns rows.
    pub(super) fn update(&mut self, update: &mut Update) -> Result<bool, GuardError> {
        let Update {
            update_token: _,
            optimizer_hints,
            table,
            assignments,
            from,
            selection,
            returning,
            output,
            or: _,
            order_by,
            limit,
        } = update;
        if !optimizer_hints.is_empty()
            || output.is_some()
            || !order_by.is_empty()
            || limit.is_some()
            || !table.joins.is_empty()
        {
            return Err(GuardError::Denied(
                "this form of UPDATE is not allowed: write UPDATE table SET … [FROM …] [WHERE …] \
                 [RETURNING …]"
                    .to_owned(),
            ));
        }
        self.table_factor(&mut table.relation, Role::WriteTarget)?;
        match from {
            None => {}
            Some(UpdateTableFromKind::AfterSet(tables)) => {
                for table in tables {
                    self.table_with_joins(table)?;
                }
            }
            Some(UpdateTableFromKind::BeforeSet(_)) => {
                return Err(GuardError::Denied(
                    "the form UPDATE … FROM … SET is not allowed: write UPDATE table SET … FROM …"
                        .to_owned(),
                ));
            }
        }
        for assignment in assignments {
            self.assignment(assignment)?;
        }
        if let Some(selection) = selection {
            self.expr(selection)?;
        }
        self.returning(returning)
    }

    /// `DELETE FROM t [AS a] [USING …] [WHERE …] [RETURNING …]`. Returns whether it returns rows.
    pub(super) fn delete(&mut self, delete: &mut Delete) -> Result<bool, GuardError> {
        let Delete {
            delete_token: _,
            optimizer_hints,
            tables,
            from,
            using,
            selection,
            returning,
            output,
            order_by,
            limit,
        } = delete;
        let target = match from {
            FromTable::WithFromKeyword(targets) => match targets.as_mut_slice() {
                [target] if target.joins.is_empty() => Some(target),
                _ => None,
            },
            FromTable::WithoutKeyword(_) => None,
        };
        let Some(target) = target.filter(|_| {
            optimizer_hints.is_empty()
                && tables.is_empty()
                && output.is_none()
                && order_by.is_empty()
                && limit.is_none()
        }) else {
            return Err(GuardError::Denied(
                "this form of DELETE is not allowed: write DELETE FROM table [USING …] [WHERE …] \
                 [RETURNING …]"
                    .to_owned(),
            ));
        };
        self.table_factor(&mut target.relation, Role::WriteTarget)?;
        for table in using.iter_mut().flatten() {
            self.table_with_joins(table)?;
        }
        if let Some(selection) = selection {
            self.expr(selection)?;
        }
        self.returning(returning)
    }

    /// A write's `RETURNING` list; returns whether there is one.
    fn returning(&mut self, returning: &mut Option<Vec<SelectItem>>) -> Result<bool, GuardError> {
        let Some(items) = returning else {
            return Ok(false);
        };
        for item in items {
            self.select_item(item)?;
        }
        Ok(true)
    }

    /// `column = value` or `(a, b) = (…)` in `SET`.
    fn assignment(&mut self, assignment: &mut Assignment) -> Result<(), GuardError> {
        let Assignment { target, value } = assignment;
        match target {
            AssignmentTarget::ColumnName(name) => column_name(name)?,
            AssignmentTarget::Tuple(names) => {
                for name in names.iter() {
                    column_name(name)?;
                }
            }
        }
        self.expr(value)
    }
}
