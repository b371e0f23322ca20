//! The vocabulary shared by every layer: projector descriptions, targets, replay states and
//! the validation of names and keys an operator types. No I/O here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One table a projector declares, with the DDL that creates it (logical names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDecl {
    /// Logical table name.
    pub name: String,
    /// `CREATE TABLE` followed by any `CREATE INDEX` statements.
    pub ddl: Vec<String>,
}

/// What a projector's `describe` returned: identity, tables and handled events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// Projector name.
    pub name: String,
    /// Version string of this build.
    pub version: String,
    /// Declared tables.
    pub tables: Vec<TableDecl>,
    /// Handled event classes; empty means all.
    pub handles: Vec<String>,
    /// For a projector of the `partitioned-projector` world, each table's aggregate column:
    /// its events may then be replayed split by aggregate. Empty for any other projector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<PartitionKey>,
}

/// A table of a partitioned projector and the column that holds each row's aggregate id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionKey {
    /// Logical table name.
    pub table: String,
    /// The column holding the aggregate id of the event that wrote the row.
    pub column: String,
}

impl Description {
    /// Whether this projector wants events of `event_class`. A handled name matches the whole
    /// class or its last `\`-separated segment, so `MoneyAdded` matches `App\Events\MoneyAdded`.
    pub fn handles(&self, event_class: &str) -> bool {
        if self.handles.is_empty() {
            return true;
        }
        let short = event_class.rsplit('\\').next().unwrap_or(event_class);
        self.handles.iter().any(|h| h == event_class || h == short)
    }

    /// Whether history may be replayed split by aggregate: the projector declared an
    /// aggregate column for its tables (`partition-by`).
    pub fn is_partitioned(&self) -> bool {
        !self.partition_by.is_empty()
    }

    /// Checks `partition_by` against the tables: every declared table named exactly once,
    /// with a column, and no other table.
    ///
    /// # Errors
    /// What is wrong, for the projector's author.
    pub fn check_partition_keys(&self) -> Result<(), String> {
        if self.partition_by.is_empty() {
            return Err(
                "partition-by() returned no tables; a partitioned projector names the \
                        aggregate column of each of its tables"
                    .into(),
            );
        }
        for key in &self.partition_by {
            if key.column.trim().is_empty() {
                return Err(format!(
                    "partition-by() names no column for table {}",
                    key.table
                ));
            }
            if !self.tables.iter().any(|t| t.name == key.table) {
                return Err(format!(
                    "partition-by() names table {}, which describe() does not declare",
                    key.table
                ));
            }
            if self
                .partition_by
                .iter()
                .filter(|k| k.table == key.table)
                .count()
                > 1
            {
                return Err(format!("partition-by() names table {} twice", key.table));
            }
        }
        if let Some(missing) = self
            .tables
            .iter()
            .find(|t| !self.partition_by.iter().any(|k| k.table == t.name))
        {
            return Err(format!(
                "partition-by() names no aggregate column for table {}: every table of a \
                 partitioned projector must be keyed by aggregate",
                missing.name
            ));
        }
        Ok(())
    }

    /// The logical names of the declared tables.
    pub fn table_names(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.name.clone()).collect()
    }
}

/// What a target is for. The role decides the physical names of its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The tables readers use.
    Live,
    /// A replay's clone, being rebuilt beside live.
    Clone,
    /// Former live tables kept after a promote until the replay is removed.
    Retired,
    /// A newly deployed projector's tables, built from history before they go live.
    Building,
}

impl Role {
    /// The word stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Clone => "clone",
            Role::Retired => "retired",
            Role::Building => "building",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "live" => Role::Live,
            "clone" => Role::Clone,
            "retired" => Role::Retired,
            "building" => Role::Building,
            _ => return None,
        })
    }
}

/// One target: a copy of a projector's tables with its own checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Never reused; also names SQLite index prefixes.
    pub id: i64,
    /// The projector whose tables these are.
    pub projector: String,
    /// The projector version that writes here.
    pub version_id: i64,
    /// The version string, for display.
    pub version: String,
    /// What the target is for.
    pub role: Role,
    /// The replay that owns it (clone and retired targets).
    pub replay_key: Option<String>,
    /// Id of the last event applied, committed with the rows.
    pub checkpoint: i64,
    /// Set when the projector failed on an event here; the target is stopped until resumed.
    pub failure: Option<Failure>,
    /// The largest id of the events an operator let this (live) target pass with
    /// `zdr projector skip` (listed in `zdr_skips`): those are not handed to the projector.
    pub skip_event_id: Option<i64>,
}

/// A recorded projector failure: the event it stopped at and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The event the projector failed on.
    pub event_id: i64,
    /// What went wrong.
    pub message: String,
}

/// A replay's lifecycle state, changed only by compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayState {
    /// Clone tables exist, nothing replayed yet.
    Created,
    /// `start` has run (maybe partly); resumable.
    Started,
    /// A projector failed on an event; `start` resumes after the fix.
    Failed,
    /// New events go to both live and clone.
    Projecting,
    /// The clone is live; the former live tables are kept until `remove`.
    Promoted,
    /// After a promote, the former live tables were brought up to date and swapped back in;
    /// the promoted version's tables are kept until `remove`.
    #[serde(rename = "rolled-back")]
    RolledBack,
}

