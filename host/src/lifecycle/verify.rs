//! Checks before a promote (`zdr replay promote KEY --verify`): the clone must hold the same
//! rows as live on the tables and columns the operator names (`--expect-same`), and operator
//! queries must answer the same on both (`--check`, run through the same guard as a
//! projector's queries, so they reach nothing but the projector's tables), and a new version
//! that exports its own `check` (the `checked-projector` world) must find its clone sound.
//! Everything is read in one snapshot, so a daemon writing both copies meanwhile never makes
//! them differ.

use std::time::{Duration, Instant};

use super::{LifecycleError, Result, replay_row};
use crate::backend::{Call, Db, RowSet, Value};
use crate::diff::{self, TableFilter};
use crate::model::{Description, Target};
use crate::projection::Projection;
use crate::runtime::{GuestError, Runtime};
use crate::sandbox::Mode;

/// One check before a promote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The clone must hold the same rows as live on this table (and these columns).
    Same(TableFilter),
    /// This query must return the same rows on live and on the clone.
    Query(String),
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Same(filter) if filter.columns.is_empty() => {
                write!(f, "--expect-same {}", filter.table)
            }
            Check::Same(filter) => {
                write!(
                    f,
                    "--expect-same {}:{}",
                    filter.table,
                    filter.columns.join(",")
                )
            }
            Check::Query(sql) => write!(f, "--check {sql:?}"),
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckOutcome {
    /// The check, as the operator wrote it.
    pub check: String,
    /// Whether live and the clone agree.
    pub passed: bool,
    /// What was compared, and where they differ.
    pub detail: Vec<String>,
}

/// The outcome of every check of a promote.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Verification {
    /// One entry per check.
    pub checks: Vec<CheckOutcome>,
}

