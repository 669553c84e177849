//! Which `[[models]]` entry serves a requested model name, and where it goes.
//!
//! `validate` builds these from a model's `match`, `variants`, `sticky` and
//! `variant_header`. The router in `edge` calls [`crate::Config::route`] with
//! the name the client sent: exact names first, then the patterns
//! ([`ModelMatch`]) in file order. The captures it gets back fill the
//! templates of the chosen target's model name through [`expand`] (`$1`,
//! `*`). When the entry has [`Variant`]s (a canary or A/B split), `edge`
//! takes the variant named by the request's `variant_header` if there is
//! one, else hashes the [`Sticky`] key and picks by weight
//! ([`crate::Model::pick_variant`]), so that one user keeps hitting one
//! variant. Nothing here keeps state.

use std::fmt;

use regex::Regex;

use crate::Target;

/// Which requested model names a `[[models]]` entry serves.
#[derive(Debug, Clone)]
pub enum ModelMatch {
    /// `match = "gpt-4o"`, or no `match` (then the entry's `name`): this
    /// name only. Exact names are tried before every pattern.
    Exact(String),
    /// `match = "gpt-4o-*"`, `"*-mini"`, `"claude-*-latest"`: each `*`
    /// stands for any run of characters, the empty one included.
    Wildcard(String),
    /// `match = "re:^claude-(.*)$"`: a regular expression (the `regex`
    /// crate's syntax) searched for in the name; anchor it with `^` and `$`
    /// to make it cover the whole name. Its groups feed `$1`..`$9`,
    /// `${N}` and `${name}` in the upstream model names.
    Regex(Regex),
}

impl ModelMatch {
    /// The prefix that marks a regular expression in `match`.
    pub const REGEX_PREFIX: &'static str = "re:";

    /// The captures of `requested`, or `None` when this does not serve it.
    /// `[0]` is always the whole requested name; for a regex, `[1..]` are
    /// its groups in order (empty for a group that did not take part).
    pub fn captures(&self, requested: &str) -> Option<Vec<String>> {
        match self {
            ModelMatch::Exact(name) => (name == requested).then(|| vec![requested.to_string()]),
            ModelMatch::Wildcard(pattern) => {
                wildcard_matches(pattern, requested).then(|| vec![requested.to_string()])
            }
            ModelMatch::Regex(regex) => {
                let found = regex.captures(requested)?;
                let groups = found
                    .iter()
                    .skip(1)
                    .map(|group| group.map_or(String::new(), |m| m.as_str().to_string()));
                Some(
                    std::iter::once(requested.to_string())
                        .chain(groups)
                        .collect(),
                )
            }
        }
    }

    /// How many groups `$1`.. may refer to: a regex's capture groups, none
    /// for an exact name or a wildcard.
    pub fn groups(&self) -> usize {
        match self {
            ModelMatch::Regex(regex) => regex.captures_len().saturating_sub(1),
            ModelMatch::Exact(_) | ModelMatch::Wildcard(_) => 0,
        }
    }

    /// Whether this is an exact name (tried before the patterns).
    pub fn is_exact(&self) -> bool {
        matches!(self, ModelMatch::Exact(_))
    }

    /// Parses the config spelling; the error is the message to report.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty; remove it to serve the model's name".into());
        }
        if let Some(pattern) = text.strip_prefix(Self::REGEX_PREFIX) {
            if pattern.is_empty() {
                return Err("empty regex; use \"*\" to serve every name".into());
            }
            return Regex::new(pattern)
                .map(ModelMatch::Regex)
                .map_err(|e| one_line(&e));
        }
        if text.contains('*') {
            Ok(ModelMatch::Wildcard(text.to_string()))
        } else {
            Ok(ModelMatch::Exact(text.to_string()))
        }
    }
}

