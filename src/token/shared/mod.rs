//! The shared token cache: replicas with the same credentials share one token through Redis.
//!
//! - `seal`: the entry's name, its AEAD key and token ids, all derived from the credentials.
//! - `entry`: what an entry holds (token, refresh token, the fleet's history) and its wire
//!   form.
//! - `redis`: the Lua scripts (acquire the lock, drop a rejected token, release, publish).
//!
//! [`SharedCache`] is the process's one connection to Redis. It is consulted only when a
//! token request is due: the hot path reads the local moka cache and never touches Redis.
//! Every operation is bounded by `[shared_cache] timeout`; after a failure Redis is left alone
//! for a while (each token request then goes to the endpoint directly, as without a shared
//! cache), and the outage is logged once when it begins and once when it ends.
//!
//! Writes are announced on one Pub/Sub channel per key prefix, carrying only the entry's name.
//! Replicas waiting for another's token request wake on it instead of polling, and idle ones
//! pick the new token up before a request needs it.

mod entry;
mod redis;
mod seal;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisError, Value};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

pub(crate) use entry::{Entry, Fields};
pub(crate) use redis::{acquire, publish, read, release, Acquired, Keys};
pub(crate) use seal::Seal;

use crate::config::SharedCacheConfig;
use crate::metrics::SharedCacheMetrics;

/// After a failed operation, Redis is left alone this long at first...
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// ...doubling up to this while it keeps failing.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Entries outlive their tokens by this much: the refresh token and the fleet's backoff stay
/// useful while the fleet is idle.
pub(crate) const ENTRY_TTL: Duration = Duration::from_secs(24 * 3600);

/// The process's connection to the shared cache. Cheap to share (`Arc`).
pub struct SharedCache {
    client: ::redis::Client,
    prefix: String,
    channel: String,
    timeout: Duration,
    health: Mutex<Health>,
    /// Wakes the maintenance task after a failure, and when this is dropped.
    failed: Arc<Notify>,
    listeners: Arc<Listeners>,
    metrics: SharedCacheMetrics,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("prefix", &self.prefix)
            .field("state", &self.state())
            .finish()
    }
}

/// Whether Redis answers, as this process last found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedState {
    /// Nothing asked of it yet.
    Connecting,
    Up,
    /// Failing since this long ago; each replica uses its own tokens meanwhile.
    Down {
        for_seconds: u64,
    },
}

impl SharedState {
    pub fn name(self) -> &'static str {
        match self {
            SharedState::Connecting => "connecting",
            SharedState::Up => "up",
            SharedState::Down { .. } => "down",
        }
    }
}

/// What this process knows of Redis, and the connection it uses.
struct Health {
    state: Phase,
    /// Replaced by a fresh one after every failure (see [`SharedCache::failed`]).
    conn: ConnectionManager,
    /// Counts replacements: the outcome of an operation on a replaced connection is stale,
    /// and changes nothing (a subscription made on it died with it).
    generation: u64,
    /// The channel is subscribed on `conn`.
    subscribed: bool,
    /// Redis answers again after an outage that began then (and was last retried after this
    /// delay); the outage ends, and is logged as ended, once the channel is subscribed again
    /// on the new connection.
    recovering: Option<(Instant, Duration)>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Connecting,
    Up,
    Down {
        since: Instant,
        next_try: Instant,
        delay: Duration,
    },
}

/// Why an operation on the shared cache did not happen. Never carries the URL.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SharedCacheError {
    #[error("the shared cache's url is not a usable Redis URL")]
    BadUrl,
    #[error("Redis did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("Redis is unreachable; not asked again for now")]
    Resting,
    #[error("Redis failed ({kind}): {message}")]
    Redis { kind: &'static str, message: String },
}

impl SharedCacheError {
    /// A fixed word for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            SharedCacheError::BadUrl => "config",
            SharedCacheError::Timeout(_) => "timeout",
            SharedCacheError::Resting => "resting",
            SharedCacheError::Redis { kind, .. } => kind,
        }
    }
}

impl From<RedisError> for SharedCacheError {
    fn from(e: RedisError) -> Self {
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connection_refusal() || e.is_io_error() || e.is_connection_dropped() {
            "connection"
        } else if e.kind() == ::redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
        {
            "auth"
        } else {
            "response"
        };
        SharedCacheError::Redis {
            kind,
            message: e.to_string(),
        }
    }
}

