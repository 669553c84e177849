//! Operator-facing log lines: one JSON object per line on stderr.
//!
//! `{"ts":…,"level":…,"msg":…}` — journald keeps stderr, and JSON lines go
//! straight into any log pipeline. The request path never logs (the audit
//! log and metrics cover requests); these are for startup, shutdown and
//! faults.

use std::io::Write;
use std::time::SystemTime;

fn line(level: &str, msg: &str) {
    let record = serde_json::json!({
        "ts": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "level": level,
        "msg": msg,
    });
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{record}");
}

pub fn info(msg: &str) {
    line("info", msg);
}

pub fn warn(msg: &str) {
    line("warn", msg);
}

pub fn error(msg: &str) {
    line("error", msg);
}
