//! Log lines for collectors, written directly: the text line when stderr is no terminal, and
//! the JSON line ([`JsonLine`]).
//!
//! With `[log] format = "text"` and stderr not a terminal, every request writes one line like
//!
//! ```text
//! 2026-11-30T04:16:00.123456Z  INFO nexus_sidecar::proxy: request upstream="api" status=200
//! ```
//!
//! The default formatter writes the same, but passes every level, target, field name and `=`
//! through its colour machinery even when colours are off, and formats the time field by field:
//! about 12,000 instructions a line, a quarter of a proxied request (callgrind). This writes
//! each part once. A terminal still gets the default, coloured format.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

mod json;
pub use json::JsonLine;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// `time LEVEL span{fields}:…: target: message key=value …`, as the default format without
/// colours: strings quoted, everything else as its `Debug`, `%value` fields as their `Display`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainLine;

impl<S, N> FormatEvent<S, N> for PlainLine
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
        // Events from the `log` crate carry their own target in fields; show it as the default
        // does. (No dependency logs through `log` today.)
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        timestamp(&mut writer)?;
        write!(writer, " {:>5} ", meta.level())?;
        // The sidecar opens no spans today; should one appear, it is shown as the default does.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                writer.write_char(':')?;
            }
            writer.write_char(' ')?;
        }
        writer.write_str(meta.target())?;
        writer.write_char(':')?;
        let mut fields = Fields::new(&mut writer, Style::Text);
        event.record(&mut fields);
        fields.result?;
        // The default writes `target: ` before the fields, ours ` field` for each.
        if !fields.any {
            writer.write_char(' ')?;
        }
        writer.write_char('\n')
    }
}

/// Now, as RFC 3339 with microseconds.
fn timestamp(w: &mut Writer<'_>) -> fmt::Result {
    timestamp_at(w, SystemTime::now())
}

/// humantime writes the time at a fraction of the default timer's cost, but only for the years
/// 1970 to 9999 (before, it panics); outside them, the default timer does.
fn timestamp_at(w: &mut Writer<'_>, time: SystemTime) -> fmt::Result {
    /// 10000-01-01T00:00:00Z.
    const YEAR_10000: u64 = 253_402_300_800;
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) if since.as_secs() < YEAR_10000 => {
            write!(w, "{}", humantime::format_rfc3339_micros(time))
        }
        _ => tracing_subscriber::fmt::time::SystemTime.format_time(w),
    }
}

/// Passes text on with the characters that could drive a terminal escaped, as the default
/// format does for messages and errors: ESC, BEL, BS, FF, DEL and the C1 controls.
struct Sanitized<'w, 'a>(&'w mut Writer<'a>);

