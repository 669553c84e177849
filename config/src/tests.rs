//! Tests of the whole load path: inline TOML in, `Config` or errors out.
//!
//! Each test builds its config from a string (or from `config/examples/`),
//! so nothing depends on files outside the crate. Error tests assert exact
//! key paths, because the path is what an operator uses to find the line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{sha256_hex, Config, ConfigErrors, Encoding, ProviderKind};

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

    assert!(config.consumers.is_empty());
    assert_eq!(config.audit.path, PathBuf::from("sluice-audit.jsonl"));
    assert_eq!(config.audit.flush_interval, Duration::from_millis(1000));
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
kind = "anthropic"
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
    if std::env::var_os("OPENAI_API_KEY").is_none() {
        std::env::set_var("OPENAI_API_KEY", "sk-test-placeholder");
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
    assert_eq!(names, ["openai.toml", "quickstart.toml"]);
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
        ["consumers[0].keys[0]: plain-text key; store its sha256 instead"]
    );
    assert_eq!(config.audit.path, PathBuf::from("run/audit.jsonl"));
}
