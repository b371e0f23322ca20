//! Comparing two copies of a projector's tables in the database, table by table: the live
//! tables and a replay's (its clone before a promote, the former live tables after one).
//!
//! Nothing is loaded into memory but counts and a bounded sample: each question is one SQL
//! statement over both physical tables. Rows are matched by the primary key when both copies
//! have the same one, and compared on the columns both copies have (a column added or dropped
//! by the new version is reported, not compared); without a common key, whole rows are
//! compared as sets. All reads happen in one read snapshot, so a daemon that writes both copies
//! meanwhile (dual writes commit live and clone in one transaction) never makes them differ.

use crate::backend::{Db, StoreError, TableColumn, Value};
use crate::model::{Description, Role, Target};
use crate::sandbox::{Dialect, PhysicalName};

/// How many rows of each kind a diff shows at most, unless asked for another number.
pub const DEFAULT_SAMPLE: usize = 10;

/// Which tables, and which of their columns, to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFilter {
    /// The logical table.
    pub table: String,
    /// The columns to compare (empty: every common column).
    pub columns: Vec<String>,
}

impl TableFilter {
    /// Parses `TABLE` or `TABLE:COL1,COL2`.
    ///
    /// # Errors
    /// An empty table or column name.
    pub fn parse(text: &str) -> Result<TableFilter, String> {
        let (table, columns) = text.split_once(':').unwrap_or((text, ""));
        let columns: Vec<String> = columns
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        if table.trim().is_empty() || (text.contains(':') && columns.is_empty()) {
            return Err(format!(
                "{text:?} is not TABLE or TABLE:COLUMN[,COLUMN…] (for example balances:balance)"
            ));
        }
        Ok(TableFilter {
            table: table.trim().to_string(),
            columns,
        })
    }
}

impl TableFilter {
    /// One filter per table: the columns of filters naming the same table together, or every
    /// column when one of them names none.
    pub fn merged(filters: &[TableFilter]) -> Vec<TableFilter> {
        let mut merged: Vec<TableFilter> = Vec::new();
        for filter in filters {
            match merged
                .iter_mut()
                .find(|m| m.table.eq_ignore_ascii_case(&filter.table))
            {
                None => merged.push(filter.clone()),
                Some(m) if m.columns.is_empty() || filter.columns.is_empty() => m.columns.clear(),
                Some(m) => {
                    for column in &filter.columns {
                        if !m.columns.iter().any(|c| c.eq_ignore_ascii_case(column)) {
                            m.columns.push(column.clone());
                        }
                    }
                }
            }
        }
        merged
    }
}

/// How one table differs between live and the replay's copy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TableDiff {
    /// The logical table.
    pub table: String,
    /// Rows in the live table.
    pub live_rows: i64,
    /// Rows in the replay's table.
    pub replay_rows: i64,
    /// The primary key rows are matched by (empty: whole rows compared as sets).
    pub key: Vec<String>,
    /// The columns compared.
    pub compared: Vec<String>,
    /// Columns only the live table has (dropped by the replay's version).
    pub only_live_columns: Vec<String>,
    /// Columns only the replay's table has (added by its version).
    pub only_replay_columns: Vec<String>,
    /// Rows (keys) only in the live table.
    pub only_in_live: i64,
    /// Rows (keys) only in the replay's table.
    pub only_in_replay: i64,
    /// Rows present in both whose compared columns differ (0 without a key).
    pub differing: i64,
    /// A bounded sample of the rows above.
    pub samples: Vec<RowDiff>,
}

impl TableDiff {
    /// Whether the two copies hold the same rows on the compared columns.
    pub fn is_same(&self) -> bool {
        self.only_in_live == 0 && self.only_in_replay == 0 && self.differing == 0
    }
}

