//! The shared token cache's metrics: what each upstream's token requests did with it, and the
//! Redis failures by kind.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The `event` label of `shared_cache_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedEvent {
    /// A token (or the fleet's backoff) came from the shared cache: no token request.
    Hit,
    /// This replica made the token request for the fleet.
    Miss,
    /// Another replica held the lock; this one waited for its result.
    LockWait,
    /// The lock holder's result did not come before its lock expired.
    LockTimeout,
    /// Redis failed: the token request was made for this replica alone.
    Fallback,
}

impl SharedEvent {
    pub(super) const ALL: [SharedEvent; 5] = [
        SharedEvent::Hit,
        SharedEvent::Miss,
        SharedEvent::LockWait,
        SharedEvent::LockTimeout,
        SharedEvent::Fallback,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            SharedEvent::Hit => "hit",
            SharedEvent::Miss => "miss",
            SharedEvent::LockWait => "lock_wait",
            SharedEvent::LockTimeout => "lock_timeout",
            SharedEvent::Fallback => "fallback",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabel {
    pub(super) kind: &'static str,
}

/// `shared_cache_errors_total{kind}`: Redis operations that failed, by kind (timeout,
/// connection, auth, response, resting: skipped while Redis rests after a failure).
#[derive(Debug, Clone, Default)]
pub struct SharedCacheMetrics(pub(super) Family<KindLabel, Counter>);

impl SharedCacheMetrics {
    pub fn error(&self, kind: &'static str) {
        self.0.get_or_create(&KindLabel { kind }).inc();
    }
}
