//! Durations and sizes as they are written in the configuration: strings that carry a unit.
//!
//! Parsing is left to `humantime` and `bytesize`; this module only insists on the unit, so a bare
//! `30` is an error rather than a guess between seconds and milliseconds.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration such as `"250ms"`, `"30s"`, `"5m"`, `"1h"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Parses a duration that must carry a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if !t.ends_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!(
            "invalid duration `{text}`: give a unit, for example \"250ms\", \"30s\", \"5m\" or \"1h\""
        ));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration `{text}` ({e}): expected for example \"250ms\", \"30s\", \"5m\" or \"1h\"")
    })
}

/// A size such as `"64KiB"` or `"1MiB"`, in bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_size(&text)
            .map(Size)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// Parses a size that must carry a unit (`B`, `KiB`, `MiB`, `KB`, ...).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if !t.ends_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!(
            "invalid size `{text}`: give a unit, for example \"64KiB\" or \"1MiB\""
        ));
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| {
            format!("invalid size `{text}` ({e}): expected for example \"64KiB\" or \"1MiB\"")
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("30").unwrap_err().contains("give a unit"));
        assert!(parse_duration("3 fortnights").is_err());
    }

    #[test]
    fn sizes_need_units() {
        assert_eq!(parse_size("64KiB").unwrap(), 64 * 1024);
        assert_eq!(parse_size("1MiB").unwrap(), 1024 * 1024);
        assert_eq!(parse_size("0B").unwrap(), 0);
        assert!(parse_size("1024").unwrap_err().contains("give a unit"));
        assert!(parse_size("lots").is_err());
    }
}
