//! Tests of the stand-ins over loopback TCP with a plain hyper client: the gate (counting,
//! holding, injected failures, TLS) here, the fault plan and delays in `faults`, each API's
//! documented behaviour in `client_credentials` and `user_flows`, the protected API in
//! `protected`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_credentials;
mod faults;
mod protected;
mod user_flows;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{Api, Credentials, Failure, StandIn};

const FORM: &str = "application/x-www-form-urlencoded";

/// A response, fully read.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The OAuth2 `error` code of the body.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn access_token(&self) -> String {
        self.json()["access_token"].as_str().unwrap().to_string()
    }
}

/// Sends one request over a fresh HTTP/1.1 client; `Err` when no response came.
async fn try_send(req: Request<Full<Bytes>>) -> Result<Reply, hyper_util::client::legacy::Error> {
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let resp = client.request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

async fn send(req: Request<Full<Bytes>>) -> Reply {
    try_send(req).await.unwrap()
}

/// A POST with that Content-Type (if any), extra headers and body.
fn post(
    url: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(Method::POST).uri(url);
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// A form POST, with HTTP Basic credentials when given.
async fn form(url: &str, basic_auth: Option<(&str, &str)>, body: &str) -> Reply {
    let auth = basic_auth.map(|(id, secret)| basic(id, secret));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send(post(url, Some(FORM), &headers, body)).await
}

async fn json_post(url: &str, body: &str) -> Reply {
    send(post(url, Some("application/json"), &[], body)).await
}

async fn get(url: &str, bearer: Option<&str>) -> Reply {
    let mut req = Request::builder().uri(url);
    if let Some(token) = bearer {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    send(req.body(Full::default()).unwrap()).await
}

/// The claims of a JWT-shaped token.
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// An OAuth2-style JSON error with that status and code.
fn assert_error(resp: &Reply, status: StatusCode, code: &str) {
    assert_eq!(resp.status, status, "{:?}", resp.body);
    assert_eq!(resp.error(), code, "{:?}", resp.body);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp.json()["error_description"].is_string());
}

/// A successful token response whose token the stand-in recorded as its latest.
fn assert_issued(s: &StandIn, resp: &Reply) {
    assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(s.issued_tokens().last(), Some(&resp.access_token()));
}

async fn nuvy() -> StandIn {
    StandIn::start(Api::NuvyNexus, Credentials::new("app", "s3cret"))
        .await
        .unwrap()
}

/// A good Nuvy Nexus token request.
async fn nuvy_token(s: &StandIn) -> Reply {
    form(
        &s.token_url(),
        Some(("app", "s3cret")),
        "grant_type=client_credentials",
    )
    .await
}

#[tokio::test]
async fn urls_debug_and_masked_credentials() {
    let s = nuvy().await;
    assert_eq!(
        s.base_url(),
        format!("http://127.0.0.1:{}", s.addr().port())
    );
    assert_eq!(
        s.token_url(),
        format!("{}/nexus/oauth2/token", s.base_url())
    );
    assert_eq!(s.api(), Api::NuvyNexus);
    let debug = format!("{s:?}");
    assert!(
        debug.contains("NuvyNexus") && debug.contains(&s.addr().to_string()),
        "{debug}"
    );
    let creds = format!(
        "{:?}",
        Credentials::new("app", "s3cret").with_totp("JBSWY3DPEHPK3PXP")
    );
    assert!(
        creds.contains("app") && !creds.contains("s3cret") && !creds.contains("JBSWY"),
        "{creds}"
    );
    let hub = StandIn::start(Api::NexusHub, Credentials::new("k", "s"))
        .await
        .unwrap();
    assert_eq!(hub.token_url(), hub.base_url());
}

#[tokio::test]
async fn every_token_request_is_counted_and_other_methods_get_405() {
    let s = nuvy().await;
    let resp = get(&s.token_url(), None).await;
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.header("allow"), Some("POST"));
    assert_eq!(nuvy_token(&s).await.status, StatusCode::OK);
    assert_eq!(
        form(&s.token_url(), None, "grant_type=client_credentials")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(s.token_requests(), 3);
    assert_eq!(s.token_requests_by_grant("client_credentials"), 2);
    assert_eq!(s.token_requests_by_grant("password"), 0);
    s.wait_token_requests(3).await;
    assert_eq!(s.api_requests(), 0, "token requests are not API requests");
    // Another API's token path is just a path of the protected API here.
    let elsewhere = format!("{}/oauth2/token", s.base_url());
    let resp = send(post(
        &elsewhere,
        Some(FORM),
        &[],
        "grant_type=client_credentials",
    ))
    .await;
    assert_eq!(resp.error(), "invalid_token");
    assert_eq!((s.token_requests(), s.api_requests()), (3, 1));
}

#[tokio::test]
async fn injected_failures_answer_as_asked_then_stop() {
    let s = nuvy().await;
    s.fail_token_requests(2, Failure::Status(503));
    for _ in 0..2 {
        let resp = nuvy_token(&s).await;
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.error(), "server_error");
        assert_eq!(resp.header("content-type"), Some("application/json"));
    }
    assert_eq!(
        nuvy_token(&s).await.status,
        StatusCode::OK,
        "only the next 2 fail"
    );

    s.fail_token_requests(
        1,
        Failure::TooManyRequests {
            retry_after_secs: 7,
        },
    );
    let resp = nuvy_token(&s).await;
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers.get(RETRY_AFTER).unwrap(), "7");

    s.fail_token_requests(1, Failure::Html200);
    let resp = nuvy_token(&s).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(String::from_utf8_lossy(&resp.body).contains("<html"));

    s.fail_token_requests(1, Failure::MissingAccessToken);
    let resp = nuvy_token(&s).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.json().get("access_token").is_none());
    assert_eq!(resp.json()["token_type"], "Bearer");

    s.fail_token_requests(usize::MAX, Failure::Status(500));
    for _ in 0..3 {
        assert_eq!(
            nuvy_token(&s).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    s.fail_token_requests(0, Failure::Status(500));
    assert_eq!(nuvy_token(&s).await.status, StatusCode::OK, "0 clears");
    assert_eq!(
        s.issued_tokens().len(),
        2,
        "injected failures issue nothing"
    );
}

#[tokio::test]
async fn injected_close_and_hang_give_no_response() {
    let s = nuvy().await;
    s.fail_token_requests(1, Failure::Close);
    let req = post(
        &s.token_url(),
        Some(FORM),
        &[],
        "grant_type=client_credentials",
    );
    assert!(
        try_send(req).await.is_err(),
        "connection closed without a response"
    );

    s.fail_token_requests(1, Failure::Hang);
    let req = post(
        &s.token_url(),
        Some(FORM),
        &[],
        "grant_type=client_credentials",
    );
    let pending = tokio::spawn(try_send(req));
    s.wait_token_requests(2).await;
    s.shutdown();
    assert!(
        pending.await.unwrap().is_err(),
        "a hanging request ends unanswered at shutdown"
    );
    assert!(s.issued_tokens().is_empty());
}

#[tokio::test]
async fn held_requests_wait_until_released() {
    let s = nuvy().await;
    s.hold_token_requests(true);
    let url = s.token_url();
    let a = tokio::spawn(async move {
        form(
            &url,
            Some(("app", "s3cret")),
            "grant_type=client_credentials",
        )
        .await
    });
    let url = s.token_url();
    let b = tokio::spawn(async move {
        form(
            &url,
            Some(("app", "s3cret")),
            "grant_type=client_credentials",
        )
        .await
    });
    s.wait_held(2).await;
    assert_eq!(s.held_token_requests(), 2);
    assert_eq!(s.token_requests(), 2, "held requests are already counted");
    assert!(s.issued_tokens().is_empty(), "nothing answered while held");
    s.hold_token_requests(false);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(s.held_token_requests(), 0);
    assert_eq!(s.issued_tokens().len(), 2);
    assert_ne!(a.access_token(), b.access_token());
}

#[tokio::test]
async fn tls_serves_h2_and_http1_by_alpn() {
    use std::sync::Arc;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key.into())
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let s = StandIn::start_tls(
        Api::NuvyLegacy,
        Credentials::new("app", "s3cret"),
        Arc::new(server),
    )
    .await
    .unwrap();
    assert!(s.base_url().starts_with("https://localhost:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    for (h2, version) in [
        (true, http::Version::HTTP_2),
        (false, http::Version::HTTP_11),
    ] {
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1();
        let https = if h2 {
            https.enable_http2().build()
        } else {
            https.build()
        };
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let req = Request::post(s.token_url())
            .header(CONTENT_TYPE, FORM)
            .header(AUTHORIZATION, basic("app", "s3cret"))
            .body(Full::new(Bytes::from_static(
                b"grant_type=client_credentials",
            )))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), version);
    }
    assert_eq!(s.issued_tokens().len(), 2);
}
