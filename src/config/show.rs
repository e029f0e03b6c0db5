//! The effective configuration, printed back as TOML that loads again.
//!
//! What `nexus-sidecar check` shows: presets expanded, defaults filled, durations and sizes with
//! their units. Secrets are printed as where they come from (`{ env = "X" }`, `{ file = "/p" }`);
//! a secret written in the file prints as `"***"`, and so does every static header value (API
//! keys live there), so no secret value ever leaves this module. (`"***"` loads again as a
//! literal, except as a `totp_secret`, which must be base32.) A Redis URL written in the file
//! prints as its scheme and the mask, `"rediss://***"`: that loads again, and tells whether TLS
//! is on without the host or the password.
//! It prints a valid [`Config`]; it does not validate or read anything.

use std::fmt::{self, Display, Formatter};
use std::time::Duration;

use super::raw::Named;
use super::MAX_DEFAULT_REFRESH_BEFORE;
use super::{AuthConfig, Client, Config, Flow, Limits, SharedCacheConfig, UpstreamConfig};
use crate::secret::{LoadedSecret, SecretSource, MASK};

impl Config {
    /// The effective configuration as TOML: loads again with [`Config::from_toml`] into the same
    /// upstreams, with every literal secret and every static header value replaced by `"***"`.
    /// The masks are placeholders: a masked `totp_secret` is refused (it is not a seed) until the
    /// seed is put back.
    pub fn to_toml(&self) -> String {
        Effective(self).to_string()
    }
}

struct Effective<'a>(&'a Config);

impl Display for Effective<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let c = self.0;
        writeln!(f, "shutdown_grace = {}", Dur(c.shutdown_grace))?;
        if let Some(admin) = &c.admin {
            writeln!(f, "\n[admin]\nlisten = {}", Str(&admin.listen.to_string()))?;
        }
        writeln!(f, "\n[log]\nlevel = {}", Str(&c.log.level))?;
        writeln!(f, "format = {}", Str(c.log.format.name()))?;
        limits(f, &c.limits)?;
        match &c.shared_cache {
            Some(s) => shared_cache(f, s)?,
            // Says what each upstream's `shared` line below means here: nothing.
            None => writeln!(
                f,
                "\n# [shared_cache]: not configured; each process keeps its own tokens"
            )?,
        }
        for u in &c.upstreams {
            upstream(f, u)?;
        }
        Ok(())
    }
}

fn limits(f: &mut Formatter<'_>, l: &Limits) -> fmt::Result {
    writeln!(f, "\n[limits]")?;
    writeln!(f, "max_connections = {}", l.max_connections)?;
    writeln!(f, "header_read_timeout = {}", Dur(l.header_read_timeout))?;
    writeln!(f, "idle_timeout = {}", Dur(l.idle_timeout))?;
    writeln!(f, "body_read_timeout = {}", Dur(l.body_read_timeout))?;
    writeln!(f, "max_buffered = {}", Size(l.max_buffered))
}

fn shared_cache(f: &mut Formatter<'_>, s: &SharedCacheConfig) -> fmt::Result {
    writeln!(f, "\n[shared_cache]")?;
    writeln!(f, "url = {}", RedisUrl(&s.url))?;
    writeln!(f, "key_prefix = {}", Str(&s.key_prefix))?;
    writeln!(f, "timeout = {}", Dur(s.timeout))
}

fn upstream(f: &mut Formatter<'_>, u: &UpstreamConfig) -> fmt::Result {
    writeln!(f, "\n[[upstream]]")?;
    writeln!(f, "name = {}", Str(&u.name))?;
    writeln!(f, "listen = {}", Str(&u.listen.to_string()))?;
    writeln!(f, "allow_remote = {}", u.allow_remote)?;
    let t = &u.target;
    let target = format!("{}://{}{}", t.scheme, t.authority, t.base_path);
    writeln!(f, "target = {}", Str(&target))?;
    // Names only: a static header often is an API key.
    let headers: Vec<(&str, String)> = u
        .headers
        .keys()
        .map(|k| (k.as_str(), MASK.to_owned()))
        .collect();
    writeln!(f, "headers = {}", InlineTable(&headers))?;
    let codes: Vec<String> = u.retry_on.iter().map(|s| s.as_u16().to_string()).collect();
    writeln!(f, "retry_on = [{}]", codes.join(", "))?;
    writeln!(f, "max_replay_body = {}", Size(u.max_replay_body))?;
    writeln!(f, "connect_timeout = {}", Dur(u.connect_timeout))?;
    writeln!(f, "request_timeout = {}", Dur(u.request_timeout))?;
    if let Some(ca) = &u.ca_file {
        writeln!(f, "ca_file = {}", Str(&ca.display().to_string()))?;
    }
    writeln!(f, "\n  [upstream.auth]")?;
    auth(f, &u.auth)
}

