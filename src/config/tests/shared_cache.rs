//! `[shared_cache]` and each upstream's `shared`: defaults, every refusal at its line, and a
//! Redis URL that no problem ever repeats.

use super::*;

/// A literal URL whose password and host must never show up in a problem or a warning.
const URL: &str = "redis://:hunter2@cache.internal:6379";

/// One `flow = "none"` upstream, after `before` (top-level tables), with `auth` lines in its
/// `[upstream.auth]`.
fn file(before: &str, auth: &str) -> String {
    format!("{before}\n[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"none\"\n{auth}\n")
}

/// A `[shared_cache]` with `url` (a TOML value) and `rest` lines.
fn cache(url: &str, rest: &str) -> String {
    file(&format!("[shared_cache]\nurl = {url}\n{rest}"), "")
}

fn problems(text: &str) -> Vec<Problem> {
    match load(text).unwrap_err() {
        ConfigError::Invalid(problems) => problems,
        other => panic!("expected validation problems: {other}"),
    }
}

fn assert_hidden(text: &str) {
    for part in ["hunter2", "cache.internal", "6379"] {
        assert!(!text.contains(part), "{part} leaked: {text}");
    }
}

#[test]
fn the_defaults_are_the_named_constants() {
    assert_eq!(DEFAULT_SHARED_CACHE_PREFIX, "nexus-sidecar");
    assert_eq!(DEFAULT_SHARED_CACHE_TIMEOUT, Duration::from_millis(500));
    assert_eq!(MIN_SHARED_CACHE_TIMEOUT, Duration::from_millis(10));
    assert_eq!(MAX_SHARED_CACHE_TIMEOUT, Duration::from_secs(10));
    let c = load(&cache(&format!("{URL:?}"), "")).unwrap();
    let s = c.shared_cache.as_ref().unwrap();
    assert_eq!(s.url.value.expose(), URL);
    assert_eq!(s.key_prefix, DEFAULT_SHARED_CACHE_PREFIX);
    assert_eq!(s.timeout, DEFAULT_SHARED_CACHE_TIMEOUT);
    assert!(c.upstreams[0].auth.shared, "shared by default");
    // Without the table there is no shared cache, and `shared` still defaults to true.
    let c = load(&file("", "")).unwrap();
    assert!(c.shared_cache.is_none());
    assert!(c.upstreams[0].auth.shared);
}

#[test]
fn a_literal_url_is_accepted_with_a_warning_that_does_not_repeat_it() {
    let c = load(&cache(&format!("{URL:?}"), "")).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("`shared_cache.url`"),
        "{:?}",
        c.warnings
    );
    assert_hidden(&c.warnings[0]);
    assert_hidden(&format!("{c:?}"));
}

