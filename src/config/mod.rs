//! Configuration: the TOML file, presets, and validation into typed values.
//!
//! [`Config::from_toml`] is the whole pipeline: refuse unknown keys (`keys`), parse into
//! values of the right types (`raw`), fill presets (`preset`), then validate every upstream
//! and resolve every secret (`validate`). Every problem in a file is reported at once, each at
//! the line of its key; only a syntax error stops the reading early. A `Config` that exists is
//! valid: nothing binds, connects or fetches before that. This module does not watch files or
//! reload; it only reads. `show` prints a `Config` back as TOML (the effective configuration
//! `nexus-sidecar check` shows).

mod keys;
mod preset;
mod raw;
mod show;
mod suggest;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderMap, StatusCode, Uri};

pub use raw::{ClientAuth, FlowKind, LogFormat, Preset};

use crate::secret::LoadedSecret;

/// Default `retry_on`: the statuses that trigger re-authentication and one replay.
pub const DEFAULT_RETRY_ON: &[u16] = &[401];
/// Default `max_replay_body`: request bodies up to this are buffered so they can be replayed.
pub const DEFAULT_MAX_REPLAY_BODY: u64 = 1024 * 1024;
/// Default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `request_timeout`: the whole upstream exchange until response headers arrive.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The default `refresh_before` is this share of the token's lifetime...
pub const DEFAULT_REFRESH_SHARE: f64 = 0.2;
/// ...but never more than this (linkerd's identity client clamps the same way).
pub const MAX_DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Default `min_refresh_interval`: at most one token request per upstream this often.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Default `token_wait`: how long a request with no live token waits for a token request.
pub const DEFAULT_TOKEN_WAIT: Duration = Duration::from_secs(5);
/// The largest `token_wait` accepted: an application request should not hang longer than this.
pub const MAX_TOKEN_WAIT: Duration = Duration::from_secs(5 * 60);
/// Default `token_lifetime`: used when a token carries neither `expires_in` nor a JWT `exp`.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Default `timeout` of one token request, connect to last byte.
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// Default `[log] level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default `[limits] max_connections`: connections from applications, all listeners together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `[limits] header_read_timeout`: from accept (or from the first byte of a later
/// head on a keep-alive connection) to a complete request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `[limits] idle_timeout`: a keep-alive connection with no request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `[limits] body_read_timeout`: a request body that stops arriving for this long.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `[limits] max_buffered`: all request bodies held for replay, together.
pub const DEFAULT_MAX_BUFFERED: u64 = 64 * 1024 * 1024;
/// Default `[shared_cache] key_prefix`: the start of every Redis key the sidecar writes.
pub const DEFAULT_SHARED_CACHE_PREFIX: &str = "nexus-sidecar";
/// Default `[shared_cache] timeout`: the bound on each Redis operation.
pub const DEFAULT_SHARED_CACHE_TIMEOUT: Duration = Duration::from_millis(500);
/// The shortest `[shared_cache] timeout`: below this even a Redis next door times out.
pub const MIN_SHARED_CACHE_TIMEOUT: Duration = Duration::from_millis(10);
/// The longest `[shared_cache] timeout`: a token request waits this long for a slow Redis
/// before it falls back to the local cache.
pub const MAX_SHARED_CACHE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `[shared_cache] key_prefix`.
pub const MAX_SHARED_CACHE_PREFIX_LEN: usize = 64;

/// A valid configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long in-flight requests may run after SIGTERM/SIGINT before they are cut off.
    pub shutdown_grace: Duration,
    /// `[admin]`, if present.
    pub admin: Option<AdminConfig>,
    /// `[log]`.
    pub log: LogConfig,
    /// `[limits]`: process-wide bounds on what applications may hold.
    pub limits: Limits,
    /// `[shared_cache]`, if present; without it every process keeps its own tokens.
    pub shared_cache: Option<SharedCacheConfig>,
    /// `[[upstream]]`, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Things that are allowed but deserve an operator's attention (literal secrets, plain
    /// http to a remote host). Logged once tracing is up.
    pub warnings: Vec<String>,
    /// The text this was parsed from: a reload without a file re-validates it, which reads
    /// every `{ env }` and `{ file }` secret again.
    pub text: SourceText,
}

/// Configuration text, which may hold literal secrets: `Debug` shows only its size.
#[derive(Clone)]
pub struct SourceText(std::sync::Arc<str>);

impl SourceText {
    /// The text itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SourceText {
    fn from(text: &str) -> Self {
        SourceText(text.into())
    }
}

