//! Property tests for the code that reads what others wrote: the configuration loader, the
//! token-response parser, the JWT `exp` reader and the header rules.
//!
//! Each property holds for every input: no panic; output bounded by the input (no unbounded
//! allocation, the token-response size limit holds); and no secret in an error: a secret
//! written in the configuration, or an endpoint's `error_description`, never reaches an error's
//! `Display` or `Debug`. The fuzz targets in `fuzz/` check the same things on inputs libFuzzer
//! invents; these run on every `cargo test`.
//!
//! Runs are deterministic: a fixed seed, 256 cases a property (fewer for the ones that talk to
//! a loopback token endpoint), no persistence file. `PROPTEST_CASES` and `PROPTEST_RNG_SEED`
//! override both, to explore further: `PROPTEST_CASES=20000 PROPTEST_RNG_SEED=7 cargo test
//! --release --test properties`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use nexus_sidecar::config::{ConfigError, Problem};
use nexus_sidecar::headers::{
    bearer, is_hop_by_hop, is_insufficient_scope, prepare_request, prepare_response,
    remove_hop_by_hop, remove_length_beside_transfer_encoding, set_authorization,
    te_is_only_trailers,
};
use nexus_sidecar::token::fuzzing::{jwt_exp, parse, Lifetime, MAX_TOKEN_RESPONSE};
use nexus_sidecar::Config;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `cases` cases from a fixed seed, unless `PROPTEST_CASES` / `PROPTEST_RNG_SEED` say otherwise;
/// no regressions file (the inputs worth keeping are written out as tests below).
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x6e65_7875_735f_7369);
    }
    config.failure_persistence = None;
    config
}

/// A random marker that stands for a secret: 24 characters no template text contains.
fn marker() -> impl Strategy<Value = String> {
    "[A-Z2-7]{24}".prop_map(|m| format!("QZ{m}"))
}

/// Whether `text` shows `marker`, in any case.
fn shows(text: &str, marker: &str) -> bool {
    text.to_ascii_lowercase()
        .contains(&marker.to_ascii_lowercase())
}

// --- the configuration loader -----------------------------------------------------------------

/// The longest an error may be, per byte of configuration text, plus a constant: errors grow
/// with the input, never faster. (Measured: well under this; a problem per short key line, each
/// a sentence with a suggestion.)
const CONFIG_ERROR_PER_BYTE: usize = 64;
const CONFIG_ERROR_BASE: usize = 4096;

/// TOML-ish text: fragments of real configurations in any order, with noise.
fn tomlish() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("[[upstream]]\n".to_owned()),
        Just("[upstream]\n".to_owned()),
        Just("[upstream.auth]\n".to_owned()),
        Just("[upstream.headers]\n".to_owned()),
        Just("[admin]\n".to_owned()),
        Just("[log]\n".to_owned()),
        Just("[limits]\n".to_owned()),
        Just("[[upstream.auth]]\n".to_owned()),
        prop::sample::select(vec![
            "name",
            "listen",
            "target",
            "preset",
            "environment",
            "flow",
            "token_url",
            "client_id",
            "client_secret",
            "client_auth",
            "username",
            "password",
            "totp_secret",
            "user_key",
            "user_secret",
            "token",
            "auth_url",
            "scope",
            "extra_params",
            "headers",
            "retry_on",
            "max_replay_body",
            "timeout",
            "token_wait",
            "refresh_before",
            "min_refresh_interval",
            "token_lifetime",
            "prefetch",
            "allow_remote",
            "ca_file",
            "connect_timeout",
            "request_timeout",
            "level",
            "format",
            "shutdown_grace",
            "max_connections",
            "max_buffered",
            "header_read_timeout",
            "idle_timeout",
            "body_read_timeout",
            "auth.flow",
            "client_secert",
            "upstream.name",
            "\"quoted key\"",
        ])
        .prop_map(|k| format!("{k} = ")),
        prop::sample::select(vec![
            "\"a\"",
            "\"nuvy-nexus\"",
            "\"nuvy\"",
            "\"quantoz\"",
            "\"nexudus\"",
            "\"nexushub\"",
            "\"quantos\"",
            "\"qa\"",
            "\"test\"",
            "\"production\"",
            "\"8081\"",
            "\"0.0.0.0:8081\"",
            "\"[::1]:0\"",
            "\"127.0.0.1:99999\"",
            "\"https://api.example\"",
            "\"http://10.0.0.1/x\"",
            "\"ftp://x\"",
            "\"\"",
            "\"client_credentials\"",
            "\"password\"",
            "\"static\"",
            "\"none\"",
            "\"basic\"",
            "\"body\"",
            "{ env = \"NEXUS_PROPS_UNSET\" }",
            "{ file = \"/nonexistent/secret\" }",
            "{ env = \"A\", file = \"B\" }",
            "{}",
            "\"30s\"",
            "\"0s\"",
            "\"-1s\"",
            "\"10 parsecs\"",
            "\"99999999999h\"",
            "\"1MiB\"",
            "\"1EiB\"",
            "\"18446744073709551615B\"",
            "[401]",
            "[401, 503, 99999]",
            "[]",
            "[\"x\"]",
            "0",
            "-1",
            "1e400",
            "9223372036854775807",
            "true",
            "nan",
            "{ x-api-key = \"k\" }",
            "{ authorization = \"k\" }",
            "{ \"bad name\" = \"k\" }",
            "1979-05-27T07:32:00Z",
            "'''\nmulti\n'''",
            "\"\\u0000\"",
            "\"\\uD800\"",
        ])
        .prop_map(|v| format!("{v}\n")),
        "[a-z_.-]{0,12}".prop_map(String::from),
        prop::sample::select(vec![
            "\n", "=", "\"", "'", "[", "]", "{", "}", ",", "#", ".", " ", "\t", "\r\n",
        ])
        .prop_map(String::from),
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(fragment, 0..48).prop_map(|parts| parts.concat())
}

/// A valid configuration with every flow and most keys, literal secrets only.
const VALID: &str = r#"shutdown_grace = "20s"
[admin]
listen = "127.0.0.1:9901"
[log]
level = "info"
format = "text"
[limits]
max_connections = 4096
header_read_timeout = "10s"
idle_timeout = "60s"
body_read_timeout = "30s"
max_buffered = "64MiB"
[[upstream]]
name = "nuvy"
preset = "nuvy-nexus"
environment = "qa"
listen = "127.0.0.1:8081"
headers = { request_iso8601 = "true" }
retry_on = [401]
max_replay_body = "1MiB"
connect_timeout = "5s"
request_timeout = "60s"
[upstream.auth]
client_id = "id"
client_secret = "secret"
client_auth = "basic"
scope = "read write"
extra_params = { audience = "https://api.example" }
refresh_before = "60s"
min_refresh_interval = "1s"
prefetch = true
token_wait = "5s"
token_lifetime = "1h"
timeout = "10s"
[[upstream]]
name = "quantoz"
preset = "quantoz"
environment = "test"
listen = "8083"
[upstream.auth]
client_id = "id"
client_secret = "secret"
[[upstream]]
name = "nexudus"
preset = "nexudus"
listen = "8084"
target = "https://example.spaces.nexudus.com"
[upstream.auth]
username = "user"
password = "pass"
totp_secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
[[upstream]]
name = "nexushub"
preset = "nexushub"
listen = "8085"
target = "https://api.nexushub.co"
[upstream.auth]
user_key = "key"
user_secret = "secret"
[[upstream]]
name = "fixed"
listen = "8086"
target = "http://127.0.0.1:9000/base"
[upstream.auth]
flow = "static"
token = "t"
[[upstream]]
name = "open"
listen = "[::1]:8087"
target = "https://open.example"
[upstream.auth]
flow = "none"
"#;

