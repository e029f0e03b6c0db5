//! Prometheus metrics: what is counted, and a recording path with no lock in it.
//!
//! Encoding is prometheus-client's. Recording is kept off every lock: each upstream resolves its
//! metric handles once ([`Metrics::upstream`]), and a handle is an `Arc` of atomics, so a request
//! pays a few atomic adds. prometheus-client's own histogram takes a mutex per observation, so
//! durations go to [`AtomicHistogram`], which encodes through the same `EncodeMetric` interface.
//! Labels are upstream names and fixed words: never a path, a token or anything a client chose.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Request durations, seconds: from a fast local hop to a slow API.
const REQUEST_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Token request durations, seconds.
const TOKEN_BUCKETS: [f64; 8] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    upstream: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    upstream: String,
    outcome: &'static str,
}

/// Every metric the sidecar exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    request_duration: Family<UpstreamLabel, AtomicHistogram, fn() -> AtomicHistogram>,
    token_fetches: Family<OutcomeLabels, Counter>,
    token_fetch_duration: Family<UpstreamLabel, AtomicHistogram, fn() -> AtomicHistogram>,
    token_expiry: Family<UpstreamLabel, Gauge<f64, AtomicU64>>,
    replays: Family<OutcomeLabels, Counter>,
    connections: Family<UpstreamLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("nexus_sidecar");
        let requests = Family::default();
        let request_duration: Family<_, _, fn() -> AtomicHistogram> =
            Family::new_with_constructor(|| AtomicHistogram::new(&REQUEST_BUCKETS));
        let token_fetches = Family::default();
        let token_fetch_duration: Family<_, _, fn() -> AtomicHistogram> =
            Family::new_with_constructor(|| AtomicHistogram::new(&TOKEN_BUCKETS));
        let token_expiry = Family::default();
        let replays = Family::default();
        let connections = Family::default();
        registry.register(
            "requests",
            "Requests answered, by upstream and status class (error: the sidecar's own answer)",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            request_duration.clone(),
        );
        registry.register(
            "token_fetches",
            "Token requests, by upstream and outcome",
            token_fetches.clone(),
        );
        registry.register(
            "token_fetch_duration_seconds",
            "Time one token request took",
            token_fetch_duration.clone(),
        );
        registry.register(
            "token_expiry_seconds",
            "Seconds until the current token stops being used (0: no live token)",
            token_expiry.clone(),
        );
        registry.register(
            "replays",
            "Re-authentications after a rejected token, by outcome",
            replays.clone(),
        );
        registry.register(
            "open_connections",
            "Application connections currently open",
            connections.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            token_fetches,
            token_fetch_duration,
            token_expiry,
            replays,
            connections,
        }
    }
}

impl Metrics {
    /// The handles of upstream `name`; call once per upstream, not per request.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let upstream = || name.to_owned();
        let status = |status| {
            self.requests.get_or_create_owned(&StatusLabels {
                upstream: upstream(),
                status,
            })
        };
        let fetch = |outcome| {
            self.token_fetches.get_or_create_owned(&OutcomeLabels {
                upstream: upstream(),
                outcome,
            })
        };
        let replay = |outcome| {
            self.replays.get_or_create_owned(&OutcomeLabels {
                upstream: upstream(),
                outcome,
            })
        };
        let label = UpstreamLabel {
            upstream: upstream(),
        };
        UpstreamMetrics {
            requests: StatusClass::ALL.map(|c| status(c.label())),
            duration: self.request_duration.get_or_create_owned(&label),
            fetches: FetchOutcome::ALL.map(|o| fetch(o.label())),
            fetch_duration: self.token_fetch_duration.get_or_create_owned(&label),
            expiry: self.token_expiry.get_or_create_owned(&label),
            replays: ReplayOutcome::ALL.map(|o| replay(o.label())),
            connections: self.connections.get_or_create_owned(&label),
        }
    }

    /// Drops every series of upstream `name` (a reload removed it), so `/metrics` does not go on
    /// showing its last values as if they were current.
    pub fn forget(&self, name: &str) {
        let upstream = name.to_owned();
        for status in StatusClass::ALL.map(StatusClass::label) {
            self.requests.remove(&StatusLabels {
                upstream: upstream.clone(),
                status,
            });
        }
        for outcome in FetchOutcome::ALL.map(FetchOutcome::label) {
            self.token_fetches.remove(&OutcomeLabels {
                upstream: upstream.clone(),
                outcome,
            });
        }
        for outcome in ReplayOutcome::ALL.map(ReplayOutcome::label) {
            self.replays.remove(&OutcomeLabels {
                upstream: upstream.clone(),
                outcome,
            });
        }
        let label = UpstreamLabel { upstream };
        self.request_duration.remove(&label);
        self.token_fetch_duration.remove(&label);
        self.token_expiry.remove(&label);
        self.connections.remove(&label);
    }

    /// The Prometheus text exposition of everything.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The metric handles of one upstream: `Arc`s of atomics, cheap to clone and to record.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    requests: [Counter; 6],
    duration: AtomicHistogram,
    fetches: [Counter; 6],
    fetch_duration: AtomicHistogram,
    expiry: Gauge<f64, AtomicU64>,
    replays: [Counter; 6],
    connections: Gauge,
}

