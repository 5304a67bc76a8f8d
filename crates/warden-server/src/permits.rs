//! Permits: the signed proof an executor checks before it runs an allowed action
//! (DESIGN §5, docs/PERMITS.md). A token binds the decision, tenant, action type, target,
//! agent and the SHA-256 of the payload's RFC 8785 form, with an expiry and a use limit.
//!
//! Key decision: a compact JWS (`header.claims.signature`, base64url, `alg: EdDSA`) signed
//! with Ed25519. Any executor can check it offline with the public keys from
//! `GET /v1/permits/keys` and a stock Ed25519 library (even a JWT library: `exp` and `iat`
//! are standard claims); only use counting needs the server. Signing keys live in a key
//! set, so a rotation adds a key and keeps the old one verifiable until its last permit
//! has expired.

use crate::jcs;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warden_policy::{Action, PermitSettings};

/// The environment variable that supplies the permit signing keys (replicas must share
/// them): a 64-hex-character Ed25519 seed, or the JSON of a key file.
pub const PERMIT_KEY_ENV: &str = "WARDEN_PERMIT_KEY";

/// The file in the data dir that holds the permit key set.
pub const PERMIT_KEY_FILE: &str = "warden-permit.key";

/// The longest token accepted; a real one is well under 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The `typ` of a permit's header.
pub const TOKEN_TYPE: &str = "warden-permit";

/// Why the permit keys could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PermitKeyError {
    /// The environment variable holds neither a seed nor a key set.
    #[error(
        "{PERMIT_KEY_ENV} must hold a 64-character hex Ed25519 seed or the JSON of a permit key file"
    )]
    BadEnv,
    /// The key file does not hold a key set.
    #[error("permit key file {path}: {detail}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The key file could not be read or written.
    #[error("permit key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One signing key as the key file stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    /// Derived from the public key (see [`kid_of`]); stored so the file is readable.
    kid: String,
    /// The Ed25519 seed, hex.
    seed: String,
    /// When the key was made, unix ms.
    created_ms: i64,
    /// Set on rotation: after this the key verifies nothing (every permit it signed has
    /// expired by then) and is dropped at the next rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_after_ms: Option<i64>,
    /// A revoked key's permits answer `revoked`; it is no longer published.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    revoked: bool,
}

/// The key file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

/// A key of the set.
#[derive(Clone)]
struct Key {
    kid: String,
    signing: SigningKey,
    verifying: VerifyingKey,
    not_after_ms: Option<i64>,
    revoked: bool,
}

/// The permit keys: the newest signs, every key still within its `not_after` verifies.
#[derive(Clone)]
pub struct PermitKeys(Arc<Vec<Key>>);

impl std::fmt::Debug for PermitKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.0.iter().map(|k| k.kid.as_str()).collect();
        f.debug_tuple("PermitKeys").field(&kids).finish()
    }
}

/// The key id of a public key: the first 16 hex characters of its SHA-256, so every
/// replica given the same seed names it alike.
pub fn kid_of(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

fn fresh_key(now_ms: i64) -> StoredKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let signing = SigningKey::from_bytes(&seed);
    StoredKey {
        kid: kid_of(&signing.verifying_key()),
        seed: hex::encode(seed),
        created_ms: now_ms,
        not_after_ms: None,
        revoked: false,
    }
}

fn seed_key(seed_hex: &str) -> Option<Key> {
    let bytes: [u8; 32] = hex::decode(seed_hex.trim()).ok()?.try_into().ok()?;
    let signing = SigningKey::from_bytes(&bytes);
    let verifying = signing.verifying_key();
    Some(Key {
        kid: kid_of(&verifying),
        signing,
        verifying,
        not_after_ms: None,
        revoked: false,
    })
}

impl PermitKeys {
    /// One fresh key held in memory only: for tests and tools, never for a server whose
    /// permits must outlive it or verify on another replica.
    pub fn ephemeral() -> Self {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        match seed_key(&hex::encode(seed)) {
            Some(key) => Self(Arc::new(vec![key])),
            None => Self(Arc::new(Vec::new())),
        }
    }

