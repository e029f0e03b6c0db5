//! Validation: raw settings into typed ones, collecting every problem with its line.
//!
//! All problems are reported at once, so an operator fixes a file in one pass. Each is reported
//! once: a value `raw` could not read is already a problem and counts as written (never
//! "missing") here, and a preset that cannot apply is one problem, not one more for every
//! setting it would have filled. Secrets are resolved here, because an unset variable or a
//! missing file is a configuration error that must stop start-up before anything binds.

mod shared_cache;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;

use http::header::{HeaderName, HeaderValue};
use http::uri::Scheme;
use http::{HeaderMap, StatusCode, Uri};

use super::keys::{upstream_label, Keys};
use super::preset::PresetError;
use super::raw::{Field, FlowKind, RawAuth, RawConfig, RawLimits, RawUpstream};
use super::*;
use crate::headers::is_hop_by_hop;
use crate::secret::{LoadedSecret, SecretSource, MASK};

/// The value of an optional field, if it is written and readable.
fn value<T>(field: &Option<Field<T>>) -> Option<&T> {
    field.as_ref().and_then(Field::get)
}

/// Validates `raw`, read from `text`, adding to `problems` (what was found while reading it).
pub(super) fn validate(
    raw: RawConfig,
    text: &str,
    keys: &Keys,
    problems: Vec<Problem>,
) -> Result<Config, ConfigError> {
    let mut v = Validator {
        text,
        keys,
        problems,
        warnings: Vec::new(),
        names: HashSet::new(),
        listens: BTreeMap::new(),
    };
    let admin = raw.admin.and_then(|a| match &a.listen {
        Some(listen) => v.listen("admin.listen", listen),
        None => {
            let line = keys.line("admin").unwrap_or(1);
            let msg = "missing: the admin endpoints' address, such as \"127.0.0.1:9901\"";
            v.missing(line, "admin.listen", msg.into());
            None
        }
    });
    let log = LogConfig {
        level: raw
            .log
            .as_ref()
            .and_then(|l| value(&l.level))
            .cloned()
            .unwrap_or_else(|| DEFAULT_LOG_LEVEL.into()),
        format: raw
            .log
            .as_ref()
            .and_then(|l| value(&l.format))
            .copied()
            .unwrap_or_default(),
    };
    let limits = v.limits(raw.limits.as_ref());
    let shared_cache = raw.shared_cache.and_then(|s| v.shared_cache(s));
    if raw.upstream.is_empty() {
        // Not when `[[upstreams]]` is already reported as a misspelling of it.
        v.missing(
            1,
            "upstream",
            "no `[[upstream]]` is configured; the sidecar would do nothing".into(),
        );
    }
    if let Some(listen) = admin {
        v.listens.insert(listen, "admin".into());
    }
    let mut upstreams = Vec::new();
    for (index, spanned) in raw.upstream.into_iter().enumerate() {
        let span = spanned.span();
        if let Some(u) = v.upstream(spanned.into_inner(), span, index) {
            upstreams.push(u);
        }
    }
    if !v.problems.is_empty() {
        v.problems.sort_by_key(|p| p.line);
        return Err(ConfigError::Invalid(v.problems));
    }
    Ok(Config {
        shutdown_grace: value(&raw.shutdown_grace).map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
        admin: admin.map(|listen| AdminConfig { listen }),
        log,
        limits,
        shared_cache,
        upstreams,
        warnings: v.warnings,
        text: text.into(),
    })
}

struct Validator<'a> {
    text: &'a str,
    keys: &'a Keys,
    problems: Vec<Problem>,
    warnings: Vec<String>,
    /// Upstream names seen so far, to refuse duplicates.
    names: HashSet<String>,
    /// Listen addresses taken so far, and by whom.
    listens: BTreeMap<SocketAddr, String>,
}

