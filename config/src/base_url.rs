//! A provider's base URL, split into the parts the upstream client needs.
//!
//! `validate` turns `base_url = "https://api.openai.com/v1"` into a
//! [`BaseUrl`]: scheme as a TLS flag, host (IPv6 without brackets), port with
//! the scheme default filled in, and the path prefix without a trailing slash.
//! The upstream client connects to `host:port`, sends [`BaseUrl::authority`]
//! as the Host header (and the host as TLS SNI) and prefixes every request
//! path with `path`, so `/chat/completions` becomes `/v1/chat/completions`.
//! Only what a base URL needs is accepted: no user-info, query or fragment.

use std::fmt;
use std::net::Ipv6Addr;

/// A parsed `http://` or `https://` base URL of an upstream provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl {
    /// True for `https`: the upstream connection uses TLS.
    pub tls: bool,
    /// Host name or IP literal, lower-cased; IPv6 without the brackets.
    pub host: String,
    /// TCP port; 80 or 443 when the URL names none.
    pub port: u16,
    /// Path prefix without trailing slash, e.g. `/v1`; empty for none.
    pub path: String,
}

impl BaseUrl {
    /// Parses `http://host[:port][/prefix]` or `https://...`.
    ///
    /// The error text says what is wrong without repeating the input; the
    /// caller adds the key path.
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("not a URL: contains whitespace or control characters".into());
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(
                "not a URL: expected scheme://host[:port][/path], e.g. https://api.openai.com/v1"
                    .into(),
            );
        };
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => {
                return Err(format!(
                    "unsupported scheme \"{scheme}\"; use http or https"
                ))
            }
        };
        if rest.contains(['?', '#']) {
            return Err("a base URL takes no query string or fragment".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(
                "user-info in the URL is not supported; put the key in api_key or key_env".into(),
            );
        }
        let (host, port) = split_authority(authority)?;
        let port = match port {
            Some(port) => port,
            None if tls => 443,
            None => 80,
        };
        Ok(Self {
            tls,
            host,
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The Host header value: `host` on the scheme's default port, else
    /// `host:port`; IPv6 literals get their brackets back.
    pub fn authority(&self) -> String {
        let host = self.bracketed_host();
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// 443 for https, 80 for http.
    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    /// The host as it appears in a URL: IPv6 literals in brackets.
    fn bracketed_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// Whether the host is a loopback address or `localhost`, where sending a
    /// key over plain http does not leave the machine.
    pub fn is_loopback(&self) -> bool {
        if self.host == "localhost" || self.host.ends_with(".localhost") {
            return true;
        }
        self.host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// Splits `host[:port]` or `[v6][:port]` and checks both halves.
pub(crate) fn split_authority(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((inner, after)) = bracketed.split_once(']') else {
            return Err("IPv6 host is missing its closing ']'".into());
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!("\"{inner}\" is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("unexpected \"{after}\" after the IPv6 host")),
            },
        };
        (inner.to_ascii_lowercase(), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err("IPv6 hosts must be written in brackets, e.g. http://[::1]:9000".into());
        }
        check_host_name(host)?;
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(text) => Some(parse_port(text)?),
    };
    Ok((host, port))
}

/// A registered name or IPv4 literal: letters, digits, `-`, `.`, `_`.
fn check_host_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    match host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        Some(bad) => Err(format!("invalid character '{bad}' in host \"{host}\"")),
        None => Ok(()),
    }
}

