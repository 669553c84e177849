//! Tests of the whole load path: inline TOML in, `Config` or errors out.
//!
//! Each test builds its config from a string (or from `config/examples/`),
//! so nothing depends on files outside the crate. Error tests assert exact
//! key paths, because the path is what an operator uses to find the line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{
    expand, sha256_hex, ActiveCheck, Config, ConfigErrors, Encoding, FallbackOn, Health,
    KeySelection, LimitSet, ModelMatch, Price, ProviderKind, Retry, StatusMatch, Sticky, Target,
    UpstreamKey, Variant,
};

/// The smallest valid config: one listener, provider and model.
const MINIMAL: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"

[[providers]]
name = "mock"
base_url = "http://127.0.0.1:9000/v1"

[[models]]
name = "gpt-4o-mini"
provider = "mock"
"#;

/// Parses `source`, panicking with every error if it is invalid.
fn ok(source: &str) -> Config {
    Config::from_toml_str(source).unwrap_or_else(|e| panic!("expected a valid config:\n{e}"))
}

/// Parses `source`, panicking if it is valid.
fn errors(source: &str) -> ConfigErrors {
    match Config::from_toml_str(source) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(e) => e,
    }
}

/// A file that certainly exists, for TLS and CA paths.
fn existing_file() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("Cargo.toml")
        .display()
        .to_string()
}

/// An environment variable name no other test (or process) uses.
fn unique_var(tag: &str) -> String {
    format!("SLUICE_CONFIG_TEST_{tag}_{}", std::process::id())
}

#[test]
fn minimal_config_gets_defaults() {
    let config = ok(MINIMAL);
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(
        config.listeners[0].address,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.listeners[0].tls, None);
    assert_eq!(
        config.admin.address,
        "127.0.0.1:9901".parse::<SocketAddr>().unwrap()
    );

    let cpus = std::thread::available_parallelism().unwrap();
    assert_eq!(config.workers.count, cpus);
    assert!(!config.workers.pin_cpus);
    assert_eq!(config.workers.drain_timeout, Duration::from_secs(30));

    assert_eq!(config.limits.max_header_bytes, 16 * 1024);
    assert_eq!(config.limits.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(config.limits.header_timeout, Duration::from_secs(10));
    assert_eq!(config.limits.body_timeout, Duration::from_secs(30));
    assert_eq!(config.limits.idle_timeout, Duration::from_secs(60));

    let provider = &config.providers[0];
    assert_eq!(provider.name, "mock");
    assert_eq!(provider.kind, ProviderKind::OpenAi);
    assert_eq!(provider.api_key, None);
    assert_eq!(provider.connect_timeout, Duration::from_secs(5));
    assert_eq!(provider.first_byte_timeout, Duration::from_secs(60));
    assert_eq!(provider.idle_timeout, Duration::from_secs(60));
    assert_eq!(provider.ca_file, None);
    assert_eq!(provider.max_idle_connections, 64);

    let model = &config.models[0];
    assert_eq!(model.provider, 0);
    assert_eq!(model.upstream_model, "gpt-4o-mini");
    assert_eq!(model.encoding, Encoding::O200kBase);

    assert_eq!(model.price, None);

    assert!(config.consumers.is_empty());
    assert_eq!(config.audit.path, PathBuf::from("sluice-audit.jsonl"));
    assert_eq!(config.audit.flush_interval, Duration::from_millis(1000));

    assert_eq!(config.admin.token_sha256, None);
    let quota = &config.quota;
    assert_eq!(quota.state_path, Some(PathBuf::from("sluice-quota.redb")));
    assert_eq!(quota.flush_interval, Duration::from_millis(1000));
    assert_eq!(quota.default_max_tokens, 4096);
    assert_eq!(quota.completion_weight, 1.0);
    assert_eq!(quota.currency, "USD");
    assert!(quota.defaults.is_empty());
    assert!(config.cluster.is_none());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn every_field_is_read() {
    let file = existing_file();
    let config = ok(&format!(
        r#"
[[listeners]]
address = "0.0.0.0:8443"
tls = {{ cert_file = "{file}", key_file = "{file}" }}
[[listeners]]
address = "[::1]:0"
[admin]
address = "[::1]:9999"
[workers]
count = 3
pin_cpus = true
drain_timeout_ms = 1500
[limits]
max_header_bytes = 2048
max_body_bytes = 100
header_timeout_ms = 1
body_timeout_ms = 2
idle_timeout_ms = 3
[[providers]]
name = "a"
kind = "openai"
base_url = "https://api.example.com/v1/"
api_key = "upstream-key"
connect_timeout_ms = 4
first_byte_timeout_ms = 5
idle_timeout_ms = 6
ca_file = "{file}"
max_idle_connections = 0
[[providers]]
name = "b"
base_url = "http://[::1]:9000"
[[models]]
name = "m1"
provider = "b"
upstream_model = "real-m1"
encoding = "p50k_base"
[[models]]
name = "m2"
provider = "a"
encoding = "r50k_base"
[[consumers]]
name = "c"
keys = [{{ id = "laptop", sha256 = "{hash}" }}, {{ sha256 = "{hash_upper}" }}]
allowed_models = ["m2"]
[audit]
path = "run/audit.jsonl"
flush_interval_ms = 250
"#,
        hash = sha256_hex("one"),
        hash_upper = sha256_hex("two").to_uppercase(),
    ));

    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, PathBuf::from(&file));
    assert_eq!(tls.key_file, PathBuf::from(&file));
    assert_eq!(config.listeners[1].address.port(), 0);
    assert_eq!(
        config.admin.address,
        "[::1]:9999".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.workers.count.get(), 3);
    assert!(config.workers.pin_cpus);
    assert_eq!(config.workers.drain_timeout, Duration::from_millis(1500));
    assert_eq!(config.limits.max_header_bytes, 2048);
    assert_eq!(config.limits.max_body_bytes, 100);
    assert_eq!(
        (
            config.limits.header_timeout,
            config.limits.body_timeout,
            config.limits.idle_timeout
        ),
        (
            Duration::from_millis(1),
            Duration::from_millis(2),
            Duration::from_millis(3)
        )
    );

    let a = &config.providers[0];
    assert!(a.base_url.tls);
    assert_eq!(a.base_url.host, "api.example.com");
    assert_eq!(a.base_url.path, "/v1");
    assert_eq!(a.api_key.as_deref(), Some("upstream-key"));
    assert_eq!(a.connect_timeout, Duration::from_millis(4));
    assert_eq!(a.first_byte_timeout, Duration::from_millis(5));
    assert_eq!(a.idle_timeout, Duration::from_millis(6));
    assert_eq!(a.ca_file, Some(PathBuf::from(&file)));
    assert_eq!(a.max_idle_connections, 0);
    assert_eq!(config.providers[1].base_url.authority(), "[::1]:9000");

    assert_eq!(config.models[0].provider, 1);
    assert_eq!(config.models[0].upstream_model, "real-m1");
    assert_eq!(config.models[0].encoding, Encoding::P50kBase);
    assert_eq!(config.models[1].provider, 0);
    assert_eq!(config.models[1].upstream_model, "m2");
    assert_eq!(config.models[1].encoding.as_str(), "r50k_base");

    let consumer = &config.consumers[0];
    assert_eq!(consumer.keys[0].id, "laptop");
    assert_eq!(hex::encode(consumer.keys[0].sha256), sha256_hex("one"));
    assert_eq!(consumer.keys[1].id, "c#1");
    assert_eq!(hex::encode(consumer.keys[1].sha256), sha256_hex("two"));
    assert_eq!(consumer.allowed_models, Some(vec!["m2".to_string()]));
    assert!(consumer.allows("m2"));
    assert!(!consumer.allows("m1"));

    assert_eq!(config.audit.path, PathBuf::from("run/audit.jsonl"));
    assert_eq!(config.audit.flush_interval, Duration::from_millis(250));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn reports_every_error_with_its_path() {
    let e = errors(
        r#"
[[listeners]]
address = "x"
[[listeners]]
tls = { cert_file = "/nonexistent/sluice/cert.pem" }

[admin]
address = "127.0.0.1"

[workers]
count = 0
drain_timeout_ms = 0

[limits]
max_header_bytes = 100
max_body_bytes = 0
idle_timeout_ms = 90000000

[[providers]]
name = "p"
base_url = "http://127.0.0.1:9000/v1"
[[providers]]
name = "p"
kind = "bedrock"
base_url = "ftp://example.com"
api_key = "k"
key_env = "K"
[[providers]]
base_url = "not a url"
ca_file = "/nonexistent/sluice/ca.pem"
connect_timeout_ms = 0

[[models]]
name = "m"
provider = "p"
[[models]]
name = "m"
provider = "nope"
encoding = "gpt2"
[[models]]
provider = "p"
upstream_model = ""

[[consumers]]
name = "c"
keys = [
  { sha256 = "abc" },
  { plain = "same" },
  { plain = "same" },
  { },
  { plain = "x", sha256 = "00" },
]
allowed_models = ["m", "gpt-4", "gpt-9"]
[[consumers]]
name = "c"
keys = []
allowed_models = []

[audit]
path = ""
flush_interval_ms = 0
"#,
    );
    let expected = [
        "listeners[0].address",
        "listeners[1].address",
        "listeners[1].tls.cert_file",
        "listeners[1].tls.key_file",
        "admin.address",
        "workers.count",
        "workers.drain_timeout_ms",
        "limits.max_header_bytes",
        "limits.max_body_bytes",
        "limits.idle_timeout_ms",
        "providers[1].name",
        "providers[1].kind",
        "providers[1].base_url",
        "providers[1].key_env",
        "providers[2].name",
        "providers[2].base_url",
        "providers[2].connect_timeout_ms",
        "providers[2].ca_file",
        "models[1].name",
        "models[1].provider",
        "models[1].encoding",
        "models[2].name",
        "models[2].upstream_model",
        "consumers[0].keys[0].sha256",
        "consumers[0].keys[2]",
        "consumers[0].keys[3]",
        "consumers[0].keys[4]",
        "consumers[0].allowed_models[1]",
        "consumers[0].allowed_models[2]",
        "consumers[1].name",
        "consumers[1].keys",
        "consumers[1].allowed_models",
        "audit.path",
        "audit.flush_interval_ms",
    ];
    assert_eq!(e.paths(), expected, "\n{e}");

    // Spot-check that messages say what is wrong.
    let message = |path: &str| {
        e.0.iter()
            .find(|err| err.path == path)
            .map(|err| err.message.clone())
            .unwrap()
    };
    assert!(message("listeners[0].address").contains("invalid socket address \"x\""));
    assert!(message("providers[1].name").contains("duplicate name \"p\" (also providers[0])"));
    assert!(message("providers[1].base_url").contains("unsupported scheme \"ftp\""));
    assert!(message("providers[2].base_url").contains("not a URL"));
    assert!(message("models[1].provider").contains("unknown provider \"nope\""));
    assert!(message("consumers[0].allowed_models[2]").contains("unknown model \"gpt-9\""));
    assert!(message("consumers[0].keys[2]").contains("same key as consumers[0].keys[1]"));

    // Display: one "path: message" per line.
    let text = e.to_string();
    assert_eq!(text.lines().count(), expected.len());
    assert!(text
        .lines()
        .any(|l| l.starts_with("consumers[0].allowed_models[2]: unknown model \"gpt-9\"")));
}

#[test]
fn empty_file_names_every_required_section() {
    let e = errors("");
    assert_eq!(e.paths(), ["listeners", "providers", "models"], "\n{e}");
    let e = errors("listeners = []\nproviders = []\nmodels = []\n");
    assert_eq!(e.paths(), ["listeners", "providers", "models"], "\n{e}");
}

#[test]
fn missing_required_keys_are_reported_together() {
    let e = errors(
        "[[listeners]]\n[[providers]]\n[[models]]\n[[consumers]]\nkeys = [{ plain = \"k\" }]\n",
    );
    assert_eq!(
        e.paths(),
        [
            "listeners[0].address",
            "providers[0].name",
            "providers[0].base_url",
            "models[0].name",
            "models[0].provider",
            "consumers[0].name",
        ],
        "\n{e}"
    );
}

#[test]
fn plain_key_is_hashed_with_a_warning() {
    let config = ok(&format!(
        "{MINIMAL}\n[[consumers]]\nname = \"demo\"\nkeys = [{{ sha256 = \"{}\" }}, {{ plain = \"sk-demo\" }}]\n",
        sha256_hex("other")
    ));
    let key = &config.consumers[0].keys[1];
    assert_eq!(key.id, "demo#1");
    assert_eq!(hex::encode(key.sha256), sha256_hex("sk-demo"));
    assert_eq!(
        config.warnings,
        ["consumers[0].keys[1]: plain-text key; store its sha256 instead"]
    );
    assert_eq!(config.consumers[0].allowed_models, None);
    assert!(config.consumers[0].allows("anything"));
}

#[test]
fn same_key_as_hash_and_plain_is_a_duplicate() {
    let e = errors(&format!(
        "{MINIMAL}\n[[consumers]]\nname = \"a\"\nkeys = [{{ sha256 = \"{}\" }}]\n\
         [[consumers]]\nname = \"b\"\nkeys = [{{ plain = \"shared\" }}]\n",
        sha256_hex("shared")
    ));
    assert_eq!(e.paths(), ["consumers[1].keys[0]"], "\n{e}");
    assert!(e.0[0].message.contains("same key as consumers[0].keys[0]"));
}

#[test]
fn duplicate_key_ids_are_rejected() {
    let e = errors(&format!(
        "{MINIMAL}\n[[consumers]]\nname = \"a\"\nkeys = [{{ id = \"x\", plain = \"k1\" }}, {{ id = \"x\", plain = \"k2\" }}]\n"
    ));
    assert_eq!(e.paths(), ["consumers[0].keys[1].id"], "\n{e}");
}

#[test]
fn key_env_is_read_at_load() {
    let var = unique_var("KEY");
    std::env::set_var(&var, "sk-from-env");
    let source = MINIMAL.replace(
        "base_url = \"http://127.0.0.1:9000/v1\"",
        &format!("base_url = \"https://api.example.com/v1\"\nkey_env = \"{var}\""),
    );
    let config = ok(&source);
    assert_eq!(config.providers[0].api_key.as_deref(), Some("sk-from-env"));
    // The key must not leak through Debug.
    let debug = format!("{config:?}");
    assert!(!debug.contains("sk-from-env"), "{debug}");
    assert!(debug.contains("<redacted>"));
}

#[test]
fn missing_or_bad_key_env_is_an_error() {
    let missing = unique_var("MISSING");
    std::env::remove_var(&missing);
    let source = MINIMAL.replace(
        "base_url = \"http://127.0.0.1:9000/v1\"",
        &format!("base_url = \"http://127.0.0.1:9000/v1\"\nkey_env = \"{missing}\""),
    );
    let e = errors(&source);
    assert_eq!(e.paths(), ["providers[0].key_env"], "\n{e}");
    assert!(e.0[0]
        .message
        .contains(&format!("\"{missing}\" is not set")));

    let newline = unique_var("NEWLINE");
    std::env::set_var(&newline, "sk-abc\r\nX-Injected: 1");
    let source = MINIMAL.replace(
        "base_url = \"http://127.0.0.1:9000/v1\"",
        &format!("base_url = \"http://127.0.0.1:9000/v1\"\nkey_env = \"{newline}\""),
    );
    let e = errors(&source);
    assert_eq!(e.paths(), ["providers[0].key_env"], "\n{e}");
    assert!(e.0[0].message.contains("visible ASCII"));
}

#[test]
fn plain_http_key_to_remote_host_warns() {
    let source = MINIMAL.replace(
        "base_url = \"http://127.0.0.1:9000/v1\"",
        "base_url = \"http://llm.internal:8000/v1\"\napi_key = \"k\"",
    );
    let config = ok(&source);
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].starts_with("providers[0].base_url: "));
}

