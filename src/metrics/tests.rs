#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use super::*;

fn encode(metrics: &Metrics) -> [String; 2] {
    [Format::Prometheus, Format::OpenMetrics].map(|f| metrics.encode(f).unwrap())
}

#[test]
fn records_and_encodes_with_conventional_names() {
    let metrics = Metrics::default();
    let nuvy = metrics.upstream("nuvy");
    nuvy.request(200, false, Duration::from_millis(3));
    nuvy.request(503, true, Duration::from_millis(30));
    nuvy.token_fetch(FetchOutcome::Success, Duration::from_millis(20));
    nuvy.replay(ReplayOutcome::Recovered);
    nuvy.set_token_expiry(120.0);
    let guard = nuvy.connection();
    for text in encode(&metrics) {
        for line in [
            r#"nexus_sidecar_requests_total{upstream="nuvy",status="2xx"} 1"#,
            r#"nexus_sidecar_requests_total{upstream="nuvy",status="error"} 1"#,
            r#"nexus_sidecar_requests_total{upstream="nuvy",status="4xx"} 0"#,
            r#"nexus_sidecar_request_duration_seconds_count{upstream="nuvy"} 2"#,
            r#"nexus_sidecar_request_duration_seconds_bucket{le="0.005",upstream="nuvy"} 1"#,
            r#"nexus_sidecar_request_duration_seconds_bucket{le="+Inf",upstream="nuvy"} 2"#,
            r#"nexus_sidecar_request_duration_seconds_sum{upstream="nuvy"} 0.033"#,
            r#"nexus_sidecar_token_fetches_total{upstream="nuvy",outcome="success"} 1"#,
            r#"nexus_sidecar_token_fetch_duration_seconds_count{upstream="nuvy"} 1"#,
            r#"nexus_sidecar_token_expiry_seconds{upstream="nuvy"} 120.0"#,
            r#"nexus_sidecar_replays_total{upstream="nuvy",outcome="recovered"} 1"#,
            r#"nexus_sidecar_open_connections{upstream="nuvy"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }
    drop(guard);
    let text = metrics.encode(Format::Prometheus).unwrap();
    assert!(text.contains(r#"nexus_sidecar_open_connections{upstream="nuvy"} 0"#));
    metrics.forget("nuvy");
    for text in encode(&metrics) {
        assert!(!text.contains(r#"upstream="nuvy""#), "{text}");
    }
}

#[test]
fn limit_hits_are_counted_by_limit() {
    let metrics = Metrics::default();
    metrics.limit_hit(Limit::MaxConnections);
    metrics.limit_hit(Limit::MaxConnections);
    metrics.limit_hit(Limit::BodyReadTimeout);
    let [text, openmetrics] = encode(&metrics);
    assert!(text.contains("# TYPE nexus_sidecar_limit_hits_total counter\n"));
    assert!(openmetrics.contains("# TYPE nexus_sidecar_limit_hits counter\n"));
    for text in [text, openmetrics] {
        for (limit, n) in [
            ("max_connections", 2),
            ("header_read_timeout", 0),
            ("idle_timeout", 0),
            ("body_read_timeout", 1),
            ("max_buffered", 0),
        ] {
            let line = format!("nexus_sidecar_limit_hits_total{{limit=\"{limit}\"}} {n}\n");
            assert!(text.contains(&line), "missing {line}{text}");
        }
    }
}

#[test]
fn build_info_carries_the_version() {
    let [text, openmetrics] = encode(&Metrics::default());
    let line = format!(
        "nexus_sidecar_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    for text in [&text, &openmetrics] {
        assert!(text.contains(&line), "missing {line}{text}");
        assert!(text.contains("# TYPE nexus_sidecar_build_info gauge\n"));
    }
}

/// The sample lines (`series value`) of an exposition, and its metadata lines.
fn split(text: &str) -> (BTreeSet<&str>, Vec<&str>) {
    let (comments, samples): (Vec<&str>, Vec<&str>) =
        text.lines().partition(|l| l.starts_with('#'));
    (samples.into_iter().collect(), comments)
}

#[test]
fn both_formats_hold_the_same_samples() {
    let metrics = Metrics::default();
    let api = metrics.upstream("api");
    api.request(200, false, Duration::from_millis(3));
    api.token_fetch(FetchOutcome::Timeout, Duration::from_secs(6));
    metrics.limit_hit(Limit::IdleTimeout);
    let [text, openmetrics] = encode(&metrics);
    assert!(text.ends_with('\n') && !text.contains("# EOF") && !text.contains("# UNIT"));
    assert!(openmetrics.ends_with("\n# EOF\n"));
    assert!(openmetrics.contains(
        "# UNIT nexus_sidecar_request_duration_seconds seconds\n\
         nexus_sidecar_request_duration_seconds_sum"
    ));
    let (samples, comments) = split(&text);
    let (om_samples, om_comments) = split(&openmetrics);
    // process_* values move between the two scrapes: compare those by series.
    let series = |s: &BTreeSet<&str>| -> BTreeSet<String> {
        s.iter()
            .map(|l| match l.strip_prefix("process_") {
                Some(_) => l.split(' ').next().unwrap_or_default().to_owned(),
                None => (*l).to_owned(),
            })
            .collect()
    };
    assert_eq!(series(&samples), series(&om_samples));
    // 0.0.4 names a counter family after its samples; OpenMetrics without `_total`.
    for (comment, om_comment) in comments
        .iter()
        .zip(om_comments.iter().filter(|c| !c.starts_with("# UNIT ")))
    {
        if om_comment.ends_with(" counter") {
            let family = om_comment.split(' ').nth(2).unwrap();
            assert_eq!(*comment, format!("# TYPE {family}_total counter"));
        } else if let Some(om_rest) = om_comment.strip_prefix("# HELP ") {
            let rest = comment.strip_prefix("# HELP ").unwrap();
            let (name, help) = rest.split_once(' ').unwrap();
            let (om_name, om_help) = om_rest.split_once(' ').unwrap();
            assert_eq!(help, om_help);
            assert!(name == om_name || name == format!("{om_name}_total"));
            assert!(!help.contains(['\\', '"']), "{help}");
        } else if *om_comment != "# EOF" {
            assert_eq!(comment, om_comment);
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn process_metrics_are_read_from_proc() {
    let text = Metrics::default().encode(Format::Prometheus).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_resident_memory_bytes") > 1e5);
    assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
    let (open, max) = (value("process_open_fds"), value("process_max_fds"));
    assert!(open >= 3.0 && open <= max, "{open} of {max}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value("process_start_time_seconds");
    assert!(
        start <= now + 1.0 && start > now - 86_400.0,
        "{start} vs {now}"
    );
}

#[test]
fn status_classes() {
    assert_eq!(StatusClass::of(204, false), StatusClass::Success);
    assert_eq!(StatusClass::of(401, false), StatusClass::ClientError);
    assert_eq!(StatusClass::of(502, false), StatusClass::ServerError);
    assert_eq!(StatusClass::of(502, true), StatusClass::Sidecar);
}