/// Who waits for news of which entry.
#[derive(Debug, Default)]
struct Listeners(Mutex<HashMap<String, watch::Sender<()>>>);

impl Listeners {
    fn subscribe(&self, name: &str) -> watch::Receiver<()> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, sender| sender.receiver_count() > 0);
        map.entry(name.to_owned())
            .or_insert_with(|| watch::Sender::new(()))
            .subscribe()
    }

    fn notify(&self, name: &str) {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = map.get(name) {
            sender.send_replace(());
        }
    }

    /// A push from Redis: a `message` on our channel names an entry that changed.
    fn push(&self, push: PushInfo) {
        if push.kind != PushKind::Message {
            return;
        }
        if let Some(Value::BulkString(name)) = push.data.get(1) {
            if let Ok(name) = std::str::from_utf8(name) {
                self.notify(name);
            }
        }
    }
}

impl SharedCache {
    /// Prepares the connection; connects lazily, so a Redis that is down at start-up delays
    /// nothing. Fails only on a URL that cannot be used.
    pub fn new(
        config: &SharedCacheConfig,
        metrics: SharedCacheMetrics,
    ) -> Result<Arc<SharedCache>, SharedCacheError> {
        let mut info = config
            .url
            .value
            .expose()
            .into_connection_info()
            .map_err(|_| SharedCacheError::BadUrl)?;
        // RESP3 lets one connection carry commands and the Pub/Sub pushes both.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        info = info.set_redis_settings(settings);
        let client = ::redis::Client::open(info).map_err(|_| SharedCacheError::BadUrl)?;
        let listeners = Arc::new(Listeners::default());
        let conn =
            connect(&client, config.timeout, &listeners).map_err(|_| SharedCacheError::BadUrl)?;
        let cache = Arc::new(SharedCache {
            client,
            channel: format!("{}:changed", config.key_prefix),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            health: Mutex::new(Health {
                state: Phase::Connecting,
                conn,
                generation: 0,
                subscribed: false,
                recovering: None,
            }),
            failed: Arc::new(Notify::new()),
            listeners,
            metrics,
        });
        tokio::spawn(maintain(Arc::downgrade(&cache), Arc::clone(&cache.failed)));
        Ok(cache)
    }

    /// The Redis names of the entry `seal` names.
    pub(crate) fn keys(&self, seal: &Seal) -> Keys {
        Keys::new(&self.prefix, seal.name())
    }

    /// How long one operation may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The channel writes are announced on.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// Wakes when the entry `name` is written by any replica.
    pub(crate) fn watch(&self, name: &str) -> watch::Receiver<()> {
        self.listeners.subscribe(name)
    }

    pub(crate) fn metrics(&self) -> &SharedCacheMetrics {
        &self.metrics
    }

    pub fn state(&self) -> SharedState {
        match self.health().state {
            Phase::Connecting => SharedState::Connecting,
            Phase::Up => SharedState::Up,
            Phase::Down { since, .. } => SharedState::Down {
                for_seconds: since.elapsed().as_secs(),
            },
        }
    }

    /// One round trip, for `check`.
    pub async fn ping(&self) -> Result<(), SharedCacheError> {
        self.run(|mut conn| async move {
            ::redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
        })
        .await
    }