    /// The keys from `WARDEN_PERMIT_KEY` if set, else from the data dir's key file, which
    /// is created with one fresh key (readable by the owner only) on first start.
    pub fn load(env_value: Option<&str>, data_dir: &Path) -> Result<Self, PermitKeyError> {
        if let Some(value) = env_value {
            let value = value.trim();
            if value.starts_with('{') {
                let file: KeyFile =
                    serde_json::from_str(value).map_err(|_| PermitKeyError::BadEnv)?;
                return Self::from_file(file).map_err(|_| PermitKeyError::BadEnv);
            }
            return seed_key(value)
                .map(|key| Self(Arc::new(vec![key])))
                .ok_or(PermitKeyError::BadEnv);
        }
        let path = data_dir.join(PERMIT_KEY_FILE);
        match read_file(&path)? {
            Some(file) => Self::from_file(file).map_err(|detail| PermitKeyError::BadFile {
                path: path.display().to_string(),
                detail,
            }),
            None => {
                let file = KeyFile {
                    keys: vec![fresh_key(crate::state::now_ms())],
                };
                write_file(&path, &file, true)?;
                Self::from_file(file).map_err(|detail| PermitKeyError::BadFile {
                    path: path.display().to_string(),
                    detail,
                })
            }
        }
    }

    fn from_file(file: KeyFile) -> Result<Self, String> {
        let mut keys = Vec::with_capacity(file.keys.len());
        for stored in file.keys {
            let mut key = seed_key(&stored.seed)
                .ok_or_else(|| format!("key `{}` has no valid 32-byte hex seed", stored.kid))?;
            if key.kid != stored.kid {
                return Err(format!(
                    "key `{}` does not match its seed (its id is `{}`)",
                    stored.kid, key.kid
                ));
            }
            key.not_after_ms = stored.not_after_ms;
            key.revoked = stored.revoked;
            keys.push(key);
        }
        if !keys.iter().any(|k| k.not_after_ms.is_none() && !k.revoked) {
            return Err("no current signing key (every key is retired or revoked)".into());
        }
        Ok(Self(Arc::new(keys)))
    }

    /// The key that signs new permits: the newest that is neither retired nor revoked.
    fn signer(&self) -> Option<&Key> {
        self.0
            .iter()
            .rev()
            .find(|k| k.not_after_ms.is_none() && !k.revoked)
    }

    /// Every key of the set and its state: `signing`, `verifying` (retired: it verifies
    /// its permits until `not_after`) or `revoked`. What an audit event records of a change.
    pub fn states(&self) -> Vec<(String, &'static str)> {
        let signer = self.current_kid().map(str::to_owned);
        self.0
            .iter()
            .map(|k| {
                let state = if k.revoked {
                    "revoked"
                } else if Some(&k.kid) == signer.as_ref() {
                    "signing"
                } else {
                    "verifying"
                };
                (k.kid.clone(), state)
            })
            .collect()
    }

    /// The id of the key new permits are signed with.
    pub fn current_kid(&self) -> Option<&str> {
        self.signer().map(|k| k.kid.as_str())
    }

    /// The public keys executors may verify with at `now_ms`: neither revoked nor past
    /// their `not_after`, as a JWKS-like document.
    pub fn public_keys(&self, now_ms: i64) -> Vec<PublicKey> {
        self.0
            .iter()
            .filter(|k| !k.revoked && k.not_after_ms.is_none_or(|t| now_ms < t))
            .map(|k| PublicKey {
                kid: k.kid.clone(),
                kty: "OKP",
                crv: "Ed25519",
                alg: "EdDSA",
                key_use: "sig",
                x: URL_SAFE_NO_PAD.encode(k.verifying.as_bytes()),
                not_after: k.not_after_ms.map(crate::wire::rfc3339),
            })
            .collect()
    }

