//! The registry of what a stand-in issued: JWT-shaped access tokens with their expiry and
//! revocation, and refresh tokens. It mints and checks tokens; it knows nothing of HTTP or of
//! which API asked.
//!
//! Revocation works by epochs: [`Registry::revoke_all`] ends the current revocation epoch, and
//! a token is revoked once an epoch later than the one it was issued in has begun. So a token's
//! record says both whether it was revoked and which revocations it lived through.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use tokio::time::Instant;

/// How long a token being issued lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lifetimes {
    /// Sent as `expires_in`; `None` omits the field.
    pub expires_in: Option<u64>,
    /// The JWT `exp` claim, from `iat`; `None` omits the claim.
    pub jwt: Option<u64>,
}

#[derive(Debug)]
struct Issued {
    token: String,
    /// From the lifetime actually granted: `expires_in`, else the JWT's; `None` never expires.
    expires_at: Option<Instant>,
    /// The revocation epoch it was issued in; revoked once the registry's epoch is past it.
    epoch: u64,
}

/// What the registry knows of a token presented to the protected API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Presented {
    /// Which issued token it is (1 for the first).
    pub number: usize,
    /// The revocation epoch it was issued in.
    pub epoch: u64,
    /// A revocation came after its issue.
    pub revoked: bool,
    /// Its granted lifetime is over.
    pub expired: bool,
}

impl Presented {
    /// Neither revoked nor expired.
    pub fn is_valid(&self) -> bool {
        !self.revoked && !self.expired
    }
}

#[derive(Debug, Default)]
pub(super) struct Registry {
    issued: Vec<Issued>,
    by_token: HashMap<String, usize>,
    /// Live refresh tokens and the subject each was issued to.
    refresh: HashMap<String, String>,
    /// Every refresh token ever issued, so invalidated ones stay distinct from new ones.
    refresh_ever: HashSet<String>,
    /// Refresh tokens spent by a rotating refresh: presenting one again is a replay.
    superseded: HashSet<String>,
    /// How many times a superseded refresh token was presented.
    replays: usize,
    /// How many times every token was revoked: the current revocation epoch.
    epoch: u64,
}

impl Registry {
    /// Mints and records a unique JWT-shaped access token for `sub`.
    pub fn issue(&mut self, sub: &str, life: Lifetimes) -> String {
        let jti = self.issued.len() + 1;
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = serde_json::json!({ "sub": sub, "iat": iat, "jti": jti.to_string() });
        if let Some(secs) = life.jwt {
            claims["exp"] = serde_json::json!(iat.saturating_add(secs));
        }
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        let signature: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
            .take(32)
            .collect();
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        );
        let granted = life.expires_in.or(life.jwt);
        self.by_token.insert(token.clone(), self.issued.len());
        self.issued.push(Issued {
            token: token.clone(),
            expires_at: granted.and_then(|s| Instant::now().checked_add(Duration::from_secs(s))),
            epoch: self.epoch,
        });
        token
    }

    /// What is known of `token` now, if it was issued here.
    pub fn presented(&self, token: &str) -> Option<Presented> {
        let i = *self.by_token.get(token)?;
        let issued = self.issued.get(i)?;
        Some(Presented {
            number: i + 1,
            epoch: issued.epoch,
            revoked: issued.epoch < self.epoch,
            expired: issued.expires_at.is_some_and(|at| Instant::now() >= at),
        })
    }

    pub fn access_tokens(&self) -> Vec<String> {
        self.issued.iter().map(|i| i.token.clone()).collect()
    }

    /// Revokes every token issued so far by starting a new revocation epoch.
    pub fn revoke_all(&mut self) {
        self.epoch += 1;
    }

    /// The current revocation epoch: how many times [`Registry::revoke_all`] was called.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Mints and records a refresh token for `sub`.
    pub fn issue_refresh(&mut self, sub: &str) -> String {
        loop {
            let token = format!("rt-{}", random_alphanumeric(24));
            if self.refresh_ever.insert(token.clone()) {
                self.refresh.insert(token.clone(), sub.to_string());
                return token;
            }
        }
    }

    /// The subject a live refresh token was issued to.
    pub fn refresh_subject(&self, refresh_token: &str) -> Option<String> {
        self.refresh.get(refresh_token).cloned()
    }

    /// A refresh token presented for a refresh: the subject it was issued to, if it is live.
    /// With `rotate`, it is spent (the caller issues its successor), and presenting it again
    /// is counted as a replay. Invalidated and unknown ones are refused without counting: only
    /// a superseded one says its holder missed the rotation.
    pub fn redeem_refresh(&mut self, refresh_token: &str, rotate: bool) -> Option<String> {
        if self.superseded.contains(refresh_token) {
            self.replays += 1;
            return None;
        }
        if !rotate {
            return self.refresh_subject(refresh_token);
        }
        let subject = self.refresh.remove(refresh_token)?;
        self.superseded.insert(refresh_token.to_owned());
        Some(subject)
    }

    /// How many times a superseded refresh token was presented.
    pub fn refresh_replays(&self) -> usize {
        self.replays
    }

    pub fn invalidate_refresh_tokens(&mut self) {
        self.refresh.clear();
    }
}

