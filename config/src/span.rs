//! Turns a serde/TOML error into a [`ConfigError`] with a key path.
//!
//! `toml::from_str` fails on syntax errors, wrong value types and unknown
//! keys. Its error carries a message and the byte span of the offending
//! key, value or table, but not the key path. This module re-parses the
//! source with `toml_edit`, which keeps spans, finds the innermost key or
//! value whose span covers the error (`providers[1].kind`, or
//! `consumers[0].keys[1].bogus` for an unknown key) and adds the line and
//! column to the message. A syntax error leaves the document unparseable, so
//! its path stays empty and only the line/column locate it.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

use crate::ConfigError;

/// Converts a deserialization error of `source` into a [`ConfigError`].
pub(crate) fn toml_error(source: &str, error: &toml::de::Error) -> ConfigError {
    // Multi-line messages (syntax errors list what was expected) are folded
    // so that `ConfigErrors` keeps one error per line.
    let mut message = error.message().trim().replace('\n', "; ");
    let mut path = String::new();
    if let Some(span) = error.span() {
        let (line, column) = line_column(source, span.start);
        message = format!("{message} (line {line}, column {column})");
        path = key_path_at(source, &span);
    }
    ConfigError { path, message }
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Key path of the innermost key or value covering `span`; empty when
/// nothing does (an error about the whole file, or unparseable TOML).
fn key_path_at(source: &str, span: &Range<usize>) -> String {
    let Ok(document) = ImDocument::parse(source) else {
        return String::new();
    };
    let mut path = String::new();
    if let Some(segments) = in_table(document.as_table(), span) {
        for segment in segments.iter().rev() {
            match segment {
                Segment::Key(key) if path.is_empty() => path.push_str(&path_key(key)),
                Segment::Key(key) => {
                    path.push('.');
                    path.push_str(&path_key(key));
                }
                Segment::Index(i) => path.push_str(&format!("[{i}]")),
            }
        }
    }
    path
}

/// A key as one segment of a key path: bare when TOML allows it bare
/// (`A-Z a-z 0-9 _ -`), else quoted the TOML way, so that a key holding a
/// dot stays one segment: `model_limits."gpt-3.5-turbo"`.
pub(crate) fn path_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_string()
    } else {
        format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// One step of a key path.
enum Segment {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Whether `outer` covers `inner`.
fn covers(outer: Option<Range<usize>>, inner: &Range<usize>) -> bool {
    outer.is_some_and(|o| o.start <= inner.start && inner.end <= o.end)
}

/// Searches a table; segments come back innermost first.
fn in_table(table: &Table, span: &Range<usize>) -> Option<Vec<Segment>> {
    for (name, item) in table.iter() {
        let key_span = table.key(name).and_then(|k| k.span());
        if covers(key_span, span) {
            return Some(vec![Segment::Key(name.to_string())]);
        }
        // Implicit tables (`a` in `[a.b]`) have no span: look inside.
        let unspanned = item.span().is_none();
        if unspanned || covers(item.span(), span) {
            if let Some(mut inner) = in_item(item, span) {
                inner.push(Segment::Key(name.to_string()));
                return Some(inner);
            }
            if !unspanned {
                return Some(vec![Segment::Key(name.to_string())]);
            }
        }
    }
    None
}

/// Searches below an item; `None` when no child covers `span`.
fn in_item(item: &Item, span: &Range<usize>) -> Option<Vec<Segment>> {
    match item {
        Item::Table(table) => in_table(table, span),
        Item::ArrayOfTables(array) => array.iter().enumerate().find_map(|(i, table)| {
            covers(table.span(), span).then(|| {
                let mut inner = in_table(table, span).unwrap_or_default();
                inner.push(Segment::Index(i));
                inner
            })
        }),
        Item::Value(value) => in_value(value, span),
        Item::None => None,
    }
}

/// Searches below an inline value.
fn in_value(value: &Value, span: &Range<usize>) -> Option<Vec<Segment>> {
    match value {
        Value::Array(array) => array.iter().enumerate().find_map(|(i, value)| {
            covers(value.span(), span).then(|| {
                let mut inner = in_value(value, span).unwrap_or_default();
                inner.push(Segment::Index(i));
                inner
            })
        }),
        Value::InlineTable(table) => table.iter().find_map(|(name, value)| {
            let key_span = table.key(name).and_then(|k| k.span());
            if covers(key_span, span) {
                return Some(vec![Segment::Key(name.to_string())]);
            }
            covers(value.span(), span).then(|| {
                let mut inner = in_value(value, span).unwrap_or_default();
                inner.push(Segment::Key(name.to_string()));
                inner
            })
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{line_column, path_key};

    #[test]
    fn keys_are_quoted_only_when_toml_needs_it() {
        assert_eq!(path_key("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(path_key("max_body_bytes"), "max_body_bytes");
        assert_eq!(path_key("gpt-3.5-turbo"), "\"gpt-3.5-turbo\"");
        assert_eq!(path_key(""), "\"\"");
        assert_eq!(path_key("a\"b\\c"), r#""a\"b\\c""#);
    }

    #[test]
    fn line_column_counts_from_one() {
        let source = "a = 1\nbé = 2\n";
        assert_eq!(line_column(source, 0), (1, 1));
        assert_eq!(line_column(source, 4), (1, 5));
        assert_eq!(line_column(source, 6), (2, 1));
        // 'é' is two bytes but one column: byte 10 is the '='.
        assert_eq!(line_column(source, 9), (2, 3));
        assert_eq!(line_column(source, 10), (2, 4));
        assert_eq!(line_column(source, 999), (3, 1));
    }
}
