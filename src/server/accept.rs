//! Accepting and serving application and admin connections, each held to `[limits]`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::{Accepted, Target};
use crate::admin;
use crate::conn::{self, Activity, Slots, Timers, Tracked, Watched};
use crate::metrics::Metrics;
use crate::proxy;

/// After a failed `accept` (out of file descriptors, say), wait this long before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Stops an acceptor and waits until its listener is closed, so that a reload that reports
/// an upstream removed has really freed its port.
pub(super) async fn close(acceptor: JoinHandle<()>) {
    acceptor.abort();
    let _ = acceptor.await;
}

/// An application listener's acceptor: its connections serve `upstream` (loaded per request,
/// so a reload reaches them) and count against `max_connections`.
pub(super) fn spawn_upstream_acceptor(
    listener: TcpListener,
    upstream: &Arc<arc_swap::ArcSwap<crate::proxy::Upstream>>,
    tx: &mpsc::Sender<Accepted>,
    permits: &Slots,
) -> JoinHandle<()> {
    spawn_acceptor(
        listener,
        Target::Upstream(Arc::clone(upstream)),
        tx.clone(),
        Some(permits.clone()),
    )
}

/// Accepts connections for `target`; an application listener takes a permit first, so beyond
/// `max_connections` new connections wait in the kernel's backlog.
pub(super) fn spawn_acceptor(
    listener: TcpListener,
    target: Target,
    tx: mpsc::Sender<Accepted>,
    permits: Option<Slots>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Set by a wait for a permit: the backlog may hold connections that waited for one.
        let mut backlog = false;
        loop {
            let permit = match &permits {
                Some(permits) => {
                    let (permit, waited) = permits.acquire().await;
                    backlog |= waited;
                    Some(permit)
                }
                None => None,
            };
            match next(&listener, &mut backlog, permits.as_ref()).await {
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

/// The next connection. After a wait for a permit (`backlog`), every connection the kernel
/// already holds waited for a slot: each is taken at once and counted, until the backlog is
/// empty; connections that come later find a slot free.
async fn next(
    listener: &TcpListener,
    backlog: &mut bool,
    permits: Option<&Slots>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    if *backlog {
        let queued = std::future::poll_fn(|cx| match listener.poll_accept(cx) {
            Poll::Ready(accepted) => Poll::Ready(Some(accepted)),
            Poll::Pending => Poll::Ready(None),
        });
        if let Some(accepted) = queued.await {
            if let (Ok(_), Some(permits)) = (&accepted, permits) {
                permits.waited();
            }
            return accepted;
        }
        *backlog = false;
    }
    listener.accept().await
}

/// The `[limits]` every application connection is held to, with where to count them.
pub(super) struct Guards {
    pub(super) timers: Timers,
    pub(super) metrics: Arc<Metrics>,
}

pub(super) fn serve(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    connections: &mut JoinSet<()>,
    (stream, target, permit): Accepted,
    guards: &Guards,
) {
    let accepted = tokio::time::Instant::now();
    let _ = stream.set_nodelay(true);
    match target {
        Target::Upstream(slot) => {
            let open = slot.load().metrics.connection();
            let activity = Arc::new(Activity::new(accepted));
            let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
            let service = {
                let activity = Arc::clone(&activity);
                service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    // Invariant: over HTTP/1.1 the guard ends in this connection's task (hyper's
                    // dispatcher drops the response body it polls); the watchdog learns of it by
                    // looking after that poll, not by being woken (`conn::watchdog`).
                    let in_flight = activity.request(request.version());
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
                {
                    // Outside the `select!`, which would drop it before the count below: who
                    // sees the close then sees the count.
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        // The connection first: the watchdog looks for a next head right
                        // after each read (see `conn::watchdog`).
                        biased;
                        result = &mut connection => if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        },
                        limit = conn::watchdog(&activity, timers) => {
                            metrics.limit_hit(limit);
                            tracing::debug!(limit = limit.label(), "connection closed");
                        }
                    }
                    // Dropped here, which closes it: nothing is in flight.
                }
                drop(open);
                drop(permit);
            });
        }
        Target::Admin(admin) => {
            let io = TokioIo::new(stream);
            let service = service_fn(move |request| admin::handle(Arc::clone(&admin), request));
            let connection = builder.serve_connection(io, service).into_owned();
            // Admin connections are not drained: probes must not hold up a shutdown.
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    }
}
