"""Harness for the real-client tests: a real sluice over TLS in front of the
real sluice-mock, both started once per session on ephemeral ports.

What the session fixture builds, in order:

1. a throw-away CA and a leaf certificate for 127.0.0.1/localhost signed by
   it (sluice refuses to serve a CA certificate as its own);
2. ``sluice-mock --listen 127.0.0.1:0 --api-key <key>``; its port is read
   from the ``listening on ADDR`` line on stdout;
3. a sluice config (TLS listener and admin on port 0, two workers, the mock
   as providers of both wire formats: ``mock`` of kind ``openai`` at
   ``/v1`` and ``anth`` of kind ``anthropic`` at the bare address, so sluice
   speaks Anthropic's Messages API to it, plus a spare of each kind for the
   tests that make a provider answer 429, which rests its key; consumer
   ``py``/``sk-py``, audit flushed every 50 ms), checked with
   ``sluice check-config`` first so a bad file fails with its errors;
4. ``sluice --config FILE``; the listener and admin ports come from its
   ``listening on https://ADDR`` / ``admin on http://ADDR`` lines; the
   session waits until ``/readyz`` answers 200.

At the end both processes get SIGTERM (then SIGKILL after a timeout) and
sluice must have exited 0, as a drained shutdown should.

Binaries: ``SLUICE_BIN`` and ``SLUICE_MOCK_BIN``, defaulting to
``target/debug/sluice`` and ``target/debug/sluice-mock`` under the repo root.
A missing binary skips the suite with a message, except under ``CI=true``,
where it fails; under CI any skip at all is turned into a failure.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import queue
import re
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

#: The consumer the tests call sluice as.
CONSUMER = "py"
CONSUMER_KEY = "sk-py"
#: The key sluice must send upstream; the mock answers 401 to anything else.
MOCK_KEY = "mock-key-for-python-tests"
#: Models configured in sluice, with the tokenizer each is counted with.
MODELS = {"gpt-4o-mini": "o200k_base", "text-embedding-3-small": "cl100k_base"}
#: The second provider: the same mock, spoken to in Anthropic's wire format.
ANTHROPIC_PROVIDER = "anth"
#: The public model routed to it, and the name sluice sends upstream.
ANTHROPIC_MODEL = "claude-test"
ANTHROPIC_UPSTREAM_MODEL = "claude-sonnet-4-5"
#: Spare providers, one per wire format, each with one model, for tests that
#: script an upstream 429: sluice rests a key that got 429 (for its
#: Retry-After), which must not turn the other tests' answers into 429s.
#: public model -> (provider, kind, upstream model)
RATE_LIMITED_MODELS = {
    "gpt-limited": ("mock-limited", "openai", "gpt-4o-mini"),
    "claude-limited": ("anth-limited", "anthropic", ANTHROPIC_UPSTREAM_MODEL),
}

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
AUDIT_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------
# CI: nothing may be skipped.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} was skipped, which CI=true does not allow: "
            f"{report.longrepr}"
        )


def _missing(what: str) -> None:
    """Fails under CI, skips elsewhere; either way says what to do."""
    if IN_CI:
        pytest.fail(what, pytrace=False)
    pytest.skip(what)


# --------------------------------------------------------------------------
# Certificates.


@dataclasses.dataclass
class TlsFiles:
    ca_cert: Path
    leaf_cert: Path
    leaf_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sluice tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA and a server leaf for localhost/127.0.0.1 signed by it, written
    as PEM files (the leaf key as PKCS#8)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    valid_from = now - datetime.timedelta(minutes=5)
    valid_to = now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("sluice test CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        leaf_cert=directory / "leaf.pem",
        leaf_key=directory / "leaf.key",
    )
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.leaf_cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files.leaf_key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.leaf_key.chmod(0o600)
    return files


def client_ssl_context(ca_cert: Path) -> ssl.SSLContext:
    """Trusts only the test CA, with strict X.509 checks (the default from
    Python 3.13 on), so a sloppy certificate fails here and not in the field."""
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


# --------------------------------------------------------------------------
# Processes.


class Process:
    """A child process whose stdout is read line by line on a thread (so the
    pipe never fills) and whose stderr goes to a file in the session dir."""

    def __init__(self, name: str, argv: list[str], workdir: Path):
        self.name = name
        self.argv = argv
        self.stderr_path = workdir / f"{name}.stderr.log"
        self.stdout_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        with open(self.stderr_path, "wb") as stderr:
            self.popen = subprocess.Popen(
                argv,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
            )
        self._reader = threading.Thread(
            target=self._read, name=f"{name}-stdout", daemon=True
        )
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def describe(self) -> str:
        """Command line, exit status, stdout and the tail of stderr."""
        try:
            stderr = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            stderr = []
        return "\n".join(
            [
                f"--- {self.name}: {' '.join(self.argv)}",
                f"exit status: {self.popen.poll()}",
                "stdout:",
                *(f"  {line}" for line in self.stdout_lines),
                f"stderr (last 40 lines of {self.stderr_path}):",
                *(f"  {line}" for line in stderr[-40:]),
            ]
        )

    def wait_for(self, pattern: re.Pattern[str], count: int, timeout: float) -> list[re.Match[str]]:
        """The first ``count`` stdout lines matching ``pattern``."""
        found: list[re.Match[str]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"{self.name} did not print {count} line(s) matching "
                    f"{pattern.pattern!r} within {timeout:.0f}s\n{self.describe()}"
                )
            try:
                line = self._lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if line is None:
                self.popen.wait(timeout=5)
                raise RuntimeError(
                    f"{self.name} closed stdout (exited?) before printing "
                    f"{pattern.pattern!r}\n{self.describe()}"
                )
            m = pattern.search(line)
            if m:
                found.append(m)
        return found

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; returns the exit status
        (negative: killed by that signal)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=5)
        return self.popen.returncode


def _binary(env: str, default: str) -> Path:
    path = Path(os.environ.get(env) or REPO_ROOT / default)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        _missing(
            f"{env}: no executable at {path}; build it with "
            "`cargo build --workspace` or run scripts/test.sh"
        )
    return path


def _toml_str(value: object) -> str:
    # A TOML basic string accepts JSON's escapes for everything a path holds.
    return json.dumps(str(value))


def _provider(name: str, kind: str, mock_port: int) -> str:
    # Anthropic's base URL has no /v1: sluice appends /v1/messages.
    path = "/v1" if kind == "openai" else ""
    return f"""\
