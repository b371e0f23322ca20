//! The dead-letter table of live projectors whose policy is `park` (`on_failure = "park"` in
//! `zdr.toml`): `zdr projector parked NAME` lists what a projector set aside, `zdr projector
//! retry NAME` applies it once the cause is fixed, and `zdr projector skip` lets an event go
//! for good (see [`super::skip_event`]).
//!
//! A parked event is passed over by live from the moment it is parked; a retry applies it out
//! of order, in a write transaction of its own, to the version that is live then. A replay
//! never parks: a clone must be exact, so it fails at such an event as it always did.

use super::{LifecycleError, Result};
use crate::backend::{Db, ParkedEvent, StoreError};
use crate::model::Target;
use crate::projection::Projection;
use crate::runtime::Runtime;

/// The live target of projector `name`.
fn live_of(db: &Db, name: &str) -> Result<Target> {
    db.live_target(name)?.ok_or_else(|| {
        LifecycleError::NotFound(format!(
            "no live projector named {name:?}; see `zdr projector list`"
        ))
    })
}

/// The events live projector `name` parked, in id order.
///
/// # Errors
/// No such projector, or a database failure.
pub fn parked(db: &Db, name: &str) -> Result<Vec<ParkedEvent>> {
    let live = live_of(db, name)?;
    Ok(db.parked(live.id)?)
}

/// What a retry of parked events did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Retried {
    /// The events applied (and taken off the dead-letter table).
    pub applied: Vec<i64>,
    /// The events that failed again, with the new error; they stay parked.
    pub failed: Vec<(i64, String)>,
}

/// Applies the events live projector `name` parked (only `event` when given) to its live
/// tables, each in a write transaction of its own: one that succeeds leaves the dead-letter
/// table, one that fails again stays there with its new error and one more attempt counted.
///
/// # Errors
/// No such projector, nothing parked (or not `event`), a version that cannot be loaded, or
/// a database failure. An event that fails again is an outcome, not an error.
pub fn retry_parked(runtime: &Runtime, db: &Db, name: &str, event: Option<i64>) -> Result<Retried> {
    let live = live_of(db, name)?;
    let mut parked: Vec<i64> = db.parked(live.id)?.iter().map(|p| p.event_id).collect();
    if let Some(wanted) = event {
        if !parked.contains(&wanted) {
            return Err(LifecycleError::NotFound(format!(
                "event {wanted} is not parked on projector {name}; see `zdr projector parked {name}`"
            )));
        }
        parked = vec![wanted];
    }
    if parked.is_empty() {
        return Err(LifecycleError::NotFound(format!(
            "projector {name} has no parked events"
        )));
    }
    let mut projection = Projection::new(runtime, db, 1);
    // Compiled before any write transaction, never inside one.
    projection.prepare(std::slice::from_ref(&live))?;
    let mut retried = Retried::default();
    for event_id in parked {
        let attempt = db.write(|db| {
            let now = db.target(live.id)?.filter(|t| t.role == live.role);
            let Some(now) = now else {
                return Err(LifecycleError::WrongState(format!(
                    "version {} of {name} is no longer live (promoted or rolled back meanwhile); \
                     its parked events went with it",
                    live.version
                )));
            };
            let events = db.read_events(event_id - 1, event_id, 1)?;
            if events.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "parked event {event_id} is no longer in the event store"
                ))
                .into());
            }
            // Applied as if it came next, and not passed over as parked.
            let at = Target {
                checkpoint: event_id - 1,
                skip_event_id: None,
                ..now
            };
            projection.apply(&at, &events, None)?;
            db.unpark(live.id, event_id)?;
            Ok(())
        });
        match attempt {
            Ok(()) => {
                tracing::info!(projector = name, event_id, "parked event applied");
                retried.applied.push(event_id);
            }
            Err(LifecycleError::Projection(err)) if err.failed_event().is_some() => {
                let message = err
                    .failed_event()
                    .map_or_else(|| err.to_string(), |(_, message)| message);
                db.write(|db| db.park_event(&live, event_id, &message))?;
                retried.failed.push((event_id, message));
            }
            Err(other) => return Err(other),
        }
    }
    Ok(retried)
}
