//! The JSON line: what tracing-subscriber's `json().flatten_event(true)` writes, written
//! directly instead of through serde's map serializer and its per-field visitor (about 18,700
//! instructions a request line, callgrind). Events inside a span, which the sidecar does not
//! open today, are left to that formatter.

use std::fmt::{self, Write as _};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Json, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use tracing_log::NormalizeEvent;

use super::{timestamp, Fields, Style};

/// `{"timestamp":…,"level":…,<the event's fields>,"target":…}`: strings and `Debug` values as
/// JSON strings, integers and booleans as themselves.
#[derive(Debug)]
pub struct JsonLine {
    /// For events inside a span: the span's fields are the other formatter's to write.
    in_span: Format<Json>,
}

impl Default for JsonLine {
    fn default() -> JsonLine {
        JsonLine {
            in_span: tracing_subscriber::fmt::format().json().flatten_event(true),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.parent().is_some() || ctx.lookup_current().is_some() {
            return self.in_span.format_event(ctx, writer, event);
        }
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        timestamp(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields::new(&mut writer, Style::Json);
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// A float as serde_json writes it (`null` for what JSON cannot hold); floats are rare.
pub(super) fn number(w: &mut Writer<'_>, value: f64) -> fmt::Result {
    match serde_json::to_string(&value) {
        Ok(number) => w.write_str(&number),
        Err(_) => Err(fmt::Error),
    }
}

/// A `Debug` value as a JSON string.
pub(super) fn debug(w: &mut Writer<'_>, value: &dyn fmt::Debug) -> fmt::Result {
    w.write_char('"')?;
    write!(Escaped(w), "{value:?}")?;
    w.write_char('"')
}

/// `text` as a JSON string.
pub(super) fn string(w: &mut Writer<'_>, text: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(text)?;
    w.write_char('"')
}

/// Writes what it is given JSON-escaped, as serde_json does: `"`, `\` and control characters.
struct Escaped<'w, 'a>(&'w mut Writer<'a>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, byte) in s.bytes().enumerate() {
            let short = match byte {
                b'"' => Some("\\\""),
                b'\\' => Some("\\\\"),
                b'\n' => Some("\\n"),
                b'\r' => Some("\\r"),
                b'\t' => Some("\\t"),
                0x08 => Some("\\b"),
                0x0c => Some("\\f"),
                0..=0x1f => None,
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            match short {
                Some(short) => self.0.write_str(short)?,
                None => write!(self.0, "\\u{byte:04x}")?,
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::tests::Buffer;
    use super::*;
    use serde_json::Value;

    /// The lines `emit` logs, through [`JsonLine`] or (`false`) tracing-subscriber's own, each
    /// with its timestamp checked and cut out (the two runs differ there).
    fn lines(ours: bool, emit: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let builder = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || out.clone());
        match ours {
            true => tracing::subscriber::with_default(
                builder.event_format(JsonLine::default()).finish(),
                emit,
            ),
            false => tracing::subscriber::with_default(builder.finish(), emit),
        }
        buffer
            .text()
            .lines()
            .map(|line| {
                let rest = line.strip_prefix("{\"timestamp\":\"").unwrap();
                let (time, rest) = rest.split_once('"').unwrap();
                humantime::parse_rfc3339(time).unwrap();
                rest.to_owned()
            })
            .collect()
    }

    fn emit() {
        let method = http::Method::POST;
        tracing::info!(upstream = "api", %method, path = "/v1/a \"b\"", status = 200u16, duration_ms = 3u64, replayed = false, request_id = "c3090f1e", "request");
        tracing::warn!(r#type = "x", error = %"boom:\n\t\u{1}\u{1b}\u{7f} ünï", delta = -3i64, ratio = 0.25, "request failed");
        tracing::error!(huge = f64::NAN, debug = ?("a\\b", 'c'), "odd values");
        let span = tracing::info_span!("reload", generation = 2);
        span.in_scope(|| tracing::info!(ok = true, "applied"));
        super::super::tests::awkward();
    }

    #[test]
    fn the_json_line_is_byte_for_byte_tracing_subscribers() {
        let ours = lines(true, emit);
        assert_eq!(ours, lines(false, emit));
        assert_eq!(ours.len(), 9);
        assert!(ours[8].ends_with(r#","target":"mylog"}"#), "{}", ours[8]);
        let request: Value = serde_json::from_str(&format!("{{\"t\":0{}", ours[0])).unwrap();
        assert_eq!(request["status"], 200);
        assert_eq!(request["method"], "POST");
        assert_eq!(request["target"], "nexus_sidecar::logline::json::tests");
        let failed: Value = serde_json::from_str(&format!("{{\"t\":0{}", ours[1])).unwrap();
        assert_eq!(failed["error"], "boom:\n\t\u{1}\u{1b}\u{7f} ünï");
    }
}
