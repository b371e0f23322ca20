//! From text to exactly one statement: size limits, tokens, placeholders, then the parser.
//!
//! The guard tokenizes before it parses so that it can refuse a second statement by looking for
//! anything after a `;` (comments and strings are single tokens, so a `;` inside them is not
//! one), count words and operators against [`MAX_SYNTAX_TOKENS`], and renumber placeholders in
//! the order they appear in the text: `$N` and bare `?` become `?N` for SQLite and `$N` for
//! PostgreSQL, so binding never depends on how the rewritten statement is printed.

use sqlparser::ast::Statement;
use sqlparser::dialect::{PostgreSqlDialect, SQLiteDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use super::names::quoted;
use super::rewrite::kind_not_allowed;
use super::{
    Dialect, GuardError, MAX_PARAMETERS, MAX_PATTERN_OPERATORS, MAX_STATEMENT_BYTES,
    MAX_SYNTAX_TOKENS, Mode,
};

/// One statement, parsed, with what the token pass learnt about it.
pub(super) struct Parsed {
    /// The statement, its placeholders already renumbered for the dialect.
    pub statement: Statement,
    /// The leading keywords (`ATTACH`, `CREATE TABLE`), to name the statement kind in a denial.
    pub kind_name: String,
    /// The highest placeholder number.
    pub param_count: usize,
}

/// Tokenizes and parses `sql` as exactly one statement of `dialect`.
///
/// # Errors
///
/// `LimitExceeded` for text over [`MAX_STATEMENT_BYTES`], more than [`MAX_SYNTAX_TOKENS`] words
/// and operators, more than [`MAX_PARAMETERS`] placeholders or nesting beyond the parser's
/// recursion limit; `Denied` for more than one statement; `InvalidSql` for an empty text, a parse
/// error, named or mixed placeholders, or a `0x` literal (which `sqlparser` prints back as a blob).
/// A parse error in a statement whose leading keyword `mode` never allows is `Denied` naming the
/// kind, as if it had parsed.
pub(super) fn parse_one(dialect: Dialect, sql: &str, mode: Mode) -> Result<Parsed, GuardError> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(GuardError::LimitExceeded(format!(
            "the statement is {} bytes long; at most {MAX_STATEMENT_BYTES} bytes are allowed",
            sql.len()
        )));
    }
    let parser_dialect = parser_dialect(dialect);
    let tokens = Tokenizer::new(parser_dialect, sql)
        .tokenize_with_location()
        .map_err(|e| GuardError::InvalidSql(e.to_string()))?;
    // A statement kind that can never pass is named as such, even when its body holds `;`
    // (a trigger's does) and would otherwise be reported as several statements.
    let (leading_kind, leading_word) = kind_name(&tokens);
    if !may_start(mode, leading_word) || leading_kind.ends_with(" TRIGGER") {
        return Err(kind_not_allowed(mode, &leading_kind));
    }
    check_tokens(sql, &tokens)?;
    if dialect == Dialect::MySql {
        super::mysql::refuse_mysql_tokens(&tokens)?;
    }
    if mode == Mode::Setup {
        check_dropped_keywords(dialect, &tokens)?;
    }
    let (tokens, param_count) = number_placeholders(dialect, tokens)?;
    let (kind_name, leading) = kind_name(&tokens);

    let mut parser = Parser::new(parser_dialect).with_tokens_with_locations(tokens);
    let statement = parser.parse_statement().map_err(|error| {
        if may_start(mode, leading) {
            parser_error(error)
        } else {
            kind_not_allowed(mode, &kind_name)
        }
    })?;
    while parser.consume_token(&Token::SemiColon) {}
    let next = parser.peek_token();
    if next.token != Token::EOF {
        if !may_start(mode, leading) {
            return Err(kind_not_allowed(mode, &kind_name));
        }
        return Err(GuardError::InvalidSql(format!(
            "unexpected {} after the end of the statement{}",
            quoted(&next.token.to_string()),
            next.span.start
        )));
    }
    Ok(Parsed {
        statement,
        kind_name,
        param_count,
    })
}

/// The `sqlparser` dialect the guard parses (and re-parses, in tests) with.
pub(super) fn parser_dialect(dialect: Dialect) -> &'static dyn sqlparser::dialect::Dialect {
    static SQLITE: ZdrSqlite = ZdrSqlite(SQLiteDialect {});
    static POSTGRES: PostgreSqlDialect = PostgreSqlDialect {};
    match dialect {
        Dialect::Sqlite => &SQLITE,
        // MySQL statements are read as PostgreSQL's and printed for a session whose sql_mode
        // gives them the same meaning (see `mysql`).
        Dialect::Postgres | Dialect::MySql => &POSTGRES,
    }
}

