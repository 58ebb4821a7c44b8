//! Key secrets: made from a CSPRNG, shown once, stored as a SHA-256 hash.
//!
//! A secret is `sk-lr-` followed by 40 alphanumeric characters (about 238 bits), so a
//! plain hash suffices: there is nothing to brute-force, and a lookup costs one hash
//! of the presented secret (well under a microsecond) and one map read.

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "sk-lr-";
const RANDOM_CHARS: usize = 40;
/// Characters of the secret kept to recognise a key (`sk-lr-` and six more).
const SHOWN_CHARS: usize = SECRET_PREFIX.len() + 6;

/// The hash a secret is stored and looked up by.
pub type SecretHash = [u8; 32];

/// A new secret from the thread's CSPRNG (ChaCha, seeded from the OS).
pub fn generate() -> String {
    let mut secret = String::from(SECRET_PREFIX);
    Alphanumeric.append_string(&mut rand::rng(), &mut secret, RANDOM_CHARS);
    secret
}

pub fn hash(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// The part of `secret` shown in lists.
pub fn prefix(secret: &str) -> String {
    secret.chars().take(SHOWN_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_hashed() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), SECRET_PREFIX.len() + RANDOM_CHARS);
        assert!(a.starts_with(SECRET_PREFIX));
        assert!(a[SECRET_PREFIX.len()..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(prefix(&a), a[..12]);
        assert_eq!(hash(&a), hash(&a.clone()));
        assert_ne!(hash(&a), hash(&b));
        // SHA-256 of "abc" (FIPS 180-2 test vector).
        assert_eq!(hash("abc")[..4], [0xba, 0x78, 0x16, 0xbf],);
    }
}
