//! The targets a comparison measures, and how each one is started.
//!
//! - `direct`: the client talks to the mock upstream itself; every other
//!   target is measured against it.
//! - `nginx`: a plain reverse proxy (`bench/conf/nginx.conf`).
//! - sluice in five [`Variant`]s, from `bench/conf/sluice.toml` plus the
//!   variant's fragments: `sluice-passthrough` (every stage off),
//!   `sluice-nolimits` (auth + accounting + audit), `sluice` (+ quota
//!   admission and settlement), `sluice-redis` (limits shared through a
//!   redis-server the comparison starts), `sluice-translate` (like `sluice`,
//!   the provider speaking Anthropic's API). Side by side they price each
//!   stage.
//! - any extra target given by URL, pointed by its owner at the mock.
//!
//! The proxies are started here pinned to the proxy CPUs; their process
//! trees are what CPU time and RSS are read from. A target's helper process
//! (redis-server) runs on the client CPUs — it stands for a shared service
//! elsewhere — and its CPU is reported beside the target's, not in it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::procs::{self, Proc};

pub const NGINX_CONF: &str = include_str!("../../conf/nginx.conf");
pub const SLUICE_CONF: &str = include_str!("../../conf/sluice.toml");
pub const PASSTHROUGH_CONF: &str = include_str!("../../conf/sluice-passthrough.toml");
pub const GATEWAY_CONF: &str = include_str!("../../conf/sluice-gateway.toml");
pub const LIMITS_CONF: &str = include_str!("../../conf/sluice-limits.toml");
pub const REDIS_CONF: &str = include_str!("../../conf/sluice-redis.toml");

/// The key the mock expects; direct and nginx clients send it.
pub const MOCK_KEY: &str = "mock-key";
/// The consumer key in `sluice.toml`.
pub const SLUICE_KEY: &str = "sk-bench";
/// The model every scenario asks for.
pub const MODEL: &str = "gpt-4o-mini";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Nginx,
    Sluice(Variant),
    External,
}

/// What a sluice target runs: each variant adds one thing to the one
/// before it (translate adds it to `Limits`), so the differences between
/// their columns are what each thing costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Passthrough,
    NoLimits,
    Limits,
    Redis,
    Translate,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Passthrough,
        Variant::NoLimits,
        Variant::Limits,
        Variant::Redis,
        Variant::Translate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Passthrough => "sluice-passthrough",
            Variant::NoLimits => "sluice-nolimits",
            Variant::Limits => "sluice",
            Variant::Redis => "sluice-redis",
            Variant::Translate => "sluice-translate",
        }
    }

    pub fn from_name(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Passthrough => "sluice, every policy stage off (1 worker)",
            Variant::NoLimits => "sluice, auth + accounting + audit, no limits (1 worker)",
            Variant::Limits => "sluice, auth + accounting + quota + audit on (1 worker)",
            Variant::Redis => {
                "sluice, as `sluice` with the limits shared through Redis (1 worker; redis-server on the client CPU)"
            }
            Variant::Translate => {
                "sluice, as `sluice` with OpenAI requests translated to an Anthropic provider (1 worker)"
            }
        }
    }

    /// The fragments appended to `sluice.toml`, in order.
    fn fragments(self) -> &'static [&'static str] {
        match self {
            Variant::Passthrough => &[PASSTHROUGH_CONF],
            Variant::NoLimits => &[GATEWAY_CONF],
            Variant::Limits | Variant::Translate => &[GATEWAY_CONF, LIMITS_CONF],
            Variant::Redis => &[GATEWAY_CONF, LIMITS_CONF, REDIS_CONF],
        }
    }

    /// The whole config, placeholders but the comparison's own filled in.
    pub fn config(self) -> String {
        let kind = match self {
            Variant::Translate => "anthropic",
            _ => "openai",
        };
        let price = match self {
            Variant::Passthrough => "",
            _ => "price = { input_per_million = 0.15, output_per_million = 0.60 }",
        };
        let mut conf = SLUICE_CONF
            .replace("@KIND@", kind)
            .replace("@PRICE@", price);
        for f in self.fragments() {
            conf.push('\n');
            conf.push_str(f);
        }
        conf
    }
}

/// An extra target given on the command line: `NAME=URL[,key=K][,pid=P]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extra {
    pub name: String,
    pub url: String,
    pub key: String,
    pub pid: Option<u32>,
}

