//! What the bank example's events mean, shared by every version of the `balance` projector.
//!
//! Each version owns its bindings, its SQL and its table layout; this crate owns only the
//! reading of the three events (`AccountOpened`, `MoneyAdded`, `MoneySubtracted`) and the
//! error messages about them. It knows nothing of Wasm or databases, so its tests run on the
//! build machine: `cargo test -p balance-common`.

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// The event classes every balance projector handles, by short name (see [`short_class`]).
pub const HANDLED_CLASSES: [&str; 3] = ["AccountOpened", "MoneyAdded", "MoneySubtracted"];

/// The short name of an event class: the last segment after a backslash, so that the PHP
/// class name `App\Events\MoneyAdded` and a bare `MoneyAdded` name the same event.
pub fn short_class(event_class: &str) -> &str {
    match event_class.rfind('\\') {
        Some(at) => &event_class[at + 1..],
        None => event_class,
    }
}

/// The parts of a stored event a balance projector reads, borrowed from the guest's event.
#[derive(Debug, Clone, Copy)]
pub struct RawEvent<'a> {
    /// The event's position in the store, named in every error message.
    pub id: i64,
    /// The account the event belongs to.
    pub aggregate_uuid: Option<&'a str>,
    /// The event's class, bare or with a PHP namespace.
    pub event_class: &'a str,
    /// The event's payload, a JSON object.
    pub properties: &'a str,
}

/// One balance event, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceEvent {
    /// The account (the event's aggregate uuid) the change applies to.
    pub account: String,
    /// What happened to it.
    pub change: Change,
}

/// What a balance event does to its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new account for the named holder, with a zero balance.
    Opened {
        /// The account holder's name.
        name: String,
    },
    /// Money paid into the account.
    Added {
        /// The amount, in the smallest unit of the currency.
        amount: i64,
    },
    /// Money taken out of the account.
    Subtracted {
        /// The amount, in the smallest unit of the currency.
        amount: i64,
    },
}

/// Parses one event into a [`BalanceEvent`], or `Ok(None)` when its class is not one of
/// [`HANDLED_CLASSES`] (a projector ignores events it does not know).
///
/// # Errors
///
/// A message naming the event id and class when a balance event is malformed: it has no
/// aggregate uuid, its properties are not a JSON object, or a field is missing or mistyped.
pub fn parse(raw: &RawEvent<'_>) -> Result<Option<BalanceEvent>, String> {
    let class = short_class(raw.event_class);
    if !HANDLED_CLASSES.contains(&class) {
        return Ok(None);
    }
    let context = || format!("event {} ({class})", raw.id);
    let account = match raw.aggregate_uuid {
        Some(uuid) if !uuid.is_empty() => uuid.to_owned(),
        _ => {
            return Err(format!(
                "{} has no aggregate-uuid (the account id)",
                context()
            ));
        }
    };
    let properties: Properties = serde_json::from_str(raw.properties).map_err(|e| {
        if e.is_data() {
            // Every field is read as any JSON value: the only data error left is the
            // document itself being something other than an object.
            format!("{}: event-properties is not a JSON object", context())
        } else {
            format!("{}: event-properties is not valid JSON: {e}", context())
        }
    })?;
    let change = match class {
        "AccountOpened" => Change::Opened {
            name: text_field(properties.name, "name").map_err(|e| format!("{}: {e}", context()))?,
        },
        "MoneyAdded" => Change::Added {
            amount: integer_field(properties.amount.as_ref(), "amount")
                .map_err(|e| format!("{}: {e}", context()))?,
        },
        _ => Change::Subtracted {
            amount: integer_field(properties.amount.as_ref(), "amount")
                .map_err(|e| format!("{}: {e}", context()))?,
        },
    };
    Ok(Some(BalanceEvent { account, change }))
}

/// The error for an update that found no row: the event refers to an account never opened.
pub fn no_account(account: &str, event_id: i64) -> String {
    format!("no account {account} for event {event_id}")
}