impl Verification {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for check in &self.checks {
            let verdict = if check.passed { "passed" } else { "FAILED" };
            writeln!(f, "{verdict}: {}", check.check)?;
            for line in &check.detail {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

/// How long an operator's check query may run.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `checks` against replay `key`'s clones and live, in one read snapshot. With no checks,
/// every table both versions of each projector have must hold the same rows on their common
/// columns. Then each new version that exports `check` checks its clone.
///
/// # Errors
/// An unknown key, a check that names nothing or that the guard refuses, a version that cannot
/// be loaded, or a database failure. A check that finds a difference is an outcome, not an
/// error.
pub fn verify(
    runtime: &Runtime,
    db: &Db,
    key: &str,
    checks: &[Check],
    sample: usize,
) -> Result<Verification> {
    replay_row(db, key)?;
    // The new versions are compiled before the snapshot is taken: a compile takes seconds.
    let mut projection = Projection::new(runtime, db, 1);
    projection.prepare(&db.replay_targets(key)?)?;
    db.read_snapshot(|db| {
        let mut sides = Vec::new();
        for clone in db.replay_targets(key)? {
            let live = db.live_target(&clone.projector)?.ok_or_else(|| {
                LifecycleError::NotFound(format!(
                    "projector {} has no live version to compare replay {key} with",
                    clone.projector
                ))
            })?;
            let live_description = db.description(live.version_id)?;
            let clone_description = db.description(clone.version_id)?;
            sides.push((live, live_description, clone, clone_description));
        }
        let mut verification = Verification::default();
        if checks.is_empty() {
            // Every table both versions have, on every common column.
            for side in &sides {
                for table in same_check(db, side, None, sample)? {
                    verification.checks.push(CheckOutcome {
                        check: format!("--expect-same {} ({})", table.table, side.2.projector),
                        passed: table.is_same(),
                        detail: table.lines("clone"),
                    });
                }
            }
        }
        // In the order the operator gave them, each check its own outcome.
        for check in checks {
            match check {
                Check::Same(filter) => {
                    let mut found = false;
                    for side in &sides {
                        for table in same_check(db, side, Some(filter), sample)? {
                            found = true;
                            verification.checks.push(CheckOutcome {
                                check: check.to_string(),
                                passed: table.is_same(),
                                detail: table.lines("clone"),
                            });
                        }
                    }
                    if !found {
                        return Err(LifecycleError::Invalid(format!(
                            "no projector of replay {key} has a table {:?} in both versions",
                            filter.table
                        )));
                    }
                }
                Check::Query(sql) => verification.checks.push(query_check(db, key, &sides, sql)?),
            }
        }
        // Last, since a query of the projector's that fails ends a PostgreSQL snapshot.
        for (_, _, clone, _) in &sides {
            if let Some(outcome) = projector_check(&mut projection, clone)? {
                verification.checks.push(outcome);
            }
        }
        Ok(verification)
    })
}

/// Runs the `check` export of `clone`'s version on the clone, when it has one.
fn projector_check(
    projection: &mut Projection<'_>,
    clone: &Target,
) -> Result<Option<CheckOutcome>> {
    let Some(outcome) = projection.instance(clone)?.check() else {
        return Ok(None);
    };
    let check = format!(
        "the check exported by {} version {}",
        clone.projector, clone.version
    );
    let (passed, detail) = match outcome {
        Ok(()) => (true, Vec::new()),
        Err(GuestError::Returned(found)) => (false, vec![found]),
        Err(other) => (false, vec![format!("the check could not run: {other}")]),
    };
    Ok(Some(CheckOutcome {
        check,
        passed,
        detail,
    }))
}

/// Live and a clone of one projector, with both versions' descriptions.
type Side = (Target, Description, Target, Description);

/// The diff of one side's tables: the one `filter` names, or every table both have.
fn same_check(
    db: &Db,
    (live, live_description, clone, clone_description): &Side,
    filter: Option<&TableFilter>,
    sample: usize,
) -> Result<Vec<diff::TableDiff>> {
    let filters: Vec<TableFilter> = filter.into_iter().cloned().collect();
    let diff = diff::diff_targets(
        db,
        live,
        live_description,
        clone,
        clone_description,
        &filters,
        sample,
    )?;
    Ok(diff.tables)
}

/// Runs `sql` on live and on the clone of the one projector whose guard accepts it, and
/// compares the answers as sets of rows.
fn query_check(db: &Db, key: &str, sides: &[Side], sql: &str) -> Result<CheckOutcome> {
    let mut refusals = Vec::new();
    for (live, live_description, clone, clone_description) in sides {
        let guard = db.guard_for(clone, clone_description);
        if let Err(err) = guard.check(sql, Mode::Data) {
            refusals.push(format!("{}: {err}", clone.projector));
            continue;
        }
        let run = |target: &Target, description: &Description| -> Result<RowSet> {
            let mut connection = db.guest_connection(target, description);
            let call = Call {
                deadline: Instant::now() + CHECK_TIMEOUT,
            };
            connection.query(sql, &[], call).map_err(|err| {
                LifecycleError::Invalid(format!(
                    "the check {sql:?} failed on {} of {}: {err}",
                    crate::projection::target_label(target),
                    target.projector
                ))
            })
        };
        let live_rows = run(live, live_description)?;
        let clone_rows = run(clone, clone_description)?;
        let shown = |rows: &RowSet| {
            let mut rows: Vec<String> = rows
                .rows
                .iter()
                .map(|row| {
                    row.iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .collect();
            rows.sort();
            rows
        };
        let (live_shown, clone_shown) = (shown(&live_rows), shown(&clone_rows));
        let passed = live_shown == clone_shown;
        let mut detail = Vec::new();
        if !passed {
            let first =
                |rows: &[String]| rows.iter().take(5).cloned().collect::<Vec<_>>().join(" | ");
            detail.push(format!(
                "live answered {} row(s): {}",
                live_shown.len(),
                first(&live_shown)
            ));
            detail.push(format!(
                "the clone answered {} row(s): {}",
                clone_shown.len(),
                first(&clone_shown)
            ));
        }
        return Ok(CheckOutcome {
            check: format!("--check {sql:?} ({})", clone.projector),
            passed,
            detail,
        });
    }
    Err(LifecycleError::Invalid(format!(
        "no projector of replay {key} can run the check {sql:?}: {}",
        refusals.join("; ")
    )))
}
