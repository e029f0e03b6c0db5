//! Header rules of the request path, as small pure functions over `HeaderMap`.
//!
//! Which headers cross the sidecar (RFC 9110 §7.6.1 hop-by-hop rules), the injected
//! `Authorization`, and reading `WWW-Authenticate`. No I/O and no policy about *when* to call
//! them: that is `proxy`'s job.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the proxy
/// credentials headers, which are meant for this hop only.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Whether `name` is hop-by-hop by definition (headers named in `Connection` are too, but
/// that depends on the message; see [`remove_hop_by_hop`]).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes hop-by-hop headers: the fixed list and every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Collect first: the names live in values of the map we are about to change. Most
    // messages have no `Connection` header, so this allocates nothing on the common path.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Turns the application's request headers into the upstream request's headers.
///
/// `Host` is removed because the upstream client writes it (and h2's `:authority`) from the
/// target URI. The application's `Authorization` is removed when the sidecar authenticates:
/// the app never decides which credentials reach the API. Static headers replace any of the
/// same name the app sent.
pub fn prepare_request(headers: &mut HeaderMap, extra: &HeaderMap, authenticates: bool) {
    remove_hop_by_hop(headers);
    headers.remove(header::HOST);
    if authenticates {
        headers.remove(header::AUTHORIZATION);
    }
    for name in extra.keys() {
        headers.remove(name);
    }
    for (name, value) in extra {
        headers.append(name.clone(), value.clone());
    }
}

/// Sets the injected credentials. The value is expected to be marked sensitive already (so
/// HPACK never indexes it and `Debug` hides it); see [`bearer`].
pub fn set_authorization(headers: &mut HeaderMap, value: HeaderValue) {
    headers.insert(header::AUTHORIZATION, value);
}

/// `Bearer <token>`, marked sensitive. `None` when the token has bytes a header cannot carry.
pub fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Whether a 401 says the token lacks permission rather than being invalid (RFC 6750 §3.1):
/// such a response must not cost the token its place in the cache.
pub fn is_insufficient_scope(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            let v = v.to_ascii_lowercase();
            v.split(',').any(|param| {
                let param = param.trim();
                let param = param.strip_prefix("bearer ").unwrap_or(param).trim();
                param
                    .strip_prefix("error")
                    .map(|rest| rest.trim_start().trim_start_matches('=').trim())
                    .is_some_and(|value| value.trim_matches('"') == "insufficient_scope")
            })
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn prepare_replaces_authorization_and_host_and_adds_static_headers() {
        let mut h = map(&[
            ("host", "127.0.0.1:8081"),
            ("authorization", "Bearer app-token"),
            ("request_iso8601", "false"),
            ("accept", "application/json"),
        ]);
        let extra = map(&[("request_iso8601", "true")]);
        prepare_request(&mut h, &extra, true);
        assert!(h.get("host").is_none());
        assert!(h.get("authorization").is_none());
        assert_eq!(h.get_all("request_iso8601").iter().count(), 1);
        assert_eq!(h["request_iso8601"], "true");
        assert_eq!(h["accept"], "application/json");
    }

    #[test]
    fn prepare_keeps_the_apps_authorization_when_not_authenticating() {
        let mut h = map(&[("authorization", "Bearer app")]);
        prepare_request(&mut h, &HeaderMap::new(), false);
        assert_eq!(h["authorization"], "Bearer app");
    }

    #[test]
    fn bearer_is_sensitive_and_rejects_bad_bytes() {
        let v = bearer("abc.def").unwrap();
        assert!(v.is_sensitive());
        assert_eq!(v, "Bearer abc.def");
        assert!(!format!("{v:?}").contains("abc.def"));
        assert!(bearer("line\nbreak").is_none());
    }

    #[test]
    fn recognises_insufficient_scope_only() {
        let yes = map(&[(
            "www-authenticate",
            r#"Bearer realm="api", error="insufficient_scope", scope="admin""#,
        )]);
        assert!(is_insufficient_scope(&yes));
        let bare = map(&[("www-authenticate", "Bearer error=insufficient_scope")]);
        assert!(is_insufficient_scope(&bare));
        let invalid = map(&[("www-authenticate", r#"Bearer error="invalid_token""#)]);
        assert!(!is_insufficient_scope(&invalid));
        let described = map(&[(
            "www-authenticate",
            r#"Bearer error="invalid_token", error_description="not insufficient_scope""#,
        )]);
        assert!(!is_insufficient_scope(&described));
        assert!(!is_insufficient_scope(&HeaderMap::new()));
    }
}