impl std::str::FromStr for Extra {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("--target {s:?}: expected NAME=URL[,key=KEY][,pid=PID]"))?;
        let mut parts = rest.split(',');
        let url = parts.next().unwrap_or_default().to_owned();
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(format!("--target {s:?}: {url:?} is not an http(s) URL"));
        }
        let mut extra = Extra {
            name: name.to_owned(),
            url,
            key: MOCK_KEY.to_owned(),
            pid: None,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("key", k)) => extra.key = k.to_owned(),
                Some(("pid", n)) => {
                    extra.pid = Some(
                        n.parse()
                            .map_err(|_| format!("--target {s:?}: bad pid {n:?}"))?,
                    )
                }
                _ => return Err(format!("--target {s:?}: unknown option {p:?}")),
            }
        }
        Ok(extra)
    }
}

/// What targets need to start.
pub struct Env {
    pub bin_dir: PathBuf,
    pub work: PathBuf,
    pub mock: SocketAddr,
    pub proxy_cpus: Vec<usize>,
    /// Where helpers (redis-server) run: beside the load generator.
    pub client_cpus: Vec<usize>,
    pub nginx: PathBuf,
    /// Connections a proxy must be able to hold at once.
    pub connections: usize,
}

pub struct Target {
    /// Column name in tables.
    pub name: String,
    /// What it is, for the report.
    pub label: String,
    pub kind: Kind,
    pub url: String,
    pub key: String,
    proc: Option<Proc>,
    /// The pid of an extra target's process, when given.
    external_pid: Option<u32>,
    /// Process tree measured for CPU and RSS (empty for direct).
    pub pids: Vec<u32>,
    config: Option<PathBuf>,
    /// A service the target needs (redis-server), measured apart.
    helper: Option<Proc>,
}

impl Target {
    pub fn direct(mock: SocketAddr) -> Target {
        Target {
            name: "direct".into(),
            label: "client straight to the mock upstream".into(),
            kind: Kind::Direct,
            url: format!("http://{mock}/v1/chat/completions"),
            key: MOCK_KEY.into(),
            proc: None,
            external_pid: None,
            pids: Vec::new(),
            config: None,
            helper: None,
        }
    }

    pub fn nginx() -> Target {
        Target {
            name: "nginx".into(),
            label: "nginx, plain reverse proxy (1 worker, proxy_buffering off)".into(),
            kind: Kind::Nginx,
            url: String::new(),
            key: MOCK_KEY.into(),
            proc: None,
            external_pid: None,
            pids: Vec::new(),
            config: None,
            helper: None,
        }
    }

    pub fn sluice(variant: Variant) -> Target {
        Target {
            name: variant.name().into(),
            label: variant.label().into(),
            kind: Kind::Sluice(variant),
            url: String::new(),
            key: match variant {
                Variant::Passthrough => MOCK_KEY.into(),
                _ => SLUICE_KEY.into(),
            },
            proc: None,
            external_pid: None,
            pids: Vec::new(),
            config: None,
            helper: None,
        }
    }

    pub fn external(e: &Extra) -> Target {
        Target {
            name: e.name.clone(),
            label: format!("{} (external, {})", e.name, e.url),
            kind: Kind::External,
            url: e.url.clone(),
            key: e.key.clone(),
            proc: None,
            external_pid: e.pid,
            pids: e.pid.map(procs::tree).unwrap_or_default(),
            config: None,
            helper: None,
        }
    }

    /// Whether CPU and memory of this target can be read.
    pub fn measurable(&self) -> bool {
        !self.pids.is_empty()
    }

    /// Whether this comparison started the process (and may restart it).
    pub fn owned(&self) -> bool {
        self.proc.is_some()
    }

