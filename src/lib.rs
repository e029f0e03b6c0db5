//! nexus-sidecar: an authenticating reverse proxy that runs next to an application.
//!
//! The application sends plain HTTP to `127.0.0.1:PORT`; the sidecar obtains an access token
//! for the upstream API, keeps it fresh, injects `Authorization: Bearer …`, forwards the
//! request over HTTPS, and on a 401 fetches a fresh token and replays the request once.
//!
//! # Architecture
//!
//! In the order a request meets them:
//!
//! - [`config`]: the TOML file, presets and validation (nothing starts on an invalid one).
//! - [`secret`]: secret values whose `Debug`/`Display` are masks, and where they come from.
//! - `file`: reading the files a configuration names (secrets, `ca_file`) within a size bound.
//! - [`server`]: listeners, HTTP/1.1 and h2c connections, reload (SIGHUP, rotated secret
//!   files), graceful shutdown.
//! - [`conn`]: the `[limits]` of application connections — how many, how long to the first
//!   head, how long idle.
//! - [`proxy`]: the request path — route, prepare headers, authorize, send, re-authorize on
//!   401 and replay once, respond.
//! - [`headers`]: pure functions over header maps (hop-by-hop, `Authorization`, scope).
//! - [`body`]: buffer small request bodies for replay, stream the rest.
//! - [`token`]: the token lifecycle — a state machine per upstream (single flight, refresh
//!   ahead, backoff, `token_wait`, `prefetch`) over the moka cache, the shared cache on Redis
//!   that lets replicas share one token (`[shared_cache]`), and the token requests of each flow.
//! - [`totp`]: RFC 6238 codes for the password grant (and checking a seed at validation).
//! - [`client`]: the pooled HTTPS client (rustls, HTTP/1.1 and h2 by ALPN).
//! - [`error`]: the sidecar's own failures and their JSON responses.
//! - [`metrics`]: Prometheus metrics, recorded without locks.
//! - [`admin`]: `/healthz`, `/readyz`, `/status`, `/metrics` on the admin listener.
//! - [`logline`]: the text and JSON log lines (one per request at `info`), written cheaply.
//! - [`standin`]: local stand-ins for the five token APIs and an API behind them, used by
//!   `demo` and the tests.
//! - [`demo`]: `nexus-sidecar demo`, the product running against the stand-ins.
//! - [`cli`]: `nexus-sidecar check` (the effective configuration, a token per upstream) and
//!   `nexus-sidecar token` (one token, for curl).

pub mod admin;
pub mod body;
pub mod cli;
pub mod client;
pub mod config;
pub mod conn;
pub mod demo;
pub mod error;
mod file;
pub mod headers;
pub mod logline;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod standin;
pub mod token;
pub mod totp;

pub use config::Config;
pub use server::Sidecar;
