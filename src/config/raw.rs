//! The configuration file exactly as written: serde types whose values are [`Field`]s.
//!
//! Nothing here is checked beyond its type; `validate` turns these into the typed values the
//! rest of the program uses. Every value is a `Field`: where it is written, and the value if it
//! has the right type. A value of the wrong type does not stop the parse: [`parse`] returns it
//! with the others, so a file's type errors are reported together with everything else.
//!
//! Unknown keys are refused by `keys`, which reads these structs' field lists, rather than by
//! serde's `deny_unknown_fields`, which stops at the first one.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use serde::de::{DeserializeOwned, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::suggest::did_you_mean;
use super::units::{Dur, Size};
use crate::secret::SecretSource;

#[derive(Debug, Deserialize)]
#[serde(expecting = "a configuration table")]
pub struct RawConfig {
    pub shutdown_grace: Option<Field<Dur>>,
    pub admin: Option<RawAdmin>,
    pub log: Option<RawLog>,
    pub limits: Option<RawLimits>,
    #[serde(default, deserialize_with = "shared_cache")]
    pub shared_cache: Option<RawSharedCache>,
    #[serde(default, deserialize_with = "upstreams")]
    pub upstream: Vec<Spanned<RawUpstream>>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table such as [admin]")]
pub struct RawAdmin {
    pub listen: Option<Field<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table such as [log]")]
pub struct RawLog {
    pub level: Option<Field<String>>,
    pub format: Option<Field<LogFormat>>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table such as [limits]")]
pub struct RawLimits {
    pub max_connections: Option<Field<i64>>,
    pub header_read_timeout: Option<Field<Dur>>,
    pub idle_timeout: Option<Field<Dur>>,
    pub body_read_timeout: Option<Field<Dur>>,
    pub max_buffered: Option<Field<Size>>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table such as [shared_cache]")]
pub struct RawSharedCache {
    #[serde(default, deserialize_with = "secret")]
    pub url: Option<Field<SecretSource>>,
    pub key_prefix: Option<Field<String>>,
    pub timeout: Option<Field<Dur>>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a table such as [[upstream]]")]
pub struct RawUpstream {
    pub name: Option<Field<String>>,
    pub preset: Option<Field<Preset>>,
    pub environment: Option<Field<String>>,
    pub listen: Option<Field<String>>,
    pub allow_remote: Option<Field<bool>>,
    pub target: Option<Field<String>>,
    #[serde(default, deserialize_with = "headers")]
    pub headers: Option<Field<BTreeMap<String, String>>>,
    pub retry_on: Option<Field<Vec<u16>>>,
    pub max_replay_body: Option<Field<Size>>,
    pub connect_timeout: Option<Field<Dur>>,
    pub request_timeout: Option<Field<Dur>>,
    pub ca_file: Option<Field<PathBuf>>,
    /// Not `Spanned`: written with dotted keys (`auth.flow = "none"`) a table has no span.
    pub auth: Option<RawAuth>,
}

/// One table for every flow; `validate` checks that a flow has its fields and no others.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table such as [upstream.auth]")]
pub struct RawAuth {
    pub flow: Option<Field<FlowKind>>,
    pub token_url: Option<Field<String>>,
    #[serde(default, deserialize_with = "secret")]
    pub client_id: Option<Field<SecretSource>>,
    #[serde(default, deserialize_with = "secret")]
    pub client_secret: Option<Field<SecretSource>>,
    pub client_auth: Option<Field<ClientAuth>>,
    pub scope: Option<Field<String>>,
    pub extra_params: Option<Field<BTreeMap<String, String>>>,
    pub refresh_before: Option<Field<Dur>>,
    pub min_refresh_interval: Option<Field<Dur>>,
    pub token_lifetime: Option<Field<Dur>>,
    pub timeout: Option<Field<Dur>>,
    pub prefetch: Option<Field<bool>>,
    pub token_wait: Option<Field<Dur>>,
    pub shared: Option<Field<bool>>,
    #[serde(default, deserialize_with = "secret")]
    pub username: Option<Field<SecretSource>>,
    #[serde(default, deserialize_with = "secret")]
    pub password: Option<Field<SecretSource>>,
    #[serde(default, deserialize_with = "secret")]
    pub totp_secret: Option<Field<SecretSource>>,
    pub auth_url: Option<Field<String>>,
    #[serde(default, deserialize_with = "secret")]
    pub user_key: Option<Field<SecretSource>>,
    #[serde(default, deserialize_with = "secret")]
    pub user_secret: Option<Field<SecretSource>>,
    #[serde(default, deserialize_with = "secret")]
    pub token: Option<Field<SecretSource>>,
}

/// A value as written: where, and the value itself unless it had the wrong type (that problem
/// is recorded by [`parse`], so nothing reports it again).
#[derive(Debug)]
pub struct Field<T> {
    span: Range<usize>,
    value: Option<T>,
}

impl<T> Field<T> {
    /// A value that was not written but supplied (by a preset), shown at `span`.
    pub fn new(span: Range<usize>, value: T) -> Self {
        Field {
            span,
            value: Some(value),
        }
    }