impl ReplayState {
    /// The word stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayState::Created => "created",
            ReplayState::Started => "started",
            ReplayState::Failed => "failed",
            ReplayState::Projecting => "projecting",
            ReplayState::Promoted => "promoted",
            ReplayState::RolledBack => "rolled-back",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<ReplayState> {
        Some(match s {
            "created" => ReplayState::Created,
            "started" => ReplayState::Started,
            "failed" => ReplayState::Failed,
            "projecting" => ReplayState::Projecting,
            "promoted" => ReplayState::Promoted,
            "rolled-back" => ReplayState::RolledBack,
            _ => return None,
        })
    }
}

impl fmt::Display for ReplayState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A time given as seconds since the Unix epoch, as ISO-8601 text in UTC with milliseconds
/// (`2026-11-30T09:29:36.123Z`), the form zdr shows every time in.
pub fn iso_utc(seconds: f64) -> String {
    let millis_total = (seconds * 1000.0).round() as i64;
    let (days, millis) = (
        millis_total.div_euclid(86_400_000),
        millis_total.rem_euclid(86_400_000),
    );
    // Howard Hinnant's civil-from-days: the proleptic Gregorian date of a day count.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        millis / 3_600_000,
        millis / 60_000 % 60,
        millis / 1000 % 60,
        millis % 1000
    )
}

/// The longest replay key: it becomes part of physical table names.
pub const MAX_KEY_LEN: usize = 32;
/// The longest projector name.
pub const MAX_PROJECTOR_NAME_LEN: usize = 64;

/// Checks a replay key: it ends up inside table (or schema) names, so it is kept to
/// lowercase letters, digits and `_`, starting with a letter, and `live` is reserved.
///
/// # Errors
/// A message naming the key and the rule it breaks.
pub fn validate_replay_key(key: &str) -> Result<(), String> {
    let ok_chars = key
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let starts = key.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if key.is_empty() || key.len() > MAX_KEY_LEN || !ok_chars || !starts {
        return Err(format!(
            "invalid replay key {key:?}: use 1 to {MAX_KEY_LEN} lowercase letters, digits or '_', starting with a letter (e.g. balance_v2)"
        ));
    }
    if key == "live" {
        return Err("invalid replay key \"live\": it is reserved for the live tables, which are never removed; pick another key".into());
    }
    Ok(())
}

/// Checks a projector name: lowercase letters, digits, `_` and `-`, starting with a letter.
///
/// # Errors
/// A message naming the name and the rule it breaks.
pub fn validate_projector_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    let starts = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if name.is_empty() || name.len() > MAX_PROJECTOR_NAME_LEN || !ok_chars || !starts {
        return Err(format!(
            "invalid projector name {name:?}: use 1 to {MAX_PROJECTOR_NAME_LEN} lowercase letters, digits, '_' or '-', starting with a letter"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_iso_utc() {
        assert_eq!(iso_utc(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_utc(951_782_400.5), "2000-02-29T00:00:00.500Z");
        assert_eq!(iso_utc(1_795_944_576.123), "2026-11-29T09:29:36.123Z");
    }

    #[test]
    fn keys_are_checked() {
        for good in ["v2", "balance_v2", "a"] {
            assert!(validate_replay_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "V2",
            "2v",
            "a-b",
            "a b",
            "a;drop",
            "live",
            &"a".repeat(33),
            "é",
        ] {
            assert!(validate_replay_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_projector_name("sql-probe").is_ok());
        for bad in ["", "Balance", "-x", "x/y", &"a".repeat(65)] {
            assert!(validate_projector_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partition_keys_name_every_table_once() {
        let table = |name: &str| TableDecl {
            name: name.into(),
            ddl: vec![],
        };
        let key = |table: &str, column: &str| PartitionKey {
            table: table.into(),
            column: column.into(),
        };
        let with = |keys: Vec<PartitionKey>| Description {
            name: "b".into(),
            version: "1".into(),
            tables: vec![table("a"), table("b")],
            handles: vec![],
            partition_by: keys,
        };
        assert!(
            with(vec![key("a", "id"), key("b", "owner")])
                .check_partition_keys()
                .is_ok()
        );
        for (keys, says) in [
            (vec![], "no tables"),
            (vec![key("a", "id")], "no aggregate column for table b"),
            (vec![key("a", "id"), key("b", " ")], "no column for table b"),
            (
                vec![key("a", "id"), key("b", "x"), key("c", "x")],
                "table c, which",
            ),
            (
                vec![key("a", "id"), key("a", "x"), key("b", "x")],
                "table a twice",
            ),
        ] {
            let err = with(keys).check_partition_keys().expect_err(says);
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn handles_matches_short_class_names() {
        let d = Description {
            name: "b".into(),
            version: "1".into(),
            tables: vec![],
            handles: vec!["MoneyAdded".into()],
            partition_by: vec![],
        };
        assert!(d.handles("MoneyAdded"));
        assert!(d.handles("App\\Events\\MoneyAdded"));
        assert!(!d.handles("MoneySubtracted"));
    }
}
