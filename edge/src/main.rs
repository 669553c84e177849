//! The `sluice` binary: `sluice --config FILE`, `sluice check-config FILE`,
//! `sluice hash-key KEY`.

use std::path::Path;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the request path allocates and
/// frees small buffers all the time, and `sluice-bench compare` measured
/// 12 % less CPU per request with it (DESIGN-style numbers in the bench
/// report). Tuned in `main` for a long-lived server holding thousands of
/// idle streams.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v2's `mi_option_purge_delay` (mimalloc.h's `mi_option_e`;
/// libmimalloc-sys exports no name for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Give freed pages back to the OS at once rather than 10 ms later: after a
/// burst, thousands of idle streams should not keep its memory. An
/// operator's `MIMALLOC_PURGE_DELAY` still wins. (Arena eager commit must
/// be set before the first allocation, so only the environment can turn it
/// off: the systemd unit and the benchmark set `MIMALLOC_ARENA_EAGER_COMMIT=0`,
/// which takes a fresh process from 52 MB to 41 MB.)
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; mimalloc reads its
        // options atomically and allows setting them at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

const USAGE: &str = "usage:
  sluice --config FILE         run the gateway
  sluice check-config FILE     validate FILE, print every error, exit 1 on any
  sluice hash-key KEY          print the sha256 to store for an API key
  sluice --version";

fn main() -> ExitCode {
    tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--config" | "-c", file] => run(file),
        ["check-config", file] => check(file),
        ["hash-key", key] => {
            println!("{}", sluice_config::sha256_hex(key));
            ExitCode::SUCCESS
        }
        ["--version" | "-V"] => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn load(file: &str) -> Result<sluice_config::Config, ExitCode> {
    sluice_config::Config::load(Path::new(file)).map_err(|errors| {
        eprintln!("{file}: {} error(s):", errors.0.len());
        eprintln!("{errors}");
        ExitCode::FAILURE
    })
}

fn check(file: &str) -> ExitCode {
    match load(file) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            println!("{file}: ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(file: &str) -> ExitCode {
    let config = match load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match edge::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            edge::log::error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
