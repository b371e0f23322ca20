//! The allow-list walk: visits every part of a parsed statement, refuses any node it does not
//! know to be harmless, and renames declared tables to their physical names on the way.
//!
//! The walk matches `sqlparser`'s structs field by field (destructuring without `..`), so a field
//! that a newer `sqlparser` adds breaks the build here instead of slipping through unchecked;
//! enums end in a catch-all that refuses. Every relation the walk meets is either a common table
//! expression in scope or a declared table; a table that is renamed and not aliased gets its
//! logical name as alias, so `balances.balance` and `excluded.balance` keep working in the
//! rewritten statement. [`verify`] re-checks the result with `sqlparser`'s own visitor.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Assignment, AssignmentTarget, CastKind, CeilFloorKind, ConflictTarget, Cte, DataType,
    DateTimeField, Delete, Distinct, DoUpdate, Expr, FromTable, Function, FunctionArg,
    FunctionArgExpr, FunctionArgumentClause, FunctionArgumentList, FunctionArguments,
    GroupByExpr, Ident, Insert, Join, JoinConstraint, JoinOperator, LimitClause,
    NamedWindowDefinition, NamedWindowExpr, ObjectName, Offset, OnConflict, OnConflictAction,
    OnInsert, OrderBy, OrderByExpr, OrderByKind, OrderBySort, Query, Select, SelectFlavor,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, SetOperator, SetQuantifier, Statement,
    TableAlias, TableAliasWithoutColumns, TableFactor, TableObject, TableWithJoins, TypedString,
    Update, UpdateTableFromKind, Value, ValueWithSpan, Values, Visit, Visitor,
    WildcardAdditionalOptions, WindowFrame, WindowFrameBound, WindowSpec, With,
};

use super::names::{self, quoted, single_ident, written};
use super::{Dialect, Guard, GuardError, MAX_NESTING, StatementKind, allow, parse};

/// What a guest may run, for messages.
const DATA_ALLOWED: &str =
    "projectors may run SELECT, INSERT, UPDATE and DELETE on their declared tables";

/// Walks one statement for one guard, rewriting it in place.
pub(super) struct Walker<'g> {
    guard: &'g Guard,
    /// Common table expressions in scope, innermost scope last, as the database resolves them.
    ctes: Vec<Vec<String>>,
    /// Logical tables the statement touches.
    touched: BTreeSet<String>,
    /// How deep the walk is in expressions and queries.
    depth: usize,
}

impl<'g> Walker<'g> {
    pub(super) fn new(guard: &'g Guard) -> Self {
        Self {
            guard,
            ctes: Vec::new(),
            touched: BTreeSet::new(),
            depth: 0,
        }
    }

    /// The logical tables the walk met, sorted.
    pub(super) fn into_tables(self) -> Vec<String> {
        self.touched.into_iter().collect()
    }

    pub(super) fn dialect(&self) -> Dialect {
        self.guard.dialect
    }

    /// The prefix setup mode puts before index names, if any.
    pub(super) fn index_prefix(&self) -> Option<&str> {
        self.guard.index_prefix.as_deref()
    }

    /// Checks and rewrites a guest's statement: a query, or one write.
    pub(super) fn data_statement(
        &mut self,
        statement: &mut Statement,
        kind_name: &str,
    ) -> Result<StatementKind, GuardError> {
        let returns_rows = match statement {
            Statement::Query(query) => return self.top_query(query),
            Statement::Insert(insert) => self.insert(insert)?,
            Statement::Update(update) => self.update(update)?,
            Statement::Delete(delete) => self.delete(delete)?,
            Statement::CreateTable(_) | Statement::CreateIndex(_) => {
                return Err(GuardError::Denied(format!(
                    "statement kind {kind_name} is not allowed: {DATA_ALLOWED}; their tables and \
                     indexes are created by the host from the projector's declaration"
                )));
            }
            _ => {
                return Err(GuardError::Denied(format!(
                    "statement kind {kind_name} is not allowed: {DATA_ALLOWED}"
                )));
            }
        };
        Ok(write_kind(returns_rows))
    }

