//! Comparing a presented secret (the admin token, a sandbox client secret,
//! a console CSRF token) with the expected one without telling a timing
//! attacker how much of a guess was right.

use sha2::{Digest, Sha256};

/// Equal, in a time that depends on neither value: both are hashed first
/// (equal-length digests, so not even the secret's length shows) and the
/// digests are compared without an early exit.
pub fn secrets_equal(presented: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(presented), Sha256::digest(expected));
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Kept opaque so the fold is not turned back into an early-exit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal() {
        assert!(secrets_equal(b"s3cret-token", b"s3cret-token"));
        assert!(!secrets_equal(b"s3cret-tokeN", b"s3cret-token"));
        assert!(!secrets_equal(b"s3cret", b"s3cret-token"));
        assert!(!secrets_equal(b"", b"s3cret-token"));
        assert!(secrets_equal(b"", b""));
    }
}