/// Whether a statement of `mode` may begin with the keyword `leading` (`None`: not a keyword,
/// such as `(`).
fn may_start(mode: Mode, leading: Option<Keyword>) -> bool {
    match mode {
        Mode::Data => matches!(
            leading,
            None | Some(
                Keyword::SELECT
                    | Keyword::INSERT
                    | Keyword::UPDATE
                    | Keyword::DELETE
                    | Keyword::WITH
                    | Keyword::VALUES
                    | Keyword::REPLACE
            )
        ),
        Mode::Setup => leading == Some(Keyword::CREATE),
    }
}

/// Refuses keywords that `sqlparser` 0.63 consumes and then drops from a column definition when
/// the dialect does not support them (it checks the dialect after taking the keyword), so that
/// the printed DDL would silently differ from the declared one.
fn check_dropped_keywords(dialect: Dialect, tokens: &[TokenWithSpan]) -> Result<(), GuardError> {
    for token in tokens {
        let Token::Word(word) = &token.token else {
            continue;
        };
        let dropped = word.quote_style.is_none()
            && match word.keyword {
                Keyword::AUTO_INCREMENT | Keyword::IDENTITY | Keyword::SRID => true,
                Keyword::AUTOINCREMENT => dialect != Dialect::Sqlite,
                _ => false,
            };
        if dropped {
            return Err(GuardError::InvalidSql(format!(
                "the keyword {} is not supported here: use INTEGER PRIMARY KEY [AUTOINCREMENT] on \
                 SQLite, GENERATED … AS IDENTITY or serial types on PostgreSQL",
                word.value.to_ascii_uppercase()
            )));
        }
    }
    Ok(())
}

/// Refuses what can be seen in the tokens alone: nothing to parse, a second statement, too many
/// words and operators or pattern operators, and `0x` literals.
fn check_tokens(sql: &str, tokens: &[TokenWithSpan]) -> Result<(), GuardError> {
    let mut significant = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)));
    if significant.clone().all(|t| t.token == Token::SemiColon) {
        return Err(GuardError::InvalidSql(
            "the statement is empty: send one SELECT, INSERT, UPDATE or DELETE".to_owned(),
        ));
    }
    if significant
        .by_ref()
        .skip_while(|t| t.token != Token::SemiColon)
        .any(|t| t.token != Token::SemiColon)
    {
        return Err(GuardError::Denied(
            "multiple statements are not allowed: send one statement per call".to_owned(),
        ));
    }
    let patterns = tokens
        .iter()
        .filter(|t| {
            matches!(&t.token, Token::Word(word) if word.quote_style.is_none()
                && matches!(word.keyword, Keyword::GLOB | Keyword::REGEXP | Keyword::MATCH))
        })
        .count();
    if patterns > MAX_PATTERN_OPERATORS {
        return Err(GuardError::LimitExceeded(format!(
            "the statement has {patterns} GLOB, REGEXP or MATCH operators; at most \
             {MAX_PATTERN_OPERATORS} are allowed"
        )));
    }
    let counted = tokens.iter().filter(|t| counts_as_syntax(&t.token)).count();
    if counted > MAX_SYNTAX_TOKENS {
        return Err(GuardError::LimitExceeded(format!(
            "the statement has {counted} words and operators; at most {MAX_SYNTAX_TOKENS} are \
             allowed (pass values as parameters)"
        )));
    }
    for token in tokens {
        if let Token::HexStringLiteral(_) = token.token
            && source_at(sql, token.span.start).is_some_and(|rest| rest.starts_with('0'))
        {
            return Err(GuardError::InvalidSql(format!(
                "hexadecimal number {} is not supported: write the number in decimal \
                 (blob literals are written x'…')",
                quoted(
                    &token
                        .token
                        .to_string()
                        .replacen("X'", "0x", 1)
                        .replace('\'', "")
                )
            )));
        }
    }
    Ok(())
}

