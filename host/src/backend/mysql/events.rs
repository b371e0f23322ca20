//! Reading and appending events on MySQL and MariaDB: the gap-safe head (the queries behind
//! [`super::super::highwater`]), events written late, the event read and the append, and the
//! writers the gap-safe read cannot cover.
//!
//! Who can still fill a gap? A writer that inserted an id and has not committed holds that
//! row's record lock until its transaction ends. So when a scan finds a gap, the store lists
//! the missing ids below the largest id seen with it, and the gap is final only once none of
//! them is locked (a locking read with `NOWAIT` finds each either free or held) and
//! [`GAP_GRACE`] has passed since the gap was seen: that grace covers a writer between
//! drawing its id and inserting its row (InnoDB reserves the ids of a multi-row `INSERT`
//! when the statement starts). `information_schema.innodb_trx` is no help here: the server
//! refreshes it only when nobody read it for 100 ms, so a reader polling it sees a finished
//! transaction for ever.

use futures_util::TryStreamExt;

use super::*;
use crate::backend::highwater::{Observed, Scan};
use crate::backend::server::event_of_row;

/// How long a gap stays open after it was seen, even when no writer holds one of its ids:
/// the longest a writer may take between drawing an id and inserting its row.
const GAP_GRACE: Duration = Duration::from_secs(2);

/// The most missing ids of one gap the store watches.
const MAX_WATCHED: usize = 1000;

