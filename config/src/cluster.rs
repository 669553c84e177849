//! Cluster mode: several sluice nodes sharing quota state through Redis.
//!
//! `validate` builds a [`Cluster`] from `[cluster]` when the table is
//! present; without it a node runs standalone on its embedded quota store.
//! The quota engine leases a share of each limit ([`Cluster::lease_fraction`])
//! from Redis, spends it locally and hands the unused rest back after
//! [`Cluster::lease_ttl`], so most requests never wait on Redis. A
//! [`RedisUrl`] holds where Redis is and the password to `AUTH` with; the
//! password never appears in `Debug` or `Display` output, so logging a
//! config or an error that names the URL does not leak it.

use std::fmt;
use std::time::Duration;

use crate::base_url::split_authority;

/// The `[cluster]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Where the shared state lives; from `redis` or `redis_env`.
    pub redis: RedisUrl,
    /// This node's name in shared state (leases, metrics); default: the
    /// host name from `/etc/hostname`, else `"sluice"`. 1..=64 characters
    /// from `A-Z a-z 0-9 . _ -`.
    pub node_id: String,
    /// Share of a limit a node leases at a time; default 0.05, in (0, 0.5].
    pub lease_fraction: f64,
    /// Lease lifetime; the unused rest goes back after it. Default 2 s,
    /// 100 ms..=60 s.
    pub lease_ttl: Duration,
    /// While Redis is unreachable: `true` (`on_redis_down = "open"`, the
    /// default) enforces local limits only; `false` (`"closed"`) refuses
    /// requests with 503.
    pub fail_open: bool,
    /// TCP connect timeout to Redis; default 500 ms.
    pub connect_timeout: Duration,
}

/// A parsed `redis://[:password@]host[:port][/db]` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or IP literal, lower-cased; IPv6 without the brackets.
    pub host: String,
    /// TCP port; 6379 when the URL names none.
    pub port: u16,
    /// Database number for `SELECT`; 0 when the URL names none.
    pub db: u32,
    /// Password for `AUTH`, %-decoded; `None` when the URL has none.
    pub password: Option<String>,
}