impl fmt::Debug for SourceText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes of TOML>", self.0.len())
    }
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

/// `[limits]`: process-wide, over every listener together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections from applications, all listeners together; at least 1.
    pub max_connections: usize,
    /// From accept (or the previous response) to a complete request head.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// How long a request body may stop arriving.
    pub body_read_timeout: Duration,
    /// Bytes of request bodies held for replay, all requests together.
    pub max_buffered: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_buffered: DEFAULT_MAX_BUFFERED,
        }
    }
}

/// `[shared_cache]`: where replicas with the same credentials share their tokens.
#[derive(Debug, Clone)]
pub struct SharedCacheConfig {
    /// `redis://` or `rediss://` (TLS), with a host; may hold a password, so it is a secret
    /// and never printed.
    pub url: LoadedSecret,
    /// The start of every Redis key: 1 to [`MAX_SHARED_CACHE_PREFIX_LEN`] of `[A-Za-z0-9_.:-]`.
    pub key_prefix: String,
    /// The bound on each Redis operation, after which the sidecar falls back to its local
    /// cache; from [`MIN_SHARED_CACHE_TIMEOUT`] to [`MAX_SHARED_CACHE_TIMEOUT`].
    pub timeout: Duration,
}

/// One `[[upstream]]`: a listener, the API behind it, and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// The operator accepts a non-loopback `listen`: anyone who reaches it uses these
    /// credentials. Without it such a `listen` is refused.
    pub allow_remote: bool,
    pub target: Target,
    /// Static headers added to every forwarded request.
    pub headers: HeaderMap,
    pub retry_on: Vec<StatusCode>,
    pub max_replay_body: u64,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub auth: AuthConfig,
}

/// Where requests go: `scheme://authority[/base-path]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Prefixed to every request path; empty or starting with `/`, never ending with `/`.
    pub base_path: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// `[upstream.auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub flow: Flow,
    /// `None`: 20% of the token's lifetime, at most [`MAX_DEFAULT_REFRESH_BEFORE`].
    pub refresh_before: Option<Duration>,
    pub min_refresh_interval: Duration,
    pub token_lifetime: Duration,
    /// One token request, connect to last byte.
    pub timeout: Duration,
    /// `true`: obtain the token at start-up and keep it fresh without traffic; `false`: obtain
    /// it on the first request. Meaningful only for flows that fetch tokens.
    pub prefetch: bool,
    /// How long an application request with no live token may wait for a backoff or the rate
    /// limit to end; zero: not at all (a token request already in flight is always awaited, up
    /// to its `timeout`). At most [`MAX_TOKEN_WAIT`].
    pub token_wait: Duration,
    /// `true`: with `[shared_cache]`, share this upstream's token with the other replicas;
    /// `false`: keep it in this process. Meaningless without `[shared_cache]`, and for flows
    /// that fetch no tokens.
    pub shared: bool,
}

/// How the token is obtained, with the settings each flow needs and no others.
#[derive(Debug, Clone)]
pub enum Flow {
    /// OAuth2 `client_credentials` (RFC 6749 §4.4).
    ClientCredentials(ClientCredentials),
    /// OAuth2 `password` (RFC 6749 §4.3), refreshed with `refresh_token` (§6).
    Password(PasswordGrant),
    /// NexusHub's JSON `/authenticate` and `/refresh`.
    NexusHub(NexusHubLogin),
    /// A fixed token.
    Static(LoadedSecret),
    /// No authentication: the sidecar only forwards.
    None,
}

/// Settings of the `client_credentials` flow.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub token_url: Uri,
    pub client: Client,
    pub scope: Option<String>,
    pub extra_params: Vec<(String, String)>,
}

/// An OAuth2 client and how it authenticates at the token endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: LoadedSecret,
    pub secret: LoadedSecret,
    pub auth: ClientAuth,
}

/// Settings of the `password` flow.
#[derive(Debug, Clone)]
pub struct PasswordGrant {
    pub token_url: Uri,
    pub username: LoadedSecret,
    pub password: LoadedSecret,
    /// Base32 RFC 6238 secret; a fresh code goes with every password grant.
    pub totp_secret: Option<LoadedSecret>,
    /// Some servers also want the client authenticated on a password grant.
    pub client: Option<Client>,
    pub scope: Option<String>,
    pub extra_params: Vec<(String, String)>,
}