/// An edit of one line of [`VALID`].
#[derive(Debug, Clone)]
enum Edit {
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
    Insert(prop::sample::Index, String),
    NewValue(prop::sample::Index, String),
}

/// [`VALID`] with a few lines deleted, repeated, swapped, inserted or given other values: often
/// still valid (so what `check` prints is loaded again), often one or two problems.
fn mutated() -> impl Strategy<Value = String> {
    let index = any::<prop::sample::Index>;
    let edit = prop_oneof![
        index().prop_map(Edit::Delete),
        index().prop_map(Edit::Duplicate),
        (index(), index()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (index(), tomlish()).prop_map(|(a, t)| Edit::Insert(a, t)),
        (index(), tomlish()).prop_map(|(a, t)| Edit::NewValue(a, t)),
    ];
    prop::collection::vec(edit, 0..4).prop_map(|edits| {
        let mut lines: Vec<String> = VALID.lines().map(str::to_owned).collect();
        for edit in edits {
            if lines.is_empty() {
                break;
            }
            match edit {
                Edit::Delete(i) => {
                    lines.remove(i.index(lines.len()));
                }
                Edit::Duplicate(i) => {
                    let i = i.index(lines.len());
                    lines.insert(i, lines[i].clone());
                }
                Edit::Swap(a, b) => {
                    let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                    lines.swap(a, b);
                }
                Edit::Insert(i, text) => lines.insert(i.index(lines.len()), text),
                Edit::NewValue(i, value) => {
                    let i = i.index(lines.len());
                    if let Some((key, _)) = lines[i].split_once('=') {
                        lines[i] = format!("{key}= {}", value.trim_end());
                    }
                }
            }
        }
        lines.join("\n")
    })
}

#[test]
fn the_base_of_the_mutations_is_valid() {
    let config = Config::from_toml(VALID).unwrap();
    assert_eq!(config.upstreams.len(), 6);
    reloads(&config.to_toml()).unwrap();
}

/// What `check` prints is a configuration for reading, with every literal secret masked, not a
/// file to run: a mask is a placeholder. Most masks load again as literals, but a TOTP seed is
/// checked when it is loaded (it must be base32, so a typo fails at start-up and not at the
/// first sign-in), and `"***"` is not base32: loading it anyway would sign in with codes from a
/// seed nobody wrote. So "it loads again as printed" cannot hold for a configuration with a
/// literal `totp_secret`, and must not. What holds instead, for every configuration that loads:
/// the printed text is refused at most at its masked seeds; and with real seeds put in their
/// place it loads into a configuration that prints the very same text (nothing is lost or
/// changed in printing but the masked values).
fn reloads(shown: &str) -> Result<(), String> {
    match Config::from_toml(shown) {
        Ok(_) => {}
        Err(ConfigError::Invalid(problems))
            if problems.iter().all(|p| is_masked_seed(shown, p)) => {}
        Err(e) => return Err(format!("{shown}\n{e}")),
    }
    let filled = with_real_seeds(shown);
    let again = Config::from_toml(&filled).map_err(|e| format!("{filled}\n{e}"))?;
    let printed = again.to_toml();
    match printed == shown {
        true => Ok(()),
        false => Err(format!(
            "printed again differently:\n{shown}\n---\n{printed}"
        )),
    }
}

/// Whether `problem` is about a `totp_secret` that `shown` prints masked.
fn is_masked_seed(shown: &str, problem: &Problem) -> bool {
    problem.key.ends_with(".auth.totp_secret")
        && shown
            .lines()
            .nth(problem.line - 1)
            .is_some_and(|l| l.contains("\"***\""))
}

/// `shown` with a real seed in place of each masked `totp_secret`, the one mask that does not
/// load (a literal prints as the mask whatever it is, so any real seed prints the same).
fn with_real_seeds(shown: &str) -> String {
    shown
        .lines()
        .map(
            |l| match l.trim_start().starts_with("totp_secret = \"***\"") {
                true => l.replace("\"***\"", "\"JBSWY3DPEHPK3PXP\""),
                false => l.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// A literal `totp_secret` prints masked, and the mask is refused where it stands, with a message
/// that says it is `check`'s mask rather than a malformed seed; put a real seed back and the
/// text loads and prints the same (see [`reloads`]).
#[test]
fn check_output_with_a_literal_totp_secret_is_refused_only_at_the_mask() {
    let config = Config::from_toml(VALID).unwrap();
    let shown = config.to_toml();
    let problems = match Config::from_toml(&shown) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("a masked TOTP seed was not refused: {other:?}\n{shown}"),
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "upstream.nexudus.auth.totp_secret");
    assert!(
        problems[0].message.contains("mask"),
        "{}",
        problems[0].message
    );
    reloads(&shown).unwrap();
}

/// What a configuration with secrets in it gets wrong on purpose: each yields a `Problem`
/// (never a TOML syntax error, for which see [`syntax_error`]).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Breakage {
    RemoteListen,
    NotAnAddress,
    MisspeltSecretKey,
    OtherFlowsSecret,
    BadTokenUrl,
    BadDuration,
    MisspeltPreset,
    DuplicateUpstream,
    BadHeaderName,
    ManagedHeader,
    SecretOfWrongType,
    MissingSecretFile,
    EnvAndFile,
    UnknownTable,
    RetryOnText,
    EmptySecret,
}

/// A secret value built around the marker: plain ones are valid anywhere; the others may be
/// refused, and then the refusal must not quote them either.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Plain,
    Padded,
    Newline,
    Control,
    NonAscii,
    Long,
}

impl Shape {
    fn value(self, marker: &str) -> String {
        match self {
            Shape::Plain => marker.to_owned(),
            Shape::Padded => format!("  {marker} "),
            Shape::Newline => format!("{marker}\nsecond line"),
            Shape::Control => format!("{marker}\u{7f}\u{1}"),
            Shape::NonAscii => format!("clé-{marker}-😀"),
            Shape::Long => marker.repeat(64),
        }
    }
}

/// How a secret is written: a TOML basic string, a literal string, or a file.
#[derive(Debug, Clone, Copy)]
enum Form {
    Basic,
    Literal,
    File,
    FileNotUtf8,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flow {
    ClientCredentials,
    Password,
    NexusHub,
    Static,
}

impl Flow {
    fn lines(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Flow::ClientCredentials => (
                "flow = \"client_credentials\"\ntoken_url = \"https://id.example/token\"",
                &["client_id", "client_secret"],
            ),
            Flow::Password => (
                "flow = \"password\"\ntoken_url = \"https://id.example/token\"",
                &["username", "password", "client_id", "client_secret"],
            ),
            Flow::NexusHub => (
                "flow = \"nexushub\"\nauth_url = \"https://auth.example\"",
                &["user_key", "user_secret"],
            ),
            Flow::Static => ("flow = \"static\"", &["token"]),
        }
    }
}

#[derive(Debug, Clone)]
struct SecretConfig {
    marker: String,
    flow: Flow,
    shape: Shape,
    form: Form,
    header: bool,
    totp: bool,
    breakages: Vec<Breakage>,
    order: Vec<u8>,
}

fn secret_config() -> impl Strategy<Value = SecretConfig> {
    let breakage = prop::sample::select(vec![
        Breakage::RemoteListen,
        Breakage::NotAnAddress,
        Breakage::MisspeltSecretKey,
        Breakage::OtherFlowsSecret,
        Breakage::BadTokenUrl,
        Breakage::BadDuration,
        Breakage::MisspeltPreset,
        Breakage::DuplicateUpstream,
        Breakage::BadHeaderName,
        Breakage::ManagedHeader,
        Breakage::SecretOfWrongType,
        Breakage::MissingSecretFile,
        Breakage::EnvAndFile,
        Breakage::UnknownTable,
        Breakage::RetryOnText,
        Breakage::EmptySecret,
    ]);
    (
        marker(),
        prop::sample::select(vec![
            Flow::ClientCredentials,
            Flow::Password,
            Flow::NexusHub,
            Flow::Static,
        ]),
        prop_oneof![
            3 => Just(Shape::Plain),
            1 => prop::sample::select(vec![
                Shape::Padded,
                Shape::Newline,
                Shape::Control,
                Shape::NonAscii,
                Shape::Long,
            ]),
        ],
        prop::sample::select(vec![
            Form::Basic,
            Form::Literal,
            Form::File,
            Form::FileNotUtf8,
        ]),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            1 => Just(Vec::new()),
            2 => prop::collection::vec(breakage, 1..4).prop_map(|mut b| {
                // Each once: `[limit]` twice is a TOML syntax error, not a problem.
                let mut seen = Vec::new();
                b.retain(|x| !seen.contains(x) && { seen.push(*x); true });
                b
            }),
        ],
        prop::collection::vec(any::<u8>(), 16),
    )
        .prop_map(
            |(marker, flow, shape, form, header, totp, breakages, order)| SecretConfig {
                marker,
                flow,
                shape,
                form,
                header,
                totp,
                breakages,
                order,
            },
        )
}

