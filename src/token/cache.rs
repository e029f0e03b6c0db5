//! The token cache: one moka cache for every upstream, keyed by upstream and credential
//! fingerprint, evicting tokens a while after they stop being used.
//!
//! Only storage and keys live here; when to fetch, refresh or drop a token is `source`'s call.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use moka::Expiry;
use tokio::time::Instant;

use super::shared::SharedCache;
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
    /// `[shared_cache]`: where replicas share tokens. The moka cache stays the hot path.
    pub(super) shared: Option<Arc<SharedCache>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.cache.entry_count())
            .field("shared", &self.shared)
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
            shared: None,
        }
    }
}

impl TokenCache {
    /// The same local cache, sharing tokens through `shared` (or no longer, with `None`).
    pub fn with_shared(&self, shared: Option<Arc<SharedCache>>) -> TokenCache {
        TokenCache {
            shared,
            ..self.clone()
        }
    }

    /// The shared cache, if this process has one.
    pub fn shared(&self) -> Option<&Arc<SharedCache>> {
        self.shared.as_ref()
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

/// A hash of everything that decides which token the endpoint hands out, keyed per process.
pub(super) fn fingerprint(flow: &Flow, hasher: &RandomState) -> u64 {
    hasher.hash_one(credentials(flow))
}

/// Everything that decides which token the endpoint hands out (flow, endpoint, every
/// credential, scope and extra parameters) as one unambiguous byte string: each field is
/// length-prefixed, so no two configurations can run together into the same bytes. The same
/// credentials give the same bytes in every process, which is what lets replicas find one
/// another's tokens in the shared cache (and derive the key that seals them).
pub(super) fn credentials(flow: &Flow) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    field(flow.kind().name().as_bytes());
    match flow {
        Flow::ClientCredentials(c) => {
            field(c.token_url.to_string().as_bytes());
            client(&c.client, &mut field);
            params(&c.scope, &c.extra_params, &mut field);
        }
        Flow::Password(p) => {
            field(p.token_url.to_string().as_bytes());
            field(p.username.value.expose().as_bytes());
            field(p.password.value.expose().as_bytes());
            field(
                p.totp_secret
                    .as_ref()
                    .map_or("\0none", |t| t.value.expose())
                    .as_bytes(),
            );
            match &p.client {
                Some(c) => client(c, &mut field),
                None => field(b"\0none"),
            }
            params(&p.scope, &p.extra_params, &mut field);
        }
        Flow::NexusHub(n) => {
            field(n.auth_url.to_string().as_bytes());
            field(n.user_key.value.expose().as_bytes());
            field(n.user_secret.value.expose().as_bytes());
        }
        Flow::Static(t) => field(t.value.expose().as_bytes()),
        Flow::None => {}
    }
    out
}

fn client(c: &crate::config::Client, field: &mut dyn FnMut(&[u8])) {
    field(c.id.value.expose().as_bytes());
    field(c.secret.value.expose().as_bytes());
    field(&[c.auth as u8]);
}

/// Scope and extra parameters; last in every flow that has them, so the list needs no count.
fn params(scope: &Option<String>, extra: &[(String, String)], field: &mut dyn FnMut(&[u8])) {
    field(scope.as_deref().unwrap_or("\0none").as_bytes());
    for (k, v) in extra {
        field(k.as_bytes());
        field(v.as_bytes());
    }
}
