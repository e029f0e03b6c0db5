//! The HTTPS client the sidecar talks to upstream APIs and token endpoints with.
//!
//! hyper-util's pooled client over rustls (ring provider): HTTP/1.1 and h2 chosen by ALPN,
//! trusting the webpki roots, the system's roots and an optional `ca_file`. Plain `http://`
//! is allowed for stand-ins and local APIs (validation warns about remote hosts).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::body::ProxyBody;

/// A pooled client; cheap to clone (clones share the pool).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A CA file larger than this is refused unread: a bundle of every public root is a few hundred
/// KiB, and `ca_file = "/dev/zero"` (or a log file named by mistake) must not fill memory.
pub const MAX_CA_FILE: u64 = 4 * 1024 * 1024;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA file `{}`: {source}", path.display())]
    CaFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file `{}` is larger than {limit} bytes", path.display())]
    CaFileTooLarge { path: PathBuf, limit: u64 },
    #[error("CA file `{}` is not a PEM certificate file: {source}", path.display())]
    CaFile {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA file `{}` holds no usable certificate", .0.display())]
    CaFileEmpty(PathBuf),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The trust roots every client starts from: webpki's and the system's. Built once, because
/// reading the system store walks the file system.
#[derive(Clone, Debug)]
pub struct Roots(Arc<RootCertStore>);

impl Roots {
    /// Loads webpki's roots and whatever the system store yields (unreadable system
    /// certificates are skipped: the webpki roots still stand).
    pub fn load() -> Roots {
        let mut store = RootCertStore::empty();
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        let (added, ignored) = store.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system trust roots loaded");
        Roots(Arc::new(store))
    }
}

/// The PEM certificates in `path` (possibly none), read within [`MAX_CA_FILE`].
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = crate::file::read_at_most(path, MAX_CA_FILE)
        .map_err(|source| ClientError::CaFileRead {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| ClientError::CaFileTooLarge {
            path: path.to_owned(),
            limit: MAX_CA_FILE,
        })?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|source| ClientError::CaFile {
            path: path.to_owned(),
            source,
        })
}

/// Builds a client for one upstream: `ca_file` adds trust roots for it (and its token
/// endpoint), `connect_timeout` bounds each TCP connect.
pub fn build(
    roots: &Roots,
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpClient, ClientError> {
    let mut store = (*roots.0).clone();
    if let Some(path) = ca_file {
        let (added, _) = store.add_parsable_certificates(read_ca_file(path)?);
        if added == 0 {
            return Err(ClientError::CaFileEmpty(path.to_owned()));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(store)
    .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}
