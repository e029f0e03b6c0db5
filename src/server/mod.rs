//! Listeners and connections: accept, serve HTTP/1.1 and h2c, reload, drain on shutdown.
//!
//! [`Sidecar::bind`] builds every upstream (client, token source, metrics) and binds its
//! listener — port 0 works, so tests run the real thing. [`Sidecar::run`] accepts until the
//! shutdown future resolves, then stops accepting and lets in-flight requests finish within
//! `shutdown_grace`. While running it reloads on request (SIGHUP, wired by `main`) and when a
//! `{ file = … }` secret changes (polled every second, so a Kubernetes symlink swap is seen).
//! What happens inside a request is `proxy`'s business; serving a connection is `accept`'s,
//! and what a reload changes is `reload`'s.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::Admin;
use crate::body::BodyLimits;
use crate::client::{self, ClientError, HttpClient, Roots};
use crate::config::{Config, ConfigError, SharedCacheConfig, UpstreamConfig};
use crate::conn::{Slots, Timers};
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::token::{SharedCache, SharedCacheError, TokenCache, TokenError, TokenSource};

mod accept;
mod reload;

use accept::{close, serve, spawn_acceptor, spawn_upstream_acceptor, Guards};
use reload::watch_secret_files;

/// Why the sidecar could not start, or a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what}: cannot listen on {addr}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream `{upstream}`: {source}")]
    Client {
        upstream: String,
        source: ClientError,
    },
    #[error("upstream `{upstream}`: {source}")]
    Token {
        upstream: String,
        source: TokenError,
    },
    #[error("[shared_cache]: {0}")]
    SharedCache(#[from] SharedCacheError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// How many reloads were applied and refused so far; see [`Sidecar::reloads`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadCount {
    pub applied: u64,
    pub refused: u64,
}

/// One upstream by name: what its connections serve, and its listener.
#[derive(Debug)]
struct Slot {
    /// Shared with every open connection, which loads it per request: a reload reaches
    /// keep-alive connections too.
    upstream: Arc<ArcSwap<Upstream>>,
    config: UpstreamConfig,
    client: HttpClient,
    addr: SocketAddr,
    /// Until `run` takes it.
    listener: Option<TcpListener>,
}

/// A sidecar with its listeners bound, ready to [`run`](Sidecar::run).
#[derive(Debug)]
pub struct Sidecar {
    config: Config,
    /// Where a reload reads the configuration from; `None` re-validates `config.text`.
    path: Option<PathBuf>,
    cache: TokenCache,
    roots: Roots,
    metrics: Arc<Metrics>,
    /// `max_connections`, shared by every upstream listener.
    permits: Slots,
    /// `max_buffered` and `body_read_timeout`, shared by every upstream.
    body_limits: Arc<BodyLimits>,
    slots: BTreeMap<String, Slot>,
    admin: Option<Arc<Admin>>,
    /// Until `run` takes it.
    admin_listener: Option<TcpListener>,
    admin_addr: Option<SocketAddr>,
    reloads: watch::Sender<ReloadCount>,
}

impl Sidecar {
    /// Builds every upstream of `config` and binds its listeners.
    pub async fn bind(config: &Config) -> Result<Sidecar, StartError> {
        let metrics = Arc::new(Metrics::default());
        let mut sidecar = Sidecar {
            config: config.clone(),
            path: None,
            cache: TokenCache::default().with_shared(shared_cache(config, &metrics)?),
            roots: Roots::load(),
            permits: Slots::new(config.limits.max_connections, Arc::clone(&metrics)),
            body_limits: Arc::new(BodyLimits::new(
                config.limits.max_buffered,
                config.limits.body_read_timeout,
                Arc::clone(&metrics),
            )),
            metrics,
            slots: BTreeMap::new(),
            admin: None,
            admin_listener: None,
            admin_addr: None,
            reloads: watch::Sender::new(ReloadCount::default()),
        };
        let mut slots = BTreeMap::new();
        for u in &config.upstreams {
            let listener = bind(&format!("upstream `{}`", u.name), u.listen).await?;
            let addr = local_addr(&listener, u.listen)?;
            let (upstream, client) = sidecar.build(&sidecar.cache, u, addr, None)?;
            slots.insert(
                u.name.clone(),
                Slot {
                    upstream: Arc::new(ArcSwap::from_pointee(upstream)),
                    config: u.clone(),
                    client,
                    addr,
                    listener: Some(listener),
                },
            );
        }
        sidecar.slots = slots;
        if let Some(a) = &config.admin {
            let listener = bind("admin", a.listen).await?;
            sidecar.admin_addr = Some(local_addr(&listener, a.listen)?);
            sidecar.admin_listener = Some(listener);
            sidecar.admin = Some(Arc::new(Admin::new(Arc::clone(&sidecar.metrics))));
            sidecar.publish();
        }
        Ok(sidecar)
    }

