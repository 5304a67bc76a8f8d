//! Decision snapshots at rest: the core's snapshot of a decision's input, sealed with
//! ChaCha20-Poly1305 before it reaches the store, and opened again for a replay.
//!
//! Key decision: the key is derived from the audit digest key (HMAC-SHA256 of a fixed label),
//! so the data dir holds one secret, not two; each snapshot is bound to its tenant and
//! decision id as associated data, so a row copied to another decision does not open.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

/// The key snapshots are sealed with.
#[derive(Clone)]
pub struct SnapshotKey(ChaCha20Poly1305);

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotKey(..)")
    }
}

const NONCE: usize = 12;

impl SnapshotKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(ChaCha20Poly1305::new(Key::from_slice(&bytes)))
    }

    /// Seals `snapshot` for the decision `decision_id` of `tenant`: base64 of nonce and
    /// ciphertext.
    pub fn seal(&self, tenant: &str, decision_id: &str, snapshot: &[u8]) -> Option<String> {
        let mut nonce = [0u8; NONCE];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated(tenant, decision_id);
        let sealed = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: snapshot,
                    aad: &aad,
                },
            )
            .ok()?;
        let mut out = Vec::with_capacity(NONCE + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(STANDARD_NO_PAD.encode(out))
    }

    /// Opens what [`SnapshotKey::seal`] sealed for the same tenant and decision; `None`
    /// when it is not (another key, another decision, tampered).
    pub fn open(&self, tenant: &str, decision_id: &str, sealed: &str) -> Option<Vec<u8>> {
        let bytes = STANDARD_NO_PAD.decode(sealed).ok()?;
        if bytes.len() < NONCE {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE);
        let aad = associated(tenant, decision_id);
        self.0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .ok()
    }
}

/// `tenant`, a zero byte, `decision_id`: neither holds a zero byte.
fn associated(tenant: &str, decision_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tenant.len() + 1 + decision_id.len());
    aad.extend_from_slice(tenant.as_bytes());
    aad.push(0);
    aad.extend_from_slice(decision_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_opens_only_for_its_own_decision_and_key() {
        let key = SnapshotKey::from_bytes([7; 32]);
        let sealed = key.seal("acme", "d1", b"{\"secret\":\"s3cret\"}").unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(
            key.open("acme", "d1", &sealed).unwrap(),
            b"{\"secret\":\"s3cret\"}"
        );
        assert_eq!(key.open("acme", "d2", &sealed), None);
        assert_eq!(key.open("globex", "d1", &sealed), None);
        assert_eq!(
            SnapshotKey::from_bytes([8; 32]).open("acme", "d1", &sealed),
            None
        );
        let mut tampered = sealed.clone().into_bytes();
        tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            key.open("acme", "d1", &String::from_utf8(tampered).unwrap()),
            None
        );
        assert_ne!(
            sealed,
            key.seal("acme", "d1", b"{\"secret\":\"s3cret\"}").unwrap(),
            "fresh nonces"
        );
    }
}
