//! Physical names: where the tables of a target live, for every role, on each backend. One
//! place decides it; the guard, the DDL loop, the promote's moves and the messages all ask
//! here.
//!
//! - SQLite ([`Layout::Prefixed`]): one namespace. Live tables keep their logical names; a
//!   replay's clone is `zdr_r_<key>__<table>`, the former live tables after a promote
//!   `zdr_p_<key>__<table>`, a projector being built `zdr_b<target>__<table>`.
//! - PostgreSQL ([`Layout::Schemas`]): a schema per role. Live tables are in the live schema
//!   (`public`, or `?schema=` on the URL); a clone is `zdr_r_<key>.<table>`, retired tables
//!   `zdr_p_<key>.<table>`, a build `zdr_b<target>.<table>`. A promote moves tables between
//!   schemas, and indexes, constraints and sequences move with them.
//!
//! - MySQL and MariaDB ([`Layout::Databases`]): a database per role, as PostgreSQL's schemas.
//!   Live tables are in the URL's database; databases are global to the server, so the others
//!   carry a short hash of the live database's name: a clone is `zdr_r_<key>_<hash>.<table>`,
//!   retired tables `zdr_p_<key>_<hash>.<table>`, a build `zdr_b<target>_<hash>.<table>`. Two
//!   applications (or two test databases) on one server never share a clone. A promote is one
//!   `RENAME TABLE` of every table between databases.
//!
//! Index names are global on SQLite and do not follow a renamed table, so every index a
//! target's DDL creates is named `zdr_i<target>_<index>` ([`index_prefix`]): target ids are
//! never reused, so names never collide across promotes.

use crate::model::Role;
use crate::sandbox::PhysicalName;

/// How a backend lays out the tables of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One namespace; a target's tables are told apart by a prefix.
    Prefixed,
    /// A schema per target role; live tables are in the named schema.
    Schemas {
        /// The schema of the live tables.
        live: String,
    },
    /// A database per target role on a server shared with other databases; live tables are
    /// in the named database.
    Databases {
        /// The database of the live tables.
        live: String,
    },
}

impl Layout {
    /// The physical name of logical table `logical` of target `target_id` in `role` (owned
    /// by replay `key`, for clones and retired tables).
    pub fn physical(
        &self,
        target_id: i64,
        role: Role,
        key: Option<&str>,
        logical: &str,
    ) -> PhysicalName {
        let key = key.unwrap_or("");
        match self {
            Layout::Prefixed => PhysicalName::unqualified(match role {
                Role::Live => logical.to_string(),
                Role::Clone => format!("zdr_r_{key}__{logical}"),
                Role::Retired => format!("zdr_p_{key}__{logical}"),
                Role::Building => format!("zdr_b{target_id}__{logical}"),
            }),
            Layout::Schemas { .. } | Layout::Databases { .. } => PhysicalName::qualified(
                self.namespace(target_id, role, Some(key))
                    .unwrap_or_default(),
                logical,
            ),
        }
    }

    /// The namespace the tables of a target in `role` live in, where the backend has them.
    pub fn namespace(&self, target_id: i64, role: Role, key: Option<&str>) -> Option<String> {
        let key = key.unwrap_or("");
        match self {
            Layout::Prefixed => None,
            Layout::Schemas { live } => Some(match role {
                Role::Live => live.clone(),
                Role::Clone => format!("zdr_r_{key}"),
                Role::Retired => format!("zdr_p_{key}"),
                Role::Building => format!("zdr_b{target_id}"),
            }),
            Layout::Databases { live } => {
                let owner = short_hash(live);
                Some(match role {
                    Role::Live => live.clone(),
                    Role::Clone => format!("zdr_r_{key}_{owner}"),
                    Role::Retired => format!("zdr_p_{key}_{owner}"),
                    Role::Building => format!("zdr_b{target_id}_{owner}"),
                })
            }
        }
    }
}

/// Eight hex digits naming a live database, to keep the databases of its targets apart from
/// those of other live databases on the same server.
fn short_hash(name: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(name.as_bytes())[..4])
}

/// The prefix of every index a target's DDL creates.
pub fn index_prefix(target_id: i64) -> String {
    format!("zdr_i{target_id}_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_its_own_names_on_both_layouts() {
        let prefixed = Layout::Prefixed;
        let schemas = Layout::Schemas { live: "app".into() };
        let name =
            |layout: &Layout, role, key| layout.physical(7, role, key, "balances").to_string();
        assert_eq!(name(&prefixed, Role::Live, None), "balances");
        assert_eq!(
            name(&prefixed, Role::Clone, Some("v2")),
            "zdr_r_v2__balances"
        );
        assert_eq!(
            name(&prefixed, Role::Retired, Some("v2")),
            "zdr_p_v2__balances"
        );
        assert_eq!(name(&prefixed, Role::Building, None), "zdr_b7__balances");
        assert_eq!(name(&schemas, Role::Live, None), "app.balances");
        assert_eq!(name(&schemas, Role::Clone, Some("v2")), "zdr_r_v2.balances");
        assert_eq!(
            name(&schemas, Role::Retired, Some("v2")),
            "zdr_p_v2.balances"
        );
        assert_eq!(name(&schemas, Role::Building, None), "zdr_b7.balances");
        assert_eq!(prefixed.namespace(7, Role::Clone, Some("v2")), None);
        assert_eq!(
            schemas.namespace(7, Role::Clone, Some("v2")).as_deref(),
            Some("zdr_r_v2")
        );
        let databases = Layout::Databases { live: "app".into() };
        let hash = short_hash("app");
        assert_eq!(name(&databases, Role::Live, None), "app.balances");
        assert_eq!(
            name(&databases, Role::Clone, Some("v2")),
            format!("zdr_r_v2_{hash}.balances")
        );
        assert_ne!(
            Layout::Databases {
                live: "other".into()
            }
            .namespace(7, Role::Clone, Some("v2")),
            databases.namespace(7, Role::Clone, Some("v2")),
            "two live databases on one server never share a clone"
        );
        assert_eq!(
            schemas.physical(7, Role::Clone, Some("v2"), "t").quoted(),
            "\"zdr_r_v2\".\"t\""
        );
    }
}
