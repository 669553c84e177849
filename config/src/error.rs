//! Errors of the config crate.
//!
//! Loading never stops at the first problem: `validate` walks the whole raw
//! config and pushes one [`ConfigError`] per finding, each with the key path
//! it belongs to (`providers[1].base_url`, `consumers[0].keys[2].sha256`), so
//! an operator fixes the file in one round. A TOML syntax or type error from
//! serde cannot be recovered from and arrives as a single error, with the key
//! path recovered from its byte span and the line/column in the message.
//! [`ConfigErrors`] is what `Config::load` and `Config::from_toml_str` return.

use std::fmt;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", located(.path, .message))]
pub struct ConfigError {
    /// Where in the config the problem is, as a key path such as
    /// `listeners[0].address`; empty when it concerns the whole file.
    pub path: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl ConfigError {
    /// Builds an error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Formats "path: message", or just the message when the path is empty.
fn located<'a>(path: &'a str, message: &'a str) -> Located<'a> {
    Located { path, message }
}

/// Display helper behind [`located`].
struct Located<'a> {
    /// Key path, possibly empty.
    path: &'a str,
    /// The message.
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file, in file order as far as possible.
/// Never empty when returned as an `Err`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The key paths of all errors, in order; handy in tests and logs.
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.path.as_str()).collect()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

/// Formats a list of errors one per line.
struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}
