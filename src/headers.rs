//! Header rules of the request path, as small pure functions over `HeaderMap`.
//!
//! Which headers cross the sidecar (RFC 9110 §7.6.1 hop-by-hop rules, with `TE: trailers` as
//! the one exception; RFC 9112 §6.3 on a `Content-Length` beside `Transfer-Encoding`), the
//! injected `Authorization`, and reading `WWW-Authenticate`. No I/O and no policy about *when*
//! to call them: that is `proxy`'s job.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Whether `name` is hop-by-hop by definition (headers named in `Connection` are too, but
/// that depends on the message; see [`remove_hop_by_hop`]): it describes one connection, not
/// the message (RFC 9110 §7.6.1), or it is a proxy credentials header, meant for this hop
/// only. `Trailer` is not one: it names the message's trailer fields (RFC 9110 §6.6.2), and
/// hyper writes HTTP/1.1 trailers only when it names them. (RFC 2616 §13.5.1 listed
/// "Trailers", a typo that some proxies copied.)
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Matched as text: on every header of every message, a length switch and one comparison,
    // where comparing with eight `HeaderName`s was eight comparisons.
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// Removes hop-by-hop headers: the fixed list and every header that `Connection` names.
///
/// Most messages carry none, and most of the rest only `Connection: keep-alive` (nginx sends it
/// on every response), so this is written for them: one pass over the names present, which
/// allocates only when it finds one to remove besides `Connection`, and compares `Connection`'s
/// tokens with the names only when it names anything but `keep-alive` (which the fixed list
/// has). `Connection` itself goes last, once it has said what else goes.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let connection = headers.get_all(header::CONNECTION);
    let tokens = || {
        connection
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|token| !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive"))
    };
    let names_others = tokens().next().is_some();
    let listed = |name: &HeaderName| {
        names_others && tokens().any(|token| token.eq_ignore_ascii_case(name.as_str().as_bytes()))
    };
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|&name| name != header::CONNECTION && (is_hop_by_hop(name) || listed(name)))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
}

/// Removes `Content-Length` when the message also has `Transfer-Encoding` (RFC 9112 §6.3: the
/// transfer coding decides where the body ends, and an intermediary must drop the length before
/// forwarding). Passed on, the length would frame the body for the next hop: a body cut short
/// but presented as complete, or one that never ends. Returns whether a length was removed.
pub fn remove_length_beside_transfer_encoding(headers: &mut HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        && headers.remove(header::CONTENT_LENGTH).is_some()
}

/// Whether the request's `TE` asks for trailers and nothing else: every element of every `TE`
/// line is `trailers` (case-insensitive; empty list elements are ignored). gRPC and other h2
/// protocols need that value to reach the server; any other transfer coding is for this hop
/// only, so a list naming one is dropped whole, like any hop-by-hop header.
pub fn te_is_only_trailers(headers: &HeaderMap) -> bool {
    let mut trailers = false;
    for value in &headers.get_all(header::TE) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for element in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if !element.eq_ignore_ascii_case("trailers") {
                return false;
            }
            trailers = true;
        }
    }
    trailers
}