fn auth(f: &mut Formatter<'_>, a: &AuthConfig) -> fmt::Result {
    writeln!(f, "  flow = {}", Str(a.flow.kind().name()))?;
    match &a.flow {
        Flow::ClientCredentials(cc) => {
            writeln!(f, "  token_url = {}", Str(&cc.token_url.to_string()))?;
            client(f, &cc.client)?;
            form_extras(f, cc.scope.as_deref(), &cc.extra_params)?;
        }
        Flow::Password(p) => {
            writeln!(f, "  token_url = {}", Str(&p.token_url.to_string()))?;
            writeln!(f, "  username = {}", Source(&p.username))?;
            writeln!(f, "  password = {}", Source(&p.password))?;
            if let Some(totp) = &p.totp_secret {
                writeln!(f, "  totp_secret = {}", Source(totp))?;
            }
            if let Some(c) = &p.client {
                client(f, c)?;
            }
            form_extras(f, p.scope.as_deref(), &p.extra_params)?;
        }
        Flow::NexusHub(n) => {
            writeln!(f, "  auth_url = {}", Str(&n.auth_url.to_string()))?;
            writeln!(f, "  user_key = {}", Source(&n.user_key))?;
            writeln!(f, "  user_secret = {}", Source(&n.user_secret))?;
        }
        Flow::Static(token) => return writeln!(f, "  token = {}", Source(token)),
        // Timing settings mean nothing without token requests.
        Flow::None => return Ok(()),
    }
    match a.refresh_before {
        Some(d) => writeln!(f, "  refresh_before = {}", Dur(d))?,
        None => writeln!(
            f,
            "  # refresh_before: the default, 20% of each token's lifetime, at most {}",
            humantime::format_duration(MAX_DEFAULT_REFRESH_BEFORE)
        )?,
    }
    writeln!(
        f,
        "  min_refresh_interval = {}",
        Dur(a.min_refresh_interval)
    )?;
    writeln!(f, "  prefetch = {}", a.prefetch)?;
    writeln!(f, "  shared = {}", a.shared)?;
    writeln!(f, "  token_wait = {}", Dur(a.token_wait))?;
    writeln!(f, "  token_lifetime = {}", Dur(a.token_lifetime))?;
    writeln!(f, "  timeout = {}", Dur(a.timeout))
}

fn client(f: &mut Formatter<'_>, c: &Client) -> fmt::Result {
    writeln!(f, "  client_id = {}", Source(&c.id))?;
    writeln!(f, "  client_secret = {}", Source(&c.secret))?;
    writeln!(f, "  client_auth = {}", Str(c.auth.name()))
}

fn form_extras(
    f: &mut Formatter<'_>,
    scope: Option<&str>,
    extra: &[(String, String)],
) -> fmt::Result {
    if let Some(scope) = scope {
        writeln!(f, "  scope = {}", Str(scope))?;
    }
    if !extra.is_empty() {
        let pairs: Vec<(&str, String)> =
            extra.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        writeln!(f, "  extra_params = {}", InlineTable(&pairs))?;
    }
    Ok(())
}

/// A TOML basic string.
struct Str<'a>(&'a str);

impl Display for Str<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\r' => f.write_str("\\r")?,
                c if c.is_control() => write!(f, "\\u{:04X}", u32::from(c))?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

/// A TOML key: bare when it can be, quoted otherwise (header names may hold `.` or `!`).
struct Key<'a>(&'a str);

impl Display for Key<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let bare = !self.0.is_empty()
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare {
            f.write_str(self.0)
        } else {
            Str(self.0).fmt(f)
        }
    }
}

/// `{ a = "1", b = "2" }`, or `{}`.
struct InlineTable<'a>(&'a [(&'a str, String)]);

impl Display for InlineTable<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("{}");
        }
        f.write_str("{ ")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} = {}", Key(k), Str(v))?;
        }
        f.write_str(" }")
    }
}

/// A secret as its source; a literal prints as the mask, never as its value.
struct Source<'a>(&'a LoadedSecret);

impl Display for Source<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match &self.0.source {
            SecretSource::Env(var) => write!(f, "{{ env = {} }}", Str(var)),
            SecretSource::File(path) => {
                write!(f, "{{ file = {} }}", Str(&path.display().to_string()))
            }
            SecretSource::Literal(_) => Str(MASK).fmt(f),
        }
    }
}

/// The Redis URL as its source; written in the file, as its scheme and the mask: `"***"`
/// alone would not load again as a URL.
struct RedisUrl<'a>(&'a LoadedSecret);

impl Display for RedisUrl<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match &self.0.source {
            SecretSource::Literal(url) => {
                // Validated: `redis` or `rediss`, in any case.
                let scheme = url.expose().split_once("://").map_or("redis", |(s, _)| s);
                Str(&format!("{}://{MASK}", scheme.to_ascii_lowercase())).fmt(f)
            }
            _ => Source(self.0).fmt(f),
        }
    }
}

/// `"1h 30m"`, `"250ms"`: humantime's spelling, which the loader parses back.
struct Dur(Duration);

impl Display for Dur {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        Str(&humantime::format_duration(self.0).to_string()).fmt(f)
    }
}

/// The largest binary unit that divides the size exactly, so nothing is rounded away.
struct Size(u64);

impl Display for Size {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        let n = self.0;
        match UNITS
            .iter()
            .find(|(size, _)| n != 0 && n.is_multiple_of(*size))
        {
            Some((size, unit)) => write!(f, "\"{}{unit}\"", n / size),
            None => write!(f, "\"{n}B\""),
        }
    }
}

#[cfg(test)]
mod tests;
