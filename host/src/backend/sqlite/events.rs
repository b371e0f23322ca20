//! Reading and appending events on SQLite, and decoding each row: a column of the wrong type
//! or text that is not UTF-8 makes the row undecodable, with the reason, rather than failing
//! the read.

use super::*;

impl SqliteStore {
    pub(super) fn append(&self, events: &[NewEvent]) -> Result<Option<(i64, i64)>, StoreError> {
        self.exec("BEGIN IMMEDIATE")?;
        let appended = (|| {
            let conn = lock(&self.conn);
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO stored_events (aggregate_uuid, aggregate_version, event_version, event_class, \
                     event_properties, meta_data, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, COALESCE(?7, strftime('%Y-%m-%d %H:%M:%f', 'now')))",
                )
                .context("preparing the event insert")?;
            let mut range = None;
            for e in events {
                stmt.execute(params![
                    e.aggregate_uuid,
                    e.aggregate_version,
                    e.event_version,
                    e.event_class,
                    e.event_properties,
                    e.meta_data,
                    e.created_at
                ])
                .context("appending an event")?;
                let id = conn.last_insert_rowid();
                range = Some(range.map_or((id, id), |(first, _)| (first, id)));
            }
            Ok(range)
        })();
        match appended {
            Ok(range) => {
                self.exec("COMMIT")?;
                Ok(range)
            }
            Err(err) => {
                let _ = self.exec("ROLLBACK");
                Err(err)
            }
        }
    }

    pub(super) fn read(
        &self,
        after: i64,
        up_to: i64,
        limit: usize,
        classes: &[String],
        partition: Partition,
    ) -> Result<Vec<ReadEvent>, StoreError> {
        if !partition.is_whole() {
            return Err(StoreError::Unsupported(
                "splitting a replay by aggregate: SQLite has a single writer, so partitions \
                 would only take turns; replay with one"
                    .into(),
            ));
        }
        const COLUMNS: &str = "SELECT id, aggregate_uuid, aggregate_version, COALESCE(event_version, 1), event_class, \
             COALESCE(event_properties, '{}'), COALESCE(meta_data, '{}'), COALESCE(CAST(created_at AS TEXT), '') \
             FROM stored_events WHERE id > ?1 AND id <= ?2";
        let conn = lock(&self.conn);
        // A very long list would pass SQLite's bounds on a statement's expression depth: read
        // every event then, and let the projection pass over the others as it always can.
        if classes.is_empty() || classes.len() > MAX_FILTERED_CLASSES {
            let mut stmt = conn
                .prepare_cached(&format!("{COLUMNS} ORDER BY id LIMIT ?3"))
                .context("preparing the event read")?;
            let rows = stmt
                .query_map(params![after, up_to, limit as i64], decode_event)
                .context("reading events")?;
            return rows
                .collect::<Result<Vec<_>, _>>()
                .context("reading events");
        }
        // A handled name matches the whole class or its last `\`-separated segment
        // (`Description::handles`). One placeholder per name: the statement is cached per
        // projector's list, and SQLite compares plain values (a JSON list of names was parsed
        // again for every row). Whole names first, the cheap test most rows pass by.
        let names = 4..4 + classes.len();
        let whole: Vec<String> = names.clone().map(|n| format!("?{n}")).collect();
        let mut filter = format!("event_class IN ({})", whole.join(", "));
        for n in names {
            filter.push_str(&format!(
                " OR substr(event_class, -length(?{n}) - 1) = '\\' || ?{n}"
            ));
        }
        filter.push_str(" OR event_class IS NULL OR typeof(event_class) <> 'text'");
        let mut stmt = conn
            .prepare_cached(&format!("{COLUMNS} AND ({filter}) ORDER BY id LIMIT ?3"))
            .context("preparing the event read")?;
        let mut values: Vec<rusqlite::types::Value> = vec![
            after.into(),
            up_to.into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ];
        values.extend(classes.iter().map(|c| c.clone().into()));
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values), decode_event)
            .context("reading events")?;
        rows.collect::<Result<Vec<_>, _>>()
            .context("reading events")
    }
}

/// The most handled classes a read filters on in SQL (see [`SqliteStore::read`]).
const MAX_FILTERED_CLASSES: usize = 100;

/// Decodes one row of the event read; a column of the wrong type or text that is not UTF-8
/// makes the row [`ReadEvent::Undecodable`] with the reason.
fn decode_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<ReadEvent> {
    let id: i64 = row.get(0)?;
    // The class is decoded once and moved into the event; an undecodable row keeps it (when
    // it could be read) to say what kind of event could not be read.
    let class = text_column(row, 4, "event_class");
    let rest = (|| {
        Ok::<_, String>((
            optional_text_column(row, 1, "aggregate_uuid")?,
            optional_integer_column(row, 2, "aggregate_version")?,
            optional_integer_column(row, 3, "event_version")?.unwrap_or(1),
            text_column(row, 5, "event_properties")?,
            text_column(row, 6, "meta_data")?,
            text_column(row, 7, "created_at")?,
        ))
    })();
    Ok(match (class, rest) {
        (
            Ok(event_class),
            Ok((
                aggregate_uuid,
                aggregate_version,
                event_version,
                event_properties,
                meta_data,
                created_at,
            )),
        ) => ReadEvent::Event(Event {
            id,
            aggregate_uuid,
            aggregate_version,
            event_version,
            event_class,
            event_properties,
            meta_data,
            created_at,
        }),
        (class, Err(reason)) => ReadEvent::Undecodable(Undecodable {
            id,
            event_class: class.ok(),
            reason,
        }),
        (Err(reason), Ok(_)) => ReadEvent::Undecodable(Undecodable {
            id,
            event_class: None,
            reason,
        }),
    })
}

/// A text column that may not be NULL; `Err` holds why it cannot be read.
fn text_column(row: &rusqlite::Row<'_>, index: usize, name: &str) -> Result<String, String> {
    optional_text_column(row, index, name)?.ok_or_else(|| format!("{name} is NULL"))
}

fn optional_text_column(
    row: &rusqlite::Row<'_>,
    index: usize,
    name: &str,
) -> Result<Option<String>, String> {
    match row.get_ref(index).map_err(|e| format!("{name}: {e}"))? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| format!("{name} is not valid UTF-8 text")),
        ValueRef::Integer(v) => Ok(Some(v.to_string())),
        ValueRef::Real(v) => Ok(Some(v.to_string())),
        ValueRef::Blob(bytes) => Err(format!(
            "{name} is a BLOB of {} bytes, not text",
            bytes.len()
        )),
    }
}

fn optional_integer_column(
    row: &rusqlite::Row<'_>,
    index: usize,
    name: &str,
) -> Result<Option<i64>, String> {
    match row.get_ref(index).map_err(|e| format!("{name}: {e}"))? {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(v) => Ok(Some(v)),
        ValueRef::Text(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{name} is text that is not an integer")),
        ValueRef::Real(_) => Err(format!("{name} is a real number, not an integer")),
        ValueRef::Blob(_) => Err(format!("{name} is a BLOB, not an integer")),
    }
}
