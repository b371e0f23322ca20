//! The allow-lists: which functions, operators and data types a statement may use, and which
//! bare words are really calls that read the clock or the session.
//!
//! A read model must equal the pure fold of the events, so everything here is deterministic and
//! reaches nothing outside the statement's own tables: no clock, no randomness, no files, no
//! sequences, no session or server state. Anything not listed is refused, so a function a
//! database adds in a later version stays out until someone adds it here.

use sqlparser::ast::{BinaryOperator, DataType, UnaryOperator};

use super::Dialect;
use super::names;

/// Functions a statement may call, by lowercase name (sorted; a test checks).
///
/// `CAST`, `SUBSTRING`/`SUBSTR`, `TRIM`, `POSITION`, `EXTRACT`, `CEIL` and `FLOOR` are parsed as
/// their own expressions and allowed there.
const FUNCTIONS: &[&str] = &[
    "abs",
    "avg",
    "bool_and",
    "bool_or",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "dense_rank",
    "first_value",
    "floor",
    "format",
    "greatest",
    "group_concat",
    "hex",
    "ifnull",
    "iif",
    "instr",
    "json",
    "json_agg",
    "json_array",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_extract",
    "json_extract_path",
    "json_extract_path_text",
    "json_group_array",
    "json_group_object",
    "json_insert",
    "json_object",
    "json_object_agg",
    "json_patch",
    "json_quote",
    "json_remove",
    "json_replace",
    "json_set",
    "json_type",
    "json_typeof",
    "json_valid",
    "jsonb_agg",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_typeof",
    "lag",
    "last_value",
    "lead",
    "least",
    "length",
    "lower",
    "ltrim",
    "max",
    "min",
    "mod",
    "nth_value",
    "ntile",
    "nullif",
    "octet_length",
    "percent_rank",
    "printf",
    "rank",
    "replace",
    "round",
    "row_number",
    "rtrim",
    "sign",
    "string_agg",
    "sum",
    "to_json",
    "to_jsonb",
    "total",
    "trunc",
    "typeof",
    "upper",
];

/// Functions that read the clock, for a message that says where time should come from.
const CLOCK_FUNCTIONS: &[&str] = &[
    "clock_timestamp",
    "current_date",
    "current_time",
    "current_timestamp",
    "date",
    "datetime",
    "julianday",
    "localtime",
    "localtimestamp",
    "now",
    "statement_timestamp",
    "strftime",
    "time",
    "timeofday",
    "transaction_timestamp",
    "unixepoch",
];

/// Functions that return something different on every call.
const RANDOM_FUNCTIONS: &[&str] = &[
    "gen_random_uuid",
    "random",
    "randomblob",
    "setseed",
    "uuid_generate_v4",
];

/// The words allowed as the data type of a column or a cast beyond `sqlparser`'s named types.
const CUSTOM_TYPES: &[&str] = &[
    "any",
    "bigserial",
    "serial",
    "serial2",
    "serial4",
    "serial8",
    "smallserial",
    "timestamptz",
    "timetz",
];

/// A few of the allowed functions, for messages.
pub(super) const FUNCTION_EXAMPLES: &str =
    "abs, coalesce, lower, replace, round, json_extract, count, sum, max, row_number";

/// Whether the function `name` (lowercase) may be called.
pub(super) fn function_allowed(name: &str) -> bool {
    FUNCTIONS.binary_search(&name).is_ok()
}

/// Why a function that is not allowed is refused, when there is more to say than "not listed".
pub(super) fn function_reason(dialect: Dialect, name: &str) -> &'static str {
    if let Some(reason) = session_word(dialect, name) {
        reason
    } else if CLOCK_FUNCTIONS.contains(&name) {
        "it reads the clock, and a read model must equal the pure fold of the events: \
         take time from the event's created-at"
    } else if RANDOM_FUNCTIONS.contains(&name) {
        "it is not deterministic, and a read model must equal the pure fold of the events"
    } else {
        "it is not on the allow-list"
    }
}

