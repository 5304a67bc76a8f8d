//! Decision snapshots at rest: the core's snapshot of a decision's input, sealed with
//! ChaCha20-Poly1305 before it reaches the store, and opened again for a replay.
//!
//! Key decision: the key is derived from the audit digest key (HMAC-SHA256 of a fixed label),
//! so the data dir holds one secret, not two; each snapshot is bound to its tenant and
//! decision id as associated data, so a row copied to another decision does not open.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rand::RngCore;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// The key snapshots are sealed with.
///
/// ring's ChaCha20-Poly1305 (RFC 8439, the format the RustCrypto crate wrote before it, so
/// every stored snapshot still opens): its per-message setup is a quarter of the RustCrypto
/// crate's, whose AVX2 Poly1305 is built for long messages, and a snapshot is ~200 bytes
/// sealed on every decision and opened by every replay.
#[derive(Clone)]
pub struct SnapshotKey(LessSafeKey);

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotKey(..)")
    }
}

impl SnapshotKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        #[expect(
            clippy::expect_used,
            reason = "32 bytes is ChaCha20-Poly1305's key length, the only way this fails"
        )]
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("a 32-byte key");
        Self(LessSafeKey::new(key))
    }

    /// Seals `snapshot` for the decision `decision_id` of `tenant`: base64 of nonce and
    /// ciphertext (with its tag).
    pub fn seal(&self, tenant: &str, decision_id: &str, snapshot: &[u8]) -> Option<String> {
        // A random 96-bit nonce from the thread's CSPRNG (seeded from the OS, as ids are):
        // one is drawn per decision, and a `getrandom` call each was a syscall on the path.
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = associated(tenant, decision_id);
        let tag_len = CHACHA20_POLY1305.tag_len();
        let mut out = Vec::with_capacity(NONCE_LEN + snapshot.len() + tag_len);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(snapshot);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut out[NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(STANDARD_NO_PAD.encode(out))
    }

    /// Opens what [`SnapshotKey::seal`] sealed for the same tenant and decision; `None`
    /// when it is not (another key, another decision, tampered).
    pub fn open(&self, tenant: &str, decision_id: &str, sealed: &str) -> Option<Vec<u8>> {
        let mut bytes = STANDARD_NO_PAD.decode(sealed).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let aad = associated(tenant, decision_id);
        let len = self
            .0
            .open_in_place(nonce, Aad::from(&aad), sealed)
            .ok()?
            .len();
        bytes.drain(..NONCE_LEN);
        bytes.truncate(len);
        Some(bytes)
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

    /// Sealed by the RustCrypto `chacha20poly1305` crate before ring replaced it: a
    /// snapshot stored by an older server must still open, and a replay must still read it.
    #[test]
    fn a_snapshot_sealed_by_the_previous_implementation_still_opens() {
        let key = SnapshotKey::from_bytes([7; 32]);
        let sealed = "SKeqJUR43kCMQnzBMPnv9mfOeApOcCvUBsCtH8+gucHZyx6Eg3BKI9f1J3Fo3377uFmX2jgmmxnH2sP1c5F8ogNcBmIMISAoIwCN7f5Hk81BKQ";
        let id = "01JD8Z9R6W3K2Q5N7X4T0M1B8C";
        assert_eq!(
            key.open("acme", id, sealed).unwrap(),
            br#"{"values":{"action.type":"ticket.update"},"absent":[]}"#
        );
        assert_eq!(key.open("acme", "01JD8Z9R6W3K2Q5N7X4T0M1B8D", sealed), None);
    }
}
