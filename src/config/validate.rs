//! Validation: raw settings into typed ones, collecting every problem with its line.
//!
//! All problems are reported at once, so an operator fixes a file in one pass. Secrets are
//! resolved here, because an unset variable or a missing file is a configuration error that
//! must stop start-up before anything binds.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;

use http::header::{HeaderName, HeaderValue};
use http::uri::Scheme;
use http::{HeaderMap, StatusCode, Uri};
use toml::Spanned;

use super::raw::{FlowKind, RawAuth, RawConfig, RawUpstream};
use super::*;
use crate::headers::is_hop_by_hop;
use crate::secret::{LoadedSecret, SecretSource};

pub(super) fn validate(raw: RawConfig, text: &str) -> Result<Config, ConfigError> {
    let mut v = Validator {
        text,
        problems: Vec::new(),
        warnings: Vec::new(),
        names: HashSet::new(),
        listens: BTreeMap::new(),
    };
    let admin = raw.admin.and_then(|a| {
        let line = v.line(&a.listen.span());
        v.listen("admin.listen", &a.listen)
            .map(|listen| (AdminConfig { listen }, line))
    });
    let log = LogConfig {
        level: raw
            .log
            .as_ref()
            .and_then(|l| l.level.clone())
            .unwrap_or_else(|| DEFAULT_LOG_LEVEL.into()),
        format: raw.log.as_ref().and_then(|l| l.format).unwrap_or_default(),
    };
    if raw.upstream.is_empty() {
        v.problem(
            1,
            "upstream",
            "no `[[upstream]]` is configured; the sidecar would do nothing".into(),
        );
    }
    if let Some((admin, _)) = &admin {
        v.listens.insert(admin.listen, "admin".into());
    }
    let mut upstreams = Vec::new();
    for spanned in raw.upstream {
        let span = spanned.span();
        if let Some(u) = v.upstream(spanned.into_inner(), span) {
            upstreams.push(u);
        }
    }
    if !v.problems.is_empty() {
        return Err(ConfigError::Invalid(v.problems));
    }
    Ok(Config {
        shutdown_grace: raw.shutdown_grace.map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
        admin: admin.map(|(a, _)| a),
        log,
        upstreams,
        warnings: v.warnings,
        text: text.into(),
    })
}

struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<String>,
    /// Upstream names seen so far, to refuse duplicates.
    names: HashSet<String>,
    /// Listen addresses taken so far, and by whom.
    listens: BTreeMap<SocketAddr, String>,
}