pub(super) fn random_alphanumeric(len: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(len)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    impl Registry {
        /// Whether `token` was issued here, is not revoked and has not expired.
        fn is_valid(&self, token: &str) -> bool {
            self.presented(token).is_some_and(|p| p.is_valid())
        }
    }

    fn claims(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn tokens_are_unique_jwts_with_requested_exp() {
        let mut reg = Registry::default();
        let life = Lifetimes {
            expires_in: Some(60),
            jwt: Some(120),
        };
        let a = reg.issue("client", life);
        let b = reg.issue("client", life);
        assert_ne!(a, b);
        assert_eq!(a.split('.').count(), 3);
        let c = claims(&a);
        assert_eq!(c["sub"], "client");
        assert_eq!(c["exp"].as_u64().unwrap(), c["iat"].as_u64().unwrap() + 120);
        assert_ne!(claims(&b)["jti"], c["jti"]);
        assert!(reg.is_valid(&a) && reg.is_valid(&b));
        assert_eq!(reg.access_tokens(), vec![a, b]);
    }

    #[test]
    fn jwt_without_exp_and_zero_lifetime() {
        let mut reg = Registry::default();
        let no_exp = reg.issue(
            "u",
            Lifetimes {
                expires_in: None,
                jwt: None,
            },
        );
        assert!(claims(&no_exp).get("exp").is_none());
        assert!(reg.is_valid(&no_exp), "no lifetime at all never expires");
        let dead = reg.issue(
            "u",
            Lifetimes {
                expires_in: Some(0),
                jwt: Some(3600),
            },
        );
        assert!(
            !reg.is_valid(&dead),
            "expires_in wins over the JWT lifetime"
        );
    }

    #[test]
    fn revoke_and_refresh_invalidation() {
        let mut reg = Registry::default();
        let life = Lifetimes {
            expires_in: Some(60),
            jwt: None,
        };
        let t = reg.issue("u", life);
        assert!(!reg.is_valid("not-issued"));
        reg.revoke_all();
        assert!(!reg.is_valid(&t));
        let fresh = reg.issue("u", life);
        assert!(reg.is_valid(&fresh), "revocation is not sticky");
        let p = reg.presented(&t).unwrap();
        assert_eq!(
            (p.number, p.epoch, p.revoked, p.expired),
            (1, 0, true, false)
        );
        let p = reg.presented(&fresh).unwrap();
        assert_eq!((p.number, p.epoch, p.revoked), (2, 1, false));
        assert_eq!(reg.epoch(), 1);
        assert_eq!(reg.presented("not-issued"), None);
        let rt = reg.issue_refresh("u");
        assert_eq!(reg.refresh_subject(&rt).as_deref(), Some("u"));
        reg.invalidate_refresh_tokens();
        assert_eq!(reg.refresh_subject(&rt), None);
    }

    #[test]
    fn a_rotating_refresh_spends_the_token_and_counts_its_replays() {
        let mut reg = Registry::default();
        let kept = reg.issue_refresh("u");
        assert_eq!(reg.redeem_refresh(&kept, false).as_deref(), Some("u"));
        assert_eq!(reg.redeem_refresh(&kept, false).as_deref(), Some("u"));
        assert_eq!(reg.redeem_refresh(&kept, true).as_deref(), Some("u"));
        assert_eq!(reg.refresh_replays(), 0);
        // Spent: refused, and counted, whether or not rotation is still on.
        assert_eq!(reg.redeem_refresh(&kept, true), None);
        assert_eq!(reg.redeem_refresh(&kept, false), None);
        assert_eq!(reg.refresh_replays(), 2);
        // Unknown and invalidated refresh tokens are refused without counting.
        let dropped = reg.issue_refresh("u");
        reg.invalidate_refresh_tokens();
        assert_eq!(reg.redeem_refresh(&dropped, true), None);
        assert_eq!(reg.redeem_refresh("rt-unknown", true), None);
        assert_eq!(reg.refresh_replays(), 2);
    }
}