impl fmt::Write for Sanitized<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            if !matches!(
                c,
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
            ) {
                continue;
            }
            self.0.write_str(&s[plain..i])?;
            match c {
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => write!(self.0, "\\x{:02x}", c as u32)?,
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

/// Writes `value`, sanitized when the writer asks for it.
fn sanitized(w: &mut Writer<'_>, value: fmt::Arguments<'_>) -> fmt::Result {
    match w.sanitizes_ansi_escapes() {
        true => fmt::write(&mut Sanitized(w), value),
        false => w.write_fmt(value),
    }
}

/// How a line writes its fields: ` message key=value` or `,"key":value`.
#[derive(Clone, Copy, PartialEq)]
enum Style {
    Text,
    Json,
}

/// Writes an event's fields in the order the event names them.
struct Fields<'w, 'a> {
    writer: &'w mut Writer<'a>,
    style: Style,
    result: fmt::Result,
    /// Whether any field was written.
    any: bool,
}

impl<'w, 'a> Fields<'w, 'a> {
    fn new(writer: &'w mut Writer<'a>, style: Style) -> Self {
        Fields {
            writer,
            style,
            result: Ok(()),
            any: false,
        }
    }

    /// ` name=` (the message has none), or `,"name":`.
    fn name(&mut self, field: &Field) -> fmt::Result {
        let name = field.name();
        match self.style {
            Style::Json => {
                self.writer.write_char(',')?;
                json::string(self.writer, name)?;
                self.writer.write_char(':')
            }
            Style::Text if name == "message" => self.writer.write_char(' '),
            Style::Text => {
                self.writer.write_char(' ')?;
                self.writer
                    .write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.writer.write_char('=')
            }
        }
    }

    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        // A `log` record's metadata, already in the line's target (the JSON line keeps them).
        if self.style == Style::Text && field.name().starts_with("log.") {
            return;
        }
        if self.result.is_ok() {
            self.any = true;
            self.result = self.name(field).and_then(|()| value(self.writer));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let style = self.style;
        if style == Style::Text && field.name() == "message" {
            return self.record_debug(field, &format_args!("{value}"));
        }
        self.field(field, |w| match style {
            Style::Json => json::string(w, value),
            Style::Text => {
                // What `{:?}` writes, without its per-character escaping when there is none.
                let plain = value
                    .bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
                match plain {
                    true => write!(w, "\"{value}\""),
                    false => write!(w, "{value:?}"),
                }
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        match self.style {
            Style::Json => self.field(field, |w| json::number(w, value)),
            Style::Text => self.record_debug(field, &value),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.style == Style::Json {
            return self.record_debug(field, &format_args!("{value}"));
        }
        // `error=outer error.sources=[inner, …]`, every part sanitized, as the default writes it.
        let name = field.name();
        self.field(field, |w| {
            sanitized(w, format_args!("{value}"))?;
            let Some(mut source) = value.source() else {
                return Ok(());
            };
            write!(w, " {name}.sources=[")?;
            loop {
                sanitized(w, format_args!("{source}"))?;
                match source.source() {
                    Some(next) => source = next,
                    None => break,
                }
                w.write_str(", ")?;
            }
            w.write_char(']')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let style = self.style;
        let message = field.name() == "message";
        self.field(field, |w| match style {
            Style::Json => json::debug(w, value),
            Style::Text if message => sanitized(w, format_args!("{value:?}")),
            Style::Text => write!(w, "{value:?}"),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// A log writer's output, kept for a test to read.
    #[derive(Clone, Default)]
    pub(super) struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        pub(super) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The lines `emit` logs, through `format` or (with `None`) the default format.
    fn lines(plain: bool, sanitize: bool, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_ansi_sanitization(sanitize)
            .with_writer(move || out.clone());
        match plain {
            true => {
                tracing::subscriber::with_default(builder.event_format(PlainLine).finish(), emit)
            }
            false => tracing::subscriber::with_default(builder.finish(), emit),
        }
        buffer.text()
    }

    fn emit() {
        let method = http::Method::GET;
        tracing::info!(upstream = "api", %method, path = "/v1/a \"b\"", status = 200u16, duration_ms = 3u64, replayed = false, "request");
        tracing::warn!(r#type = "x", error = %"boom: it failed", "request failed");
        tracing::info!(
            delta = -3i64,
            ratio = 0.25,
            note = "café\t",
            back = "a\\b",
            empty = "",
            "escapes"
        );
        let span = tracing::info_span!("reload", generation = 2);
        span.in_scope(|| tracing::info!(ok = true, "applied"));
        tracing::info!(nothing = tracing::field::Empty);
        awkward();
    }

    /// An error and its chain of sources.
    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl fmt::Display for Chain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    /// Events whose lines are easy to get wrong: terminal controls in a message, a message
    /// given as a string, errors with and without sources, a record from the `log` crate.
    pub(super) fn awkward() {
        use tracing_log::log;
        tracing::warn!("esc \x1b[31mred\x07 del\x7f c1\u{85} bs\x08 ff\x0c done");
        let text = "a str message \x1b";
        tracing::info!(message = text, k = 1);
        let inner = Chain("inner \x07", None);
        let chain = Chain(
            "outer \x1b",
            Some(Box::new(Chain("middle", Some(Box::new(inner))))),
        );
        let error: &(dyn std::error::Error + 'static) = &chain;
        tracing::error!(error, "failed");
        let alone: &(dyn std::error::Error + 'static) = &Chain("alone", None);
        tracing::error!(error = alone, "failed");
        log::Log::log(
            &tracing_log::LogTracer::new(),
            &log::Record::builder()
                .args(format_args!("from log {}", 1))
                .level(log::Level::Warn)
                .target("mylog")
                .build(),
        );
    }

    #[test]
    fn times_humantime_cannot_write_go_to_the_default_timer() {
        let at = |time: SystemTime| {
            let mut text = String::new();
            timestamp_at(&mut Writer::new(&mut text), time).unwrap();
            text
        };
        let second = std::time::Duration::from_secs(1);
        assert_eq!(at(UNIX_EPOCH + second), "1970-01-01T00:00:01.000000Z");
        // The default timer writes the current time, whatever it was given.
        let is_now = |text: String| {
            let before = SystemTime::now() - 60 * second;
            let written = humantime::parse_rfc3339(&text).unwrap();
            assert!(written >= before && written <= SystemTime::now(), "{text}");
        };
        is_now(at(UNIX_EPOCH - second));
        let year_10000 = UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_800);
        assert_eq!(at(year_10000 - second), "9999-12-31T23:59:59.000000Z");
        is_now(at(year_10000));
    }

    /// Everything after the timestamp, which differs between two runs.
    fn untimed(text: &str) -> Vec<&str> {
        text.lines().map(|l| l.split_once(' ').unwrap().1).collect()
    }

    #[test]
    fn the_plain_line_is_the_default_line_without_colours() {
        let plain = lines(true, true, emit);
        let default = lines(false, true, emit);
        assert_eq!(untimed(&plain), untimed(&default), "{plain}\n{default}");
        assert_eq!(untimed(&plain).len(), 10, "{plain}");
        let raw = lines(true, false, emit);
        assert_eq!(untimed(&raw), untimed(&lines(false, false, emit)), "{raw}");
        assert!(raw.contains("esc \x1b[31mred\x07"), "{raw}");
        assert!(
            plain.contains(r"esc \x1b[31mred\x07 del\x7f c1\u{85}"),
            "{plain}"
        );
        assert!(plain.contains("mylog: from log 1\n"), "{plain}");
        assert_eq!(
            untimed(&plain)[0],
            r#" INFO nexus_sidecar::logline::tests: request upstream="api" method=GET path="/v1/a \"b\"" status=200 duration_ms=3 replayed=false"#
        );
        let time = plain.split(' ').next().unwrap();
        let parsed = humantime::parse_rfc3339(time).unwrap();
        assert!(parsed <= SystemTime::now());
    }
}
