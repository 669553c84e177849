#!/usr/bin/env bash
# Bring sluice up locally on config/examples/quickstart.toml, in front of the
# bundled mock upstream, and show how to call it.
#
#   scripts/quickstart.sh          build (release), (re)start both, wait until ready
#   scripts/quickstart.sh stop     stop both
#
# Ports (fixed by the example config): sluice 127.0.0.1:8080, admin
# 127.0.0.1:9901, mock upstream 127.0.0.1:9000. Logs, pid files and the audit
# log go to run/ (gitignored). Running it again restarts both.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONFIG=config/examples/quickstart.toml
RUN=run
MOCK_BIN=target/release/sluice-mock
SLUICE_BIN=target/release/sluice
READY_URL=http://127.0.0.1:9901/readyz
READY_TIMEOUT_S=30

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Stops the process in pid file $1 if it is still the binary $2 (a stale pid
# file may name a pid that now belongs to something else).
stop_one() {
    local pidfile=$1 name=$2 pid
    [[ -f $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$name (pid $pid) still running after 10s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

stop_all() {
    stop_one "$RUN/sluice.pid" sluice
    stop_one "$RUN/sluice-mock.pid" sluice-mock
}

show_logs() {
    local f
    for f in "$RUN/sluice-mock.log" "$RUN/sluice.log"; do
        [[ -f $f ]] || continue
        echo "--- last lines of $f:" >&2
        tail -n 30 "$f" >&2
    done
}

case "${1:-start}" in
    stop)
        stop_all
        exit 0
        ;;
    start) ;;
    *)
        echo "usage: $0 [start|stop]" >&2
        exit 2
        ;;
esac

# ---------------------------------------------------------------- toolchain
missing=()
for tool in cc pkg-config curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    say "installing build tools (missing: ${missing[*]})"
    SUDO=
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to apt-get install build-essential pkg-config curl"
        SUDO=sudo
    fi
    $SUDO apt-get update
    $SUDO apt-get install -y build-essential pkg-config curl
fi
if ! command -v cargo >/dev/null 2>&1; then
    cat >&2 <<'MSG'
error: cargo not found. Install Rust (1.95 or newer) with rustup:

    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . "$HOME/.cargo/env"

then run scripts/quickstart.sh again.
MSG
    exit 1
fi

# ---------------------------------------------------------------- build
say "cargo build --release -p sluice-edge -p sluice-bench"
cargo build --release -p sluice-edge -p sluice-bench

"$SLUICE_BIN" check-config "$CONFIG"

# ---------------------------------------------------------------- (re)start
mkdir -p "$RUN"
stop_all

# Something else on one of the ports would answer in our place (the mock's
# and sluice's listeners use SO_REUSEPORT, so binding would even succeed).
for port in 9000 8080 9901; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is already in use by another process (not started by this script);" \
            "stop it first (e.g. find it with: ss -ltnp 'sport = :$port')"
    fi
done

say "starting the mock upstream on 127.0.0.1:9000"
nohup "$MOCK_BIN" --listen 127.0.0.1:9000 --api-key mock-key \
    </dev/null >"$RUN/sluice-mock.log" 2>&1 &
echo $! >"$RUN/sluice-mock.pid"
for _ in $(seq 1 100); do
    grep -q '^listening on' "$RUN/sluice-mock.log" 2>/dev/null && break
    kill -0 "$(<"$RUN/sluice-mock.pid")" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q '^listening on' "$RUN/sluice-mock.log"; then
    show_logs
    stop_all
    die "the mock did not start (is 127.0.0.1:9000 taken?)"
fi

say "starting sluice with $CONFIG"
nohup "$SLUICE_BIN" --config "$CONFIG" </dev/null >"$RUN/sluice.log" 2>&1 &
echo $! >"$RUN/sluice.pid"

# Ready = our process printed its admin address and /readyz answers 200.
deadline=$((SECONDS + READY_TIMEOUT_S))
until grep -q '^admin on http://127.0.0.1:9901' "$RUN/sluice.log" 2>/dev/null \
    && curl -fsS -o /dev/null --max-time 2 "$READY_URL" 2>/dev/null; do
    if ! kill -0 "$(<"$RUN/sluice.pid")" 2>/dev/null; then
        show_logs
        stop_all
        die "sluice exited during start-up (are 127.0.0.1:8080 and :9901 free?)"
    fi
    if ((SECONDS >= deadline)); then
        show_logs
        stop_all
        die "$READY_URL did not answer 200 within ${READY_TIMEOUT_S}s"
    fi
    sleep 0.2
done

cat <<'MSG'

sluice is up: http://127.0.0.1:8080 (admin and /metrics on http://127.0.0.1:9901)

Ask for a chat completion:

  curl -sS http://127.0.0.1:8080/v1/chat/completions \
    -H 'Authorization: Bearer sk-sluice-demo' \
    -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'

The same, streamed (server-sent events, with token usage at the end):

  curl -sSN http://127.0.0.1:8080/v1/chat/completions \
    -H 'Authorization: Bearer sk-sluice-demo' \
    -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello!"}]}'

Audit log: run/audit.jsonl   Logs: run/sluice.log, run/sluice-mock.log
Stop both:  scripts/quickstart.sh stop
MSG