    /// Where the value is written.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The value; `None` if it had the wrong type.
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// The value, owned; `None` if it had the wrong type.
    pub fn into_value(self) -> Option<T> {
        self.value
    }

    /// Reads a `T` at the deserializer's place; a wrong one becomes a recorded problem whose
    /// message `explain` may rewrite.
    fn read<'de, D>(d: D, explain: fn(String) -> String) -> Result<Self, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        let spanned = Spanned::<Lenient<T>>::deserialize(d)?;
        let span = spanned.span();
        let value = match spanned.into_inner().0 {
            Ok(v) => Some(v),
            Err(message) => {
                let message = explain(message);
                INVALID.with(|i| {
                    i.borrow_mut().push(Invalid {
                        span: span.clone(),
                        message,
                    })
                });
                None
            }
        };
        Ok(Field { span, value })
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Field::read(d, |message| message)
    }
}

/// `T`, or the first line of why not (the rest is toml's context, which `Problem` replaces).
struct Lenient<T>(Result<T, String>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Lenient(T::deserialize(d).map_err(|e| {
            let text = e.to_string();
            text.lines().next().unwrap_or_default().trim().to_owned()
        })))
    }
}

/// Serde's "invalid type: integer `1234`" quotes the value: for secrets and static headers
/// (API keys) say what is expected instead.
fn unquoted(message: String, expected: &str) -> String {
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        expected.to_owned()
    } else {
        message
    }
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Field<SecretSource>>, D::Error> {
    Field::read(d, |m| {
        unquoted(
            m,
            r#"expected { env = "VAR" }, { file = "/path" } or a string"#,
        )
    })
    .map(Some)
}

fn headers<'de, D>(d: D) -> Result<Option<Field<BTreeMap<String, String>>>, D::Error>
where
    D: Deserializer<'de>,
{
    Field::read(d, |m| {
        unquoted(
            m,
            r#"expected a table of header names and string values, such as { x-api-key = "..." }"#,
        )
    })
    .map(Some)
}

/// `[shared_cache]`. A string in its place is refused without the quote serde's message would
/// carry: `shared_cache = "redis://:password@host"` is an easy slip.
fn shared_cache<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawSharedCache>, D::Error> {
    struct Table;
    impl<'de> Visitor<'de> for Table {
        type Value = RawSharedCache;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table such as [shared_cache]")
        }

        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(E::custom(
                "expected a table: write the URL as `url` under `[shared_cache]`",
            ))
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            RawSharedCache::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Table).map(Some)
}

/// `[[upstream]]` tables; a lone `[upstream]` is refused with the spelling that works.
fn upstreams<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Spanned<RawUpstream>>, D::Error> {
    struct Tables;
    impl<'de> Visitor<'de> for Tables {
        type Value = Vec<Spanned<RawUpstream>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("[[upstream]] tables")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut tables = Vec::new();
            while let Some(table) = seq.next_element()? {
                tables.push(table);
            }
            Ok(tables)
        }

        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(A::Error::custom(
                "write `[[upstream]]`, with double brackets: there may be several",
            ))
        }
    }
    d.deserialize_seq(Tables)
}

