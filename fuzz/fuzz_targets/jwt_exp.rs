//! The JWT `exp` reader: any text, and any payload bytes well encoded (so the fuzzer reaches
//! the JSON without first learning base64): no panic, and an `exp` is positive.

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use nexus_sidecar::token::fuzzing::jwt_exp;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        format!("h.{}.s", URL_SAFE_NO_PAD.encode(rest))
    };
    if let Some(exp) = jwt_exp(&token) {
        assert!(exp > 0);
    }
});
