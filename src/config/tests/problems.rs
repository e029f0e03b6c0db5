//! What is wrong with a file: every problem at once, each at its key's line, said once, with
//! the near miss when there is one.

use super::*;

fn problems(text: &str) -> Vec<Problem> {
    match load(text).unwrap_err() {
        ConfigError::Invalid(problems) => problems,
        other => panic!("expected validation problems: {other}"),
    }
}

/// `line key` for each problem, in the order reported.
fn places(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{} {}", p.line, p.key))
        .collect()
}

#[test]
fn unknown_keys_wrong_types_and_invalid_values_are_reported_together_in_line_order() {
    let text = r#"shutdown_grace = "20"
[log]
formt = "json"

[[upstream]]
name = "nuvy"
preset = "nuvy-nexus"
environment = "qa"
listen = "8081"
retry = [401]
connect_timeout = "0s"
  [upstream.auth]
  client_id = { env = "PATH" }
  client_secret = { env = "PATH" }
  scopes = "x"
  prefetch = "yes"

[[upstream]]
name = "b"
listen = 8082
target = "ftp://x"
  [upstream.auth]
  flow = "client-credentials"
  timout = "5s"
"#;
    let found = problems(text);
    assert_eq!(
        places(&found),
        [
            "1 shutdown_grace",
            "3 log.formt",
            "10 upstream.nuvy.retry",
            "11 upstream.nuvy.connect_timeout",
            "15 upstream.nuvy.auth.scopes",
            "16 upstream.nuvy.auth.prefetch",
            "20 upstream.b.listen",
            "21 upstream.b.target",
            "23 upstream.b.auth.flow",
            "24 upstream.b.auth.timout",
        ],
        "{found:#?}"
    );
    let message = |key: &str| {
        &found
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("{key}"))
            .message
    };
    assert!(message("shutdown_grace").contains("give a unit"));
    assert_eq!(
        message("upstream.nuvy.retry"),
        "unknown field `retry`; did you mean `retry_on`?"
    );
    assert_eq!(
        message("upstream.nuvy.auth.scopes"),
        "unknown field `scopes`; did you mean `scope`?"
    );
    assert_eq!(
        message("upstream.nuvy.auth.prefetch"),
        "invalid type: string \"yes\", expected a boolean"
    );
    assert_eq!(
        message("upstream.b.listen"),
        "invalid type: integer `8082`, expected a string"
    );
    assert_eq!(
        message("upstream.b.auth.flow"),
        "unknown flow \"client-credentials\"; did you mean `client_credentials`?"
    );
    assert_eq!(
        message("upstream.b.auth.timout"),
        "unknown field `timout`; did you mean `timeout`?"
    );
    // The existing format: one line per problem under the heading.
    let e = err(text);
    assert!(
        e.starts_with("invalid configuration:\n  line 1: `shutdown_grace`: "),
        "{e}"
    );
    assert_eq!(e.lines().count(), 11, "{e}");
}

#[test]
fn unknown_keys_are_reported_at_their_own_line_however_they_are_written() {
    let text = r#"[[upstream]]
name = "a"
listen = "1"
target = "https://x"
auth.flow = "none"
auth.flwo = "none"

[[upstream]]
name = "b"
listen = "2"
target = "https://x"
auth = { flow = "none", prefech = false }

[upstream_defaults]
listen = "3"
"#;
    let found = problems(text);
    assert_eq!(
        places(&found),
        [
            "6 upstream.a.auth.flwo",
            "12 upstream.b.auth.prefech",
            "14 upstream_defaults"
        ],
        "{found:#?}"
    );
    assert!(found[0].message.contains("did you mean `flow`?"));
    assert!(found[1].message.contains("did you mean `prefetch`?"));
    // Nothing inside an unknown table is reported on top of it.
    assert_eq!(found.len(), 3);
}

#[test]
fn a_key_in_the_wrong_table_is_pointed_to_the_right_one() {
    let e = err("level = \"debug\"\n[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"none\"\nrequest_timeout = \"5s\"\n");
    assert!(
        e.contains("line 1: `level`: unknown field `level` in the top level: it belongs in [log]"),
        "{e}"
    );
    assert!(
        e.contains("line 8: `upstream.a.auth.request_timeout`: unknown field `request_timeout` in [upstream.auth]: it belongs in [[upstream]]"),
        "{e}"
    );
}

#[test]
fn misspelt_keys_and_presets_suggest_the_right_name_without_follow_on_errors() {
    let found = problems(
        "[[upstream]]\nname = \"q\"\npreset = \"quantos\"\nenvironment = \"test\"\nlisten = \"1\"\n[upstream.auth]\nclient_id = \"i\"\nclient_secret = \"s\"\n",
    );
    assert_eq!(places(&found), ["3 upstream.q.preset"], "{found:#?}");
    assert_eq!(
        found[0].message,
        "unknown preset \"quantos\"; did you mean `quantoz`?"
    );
    let e = err("[[upstream]]\nname = \"q\"\npreset = \"azure\"\nlisten = \"1\"\n");
    assert!(
        e.contains("unknown preset \"azure\"; expected one of: nuvy-nexus, nuvy, quantoz, nexudus, nexushub"),
        "{e}"
    );

    // `client_secert` is the `client_secret` the flow needs: one problem, not two.
    let found = problems(
        "[[upstream]]\nname = \"q\"\npreset = \"quantoz\"\nenvironment = \"test\"\nlisten = \"1\"\n[upstream.auth]\nclient_id = \"i\"\nclient_secert = \"s\"\n",
    );
    assert_eq!(
        places(&found),
        ["8 upstream.q.auth.client_secert"],
        "{found:#?}"
    );
    assert_eq!(
        found[0].message,
        "unknown field `client_secert`; did you mean `client_secret`?"
    );
    // Likewise `[[upstreams]]` is not also "no upstream configured".
    let found = problems("[[upstreams]]\nname = \"a\"\n");
    assert_eq!(places(&found), ["1 upstreams"], "{found:#?}");
    assert!(found[0].message.contains("did you mean `upstream`?"));
}

