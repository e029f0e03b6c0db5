//! The shape of the file: every key one the configuration knows, else a problem at its line.
//!
//! The file is read once as a bare tree of keys (with where each is written) and walked against
//! the tables the configuration has: every unknown key is reported, not only the first, with
//! the near miss (`client_secert` → `client_secret`) or the table it belongs in. Each table's
//! keys are the fields of its `raw` struct, read from serde, so they cannot drift apart. The
//! walk also remembers where every key is, so a problem found by position (a value of the
//! wrong type) can be named by its key. Types and values are `raw`'s and `validate`'s business.

use std::cell::Cell;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::raw::{RawAdmin, RawAuth, RawConfig, RawLimits, RawLog, RawSharedCache, RawUpstream};
use super::suggest::did_you_mean;
use super::{line_of, Problem};

/// A TOML document reduced to what the walk needs: tables with their keys' places, and the
/// strings that name upstreams.
#[derive(Debug)]
pub(super) enum Node {
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Node>),
    Str(String),
    Other,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        loop {
            match map.next_key::<Spanned<String>>() {
                Ok(Some(key)) => {
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(None) => return Ok(Node::Table(entries)),
                // toml hands a datetime over as a one-entry map whose key has no place in the
                // file: it is a value, not a table.
                Err(_) if entries.is_empty() => return Ok(Node::Other),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The tables of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Root,
    Admin,
    Log,
    Limits,
    SharedCache,
    Upstream,
    Auth,
}

/// What a key of a table holds, when it is a table itself.
enum Child {
    One(Table),
    /// An array of tables, such as `[[upstream]]`.
    Many(Table),
}

impl Table {
    /// In the order a misplaced key is looked for elsewhere (a `timeout` in `[[upstream]]` was
    /// meant for `[upstream.auth]` more likely than for `[shared_cache]`).
    const ALL: [Table; 7] = [
        Table::Upstream,
        Table::Auth,
        Table::SharedCache,
        Table::Log,
        Table::Limits,
        Table::Admin,
        Table::Root,
    ];

    fn title(self) -> &'static str {
        match self {
            Table::Root => "the top level",
            Table::Admin => "[admin]",
            Table::Log => "[log]",
            Table::Limits => "[limits]",
            Table::SharedCache => "[shared_cache]",
            Table::Upstream => "[[upstream]]",
            Table::Auth => "[upstream.auth]",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            Table::Root => fields_of::<RawConfig>(),
            Table::Admin => fields_of::<RawAdmin>(),
            Table::Log => fields_of::<RawLog>(),
            Table::Limits => fields_of::<RawLimits>(),
            Table::SharedCache => fields_of::<RawSharedCache>(),
            Table::Upstream => fields_of::<RawUpstream>(),
            Table::Auth => fields_of::<RawAuth>(),
        }
    }

    fn child(self, key: &str) -> Option<Child> {
        match (self, key) {
            (Table::Root, "admin") => Some(Child::One(Table::Admin)),
            (Table::Root, "log") => Some(Child::One(Table::Log)),
            (Table::Root, "limits") => Some(Child::One(Table::Limits)),
            (Table::Root, "shared_cache") => Some(Child::One(Table::SharedCache)),
            (Table::Root, "upstream") => Some(Child::Many(Table::Upstream)),
            (Table::Upstream, "auth") => Some(Child::One(Table::Auth)),
            _ => None,
        }
    }
}

/// The field names serde expects for `T`: its derived `Deserialize` hands them to
/// `deserialize_struct`, which this deserializer records and refuses.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let fields = Cell::new(&[][..]);
    let _refused = T::deserialize(FieldsProbe(&fields));
    fields.get()
}

struct FieldsProbe<'a>(&'a Cell<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldsProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only structs have fields"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.set(fields);
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// One key as written: where, on which line, and its dotted name (`upstream.nuvy.auth.scope`)
/// also with upstreams by position (`upstream.#1.auth.scope`), which names can't be: they
/// may repeat.
#[derive(Debug)]
struct Place {
    span: Range<usize>,
    line: usize,
    path: String,
    by_position: String,
}

/// The keys of a file: where each one is, and the ones the configuration does not know.
#[derive(Debug)]
pub(super) struct Keys {
    /// Every key of a known table, in file order.
    places: Vec<Place>,
    /// One problem per unknown key.
    pub unknown: Vec<Problem>,
    /// The keys the unknown ones were probably meant to be (`upstream.a.auth.client_secret`
    /// for `client_secert`): not also reported missing.
    meant: Vec<String>,
}