    /// A top-level query: a `SELECT` (or `VALUES`), or `WITH … INSERT/UPDATE/DELETE`.
    fn top_query(&mut self, query: &mut Query) -> Result<StatementKind, GuardError> {
        if !matches!(
            *query.body,
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_)
        ) {
            self.query(query)?;
            return Ok(StatementKind::Query);
        }
        let Query {
            with,
            body,
            order_by,
            limit_clause,
            fetch,
            locks,
            for_clause,
            settings,
            format_clause,
            pipe_operators,
        } = query;
        let Some(with) = with else {
            return Err(denied("this form of INSERT, UPDATE or DELETE"));
        };
        if order_by.is_some()
            || limit_clause.is_some()
            || fetch.is_some()
            || !locks.is_empty()
            || for_clause.is_some()
            || settings.is_some()
            || format_clause.is_some()
            || !pipe_operators.is_empty()
        {
            return Err(denied("ORDER BY, LIMIT or other clauses after a write"));
        }
        self.with_clause(with)?;
        let returns_rows = match body.as_mut() {
            SetExpr::Insert(Statement::Insert(insert)) => self.insert(insert)?,
            SetExpr::Update(Statement::Update(update)) => self.update(update)?,
            SetExpr::Delete(Statement::Delete(delete)) => self.delete(delete)?,
            _ => return Err(denied("this form of INSERT, UPDATE or DELETE")),
        };
        self.ctes.pop();
        Ok(write_kind(returns_rows))
    }

    /// `INSERT INTO t [(columns)] VALUES … | SELECT … | DEFAULT VALUES [ON CONFLICT …] [RETURNING …]`.
    /// Returns whether it returns rows.
    fn insert(&mut self, insert: &mut Insert) -> Result<bool, GuardError> {
        let Insert {
            insert_token: _,
            optimizer_hints,
            or: _,
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
        let TableObject::TableName(name) = table else {
            return Err(GuardError::Denied(format!(
                "INSERT INTO a function or subquery is not allowed: insert into a declared table \
                 (declared: {})",
                self.guard.declared_list
            )));
        };
        if let Some(alias) = table_alias {
            check_ident(&alias.alias)?;
        }
        let alias = self.target_relation(name)?;
        if table_alias.is_none() {
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
                            "ON CONFLICT ON CONSTRAINT is not allowed: name the conflict columns, \
                             ON CONFLICT (column, …)"
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
                    "ON DUPLICATE KEY UPDATE is not allowed: write ON CONFLICT (columns) DO UPDATE"
                        .to_owned(),
                ));
            }
        }
        self.returning(returning)
    }

    /// `UPDATE t [AS a] SET … [FROM …] [WHERE …] [RETURNING …]`. Returns whether it returns rows.
    fn update(&mut self, update: &mut sqlparser::ast::Update) -> Result<bool, GuardError> {
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
                    "UPDATE … FROM before SET is not allowed: write UPDATE table SET … FROM …"
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
    fn delete(&mut self, delete: &mut Delete) -> Result<bool, GuardError> {
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

    /// A query anywhere: the statement itself, a subquery, a CTE body.
    pub(super) fn query(&mut self, query: &mut Query) -> Result<(), GuardError> {
        self.descend()?;
        let Query {
            with,
            body,
            order_by,
            limit_clause,
            fetch,
            locks,
            for_clause,
            settings,
            format_clause,
            pipe_operators,
        } = query;
        if fetch.is_some() {
            return Err(denied("FETCH FIRST (use LIMIT)"));
        }
        if !locks.is_empty() {
            return Err(denied("row locking (FOR UPDATE, FOR SHARE)"));
        }
        if for_clause.is_some()
            || settings.is_some()
            || format_clause.is_some()
            || !pipe_operators.is_empty()
        {
            return Err(denied("this query clause"));
        }
        let scoped = with.is_some();
        if let Some(with) = with {
            self.with_clause(with)?;
        }
        self.set_expr(body)?;
        if let Some(order_by) = order_by {
            self.order_by(order_by)?;
        }
        match limit_clause {
            None => {}
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                if !limit_by.is_empty() {
                    return Err(denied("LIMIT BY"));
                }
                if let Some(limit) = limit {
                    self.expr(limit)?;
                }
                if let Some(Offset { value, rows: _ }) = offset {
                    self.expr(value)?;
                }
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                self.expr(offset)?;
                self.expr(limit)?;
            }
        }
        if scoped {
            self.ctes.pop();
        }
        self.ascend();
        Ok(())
    }

    /// `WITH a AS (…), b AS (…)`: each body sees the CTEs before it (never itself), and the
    /// names enter scope for the rest of the query. The caller pops the scope.
    fn with_clause(&mut self, with: &mut With) -> Result<(), GuardError> {
        if with.recursive {
            return Err(GuardError::Denied(
                "recursive CTEs are not allowed: they can run without bound".to_owned(),
            ));
        }
        self.ctes.push(Vec::new());
        for cte in &mut with.cte_tables {
            let Cte {
                alias,
                query,
                from,
                materialized: _,
                closing_paren_token: _,
            } = cte;
            if from.is_some() {
                return Err(denied("this form of common table expression"));
            }
            check_table_alias(alias)?;
            self.check_cte_name(&alias.name)?;
            self.query(query)?;
            let name = names::resolved(self.dialect(), &alias.name);
            if let Some(scope) = self.ctes.last_mut() {
                scope.push(name);
            }
        }
        Ok(())
    }

    /// A CTE may not take the name of a declared table or a physical one (it would shadow the
    /// table, and a body that reads the table would then read itself: SQLite runs that as a
    /// recursive CTE, without bound).
    fn check_cte_name(&self, name: &Ident) -> Result<(), GuardError> {
        let folded = names::fold(name);
        let taken = folded.starts_with("zdr_")
            || self.guard.tables.values().any(|declared| {
                declared.logical == folded || declared.physical.name.to_ascii_lowercase() == folded
            });
        if taken {
            return Err(GuardError::Denied(format!(
                "common table expression name {} is taken by a table: give the CTE another name",
                quoted(&name.value)
            )));
        }
        Ok(())
    }

    /// Whether `ident` names a CTE in scope, as the database would resolve it.
    fn is_cte(&self, ident: &Ident) -> bool {
        let name = names::resolved(self.dialect(), ident);
        self.ctes.iter().flatten().any(|cte| *cte == name)
    }

    fn set_expr(&mut self, body: &mut SetExpr) -> Result<(), GuardError> {
        match body {
            SetExpr::Select(select) => self.select(select),
            SetExpr::Query(query) => self.query(query),
            SetExpr::SetOperation {
                left,
                op,
                set_quantifier,
                right,
            } => {
                if !matches!(
                    op,
                    SetOperator::Union | SetOperator::Except | SetOperator::Intersect
                ) || !matches!(
                    set_quantifier,
                    SetQuantifier::All | SetQuantifier::Distinct | SetQuantifier::None
                ) {
                    return Err(denied("this set operation (use UNION, EXCEPT or INTERSECT)"));
                }
                self.descend()?;
                self.set_expr(left)?;
                self.set_expr(right)?;
                self.ascend();
                Ok(())
            }
            SetExpr::Values(values) => self.values(values),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                Err(denied("a write inside a query"))
            }
            SetExpr::Table(_) => Err(denied("TABLE shorthand (write SELECT * FROM …)")),
        }
    }

    fn values(&mut self, values: &mut Values) -> Result<(), GuardError> {
        let Values {
            explicit_row,
            value_keyword: _,
            rows,
        } = values;
        if *explicit_row {
            return Err(denied("VALUES ROW(…)"));
        }
        for row in rows {
            for expr in &mut row.content {
                self.expr(expr)?;
            }
        }
        Ok(())
    }

    fn select(&mut self, select: &mut Select) -> Result<(), GuardError> {
        let Select {
            select_token: _,
            optimizer_hints,
            distinct,
            select_modifiers,
            top,
            top_before_distinct: _,
            projection,
            exclude,
            into,
            from,
            lateral_views,
            prewhere,
            selection,
            connect_by,
            group_by,
            cluster_by,
            distribute_by,
            sort_by,
            having,
            named_window,
            qualify,
            window_before_qualify: _,
            value_table_mode,
            flavor,
        } = select;
        if into.is_some() {
            return Err(GuardError::Denied(
                "SELECT … INTO is not allowed: it creates a table; insert into a declared table \
                 instead"
                    .to_owned(),
            ));
        }
        if !optimizer_hints.is_empty()
            || select_modifiers.is_some()
            || top.is_some()
            || exclude.is_some()
            || !lateral_views.is_empty()
            || prewhere.is_some()
            || !connect_by.is_empty()
            || !cluster_by.is_empty()
            || !distribute_by.is_empty()
            || !sort_by.is_empty()
            || qualify.is_some()
            || value_table_mode.is_some()
            || *flavor != SelectFlavor::Standard
        {
            return Err(denied("this SELECT clause"));
        }
        match distinct {
            None | Some(Distinct::Distinct | Distinct::All) => {}
            Some(Distinct::On(exprs)) => {
                for expr in exprs {
                    self.expr(expr)?;
                }
            }
        }
        for table in from {
            self.table_with_joins(table)?;
        }
        for item in projection {
            self.select_item(item)?;
        }
        if let Some(selection) = selection {
            self.expr(selection)?;
        }
        match group_by {
            GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => {
                for expr in exprs {
                    self.expr(expr)?;
                }
            }
            _ => return Err(denied("this GROUP BY form (list the expressions)")),
        }
        if let Some(having) = having {
            self.expr(having)?;
        }
        for NamedWindowDefinition(_, window) in named_window {
            match window {
                NamedWindowExpr::NamedWindow(_) => {}
                NamedWindowExpr::WindowSpec(spec) => self.window_spec(spec)?,
            }
        }
        Ok(())
    }

    fn select_item(&mut self, item: &mut SelectItem) -> Result<(), GuardError> {
        match item {
            SelectItem::UnnamedExpr(expr) => self.expr(expr),
            SelectItem::ExprWithAlias { expr, alias } => {
                check_ident(alias)?;
                self.expr(expr)
            }
            SelectItem::Wildcard(options) => plain_wildcard(options),
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), options)
                if single_ident(name).is_some() =>
            {
                plain_wildcard(options)
            }
            SelectItem::QualifiedWildcard(..) | SelectItem::ExprWithAliases { .. } => {
                Err(denied("this select item (write expressions, * or table.*)"))
            }
        }
    }

    fn table_with_joins(&mut self, table: &mut TableWithJoins) -> Result<(), GuardError> {
        self.table_factor(&mut table.relation, Role::Read)?;
        for join in &mut table.joins {
            self.join(join)?;
        }
        Ok(())
    }

    fn join(&mut self, join: &mut Join) -> Result<(), GuardError> {
        let Join {
            relation,
            global,
            join_operator,
        } = join;
        let constraint = match join_operator {
            JoinOperator::Join(constraint)
            | JoinOperator::Inner(constraint)
            | JoinOperator::Left(constraint)
            | JoinOperator::LeftOuter(constraint)
            | JoinOperator::Right(constraint)
            | JoinOperator::RightOuter(constraint)
            | JoinOperator::FullOuter(constraint)
            | JoinOperator::CrossJoin(constraint)
                if !*global =>
            {
                constraint
            }
            _ => {
                return Err(denied(
                    "this join (use [INNER], LEFT, RIGHT, FULL or CROSS JOIN)",
                ));
            }
        };
        self.table_factor(relation, Role::Read)?;
        match constraint {
            JoinConstraint::On(expr) => self.expr(expr),
            JoinConstraint::Using(columns) => columns.iter().try_for_each(column_name),
            JoinConstraint::Natural | JoinConstraint::None => Ok(()),
        }
    }

    /// One item of `FROM`, or the target of an `UPDATE` or `DELETE`.
    fn table_factor(&mut self, factor: &mut TableFactor, role: Role) -> Result<(), GuardError> {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                sample,
                index_hints,
            } => {
                if args.is_some() {
                    return Err(self.table_function(name));
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || *with_ordinality
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || sample.is_some()
                    || !index_hints.is_empty()
                {
                    return Err(denied("table hints, sampling and time travel"));
                }
                if let Some(alias) = alias {
                    check_table_alias(alias)?;
                }
                let implicit = match role {
                    Role::Read => self.relation(name)?,
                    Role::WriteTarget => self.target_relation(name)?,
                };
                if alias.is_none() {
                    *alias = implicit.map(|name| TableAlias {
                        explicit: true,
                        name,
                        columns: Vec::new(),
                        at: None,
                    });
                }
                Ok(())
            }
            _ if role == Role::WriteTarget => Err(GuardError::Denied(format!(
                "the target of UPDATE or DELETE must be a declared table (declared: {})",
                self.guard.declared_list
            ))),
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                sample,
            } => {
                if *lateral {
                    return Err(denied("LATERAL"));
                }
                if sample.is_some() {
                    return Err(denied("table sampling"));
                }
                if let Some(alias) = alias {
                    check_table_alias(alias)?;
                }
                self.query(subquery)
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if let Some(alias) = alias {
                    check_table_alias(alias)?;
                }
                self.descend()?;
                self.table_with_joins(table_with_joins)?;
                self.ascend();
                Ok(())
            }
            TableFactor::Function { name, .. } => Err(self.table_function(name)),
            _ => Err(GuardError::Denied(format!(
                "table-valued functions are not allowed: FROM may name declared tables, common \
                 table expressions and subqueries (declared: {})",
                self.guard.declared_list
            ))),
        }
    }

    fn table_function(&self, name: &ObjectName) -> GuardError {
        GuardError::Denied(format!(
            "table-valued function {} is not allowed: FROM may name declared tables, common \
             table expressions and subqueries (declared: {})",
            quoted(&written(name)),
            self.guard.declared_list
        ))
    }

    /// A relation read by the statement: a CTE in scope (left alone) or a declared table
    /// (renamed). Returns the alias to add when the table was renamed.
    fn relation(&mut self, name: &mut ObjectName) -> Result<Option<Ident>, GuardError> {
        if single_ident(name).is_some_and(|ident| self.is_cte(ident)) {
            return Ok(None);
        }
        self.target_relation(name)
    }

    /// A declared table, renamed to its physical name; never a CTE (databases resolve the
    /// target of a write, and the table of DDL, to a real table even when a CTE has its name).
    /// Returns the alias to add when the name changed.
    pub(super) fn target_relation(
        &mut self,
        name: &mut ObjectName,
    ) -> Result<Option<Ident>, GuardError> {
        let Some(ident) = single_ident(name) else {
            return Err(GuardError::Denied(format!(
                "table name {} is qualified with a schema or database: name declared tables \
                 alone (declared: {})",
                quoted(&written(name)),
                self.guard.declared_list
            )));
        };
        let Some(declared) = self.guard.declared(&ident.value) else {
            return Err(GuardError::Denied(format!(
                "table {} is not declared by this projector (declared: {})",
                quoted(&ident.value),
                self.guard.declared_list
            )));
        };
        *name = names::physical_object_name(&declared.physical);
        self.touched.insert(declared.logical.clone());
        let renamed = !declared.physical.name.eq_ignore_ascii_case(&declared.logical);
        Ok(renamed.then(|| names::ident(&declared.logical)))
    }

    fn order_by(&mut self, order_by: &mut OrderBy) -> Result<(), GuardError> {
        let OrderBy { kind, interpolate } = order_by;
        match kind {
            OrderByKind::Expressions(exprs) if interpolate.is_none() => {
                for expr in exprs {
                    self.order_by_expr(expr)?;
                }
                Ok(())
            }
            _ => Err(denied("this ORDER BY form (list the expressions)")),
        }
    }

    pub(super) fn order_by_expr(&mut self, item: &mut OrderByExpr) -> Result<(), GuardError> {
        let OrderByExpr {
            expr,
            options,
            with_fill,
        } = item;
        if with_fill.is_some() || matches!(options.sort, Some(OrderBySort::Using(_))) {
            return Err(denied("this ORDER BY option (use ASC, DESC, NULLS FIRST or NULLS LAST)"));
        }
        self.expr(expr)
    }

    fn window_spec(&mut self, spec: &mut WindowSpec) -> Result<(), GuardError> {
        let WindowSpec {
            window_name: _,
            partition_by,
            order_by,
            window_frame,
        } = spec;
        for expr in partition_by {
            self.expr(expr)?;
        }
        for item in order_by {
            self.order_by_expr(item)?;
        }
        if let Some(WindowFrame {
            units: _,
            start_bound,
            end_bound,
        }) = window_frame
        {
            for bound in std::iter::once(start_bound).chain(end_bound) {
                match bound {
                    WindowFrameBound::Preceding(Some(expr))
                    | WindowFrameBound::Following(Some(expr)) => self.expr(expr)?,
                    WindowFrameBound::CurrentRow
                    | WindowFrameBound::Preceding(None)
                    | WindowFrameBound::Following(None) => {}
                }
            }
        }
        Ok(())
    }

    /// An expression anywhere.
    pub(super) fn expr(&mut self, expr: &mut Expr) -> Result<(), GuardError> {
        self.descend()?;
        self.expr_inner(expr)?;
        self.ascend();
        Ok(())
    }

    fn expr_inner(&mut self, expr: &mut Expr) -> Result<(), GuardError> {
        match expr {
            Expr::Identifier(ident) => self.column_word(ident),
            Expr::CompoundIdentifier(parts) => {
                if let [_, _] = parts.as_slice() {
                    Ok(())
                } else {
                    let written = parts
                        .iter()
                        .map(|part| part.value.as_str())
                        .collect::<Vec<_>>()
                        .join(".");
                    Err(GuardError::Denied(format!(
                        "column reference {} is not allowed: write column or table.column",
                        quoted(&written)
                    )))
                }
            }
            Expr::IsFalse(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsTrue(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsNull(inner)
            | Expr::IsNotNull(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotUnknown(inner)
            | Expr::Nested(inner) => self.expr(inner),
            Expr::IsDistinctFrom(left, right) | Expr::IsNotDistinctFrom(left, right) => {
                self.expr(left)?;
                self.expr(right)
            }
            Expr::InList {
                expr,
                list,
                negated: _,
            } => {
                self.expr(expr)?;
                list.iter_mut().try_for_each(|item| self.expr(item))
            }
            Expr::InSubquery {
                expr,
                subquery,
                negated: _,
            } => {
                self.expr(expr)?;
                self.query(subquery)
            }
            Expr::Between {
                expr,
                negated: _,
                low,
                high,
            } => {
                self.expr(expr)?;
                self.expr(low)?;
                self.expr(high)
            }
            Expr::BinaryOp { left, op, right } => {
                if !allow::binary_operator_allowed(op) {
                    return Err(GuardError::Denied(format!(
                        "operator {} is not allowed: use arithmetic, comparison, AND/OR, ||, \
                         bit and JSON operators, LIKE, GLOB, IN, BETWEEN or IS",
                        quoted(&op.to_string())
                    )));
                }
                self.expr(left)?;
                self.expr(right)
            }
            Expr::Like {
                negated: _,
                any,
                expr,
                pattern,
                escape_char,
            }
            | Expr::ILike {
                negated: _,
                any,
                expr,
                pattern,
                escape_char,
            } => {
                if *any {
                    return Err(denied("LIKE ANY"));
                }
                self.expr(expr)?;
                self.expr(pattern)?;
                escape_char
                    .iter_mut()
                    .try_for_each(|escape| self.expr(escape))
            }
            Expr::UnaryOp { op, expr } => {
                if !allow::unary_operator_allowed(op) {
                    return Err(GuardError::Denied(format!(
                        "operator {} is not allowed: use +, -, NOT or ~",
                        quoted(&op.to_string())
                    )));
                }
                self.expr(expr)
            }
            Expr::Cast {
                kind,
                expr,
                data_type,
                format,
            } => {
                if !matches!(kind, CastKind::Cast | CastKind::DoubleColon) || format.is_some() {
                    return Err(denied("this form of CAST (write CAST(x AS type) or x::type)"));
                }
                check_data_type(data_type)?;
                if let Expr::Value(ValueWithSpan {
                    value: Value::SingleQuotedString(text),
                    ..
                }) = expr.as_ref()
                {
                    check_time_literal(data_type, text)?;
                }
                self.expr(expr)
            }
            Expr::Extract {
                field: _,
                syntax: _,
                expr,
            } => self.expr(expr),
            Expr::Ceil { expr, field } | Expr::Floor { expr, field } => {
                if !matches!(
                    field,
                    CeilFloorKind::DateTimeField(DateTimeField::NoDateTime)
                        | CeilFloorKind::Scale(_)
                ) {
                    return Err(denied("CEIL or FLOOR to a date field"));
                }
                self.expr(expr)
            }
            Expr::Position { expr, r#in } => {
                self.expr(expr)?;
                self.expr(r#in)
            }
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                special: _,
                shorthand: _,
            } => {
                self.expr(expr)?;
                for part in [substring_from, substring_for].into_iter().flatten() {
                    self.expr(part)?;
                }
                Ok(())
            }
            Expr::Trim {
                trim_where: _,
                trim_what,
                expr,
                trim_characters,
            } => {
                self.expr(expr)?;
                if let Some(what) = trim_what {
                    self.expr(what)?;
                }
                trim_characters
                    .iter_mut()
                    .flatten()
                    .try_for_each(|item| self.expr(item))
            }
            Expr::Collate { expr, collation } => {
                if single_ident(collation).is_none() {
                    return Err(GuardError::Denied(format!(
                        "collation {} is qualified: name the collation alone",
                        quoted(&written(collation))
                    )));
                }
                self.expr(expr)
            }
            Expr::Value(value) => self.value(value),
            Expr::TypedString(TypedString {
                data_type,
                value,
                uses_odbc_syntax,
            }) => {
                check_data_type(data_type)?;
                match &value.value {
                    Value::SingleQuotedString(text) if !*uses_odbc_syntax => {
                        check_time_literal(data_type, text)
                    }
                    _ => Err(denied("this typed literal (write TYPE 'text')")),
                }
            }
            Expr::Function(function) => self.function(function),
            Expr::Case {
                case_token: _,
                end_token: _,
                operand,
                conditions,
                else_result,
            } => {
                if let Some(operand) = operand {
                    self.expr(operand)?;
                }
                for when in conditions {
                    self.expr(&mut when.condition)?;
                    self.expr(&mut when.result)?;
                }
                else_result
                    .iter_mut()
                    .try_for_each(|result| self.expr(result))
            }
            Expr::Exists {
                subquery,
                negated: _,
            } => self.query(subquery),
            Expr::Subquery(query) => self.query(query),
            Expr::Tuple(items) => items.iter_mut().try_for_each(|item| self.expr(item)),
            Expr::Interval(interval) => self.expr(&mut interval.value),
            other => Err(GuardError::Denied(format!(
                "{} is not allowed: expressions may use columns, literals, parameters, operators, \
                 CASE, CAST, subqueries and allowed functions",
                expr_label(other)
            ))),
        }
    }

    /// A bare word in an expression: a column, unless it is a keyword that reads the clock or
    /// the session.
    fn column_word(&self, ident: &Ident) -> Result<(), GuardError> {
        check_ident(ident)?;
        if ident.quote_style.is_none()
            && let Some(reason) = allow::session_word(self.dialect(), &ident.value)
        {
            return Err(GuardError::Denied(format!(
                "{} is not allowed: {reason}",
                quoted(&ident.value.to_ascii_lowercase())
            )));
        }
        Ok(())
    }

    fn value(&self, value: &ValueWithSpan) -> Result<(), GuardError> {
        match &value.value {
            Value::Number(_, false)
            | Value::SingleQuotedString(_)
            | Value::HexStringLiteral(_)
            | Value::Boolean(_)
            | Value::Null => Ok(()),
            Value::DollarQuotedString(_) if self.dialect() == Dialect::Postgres => Ok(()),
            Value::Placeholder(text) => {
                let digits = match self.dialect() {
                    Dialect::Sqlite => text.strip_prefix('?'),
                    Dialect::Postgres => text.strip_prefix('$'),
                };
                if digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) {
                    Ok(())
                } else {
                    Err(parse::unsupported_placeholder(text))
                }
            }
            _ => Err(denied(
                "this kind of literal (write numbers, 'strings', x'blobs', TRUE, FALSE and NULL, or \
                 pass a parameter)",
            )),
        }
    }

    fn function(&mut self, function: &mut Function) -> Result<(), GuardError> {
        let Function {
            name,
            uses_odbc_syntax,
            parameters,
            args,
            within_group,
            filter,
            null_treatment: _,
            over,
        } = function;
        let Some(ident) = single_ident(name) else {
            return Err(GuardError::Denied(format!(
                "function {} is qualified with a schema: call allowed functions by their plain \
                 name, such as {}",
                quoted(&written(name)),
                allow::FUNCTION_EXAMPLES
            )));
        };
        let lower = names::fold(ident);
        if !allow::function_allowed(&lower) {
            return Err(GuardError::Denied(format!(
                "function {} is not allowed: {}; allowed are deterministic functions such as {}",
                quoted(&lower),
                allow::function_reason(&lower),
                allow::FUNCTION_EXAMPLES
            )));
        }
        if *uses_odbc_syntax || !matches!(parameters, FunctionArguments::None) {
            return Err(denied("this form of function call"));
        }
        match args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(_) => {
                return Err(denied("a subquery as a function's argument list"));
            }
            FunctionArguments::List(FunctionArgumentList {
                duplicate_treatment: _,
                args,
                clauses,
            }) => {
                for arg in args {
                    match arg {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => self.expr(expr)?,
                        FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if lower == "count" => {}
                        _ => {
                            return Err(denied(
                                "this function argument (pass expressions; * only in count(*))",
                            ));
                        }
                    }
                }
                for clause in clauses {
                    match clause {
                        FunctionArgumentClause::OrderBy(items) => {
                            for item in items {
                                self.order_by_expr(item)?;
                            }
                        }
                        _ => return Err(denied("this clause in a function call")),
                    }
                }
            }
        }
        for item in within_group {
            self.order_by_expr(item)?;
        }
        if let Some(filter) = filter {
            self.expr(filter)?;
        }
        match over {
            None | Some(sqlparser::ast::WindowType::NamedWindow(_)) => Ok(()),
            Some(sqlparser::ast::WindowType::WindowSpec(spec)) => self.window_spec(spec),
        }
    }

    fn descend(&mut self) -> Result<(), GuardError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(GuardError::LimitExceeded(format!(
                "the statement nests deeper than {MAX_NESTING} levels"
            )));
        }
        Ok(())
    }

    fn ascend(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }
}

