//! Shared helpers of the end-to-end tests: stand-ins, a real sidecar on port 0, an HTTP client.
//!
//! Every test starts its own stand-in (`StandIn::start`, port 0) and its own sidecar from TOML
//! text, so tests share nothing and run in parallel.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

/// Real processes: sidecar replicas, and the plumbing `redis` shares.
pub mod fleet;
/// A real redis-server and a RESP2 client, for the shared-token-cache tests.
pub mod redis;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nexus_sidecar::standin::{Api, Credentials, StandIn};
use nexus_sidecar::{Config, Sidecar};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Bound on every wait: a broken build fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Awaits `f` within [`PATIENCE`], naming `what` if it does not finish.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A new, empty directory for one test.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nexus-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces `path` atomically, as an orchestrator would: write beside it, rename over it.
pub fn replace(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Every secret the tests hand out carries this marker, so a log or body scan can look for it.
pub const SECRET_MARK: &str = "S3CRET";

/// Distinctive credentials for a stand-in of `api`.
pub fn credentials(api: Api) -> Credentials {
    Credentials::new(
        format!("id-{}", api.name()),
        format!("{SECRET_MARK}-{}-pw", api.name()),
    )
}

/// A base32 TOTP seed (RFC 6238 test seed).
pub const TOTP_SEED: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

/// Starts a stand-in of `api` with [`credentials`] (Nexudus with a TOTP seed).
pub async fn standin(api: Api) -> StandIn {
    let mut c = credentials(api);
    if api == Api::Nexudus {
        c = c.with_totp(TOTP_SEED);
    }
    StandIn::start(api, c).await.unwrap()
}

/// The `[[upstream]]` table for `standin`, listening on port 0, with the stand-in's own
/// credentials written as literals. `upstream_extra` lines go in `[[upstream]]`, `auth_extra`
/// lines in `[upstream.auth]`.
pub fn upstream_toml(name: &str, s: &StandIn, upstream_extra: &str, auth_extra: &str) -> String {
    let mut c = credentials(s.api());
    if s.api() == Api::Nexudus {
        c = c.with_totp(TOTP_SEED);
    }
    format!(
        "[[upstream]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{}\"\n{upstream_extra}\n[upstream.auth]\n{}{auth_extra}\n",
        s.base_url(),
        s.auth_toml(&c)
    )
}

/// A sidecar running in this test's runtime.
pub struct Running {
    addrs: HashMap<String, SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<usize>,
}

impl Running {
    /// `http://ADDR{path}` for upstream `name`.
    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(name))
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    /// Signals shutdown and waits for the drain; returns the connections cut off.
    pub async fn stop(mut self) -> usize {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap()
    }
}

/// Validates `toml` and runs the sidecar it describes.
pub async fn sidecar(toml: &str) -> Running {
    let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}\n---\n{toml}"));
    let sidecar = Sidecar::bind(&config).await.unwrap();
    let addrs = config
        .upstreams
        .iter()
        .map(|u| (u.name.clone(), sidecar.local_addr(&u.name).unwrap()))
        .collect();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(sidecar.run(async {
        let _ = rx.await;
    }));
    Running {
        addrs,
        stop: Some(tx),
        task,
    }
}

/// A stand-in of `api` and a sidecar in front of it, as upstream "api".
pub async fn pair(api: Api, upstream_extra: &str, auth_extra: &str) -> (StandIn, Running) {
    let s = standin(api).await;
    let toml = upstream_toml("api", &s, upstream_extra, auth_extra);
    let r = sidecar(&toml).await;
    (s, r)
}

/// [`pair`] with `prefetch = false`, for tests of what requests set off: no token request may
/// happen before the test has set the stand-in up.
pub async fn pair_on_demand(
    api: Api,
    upstream_extra: &str,
    auth_extra: &str,
) -> (StandIn, Running) {
    pair(
        api,
        upstream_extra,
        &format!("{auth_extra}\nprefetch = false"),
    )
    .await
}

/// What came back from the sidecar.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
}

impl Reply {
    /// Collects a whole response.
    pub async fn read(response: http::Response<hyper::body::Incoming>) -> Reply {
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
            version: parts.version,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The application's side: a plain HTTP/1.1 client (or h2c with [`Http::h2c`]).
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    /// A client that speaks cleartext HTTP/2 with prior knowledge.
    pub fn h2c() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Reply {
        self.send(Method::POST, url, &[], body.into()).await
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.request(request.body(Full::new(body)).unwrap()).await
    }

    /// A GET whose connection may be cut: the error instead of a panic.
    pub async fn try_get(
        &self,
        url: &str,
    ) -> Result<StatusCode, hyper_util::client::legacy::Error> {
        let request = Request::builder()
            .uri(url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = self.client.request(request).await?;
        Ok(response.status())
    }

    pub async fn request(&self, request: Request<Full<Bytes>>) -> Reply {
        Reply::read(self.client.request(request).await.unwrap()).await
    }
}

/// A CA and a `localhost` server certificate it signed, for TLS stand-ins and upstreams.
pub struct Pki {
    pub ca_pem: String,
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub key: rustls_pki_types::PrivateKeyDer<'static>,
}

/// A fresh [`Pki`].
pub fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "nexus-sidecar test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();

    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        chain: vec![leaf_cert.der().clone()],
        key: rustls_pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
    }
}

impl Pki {
    /// A rustls server configuration (ring) presenting the `localhost` certificate, offering
    /// `alpn` in that order.
    pub fn server_config(&self, alpn: &[&[u8]]) -> std::sync::Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), self.key.clone_key())
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        std::sync::Arc::new(config)
    }
}