impl Validator<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    fn problem(&mut self, line: usize, key: &str, message: String) {
        self.problems.push(Problem {
            line,
            key: key.into(),
            message,
        });
    }

    /// `key` is not written. Unless a misspelling of it is, which is already reported.
    fn missing(&mut self, line: usize, key: &str, message: String) {
        if !self.keys.meant(key) {
            self.problem(line, key, message);
        }
    }

    /// A problem on the line where `span` starts.
    fn at(&mut self, span: &Range<usize>, key: &str, message: String) {
        let line = self.line(span);
        self.problem(line, key, message);
    }

    fn limits(&mut self, raw: Option<&RawLimits>) -> Limits {
        let mut limits = Limits::default();
        let Some(raw) = raw else {
            return limits;
        };
        if let Some(field) = &raw.max_connections {
            if let Some(&n) = field.get() {
                match usize::try_from(n) {
                    Ok(n) if n >= 1 => limits.max_connections = n,
                    _ => self.at(
                        &field.span(),
                        "limits.max_connections",
                        format!("must be at least 1 (got {n}): no application could connect"),
                    ),
                }
            }
        }
        for (name, field, slot) in [
            (
                "header_read_timeout",
                &raw.header_read_timeout,
                &mut limits.header_read_timeout,
            ),
            ("idle_timeout", &raw.idle_timeout, &mut limits.idle_timeout),
            (
                "body_read_timeout",
                &raw.body_read_timeout,
                &mut limits.body_read_timeout,
            ),
        ] {
            let Some(field) = field else { continue };
            match field.get() {
                Some(d) if d.0.is_zero() => self.at(
                    &field.span(),
                    &format!("limits.{name}"),
                    "must be greater than zero: every connection would be cut at once".into(),
                ),
                Some(d) => *slot = d.0,
                None => {}
            }
        }
        if let Some(size) = value(&raw.max_buffered) {
            limits.max_buffered = size.0;
        }
        limits
    }

    fn upstream(
        &mut self,
        raw: RawUpstream,
        span: Range<usize>,
        index: usize,
    ) -> Option<UpstreamConfig> {
        let line = self.line(&span);
        let name = value(&raw.name).cloned();
        let label = upstream_label(index, name.as_deref());
        let key = |k: &str| format!("upstream.{label}.{k}");
        match (&raw.name, &name) {
            (None, _) => self.missing(
                line,
                &key("name"),
                "missing: every upstream needs a `name` ([a-z0-9-]+, unique)".into(),
            ),
            (Some(field), Some(name)) => {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !valid {
                    self.at(
                        &field.span(),
                        "upstream.name",
                        format!(
                            "{name:?} is not a valid name: use lower-case letters, digits and `-`"
                        ),
                    );
                }
                if !self.names.insert(name.clone()) {
                    self.at(
                        &field.span(),
                        &key("name"),
                        "duplicate upstream name; names must be unique".into(),
                    );
                }
            }
            (Some(_), None) => {}
        }
        // Problems of `[upstream.auth]` as a whole, and values a preset supplies, are shown at
        // its header (or first dotted key), else at the upstream's.
        let auth_span = self
            .keys
            .span_by_position(&format!("upstream.#{}.auth", index + 1))
            .filter(|_| raw.auth.is_some())
            .unwrap_or(span);
        let auth_line = self.line(&auth_span);
        let mut auth = raw.auth.unwrap_or_default();
        let mut target = raw.target;
        // Whether a preset is written but cannot apply: what it would have filled is then not
        // reported missing as well.
        let mut preset_failed = false;
        match (&raw.preset, raw.preset.as_ref().and_then(Field::get)) {
            (Some(written), Some(&preset)) => {
                let environment = value(&raw.environment).map(String::as_str);
                let explicit_target = value(&target).map(String::as_str);
                let unreadable = raw.environment.as_ref().is_some_and(|e| e.get().is_none());
                let defaults = if unreadable {
                    None
                } else {
                    Some(preset.defaults(environment, explicit_target))
                };
                match defaults {
                    Some(Ok(d)) => preset::fill(d, &mut target, &mut auth, auth_span),
                    failed => {
                        preset_failed = true;
                        // The flow does not depend on the environment: credentials are still
                        // checked against it.
                        if auth.flow.is_none() {
                            auth.flow = Some(Field::new(auth_span, preset.flow()));
                        }
                        match failed {
                            Some(Err(PresetError::Environment(msg))) => {
                                let at =
                                    raw.environment.as_ref().map_or(written.span(), Field::span);
                                self.at(&at, &key("environment"), msg);
                            }
                            // An unreadable `target` is already reported.
                            Some(Err(PresetError::NeedsTarget(msg))) if target.is_none() => {
                                self.at(&written.span(), &key("target"), msg);
                            }
                            _ => {}
                        }
                    }
                }
            }
            (Some(_), None) => preset_failed = true,
            (None, _) => {
                if let Some(env) = &raw.environment {
                    self.at(
                        &env.span(),
                        &key("environment"),
                        "`environment` only applies with a `preset`".into(),
                    );
                }
            }
        }
        let listen = match &raw.listen {
            Some(field) => self.listen(&key("listen"), field),
            None => {
                let msg =
                    "missing: the address applications send to, such as \"8081\" (127.0.0.1:8081)";
                self.missing(line, &key("listen"), msg.into());
                None
            }
        };
        // `None`: written, but not a boolean (already reported), so what it meant is unknown.
        let allow_remote = match &raw.allow_remote {
            Some(field) => field.get().copied(),
            None => Some(false),
        };
        if let (Some(addr), Some(field)) = (listen, &raw.listen) {
            if let Some(allow_remote) = allow_remote {
                self.exposure(&key("listen"), addr, &field.span(), allow_remote);
            }
            // Port 0 asks the OS for a free port: many listeners may share that spelling.
            if addr.port() != 0 {
                if let Some(other) = self.listens.insert(addr, label.clone()) {
                    self.at(
                        &field.span(),
                        &key("listen"),
                        format!("{addr} is already the listen address of `{other}`"),
                    );
                }
            }
        }
        let target = match &target {
            Some(t) => self.target(&key("target"), t),
            None if preset_failed => None,
            None => {
                self.missing(line, &key("target"), "missing: the API's base URL, such as \"https://qa.api.nuvy.ai\" (or use a `preset`)".into());
                None
            }
        };
        let headers = match raw
            .headers
            .as_ref()
            .and_then(|h| Some((h.span(), h.get()?)))
        {
            Some((span, map)) => self.headers(self.line(&span), &key("headers"), map),
            None => HeaderMap::new(),
        };
        let retry_on = match &raw.retry_on {
            Some(field) => {
                let codes = field.get().cloned().unwrap_or_default();
                self.retry_on(self.line(&field.span()), &key("retry_on"), codes)
            }
            None => self.retry_on(line, &key("retry_on"), DEFAULT_RETRY_ON.to_vec()),
        };
        if let Some(field) = &raw.ca_file {
            if let Some(Err(msg)) = field.get().map(|path| check_ca_file(path)) {
                self.at(&field.span(), &key("ca_file"), msg);
            }
        }
        for (name, field) in [
            ("connect_timeout", &raw.connect_timeout),
            ("request_timeout", &raw.request_timeout),
        ] {
            if let Some(field) = field {
                if field.get().is_some_and(|d| d.0.is_zero()) {
                    let msg = "must be greater than zero: every request would time out".into();
                    self.at(&field.span(), &key(name), msg);
                }
            }
        }
        let auth = self.auth(auth_line, &key("auth"), auth, preset_failed);
        Some(UpstreamConfig {
            name: name?,
            listen: listen?,
            allow_remote: allow_remote.unwrap_or(false),
            target: target?,
            headers,
            retry_on,
            max_replay_body: value(&raw.max_replay_body).map_or(DEFAULT_MAX_REPLAY_BODY, |s| s.0),
            connect_timeout: value(&raw.connect_timeout).map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
            request_timeout: value(&raw.request_timeout).map_or(DEFAULT_REQUEST_TIMEOUT, |d| d.0),
            ca_file: raw.ca_file.and_then(Field::into_value),
            auth: auth?,
        })
    }

    fn listen(&mut self, key: &str, field: &Field<String>) -> Option<SocketAddr> {
        match parse_listen(field.get()?) {
            Ok(addr) => Some(addr),
            Err(msg) => {
                self.at(&field.span(), key, msg);
                None
            }
        }
    }

    /// An upstream's listener hands out its credentials to whoever connects: only loopback,
    /// unless the operator says otherwise with `allow_remote`.
    fn exposure(&mut self, key: &str, addr: SocketAddr, span: &Range<usize>, allow_remote: bool) {
        if is_loopback(addr.ip()) {
            return;
        }
        if allow_remote {
            self.warnings.push(format!("`{key}` is {addr} (allow_remote = true): anyone who can reach that port sends requests with this upstream's credentials"));
            return;
        }
        let port = addr.port();
        self.at(
            span,
            key,
            format!("{addr} is not a loopback address: anyone who can reach this port would send requests with this upstream's credentials. Listen on loopback (\"{port}\" or \"127.0.0.1:{port}\"), or, if other hosts must reach it, set `allow_remote = true` in this `[[upstream]]`"),
        );
    }

    fn target(&mut self, key: &str, field: &Field<String>) -> Option<Target> {
        let uri = self.url(key, &field.span(), field.get()?)?;
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let parts = uri.into_parts();
        Some(Target {
            scheme: parts.scheme?,
            authority: parts.authority?,
            base_path,
        })
    }

    /// An absolute http(s) URL without credentials, query or fragment.
    fn url(&mut self, key: &str, span: &Range<usize>, text: &str) -> Option<Uri> {
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
                self.at(span, key, msg);
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

    fn retry_on(&mut self, line: usize, key: &str, codes: Vec<u16>) -> Vec<StatusCode> {
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

    fn secret(
        &mut self,
        key: &str,
        span: &Range<usize>,
        source: &SecretSource,
    ) -> Option<LoadedSecret> {
        if source.is_literal() {
            self.warnings.push(format!("`{key}` is written in the configuration file; use {{ env = ... }} or {{ file = ... }} outside local development"));
        }
        match source.resolve() {
            Ok(value) => Some(LoadedSecret {
                source: source.clone(),
                value,
            }),
            Err(e) => {
                self.at(span, key, e.to_string());
                None
            }
        }
    }

    /// Problems with values every flow accepts, whatever the flow turns out to be.
    fn check_timing(&mut self, key: &str, raw: &RawAuth) {
        for (name, field) in [
            ("token_lifetime", &raw.token_lifetime),
            ("timeout", &raw.timeout),
            ("refresh_before", &raw.refresh_before),
        ] {
            let Some(field) = field else { continue };
            if field.get().is_some_and(|d| d.0.is_zero()) {
                let msg = "must be greater than zero".into();
                self.at(&field.span(), &format!("{key}.{name}"), msg);
            }
        }
        // Checked whatever the flow, like the values above; `static` and `none` ignore it.
        if let Some(field) = &raw.token_wait {
            if let Some(d) = field.get().map(|d| d.0).filter(|d| *d > MAX_TOKEN_WAIT) {
                let msg = format!(
                    "must be at most {} (got {}): an application request would hang that long waiting for a token",
                    humantime::format_duration(MAX_TOKEN_WAIT),
                    humantime::format_duration(d)
                );
                self.at(&field.span(), &format!("{key}.token_wait"), msg);
            }
        }
    }

    fn auth(
        &mut self,
        line: usize,
        key: &str,
        raw: RawAuth,
        preset_failed: bool,
    ) -> Option<AuthConfig> {
        self.check_timing(key, &raw);
        let kind = match &raw.flow {
            Some(flow) => *flow.get()?,
            None if preset_failed => return None,
            None => {
                self.missing(line, &format!("{key}.flow"), "missing: one of client_credentials, password, nexushub, static, none (or use a `preset`)".into());
                return None;
            }
        };
        let mut f = FlowFields {
            v: self,
            key,
            line,
            kind,
            preset_failed,
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
                    scope: raw.scope.and_then(Field::into_value),
                    extra_params: raw
                        .extra_params
                        .and_then(Field::into_value)
                        .map(|e| e.into_iter().collect())
                        .unwrap_or_default(),
                })
            }
            FlowKind::Password => {
                let token_url = f.url("token_url", &raw.token_url);
                let username = f.required("username", &raw.username);
                let password = f.required("password", &raw.password);
                let totp_key = format!("{key}.totp_secret");
                let totp_secret = raw.totp_secret.as_ref().and_then(|field| {
                    let secret = f.v.secret(&totp_key, &field.span(), field.get()?)?;
                    if crate::totp::check_secret(&secret.value).is_err() {
                        // `check` prints a literal seed as the mask: say so to whoever loads
                        // that output, rather than call the mask a malformed seed.
                        let masked = secret.source.is_literal() && secret.value.expose() == MASK;
                        let msg = match masked {
                            true => format!("\"{MASK}\" is the mask `check` prints in place of a literal secret, not a seed: put the base32 RFC 6238 secret back"),
                            false => "not a valid base32 RFC 6238 secret".into(),
                        };
                        f.v.at(&field.span(), &totp_key, msg);
                        f.ok = false;
                    }
                    Some(secret)
                });
                let client = f.client(&raw, false);
                Flow::Password(PasswordGrant {
                    token_url: token_url?,
                    username: username?,
                    password: password?,
                    totp_secret,
                    client: client?,
                    scope: raw.scope.and_then(Field::into_value),
                    extra_params: raw
                        .extra_params
                        .and_then(Field::into_value)
                        .map(|e| e.into_iter().collect())
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
                    let span = raw.token.as_ref().map_or(0..0, Field::span);
                    f.v.at(&span, &format!("{key}.token"), msg);
                    return None;
                }
                Flow::Static(token)
            }
            FlowKind::None => Flow::None,
        };
        if !f.ok {
            return None;
        }
        Some(AuthConfig {
            flow,
            refresh_before: value(&raw.refresh_before).map(|d| d.0),
            min_refresh_interval: value(&raw.min_refresh_interval)
                .map_or(DEFAULT_MIN_REFRESH_INTERVAL, |d| d.0),
            token_lifetime: value(&raw.token_lifetime).map_or(DEFAULT_TOKEN_LIFETIME, |d| d.0),
            timeout: value(&raw.timeout).map_or(DEFAULT_TOKEN_TIMEOUT, |d| d.0),
            prefetch: value(&raw.prefetch).copied().unwrap_or(true),
            token_wait: value(&raw.token_wait).map_or(DEFAULT_TOKEN_WAIT, |d| d.0),
            // Accepted whatever the flow, like `prefetch`: `static` and `none` ignore it.
            shared: value(&raw.shared).copied().unwrap_or(true),
        })
    }
}