/// Whether a token counts against [`MAX_SYNTAX_TOKENS`]: everything but layout, literals,
/// placeholders, commas and parentheses (parentheses nest only as deep as the parser's recursion
/// limit allows, and the others cannot chain).
fn counts_as_syntax(token: &Token) -> bool {
    !matches!(
        token,
        Token::Whitespace(_)
            | Token::EOF
            | Token::SemiColon
            | Token::Comma
            | Token::LParen
            | Token::RParen
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::HexStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::Placeholder(_)
            | Token::Question
    )
}

/// The text of `sql` from `location` (1-based line and character column) to its end.
fn source_at(sql: &str, location: Location) -> Option<&str> {
    let line_index = usize::try_from(location.line.checked_sub(1)?).ok()?;
    let column_index = usize::try_from(location.column.checked_sub(1)?).ok()?;
    let line_start = if line_index == 0 {
        0
    } else {
        sql.match_indices('\n').nth(line_index - 1)?.0 + 1
    };
    let rest = &sql[line_start..];
    let offset = rest
        .char_indices()
        .nth(column_index)
        .map_or(rest.len(), |(i, _)| i);
    Some(&rest[offset..])
}

/// Renumbers placeholders in text order and returns the tokens with the highest number.
///
/// Guests write `$1, $2, …` (any order, repeats allowed) or bare `?` (positional); SQLite gets
/// `?N`, PostgreSQL `$N`. Anything else that looks like a placeholder is refused.
fn number_placeholders(
    dialect: Dialect,
    mut tokens: Vec<TokenWithSpan>,
) -> Result<(Vec<TokenWithSpan>, usize), GuardError> {
    let mut bare = 0usize;
    let mut numbered = false;
    let mut highest = 0usize;
    for token in &mut tokens {
        let text = match &token.token {
            Token::Placeholder(text) => text.as_str(),
            // PostgreSQL's tokenizer reads `?` as the JSON key-exists operator, which the guard
            // does not allow; a bare `?` is a positional placeholder there too.
            Token::Question => "?",
            _ => continue,
        };
        let number = if text == "?" {
            bare += 1;
            bare
        } else if let Some(digits) = text
            .strip_prefix('$')
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        {
            numbered = true;
            let number = digits.trim_start_matches('0');
            if number.is_empty() {
                return Err(GuardError::InvalidSql(
                    "placeholder $0 is not valid: placeholders are numbered from $1".to_owned(),
                ));
            }
            // Only ASCII digits remain, so the parse fails only on overflow.
            number
                .parse::<usize>()
                .map_err(|_| too_many_parameters(text))?
        } else {
            return Err(unsupported_placeholder(text));
        };
        if number > MAX_PARAMETERS {
            return Err(too_many_parameters(text));
        }
        highest = highest.max(number);
        token.token = Token::Placeholder(native_placeholder(dialect, number));
    }
    if bare > 0 && numbered {
        return Err(GuardError::InvalidSql(
            "the statement mixes ? and $N placeholders: use one style".to_owned(),
        ));
    }
    Ok((tokens, highest))
}

/// The placeholder `number` as `dialect` writes it.
pub(super) fn native_placeholder(dialect: Dialect, number: usize) -> String {
    match dialect {
        Dialect::Sqlite => format!("?{number}"),
        // MySQL's are made positional after printing (`mysql::positional`).
        Dialect::Postgres | Dialect::MySql => format!("${number}"),
    }
}

fn too_many_parameters(text: &str) -> GuardError {
    GuardError::LimitExceeded(format!(
        "placeholder {} is beyond the limit: at most {MAX_PARAMETERS} parameters are allowed",
        quoted(text)
    ))
}

/// The error for a placeholder the guard does not accept.
pub(super) fn unsupported_placeholder(text: &str) -> GuardError {
    let numbered_with_question = text
        .strip_prefix('?')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    if numbered_with_question {
        GuardError::InvalidSql(format!(
            "placeholder {} is not supported: number placeholders $1, $2, … or use bare ?",
            quoted(text)
        ))
    } else {
        GuardError::InvalidSql(format!(
            "named placeholder {} is not supported: use numbered placeholders $1, $2, … or bare ?",
            quoted(text)
        ))
    }
}

