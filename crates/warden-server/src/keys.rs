//! API keys: `wdn_<id>_<secret>`. The id is public and finds the record; the secret is 256
//! random bits, stored only as its SHA-256 and compared in constant time.

use crate::ids;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;
use warden_store::{Append, KeyRecord, NewEvent, NewKey, Store, StoreError, kind};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Asks for decisions and records outcomes.
    Controller,
    /// An agent: reads its denials and digest, proposes changes, waits on approvals.
    Agent,
    /// Decides approvals and proposals.
    Approver,
    /// Runs allowed actions: may only verify permits (`POST /v1/permits/verify`).
    Executor,
    /// Manages its tenant's policy and reads its tenant's audit log.
    Admin,
    /// Runs the installation: what spans tenants (reloading every policy, verifying the
    /// whole chain, metrics, purging).
    Operator,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::Controller,
        Role::Agent,
        Role::Approver,
        Role::Executor,
        Role::Admin,
        Role::Operator,
    ];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Agent => "agent",
            Role::Approver => "approver",
            Role::Executor => "executor",
            Role::Admin => "admin",
            Role::Operator => "operator",
        }
    }

    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new key: the token to hand over once, and the record to store.
#[derive(Debug)]
pub struct IssuedKey {
    /// `wdn_<id>_<secret>`: shown once, never stored.
    pub token: String,
    /// What the store keeps.
    pub record: NewKey,
}

/// What a key is for.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    /// The tenant the key acts for.
    pub tenant: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// For agent keys, the agent id; for controller keys, a glob of agents it may name.
    pub agent: Option<String>,
    /// Approver groups.
    pub groups: Vec<String>,
    /// The person an approver key belongs to.
    pub user: Option<String>,
    /// A human label.
    pub label: Option<String>,
}

/// Makes a new key.
pub fn issue(spec: KeySpec, now_ms: i64) -> IssuedKey {
    let id = ids::random_base32(12).to_ascii_lowercase();
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    IssuedKey {
        token: format!("wdn_{id}_{secret}"),
        record: NewKey {
            id,
            secret_hash: hash_secret(&secret),
            tenant: spec.tenant,
            roles: spec.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            agent: spec.agent,
            groups: spec.groups,
            user: spec.user,
            label: spec.label,
            created_at_ms: now_ms,
        },
    }
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    /// The key's spec is not one Warden accepts; nothing was stored.
    #[error("{0}")]
    Invalid(String),
    /// The store refused the key.
    #[error("cannot store the key: {0}")]
    Store(#[source] StoreError),
    /// The key was stored but its creation could not be audited, so it was revoked again
    /// (or, if `revoked` is false, could not be).
    #[error("cannot record the new key in the audit log ({source}); {}", if *revoked { "the key was revoked".to_owned() } else { format!("revoke it with `warden keys revoke {key_id}`") })]
    Audit {
        /// The key's id.
        key_id: String,
        /// Whether it was revoked again.
        revoked: bool,
        /// The audit failure.
        #[source]
        source: StoreError,
    },
}

/// Issues a key, stores it and audits its creation (`key_created`, never the secret or its
/// hash). A key the audit log does not know of must not work, so if the event cannot be
/// written the key is revoked at once.
pub async fn create(
    store: &dyn Store,
    spec: KeySpec,
    by: &str,
    now_ms: i64,
) -> Result<(IssuedKey, KeyRecord), CreateKeyError> {
    validate(&spec).map_err(CreateKeyError::Invalid)?;
    let issued = issue(spec, now_ms);
    let record = store
        .create_key(issued.record.clone())
        .await
        .map_err(CreateKeyError::Store)?;
    let event = NewEvent {
        id: ids::ulid(now_ms),
        time_ms: now_ms,
        tenant: record.tenant.clone(),
        kind: kind::KEY_CREATED.to_owned(),
        detail: json!({
            "key_id": record.id,
            "roles": record.roles,
            "agent": record.agent,
            "groups": record.groups,
            "user": record.user,
            "label": record.label,
            "by": by,
        }),
        ..NewEvent::default()
    };
    let appended = store
        .append(vec![Append {
            event,
            decision: None,
            ..Append::default()
        }])
        .await;
    if let Err(source) = appended {
        let revoked = store.revoke_key(&record.id, now_ms).await.unwrap_or(false);
        return Err(CreateKeyError::Audit {
            key_id: record.id,
            revoked,
            source,
        });
    }
    Ok((issued, record))
}

/// Refuses a key that would not mean one thing: an agent key names exactly one agent (no
/// glob), a controller's agent pattern is printable, and roles are not empty.
pub fn validate(spec: &KeySpec) -> Result<(), String> {
    if spec.roles.is_empty() {
        return Err("a key needs at least one role".into());
    }
    if spec.tenant.is_empty() || !spec.tenant.chars().all(warden_policy::action::printable) {
        return Err("a key needs a tenant of printable characters".into());
    }
    let agent = spec.agent.as_deref();
    if spec.roles.contains(&Role::Agent) && !agent.is_some_and(is_agent_id) {
        return Err(
            "an agent key names exactly one agent: `--agent ID`, without `*`, `?` or `[`".into(),
        );
    }
    if spec.roles.contains(&Role::Approver) {
        let user = spec.user.as_deref().unwrap_or("");
        if !is_name(user) {
            return Err(format!(
                "an approver key names its user: `--user NAME`, 1 to {} printable characters",
                warden_policy::action::MAX_IDENTIFIER
            ));
        }
        if spec.groups.is_empty() {
            return Err("an approver key needs at least one group: `--group NAME`".into());
        }
    }
    if let Some(user) = spec.user.as_deref()
        && !is_name(user)
    {
        return Err(format!(
            "invalid user `{user}`: use 1 to {} printable characters",
            warden_policy::action::MAX_IDENTIFIER
        ));
    }
    if let Some(group) = spec.groups.iter().find(|g| !is_name(g)) {
        return Err(format!(
            "invalid group `{group}`: use 1 to {} printable characters",
            warden_policy::action::MAX_IDENTIFIER
        ));
    }
    if let Some(agent) = agent
        && (agent.is_empty()
            || agent.len() > warden_policy::action::MAX_IDENTIFIER
            || !agent.chars().all(warden_policy::action::printable))
    {
        return Err(format!(
            "the agent pattern must be 1 to {} printable characters",
            warden_policy::action::MAX_IDENTIFIER
        ));
    }
    Ok(())
}

/// Whether `name` is a usable user or group name: printable, 1 to the identifier limit.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= warden_policy::action::MAX_IDENTIFIER
        && name.chars().all(warden_policy::action::printable)
}

