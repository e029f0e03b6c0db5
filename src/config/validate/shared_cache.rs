//! `[shared_cache]`: the Redis URL, the key prefix and the bound on each Redis operation.
//!
//! The URL is a secret (it may carry a password), so it is checked here, at load time, and
//! every problem with it says what is wrong without repeating any of it but its scheme: not
//! the password, and not the host either, which tells an attacker where the tokens are. The
//! check is by hand rather than by a URL crate, and follows how the Redis client reads a URL:
//! `redis[s]://[[user]:password@]host[:port][/db]`.

use std::net::Ipv6Addr;

use super::super::raw::{Field, RawSharedCache};
use super::super::{
    SharedCacheConfig, DEFAULT_SHARED_CACHE_PREFIX, DEFAULT_SHARED_CACHE_TIMEOUT,
    MAX_SHARED_CACHE_PREFIX_LEN, MAX_SHARED_CACHE_TIMEOUT, MIN_SHARED_CACHE_TIMEOUT,
};
use super::Validator;

const EXPECTED: &str = "expected redis://[:password@]host[:port][/db], or rediss:// for TLS";

impl Validator<'_> {
    /// `None` when something is wrong, each problem reported.
    pub(super) fn shared_cache(&mut self, raw: RawSharedCache) -> Option<SharedCacheConfig> {
        let url = match &raw.url {
            Some(field) => self.redis_url(field),
            None => {
                let line = self.keys.line("shared_cache").unwrap_or(1);
                let msg = r#"missing: the Redis URL, such as { env = "REDIS_URL" }"#;
                self.missing(line, "shared_cache.url", msg.into());
                None
            }
        };
        let key_prefix = match &raw.key_prefix {
            Some(field) => field.get().and_then(|prefix| match check_prefix(prefix) {
                Ok(()) => Some(prefix.clone()),
                Err(msg) => {
                    self.at(&field.span(), "shared_cache.key_prefix", msg);
                    None
                }
            }),
            None => Some(DEFAULT_SHARED_CACHE_PREFIX.into()),
        };
        let timeout = match &raw.timeout {
            Some(field) => field.get().and_then(|d| {
                let range = MIN_SHARED_CACHE_TIMEOUT..=MAX_SHARED_CACHE_TIMEOUT;
                if range.contains(&d.0) {
                    return Some(d.0);
                }
                let msg = format!(
                    "must be from {} to {} (got {}): each Redis operation waits at most this long, then the sidecar uses its own tokens",
                    humantime::format_duration(MIN_SHARED_CACHE_TIMEOUT),
                    humantime::format_duration(MAX_SHARED_CACHE_TIMEOUT),
                    humantime::format_duration(d.0)
                );
                self.at(&field.span(), "shared_cache.timeout", msg);
                None
            }),
            None => Some(DEFAULT_SHARED_CACHE_TIMEOUT),
        };
        Some(SharedCacheConfig {
            url: url?,
            key_prefix: key_prefix?,
            timeout: timeout?,
        })
    }

    fn redis_url(
        &mut self,
        field: &Field<crate::secret::SecretSource>,
    ) -> Option<crate::secret::LoadedSecret> {
        const KEY: &str = "shared_cache.url";
        let url = self.secret(KEY, &field.span(), field.get()?)?;
        match check_redis_url(url.value.expose()) {
            Ok(()) => Some(url),
            Err(msg) => {
                self.at(&field.span(), KEY, msg);
                None
            }
        }
    }
}

/// A key prefix Redis and people both read without quoting.
fn check_prefix(prefix: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
    let len = prefix.chars().count();
    if (1..=MAX_SHARED_CACHE_PREFIX_LEN).contains(&len) && prefix.chars().all(allowed) {
        return Ok(());
    }
    Err(format!(
        "{prefix:?} is not a key prefix: use 1 to {MAX_SHARED_CACHE_PREFIX_LEN} letters, digits, `_`, `.`, `:` or `-`"
    ))
}

/// Whether `url` is a Redis URL the client can use. The error names nothing of it but its
/// scheme, and that only when it is a well-formed one.
fn check_redis_url(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "not a URL: it holds whitespace or control characters (percent-encode them); {EXPECTED}"
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("not a URL; {EXPECTED}"));
    };
    // RFC 3986's scheme syntax, short: anything else may be part of a password.
    let is_scheme = scheme.len() <= 16
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !is_scheme {
        return Err(format!("not a URL; {EXPECTED}"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "redis" | "rediss" => {}
        "unix" | "redis+unix" => {
            return Err(format!(
                "Redis over a unix socket (`{scheme}://`) is not supported; {EXPECTED}"
            ))
        }
        other => {
            return Err(format!(
                "`url` must start with redis:// or rediss://; got a `{other}` URL"
            ))
        }
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    // The password may hold `:` and `@`; the host starts after the last `@`.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (ip, port) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("the host's IPv6 address has no closing `]`; {EXPECTED}"))?;
            if ip.parse::<Ipv6Addr>().is_err() {
                return Err(format!("the host is not a valid IPv6 address; {EXPECTED}"));
            }
            match port {
                "" => (ip, None),
                _ => match port.strip_prefix(':') {
                    Some(port) => (ip, Some(port)),
                    None => return Err(format!("not a URL; {EXPECTED}")),
                },
            }
        }
        None => match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(format!("the URL has no host; {EXPECTED}"));
    }
    // `host:` with nothing after it means the default port, as in any URL.
    if let Some(port) = port.filter(|p| !p.is_empty()) {
        let valid =
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !valid {
            return Err(format!(
                "the port is not a number from 1 to 65535; {EXPECTED}"
            ));
        }
    }
    // The path names the database: `/`, `/0`, `/15`.
    let path = after.split(['?', '#']).next().unwrap_or_default();
    let db = path.trim_matches('/');
    let number = db.bytes().all(|b| b.is_ascii_digit()) && db.parse::<i64>().is_ok();
    if !db.is_empty() && !number {
        return Err(format!(
            "the path must be a database number, such as /0; {EXPECTED}"
        ));
    }
    Ok(())
}