#[test]
fn a_wrong_environment_is_one_problem_at_its_line() {
    let creds =
        "[upstream.auth]\nclient_id = { env = \"PATH\" }\nclient_secret = { env = \"PATH\" }\n";
    for (environment, expected) in [
        ("qa", "expected one of: test, production"),
        ("prod", "did you mean `production`?"),
        ("tset", "did you mean `test`?"),
    ] {
        let found = problems(&format!(
            "[[upstream]]\nname = \"q\"\npreset = \"quantoz\"\nlisten = \"1\"\nenvironment = \"{environment}\"\n{creds}"
        ));
        assert_eq!(places(&found), ["5 upstream.q.environment"], "{found:#?}");
        assert!(found[0].message.contains(expected), "{found:#?}");
    }
    // Missing: at the preset that needs it.
    let found = problems(&format!(
        "[[upstream]]\nname = \"n\"\nlisten = \"1\"\npreset = \"nuvy\"\n{creds}"
    ));
    assert_eq!(places(&found), ["4 upstream.n.environment"], "{found:#?}");
    assert!(found[0]
        .message
        .contains("needs `environment`, one of: qa, production"));
    // Not wanted.
    let found = problems(
        "[[upstream]]\nname = \"h\"\npreset = \"nexushub\"\nenvironment = \"qa\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nuser_key = \"k\"\nuser_secret = \"s\"\n",
    );
    assert_eq!(places(&found), ["4 upstream.h.environment"], "{found:#?}");
    // The credentials are still checked against the preset's flow meanwhile.
    let found = problems(
        "[[upstream]]\nname = \"q\"\npreset = \"quantoz\"\nenvironment = \"staging\"\nlisten = \"1\"\n[upstream.auth]\nclient_id = { env = \"NEXUS_SIDECAR_TEST_SURELY_UNSET\" }\n",
    );
    assert_eq!(
        places(&found),
        [
            "4 upstream.q.environment",
            "6 upstream.q.auth.client_secret",
            "7 upstream.q.auth.client_id"
        ],
        "{found:#?}"
    );
    // Nexudus without a target: one problem, not also a missing token URL.
    let found = problems(
        "[[upstream]]\nname = \"x\"\npreset = \"nexudus\"\nlisten = \"1\"\n[upstream.auth]\nusername = \"u\"\npassword = \"p\"\n",
    );
    assert_eq!(places(&found), ["3 upstream.x.target"], "{found:#?}");
}

#[test]
fn values_of_the_wrong_type_never_quote_secrets_or_header_values() {
    let text = "[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\nheaders = { x-api-key = 73519246 }\n[upstream.auth]\nflow = \"static\"\ntoken = 84620913\n";
    let found = problems(text);
    assert_eq!(
        places(&found),
        ["5 upstream.a.headers", "8 upstream.a.auth.token"],
        "{found:#?}"
    );
    let e = err(text);
    assert!(!e.contains("73519246") && !e.contains("84620913"), "{e}");
    assert!(
        e.contains(r#"expected { env = "VAR" }, { file = "/path" } or a string"#),
        "{e}"
    );
    // A secret table's own mistakes are still named.
    let e = err("[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"static\"\ntoken = { path = \"/x\" }\n");
    assert!(
        e.contains("line 7") && e.contains("unknown field `path`"),
        "{e}"
    );
}

#[test]
fn structure_and_syntax_errors() {
    // A lone `[upstream]`: said how to write it, and its keys are still checked.
    let found = problems("[upstream]\nname = \"a\"\nlistn = \"1\"\n");
    assert_eq!(
        places(&found),
        ["1 upstream", "3 upstream.a.listn"],
        "{found:#?}"
    );
    assert!(found[0]
        .message
        .contains("`[[upstream]]`, with double brackets"));
    // Missing required keys are problems like any other.
    let found = problems(
        "[admin]\n[[upstream]]\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"none\"\n",
    );
    assert_eq!(
        places(&found),
        [
            "1 admin.listen",
            "2 upstream.#1.name",
            "2 upstream.#1.listen"
        ],
        "{found:#?}"
    );
    // Text that is not TOML stops at the first error, with toml's own context.
    match load("[[upstream]]\nname = \"a\nlisten = \"1\"\n").unwrap_err() {
        ConfigError::Parse(e) => assert!(e.to_string().contains("line 2"), "{e}"),
        other => panic!("expected a syntax error: {other}"),
    }
    // A datetime is a value of the wrong type, not a crash of the key check.
    let found = problems("shutdown_grace = 1979-05-27\n[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"none\"\n");
    assert_eq!(places(&found), ["1 shutdown_grace"], "{found:#?}");
}