#[test]
fn unknown_field_is_rejected_with_path_and_line() {
    let e = errors(&format!("{MINIMAL}bogus_key = 1\n"));
    assert_eq!(e.paths(), ["models[0].bogus_key"], "\n{e}");
    let message = &e.0[0].message;
    assert!(message.contains("unknown field `bogus_key`"), "{message}");
    assert!(message.contains("expected one of"), "{message}");
    assert!(message.contains("line 12, column 1"), "{message}");

    // Inside an inline table inside an array.
    let e = errors(&format!(
        "{MINIMAL}[[consumers]]\nname = \"c\"\nkeys = [{{ plain = \"a\" }}, {{ sah256 = \"00\" }}]\n"
    ));
    assert_eq!(e.paths(), ["consumers[0].keys[1].sah256"], "\n{e}");
    assert!(e.0[0].message.contains("unknown field `sah256`"));

    // An unknown top-level table.
    let e = errors(&format!("{MINIMAL}[limit]\nmax_body_bytes = 1\n"));
    assert_eq!(e.paths(), ["limit"], "\n{e}");
}

#[test]
fn type_errors_carry_the_key_path() {
    let e = errors(&format!("{MINIMAL}[workers]\ncount = \"two\"\n"));
    assert_eq!(e.paths(), ["workers.count"], "\n{e}");
    assert!(
        e.0[0].message.contains("invalid type"),
        "{}",
        e.0[0].message
    );

    let e = errors(&format!("{MINIMAL}[limits]\nbody_timeout_ms = -5\n"));
    assert_eq!(e.paths(), ["limits.body_timeout_ms"], "\n{e}");

    let e = errors(&MINIMAL.replace(
        "name = \"mock\"",
        "name = \"mock\"\nconnect_timeout_ms = 1.5",
    ));
    assert_eq!(e.paths(), ["providers[0].connect_timeout_ms"], "\n{e}");
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = errors("[[listeners]]\naddress = \"127.0.0.1:8080\n");
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].path, "");
    assert!(e.0[0].message.contains("line 2"), "{}", e.0[0].message);
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn tls_files_must_exist() {
    let file = existing_file();
    let source = MINIMAL.replace(
        "address = \"127.0.0.1:8080\"",
        &format!(
            "address = \"127.0.0.1:8443\"\ntls = {{ cert_file = \"{file}\", key_file = \"/nonexistent/sluice/key.pem\" }}"
        ),
    );
    let e = errors(&source);
    assert_eq!(e.paths(), ["listeners[0].tls.key_file"], "\n{e}");
    assert!(e.0[0].message.contains("/nonexistent/sluice/key.pem"));

    // A directory is not a certificate.
    let dir = env!("CARGO_MANIFEST_DIR");
    let source = MINIMAL.replace(
        "address = \"127.0.0.1:8080\"",
        &format!("address = \"127.0.0.1:8443\"\ntls = {{ cert_file = \"{dir}\", key_file = \"{file}\" }}"),
    );
    let e = errors(&source);
    assert_eq!(e.paths(), ["listeners[0].tls.cert_file"], "\n{e}");
}

#[test]
fn listener_and_admin_addresses_must_not_clash() {
    let e = errors(&MINIMAL.replace(
        "[[providers]]",
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[admin]\naddress = \"127.0.0.1:8080\"\n[[providers]]",
    ));
    assert_eq!(
        e.paths(),
        ["listeners[1].address", "admin.address"],
        "\n{e}"
    );
}

#[test]
fn model_lookup_by_public_name() {
    let config = ok(&format!(
        "{MINIMAL}[[models]]\nname = \"alias\"\nprovider = \"mock\"\nupstream_model = \"gpt-4o-mini\"\nencoding = \"cl100k_base\"\n"
    ));
    let (index, model) = config.model("alias").unwrap();
    assert_eq!(index, 1);
    assert_eq!(model.upstream_model, "gpt-4o-mini");
    assert_eq!(model.encoding, Encoding::Cl100kBase);
    assert_eq!(config.model("gpt-4o-mini").map(|(i, _)| i), Some(0));
    assert!(config.model("gpt-9").is_none());
}

#[test]
fn encodings_round_trip() {
    for encoding in Encoding::ALL {
        let config = ok(&MINIMAL.replace(
            "provider = \"mock\"",
            &format!("provider = \"mock\"\nencoding = \"{encoding}\""),
        ));
        assert_eq!(config.models[0].encoding, encoding);
    }
}

#[test]
fn sha256_hex_matches_known_vector() {
    // FIPS 180-2 test vector for "abc".
    assert_eq!(
        sha256_hex("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn load_reports_unreadable_file_by_name() {
    let path = Path::new("/nonexistent/sluice/sluice.toml");
    let e = Config::load(path).unwrap_err();
    assert_eq!(e.paths(), ["/nonexistent/sluice/sluice.toml"]);
    assert!(e
        .to_string()
        .starts_with("/nonexistent/sluice/sluice.toml: cannot read"));
}

#[test]
fn every_example_loads() {
    for (var, value) in [
        ("OPENAI_API_KEY", "sk-test-placeholder"),
        ("SLUICE_ADMIN_TOKEN", "admin-test-placeholder"),
        ("SLUICE_REDIS_URL", "redis://:placeholder@127.0.0.1:6379/0"),
        ("ANTHROPIC_API_KEY", "sk-ant-test-placeholder"),
    ] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, value);
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
            assert!(!config.models.is_empty());
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "cluster.toml",
            "fallback.toml",
            "openai.toml",
            "providers.toml",
            "quickstart.toml",
            "routing.toml"
        ]
    );
}

#[test]
fn quickstart_example_matches_its_description() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.toml");
    let config = Config::load(&path).unwrap();
    assert_eq!(config.listeners[0].address.to_string(), "127.0.0.1:8080");
    assert_eq!(config.admin.address.to_string(), "127.0.0.1:9901");
    assert_eq!(config.providers[0].name, "mock");
    assert_eq!(
        config.providers[0].base_url.to_string(),
        "http://127.0.0.1:9000/v1"
    );
    assert_eq!(config.providers[0].api_key.as_deref(), Some("mock-key"));
    let models: Vec<(&str, &str)> = config
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.encoding.as_str()))
        .collect();
    assert_eq!(
        models,
        [
            ("gpt-4o-mini", "o200k_base"),
            ("gpt-3.5-turbo", "cl100k_base"),
            ("text-embedding-3-small", "cl100k_base"),
        ]
    );
    assert_eq!(
        hex::encode(config.consumers[0].keys[0].sha256),
        sha256_hex("sk-sluice-demo")
    );
    assert_eq!(
        config.warnings,
        [
            "admin.token: plain-text admin token; in production use token_env or token_sha256",
            "consumers[0].keys[0]: plain-text key; store its sha256 instead",
        ]
    );
    assert_eq!(config.audit.path, PathBuf::from("run/audit.jsonl"));

    // Quotas on, but generous enough that the demo never meets them.
    assert_eq!(
        config.admin.token_sha256.map(hex::encode),
        Some(sha256_hex("admin-demo"))
    );
    assert_eq!(
        config.quota.state_path,
        Some(PathBuf::from("run/quota.redb"))
    );
    let limits: Vec<(&str, u64)> = config.consumers[0]
        .limits
        .iter()
        .map(|(name, value)| (name, value.get()))
        .collect();
    assert_eq!(
        limits,
        [
            ("requests_per_second", 100),
            ("tokens_per_minute", 1_000_000)
        ]
    );
    assert!(config.consumers[0].model_limits.is_empty());
    assert_eq!(config.consumers[0].balance, None);
    assert!(config.models.iter().all(|m| m.price.is_some()));
}

