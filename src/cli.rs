//! The `check` and `token` commands: what they print and how they end.
//!
//! Both take a [`Config`] that already loaded (an invalid file never gets here: the binary
//! exits 64 with the loader's message) and write through handles they are given, so tests call
//! them directly. Neither prints a secret: `check` shows secrets by source, and `token` returns
//! the one token it was asked for, for the caller to print. Running the sidecar and `demo` live
//! elsewhere ([`crate::server`], [`crate::demo`]).

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{self, ClientError, Roots};
use crate::config::{Config, Flow, UpstreamConfig};
use crate::secret::Secret;
use crate::token::{SharedCache, Token, TokenCache, TokenError, TokenSource};

/// sysexits.h `EX_USAGE`: the configuration or the command line is wrong.
pub const EXIT_USAGE: u8 = 64;
/// Something failed at run time: a token could not be had, a port was in use.
pub const EXIT_FAILURE: u8 = 1;

/// How `check` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The configuration is valid; no token was requested.
    Valid,
    /// The configuration is valid and every upstream that uses tokens obtained one.
    TokensObtained,
    /// The configuration is valid but these upstreams could not obtain a token.
    FetchFailed {
        /// Their names, in configuration order.
        upstreams: Vec<String>,
    },
}

impl CheckOutcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            CheckOutcome::Valid | CheckOutcome::TokensObtained => 0,
            CheckOutcome::FetchFailed { .. } => EXIT_FAILURE,
        }
    }
}

/// Why one upstream's token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot build the HTTPS client: {0}")]
    Client(#[from] ClientError),
    /// With its causes (a connect error says why), and the token endpoint's error code, if it
    /// gave one, repeated as `[token_error=…]` so scripts can pick it out.
    #[error("{}{}", crate::error::chain(.0), token_error_suffix(.0))]
    Token(#[from] TokenError),
    #[error("the token request task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn token_error_suffix(e: &TokenError) -> String {
    e.endpoint_code()
        .map(|c| format!(" [token_error={c}]"))
        .unwrap_or_default()
}

/// Why `nexus-sidecar token` printed no token.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("there is no upstream `{name}`; the configuration has: {}", known.join(", "))]
    UnknownUpstream { name: String, known: Vec<String> },
    #[error("upstream `{0}` does not use tokens (flow = \"none\")")]
    NoTokens(String),
    #[error("upstream `{upstream}`: {source}")]
    Fetch {
        upstream: String,
        source: FetchError,
    },
}

impl CliError {
    /// The process exit code: a name that is not in the configuration is a usage error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::UnknownUpstream { .. } => EXIT_USAGE,
            CliError::NoTokens(_) | CliError::Fetch { .. } => EXIT_FAILURE,
        }
    }
}

