//! The configuration file exactly as written: serde types with `deny_unknown_fields`.
//!
//! Nothing here is checked beyond its type; `validate` turns these into the typed values the
//! rest of the program uses. Fields whose errors need a line number are `Spanned`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::units::{Dur, Size};
use crate::secret::SecretSource;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub shutdown_grace: Option<Dur>,
    pub admin: Option<RawAdmin>,
    pub log: Option<RawLog>,
    #[serde(default)]
    pub upstream: Vec<Spanned<RawUpstream>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Spanned<String>,
    pub preset: Option<Preset>,
    pub environment: Option<Spanned<String>>,
    pub listen: Spanned<String>,
    pub target: Option<Spanned<String>>,
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub retry_on: Option<Spanned<Vec<u16>>>,
    pub max_replay_body: Option<Size>,
    pub connect_timeout: Option<Dur>,
    pub request_timeout: Option<Dur>,
    pub ca_file: Option<Spanned<PathBuf>>,
    pub auth: Option<Spanned<RawAuth>>,
}

/// One table for every flow; `validate` checks that a flow has its fields and no others.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub flow: Option<FlowKind>,
    pub token_url: Option<Spanned<String>>,
    pub client_id: Option<Spanned<SecretSource>>,
    pub client_secret: Option<Spanned<SecretSource>>,
    pub client_auth: Option<Spanned<ClientAuth>>,
    pub scope: Option<Spanned<String>>,
    pub extra_params: Option<Spanned<BTreeMap<String, String>>>,
    pub refresh_before: Option<Dur>,
    pub min_refresh_interval: Option<Dur>,
    pub token_lifetime: Option<Dur>,
    pub timeout: Option<Dur>,
    pub prefetch: Option<bool>,
    pub token_wait: Option<Spanned<Dur>>,
    pub username: Option<Spanned<SecretSource>>,
    pub password: Option<Spanned<SecretSource>>,
    pub totp_secret: Option<Spanned<SecretSource>>,
    pub auth_url: Option<Spanned<String>>,
    pub user_key: Option<Spanned<SecretSource>>,
    pub user_secret: Option<Spanned<SecretSource>>,
    pub token: Option<Spanned<SecretSource>>,
}

/// The ways a token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    ClientCredentials,
    Password,
    Nexushub,
    Static,
    None,
}

/// How client credentials reach the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)`, as `curl -u` sends it.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as form fields.
    Body,
}

/// The APIs whose fixed settings the sidecar knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    NuvyNexus,
    Nuvy,
    Quantoz,
    Nexudus,
    Nexushub,
}
