//! The request path called directly, without an application socket: `proxy::handle` is generic
//! over the request body, so these tests hand it bodies a socket cannot easily produce (one that
//! fails, one that never ends) and look at the response it makes. The token endpoint and the
//! API behind it are still the real stand-ins on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use nexus_sidecar::body::{BodyLimits, ResponseBody};
use nexus_sidecar::client::{self, Roots};
use nexus_sidecar::metrics::Metrics;
use nexus_sidecar::proxy::{self, Upstream};
use nexus_sidecar::standin::{Api, StandIn};
use nexus_sidecar::token::{TokenCache, TokenSource};
use nexus_sidecar::Config;
use support::*;

/// The upstream "api" for `s`, assembled as the server would, with these body limits.
fn upstream(s: &StandIn, read_timeout: Duration) -> Arc<Upstream> {
    let toml = upstream_toml("api", s, "", "prefetch = false");
    let config = Config::from_toml(&toml).unwrap();
    let u = &config.upstreams[0];
    let metrics = Arc::new(Metrics::default());
    let client = client::build(&Roots::load(), None, u.connect_timeout).unwrap();
    let tokens = TokenSource::new(
        &u.name,
        &u.auth,
        TokenCache::default(),
        client.clone(),
        metrics.upstream(&u.name),
    )
    .unwrap();
    let limits = BodyLimits::new(1 << 20, read_timeout, Arc::clone(&metrics));
    Arc::new(Upstream::new(
        u,
        "127.0.0.1:1".parse().unwrap(),
        Arc::new(tokens),
        Arc::new(limits),
        client,
        metrics.upstream(&u.name),
    ))
}

async fn call<B>(up: &Arc<Upstream>, method: Method, body: B) -> (StatusCode, Bytes)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let request = Request::builder()
        .method(method)
        .uri("/v1/handler")
        .body(body)
        .unwrap();
    let response: Response<ResponseBody> =
        within("the handler", proxy::handle(Arc::clone(up), request))
            .await
            .unwrap();
    let status = response.status();
    let bytes = within("the body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, bytes)
}

/// A body that yields one chunk, then an error.
struct Failing(bool);

impl Body for Failing {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(Some(Err(std::io::Error::other("the app's socket broke"))))
        } else {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
        }
    }
}

/// A body that yields one chunk and then nothing, ever.
struct Stalling(bool);

impl Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
        }
    }
}

#[tokio::test]
async fn a_request_gets_a_token_and_the_apis_answer() {
    let s = standin(Api::NuvyNexus).await;
    let up = upstream(&s, Duration::from_secs(30));
    let (status, body) = call(&up, Method::POST, Full::new(Bytes::from("hello"))).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].authorized);
    assert_eq!(seen[0].body, Bytes::from("hello"));
}

#[tokio::test]
async fn a_body_that_breaks_is_a_400_and_nothing_goes_upstream() {
    let s = standin(Api::NuvyNexus).await;
    let up = upstream(&s, Duration::from_secs(30));
    let (status, body) = call(&up, Method::POST, Failing(false)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "bad_request", "{json}");
    assert_eq!(s.api_requests(), 0);
}

#[tokio::test]
async fn a_body_that_stalls_is_a_408() {
    let s = standin(Api::NuvyNexus).await;
    let up = upstream(&s, Duration::from_millis(100));
    let (status, body) = call(&up, Method::POST, Stalling(false)).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "request_timeout", "{json}");
    assert_eq!(s.api_requests(), 0);
}