/// A call's events applied the pipelined way, for any version's bindings: each handled
/// event's write goes out with `send` (which answers at once, or later where the host
/// pipelines), then one `flush` answers every write's row count. A deposit or withdrawal
/// whose write changed no row refers to an account never opened; the first one fails the
/// call, named by its index.
///
/// `raw` borrows what the parser reads from an event; `send` sends the write of one parsed
/// event; `flush` returns the row counts of the writes sent, in order.
///
/// # Errors
///
/// The index of the event that failed (the first sent, for a write whose failure `flush`
/// reported: the host then finds the event by giving them one per call) and the message.
pub fn apply_sent<E>(
    events: &[E],
    raw: impl Fn(&E) -> RawEvent<'_>,
    mut send: impl FnMut(&E, &BalanceEvent) -> Result<(), String>,
    flush: impl FnOnce() -> Result<Vec<u64>, String>,
) -> Result<(), (usize, String)> {
    // For each write sent: its event's index and id, and the account a balance change must
    // find (an account opening finds nothing).
    let mut sent: Vec<(usize, i64, Option<String>)> = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let raw = raw(event);
        let Some(parsed) = parse(&raw).map_err(|message| (index, message))? else {
            continue;
        };
        send(event, &parsed).map_err(|message| (index, message))?;
        let must_find = match parsed.change {
            Change::Opened { .. } => None,
            Change::Added { .. } | Change::Subtracted { .. } => Some(parsed.account),
        };
        sent.push((index, raw.id, must_find));
    }
    let Some(&(first, ..)) = sent.first() else {
        return Ok(());
    };
    let counts = flush().map_err(|message| (first, message))?;
    for ((index, id, must_find), count) in sent.iter().zip(counts) {
        if let (Some(account), 0) = (must_find, count) {
            return Err((*index, no_account(account, *id)));
        }
    }
    Ok(())
}

/// The fields of an event's properties that a balance event reads. Parsing keeps only these
/// two and skips every other field without building it: a `serde_json::Value` of the whole
/// document would allocate a map and each key, for every event.
#[derive(Debug, Default)]
struct Properties {
    name: Option<Value>,
    amount: Option<Value>,
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PropertiesVisitor)
    }
}

/// Reads a JSON object into [`Properties`]; anything else is a data error. A field given
/// twice keeps its last value, as `serde_json::Value` does.
struct PropertiesVisitor;

impl<'de> Visitor<'de> for PropertiesVisitor {
    type Value = Properties;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Properties, A::Error> {
        let mut properties = Properties::default();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Name => properties.name = Some(map.next_value()?),
                Field::Amount => properties.amount = Some(map.next_value()?),
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(properties)
    }
}

/// A key of the properties object, told apart without allocating it.
enum Field {
    Name,
    Amount,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// Reads a key, escaped or not, as a [`Field`].
struct FieldVisitor;

impl Visitor<'_> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Field, E> {
        Ok(match key {
            "name" => Field::Name,
            "amount" => Field::Amount,
            _ => Field::Other,
        })
    }
}

/// Reads a string field of the event's properties.
fn text_field(value: Option<Value>, field: &str) -> Result<String, String> {
    match value {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!("field `{field}` must be a string, got {other}")),
        None => Err(format!("missing string field `{field}`")),
    }
}

