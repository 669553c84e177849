//! `sluice-mock`: the mock LLM upstream as a process, for benchmarks and for
//! tests that drive sluice as a binary.
//!
//! Parses flags into a `MockConfig` and process-wide `Script` defaults,
//! starts the workers, prints exactly one line `listening on <addr>` to
//! stdout once every worker listens (so a caller that asked for port 0 can
//! read the port), then runs until SIGTERM or SIGINT and exits 0.
//! Every `x-mock-<name>` request header has a `--<name>` flag that sets its
//! default for all requests.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use signal_hook::consts::{SIGINT, SIGTERM};
use sluice_bench::mock::{self, header, Behaviour, MockConfig};

const USAGE: &str = "\
usage: sluice-mock [--listen ADDR] [--workers N] [--tls-cert FILE --tls-key FILE]
                   [--api-key KEY] [--no-record]
                   [--chunks N] [--ttfb-ms N] [--gap-ms N] [--status S] [--retry-after SECS]
                   [--stall-after N] [--disconnect-after N] [--omit-usage [1|0]]
                   [--cached-tokens K]

  --listen ADDR   address to bind (default 127.0.0.1:0; port 0 picks one)
  --workers N     worker threads sharing the port (default 1)
  --no-record     do not keep the last request for /mock/stats
  Other flags set the default of the x-mock-<flag> request header.";

/// Flags that are defaults of `x-mock-*` headers.
const SCRIPT_FLAGS: [&str; 9] = [
    header::CHUNKS,
    header::TTFB_MS,
    header::GAP_MS,
    header::STATUS,
    header::RETRY_AFTER,
    header::STALL_AFTER,
    header::DISCONNECT_AFTER,
    header::OMIT_USAGE,
    header::CACHED_TOKENS,
];

fn parse(args: &[String]) -> anyhow::Result<(MockConfig, Behaviour)> {
    let mut cfg = MockConfig::default();
    let mut behaviour = Behaviour::default();
    let (mut cert, mut key) = (None, None);
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let Some(name) = flag.strip_prefix("--") else {
            bail!("{flag}: unexpected argument\n{USAGE}");
        };
        let next = args.get(i + 1).filter(|v| !v.starts_with("--"));
        // Flags without a value.
        match name {
            "help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "no-record" => {
                behaviour.record_requests = false;
                i += 1;
                continue;
            }
            "omit-usage" if next.is_none() => {
                behaviour.script.omit_usage = true;
                i += 1;
                continue;
            }
            _ => {}
        }
        let Some(value) = next else {
            bail!("{flag}: needs a value\n{USAGE}");
        };
        match name {
            "listen" => {
                cfg.addr = value
                    .parse::<SocketAddr>()
                    .with_context(|| format!("--listen {value}: expected IP:PORT"))?;
            }
            "workers" => {
                cfg.workers = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("--workers {value}: expected a number > 0"))?;
            }
            "tls-cert" => cert = Some(value.clone()),
            "tls-key" => key = Some(value.clone()),
            "api-key" => cfg.api_key = Some(value.clone()),
            _ => {
                let header = format!("x-mock-{name}");
                if !SCRIPT_FLAGS.contains(&header.as_str()) {
                    bail!("{flag}: unknown flag\n{USAGE}");
                }
                behaviour
                    .script
                    .set(&header, value)
                    .map_err(|e| anyhow::anyhow!(e.replacen(&header, &format!("--{name}"), 1)))?;
            }
        }
        i += 2;
    }
    cfg.tls = match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let cert_pem = std::fs::read(&cert).with_context(|| format!("--tls-cert {cert}"))?;
            let key_pem = std::fs::read(&key).with_context(|| format!("--tls-key {key}"))?;
            Some(mock::server_tls_config(&cert_pem, &key_pem).context("--tls-cert/--tls-key")?)
        }
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    Ok((cfg, behaviour))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cfg, behaviour) = parse(&args)?;
    // Registered before the port is announced so a caller may signal at once.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing SIGTERM/SIGINT handlers")?;
    let handle = mock::spawn_with(cfg.clone(), behaviour)
        .with_context(|| format!("binding {}", cfg.addr))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", handle.addr)?;
    out.flush()?;
    drop(out);
    let _ = signals.forever().next();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_set_config_and_defaults() {
        let parsed = parse(&args(
            "--listen 127.0.0.1:9000 --workers 2 --api-key k --chunks 4 --gap-ms 3 --omit-usage --no-record",
        ));
        let Ok((cfg, b)) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(cfg.addr, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!((cfg.workers, cfg.api_key.as_deref()), (2, Some("k")));
        assert_eq!(
            (b.script.chunks, b.script.gap_ms, b.script.omit_usage),
            (4, 3, true)
        );
        assert!(!b.record_requests);
    }

    #[test]
    fn bad_flags_are_named() {
        for (line, needle) in [
            ("--bogus 1", "--bogus: unknown flag"),
            ("--chunks x", "--chunks:"),
            ("--workers 0", "--workers 0"),
            ("--tls-cert a", "go together"),
            ("--listen", "needs a value"),
        ] {
            let err = parse(&args(line))
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(err.contains(needle), "{line}: {err}");
        }
    }
}