/// `nexus-sidecar check`: writes the warnings and the effective configuration to `out` and,
/// with `fetch`, obtains one token per upstream (concurrently) and reports each outcome on
/// its own line. Never writes a token, a secret or a static header value.
pub async fn check(config: &Config, fetch: bool, out: &mut impl Write) -> io::Result<CheckOutcome> {
    writeln!(out, "# nexus-sidecar check: the configuration is valid.")?;
    for warning in &config.warnings {
        writeln!(out, "# warning: {}", warning.replace('\n', " "))?;
    }
    writeln!(out, "#")?;
    writeln!(
        out,
        "# The effective configuration: presets expanded, defaults filled, secrets"
    )?;
    writeln!(
        out,
        "# shown by where they are read from (one written in the file shows as \"***\"),"
    )?;
    writeln!(out, "# static header values masked as \"***\".")?;
    writeln!(out)?;
    out.write_all(config.to_toml().as_bytes())?;
    if !fetch {
        return Ok(CheckOutcome::Valid);
    }
    writeln!(out)?;
    writeln!(out, "# One token per upstream:")?;
    out.flush()?;
    let roots = Roots::load();
    let cache = TokenCache::default();
    let tasks: Vec<_> = config
        .upstreams
        .iter()
        .map(|u| {
            let (u, roots, cache) = (u.clone(), roots.clone(), cache.clone());
            tokio::spawn(async move { obtain(&u, &roots, cache).await })
        })
        .collect();
    let mut failed = Vec::new();
    for (upstream, task) in config.upstreams.iter().zip(tasks) {
        let result = task.await.map_err(FetchError::from).and_then(|r| r);
        let name = &upstream.name;
        match result {
            Ok(Some(_)) if matches!(upstream.auth.flow, Flow::Static(_)) => {
                writeln!(out, "{name}: ok (static token)")?
            }
            Ok(Some(token)) => writeln!(
                out,
                "{name}: ok (token valid for {})",
                humantime::format_duration(valid_for(&token))
            )?,
            Ok(None) => writeln!(out, "{name}: no token (flow = \"none\")")?,
            Err(e) => {
                writeln!(out, "{name}: FAILED: {e}")?;
                failed.push(name.clone());
            }
        }
    }
    if let Some(shared) = &config.shared_cache {
        // Redis down is not fatal at run time (each replica then keeps its own tokens), but an
        // operator who asks wants to know before the fleet shares nothing.
        let metrics = crate::metrics::Metrics::default().shared_cache();
        let answered = match SharedCache::new(shared, metrics) {
            Ok(cache) => cache.ping().await,
            Err(e) => Err(e),
        };
        match answered {
            Ok(()) => writeln!(out, "shared_cache: ok (Redis answered)")?,
            Err(e) => {
                writeln!(out, "shared_cache: FAILED: {e}")?;
                failed.push("shared_cache".to_owned());
            }
        }
    }
    Ok(if failed.is_empty() {
        CheckOutcome::TokensObtained
    } else {
        CheckOutcome::FetchFailed { upstreams: failed }
    })
}

/// `nexus-sidecar token NAME`: one bearer token for upstream `name`, freshly obtained.
pub async fn token(config: &Config, name: &str) -> Result<Secret, CliError> {
    let Some(upstream) = config.upstream(name) else {
        return Err(CliError::UnknownUpstream {
            name: name.to_owned(),
            known: config.upstreams.iter().map(|u| u.name.clone()).collect(),
        });
    };
    if matches!(upstream.auth.flow, Flow::None) {
        return Err(CliError::NoTokens(name.to_owned()));
    }
    match obtain(upstream, &Roots::load(), TokenCache::default()).await {
        Ok(Some(token)) => Ok(Secret::new(token.expose())),
        Ok(None) => Err(CliError::NoTokens(name.to_owned())),
        Err(source) => Err(CliError::Fetch {
            upstream: name.to_owned(),
            source,
        }),
    }
}

/// One token for `upstream`, the way the running sidecar would get it, within `auth.timeout`.
/// `None` for `flow = "none"`.
async fn obtain(
    upstream: &UpstreamConfig,
    roots: &Roots,
    cache: TokenCache,
) -> Result<Option<Arc<Token>>, FetchError> {
    let http = client::build(roots, upstream.ca_file.as_deref(), upstream.connect_timeout)?;
    // Nobody scrapes a one-shot command's metrics: a private registry takes them.
    let metrics = crate::metrics::Metrics::default().upstream(&upstream.name);
    let source = Arc::new(TokenSource::new(
        &upstream.name,
        &upstream.auth,
        cache,
        http,
        metrics,
    )?);
    let timeout = upstream.auth.timeout;
    match tokio::time::timeout(timeout, source.token()).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(TokenError::Timeout(timeout).into()),
    }
}

/// How long the token will still be sent, to the nearest second.
fn valid_for(token: &Token) -> Duration {
    let left = token.expires_at.saturating_duration_since(Instant::now());
    Duration::from_secs(left.as_secs() + u64::from(left.subsec_millis() >= 500))
}