    /// Reloads re-read this file (SIGHUP); without one they re-read only the secrets.
    pub fn reload_from(mut self, path: PathBuf) -> Sidecar {
        self.path = Some(path);
        self
    }

    /// The address upstream `name` listens on (with port 0 resolved).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.slots.get(name).map(|s| s.addr)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Counts of reloads applied and refused, updated after each attempt: lets a caller wait
    /// for a rotated secret to take effect instead of guessing how long that takes.
    pub fn reloads(&self) -> watch::Receiver<ReloadCount> {
        self.reloads.subscribe()
    }

    /// Serves until `shutdown` resolves, then drains for at most `shutdown_grace`. Reloads when
    /// a `{ file = … }` secret changes. Returns the number of connections cut off.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> usize {
        let (_, never) = mpsc::channel(1);
        self.run_with_reloads(shutdown, never).await
    }

    /// [`run`](Sidecar::run), also reloading whenever `reloads` yields (SIGHUP).
    pub async fn run_with_reloads(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut reloads: mpsc::Receiver<()>,
    ) -> usize {
        let (tx, mut accepted) = mpsc::channel::<Accepted>(64);
        let mut acceptors: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
        for (name, slot) in &mut self.slots {
            // `prefetch`: tokens are obtained while the listeners come up.
            slot.upstream.load().tokens.start();
            if let Some(listener) = slot.listener.take() {
                tracing::info!(upstream = name.as_str(), addr = %slot.addr, "listening");
                let handle = spawn_upstream_acceptor(listener, &slot.upstream, &tx, &self.permits);
                acceptors.insert(name.clone(), handle);
            }
        }
        if let (Some(listener), Some(admin)) = (self.admin_listener.take(), &self.admin) {
            if let Some(addr) = self.admin_addr {
                tracing::info!(%addr, "admin listening");
            }
            let handle =
                spawn_acceptor(listener, Target::Admin(Arc::clone(admin)), tx.clone(), None);
            // Upstream names are never empty, so this key cannot collide.
            acceptors.insert(String::new(), handle);
        }

        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Head timeouts are the watchdog's (`conn`): hyper's timer would run from the previous
        // response and close idle keep-alive connections long before `idle_timeout`.
        builder.http1().header_read_timeout(None);
        // `[limits]` are read once, here: a reload that changes them is told so.
        let limits = Guards {
            timers: Timers {
                first_head: self.config.limits.header_read_timeout,
                idle: self.config.limits.idle_timeout,
            },
            metrics: Arc::clone(&self.metrics),
        };
        let graceful = GracefulShutdown::new();
        // Application connections, reaped as they finish: what is left when a drain runs out
        // is what it cuts off.
        let mut connections = JoinSet::new();
        // Secret files are read off this loop: a hung mount must not stop the accepting.
        let (secrets, watched) = watch::channel(self.file_secrets());
        let (changed_tx, mut changed) = mpsc::channel::<PathBuf>(1);
        let watcher = tokio::spawn(watch_secret_files(watched, changed_tx));
        let mut shutdown = std::pin::pin!(shutdown);
        let mut reloads_open = true;
        loop {
            tokio::select! {
                Some(conn) = accepted.recv() => serve(&builder, &graceful, &mut connections, conn, &limits),
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                signal = reloads.recv(), if reloads_open => match signal {
                    Some(()) => {
                        if self.reload("reload requested", &mut acceptors, &tx).await {
                            let _ = secrets.send(self.file_secrets());
                        }
                    }
                    None => reloads_open = false,
                },
                Some(path) = changed.recv() => {
                    let why = format!("secret file {} changed", path.display());
                    // A refused reload publishes nothing: the watcher then waits for the files
                    // to change again instead of retrying every second.
                    if self.reload(&why, &mut acceptors, &tx).await {
                        let _ = secrets.send(self.file_secrets());
                    }
                }
                () = &mut shutdown => break,
            }
        }
        watcher.abort();
        // Stop accepting first: new connections are refused while old ones drain. Those
        // already accepted but not yet picked up are served like the rest.
        // `abort` only schedules the cancellation: awaiting it closes every listener (and stops
        // every hand-over) before "shutting down" is logged, so a client that saw the line is
        // refused rather than left in a backlog that is about to be reset.
        for (_, acceptor) in acceptors {
            close(acceptor).await;
        }
        while let Ok(conn) = accepted.try_recv() {
            serve(&builder, &graceful, &mut connections, conn, &limits);
        }
        while connections.try_join_next().is_some() {}
        let open = connections.len();
        let grace = self.config.shutdown_grace;
        tracing::info!(open, grace = %humantime::format_duration(grace), "shutting down; draining connections");
        match tokio::time::timeout(grace, graceful.shutdown()).await {
            Ok(()) => {
                tracing::info!("all connections finished; bye");
                0
            }
            Err(_) => {
                // Idle keep-alive connections closed at once; what remains was mid-request.
                while connections.try_join_next().is_some() {}
                let cut_off = connections.len();
                connections.shutdown().await;
                tracing::warn!(
                    cut_off,
                    "grace period over; cutting off connections that are still busy"
                );
                cut_off
            }
        }
    }

    /// Builds the upstream for `u`, reusing what `old` has where the settings allow: its client
    /// (and so its connection pool) and its token source (and so its backoff and refresh
    /// token), when they would come out the same.
    fn build(
        &self,
        cache: &TokenCache,
        u: &UpstreamConfig,
        addr: SocketAddr,
        old: Option<&Slot>,
    ) -> Result<(Upstream, HttpClient), StartError> {
        let same_client = old.is_some_and(|s| {
            s.config.ca_file == u.ca_file && s.config.connect_timeout == u.connect_timeout
        });
        let client = match old {
            Some(slot) if same_client => slot.client.clone(),
            _ => client::build(&self.roots, u.ca_file.as_deref(), u.connect_timeout).map_err(
                |source| StartError::Client {
                    upstream: u.name.clone(),
                    source,
                },
            )?,
        };
        let metrics = self.metrics.upstream(&u.name);
        let tokens = match old.map(|s| s.upstream.load_full()) {
            Some(previous) if same_client && previous.tokens.serves(&u.auth, cache) => {
                Arc::clone(&previous.tokens)
            }
            previous => {
                let source = TokenSource::new(
                    &u.name,
                    &u.auth,
                    cache.clone(),
                    client.clone(),
                    metrics.clone(),
                )
                .map_err(|source| StartError::Token {
                    upstream: u.name.clone(),
                    source,
                })?;
                if let Some(previous) = previous {
                    source.inherit(&previous.tokens);
                }
                Arc::new(source)
            }
        };
        Ok((
            Upstream::new(
                u,
                addr,
                tokens,
                Arc::clone(&self.body_limits),
                client.clone(),
                metrics,
            ),
            client,
        ))
    }

    /// Tells the admin endpoints which upstreams (and which shared cache) exist now.
    fn publish(&self) {
        if let Some(admin) = &self.admin {
            admin.set_shared_cache(self.cache.shared().cloned());
            admin.set_upstreams(
                self.slots
                    .values()
                    .map(|s| s.upstream.load_full())
                    .collect(),
            );
        }
    }
}

