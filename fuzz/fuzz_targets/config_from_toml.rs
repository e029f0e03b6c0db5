//! `Config::from_toml` on any text: no panic; an error that grows with the input, never
//! faster; a valid configuration prints (`check`) without panicking, and what it prints loads
//! without panicking either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_sidecar::Config;

/// As in tests/properties.rs: at most this many bytes of error per byte of text, plus a base.
const ERROR_PER_BYTE: usize = 64;
const ERROR_BASE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `{ file = … }` secrets and `ca_file` are read at load: keep the fuzzer away from device
    // and kernel files (/dev/zero never ends, a FIFO blocks) and from escapes that could spell
    // their names. Everything else that names a file reads one that does not exist.
    if ["/dev", "/proc", "/sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    match Config::from_toml(text) {
        Ok(config) => {
            let shown = config.to_toml();
            let _ = Config::from_toml(&shown);
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.len() <= ERROR_PER_BYTE * text.len() + ERROR_BASE,
                "{} bytes of error for {} bytes of text",
                message.len(),
                text.len()
            );
            let _ = format!("{e:?}");
        }
    }
});
