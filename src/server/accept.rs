//! Accepting and serving application and admin connections, each held to `[limits]`.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::{Accepted, Target};
use crate::admin;
use crate::conn::{self, Activity, Slots, Timers, Tracked};
use crate::metrics::{Limit, Metrics};
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