/// One row of a sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowDiff {
    /// `only-live`, `only-replay` or `differs`.
    pub kind: &'static str,
    /// The row's key (or, without a key, the whole row), as `column=value` pairs.
    pub key: Vec<(String, serde_json::Value)>,
    /// For `differs`: each differing column with its live and its replay value.
    pub columns: Vec<ColumnDiff>,
}

/// One column that differs in a row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ColumnDiff {
    /// The column.
    pub column: String,
    /// Its value in the live table.
    pub live: serde_json::Value,
    /// Its value in the replay's table.
    pub replay: serde_json::Value,
}

/// How one projector's tables differ.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProjectorDiff {
    /// The projector.
    pub projector: String,
    /// The live version and its checkpoint.
    pub live_version: String,
    /// The live checkpoint.
    pub live_checkpoint: i64,
    /// The replay's version (its clone's, or the former live one after a promote).
    pub replay_version: String,
    /// The replay's checkpoint.
    pub replay_checkpoint: i64,
    /// The replay's copy: `clone`, or `retired` after a promote.
    pub replay_role: Role,
    /// One entry per compared table.
    pub tables: Vec<TableDiff>,
}

impl ProjectorDiff {
    /// Whether every compared table holds the same rows.
    pub fn is_same(&self) -> bool {
        self.tables.iter().all(TableDiff::is_same)
    }
}

/// Compares live target `live` (version `live_description`) with the replay's target
/// `replay`, on the tables and columns `filters` name (every table both versions have when
/// there is no filter; a filter naming another projector's table is passed over), showing at
/// most `sample` rows of each kind per table. Runs inside the caller's read snapshot.
///
/// # Errors
/// A filter naming a column the table does not have, or a database failure.
pub fn diff_targets(
    db: &Db,
    live: &Target,
    live_description: &Description,
    replay: &Target,
    replay_description: &Description,
    filters: &[TableFilter],
    sample: usize,
) -> Result<ProjectorDiff, DiffError> {
    let layout = db.layout();
    let mut tables = Vec::new();
    for declared in &replay_description.tables {
        let filter = filters
            .iter()
            .find(|f| f.table.eq_ignore_ascii_case(&declared.name));
        if !filters.is_empty() && filter.is_none() {
            continue;
        }
        if !live_description
            .tables
            .iter()
            .any(|t| t.name.eq_ignore_ascii_case(&declared.name))
        {
            // A table the new version added has nothing live to be compared with.
            continue;
        }
        let live_name = layout.physical(
            live.id,
            live.role,
            live.replay_key.as_deref(),
            &declared.name,
        );
        let replay_name = layout.physical(
            replay.id,
            replay.role,
            replay.replay_key.as_deref(),
            &declared.name,
        );
        let columns = filter.map(|f| f.columns.as_slice()).unwrap_or_default();
        tables.push(diff_table(
            db,
            &declared.name,
            &live_name,
            &replay_name,
            columns,
            sample,
        )?);
    }
    Ok(ProjectorDiff {
        projector: replay.projector.clone(),
        live_version: live.version.clone(),
        live_checkpoint: live.checkpoint,
        replay_version: replay.version.clone(),
        replay_checkpoint: replay.checkpoint,
        replay_role: replay.role,
        tables,
    })
}