/// Why a bare (unquoted) word is refused: some keywords are calls that read the clock or the
/// session, although they look like column names. `None` when the word is an ordinary name.
pub(super) fn session_word(dialect: Dialect, word: &str) -> Option<&'static str> {
    const CLOCK: &[&str] = &[
        "current_date",
        "current_time",
        "current_timestamp",
        "localtime",
        "localtimestamp",
    ];
    const SESSION: &[&str] = &[
        "current_catalog",
        "current_role",
        "current_schema",
        "current_user",
        "session_user",
        "system_user",
        "user",
    ];
    // Bare words MySQL reads as calls of its clock.
    const MYSQL_CLOCK: &[&str] = &["utc_date", "utc_time", "utc_timestamp"];
    let lower = word.to_ascii_lowercase();
    if CLOCK.contains(&lower.as_str())
        || (dialect == Dialect::MySql && MYSQL_CLOCK.contains(&lower.as_str()))
    {
        Some(
            "it reads the clock, and a read model must equal the pure fold of the events: \
             take time from the event's created-at",
        )
    } else if dialect != Dialect::Sqlite && SESSION.contains(&lower.as_str()) {
        Some("it reads the database session (quote it if it is a column name)")
    } else {
        None
    }
}

/// Whether a binary operator may be used: arithmetic, comparison, logic, concatenation, bit
/// operations, `GLOB` and the JSON access and containment operators.
pub(super) fn binary_operator_allowed(op: &BinaryOperator) -> bool {
    use BinaryOperator as B;
    matches!(
        op,
        B::Plus
            | B::Minus
            | B::Multiply
            | B::Divide
            | B::Modulo
            | B::StringConcat
            | B::Gt
            | B::Lt
            | B::GtEq
            | B::LtEq
            | B::Eq
            | B::NotEq
            | B::And
            | B::Or
            | B::BitwiseOr
            | B::BitwiseAnd
            | B::BitwiseXor
            | B::PGBitwiseShiftLeft
            | B::PGBitwiseShiftRight
            | B::Glob
            | B::Arrow
            | B::LongArrow
            | B::HashArrow
            | B::HashLongArrow
            | B::AtArrow
            | B::ArrowAt
    )
}

/// Whether an allowed binary operator means the same on MySQL and MariaDB: their JSON arrows
/// take a path (`'$.a'`), not a key, and they have no `GLOB` or containment operators.
pub(super) fn mysql_operator_allowed(op: &BinaryOperator) -> bool {
    use BinaryOperator as B;
    !matches!(
        op,
        B::Glob
            | B::Arrow
            | B::LongArrow
            | B::HashArrow
            | B::HashLongArrow
            | B::AtArrow
            | B::ArrowAt
    )
}

/// Whether a unary operator may be used: sign, `NOT` and bitwise not.
pub(super) fn unary_operator_allowed(op: &UnaryOperator) -> bool {
    matches!(
        op,
        UnaryOperator::Plus | UnaryOperator::Minus | UnaryOperator::Not | UnaryOperator::BitwiseNot
    )
}

/// Whether a data type may be used in a column definition or a cast: the plain scalar types.
///
/// PostgreSQL resolves type names in its catalog, so a free-form type could name an object
/// outside the read model (`regclass`, another schema's domain); SQLite accepts any word but
/// gains nothing from exotic ones.
pub(super) fn data_type_allowed(data_type: &DataType) -> bool {
    use DataType as T;
    match data_type {
        T::Character(_)
        | T::Char(_)
        | T::CharacterVarying(_)
        | T::CharVarying(_)
        | T::Varchar(_)
        | T::Text
        | T::Uuid
        | T::Blob(_)
        | T::Bytea
        | T::Numeric(_)
        | T::Decimal(_)
        | T::Dec(_)
        | T::Float(_)
        | T::Float4
        | T::Float8
        | T::Real
        | T::Double(_)
        | T::DoublePrecision
        | T::Int2(_)
        | T::SmallInt(_)
        | T::Int(_)
        | T::Int4(_)
        | T::Int8(_)
        | T::Integer(_)
        | T::BigInt(_)
        | T::Bool
        | T::Boolean
        | T::Date
        | T::Time(..)
        | T::Datetime(_)
        | T::Timestamp(..)
        | T::Interval { .. }
        | T::JSON
        | T::JSONB
        | T::Unspecified => true,
        T::Custom(name, modifiers) => {
            modifiers.is_empty()
                && names::single_ident(name)
                    .is_some_and(|ident| CUSTOM_TYPES.contains(&names::fold(ident).as_str()))
        }
        _ => false,
    }
}