/// Turns the application's request headers into the upstream request's headers.
///
/// Hop-by-hop headers go, except `TE: trailers`, which is forwarded as exactly that value (the
/// only one h2 allows; and without a `Connection: te`, which h2 forbids). A `Content-Length`
/// beside `Transfer-Encoding` goes too (hyper's server already drops it from requests; this
/// keeps the rule from depending on that). `Host` becomes `host`, the target's (written once per
/// upstream, so the client need not format it per request); with `None` it is removed and the
/// client writes it from the target URI. The application's `Authorization` is
/// removed when the sidecar authenticates: the app never decides which credentials reach the
/// API. Static headers replace any of the same name the app sent.
pub fn prepare_request(
    headers: &mut HeaderMap,
    host: Option<&HeaderValue>,
    extra: &HeaderMap,
    authenticates: bool,
) {
    let trailers = te_is_only_trailers(headers);
    remove_length_beside_transfer_encoding(headers);
    remove_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    match host {
        Some(host) => headers.insert(header::HOST, host.clone()),
        None => headers.remove(header::HOST),
    };
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

/// Turns the upstream's response headers into the application's: hop-by-hop headers go, and
/// so does a `Content-Length` that came with `Transfer-Encoding` (hyper has already read such
/// a body by its transfer coding; the next hop frames it afresh).
pub fn prepare_response(headers: &mut HeaderMap) {
    remove_length_beside_transfer_encoding(headers);
    remove_hop_by_hop(headers);
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
    fn a_connection_value_that_is_not_text_is_still_obeyed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-private, \xff\xfe").unwrap(),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
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

    static HOP_BY_HOP: [HeaderName; 8] = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ];

    #[test]
    fn every_fixed_hop_by_hop_name_is_one_and_others_are_not() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "content-length",
            "authorization",
            "host",
            "x-request-id",
            "trailer",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn connection_names_are_case_insensitive_and_junk_is_ignored() {
        let mut h = map(&[
            ("connection", "X-One ,  ,x-two"),
            ("connection", "\"not a name\""),
            ("x-one", "1"),
            ("x-two", "2"),
            ("x-three", "3"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-three"], "3");
    }

    #[test]
    fn a_length_goes_only_when_transfer_encoding_is_there() {
        let mut both = map(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        assert!(remove_length_beside_transfer_encoding(&mut both));
        assert!(both.get("content-length").is_none());
        assert_eq!(both["transfer-encoding"], "chunked", "only the length goes");
        assert_eq!(both.len(), 2);

        // Any transfer coding, and every length line.
        let mut gzip = map(&[
            ("transfer-encoding", "gzip"),
            ("content-length", "5"),
            ("content-length", "5"),
        ]);
        assert!(remove_length_beside_transfer_encoding(&mut gzip));
        assert!(gzip.get("content-length").is_none());

        let mut length_only = map(&[("content-length", "5")]);
        assert!(!remove_length_beside_transfer_encoding(&mut length_only));
        assert_eq!(length_only["content-length"], "5");
        let mut coding_only = map(&[("transfer-encoding", "chunked")]);
        assert!(!remove_length_beside_transfer_encoding(&mut coding_only));
        assert_eq!(coding_only.len(), 1);
    }

    #[test]
    fn te_is_only_trailers_when_every_element_is_trailers() {
        for yes in [
            &[("te", "trailers")][..],
            &[("te", "Trailers")],
            &[("te", " trailers ,")],
            &[("te", "trailers"), ("te", "TRAILERS")],
        ] {
            assert!(te_is_only_trailers(&map(yes)), "{yes:?}");
        }
        for no in [
            &[][..],
            &[("te", "")],
            &[("te", " , ")],
            &[("te", "gzip")],
            &[("te", "trailers, deflate;q=0.5")],
            &[("te", "trailers"), ("te", "gzip")],
            &[("te", "trailers;q=1")],
            &[("te", "chunked")],
            &[("x-te", "trailers")],
        ] {
            assert!(!te_is_only_trailers(&map(no)), "{no:?}");
        }
        let mut opaque = HeaderMap::new();
        opaque.insert(
            header::TE,
            HeaderValue::from_bytes(b"trailers\xff").unwrap(),
        );
        assert!(!te_is_only_trailers(&opaque));
    }

    #[test]
    fn prepare_forwards_te_trailers_and_nothing_else_of_te() {
        // `Connection: TE` (which RFC 9110 asks an HTTP/1.1 sender of TE to add) does not stop
        // it: it is about the app's hop, and h2 forbids `Connection` on the next.
        let mut h = map(&[("te", "Trailers"), ("connection", "TE"), ("x-a", "1")]);
        prepare_request(&mut h, None, &HeaderMap::new(), true);
        assert_eq!(h.get_all("te").iter().collect::<Vec<_>>(), ["trailers"]);
        assert!(h.get("connection").is_none());
        assert_eq!(h["x-a"], "1");

        for te in ["gzip", "trailers, gzip", "deflate;q=0.5, trailers"] {
            let mut h = map(&[("te", te)]);
            prepare_request(&mut h, None, &HeaderMap::new(), true);
            assert!(h.is_empty(), "{te}: {h:?}");
        }
    }

    #[test]
    fn prepare_drops_a_length_beside_transfer_encoding() {
        let mut h = map(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        prepare_request(&mut h, None, &HeaderMap::new(), true);
        assert!(h.is_empty(), "{h:?}");
        // A length alone is the body's framing and stays.
        let mut h = map(&[("content-length", "5")]);
        prepare_request(&mut h, None, &HeaderMap::new(), true);
        assert_eq!(h["content-length"], "5");
    }

    #[test]
    fn response_loses_hop_by_hop_headers_and_a_contradicted_length() {
        let mut h = map(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-type", "text/plain"),
        ]);
        prepare_response(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["content-type"], "text/plain");

        let mut h = map(&[("content-length", "26"), ("content-type", "text/plain")]);
        prepare_response(&mut h);
        assert_eq!(h["content-length"], "26");
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn set_authorization_replaces_every_value() {
        let mut h = map(&[("authorization", "Basic a"), ("authorization", "Bearer b")]);
        set_authorization(&mut h, bearer("fresh").unwrap());
        assert_eq!(
            h.get_all("authorization").iter().collect::<Vec<_>>(),
            ["Bearer fresh"]
        );
        assert!(h["authorization"].is_sensitive());
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
        prepare_request(&mut h, None, &extra, true);
        assert!(h.get("host").is_none());
        assert!(h.get("authorization").is_none());
        assert_eq!(h.get_all("request_iso8601").iter().count(), 1);
        assert_eq!(h["request_iso8601"], "true");
        assert_eq!(h["accept"], "application/json");

        let mut h = map(&[("host", "127.0.0.1:8081"), ("host", "again")]);
        let target = HeaderValue::from_static("api.example:8443");
        prepare_request(&mut h, Some(&target), &extra, true);
        assert_eq!(
            h.get_all("host").iter().collect::<Vec<_>>(),
            ["api.example:8443"]
        );
    }

    #[test]
    fn prepare_keeps_the_apps_authorization_when_not_authenticating() {
        let mut h = map(&[("authorization", "Bearer app")]);
        prepare_request(&mut h, None, &HeaderMap::new(), false);
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