/// Why a diff could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffError {
    /// A table or column that is not there.
    #[error("{0}")]
    Unknown(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// `side.column`, cast to text when the two copies declare the column with different types
/// (so that comparing them is defined on every backend).
fn operand(dialect: Dialect, side: &str, column: &TableColumn, other: &TableColumn) -> String {
    let name = format!("{side}.{}", quote(&column.name));
    if column.type_name == other.type_name {
        name
    } else if dialect == Dialect::MySql {
        format!("CAST({name} AS CHAR)")
    } else {
        format!("CAST({name} AS TEXT)")
    }
}

/// `a` and `b` differ, NULL counting as a value: MySQL spells it with its null-safe `<=>`.
fn distinct(dialect: Dialect, a: &str, b: &str) -> String {
    if dialect == Dialect::MySql {
        format!("NOT ({a} <=> {b})")
    } else {
        format!("{a} IS DISTINCT FROM {b}")
    }
}

fn diff_table(
    db: &Db,
    table: &str,
    live_name: &PhysicalName,
    replay_name: &PhysicalName,
    only_columns: &[String],
    sample: usize,
) -> Result<TableDiff, DiffError> {
    let live_columns = db.table_columns(live_name)?;
    let replay_columns = db.table_columns(replay_name)?;
    let find = |columns: &[TableColumn], name: &str| {
        columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .cloned()
    };
    let common: Vec<(TableColumn, TableColumn)> = live_columns
        .iter()
        .filter_map(|l| find(&replay_columns, &l.name).map(|r| (l.clone(), r)))
        .collect();
    let only_live_columns: Vec<String> = live_columns
        .iter()
        .filter(|l| find(&replay_columns, &l.name).is_none())
        .map(|c| c.name.clone())
        .collect();
    let only_replay_columns: Vec<String> = replay_columns
        .iter()
        .filter(|r| find(&live_columns, &r.name).is_none())
        .map(|c| c.name.clone())
        .collect();
    // The key: the primary key, when both copies have the same one over common columns.
    let mut key: Vec<(TableColumn, TableColumn)> = common
        .iter()
        .filter(|(l, r)| l.key_position.is_some() && l.key_position == r.key_position)
        .cloned()
        .collect();
    key.sort_by_key(|(l, _)| l.key_position);
    let live_key_len = live_columns
        .iter()
        .filter(|c| c.key_position.is_some())
        .count();
    let replay_key_len = replay_columns
        .iter()
        .filter(|c| c.key_position.is_some())
        .count();
    if key.is_empty() || key.len() != live_key_len || key.len() != replay_key_len {
        key.clear();
    }
    for wanted in only_columns {
        if !common
            .iter()
            .any(|(l, _)| l.name.eq_ignore_ascii_case(wanted))
        {
            return Err(DiffError::Unknown(format!(
                "table {table} has no column {wanted:?} in both versions; common columns: {}",
                common
                    .iter()
                    .map(|(l, _)| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let compared: Vec<(TableColumn, TableColumn)> = common
        .iter()
        .filter(|(l, _)| !key.iter().any(|(k, _)| k.name == l.name))
        .filter(|(l, _)| {
            only_columns.is_empty() || only_columns.iter().any(|c| c.eq_ignore_ascii_case(&l.name))
        })
        .cloned()
        .collect();
    let (live_sql, replay_sql) = (live_name.quoted(), replay_name.quoted());
    let count = |sql: String| -> Result<i64, StoreError> {
        let rows = db.read_rows(&sql)?;
        match rows.rows.first().and_then(|r| r.first()) {
            Some(Value::Integer(n)) => Ok(*n),
            Some(other) => Err(StoreError::Corrupt(format!(
                "a count came back as {other}, not an integer"
            ))),
            None => Err(StoreError::Corrupt(
                "a count came back with no row".to_string(),
            )),
        }
    };
    let live_rows = count(format!("SELECT COUNT(*) FROM {live_sql}"))?;
    let replay_rows = count(format!("SELECT COUNT(*) FROM {replay_sql}"))?;
    let mut samples = Vec::new();
    let (only_in_live, only_in_replay, differing);
    if key.is_empty() {
        // No common key: whole rows, on the compared columns, as sets.
        let columns: Vec<&TableColumn> = common.iter().map(|(l, _)| l).collect();
        let select = |name: &str, live_side: bool| {
            let list: Vec<String> = common
                .iter()
                .map(|(l, r)| {
                    let (mine, other) = if live_side { (l, r) } else { (r, l) };
                    operand(db.dialect(), "t", mine, other)
                })
                .collect();
            format!("SELECT {} FROM {name} AS t", list.join(", "))
        };
        let live_minus_replay = format!(
            "{} EXCEPT {}",
            select(&live_sql, true),
            select(&replay_sql, false)
        );
        let replay_minus_live = format!(
            "{} EXCEPT {}",
            select(&replay_sql, false),
            select(&live_sql, true)
        );
        only_in_live = count(format!("SELECT COUNT(*) FROM ({live_minus_replay}) AS d"))?;
        only_in_replay = count(format!("SELECT COUNT(*) FROM ({replay_minus_live}) AS d"))?;
        differing = 0;
        for (kind, sql) in [
            ("only-live", &live_minus_replay),
            ("only-replay", &replay_minus_live),
        ] {
            let rows = db.read_rows(&format!("SELECT * FROM ({sql}) AS d LIMIT {sample}"))?;
            for row in rows.rows {
                samples.push(RowDiff {
                    kind,
                    key: columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| (c.name.clone(), json(&v)))
                        .collect(),
                    columns: Vec::new(),
                });
            }
        }
    } else {
        let on: Vec<String> = key
            .iter()
            .map(|(l, r)| {
                format!(
                    "{} = {}",
                    operand(db.dialect(), "r", r, l),
                    operand(db.dialect(), "l", l, r)
                )
            })
            .collect();
        let on = on.join(" AND ");
        let key_list = |side: &str| {
            key.iter()
                .map(|(l, _)| format!("{side}.{}", quote(&l.name)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let missing = |from: &str, other: &str| {
            format!("FROM {from} AS l WHERE NOT EXISTS (SELECT 1 FROM {other} AS r WHERE {on})")
        };
        only_in_live = count(format!(
            "SELECT COUNT(*) {}",
            missing(&live_sql, &replay_sql)
        ))?;
        only_in_replay = count(format!(
            "SELECT COUNT(*) {}",
            missing(&replay_sql, &live_sql)
        ))?;
        let differs: Vec<String> = compared
            .iter()
            .map(|(l, r)| {
                distinct(
                    db.dialect(),
                    &operand(db.dialect(), "l", l, r),
                    &operand(db.dialect(), "r", r, l),
                )
            })
            .collect();
        differing = if differs.is_empty() {
            0
        } else {
            count(format!(
                "SELECT COUNT(*) FROM {live_sql} AS l JOIN {replay_sql} AS r ON {on} WHERE {}",
                differs.join(" OR ")
            ))?
        };
        let key_names: Vec<String> = key.iter().map(|(l, _)| l.name.clone()).collect();
        for (kind, from, other) in [
            ("only-live", &live_sql, &replay_sql),
            ("only-replay", &replay_sql, &live_sql),
        ] {
            let rows = db.read_rows(&format!(
                "SELECT {} {} ORDER BY {} LIMIT {sample}",
                key_list("l"),
                missing(from, other),
                key_list("l")
            ))?;
            for row in rows.rows {
                samples.push(RowDiff {
                    kind,
                    key: key_names
                        .iter()
                        .cloned()
                        .zip(row.iter().map(json))
                        .collect(),
                    columns: Vec::new(),
                });
            }
        }
        if !differs.is_empty() {
            let pairs: Vec<String> = compared
                .iter()
                .map(|(l, r)| format!("l.{}, r.{}", quote(&l.name), quote(&r.name)))
                .collect();
            let rows = db.read_rows(&format!(
                "SELECT {}, {} FROM {live_sql} AS l JOIN {replay_sql} AS r ON {on} WHERE {} ORDER BY {} LIMIT {sample}",
                key_list("l"),
                pairs.join(", "),
                differs.join(" OR "),
                key_list("l")
            ))?;
            for row in rows.rows {
                let (keys, values) = row.split_at(key.len());
                let columns = compared
                    .iter()
                    .zip(values.chunks(2))
                    .filter(|(_, pair)| pair.len() == 2 && !same_value(&pair[0], &pair[1]))
                    .map(|((l, _), pair)| ColumnDiff {
                        column: l.name.clone(),
                        live: json(&pair[0]),
                        replay: json(&pair[1]),
                    })
                    .collect();
                samples.push(RowDiff {
                    kind: "differs",
                    key: key_names
                        .iter()
                        .cloned()
                        .zip(keys.iter().map(json))
                        .collect(),
                    columns,
                });
            }
        }
    }
    Ok(TableDiff {
        table: table.to_string(),
        live_rows,
        replay_rows,
        key: key.iter().map(|(l, _)| l.name.clone()).collect(),
        compared: compared.iter().map(|(l, _)| l.name.clone()).collect(),
        only_live_columns,
        only_replay_columns,
        only_in_live,
        only_in_replay,
        differing,
        samples,
    })
}

impl TableDiff {
    /// The diff in a few lines for people: counts, columns added and dropped, and the sample.
    pub fn lines(&self, replay_side: &str) -> Vec<String> {
        let mut lines = vec![format!(
            "{}: {} row(s) live, {} in the {replay_side}; {} only live, {} only in the {replay_side}, {} differ{}",
            self.table,
            self.live_rows,
            self.replay_rows,
            self.only_in_live,
            self.only_in_replay,
            self.differing,
            if self.key.is_empty() {
                " (no common primary key: whole rows compared)".to_string()
            } else {
                format!(
                    " (by {}, on {})",
                    self.key.join(", "),
                    self.compared.join(", ")
                )
            }
        )];
        if !self.only_replay_columns.is_empty() {
            lines.push(format!(
                "  columns only the {replay_side} has: {}",
                self.only_replay_columns.join(", ")
            ));
        }
        if !self.only_live_columns.is_empty() {
            lines.push(format!(
                "  columns only live has: {}",
                self.only_live_columns.join(", ")
            ));
        }
        for row in &self.samples {
            let key: Vec<String> = row.key.iter().map(|(c, v)| format!("{c}={v}")).collect();
            let what = match row.kind {
                "only-live" => "only live".to_string(),
                "only-replay" => format!("only in the {replay_side}"),
                _ => row
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} live, {} in the {replay_side}",
                            c.column, c.live, c.replay
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            lines.push(format!("  {}: {what}", key.join(", ")));
        }
        lines
    }
}

/// Whether two values read back are the same (as the database compared them).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Real(x), Value::Real(y)) => x == y,
        (Value::Integer(x), Value::Real(y)) | (Value::Real(y), Value::Integer(x)) => {
            (*x as f64) == *y
        }
        _ => a == b,
    }
}

/// A value for JSON and for messages.
fn json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(v) => (*v).into(),
        Value::Real(v) => {
            serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Text(v) => v.clone().into(),
        Value::Blob(v) => format!("x'{}'", hex::encode(v)).into(),
        Value::Boolean(v) => (*v).into(),
        Value::Unsupported(t) => format!("<{t}>").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_a_table_and_maybe_columns() {
        assert_eq!(
            TableFilter::parse("balances").unwrap(),
            TableFilter {
                table: "balances".into(),
                columns: vec![]
            }
        );
        assert_eq!(
            TableFilter::parse("balances:balance, name")
                .unwrap()
                .columns,
            ["balance", "name"]
        );
        assert!(TableFilter::parse("").is_err());
        let merged = TableFilter::merged(&[
            TableFilter::parse("balances:balance").unwrap(),
            TableFilter::parse("other").unwrap(),
            TableFilter::parse("Balances:name,balance").unwrap(),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].columns, ["balance", "name"]);
        let merged = TableFilter::merged(&[
            TableFilter::parse("balances:balance").unwrap(),
            TableFilter::parse("balances").unwrap(),
        ]);
        assert!(
            merged[0].columns.is_empty(),
            "a whole table wins over some of its columns"
        );
        assert!(TableFilter::parse("balances:").is_err());
    }
}
