//! In-process stand-ins of the five token APIs the README describes ("The five token APIs") and of
//! a protected API behind them, served over real loopback TCP (HTTP/1.1 and h2c, or TLS) for the
//! `demo` command and the end-to-end tests. Not a general OAuth2 server: each stand-in reproduces
//! one documented API, quirks included, and exposes knobs to make it misbehave on purpose.
//!
//! Layout: `server` (listener, connections, routing) → `gate` (counting, holding and injected
//! failures in front of every token endpoint) → one module per API (`nuvy_nexus`, `nuvy_legacy`,
//! `quantoz`, `nexudus`, `nexushub`) → `tokens` (registry of what was issued); `api` is the
//! protected API; `knobs` the shared state the knobs act on; `wire` small HTTP helpers.

mod api;
mod gate;
mod knobs;
mod nexudus;
mod nexushub;
mod nuvy_legacy;
mod nuvy_nexus;
mod quantoz;
mod server;
mod tokens;
mod wire;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use api::{download_byte, REVOKE_PATH};

use knobs::{lock, JwtLifetime, Shared};

/// Which documented token API a stand-in reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Nuvy Nexus: `POST /nexus/oauth2/token`, client_credentials, Basic or form credentials.
    NuvyNexus,
    /// Nuvy API (legacy): `POST /oauth2/token`, client_credentials, HTTP Basic only.
    NuvyLegacy,
    /// Quantoz Nexus identity: `POST /connect/token`, form credentials, `scope=api1`, rate-limited.
    Quantoz,
    /// Nexudus members portal: `POST /api/token`, password grant with optional TOTP, refresh tokens.
    Nexudus,
    /// NexusHub: JSON `POST /authenticate` and `POST /refresh`, no `expires_in`.
    NexusHub,
}

impl Api {
    /// Short name, also sent by the protected API in `x-standin-api`.
    pub fn name(self) -> &'static str {
        match self {
            Api::NuvyNexus => "nuvy-nexus",
            Api::NuvyLegacy => "nuvy",
            Api::Quantoz => "quantoz",
            Api::Nexudus => "nexudus",
            Api::NexusHub => "nexushub",
        }
    }

    /// The path(s) this API answers token requests on.
    fn token_paths(self) -> &'static [&'static str] {
        match self {
            Api::NuvyNexus => &["/nexus/oauth2/token"],
            Api::NuvyLegacy => &["/oauth2/token"],
            Api::Quantoz => &["/connect/token"],
            Api::Nexudus => &["/api/token"],
            Api::NexusHub => &["/authenticate", "/refresh"],
        }
    }

    /// `expires_in` the real API sends when no knob changes it (NexusHub sends none).
    fn default_expires_in(self) -> Option<u64> {
        match self {
            Api::Nexudus => Some(86_400),
            Api::NexusHub => None,
            Api::NuvyNexus | Api::NuvyLegacy | Api::Quantoz => Some(3600),
        }
    }
}

/// What a token endpoint accepts. `id`/`secret` are client_id/client_secret (Nuvy*, Quantoz),
/// username/password (Nexudus) or user_key/user_secret (NexusHub).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub id: String,
    pub secret: String,
    /// Base32 RFC 6238 secret (SHA1, 6 digits, 30 s); only Nexudus uses it, and then requires
    /// a valid `totp`.
    pub totp_secret: Option<String>,
}

impl Credentials {
    /// Credentials without a TOTP secret.
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        Credentials {
            id: id.into(),
            secret: secret.into(),
            totp_secret: None,
        }
    }

    /// The same credentials with a base32 TOTP secret (Nexudus two-factor authentication).
    pub fn with_totp(mut self, base32: impl Into<String>) -> Self {
        self.totp_secret = Some(base32.into());
        self
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("secret", &"***")
            .field("totp_secret", &self.totp_secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// An injected failure of the token endpoint (see [`StandIn::fail_token_requests`] and
/// [`StandIn::plan_token_faults`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// That status (500 if it is not a valid one) with `{"error":"server_error"}`.
    Status(u16),
    /// 429 with `Retry-After` and `{"error":"too_many_requests"}`.
    TooManyRequests { retry_after_secs: u64 },
    /// 200 `text/html`: a login page, as a misrouted request through a portal would get.
    Html200,
    /// 200 JSON that lacks `access_token`.
    MissingAccessToken,
    /// Never answers (until shutdown).
    Hang,
    /// Waits that long, then answers as usual: a slow but successful token endpoint (unlike
    /// [`Failure::Hang`]). A shutdown meanwhile ends the request without an answer.
    Delay(Duration),
    /// Closes the connection without a response (over HTTP/2: resets the stream).
    Close,
}

/// One request that reached the protected API.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    /// Exactly as received (percent-encoding preserved).
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    /// The bearer token presented, if any.
    pub token: Option<String>,
    /// Whether the API accepted it.
    pub authorized: bool,
    /// The revocation epoch the token was issued in: how many revocations
    /// ([`StandIn::revoke_all`], or `POST` [`REVOKE_PATH`]) came before its issue. `None`
    /// without a token, or for one this stand-in did not issue.
    pub token_epoch: Option<u64>,
    /// The token had been revoked when the request arrived: a revocation came between its
    /// issue and this use.
    pub revoked: bool,
    /// The token's granted lifetime was over when the request arrived.
    pub expired: bool,
    pub body: bytes::Bytes,
    pub version: http::Version,
}