[[providers]]
name = {_toml_str(name)}
kind = {_toml_str(kind)}
base_url = "http://127.0.0.1:{mock_port}{path}"
api_key = {_toml_str(MOCK_KEY)}
connect_timeout_ms = 2000
first_byte_timeout_ms = 10000
idle_timeout_ms = 10000
"""


def sluice_config(tls: TlsFiles, mock_port: int, audit_path: Path) -> str:
    providers = [("mock", "openai"), (ANTHROPIC_PROVIDER, "anthropic")]
    providers += [(p, kind) for p, kind, _ in RATE_LIMITED_MODELS.values()]
    providers_toml = "\n".join(_provider(name, kind, mock_port) for name, kind in providers)
    models = "\n".join(
        f"[[models]]\nname = {_toml_str(name)}\nprovider = \"mock\"\n"
        f"encoding = {_toml_str(encoding)}\n"
        for name, encoding in MODELS.items()
    )
    routed = {ANTHROPIC_MODEL: (ANTHROPIC_PROVIDER, ANTHROPIC_UPSTREAM_MODEL)}
    routed.update({m: (p, up) for m, (p, _, up) in RATE_LIMITED_MODELS.items()})
    models += "".join(
        f"\n[[models]]\nname = {_toml_str(name)}\nprovider = {_toml_str(provider)}\n"
        f"upstream_model = {_toml_str(upstream)}\n"
        for name, (provider, upstream) in routed.items()
    )
    return f"""\
# Written by tests/python/conftest.py for one test session.
[[listeners]]
address = "127.0.0.1:0"
tls = {{ cert_file = {_toml_str(tls.leaf_cert)}, key_file = {_toml_str(tls.leaf_key)} }}

[admin]
address = "127.0.0.1:0"

[workers]
count = 2
drain_timeout_ms = 5000

{providers_toml}
{models}
[[consumers]]
name = {_toml_str(CONSUMER)}
keys = [{{ plain = {_toml_str(CONSUMER_KEY)} }}]

[audit]
path = {_toml_str(audit_path)}
flush_interval_ms = 50

