//! Identifiers: ULIDs for decisions and events (time-ordered, so ids sort like the log), and
//! random base32 for key ids.

use rand::RngCore;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID: 48 bits of Unix milliseconds, 80 random bits, 26 Crockford base32 characters.
///
/// The bits come from the thread's CSPRNG (seeded from the OS), not a `getrandom` call per
/// id: one is made per decision. Key secrets still come from the OS directly (`keys`).
pub fn ulid(now_ms: i64) -> String {
    let mut random = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    let mut value: u128 = (u128::from(now_ms.max(0) as u64) & 0xFFFF_FFFF_FFFF) << 80;
    for (i, b) in random.iter().enumerate() {
        value |= u128::from(*b) << (8 * (9 - i));
    }
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (5 * i)) & 0x1F) as usize] as char)
        .collect()
}

/// `n` random Crockford base32 characters (5 bits of entropy each).
pub fn random_base32(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| CROCKFORD[(b & 0x1F) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_sort_by_time_and_differ() {
        let a = ulid(1_700_000_000_000);
        let b = ulid(1_700_000_000_001);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert_ne!(ulid(5), ulid(5));
        assert!(ulid(0).starts_with("0000000000"));
    }
}