    /// Signs a permit for an allowed action. `None` only when the set has no current key,
    /// which loading refuses.
    pub fn issue(&self, grant: &Grant<'_>) -> Option<Issued> {
        self.sign(&Binding::of(grant), grant.settings, grant.now_ms)
    }

    /// Signs a permit binding `binding`, issued at `now_ms` with `settings`: for a direct
    /// allow at its decision, for an approved action when the approval is granted.
    pub fn sign(&self, binding: &Binding, settings: PermitSettings, now_ms: i64) -> Option<Issued> {
        let key = self.signer()?;
        let iat = now_ms.div_euclid(1000);
        let exp = iat.saturating_add(i64::try_from(settings.expires_in.as_secs()).ok()?);
        let claims = Claims {
            v: 1,
            decision_id: binding.decision_id.clone(),
            tenant: binding.tenant.clone(),
            action_type: binding.action_type.clone(),
            target: binding.target.clone(),
            agent: binding.agent.clone(),
            payload_sha256: binding.payload_sha256.clone(),
            iat,
            exp,
            max_uses: settings.max_uses,
        };
        let header = Header {
            alg: "EdDSA".into(),
            kid: key.kid.clone(),
            typ: TOKEN_TYPE.into(),
        };
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).ok()?);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).ok()?);
        let signing_input = format!("{header}.{body}");
        let signature = key.signing.sign(signing_input.as_bytes());
        Some(Issued {
            token: format!(
                "{signing_input}.{}",
                URL_SAFE_NO_PAD.encode(signature.to_bytes())
            ),
            expires_at_ms: exp.saturating_mul(1000),
            max_uses: claims.max_uses,
        })
    }

    /// Checks what a token alone can prove, in the documented order: shape, tenant, key,
    /// signature, expiry, action. The payload is compared by the caller, which may need to
    /// parse it off the executor; use counting is the store's.
    pub fn check(&self, token: &str, tenant: &str, now_ms: i64) -> Result<Checked, Refusal> {
        let (parsed, key) = self.before_signature(token, tenant, now_ms)?;
        // `verify`, not `verify_strict`: the verifying key is ours, never a small-order
        // point, and a token's `R` is compared by its encoding, so the strict checks add
        // nothing here but cost 12% of a check.
        key.verifying
            .verify(parsed.signing_input.as_bytes(), &parsed.signature)
            .map_err(|_| Refusal::BadSignature)?;
        after_signature(parsed, key, now_ms)
    }

    /// [`PermitKeys::check`] for many tokens at once, with one Ed25519 batch verification
    /// for all the signatures (about twice as fast per token as one by one); when the batch
    /// fails, each is verified alone, so every answer is the one `check` gives.
    pub fn check_many(
        &self,
        tokens: &[&str],
        tenant: &str,
        now_ms: i64,
    ) -> Vec<Result<Checked, Refusal>> {
        let pre: Vec<_> = tokens
            .iter()
            .map(|t| self.before_signature(t, tenant, now_ms))
            .collect();
        let (mut messages, mut signatures, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        for (parsed, key) in pre.iter().flatten() {
            messages.push(parsed.signing_input.as_bytes());
            signatures.push(parsed.signature);
            keys.push(key.verifying);
        }
        let all_good = !messages.is_empty()
            && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
        pre.into_iter()
            .map(|checked| {
                let (parsed, key) = checked?;
                if !all_good {
                    key.verifying
                        .verify(parsed.signing_input.as_bytes(), &parsed.signature)
                        .map_err(|_| Refusal::BadSignature)?;
                }
                after_signature(parsed, key, now_ms)
            })
            .collect()
    }

    /// The checks before the signature's: shape, tenant, key.
    fn before_signature(
        &self,
        token: &str,
        tenant: &str,
        now_ms: i64,
    ) -> Result<(Parsed, &Key), Refusal> {
        let parsed = parse(token).ok_or(Refusal::BadSignature)?;
        // Another tenant's permit reads as forged: the answer says nothing about it, not
        // even whether it is expired or used up there.
        if parsed.claims.tenant != tenant {
            return Err(Refusal::OtherTenant);
        }
        let key = self
            .0
            .iter()
            .find(|k| k.kid == parsed.header.kid)
            .ok_or(Refusal::UnknownKey)?;
        if key.revoked {
            return Err(Refusal::Revoked);
        }
        // A retired key past `not_after` is gone from the published set; its permits all
        // expired before then.
        if key.not_after_ms.is_some_and(|t| now_ms >= t) {
            return Err(Refusal::UnknownKey);
        }
        Ok((parsed, key))
    }
}