/// Secret files of the cases, removed when the case ends.
struct Files(Vec<PathBuf>);

impl Drop for Files {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn secret_file(files: &mut Files, content: &[u8]) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "nexus-sidecar-properties-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, content).unwrap();
    files.0.push(path.clone());
    toml_string(path.to_str().unwrap())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl SecretConfig {
    /// Whether the loader must accept it: nothing broken, and values any flow takes.
    fn valid(&self) -> bool {
        self.breakages.is_empty()
            && matches!(self.shape, Shape::Plain)
            && !matches!(self.form, Form::FileNotUtf8)
            && !(self.totp && self.flow != Flow::Password)
    }

    fn secret(&self, files: &mut Files, value: &str) -> String {
        match self.form {
            Form::Basic => toml_string(value),
            Form::Literal
                if !value.contains(['\'', '\n']) && !value.chars().any(char::is_control) =>
            {
                format!("'{value}'")
            }
            Form::Literal => toml_string(value),
            Form::File => format!("{{ file = {} }}", secret_file(files, value.as_bytes())),
            Form::FileNotUtf8 => {
                let mut bytes = value.as_bytes().to_vec();
                bytes.extend_from_slice(b"\xff\xfe");
                format!("{{ file = {} }}", secret_file(files, &bytes))
            }
        }
    }

    fn render(&self, files: &mut Files) -> String {
        let value = self.shape.value(&self.marker);
        let (flow_lines, keys) = self.flow.lines();
        let mut top = Vec::new();
        let mut upstream = vec![
            "name = \"a\"".to_owned(),
            "target = \"https://api.example\"".to_owned(),
        ];
        let mut listen = "listen = \"8081\"".to_owned();
        let mut auth: Vec<String> = flow_lines.lines().map(str::to_owned).collect();
        for k in keys {
            auth.push(format!("{k} = {}", self.secret(files, &value)));
        }
        let mut tail = Vec::new();
        if self.totp {
            // A valid base32 seed (160 bits), or the marker shaped otherwise.
            auth.push(format!("totp_secret = {}", self.secret(files, &value)));
        }
        if self.header {
            upstream.push(format!(
                "headers = {{ x-api-key = {} }}",
                toml_string(&value)
            ));
        }
        for b in &self.breakages {
            match b {
                Breakage::RemoteListen => listen = "listen = \"0.0.0.0:8081\"".to_owned(),
                Breakage::NotAnAddress => listen = "listen = \"localhost:http\"".to_owned(),
                Breakage::MisspeltSecretKey => {
                    auth.push(format!("client_secert = {}", self.secret(files, &value)))
                }
                Breakage::OtherFlowsSecret => {
                    let key = if self.flow == Flow::Static { "user_key" } else { "token" };
                    auth.push(format!("{key} = {}", self.secret(files, &value)));
                }
                Breakage::BadTokenUrl => auth.push("token_url = \"ftp://id.example\"".to_owned()),
                Breakage::BadDuration => auth.push("timeout = \"10 parsecs\"".to_owned()),
                Breakage::MisspeltPreset => upstream.push("preset = \"quantos\"".to_owned()),
                Breakage::DuplicateUpstream => tail.push(format!(
                    "[[upstream]]\nname = \"a\"\nlisten = \"8082\"\ntarget = \"https://b.example\"\n[upstream.auth]\nflow = \"static\"\ntoken = {}",
                    self.secret(files, &value)
                )),
                Breakage::BadHeaderName => upstream.push(format!(
                    "headers = {{ \"bad name\" = {} }}",
                    toml_string(&value)
                )),
                Breakage::ManagedHeader => upstream.push(format!(
                    "headers = {{ authorization = {} }}",
                    toml_string(&format!("Bearer {value}"))
                )),
                Breakage::SecretOfWrongType => {
                    auth.push(format!("user_secret = [{}]", toml_string(&value)))
                }
                Breakage::MissingSecretFile => {
                    auth.push("user_key = { file = \"/nonexistent/nexus/secret\" }".to_owned())
                }
                Breakage::EnvAndFile => auth.push(format!(
                    "password = {{ env = \"NEXUS_PROPS_UNSET\", file = {} }}",
                    toml_string(&value)
                )),
                Breakage::UnknownTable => top.push(format!("[limit]\nmax = {}", toml_string(&value))),
                // Not a secret: its value may be quoted.
                Breakage::RetryOnText => upstream.push("retry_on = [\"soon\"]".to_owned()),
                Breakage::EmptySecret => auth.push("totp_secret = \"\"".to_owned()),
            }
        }
        // The same key twice is a TOML syntax error, which is not what this test is about.
        dedup_keys(&mut upstream);
        dedup_keys(&mut auth);
        let mut keyed: Vec<(u8, String)> = auth
            .into_iter()
            .enumerate()
            .map(|(i, l)| (self.order[i % self.order.len()], l))
            .collect();
        keyed.sort_by_key(|(k, _)| *k);
        let auth: Vec<String> = keyed.into_iter().map(|(_, l)| l).collect();
        format!(
            "{}\n[[upstream]]\n{listen}\n{}\n[upstream.auth]\n{}\n{}\n",
            top.join("\n"),
            upstream.join("\n"),
            auth.join("\n"),
            tail.join("\n"),
        )
    }
}

/// Keeps the last line for each key.
fn dedup_keys(lines: &mut Vec<String>) {
    let key = |l: &String| l.split('=').next().unwrap_or_default().trim().to_owned();
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<String> = lines
        .iter()
        .rev()
        .filter(|l| seen.insert(key(l)))
        .cloned()
        .collect();
    kept.reverse();
    *lines = kept;
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text: an answer, never a panic; an error that grows with the input, never faster;
    /// and a configuration that loads prints (`check`) as TOML that loads again.
    #[test]
    fn config_from_any_text_answers_in_bounds(
        text in prop_oneof![2 => mutated(), 2 => tomlish(), 1 => ".{0,200}"],
    ) {
        match Config::from_toml(&text) {
            Ok(config) => {
                let shown = config.to_toml();
                let again = reloads(&shown);
                prop_assert!(again.is_ok(), "{}", again.unwrap_err());
                let _ = format!("{config:?}");
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(
                    message.len() <= CONFIG_ERROR_PER_BYTE * text.len() + CONFIG_ERROR_BASE,
                    "{} bytes of error for {} bytes of text",
                    message.len(),
                    text.len()
                );
                let _ = format!("{e:?}");
            }
        }
    }

    /// Secret values written in the file (literals, files, static header values) never appear
    /// in an error, its `Debug`, the warnings, the `Debug` of a valid configuration or what
    /// `check` prints; and a configuration with nothing wrong loads.
    #[test]
    fn config_secrets_are_never_echoed(case in secret_config()) {
        let mut files = Files(Vec::new());
        let text = case.render(&mut files);
        let marker = &case.marker;
        match Config::from_toml(&text) {
            Ok(config) => {
                prop_assert!(case.breakages.is_empty(), "{text}: accepted");
                prop_assert!(!shows(&format!("{config:?}"), marker), "{text}: Debug shows the secret");
                prop_assert!(!shows(&config.to_toml(), marker), "{text}: check shows the secret");
                for w in &config.warnings {
                    prop_assert!(!shows(w, marker), "{text}: a warning shows the secret: {w}");
                }
            }
            Err(e) => {
                prop_assert!(!case.valid(), "{text}: refused: {e}");
                prop_assert!(!shows(&e.to_string(), marker), "{text}: the error shows the secret: {e}");
                prop_assert!(!shows(&format!("{e:?}"), marker), "{text}: the error's Debug shows the secret");
            }
        }
    }
}

/// The shapes of a TOML syntax error on a secret's own line.
fn syntax_error(value: &str) -> Vec<String> {
    vec![
        format!("client_secret = \"{value}"),
        format!("client_secret = \"{value}\" trailing"),
        format!("client_secret = \"{value}\"\nclient_secret = \"{value}\""),
        format!("client_secret = {{ file = \"/x\" \"{value}\" }}"),
        format!("client_secret = {value}"),
        format!("client_secret = \"{value}\\q\""),
        format!("client_secret = '{value}"),
        format!("client_secret = \"\"\"{value}"),
        format!("client_secret = [ \"{value}\""),
        format!("client_secret = {{ env = \"{value}"),
        format!("client_secret = 1979-05-27T{value}"),
        format!("client_secret = \"{value}\n\""),
        format!("client_secret = \"{value}\u{1}\""),
        format!("client_secret = \"{value}\"\"{value}\""),
    ]
}

proptest! {
    #![proptest_config(config(64))]

    /// A file that is not TOML is refused by line, column and message only: toml's own
    /// `Display` quotes the offending line, which would print a literal secret written on it
    /// (`client_secret = "s3cr3t" x`, an unterminated string, the key written twice, a secret
    /// left unquoted, a bad escape, a control character...). Every shape, every case.
    #[test]
    fn config_syntax_errors_do_not_echo_secrets(marker in marker()) {
        for line in syntax_error(&marker) {
            let text = format!(
                "[[upstream]]\nname = \"a\"\nlisten = \"8081\"\ntarget = \"https://api.example\"\n[upstream.auth]\nflow = \"client_credentials\"\ntoken_url = \"https://id.example/token\"\nclient_id = {{ env = \"ID\" }}\n{line}\n"
            );
            let e = Config::from_toml(&text).unwrap_err();
            prop_assert!(!shows(&e.to_string(), &marker), "{e}");
            prop_assert!(!shows(&format!("{e:?}"), &marker), "{e:?}");
        }
    }
}

// --- the token-response parser ----------------------------------------------------------------

/// A token endpoint's error text, and the longest a `TokenError` may print whatever the body:
/// only sanitised codes (64 bytes at most) and a well-formed media type (64) come from it.
const MAX_TOKEN_ERROR_TEXT: usize = 320;

const NOW: u64 = 1_700_000_000;

fn status() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        2 => Just(200u16),
        2 => prop::sample::select(vec![
            200u16, 201, 204, 400, 401, 403, 408, 429, 500, 501, 502, 503
        ]),
        1 => 100u16..=999,
    ]
    .prop_map(|s| StatusCode::from_u16(s).unwrap())
}

