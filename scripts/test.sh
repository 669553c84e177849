#!/usr/bin/env bash
# The test command: everything CI runs, in the order it runs it.
#
#   1. Python deps for the real-client tests, in .venv (created if missing)
#   2. cargo build --workspace --all-targets   (debug)
#   3. cargo test --workspace
#   4. pytest tests/python against target/debug/sluice and sluice-mock
#
# Exits non-zero as soon as a phase fails. Extra arguments go to pytest,
# e.g. `scripts/test.sh -k streaming`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

phase() {
    printf '\n\033[1m==> %s\033[0m\n' "$*"
}

phase "python deps (.venv, tests/requirements.txt)"
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    rm -rf .venv
    if ! "$PYTHON" -m venv .venv; then
        rm -rf .venv
        echo "error: '$PYTHON -m venv .venv' failed; on Debian: apt-get install -y python3-venv" >&2
        exit 1
    fi
fi
# Quick when everything is installed already; needs PyPI the first time.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
.venv/bin/python -c 'import openai, anthropic, httpx, pytest, cryptography; print("openai", openai.__version__, "| anthropic", anthropic.__version__, "| pytest", pytest.__version__)'

phase "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

phase "cargo test --workspace"
cargo test --workspace

phase "pytest tests/python (official openai SDK against sluice over TLS)"
export SLUICE_BIN="$ROOT/target/debug/sluice"
export SLUICE_MOCK_BIN="$ROOT/target/debug/sluice-mock"
.venv/bin/python -m pytest -q tests/python "$@"

phase "all tests passed"
