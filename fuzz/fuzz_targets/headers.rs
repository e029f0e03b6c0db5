//! The header functions over any header maps: no panic; no hop-by-hop header crosses but
//! `TE: trailers`; the static headers win; the output is no bigger than the input; `bearer`
//! accepts exactly the header-safe tokens.

#![no_main]

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use nexus_sidecar::headers::{
    bearer, is_hop_by_hop, is_insufficient_scope, prepare_request, prepare_response,
    remove_hop_by_hop, remove_length_beside_transfer_encoding, te_is_only_trailers,
};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    headers: Vec<(&'a [u8], &'a [u8])>,
    extra: Vec<(&'a [u8], &'a [u8])>,
    authenticates: bool,
    token: &'a str,
}

fn map(pairs: &[(&[u8], &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

fn values(map: &HeaderMap, name: &HeaderName) -> Vec<HeaderValue> {
    map.get_all(name).iter().cloned().collect()
}

fuzz_target!(|input: Input<'_>| {
    let original = map(&input.headers);
    let extra = map(&input.extra);

    let mut response = original.clone();
    prepare_response(&mut response);
    assert!(response.keys().all(|n| !is_hop_by_hop(n)));
    assert!(response.len() <= original.len());
    for name in response.keys() {
        assert_eq!(values(&response, name), values(&original, name));
    }
    let once = response.clone();
    prepare_response(&mut response);
    assert_eq!(response, once);

    let mut request = original.clone();
    prepare_request(&mut request, &extra, input.authenticates);
    assert!(request.len() <= original.len() + extra.len() + 1);
    for name in extra.keys() {
        assert_eq!(values(&request, name), values(&extra, name));
    }
    for name in request.keys() {
        if extra.contains_key(name) {
            continue;
        }
        assert!(*name != header::HOST);
        assert!(!(input.authenticates && *name == header::AUTHORIZATION));
        if *name == header::TE {
            assert!(te_is_only_trailers(&original));
            assert_eq!(
                values(&request, name),
                [HeaderValue::from_static("trailers")]
            );
        } else {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    let mut stripped = original.clone();
    remove_hop_by_hop(&mut stripped);
    assert!(stripped.keys().all(|n| !is_hop_by_hop(n)));
    let mut framed = original.clone();
    let both = original.contains_key(header::TRANSFER_ENCODING)
        && original.contains_key(header::CONTENT_LENGTH);
    assert_eq!(remove_length_beside_transfer_encoding(&mut framed), both);

    let _ = is_insufficient_scope(&original);

    let valid = input
        .token
        .bytes()
        .all(|b| (b >= 32 && b != 127) || b == b'\t');
    match bearer(input.token) {
        Some(v) => {
            assert!(valid && v.is_sensitive());
            assert_eq!(v.as_bytes(), format!("Bearer {}", input.token).as_bytes());
        }
        None => assert!(!valid),
    }
});
