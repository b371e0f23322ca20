//! Names: how an identifier a guest writes is matched, how a physical name is printed, and which
//! names a projector may declare.
//!
//! Matching folds ASCII case for every identifier, quoted or not (the brief treats `"Balances"`,
//! `balances` and `[balances]` as one table), except where folding could *widen* what a statement
//! reaches: a reference resolves to a common table expression only when the database itself
//! would resolve it so (on PostgreSQL `"X"` is not the CTE `x`, and must then be a declared table).

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};
use sqlparser::keywords::ALL_KEYWORDS;

use super::{Dialect, PhysicalName};

/// The longest name a projector may declare: PostgreSQL's identifier limit (63 bytes).
pub(super) const MAX_DECLARED_NAME_CHARS: usize = 63;

/// The longest piece of guest text quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 64;

/// The key a table name is matched by: its ASCII-lowercased value, whatever its quotes.
pub(super) fn fold(ident: &Ident) -> String {
    ident.value.to_ascii_lowercase()
}

/// The name the database resolves `ident` to, for matching common table expressions: SQLite
/// folds case everywhere, PostgreSQL only for unquoted identifiers.
pub(super) fn resolved(dialect: Dialect, ident: &Ident) -> String {
    match (dialect, ident.quote_style) {
        (Dialect::Postgres, Some(_)) => ident.value.clone(),
        // MySQL resolves names case-sensitively (on Linux): `X` is not the CTE `x`.
        (Dialect::MySql, _) => ident.value.clone(),
        _ => ident.value.to_ascii_lowercase(),
    }
}

/// The identifier of a single-part name, or `None` for a qualified (or function-part) name.
pub(super) fn single_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => Some(ident),
        _ => None,
    }
}

/// A name as the guest wrote it, for messages: parts joined by dots, without quotes.
pub(super) fn written(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident.value.clone(),
            ObjectNamePart::Function(function) => format!("{}(…)", function.name.value),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Guest text quoted for a message: in double quotes, escaped, and cut short if long.
pub(super) fn quoted(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED_CHARS {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{:?}", format!("{head}…"))
    }
}

/// An identifier that the database reads as exactly `name`: bare when `name` is a lowercase word
/// that is not a keyword, double-quoted otherwise.
pub(super) fn ident(name: &str) -> Ident {
    if is_plain(name) {
        Ident::new(name)
    } else {
        Ident::with_quote('"', name)
    }
}

/// The table name a physical name prints as: `name` or `schema.name`.
pub(super) fn physical_object_name(physical: &PhysicalName) -> ObjectName {
    let mut parts = Vec::with_capacity(2);
    if let Some(schema) = &physical.schema {
        parts.push(ObjectNamePart::Identifier(ident(schema)));
    }
    parts.push(ObjectNamePart::Identifier(ident(&physical.name)));
    ObjectName(parts)
}

/// Whether `name` can be printed without quotes: `[a-z_][a-z0-9_]*` and not a keyword.
fn is_plain(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    starts_well
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !is_keyword(name)
}

/// Whether `name` is a keyword of any dialect `sqlparser` knows (quoting those is always safe).
fn is_keyword(name: &str) -> bool {
    // ALL_KEYWORDS is sorted: the tokenizer binary-searches it too.
    ALL_KEYWORDS
        .binary_search(&name.to_ascii_uppercase().as_str())
        .is_ok()
}

/// Checks a name a projector declares (a table or an index): `^[a-z_][a-z0-9_]{0,62}$`, and not
/// one of the names the host or the database keep for themselves.
///
/// Returns the reason, lowercase, naming the offending value.
pub(super) fn validate_declared_name(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= MAX_DECLARED_NAME_CHARS;
    if !well_formed {
        return Err(format!(
            "{what} name {} must be 1 to {MAX_DECLARED_NAME_CHARS} characters of lowercase \
             letters, digits and underscores, not starting with a digit",
            quoted(name)
        ));
    }
    let reserved = name.starts_with("zdr_")
        || name.starts_with("sqlite_")
        || name.starts_with("pg_")
        || name == "stored_events"
        || name == "information_schema";
    if reserved {
        return Err(format!(
            "{what} name {} is reserved: names starting with zdr_, sqlite_ or pg_, \
             stored_events and information_schema belong to the host or the database",
            quoted(name)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_print_bare_and_others_quoted() {
        let cases = [
            ("balances", "balances"),
            ("zdr_r_k1__balances", "zdr_r_k1__balances"),
            ("Balances", "\"Balances\""),
            ("order", "\"order\""),
            ("user", "\"user\""),
            ("1abc", "\"1abc\""),
            ("we\"ird", "\"we\"\"ird\""),
            ("", "\"\""),
        ];
        for (name, printed) in cases {
            assert_eq!(ident(name).to_string(), printed, "{name}");
        }
    }

    #[test]
    fn physical_names_print_with_their_schema() {
        let name = physical_object_name(&PhysicalName::qualified("zdr_r_k1", "balances"));
        assert_eq!(name.to_string(), "zdr_r_k1.balances");
        let name = physical_object_name(&PhysicalName::qualified("Live", "order"));
        assert_eq!(name.to_string(), "\"Live\".\"order\"");
    }

    #[test]
    fn declared_names_follow_the_rules() {
        let ok = ["balances", "_x", "a1", &"a".repeat(63)];
        for name in ok {
            assert_eq!(validate_declared_name("table", name), Ok(()), "{name}");
        }
        let bad = [
            "",
            "1a",
            "Balances",
            "bal-ances",
            "bal ances",
            "é",
            &"a".repeat(64),
            "zdr_projectors",
            "stored_events",
            "sqlite_master",
            "pg_class",
            "information_schema",
        ];
        for name in bad {
            assert!(validate_declared_name("table", name).is_err(), "{name}");
        }
    }

    #[test]
    fn long_text_is_cut_in_messages() {
        assert_eq!(quoted("abc"), "\"abc\"");
        let long = "x".repeat(1000);
        assert!(quoted(&long).chars().count() < 80);
    }
}