/// The checks after a good signature: expiry.
fn after_signature(parsed: Parsed, key: &Key, now_ms: i64) -> Result<Checked, Refusal> {
    if now_ms >= parsed.claims.exp.saturating_mul(1000) {
        return Err(Refusal::Expired {
            decision_id: parsed.claims.decision_id,
        });
    }
    Ok(Checked {
        kid: key.kid.clone(),
        claims: parsed.claims,
    })
}

/// What a permit is issued for.
#[derive(Debug)]
pub struct Grant<'a> {
    /// The decision.
    pub decision_id: &'a str,
    /// Its tenant.
    pub tenant: &'a str,
    /// The action as evaluated (agent resolved).
    pub action: &'a Action,
    /// Expiry and uses, from the policy.
    pub settings: PermitSettings,
    /// Now, unix ms.
    pub now_ms: i64,
}

/// What a permit binds, fixed at the decision: everything but its times and uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The decision.
    pub decision_id: String,
    /// Its tenant.
    pub tenant: String,
    /// The action type.
    pub action_type: String,
    /// The target, as the action named it.
    pub target: Option<ClaimTarget>,
    /// The agent, as resolved.
    pub agent: Option<String>,
    /// Lowercase hex SHA-256 of the payload's RFC 8785 form.
    pub payload_sha256: String,
}

impl Binding {
    /// What `grant`'s permit binds.
    pub fn of(grant: &Grant<'_>) -> Self {
        let action = grant.action;
        Self {
            decision_id: grant.decision_id.to_owned(),
            tenant: grant.tenant.to_owned(),
            action_type: action.kind.as_str().to_owned(),
            target: action.target.as_ref().map(|t| ClaimTarget {
                kind: t.kind.clone(),
                id: t.id.clone(),
            }),
            agent: action.agent.clone(),
            payload_sha256: jcs::payload_sha256(&action.payload),
        }
    }
}

/// The permit an approval holds until it is granted: what it binds and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    /// What it binds.
    pub binding: Binding,
    /// Seconds from the grant to its expiry.
    pub expires_in_s: u64,
    /// Verifications it allows.
    pub max_uses: u32,
}

impl Held {
    /// The permit `grant` will carry once its approval is granted.
    pub fn of(grant: &Grant<'_>) -> Self {
        Self {
            binding: Binding::of(grant),
            expires_in_s: grant.settings.expires_in.as_secs(),
            max_uses: grant.settings.max_uses,
        }
    }

    /// The settings to sign it with.
    pub fn settings(&self) -> PermitSettings {
        PermitSettings {
            expires_in: std::time::Duration::from_secs(self.expires_in_s),
            max_uses: self.max_uses,
        }
    }
}

/// A signed permit.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The compact token.
    pub token: String,
    /// When it expires, unix ms (whole seconds).
    pub expires_at_ms: i64,
    /// Uses it allows.
    pub max_uses: u32,
}

/// A token whose signature and expiry check out.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The key that signed it.
    pub kid: String,
    /// What it binds.
    pub claims: Claims,
}

