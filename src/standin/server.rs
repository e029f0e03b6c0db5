//! The listener side of a stand-in: accept loop, optional TLS, HTTP/1.1 and HTTP/2 per
//! connection, and routing between the token endpoint and the protected API. It holds no rules
//! of any API.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::knobs::Shared;
use super::wire::Body;
use super::{api, gate};

/// Why a request ends without a response; hyper then closes the connection (HTTP/1.1) or
/// resets the stream (HTTP/2).
#[derive(Debug, thiserror::Error)]
pub(super) enum Abort {
    #[error("injected failure: close the connection without a response")]
    Close,
    #[error("the stand-in is shutting down")]
    ShutDown,
    #[error("reading the request body failed")]
    Body(#[source] hyper::Error),
}

/// Serves until the task is aborted; dropping the `JoinSet` then drops every connection.
pub(super) async fn run(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve(stream, peer, acceptor.clone(), shared.clone()));
                }
                Err(error) => {
                    // Out of descriptors and the like: let connections finish before retrying.
                    tracing::warn!(%error, "stand-in accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { route(&shared, peer, req).await }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let served = match acceptor {
        None => {
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
        Some(acceptor) => {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%error, %peer, "stand-in TLS handshake failed");
                    return;
                }
            };
            let builder = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => builder.http2_only(),
                Some(b"http/1.1") => builder.http1_only(),
                _ => builder,
            };
            builder.serve_connection(TokioIo::new(tls), service).await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, %peer, "stand-in connection ended");
    }
}

async fn route(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Abort> {
    if shared.api.token_paths().contains(&req.uri().path()) {
        gate::token_endpoint(shared, peer, req).await
    } else {
        api::serve(shared, req).await
    }
}
