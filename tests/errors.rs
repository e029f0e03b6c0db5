//! Not an open proxy, and the sidecar's own errors (the README's "Forwarding" and "The sidecar's
//! own errors"), end to end, plus the `none` and `static` flows. Every JSON error is checked for
//! its status, Content-Type, fields, and for carrying no secret and no token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod wire;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::Method;
use nexus_sidecar::standin::{Api, Credentials};
use support::*;
use wire::*;

/// A sidecar with `flow = "static"` (no token endpoint) in front of `target`.
fn static_toml(target: &str, upstream_extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{target}\"\n{upstream_extra}\n[upstream.auth]\nflow = \"static\"\ntoken = \"{SECRET_MARK}-static-token\"\n"
    )
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    let reply = raw(
        r.addr("api"),
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    )
    .await;
    assert_raw_error(&reply, 405, "method_not_allowed", "api", &[]);
    assert!(reply.headers.contains_key("allow"));
    assert_eq!(s.api_requests(), 0);
    assert_eq!(s.token_requests(), 0);
}

#[tokio::test]
async fn absolute_form_for_another_host_is_refused() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    let reply = raw(
        r.addr("api"),
        b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    let json = assert_raw_error(&reply, 400, "bad_request", "api", &[]);
    assert!(json["error_description"]
        .as_str()
        .unwrap()
        .contains("evil.example"));
    assert_eq!(s.api_requests(), 0);
}

#[tokio::test]
async fn absolute_form_naming_the_sidecar_is_forwarded() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    let own = r.addr("api");
    let reply = raw(
        own,
        format!("GET http://{own}/v1/x?y=1 HTTP/1.1\r\nHost: {own}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path_and_query, "/v1/x?y=1");
    assert!(seen[0].authorized);
}

#[tokio::test]
async fn rejected_credentials_are_502_with_the_token_error() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    // The API rotated the secret; the sidecar still holds the old one.
    s.set_credentials(Credentials::new("id-nuvy-nexus", "rotated"));
    let reply = Http::default().get(&r.url("api", "/v1/x")).await;
    let json = assert_error(&reply, 502, "token_unavailable", "api", &s.issued_tokens());
    assert_eq!(json["token_error"], "invalid_client");
    assert_eq!(s.api_requests(), 0);
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_503() {
    let s = standin(Api::NuvyNexus).await;
    let port = closed_port().await;
    // On demand, and failing at once rather than waiting out the backoff.
    let toml = upstream_toml("api", &s, "", "prefetch = false\ntoken_wait = \"0s\"").replace(
        &s.token_url(),
        &format!("http://127.0.0.1:{port}/oauth2/token"),
    );
    assert!(!toml.contains(&s.token_url()), "{toml}");
    let r = sidecar(&toml).await;
    let reply = Http::default().get(&r.url("api", "/v1/x")).await;
    let json = assert_error(&reply, 503, "token_unavailable", "api", &[]);
    assert!(json.get("token_error").is_none(), "{json}");
    assert_eq!(s.api_requests(), 0);
    assert_eq!(s.token_requests(), 0);
}

#[tokio::test]
async fn a_dead_upstream_is_502() {
    let port = closed_port().await;
    let r = sidecar(&static_toml(&format!("http://127.0.0.1:{port}"), "")).await;
    let reply = Http::default().get(&r.url("api", "/v1/x")).await;
    assert_error(&reply, 502, "upstream_unreachable", "api", &[]);
}

#[tokio::test]
async fn a_dead_upstream_behind_a_real_token_endpoint_is_502() {
    let s = standin(Api::NuvyNexus).await;
    let port = closed_port().await;
    let toml = upstream_toml("api", &s, "", "").replace(
        &format!("target = \"{}\"", s.base_url()),
        &format!("target = \"http://127.0.0.1:{port}\""),
    );
    let r = sidecar(&toml).await;
    let reply = Http::default().get(&r.url("api", "/v1/x")).await;
    assert_error(
        &reply,
        502,
        "upstream_unreachable",
        "api",
        &s.issued_tokens(),
    );
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn a_slow_upstream_is_504() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "request_timeout = \"300ms\"", "").await;
    let reply = Http::default().get(&r.url("api", "/slow")).await;
    let json = assert_error(&reply, 504, "upstream_timeout", "api", &s.issued_tokens());
    assert!(json["error_description"]
        .as_str()
        .unwrap()
        .contains("300ms"));
    assert_eq!(s.api_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_gets_400_and_other_connections_keep_working() {
    let (s, r) = pair_on_demand(Api::NuvyNexus, "", "").await;
    let addr = r.addr("api");
    // A keep-alive connection opened before the garbage, used before and after it.
    let mut before = tokio::net::TcpStream::connect(addr).await.unwrap();
    let get = format!("GET /v1/ok HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(raw_exchange(&mut before, get.as_bytes()).await.status, 200);

    let garbage = tokio::spawn(raw(addr, b"\x01\x02 NOT HTTP \xff\xfe\r\n\r\n"));
    let normal =
        tokio::spawn(async move { Http::default().get(&format!("http://{addr}/v1/ok")).await });
    let (garbage, normal) = (garbage.await.unwrap(), normal.await.unwrap());
    assert_eq!(garbage.status, 400);
    assert_eq!(normal.status, 200, "{}", normal.text());

    assert_eq!(raw_exchange(&mut before, get.as_bytes()).await.status, 200);
    assert_eq!(s.api_requests(), 3);
}

#[tokio::test]
async fn flow_none_passes_the_apps_authorization_through() {
    let s = standin(Api::NuvyNexus).await;
    let r = sidecar(&format!(
        "[[upstream]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{}\"\n[upstream.auth]\nflow = \"none\"\n",
        s.base_url()
    ))
    .await;
    let reply = Http::default()
        .send(
            Method::GET,
            &r.url("api", "/v1/x"),
            &[("authorization", "Bearer app-token")],
            Bytes::new(),
        )
        .await;
    // The stand-in does not know the app's token: its 401 reaches the app untouched.
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"], "invalid_token");
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    let values: Vec<_> = seen[0].headers.get_all(AUTHORIZATION).iter().collect();
    assert_eq!(values, ["Bearer app-token"]);
    assert_eq!(s.token_requests(), 0);
}

#[tokio::test]
async fn flow_static_injects_the_static_token() {
    let s = standin(Api::NuvyNexus).await;
    let r = sidecar(&static_toml(&s.base_url(), "")).await;
    let reply = Http::default()
        .send(
            Method::GET,
            &r.url("api", "/v1/x"),
            &[("authorization", "Bearer app-token")],
            Bytes::new(),
        )
        .await;
    // Not a token the stand-in issued: 401, passed on (a static token cannot be refreshed).
    assert_eq!(reply.status, 401);
    let seen = s.seen();
    assert_eq!(seen.len(), 1, "a static token is not worth a replay");
    let values: Vec<_> = seen[0].headers.get_all(AUTHORIZATION).iter().collect();
    assert_eq!(
        values,
        [format!("Bearer {SECRET_MARK}-static-token").as_str()]
    );
    assert_eq!(s.token_requests(), 0);
}
