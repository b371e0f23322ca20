//! Events: what the event store holds, and how new events arrive from the CLI or a JSONL file.
//!
//! The store's schema is Spatie's `stored_events` (laravel-event-sourcing), so zdr can run on an
//! existing Laravel database. Reading and appending happen in the backend; this module owns the
//! shapes and the validation of incoming events, so a malformed line is refused with its line
//! number before anything is written.

use serde::Deserialize;

/// One stored event, as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the store; increasing, never reused.
    pub id: i64,
    /// The aggregate (e.g. the account) the event belongs to.
    pub aggregate_uuid: Option<String>,
    /// The aggregate's version after this event.
    pub aggregate_version: Option<i64>,
    /// The event schema version.
    pub event_version: i64,
    /// The event's type, e.g. `MoneyAdded` or `App\Events\MoneyAdded`.
    pub event_class: String,
    /// JSON payload.
    pub event_properties: String,
    /// JSON metadata.
    pub meta_data: String,
    /// When it was recorded (ISO-8601 text as stored).
    pub created_at: String,
}

/// A row of the event store as read: an event, or a row zdr cannot decode (a column of the
/// wrong type, text that is not UTF-8). An undecodable row stops a projector at its id like
/// any other bad event, with the reason recorded, instead of failing the whole read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEvent {
    /// A decoded event.
    Event(Event),
    /// A row that could not be decoded.
    Undecodable(Undecodable),
}

/// A row of the event store that zdr could not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// Its id.
    pub id: i64,
    /// Its class, when that column could be read.
    pub event_class: Option<String>,
    /// Which column is wrong and how, e.g. `aggregate_uuid is a BLOB, not text`.
    pub reason: String,
}

impl ReadEvent {
    /// The row's id.
    pub fn id(&self) -> i64 {
        match self {
            ReadEvent::Event(event) => event.id,
            ReadEvent::Undecodable(row) => row.id,
        }
    }
}

/// An event to append; the store assigns `id` and, when absent, `created_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The aggregate the event belongs to.
    pub aggregate_uuid: Option<String>,
    /// The aggregate's version after this event.
    pub aggregate_version: Option<i64>,
    /// The event schema version (default 1).
    pub event_version: i64,
    /// The event's type.
    pub event_class: String,
    /// JSON payload (validated, compact).
    pub event_properties: String,
    /// JSON metadata (validated, compact).
    pub meta_data: String,
    /// Recording time; `None` lets the store stamp the current time.
    pub created_at: Option<String>,
}

/// Why an incoming event was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventError {
    /// The JSON itself is malformed.
    #[error("line {line}: not valid JSON: {message}")]
    Json {
        /// 1-based line number in the input.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A field is missing or has the wrong shape.
    #[error("line {line}: {message}")]
    Invalid {
        /// 1-based line number in the input.
        line: usize,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// The JSON shape of one line of `zdr events import`: Spatie's column names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    #[serde(default)]
    aggregate_uuid: Option<String>,
    #[serde(default)]
    aggregate_version: Option<i64>,
    #[serde(default)]
    event_version: Option<i64>,
    event_class: String,
    #[serde(default)]
    event_properties: Option<serde_json::Value>,
    #[serde(default)]
    meta_data: Option<serde_json::Value>,
    #[serde(default)]
    created_at: Option<String>,
}

/// The longest event class name accepted.
pub const MAX_EVENT_CLASS_LEN: usize = 255;

impl NewEvent {
    /// Builds an event from CLI-style parts, checking that the JSON documents are objects.
    ///
    /// # Errors
    /// [`EventError`] naming the bad field (reported as line 1).
    pub fn new(
        event_class: &str,
        aggregate_uuid: Option<String>,
        properties: &str,
        meta: &str,
    ) -> Result<Self, EventError> {
        let parse = |what: &str, text: &str| -> Result<serde_json::Value, EventError> {
            serde_json::from_str(text).map_err(|err| EventError::Invalid {
                line: 1,
                message: format!("{what} is not valid JSON ({err}): {text}"),
            })
        };
        let line = EventLine {
            aggregate_uuid,
            aggregate_version: None,
            event_version: None,
            event_class: event_class.to_string(),
            event_properties: Some(parse("properties", properties)?),
            meta_data: Some(parse("meta data", meta)?),
            created_at: None,
        };
        Self::from_line(line, 1)
    }

    /// Parses one JSONL line (`line` is its 1-based number, for messages).
    ///
    /// # Errors
    /// [`EventError`] saying what is wrong on which line.
    pub fn parse_line(text: &str, line: usize) -> Result<Self, EventError> {
        let parsed: EventLine = serde_json::from_str(text).map_err(|err| {
            let message = err.to_string();
            if err.is_data() {
                EventError::Invalid { line, message }
            } else {
                EventError::Json { line, message }
            }
        })?;
        Self::from_line(parsed, line)
    }

    fn from_line(parsed: EventLine, line: usize) -> Result<Self, EventError> {
        let invalid = |message: String| EventError::Invalid { line, message };
        let class = parsed.event_class.trim();
        if class.is_empty()
            || class.len() > MAX_EVENT_CLASS_LEN
            || class.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "event_class must be 1 to {MAX_EVENT_CLASS_LEN} printable characters, got {:?}",
                parsed.event_class
            )));
        }
        let object = |what: &str, value: Option<serde_json::Value>| -> Result<String, EventError> {
            match value {
                None => Ok("{}".to_string()),
                Some(v @ serde_json::Value::Object(_)) => Ok(v.to_string()),
                Some(other) => Err(invalid(format!(
                    "{what} must be a JSON object, got {other}"
                ))),
            }
        };
        Ok(Self {
            aggregate_uuid: parsed.aggregate_uuid,
            aggregate_version: parsed.aggregate_version,
            event_version: parsed.event_version.unwrap_or(1),
            event_class: class.to_string(),
            event_properties: object("event_properties", parsed.event_properties)?,
            meta_data: object("meta_data", parsed.meta_data)?,
            created_at: parsed.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_spatie_line() {
        let e = NewEvent::parse_line(
            r#"{"aggregate_uuid":"a1","event_class":"App\\Events\\MoneyAdded","event_properties":{"amount":5}}"#,
            3,
        )
        .unwrap();
        assert_eq!(e.event_class, "App\\Events\\MoneyAdded");
        assert_eq!(e.event_properties, r#"{"amount":5}"#);
        assert_eq!(e.meta_data, "{}");
        assert_eq!(e.event_version, 1);
    }

    #[test]
    fn reports_the_line_of_bad_input() {
        for (text, want) in [
            ("{", "line 7: not valid JSON"),
            (r#"{"event_class":""}"#, "line 7: event_class must be"),
            (
                r#"{"event_class":"X","event_properties":[1]}"#,
                "must be a JSON object",
            ),
            (r#"{"event_class":"X","surprise":1}"#, "unknown field"),
            (r#"{"aggregate_uuid":"a"}"#, "missing field `event_class`"),
        ] {
            let err = NewEvent::parse_line(text, 7).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
