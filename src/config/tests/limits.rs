//! `[limits]`, and which upstream listeners may face the network (`allow_remote`).

use super::*;

/// One `flow = "none"` upstream listening on `listen`, with `extra` lines in `[[upstream]]`.
fn upstream(listen: &str, extra: &str) -> String {
    format!("[[upstream]]\nname = \"a\"\nlisten = \"{listen}\"\ntarget = \"https://x\"\n{extra}\n[upstream.auth]\nflow = \"none\"\n")
}

fn problems(text: &str) -> Vec<Problem> {
    match load(text).unwrap_err() {
        ConfigError::Invalid(problems) => problems,
        other => panic!("expected validation problems: {other}"),
    }
}

#[test]
fn limits_default_to_the_named_constants() {
    let c = load(&upstream("1", "")).unwrap();
    assert_eq!(c.limits, Limits::default());
    assert_eq!(
        Limits::default(),
        Limits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_buffered: 64 * 1024 * 1024,
        }
    );
    assert_eq!(DEFAULT_MAX_CONNECTIONS, 4096);
    assert_eq!(DEFAULT_HEADER_READ_TIMEOUT, Duration::from_secs(10));
    assert_eq!(DEFAULT_IDLE_TIMEOUT, Duration::from_secs(60));
    assert_eq!(DEFAULT_BODY_READ_TIMEOUT, Duration::from_secs(30));
    assert_eq!(DEFAULT_MAX_BUFFERED, 64 * 1024 * 1024);
}

#[test]
fn limits_are_read_and_unset_ones_keep_their_defaults() {
    let c = load(&format!(
        "[limits]\nmax_connections = 10\nheader_read_timeout = \"2s\"\nmax_buffered = \"8MiB\"\n{}",
        upstream("1", "")
    ))
    .unwrap();
    assert_eq!(
        c.limits,
        Limits {
            max_connections: 10,
            header_read_timeout: Duration::from_secs(2),
            max_buffered: 8 * 1024 * 1024,
            ..Limits::default()
        }
    );
    let c = load(&format!(
        "[limits]\nidle_timeout = \"250ms\"\nbody_read_timeout = \"1m\"\n{}",
        upstream("1", "")
    ))
    .unwrap();
    assert_eq!(c.limits.idle_timeout, Duration::from_millis(250));
    assert_eq!(c.limits.body_read_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.max_connections, DEFAULT_MAX_CONNECTIONS);
}

#[test]
fn bad_limits_are_each_reported_at_their_line() {
    let text = format!(
        "[limits]\nmax_connections = 0\nheader_read_timeout = \"0s\"\nidle_timeout = \"60\"\nbody_read_timeout = \"0ms\"\nmax_buffered = \"lots\"\nmax_conections = 5\n{}",
        upstream("1", "")
    );
    let found: Vec<String> = problems(&text)
        .iter()
        .map(|p| format!("{} {}", p.line, p.key))
        .collect();
    assert_eq!(
        found,
        [
            "2 limits.max_connections",
            "3 limits.header_read_timeout",
            "4 limits.idle_timeout",
            "5 limits.body_read_timeout",
            "6 limits.max_buffered",
            "7 limits.max_conections",
        ]
    );
    let e = err(&text);
    assert!(e.contains("must be at least 1 (got 0)"), "{e}");
    assert!(
        e.contains("line 3: `limits.header_read_timeout`: must be greater than zero"),
        "{e}"
    );
    assert!(
        e.contains("line 4: `limits.idle_timeout`: invalid duration `60`: give a unit"),
        "{e}"
    );
    assert!(
        e.contains("line 6: `limits.max_buffered`: invalid size `lots`"),
        "{e}"
    );
    assert!(e.contains("did you mean `max_connections`?"), "{e}");
    let e = err(&format!(
        "[limits]\nmax_connections = -1\n{}",
        upstream("1", "")
    ));
    assert!(
        e.contains("line 2: `limits.max_connections`: must be at least 1 (got -1)"),
        "{e}"
    );
    let e = err(&format!(
        "[limits]\nmax_connections = \"many\"\n{}",
        upstream("1", "")
    ));
    assert!(
        e.contains("line 2: `limits.max_connections`: invalid type"),
        "{e}"
    );
}

#[test]
fn an_upstream_listening_beyond_loopback_is_refused_at_its_listen_line() {
    for listen in [
        "0.0.0.0:8081",
        "[::]:8081",
        "192.168.1.20:8081",
        "[2001:db8::1]:8081",
        "[::ffff:10.0.0.1]:8081",
    ] {
        let found = problems(&upstream(listen, ""));
        assert_eq!(found.len(), 1, "{listen}: {found:#?}");
        let p = &found[0];
        assert_eq!(
            (p.line, p.key.as_str()),
            (3, "upstream.a.listen"),
            "{listen}"
        );
        for needle in [
            "not a loopback address",
            "anyone who can reach this port",
            "credentials",
            "allow_remote = true",
            "\"8081\" or \"127.0.0.1:8081\"",
        ] {
            assert!(
                p.message.contains(needle),
                "{listen}: {needle}: {}",
                p.message
            );
        }
    }
}

#[test]
fn loopback_listeners_need_nothing() {
    for listen in [
        "8081",
        "localhost:8081",
        "127.0.0.1:8081",
        "127.10.20.30:8081",
        "[::1]:8081",
        "[::ffff:127.0.0.1]:8081",
        "127.0.0.1:0",
    ] {
        let c = load(&upstream(listen, "")).unwrap_or_else(|e| panic!("{listen}: {e}"));
        assert!(!c.upstreams[0].allow_remote);
        assert!(c.warnings.is_empty(), "{listen}: {:?}", c.warnings);
    }
}

#[test]
fn allow_remote_opens_an_upstream_listener_with_a_warning() {
    let c = load(&upstream("0.0.0.0:8081", "allow_remote = true")).unwrap();
    let u = &c.upstreams[0];
    assert!(u.allow_remote);
    assert_eq!(u.listen, "0.0.0.0:8081".parse().unwrap());
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("upstream.a.listen") && c.warnings[0].contains("credentials"),
        "{:?}",
        c.warnings
    );
    // Written but false is the default: refused.
    assert_eq!(
        problems(&upstream("[::]:1", "allow_remote = false")).len(),
        1
    );
    // Not a boolean: that one problem, not also the refusal it might have lifted.
    let found = problems(&upstream("0.0.0.0:1", "allow_remote = \"yes\""));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "upstream.a.allow_remote");
    assert_eq!(found[0].line, 5);
}

#[test]
fn the_admin_listener_may_face_the_network() {
    let c = load(&format!(
        "[admin]\nlisten = \"0.0.0.0:9901\"\n{}",
        upstream("1", "")
    ))
    .unwrap();
    assert_eq!(c.admin.unwrap().listen, "0.0.0.0:9901".parse().unwrap());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}