impl RedisUrl {
    /// Parses `redis://[:password@]host[:port][/db]`.
    ///
    /// A password may hold any character when %-encoded (`%40` for `@`).
    /// The error text never repeats the input, which may hold a password;
    /// the caller adds the key path.
    pub fn parse(input: &str) -> Result<Self, String> {
        const FORM: &str =
            "expected redis://[:password@]host[:port][/db], e.g. redis://127.0.0.1:6379/0";
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("not a URL: contains whitespace or control characters".into());
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(format!("not a URL: {FORM}"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "redis" => {}
            "rediss" => {
                return Err(
                    "rediss:// (Redis over TLS) is not supported; use redis:// on a \
                            trusted network"
                        .into(),
                )
            }
            _ => {
                let scheme: String = scheme.chars().take(16).collect();
                return Err(format!("unsupported scheme \"{scheme}\"; {FORM}"));
            }
        }
        // Host, port and db never contain '@', so the last one ends the
        // user-info even when an unencoded password holds '@' or '/'.
        let (user_info, rest) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let password = match user_info {
            None => None,
            Some(info) => Some(password(info)?),
        };
        if rest.contains(['?', '#']) {
            return Err("a Redis URL takes no query string or fragment".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        let (host, port) = split_authority(authority)?;
        let db = match path.strip_prefix('/').unwrap_or(path) {
            "" => 0,
            db if db.bytes().all(|b| b.is_ascii_digit()) => db
                .parse::<u32>()
                .map_err(|_| format!("database {db} is out of range"))?,
            db => {
                return Err(format!(
                    "invalid database \"{db}\"; expected a number such as /0"
                ))
            }
        };
        Ok(Self {
            host,
            port: port.unwrap_or(6379),
            db,
            password,
        })
    }

    /// `host:port`, IPv6 literals in brackets: what to connect to.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The password from the user-info `:password`; a user name (Redis ACL) is
/// refused because [`RedisUrl`] has nowhere to keep it.
fn password(info: &str) -> Result<String, String> {
    let Some((user, encoded)) = info.split_once(':') else {
        return Err("write the password after a colon: redis://:password@host".into());
    };
    if !user.is_empty() {
        return Err(
            "a user name (Redis ACL) is not supported; write redis://:password@host".into(),
        );
    }
    if encoded.is_empty() {
        return Err("the password is empty; remove \":@\" to connect without one".into());
    }
    percent_decode(encoded)
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Exactly two hex digits: `from_str_radix` alone would take "+f".
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else {
                return Err("invalid %-escape in the password; write % as %25".into());
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the decoded password is not valid UTF-8".into())
}

// Hand-written so that logging a config never prints the password.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `redis://host:port/db`, without the password.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://{}/{}", self.authority(), self.db)
    }
}

#[cfg(test)]
mod tests {
    use super::RedisUrl;

    /// `(input, host, port, db, password)` for URLs that parse.
    const GOOD: &[(&str, &str, u16, u32, Option<&str>)] = &[
        ("redis://127.0.0.1:6379/0", "127.0.0.1", 6379, 0, None),
        ("redis://127.0.0.1", "127.0.0.1", 6379, 0, None),
        ("redis://127.0.0.1/", "127.0.0.1", 6379, 0, None),
        (
            "REDIS://Cache.Internal:7000/15",
            "cache.internal",
            7000,
            15,
            None,
        ),
        (
            "redis://:s3cret@10.0.0.5:6380/2",
            "10.0.0.5",
            6380,
            2,
            Some("s3cret"),
        ),
        ("redis://:p%40ss%2Fw%25rd@h:1", "h", 1, 0, Some("p@ss/w%rd")),
        // Unencoded '@' and '/' in the password still parse: the last '@'
        // ends it.
        ("redis://:a@b/c@h/3", "h", 6379, 3, Some("a@b/c")),
        ("redis://[::1]:6379/1", "::1", 6379, 1, None),
        ("redis://[::1]", "::1", 6379, 0, None),
    ];

    /// `(input, fragment of the expected error)`.
    const BAD: &[(&str, &str)] = &[
        ("", "not a URL"),
        ("127.0.0.1:6379", "not a URL"),
        ("http://127.0.0.1:6379", "unsupported scheme \"http\""),
        ("rediss://h:6379", "TLS"),
        ("redis://", "no host"),
        ("redis://:6379", "no host"),
        ("redis://h:0", "out of range"),
        ("redis://h:65536", "out of range"),
        ("redis://h:port", "invalid port"),
        ("redis://h/x", "invalid database \"x\""),
        ("redis://h/0/1", "invalid database"),
        ("redis://h/99999999999", "out of range"),
        ("redis://h/0?timeout=1", "query"),
        ("redis://user:pw@h", "user name"),
        ("redis://pw@h", "after a colon"),
        ("redis://:@h", "empty"),
        ("redis://:bad%zz@h", "%-escape"),
        ("redis://:bad%@h", "%-escape"),
        ("redis://:bad%+f@h", "%-escape"),
        ("redis://:%ff@h", "UTF-8"),
        ("redis://h st", "whitespace"),
        ("redis://::1", "brackets"),
    ];

    #[test]
    fn parses_good_urls() {
        for &(input, host, port, db, password) in GOOD {
            let url = RedisUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (url.host.as_str(), url.port, url.db, url.password.as_deref()),
                (host, port, db, password),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_bad_urls() {
        for &(input, expected) in BAD {
            match RedisUrl::parse(input) {
                Ok(url) => panic!("{input:?} parsed as {url:?}"),
                Err(e) => assert!(e.contains(expected), "{input:?}: {e:?} lacks {expected:?}"),
            }
        }
    }

    #[test]
    fn errors_never_repeat_the_password() {
        for input in [
            "redis://:hunter2@h:x",
            "redis://:hunter2@h/db",
            "redis://:hunter2%@h",
        ] {
            let e = RedisUrl::parse(input).unwrap_err();
            assert!(!e.contains("hunter2"), "{input}: {e}");
        }
    }

    #[test]
    fn display_and_debug_hide_the_password() {
        let url = RedisUrl::parse("redis://:hunter2@[::1]:7000/4").unwrap();
        assert_eq!(url.to_string(), "redis://[::1]:7000/4");
        assert_eq!(url.authority(), "[::1]:7000");
        let debug = format!("{url:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        // Display round-trips everything but the password.
        for &(input, ..) in GOOD {
            let url = RedisUrl::parse(input).unwrap();
            let again = RedisUrl::parse(&url.to_string()).unwrap();
            assert_eq!(
                again,
                RedisUrl {
                    password: None,
                    ..url
                }
            );
        }
    }
}
