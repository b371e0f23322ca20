//! The allow-list walk: visits every part of a parsed statement, refuses any node it does not
//! know to be harmless, and renames declared tables to their physical names on the way.
//!
//! The walk matches `sqlparser`'s structs field by field (destructuring without `..`), so a field
//! that a newer `sqlparser` adds breaks the build here instead of slipping through unchecked;
//! enums end in a catch-all that refuses. Every relation the walk meets is either a common table
//! expression in scope or a declared table; a table that is renamed and not aliased gets its
//! logical name as alias, so `balances.balance` and `excluded.balance` keep working in the
//! rewritten statement. Expressions are walked in `expr`; `verify` re-checks the result.

use std::collections::BTreeSet;

use sqlparser::ast::{
    Cte, Distinct, GroupByExpr, Ident, Join, JoinConstraint, JoinOperator, LimitClause,
    NamedWindowDefinition, NamedWindowExpr, ObjectName, Offset, OrderBy, OrderByExpr, OrderByKind,
    OrderBySort, Query, Select, SelectFlavor, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    SetOperator, SetQuantifier, Statement, TableAlias, TableFactor, TableWithJoins, Values,
    WildcardAdditionalOptions, WindowFrame, WindowFrameBound, WindowSpec, With,
};

use super::names::{self, quoted, single_ident, written};
use super::{Dialect, Guard, GuardError, MAX_NESTING, Mode, StatementKind};

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
    /// The placeholders cast to a date or time type: their values are checked when the
    /// statement runs ([`super::Checked::time_params`]).
    pub(super) time_params: BTreeSet<usize>,
}

impl<'g> Walker<'g> {
    pub(super) fn new(guard: &'g Guard) -> Self {
        Self {
            guard,
            ctes: Vec::new(),
            touched: BTreeSet::new(),
            depth: 0,
            time_params: BTreeSet::new(),
        }
    }

    /// The logical tables the walk met, sorted, and the placeholders cast to a date or time.
    pub(super) fn into_parts(self) -> (Vec<String>, Vec<usize>) {
        (
            self.touched.into_iter().collect(),
            self.time_params.into_iter().collect(),
        )
    }

    pub(super) fn dialect(&self) -> Dialect {
        self.guard.dialect
    }

    /// What a declared table's DDL says about its keys (by logical name).
    pub(super) fn table_keys(&self, logical: &str) -> Option<&super::TableKeys> {
        self.guard.keys(logical)
    }

    /// The prefix setup mode puts before index names, if any.
    pub(super) fn index_prefix(&self) -> Option<&str> {
        self.guard.index_prefix.as_deref()
    }

    /// The declared tables, listed for messages.
    pub(super) fn declared_list(&self) -> &str {
        &self.guard.declared_list
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
            _ => return Err(kind_not_allowed(Mode::Data, kind_name)),
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
            return Err(denied("clauses after a write (ORDER BY, LIMIT, …)"));
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
            return Err(denied("the clause FETCH FIRST (use LIMIT)"));
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
                    return Err(denied("the clause LIMIT BY"));
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
                    return Err(denied(
                        "this set operation (use UNION, EXCEPT or INTERSECT)",
                    ));
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
            SetExpr::Table(_) => Err(denied("the TABLE shorthand (write SELECT * FROM …)")),
        }
    }

    fn values(&mut self, values: &mut Values) -> Result<(), GuardError> {
        let Values {
            explicit_row,
            value_keyword: _,
            rows,
        } = values;
        if *explicit_row {
            return Err(denied("the form VALUES ROW(…)"));
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
                "the form SELECT … INTO is not allowed: it creates a table; insert into a declared \
                 table instead"
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

    pub(super) fn select_item(&mut self, item: &mut SelectItem) -> Result<(), GuardError> {
        match item {
            SelectItem::UnnamedExpr(expr) => self.expr(expr),
            SelectItem::ExprWithAlias { expr, alias } => {
                check_ident(alias)?;
                self.expr(expr)
            }
            SelectItem::Wildcard(options) => plain_wildcard(options),
            SelectItem::QualifiedWildcard(
                SelectItemQualifiedWildcardKind::ObjectName(name),
                options,
            ) if single_ident(name).is_some() => plain_wildcard(options),
            SelectItem::QualifiedWildcard(..) | SelectItem::ExprWithAliases { .. } => {
                Err(denied("this select item (write expressions, * or table.*)"))
            }
        }
    }

    pub(super) fn table_with_joins(
        &mut self,
        table: &mut TableWithJoins,
    ) -> Result<(), GuardError> {
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
    pub(super) fn table_factor(
        &mut self,
        factor: &mut TableFactor,
        role: Role,
    ) -> Result<(), GuardError> {
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
                    return Err(denied("the keyword LATERAL"));
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
        // An alias keeps `logical.column` working; it is needed whenever the printed name differs
        // (case included: PostgreSQL tells "Balances" from balances).
        let renamed = declared.physical.name != declared.logical;
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
            return Err(denied(
                "this ORDER BY option (use ASC, DESC, NULLS FIRST or NULLS LAST)",
            ));
        }
        self.expr(expr)
    }

    pub(super) fn window_spec(&mut self, spec: &mut WindowSpec) -> Result<(), GuardError> {
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

    pub(super) fn descend(&mut self) -> Result<(), GuardError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(GuardError::LimitExceeded(format!(
                "the statement nests deeper than {MAX_NESTING} levels"
            )));
        }
        Ok(())
    }

    pub(super) fn ascend(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }
}

/// Whether a table factor is read from or written to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Read: a CTE name is allowed and left alone.
    Read,
    /// The target of `UPDATE` or `DELETE`: always a declared table.
    WriteTarget,
}

/// The refusal of a whole statement kind in `mode`.
pub(super) fn kind_not_allowed(mode: Mode, kind_name: &str) -> GuardError {
    match mode {
        Mode::Data if kind_name.starts_with("CREATE") => GuardError::Denied(format!(
            "statement kind {kind_name} is not allowed: {DATA_ALLOWED}; their tables and indexes \
             are created by the host from the projector's declaration"
        )),
        Mode::Data => GuardError::Denied(format!(
            "statement kind {kind_name} is not allowed: {DATA_ALLOWED}"
        )),
        Mode::Setup => GuardError::Denied(format!(
            "statement kind {kind_name} is not allowed: setup runs only CREATE TABLE and \
             CREATE [UNIQUE] INDEX on declared tables"
        )),
    }
}

fn write_kind(returns_rows: bool) -> StatementKind {
    if returns_rows {
        StatementKind::Query
    } else {
        StatementKind::Execute
    }
}

/// `what is not allowed: <what the guest may run>`.
pub(super) fn denied(what: &str) -> GuardError {
    GuardError::Denied(format!("{what} is not allowed: {DATA_ALLOWED}"))
}

/// An identifier the guard will print: its quote style must be one `sqlparser` can print.
pub(super) fn check_ident(ident: &Ident) -> Result<(), GuardError> {
    match ident.quote_style {
        None | Some('"' | '`' | '[' | '\'') => Ok(()),
        Some(_) => Err(GuardError::InvalidSql(format!(
            "identifier {} is quoted in a way the guard does not accept: use double quotes",
            quoted(&ident.value)
        ))),
    }
}

/// A column named alone (in an insert list, `SET` or `USING`).
pub(super) fn column_name(name: &ObjectName) -> Result<(), GuardError> {
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
        return Err(denied(
            "this alias form (write AS name or AS name(column, …))",
        ));
    }
    columns
        .iter()
        .try_for_each(|column| check_ident(&column.name))
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