/// A decimal port in 1..=65535.
fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port \"{text}\""));
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port {text} is out of range 1..=65535")),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::BaseUrl;

    /// `(input, tls, host, port, path, authority)` for URLs that parse.
    const GOOD: &[(&str, bool, &str, u16, &str, &str)] = &[
        (
            "https://api.openai.com/v1",
            true,
            "api.openai.com",
            443,
            "/v1",
            "api.openai.com",
        ),
        (
            "http://127.0.0.1:9000/v1",
            false,
            "127.0.0.1",
            9000,
            "/v1",
            "127.0.0.1:9000",
        ),
        (
            "http://127.0.0.1:9000/v1/",
            false,
            "127.0.0.1",
            9000,
            "/v1",
            "127.0.0.1:9000",
        ),
        (
            "http://example.com",
            false,
            "example.com",
            80,
            "",
            "example.com",
        ),
        (
            "http://example.com/",
            false,
            "example.com",
            80,
            "",
            "example.com",
        ),
        (
            "https://example.com:443/",
            true,
            "example.com",
            443,
            "",
            "example.com",
        ),
        (
            "https://example.com:8443/a/b//",
            true,
            "example.com",
            8443,
            "/a/b",
            "example.com:8443",
        ),
        (
            "http://example.com:443",
            false,
            "example.com",
            443,
            "",
            "example.com:443",
        ),
        (
            "https://example.com:80",
            true,
            "example.com",
            80,
            "",
            "example.com:80",
        ),
        (
            "HTTPS://Api.Example.COM/V1",
            true,
            "api.example.com",
            443,
            "/V1",
            "api.example.com",
        ),
        (
            "http://[::1]:9000/v1",
            false,
            "::1",
            9000,
            "/v1",
            "[::1]:9000",
        ),
        (
            "https://[2001:DB8::1]/v1",
            true,
            "2001:db8::1",
            443,
            "/v1",
            "[2001:db8::1]",
        ),
        ("http://[::1]", false, "::1", 80, "", "[::1]"),
        (
            "http://my_host.internal:8000",
            false,
            "my_host.internal",
            8000,
            "",
            "my_host.internal:8000",
        ),
    ];

    /// `(input, fragment of the expected error)` for URLs that must fail.
    const BAD: &[(&str, &str)] = &[
        ("ftp://example.com", "unsupported scheme \"ftp\""),
        ("ws://example.com", "unsupported scheme"),
        ("example.com/v1", "not a URL"),
        ("", "not a URL"),
        ("http://", "no host"),
        ("http:///v1", "no host"),
        ("http://:80", "no host"),
        ("http://host:", "invalid port"),
        ("http://host:0", "out of range"),
        ("http://host:65536", "out of range"),
        ("http://host:+80", "invalid port"),
        ("http://host:80x", "invalid port"),
        ("http://::1:80", "brackets"),
        ("http://[::1", "closing"),
        ("http://[zz::1]:80", "not an IPv6"),
        ("http://[::1]80", "unexpected"),
        ("http://user:pw@host/", "user-info"),
        ("http://host/v1?x=1", "query"),
        ("http://host/v1#frag", "query"),
        ("http://ho st/", "whitespace"),
        ("http://h%41st/", "invalid character '%'"),
    ];

    #[test]
    fn parses_good_urls() {
        for &(input, tls, host, port, path, authority) in GOOD {
            let url = BaseUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (url.tls, url.host.as_str(), url.port, url.path.as_str()),
                (tls, host, port, path),
                "{input}"
            );
            assert_eq!(url.authority(), authority, "{input}");
        }
    }

    #[test]
    fn rejects_bad_urls() {
        for &(input, expected) in BAD {
            match BaseUrl::parse(input) {
                Ok(url) => panic!("{input:?} parsed as {url:?}"),
                Err(e) => assert!(e.contains(expected), "{input:?}: {e:?} lacks {expected:?}"),
            }
        }
    }

    #[test]
    fn display_round_trips() {
        for &(input, ..) in GOOD {
            let url = BaseUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            let again = BaseUrl::parse(&url.to_string()).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(url, again);
        }
    }

    #[test]
    fn loopback_detection() {
        for (input, loopback) in [
            ("http://127.0.0.1:9000", true),
            ("http://[::1]:9000", true),
            ("http://localhost:9000", true),
            ("http://api.localhost", true),
            ("http://10.0.0.1", false),
            ("https://api.openai.com", false),
        ] {
            let url = BaseUrl::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(url.is_loopback(), loopback, "{input}");
        }
    }
}