/// Response headers: the ones the parser reads, with values good and bad, and noise.
fn response_headers(marker: String) -> impl Strategy<Value = HeaderMap> {
    let content_type = prop::sample::select(vec![
        "application/json".to_owned(),
        "application/json; charset=utf-8".to_owned(),
        "text/html".to_owned(),
        format!("application/json; charset={marker}"),
        format!("text/html; {marker} {marker}"),
        format!("{marker} {marker}"),
        "x".repeat(200),
        String::new(),
    ]);
    let retry_after = prop::sample::select(vec![
        "0".to_owned(),
        "120".to_owned(),
        "18446744073709551615".to_owned(),
        "99999999999999999999999".to_owned(),
        "-1".to_owned(),
        "Wed, 21 Oct 2015 07:28:00 GMT".to_owned(),
        marker.clone(),
    ]);
    (
        prop::option::of(content_type),
        prop::option::of(retry_after),
        prop::collection::vec(
            (
                "[a-z][a-z0-9-]{0,15}",
                prop::collection::vec(any::<u8>(), 0..40),
            ),
            0..4,
        ),
    )
        .prop_map(|(ct, ra, noise)| {
            let mut h = HeaderMap::new();
            if let Some(v) = ct.and_then(|v| HeaderValue::from_str(&v).ok()) {
                h.insert(header::CONTENT_TYPE, v);
            }
            if let Some(v) = ra.and_then(|v| HeaderValue::from_str(&v).ok()) {
                h.insert(header::RETRY_AFTER, v);
            }
            for (n, v) in noise {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(n.as_bytes()),
                    HeaderValue::from_bytes(&v),
                ) {
                    h.append(n, v);
                }
            }
            h
        })
}