/// Whether a table factor is read from or written to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Read: a CTE name is allowed and left alone.
    Read,
    /// The target of `UPDATE` or `DELETE`: always a declared table.
    WriteTarget,
}

fn write_kind(returns_rows: bool) -> StatementKind {
    if returns_rows {
        StatementKind::Query
    } else {
        StatementKind::Execute
    }
}

/// `what is not allowed: <what the guest may run>`.
fn denied(what: &str) -> GuardError {
    GuardError::Denied(format!("{what} is not allowed: {DATA_ALLOWED}"))
}

/// An identifier the guard will print: its quote style must be one `sqlparser` can print.
fn check_ident(ident: &Ident) -> Result<(), GuardError> {
    match ident.quote_style {
        None | Some('"' | '`' | '[' | '\'') => Ok(()),
        Some(_) => Err(GuardError::InvalidSql(format!(
            "identifier {} is quoted in a way the guard does not accept: use double quotes",
            quoted(&ident.value)
        ))),
    }
}

/// A column named alone (in an insert list, `SET` or `USING`).
fn column_name(name: &ObjectName) -> Result<(), GuardError> {
    match single_ident(name) {
        Some(ident) => check_ident(ident),
        None => Err(GuardError::Denied(format!(
            "column {} must be named alone, without a table or schema",
            quoted(&written(name))
        ))),
    }
}