/// Checks one flow's fields: required ones present, foreign ones absent.
struct FlowFields<'v, 'a> {
    v: &'v mut Validator<'a>,
    key: &'v str,
    line: usize,
    kind: FlowKind,
    /// The upstream's preset could not apply: the URLs it supplies are not reported missing.
    preset_failed: bool,
    ok: bool,
}

impl FlowFields<'_, '_> {
    fn missing(&mut self, field: &str) {
        self.ok = false;
        if self.preset_failed && (field == "token_url" || field == "auth_url") {
            return;
        }
        let msg = format!("missing: flow `{}` needs `{field}`", self.kind.name());
        self.v
            .missing(self.line, &format!("{}.{field}", self.key), msg);
    }

    fn required(&mut self, field: &str, raw: &Option<Field<SecretSource>>) -> Option<LoadedSecret> {
        let Some(raw) = raw else {
            self.missing(field);
            return None;
        };
        let got = raw.get().and_then(|s| {
            self.v
                .secret(&format!("{}.{field}", self.key), &raw.span(), s)
        });
        self.ok &= got.is_some();
        got
    }

    fn url(&mut self, field: &str, raw: &Option<Field<String>>) -> Option<Uri> {
        let Some(raw) = raw else {
            self.missing(field);
            return None;
        };
        let got = raw
            .get()
            .and_then(|u| self.v.url(&format!("{}.{field}", self.key), &raw.span(), u));
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
            auth: value(&raw.client_auth).copied().unwrap_or_default(),
        }))
    }

    fn forbid_others(&mut self, raw: &RawAuth) {
        use FlowKind::*;
        fn at<T>(field: &Option<Field<T>>) -> Option<Range<usize>> {
            field.as_ref().map(Field::span)
        }
        const TOKEN_ENDPOINT: &[FlowKind] = &[ClientCredentials, Password];
        /// A field's name, where it is written (if it is), and the flows it belongs to.
        type Written = (&'static str, Option<Range<usize>>, &'static [FlowKind]);
        let present: [Written; 13] = [
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
                self.v.at(&span, &format!("{}.{field}", self.key), msg);
                self.ok = false;
            }
        }
    }
}

/// Loopback, including IPv4 loopback written as IPv6 (`::ffff:127.0.0.1`).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The file must hold at least one PEM certificate: found now, it is an exit 64, not a failure
/// after the listeners are bound.
fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
    let certs = crate::client::read_ca_file(path).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", path.display()));
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
