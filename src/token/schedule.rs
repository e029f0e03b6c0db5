//! The arithmetic of a token's life: when to stop using it, when to refresh it, how long to
//! back off after a failure. Pure functions of their inputs (jitter is passed in), so every
//! rule is unit-tested without a clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{DEFAULT_REFRESH_SHARE, MAX_DEFAULT_REFRESH_BEFORE};

/// A token is retired this share of its lifetime before it really expires...
const SAFETY_SHARE: f64 = 0.1;
/// ...at most this much, to absorb clock skew and the trip to the API.
const MAX_SAFETY: Duration = Duration::from_secs(5);
/// Refresh starts up to this share of `refresh_before` earlier, at random, so a fleet of
/// sidecars started together does not refresh in lockstep.
const REFRESH_JITTER_SHARE: f64 = 0.1;
/// The first backoff after a failure; it doubles with each further failure...
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// ...up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Backoff delays are drawn from [(1 - this) * step, step].
const BACKOFF_JITTER_SHARE: f64 = 0.25;
/// A `Retry-After` longer than this is taken as this: a broken header must not park an
/// upstream for a day.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// A refresh never starts before this share of the usable lifetime has passed, whatever
/// `refresh_before` says: otherwise a `refresh_before` as long as the lifetime the server grants
/// would refresh every token the moment it arrives, once per `min_refresh_interval`, forever.
const MAX_REFRESH_LEAD_SHARE: f64 = 0.5;

/// When a token's use and refresh are due; see [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The token is not sent from this instant on.
    pub expires_at: Instant,
    /// A background refresh may start from this instant on.
    pub refresh_at: Instant,
    /// `refresh_before` asked for more than half the usable lifetime and was cut to that.
    pub lead_capped: bool,
}

/// When a token obtained at `obtained_at` and good for `lifetime` stops being used and when its
/// refresh may start. `jitter` is uniform in `[0, 1)`.
pub fn plan(
    obtained_at: Instant,
    lifetime: Duration,
    refresh_before: Option<Duration>,
    jitter: f64,
) -> Plan {
    let safety = lifetime.mul_f64(SAFETY_SHARE).min(MAX_SAFETY);
    let usable = lifetime.saturating_sub(safety);
    let before = refresh_before.unwrap_or_else(|| {
        lifetime
            .mul_f64(DEFAULT_REFRESH_SHARE)
            .min(MAX_DEFAULT_REFRESH_BEFORE)
    });
    let wanted = before + before.mul_f64(REFRESH_JITTER_SHARE * jitter.clamp(0.0, 1.0));
    let max_lead = usable.mul_f64(MAX_REFRESH_LEAD_SHARE);
    Plan {
        expires_at: obtained_at + usable,
        refresh_at: obtained_at + usable.saturating_sub(wanted.min(max_lead)),
        lead_capped: wanted > max_lead,
    }
}

/// How long to wait after the `failures`-th consecutive failure (1-based). `jitter` is uniform
/// in `[0, 1)`; a `Retry-After` from the server is honoured when it asks for longer.
pub fn backoff(failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let step = BACKOFF_INITIAL
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX);
    let delay = step.mul_f64(1.0 - BACKOFF_JITTER_SHARE * jitter.clamp(0.0, 1.0));
    match retry_after {
        Some(asked) => delay.max(asked.min(RETRY_AFTER_MAX)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn at(p: Plan) -> (Instant, Instant) {
        (p.expires_at, p.refresh_at)
    }

    #[test]
    fn default_refresh_is_a_fifth_of_the_lifetime_clamped() {
        let t0 = Instant::now();
        // 100 s: the safety margin is 10% (10 s) clamped to 5 s; a fifth of 100 s is 20 s.
        let (expires, refresh) = at(plan(t0, S(100), None, 0.0));
        assert_eq!(expires - t0, S(95));
        assert_eq!(refresh - t0, S(75));
        // 24 h: refresh_before clamps to 5 min.
        let (expires, refresh) = at(plan(t0, S(86_400), None, 0.0));
        assert_eq!(expires - t0, S(86_395));
        assert_eq!(expires - refresh, S(300));
    }

    #[test]
    fn short_lifetimes_keep_proportions() {
        let t0 = Instant::now();
        let (expires, refresh) = at(plan(t0, S(2), None, 0.0));
        assert_eq!(expires - t0, Duration::from_millis(1800));
        assert_eq!(refresh - t0, Duration::from_millis(1400));
    }

    #[test]
    fn explicit_refresh_before_and_jitter() {
        let t0 = Instant::now();
        let (expires, refresh) = at(plan(t0, S(3600), Some(S(60)), 0.0));
        assert_eq!(expires - refresh, S(60));
        let (_, jittered) = at(plan(t0, S(3600), Some(S(60)), 0.999));
        assert!(jittered < refresh && refresh - jittered <= S(6));
    }

    #[test]
    fn refresh_before_is_capped_at_half_the_usable_lifetime() {
        let t0 = Instant::now();
        let p = plan(t0, S(60), Some(S(3600)), 0.5);
        // 60 s with 5 s safety: usable 55 s, so the refresh waits 27.5 s instead of none.
        assert_eq!(p.expires_at - t0, S(55));
        assert_eq!(p.refresh_at - t0, Duration::from_millis(27_500));
        assert!(p.lead_capped);
        assert!(!plan(t0, S(3600), Some(S(60)), 0.5).lead_capped);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let steps: Vec<u64> = (1..=8).map(|n| backoff(n, None, 0.0).as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(u32::MAX, None, 0.0), S(60));
        let jittered = backoff(3, None, 0.999);
        assert!(jittered >= S(3) && jittered < S(4));
    }

    #[test]
    fn retry_after_is_honoured_when_longer_and_capped() {
        assert_eq!(backoff(1, Some(S(30)), 0.0), S(30));
        assert_eq!(backoff(7, Some(S(5)), 0.0), S(60));
        assert_eq!(backoff(1, Some(S(999_999)), 0.0), RETRY_AFTER_MAX);
    }
}
