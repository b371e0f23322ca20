//! The final check: `sqlparser`'s own visitor re-reads a rewritten statement, independently of
//! the allow-list walk, before the statement is printed for the database.

use std::ops::ControlFlow;

use sqlparser::ast::{Ident, ObjectName, Query, Statement, Visit, Visitor};

use super::names::{self, quoted, single_ident, written};
use super::rewrite::check_ident;
use super::{Guard, GuardError};

/// Re-checks a rewritten statement with `sqlparser`'s own visitor, independently of the walk:
/// every relation must be the physical name of a declared table or the name of a CTE defined in
/// the statement, and every identifier must be printable.
///
/// # Errors
///
/// `Denied` when the check fails, which means the walk missed something.
pub(super) fn verify(guard: &Guard, statement: &Statement) -> Result<(), GuardError> {
    let mut ctes = CteNames(Vec::new());
    let _ = statement.visit(&mut ctes);
    let mut check = Relations {
        physical: guard
            .tables
            .values()
            .map(|declared| names::physical_object_name(&declared.physical))
            .collect(),
        ctes: ctes.0,
    };
    match statement.visit(&mut check) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(problem) => Err(GuardError::Denied(format!(
            "{problem} (the guard's final check refused the statement)"
        ))),
    }
}

/// Collects the names of every CTE a statement defines.
struct CteNames(Vec<String>);

impl Visitor for CteNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            self.0.extend(
                with.cte_tables
                    .iter()
                    .map(|cte| names::fold(&cte.alias.name)),
            );
        }
        ControlFlow::Continue(())
    }
}

/// Refuses relations that are neither physical names nor CTEs, and unprintable identifiers.
struct Relations {
    physical: Vec<ObjectName>,
    ctes: Vec<String>,
}

impl Visitor for Relations {
    type Break = String;

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<String> {
        let is_cte =
            single_ident(relation).is_some_and(|ident| self.ctes.contains(&names::fold(ident)));
        if is_cte || self.physical.contains(relation) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(format!(
                "relation {} is not a table of this target",
                quoted(&written(relation))
            ))
        }
    }

    fn pre_visit_ident(&mut self, ident: &Ident) -> ControlFlow<String> {
        match check_ident(ident) {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => ControlFlow::Break(error.message().to_owned()),
        }
    }
}
