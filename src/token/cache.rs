//! The token cache: one moka cache for every upstream, keyed by upstream and credential
//! fingerprint, evicting tokens a while after they stop being used.
//!
//! Only storage and keys live here; when to fetch, refresh or drop a token is `source`'s call.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use moka::Expiry;
use tokio::time::Instant;

use super::Token;
use crate::config::Flow;

/// How long a token stays in the cache past the instant it stops being used; only a memory
/// bound, since every read checks liveness itself.
const CACHE_GRACE: Duration = Duration::from_secs(60);
/// Upper bound on cached tokens (one live key per upstream, plus retired fingerprints).
const CACHE_CAPACITY: u64 = 10_000;

/// The process-wide token cache shared by every upstream. Cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    pub(super) cache: moka::sync::Cache<TokenKey, Arc<Token>>,
    /// Randomly keyed per process, so fingerprints reveal nothing outside it.
    pub(super) hasher: RandomState,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(UntilRetired)
                .build(),
            hasher: RandomState::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct TokenKey {
    pub(super) upstream: Arc<str>,
    pub(super) fingerprint: u64,
}

/// Evicts a token [`CACHE_GRACE`] after it stops being used.
struct UntilRetired;

impl UntilRetired {
    fn ttl(token: &Token) -> Duration {
        token.expires_at.saturating_duration_since(Instant::now()) + CACHE_GRACE
    }
}

impl Expiry<TokenKey, Arc<Token>> for UntilRetired {
    fn expire_after_create(
        &self,
        _: &TokenKey,
        token: &Arc<Token>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Self::ttl(token))
    }

    fn expire_after_update(
        &self,
        _: &TokenKey,
        token: &Arc<Token>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Self::ttl(token))
    }
}

/// A hash of everything that decides which token the endpoint hands out: flow, endpoint,
/// every credential, scope and extra parameters.
pub(super) fn fingerprint(flow: &Flow, hasher: &RandomState) -> u64 {
    let mut h = hasher.build_hasher();
    flow.kind().name().hash(&mut h);
    match flow {
        Flow::ClientCredentials(c) => {
            c.token_url.hash(&mut h);
            hash_client(&c.client, &mut h);
            (&c.scope, &c.extra_params).hash(&mut h);
        }
        Flow::Password(p) => {
            p.token_url.hash(&mut h);
            for s in [&p.username, &p.password] {
                s.value.expose().hash(&mut h);
            }
            p.totp_secret
                .as_ref()
                .map(|t| t.value.expose())
                .hash(&mut h);
            if let Some(c) = &p.client {
                hash_client(c, &mut h);
            }
            (&p.scope, &p.extra_params).hash(&mut h);
        }
        Flow::NexusHub(n) => {
            n.auth_url.hash(&mut h);
            n.user_key.value.expose().hash(&mut h);
            n.user_secret.value.expose().hash(&mut h);
        }
        Flow::Static(t) => t.value.expose().hash(&mut h),
        Flow::None => {}
    }
    h.finish()
}

fn hash_client(c: &crate::config::Client, h: &mut impl Hasher) {
    c.id.value.expose().hash(h);
    c.secret.value.expose().hash(h);
    (c.auth as u8).hash(h);
}
