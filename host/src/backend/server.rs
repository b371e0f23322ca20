//! What the two server backends (PostgreSQL and MySQL/MariaDB, both through sqlx) share, written
//! once: a guest statement bounded by the guest's deadline, and an event read off a result row.
//! Each backend brings only what its server does differently: how a running statement is
//! stopped, the SQL of the read, and how the server's errors read.

use std::future::Future;
use std::time::Instant;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::value::DbError;
use crate::events::{Event, ReadEvent, Undecodable};

/// Runs `work` until `deadline`. Past it, runs `stop`, which interrupts the statement from a
/// connection of its own (`pg_cancel_backend`, `KILL QUERY`), waits for `work` to wind up
/// (the statement ends with the server's "interrupted" error, and the connection is then
/// ready for the rollback that follows), and answers `limit-exceeded`.
pub(super) async fn until_deadline<T>(
    work: impl Future<Output = Result<T, DbError>>,
    deadline: Instant,
    stop: impl Future<Output = Result<(), String>>,
) -> Result<T, DbError> {
    let mut work = std::pin::pin!(work);
    match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), &mut work).await {
        Ok(done) => done,
        Err(_) => {
            if let Err(reason) = stop.await {
                tracing::warn!("could not stop a guest statement past its deadline: {reason}");
            }
            let _ = work.await;
            Err(DbError::LimitExceeded(
                "the statement was stopped: it ran past the deadline of the guest's call".into(),
            ))
        }
    }
}

/// One event off a row of the event read, whose columns are, in order: id, aggregate id,
/// aggregate version, event version, class, properties, metadata and creation time. A row
/// whose values do not decode is [`ReadEvent::Undecodable`], with the driver's reason as
/// `describe` words it; only an unreadable id is an error.
///
/// # Errors
/// The driver's error when the row's id cannot be read.
pub(super) fn event_of_row<R>(
    row: &R,
    describe: impl Fn(&sqlx::Error) -> String,
) -> Result<ReadEvent, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: i64 = row.try_get(0)?;
    let decoded = (|| {
        Ok::<_, sqlx::Error>(Event {
            id,
            aggregate_uuid: row.try_get(1)?,
            aggregate_version: row.try_get(2)?,
            event_version: row.try_get(3)?,
            event_class: row.try_get(4)?,
            event_properties: row.try_get(5)?,
            meta_data: row.try_get(6)?,
            created_at: row.try_get(7)?,
        })
    })();
    Ok(match decoded {
        Ok(event) => ReadEvent::Event(event),
        Err(err) => ReadEvent::Undecodable(Undecodable {
            id,
            event_class: row.try_get(4).ok(),
            reason: describe(&err),
        }),
    })
}
