//! The token-response parser on any status, headers and body: no panic; a grant no bigger than
//! the body, with a bounded lifetime; an error that prints in constant space and never quotes
//! the endpoint's `error_description`.

#![no_main]

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use nexus_sidecar::token::fuzzing::{parse, Lifetime};

/// As in tests/properties.rs: only sanitised codes and a well-formed media type (64 bytes
/// each at most) come from the response.
const MAX_ERROR_TEXT: usize = 320;
const MAX_LIFETIME: Duration = Duration::from_secs(1_000_000_000);

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    status: u16,
    now: u64,
    headers: Vec<(&'a [u8], &'a [u8])>,
    body: &'a [u8],
}

/// Text that no error may show: an `error_description` with a character that neither an
/// error code nor a media type may contain, long enough not to occur by chance.
fn description(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = value.get("error_description")?.as_str()?;
    let odd = text
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b"!#$&^_.+-/".contains(&b)));
    (text.len() >= 16 && odd).then(|| text.to_owned())
}

fuzz_target!(|input: Input<'_>| {
    let status = StatusCode::from_u16(100 + input.status % 900).unwrap();
    let mut headers = HeaderMap::new();
    for (name, value) in input.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    match parse(status, &headers, input.body, input.now) {
        Ok(grant) => {
            assert!(status.is_success());
            assert!(grant.access_token.expose().len() <= input.body.len());
            if let Some(r) = &grant.refresh_token {
                assert!(r.expose().len() <= input.body.len());
            }
            if let Lifetime::Given(d) = grant.lifetime {
                assert!(d <= MAX_LIFETIME, "{d:?}");
            }
            let _ = format!("{grant:?}");
        }
        Err(e) => {
            let (shown, debug) = (e.to_string(), format!("{e:?}"));
            assert!(shown.len() <= MAX_ERROR_TEXT, "{shown}");
            assert!(debug.len() <= MAX_ERROR_TEXT, "{debug}");
            if let Some(d) = description(input.body) {
                assert!(!shown.contains(&d) && !debug.contains(&d), "{debug}");
            }
        }
    }
});
