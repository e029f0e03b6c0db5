//! The two text formats `/metrics` speaks, and which one a scraper gets.
//!
//! prometheus-client writes OpenMetrics 1.0.0 only. Prometheus' text format 0.0.4 — the
//! default, and what most scrapers other than Prometheus itself expect — is derived from that
//! output line by line while it is written ([`Text004`]), in the same buffer, so either format
//! costs one string per scrape. Not here: what is exported (the parent module).

use std::fmt;

/// An exposition format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: the default.
    Prometheus,
    /// OpenMetrics 1.0.0 text, for a scraper that asks for it.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an exposition in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format for the `Accept` header values of a scrape: OpenMetrics when it is named with
    /// q > 0 and preferred at least as much as `text/plain` (as Prometheus itself asks, e.g.
    /// `application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`),
    /// else 0.0.4 — also for no `Accept`, `*/*`, or nothing we speak. The most specific of
    /// `text/plain`, `text/*` and `*/*` gives the text format's q; wildcards never choose
    /// OpenMetrics.
    pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Format {
        let mut openmetrics = 0.0_f32;
        // (specificity, q) of the most specific range that covers text/plain.
        let mut text = (0_u8, 0.0_f32);
        for range in accept.into_iter().flat_map(|value| value.split(',')) {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            let Some(q) = quality(parts) else { continue };
            let specificity = if media.eq_ignore_ascii_case("application/openmetrics-text") {
                openmetrics = openmetrics.max(q);
                continue;
            } else if media.eq_ignore_ascii_case("text/plain") {
                3
            } else if media.eq_ignore_ascii_case("text/*") {
                2
            } else if media == "*/*" {
                1
            } else {
                continue;
            };
            if specificity > text.0 {
                text = (specificity, q);
            } else if specificity == text.0 {
                text.1 = text.1.max(q);
            }
        }
        if openmetrics > 0.0 && openmetrics >= text.1 {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// The `q` of one media range's parameters: 1 when absent, `None` when malformed.
fn quality<'a>(params: impl Iterator<Item = &'a str>) -> Option<f32> {
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("q") {
            let q: f32 = value.trim().parse().ok()?;
            return (0.0..=1.0).contains(&q).then_some(q);
        }
    }
    Some(1.0)
}

/// A [`fmt::Write`] that is handed OpenMetrics text and keeps Prometheus text format 0.0.4.
///
/// Each line is rewritten in place once its newline arrives:
/// - a counter family `x` is typed `# TYPE x_total counter`, its help `# HELP x_total …`
///   (0.0.4 names the family after its samples); an info family `x` becomes the gauge
///   `x_info`; `unknown` becomes `untyped`;
/// - `# UNIT` lines, `# EOF`, `_created` samples and exemplars (`… # {…} v`) are dropped.
///
/// Help texts and label values are escaped the same way in both formats as long as help texts
/// hold no `"` or `\` (ours do not). prometheus-client writes no sample timestamps, which
/// would be seconds in OpenMetrics and milliseconds in 0.0.4.
#[derive(Debug, Default)]
pub(super) struct Text004 {
    out: String,
    /// Where the line being written starts in `out`.
    line: usize,
    /// Where the last `# HELP` line starts, until the `# TYPE` line that follows it.
    help: Option<usize>,
    /// The metric family being written, as OpenMetrics names it.
    family: String,
    kind: Kind,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Histogram,
    #[default]
    Other,
}

impl Text004 {
    pub(super) fn with_capacity(capacity: usize) -> Text004 {
        Text004 {
            out: String::with_capacity(capacity),
            ..Text004::default()
        }
    }

    pub(super) fn finish(self) -> String {
        self.out
    }

    /// Rewrites the line from `self.line` to the end of `out`, which ends with a newline.
    fn end_line(&mut self) {
        let start = self.line;
        let line = &self.out[start..self.out.len() - 1];
        if let Some(comment) = line.strip_prefix("# ") {
            if comment.starts_with("HELP ") {
                self.help = Some(start);
            } else if let Some(descriptor) = comment.strip_prefix("TYPE ") {
                let (name, kind) = descriptor.split_once(' ').unwrap_or((descriptor, ""));
                self.family.clear();
                self.family.push_str(name);
                let (suffix, kind) = match kind {
                    "counter" => ("_total", "counter"),
                    "info" => ("_info", "gauge"),
                    "gauge" => ("", "gauge"),
                    "histogram" => ("", "histogram"),
                    "summary" => ("", "summary"),
                    _ => ("", "untyped"),
                };
                self.kind = match kind {
                    "counter" => Kind::Counter,
                    "histogram" | "summary" => Kind::Histogram,
                    _ => Kind::Other,
                };
                self.out.truncate(start);
                if let Some(help) = self.help.take() {
                    let name_at = help + "# HELP ".len();
                    let help_names_family = self.out[name_at..]
                        .strip_prefix(self.family.as_str())
                        .is_some_and(|rest| rest.starts_with(' '));
                    if help_names_family {
                        self.out.insert_str(name_at + self.family.len(), suffix);
                    }
                }
                self.out.push_str("# TYPE ");
                self.out.push_str(&self.family);
                self.out.push_str(suffix);
                self.out.push(' ');
                self.out.push_str(kind);
                self.out.push('\n');
            } else if comment.starts_with("UNIT ") || comment == "EOF" {
                self.out.truncate(start);
            }
            return;
        }
        self.help = None;
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let created =
            self.kind != Kind::Other && name.strip_prefix(self.family.as_str()) == Some("_created");
        if created {
            self.out.truncate(start);
        } else if let Some(exemplar) = exemplar_at(line) {
            let kept = line[..exemplar].trim_end().len();
            self.out.truncate(start + kept);
            self.out.push('\n');
        }
    }
}

