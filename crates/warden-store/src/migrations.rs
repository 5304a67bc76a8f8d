//! The SQL migrations built into the binary, one ordered list per backend.
//!
//! The files live in `migrations/sqlite` and `migrations/postgres` at the workspace root
//! and are embedded at compile time. They are additive only, and an applied migration is
//! never edited: the runner records each one's SHA-256 and refuses to go on if a recorded
//! one no longer matches this build.

use sha2::{Digest, Sha256};

use crate::Backend;

/// One schema migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The file name without extension, e.g. `0001_init`; also its key in `warden_migrations`.
    pub name: &'static str,
    /// The SQL, possibly several statements.
    pub sql: &'static str,
}

impl Migration {
    /// Lowercase hex SHA-256 of the SQL, recorded when applied.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

const SQLITE: &[Migration] = &[
    Migration {
        name: "0001_init",
        sql: include_str!("../../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        name: "0002_hardening",
        sql: include_str!("../../../migrations/sqlite/0002_hardening.sql"),
    },
    Migration {
        name: "0003_permits",
        sql: include_str!("../../../migrations/sqlite/0003_permits.sql"),
    },
    Migration {
        name: "0004_budgets",
        sql: include_str!("../../../migrations/sqlite/0004_budgets.sql"),
    },
    Migration {
        name: "0005_approvals",
        sql: include_str!("../../../migrations/sqlite/0005_approvals.sql"),
    },
    Migration {
        name: "0006_approval_grants",
        sql: include_str!("../../../migrations/sqlite/0006_approval_grants.sql"),
    },
    Migration {
        name: "0007_policy_versions",
        sql: include_str!("../../../migrations/sqlite/0007_policy_versions.sql"),
    },
    Migration {
        name: "0008_decision_snapshots",
        sql: include_str!("../../../migrations/sqlite/0008_decision_snapshots.sql"),
    },
    Migration {
        name: "0009_proposals",
        sql: include_str!("../../../migrations/sqlite/0009_proposals.sql"),
    },
    Migration {
        name: "0010_inbox_sessions",
        sql: include_str!("../../../migrations/sqlite/0010_inbox_sessions.sql"),
    },
    Migration {
        name: "0011_observed_proposals",
        sql: include_str!("../../../migrations/sqlite/0011_observed_proposals.sql"),
    },
    Migration {
        name: "0012_policy_sources",
        sql: include_str!("../../../migrations/sqlite/0012_policy_sources.sql"),
    },
    Migration {
        name: "0013_deflated_policy_sources",
        sql: include_str!("../../../migrations/sqlite/0013_deflated_policy_sources.sql"),
    },
];

const POSTGRES: &[Migration] = &[
    Migration {
        name: "0001_init",
        sql: include_str!("../../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        name: "0002_hardening",
        sql: include_str!("../../../migrations/postgres/0002_hardening.sql"),
    },
    Migration {
        name: "0003_permits",
        sql: include_str!("../../../migrations/postgres/0003_permits.sql"),
    },
    Migration {
        name: "0004_budgets",
        sql: include_str!("../../../migrations/postgres/0004_budgets.sql"),
    },
    Migration {
        name: "0005_approvals",
        sql: include_str!("../../../migrations/postgres/0005_approvals.sql"),
    },
    Migration {
        name: "0006_approval_grants",
        sql: include_str!("../../../migrations/postgres/0006_approval_grants.sql"),
    },
    Migration {
        name: "0007_policy_versions",
        sql: include_str!("../../../migrations/postgres/0007_policy_versions.sql"),
    },
    Migration {
        name: "0008_decision_snapshots",
        sql: include_str!("../../../migrations/postgres/0008_decision_snapshots.sql"),
    },
    Migration {
        name: "0009_proposals",
        sql: include_str!("../../../migrations/postgres/0009_proposals.sql"),
    },
    Migration {
        name: "0010_inbox_sessions",
        sql: include_str!("../../../migrations/postgres/0010_inbox_sessions.sql"),
    },
    Migration {
        name: "0011_observed_proposals",
        sql: include_str!("../../../migrations/postgres/0011_observed_proposals.sql"),
    },
    Migration {
        name: "0012_policy_sources",
        sql: include_str!("../../../migrations/postgres/0012_policy_sources.sql"),
    },
    Migration {
        name: "0013_deflated_policy_sources",
        sql: include_str!("../../../migrations/postgres/0013_deflated_policy_sources.sql"),
    },
];

/// The migrations of `backend`, in the order they are applied.
pub fn migrations(backend: Backend) -> &'static [Migration] {
    match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_migration_names_in_order() {
        let names = |b| migrations(b).iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(Backend::Sqlite), names(Backend::Postgres));
        let mut sorted = names(Backend::Sqlite);
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, names(Backend::Sqlite));
    }

    #[test]
    fn migrations_are_additive() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            for migration in migrations(backend) {
                let upper = migration.sql.to_uppercase();
                assert!(
                    !upper.contains("DROP "),
                    "{} drops something",
                    migration.name
                );
            }
        }
    }
}