[quota]
state_path = {_toml_str(audit_path.with_name("quota.redb"))}
"""


# --------------------------------------------------------------------------
# The session.


@dataclasses.dataclass
class Gateway:
    """Where everything of the session lives."""

    base_url: str  # https://127.0.0.1:PORT/v1, for the SDK
    admin_url: str  # http://127.0.0.1:PORT
    mock_url: str  # http://127.0.0.1:PORT (no /v1)
    tls: TlsFiles
    ssl_context: ssl.SSLContext
    audit_path: Path
    sluice: Process
    mock: Process

    @property
    def origin(self) -> str:
        """https://127.0.0.1:PORT: the base URL for the anthropic SDK, which
        adds ``/v1/messages`` itself."""
        return self.base_url.removesuffix("/v1")

    def audit_record(self, request_id: str, timeout: float = AUDIT_TIMEOUT_S) -> dict:
        """The audit record of ``request_id``, waiting for the flush."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.audit_records():
                if record.get("request_id") == request_id:
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no audit record with request_id {request_id!r} in "
                    f"{self.audit_path} after {timeout:.0f}s; last records: "
                    f"{self.audit_records()[-3:]}"
                )
            time.sleep(0.05)

    def audit_records(self) -> list[dict]:
        try:
            text = self.audit_path.read_text()
        except FileNotFoundError:
            return []
        # The last line may still be in flight; only whole lines count.
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _wait_ready(gateway_proc: Process, admin_url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if gateway_proc.popen.poll() is not None:
            raise RuntimeError(f"sluice exited before it was ready\n{gateway_proc.describe()}")
        try:
            r = httpx.get(f"{admin_url}/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]!r}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.1)
    raise RuntimeError(
        f"{admin_url}/readyz not 200 within {STARTUP_TIMEOUT_S:.0f}s (last: {last})\n"
        f"{gateway_proc.describe()}"
    )


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    sluice_bin = _binary("SLUICE_BIN", "target/debug/sluice")
    mock_bin = _binary("SLUICE_MOCK_BIN", "target/debug/sluice-mock")
    workdir = tmp_path_factory.mktemp("sluice")
    tls = make_tls_files(workdir)
    audit_path = workdir / "audit.jsonl"

    started: list[Process] = []

    def stop_all() -> dict[str, int]:
        return {p.name: p.stop() for p in reversed(started)}

    try:
        mock = Process(
            "sluice-mock",
            [str(mock_bin), "--listen", "127.0.0.1:0", "--workers", "1", "--api-key", MOCK_KEY],
            workdir,
        )
        started.append(mock)
        (m,) = mock.wait_for(re.compile(r"listening on (\S+):(\d+)\s*$"), 1, STARTUP_TIMEOUT_S)
        mock_port = int(m.group(2))

        config_path = workdir / "sluice.toml"
        config_path.write_text(sluice_config(tls, mock_port, audit_path))
        check = subprocess.run(
            [str(sluice_bin), "check-config", str(config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check.returncode != 0:
            raise RuntimeError(
                f"sluice check-config {config_path} failed ({check.returncode}):\n"
                f"{check.stdout}{check.stderr}\n--- config:\n{config_path.read_text()}"
            )

        sluice = Process("sluice", [str(sluice_bin), "--config", str(config_path)], workdir)
        started.append(sluice)
        (listen,) = sluice.wait_for(
            re.compile(r"^listening on https://127\.0\.0\.1:(\d+)\s*$"), 1, STARTUP_TIMEOUT_S
        )
        (admin,) = sluice.wait_for(
            re.compile(r"^admin on http://127\.0\.0\.1:(\d+)\s*$"), 1, STARTUP_TIMEOUT_S
        )
        admin_url = f"http://127.0.0.1:{admin.group(1)}"
        _wait_ready(sluice, admin_url)
    except BaseException:
        stop_all()
        raise

    gw = Gateway(
        base_url=f"https://127.0.0.1:{listen.group(1)}/v1",
        admin_url=admin_url,
        mock_url=f"http://127.0.0.1:{mock_port}",
        tls=tls,
        ssl_context=client_ssl_context(tls.ca_cert),
        audit_path=audit_path,
        sluice=sluice,
        mock=mock,
    )
    yield gw

    status = stop_all()
    # A drained shutdown exits 0; anything else is a bug worth a red test.
    assert status["sluice"] == 0, (
        f"sluice exited with {status['sluice']} after SIGTERM, expected 0\n{sluice.describe()}"
    )


@pytest.fixture(scope="session")
def http_client(gateway: Gateway):
    with httpx.Client(verify=gateway.ssl_context, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def client(gateway: Gateway, http_client: httpx.Client) -> openai.OpenAI:
    """The official SDK, unchanged except for base_url, key and trusted CA."""
    return openai.OpenAI(
        base_url=gateway.base_url,
        api_key=CONSUMER_KEY,
        http_client=http_client,
        max_retries=0,
        timeout=30,
    )


@pytest.fixture(scope="session")
def mock_direct(gateway: Gateway) -> Callable[[str, dict], dict]:
    """POSTs a JSON body straight to the mock with the provider key: the
    answer sluice is expected to relay."""
    c = httpx.Client(
        base_url=gateway.mock_url,
        headers={"Authorization": f"Bearer {MOCK_KEY}"},
        timeout=30,
    )

    def post(path: str, body: dict) -> dict:
        r = c.post(path, json=body)
        assert r.status_code == 200, f"mock {path}: {r.status_code} {r.text}"
        return r.json()

    yield post
    c.close()