impl MyStore {
    /// The ids missing in `(from, to]`, at most [`MAX_WATCHED`].
    fn missing_ids(
        &self,
        conn: &mut MySqlConnection,
        from: i64,
        to: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let holes: Vec<(i64, i64)> = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT g.id, g.next FROM (SELECT id, LEAD(id) OVER (ORDER BY id) AS next \
                     FROM (SELECT CAST(? AS SIGNED) AS id UNION ALL \
                           SELECT CAST(id AS SIGNED) FROM stored_events WHERE id > ? AND id <= ?) s) g \
                     WHERE g.next IS NOT NULL AND g.next > g.id + 1 ORDER BY g.id LIMIT 1000",
                )
                .bind(from)
                .bind(from)
                .bind(to)
                .fetch_all(conn),
            )
            .context("listing missing event ids")?;
        Ok(holes
            .into_iter()
            .flat_map(|(below, above)| below + 1..above)
            .take(MAX_WATCHED)
            .collect())
    }

    /// Whether a writer holds one of `ids` (inserted, not yet committed or rolled back).
    fn any_held(&self, conn: &mut MySqlConnection, ids: &[String]) -> Result<bool, StoreError> {
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let mut query = sqlx::query(sql(format!(
                "SELECT id FROM stored_events WHERE id IN ({marks}) LOCK IN SHARE MODE NOWAIT"
            )));
            for id in chunk {
                query = query.bind(id.parse::<i64>().unwrap_or(0));
            }
            match self.rt.block_on(query.fetch_all(&mut *conn)) {
                Ok(_) => {}
                // NOWAIT found a lock (MariaDB answers with a lock wait timeout, MySQL with
                // its own error).
                Err(err) if matches!(error_number(&err), Some(1205 | 3572)) => return Ok(true),
                Err(err) => {
                    return Err(store_error(
                        &err,
                        "looking for writers of missing event ids".into(),
                    ));
                }
            }
        }
        Ok(false)
    }

    /// The smallest id in `(settled, max_id]` that is not visible, if any.
    fn first_gap(
        &self,
        conn: &mut MySqlConnection,
        settled: i64,
        max_id: i64,
    ) -> Result<Option<i64>, StoreError> {
        let gap: Option<i64> = self
            .rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT CAST(MIN(g.id) + 1 AS SIGNED) FROM (SELECT id, LEAD(id) OVER (ORDER BY id) AS next \
                     FROM (SELECT CAST(? AS SIGNED) AS id UNION ALL \
                           SELECT CAST(id AS SIGNED) FROM stored_events WHERE id > ? AND id <= ?) s) g \
                     WHERE g.next IS NOT NULL AND g.next > g.id + 1",
                )
                .bind(settled)
                .bind(settled)
                .bind(max_id)
                .fetch_one(conn),
            )
            .context("looking for uncommitted event ids")?;
        Ok(gap.filter(|g| *g <= max_id))
    }

    /// The highest checkpoint of any target (0 before `zdr init`).
    fn checkpoint_floor(&self, conn: &mut MySqlConnection) -> i64 {
        self.rt
            .block_on(
                sqlx::query_scalar::<_, i64>(
                    "SELECT CAST(COALESCE(MAX(checkpoint), 0) AS SIGNED) FROM zdr_targets",
                )
                .fetch_one(conn),
            )
            .unwrap_or(0)
    }

    /// Remembers the ids in `(from, to]` that are missing now that they are final (at most a
    /// thousand), to notice one written after all.
    fn remember_given_up(
        &self,
        conn: &mut MySqlConnection,
        high_water: &mut HighWater,
        (from, to): (i64, i64),
    ) -> Result<(), StoreError> {
        let missing = self.missing_ids(conn, from, to)?;
        high_water.remember_final_gaps(&missing, Instant::now());
        Ok(())
    }

    pub(super) fn writer_warnings(&self) -> Result<Vec<String>, StoreError> {
        let extra = {
            let mut conn = lock(&self.conn);
            self.rt
                .block_on(
                    sqlx::query_scalar::<_, String>(
                        "SELECT CAST(extra AS CHAR) FROM information_schema.columns \
                         WHERE table_schema = ? AND table_name = 'stored_events' AND column_name = 'id'",
                    )
                    .bind(&self.database)
                    .fetch_optional(&mut *conn),
                )
                .context("inspecting stored_events.id")?
        };
        Ok(match extra {
            Some(extra) if extra.to_ascii_lowercase().contains("auto_increment") => Vec::new(),
            _ => vec![
                "stored_events.id is not AUTO_INCREMENT: zdr cannot tell which writer still holds \
                 an id it has not written, so an event committed late may be passed over. Make the \
                 column AUTO_INCREMENT (see docs/architecture.md, \"Reading events\")"
                    .to_string(),
            ],
        })
    }

    pub(super) fn append(&self, events: &[NewEvent]) -> Result<Option<(i64, i64)>, StoreError> {
        let mut conn = lock(&self.conn);
        self.rt
            .block_on(async {
                let mut tx = conn.begin().await?;
                let mut range = None;
                for e in events {
                    let done = sqlx::query(
                        "INSERT INTO stored_events (aggregate_uuid, aggregate_version, event_version, \
                         event_class, event_properties, meta_data, created_at) \
                         VALUES (?, ?, ?, ?, ?, ?, COALESCE(?, UTC_TIMESTAMP()))",
                    )
                    .bind(&e.aggregate_uuid)
                    .bind(e.aggregate_version)
                    .bind(e.event_version)
                    .bind(&e.event_class)
                    .bind(&e.event_properties)
                    .bind(&e.meta_data)
                    .bind(&e.created_at)
                    .execute(&mut *tx)
                    .await?;
                    let id = i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX);
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
        // The ids the pending gap waits for are checked before the scan, so that the scan and
        // every read after it see whatever their writers committed.
        let seen_at = *self
            .gap_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(awaited) = high_water.awaited()
            && seen_at.is_some_and(|at| at.elapsed() >= GAP_GRACE)
            && !self.any_held(&mut conn, awaited)?
            && let Some(given_up) = high_water.writers_ended()
        {
            self.remember_given_up(&mut conn, &mut high_water, given_up)?;
        }
        let settled = high_water.settled();
        let (max_id, count): (i64, i64) = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT CAST(COALESCE(MAX(id), ?) AS SIGNED), CAST(COUNT(*) AS SIGNED) \
                     FROM stored_events WHERE id > ?",
                )
                .bind(settled)
                .bind(settled)
                .fetch_one(&mut *conn),
            )
            .context("reading the last event id")?;
        let mut first_gap = if count == max_id - settled {
            None
        } else {
            self.first_gap(&mut conn, settled, max_id)?
        };
        // Every id up to a committed checkpoint was final when that checkpoint was taken (it
        // came from a safe head): a gap below it needs no waiting, even by a fresh process.
        if let Some(gap) = first_gap {
            let floor = self.checkpoint_floor(&mut conn);
            if floor >= gap {
                high_water.raise_to(floor);
                first_gap = if floor >= max_id {
                    None
                } else {
                    self.first_gap(&mut conn, floor, max_id)?
                };
            }
        }
        match high_water.observe(Scan { max_id, first_gap }) {
            Observed::Head(head) => Ok(head),
            Observed::Gap { up_to, .. } => {
                // The missing ids stand for their writers: each is watched until free.
                let missing: Vec<String> = self
                    .missing_ids(&mut conn, high_water.settled(), up_to)?
                    .iter()
                    .map(i64::to_string)
                    .collect();
                *self
                    .gap_seen
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
                let (head, given_up) = high_water.wait_for(up_to, missing);
                if let Some(given_up) = given_up {
                    self.remember_given_up(&mut conn, &mut high_water, given_up)?;
                }
                Ok(head)
            }
        }
    }

    pub(super) fn late(&self) -> Result<Vec<i64>, StoreError> {
        crate::backend::highwater::check_late(&self.late_checked, &self.high_water, |candidates| {
            let mut late = Vec::new();
            let mut conn = lock(&self.conn);
            for chunk in candidates.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let mut query = sqlx::query_scalar::<_, i64>(sql(format!(
                    "SELECT CAST(id AS SIGNED) FROM stored_events WHERE id IN ({marks}) ORDER BY id"
                )));
                for id in chunk {
                    query = query.bind(*id);
                }
                late.extend(
                    self.rt
                        .block_on(query.fetch_all(&mut *conn))
                        .context("looking for events written late")?,
                );
            }
            Ok(late)
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
        // With classes, a handled name matches the whole class or its last `\`-separated
        // segment (`Description::handles`; CHAR(92) is `\`); rows whose class is NULL are
        // always read, so that an undecodable row still stops the projection.
        let filter = if classes.is_empty() {
            String::new()
        } else {
            // Compared as bytes: a Laravel table's collation ignores case.
            let one = "CAST(event_class AS BINARY) = CAST(? AS BINARY) OR \
                       CAST(RIGHT(event_class, CHAR_LENGTH(?) + 1) AS BINARY) = \
                       CAST(CONCAT(CHAR(92 USING utf8mb4), ?) AS BINARY)";
            format!(
                " AND (event_class IS NULL OR {})",
                vec![one; classes.len()].join(" OR ")
            )
        };
        // One part of history split by aggregate: CRC32 of the aggregate id, events without
        // one in part 0.
        let part = if partition.is_whole() {
            ""
        } else {
            " AND CASE WHEN aggregate_uuid IS NULL THEN 0 ELSE CRC32(aggregate_uuid) % ? END = ?"
        };
        let text = format!(
            "SELECT CAST(id AS SIGNED), CAST(aggregate_uuid AS CHAR), CAST(aggregate_version AS SIGNED), \
             CAST(COALESCE(event_version, 1) AS SIGNED), CAST(event_class AS CHAR), \
             CAST(COALESCE(event_properties, '{{}}') AS CHAR), CAST(COALESCE(meta_data, '{{}}') AS CHAR), \
             COALESCE(CAST(created_at AS CHAR), '') \
             FROM stored_events WHERE id > ? AND id <= ?{filter}{part} ORDER BY id LIMIT ?"
        );
        let mut query = sqlx::query(sql(text)).bind(after).bind(up_to);
        for class in classes {
            query = query.bind(class).bind(class).bind(class);
        }
        if !partition.is_whole() {
            query = query
                .bind(i64::from(partition.count))
                .bind(i64::from(partition.index));
        }
        let query = query.bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let mut conn = lock(&self.conn);
        let rows: Vec<MySqlRow> = self
            .rt
            .block_on(query.fetch(&mut *conn).try_collect())
            .context("reading events")?;
        rows.iter()
            .map(|row| event_of_row(row, describe).context("reading events"))
            .collect()
    }
}
