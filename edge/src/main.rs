//! The `sluice` binary: `sluice --config FILE`, `sluice check-config FILE`,
//! `sluice hash-key KEY`.

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage:
  sluice --config FILE         run the gateway
  sluice check-config FILE     validate FILE, print every error, exit 1 on any
  sluice hash-key KEY          print the sha256 to store for an API key
  sluice --version";

fn main() -> ExitCode {
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