/// Why a token was refused before its payload was looked at.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Malformed, or the signature does not verify.
    BadSignature,
    /// Well-formed but for another tenant; answered as `bad_signature`.
    OtherTenant,
    /// No key of the set has its `kid`.
    UnknownKey,
    /// Its key was revoked.
    Revoked,
    /// Genuine but expired.
    Expired {
        /// The decision it was issued for.
        decision_id: String,
    },
}

impl Refusal {
    /// The reason code answered.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadSignature | Self::OtherTenant => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::Revoked => "revoked",
            Self::Expired { .. } => "expired",
        }
    }
}

/// The JOSE header of a permit.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
}

/// What a permit binds (its JWS payload), in this field order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Format version: 1.
    pub v: u32,
    /// The decision the permit was issued for.
    pub decision_id: String,
    /// Its tenant.
    pub tenant: String,
    /// The action type.
    pub action_type: String,
    /// The target, as the action named it.
    pub target: Option<ClaimTarget>,
    /// The agent, as resolved from the key and the action.
    pub agent: Option<String>,
    /// Lowercase hex SHA-256 of the payload's RFC 8785 form (`null` when absent).
    pub payload_sha256: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds: invalid from this second on.
    pub exp: i64,
    /// Verifications allowed.
    pub max_uses: u32,
}

/// A target in the claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimTarget {
    /// Target type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Target id.
    pub id: Option<String>,
}

struct Parsed {
    header: Header,
    claims: Claims,
    signing_input: String,
    signature: Signature,
}

fn parse(token: &str) -> Option<Parsed> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (header, body, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header.alg != "EdDSA" || header.typ != TOKEN_TYPE {
        return None;
    }
    let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
    if claims.v != 1 {
        return None;
    }
    let signature: [u8; 64] = URL_SAFE_NO_PAD.decode(signature).ok()?.try_into().ok()?;
    Some(Parsed {
        header,
        claims,
        signing_input: token[..token.rfind('.')?].to_owned(),
        signature: Signature::from_bytes(&signature),
    })
}

/// A public key as `GET /v1/permits/keys` serves it (RFC 8037 OKP JWK, plus `not_after`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PublicKey {
    /// The key id a permit's header names.
    pub kid: String,
    /// Always `OKP`.
    pub kty: &'static str,
    /// Always `Ed25519`.
    pub crv: &'static str,
    /// Always `EdDSA`.
    pub alg: &'static str,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub key_use: &'static str,
    /// The public key, base64url without padding.
    pub x: String,
    /// For a rotated-out key: when it stops verifying (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// Rotates the key file in `data_dir`: retires every current key (verifiable for
/// [`PermitSettings::MAX_EXPIRES_IN`] more, the longest a permit lives; or revoked at once
/// with `revoke_old`), drops keys past their `not_after`, and adds a fresh signing key.
/// Returns the new key's id.
pub fn rotate(data_dir: &Path, now_ms: i64, revoke_old: bool) -> Result<String, PermitKeyError> {
    let path = data_dir.join(PERMIT_KEY_FILE);
    let mut file = read_file(&path)?.unwrap_or_default();
    let retire_at = now_ms.saturating_add(
        i64::try_from(PermitSettings::MAX_EXPIRES_IN.as_millis()).unwrap_or(i64::MAX),
    );
    file.keys
        .retain(|k| k.not_after_ms.is_none_or(|t| now_ms < t));
    for key in &mut file.keys {
        if revoke_old {
            key.revoked = true;
        }
        if key.not_after_ms.is_none() {
            key.not_after_ms = Some(retire_at);
        }
    }
    let fresh = fresh_key(now_ms);
    let kid = fresh.kid.clone();
    file.keys.push(fresh);
    PermitKeys::from_file(file.clone()).map_err(|detail| PermitKeyError::BadFile {
        path: path.display().to_string(),
        detail,
    })?;
    write_file(&path, &file, false)?;
    Ok(kid)
}