impl Keys {
    /// Walks `tree`, the document `text` parsed as a [`Node`].
    pub fn check(tree: &Node, text: &str) -> Keys {
        let mut keys = Keys {
            places: Vec::new(),
            unknown: Vec::new(),
            meant: Vec::new(),
        };
        if let Node::Table(entries) = tree {
            keys.table(text, entries, Table::Root, ("", ""));
        }
        keys.places.sort_by_key(|p| p.span.start);
        keys
    }

    /// Walks the `entries` of a table of kind `at`, whose path is `(by name, by position)`.
    fn table(
        &mut self,
        text: &str,
        entries: &[(Spanned<String>, Node)],
        at: Table,
        path: (&str, &str),
    ) {
        let join = |prefix: &str, name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}.{name}")
            }
        };
        for (key, value) in entries {
            let name = key.get_ref();
            let (path, by_position) = (join(path.0, name), join(path.1, name));
            let line = line_of(text, key.span().start);
            self.places.push(Place {
                span: key.span(),
                line,
                path: path.clone(),
                by_position: by_position.clone(),
            });
            if !at.keys().contains(&name.as_str()) {
                if let Some(near) = did_you_mean(name, at.keys().iter().copied()) {
                    let parent = path.strip_suffix(name.as_str()).unwrap_or_default();
                    self.meant.push(format!("{parent}{near}"));
                }
                let message = unknown(at, name);
                self.unknown.push(Problem {
                    line,
                    key: path,
                    message,
                });
                continue;
            }
            // A value of the wrong type (`admin = 1`) is the parse's to report; a lone
            // `[upstream]` is walked as the one upstream it was meant to be.
            let tables: Vec<&[(Spanned<String>, Node)]> = match value {
                Node::Table(entries) => vec![entries],
                Node::Array(items) => items
                    .iter()
                    .filter_map(|item| match item {
                        Node::Table(entries) => Some(entries.as_slice()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            match (at.child(name), value) {
                (Some(Child::One(table)), Node::Table(entries)) => {
                    self.table(text, entries, table, (&path, &by_position))
                }
                (Some(Child::Many(table)), _) => {
                    for (i, entries) in tables.into_iter().enumerate() {
                        let label = upstream_label(i, entries_name(entries));
                        let named = format!("{path}.{label}");
                        let placed = format!("{by_position}.#{}", i + 1);
                        self.table(text, entries, table, (&named, &placed));
                    }
                }
                _ => {}
            }
        }
    }

    /// The problem for a value at `span` (a value of the wrong type, or a table where a value
    /// belongs): named by the key it belongs to, on that key's line.
    pub fn problem(&self, text: &str, span: Option<Range<usize>>, message: String) -> Problem {
        let place = span.and_then(|span| {
            // The key written inside the span (a table's header), else the last one before it
            // (a value's own key comes right before it).
            self.places
                .iter()
                .find(|p| span.contains(&p.span.start))
                .or_else(|| {
                    self.places
                        .iter()
                        .take_while(|p| p.span.start <= span.start)
                        .last()
                })
                .map(|p| (p.line, p.path.clone()))
                .or(Some((line_of(text, span.start), String::new())))
        });
        let (line, key) = place.unwrap_or((1, String::new()));
        Problem {
            line,
            key: if key.is_empty() { "(file)".into() } else { key },
            message,
        }
    }

    /// Whether an unknown key was probably meant to be `path`.
    pub fn meant(&self, path: &str) -> bool {
        self.meant.iter().any(|m| m == path)
    }

    /// The line of the first key called `path`.
    pub fn line(&self, path: &str) -> Option<usize> {
        self.places.iter().find(|p| p.path == path).map(|p| p.line)
    }

    /// Where the key `path` is, with upstreams by position (`upstream.#2.auth`).
    pub fn span_by_position(&self, path: &str) -> Option<Range<usize>> {
        self.places
            .iter()
            .find(|p| p.by_position == path)
            .map(|p| p.span.clone())
    }
}

fn entries_name(entries: &[(Spanned<String>, Node)]) -> Option<&str> {
    entries.iter().find_map(|(k, v)| match v {
        Node::Str(s) if k.get_ref() == "name" => Some(s.as_str()),
        _ => None,
    })
}

/// How an upstream is named in problems: its `name`, else its place (`#2`, counting from 1).
pub(super) fn upstream_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => name.to_owned(),
        None => format!("#{}", index + 1),
    }
}