fn jwt_with_claims(claims: &str) -> String {
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

/// JSON values that are not a sanitised code: carrying the marker in text that no code
/// check lets through (spaces, markup, length), or not a string at all.
fn not_a_code(marker: String) -> impl Strategy<Value = serde_json::Value> {
    prop::sample::select(vec![
        serde_json::json!(format!("reset token {marker}")),
        serde_json::json!(format!("<b>{marker}</b>")),
        serde_json::json!(marker.repeat(3)),
        serde_json::json!(format!("{marker}\n")),
        serde_json::json!({ "code": marker }),
        serde_json::json!([marker]),
        serde_json::json!(12345),
        serde_json::Value::Null,
    ])
}

/// A token endpoint's JSON answer with the marker everywhere a secret could ride along.
fn token_body(marker: String) -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        prop::sample::select(vec![
            "invalid_client",
            "invalid_grant",
            "unauthorized_client",
            "server_error",
            "temporarily_unavailable",
            "slow_down",
            "access_denied",
        ])
        .prop_map(|c| serde_json::json!(c)),
        not_a_code(marker.clone()),
    ];
    let live_jwt = jwt_with_claims(&format!(r#"{{"exp":{},"sub":"{marker}"}}"#, NOW + 3600));
    let access_token = prop::sample::select(vec![
        Some(serde_json::json!(marker.clone())),
        Some(serde_json::json!(marker.clone())),
        Some(serde_json::json!(marker.clone())),
        Some(serde_json::json!(live_jwt)),
        Some(serde_json::json!(jwt_with_claims(&format!(
            r#"{{"exp":1,"sub":"{marker}"}}"#
        )))),
        Some(serde_json::json!(jwt_with_claims(&format!(
            r#"{{"exp":1e300,"sub":"{marker}"}}"#
        )))),
        Some(serde_json::json!(format!("{marker}\u{1}"))),
        Some(serde_json::json!("")),
        Some(serde_json::json!(7)),
        None,
    ]);
    let token_type = prop::option::of(prop_oneof![
        Just(serde_json::json!("bearer")),
        Just(serde_json::json!("Bearer")),
        Just(serde_json::json!("mac")),
        not_a_code(marker.clone()),
    ]);
    let expires_in = prop::option::of(prop::sample::select(vec![
        serde_json::json!(3600),
        serde_json::json!("3600"),
        serde_json::json!(0),
        serde_json::json!(-5),
        serde_json::json!(1e300),
        serde_json::json!(f64::MIN_POSITIVE),
        serde_json::json!("soon"),
        serde_json::json!(marker.clone()),
        serde_json::Value::Null,
    ]));
    (
        prop::option::of(code),
        access_token,
        token_type,
        expires_in,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(code, token, kind, expires, refresh, extra)| {
            let mut o = serde_json::Map::new();
            if let Some(c) = code {
                o.insert("error".into(), c);
            }
            o.insert(
                "error_description".into(),
                serde_json::json!(format!("Password reset required: use token {marker}")),
            );
            if let Some(t) = token {
                o.insert("access_token".into(), t);
            }
            if let Some(k) = kind {
                o.insert("token_type".into(), k);
            }
            if let Some(e) = expires {
                o.insert("expires_in".into(), e);
            }
            if refresh {
                o.insert("refresh_token".into(), serde_json::json!(marker.clone()));
            }
            if extra {
                o.insert(
                    "error_uri".into(),
                    serde_json::json!(format!("https://x/{marker}")),
                );
                o.insert(marker.clone(), serde_json::json!(marker.clone()));
            }
            serde_json::to_vec(&o).unwrap()
        })
}

/// Bytes that are not a token response: random, truncated JSON, or deep nesting.
fn odd_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        ".{0,256}".prop_map(String::into_bytes),
        (1usize..4000).prop_map(|n| "[".repeat(n).into_bytes()),
        (1usize..2000).prop_map(|n| format!("{}{}", "{\"a\":".repeat(n), "1").into_bytes()),
        Just(b"{\"access_token\":\"\\ud800\"}".to_vec()),
        Just(b"{\"access_token\":\"a\",\"expires_in\":1e999}".to_vec()),
        Just(b"\xef\xbb\xbf{\"access_token\":\"a\"}".to_vec()),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// No panic on any status, headers and bytes; a grant is no bigger than the body and its
    /// lifetime is bounded (about 31 years at most: every instant computed from it stays in
    /// range); an error prints in constant space whatever the body.
    #[test]
    fn token_responses_parse_in_bounds(
        status in status(),
        headers in response_headers("QZMARKER".to_owned()),
        body in prop_oneof![odd_body(), token_body("QZMARKER".to_owned())],
        now in prop_oneof![Just(NOW), any::<u64>()],
    ) {
        match parse(status, &headers, &body, now) {
            Ok(grant) => {
                prop_assert!(status.is_success());
                prop_assert!(grant.access_token.expose().len() <= body.len());
                prop_assert!(grant.refresh_token.as_ref().is_none_or(|r| r.expose().len() <= body.len()));
                if let Lifetime::Given(d) = grant.lifetime {
                    prop_assert!(d <= Duration::from_secs(1_000_000_000), "{d:?}");
                }
            }
            Err(e) => {
                prop_assert!(e.to_string().len() <= MAX_TOKEN_ERROR_TEXT, "{e}");
                prop_assert!(format!("{e:?}").len() <= MAX_TOKEN_ERROR_TEXT, "{e:?}");
            }
        }
    }

    /// An endpoint's `error_description` (Nexudus puts a password-reset token there), its
    /// other fields, the access and refresh tokens, and header parameters never reach a
    /// `TokenError`'s `Display` or `Debug`, nor a grant's `Debug`.
    #[test]
    fn token_errors_never_carry_the_endpoints_text(
        (marker, headers, body) in marker().prop_flat_map(|m| {
            (Just(m.clone()), response_headers(m.clone()), token_body(m))
        }),
        status in status(),
    ) {
        match parse(status, &headers, &body, NOW) {
            Ok(grant) => {
                let shown = format!("{grant:?}");
                prop_assert!(!shows(&shown, &marker), "{}", shown);
            }
            Err(e) => {
                prop_assert!(!shows(&e.to_string(), &marker), "{e}");
                prop_assert!(!shows(&format!("{e:?}"), &marker), "{e:?}");
            }
        }
    }
}

