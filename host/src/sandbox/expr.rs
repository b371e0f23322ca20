//! The allow-list walk over expressions: columns, literals, placeholders, operators, casts,
//! `CASE`, subqueries and calls of allowed functions; everything else is refused by name.
//!
//! A bare word that is really a call (`CURRENT_TIMESTAMP`, PostgreSQL's `user`) is refused like
//! the function it is, and so is a cast of `'now'` to a time type: a read model must equal the
//! pure fold of the events, so nothing here may read the clock, the session or the server.

use sqlparser::ast::{
    CastKind, CeilFloorKind, DataType, DateTimeField, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentClause, FunctionArgumentList, FunctionArguments, Ident, TypedString, Value,
    ValueWithSpan, WindowType,
};

use super::names::{self, quoted, single_ident, written};
use super::rewrite::{Walker, check_ident, denied};
use super::{Dialect, GuardError, allow, parse};

impl Walker<'_> {
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
                    parts.iter().try_for_each(check_ident)
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
                if self.dialect() == Dialect::MySql && !allow::mysql_operator_allowed(op) {
                    return Err(GuardError::Denied(format!(
                        "operator {} is not allowed on MySQL and MariaDB, which read it                          differently: use json_extract(…) for JSON, LIKE for patterns",
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
                    return Err(denied("the form LIKE ANY"));
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
                    return Err(denied(
                        "this form of CAST (write CAST(x AS type) or x::type)",
                    ));
                }
                check_data_type(data_type)?;
                if self.dialect() != Dialect::Postgres {
                    // SQLite and MySQL have no `::`; the cast means the same written out.
                    *kind = CastKind::Cast;
                }
                if allow::is_time_type(data_type) {
                    self.time_operand(data_type, expr)?;
                }
                self.expr(expr)?;
                if self.dialect() == Dialect::MySql
                    && let Some(mysql) = super::mysql::cast_type(data_type)
                {
                    *data_type = mysql;
                }
                Ok(())
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
                    return Err(denied("rounding to a date field with CEIL or FLOOR"));
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
                        check_time_literal(data_type, text)?;
                        self.text_literal(text)
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

    /// The operand of a cast to a date or time type: a parameter (whose value is checked when
    /// the statement runs), NULL, or a literal written in full. Anything else could read the
    /// clock (`'now'`, `'tomorrow 10:00'`, `'n' || 'ow'`, a column holding such text).
    fn time_operand(&mut self, data_type: &DataType, operand: &Expr) -> Result<(), GuardError> {
        match operand {
            Expr::Value(ValueWithSpan {
                value: Value::Placeholder(text),
                ..
            }) => {
                if let Ok(n) = text.trim_start_matches(['$', '?']).parse::<usize>() {
                    self.time_params.insert(n);
                }
                Ok(())
            }
            Expr::Value(ValueWithSpan {
                value: Value::SingleQuotedString(text),
                ..
            }) => check_time_literal(data_type, text),
            Expr::Value(ValueWithSpan {
                value: Value::Null, ..
            }) => Ok(()),
            Expr::Nested(inner) => self.time_operand(data_type, inner),
            _ => Err(GuardError::Denied(format!(
                "a cast to {} may only take a parameter or a date or time written in full \
                 (like '2024-01-31 12:00:00'): anything else can read the clock ('now', \
                 'tomorrow 10:00'), and a read model must equal the pure fold of the events; \
                 take time from the event's created-at",
                type_label(data_type)
            ))),
        }
    }

    /// A string literal anywhere: on PostgreSQL, one that reads as a time relative to the
    /// clock once it lands in a date or time column or comparison is refused.
    fn text_literal(&self, text: &str) -> Result<(), GuardError> {
        // MySQL would not read the clock from such a string, but the projector's SQL is the
        // same for every backend: it is refused wherever PostgreSQL would read the clock.
        if self.dialect() != Dialect::Sqlite && allow::is_relative_time_literal(text) {
            return Err(GuardError::Denied(format!(
                "the string {} is not allowed: PostgreSQL reads it as a time relative to the \
                 clock, and a read model must equal the pure fold of the events; take time from \
                 the event's created-at",
                quoted(text)
            )));
        }
        Ok(())
    }

    fn value(&self, value: &ValueWithSpan) -> Result<(), GuardError> {
        match &value.value {
            Value::SingleQuotedString(text) => self.text_literal(text),
            Value::Number(_, false)
            | Value::HexStringLiteral(_)
            | Value::Boolean(_)
            | Value::Null => Ok(()),
            Value::DollarQuotedString(_) if self.dialect() == Dialect::Postgres => Ok(()),
            Value::Placeholder(text) => {
                let digits = match self.dialect() {
                    Dialect::Sqlite => text.strip_prefix('?'),
                    Dialect::Postgres | Dialect::MySql => text.strip_prefix('$'),
                };
                if digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) {
                    Ok(())
                } else {
                    Err(parse::unsupported_placeholder(text))
                }
            }
            _ => Err(denied(
                "this kind of literal (write numbers, 'strings', x'blobs', TRUE, FALSE and NULL, \
                 or pass a parameter)",
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
                allow::function_reason(self.dialect(), &lower),
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
            None | Some(WindowType::NamedWindow(_)) => Ok(()),
            Some(WindowType::WindowSpec(spec)) => self.window_spec(spec),
        }
    }
}

/// Refuses a data type outside [`allow::data_type_allowed`].
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

/// `'now'::timestamp`, `DATE 'today'` and `TIMESTAMP 'tomorrow 10:00'` read the clock on
/// PostgreSQL: a literal of a date or time type must be written in full.
fn check_time_literal(data_type: &DataType, text: &str) -> Result<(), GuardError> {
    if allow::is_time_type(data_type) && !allow::is_fixed_time_literal(text) {
        return Err(GuardError::Denied(format!(
            "the time literal {} is not allowed: write a date or time in full (like \
             '2024-01-31 12:00:00'); words such as 'now' or 'tomorrow' read the clock, and a read \
             model must equal the pure fold of the events: take time from the event's created-at",
            quoted(text)
        )));
    }
    Ok(())
}

/// What an expression that is not allowed is called in a message.
fn expr_label(expr: &Expr) -> &'static str {
    match expr {
        Expr::CompoundFieldAccess { .. } => "field access",
        Expr::JsonAccess { .. } => "json path access",
        Expr::IsJson { .. } => "the IS JSON test",
        Expr::IsNormalized { .. } => "the IS NORMALIZED test",
        Expr::InUnnest { .. } => "the IN UNNEST test",
        Expr::SimilarTo { .. } => "the SIMILAR TO operator",
        Expr::RLike { .. } => "the REGEXP or RLIKE operator",
        Expr::AnyOp { .. } => "comparison with ANY (…)",
        Expr::AllOp { .. } => "comparison with ALL (…)",
        Expr::Convert { .. } => "the CONVERT function",
        Expr::AtTimeZone { .. } => "the AT TIME ZONE operator",
        Expr::Overlay { .. } => "the OVERLAY function",
        Expr::Prefixed { .. } => "a prefixed literal",
        Expr::GroupingSets(_) | Expr::Cube(_) | Expr::Rollup(_) => "grouping sets, cube or rollup",
        Expr::Struct { .. } => "a struct",
        Expr::Named { .. } => "a named expression",
        Expr::Dictionary(_) => "a dictionary",
        Expr::Map(_) => "a map",
        Expr::Array(_) => "an array",
        Expr::MatchAgainst { .. } => "the MATCH … AGAINST search",
        Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => "a wildcard here",
        Expr::OuterJoin(_) => "the (+) outer join",
        Expr::Prior(_) => "the PRIOR operator",
        Expr::Lambda(_) => "a lambda",
        Expr::MemberOf(_) => "the MEMBER OF test",
        _ => "this expression",
    }
}
