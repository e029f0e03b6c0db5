//! Prometheus metrics: what is counted, and a recording path with no lock in it.
//!
//! Encoding is prometheus-client's (OpenMetrics); the `exposition` module derives Prometheus
//! text format 0.0.4 from it. Recording is kept off every lock: each upstream resolves its
//! metric handles once ([`Metrics::upstream`]), the limit counters are resolved at start, and a
//! handle is an `Arc` of atomics, so a request pays a few atomic adds. prometheus-client's own
//! histogram takes a mutex per observation, so durations go to [`AtomicHistogram`]. Labels are
//! upstream names and fixed words: never a path, a token or anything a client chose. The
//! `process_*` metrics are read from `/proc` at scrape time (`process`, Linux only).

mod exposition;
mod histogram;
#[cfg(target_os = "linux")]
mod process;
mod shared;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

pub use exposition::Format;
pub use histogram::AtomicHistogram;
pub use shared::{SharedCacheMetrics, SharedEvent};

use exposition::Text004;
use histogram::MAX_BUCKETS;

/// Request durations, seconds: from a fast local hop to a slow API.
const REQUEST_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Token request durations, seconds.
const TOKEN_BUCKETS: [f64; 8] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
const _: () = assert!(REQUEST_BUCKETS.len() < MAX_BUCKETS && TOKEN_BUCKETS.len() < MAX_BUCKETS);

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    upstream: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

/// Every metric the sidecar exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    /// `nexus_sidecar_*`.
    registry: Registry,
    /// `process_*`, unprefixed (empty off Linux).
    process: Registry,
    requests: Family<StatusLabels, Counter>,
    request_duration: Family<UpstreamLabel, AtomicHistogram, fn() -> AtomicHistogram>,
    token_fetches: Family<OutcomeLabels, Counter>,
    token_fetch_duration: Family<UpstreamLabel, AtomicHistogram, fn() -> AtomicHistogram>,
    token_expiry: Family<UpstreamLabel, Gauge<f64, AtomicU64>>,
    replays: Family<OutcomeLabels, Counter>,
    connections: Family<UpstreamLabel, Gauge>,
    shared_events: Family<EventLabels, Counter>,
    shared_errors: SharedCacheMetrics,
    /// One handle per [`Limit`], resolved at start.
    limits: [Counter; 5],
    /// The length of the last exposition, to size the next one's buffer.
    last_len: AtomicUsize,
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
        let shared_events = Family::default();
        let shared_errors = SharedCacheMetrics::default();
        let limit_hits = Family::<LimitLabel, Counter>::default();
        let limits = Limit::ALL.map(|limit| {
            limit_hits.get_or_create_owned(&LimitLabel {
                limit: limit.label(),
            })
        });
        registry.register(
            "requests",
            "Requests answered, by upstream and status class (error: the sidecar's own answer)",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request received to response headers sent",
            Unit::Seconds,
            request_duration.clone(),
        );
        registry.register(
            "token_fetches",
            "Token requests, by upstream and outcome",
            token_fetches.clone(),
        );
        registry.register_with_unit(
            "token_fetch_duration",
            "Time one token request took",
            Unit::Seconds,
            token_fetch_duration.clone(),
        );
        registry.register_with_unit(
            "token_expiry",
            "Seconds until the current token stops being used (0: no live token)",
            Unit::Seconds,
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
        registry.register(
            "limit_hits",
            "Times a connection or body limit was reached, by limit",
            limit_hits,
        );
        registry.register(
            "shared_cache_events",
            "What token requests did with the shared cache, by upstream and event",
            shared_events.clone(),
        );
        registry.register(
            "shared_cache_errors",
            "Redis operations of the shared cache that failed, by kind",
            shared_errors.0.clone(),
        );
        registry.register(
            "build_info",
            "The running build: its version, always 1",
            BuildInfo,
        );
        #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
        let mut process = Registry::default();
        #[cfg(target_os = "linux")]
        process.register_collector(Box::<process::ProcessCollector>::default());
        Metrics {
            registry,
            process,
            requests,
            request_duration,
            token_fetches,
            token_fetch_duration,
            token_expiry,
            replays,
            connections,
            shared_events,
            shared_errors,
            limits,
            last_len: AtomicUsize::new(0),
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
            shared: SharedEvent::ALL.map(|e| {
                self.shared_events.get_or_create_owned(&EventLabels {
                    upstream: upstream(),
                    event: e.label(),
                })
            }),
        }
    }

    /// The handle counting Redis failures of the shared cache.
    pub fn shared_cache(&self) -> SharedCacheMetrics {
        self.shared_errors.clone()
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
        for event in SharedEvent::ALL.map(SharedEvent::label) {
            self.shared_events.remove(&EventLabels {
                upstream: upstream.clone(),
                event,
            });
        }
        let label = UpstreamLabel { upstream };
        self.request_duration.remove(&label);
        self.token_fetch_duration.remove(&label);
        self.token_expiry.remove(&label);
        self.connections.remove(&label);
    }

    /// A connection or body limit was reached: counts `limit_hits_total{limit}`. The open
    /// connections themselves are counted per upstream by [`UpstreamMetrics::connection`].
    pub fn limit_hit(&self, limit: Limit) {
        self.limits[limit as usize].inc();
    }

    /// The exposition of everything in `format` (see [`Format::negotiate`]).
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        // Sized by the last scrape, so the buffer does not regrow on the way.
        let capacity = self.last_len.load(Ordering::Relaxed) + 1024;
        let text = match format {
            Format::OpenMetrics => {
                let mut text = String::with_capacity(capacity);
                encode_registry(&mut text, &self.registry)?;
                encode_registry(&mut text, &self.process)?;
                encode_eof(&mut text)?;
                text
            }
            Format::Prometheus => {
                let mut text = Text004::with_capacity(capacity);
                encode_registry(&mut text, &self.registry)?;
                encode_registry(&mut text, &self.process)?;
                text.finish()
            }
        };
        self.last_len.store(text.len(), Ordering::Relaxed);
        Ok(text)
    }
}

/// `build_info{version}`: always 1, so `on() group_left(version)` joins the version in.
#[derive(Debug)]
struct BuildInfo;

impl EncodeMetric for BuildInfo {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder
            .encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?
            .encode_gauge(&1_i64)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
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
    shared: [Counter; 5],
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

    /// What a token request did with the shared cache.
    pub fn shared(&self, event: SharedEvent) {
        self.shared[event as usize].inc();
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

/// The `limit` label of `limit_hits_total`: which limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `max_connections` connections were open, so the next one waited.
    MaxConnections,
    /// A connection sent no complete request head in time.
    HeaderReadTimeout,
    /// A connection sat idle too long.
    IdleTimeout,
    /// A request body stalled.
    BodyReadTimeout,
    /// Buffering a body for replay would have exceeded the memory bound.
    MaxBuffered,
}

impl Limit {
    const ALL: [Limit; 5] = [
        Limit::MaxConnections,
        Limit::HeaderReadTimeout,
        Limit::IdleTimeout,
        Limit::BodyReadTimeout,
        Limit::MaxBuffered,
    ];

    /// The label value (also fit for logs).
    pub fn label(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::HeaderReadTimeout => "header_read_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::BodyReadTimeout => "body_read_timeout",
            Limit::MaxBuffered => "max_buffered",
        }
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

#[cfg(test)]
mod tests;