/// Regression (found by these properties): a JWT whose `exp` is past the range of an instant
/// (here 1e300, read as `u64::MAX`) was taken as its lifetime unclamped, and the token task
/// panicked at `src/token/schedule.rs:62` ("overflow when adding duration to instant"); the
/// request then waited out the whole token timeout. `expires_in` was already clamped to 1e9 s;
/// the JWT's lifetime now is too.
#[test]
fn a_jwt_exp_far_in_the_future_gives_a_bounded_lifetime() {
    let cases = [
        ("1e300", 1_000_000_000),
        ("18446744073709551615", 1_000_000_000),
        ("9.3e18", 1_000_000_000),
        ("1e10", 1_000_000_000),
        ("1700003600", 3600),
    ];
    for (exp, lifetime) in cases {
        let token = jwt_with_claims(&format!(r#"{{"exp":{exp}}}"#));
        let body = format!(r#"{{"access_token":"{token}"}}"#);
        let grant = parse(StatusCode::OK, &HeaderMap::new(), body.as_bytes(), NOW).unwrap();
        assert_eq!(
            grant.lifetime,
            Lifetime::Given(Duration::from_secs(lifetime)),
            "exp {exp}"
        );
    }
}

// --- the token-response parser, end to end: the size limit ------------------------------------

/// A token endpoint on 127.0.0.1:0 that reads each request and answers with the bytes in
/// `answer`, then closes the connection.
async fn raw_token_endpoint(answer: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n @ 1..) = stream.read(&mut buf).await else {
                        return;
                    };
                    seen.extend_from_slice(&buf[..n]);
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if seen.len() >= end + 4 + length {
                        break;
                    }
                }
                let bytes = answer.lock().unwrap().clone();
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    ContentLength,
    Chunked(usize),
    UntilClose,
}

fn http_response(status: u16, body: &[u8], framing: Framing) -> Vec<u8> {
    let mut out =
        format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nconnection: close\r\n")
            .into_bytes();
    match framing {
        Framing::ContentLength => {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        }
        Framing::Chunked(size) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for chunk in body.chunks(size) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Framing::UntilClose => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
    }
    out
}

/// A JSON token answer of exactly `size` bytes (at least 64) with the marker in its padding.
fn sized_body(size: usize, status: u16, marker: &str) -> Vec<u8> {
    let head = if status == 200 {
        r#"{"access_token":"tok","error_description":""#.to_owned()
    } else {
        r#"{"error":"invalid_client","error_description":""#.to_owned()
    };
    let mut body = format!("{head}{marker} ");
    let pad = size - body.len() - 2;
    body.push_str(&"x".repeat(pad));
    body.push_str("\"}");
    assert_eq!(body.len(), size);
    body.into_bytes()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One `client_credentials` upstream whose token endpoint is `addr`.
fn token_endpoint_config(addr: SocketAddr) -> Config {
    Config::from_toml(&format!(
        "[[upstream]]\nname = \"a\"\nlisten = \"8081\"\ntarget = \"http://127.0.0.1:1\"\n\
         [upstream.auth]\nflow = \"client_credentials\"\ntoken_url = \"http://{addr}/token\"\n\
         client_id = \"id\"\nclient_secret = \"secret\"\ntoken_wait = \"0s\"\ntimeout = \"5s\"\n"
    ))
    .unwrap()
}

proptest! {
    #![proptest_config(config(24))]

    /// Through the real token request (`nexus-sidecar token`): a body over `MAX_TOKEN_RESPONSE`
    /// bytes is refused as too large, however it is framed and whatever its status; one within
    /// it is read and parsed; and neither error quotes the body.
    #[test]
    fn token_responses_over_the_limit_are_refused(
        size in prop_oneof![
            (MAX_TOKEN_RESPONSE - 2)..=(MAX_TOKEN_RESPONSE + 2),
            64usize..(4 * MAX_TOKEN_RESPONSE),
        ],
        status in prop::sample::select(vec![200u16, 400, 401]),
        framing in prop_oneof![
            Just(Framing::ContentLength),
            (1usize..100_000).prop_map(Framing::Chunked),
            Just(Framing::UntilClose),
        ],
        marker in marker(),
    ) {
        let rt = runtime();
        let outcome = rt.block_on(async {
            let answer = Arc::new(Mutex::new(http_response(status, &sized_body(size, status, &marker), framing)));
            let addr = raw_token_endpoint(answer).await;
            nexus_sidecar::cli::token(&token_endpoint_config(addr), "a").await
        });
        match outcome {
            Ok(token) => {
                prop_assert!(size <= MAX_TOKEN_RESPONSE && status == 200);
                prop_assert_eq!(token.expose(), "tok");
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(!shows(&text, &marker), "{text}");
                prop_assert_eq!(
                    text.contains(&format!("larger than {MAX_TOKEN_RESPONSE} bytes")),
                    size > MAX_TOKEN_RESPONSE,
                    "{} bytes, HTTP {}: {}", size, status, text
                );
                prop_assert!(size > MAX_TOKEN_RESPONSE || status != 200, "{text}");
            }
        }
    }
}

/// Regression, end to end: the JWT `exp` that made the token task panic now yields a token.
#[test]
fn a_jwt_exp_far_in_the_future_yields_a_token_end_to_end() {
    let rt = runtime();
    rt.block_on(async {
        let token = jwt_with_claims(r#"{"exp":1e300}"#);
        let body = format!(r#"{{"access_token":"{token}"}}"#);
        let answer = Arc::new(Mutex::new(http_response(
            200,
            body.as_bytes(),
            Framing::ContentLength,
        )));
        let addr = raw_token_endpoint(answer).await;
        let got = tokio::time::timeout(
            Duration::from_secs(4),
            nexus_sidecar::cli::token(&token_endpoint_config(addr), "a"),
        )
        .await
        .expect("the token request hung (the token task panicked?)")
        .unwrap();
        assert_eq!(got.expose(), token);
    });
}

// --- the JWT `exp` reader ---------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Any string: an answer, never a panic.
    #[test]
    fn jwt_exp_of_any_text(text in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_=+/-]{0,24}(\\.[A-Za-z0-9_=+/-]{0,24}){0,4}",
    ]) {
        let _ = jwt_exp(&text);
    }

    /// Any payload bytes, well-encoded: an answer, never a panic; and an `exp` is a positive
    /// number no larger than the payload says.
    #[test]
    fn jwt_exp_of_any_payload(payload in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        ".{0,64}".prop_map(|s| format!("{{\"exp\":{s}}}").into_bytes()),
    ]) {
        let token = format!("h.{}.s", URL_SAFE_NO_PAD.encode(&payload));
        if let Some(exp) = jwt_exp(&token) {
            prop_assert!(exp > 0);
        }
    }

    /// `exp` as JSON writes it: a positive finite number is read (truncated to whole seconds,
    /// saturating), anything else is no `exp`; padding does not matter; exactly three parts.
    #[test]
    fn jwt_exp_reads_exactly_a_positive_number(
        exp in prop_oneof![
            (1u64..(1 << 53)).prop_map(|e| e as f64),
            any::<f64>(),
        ],
        other in "[a-z]{0,8}",
        padding in 0usize..3,
        parts in 1usize..6,
    ) {
        // What JSON says: the number as written and read back (serde_json's reading may be a
        // unit in the last place off the f64 that was written).
        let (claims, exp) = match serde_json::Number::from_f64(exp) {
            Some(n) => (
                format!(r#"{{"{other}x":"{other}","exp":{n}}}"#),
                serde_json::from_str::<f64>(&n.to_string()).unwrap(),
            ),
            None => (format!(r#"{{"exp":"{exp}"}}"#), exp),
        };
        let payload = format!("{}{}", URL_SAFE_NO_PAD.encode(&claims), "=".repeat(padding));
        let mut pieces = vec!["e30"; parts];
        if parts > 1 {
            pieces[1] = &payload;
        }
        let token = pieces.join(".");
        let expected = (parts == 3 && exp.is_finite() && exp > 0.0).then_some(exp as u64);
        prop_assert_eq!(jwt_exp(&token), expected, "{}", claims);
    }
}

// --- the header functions ---------------------------------------------------------------------

const NAMES: [&str; 18] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
    "host",
    "authorization",
    "www-authenticate",
    "x-api-key",
    "x-request-id",
    "content-type",
    "accept",
    "request_iso8601",
];

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        3 => prop::sample::select(NAMES.to_vec()).prop_map(HeaderName::from_static),
        1 => "[a-z0-9!#$%&'*+.^_`|~-]{1,12}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
    ]
}