/// `AS name` or `AS name(a, b)`, without column types.
fn check_table_alias(alias: &TableAlias) -> Result<(), GuardError> {
    let TableAlias {
        explicit: _,
        name,
        columns,
        at,
    } = alias;
    check_ident(name)?;
    if at.is_some() || columns.iter().any(|column| column.data_type.is_some()) {
        return Err(denied("this alias form (write AS name or AS name(column, …))"));
    }
    columns.iter().try_for_each(|column| check_ident(&column.name))
}

/// `*` without `EXCLUDE`, `REPLACE` and the like.
fn plain_wildcard(options: &WildcardAdditionalOptions) -> Result<(), GuardError> {
    let WildcardAdditionalOptions {
        wildcard_token: _,
        opt_ilike,
        opt_exclude,
        opt_except,
        opt_replace,
        opt_rename,
        opt_alias,
    } = options;
    if opt_ilike.is_some()
        || opt_exclude.is_some()
        || opt_except.is_some()
        || opt_replace.is_some()
        || opt_rename.is_some()
        || opt_alias.is_some()
    {
        return Err(denied("wildcard options"));
    }
    Ok(())
}

pub(super) fn check_data_type(data_type: &DataType) -> Result<(), GuardError> {
    if allow::data_type_allowed(data_type) {
        return Ok(());
    }
    Err(GuardError::Denied(format!(
        "data type {} is not allowed: use integer, real, numeric, text, varchar, blob, boolean, \
         date, time, timestamp, interval, uuid or json types",
        type_label(data_type)
    )))
}