/// Reads an integer field of the event's properties; floats and numeric strings are refused
/// rather than rounded or guessed at.
fn integer_field(value: Option<&Value>, field: &str) -> Result<i64, String> {
    match value {
        Some(value) => value.as_i64().ok_or_else(|| {
            format!("field `{field}` must be an integer in the signed 64-bit range, got {value}")
        }),
        None => Err(format!("missing integer field `{field}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(class: &'a str, uuid: Option<&'a str>, properties: &'a str) -> RawEvent<'a> {
        RawEvent {
            id: 7,
            aggregate_uuid: uuid,
            event_class: class,
            properties,
        }
    }

    #[test]
    fn sent_writes_that_changed_nothing_name_their_event() {
        let events = [
            ("AccountOpened", "a", r#"{"name": "Ann"}"#),
            ("Unrelated", "a", "{}"),
            ("MoneyAdded", "a", r#"{"amount": 5}"#),
            ("MoneySubtracted", "b", r#"{"amount": 1}"#),
            ("MoneyAdded", "b", r#"{"amount": 1}"#),
        ];
        fn raw_of<'a>(e: &'a (&str, &str, &str)) -> RawEvent<'a> {
            RawEvent {
                id: 10,
                aggregate_uuid: Some(e.1),
                event_class: e.0,
                properties: e.2,
            }
        }
        let mut sent = Vec::new();
        let outcome = apply_sent(
            &events,
            raw_of,
            |e, parsed| {
                sent.push((e.0, parsed.account.clone()));
                Ok(())
            },
            || Ok(vec![1, 1, 0, 0]),
        );
        assert_eq!(sent.len(), 4, "the unhandled event sends nothing");
        assert_eq!(outcome, Err((3, no_account("b", 10))));
        // An opening that changed nothing is no failure; a flush that failed names the first
        // event sent.
        assert_eq!(
            apply_sent(&events[..2], raw_of, |_, _| Ok(()), || Ok(vec![0])),
            Ok(())
        );
        assert_eq!(
            apply_sent(&events[1..], raw_of, |_, _| Ok(()), || Err("boom".into())),
            Err((1, "boom".into()))
        );
        assert_eq!(
            apply_sent(&events[1..2], raw_of, |_, _| Ok(()), || unreachable!()),
            Ok(())
        );
    }

    #[test]
    fn short_class_drops_a_php_namespace() {
        assert_eq!(short_class(r"App\Events\MoneyAdded"), "MoneyAdded");
        assert_eq!(short_class("MoneyAdded"), "MoneyAdded");
        assert_eq!(short_class(r"Trailing\"), "");
    }

    #[test]
    fn parses_the_three_events() {
        let opened = parse(&raw("AccountOpened", Some("a1"), r#"{"name":"Ann"}"#)).unwrap();
        assert_eq!(
            opened,
            Some(BalanceEvent {
                account: "a1".into(),
                change: Change::Opened { name: "Ann".into() }
            })
        );
        let added = parse(&raw(
            r"App\Events\MoneyAdded",
            Some("a1"),
            r#"{"amount":5}"#,
        ))
        .unwrap();
        assert_eq!(added.unwrap().change, Change::Added { amount: 5 });
        let taken = parse(&raw("MoneySubtracted", Some("a1"), r#"{"amount":-2}"#)).unwrap();
        assert_eq!(taken.unwrap().change, Change::Subtracted { amount: -2 });
    }

    #[test]
    fn reads_its_fields_among_others_escaped_or_repeated() {
        let added = parse(&raw(
            "MoneyAdded",
            Some("a1"),
            r#"{"note":{"deep":[1,{"amount":9}]},"\u0061mount":7,"name":null}"#,
        ))
        .unwrap();
        assert_eq!(added.unwrap().change, Change::Added { amount: 7 });
        let repeated = parse(&raw(
            "AccountOpened",
            Some("a1"),
            r#"{"name":"Ann","name":"Bob"}"#,
        ))
        .unwrap();
        assert_eq!(
            repeated.unwrap().change,
            Change::Opened { name: "Bob".into() }
        );
    }

    #[test]
    fn ignores_other_classes_without_reading_them() {
        assert_eq!(
            parse(&raw("AccountClosed", None, "not json")).unwrap(),
            None
        );
    }

    #[test]
    fn malformed_events_name_the_event() {
        let cases = [
            (
                raw("MoneyAdded", None, r#"{"amount":1}"#),
                "event 7 (MoneyAdded) has no aggregate-uuid",
            ),
            (
                raw("MoneyAdded", Some(""), r#"{"amount":1}"#),
                "has no aggregate-uuid",
            ),
            (
                raw("MoneyAdded", Some("a"), "{"),
                "event 7 (MoneyAdded): event-properties is not valid JSON",
            ),
            (raw("MoneyAdded", Some("a"), "[1]"), "is not a JSON object"),
            (
                raw("MoneyAdded", Some("a"), "{}"),
                "event 7 (MoneyAdded): missing integer field `amount`",
            ),
            (
                raw("MoneyAdded", Some("a"), r#"{"amount":1.5}"#),
                "`amount` must be an integer",
            ),
            (
                raw("MoneyAdded", Some("a"), r#"{"amount":"3"}"#),
                "`amount` must be an integer",
            ),
            (
                raw("AccountOpened", Some("a"), r#"{"name":3}"#),
                "`name` must be a string, got 3",
            ),
            (
                raw("AccountOpened", Some("a"), "{}"),
                "missing string field `name`",
            ),
            (raw("MoneyAdded", Some("a"), "[]"), "is not a JSON object"),
            (raw("MoneyAdded", Some("a"), "3"), "is not a JSON object"),
            (
                raw("MoneyAdded", Some("a"), r#"{"amount":1} x"#),
                "event-properties is not valid JSON",
            ),
            (
                raw("MoneyAdded", Some("a"), r#"{"amount":1,}"#),
                "event-properties is not valid JSON",
            ),
        ];
        for (event, expected) in cases {
            let message = parse(&event).unwrap_err();
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
    }
}