/// A comma-separated list whose elements are drawn from `elements`, with odd spacing and case.
fn list(elements: Vec<&'static str>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            prop::sample::select(elements),
            any::<bool>(),
            prop::sample::select(vec!["", " ", "  ", "\t"]),
        ),
        0..4,
    )
    .prop_map(|items| {
        items
            .into_iter()
            .map(|(e, upper, space)| {
                let e = if upper {
                    e.to_ascii_uppercase()
                } else {
                    e.to_owned()
                };
                format!("{space}{e}{space}")
            })
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes()
    })
}

fn header_value_bytes(name: &HeaderName) -> BoxedStrategy<Vec<u8>> {
    let any_bytes = prop::collection::vec(any::<u8>(), 0..24).boxed();
    match name.as_str() {
        "connection" => prop_oneof![
            3 => list([NAMES.as_slice(), ["close", "", "x y", "\u{e9}"].as_slice()].concat()),
            1 => any_bytes,
        ]
        .boxed(),
        "te" => prop_oneof![
            3 => list(vec!["trailers", "gzip", "deflate;q=0.5", "", "chunked"]),
            1 => any_bytes,
        ]
        .boxed(),
        "www-authenticate" => prop_oneof![
            3 => challenge().prop_map(String::into_bytes),
            1 => any_bytes,
        ]
        .boxed(),
        _ => any_bytes,
    }
}

fn header_map(max: usize) -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec(
        header_name().prop_flat_map(|n| {
            let values = header_value_bytes(&n);
            (Just(n), values)
        }),
        0..max,
    )
    .prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                map.append(name, value);
            }
        }
        map
    })
}

/// The `error` parameters that say `insufficient_scope`, and other parameters.
const SCOPE_ERRORS: [&str; 3] = [
    "error=\"insufficient_scope\"",
    "error=insufficient_scope",
    "ERROR = \"INSUFFICIENT_SCOPE\"",
];
const OTHER_PARAMS: [&str; 4] = [
    "realm=\"api\"",
    "error=\"invalid_token\"",
    "error_description=\"insufficient_scope\"",
    "scope=\"read write\"",
];

/// A `WWW-Authenticate` value with parameters in any order, spacing and case, and whether it
/// says `insufficient_scope`: an `error` parameter does, except as the first parameter of a
/// scheme other than Bearer.
fn challenge_says() -> impl Strategy<Value = (String, bool)> {
    (
        prop::sample::select(vec!["Bearer ", "bearer ", "BEARER ", "", "Basic "]),
        prop::collection::vec(
            prop::sample::select([SCOPE_ERRORS.as_slice(), OTHER_PARAMS.as_slice()].concat()),
            0..4,
        ),
        prop::sample::select(vec![",", ", ", " ,  "]),
    )
        .prop_map(|(scheme, params, sep)| {
            let says = params
                .iter()
                .enumerate()
                .any(|(i, p)| SCOPE_ERRORS.contains(p) && (i > 0 || scheme != "Basic "));
            (format!("{scheme}{}", params.join(sep)), says)
        })
}

fn challenge() -> impl Strategy<Value = String> {
    challenge_says().prop_map(|(c, _)| c)
}

fn values(map: &HeaderMap, name: &HeaderName) -> Vec<HeaderValue> {
    map.get_all(name).iter().cloned().collect()
}

