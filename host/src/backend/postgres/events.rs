//! Reading and appending events on PostgreSQL: the gap-safe head (the queries behind
//! [`super::super::highwater`]), events written late, the event read and the append, and the
//! writers the gap-safe read cannot cover.

use super::*;
use crate::backend::server::event_of_row;

impl PgStore {
    /// The statement that appends one event, with each text value cast to the type its
    /// column has: zdr's own table uses `text` and `jsonb`, a Laravel one `uuid`, `json` or
    /// `timestamp(0)`, and a parameter sent as text converts to any of them.
    fn event_insert(&self) -> Result<String, StoreError> {
        let mut conn = lock(&self.conn);
        let types: Vec<(String, String)> = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = to_regclass('stored_events') AND attnum > 0 AND NOT attisdropped",
                )
                .fetch_all(&mut *conn),
            )
            .context("inspecting stored_events")?;
        let type_of = |column: &str| {
            types
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(column))
                .map(|(_, ty)| ty.clone())
                .ok_or_else(|| StoreError::EventTable(column.to_string()))
        };
        Ok(format!(
            "INSERT INTO stored_events (aggregate_uuid, aggregate_version, event_version, event_class, \
             event_properties, meta_data, created_at) \
             VALUES ($1::text::{}, $2, $3, $4, $5::text::{}, $6::text::{}, \
             COALESCE($7::text::{created}, localtimestamp::{created})) RETURNING id",
            type_of("aggregate_uuid")?,
            type_of("event_properties")?,
            type_of("meta_data")?,
            created = type_of("created_at")?,
        ))
    }

    /// The relations whose writers a gap waits for: `stored_events` and the sequence its ids
    /// come from (looked up once).
    fn event_relations(&self, conn: &mut PgConnection) -> Result<Vec<i64>, StoreError> {
        let mut known = self
            .event_relations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(relations) = &*known {
            return Ok(relations.clone());
        }
        let (table, sequence): (Option<i64>, Option<i64>) = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT to_regclass('stored_events')::oid::bigint, \
                     to_regclass(pg_get_serial_sequence('stored_events', 'id'))::oid::bigint",
                )
                .fetch_one(conn),
            )
            .context("looking up stored_events and its id sequence")?;
        let relations: Vec<i64> = table.into_iter().chain(sequence).collect();
        *known = Some(relations.clone());
        Ok(relations)
    }

    /// The virtual transaction ids of the sessions (but this one) that hold a write lock on
    /// the event table or its sequence now: every writer that may hold an id it has not
    /// written yet.
    fn event_writers(&self, conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
        let relations = self.event_relations(conn)?;
        self.rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT DISTINCT virtualtransaction FROM pg_locks WHERE locktype = 'relation' \
                     AND relation::bigint = ANY($1) AND mode <> 'AccessShareLock' \
                     AND pid IS DISTINCT FROM pg_backend_pid()",
                )
                .bind(relations)
                .fetch_all(conn),
            )
            .context("looking for writers of stored_events")
    }

    /// Whether any of `writers` still holds a write lock on the event table or its sequence.
    fn any_still_writing(
        &self,
        conn: &mut PgConnection,
        writers: &[String],
    ) -> Result<bool, StoreError> {
        let relations = self.event_relations(conn)?;
        self.rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'relation' \
                     AND relation::bigint = ANY($1) AND mode <> 'AccessShareLock' \
                     AND virtualtransaction = ANY($2))",
                )
                .bind(relations)
                .bind(writers)
                .fetch_one(conn),
            )
            .context("looking for writers of stored_events")
    }

    /// Remembers the ids in `(from, to]` that are missing now that they are final (at most a
    /// thousand), to notice one written after all.
    fn remember_given_up(
        &self,
        conn: &mut PgConnection,
        high_water: &mut HighWater,
        (from, to): (i64, i64),
    ) -> Result<(), StoreError> {
        let missing: Vec<i64> = self
            .rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT g FROM generate_series($1 + 1, LEAST($2, $1 + 100000)) AS g \
                     WHERE NOT EXISTS (SELECT 1 FROM stored_events WHERE id = g) ORDER BY g LIMIT 1000",
                )
                .bind(from)
                .bind(to)
                .fetch_all(conn),
            )
            .context("listing event ids never written")?;
        high_water.remember_final_gaps(&missing, Instant::now());
        Ok(())
    }

    /// The smallest id in `(settled, max_id]` that is not visible, if any.
    fn first_gap(
        &self,
        conn: &mut PgConnection,
        settled: i64,
        max_id: i64,
    ) -> Result<Option<i64>, StoreError> {
        // A gap right above `settled` is `settled + 1` missing; otherwise the first visible
        // id whose successor is missing.
        let gap: Option<i64> = self
            .rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM stored_events WHERE id = $1 + 1) THEN $1 + 1 \
                     ELSE (SELECT g.id + 1 FROM (SELECT id, lead(id) OVER (ORDER BY id) AS next \
                           FROM stored_events WHERE id > $1 AND id <= $2) g \
                           WHERE g.next IS NOT NULL AND g.next > g.id + 1 ORDER BY g.id LIMIT 1) END",
                )
                .bind(settled)
                .bind(max_id)
                .fetch_one(conn),
            )
            .context("looking for uncommitted event ids")?;
        Ok(gap.filter(|g| *g <= max_id))
    }

    pub(super) fn writer_warnings(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = lock(&self.conn);
        let (sequence, cache): (Option<String>, Option<i64>) = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT pg_get_serial_sequence('stored_events', 'id'), \
                     (SELECT seqcache FROM pg_sequence \
                      WHERE seqrelid = to_regclass(pg_get_serial_sequence('stored_events', 'id')))",
                )
                .fetch_one(&mut *conn),
            )
            .context("inspecting the id sequence of stored_events")?;
        Ok(match (sequence, cache) {
            (None, _) => vec![
                "stored_events.id takes its values from no sequence (no serial or identity column): \
                 zdr cannot tell which writer still holds an id it has not written, so an event \
                 committed late may be passed over. Give the column a sequence default \
                 (see docs/architecture.md, \"Reading events\")"
                    .to_string(),
            ],
            (Some(sequence), Some(cache)) if cache > 1 => vec![format!(
                "sequence {sequence} caches {cache} ids per session, so ids are not drawn in \
                 order and an event committed late may be passed over; run \
                 `ALTER SEQUENCE {sequence} CACHE 1` (see docs/architecture.md, \"Reading events\")"
            )],
            _ => Vec::new(),
        })
    }

    pub(super) fn append(&self, events: &[NewEvent]) -> Result<Option<(i64, i64)>, StoreError> {
        let insert = self.event_insert()?;
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(async {
                let mut tx = conn.begin().await?;
                let mut range = None;
                for e in events {
                    let id: i64 = sqlx::query_scalar(sql(insert.as_str()))
                        .bind(&e.aggregate_uuid)
                        .bind(e.aggregate_version)
                        .bind(i16::try_from(e.event_version).unwrap_or(i16::MAX))
                        .bind(&e.event_class)
                        .bind(&e.event_properties)
                        .bind(&e.meta_data)
                        .bind(&e.created_at)
                        .fetch_one(&mut *tx)
                        .await?;
                    range = Some(range.map_or((id, id), |(first, _)| (first, id)));
                }
                tx.commit().await?;
                Ok(range)
            })
            .context("appending events")
    }

    pub(super) fn safe_head(&self) -> Result<i64, StoreError> {
        let mut high_water = self
            .high_water
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut conn = lock(&self.conn);
        // The writers the pending gap waits for are checked before the scan, so that the scan
        // and every read after it see whatever they committed.
        if let Some(writers) = high_water.awaited()
            && !self.any_still_writing(&mut conn, writers)?
            && let Some(given_up) = high_water.writers_ended()
        {
            self.remember_given_up(&mut conn, &mut high_water, given_up)?;
        }
        let settled = high_water.settled();
        let (max_id, count): (i64, i64) = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT COALESCE(MAX(id), $1), COUNT(*) FROM stored_events WHERE id > $1",
                )
                .bind(settled)
                .fetch_one(&mut *conn),
            )
            .context("reading the last event id")?;
        let first_gap = if count == max_id - settled {
            None
        } else {
            self.first_gap(&mut conn, settled, max_id)?
        };
        match high_water.observe(Scan { max_id, first_gap }) {
            Observed::Head(head) => Ok(head),
            Observed::Gap { up_to, .. } => {
                let writers = self.event_writers(&mut conn)?;
                let (head, given_up) = high_water.wait_for(up_to, writers);
                if let Some(given_up) = given_up {
                    self.remember_given_up(&mut conn, &mut high_water, given_up)?;
                }
                Ok(head)
            }
        }
    }

    pub(super) fn late(&self) -> Result<Vec<i64>, StoreError> {
        crate::backend::highwater::check_late(&self.late_checked, &self.high_water, |candidates| {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(
                    sqlx::query_scalar(
                        "SELECT id FROM stored_events WHERE id = ANY($1) ORDER BY id",
                    )
                    .bind(candidates)
                    .fetch_all(&mut *conn),
                )
                .context("looking for events written late")
        })
    }

    pub(super) fn read(
        &self,
        after: i64,
        up_to: i64,
        limit: usize,
        classes: &[String],
        partition: Partition,
    ) -> Result<Vec<ReadEvent>, StoreError> {
        // With no classes every event is read; otherwise a handled name matches the whole class
        // or its last `\`-separated segment (`Description::handles`; chr(92) is `\`).
        const READ: &str = "SELECT id, aggregate_uuid::text, aggregate_version::bigint, COALESCE(event_version, 1)::bigint, \
             event_class::text, COALESCE(event_properties::text, '{}'), COALESCE(meta_data::text, '{}'), \
             COALESCE(created_at::text, '') \
             FROM stored_events WHERE id > $1 AND id <= $2 \
             AND (cardinality($4::text[]) = 0 OR event_class IS NULL OR EXISTS \
             (SELECT 1 FROM unnest($4::text[]) AS handled(name) WHERE event_class::text = handled.name \
             OR right(event_class::text, length(handled.name) + 1) = chr(92) || handled.name)) \
             AND ($6 <= 1 OR CASE WHEN aggregate_uuid IS NULL THEN 0 \
             ELSE mod(hashtext(aggregate_uuid::text)::bigint + 2147483648, $6) END = $5) \
             ORDER BY id LIMIT $3";
        let mut conn = lock(&self.conn);
        let rows = self
            .rt
            .block_on(
                sqlx::query(READ)
                    .bind(after)
                    .bind(up_to)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .bind(classes)
                    .bind(i64::from(partition.index))
                    .bind(i64::from(partition.count))
                    .fetch_all(&mut *conn),
            )
            .context("reading events")?;
        rows.iter()
            .map(|row| event_of_row(row, describe).context("reading events"))
            .collect()
    }
}
