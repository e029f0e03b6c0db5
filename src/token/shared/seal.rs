//! What makes a shared entry unreadable without the credentials: its Redis name, the key that
//! seals it and the id of the token in it are all derived from the credentials themselves.
//!
//! HKDF-SHA256 over the credential bytes (every secret of the flow, length-prefixed) gives
//! three independent values: the entry's name (so a Redis reader cannot even tell which API or
//! account an entry belongs to), an AES-256-GCM key (so it cannot read or forge the entry), and
//! an HMAC key for token ids (so a Lua script can compare tokens without seeing them).
//! Different credentials never meet in one entry; a rotated secret starts a new one.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{KeyType, Salt, HKDF_SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Domain separation: a new format gets a new salt, and old entries are simply not found.
const SALT: &[u8] = b"nexus-sidecar shared token cache v1";
/// Bytes of the entry name and of a token id (128 bits: collisions are not a concern).
const ID_LEN: usize = 16;

/// The values derived from one set of credentials.
pub(crate) struct Seal {
    /// Hex: the entry's part of the Redis key names and of notifications.
    name: String,
    key: LessSafeKey,
    ids: hmac::Key,
    random: SystemRandom,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal").field("name", &self.name).finish()
    }
}

/// An entry that does not open: tampered with, written under other credentials, or cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared entry does not open with this upstream's credentials")]
pub(crate) struct Unopenable;

/// `hkdf::KeyType` for a plain byte length.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Seal {
    /// Derives everything from `credentials` (see `cache::credentials`).
    pub(crate) fn derive(credentials: &[u8]) -> Seal {
        let prk = Salt::new(HKDF_SHA256, SALT).extract(credentials);
        let mut name = [0u8; ID_LEN];
        // `fill` fails only for lengths above 255 × 32 bytes; these are constants far below.
        let expanded = prk
            .expand(&[b"entry name"], Len(ID_LEN))
            .and_then(|okm| okm.fill(&mut name));
        debug_assert!(expanded.is_ok());
        let key = prk
            .expand(&[b"seal"], &AES_256_GCM)
            .map(UnboundKey::from)
            .map(LessSafeKey::new);
        let ids = prk
            .expand(&[b"token id"], hmac::HMAC_SHA256)
            .map(hmac::Key::from);
        let (Ok(key), Ok(ids)) = (key, ids) else {
            unreachable!("HKDF-SHA256 expands to 32 bytes")
        };
        Seal {
            name: hex(&name),
            key,
            ids,
            random: SystemRandom::new(),
        }
    }

    /// The entry's name: hex, the same in every replica with these credentials.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The id of an access token: what compare-and-delete compares. Reveals nothing about the
    /// token to anyone without the credentials.
    pub(crate) fn token_id(&self, access_token: &str) -> String {
        let tag = hmac::sign(&self.ids, access_token.as_bytes());
        hex(&tag.as_ref()[..ID_LEN])
    }

    /// Encrypts and authenticates `plain`, bound to this entry's name: a nonce, then the
    /// ciphertext and tag.
    pub(crate) fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // The system's random source failing is not something to carry on from: a repeated
        // nonce would break the seal.
        if self.random.fill(&mut nonce).is_err() {
            panic!("the system random source failed");
        }
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        let sealed = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(self.name.as_bytes()),
            &mut body,
        );
        debug_assert!(sealed.is_ok(), "AES-GCM seals anything under 64 GiB");
        out.extend_from_slice(&body);
        out
    }

    /// The plaintext of what [`Seal::seal`] made under the same credentials.
    pub(crate) fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, Unopenable> {
        let (nonce, body) = sealed.split_first_chunk::<NONCE_LEN>().ok_or(Unopenable)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(self.name.as_bytes()),
                &mut body,
            )
            .map_err(|_| Unopenable)?;
        let len = plain.len();
        body.truncate(len);
        Ok(body)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_same_credentials_derive_the_same_name_and_key() {
        let (a, b) = (Seal::derive(b"creds"), Seal::derive(b"creds"));
        assert_eq!(a.name(), b.name());
        assert_eq!(a.token_id("t"), b.token_id("t"));
        assert_eq!(b.open(&a.seal(b"payload")).unwrap(), b"payload");
    }

    #[test]
    fn other_credentials_neither_find_nor_open_the_entry() {
        let (a, b) = (Seal::derive(b"creds"), Seal::derive(b"creds2"));
        assert_ne!(a.name(), b.name());
        assert_ne!(a.token_id("t"), b.token_id("t"));
        assert_eq!(b.open(&a.seal(b"payload")), Err(Unopenable));
    }

    #[test]
    fn a_tampered_or_truncated_entry_does_not_open() {
        let seal = Seal::derive(b"creds");
        let mut sealed = seal.seal(b"payload");
        assert!(!sealed.windows(7).any(|w| w == b"payload"));
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(seal.open(&sealed), Err(Unopenable));
        assert_eq!(seal.open(&sealed[..5]), Err(Unopenable));
    }

    #[test]
    fn names_and_ids_do_not_contain_the_inputs() {
        let seal = Seal::derive(b"client-secret-123");
        assert_eq!(seal.name().len(), 32);
        assert!(!seal.token_id("access-token-xyz").contains("xyz"));
        assert!(!format!("{seal:?}").contains("secret"));
    }
}