    /// Writes the config and checks it; `Err` says why the target cannot
    /// run (missing binary, config refused).
    pub fn prepare(&mut self, env: &Env, workers: usize) -> Result<(), String> {
        match self.kind {
            Kind::Direct | Kind::External => Ok(()),
            Kind::Nginx => {
                if !env.nginx.is_file() {
                    return Err(format!(
                        "{} not found (apt-get install nginx-light, or --nginx PATH)",
                        env.nginx.display()
                    ));
                }
                let port = procs::free_port().map_err(|e| format!("nginx: no free port: {e}"))?;
                let conf = NGINX_CONF
                    .replace("@PORT@", &port.to_string())
                    .replace("@CONNECTIONS@", &env.connections.to_string())
                    .replace("@MOCK@", &env.mock.to_string())
                    .replace("@WORK@", &env.work.display().to_string());
                let path = env.work.join("nginx.conf");
                std::fs::write(&path, conf).map_err(|e| format!("{}: {e}", path.display()))?;
                self.url = format!("http://127.0.0.1:{port}/v1/chat/completions");
                self.config = Some(path);
                Ok(())
            }
            Kind::Sluice(variant) => {
                let bin = env.bin_dir.join("sluice");
                if !bin.is_file() {
                    return Err(format!(
                        "{} not found (cargo build --release -p sluice-edge)",
                        bin.display()
                    ));
                }
                let mut conf = variant
                    .config()
                    .replace("@MOCK@", &env.mock.to_string())
                    .replace("@WORK@", &env.work.display().to_string())
                    .replace("@NAME@", &self.name)
                    .replace("@WORKERS@", &workers.to_string());
                if variant == Variant::Redis {
                    let redis = start_redis(env)?;
                    conf = conf.replace("@REDIS@", &redis.1.to_string());
                    self.helper = Some(redis.0);
                }
                let path = env.work.join(format!("{}.toml", self.name));
                std::fs::write(&path, conf).map_err(|e| format!("{}: {e}", path.display()))?;
                let out = Command::new(&bin)
                    .arg("check-config")
                    .arg(&path)
                    .output()
                    .map_err(|e| format!("{}: {e}", bin.display()))?;
                if !out.status.success() {
                    let why = String::from_utf8_lossy(&out.stderr);
                    return Err(format!(
                        "sluice check-config refused {}: {}",
                        path.display(),
                        why.trim()
                    ));
                }
                self.config = Some(path);
                Ok(())
            }
        }
    }

    /// The helper's pid (redis-server), when the target has one.
    pub fn helper_pid(&self) -> Option<u32> {
        self.helper.as_ref().map(Proc::pid)
    }

    /// Starts the process (a no-op for direct and external targets).
    pub fn start(&mut self, env: &Env) -> Result<(), String> {
        let Some(config) = self.config.clone() else {
            return Ok(());
        };
        let log = env.work.join(format!("{}.log", self.name));
        match self.kind {
            Kind::Nginx => {
                let mut cmd = Command::new(&env.nginx);
                cmd.arg("-p")
                    .arg(&env.work)
                    .arg("-c")
                    .arg(&config)
                    .arg("-e")
                    .arg(env.work.join("nginx-error.log"));
                // nginx prints nothing when ready: wait for its port.
                let proc = Proc::start("nginx", cmd, &env.proxy_cpus, &log, &[], Duration::ZERO)?;
                let addr = url_addr(&self.url)?;
                self.proc = Some(proc);
                if !procs::wait_listening(addr, Duration::from_secs(10)) {
                    let err = std::fs::read_to_string(env.work.join("nginx-error.log"))
                        .unwrap_or_default();
                    return Err(format!("nginx did not listen on {addr}: {err}"));
                }
                // The worker forks after the master starts listening.
                std::thread::sleep(Duration::from_millis(200));
            }
            Kind::Sluice(_) => {
                let mut cmd = Command::new(env.bin_dir.join("sluice"));
                cmd.arg("--config").arg(&config).current_dir(&env.work);
                // As deploy/sluice.service runs it.
                if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
                    cmd.env("MIMALLOC_ARENA_EAGER_COMMIT", "0");
                }
                let proc = Proc::start(
                    &self.name,
                    cmd,
                    &env.proxy_cpus,
                    &log,
                    &["listening on ", "admin on "],
                    Duration::from_secs(30),
                )?;
                let addr = proc
                    .announced("listening on ")
                    .ok_or_else(|| format!("{}: no listening line", self.name))?;
                let addr = addr
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                self.url = format!("http://{addr}/v1/chat/completions");
                self.proc = Some(proc);
            }
            Kind::Direct | Kind::External => {}
        }
        self.refresh_pids();
        Ok(())
    }

    /// Re-reads the process tree (nginx forks its worker after start).
    pub fn refresh_pids(&mut self) {
        if let Some(p) = &self.proc {
            self.pids = procs::tree(p.pid());
        } else if let Some(pid) = self.external_pid {
            self.pids = procs::tree(pid);
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        if self.owned() {
            self.pids.clear();
        }
    }

    /// Stops and starts again: fresh memory for the idle-stream phase.
    pub fn restart(&mut self, env: &Env) -> Result<(), String> {
        if self.proc.is_none() {
            return Ok(());
        }
        self.stop();
        self.pids.clear();
        // nginx reuses its port; let the old listener go first.
        std::thread::sleep(Duration::from_millis(200));
        self.start(env)
    }
}