/// The statement kind as its leading keywords name it (`ATTACH`, `PRAGMA`, `CREATE TABLE`,
/// `DROP INDEX`, `ALTER TABLE`), and the first keyword.
fn kind_name(tokens: &[TokenWithSpan]) -> (String, Option<Keyword>) {
    const OBJECT_KINDS: &[Keyword] = &[
        Keyword::DATABASE,
        Keyword::DOMAIN,
        Keyword::EXTENSION,
        Keyword::FUNCTION,
        Keyword::INDEX,
        Keyword::POLICY,
        Keyword::PROCEDURE,
        Keyword::ROLE,
        Keyword::SCHEMA,
        Keyword::SEQUENCE,
        Keyword::SERVER,
        Keyword::TABLE,
        Keyword::TRIGGER,
        Keyword::TYPE,
        Keyword::USER,
        Keyword::VIEW,
    ];
    let mut words = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .map_while(|t| match &t.token {
            Token::Word(word)
                if word.quote_style.is_none() && word.keyword != Keyword::NoKeyword =>
            {
                Some(word)
            }
            _ => None,
        });
    let Some(first) = words.next() else {
        return ("this statement".to_owned(), None);
    };
    let mut name = first.value.to_ascii_uppercase();
    if matches!(
        first.keyword,
        Keyword::CREATE | Keyword::DROP | Keyword::ALTER
    ) {
        for word in words.take(4) {
            if word.keyword == Keyword::IF {
                break;
            }
            name.push(' ');
            name.push_str(&word.value.to_ascii_uppercase());
            if OBJECT_KINDS.contains(&word.keyword) {
                break;
            }
        }
    }
    (name, Some(first.keyword))
}

/// Maps a parser error to the guard's kinds: running out of recursion is a limit, the rest is
/// invalid SQL.
fn parser_error(error: ParserError) -> GuardError {
    match error {
        ParserError::RecursionLimitExceeded => GuardError::LimitExceeded(
            "the statement nests deeper than the parser allows".to_owned(),
        ),
        ParserError::ParserError(message) | ParserError::TokenizerError(message) => {
            GuardError::InvalidSql(message)
        }
    }
}

/// SQLite as `sqlparser` parses it, plus the `INSERT INTO t AS alias` that SQLite accepts (since
/// 3.24) and the guard prints when it renames a table, so that the guard can read its own output.
///
/// Every method `SQLiteDialect` overrides is delegated, and `dialect()` reports `SQLiteDialect`, so
/// the parser's dialect checks treat this exactly as SQLite.
#[derive(Debug)]
struct ZdrSqlite(SQLiteDialect);