/// A data type for a message, without printing nested types (which could be deep).
fn type_label(data_type: &DataType) -> String {
    match data_type {
        DataType::Custom(name, _) => quoted(&written(name)),
        DataType::Array(_)
        | DataType::Map(..)
        | DataType::Tuple(_)
        | DataType::Nested(_)
        | DataType::Struct(..)
        | DataType::Union(_)
        | DataType::Nullable(_)
        | DataType::LowCardinality(_)
        | DataType::Table(_)
        | DataType::NamedTable { .. } => "composite or array".to_owned(),
        other => quoted(&other.to_string().to_ascii_lowercase()),
    }
}

/// `'now'::timestamp` and `DATE 'today'` read the clock on PostgreSQL.
fn check_time_literal(data_type: &DataType, text: &str) -> Result<(), GuardError> {
    if allow::is_time_type(data_type) && allow::is_clock_literal(text) {
        return Err(GuardError::Denied(format!(
            "the time literal {} is not allowed: it reads the clock, and a read model must equal \
             the pure fold of the events: take time from the event's created-at",
            quoted(text)
        )));
    }
    Ok(())
}

/// What an expression that is not allowed is called in a message.
fn expr_label(expr: &Expr) -> &'static str {
    match expr {
        Expr::CompoundFieldAccess { .. } => "field access",
        Expr::JsonAccess { .. } => "JSON path access",
        Expr::IsJson { .. } => "IS JSON",
        Expr::IsNormalized { .. } => "IS NORMALIZED",
        Expr::InUnnest { .. } => "IN UNNEST",
        Expr::SimilarTo { .. } => "SIMILAR TO",
        Expr::RLike { .. } => "REGEXP / RLIKE",
        Expr::AnyOp { .. } => "ANY (…)",
        Expr::AllOp { .. } => "ALL (…)",
        Expr::Convert { .. } => "CONVERT",
        Expr::AtTimeZone { .. } => "AT TIME ZONE",
        Expr::Overlay { .. } => "OVERLAY",
        Expr::Prefixed { .. } => "a prefixed literal",
        Expr::GroupingSets(_) | Expr::Cube(_) | Expr::Rollup(_) => "GROUPING SETS, CUBE or ROLLUP",
        Expr::Struct { .. } => "a struct",
        Expr::Named { .. } => "a named expression",
        Expr::Dictionary(_) => "a dictionary",
        Expr::Map(_) => "a map",
        Expr::Array(_) => "an array",
        Expr::MatchAgainst { .. } => "MATCH … AGAINST",
        Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => "a wildcard here",
        Expr::OuterJoin(_) => "the (+) outer join",
        Expr::Prior(_) => "PRIOR",
        Expr::Lambda(_) => "a lambda",
        Expr::MemberOf(_) => "MEMBER OF",
        _ => "this expression",
    }
}