/// Whether `id` names one agent: printable, within the identifier limit, and no glob.
pub fn is_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= warden_policy::action::MAX_IDENTIFIER
        && id
            .chars()
            .all(|c| warden_policy::action::printable(c) && !matches!(c, '*' | '?' | '[' | ']'))
}

/// Splits a token into its id and secret; `None` if it is not shaped like a Warden key.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("wdn_")?;
    let (id, secret) = rest.split_once('_')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (ok(id, 12) && ok(secret, 64)).then_some((id, secret))
}

/// Whether `secret` is the secret of `record`, compared in constant time.
pub fn secret_matches(secret: &str, record: &KeyRecord) -> bool {
    let presented = hash_secret(secret);
    presented
        .as_bytes()
        .ct_eq(record.secret_hash.as_bytes())
        .into()
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_verifies_and_a_changed_one_does_not() {
        let issued = issue(
            KeySpec {
                tenant: "acme".into(),
                roles: vec![Role::Admin],
                ..KeySpec::default()
            },
            1,
        );
        let (id, secret) = parse_token(&issued.token).unwrap();
        assert_eq!(id, issued.record.id);
        let record = KeyRecord {
            id: issued.record.id.clone(),
            secret_hash: issued.record.secret_hash.clone(),
            tenant: "acme".into(),
            roles: vec!["admin".into()],
            agent: None,
            groups: vec![],
            user: None,
            label: None,
            created_at_ms: 1,
            revoked_at_ms: None,
        };
        assert!(secret_matches(secret, &record));
        let mut wrong = secret.to_owned();
        wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
        assert!(!secret_matches(&wrong, &record));
        assert!(
            !issued.token.contains(&record.secret_hash),
            "the stored hash is not the secret"
        );
    }

    #[test]
    fn only_well_formed_tokens_parse() {
        let secret = "a".repeat(64);
        assert!(parse_token(&format!("wdn_abcdefghijkl_{secret}")).is_some());
        for bad in [
            "",
            "wdn_",
            "Bearer x",
            &format!("wdn_short_{secret}"),
            "wdn_abcdefghijkl_short",
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }
}
