#![allow(clippy::unwrap_used)]

use super::*;

mod limits;
mod problems;
mod shared_cache;

/// `PATH` is set wherever tests run, so `{ env = "PATH" }` resolves without touching the
/// process environment.
const CREDS: &str = r#"client_id = { env = "PATH" }
client_secret = "literal-secret-value""#;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text)
}

fn err(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

#[test]
fn preset_config_is_three_lines_plus_credentials() {
    let c = load(&format!(
        "[[upstream]]\nname = \"nuvy\"\npreset = \"nuvy-nexus\"\nenvironment = \"qa\"\nlisten = \"8081\"\n[upstream.auth]\n{CREDS}\n"
    ))
    .unwrap();
    let u = &c.upstreams[0];
    assert_eq!(u.listen, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(format!("{:?}", u.target), "https://qa.api.nuvy.ai");
    let Flow::ClientCredentials(cc) = &u.auth.flow else {
        panic!("wrong flow")
    };
    assert_eq!(cc.token_url, "https://qa.api.nuvy.ai/nexus/oauth2/token");
    assert_eq!(cc.client.auth, ClientAuth::Basic);
    assert_eq!(u.retry_on, [StatusCode::UNAUTHORIZED]);
    assert_eq!(u.max_replay_body, DEFAULT_MAX_REPLAY_BODY);
    assert_eq!(u.auth.min_refresh_interval, DEFAULT_MIN_REFRESH_INTERVAL);
    // The literal secret is allowed, with a warning that does not repeat it.
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains("client_secret"));
    assert!(!c.warnings[0].contains("literal-secret-value"));
    assert!(!format!("{c:?}").contains("literal-secret-value"));
}

#[test]
fn unknown_keys_name_the_key_the_line_and_the_alternatives() {
    let e = err(
        "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\ntimeout = \"5s\"\n",
    );
    assert!(e.contains("line 5"), "{e}");
    assert!(e.contains("unknown field `timeout`"), "{e}");
    assert!(e.contains("request_timeout"), "{e}");
    let e =
        err("[log]\nlevel = \"info\"\nformt = \"json\"\n[[upstream]]\nname=\"a\"\nlisten=\"1\"\n");
    assert!(e.contains("line 3") && e.contains("formt"), "{e}");
}

#[test]
fn durations_and_sizes_must_carry_units() {
    let base = "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n";
    let e = err(&format!("{base}request_timeout = \"30\"\n"));
    assert!(e.contains("line 5") && e.contains("give a unit"), "{e}");
    let e = err(&format!("{base}max_replay_body = \"1024\"\n"));
    assert!(e.contains("give a unit"), "{e}");
}

#[test]
fn validation_collects_every_problem_with_lines() {
    let text = r#"
[admin]
listen = "9901"

[[upstream]]
name = "Bad Name"
listen = "9901"
target = "ftp://x"
[upstream.auth]
flow = "client_credentials"
token_url = "https://user:pw@idp/token"
client_id = { env = "NEXUS_SIDECAR_TEST_SURELY_UNSET" }
client_secret = { file = "/nonexistent/nexus/secret" }
username = "x"

[[upstream]]
name = "b"
listen = "127.0.0.1:9902"
target = "https://api.example/v1/"
retry_on = [200]
[upstream.auth]
flow = "password"
token_url = "https://idp.example/token"
"#;
    let ConfigError::Invalid(problems) = load(text).unwrap_err() else {
        panic!("expected validation problems")
    };
    let find = |key: &str| {
        problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key}: {problems:#?}"))
    };
    assert_eq!(find("upstream.name").line, 6);
    assert!(find("upstream.Bad Name.listen")
        .message
        .contains("already the listen address of `admin`"));
    assert!(find("upstream.Bad Name.target")
        .message
        .contains("scheme must be https or http"));
    assert!(find("upstream.Bad Name.auth.token_url")
        .message
        .contains("credentials"));
    let unset = find("upstream.Bad Name.auth.client_id");
    assert_eq!(unset.line, 12);
    assert!(unset.message.contains("NEXUS_SIDECAR_TEST_SURELY_UNSET"));
    assert!(find("upstream.Bad Name.auth.client_secret")
        .message
        .contains("/nonexistent/nexus/secret"));
    assert!(find("upstream.Bad Name.auth.username")
        .message
        .contains("does not belong to flow `client_credentials`"));
    assert!(find("upstream.b.retry_on").message.contains("200"));
    assert!(find("upstream.b.auth.username")
        .message
        .contains("needs `username`"));
    assert!(find("upstream.b.auth.password")
        .message
        .contains("needs `password`"));
}

#[test]
fn duplicate_names_and_listen_addresses() {
    let one = |port: u16| {
        format!("[[upstream]]\nname = \"a\"\nlisten = \"{port}\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"none\"\n")
    };
    let e = err(&format!("{}{}", one(1), one(1)));
    assert!(e.contains("duplicate upstream name"), "{e}");
    assert!(e.contains("already the listen address of `a`"), "{e}");
    // Port 0 is "any free port", so it may repeat.
    let zero = |name: &str| {
        format!("[[upstream]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"none\"\n")
    };
    assert_eq!(
        load(&format!("{}{}", zero("a"), zero("b")))
            .unwrap()
            .upstreams
            .len(),
        2
    );
}

#[test]
fn presets_need_their_environment_and_explicit_keys_win() {
    let e = err("[[upstream]]\nname = \"q\"\npreset = \"quantoz\"\nlisten = \"1\"\n[upstream.auth]\nclient_id = \"i\"\nclient_secret = \"s\"\n");
    assert!(
        e.contains("needs `environment`, one of: test, production"),
        "{e}"
    );
    let c = load(&format!(
        "[[upstream]]\nname = \"q\"\npreset = \"quantoz\"\nenvironment = \"production\"\nlisten = \"1\"\n[upstream.auth]\nscope = \"api1 extra\"\n{CREDS}\n"
    ))
    .unwrap();
    let Flow::ClientCredentials(cc) = &c.upstreams[0].auth.flow else {
        panic!("wrong flow")
    };
    assert_eq!(cc.token_url, "https://identity.quantoz.com/connect/token");
    assert_eq!(cc.scope.as_deref(), Some("api1 extra"));
    assert_eq!(cc.client.auth, ClientAuth::Body);
    assert_eq!(
        format!("{:?}", c.upstreams[0].target),
        "https://api.quantoz.com"
    );
}

#[test]
fn nexudus_and_nexushub_presets() {
    let c = load(
        r#"
[[upstream]]
name = "nexudus"
preset = "nexudus"
listen = "1"
target = "https://coworking.spaces.nexudus.com"
[upstream.auth]
username = "u@example.com"
password = "p"
totp_secret = "JBSWY3DPEHPK3PXP"

[[upstream]]
name = "hub"
preset = "nexushub"
listen = "2"
target = "https://api.nexushub.co"
[upstream.auth]
user_key = "k"
user_secret = "s"
token_lifetime = "50m"
"#,
    )
    .unwrap();
    let Flow::Password(p) = &c.upstreams[0].auth.flow else {
        panic!("wrong flow")
    };
    assert_eq!(
        p.token_url,
        "https://coworking.spaces.nexudus.com/api/token"
    );
    assert!(p.totp_secret.is_some());
    let Flow::NexusHub(n) = &c.upstreams[1].auth.flow else {
        panic!("wrong flow")
    };
    assert_eq!(n.authenticate_url, "https://auth.nexushub.co/authenticate");
    assert_eq!(n.refresh_url, "https://auth.nexushub.co/refresh");
    assert_eq!(
        c.upstreams[1].auth.token_lifetime,
        Duration::from_secs(3000)
    );
}

#[test]
fn bad_totp_secret_is_refused() {
    let e = err("[[upstream]]\nname = \"n\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"password\"\ntoken_url = \"https://x/api/token\"\nusername = \"u\"\npassword = \"p\"\ntotp_secret = \"not base32!\"\n");
    assert!(e.contains("base32"), "{e}");
    assert!(
        !e.contains("not base32!"),
        "the seed itself must not be echoed: {e}"
    );
}

#[test]
fn static_headers_are_checked() {
    let base = "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n";
    let e = err(&format!(
        "{base}headers = {{ authorization = \"Bearer x\" }}\n[upstream.auth]\nflow = \"none\"\n"
    ));
    assert!(e.contains("managed by the sidecar"), "{e}");
    let c = load(&format!(
        "{base}headers = {{ request_iso8601 = \"true\" }}\n[upstream.auth]\nflow = \"none\"\n"
    ))
    .unwrap();
    assert_eq!(c.upstreams[0].headers["request_iso8601"], "true");
}

#[test]
fn plain_http_is_allowed_with_a_warning_unless_loopback() {
    let one = |target: &str| {
        format!("[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"{target}\"\n[upstream.auth]\nflow = \"none\"\n")
    };
    assert!(load(&one("http://127.0.0.1:9000"))
        .unwrap()
        .warnings
        .is_empty());
    let c = load(&one("http://api.example")).unwrap();
    assert!(c.warnings[0].contains("plain http"), "{:?}", c.warnings);
}

#[test]
fn an_empty_file_is_refused() {
    assert!(err("").contains("no `[[upstream]]`"));
}

#[test]
fn listen_forms() {
    use validate::parse_listen;
    assert_eq!(
        parse_listen("8081").unwrap(),
        "127.0.0.1:8081".parse().unwrap()
    );
    assert_eq!(
        parse_listen("localhost:8081").unwrap(),
        "127.0.0.1:8081".parse().unwrap()
    );
    assert_eq!(
        parse_listen("0.0.0.0:80").unwrap(),
        "0.0.0.0:80".parse().unwrap()
    );
    assert_eq!(
        parse_listen("[::1]:8081").unwrap(),
        "[::1]:8081".parse().unwrap()
    );
    assert!(parse_listen("nope")
        .unwrap_err()
        .contains("expected a port"));
}

#[test]
fn zero_timeouts_unusable_ca_files_and_unsendable_static_tokens_are_refused() {
    let base = "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n";
    let none = "[upstream.auth]\nflow = \"none\"\n";
    let e = err(&format!("{base}request_timeout = \"0s\"\n{none}"));
    assert!(
        e.contains("request_timeout") && e.contains("greater than zero"),
        "{e}"
    );
    let e = err(&format!("{base}connect_timeout = \"0ms\"\n{none}"));
    assert!(e.contains("connect_timeout"), "{e}");

    let dir = std::env::temp_dir().join(format!("nexus-config-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello, not a certificate\n").unwrap();
    let e = err(&format!(
        "{base}ca_file = {:?}\n{none}",
        not_pem.display().to_string()
    ));
    assert!(
        e.contains("ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = err(&format!("{base}ca_file = \"/nonexistent/ca.pem\"\n{none}"));
    assert!(e.contains("cannot read"), "{e}");

    let e = err(&format!(
        "{base}[upstream.auth]\nflow = \"static\"\ntoken = \"bad\\ntoken\"\n"
    ));
    assert!(e.contains("cannot carry"), "{e}");
    assert!(!e.contains("bad"), "the token itself is not repeated: {e}");
}

#[test]
fn an_endless_or_oversized_ca_file_is_refused_unread() {
    let base = "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n";
    let none = "[upstream.auth]\nflow = \"none\"\n";
    let ca_file = |path: &std::path::Path| {
        load(&format!(
            "{base}ca_file = {:?}\n{none}",
            path.display().to_string()
        ))
    };
    let e = ca_file("/dev/zero".as_ref()).unwrap_err().to_string();
    assert!(e.contains("ca_file") && e.contains("larger than"), "{e}");

    // A real certificate, padded with blank lines (which PEM readers skip) to the bound: read;
    // one byte more: refused.
    let dir = std::env::temp_dir().join(format!("nexus-config-big-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["ca.test".into()])
        .unwrap()
        .cert
        .pem();
    let bound = usize::try_from(crate::client::MAX_CA_FILE).unwrap();
    let padded = |len: usize| format!("{cert}{}", "\n".repeat(len - cert.len()));
    std::fs::write(&path, padded(bound)).unwrap();
    ca_file(&path).unwrap();
    std::fs::write(&path, padded(bound + 1)).unwrap();
    let e = ca_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("ca_file") && e.contains("larger than 4194304 bytes"),
        "{e}"
    );
}

#[test]
fn problems_point_at_the_line_of_the_key() {
    let text = "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\nretry_on = [200]\nheaders = { host = \"h\" }\n[upstream.auth]\nflow = \"client_credentials\"\ntoken_url = \"https://x/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\nscope = \"a\"\nusername = \"u\"\n";
    let ConfigError::Invalid(problems) = load(text).unwrap_err() else {
        panic!("expected validation problems")
    };
    let line = |key: &str| {
        problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key}: {problems:#?}"))
            .line
    };
    assert_eq!(line("upstream.a.retry_on"), 5);
    assert_eq!(line("upstream.a.headers"), 6);
    assert_eq!(line("upstream.a.auth.username"), 13);
}

#[test]
fn static_header_values_stay_out_of_debug_output() {
    let c = load("[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\nheaders = { x-api-key = \"key-S3CRET\" }\n[upstream.auth]\nflow = \"none\"\n").unwrap();
    assert_eq!(c.upstreams[0].headers["x-api-key"], "key-S3CRET");
    assert!(!format!("{c:?}").contains("key-S3CRET"));
}

#[test]
fn prefetch_and_token_wait_default_to_true_and_five_seconds() {
    let c = load(&format!(
        "[[upstream]]\nname = \"nuvy\"\npreset = \"nuvy-nexus\"\nenvironment = \"qa\"\nlisten = \"8081\"\n[upstream.auth]\n{CREDS}\n"
    ))
    .unwrap();
    let auth = &c.upstreams[0].auth;
    assert!(auth.prefetch);
    assert_eq!(auth.token_wait, DEFAULT_TOKEN_WAIT);
    assert_eq!(DEFAULT_TOKEN_WAIT, Duration::from_secs(5));
}

/// One upstream per token-fetching flow, each with `extra` in its `[upstream.auth]`.
fn every_fetching_flow(extra: &str) -> String {
    format!(
        r#"
[[upstream]]
name = "cc"
listen = "1"
target = "https://x"
[upstream.auth]
flow = "client_credentials"
token_url = "https://x/token"
{CREDS}
{extra}

[[upstream]]
name = "pw"
listen = "2"
target = "https://x"
[upstream.auth]
flow = "password"
token_url = "https://x/token"
username = {{ env = "PATH" }}
password = {{ env = "PATH" }}
{extra}

[[upstream]]
name = "hub"
listen = "3"
target = "https://x"
[upstream.auth]
flow = "nexushub"
auth_url = "https://auth.x"
user_key = {{ env = "PATH" }}
user_secret = {{ env = "PATH" }}
{extra}
"#
    )
}

#[test]
fn prefetch_and_token_wait_are_accepted_on_every_fetching_flow() {
    let c = load(&every_fetching_flow(
        "prefetch = false\ntoken_wait = \"250ms\"",
    ))
    .unwrap();
    assert_eq!(c.upstreams.len(), 3);
    for u in &c.upstreams {
        assert!(!u.auth.prefetch, "{}", u.name);
        assert_eq!(u.auth.token_wait, Duration::from_millis(250), "{}", u.name);
    }
    // "0s": a request without a live token fails at once; the maximum is allowed.
    let c = load(&every_fetching_flow("prefetch = true\ntoken_wait = \"0s\"")).unwrap();
    assert!(c.upstreams.iter().all(|u| u.auth.prefetch));
    assert!(c.upstreams.iter().all(|u| u.auth.token_wait.is_zero()));
    let c = load(&every_fetching_flow("token_wait = \"5m\"")).unwrap();
    assert!(c
        .upstreams
        .iter()
        .all(|u| u.auth.token_wait == MAX_TOKEN_WAIT));
}

#[test]
fn prefetch_and_token_wait_are_ignored_without_token_requests() {
    // Like refresh_before and min_refresh_interval: accepted, and meaningless, for static and
    // none.
    let base = "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n";
    for flow in ["flow = \"none\"", "flow = \"static\"\ntoken = \"t\""] {
        let c = load(&format!(
            "{base}[upstream.auth]\n{flow}\nprefetch = false\ntoken_wait = \"1s\"\n"
        ))
        .unwrap();
        assert_eq!(c.upstreams.len(), 1, "{flow}");
    }
}

#[test]
fn invalid_and_over_large_token_waits_name_the_key() {
    let base = "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"client_credentials\"\ntoken_url = \"https://x/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\n";
    // Line 10 in each case.
    let e = err(&format!("{base}token_wait = \"5\"\n"));
    assert!(
        e.contains("line 10") && e.contains("token_wait") && e.contains("give a unit"),
        "{e}"
    );
    let e = err(&format!("{base}token_wait = \"soon\"\n"));
    assert!(
        e.contains("token_wait") && e.contains("invalid duration"),
        "{e}"
    );
    let e = err(&format!("{base}prefetch = \"yes\"\n"));
    assert!(e.contains("line 10") && e.contains("prefetch"), "{e}");

    let ConfigError::Invalid(problems) =
        load(&format!("{base}token_wait = \"5m 1s\"\n")).unwrap_err()
    else {
        panic!("expected validation problems")
    };
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "upstream.a.auth.token_wait");
    assert_eq!(problems[0].line, 10);
    assert!(problems[0].message.contains("at most 5m"), "{problems:#?}");
    let e = err(&format!("{base}token_wait = \"1h\"\n"));
    assert!(
        e.contains("line 10: `upstream.a.auth.token_wait`: must be at most 5m (got 1h)"),
        "{e}"
    );
}
