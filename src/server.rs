//! Listeners and connections: accept, serve HTTP/1.1 and h2c, drain on shutdown.
//!
//! [`Sidecar::bind`] builds every upstream (client, token source) and binds its listener —
//! port 0 works, so tests run the real thing. [`Sidecar::run`] accepts until the shutdown
//! future resolves, then stops accepting and lets in-flight requests finish within a grace
//! period. What happens inside a request is `proxy`'s business.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::client::{self, ClientError, Roots};
use crate::config::Config;
use crate::proxy::{self, Upstream};
use crate::token::{TokenCache, TokenError, TokenSource};

pub use crate::config::DEFAULT_SHUTDOWN_GRACE;
/// A client that sends no complete request head within this is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed `accept` (out of file descriptors, say), wait this long before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("upstream `{upstream}`: cannot listen on {addr}: {source}")]
    Bind {
        upstream: String,
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
}

/// A sidecar with its listeners bound, ready to [`run`](Sidecar::run).
#[derive(Debug)]
pub struct Sidecar {
    bound: Vec<(Arc<Upstream>, TcpListener)>,
}

impl Sidecar {
    /// Builds every upstream of `config` and binds its listener.
    pub async fn bind(config: &Config) -> Result<Sidecar, StartError> {
        let roots = Roots::load();
        let cache = TokenCache::default();
        let mut bound = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            let client = client::build(&roots, u.ca_file.as_deref(), u.connect_timeout).map_err(
                |source| StartError::Client {
                    upstream: u.name.clone(),
                    source,
                },
            )?;
            let tokens = TokenSource::new(&u.name, &u.auth, cache.clone(), client.clone())
                .map_err(|source| StartError::Token {
                    upstream: u.name.clone(),
                    source,
                })?;
            let listener =
                TcpListener::bind(u.listen)
                    .await
                    .map_err(|source| StartError::Bind {
                        upstream: u.name.clone(),
                        addr: u.listen,
                        source,
                    })?;
            let local = listener.local_addr().map_err(|source| StartError::Bind {
                upstream: u.name.clone(),
                addr: u.listen,
                source,
            })?;
            let upstream = Upstream::new(u, local, Arc::new(tokens), client);
            bound.push((Arc::new(upstream), listener));
        }
        Ok(Sidecar { bound })
    }

    /// The address upstream `name` listens on (with port 0 resolved).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|(u, _)| &*u.name == name)
            .and_then(|(_, l)| l.local_addr().ok())
    }

    /// The upstream called `name`.
    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.bound
            .iter()
            .find(|(u, _)| &*u.name == name)
            .map(|(u, _)| Arc::clone(u))
    }

    /// Serves until `shutdown` resolves, then drains for at most `grace`. Returns the number of
    /// connections that were still open when the grace period ran out.
    pub async fn run(self, shutdown: impl Future<Output = ()>, grace: Duration) -> usize {
        let (tx, mut accepted) = mpsc::channel::<(TcpStream, Arc<Upstream>)>(64);
        let mut acceptors = tokio::task::JoinSet::new();
        for (upstream, listener) in self.bound {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(upstream = &*upstream.name, %addr, "listening");
            }
            acceptors.spawn(accept(listener, upstream, tx.clone()));
        }
        drop(tx);

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                Some((stream, upstream)) = accepted.recv() => {
                    serve(&builder, &graceful, stream, upstream);
                }
                () = &mut shutdown => break,
            }
        }
        // Stop accepting first: new connections are refused while old ones drain.
        acceptors.shutdown().await;
        let open = graceful.count();
        tracing::info!(open, grace = %humantime::format_duration(grace), "shutting down; draining connections");
        match tokio::time::timeout(grace, graceful.shutdown()).await {
            Ok(()) => 0,
            Err(_) => {
                tracing::warn!(
                    open,
                    "grace period over; closing connections that are still busy"
                );
                open
            }
        }
    }
}

async fn accept(
    listener: TcpListener,
    upstream: Arc<Upstream>,
    tx: mpsc::Sender<(TcpStream, Arc<Upstream>)>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if tx.send((stream, Arc::clone(&upstream))).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(upstream = &*upstream.name, %error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

fn serve(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    upstream: Arc<Upstream>,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| proxy::handle(Arc::clone(&upstream), request));
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection ended with an error");
        }
    });
}