/// The shared cache `config` asks for. It connects lazily: Redis being down delays nothing.
fn shared_cache(
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<Arc<SharedCache>>, SharedCacheError> {
    config
        .shared_cache
        .as_ref()
        .map(|c| SharedCache::new(c, metrics.shared_cache()))
        .transpose()
}

/// Whether two `[shared_cache]` sections connect to the same place in the same way.
fn same_shared_cache(a: Option<&SharedCacheConfig>, b: Option<&SharedCacheConfig>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.url.value == b.url.value && a.key_prefix == b.key_prefix && a.timeout == b.timeout
        }
        _ => false,
    }
}

/// The listen backlog: connections beyond `max_connections` wait there, handshake done, for a
/// free slot. The kernel caps it at `net.core.somaxconn` (4096 by default since Linux 5.4);
/// `TcpListener::bind` would ask for 128.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // As `TcpListener::bind` does: a restart can rebind while old connections linger in
        // TIME_WAIT (on Windows it would allow stealing a port in use).
        #[cfg(not(windows))]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| StartError::Bind {
        what: what.to_owned(),
        addr,
        source,
    })
}

fn local_addr(listener: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what: "listener".into(),
        addr: asked,
        source,
    })
}

/// What an accepted connection is for.
#[derive(Clone)]
enum Target {
    Upstream(Arc<ArcSwap<Upstream>>),
    Admin(Arc<Admin>),
}

/// An accepted connection, what it is for, and (for an application connection) its place
/// under `max_connections`.
type Accepted = (TcpStream, Target, Option<OwnedSemaphorePermit>);