impl UpstreamMetrics {
    /// A request answered with `status` after `elapsed`; `own` when the sidecar made the answer.
    pub fn request(&self, status: u16, own: bool, elapsed: Duration) {
        self.requests[StatusClass::of(status, own) as usize].inc();
        self.duration.observe(elapsed);
    }

    /// A token request finished.
    pub fn token_fetch(&self, outcome: FetchOutcome, elapsed: Duration) {
        self.fetches[outcome as usize].inc();
        self.fetch_duration.observe(elapsed);
    }

    /// What a rejected token led to.
    pub fn replay(&self, outcome: ReplayOutcome) {
        self.replays[outcome as usize].inc();
    }

    /// Seconds until the live token expires (0 when there is none); set at scrape time.
    pub fn set_token_expiry(&self, seconds: f64) {
        self.expiry.set(seconds);
    }

    /// An application connection opened; the guard counts it closed when dropped.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.connections.clone())
    }
}

/// Counts one open connection for as long as it lives.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `status` label of `requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
    /// The sidecar's own error answer (token unavailable, upstream unreachable, …).
    Sidecar,
}

impl StatusClass {
    const ALL: [StatusClass; 6] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirect,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::Sidecar,
    ];

    fn of(status: u16, own: bool) -> StatusClass {
        match (own, status / 100) {
            (true, _) => StatusClass::Sidecar,
            (false, 1) => StatusClass::Informational,
            (false, 2) => StatusClass::Success,
            (false, 3) => StatusClass::Redirect,
            (false, 4) => StatusClass::ClientError,
            (false, _) => StatusClass::ServerError,
        }
    }

    fn label(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::Sidecar => "error",
        }
    }
}

/// The `outcome` label of `token_fetches_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Success,
    /// The endpoint refused the credentials (4xx, 501).
    Rejected,
    /// The endpoint failed for now (5xx, 429).
    Unavailable,
    /// A success status without a usable token.
    Invalid,
    /// Connect or transport failure.
    Unreachable,
    Timeout,
}

impl FetchOutcome {
    const ALL: [FetchOutcome; 6] = [
        FetchOutcome::Success,
        FetchOutcome::Rejected,
        FetchOutcome::Unavailable,
        FetchOutcome::Invalid,
        FetchOutcome::Unreachable,
        FetchOutcome::Timeout,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            FetchOutcome::Success => "success",
            FetchOutcome::Rejected => "rejected",
            FetchOutcome::Unavailable => "unavailable",
            FetchOutcome::Invalid => "invalid",
            FetchOutcome::Unreachable => "unreachable",
            FetchOutcome::Timeout => "timeout",
        }
    }
}

/// The `outcome` label of `replays_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Replayed with a fresh token and the upstream accepted it.
    Recovered,
    /// Replayed, and the upstream rejected the fresh token too.
    RejectedAgain,
    /// Not replayed: the body was streamed, not buffered.
    NotReplayable,
    /// Not replayed: the token was younger than `min_refresh_interval`.
    TooSoon,
    /// Not replayed: no fresh token could be had.
    TokenUnavailable,
    /// Not replayed: a `static` token has no successor.
    NotRenewable,
}

impl ReplayOutcome {
    const ALL: [ReplayOutcome; 6] = [
        ReplayOutcome::Recovered,
        ReplayOutcome::RejectedAgain,
        ReplayOutcome::NotReplayable,
        ReplayOutcome::TooSoon,
        ReplayOutcome::TokenUnavailable,
        ReplayOutcome::NotRenewable,
    ];

    fn label(self) -> &'static str {
        match self {
            ReplayOutcome::Recovered => "recovered",
            ReplayOutcome::RejectedAgain => "rejected_again",
            ReplayOutcome::NotReplayable => "not_replayable",
            ReplayOutcome::TooSoon => "too_soon",
            ReplayOutcome::TokenUnavailable => "token_unavailable",
            ReplayOutcome::NotRenewable => "not_renewable",
        }
    }
}

/// A histogram of durations made of atomics: `observe` takes no lock.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// Per bucket, non-cumulative; one more than `bounds` for +Inf.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }))
    }

    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self
            .0
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.0.bounds.len());
        self.0.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // prometheus-client makes the buckets cumulative itself: hand it per-bucket counts.
        // A scrape racing with requests may miss the ones in flight, which Prometheus tolerates.
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.0.counts.len());
        for (i, bucket) in self.0.counts.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            count += n;
            let bound = self.0.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        let text = metrics.encode().unwrap();
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
        drop(guard);
        let text = metrics.encode().unwrap();
        assert!(text.contains(r#"nexus_sidecar_open_connections{upstream="nuvy"} 0"#));
        metrics.forget("nuvy");
        assert!(!metrics.encode().unwrap().contains(r#"upstream="nuvy""#));
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(204, false), StatusClass::Success);
        assert_eq!(StatusClass::of(401, false), StatusClass::ClientError);
        assert_eq!(StatusClass::of(502, false), StatusClass::ServerError);
        assert_eq!(StatusClass::of(502, true), StatusClass::Sidecar);
    }
}