/// Re-checks a rewritten statement with `sqlparser`'s own visitor, independently of the walk:
/// every relation must be the physical name of a declared table or the name of a CTE defined in
/// the statement, and every identifier must be printable.
///
/// # Errors
///
/// `Denied` when the check fails, which means the walk missed something.
pub(super) fn verify(guard: &Guard, statement: &Statement) -> Result<(), GuardError> {
    let mut ctes = CteNames(Vec::new());
    let _ = statement.visit(&mut ctes);
    let mut check = Relations {
        physical: guard
            .tables
            .values()
            .map(|declared| names::physical_object_name(&declared.physical))
            .collect(),
        ctes: ctes.0,
    };
    match statement.visit(&mut check) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(problem) => Err(GuardError::Denied(format!(
            "{problem} (the guard's final check refused the statement)"
        ))),
    }
}

/// Collects the names of every CTE a statement defines.
struct CteNames(Vec<String>);

impl Visitor for CteNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            self.0
                .extend(with.cte_tables.iter().map(|cte| names::fold(&cte.alias.name)));
        }
        ControlFlow::Continue(())
    }
}

/// Refuses relations that are neither physical names nor CTEs, and unprintable identifiers.
struct Relations {
    physical: Vec<ObjectName>,
    ctes: Vec<String>,
}

impl Visitor for Relations {
    type Break = String;

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<String> {
        let is_cte = single_ident(relation).is_some_and(|ident| self.ctes.contains(&names::fold(ident)));
        if is_cte || self.physical.contains(relation) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(format!(
                "relation {} is not a table of this target",
                quoted(&written(relation))
            ))
        }
    }

    fn pre_visit_ident(&mut self, ident: &Ident) -> ControlFlow<String> {
        match check_ident(ident) {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => ControlFlow::Break(error.message().to_owned()),
        }
    }
}
