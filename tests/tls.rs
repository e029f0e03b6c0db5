//! HTTPS upstreams end to end: a test CA made with rcgen, a TLS stand-in, `ca_file` trusted for
//! both the API and its token endpoint, and HTTP/2 or HTTP/1.1 chosen by ALPN.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Version;
use nexus_sidecar::standin::{Api, StandIn};
use support::*;
use wire::*;

fn server_config(pki: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    pki.server_config(alpn)
}

/// A file in the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "nexus-sidecar-tls-{}-{}.pem",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn tls_standin(pki: &Pki, alpn: &[&[u8]]) -> StandIn {
    let s = StandIn::start_tls(
        Api::NuvyNexus,
        credentials(Api::NuvyNexus),
        server_config(pki, alpn),
    )
    .await
    .unwrap();
    assert!(s.base_url().starts_with("https://localhost:"));
    assert!(s.token_url().starts_with("https://localhost:"));
    s
}

/// Runs one request through a sidecar that trusts the test CA; returns what the API saw.
async fn through_tls(alpn: &[&[u8]]) -> Version {
    let pki = pki();
    let s = tls_standin(&pki, alpn).await;
    let ca = TempFile::new(&pki.ca_pem);
    let toml = upstream_toml("api", &s, &format!("ca_file = \"{}\"", ca.0.display()), "");
    let r = sidecar(&toml).await;
    let reply = Http::default().get(&r.url("api", "/v1/tls?x=1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["x-standin-api"], "nuvy-nexus");
    assert_eq!(s.token_requests(), 1);
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].authorized);
    assert_eq!(seen[0].path_and_query, "/v1/tls?x=1");
    seen[0].version
}

#[tokio::test]
async fn https_upstream_with_ca_file_speaks_h2_by_alpn() {
    assert_eq!(through_tls(&[b"h2", b"http/1.1"]).await, Version::HTTP_2);
}

#[tokio::test]
async fn https_upstream_offering_only_http1_gets_http1() {
    assert_eq!(through_tls(&[b"http/1.1"]).await, Version::HTTP_11);
}

#[tokio::test]
async fn without_ca_file_the_token_endpoint_is_not_trusted() {
    let pki = pki();
    let s = tls_standin(&pki, &[b"h2", b"http/1.1"]).await;
    let r = sidecar(&upstream_toml("api", &s, "", "")).await;
    let reply = Http::default().get(&r.url("api", "/v1/tls")).await;
    let json = assert_error(&reply, 503, "token_unavailable", "api", &[]);
    let description = json["error_description"].as_str().unwrap();
    assert!(description.contains("token endpoint"), "{description}");
    assert!(json.get("token_error").is_none(), "{json}");
    // The handshake failed before any HTTP request reached the stand-in.
    assert_eq!(s.token_requests(), 0);
    assert_eq!(s.api_requests(), 0);
}

/// h2 flow control both ways: bodies well beyond the initial 64 KiB windows.
#[tokio::test]
async fn large_bodies_over_h2() {
    let pki = pki();
    let s = tls_standin(&pki, &[b"h2"]).await;
    let ca = TempFile::new(&pki.ca_pem);
    let toml = upstream_toml(
        "api",
        &s,
        &format!(
            "ca_file = \"{}\"\nmax_replay_body = \"64KiB\"",
            ca.0.display()
        ),
        "",
    );
    let r = sidecar(&toml).await;
    let http = Http::default();
    let len = 3 * 1024 * 1024;
    let down = http
        .get(&r.url("api", &format!("/download?bytes={len}")))
        .await;
    assert_eq!(down.status, 200);
    assert_eq!(down.body.len(), len);
    assert!(down
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == nexus_sidecar::standin::download_byte(i as u64)));
    let body: bytes::Bytes = (0..len).map(|i| (i % 253) as u8).collect::<Vec<_>>().into();
    let up = http.post(&r.url("api", "/upload"), body.clone()).await;
    assert_eq!(up.status, 200, "{}", up.text());
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|x| x.version == Version::HTTP_2));
    assert!(seen[1].body == body, "the upstream got different bytes");
}