#[test]
fn every_setting_is_read() {
    let c = load(&cache(
        r#""rediss://user:p%40ss@cache.internal:6380/2""#,
        "key_prefix = \"team-a:prod.v1_x\"\ntimeout = \"10ms\"",
    ))
    .unwrap();
    let s = c.shared_cache.unwrap();
    assert_eq!(s.key_prefix, "team-a:prod.v1_x");
    assert_eq!(s.timeout, MIN_SHARED_CACHE_TIMEOUT);
    let c = load(&cache(r#""redis://h""#, "timeout = \"10s\"")).unwrap();
    assert_eq!(c.shared_cache.unwrap().timeout, MAX_SHARED_CACHE_TIMEOUT);
}

#[test]
fn a_url_from_a_file_is_watched_like_other_file_secrets() {
    let dir = std::env::temp_dir().join(format!("nexus-shared-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("redis-url");
    std::fs::write(&path, format!("{URL}\n")).unwrap();
    let c = load(&cache(
        &format!("{{ file = {:?} }}", path.display().to_string()),
        "",
    ))
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.shared_cache.as_ref().unwrap().url.value.expose(), URL);
    let files: Vec<_> = c.file_secrets().iter().map(|s| s.source.file()).collect();
    assert_eq!(files, [Some(path.as_path())]);
}

#[test]
fn redis_urls_the_client_reads_are_accepted() {
    for url in [
        "redis://localhost",
        "redis://h:",
        "REDIS://h/",
        "rediss://:pw@cache.internal:6380/15",
        "redis://user:p@ss:w@rd@h:6379/0",
        "redis://[::1]:6379",
        "redis://[::1]",
        "rediss://h?protocol=resp3",
        "redis://***",
    ] {
        load(&cache(&format!("{url:?}"), "")).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[test]
fn a_bad_url_is_refused_at_its_line_naming_nothing_but_its_scheme() {
    for (url, expected) in [
        (
            "http://:hunter2@cache.internal:6379",
            "`url` must start with redis:// or rediss://; got a `http` URL",
        ),
        ("HTTPS://cache.internal:6379", "got a `https` URL"),
        (
            "unix:///run/hunter2/cache.internal.6379.sock",
            "Redis over a unix socket (`unix://`) is not supported",
        ),
        ("redis+unix:///cache.internal/6379", "unix socket"),
        ("redis://", "the URL has no host"),
        ("redis://:hunter2@", "the URL has no host"),
        ("redis://:hunter2@:6379/0", "the URL has no host"),
        ("cache.internal:6379", "not a URL;"),
        (":hunter2@cache.internal:6379", "not a URL;"),
        ("hunter2cache.internal6379://x", "not a URL;"),
        ("redis//:hunter2@cache.internal:6379", "not a URL;"),
        ("redis://:hunter 2@cache.internal:6379", "whitespace"),
        (
            "redis://:hunter2@cache.internal:65536",
            "the port is not a number",
        ),
        (
            "redis://:hunter2@cache.internal:0",
            "the port is not a number",
        ),
        (
            "redis://:hunter2@cache.internal:+6379",
            "the port is not a number",
        ),
        (
            "redis://:hunter2@cache.internal:6379:1",
            "the port is not a number",
        ),
        (
            "redis://:hunter2@cache.internal:6379/db6379",
            "database number",
        ),
        ("redis://:hunter2@[::1:6379", "no closing `]`"),
        ("redis://:hunter2@[cache.internal]:6379", "not a valid IPv6"),
        ("redis://:hunter2@[::1]6379", "not a URL;"),
    ] {
        let text = cache(&format!("{url:?}"), "");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{url}: {found:#?}");
        let p = &found[0];
        assert_eq!((p.line, p.key.as_str()), (2, "shared_cache.url"), "{url}");
        assert!(p.message.contains(expected), "{url}: {}", p.message);
        assert_hidden(&err(&text));
    }
}

#[test]
fn a_url_that_is_not_a_string_or_cannot_be_read_is_refused_at_its_line() {
    let e = err(&cache("6379", ""));
    assert!(
        e.contains("line 2: `shared_cache.url`: expected { env = \"VAR\" }"),
        "{e}"
    );
    let e = err(&cache(r#"{ env = "NEXUS_SIDECAR_TEST_SURELY_UNSET" }"#, ""));
    assert!(
        e.contains("line 2: `shared_cache.url`: environment variable `NEXUS_SIDECAR_TEST_SURELY_UNSET` is not set"),
        "{e}"
    );
}

#[test]
fn a_table_without_a_url_is_refused_at_its_header() {
    let found = problems(&file("[shared_cache]\nkey_prefix = \"x\"", ""));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        (found[0].line, found[0].key.as_str()),
        (1, "shared_cache.url")
    );
    assert!(
        found[0].message.starts_with("missing: the Redis URL"),
        "{found:#?}"
    );
    // A misspelt `url` is that one problem, not also a missing one.
    let found = problems(&file(&format!("[shared_cache]\nuri = {URL:?}"), ""));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].message, "unknown field `uri`; did you mean `url`?");
    assert_hidden(&err(&file(&format!("[shared_cache]\nuri = {URL:?}"), "")));
}

#[test]
fn a_url_written_where_the_table_belongs_is_refused_without_quoting_it() {
    let text = file(&format!("shared_cache = {URL:?}"), "");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!((found[0].line, found[0].key.as_str()), (1, "shared_cache"));
    assert!(
        found[0].message.contains("under `[shared_cache]`"),
        "{found:#?}"
    );
    assert_hidden(&err(&text));
}

#[test]
fn bad_key_prefixes_are_refused() {
    let long = "p".repeat(MAX_SHARED_CACHE_PREFIX_LEN + 1);
    for prefix in ["", "team a", "team/a", "ключ", "a\tb", long.as_str()] {
        let found = problems(&cache(
            r#""redis://h""#,
            &format!("key_prefix = {prefix:?}"),
        ));
        assert_eq!(found.len(), 1, "{prefix:?}: {found:#?}");
        let p = &found[0];
        assert_eq!((p.line, p.key.as_str()), (3, "shared_cache.key_prefix"));
        assert!(
            p.message.contains("1 to 64 letters, digits"),
            "{}",
            p.message
        );
    }
    let longest = "p".repeat(MAX_SHARED_CACHE_PREFIX_LEN);
    let c = load(&cache(
        r#""redis://h""#,
        &format!("key_prefix = {longest:?}"),
    ))
    .unwrap();
    assert_eq!(c.shared_cache.unwrap().key_prefix, longest);
}

#[test]
fn a_timeout_outside_its_range_is_refused() {
    for timeout in ["0s", "9ms", "10001ms", "1m"] {
        let found = problems(&cache(r#""redis://h""#, &format!("timeout = {timeout:?}")));
        assert_eq!(found.len(), 1, "{timeout}: {found:#?}");
        let p = &found[0];
        assert_eq!((p.line, p.key.as_str()), (3, "shared_cache.timeout"));
        assert!(
            p.message.starts_with("must be from 10ms to 10s"),
            "{}",
            p.message
        );
    }
    let e = err(&cache(r#""redis://h""#, "timeout = \"500\""));
    assert!(
        e.contains("line 3: `shared_cache.timeout`: invalid duration"),
        "{e}"
    );
}

#[test]
fn every_problem_of_the_table_is_reported_at_once() {
    let text = cache(
        "\"http://:hunter2@cache.internal\"",
        "key_prefix = \"a b\"\ntimeout = \"1h\"\nprefix = \"x\"",
    );
    let found = problems(&text);
    let found: Vec<(usize, &str)> = found.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        found,
        [
            (2, "shared_cache.url"),
            (3, "shared_cache.key_prefix"),
            (4, "shared_cache.timeout"),
            (5, "shared_cache.prefix"),
        ]
    );
    assert_hidden(&err(&text));
}

#[test]
fn misspelt_keys_and_tables_get_the_name_meant() {
    let e = err(&cache(r#""redis://h""#, "prefix = \"x\""));
    assert!(
        e.contains(
            "line 3: `shared_cache.prefix`: unknown field `prefix`; did you mean `key_prefix`?"
        ),
        "{e}"
    );
    let e = err(&file("[sharedcache]\nurl = \"redis://h\"", ""));
    assert!(
        e.contains(
            "line 1: `sharedcache`: unknown field `sharedcache`; did you mean `shared_cache`?"
        ),
        "{e}"
    );
    let e = err(&file("", "sahred = false"));
    assert!(e.contains("did you mean `shared`?"), "{e}");
    // A key of the table written in another names the table it belongs in.
    let e = err(&file("", "key_prefix = \"x\""));
    assert!(e.contains("it belongs in [shared_cache]"), "{e}");
}

#[test]
fn shared_is_read_per_upstream_whatever_the_flow() {
    let c = load(&file(
        &format!("[shared_cache]\nurl = {URL:?}"),
        "shared = false",
    ))
    .unwrap();
    assert!(!c.upstreams[0].auth.shared);
    // Meaningless without a shared cache, or for a flow that fetches no token: still accepted.
    let c = load(&file("", "shared = false")).unwrap();
    assert!(!c.upstreams[0].auth.shared);
    let c = load(
        "[[upstream]]\nname = \"s\"\nlisten = \"1\"\ntarget = \"https://x\"\n[upstream.auth]\nflow = \"static\"\ntoken = { env = \"PATH\" }\nshared = false\n",
    )
    .unwrap();
    assert!(!c.upstreams[0].auth.shared);
    let found = problems(&file("", "shared = \"no\""));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        (found[0].line, found[0].key.as_str()),
        (8, "upstream.a.auth.shared")
    );
}