/// Why `key` is not a key of `table`, with what was probably meant.
fn unknown(table: Table, key: &str) -> String {
    let here = table.keys();
    if let Some(near) = did_you_mean(key, here.iter().copied()) {
        return format!("unknown field `{key}`; did you mean `{near}`?");
    }
    let list = here.join(", ");
    match Table::ALL
        .into_iter()
        .find(|t| *t != table && t.keys().contains(&key))
    {
        Some(other) => format!(
            "unknown field `{key}` in {}: it belongs in {}; {} takes: {list}",
            table.title(),
            other.title(),
            table.title()
        ),
        None => format!("unknown field `{key}`; expected one of: {list}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(text: &str) -> Keys {
        Keys::check(&toml::from_str(text).unwrap(), text)
    }

    #[test]
    fn field_lists_come_from_the_raw_structs() {
        assert_eq!(
            Table::Root.keys(),
            [
                "shutdown_grace",
                "admin",
                "log",
                "limits",
                "shared_cache",
                "upstream"
            ]
        );
        assert_eq!(Table::SharedCache.keys(), ["url", "key_prefix", "timeout"]);
        assert!(Table::Auth.keys().contains(&"shared"));
        assert!(Table::Upstream.keys().contains(&"allow_remote"));
        assert!(Table::Auth.keys().contains(&"client_secret"));
        assert_eq!(Table::Limits.keys().len(), 5);
    }

    #[test]
    fn every_unknown_key_is_found_at_its_line() {
        let k = check(
            "shutdown = \"1s\"\n[log]\nformt = \"json\"\n[limts]\nmax = 1\n[[upstream]]\nname = \"a\"\nlisten = \"1\"\ntimeout = \"1s\"\n[upstream.auth]\nclient_secert = \"x\"\n[[upstream]]\nlisten = \"2\"\nauth = { flow = \"none\", flwo = 1 }\n",
        );
        let found: Vec<(usize, &str)> =
            k.unknown.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            found,
            [
                (1, "shutdown"),
                (3, "log.formt"),
                (4, "limts"),
                (9, "upstream.a.timeout"),
                (11, "upstream.a.auth.client_secert"),
                (14, "upstream.#2.auth.flwo"),
            ]
        );
        let message = |key: &str| &k.unknown.iter().find(|p| p.key == key).unwrap().message;
        assert_eq!(
            message("upstream.a.auth.client_secert"),
            "unknown field `client_secert`; did you mean `client_secret`?"
        );
        assert_eq!(
            message("log.formt"),
            "unknown field `formt`; did you mean `format`?"
        );
        assert_eq!(
            message("limts"),
            "unknown field `limts`; did you mean `limits`?"
        );
        let timeout = message("upstream.a.timeout");
        assert!(
            timeout.contains("belongs in [upstream.auth]") && timeout.contains("request_timeout"),
            "{timeout}"
        );
        assert!(
            message("shutdown").contains("did you mean `shutdown_grace`"),
            "{}",
            message("shutdown")
        );
    }

    #[test]
    fn free_form_tables_and_datetimes_are_not_walked() {
        let k = check(
            "when = 1979-05-27T07:32:00Z\n[[upstream]]\nname = \"a\"\nheaders = { anything = \"x\" }\n[upstream.auth]\nextra_params = { audience = \"y\" }\nclient_id = { env = \"X\" }\n",
        );
        assert_eq!(k.unknown.len(), 1, "{:?}", k.unknown);
        assert_eq!(k.unknown[0].key, "when");
    }

    #[test]
    fn a_value_is_named_by_its_key() {
        let text = "[[upstream]]\nname = \"a\"\nretry_on = [\n  401,\n  \"x\",\n]\n";
        let k = check(text);
        let start = text.find('[').unwrap();
        let array = text.find("[\n").unwrap();
        let p = k.problem(text, Some(array..text.len() - 1), "bad".into());
        assert_eq!((p.line, p.key.as_str()), (3, "upstream.a.retry_on"));
        let p = k.problem(text, Some(start..start + 12), "table".into());
        assert_eq!(p.key, "upstream");
        assert_eq!(k.line("upstream.a.name"), Some(2));
        assert_eq!(k.span_by_position("upstream.#1.retry_on"), Some(24..32));
    }

    #[test]
    fn a_lone_upstream_table_is_walked_and_misspellings_are_meant_keys() {
        let k = check(
            "[upstream]\nname = \"a\"\nlistn = \"1\"\n[upstream.auth]\nclient_secert = \"s\"\n",
        );
        let keys: Vec<&str> = k.unknown.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["upstream.a.listn", "upstream.a.auth.client_secert"]);
        assert!(k.meant("upstream.a.listen"));
        assert!(k.meant("upstream.a.auth.client_secret"));
        assert!(!k.meant("upstream.a.auth.client_id"));
    }
}