fn read_file(path: &Path) -> Result<Option<KeyFile>, PermitKeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| PermitKeyError::BadFile {
                path: path.display().to_string(),
                detail: format!("not a permit key set: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PermitKeyError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Writes the key set readable by the owner only: new, or replacing the old file
/// atomically (a temporary file renamed over it), so a reader never sees half a file.
fn write_file(path: &Path, file: &KeyFile, create_new: bool) -> Result<(), PermitKeyError> {
    let io = |source| PermitKeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = serde_json::to_string_pretty(file).map_err(|e| PermitKeyError::BadFile {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if create_new {
        return crate::audit::write_private(path, &text).map_err(io);
    }
    let mut temp = PathBuf::from(path);
    temp.set_extension(format!("key.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    crate::audit::write_private(&temp, &text).map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)
}

/// Whether the fields a verify request names match what the permit binds: each one given
/// must equal the permit's (`target` as a whole: type and id).
pub fn action_matches(
    claims: &Claims,
    kind: Option<&str>,
    target: Option<&ClaimTarget>,
    agent: Option<&str>,
) -> bool {
    let bound = claims.target.clone().unwrap_or(ClaimTarget {
        kind: None,
        id: None,
    });
    kind.is_none_or(|k| k == claims.action_type)
        && agent.is_none_or(|a| Some(a) == claims.agent.as_deref())
        && target.is_none_or(|t| *t == bound)
}

/// The live permit keys, swapped whole on reload (SIGHUP) so a rotation reaches a running
/// server without a restart.
#[derive(Debug)]
pub struct Keyring {
    keys: arc_swap::ArcSwap<PermitKeys>,
    source: std::sync::Mutex<Option<KeySource>>,
}

/// Where the keys were loaded from, to load them again.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// `WARDEN_PERMIT_KEY`, if set.
    pub env: Option<String>,
    /// The data dir holding the key file.
    pub data_dir: PathBuf,
}

impl Default for Keyring {
    fn default() -> Self {
        Self {
            keys: arc_swap::ArcSwap::from_pointee(PermitKeys::ephemeral()),
            source: std::sync::Mutex::new(None),
        }
    }
}

impl Keyring {
    /// The keys now.
    pub fn current(&self) -> Arc<PermitKeys> {
        self.keys.load_full()
    }

    /// Loads the keys from `source` and uses them from now on.
    pub fn install(&self, source: KeySource) -> Result<(), PermitKeyError> {
        let keys = PermitKeys::load(source.env.as_deref(), &source.data_dir)?;
        self.keys.store(Arc::new(keys));
        if let Ok(mut slot) = self.source.lock() {
            *slot = Some(source);
        }
        Ok(())
    }

    /// Uses `keys` from now on (tests, tools).
    pub fn replace(&self, keys: PermitKeys) {
        self.keys.store(Arc::new(keys));
    }

    /// Loads the keys again from where [`Keyring::install`] found them; a failure keeps
    /// the current keys.
    pub fn reload(&self) -> Result<(), PermitKeyError> {
        let source = self.source.lock().ok().and_then(|s| s.clone());
        match source {
            Some(source) => self.install(source),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::time::Duration;

    fn action(payload: Value) -> Action {
        Action::from_value(json!({
            "type": "ticket.resolve",
            "target": {"type": "ticket", "id": "T-1"},
            "agent": "bot",
            "payload": payload,
        }))
        .unwrap()
    }

    fn grant(action: &Action, now_ms: i64) -> Issued {
        PermitKeys::ephemeral_for_tests()
            .issue(&Grant {
                decision_id: "d1",
                tenant: "acme",
                action,
                settings: PermitSettings::default(),
                now_ms,
            })
            .unwrap()
    }

    impl PermitKeys {
        fn ephemeral_for_tests() -> Self {
            Self::from_file(KeyFile {
                keys: vec![StoredKey {
                    kid: kid_of(&SigningKey::from_bytes(&[7; 32]).verifying_key()),
                    seed: hex::encode([7u8; 32]),
                    created_ms: 0,
                    not_after_ms: None,
                    revoked: false,
                }],
            })
            .unwrap()
        }
    }

    #[test]
    fn a_permit_checks_out_until_it_expires_and_only_in_its_tenant() {
        let keys = PermitKeys::ephemeral_for_tests();
        let a = action(json!({"x": 1}));
        let issued = grant(&a, 1_000_000);
        assert_eq!(issued.expires_at_ms, 1_300_000);
        let checked = keys.check(&issued.token, "acme", 1_299_999).unwrap();
        assert_eq!(checked.claims.decision_id, "d1");
        assert_eq!(
            checked.claims.payload_sha256,
            jcs::payload_sha256(&json!({"x": 1}))
        );
        let reason = |r: Result<Checked, Refusal>| r.map(|_| "ok").unwrap_or_else(|e| e.reason());
        assert_eq!(
            reason(keys.check(&issued.token, "acme", 1_300_000)),
            "expired"
        );
        assert_eq!(
            reason(keys.check(&issued.token, "other", 1_000_000)),
            "bad_signature"
        );
        assert_eq!(
            reason(PermitKeys::ephemeral().check(&issued.token, "acme", 1_000_000)),
            "unknown_key"
        );
        assert_eq!(reason(keys.check("a.b.c", "acme", 0)), "bad_signature");
        assert_eq!(reason(keys.check("", "acme", 0)), "bad_signature");
    }

    #[test]
    fn any_changed_byte_breaks_the_signature() {
        let keys = PermitKeys::ephemeral_for_tests();
        let a = action(json!({"x": 1}));
        let token = grant(&a, 1_000_000).token;
        let (signing_input, _) = token.rsplit_once('.').unwrap();
        let (header, body) = signing_input.split_once('.').unwrap();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        claims["max_uses"] = json!(1000);
        let forged = format!(
            "{header}.{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
            token.rsplit_once('.').unwrap().1
        );
        assert!(matches!(
            keys.check(&forged, "acme", 1_000_000),
            Err(Refusal::BadSignature)
        ));
        for i in [0, token.len() / 2, token.len() - 2] {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert!(
                keys.check(&tampered, "acme", 1_000_000).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn checking_many_at_once_answers_each_as_checking_it_alone() {
        let keys = PermitKeys::ephemeral_for_tests();
        let tokens: Vec<String> = (0..6)
            .map(|n| grant(&action(json!({"n": n})), 1_000_000).token)
            .collect();
        let reasons = |tokens: &[&str], now: i64| -> Vec<&'static str> {
            keys.check_many(tokens, "acme", now)
                .into_iter()
                .map(|r| r.map(|_| "ok").unwrap_or_else(|e| e.reason()))
                .collect()
        };
        let alone = |tokens: &[&str], now: i64| -> Vec<&'static str> {
            tokens
                .iter()
                .map(|t| {
                    keys.check(t, "acme", now)
                        .map(|_| "ok")
                        .unwrap_or_else(|e| e.reason())
                })
                .collect()
        };
        let good: Vec<&str> = tokens.iter().map(String::as_str).collect();
        assert_eq!(reasons(&good, 1_000_000), ["ok"; 6]);
        let checked = keys.check_many(&good, "acme", 1_000_000);
        assert_eq!(
            checked[3].as_ref().unwrap().claims.payload_sha256,
            jcs::payload_sha256(&json!({"n": 3}))
        );
        // One forged signature among good ones fails the batch; each is then checked alone.
        let mut forged = tokens[2].clone().into_bytes();
        let last = forged.len() - 3;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let mixed = [good[0], good[1], forged.as_str(), "a.b.c", good[4]];
        assert_eq!(
            reasons(&mixed, 1_000_000),
            ["ok", "ok", "bad_signature", "bad_signature", "ok"]
        );
        assert_eq!(reasons(&mixed, 1_000_000), alone(&mixed, 1_000_000));
        assert_eq!(reasons(&good, 1_300_000), ["expired"; 6]);
        assert!(keys.check_many(&[], "acme", 0).is_empty());
        assert_eq!(
            keys.check_many(&good[..1], "other", 1_000_000)[0]
                .as_ref()
                .map_err(Refusal::reason)
                .err(),
            Some("bad_signature")
        );
    }

    #[test]
    fn rotation_keeps_old_permits_verifiable_and_revocation_stops_them() {
        let dir = tempfile::tempdir().unwrap();
        let first = PermitKeys::load(None, dir.path()).unwrap();
        let a = action(Value::Null);
        let g = |keys: &PermitKeys| {
            keys.issue(&Grant {
                decision_id: "d",
                tenant: "acme",
                action: &a,
                settings: PermitSettings {
                    expires_in: Duration::from_secs(60),
                    max_uses: 2,
                },
                now_ms: 10_000,
            })
            .unwrap()
        };
        let old = g(&first);
        let kid = rotate(dir.path(), 10_000, false).unwrap();
        let second = PermitKeys::load(None, dir.path()).unwrap();
        assert_eq!(second.current_kid(), Some(kid.as_str()));
        assert_ne!(first.current_kid(), second.current_kid());
        assert!(second.check(&old.token, "acme", 20_000).is_ok());
        assert_eq!(second.public_keys(20_000).len(), 2);
        assert!(second.public_keys(20_000)[0].not_after.is_some());
        rotate(dir.path(), 10_000, true).unwrap();
        let third = PermitKeys::load(None, dir.path()).unwrap();
        assert!(matches!(
            third.check(&old.token, "acme", 20_000),
            Err(Refusal::Revoked)
        ));
        assert_eq!(third.public_keys(20_000).len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(PERMIT_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn the_environment_gives_a_seed_or_a_key_set() {
        let dir = tempfile::tempdir().unwrap();
        let seed = hex::encode([9u8; 32]);
        let a = PermitKeys::load(Some(&seed), dir.path()).unwrap();
        let b = PermitKeys::load(Some(&format!(" {seed}\n")), dir.path()).unwrap();
        assert_eq!(a.current_kid(), b.current_kid());
        assert!(!dir.path().join(PERMIT_KEY_FILE).exists());
        assert!(matches!(
            PermitKeys::load(Some("short"), dir.path()),
            Err(PermitKeyError::BadEnv)
        ));
        PermitKeys::load(None, dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(PERMIT_KEY_FILE)).unwrap();
        let from_env = PermitKeys::load(Some(&text), dir.path()).unwrap();
        let from_file = PermitKeys::load(None, dir.path()).unwrap();
        assert_eq!(from_env.current_kid(), from_file.current_kid());
    }

    #[test]
    fn an_action_check_compares_only_what_it_names() {
        let claims = Claims {
            v: 1,
            decision_id: "d".into(),
            tenant: "t".into(),
            action_type: "ticket.resolve".into(),
            target: Some(ClaimTarget {
                kind: Some("ticket".into()),
                id: Some("T-1".into()),
            }),
            agent: Some("bot".into()),
            payload_sha256: String::new(),
            iat: 0,
            exp: 0,
            max_uses: 1,
        };
        let t = |kind: Option<&str>, id: &str| ClaimTarget {
            kind: kind.map(str::to_owned),
            id: Some(id.to_owned()),
        };
        assert!(action_matches(&claims, None, None, None));
        assert!(action_matches(
            &claims,
            Some("ticket.resolve"),
            None,
            Some("bot")
        ));
        assert!(action_matches(
            &claims,
            None,
            Some(&t(Some("ticket"), "T-1")),
            None
        ));
        assert!(!action_matches(&claims, Some("ticket.delete"), None, None));
        assert!(!action_matches(&claims, None, None, Some("other")));
        assert!(!action_matches(&claims, None, Some(&t(None, "T-1")), None));
        assert!(!action_matches(
            &claims,
            None,
            Some(&t(Some("ticket"), "T-2")),
            None
        ));
    }
}
