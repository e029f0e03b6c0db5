//! RFC 6238 one-time codes for the password grant's `totp` field.
//!
//! The arithmetic is `totp-rs`'s; this module fixes the parameters authenticator apps use
//! (SHA-1, 6 digits, 30 s) and keeps the seed inside [`Secret`].

use totp_rs::{Algorithm, Secret as Base32, TOTP};

use crate::secret::Secret;

/// Why a TOTP seed is unusable. Never carries the seed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the TOTP secret is not valid base32")]
pub struct InvalidTotpSecret;

fn totp(seed: &Secret) -> Result<TOTP, InvalidTotpSecret> {
    // Authenticator seeds are often shown in groups and in lower case; accept both.
    let cleaned: String = seed
        .expose()
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_ascii_uppercase();
    let bytes = Base32::Encoded(cleaned)
        .to_bytes()
        .map_err(|_| InvalidTotpSecret)?;
    if bytes.is_empty() {
        return Err(InvalidTotpSecret);
    }
    // `new_unchecked`: many services issue 80-bit seeds, below the 128 bits `new` insists on.
    Ok(TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes))
}

/// Checks at load time that a seed will produce codes.
pub fn check_secret(seed: &Secret) -> Result<(), InvalidTotpSecret> {
    totp(seed).map(drop)
}

/// The code for `unix_time` (seconds).
pub fn code(seed: &Secret, unix_time: u64) -> Result<String, InvalidTotpSecret> {
    Ok(totp(seed)?.generate(unix_time))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 seed "12345678901234567890", truncated to 6 digits.
    #[test]
    fn matches_rfc_6238_vectors() {
        let seed = Secret::new("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(code(&seed, 59).unwrap(), "287082");
        assert_eq!(code(&seed, 1_111_111_109).unwrap(), "081804");
        assert_eq!(code(&seed, 2_000_000_000).unwrap(), "279037");
    }

    #[test]
    fn accepts_grouped_lower_case_and_rejects_garbage() {
        let grouped = Secret::new("gezd gnbv gy3t qojq gezd gnbv gy3t qojq");
        assert_eq!(code(&grouped, 59).unwrap(), "287082");
        assert!(check_secret(&Secret::new("not base32 at all!")).is_err());
    }
}