#[test]
fn cluster_example_is_a_cluster_node() {
    let redis = unique_var("EXAMPLE_REDIS");
    let token = unique_var("EXAMPLE_ADMIN");
    let key = unique_var("EXAMPLE_OPENAI");
    std::env::set_var(&redis, "redis://:s3cret@10.0.0.5:6379/0");
    std::env::set_var(&token, "admin-token");
    std::env::set_var(&key, "sk-test");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster.toml");
    let source = std::fs::read_to_string(path)
        .unwrap()
        .replace("\"SLUICE_REDIS_URL\"", &format!("\"{redis}\""))
        .replace("\"SLUICE_ADMIN_TOKEN\"", &format!("\"{token}\""))
        .replace("\"OPENAI_API_KEY\"", &format!("\"{key}\""));
    let config = ok(&source);
    let cluster = config.cluster.as_ref().unwrap();
    assert_eq!(cluster.redis.to_string(), "redis://10.0.0.5:6379/0");
    assert_eq!(cluster.redis.password.as_deref(), Some("s3cret"));
    assert_eq!(cluster.node_id, "edge-1");
    assert!(cluster.fail_open);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

// ----- token economy: [quota], limits, prices, admin token, [cluster] -------

/// The issue's sample: every new key, with the values it documents.
const ECONOMY: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"

[admin]
address = "127.0.0.1:9901"
token_env = "@ADMIN_VAR@"

[quota]
state_path = "run/quota.redb"
flush_interval_ms = 1000
default_max_tokens = 4096
completion_weight = 1.0
currency = "USD"

[quota.defaults]
requests_per_second = 50
requests_per_minute = 1000
concurrent_requests = 20
tokens_per_minute = 100000
tokens_per_hour = 1000000
tokens_per_day = 10000000
budget_per_day = 10.0
budget_per_month = 100.0

[[providers]]
name = "mock"
base_url = "http://127.0.0.1:9000/v1"

[[models]]
name = "gpt-4o-mini"
provider = "mock"
price = { input_per_million = 0.15, output_per_million = 0.60, cached_input_per_million = 0.075 }

[[consumers]]
name = "alice"
keys = [ { plain = "sk-alice" } ]
balance = 1000000
limits = { tokens_per_minute = 10000, budget_per_day = 5.0 }
unlimited = ["requests_per_second"]
model_limits = { "gpt-4o-mini" = { tokens_per_minute = 5000, requests_per_minute = 60 } }

[cluster]
redis = "redis://127.0.0.1:6379/0"
node_id = "edge-1"
lease_fraction = 0.05
lease_ttl_ms = 2000
on_redis_down = "open"
connect_timeout_ms = 500
"#;

/// `Some(NonZeroU64)` from a literal, for comparing limit sets.
fn nz(value: u64) -> Option<NonZeroU64> {
    NonZeroU64::new(value)
}

/// MINIMAL with `extra` appended, a second priced model "priced" and one
/// consumer "c" whose table ends with `consumer` lines.
fn with_consumer(extra: &str, consumer: &str) -> String {
    format!(
        "{MINIMAL}[[models]]\nname = \"priced\"\nprovider = \"mock\"\n\
         price = {{ input_per_million = 1.0, output_per_million = 2.0 }}\n\
         [[consumers]]\nname = \"c\"\nkeys = [{{ sha256 = \"{}\" }}]\n{consumer}\n{extra}\n",
        sha256_hex("c-key")
    )
}

#[test]
fn token_economy_sample_is_read() {
    let var = unique_var("ECONOMY_ADMIN");
    std::env::set_var(&var, "admin-secret");
    let config = ok(&ECONOMY.replace("@ADMIN_VAR@", &var));

    assert_eq!(
        config.admin.token_sha256.map(hex::encode),
        Some(sha256_hex("admin-secret"))
    );

    let quota = &config.quota;
    assert_eq!(quota.state_path, Some(PathBuf::from("run/quota.redb")));
    assert_eq!(quota.flush_interval, Duration::from_secs(1));
    assert_eq!(quota.default_max_tokens, 4096);
    assert_eq!(quota.completion_weight, 1.0);
    assert_eq!(quota.currency, "USD");
    assert_eq!(
        quota.defaults,
        LimitSet {
            requests_per_second: nz(50),
            requests_per_minute: nz(1000),
            concurrent_requests: nz(20),
            tokens_per_minute: nz(100_000),
            tokens_per_hour: nz(1_000_000),
            tokens_per_day: nz(10_000_000),
            budget_per_day_micros: nz(10_000_000),
            budget_per_month_micros: nz(100_000_000),
        }
    );

    assert_eq!(
        config.models[0].price,
        Some(Price {
            input_per_million: 0.15,
            output_per_million: 0.60,
            cached_input_per_million: 0.075,
        })
    );

    let alice = &config.consumers[0];
    assert_eq!(alice.balance, Some(1_000_000));
    // Defaults, with tokens_per_minute and budget_per_day replaced and
    // requests_per_second lifted.
    assert_eq!(
        alice.limits,
        LimitSet {
            requests_per_second: None,
            requests_per_minute: nz(1000),
            concurrent_requests: nz(20),
            tokens_per_minute: nz(10_000),
            tokens_per_hour: nz(1_000_000),
            tokens_per_day: nz(10_000_000),
            budget_per_day_micros: nz(5_000_000),
            budget_per_month_micros: nz(100_000_000),
        }
    );
    let per_model = LimitSet {
        tokens_per_minute: nz(5000),
        requests_per_minute: nz(60),
        ..LimitSet::default()
    };
    assert_eq!(alice.model_limits, [(0, per_model.clone())]);
    assert_eq!(alice.limits_for(0), Some(&per_model));
    assert_eq!(alice.limits_for(1), None);

    let cluster = config.cluster.as_ref().unwrap();
    assert_eq!(cluster.redis.host, "127.0.0.1");
    assert_eq!(cluster.redis.port, 6379);
    assert_eq!(cluster.redis.db, 0);
    assert_eq!(cluster.redis.password, None);
    assert_eq!(cluster.node_id, "edge-1");
    assert_eq!(cluster.lease_fraction, 0.05);
    assert_eq!(cluster.lease_ttl, Duration::from_secs(2));
    assert!(cluster.fail_open);
    assert_eq!(cluster.connect_timeout, Duration::from_millis(500));

    assert_eq!(
        config.warnings,
        ["consumers[0].keys[0]: plain-text key; store its sha256 instead"]
    );
}

#[test]
fn consumer_limits_merge_with_defaults_key_by_key() {
    let defaults = "[quota.defaults]\nrequests_per_second = 5\ntokens_per_day = 1000\nbudget_per_month = 2.5\n";
    // Only the priced model, so the budget draws no warning.
    let priced = "allowed_models = [\"priced\"]";
    // No own limits: exactly the defaults.
    let config = ok(&with_consumer(defaults, ""));
    assert_eq!(config.consumers[0].limits, config.quota.defaults);
    assert_eq!(
        config.consumers[0].limits.budget_per_month_micros,
        nz(2_500_000)
    );

    // Own keys replace, other defaults stay, `unlimited` lifts.
    let config = ok(&with_consumer(
        defaults,
        &format!("{priced}\nlimits = {{ requests_per_second = 7, concurrent_requests = 3 }}\nunlimited = [\"tokens_per_day\"]"),
    ));
    assert_eq!(
        config.consumers[0].limits,
        LimitSet {
            requests_per_second: nz(7),
            concurrent_requests: nz(3),
            budget_per_month_micros: nz(2_500_000),
            ..LimitSet::default()
        }
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    // Lifting everything leaves no limit at all.
    let config = ok(&with_consumer(
        defaults,
        "unlimited = [\"requests_per_second\", \"tokens_per_day\", \"budget_per_month\"]",
    ));
    assert!(config.consumers[0].limits.is_empty());

    // Lifting a limit the defaults do not set is allowed but pointless.
    let config = ok(&with_consumer(
        defaults,
        &format!("{priced}\nunlimited = [\"tokens_per_hour\"]"),
    ));
    assert_eq!(config.consumers[0].limits, config.quota.defaults);
    assert_eq!(
        config.warnings,
        ["consumers[0].unlimited[0]: quota.defaults sets no tokens_per_hour, so this entry changes nothing"]
    );

    // Budgets round to the nearest micro-unit.
    let config = ok(&with_consumer(
        "",
        "limits = { budget_per_day = 0.0000015 }",
    ));
    assert_eq!(config.consumers[0].limits.budget_per_day_micros, nz(2));
}

#[test]
fn every_limit_name_is_a_key() {
    for name in LimitSet::NAMES {
        let config = ok(&format!("{MINIMAL}[quota.defaults]\n{name} = 3\n"));
        let set = &config.quota.defaults;
        let expected = if name.starts_with("budget_") {
            3_000_000
        } else {
            3
        };
        assert_eq!(set.get(name), nz(expected), "{name}");
        assert_eq!(set.iter().count(), 1, "{name}");
    }
}

#[test]
fn model_limits_resolve_to_model_indices() {
    let config = ok(&format!(
        "{MINIMAL}[[models]]\nname = \"gpt-3.5-turbo\"\nprovider = \"mock\"\n\
         [[models]]\nname = \"zeta\"\nprovider = \"mock\"\n\
         [[consumers]]\nname = \"c\"\nkeys = [{{ plain = \"k\" }}]\n\
         model_limits = {{ zeta = {{ requests_per_second = 1 }}, \"gpt-3.5-turbo\" = {{ tokens_per_hour = 2 }}, \"gpt-4o-mini\" = {{ concurrent_requests = 3 }} }}\n"
    ));
    let consumer = &config.consumers[0];
    let resolved: Vec<(usize, Vec<(&str, u64)>)> = consumer
        .model_limits
        .iter()
        .map(|(m, set)| (*m, set.iter().map(|(n, v)| (n, v.get())).collect()))
        .collect();
    assert_eq!(
        resolved,
        [
            (0, vec![("concurrent_requests", 3)]),
            (1, vec![("tokens_per_hour", 2)]),
            (2, vec![("requests_per_second", 1)]),
        ]
    );
    let (index, _) = config.model("zeta").unwrap();
    assert_eq!(
        consumer.limits_for(index).unwrap().requests_per_second,
        nz(1)
    );
    // Model limits do not leak into the consumer's own limits.
    assert!(consumer.limits.is_empty());
}

#[test]
fn token_economy_errors_have_paths() {
    let e = errors(
        r#"
[[listeners]]
address = "127.0.0.1:8080"

[admin]
token = "t"
token_sha256 = "00"

[quota]
flush_interval_ms = 5
default_max_tokens = 0
completion_weight = 0.0
currency = "usd"

[quota.defaults]
requests_per_second = 0
budget_per_day = -1.0

[[providers]]
name = "mock"
base_url = "http://127.0.0.1:9000/v1"

[[models]]
name = "a"
provider = "mock"
price = { input_per_million = -0.5, output_per_million = 0.6, cached_input_per_million = inf }
[[models]]
name = "gpt-3.5-turbo"
provider = "mock"
price = { cached_input_per_million = 0.1 }

[[consumers]]
name = "c"
keys = [{ plain = "k" }]
allowed_models = ["a"]
balance = -1
limits = { tokens_per_minute = 0, budget_per_month = 0.0000001 }
unlimited = ["tokens_per_minute", "tokens_per_week"]
model_limits = { "gpt-3.5-turbo" = { requests_per_minute = 1 }, "gpt-9" = { tokens_per_day = 0 } }

[cluster]
redis = "http://127.0.0.1:6379"
node_id = "edge 1"
lease_fraction = 0.6
lease_ttl_ms = 50
on_redis_down = "maybe"
connect_timeout_ms = 0
"#,
    );
    let expected = [
        "admin",
        "quota.defaults.requests_per_second",
        "quota.defaults.budget_per_day",
        "quota.flush_interval_ms",
        "quota.default_max_tokens",
        "quota.completion_weight",
        "quota.currency",
        "models[0].price.input_per_million",
        "models[0].price.cached_input_per_million",
        "models[1].price.input_per_million",
        "models[1].price.output_per_million",
        "consumers[0].balance",
        "consumers[0].limits.tokens_per_minute",
        "consumers[0].limits.budget_per_month",
        "consumers[0].unlimited[0]",
        "consumers[0].unlimited[1]",
        "consumers[0].model_limits.\"gpt-3.5-turbo\"",
        "consumers[0].model_limits.gpt-9",
        "consumers[0].model_limits.gpt-9.tokens_per_day",
        "cluster.redis",
        "cluster.node_id",
        "cluster.lease_fraction",
        "cluster.lease_ttl_ms",
        "cluster.on_redis_down",
        "cluster.connect_timeout_ms",
    ];
    assert_eq!(e.paths(), expected, "\n{e}");

    let message = |path: &str| {
        e.0.iter()
            .find(|err| err.path == path)
            .map(|err| err.message.clone())
            .unwrap()
    };
    assert!(message("admin").contains("only one of token_env, token_sha256 or token"));
    assert!(message("quota.defaults.requests_per_second")
        .contains("must be > 0; remove the key for no limit"));
    assert!(message("quota.defaults.budget_per_day").contains("-1 is not a positive amount"));
    assert!(message("quota.flush_interval_ms").contains("5 is out of range 10..=60000"));
    assert!(message("quota.currency").contains("got \"usd\""));
    assert!(message("models[0].price.input_per_million").contains("-0.5 is out of range"));
    assert!(message("models[1].price.output_per_million").starts_with("missing"));
    assert!(message("consumers[0].limits.tokens_per_minute")
        .contains("use unlimited = [\"tokens_per_minute\"]"));
    assert!(message("consumers[0].limits.budget_per_month").contains("less than 0.000001"));
    assert!(message("consumers[0].unlimited[0]").contains("also set in consumers[0].limits"));
    assert!(message("consumers[0].unlimited[1]")
        .contains("unknown limit \"tokens_per_week\"; expected one of: requests_per_second,"));
    assert!(message("consumers[0].model_limits.\"gpt-3.5-turbo\"")
        .contains("may not use \"gpt-3.5-turbo\"; add it to consumers[0].allowed_models"));
    assert!(message("consumers[0].model_limits.gpt-9").contains("unknown model \"gpt-9\""));
    assert!(message("cluster.redis").contains("unsupported scheme \"http\""));
    assert!(message("cluster.lease_fraction").contains("0 < lease_fraction <= 0.5"));
    assert!(message("cluster.on_redis_down").contains("\"open\" or \"closed\""));
}

#[test]
fn not_a_number_is_out_of_range() {
    let e = errors(&format!(
        "{MINIMAL}price = {{ input_per_million = nan, output_per_million = 1.0 }}\n\
         [quota]\ncompletion_weight = nan\n[quota.defaults]\nbudget_per_day = nan\n\
         [cluster]\nredis = \"redis://127.0.0.1\"\nlease_fraction = nan\n"
    ));
    assert_eq!(
        e.paths(),
        [
            "quota.defaults.budget_per_day",
            "quota.completion_weight",
            "models[0].price.input_per_million",
            "cluster.lease_fraction",
        ],
        "\n{e}"
    );
}

#[test]
fn limit_keys_are_checked_by_serde_with_quoted_paths() {
    let e = errors(&format!(
        "{MINIMAL}[[consumers]]\nname = \"c\"\nkeys = [{{ plain = \"k\" }}]\n\
         model_limits = {{ \"gpt-4o-mini\" = {{ tokens_per_week = 1 }} }}\n"
    ));
    assert_eq!(
        e.paths(),
        ["consumers[0].model_limits.gpt-4o-mini.tokens_per_week"],
        "\n{e}"
    );
    let e = errors(&format!(
        "{MINIMAL}[[models]]\nname = \"gpt-3.5-turbo\"\nprovider = \"mock\"\n[[consumers]]\nname = \"c\"\n\
         keys = [{{ plain = \"k\" }}]\nmodel_limits = {{ \"gpt-3.5-turbo\" = {{ tokens_per_day = -1 }} }}\n"
    ));
    assert_eq!(
        e.paths(),
        ["consumers[0].model_limits.\"gpt-3.5-turbo\".tokens_per_day"],
        "\n{e}"
    );
    let e = errors(&format!(
        "{MINIMAL}[quota.defaults]\ntokens_per_second = 5\n"
    ));
    assert_eq!(e.paths(), ["quota.defaults.tokens_per_second"], "\n{e}");
    let e = errors(&format!(
        "{MINIMAL}[cluster]\nredis = \"redis://h\"\nredis_url = \"x\"\n"
    ));
    assert_eq!(e.paths(), ["cluster.redis_url"], "\n{e}");
}

#[test]
fn price_defaults_cached_input_to_input() {
    let config = ok(&MINIMAL.replace(
        "provider = \"mock\"",
        "provider = \"mock\"\nprice = { input_per_million = 0.5, output_per_million = 0 }",
    ));
    let price = config.models[0].price.unwrap();
    assert_eq!(price.cached_input_per_million, 0.5);
    assert_eq!(price.output_per_million, 0.0);
    // 1000 prompt tokens (400 cached) and 500 completion tokens at
    // 0.15 / 0.60 / 0.075 per million: 90 + 30 + 300 micro-units.
    let sample = Price {
        input_per_million: 0.15,
        output_per_million: 0.60,
        cached_input_per_million: 0.075,
    };
    assert_eq!(sample.cost_micros(1000, 400, 500), 420);
}

#[test]
fn budget_on_unpriced_model_warns() {
    let budget = "[quota.defaults]\nbudget_per_day = 1.0\n";
    // "gpt-4o-mini" has no price; "priced" has one.
    let config = ok(&with_consumer(budget, ""));
    assert_eq!(
        config.warnings,
        [
            "consumers[0]: has a budget but may use unpriced model(s) \"gpt-4o-mini\": their \
          requests cost 0 and never count against it; set models[].price"
        ]
    );

    // Limited to the priced model: nothing to warn about.
    let config = ok(&with_consumer(budget, "allowed_models = [\"priced\"]"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    // Budget lifted for the consumer: nothing to warn about either.
    let config = ok(&with_consumer(budget, "unlimited = [\"budget_per_day\"]"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    // A per-model budget on the unpriced model.
    let config = ok(&with_consumer(
        "",
        "model_limits = { \"gpt-4o-mini\" = { budget_per_month = 3.0 }, priced = { budget_per_day = 1.0 } }",
    ));
    assert_eq!(
        config.warnings,
        ["consumers[0].model_limits.gpt-4o-mini: \"gpt-4o-mini\" has no price, so its budget is \
          never spent; set models[].price"]
    );
}

#[test]
fn negative_balance_and_empty_model_limits() {
    let e = errors(&with_consumer("", "balance = -5"));
    assert_eq!(e.paths(), ["consumers[0].balance"], "\n{e}");

    let config = ok(&with_consumer(
        "",
        "balance = 0\nmodel_limits = { priced = {} }",
    ));
    assert_eq!(config.consumers[0].balance, Some(0));
    assert_eq!(config.consumers[0].model_limits, [(1, LimitSet::default())]);
    assert_eq!(
        config.warnings,
        ["consumers[0].model_limits.priced: sets no limit; remove it or add one"]
    );
}

#[test]
fn empty_state_path_keeps_quota_in_memory() {
    let config = ok(&format!(
        "{MINIMAL}[quota]\nstate_path = \"\"\ncurrency = \"EUR\"\n"
    ));
    assert_eq!(config.quota.state_path, None);
    assert_eq!(config.quota.currency, "EUR");
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].starts_with("quota.state_path: empty:"));
}

#[test]
fn admin_token_forms() {
    let admin =
        |lines: &str| MINIMAL.replace("[[providers]]", &format!("[admin]\n{lines}\n[[providers]]"));

    // token_sha256: taken as is, no warning.
    let config = ok(&admin(&format!("token_sha256 = \"{}\"", sha256_hex("tok"))));
    assert_eq!(
        config.admin.token_sha256.map(hex::encode),
        Some(sha256_hex("tok"))
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // Debug shows the hash as hex, like consumer keys.
    assert!(format!("{:?}", config.admin).contains(&sha256_hex("tok")));

    // token_env: read and hashed at load.
    let var = unique_var("ADMIN_TOKEN");
    std::env::set_var(&var, "from-env");
    let config = ok(&admin(&format!("token_env = \"{var}\"")));
    assert_eq!(
        config.admin.token_sha256.map(hex::encode),
        Some(sha256_hex("from-env"))
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    // token: hashed, with a warning.
    let config = ok(&admin("token = \"plain-admin\""));
    assert_eq!(
        config.admin.token_sha256.map(hex::encode),
        Some(sha256_hex("plain-admin"))
    );
    assert_eq!(
        config.warnings,
        ["admin.token: plain-text admin token; in production use token_env or token_sha256"]
    );

    // A token on a non-loopback admin address travels in plain HTTP.
    let config = ok(&admin(&format!(
        "address = \"0.0.0.0:9901\"\ntoken_sha256 = \"{}\"",
        sha256_hex("tok")
    )));
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].starts_with("admin.address: not a loopback address"));

    let missing = unique_var("ADMIN_MISSING");
    std::env::remove_var(&missing);
    for (lines, path) in [
        (format!("token_env = \"{missing}\""), "admin.token_env"),
        ("token_env = \"\"".to_string(), "admin.token_env"),
        ("token_sha256 = \"xyz\"".to_string(), "admin.token_sha256"),
        ("token = \"\"".to_string(), "admin.token"),
        ("token = \"two words\"".to_string(), "admin.token"),
        (
            "token = \"a\"\ntoken_env = \"B\"\ntoken_sha256 = \"00\"".to_string(),
            "admin",
        ),
    ] {
        let e = errors(&admin(&lines));
        assert_eq!(e.paths(), [path], "{lines}\n{e}");
    }
    let empty = unique_var("ADMIN_EMPTY");
    std::env::set_var(&empty, "");
    let e = errors(&admin(&format!("token_env = \"{empty}\"")));
    assert_eq!(e.paths(), ["admin.token_env"], "\n{e}");
}

#[test]
fn admin_token_must_not_be_a_consumer_key() {
    let e = errors(&format!(
        "{MINIMAL}[admin]\ntoken = \"shared\"\n[[consumers]]\nname = \"c\"\n\
         keys = [{{ plain = \"other\" }}, {{ sha256 = \"{}\" }}]\n",
        sha256_hex("shared")
    ));
    assert_eq!(e.paths(), ["admin.token"], "\n{e}");
    assert!(e.0[0].message.contains("same as consumers[0].keys[1]"));
}

#[test]
fn redis_url_comes_from_exactly_one_place() {
    let cluster = |lines: &str| format!("{MINIMAL}[cluster]\n{lines}\n");

    let e = errors(&cluster("node_id = \"n\""));
    assert_eq!(e.paths(), ["cluster.redis"], "\n{e}");
    let e = errors(&cluster("redis = \"redis://h\"\nredis_env = \"X\""));
    assert_eq!(e.paths(), ["cluster.redis_env"], "\n{e}");

    // redis_env holds the URL, password included, without a warning.
    let var = unique_var("REDIS_URL");
    std::env::set_var(&var, "redis://:pw@10.0.0.5:6380/2");
    let config = ok(&cluster(&format!(
        "redis_env = \"{var}\"\non_redis_down = \"closed\""
    )));
    let c = config.cluster.as_ref().unwrap();
    assert_eq!(
        (
            c.redis.host.as_str(),
            c.redis.port,
            c.redis.db,
            c.redis.password.as_deref()
        ),
        ("10.0.0.5", 6380, 2, Some("pw"))
    );
    assert!(!c.fail_open);
    assert!(
        config
            .warnings
            .iter()
            .all(|w| !w.starts_with("cluster.redis")),
        "{:?}",
        config.warnings
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains("\"pw\""), "{debug}");

    // Inline, a password is a warning.
    let config = ok(&cluster("redis = \"redis://:pw@h\"\nnode_id = \"n\""));
    assert_eq!(
        config.warnings,
        ["cluster.redis: the Redis password is written in the config file; use redis_env"]
    );

    // A bad URL in the variable names the variable, never the password.
    let bad = unique_var("REDIS_BAD");
    std::env::set_var(&bad, "redis://:hunter2@h:notaport/0");
    let e = errors(&cluster(&format!("redis_env = \"{bad}\"")));
    assert_eq!(e.paths(), ["cluster.redis_env"], "\n{e}");
    assert!(e.0[0].message.contains(&bad), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");

    let missing = unique_var("REDIS_MISSING");
    std::env::remove_var(&missing);
    let e = errors(&cluster(&format!("redis_env = \"{missing}\"")));
    assert_eq!(e.paths(), ["cluster.redis_env"], "\n{e}");
    assert!(e.0[0]
        .message
        .contains("is not set; export it or use redis"));
}

#[test]
fn cluster_defaults() {
    let config = ok(&format!("{MINIMAL}[cluster]\nredis = \"redis://[::1]\"\n"));
    let c = config.cluster.as_ref().unwrap();
    assert_eq!(c.redis.to_string(), "redis://[::1]:6379/0");
    assert_eq!(c.lease_fraction, 0.05);
    assert_eq!(c.lease_ttl, Duration::from_millis(2000));
    assert!(c.fail_open);
    assert_eq!(c.connect_timeout, Duration::from_millis(500));

    // node_id: the host name when it is usable, else "sluice" and a warning.
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    let usable = !host.is_empty()
        && host.len() <= 64
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if usable {
        assert_eq!(c.node_id, host);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    } else {
        assert_eq!(c.node_id, "sluice");
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].starts_with("cluster.node_id: "));
    }

    // Bounds are inclusive where the issue says so.
    let config = ok(&format!(
        "{MINIMAL}[cluster]\nredis = \"redis://h\"\nnode_id = \"a.b_c-1\"\nlease_fraction = 0.5\nlease_ttl_ms = 60000\n\
         [quota]\nflush_interval_ms = 10\ncompletion_weight = 100\n"
    ));
    let c = config.cluster.as_ref().unwrap();
    assert_eq!(
        (c.lease_fraction, c.lease_ttl),
        (0.5, Duration::from_secs(60))
    );
    assert_eq!(config.quota.flush_interval, Duration::from_millis(10));
    assert_eq!(config.quota.completion_weight, 100.0);
    let e = errors(&format!(
        "{MINIMAL}[cluster]\nredis = \"redis://h\"\nnode_id = \"\"\nlease_ttl_ms = 60001\n\
         [quota]\nflush_interval_ms = 60001\ncompletion_weight = 100.5\n"
    ));
    assert_eq!(
        e.paths(),
        [
            "quota.flush_interval_ms",
            "quota.completion_weight",
            "cluster.node_id",
            "cluster.lease_ttl_ms",
        ],
        "\n{e}"
    );
}

// ----- key pools, fallback chains, retries ------------------------------------

/// The issue's sample: a key pool, a fallback chain with `degrade_to`, and
/// `[retry]`, with the values it documents. `@KEY_VAR@` and `@KEY2_VAR@`
/// are replaced by unique variable names.
const FAILOVER: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"

[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1"
key_env = "@KEY_VAR@"
api_keys = [ { id = "k2", key_env = "@KEY2_VAR@" }, { id = "k3", key = "sk-inline" } ]
key_selection = "round_robin"
key_cooldown_ms = 60000
max_concurrency = 200

[[providers]]
name = "azure"
kind = "azure-openai"
base_url = "https://example.openai.azure.com"
api_key = "azure-key"

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key = "anthropic-key"
key_selection = "least_in_flight"
key_cooldown_ms = 1500

[[models]]
name = "gpt-4o"
provider = "openai"
upstream_model = "gpt-4o-2024-08-06"
fallbacks = [ { provider = "azure", model = "gpt4o-deploy" }, { provider = "anthropic", model = "claude-sonnet-4-5" } ]
fallback_on = ["429", "5xx", "connect", "timeout"]
degrade_to = { provider = "openai", model = "gpt-4o-mini" }

[retry]
max_attempts = 3
budget_ratio = 0.2
backoff_base_ms = 50
backoff_max_ms = 2000
"#;

/// FAILOVER with its two key variables set to `sk-primary` and `sk-second`.
fn failover_source(tag: &str) -> String {
    let key = unique_var(&format!("{tag}_KEY"));
    let key2 = unique_var(&format!("{tag}_KEY2"));
    std::env::set_var(&key, "sk-primary");
    std::env::set_var(&key2, "sk-second");
    FAILOVER
        .replace("@KEY_VAR@", &key)
        .replace("@KEY2_VAR@", &key2)
}

/// `UpstreamKey`s from (id, key) pairs.
fn upstream_keys(pairs: &[(&str, &str)]) -> Vec<UpstreamKey> {
    pairs
        .iter()
        .map(|(id, key)| UpstreamKey {
            id: id.to_string(),
            key: key.to_string(),
        })
        .collect()
}

/// MINIMAL with `provider` lines added to its provider and `model` lines
/// to its model, plus a second provider "backup".
fn with_failover(provider: &str, model: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
         [[providers]]\nname = \"mock\"\nbase_url = \"http://127.0.0.1:9000/v1\"\n{provider}\n\
         [[providers]]\nname = \"backup\"\nbase_url = \"http://127.0.0.1:9002/v1\"\n\
         [[models]]\nname = \"gpt-4o-mini\"\nprovider = \"mock\"\n{model}\n"
    )
}

#[test]
fn failover_sample_is_read() {
    let config = ok(&failover_source("FAILOVER"));

    let openai = &config.providers[0];
    assert_eq!(
        openai.keys,
        upstream_keys(&[
            ("primary", "sk-primary"),
            ("k2", "sk-second"),
            ("k3", "sk-inline")
        ])
    );
    // `api_key` stays the first key of the pool.
    assert_eq!(openai.api_key.as_deref(), Some("sk-primary"));
    assert_eq!(openai.key_selection, KeySelection::RoundRobin);
    assert_eq!(openai.key_cooldown, Duration::from_secs(60));
    assert_eq!(openai.max_concurrency, NonZeroU64::new(200));

    let anthropic = &config.providers[2];
    assert_eq!(
        anthropic.keys,
        upstream_keys(&[("primary", "anthropic-key")])
    );
    assert_eq!(anthropic.key_selection, KeySelection::LeastInFlight);
    assert_eq!(anthropic.key_cooldown, Duration::from_millis(1500));
    assert_eq!(anthropic.max_concurrency, None);

    let model = &config.models[0];
    assert_eq!(
        model.primary(),
        Target {
            provider: 0,
            upstream_model: "gpt-4o-2024-08-06".into()
        }
    );
    assert_eq!(
        model.fallbacks,
        [
            Target {
                provider: 1,
                upstream_model: "gpt4o-deploy".into()
            },
            Target {
                provider: 2,
                upstream_model: "claude-sonnet-4-5".into()
            },
        ]
    );
    assert_eq!(model.fallback_on, FallbackOn::default());
    assert_eq!(
        model.degrade_to,
        Some(Target {
            provider: 0,
            upstream_model: "gpt-4o-mini".into()
        })
    );

    assert_eq!(
        config.retry,
        Retry {
            max_attempts: 3,
            budget_ratio: 0.2,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    );
    assert_eq!(
        config.warnings,
        ["providers[0].api_keys[1]: plain-text key in the config file; use key_env instead"]
    );

    // No key of the pool leaks through Debug.
    let debug = format!("{config:?}");
    for key in ["sk-primary", "sk-second", "sk-inline", "azure-key"] {
        assert!(!debug.contains(key), "{key} in {debug}");
    }
    assert!(debug.contains("id: \"k3\", key: \"<redacted>\""), "{debug}");
}

#[test]
fn failover_defaults() {
    let config = ok(MINIMAL);
    let provider = &config.providers[0];
    assert!(provider.keys.is_empty());
    assert_eq!(provider.api_key, None);
    assert_eq!(provider.key_selection, KeySelection::RoundRobin);
    assert_eq!(provider.key_cooldown, Duration::from_secs(60));
    assert_eq!(provider.max_concurrency, None);

    let model = &config.models[0];
    assert!(model.fallbacks.is_empty());
    assert_eq!(model.degrade_to, None);
    assert_eq!(
        model.fallback_on,
        FallbackOn {
            statuses: vec![StatusMatch::Code(429), StatusMatch::Class(5)],
            connect: true,
            timeout: true,
        }
    );

    assert_eq!(config.retry, Retry::default());
    assert_eq!(config.retry.max_attempts, 3);
    assert_eq!(config.retry.budget_ratio, 0.2);
    assert_eq!(config.retry.backoff_base, Duration::from_millis(50));
    assert_eq!(config.retry.backoff_max, Duration::from_millis(2000));

    // A single inline key is the whole pool, with id "primary" and no
    // warning (unlike `api_keys[].key`).
    let config = ok(&with_failover("api_key = \"sk-one\"", ""));
    assert_eq!(
        config.providers[0].keys,
        upstream_keys(&[("primary", "sk-one")])
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn pool_without_primary_key() {
    let var = unique_var("POOL_ONLY");
    std::env::set_var(&var, "sk-env");
    let config = ok(&with_failover(
        &format!(
            "api_keys = [{{ id = \"primary\", key_env = \"{var}\" }}, {{ id = \"b\", key = \"sk-b\" }}]"
        ),
        "",
    ));
    let provider = &config.providers[0];
    // Without api_key/key_env, "primary" is free and api_key is the first
    // entry's key.
    assert_eq!(
        provider.keys,
        upstream_keys(&[("primary", "sk-env"), ("b", "sk-b")])
    );
    assert_eq!(provider.api_key.as_deref(), Some("sk-env"));

    // An explicitly empty pool sends no key.
    let config = ok(&with_failover("api_keys = []", ""));
    assert!(config.providers[0].keys.is_empty());
    assert_eq!(config.providers[0].api_key, None);
}

#[test]
fn key_pool_errors_have_paths() {
    let missing = unique_var("POOL_MISSING");
    std::env::remove_var(&missing);
    let bad = unique_var("POOL_BAD");
    std::env::set_var(&bad, "sk one");
    let e = errors(&with_failover(
        &format!(
            "api_key = \"sk-a\"\n\
             api_keys = [\n\
               {{ id = \"primary\", key = \"sk-b\" }},\n\
               {{ id = \"x\", key = \"sk-c\" }},\n\
               {{ id = \"x\", key = \"sk-d\" }},\n\
               {{ id = \"y\" }},\n\
               {{ id = \"z\", key = \"sk-e\", key_env = \"E\" }},\n\
               {{ key = \"sk-f\" }},\n\
               {{ id = \" \", key = \"sk-g\" }},\n\
               {{ id = \"empty\", key = \"\" }},\n\
               {{ id = \"unset\", key_env = \"{missing}\" }},\n\
               {{ id = \"spaces\", key_env = \"{bad}\" }},\n\
               {{ id = \"same\", key = \"sk-a\" }},\n\
               {{ id = \"again\", key = \"sk-c\" }},\n\
             ]\n\
             key_selection = \"random\"\n\
             key_cooldown_ms = 0\n\
             max_concurrency = 0"
        ),
        "",
    ));
    let expected = [
        "providers[0].api_keys[0].id",
        "providers[0].api_keys[2].id",
        "providers[0].api_keys[3]",
        "providers[0].api_keys[4]",
        "providers[0].api_keys[5].id",
        "providers[0].api_keys[6].id",
        "providers[0].api_keys[7].key",
        "providers[0].api_keys[8].key_env",
        "providers[0].api_keys[9].key_env",
        "providers[0].api_keys[10]",
        "providers[0].api_keys[11]",
        "providers[0].key_selection",
        "providers[0].key_cooldown_ms",
        "providers[0].max_concurrency",
    ];
    assert_eq!(e.paths(), expected, "\n{e}");

    let message = |path: &str| {
        e.0.iter()
            .find(|err| err.path == path)
            .map(|err| err.message.clone())
            .unwrap()
    };
    assert!(message("providers[0].api_keys[0].id").contains("\"primary\" is the id of the key"));
    assert!(message("providers[0].api_keys[2].id")
        .contains("duplicate id \"x\" (also providers[0].api_keys[1])"));
    assert!(message("providers[0].api_keys[3]").starts_with("set key_env"));
    assert!(message("providers[0].api_keys[4]").contains("either key_env or key, not both"));
    assert!(message("providers[0].api_keys[5].id").starts_with("missing"));
    assert!(message("providers[0].api_keys[7].key").contains("the key is empty"));
    assert!(message("providers[0].api_keys[8].key_env").contains("is not set"));
    assert!(message("providers[0].api_keys[9].key_env").contains("visible ASCII"));
    assert!(message("providers[0].api_keys[10]").contains("same key as providers[0].api_key"));
    assert!(message("providers[0].api_keys[11]").contains("same key as providers[0].api_keys[1]"));
    assert!(message("providers[0].key_selection")
        .contains("unknown value \"random\"; expected \"round_robin\" or \"least_in_flight\""));
    // The bad key itself is never repeated.
    assert!(!e.to_string().contains("sk one"), "{e}");

    // The primary key and a pool entry may not share an id "primary" even
    // when the primary comes from key_env.
    let var = unique_var("POOL_PRIMARY");
    std::env::set_var(&var, "sk-env");
    let e = errors(&with_failover(
        &format!("key_env = \"{var}\"\napi_keys = [{{ id = \"primary\", key = \"sk-b\" }}]"),
        "",
    ));
    assert_eq!(e.paths(), ["providers[0].api_keys[0].id"], "\n{e}");
}

#[test]
fn fallback_errors_have_paths() {
    let e = errors(&with_failover(
        "",
        "fallbacks = [\n\
           { provider = \"backup\" },\n\
           { provider = \"nope\", model = \"m\" },\n\
           { model = \"m\" },\n\
           { provider = \"backup\", model = \"\" },\n\
           { provider = \"ghost\", model = \" \" },\n\
         ]\n\
         fallback_on = [\"429\", \"5xx\", \"302\", \"600\", \"2xx\", \"4XX\", \"connect\", \"timeouts\", \"\", \"0429\", \"reset\"]\n\
         degrade_to = { provider = \"gone\", model = \"\" }",
    ));
    let expected = [
        "models[0].fallbacks[1].provider",
        "models[0].fallbacks[2].provider",
        "models[0].fallbacks[3].model",
        "models[0].fallbacks[4].provider",
        "models[0].fallbacks[4].model",
        "models[0].fallback_on[2]",
        "models[0].fallback_on[3]",
        "models[0].fallback_on[4]",
        "models[0].fallback_on[5]",
        "models[0].fallback_on[7]",
        "models[0].fallback_on[8]",
        "models[0].fallback_on[9]",
        "models[0].fallback_on[10]",
        "models[0].degrade_to.provider",
        "models[0].degrade_to.model",
    ];
    assert_eq!(e.paths(), expected, "\n{e}");

    let message = |path: &str| {
        e.0.iter()
            .find(|err| err.path == path)
            .map(|err| err.message.clone())
            .unwrap()
    };
    assert!(message("models[0].fallbacks[1].provider")
        .contains("unknown provider \"nope\"; configured: \"mock\", \"backup\""));
    assert!(message("models[0].fallbacks[2].provider").starts_with("missing"));
    assert!(message("models[0].fallbacks[3].model").starts_with("must not be empty"));
    assert!(message("models[0].fallback_on[2]").starts_with("\"302\" is not an error status"));
    assert!(message("models[0].fallback_on[3]").starts_with("\"600\" is not an error status"));
    assert!(message("models[0].fallback_on[7]").starts_with(
        "unknown entry \"timeouts\"; expected a status code 400..=599 such as \"429\", \"4xx\", \
         \"5xx\", \"connect\" or \"timeout\""
    ));
    assert!(message("models[0].fallback_on[10]").contains("\"reset\""));
    assert!(message("models[0].degrade_to.provider").contains("unknown provider \"gone\""));
}

#[test]
fn fallback_targets_default_to_upstream_model() {
    let config = ok(&with_failover(
        "",
        "upstream_model = \"real-mini\"\n\
         fallbacks = [{ provider = \"backup\" }, { provider = \"mock\", model = \"other\" }]\n\
         degrade_to = { provider = \"backup\" }",
    ));
    let model = &config.models[0];
    assert_eq!(
        model.fallbacks,
        [
            Target {
                provider: 1,
                upstream_model: "real-mini".into()
            },
            Target {
                provider: 0,
                upstream_model: "other".into()
            },
        ]
    );
    assert_eq!(
        model.degrade_to,
        Some(Target {
            provider: 1,
            upstream_model: "real-mini".into()
        })
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    // Without upstream_model the public name is the default, as for the
    // primary target.
    let config = ok(&with_failover(
        "",
        "fallbacks = [{ provider = \"backup\" }]",
    ));
    assert_eq!(config.models[0].fallbacks[0].upstream_model, "gpt-4o-mini");
}

#[test]
fn fallback_repeating_a_target_warns() {
    let config = ok(&with_failover(
        "",
        "fallbacks = [{ provider = \"mock\" }, { provider = \"backup\" }, \
         { provider = \"backup\", model = \"gpt-4o-mini\" }]",
    ));
    assert_eq!(config.models[0].fallbacks.len(), 3);
    assert_eq!(
        config.warnings,
        [
            "models[0].fallbacks[0]: same provider and model as the primary target of models[0]; \
             retry.max_attempts already retries a target, so this entry only uses up attempts",
            "models[0].fallbacks[2]: same provider and model as models[0].fallbacks[1]; \
             retry.max_attempts already retries a target, so this entry only uses up attempts",
        ]
    );
}

#[test]
fn fallback_on_entries_are_parsed() {
    let config = ok(&with_failover(
        "",
        "fallback_on = [\"401\", \"4xx\", \"599\", \"400\", \"timeout\", \"401\"]",
    ));
    let on = &config.models[0].fallback_on;
    // In config order, repeats dropped.
    assert_eq!(
        on.statuses,
        [
            StatusMatch::Code(401),
            StatusMatch::Class(4),
            StatusMatch::Code(599),
            StatusMatch::Code(400)
        ]
    );
    assert!(on.timeout && !on.connect);
    assert!(on.status(401) && on.status(404) && on.status(599));
    assert!(!on.status(500) && !on.status(200));

    // An empty list is allowed: no failure moves a request on.
    let config = ok(&with_failover("", "fallback_on = []"));
    let on = &config.models[0].fallback_on;
    assert!(on.statuses.is_empty() && !on.connect && !on.timeout);
    assert!(!on.status(503));
}

#[test]
fn retry_ranges() {
    let retry = |lines: &str| format!("{MINIMAL}[retry]\n{lines}\n");

    // Bounds are inclusive.
    let config = ok(&retry(
        "max_attempts = 1\nbudget_ratio = 0.0\nbackoff_base_ms = 1\nbackoff_max_ms = 1",
    ));
    assert_eq!(
        config.retry,
        Retry {
            max_attempts: 1,
            budget_ratio: 0.0,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
        }
    );
    let config = ok(&retry(
        "max_attempts = 10\nbudget_ratio = 1.0\nbackoff_base_ms = 60000\nbackoff_max_ms = 60000",
    ));
    assert_eq!(config.retry.max_attempts, 10);
    assert_eq!(config.retry.budget_ratio, 1.0);
    assert_eq!(config.retry.backoff_max, Duration::from_secs(60));

    for (lines, paths) in [
        ("max_attempts = 0", vec!["retry.max_attempts"]),
        ("max_attempts = 11", vec!["retry.max_attempts"]),
        ("budget_ratio = -0.1", vec!["retry.budget_ratio"]),
        ("budget_ratio = 1.5", vec!["retry.budget_ratio"]),
        ("budget_ratio = nan", vec!["retry.budget_ratio"]),
        ("backoff_base_ms = 0", vec!["retry.backoff_base_ms"]),
        ("backoff_max_ms = 60001", vec!["retry.backoff_max_ms"]),
        // Default base 50 > max 10.
        ("backoff_max_ms = 10", vec!["retry.backoff_max_ms"]),
        (
            "backoff_base_ms = 3000",
            // Above the default max of 2000.
            vec!["retry.backoff_max_ms"],
        ),
        (
            "max_attempts = 99\nbudget_ratio = 2\nbackoff_base_ms = 0\nbackoff_max_ms = 0",
            vec![
                "retry.max_attempts",
                "retry.budget_ratio",
                "retry.backoff_base_ms",
                "retry.backoff_max_ms",
            ],
        ),
    ] {
        let e = errors(&retry(lines));
        assert_eq!(e.paths(), paths, "{lines}\n{e}");
    }
    let e = errors(&retry("backoff_base_ms = 500\nbackoff_max_ms = 100"));
    assert_eq!(
        e.0[0].message,
        "100 is less than retry.backoff_base_ms (500)"
    );
    let e = errors(&retry("max_attempts = 11"));
    assert_eq!(e.0[0].message, "11 is out of range 1..=10");
}

#[test]
fn failover_keys_are_checked_by_serde() {
    let e = errors(&with_failover(
        "api_keys = [{ id = \"a\", key = \"k\" }, { id = \"b\", secret = \"k\" }]",
        "",
    ));
    assert_eq!(e.paths(), ["providers[0].api_keys[1].secret"], "\n{e}");
    let e = errors(&with_failover(
        "",
        "fallbacks = [{ provider = \"backup\", modle = \"x\" }]",
    ));
    assert_eq!(e.paths(), ["models[0].fallbacks[0].modle"], "\n{e}");
    let e = errors(&with_failover("", "fallback_on = [429]"));
    assert_eq!(e.paths(), ["models[0].fallback_on[0]"], "\n{e}");
    let e = errors(&with_failover("", "degrade_to = \"backup\""));
    assert_eq!(e.paths(), ["models[0].degrade_to"], "\n{e}");
    let e = errors(&format!("{MINIMAL}[retry]\nmax_retries = 2\n"));
    assert_eq!(e.paths(), ["retry.max_retries"], "\n{e}");
    let e = errors(&format!("{MINIMAL}[retry]\nbackoff_base_ms = 1.5\n"));
    assert_eq!(e.paths(), ["retry.backoff_base_ms"], "\n{e}");
}

#[test]
fn fallback_example_matches_its_description() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fallback.toml");
    let source = std::fs::read_to_string(path).unwrap();
    let var = unique_var("EXAMPLE_ANTHROPIC");
    std::env::set_var(&var, "sk-ant-test");
    let config = ok(&source.replace("\"ANTHROPIC_API_KEY\"", &format!("\"{var}\"")));

    let providers: Vec<(&str, ProviderKind, String)> = config
        .providers
        .iter()
        .map(|p| (p.name.as_str(), p.kind, p.base_url.to_string()))
        .collect();
    assert_eq!(
        providers,
        [
            (
                "primary",
                ProviderKind::OpenAi,
                "http://127.0.0.1:9000/v1".into()
            ),
            (
                "backup",
                ProviderKind::OpenAi,
                "http://127.0.0.1:9002/v1".into()
            ),
            (
                "anthropic",
                ProviderKind::Anthropic,
                "https://api.anthropic.com".into()
            ),
        ]
    );
    let primary = &config.providers[0];
    assert_eq!(
        primary
            .keys
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>(),
        ["primary", "second"]
    );
    assert_eq!(primary.api_key.as_deref(), Some("mock-key"));
    assert_eq!(config.providers[1].api_key.as_deref(), Some("backup-key"));
    assert_eq!(config.providers[2].api_key.as_deref(), Some("sk-ant-test"));

    let (_, model) = config.model("gpt-4o").unwrap();
    let targets: Vec<(usize, &str)> =
        std::iter::once((model.provider, model.upstream_model.as_str()))
            .chain(
                model
                    .fallbacks
                    .iter()
                    .map(|t| (t.provider, t.upstream_model.as_str())),
            )
            .collect();
    assert_eq!(
        targets,
        [(0, "gpt-4o"), (1, "gpt-4o"), (2, "claude-sonnet-4-5")]
    );
    assert_eq!(model.fallback_on, FallbackOn::default());
    assert_eq!(
        model.degrade_to,
        Some(Target {
            provider: 0,
            upstream_model: "gpt-4o-mini".into()
        })
    );
    assert_eq!(config.providers[0].max_concurrency, NonZeroU64::new(200));
    assert_eq!(config.retry, Retry::default());
    assert_eq!(
        config.warnings,
        [
            "providers[0].api_keys[0]: plain-text key in the config file; use key_env instead",
            "consumers[0].keys[0]: plain-text key; store its sha256 instead",
        ]
    );
}

// ----- routing: endpoints and health, model patterns, variants ----------------

/// The issue's sample: a provider with two endpoints and health settings, a
/// regex route with captures, and a 90/10 split with sticky consumers.
const ROUTING: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"

[[providers]]
name = "vllm"
base_urls = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]
health = { failures_to_eject = 5, base_ejection_ms = 1000, max_ejection_ms = 60000, check_path = "/models", check_interval_ms = 5000 }

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "https://api.anthropic.com"

[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1"

[[providers]]
name = "azure"
kind = "azure-openai"
base_url = "https://example.openai.azure.com"

[[models]]
name = "claude-any"
match = "re:^claude-(.*)$"
provider = "anthropic"
upstream_model = "claude-$1"

[[models]]
name = "gpt-4o"
variants = [
  { name = "stable", weight = 90, provider = "openai", model = "gpt-4o" , fallbacks = [ { provider = "azure" } ] },
  { name = "canary", weight = 10, provider = "openai", model = "gpt-4.1" },
]
sticky = "consumer"
variant_header = "x-sluice-variant"
"#;

/// A listener, the providers "mock" and "backup", and `models` (whole
/// `[[models]]` entries).
fn with_models(models: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
         [[providers]]\nname = \"mock\"\nbase_url = \"http://127.0.0.1:9000/v1\"\n\
         [[providers]]\nname = \"backup\"\nbase_url = \"http://127.0.0.1:9002/v1\"\n\
         {models}\n"
    )
}

/// A `Target` from a provider index and a model name.
fn target(provider: usize, upstream_model: &str) -> Target {
    Target {
        provider,
        upstream_model: upstream_model.into(),
    }
}

/// Strings from string literals, for comparing captures.
fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn routing_sample_is_read() {
    let config = ok(ROUTING);

    let vllm = &config.providers[0];
    let endpoints: Vec<String> = vllm.endpoints.iter().map(ToString::to_string).collect();
    assert_eq!(
        endpoints,
        ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]
    );
    // `base_url` stays the first endpoint.
    assert_eq!(vllm.base_url, vllm.endpoints[0]);
    assert_eq!(
        vllm.health,
        Health {
            failures_to_eject: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
            check: Some(ActiveCheck {
                path: "/models".into(),
                interval: Duration::from_secs(5),
            }),
        }
    );
    let anthropic = &config.providers[1];
    assert_eq!(
        anthropic.endpoints,
        std::slice::from_ref(&anthropic.base_url)
    );
    assert_eq!(anthropic.health, Health::default());

    let claude = &config.models[0];
    assert!(matches!(claude.matcher, ModelMatch::Regex(_)));
    assert_eq!(claude.matcher.to_string(), "re:^claude-(.*)$");
    assert_eq!(claude.primary(), target(1, "claude-$1"));
    assert!(claude.variants.is_empty());
    let (index, model, captures) = config.route("claude-sonnet-4-5").unwrap();
    assert_eq!(index, 0);
    assert_eq!(captures, ["claude-sonnet-4-5", "sonnet-4-5"]);
    assert_eq!(
        expand(&model.upstream_model, &captures),
        "claude-sonnet-4-5"
    );

    let split = &config.models[1];
    assert_eq!(split.matcher, ModelMatch::Exact("gpt-4o".into()));
    assert_eq!(
        split.variants,
        [
            Variant {
                name: "stable".into(),
                weight: 90,
                target: target(2, "gpt-4o"),
                // The fallback's model defaults to the variant's.
                fallbacks: vec![target(3, "gpt-4o")],
            },
            Variant {
                name: "canary".into(),
                weight: 10,
                target: target(2, "gpt-4.1"),
                fallbacks: Vec::new(),
            },
        ]
    );
    // The first variant stands in for the primary target and fallbacks.
    assert_eq!(split.primary(), split.variants[0].target);
    assert_eq!(split.fallbacks, split.variants[0].fallbacks);
    assert_eq!(split.sticky, Sticky::Consumer);
    assert_eq!(split.variant_header.as_deref(), Some("x-sluice-variant"));
    assert_eq!(split.variant("canary").map(|v| v.weight), Some(10));
    assert!(split.variant("beta").is_none());
    let (index, _, captures) = config.route("gpt-4o").unwrap();
    assert_eq!((index, captures), (1, strings(&["gpt-4o"])));
    assert!(config.route("gpt-4o-mini").is_none());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn routing_defaults() {
    let config = ok(MINIMAL);
    let provider = &config.providers[0];
    assert_eq!(provider.endpoints, std::slice::from_ref(&provider.base_url));
    assert_eq!(
        provider.health,
        Health {
            failures_to_eject: 5,
            base_ejection: Duration::from_millis(1000),
            max_ejection: Duration::from_millis(60000),
            check: None,
        }
    );
    let model = &config.models[0];
    assert_eq!(model.matcher, ModelMatch::Exact("gpt-4o-mini".into()));
    assert!(model.variants.is_empty());
    assert_eq!(model.sticky, Sticky::Consumer);
    assert_eq!(model.variant_header, None);
    assert_eq!(model.pick_variant(7), None);
    let (index, _, captures) = config.route("gpt-4o-mini").unwrap();
    assert_eq!((index, captures), (0, strings(&["gpt-4o-mini"])));
    assert!(config.route("gpt-4o").is_none());

    // Keys of `health` left out keep their defaults; one base_urls entry is
    // one endpoint.
    let config = ok(&with_failover(
        "health = { check_path = \"/health?deep=1\", check_interval_ms = 100 }",
        "",
    ));
    assert_eq!(
        config.providers[0].health,
        Health {
            check: Some(ActiveCheck {
                path: "/health?deep=1".into(),
                interval: Duration::from_millis(100),
            }),
            ..Health::default()
        }
    );
    let config = ok(&MINIMAL.replace("base_url = ", "base_urls = [\"https://a.example\"]\n#"));
    let provider = &config.providers[0];
    assert_eq!(provider.endpoints.len(), 1);
    assert_eq!(provider.base_url.to_string(), "https://a.example");
}

#[test]
fn base_urls_errors_have_paths() {
    let e = errors(
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\
         [[providers]]\nname = \"both\"\nbase_url = \"http://127.0.0.1:9000/v1\"\n\
         base_urls = [\"http://127.0.0.1:9001/v1\"]\n\
         [[providers]]\nname = \"empty\"\nbase_urls = []\n\
         [[providers]]\nname = \"bad\"\nbase_urls = [\"http://127.0.0.1:9000/v1\", \"ftp://x\", \
         \"http://127.0.0.1:9000/v1/\", \"HTTP://127.0.0.1:80/v1\", \"http://127.0.0.1:9001\"]\n\
         [[providers]]\nname = \"none\"\n\
         [[models]]\nname = \"m\"\nprovider = \"both\"\n",
    );
    assert_eq!(
        e.paths(),
        [
            "providers[0].base_urls",
            "providers[1].base_urls",
            "providers[2].base_urls[1]",
            "providers[2].base_urls[2]",
            "providers[3].base_url",
        ],
        "\n{e}"
    );
    assert_eq!(e.0[0].message, "set either base_url or base_urls, not both");
    assert!(e.0[1]
        .message
        .starts_with("an empty list names no endpoint"));
    assert!(e.0[2].message.contains("unsupported scheme \"ftp\""));
    assert_eq!(e.0[3].message, "same endpoint as providers[2].base_urls[0]");
    assert!(e.0[4]
        .message
        .contains("or list several endpoints in base_urls"));

    // Same scheme, host, port and path, however written.
    let e = errors(&MINIMAL.replace(
        "base_url = \"http://127.0.0.1:9000/v1\"",
        "base_urls = [\"http://127.0.0.1/v1\", \"HTTP://127.0.0.1:80/v1/\"]",
    ));
    assert_eq!(e.paths(), ["providers[0].base_urls[1]"], "\n{e}");
}

#[test]
fn plain_http_endpoints_warn_one_by_one() {
    let file = existing_file();
    let config = ok(&MINIMAL.replace(
        "base_url = \"http://127.0.0.1:9000/v1\"",
        &format!(
            "base_urls = [\"https://a.example/v1\", \"http://10.0.0.2/v1\", \"http://127.0.0.1/v1\"]\n\
             api_key = \"k\"\nca_file = \"{file}\""
        ),
    ));
    assert_eq!(
        config.warnings,
        ["providers[0].base_urls[1]: the upstream key is sent over plain http to a non-loopback \
          host; use https"]
    );
    let config = ok(&MINIMAL.replace(
        "base_url = \"http://127.0.0.1:9000/v1\"",
        &format!(
            "base_urls = [\"http://10.0.0.1/v1\", \"http://10.0.0.2/v1\"]\nca_file = \"{file}\""
        ),
    ));
    assert_eq!(
        config.warnings,
        ["providers[0].ca_file: unused: every endpoint in base_urls is plain http"]
    );
}

#[test]
fn health_errors_have_paths() {
    let health = |keys: &str| with_failover(&format!("health = {{ {keys} }}"), "");
    // Bounds are inclusive.
    for keys in [
        "failures_to_eject = 1, base_ejection_ms = 1, max_ejection_ms = 1",
        "failures_to_eject = 1000, base_ejection_ms = 3600000, max_ejection_ms = 3600000",
        "check_path = \"/\", check_interval_ms = 3600000",
    ] {
        ok(&health(keys));
    }
    let at = "providers[0].health";
    for (keys, paths) in [
        ("failures_to_eject = 0", vec!["failures_to_eject"]),
        ("failures_to_eject = 1001", vec!["failures_to_eject"]),
        ("base_ejection_ms = 0", vec!["base_ejection_ms"]),
        ("max_ejection_ms = 3600001", vec!["max_ejection_ms"]),
        // Above the default max of 60000.
        ("base_ejection_ms = 120000", vec!["max_ejection_ms"]),
        ("check_path = \"/models\"", vec!["check_interval_ms"]),
        ("check_interval_ms = 5000", vec!["check_path"]),
        (
            "check_path = \"models\", check_interval_ms = 99",
            vec!["check_path", "check_interval_ms"],
        ),
        (
            "check_path = \"/a b\", check_interval_ms = 3600001",
            vec!["check_path", "check_interval_ms"],
        ),
        (
            "check_path = \"/a#b\", check_interval_ms = 1000",
            vec!["check_path"],
        ),
    ] {
        let e = errors(&health(keys));
        let expected: Vec<String> = paths.iter().map(|p| format!("{at}.{p}")).collect();
        assert_eq!(e.paths(), expected, "{keys}\n{e}");
    }
    let message = |keys: &str| errors(&health(keys)).0[0].message.clone();
    assert_eq!(message("failures_to_eject = 0"), "must be > 0 (max 1000)");
    assert_eq!(
        message("base_ejection_ms = 120000"),
        "60000 is less than providers[0].health.base_ejection_ms (120000)"
    );
    assert!(message("check_path = \"/models\"")
        .starts_with("missing; an active check needs check_path and check_interval_ms"));
    assert_eq!(
        message("check_path = \"/m\", check_interval_ms = 99"),
        "99 is out of range 100..=3600000"
    );
}

#[test]
fn every_match_form_routes() {
    let config = ok(&with_models(
        r#"
[[models]]
name = "gpt-4o"
provider = "mock"
[[models]]
name = "gpt-4o-family"
match = "gpt-4o-*"
provider = "mock"
[[models]]
name = "minis"
match = "*-mini"
provider = "backup"
upstream_model = "small/*"
[[models]]
name = "latest"
match = "claude-*-latest"
provider = "backup"
[[models]]
name = "claude"
match = 're:^claude-(\d)-(?<tier>[a-z]+)$'
provider = "backup"
upstream_model = "anthropic/claude-${tier}-$1"
[[models]]
name = "alias"
match = "default"
provider = "mock"
"#,
    ));
    let kinds: Vec<String> = config
        .models
        .iter()
        .map(|m| match &m.matcher {
            ModelMatch::Exact(s) => format!("exact {s}"),
            ModelMatch::Wildcard(s) => format!("wildcard {s}"),
            ModelMatch::Regex(r) => format!("regex {}", r.as_str()),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "exact gpt-4o",
            "wildcard gpt-4o-*",
            "wildcard *-mini",
            "wildcard claude-*-latest",
            r"regex ^claude-(\d)-(?<tier>[a-z]+)$",
            "exact default",
        ]
    );
    // A pattern sends the requested name unless told otherwise; an exact
    // `match` sends what it matched; named groups are stored as numbers.
    let upstream: Vec<&str> = config
        .models
        .iter()
        .map(|m| m.upstream_model.as_str())
        .collect();
    assert_eq!(
        upstream,
        [
            "gpt-4o",
            "$0",
            "small/*",
            "$0",
            "anthropic/claude-${2}-$1",
            "default"
        ]
    );

    let route = |requested: &str| {
        config.route(requested).map(|(index, model, captures)| {
            let sent = expand(&model.upstream_model, &captures);
            (index, captures, sent)
        })
    };
    for (requested, index, captures, sent) in [
        ("gpt-4o", 0, vec!["gpt-4o"], "gpt-4o"),
        (
            "gpt-4o-2024-08-06",
            1,
            vec!["gpt-4o-2024-08-06"],
            "gpt-4o-2024-08-06",
        ),
        // Both wildcards fit; the earlier entry wins.
        ("gpt-4o-mini", 1, vec!["gpt-4o-mini"], "gpt-4o-mini"),
        ("o4-mini", 2, vec!["o4-mini"], "small/o4-mini"),
        (
            "claude-3-5-sonnet-latest",
            3,
            vec!["claude-3-5-sonnet-latest"],
            "claude-3-5-sonnet-latest",
        ),
        (
            "claude-4-opus",
            4,
            vec!["claude-4-opus", "4", "opus"],
            "anthropic/claude-opus-4",
        ),
        ("default", 5, vec!["default"], "default"),
    ] {
        assert_eq!(
            route(requested),
            Some((index, strings(&captures), sent.to_string())),
            "{requested}"
        );
    }
    for unserved in ["alias", "gpt-4", "claude-42-opus", "claude-4-opus-x", ""] {
        assert_eq!(route(unserved), None, "{unserved}");
    }
    // Labels still find entries whose `match` differs from their name.
    assert_eq!(config.model("alias").map(|(i, _)| i), Some(5));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn exact_names_win_over_patterns() {
    let config = ok(&with_models(
        "[[models]]\nname = \"catch-all\"\nmatch = \"*\"\nprovider = \"backup\"\n\
         [[models]]\nname = \"gpt-4o-family\"\nmatch = \"gpt-4o-*\"\nprovider = \"mock\"\n\
         [[models]]\nname = \"gpt-4o-mini\"\nprovider = \"mock\"\n\
         [[models]]\nname = \"pinned\"\nmatch = \"gpt-4o-2024-08-06\"\nprovider = \"mock\"\n",
    ));
    let index = |requested: &str| config.route(requested).map(|(i, _, _)| i);
    // Exact entries win wherever they stand in the file.
    assert_eq!(index("gpt-4o-mini"), Some(2));
    assert_eq!(index("gpt-4o-2024-08-06"), Some(3));
    // Patterns go in file order: the catch-all shadows the later one.
    assert_eq!(index("gpt-4o-x"), Some(0));
    assert_eq!(index("anything"), Some(0));
    assert_eq!(index(""), Some(0));
}

#[test]
fn match_and_template_errors_have_paths() {
    let e = errors(&with_models(
        r#"
[[models]]
name = "a"
match = "re:^claude-("
provider = "mock"
[[models]]
name = "b"
match = ""
provider = "mock"
[[models]]
name = "c"
match = "gpt-4o-mini"
provider = "mock"
[[models]]
name = "gpt-4o-mini"
provider = "mock"
[[models]]
name = "d"
match = "gpt-4o-mini"
provider = "mock"
[[models]]
name = "e*"
provider = "mock"
[[models]]
name = "f"
match = "f-*"
provider = "mock"
upstream_model = "x-$1"
[[models]]
name = "g"
match = 're:^g-(\d)$'
provider = "mock"
upstream_model = "g-$2"
fallbacks = [{ provider = "backup", model = "${nope}" }, { provider = "backup", model = "$1-${1}-$0-*-$$9" }]
degrade_to = { provider = "backup", model = "${1" }
[[models]]
name = "h"
provider = "mock"
upstream_model = "h-$1"
"#,
    ));
    let expected = [
        "models[0].match",
        "models[1].match",
        "models[3].name",
        "models[4].match",
        "models[5].name",
        "models[6].upstream_model",
        "models[7].upstream_model",
        "models[7].fallbacks[0].model",
        "models[7].degrade_to.model",
        "models[8].upstream_model",
    ];
    assert_eq!(e.paths(), expected, "\n{e}");
    let message = |path: &str| {
        e.0.iter()
            .find(|err| err.path == path)
            .map(|err| err.message.clone())
            .unwrap()
    };
    // The regex crate's own message, on one line.
    assert_eq!(
        message("models[0].match"),
        "regex parse error: unclosed group (column 9)"
    );
    assert!(message("models[1].match").starts_with("must not be empty"));
    assert_eq!(
        message("models[3].name"),
        "\"gpt-4o-mini\" is already served by models[2]; one entry per exact name"
    );
    assert!(message("models[4].match").contains("already served by models[2]"));
    assert!(message("models[5].name").contains("set upstream_model"));
    assert_eq!(
        message("models[6].upstream_model"),
        "\"$1\" refers to group 1, but a wildcard has no groups; use $0 or * for the requested \
         name, or a re: pattern"
    );
    assert_eq!(
        message("models[7].upstream_model"),
        "\"$2\" refers to group 2, but the pattern has 1"
    );
    assert_eq!(
        message("models[7].fallbacks[0].model"),
        "\"${nope}\": the pattern has no group named \"nope\""
    );
    assert!(message("models[7].degrade_to.model").starts_with("unclosed \"${\""));
    assert!(message("models[8].upstream_model").contains("an exact name has no groups"));
}

#[test]
fn templates_keep_escapes_and_number_named_groups() {
    let config = ok(&with_models(
        r#"
[[models]]
name = "g"
match = 're:^(?<family>[a-z]+)-(?<size>\d+)b$'
provider = "mock"
upstream_model = "$${size}/${size}-${family}-${2}"
fallbacks = [{ provider = "backup", model = "${family}" }, { provider = "backup" }]
"#,
    ));
    let model = &config.models[0];
    assert_eq!(model.upstream_model, "$${size}/${2}-${1}-${2}");
    assert_eq!(
        model.fallbacks,
        [target(1, "${1}"), target(1, "$${size}/${2}-${1}-${2}")]
    );
    let (_, model, captures) = config.route("llama-70b").unwrap();
    assert_eq!(
        expand(&model.upstream_model, &captures),
        "${size}/70-llama-70"
    );
}

#[test]
fn variants_are_read_with_their_defaults() {
    let config = ok(&with_models(
        r#"
[[models]]
name = "split"
upstream_model = "base"
variants = [
  { name = "a.1", weight = 0, provider = "mock" },
  { name = "B_2", weight = 10000, provider = "backup", model = "other", fallbacks = [{ provider = "backup" }, { provider = "mock" }] },
]
sticky = "header:X-Session-Id"
variant_header = "X-Sluice-Variant"
[[models]]
name = "random"
variants = [{ name = "only", weight = 1, provider = "backup" }]
sticky = "none"
[[models]]
name = "plain"
provider = "mock"
sticky = "consumer"
variant_header = "x-v"
"#,
    ));
    let split = &config.models[0];
    assert_eq!(
        split.variants,
        [
            Variant {
                name: "a.1".into(),
                weight: 0,
                target: target(0, "base"),
                fallbacks: Vec::new(),
            },
            Variant {
                name: "B_2".into(),
                weight: 10000,
                target: target(1, "other"),
                fallbacks: vec![target(1, "other"), target(0, "other")],
            },
        ]
    );
    assert_eq!(split.primary(), target(0, "base"));
    assert!(split.fallbacks.is_empty());
    assert_eq!(split.sticky, Sticky::Header("x-session-id".into()));
    assert_eq!(split.variant_header.as_deref(), Some("x-sluice-variant"));

    let random = &config.models[1];
    assert_eq!(random.sticky, Sticky::None);
    // Without upstream_model a variant sends the public name.
    assert_eq!(random.variants[0].target, target(1, "random"));
    assert_eq!(random.variant_header, None);

    assert_eq!(
        config.warnings,
        [
            "models[0].variants[1].fallbacks[0]: same provider and model as the primary target \
             of models[0].variants[1]; retry.max_attempts already retries a target, so this \
             entry only uses up attempts",
            "models[2].sticky: has no effect without variants",
            "models[2].variant_header: has no effect without variants",
        ]
    );
}

#[test]
fn variant_errors_have_paths() {
    let e = errors(&with_models(
        r#"
[[models]]
name = "both"
provider = "mock"
variants = [{ name = "a", weight = 1, provider = "mock" }]
fallbacks = [{ provider = "backup" }]
[[models]]
name = "empty"
variants = []
[[models]]
name = "zero"
variants = [{ name = "a", weight = 0, provider = "mock" }, { name = "b", weight = 0, provider = "backup" }]
[[models]]
name = "bad"
match = 're:^bad-(\d)$'
variants = [
  { weight = 1, provider = "mock" },
  { name = "x", provider = "mock" },
  { name = "x", weight = 10001, provider = "mock" },
  { name = "has space", weight = 1, provider = "ghost" },
  { name = "y", weight = 1 },
  { name = "z", weight = 1, provider = "mock", model = " ", fallbacks = [{ provider = "nope" }] },
  { name = "w", weight = 1, provider = "mock", model = "m-$2", fallbacks = [{ provider = "mock", model = "${n}" }] },
]
sticky = "cookie"
variant_header = "x variant"
"#,
    ));
    let expected = [
        "models[0].provider",
        "models[0].fallbacks",
        "models[1].variants",
        "models[2].variants",
        "models[3].variants[0].name",
        "models[3].variants[1].weight",
        "models[3].variants[2].name",
        "models[3].variants[2].weight",
        "models[3].variants[3].name",
        "models[3].variants[3].provider",
        "models[3].variants[4].provider",
        "models[3].variants[5].model",
        "models[3].variants[5].fallbacks[0].provider",
        "models[3].variants[6].model",
        "models[3].variants[6].fallbacks[0].model",
        "models[3].sticky",
        "models[3].variant_header",
    ];
    assert_eq!(e.paths(), expected, "\n{e}");
    let message = |path: &str| {
        e.0.iter()
            .find(|err| err.path == path)
            .map(|err| err.message.clone())
            .unwrap()
    };
    assert!(message("models[0].provider").starts_with("set either provider or variants"));
    assert_eq!(
        message("models[0].fallbacks"),
        "with variants, set fallbacks on each variant"
    );
    assert!(message("models[1].variants").starts_with("an empty list makes no split"));
    assert_eq!(
        message("models[2].variants"),
        "every weight is 0; give at least one variant a weight > 0"
    );
    assert!(message("models[3].variants[0].name").starts_with("missing"));
    assert!(message("models[3].variants[1].weight").starts_with("missing"));
    assert_eq!(
        message("models[3].variants[2].name"),
        "duplicate name \"x\" (also models[3].variants[1])"
    );
    assert_eq!(
        message("models[3].variants[2].weight"),
        "10001 is out of range 0..=10000"
    );
    assert!(message("models[3].variants[3].name").contains("is not a variant name"));
    assert!(message("models[3].variants[3].provider").contains("unknown provider \"ghost\""));
    assert!(message("models[3].variants[6].model").contains("the pattern has 1"));
    assert!(message("models[3].sticky").starts_with("unknown value \"cookie\""));
    assert!(message("models[3].variant_header").contains("is not a header name"));

    // A bad header name after "header:" is a bad sticky value.
    let e = errors(&with_models(
        "[[models]]\nname = \"s\"\nvariants = [{ name = \"a\", weight = 1, provider = \"mock\" }]\n\
         sticky = \"header:\"\n",
    ));
    assert_eq!(e.paths(), ["models[0].sticky"], "\n{e}");
}

#[test]
fn pick_variant_follows_the_weights() {
    let config = ok(&with_models(
        "[[models]]\nname = \"s\"\nvariants = [\n\
         { name = \"stable\", weight = 90, provider = \"mock\" },\n\
         { name = \"off\", weight = 0, provider = \"mock\" },\n\
         { name = \"canary\", weight = 10, provider = \"backup\" },\n]\n",
    ));
    let model = &config.models[0];
    let pick = |hash: u64| model.pick_variant(hash).map(|v| v.name.as_str());
    assert_eq!(pick(0), Some("stable"));
    assert_eq!(pick(89), Some("stable"));
    assert_eq!(pick(90), Some("canary"));
    assert_eq!(pick(99), Some("canary"));
    assert_eq!(pick(100), Some("stable"));
    // u64::MAX % 100 == 15.
    assert_eq!(pick(u64::MAX), Some("stable"));
    let mut counts = [0u32; 3];
    for hash in 0..10_000 {
        let index = model
            .variants
            .iter()
            .position(|v| Some(v.name.as_str()) == pick(hash))
            .unwrap();
        counts[index] += 1;
    }
    assert_eq!(counts, [9_000, 0, 1_000]);
    // The weight-0 variant is still there for the variant header.
    assert_eq!(model.variant("off").map(|v| v.target.provider), Some(0));
}

#[test]
fn routing_keys_are_checked_by_serde() {
    let e = errors(&with_failover("health = { failures = 3 }", ""));
    assert_eq!(e.paths(), ["providers[0].health.failures"], "\n{e}");
    let e = errors(&MINIMAL.replace("base_url = ", "base_urls = "));
    assert_eq!(e.paths(), ["providers[0].base_urls"], "\n{e}");
    let e = errors(&with_failover(
        "health = { check_interval_ms = \"5s\" }",
        "",
    ));
    assert_eq!(
        e.paths(),
        ["providers[0].health.check_interval_ms"],
        "\n{e}"
    );
    let model = |lines: &str| with_models(&format!("[[models]]\nname = \"m\"\n{lines}\n"));
    for (lines, path) in [
        ("match = 1", "models[0].match"),
        ("provider = \"mock\"\nmatches = \"*\"", "models[0].matches"),
        (
            "variants = [{ name = \"a\", weight = 1, provider = \"mock\", modle = \"x\" }]",
            "models[0].variants[0].modle",
        ),
        (
            "variants = [{ name = \"a\", weight = 0.5, provider = \"mock\" }]",
            "models[0].variants[0].weight",
        ),
        (
            "variants = [{ name = \"a\", weight = -1, provider = \"mock\" }]",
            "models[0].variants[0].weight",
        ),
        (
            "variants = [{ name = \"a\", weight = 1, provider = \"mock\", fallbacks = [{ provder = \"mock\" }] }]",
            "models[0].variants[0].fallbacks[0].provder",
        ),
        ("variants = { name = \"a\" }", "models[0].variants"),
        ("provider = \"mock\"\nsticky = true", "models[0].sticky"),
    ] {
        let e = errors(&model(lines));
        assert_eq!(e.paths(), [path], "{lines}\n{e}");
    }
}

#[test]
fn routing_example_matches_its_description() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/routing.toml");
    let config = Config::load(&path).unwrap();

    let vllm = &config.providers[0];
    assert_eq!(vllm.name, "vllm");
    let endpoints: Vec<String> = vllm.endpoints.iter().map(ToString::to_string).collect();
    assert_eq!(
        endpoints,
        ["http://127.0.0.1:9000/v1", "http://127.0.0.1:9001/v1"]
    );
    assert_eq!(vllm.api_key, None);
    assert_eq!(
        vllm.health,
        Health {
            failures_to_eject: 3,
            base_ejection: Duration::from_secs(2),
            max_ejection: Duration::from_secs(30),
            check: Some(ActiveCheck {
                path: "/models".into(),
                interval: Duration::from_secs(5),
            }),
        }
    );
    // 2 s, 4 s, 8 s, 16 s, then the 30 s cap.
    let ejections: Vec<u64> = (0..6).map(|n| vllm.health.ejection(n).as_secs()).collect();
    assert_eq!(ejections, [2, 4, 8, 16, 30, 30]);
    assert_eq!(config.providers[1].endpoints.len(), 1);
    assert_eq!(config.providers[1].health, Health::default());

    let route = |requested: &str| {
        config.route(requested).map(|(_, model, captures)| {
            (
                model.name.as_str(),
                expand(&model.upstream_model, &captures),
            )
        })
    };
    assert_eq!(
        route("llama-3.1-8b"),
        Some(("llama", "meta-llama/Llama-3.1-8B-Instruct".into()))
    );
    assert_eq!(
        route("llama-3-70b"),
        Some(("llama", "meta-llama/Llama-3-70B-Instruct".into()))
    );
    assert_eq!(
        route("gpt-4.1-nano"),
        Some(("gpt-4.1-family", "gpt-4.1-nano".into()))
    );
    assert_eq!(
        route("gpt-4o-mini"),
        Some(("gpt-4o-mini", "gpt-4o-mini".into()))
    );
    assert_eq!(route("gpt-4o"), Some(("gpt-4o", "gpt-4o".into())));
    assert_eq!(route("llama-3.1-8b-instruct"), None);
    assert_eq!(route("gpt-4.1"), None);

    let (_, split) = config.model("gpt-4o").unwrap();
    let variants: Vec<(&str, u32, usize, &str)> = split
        .variants
        .iter()
        .map(|v| {
            (
                v.name.as_str(),
                v.weight,
                v.target.provider,
                v.target.upstream_model.as_str(),
            )
        })
        .collect();
    assert_eq!(
        variants,
        [("stable", 90, 1, "gpt-4o"), ("canary", 10, 1, "gpt-4.1")]
    );
    assert_eq!(
        split.variants[0].fallbacks,
        [target(0, "meta-llama/Llama-3.1-70B-Instruct")]
    );
    assert_eq!(split.sticky, Sticky::Consumer);
    assert_eq!(split.variant_header.as_deref(), Some("x-sluice-variant"));
    let canary = (0..1000).filter(|h| split.pick_variant(*h).unwrap().name == "canary");
    assert_eq!(canary.count(), 100);

    let consumer = &config.consumers[0];
    assert!(consumer.allows("llama") && !consumer.allows("llama-3.1-8b"));
    assert_eq!(
        config.warnings,
        ["consumers[0].keys[0]: plain-text key; store its sha256 instead"]
    );
}

#[test]
fn features_default_on_and_switch_off() {
    let config = ok(MINIMAL);
    assert_eq!(config.features, crate::Features::default());
    assert!(config.features.auth && config.features.accounting && config.features.audit);
    assert_eq!(
        config.quota.state_path,
        Some(PathBuf::from("sluice-quota.redb"))
    );

    let off = ok(&format!(
        "{MINIMAL}\n[features]\nauth = false\naccounting = false\naudit = false\n\
         [quota]\ndefault_max_tokens = 1000\n"
    ));
    assert!(!off.features.auth && !off.features.accounting && !off.features.audit);
    // A node that counts nothing opens no quota store.
    assert_eq!(off.quota.state_path, None);
    assert_eq!(off.quota.default_max_tokens, 1000);

    let e = errors(&format!("{MINIMAL}\n[features]\nproxy = false\n"));
    assert!(e.0[0].message.contains("unknown field"), "\n{e}");
}

#[test]
fn switched_off_features_refuse_what_they_would_disarm() {
    let e = errors(&format!(
        "{MINIMAL}\n\
         [[consumers]]\nname = \"a\"\nkeys = [{{ plain = \"sk-a\" }}]\nbalance = 10\n\
         limits = {{ tokens_per_minute = 5 }}\n\
         model_limits = {{ \"gpt-4o-mini\" = {{ requests_per_second = 1 }} }}\n\
         [features]\nauth = false\naccounting = false\naudit = false\n\
         [audit]\npath = \"a.jsonl\"\nflush_interval_ms = 10\n\
         [quota]\nstate_path = \"q.redb\"\n\
         [quota.defaults]\nrequests_per_second = 5\n\
         [cluster]\nredis = \"redis://127.0.0.1:6379\"\n\
         [ebpf]\nenabled = true\nattach = false\n"
    ));
    assert_eq!(
        e.paths(),
        [
            "features.auth",
            "quota.defaults",
            "quota.state_path",
            "cluster",
            "ebpf.enabled",
            "consumers[0].limits",
            "consumers[0].model_limits",
            "consumers[0].balance",
            "ebpf.enabled",
            "audit.path",
            "audit.flush_interval_ms",
        ],
        "\n{e}"
    );
    assert!(e.0[0].message.contains("anyone could call"), "\n{e}");
    assert!(
        e.0[1].message.contains("features.accounting = false"),
        "\n{e}"
    );
    assert!(e.0[8].message.contains("features.auth = false"), "\n{e}");
    assert!(e.0[9].message.contains("features.audit = false"), "\n{e}");

    // A price means nothing when nothing is counted.
    let e = errors(&format!(
        "{MINIMAL}price = {{ input_per_million = 1.0, output_per_million = 2.0 }}\n\
         [features]\naccounting = false\n"
    ));
    assert_eq!(e.paths(), ["models[0].price"], "\n{e}");
}