/// Whether a data type holds dates or times: text cast to one can read the clock (`'now'`).
pub(super) fn is_time_type(data_type: &DataType) -> bool {
    use DataType as T;
    match data_type {
        T::Date | T::Time(..) | T::Datetime(_) | T::Timestamp(..) => true,
        T::Custom(name, _) => names::single_ident(name)
            .is_some_and(|ident| matches!(names::fold(ident).as_str(), "timestamptz" | "timetz")),
        _ => false,
    }
}

/// Whether `text` is a date or time written in full, which PostgreSQL reads the same whenever
/// the statement runs: `YYYY-MM-DD`, `HH:MM[:SS[.fraction]]`, or both separated by a space or
/// `T`, with an optional zone (`Z`, `UTC`, `+HH`, `+HH:MM`, `+HHMM`); or one of the constants
/// `epoch`, `infinity`, `-infinity`. Anything else may read the clock (`now`, `today`,
/// `tomorrow 10:00`, `10:00 yesterday`…) or depend on the session's settings.
pub(super) fn is_fixed_time_literal(text: &str) -> bool {
    let text = text.trim();
    if matches!(
        text.to_ascii_lowercase().as_str(),
        "epoch" | "infinity" | "-infinity"
    ) {
        return true;
    }
    let (body, zone) = split_zone(text);
    if !zone.is_empty() && !is_zone(zone) {
        return false;
    }
    match body.split_once([' ', 'T']) {
        Some((date, time)) => is_date(date) && is_time(time),
        None => is_date(body) || is_time(body),
    }
}

/// Splits a trailing zone off a date or time: `Z`, ` UTC`, `+02`, `-05:30`.
fn split_zone(text: &str) -> (&str, &str) {
    if let Some(body) = text.strip_suffix(['Z', 'z']) {
        return (body, "Z");
    }
    if let Some(body) = text
        .strip_suffix(" UTC")
        .or_else(|| text.strip_suffix(" utc"))
    {
        return (body, "UTC");
    }
    // A sign after the time part starts an offset; a date's own dashes come before it.
    let after_time = text.find(':').unwrap_or(text.len());
    match text[after_time..].find(['+', '-']) {
        Some(at) => text.split_at(after_time + at),
        None => (text, ""),
    }
}

fn is_zone(zone: &str) -> bool {
    if matches!(zone, "Z" | "UTC") {
        return true;
    }
    let Some(offset) = zone.strip_prefix(['+', '-']) else {
        return false;
    };
    let digits: String = offset.chars().filter(|c| *c != ':').collect();
    matches!(digits.len(), 2 | 4)
        && digits.bytes().all(|b| b.is_ascii_digit())
        && offset.matches(':').count() <= 1
}

fn digits(part: &str, len: usize) -> bool {
    part.len() == len && part.bytes().all(|b| b.is_ascii_digit())
}

fn is_date(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    matches!(parts.as_slice(), [y, m, d] if digits(y, 4) && digits(m, 2) && digits(d, 2))
}