impl fmt::Write for Text004 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for piece in s.split_inclusive('\n') {
            self.out.push_str(piece);
            if piece.ends_with('\n') {
                self.end_line();
                self.line = self.out.len();
            }
        }
        Ok(())
    }
}

/// Where the exemplar of a sample line starts: its `#` outside any quoted label value.
fn exemplar_at(line: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, byte) in line.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'#' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fmt::Write;

    use super::*;

    fn negotiate(accept: &[&str]) -> Format {
        Format::negotiate(accept.iter().copied())
    }

    #[test]
    fn text_by_default_openmetrics_when_preferred() {
        use Format::*;
        for (accept, format) in [
            (&[][..], Prometheus),
            (&["*/*"], Prometheus),
            (&["text/plain;version=0.0.4"], Prometheus),
            (&["text/plain"], Prometheus),
            (&["application/json"], Prometheus),
            (&["application/openmetrics-text"], OpenMetrics),
            (&["Application/OpenMetrics-Text; version=1.0.0"], OpenMetrics),
            // Prometheus 2.x and 3.x.
            (
                &["application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"],
                OpenMetrics,
            ),
            (
                &["application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"],
                OpenMetrics,
            ),
            // Several header lines count as one list.
            (&["text/plain;q=0.5", "application/openmetrics-text"], OpenMetrics),
            (&["application/openmetrics-text;q=0.5, text/plain"], Prometheus),
            (&["application/openmetrics-text;q=0.5, text/*;q=0.5"], OpenMetrics),
            (&["application/openmetrics-text;q=0"], Prometheus),
            (&["application/openmetrics-text;q=0.5, */*"], Prometheus),
            // The specific text/plain outranks the wildcard.
            (&["application/openmetrics-text;q=0.5, text/plain;q=0.1, */*"], OpenMetrics),
            (&["application/openmetrics-text;q=bad"], Prometheus),
            (&["application/openmetrics-text;q=2"], Prometheus),
        ] {
            assert_eq!(negotiate(accept), format, "{accept:?}");
        }
    }

    fn convert(openmetrics: &str) -> String {
        let mut text = Text004::default();
        // Fragments as an encoder writes them: lines cut anywhere.
        for chunk in openmetrics.as_bytes().chunks(7) {
            text.write_str(std::str::from_utf8(chunk).unwrap()).unwrap();
        }
        text.finish()
    }

    #[test]
    fn openmetrics_becomes_text_004() {
        let openmetrics = concat!(
            "# HELP app_requests Requests.\n",
            "# TYPE app_requests counter\n",
            "app_requests_total{path=\"a # {b}\\\"\"} 3 # {trace_id=\"x\"} 1.0\n",
            "app_requests_created{path=\"a\"} 1700000000.0\n",
            "# HELP app_wait_seconds Wait.\n",
            "# TYPE app_wait_seconds histogram\n",
            "# UNIT app_wait_seconds seconds\n",
            "app_wait_seconds_sum 0.5\n",
            "app_wait_seconds_count 1\n",
            "app_wait_seconds_bucket{le=\"1.0\"} 1 # {} 0.5\n",
            "app_wait_seconds_bucket{le=\"+Inf\"} 1\n",
            "app_wait_seconds_created 1700000000.0\n",
            "# HELP app_build Build.\n",
            "# TYPE app_build info\n",
            "app_build_info{version=\"1\"} 1\n",
            "# TYPE app_odd unknown\n",
            "app_odd 2\n",
            "# HELP app_up_seconds Up.\n",
            "# TYPE app_up_seconds gauge\n",
            "# UNIT app_up_seconds seconds\n",
            "app_up_seconds 1.5\n",
            "# EOF\n",
        );
        let expected = concat!(
            "# HELP app_requests_total Requests.\n",
            "# TYPE app_requests_total counter\n",
            "app_requests_total{path=\"a # {b}\\\"\"} 3\n",
            "# HELP app_wait_seconds Wait.\n",
            "# TYPE app_wait_seconds histogram\n",
            "app_wait_seconds_sum 0.5\n",
            "app_wait_seconds_count 1\n",
            "app_wait_seconds_bucket{le=\"1.0\"} 1\n",
            "app_wait_seconds_bucket{le=\"+Inf\"} 1\n",
            "# HELP app_build_info Build.\n",
            "# TYPE app_build_info gauge\n",
            "app_build_info{version=\"1\"} 1\n",
            "# TYPE app_odd untyped\n",
            "app_odd 2\n",
            "# HELP app_up_seconds Up.\n",
            "# TYPE app_up_seconds gauge\n",
            "app_up_seconds 1.5\n",
        );
        assert_eq!(convert(openmetrics), expected);
    }
}