impl Validator<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].matches('\n').count() + 1
    }

    fn problem(&mut self, line: usize, key: &str, message: String) {
        self.problems.push(Problem {
            line,
            key: key.into(),
            message,
        });
    }

    fn spanned_problem<T>(&mut self, at: &Spanned<T>, key: &str, message: String) {
        let line = self.line(&at.span());
        self.problem(line, key, message);
    }

    fn upstream(&mut self, raw: RawUpstream, span: Range<usize>) -> Option<UpstreamConfig> {
        let line = self.line(&span);
        let name = raw.name.get_ref().clone();
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name {
            self.spanned_problem(
                &raw.name,
                "upstream.name",
                format!("{name:?} is not a valid name: use lower-case letters, digits and `-`"),
            );
        }
        let key = |k: &str| format!("upstream.{name}.{k}");
        if !self.names.insert(name.clone()) {
            self.spanned_problem(
                &raw.name,
                &key("name"),
                "duplicate upstream name; names must be unique".into(),
            );
        }
        let (auth_line, auth_span, mut auth) = match raw.auth {
            Some(a) => (self.line(&a.span()), a.span(), a.into_inner()),
            None => (line, span.clone(), RawAuth::default()),
        };
        let mut target = raw.target;
        if let Some(preset) = raw.preset {
            let environment = raw.environment.as_ref().map(|e| e.get_ref().as_str());
            let explicit_target = target.as_ref().map(|t| t.get_ref().as_str());
            match preset.defaults(environment, explicit_target) {
                Ok(d) => preset::fill(d, &mut target, &mut auth, auth_span),
                Err(msg) => self.problem(line, &key("preset"), msg),
            }
        } else if let Some(env) = &raw.environment {
            self.spanned_problem(
                env,
                &key("environment"),
                "`environment` only applies with a `preset`".into(),
            );
        }
        let listen = self.listen(&key("listen"), &raw.listen);
        // Port 0 asks the OS for a free port: many listeners may share that spelling.
        if let Some(addr) = listen.filter(|a| a.port() != 0) {
            if let Some(other) = self.listens.insert(addr, name.clone()) {
                self.spanned_problem(
                    &raw.listen,
                    &key("listen"),
                    format!("{addr} is already the listen address of `{other}`"),
                );
            }
        }
        let target = match &target {
            Some(t) => self.target(&key("target"), t),
            None => {
                self.problem(line, &key("target"), "missing: the API's base URL, such as \"https://qa.api.nuvy.ai\" (or use a `preset`)".into());
                None
            }
        };
        let headers = match &raw.headers {
            Some(h) => self.headers(self.line(&h.span()), &key("headers"), h.get_ref()),
            None => HeaderMap::new(),
        };
        let retry_on = match raw.retry_on {
            Some(r) => self.retry_on(self.line(&r.span()), &key("retry_on"), Some(r.into_inner())),
            None => self.retry_on(line, &key("retry_on"), None),
        };
        if let Some(ca) = &raw.ca_file {
            if let Err(msg) = check_ca_file(ca.get_ref()) {
                self.spanned_problem(ca, &key("ca_file"), msg);
            }
        }
        for (name, d) in [
            ("connect_timeout", raw.connect_timeout),
            ("request_timeout", raw.request_timeout),
        ] {
            if d.is_some_and(|d| d.0.is_zero()) {
                let msg = "must be greater than zero: every request would time out".into();
                self.problem(line, &key(name), msg);
            }
        }
        let auth = self.auth(auth_line, &format!("upstream.{name}.auth"), auth);
        Some(UpstreamConfig {
            name,
            listen: listen?,
            target: target?,
            headers,
            retry_on,
            max_replay_body: raw.max_replay_body.map_or(DEFAULT_MAX_REPLAY_BODY, |s| s.0),
            connect_timeout: raw.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
            request_timeout: raw.request_timeout.map_or(DEFAULT_REQUEST_TIMEOUT, |d| d.0),
            ca_file: raw.ca_file.map(Spanned::into_inner),
            auth: auth?,
        })
    }

    fn listen(&mut self, key: &str, raw: &Spanned<String>) -> Option<SocketAddr> {
        match parse_listen(raw.get_ref()) {
            Ok(addr) => Some(addr),
            Err(msg) => {
                self.spanned_problem(raw, key, msg);
                None
            }
        }
    }

    fn target(&mut self, key: &str, raw: &Spanned<String>) -> Option<Target> {
        let uri = self.url(key, raw)?;
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let parts = uri.into_parts();
        Some(Target {
            scheme: parts.scheme?,
            authority: parts.authority?,
            base_path,
        })
    }

    /// An absolute http(s) URL without credentials, query or fragment.
    fn url(&mut self, key: &str, raw: &Spanned<String>) -> Option<Uri> {
        let text = raw.get_ref();
        let checked = (|| {
            let uri: Uri = text
                .parse()
                .map_err(|e| format!("{text:?} is not a valid URL ({e})"))?;
            let scheme = uri.scheme().ok_or_else(|| {
                format!("{text:?} has no scheme; expected https://host[:port][/path]")
            })?;
            if *scheme != Scheme::HTTPS && *scheme != Scheme::HTTP {
                return Err(format!("{text:?}: scheme must be https or http"));
            }
            let authority = uri
                .authority()
                .ok_or_else(|| format!("{text:?} has no host"))?;
            if authority.as_str().contains('@') {
                return Err(format!("the URL for `{key}` carries credentials; put them in the secret settings instead"));
            }
            if uri.query().is_some() || text.contains('#') {
                return Err(format!(
                    "{text:?} has a query or fragment; expected scheme://host[:port][/path]"
                ));
            }
            Ok(uri)
        })();
        match checked {
            Ok(uri) => {
                if uri.scheme() == Some(&Scheme::HTTP)
                    && !is_loopback_host(uri.host().unwrap_or_default())
                {
                    self.warnings.push(format!("`{key}` is plain http to a remote host ({text}): tokens and credentials cross the network unencrypted"));
                }
                Some(uri)
            }
            Err(msg) => {
                self.spanned_problem(raw, key, msg);
                None
            }
        }
    }

    fn headers(&mut self, line: usize, key: &str, raw: &BTreeMap<String, String>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in raw {
            let parsed = (|| {
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{name:?} is not a valid header name"))?;
                if n == http::header::AUTHORIZATION || n == http::header::HOST || is_hop_by_hop(&n)
                {
                    return Err(format!(
                        "`{n}` is managed by the sidecar and cannot be set here"
                    ));
                }
                let mut v = HeaderValue::from_str(value)
                    .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
                // Static headers sometimes carry API keys: keep them out of Debug output and
                // out of HPACK's index.
                v.set_sensitive(true);
                Ok((n, v))
            })();
            match parsed {
                Ok((n, v)) => {
                    map.append(n, v);
                }
                Err(msg) => self.problem(line, key, msg),
            }
        }
        map
    }

    fn retry_on(&mut self, line: usize, key: &str, raw: Option<Vec<u16>>) -> Vec<StatusCode> {
        let codes = raw.unwrap_or_else(|| DEFAULT_RETRY_ON.to_vec());
        codes
            .into_iter()
            .filter_map(|c| match StatusCode::from_u16(c) {
                Ok(s) if s.is_client_error() || s.is_server_error() => Some(s),
                _ => {
                    self.problem(
                        line,
                        key,
                        format!("{c} is not an HTTP error status (400-599)"),
                    );
                    None
                }
            })
            .collect()
    }

    fn secret(&mut self, key: &str, raw: &Spanned<SecretSource>) -> Option<LoadedSecret> {
        let source = raw.get_ref().clone();
        if source.is_literal() {
            self.warnings.push(format!("`{key}` is written in the configuration file; use {{ env = ... }} or {{ file = ... }} outside local development"));
        }
        match source.resolve() {
            Ok(value) => Some(LoadedSecret { source, value }),
            Err(e) => {
                self.spanned_problem(raw, key, e.to_string());
                None
            }
        }
    }

    fn auth(&mut self, line: usize, key: &str, raw: RawAuth) -> Option<AuthConfig> {
        let Some(kind) = raw.flow else {
            self.problem(line, &format!("{key}.flow"), "missing: one of client_credentials, password, nexushub, static, none (or use a `preset`)".into());
            return None;
        };
        let mut f = FlowFields {
            v: self,
            key,
            line,
            kind,
            ok: true,
        };
        f.forbid_others(&raw);
        let flow = match kind {
            FlowKind::ClientCredentials => {
                let token_url = f.url("token_url", &raw.token_url);
                let client = f.client(&raw, true);
                Flow::ClientCredentials(ClientCredentials {
                    token_url: token_url?,
                    client: client??,
                    scope: raw.scope.map(Spanned::into_inner),
                    extra_params: raw
                        .extra_params
                        .map(|e| e.into_inner().into_iter().collect())
                        .unwrap_or_default(),
                })
            }
            FlowKind::Password => {
                let token_url = f.url("token_url", &raw.token_url);
                let username = f.required("username", &raw.username);
                let password = f.required("password", &raw.password);
                let totp_secret = raw
                    .totp_secret
                    .as_ref()
                    .and_then(|t| f.v.secret(&format!("{key}.totp_secret"), t));
                if let Some(t) = &totp_secret {
                    if crate::token::totp::check_secret(&t.value).is_err() {
                        f.v.problem(
                            line,
                            &format!("{key}.totp_secret"),
                            "not a valid base32 RFC 6238 secret".into(),
                        );
                        f.ok = false;
                    }
                }
                let client = f.client(&raw, false);
                Flow::Password(PasswordGrant {
                    token_url: token_url?,
                    username: username?,
                    password: password?,
                    totp_secret,
                    client: client?,
                    scope: raw.scope.map(Spanned::into_inner),
                    extra_params: raw
                        .extra_params
                        .map(|e| e.into_inner().into_iter().collect())
                        .unwrap_or_default(),
                })
            }
            FlowKind::Nexushub => {
                let auth_url = f.url("auth_url", &raw.auth_url);
                let user_key = f.required("user_key", &raw.user_key);
                let user_secret = f.required("user_secret", &raw.user_secret);
                let auth_url = auth_url?;
                Flow::NexusHub(NexusHubLogin {
                    authenticate_url: join(&auth_url, "authenticate")?,
                    refresh_url: join(&auth_url, "refresh")?,
                    auth_url,
                    user_key: user_key?,
                    user_secret: user_secret?,
                })
            }
            FlowKind::Static => {
                let token = f.required("token", &raw.token)?;
                if crate::headers::bearer(token.value.expose()).is_none() {
                    let msg = "the token holds characters an HTTP header cannot carry".into();
                    f.v.problem(line, &format!("{key}.token"), msg);
                    return None;
                }
                Flow::Static(token)
            }
            FlowKind::None => Flow::None,
        };
        if !f.ok {
            return None;
        }
        let token_lifetime = raw.token_lifetime.map_or(DEFAULT_TOKEN_LIFETIME, |d| d.0);
        for (name, d) in [
            ("token_lifetime", Some(token_lifetime)),
            ("timeout", raw.timeout.map(|d| d.0)),
            ("refresh_before", raw.refresh_before.map(|d| d.0)),
        ] {
            if d == Some(Duration::ZERO) {
                self.problem(
                    line,
                    &format!("{key}.{name}"),
                    "must be greater than zero".into(),
                );
            }
        }
        // Checked whatever the flow, like the values above; `static` and `none` ignore it.
        let token_wait = raw.token_wait.map(|d| (d.span(), d.into_inner().0));
        if let Some((span, d)) = &token_wait {
            if *d > MAX_TOKEN_WAIT {
                let line = self.line(span);
                let msg = format!(
                    "must be at most {} (got {}): an application request would hang that long waiting for a token",
                    humantime::format_duration(MAX_TOKEN_WAIT),
                    humantime::format_duration(*d)
                );
                self.problem(line, &format!("{key}.token_wait"), msg);
            }
        }
        Some(AuthConfig {
            flow,
            refresh_before: raw.refresh_before.map(|d| d.0),
            min_refresh_interval: raw
                .min_refresh_interval
                .map_or(DEFAULT_MIN_REFRESH_INTERVAL, |d| d.0),
            token_lifetime,
            timeout: raw.timeout.map_or(DEFAULT_TOKEN_TIMEOUT, |d| d.0),
            prefetch: raw.prefetch.unwrap_or(true),
            token_wait: token_wait.map_or(DEFAULT_TOKEN_WAIT, |(_, d)| d),
        })
    }
}

