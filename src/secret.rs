//! Secret values and where they come from.
//!
//! A [`Secret`] can be read with [`Secret::expose`] and nowhere else: its `Debug` and `Display`
//! print a mask, so a secret that ends up in a log line or an error shows as `***`. This module
//! does not decide *when* secrets are re-read; reload does that by resolving the sources again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The mask printed wherever a secret would otherwise appear.
pub const MASK: &str = "***";

/// A secret file larger than this is refused unread: secrets, TOTP seeds and PEM keys are a
/// few KiB, and `file = "/dev/zero"` (or a log file named by mistake) must not fill memory.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// A secret value: cheap to clone, impossible to print by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value. Prefer resolving a [`SecretSource`]; this is for values made at run time
    /// (refresh tokens) and for tests.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The value itself. Every call site is a place where a secret leaves its box: keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// Where a secret is read from, as written in the configuration.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `{ env = "VAR" }`
    Env(String),
    /// `{ file = "/path" }`; one trailing newline (`\n` or `\r\n`) is trimmed.
    File(PathBuf),
    /// A plain string in the file: accepted for local development, warned about at start-up.
    Literal(Secret),
}

/// Why a secret could not be read. Never carries the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable `{0}` is not set")]
    EnvUnset(String),
    #[error("environment variable `{0}` is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read secret file `{}`: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file `{}` is not valid UTF-8", .0.display())]
    FileNotUnicode(PathBuf),
    #[error("secret file `{}` is larger than {limit} bytes: it should hold one secret", path.display())]
    FileTooLarge { path: PathBuf, limit: u64 },
    #[error("the secret is empty")]
    Empty,
}

impl SecretSource {
    /// Reads the secret now.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(SecretError::EnvUnset(var.clone()))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SecretError::EnvNotUnicode(var.clone()))
                }
            },
            SecretSource::File(path) => read_secret_file(path)?,
            SecretSource::Literal(secret) => secret.expose().to_owned(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret::new(value))
    }

    /// The file behind this secret, if it is one (reload watches these).
    pub fn file(&self) -> Option<&Path> {
        match self {
            SecretSource::File(path) => Some(path),
            SecretSource::Env(_) | SecretSource::Literal(_) => None,
        }
    }

    /// Whether the value is written in the configuration itself.
    pub fn is_literal(&self) -> bool {
        matches!(self, SecretSource::Literal(_))
    }
}

/// A secret as configured: where it comes from and the value read from there at load time.
#[derive(Clone, PartialEq, Eq)]
pub struct LoadedSecret {
    /// Where the value was read from.
    pub source: SecretSource,
    /// The value read.
    pub value: Secret,
}

impl fmt::Debug for LoadedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let bytes = crate::file::read_at_most(path, MAX_SECRET_FILE)
        .map_err(|source| SecretError::File {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| SecretError::FileTooLarge {
            path: path.to_owned(),
            limit: MAX_SECRET_FILE,
        })?;
    let mut text =
        String::from_utf8(bytes).map_err(|_| SecretError::FileNotUnicode(path.into()))?;
    // Editors and `echo` add one newline; Kubernetes Secrets usually have none. Trim exactly
    // one so a secret that really ends in whitespace survives.
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Printed as the configuration would be written, with a literal masked.
impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "{{ env = {var:?} }}"),
            SecretSource::File(path) => write!(f, "{{ file = {:?} }}", path.display().to_string()),
            SecretSource::Literal(_) => write!(f, "{MASK:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SourceVisitor)
    }
}

struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"{ env = "VAR" }, { file = "/path" } or a string"#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretSource, E> {
        Ok(SecretSource::Literal(Secret::new(v)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom(
                r#"empty table: expected { env = "VAR" } or { file = "/path" }"#,
            ));
        };
        let source = match key.as_str() {
            "env" => SecretSource::Env(map.next_value()?),
            "file" => SecretSource::File(map.next_value()?),
            other => return Err(de::Error::unknown_field(other, &["env", "file"])),
        };
        if let Some(extra) = map.next_key::<String>()? {
            return Err(de::Error::custom(format!(
                "unexpected `{extra}`: a secret has exactly one of `env` or `file`"
            )));
        }
        Ok(source)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        s: SecretSource,
    }

    fn parse(text: &str) -> Result<SecretSource, toml::de::Error> {
        toml::from_str::<Holder>(text).map(|h| h.s)
    }

    #[test]
    fn debug_and_display_mask_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        let src = SecretSource::Literal(s);
        assert!(!format!("{src:?}{src}").contains("hunter2"));
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            parse(r#"s = { env = "X" }"#).unwrap(),
            SecretSource::Env("X".into())
        );
        assert_eq!(
            parse(r#"s = { file = "/run/x" }"#).unwrap(),
            SecretSource::File("/run/x".into())
        );
        assert!(parse(r#"s = "lit""#).unwrap().is_literal());
    }

    #[test]
    fn rejects_unknown_and_extra_keys() {
        let err = parse(r#"s = { path = "/x" }"#).unwrap_err().to_string();
        assert!(err.contains("unknown field `path`"), "{err}");
        let err = parse(r#"s = { env = "A", file = "/b" }"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn file_secret_trims_one_newline() {
        let dir = std::env::temp_dir().join(format!("nexus-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        std::fs::write(&path, "abc \n\n").unwrap();
        let got = SecretSource::File(path.clone()).resolve().unwrap();
        assert_eq!(got.expose(), "abc \n");
        std::fs::write(&path, "xyz\r\n").unwrap();
        assert_eq!(SecretSource::File(path).resolve().unwrap().expose(), "xyz");
    }

    #[test]
    fn an_endless_secret_file_is_refused_unread() {
        let err = SecretSource::File("/dev/zero".into())
            .resolve()
            .unwrap_err();
        assert!(
            matches!(&err, SecretError::FileTooLarge { path, limit }
                if path.as_os_str() == "/dev/zero" && *limit == MAX_SECRET_FILE),
            "{err:?}"
        );
        assert!(err.to_string().contains("/dev/zero"), "{err}");
    }

    #[test]
    fn a_secret_file_one_byte_over_the_bound_is_refused_without_its_content() {
        let dir = std::env::temp_dir().join(format!("nexus-secret-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let bound = usize::try_from(MAX_SECRET_FILE).unwrap();
        std::fs::write(&path, "k".repeat(bound)).unwrap();
        let at_bound = SecretSource::File(path.clone()).resolve().unwrap();
        assert_eq!(at_bound.expose().len(), bound);

        std::fs::write(&path, "k".repeat(bound + 1)).unwrap();
        let err = SecretSource::File(path.clone()).resolve().unwrap_err();
        assert!(matches!(err, SecretError::FileTooLarge { .. }), "{err:?}");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("larger than 65536 bytes"), "{shown}");
        assert!(!shown.contains("kk"), "the content is not echoed: {shown}");
    }

    #[test]
    fn missing_sources_are_named_without_values() {
        let err = SecretSource::Env("NEXUS_SIDECAR_SURELY_UNSET".into())
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("NEXUS_SIDECAR_SURELY_UNSET"));
        let err = SecretSource::File("/nonexistent/secret".into())
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/secret"));
    }
}