impl sqlparser::dialect::Dialect for ZdrSqlite {
    fn dialect(&self) -> std::any::TypeId {
        self.0.dialect()
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.0.is_delimited_identifier_start(ch)
    }
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.0.identifier_quote_style(identifier)
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        self.0.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        self.0.is_identifier_part(ch)
    }
    fn supports_filter_during_aggregation(&self) -> bool {
        self.0.supports_filter_during_aggregation()
    }
    fn supports_start_transaction_modifier(&self) -> bool {
        self.0.supports_start_transaction_modifier()
    }
    fn parse_statement(&self, parser: &mut Parser) -> Option<Result<Statement, ParserError>> {
        self.0.parse_statement(parser)
    }
    fn parse_infix(
        &self,
        parser: &mut Parser,
        expr: &sqlparser::ast::Expr,
        precedence: u8,
    ) -> Option<Result<sqlparser::ast::Expr, ParserError>> {
        self.0.parse_infix(parser, expr, precedence)
    }
    fn supports_in_empty_list(&self) -> bool {
        self.0.supports_in_empty_list()
    }
    fn supports_limit_comma(&self) -> bool {
        self.0.supports_limit_comma()
    }
    fn supports_asc_desc_in_column_definition(&self) -> bool {
        self.0.supports_asc_desc_in_column_definition()
    }
    fn supports_dollar_placeholder(&self) -> bool {
        self.0.supports_dollar_placeholder()
    }
    fn supports_notnull_operator(&self) -> bool {
        self.0.supports_notnull_operator()
    }
    fn supports_comma_separated_trim(&self) -> bool {
        self.0.supports_comma_separated_trim()
    }
    fn supports_numeric_literal_underscores(&self) -> bool {
        self.0.supports_numeric_literal_underscores()
    }
    fn supports_insert_table_alias(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders(dialect: Dialect, sql: &str) -> Result<(String, usize), GuardError> {
        let parsed = parse_one(dialect, sql, Mode::Data)?;
        Ok((parsed.statement.to_string(), parsed.param_count))
    }

    #[test]
    fn placeholders_are_renumbered_in_text_order() {
        let cases = [
            (Dialect::Sqlite, "SELECT $2, $1, $2", "SELECT ?2, ?1, ?2", 2),
            (Dialect::Sqlite, "SELECT ?, ?, ?", "SELECT ?1, ?2, ?3", 3),
            (Dialect::Sqlite, "SELECT $007", "SELECT ?7", 7),
            (Dialect::Postgres, "SELECT $2, $1", "SELECT $2, $1", 2),
            (Dialect::Postgres, "SELECT ?, ?", "SELECT $1, $2", 2),
            (Dialect::Postgres, "SELECT 1", "SELECT 1", 0),
        ];
        for (dialect, sql, printed, count) in cases {
            assert_eq!(
                placeholders(dialect, sql),
                Ok((printed.to_owned(), count)),
                "{dialect:?} {sql}"
            );
        }
    }

    #[test]
    fn bad_placeholders_are_refused() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            for sql in ["SELECT ?, $1", "SELECT $0", "SELECT $1a"] {
                assert!(
                    matches!(placeholders(dialect, sql), Err(GuardError::InvalidSql(_))),
                    "{dialect:?} {sql}"
                );
            }
            for sql in ["SELECT $1000", "SELECT $99999999999999999999999"] {
                assert!(
                    matches!(
                        placeholders(dialect, sql),
                        Err(GuardError::LimitExceeded(_))
                    ),
                    "{dialect:?} {sql}"
                );
            }
        }
        for sql in ["SELECT ?1", "SELECT $name", "SELECT $1$2"] {
            assert!(
                matches!(
                    placeholders(Dialect::Sqlite, sql),
                    Err(GuardError::InvalidSql(_))
                ),
                "{sql}"
            );
        }
    }

    #[test]
    fn one_statement_only() {
        let ok = [
            "SELECT 1",
            "SELECT 1;",
            "SELECT 1;;",
            "SELECT 1; -- x",
            "SELECT 1 /* ; x */",
        ];
        for sql in ok {
            assert!(parse_one(Dialect::Sqlite, sql, Mode::Data).is_ok(), "{sql}");
        }
        for sql in [
            "SELECT 1; SELECT 2",
            "SELECT 1; -- x\nSELECT 2",
            "SELECT 1;/**/x",
        ] {
            assert!(
                matches!(
                    parse_one(Dialect::Sqlite, sql, Mode::Data),
                    Err(GuardError::Denied(_))
                ),
                "{sql}"
            );
        }
        for sql in ["", "  ", ";", "-- nothing", "/* nothing */ ;"] {
            assert!(
                matches!(
                    parse_one(Dialect::Sqlite, sql, Mode::Data),
                    Err(GuardError::InvalidSql(_))
                ),
                "{sql:?}"
            );
        }
        assert!(matches!(
            parse_one(Dialect::Sqlite, "SELECT 1 END garbage", Mode::Data),
            Err(GuardError::InvalidSql(_))
        ));
    }

    #[test]
    fn kinds_are_named_by_their_leading_keywords() {
        let cases = [
            ("ATTACH DATABASE 'x' AS y", "ATTACH"),
            ("pragma table_info(x)", "PRAGMA"),
            ("CREATE TABLE x (a)", "CREATE TABLE"),
            ("CREATE UNIQUE INDEX i ON x (a)", "CREATE UNIQUE INDEX"),
            ("CREATE TEMP TABLE x (a)", "CREATE TEMP TABLE"),
            ("DROP TABLE IF EXISTS x", "DROP TABLE"),
            ("(SELECT 1)", "this statement"),
        ];
        for (sql, name) in cases {
            let tokens = Tokenizer::new(parser_dialect(Dialect::Sqlite), sql)
                .tokenize_with_location()
                .unwrap();
            assert_eq!(kind_name(&tokens).0, name, "{sql}");
        }
    }

    #[test]
    fn source_positions_map_to_text() {
        let sql = "SELECT 1,\n  0x10, é";
        assert_eq!(source_at(sql, Location::new(2, 3)), Some("0x10, é"));
        assert_eq!(source_at(sql, Location::new(1, 1)), Some(sql));
        assert_eq!(source_at(sql, Location::new(9, 1)), None);
        assert!(matches!(
            parse_one(Dialect::Sqlite, sql, Mode::Data),
            Err(GuardError::InvalidSql(m)) if m.contains("0x10")
        ));
        assert!(parse_one(Dialect::Sqlite, "SELECT x'10'", Mode::Data).is_ok());
    }
}