    /// Runs one operation within the timeout, unless Redis is resting after a failure. Every
    /// failure is counted; the first of an outage is logged.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, SharedCacheError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.run_on(op).await.1
    }

    /// [`run`](Self::run), and the generation of the connection it ran on.
    async fn run_on<T, F, Fut>(&self, op: F) -> (u64, Result<T, SharedCacheError>)
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let Some((generation, conn)) = self.admit(Instant::now()) else {
            return (u64::MAX, Err(SharedCacheError::Resting));
        };
        let result = match tokio::time::timeout(self.timeout, op(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(SharedCacheError::from(e)),
            Err(_) => Err(SharedCacheError::Timeout(self.timeout)),
        };
        match &result {
            Ok(_) => self.succeeded(generation),
            Err(e) => self.failed(generation, e),
        }
        (generation, result)
    }

    /// The connection to try Redis on now: always while it is up; once per retry delay while
    /// it is down, so an outage costs one timeout per delay, not one per token request.
    fn admit(&self, now: Instant) -> Option<(u64, ConnectionManager)> {
        let mut health = self.health();
        if let Phase::Down {
            next_try, delay, ..
        } = &mut health.state
        {
            if now < *next_try {
                return None;
            }
            *next_try = now + *delay;
        }
        Some((health.generation, health.conn.clone()))
    }

    fn succeeded(&self, generation: u64) {
        let mut health = self.health();
        if generation != health.generation {
            return;
        }
        if let Phase::Down { since, delay, .. } = health.state {
            health.recovering = Some((since, delay));
        }
        health.state = Phase::Up;
    }

    /// Counts the failure; on the current connection, also logs the first of an outage,
    /// rests Redis and replaces the connection: the redis crate reconnects by itself only
    /// after an I/O error, so a connection whose handshake was refused (a rotated password,
    /// not yet in Redis) or that timed out would otherwise stay broken for good. The new one
    /// subscribes again.
    fn failed(&self, generation: u64, error: &SharedCacheError) {
        self.metrics.error(error.kind());
        let now = Instant::now();
        let mut health = self.health();
        if generation != health.generation {
            return;
        }
        if let Ok(fresh) = connect(&self.client, self.timeout, &self.listeners) {
            health.conn = fresh;
            health.generation += 1;
        }
        // An outage goes on (Redis may have answered, but the channel was not subscribed
        // again yet) with a longer delay, or begins.
        let (since, delay) = match (health.state, health.recovering.take()) {
            (Phase::Down { since, delay, .. }, _) | (Phase::Up, Some((since, delay))) => {
                (since, (delay * 2).min(MAX_RETRY))
            }
            (Phase::Connecting, _) | (Phase::Up, None) => {
                tracing::warn!(
                    error = %error,
                    "shared cache unavailable: each replica obtains its own tokens until it returns"
                );
                (now, FIRST_RETRY)
            }
        };
        health.state = Phase::Down {
            since,
            next_try: now + delay,
            delay,
        };
        health.subscribed = false;
        drop(health);
        self.failed.notify_one();
    }

    /// The channel was subscribed on the connection of `generation`: if that is still the
    /// one in use, an outage ends here.
    fn subscribed(&self, generation: u64) {
        let mut health = self.health();
        if generation != health.generation {
            return;
        }
        health.subscribed = true;
        if let Some((since, _)) = health.recovering.take() {
            tracing::info!(
                down_for_seconds = since.elapsed().as_secs(),
                "shared cache is back: replicas share tokens again"
            );
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A lazy connection: nothing is sent until the first operation. Its pushes (announcements on
/// the channel) go to `listeners`.
fn connect(
    client: &::redis::Client,
    timeout: Duration,
    listeners: &Arc<Listeners>,
) -> Result<ConnectionManager, RedisError> {
    let pushes = Arc::clone(listeners);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_push_sender(move |push: PushInfo| {
            pushes.push(push);
            Ok::<(), ()>(())
        })
        .set_automatic_resubscription();
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

impl Drop for SharedCache {
    fn drop(&mut self) {
        // Ends the maintenance task.
        self.failed.notify_one();
    }
}

/// Subscribes to the channel (again, after an outage), and probes a Redis that is down so
/// that `/status` and the next token request find it back. Holds only a weak reference.
async fn maintain(cache: Weak<SharedCache>, failed: Arc<Notify>) {
    loop {
        let Some(this) = cache.upgrade() else { return };
        let (subscribed, wait) = {
            let health = this.health();
            let wait = match health.state {
                Phase::Down { next_try, .. } => Some(next_try),
                Phase::Connecting | Phase::Up => None,
            };
            (health.subscribed, wait)
        };
        if let Some(next_try) = wait {
            drop(this);
            tokio::time::sleep_until(next_try).await;
            let Some(this) = cache.upgrade() else { return };
            let _ = this.ping().await;
            continue;
        }
        if !subscribed {
            let channel = this.channel.clone();
            let (generation, result) = this
                .run_on(|mut conn| async move { conn.subscribe(channel).await })
                .await;
            // Subscribed once, the connection manager subscribes again after reconnecting.
            if result.is_ok() {
                this.subscribed(generation);
            }
            continue;
        }
        drop(this);
        failed.notified().await;
    }
}