/// Checks one flow's fields: required ones present, foreign ones absent.
struct FlowFields<'v, 'a> {
    v: &'v mut Validator<'a>,
    key: &'v str,
    line: usize,
    kind: FlowKind,
    ok: bool,
}

impl FlowFields<'_, '_> {
    fn missing(&mut self, field: &str) {
        let msg = format!("missing: flow `{}` needs `{field}`", self.kind.name());
        self.v
            .problem(self.line, &format!("{}.{field}", self.key), msg);
        self.ok = false;
    }

    fn required(
        &mut self,
        field: &str,
        raw: &Option<Spanned<SecretSource>>,
    ) -> Option<LoadedSecret> {
        let Some(raw) = raw else {
            self.missing(field);
            return None;
        };
        let got = self.v.secret(&format!("{}.{field}", self.key), raw);
        self.ok &= got.is_some();
        got
    }

    fn url(&mut self, field: &str, raw: &Option<Spanned<String>>) -> Option<Uri> {
        let Some(raw) = raw else {
            self.missing(field);
            return None;
        };
        let got = self.v.url(&format!("{}.{field}", self.key), raw);
        self.ok &= got.is_some();
        got
    }

    /// `client_id` + `client_secret`: both required, or (when optional) both or neither.
    fn client(&mut self, raw: &RawAuth, required: bool) -> Option<Option<Client>> {
        if !required && raw.client_id.is_none() && raw.client_secret.is_none() {
            return Some(None);
        }
        let id = self.required("client_id", &raw.client_id);
        let secret = self.required("client_secret", &raw.client_secret);
        Some(Some(Client {
            id: id?,
            secret: secret?,
            auth: raw
                .client_auth
                .as_ref()
                .map(|c| *c.get_ref())
                .unwrap_or_default(),
        }))
    }