/// A value of the wrong type: where it is written, and why it is wrong.
#[derive(Debug)]
pub struct Invalid {
    pub span: Range<usize>,
    pub message: String,
}

thread_local! {
    /// Values of the wrong type met by the parse running on this thread. A `Deserialize` impl
    /// has nowhere else to put what it set aside; [`parse`] empties this before and after.
    static INVALID: RefCell<Vec<Invalid>> = const { RefCell::new(Vec::new()) };
}

/// What [`parse`] read.
#[derive(Debug)]
pub struct Parsed {
    /// An error only when the file's structure is wrong (a value where a table belongs,
    /// `[upstream]` for `[[upstream]]`).
    pub raw: Result<RawConfig, toml::de::Error>,
    /// Every value of the wrong type, wherever it is.
    pub invalid: Vec<Invalid>,
}

/// Parses `text`; values of the wrong type come back beside the result, with where they are.
pub fn parse(text: &str) -> Parsed {
    INVALID.with(|i| i.borrow_mut().clear());
    let raw = toml::from_str(text);
    Parsed {
        raw,
        invalid: INVALID.with(|i| i.take()),
    }
}

/// Enums written as one of a few names; an unknown name is refused with the near miss.
pub trait Named: Sized + Copy + 'static {
    /// What a value is called in messages, such as "preset".
    const WHAT: &'static str;
    /// Every value.
    const ALL: &'static [Self];
    /// The name as written in the configuration.
    fn name(self) -> &'static str;
}

fn named<'de, D: Deserializer<'de>, T: Named>(d: D) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    if let Some(v) = T::ALL.iter().find(|v| v.name() == text) {
        return Ok(*v);
    }
    let names = T::ALL.iter().map(|v| v.name());
    let message = match did_you_mean(&text, names.clone()) {
        Some(near) => format!("unknown {} {text:?}; did you mean `{near}`?", T::WHAT),
        None => format!(
            "unknown {} {text:?}; expected one of: {}",
            T::WHAT,
            names.collect::<Vec<_>>().join(", ")
        ),
    };
    Err(D::Error::custom(message))
}

macro_rules! deserialize_by_name {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                named(d)
            }
        }
    )*};
}

deserialize_by_name!(LogFormat, FlowKind, ClientAuth, Preset);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Named for LogFormat {
    const WHAT: &'static str = "log format";
    const ALL: &'static [Self] = &[LogFormat::Text, LogFormat::Json];
    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The ways a token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    ClientCredentials,
    Password,
    Nexushub,
    Static,
    None,
}

impl Named for FlowKind {
    const WHAT: &'static str = "flow";
    const ALL: &'static [Self] = &[
        FlowKind::ClientCredentials,
        FlowKind::Password,
        FlowKind::Nexushub,
        FlowKind::Static,
        FlowKind::None,
    ];
    fn name(self) -> &'static str {
        FlowKind::name(self)
    }
}

/// How client credentials reach the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)`, as `curl -u` sends it.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as form fields.
    Body,
}

impl Named for ClientAuth {
    const WHAT: &'static str = "client_auth";
    const ALL: &'static [Self] = &[ClientAuth::Basic, ClientAuth::Body];
    fn name(self) -> &'static str {
        match self {
            ClientAuth::Basic => "basic",
            ClientAuth::Body => "body",
        }
    }
}

/// The APIs whose fixed settings the sidecar knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    NuvyNexus,
    Nuvy,
    Quantoz,
    Nexudus,
    Nexushub,
}

impl Named for Preset {
    const WHAT: &'static str = "preset";
    const ALL: &'static [Self] = &[
        Preset::NuvyNexus,
        Preset::Nuvy,
        Preset::Quantoz,
        Preset::Nexudus,
        Preset::Nexushub,
    ];
    fn name(self) -> &'static str {
        Preset::name(self)
    }
}