/// Names that a message's own `Connection` header makes hop-by-hop.
fn connection_named(map: &HeaderMap) -> Vec<HeaderName> {
    map.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Whether `prepare_response` (and the start of `prepare_request`) should drop `name`.
fn dropped_hop_by_hop(original: &HeaderMap, name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || connection_named(original).contains(name)
        || (name == header::CONTENT_LENGTH && original.contains_key(header::TRANSFER_ENCODING))
}

proptest! {
    #![proptest_config(config(256))]

    /// The response keeps exactly the end-to-end headers, values and order unchanged; and
    /// doing it twice changes nothing more.
    #[test]
    fn prepare_response_keeps_exactly_the_end_to_end_headers(original in header_map(12)) {
        let mut headers = original.clone();
        prepare_response(&mut headers);
        for name in original.keys() {
            if dropped_hop_by_hop(&original, name) {
                prop_assert!(!headers.contains_key(name), "{name} kept");
            } else {
                prop_assert_eq!(values(&headers, name), values(&original, name));
            }
        }
        prop_assert!(headers.keys().all(|n| original.contains_key(n)));
        prop_assert!(headers.len() <= original.len());
        let once = headers.clone();
        prepare_response(&mut headers);
        prop_assert_eq!(headers, once);
    }

    /// The upstream request: no hop-by-hop header but `TE: trailers` (exactly that, exactly
    /// when the app asked for trailers only), `Host` the target's or none, no app `Authorization` when the
    /// sidecar authenticates, the static headers exactly as configured, every other app
    /// header unchanged; bounded by what went in.
    #[test]
    fn prepare_request_forwards_exactly_what_it_should(
        original in header_map(12),
        extra in header_map(4).prop_map(|mut m| {
            // As the configuration guarantees: no managed or hop-by-hop names.
            let refused: Vec<HeaderName> = m.keys()
                .filter(|n| is_hop_by_hop(n) || *n == header::HOST || *n == header::AUTHORIZATION
                    || *n == header::CONTENT_LENGTH)
                .cloned()
                .collect();
            for n in refused { m.remove(n); }
            m
        }),
        authenticates in any::<bool>(),
        with_host in any::<bool>(),
    ) {
        let mut headers = original.clone();
        let target = HeaderValue::from_static("api.example:8443");
        let host = with_host.then_some(&target);
        prepare_request(&mut headers, host, &extra, authenticates);
        let trailers = te_is_only_trailers(&original);
        for name in headers.keys() {
            prop_assert!(!is_hop_by_hop(name) || *name == header::TE, "{name} forwarded");
        }
        if trailers {
            prop_assert_eq!(values(&headers, &header::TE), vec![HeaderValue::from_static("trailers")]);
        } else {
            prop_assert!(!headers.contains_key(header::TE));
        }
        match host {
            Some(host) => prop_assert_eq!(values(&headers, &header::HOST), vec![host.clone()]),
            None => prop_assert!(!headers.contains_key(header::HOST)),
        }
        if authenticates {
            prop_assert!(!headers.contains_key(header::AUTHORIZATION));
        }
        for name in extra.keys() {
            prop_assert_eq!(values(&headers, name), values(&extra, name));
        }
        for name in original.keys() {
            if extra.contains_key(name) || *name == header::TE || *name == header::HOST {
                continue;
            }
            let dropped = dropped_hop_by_hop(&original, name)
                || (authenticates && *name == header::AUTHORIZATION);
            if dropped {
                prop_assert!(!headers.contains_key(name), "{name} kept");
            } else {
                prop_assert_eq!(values(&headers, name), values(&original, name));
            }
        }
        prop_assert!(headers.len() <= original.len() + extra.len() + 2);
    }

    /// Whatever the static headers hold (the configuration refuses some; the function must not
    /// care), no panic and they win.
    #[test]
    fn prepare_request_static_headers_always_win(
        original in header_map(12),
        extra in header_map(6),
        authenticates in any::<bool>(),
        with_host in any::<bool>(),
    ) {
        let mut headers = original.clone();
        let target = HeaderValue::from_static("api.example:8443");
        let host = with_host.then_some(&target);
        prepare_request(&mut headers, host, &extra, authenticates);
        for name in extra.keys() {
            prop_assert_eq!(values(&headers, name), values(&extra, name));
        }
        prop_assert!(headers.len() <= original.len() + extra.len() + 2);
    }

    /// `remove_hop_by_hop` leaves none and is idempotent; `remove_length_beside_transfer_encoding`
    /// reports exactly when it removed a length, and leaves never both.
    #[test]
    fn hop_by_hop_and_length_removal(original in header_map(12)) {
        let mut headers = original.clone();
        remove_hop_by_hop(&mut headers);
        prop_assert!(headers.keys().all(|n| !is_hop_by_hop(n)));
        prop_assert!(connection_named(&original).iter().all(|n| !headers.contains_key(n)));
        let once = headers.clone();
        remove_hop_by_hop(&mut headers);
        prop_assert_eq!(&headers, &once);

        let mut headers = original.clone();
        let both = original.contains_key(header::TRANSFER_ENCODING)
            && original.contains_key(header::CONTENT_LENGTH);
        prop_assert_eq!(remove_length_beside_transfer_encoding(&mut headers), both);
        prop_assert!(!(headers.contains_key(header::TRANSFER_ENCODING)
            && headers.contains_key(header::CONTENT_LENGTH)));
        prop_assert_eq!(headers.len() + usize::from(both) * original.get_all(header::CONTENT_LENGTH).iter().count(), original.len());
    }

    /// `TE` asks for trailers only when every non-empty element of every line is `trailers`,
    /// and there is one.
    #[test]
    fn te_is_only_trailers_reads_every_element(original in header_map(8)) {
        let lines: Vec<Option<&str>> = original.get_all(header::TE).iter().map(|v| v.to_str().ok()).collect();
        let expected = lines.iter().all(Option::is_some) && {
            let elements: Vec<&str> = lines
                .iter()
                .flatten()
                .flat_map(|l| l.split(','))
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect();
            !elements.is_empty() && elements.iter().all(|e| e.eq_ignore_ascii_case("trailers"))
        };
        prop_assert_eq!(te_is_only_trailers(&original), expected);
    }

    /// `insufficient_scope` is found in any challenge that says so as the `error`, and never
    /// where the text does not appear; any bytes: no panic.
    #[test]
    fn insufficient_scope_is_read_from_the_error_parameter(
        challenges in prop::collection::vec(challenge_says(), 0..3),
        noise in header_map(6),
    ) {
        let mut headers = noise.clone();
        headers.remove(header::WWW_AUTHENTICATE);
        for (c, _) in &challenges {
            headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_str(c).unwrap());
        }
        let says = challenges.iter().any(|(_, says)| *says);
        prop_assert_eq!(is_insufficient_scope(&headers), says, "{:?}", challenges);
        let _ = is_insufficient_scope(&noise);
    }

    /// `Bearer <token>` exactly when every byte can go in a header; marked sensitive, so
    /// `Debug` does not show it; and `set_authorization` leaves exactly one.
    #[test]
    fn bearer_values_are_exact_and_sensitive(
        token in prop_oneof![any::<String>(), "[A-Za-z0-9._~+/=-]{1,64}"],
        original in header_map(6),
    ) {
        let valid = token.bytes().all(|b| (b >= 32 && b != 127) || b == b'\t');
        match bearer(&token) {
            Some(value) => {
                prop_assert!(valid);
                prop_assert!(value.is_sensitive());
                let expected = format!("Bearer {token}");
                prop_assert_eq!(value.as_bytes(), expected.as_bytes());
                prop_assert_eq!(format!("{value:?}"), "Sensitive");
                let mut headers = original.clone();
                set_authorization(&mut headers, value.clone());
                prop_assert_eq!(values(&headers, &header::AUTHORIZATION), vec![value]);
            }
            None => prop_assert!(!valid),
        }
    }
}