/// The regex crate's message on one line, as every config error is.
///
/// A syntax error reads "regex parse error:", the pattern and a line of
/// carets under the bad part (both indented by four spaces), then
/// "error: <what>"; that becomes "regex parse error: <what> (column N)".
/// Any other shape (a multi-line pattern, a size limit) has its lines
/// joined with "; ".
fn one_line(error: &regex::Error) -> String {
    const INDENT: usize = 4;
    let text = error.to_string();
    let lines: Vec<&str> = text.lines().collect();
    if let [header, _pattern, carets, last] = lines.as_slice() {
        // The carets line starts with spaces only, so bytes count columns.
        if let (Some(what), Some(caret)) = (last.strip_prefix("error: "), carets.find('^')) {
            let column = caret.saturating_sub(INDENT) + 1;
            return format!("{} {what} (column {column})", header.trim_end());
        }
    }
    let lines: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

/// The config spelling: `gpt-4o`, `gpt-4o-*` or `re:^claude-(.*)$`.
impl fmt::Display for ModelMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelMatch::Exact(text) | ModelMatch::Wildcard(text) => f.write_str(text),
            ModelMatch::Regex(regex) => write!(f, "{}{}", Self::REGEX_PREFIX, regex.as_str()),
        }
    }
}

// `Regex` has no `==`; two matches are equal when written the same way,
// which keeps `Model`'s `PartialEq`/`Eq` derives.
impl PartialEq for ModelMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ModelMatch::Exact(a), ModelMatch::Exact(b))
            | (ModelMatch::Wildcard(a), ModelMatch::Wildcard(b)) => a == b,
            (ModelMatch::Regex(a), ModelMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for ModelMatch {}

/// Whether `name` fits `pattern`, where each `*` stands for any run of
/// characters. The literal pieces between stars are found leftmost-first,
/// which finds a match whenever there is one: taking an earlier occurrence
/// of a piece never leaves less room for the pieces after it.
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let mut middle: Vec<&str> = pieces.collect();
    // No star: the prefix had to be the whole name.
    let Some(last) = middle.pop() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.split_once(piece) {
            Some((_, after)) => rest = after,
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// One arm of a canary or A/B split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Unique within its model; 1..=64 of `A-Z a-z 0-9 . _ -` (it goes into
    /// metric labels and the model's `variant_header`).
    pub name: String,
    /// Share of requests, relative to the sum of the model's weights;
    /// 0..=10000. 0 takes no traffic except requests that name it in the
    /// `variant_header`.
    pub weight: u32,
    /// Where its requests go first; the model name is a template for
    /// [`expand`].
    pub target: Target,
    /// Tried in order after `target`, as [`crate::Model::fallbacks`].
    pub fallbacks: Vec<Target>,
}

/// What keeps a user on one variant of a split: the key that is hashed to
/// pick it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Sticky {
    /// `"consumer"`: the consumer's name; the default.
    #[default]
    Consumer,
    /// `"header:x-session-id"`: this request header (name lower-cased);
    /// requests without it pick at random.
    Header(String),
    /// `"none"`: every request picks at random by weight.
    None,
}

impl Sticky {
    /// The prefix of the header form.
    const HEADER_PREFIX: &'static str = "header:";

    /// Parses the config spelling; `None` for anything else, including a
    /// `header:` form whose name is not a valid header name.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "consumer" => Some(Sticky::Consumer),
            "none" => Some(Sticky::None),
            _ => {
                let name = text.strip_prefix(Self::HEADER_PREFIX)?;
                is_header_name(name).then(|| Sticky::Header(name.to_ascii_lowercase()))
            }
        }
    }
}

/// Whether `name` is an HTTP field name: one or more `tchar`s
/// (RFC 9110 section 5.1 and 5.6.2).
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Fills an upstream model template with the captures of a route.
///
/// `$0`..`$9` and `${N}` become `captures[N]`; `*` and `$0` the whole
/// requested name (`captures[0]`); `$$` a single `$`. A group beyond
/// `captures` becomes empty. Anything else is copied, including a `$` before
/// another character and `${name}` (`validate` has already turned named
/// groups into numbers). `$10` is group 1 followed by a `0`; write `${10}`.
pub fn expand(template: &str, captures: &[String]) -> String {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece {
            Piece::Text(text) | Piece::Unclosed(text) => out.push_str(text),
            Piece::Dollar => out.push('$'),
            Piece::Group(index, _) => {
                out.push_str(captures.get(index).map_or("", String::as_str));
            }
            Piece::Name(name) => {
                out.push_str("${");
                out.push_str(name);
                out.push('}');
            }
        }
    }
    out
}