/// Settings of the `nexushub` flow.
#[derive(Debug, Clone)]
pub struct NexusHubLogin {
    /// Base URL, as configured.
    pub auth_url: Uri,
    /// `{auth_url}/authenticate`.
    pub authenticate_url: Uri,
    /// `{auth_url}/refresh`.
    pub refresh_url: Uri,
    pub user_key: LoadedSecret,
    pub user_secret: LoadedSecret,
}

impl Flow {
    /// The flow's name as written in `flow = "..."`.
    pub fn kind(&self) -> FlowKind {
        match self {
            Flow::ClientCredentials(_) => FlowKind::ClientCredentials,
            Flow::Password(_) => FlowKind::Password,
            Flow::NexusHub(_) => FlowKind::Nexushub,
            Flow::Static(_) => FlowKind::Static,
            Flow::None => FlowKind::None,
        }
    }

    /// Every secret the flow uses.
    pub fn secrets(&self) -> Vec<&LoadedSecret> {
        fn client(c: &Client) -> [&LoadedSecret; 2] {
            [&c.id, &c.secret]
        }
        match self {
            Flow::ClientCredentials(c) => client(&c.client).to_vec(),
            Flow::Password(p) => [&p.username, &p.password]
                .into_iter()
                .chain(p.totp_secret.as_ref())
                .chain(p.client.iter().flat_map(client))
                .collect(),
            Flow::NexusHub(n) => vec![&n.user_key, &n.user_secret],
            Flow::Static(t) => vec![t],
            Flow::None => Vec::new(),
        }
    }

    /// The URL tokens come from, for flows that have one.
    pub fn token_endpoint(&self) -> Option<&Uri> {
        match self {
            Flow::ClientCredentials(c) => Some(&c.token_url),
            Flow::Password(p) => Some(&p.token_url),
            Flow::NexusHub(n) => Some(&n.auth_url),
            Flow::Static(_) | Flow::None => None,
        }
    }
}

impl FlowKind {
    /// The name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            FlowKind::ClientCredentials => "client_credentials",
            FlowKind::Password => "password",
            FlowKind::Nexushub => "nexushub",
            FlowKind::Static => "static",
            FlowKind::None => "none",
        }
    }
}

/// Why a configuration was refused.
/// A TOML syntax error told by position and the parser's message only. toml's own `Display`
/// quotes the offending source line, and that line may hold a literal secret.
#[derive(Debug)]
pub struct SyntaxError {
    line: usize,
    column: usize,
    message: String,
}

impl SyntaxError {
    fn new(text: &str, e: &toml::de::Error) -> SyntaxError {
        let at = e.span().map_or(0, |s| s.start.min(text.len()));
        let before = text.get(..at).unwrap_or("");
        SyntaxError {
            line: before.matches('\n').count() + 1,
            column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
            message: e.message().trim_end().to_owned(),
        }
    }
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TOML parse error at line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file that is not TOML: the line, the column and what was expected.
    #[error("invalid configuration: {0}")]
    Parse(SyntaxError),
    /// Everything wrong with a file that is TOML, in line order: unknown keys, values of the
    /// wrong type, invalid settings.
    #[error("invalid configuration:{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

/// One thing wrong with a configuration that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the file.
    pub line: usize,
    /// Dotted path of the key, such as `upstream.nuvy.auth.token_url`.
    pub key: String,
    pub message: String,
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.0 {
            write!(f, "\n  line {}: `{}`: {}", p.line, p.key, p.message)?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates configuration text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let tree: keys::Node =
            toml::from_str(text).map_err(|e| ConfigError::Parse(SyntaxError::new(text, &e)))?;
        let mut keys = keys::Keys::check(&tree, text);
        let parsed = raw::parse(text);
        let mut problems = std::mem::take(&mut keys.unknown);
        for invalid in parsed.invalid {
            problems.push(keys.problem(text, Some(invalid.span), invalid.message));
        }
        match parsed.raw {
            Ok(raw) => validate::validate(raw, text, &keys, problems),
            Err(e) => {
                problems.push(keys.problem(text, e.span(), e.message().to_owned()));
                problems.sort_by_key(|p| p.line);
                Err(ConfigError::Invalid(problems))
            }
        }
    }

    /// Every `{ file = … }` secret in use, with the value read at load time.
    pub fn file_secrets(&self) -> Vec<&LoadedSecret> {
        self.upstreams
            .iter()
            .flat_map(|u| u.auth.flow.secrets())
            .chain(self.shared_cache.iter().map(|s| &s.url))
            .filter(|s| s.source.file().is_some())
            .collect()
    }

    /// The upstream called `name`.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

#[cfg(test)]
mod tests;