fn is_time(text: &str) -> bool {
    let (clock, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let parts: Vec<&str> = clock.split(':').collect();
    let whole = match parts.as_slice() {
        [h, m] => digits(h, 2) && digits(m, 2),
        [h, m, s] => digits(h, 2) && digits(m, 2) && digits(s, 2),
        _ => false,
    };
    whole && (1..=9).contains(&fraction.len()) && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a bare string literal is one PostgreSQL may read as a time relative to the clock
/// when it lands in a date or time column or comparison (`'tomorrow 10:00'`, `'now'`): one of
/// the words `now`, `today`, `tomorrow`, `yesterday`, with nothing around it but what a date
/// or time is written with. `'see you tomorrow'` is only text.
pub(super) fn is_relative_time_literal(text: &str) -> bool {
    const CLOCK_WORDS: &[&str] = &["now", "today", "tomorrow", "yesterday"];
    const TIME_WORDS: &[&str] = &[
        "am", "pm", "at", "z", "utc", "gmt", "ut", "allballs", "epoch", "cet", "cest", "eet",
        "eest", "wet", "west", "bst", "ist", "est", "edt", "cst", "cdt", "mst", "mdt", "pst",
        "pdt", "jst", "msk",
    ];
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    words.iter().any(|w| CLOCK_WORDS.contains(w))
        && words.iter().all(|w| {
            CLOCK_WORDS.contains(w)
                || TIME_WORDS.contains(w)
                || w.contains('/')
                || w.bytes()
                    .all(|b| b.is_ascii_digit() || b":.-+".contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_list_is_sorted_and_unique() {
        assert!(FUNCTIONS.windows(2).all(|w| w[0] < w[1]));
        for name in FUNCTIONS {
            assert_eq!(*name, name.to_ascii_lowercase());
            assert!(!CLOCK_FUNCTIONS.contains(name) && !RANDOM_FUNCTIONS.contains(name));
        }
    }

    #[test]
    fn listed_and_unlisted_functions() {
        for name in ["abs", "coalesce", "json_extract", "row_number", "upper"] {
            assert!(function_allowed(name), "{name}");
        }
        for name in [
            "random",
            "now",
            "load_extension",
            "pg_sleep",
            "nextval",
            "readfile",
        ] {
            assert!(!function_allowed(name), "{name}");
        }
        let reason = |name| function_reason(Dialect::Postgres, name);
        assert!(reason("datetime").contains("created-at"));
        assert!(reason("current_timestamp").contains("created-at"));
        assert!(reason("random").contains("not deterministic"));
        assert!(reason("readfile").contains("allow-list"));
        assert!(reason("current_user").contains("session"));
    }

    #[test]
    fn session_words_depend_on_the_dialect() {
        assert!(session_word(Dialect::Sqlite, "CURRENT_TIMESTAMP").is_some());
        assert!(session_word(Dialect::Postgres, "current_date").is_some());
        assert!(session_word(Dialect::Postgres, "user").is_some());
        assert!(session_word(Dialect::Sqlite, "user").is_none());
        assert!(session_word(Dialect::Postgres, "balance").is_none());
    }

    #[test]
    fn fixed_time_literals() {
        for text in [
            "2024-01-31",
            "2024-01-31 12:00",
            "2024-01-31 12:00:59",
            "2024-01-31T12:00:59.123456",
            "2024-01-31T12:00:59Z",
            "2024-01-31 12:00:59+02",
            "2024-01-31 12:00:59-05:30",
            "2024-01-31 12:00:59 UTC",
            "12:30",
            "12:30:00.5",
            " epoch ",
            "-infinity",
        ] {
            assert!(is_fixed_time_literal(text), "{text}");
        }
        for text in [
            "now",
            " NOW ",
            "today",
            "tomorrow 10:00",
            "10:00 tomorrow",
            "yesterday",
            "now utc",
            "31/01/2024",
            "January 31 2024",
            "2024-1-31",
            "2024-01-31 12",
            "2024-01-31 12:00 Europe/Paris",
            "allballs",
            "",
        ] {
            assert!(!is_fixed_time_literal(text), "{text}");
        }
    }

    #[test]
    fn relative_time_literals() {
        for text in [
            "now",
            " NOW ",
            "today",
            "Tomorrow",
            "yesterday",
            "now utc",
            "tomorrow 10:00",
            "10:00 tomorrow",
            "today at 12:00 Europe/Paris",
        ] {
            assert!(is_relative_time_literal(text), "{text}");
        }
        for text in [
            "2024-01-01",
            "nowhere",
            "epoch",
            "see you tomorrow",
            "a note for today",
        ] {
            assert!(!is_relative_time_literal(text), "{text}");
        }
    }
}