/// A throwaway redis-server on the client CPUs (no persistence), for the
/// `sluice-redis` target; with its address.
fn start_redis(env: &Env) -> Result<(Proc, SocketAddr), String> {
    let port = procs::free_port().map_err(|e| format!("redis: no free port: {e}"))?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--port", &port.to_string()])
        .current_dir(&env.work);
    let log = env.work.join("redis.log");
    let proc = Proc::start(
        "redis-server",
        cmd,
        &env.client_cpus,
        &log,
        &[],
        Duration::ZERO,
    )
    .map_err(|e| format!("{e} (apt-get install redis-server)"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if !procs::wait_listening(addr, Duration::from_secs(10)) {
        return Err(format!("redis-server did not listen on {addr}"));
    }
    Ok((proc, addr))
}

fn url_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url.trim_start_matches("http://");
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .parse()
        .map_err(|_| format!("{url}: expected http://IP:PORT/…"))
}

/// The default nginx binary: on PATH, else Debian's location.
pub fn find_nginx() -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("nginx");
            if p.is_file() {
                return p;
            }
        }
    }
    Path::new("/usr/sbin/nginx").to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extras_parse() {
        let e: Extra = "litellm=http://127.0.0.1:4000/v1/chat/completions,key=sk-1,pid=42"
            .parse()
            .unwrap();
        assert_eq!(
            e,
            Extra {
                name: "litellm".into(),
                url: "http://127.0.0.1:4000/v1/chat/completions".into(),
                key: "sk-1".into(),
                pid: Some(42)
            }
        );
        let e: Extra = "x=https://h/v1".parse().unwrap();
        assert_eq!((e.key.as_str(), e.pid), (MOCK_KEY, None));
        for bad in [
            "noequals",
            "x=ftp://h",
            "x=http://h,pid=abc",
            "x=http://h,color=red",
        ] {
            assert!(bad.parse::<Extra>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_variant_config_is_valid_and_means_what_it_says() {
        for v in Variant::ALL {
            let conf = v
                .config()
                .replace("@MOCK@", "127.0.0.1:9000")
                .replace("@WORK@", "/tmp/w")
                .replace("@NAME@", v.name())
                .replace("@WORKERS@", "1")
                .replace("@REDIS@", "127.0.0.1:6379");
            let c = sluice_config::Config::from_toml_str(&conf)
                .unwrap_or_else(|e| panic!("{}: {e}\n{conf}", v.name()));
            let f = c.features;
            let limited = c.consumers.iter().any(|k| k.limits != Default::default());
            match v {
                Variant::Passthrough => {
                    assert!(!f.auth && !f.accounting && !f.audit);
                    assert!(c.consumers.is_empty());
                }
                Variant::NoLimits => assert!(f.auth && f.accounting && f.audit && !limited),
                Variant::Limits | Variant::Translate => assert!(limited && c.cluster.is_none()),
                Variant::Redis => assert!(limited && c.cluster.is_some()),
            }
            assert_eq!(c.providers[0].kind.is_anthropic(), v == Variant::Translate);
            assert_eq!(c.quota.state_path, None, "{}: no store writes", v.name());
        }
    }

    #[test]
    fn templates_have_their_placeholders() {
        for p in ["@PORT@", "@MOCK@", "@WORK@", "@CONNECTIONS@"] {
            assert!(NGINX_CONF.contains(p), "nginx.conf lacks {p}");
        }
        for p in [
            "@MOCK@",
            "@WORK@",
            "@NAME@",
            "@WORKERS@",
            "@KIND@",
            "@PRICE@",
        ] {
            assert!(SLUICE_CONF.contains(p), "sluice.toml lacks {p}");
        }
        assert!(GATEWAY_CONF.contains("@NAME@") && REDIS_CONF.contains("@REDIS@"));
        assert!(NGINX_CONF.contains("proxy_buffering off;"));
    }
}
