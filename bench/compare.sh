#!/usr/bin/env bash
# The benchmark comparison in one command, on a fresh Debian machine:
# installs what it needs (nginx-light, linux-perf) when missing, builds the
# release binaries, and runs `sluice-bench compare` into
# bench/results/<date>-<commit>/ (report.md, results.json, SVG plots).
#
#   bench/compare.sh                      # defaults: 5-8 minutes on 2 cores
#   bench/compare.sh --repeat 3           # medians of three runs
#   bench/compare.sh --scenarios c1,max   # a subset
#   OUT=/tmp/bench bench/compare.sh       # another output directory
#
# CARGO_TARGET_DIR is honoured; BIN_DIR skips the build and uses binaries
# from there. Every other argument goes to `sluice-bench compare` (see
# `sluice-bench compare --help` and bench/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -q >&2
    # perf is optional: the comparison runs without profiles.
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
        "${sudo[@]}" apt-get install -y -q --no-install-recommends nginx-light >&2
fi

if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release -p sluice-edge -p sluice-bench >&2
    BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo local)
out="${OUT:-bench/results/$(date -u +%Y-%m-%d)-$commit}"
exec "$BIN_DIR/sluice-bench" compare --bin-dir "$BIN_DIR" --out "$out" "$@"
