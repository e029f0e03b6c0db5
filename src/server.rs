//! Listeners and connections: accept, serve HTTP/1.1 and h2c, reload, drain on shutdown.
//!
//! [`Sidecar::bind`] builds every upstream (client, token source, metrics) and binds its
//! listener — port 0 works, so tests run the real thing. [`Sidecar::run`] accepts until the
//! shutdown future resolves, then stops accepting and lets in-flight requests finish within
//! `shutdown_grace`. While running it reloads on request (SIGHUP, wired by `main`) and when a
//! `{ file = … }` secret changes (polled every second, so a Kubernetes symlink swap is seen).
//! What happens inside a request is `proxy`'s business; what a reload changes is `reload`'s.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::{self, Admin};
use crate::body::BodyLimits;
use crate::client::{self, ClientError, HttpClient, Roots};
use crate::config::{Config, ConfigError, UpstreamConfig};
use crate::conn::{self, Activity, Slots, Timers, Tracked};
use crate::metrics::{Limit, Metrics};
use crate::proxy::{self, Upstream};
use crate::secret::{LoadedSecret, Secret};
use crate::token::{TokenCache, TokenError, TokenSource};

/// A client that sends no complete request head within this is disconnected.
/// After a failed `accept` (out of file descriptors, say), wait this long before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How often `{ file = … }` secrets are compared with the values in use.
const SECRET_POLL: Duration = Duration::from_secs(1);

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
            cache: TokenCache::default(),
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
            let (upstream, client) = sidecar.build(u, addr, None)?;
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
                let handle = spawn_acceptor(
                    listener,
                    Target::Upstream(Arc::clone(&slot.upstream)),
                    tx.clone(),
                    Some(self.permits.clone()),
                );
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
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.limits.header_read_timeout);
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

    /// The `{ file = … }` secrets in use, with their values, for the watcher.
    fn file_secrets(&self) -> Vec<LoadedSecret> {
        self.config.file_secrets().into_iter().cloned().collect()
    }

    /// Loads the configuration again and applies it; a configuration that fails validation or
    /// cannot be bound is refused and the running one stays.
    async fn reload(
        &mut self,
        why: &str,
        acceptors: &mut BTreeMap<String, JoinHandle<()>>,
        tx: &mpsc::Sender<Accepted>,
    ) -> bool {
        // Reading the file and every secret is blocking I/O: keep it off the accept loop.
        let (path, text) = (self.path.clone(), self.config.text.clone());
        let loaded = tokio::task::spawn_blocking(move || match path {
            Some(path) => Config::load(&path),
            None => Config::from_toml(text.as_str()),
        })
        .await;
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                // Only a panic or a runtime shutting down gets here: nothing was loaded.
                tracing::error!(reason = why, %error, "reload refused: the configuration could not be read");
                self.reloads.send_modify(|c| c.refused += 1);
                return false;
            }
        };
        let outcome = match loaded {
            Ok(config) => self.apply(config, acceptors, tx).await,
            Err(e) => Err(StartError::Config(e)),
        };
        match outcome {
            Ok(summary) => {
                tracing::info!(reason = why, %summary, "configuration reloaded");
                self.reloads.send_modify(|c| c.applied += 1);
                true
            }
            Err(error) => {
                tracing::error!(reason = why, %error, "reload refused; the running configuration stays");
                self.reloads.send_modify(|c| c.refused += 1);
                false
            }
        }
    }

    /// Switches to `config`: everything that can fail happens before anything changes.
    async fn apply(
        &mut self,
        config: Config,
        acceptors: &mut BTreeMap<String, JoinHandle<()>>,
        tx: &mpsc::Sender<Accepted>,
    ) -> Result<String, StartError> {
        if config.admin.as_ref().map(|a| a.listen) != self.config.admin.as_ref().map(|a| a.listen) {
            tracing::warn!("a change of [admin] listen takes effect at the next restart");
        }
        // Prepare: listeners for new or moved upstreams, then the upstreams themselves.
        let mut prepared = Vec::new();
        for u in &config.upstreams {
            let old = self.slots.get(&u.name);
            let listener = match old {
                Some(slot) if slot.config.listen == u.listen => None,
                _ => Some(bind(&format!("upstream `{}`", u.name), u.listen).await?),
            };
            let addr = match (&listener, old) {
                (Some(l), _) => local_addr(l, u.listen)?,
                (None, Some(slot)) => slot.addr,
                (None, None) => u.listen,
            };
            let (upstream, client) = self.build(u, addr, old)?;
            prepared.push((u.clone(), upstream, client, listener, addr));
        }
        // Commit.
        let mut added = 0;
        let mut changed = 0;
        let names: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
        for (u, upstream, client, listener, addr) in prepared {
            let name = u.name.clone();
            match self.slots.get_mut(&name) {
                Some(slot) => {
                    let successor = Arc::clone(&upstream.tokens);
                    let previous = slot.upstream.swap(Arc::new(upstream));
                    if !Arc::ptr_eq(&previous.tokens, &successor) {
                        previous.tokens.retire(Some(&successor));
                        successor.start();
                    }
                    slot.config = u;
                    slot.client = client;
                    if let Some(listener) = listener {
                        tracing::info!(upstream = name.as_str(), from = %slot.addr, to = %addr, "listener moved");
                        slot.addr = addr;
                        let handle = spawn_acceptor(
                            listener,
                            Target::Upstream(Arc::clone(&slot.upstream)),
                            tx.clone(),
                            Some(self.permits.clone()),
                        );
                        if let Some(old) = acceptors.insert(name, handle) {
                            close(old).await;
                        }
                    }
                    changed += 1;
                }
                None => {
                    upstream.tokens.start();
                    let slot = Slot {
                        upstream: Arc::new(ArcSwap::from_pointee(upstream)),
                        config: u,
                        client,
                        addr,
                        listener: None,
                    };
                    if let Some(listener) = listener {
                        tracing::info!(upstream = name.as_str(), %addr, "listening");
                        let handle = spawn_acceptor(
                            listener,
                            Target::Upstream(Arc::clone(&slot.upstream)),
                            tx.clone(),
                            Some(self.permits.clone()),
                        );
                        acceptors.insert(name.clone(), handle);
                    }
                    self.slots.insert(name, slot);
                    added += 1;
                }
            }
        }
        let removed: Vec<String> = self
            .slots
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in &removed {
            if let Some(slot) = self.slots.remove(name) {
                let last = slot.upstream.load();
                last.tokens.retire(None);
                // Its open keep-alive connections must not go on using removed credentials.
                last.remove();
                self.metrics.forget(name);
            }
            if let Some(acceptor) = acceptors.remove(name) {
                close(acceptor).await;
            }
            tracing::info!(
                upstream = name.as_str(),
                "upstream removed; its listener is closed"
            );
        }
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        self.config = config;
        self.publish();
        Ok(format!(
            "{changed} kept, {added} added, {} removed",
            removed.len()
        ))
    }

    /// Builds the upstream for `u`, reusing what `old` has where the settings allow: its client
    /// (and so its connection pool) and its token source (and so its backoff and refresh
    /// token), when they would come out the same.
    fn build(
        &self,
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
            Some(previous) if same_client && previous.tokens.serves(&u.auth) => {
                Arc::clone(&previous.tokens)
            }
            previous => {
                let source = TokenSource::new(
                    &u.name,
                    &u.auth,
                    self.cache.clone(),
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

    /// Tells the admin endpoints which upstreams exist now.
    fn publish(&self) {
        if let Some(admin) = &self.admin {
            admin.set_upstreams(
                self.slots
                    .values()
                    .map(|s| s.upstream.load_full())
                    .collect(),
            );
        }
    }
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
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

/// Compares the `{ file = … }` secrets in use with their files every [`SECRET_POLL`] and names
/// the first that changed. It says so once per new content: a reload that is refused is not
/// retried until the files change again, and a new configuration (a new `in_use`) starts over.
async fn watch_secret_files(
    mut in_use: watch::Receiver<Vec<LoadedSecret>>,
    changed: mpsc::Sender<PathBuf>,
) {
    let mut tick = tokio::time::interval(SECRET_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Option<Vec<Option<Secret>>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Ok(()) = in_use.changed() => {
                reported = None;
                continue;
            }
        }
        let secrets = in_use.borrow_and_update().clone();
        let Ok((first, contents)) = tokio::task::spawn_blocking(move || read_files(&secrets)).await
        else {
            continue;
        };
        let Some(path) = first else { continue };
        if reported.as_ref() != Some(&contents) {
            if changed.send(path).await.is_err() {
                return;
            }
            reported = Some(contents);
        }
    }
}

/// What each secret file holds now (unreadable ones as `None`), and the first that differs from
/// the value in use. A file briefly missing mid-swap is not a change yet.
fn read_files(secrets: &[LoadedSecret]) -> (Option<PathBuf>, Vec<Option<Secret>>) {
    let contents: Vec<Option<Secret>> = secrets.iter().map(|s| s.source.resolve().ok()).collect();
    let first = secrets
        .iter()
        .zip(&contents)
        .find(|(s, now)| now.as_ref().is_some_and(|v| *v != s.value))
        .and_then(|(s, _)| s.source.file().map(PathBuf::from));
    (first, contents)
}

/// Stops an acceptor and waits until its listener is closed, so that a reload that reports
/// an upstream removed has really freed its port.
async fn close(acceptor: JoinHandle<()>) {
    acceptor.abort();
    let _ = acceptor.await;
}

/// Accepts connections for `target`; an application listener takes a permit first, so beyond
/// `max_connections` new connections wait in the kernel's backlog.
fn spawn_acceptor(
    listener: TcpListener,
    target: Target,
    tx: mpsc::Sender<Accepted>,
    permits: Option<Slots>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let permit = match &permits {
                Some(permits) => Some(permits.acquire().await),
                None => None,
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    if tx.send((stream, target.clone(), permit)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    })
}

/// The `[limits]` every application connection is held to, with where to count them.
struct Guards {
    timers: Timers,
    metrics: Arc<Metrics>,
}

fn serve(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    connections: &mut JoinSet<()>,
    (stream, target, permit): Accepted,
    guards: &Guards,
) {
    let accepted = tokio::time::Instant::now();
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    match target {
        Target::Upstream(slot) => {
            let open = slot.load().metrics.connection();
            let activity = Arc::new(Activity::default());
            let service = {
                let activity = Arc::clone(&activity);
                service_fn(move |request| {
                    let in_flight = activity.request();
                    let upstream = slot.load_full();
                    async move {
                        let response = proxy::handle(upstream, request).await?;
                        Ok::<_, std::convert::Infallible>(
                            response.map(|body| Tracked::new(body, in_flight)),
                        )
                    }
                })
            };
            let connection = graceful.watch(builder.serve_connection(io, service).into_owned());
            let (timers, metrics) = (guards.timers, Arc::clone(&guards.metrics));
            connections.spawn(async move {
                tokio::select! {
                    result = connection => if let Err(error) = result {
                        if is_header_timeout(&*error) {
                            metrics.limit_hit(Limit::HeaderReadTimeout);
                        }
                        tracing::debug!(%error, "connection ended with an error");
                    },
                    limit = conn::watchdog(&activity, accepted, timers) => {
                        // Dropping the connection closes it: nothing is in flight.
                        metrics.limit_hit(limit);
                        tracing::debug!(limit = limit.label(), "connection closed");
                    }
                }
                drop(open);
                drop(permit);
            });
        }
        Target::Admin(admin) => {
            let service = service_fn(move |request| admin::handle(Arc::clone(&admin), request));
            let connection = builder.serve_connection(io, service).into_owned();
            // Admin connections are not drained: probes must not hold up a shutdown.
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    }
}

/// Whether a connection ended because hyper's `header_read_timeout` ran out (a later head on
/// an HTTP/1.1 keep-alive connection; the first one is the watchdog's).
fn is_header_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
}