/// One piece of an upstream model template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Copied as is.
    Text(&'a str),
    /// `$$`: one `$`.
    Dollar,
    /// `$0`..`$9`, `${N}` or `*`: group N, with the text as written.
    Group(usize, &'a str),
    /// `${name}`: a named group (possibly empty).
    Name(&'a str),
    /// `${` without a closing `}`: the rest of the template.
    Unclosed(&'a str),
}

/// Splits a template into pieces; never fails, see [`Piece::Unclosed`].
pub(crate) fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find(['$', '*']) {
        let (text, tail) = rest.split_at(at);
        if !text.is_empty() {
            out.push(Piece::Text(text));
        }
        let (piece, after) = special(tail);
        out.push(piece);
        rest = after;
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// The piece at the start of `tail`, which starts with `$` or `*`, and the
/// text after it. Every index used is that of an ASCII byte, so every split
/// falls on a character boundary.
fn special(tail: &str) -> (Piece<'_>, &str) {
    if tail.starts_with('*') {
        let (star, after) = tail.split_at(1);
        return (Piece::Group(0, star), after);
    }
    match tail.as_bytes().get(1) {
        Some(b'$') => (Piece::Dollar, tail.get(2..).unwrap_or_default()),
        Some(digit @ b'0'..=b'9') => {
            let (raw, after) = tail.split_at(2);
            (Piece::Group(usize::from(digit - b'0'), raw), after)
        }
        Some(b'{') => match tail.find('}') {
            None => (Piece::Unclosed(tail), ""),
            Some(close) => {
                let (raw, after) = tail.split_at(close + 1);
                let inner = raw.get(2..close).unwrap_or_default();
                let piece = if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
                    // Too many digits for a usize is simply a group no
                    // pattern has.
                    Piece::Group(inner.parse().unwrap_or(usize::MAX), raw)
                } else {
                    Piece::Name(inner)
                };
                (piece, after)
            }
        },
        _ => {
            let (dollar, after) = tail.split_at(1);
            (Piece::Text(dollar), after)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{expand, pieces, wildcard_matches, ModelMatch, Piece, Sticky};

    #[test]
    fn wildcards_match_prefix_suffix_and_middle() {
        let table = [
            ("gpt-4o-*", "gpt-4o-mini", true),
            ("gpt-4o-*", "gpt-4o-", true),
            ("gpt-4o-*", "gpt-4o", false),
            ("*-mini", "gpt-4o-mini", true),
            ("*-mini", "gpt-4o-mini-2024", false),
            ("claude-*-latest", "claude-3-5-sonnet-latest", true),
            ("claude-*-latest", "claude-latest", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyybzc", true),
            ("a*b*c", "acb", false),
            // The suffix may not reuse what the prefix took.
            ("ab*ba", "aba", false),
            ("ab*ba", "abba", true),
            ("*", "", true),
            ("**", "anything", true),
            ("*è*", "modèle", true),
            ("*é*", "modèle", false),
            ("x", "x", true),
            ("x", "xy", false),
        ];
        for (pattern, name, expected) in table {
            assert_eq!(
                wildcard_matches(pattern, name),
                expected,
                "{pattern} ~ {name}"
            );
        }
    }

    #[test]
    fn captures_put_the_whole_name_first() {
        let exact = ModelMatch::parse("gpt-4o").unwrap();
        assert_eq!(exact, ModelMatch::Exact("gpt-4o".into()));
        assert_eq!(exact.captures("gpt-4o").unwrap(), ["gpt-4o"]);
        assert_eq!(exact.captures("gpt-4o-mini"), None);

        let wild = ModelMatch::parse("*-mini").unwrap();
        assert_eq!(wild, ModelMatch::Wildcard("*-mini".into()));
        assert_eq!(wild.captures("o4-mini").unwrap(), ["o4-mini"]);
        assert_eq!(wild.groups(), 0);

        let regex = ModelMatch::parse("re:^claude-(\\d)-(?<size>\\w+)(-beta)?$").unwrap();
        assert_eq!(regex.groups(), 3);
        assert_eq!(
            regex.captures("claude-4-opus").unwrap(),
            ["claude-4-opus", "4", "opus", ""]
        );
        assert_eq!(regex.captures("claude-x-opus"), None);
        // Unanchored: found anywhere, but [0] is still the whole name.
        let loose = ModelMatch::parse("re:mini").unwrap();
        assert_eq!(loose.captures("gpt-4o-mini-x").unwrap(), ["gpt-4o-mini-x"]);

        assert_eq!(regex.to_string(), "re:^claude-(\\d)-(?<size>\\w+)(-beta)?$");
        assert_eq!(regex, ModelMatch::parse(&regex.to_string()).unwrap());
        assert_ne!(regex, loose);
        assert_ne!(
            ModelMatch::Exact("a*".into()),
            ModelMatch::Wildcard("a*".into())
        );
        assert!(exact.is_exact() && !wild.is_exact() && !regex.is_exact());
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(ModelMatch::parse("")
            .unwrap_err()
            .starts_with("must not be empty"));
        assert!(ModelMatch::parse("re:")
            .unwrap_err()
            .starts_with("empty regex"));
        assert_eq!(
            ModelMatch::parse("re:^claude-(").unwrap_err(),
            "regex parse error: unclosed group (column 9)"
        );
        assert_eq!(
            ModelMatch::parse("re:é\\p{Foo}").unwrap_err(),
            "regex parse error: Unicode property not found (column 2)"
        );
        let big = ModelMatch::parse("re:a{99999999}").unwrap_err();
        assert!(big.contains("size limit"), "{big}");
        assert!(!big.contains('\n'), "{big}");
    }

    #[test]
    fn expand_fills_groups() {
        let captures: Vec<String> = ["claude-4-opus", "4", "opus"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let table = [
            ("claude-$1-$2", "claude-4-opus"),
            ("${2}-${1}", "opus-4"),
            ("$0", "claude-4-opus"),
            ("*", "claude-4-opus"),
            ("vendor/*", "vendor/claude-4-opus"),
            ("cost-$$1", "cost-$1"),
            ("$10", "40"),
            ("${10}", ""),
            ("$9", ""),
            ("${99999999999999999999999}", ""),
            ("a$", "a$"),
            ("a$b", "a$b"),
            ("${size}", "${size}"),
            ("${1", "${1"),
            ("plain", "plain"),
            ("", ""),
            ("é$1é", "é4é"),
        ];
        for (template, expected) in table {
            assert_eq!(expand(template, &captures), expected, "{template}");
        }
        assert_eq!(expand("$1", &[]), "");
    }

    #[test]
    fn templates_split_into_pieces() {
        assert_eq!(
            pieces("a$1${22}*$${x}$"),
            [
                Piece::Text("a"),
                Piece::Group(1, "$1"),
                Piece::Group(22, "${22}"),
                Piece::Group(0, "*"),
                Piece::Dollar,
                Piece::Text("{x}"),
                Piece::Text("$"),
            ]
        );
        assert_eq!(
            pieces("${}${name}${open"),
            [
                Piece::Name(""),
                Piece::Name("name"),
                Piece::Unclosed("${open")
            ]
        );
    }

    #[test]
    fn sticky_spellings() {
        assert_eq!(Sticky::parse("consumer"), Some(Sticky::Consumer));
        assert_eq!(Sticky::parse("none"), Some(Sticky::None));
        assert_eq!(
            Sticky::parse("header:X-Session-ID"),
            Some(Sticky::Header("x-session-id".into()))
        );
        for bad in [
            "",
            "Consumer",
            "header:",
            "header:a b",
            "header:x:y",
            "cookie:s",
        ] {
            assert_eq!(Sticky::parse(bad), None, "{bad}");
        }
        assert_eq!(Sticky::default(), Sticky::Consumer);
    }
}