impl Seen {
    /// The `x-request-id` header as received (the sidecar forwards the application's, or makes
    /// one up), so the upstream attempts of one application request can be joined.
    pub fn request_id(&self) -> Option<&str> {
        self.headers.get("x-request-id")?.to_str().ok()
    }
}

/// A running stand-in: one token API and the protected API on one loopback listener.
/// Stops on [`StandIn::shutdown`] or when dropped.
pub struct StandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for StandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandIn")
            .field("api", &self.shared.api)
            .field("addr", &self.addr)
            .finish()
    }
}

impl StandIn {
    /// Binds `127.0.0.1:0` and serves HTTP/1.1 and h2c.
    pub async fn start(api: Api, credentials: Credentials) -> std::io::Result<StandIn> {
        Self::launch(api, credentials, None).await
    }

    /// Binds `127.0.0.1:0` and serves TLS; HTTP/2 or HTTP/1.1 as ALPN negotiates (both are
    /// detected when the `ServerConfig` offers no ALPN).
    pub async fn start_tls(
        api: Api,
        credentials: Credentials,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<StandIn> {
        Self::launch(api, credentials, Some(tls)).await
    }

    async fn launch(
        api: Api,
        credentials: Credentials,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<StandIn> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(api, credentials));
        let is_tls = tls.is_some();
        let task = tokio::spawn(server::run(listener, tls, shared.clone()));
        tracing::debug!(api = api.name(), %addr, tls = is_tls, "stand-in started");
        Ok(StandIn {
            shared,
            addr,
            tls: is_tls,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` over TLS.
    pub fn base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The token endpoint URL; for NexusHub the auth URL (`/authenticate`, `/refresh` below it).
    pub fn token_url(&self) -> String {
        match self.shared.api {
            Api::NexusHub => self.base_url(),
            api => format!("{}{}", self.base_url(), api.token_paths()[0]),
        }
    }

    pub fn api(&self) -> Api {
        self.shared.api
    }

    /// The `[upstream.auth]` lines that make the sidecar sign in here with `c`, written as
    /// literal secrets (a stand-in's credentials protect nothing).
    pub fn auth_toml(&self, c: &Credentials) -> String {
        let (id, secret, url) = (&c.id, &c.secret, self.token_url());
        let client = |auth: &str| {
            format!("flow = \"client_credentials\"\ntoken_url = \"{url}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\nclient_auth = \"{auth}\"\n")
        };
        match self.api() {
            Api::NuvyNexus | Api::NuvyLegacy => client("basic"),
            Api::Quantoz => client("body") + "scope = \"api1\"\n",
            Api::Nexudus => {
                let totp = c.totp_secret.as_ref().map(|t| format!("totp_secret = \"{t}\"\n"));
                format!("flow = \"password\"\ntoken_url = \"{url}\"\nusername = \"{id}\"\npassword = \"{secret}\"\n{}", totp.unwrap_or_default())
            }
            Api::NexusHub => format!("flow = \"nexushub\"\nauth_url = \"{url}\"\nuser_key = \"{id}\"\nuser_secret = \"{secret}\"\n"),
        }
    }

    /// `expires_in` of tokens issued from now on; `None` omits the field. Ignored by NexusHub,
    /// which never sends one (its JWT lifetime governs).
    pub fn set_expires_in(&self, secs: Option<u64>) {
        lock(&self.shared.knobs).expires_in = secs;
    }

    /// `exp` claim of JWTs issued from now on; `None` issues JWTs without `exp`. Until called,
    /// `exp` follows `expires_in`, or one hour when there is none.
    pub fn set_jwt_lifetime(&self, secs: Option<u64>) {
        lock(&self.shared.knobs).jwt_lifetime = JwtLifetime::Set(secs);
    }

    /// Rotates what the token endpoint accepts.
    pub fn set_credentials(&self, c: Credentials) {
        lock(&self.shared.knobs).credentials = c;
    }

    /// NuvyNexus: the scopes the App Client may request (default `read write`).
    pub fn set_scopes(&self, allowed: &[&str]) {
        lock(&self.shared.knobs).scopes = allowed.iter().map(|s| s.to_string()).collect();
    }

    /// NuvyNexus: answer 501 `unsupported_grant_type` (grant not enabled for the App Client).
    pub fn disable_grant(&self, yes: bool) {
        lock(&self.shared.knobs).grant_disabled = yes;
    }

    /// Nexudus: answer 400 `must_reset_password` with a `reset-…` token in `error_description`.
    pub fn require_password_reset(&self, yes: bool) {
        lock(&self.shared.knobs).password_reset = yes;
    }

    /// Every access token issued so far becomes invalid at the protected API. Each call (and
    /// each `POST` [`REVOKE_PATH`]) starts a new revocation epoch; see [`Seen::token_epoch`].
    pub fn revoke_all(&self) {
        lock(&self.shared.tokens).revoke_all();
    }

    /// How many revocations there have been: the current revocation epoch (0 before the first).
    pub fn revocations(&self) -> u64 {
        lock(&self.shared.tokens).epoch()
    }

    /// Refresh tokens issued so far stop working (Nexudus, NexusHub).
    pub fn invalidate_refresh_tokens(&self) {
        lock(&self.shared.tokens).invalidate_refresh_tokens();
    }

    /// Refresh tokens rotate: a refresh spends the refresh token it presents, and its answer
    /// carries the successor (Nexudus always sends one; NexusHub, which documents no rotation,
    /// sends one only while this is on). A spent refresh token presented again is refused
    /// (Nexudus: 400 `invalid_grant`; NexusHub: 401 `unauthorized`) and counted in
    /// [`StandIn::superseded_refresh_tokens`]. Off by default: the documented APIs keep a
    /// presented refresh token valid.
    pub fn rotate_refresh_tokens(&self, yes: bool) {
        lock(&self.shared.knobs).rotate_refresh = yes;
    }

    /// How many times a refresh token already spent by a rotating refresh was presented again:
    /// a client that replayed a superseded refresh token (0 if none ever was).
    pub fn superseded_refresh_tokens(&self) -> usize {
        lock(&self.shared.tokens).refresh_replays()
    }

    /// The protected API answers 401 `invalid_token` to everything.
    pub fn set_api_always_401(&self, yes: bool) {
        lock(&self.shared.knobs).api_always_401 = yes;
    }

    /// The next `n` token requests answer with `f` (`usize::MAX`: until cleared); 0 clears.
    /// While any are pending they take precedence over a plan set by
    /// [`StandIn::plan_token_faults`], whose entries those requests spend all the same.
    pub fn fail_token_requests(&self, n: usize, f: Failure) {
        lock(&self.shared.faults).counted = (n > 0).then_some((n, f));
    }

    /// A seeded fault plan: counting from now, the n-th token request (0-based) gets `plan[n]`
    /// (`None`: answered as usual); past the plan's end, every request is answered as usual.
    /// Replaces any earlier plan; an empty one clears it. Requests are taken in the order they
    /// reach the gate's failure check (after any hold). A failure pending from
    /// [`StandIn::fail_token_requests`] takes precedence: the request gets that failure and its
    /// plan entry is dropped, so `plan[n]` still belongs to the n-th request.
    pub fn plan_token_faults(&self, plan: Vec<Option<Failure>>) {
        let mut faults = lock(&self.shared.faults);
        faults.plan = plan;
        faults.planned = 0;
    }

    /// How many entries of the current plan token requests have spent (at most its length):
    /// `plan[..n]` is what they were given.
    pub fn planned_token_requests(&self) -> usize {
        lock(&self.shared.faults).planned
    }

    /// While on, token requests wait (after being counted) until it is turned off; they are
    /// then answered as usual.
    pub fn hold_token_requests(&self, yes: bool) {
        self.shared.hold.send_replace(yes);
    }

    /// How many token requests are held right now.
    pub fn held_token_requests(&self) -> usize {
        *self.shared.held.borrow()
    }

    /// Resolves once at least `n` token requests are held.
    pub async fn wait_held(&self, n: usize) {
        let mut rx = self.shared.held.subscribe();
        // The sender lives in `shared`, which we hold: the channel cannot close.
        let _ = rx.wait_for(|held| *held >= n).await;
    }

    /// Every request that reached a token endpoint path, whatever its outcome.
    pub fn token_requests(&self) -> usize {
        *self.shared.token_requests.borrow()
    }

    /// Token requests by `grant_type` form field (`client_credentials`, `password`,
    /// `refresh_token`, …) or, for NexusHub, by path (`authenticate`, `refresh`).
    pub fn token_requests_by_grant(&self, grant: &str) -> usize {
        lock(&self.shared.by_grant).get(grant).copied().unwrap_or(0)
    }

    /// Resolves once [`StandIn::token_requests`] is at least `n`.
    pub async fn wait_token_requests(&self, n: usize) {
        let mut rx = self.shared.token_requests.subscribe();
        let _ = rx.wait_for(|count| *count >= n).await;
    }

    /// Access tokens issued, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.shared.tokens).access_tokens()
    }

    /// The requests that reached the protected API, in arrival order (the most recent
    /// 10 000: a demo under load must not grow without bound).
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).iter().cloned().collect()
    }

    /// How many requests reached the protected API.
    pub fn api_requests(&self) -> usize {
        *self.shared.api_requests.borrow()
    }

    /// Resolves once [`StandIn::api_requests`] is at least `n` (e.g. a `/slow` request arrived).
    pub async fn wait_api_requests(&self, n: usize) {
        let mut rx = self.shared.api_requests.subscribe();
        let _ = rx.wait_for(|count| *count >= n).await;
    }

    /// Stops accepting and drops every connection; hanging and held requests end without an
    /// answer. Also done on drop.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        self.task.abort();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shutdown();
    }
}