    fn forbid_others(&mut self, raw: &RawAuth) {
        use FlowKind::*;
        fn at<T>(field: &Option<Spanned<T>>) -> Option<Range<usize>> {
            field.as_ref().map(Spanned::span)
        }
        const TOKEN_ENDPOINT: &[FlowKind] = &[ClientCredentials, Password];
        /// A field's name, where it is written (if it is), and the flows it belongs to.
        type Field = (&'static str, Option<Range<usize>>, &'static [FlowKind]);
        let present: [Field; 13] = [
            ("token_url", at(&raw.token_url), TOKEN_ENDPOINT),
            ("client_id", at(&raw.client_id), TOKEN_ENDPOINT),
            ("client_secret", at(&raw.client_secret), TOKEN_ENDPOINT),
            ("client_auth", at(&raw.client_auth), TOKEN_ENDPOINT),
            ("scope", at(&raw.scope), TOKEN_ENDPOINT),
            ("extra_params", at(&raw.extra_params), TOKEN_ENDPOINT),
            ("username", at(&raw.username), &[Password]),
            ("password", at(&raw.password), &[Password]),
            ("totp_secret", at(&raw.totp_secret), &[Password]),
            ("auth_url", at(&raw.auth_url), &[Nexushub]),
            ("user_key", at(&raw.user_key), &[Nexushub]),
            ("user_secret", at(&raw.user_secret), &[Nexushub]),
            ("token", at(&raw.token), &[Static]),
        ];
        for (field, span, flows) in present {
            let Some(span) = span else { continue };
            if !flows.contains(&self.kind) {
                let users: Vec<&str> = flows.iter().map(|f| f.name()).collect();
                let msg = format!(
                    "does not belong to flow `{}`; it is used by: {}",
                    self.kind.name(),
                    users.join(", ")
                );
                let line = self.v.line(&span);
                self.v.problem(line, &format!("{}.{field}", self.key), msg);
                self.ok = false;
            }
        }
    }
}

/// The file must hold at least one PEM certificate: found now, it is an exit 64, not a failure
/// after the listeners are bound.
fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read `{shown}`: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{shown}` is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("`{shown}` holds no PEM certificate"));
    }
    Ok(())
}

/// `"8081"` binds loopback; `"host:port"` binds what it says; `localhost` means 127.0.0.1.
pub(crate) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(port) = t.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = t.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
    }
    t.parse::<SocketAddr>().map_err(|_| {
        format!("{text:?} is not a listen address; expected a port (\"8081\") or ip:port (\"127.0.0.1:8081\", \"[::1]:8081\")")
    })
}

/// `base` + `/` + `path`, whatever trailing slash `base` has.
fn join(base: &Uri, path: &str) -> Option<Uri> {
    format!("{}/{path}", base.to_string().trim_end_matches('/'))
        .parse()
        .ok()
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
