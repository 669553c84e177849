#!/usr/bin/env bash
# Kernel early rejection benchmark (DESIGN.md §7): CPU per refused
# connection attempt with the XDP program dropping or RST-ing the SYNs of an
# over-quota tenant, against sluice answering the same tenant with a
# userspace `429 insufficient_quota`; and the delay from a verdict written
# to the first rejected SYN. See bench/xdp/README.md.
#
#   bench/xdp/run.sh              # 5 rounds: all cases at 5k attempts/s, XDP also at 20k/s
#   ROUNDS=1 RATE=10000 XDP_RATE= bench/xdp/run.sh
#   MODE=native bench/xdp/run.sh              # driver-mode XDP on the veth
#   OUT=/tmp/xdp bench/xdp/run.sh
#
# Needs root, iproute2, taskset; perf (linux-perf) for the attribution.
# Creates one network namespace, one veth pair and one bpffs pin directory,
# all named after this script's pid, and removes them on exit (trap), along
# with the sluice it started. BIN_DIR skips the build and uses binaries
# from there; CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$(pwd)

ROUNDS=${ROUNDS:-5}
# The rate all three cases run at: one the userspace 429 can sustain on a
# single server CPU of a small machine (it needs ~150 µs per attempt here).
RATE=${RATE:-5000}
# The XDP cases once more at this rate (empty = not).
XDP_RATE=${XDP_RATE-20000}
DURATION=${DURATION:-5}
BASELINE=${BASELINE:-3}
TICK_US=${TICK_US:-250}
MODE=${MODE:-skb}
TRIALS=${TRIALS:-50}
INTERVAL_US=${INTERVAL_US:-50}
NAPI_FIFO=${NAPI_FIFO:-50}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-bench/results/xdp-$(date -u +%Y-%m-%d)}

die() { echo "run.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (XDP attach, bpffs, netns, veth)"
for tool in ip taskset nsenter ss; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
case "$MODE" in skb | native) ;; *) die "MODE is skb or native" ;; esac
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs: one for the load generator, one for sluice"
PERF=$(command -v perf || true)
[ -n "$PERF" ] || echo "run.sh: no perf (apt-get install linux-perf): per-thread CPU falls back to schedstat, no attribution" >&2

if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release -p sluice-loader -p sluice-edge -p sluice-bench >&2
    BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd)
for b in sluice sluice-loader sluice-xdp-bench; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b missing"
done
bench="$BIN_DIR/sluice-xdp-bench"

# ---------------------------------------------------------------- setup
id=$$
NS="sluice-xdpb-$id"
HOST_IF="sxbh$id"
NS_IF="sxbn$id"
PIN="/sys/fs/bpf/sluice-xdpb-$id"
PEER_PIN="$PIN-peer"
WORK=$(mktemp -d "/tmp/sluice-xdpb.XXXXXX")
SLUICE_PID=""
made_ns=0
made_link=0

stop_sluice() {
    [ -n "$SLUICE_PID" ] || return 0
    kill -TERM "$SLUICE_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$SLUICE_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SLUICE_PID" 2>/dev/null || true
    wait "$SLUICE_PID" 2>/dev/null || true
    SLUICE_PID=""
}

detach_all() {
    # sluice keeps its program attached and its pins at shutdown.
    if [ -d "$PIN" ]; then
        "$BIN_DIR/sluice-loader" --pin-dir "$PIN" detach >/dev/null 2>&1 || true
        rm -rf "$PIN"
    fi
}

cleanup() {
    set +e
    stop_sluice
    detach_all
    if [ -d "$PEER_PIN" ]; then
        nsenter --net="/run/netns/$NS" "$BIN_DIR/sluice-loader" --pin-dir "$PEER_PIN" detach >/dev/null 2>&1
        rm -rf "$PEER_PIN"
    fi
    [ "$made_link" = 1 ] && ip link del "$HOST_IF" 2>/dev/null
    [ "$made_ns" = 1 ] && ip netns del "$NS" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ ! -e "$PIN" ] || die "$PIN exists (left by an earlier run with this pid?)"

# A /29 of 198.18.0.0/15 (RFC 2544 benchmarking space) no interface uses.
base=""
for i in $(seq 0 63); do
    n=$(((id * 40503 + i) % 16384))
    cand="198.$((18 + n / 8192)).$(((n % 8192) / 32)).$(((n % 32) * 8))"
    if [ -z "$(ip -o -4 addr show to "$cand/29")" ]; then base=$cand; break; fi
done
[ -n "$base" ] || die "no free /29 in 198.18.0.0/15"
IFS=. read -r a b c d <<<"$base"
HOST_IP="$a.$b.$c.$((d + 1))"
CLIENT_IP="$a.$b.$c.$((d + 2))"

ip netns add "$NS"
made_ns=1
ip link add "$HOST_IF" type veth peer name "$NS_IF" netns "$NS"
made_link=1
ip addr add "$HOST_IP/29" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip -n "$NS" addr add "$CLIENT_IP/29" dev "$NS_IF"
ip -n "$NS" link set "$NS_IF" up
ip -n "$NS" link set lo up
# 100k connections per userspace phase from one address.
ip netns exec "$NS" sysctl -q -w net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
# Each veth end gets its own NAPI instance (GRO on) polled by a kernel
# thread (threaded NAPI): everything the host end receives (the XDP
# program, the TCP handshake, the requests) and sends back in reply runs
# in one thread pinned to the server CPU, whose time on CPU perf's
# task-clock gives; the namespace end's on the client CPU. Without this each sender
# would run its peer's receive work inline, mixing client and server costs.
"$bench" napi --iface "$HOST_IF" --cpu "$SERVER_CPU" --fifo "$NAPI_FIFO" >/dev/null
ip netns exec "$NS" "$bench" napi --iface "$NS_IF" --cpu "$CLIENT_CPU" --fifo "$NAPI_FIFO" >/dev/null
if [ "$MODE" = native ] && [ "${PEER_PASS:-1}" = 1 ]; then
    # XDP_TX on a veth reaches the peer only when the peer has a NAPI
    # instance (GRO above, or an XDP program of its own). PEER_PASS=1 adds a
    # pass-everything instance of sluice's program on the namespace end, as
    # edge's tests do. The net namespace only: the pins stay on the host
    # bpffs.
    nsenter --net="/run/netns/$NS" "$BIN_DIR/sluice-loader" --pin-dir "$PEER_PIN" \
        attach --iface "$NS_IF" --mode native >/dev/null
fi
for _ in $(seq 1 50); do
    ip netns exec "$NS" ping -c1 -W1 "$HOST_IP" >/dev/null 2>&1 && break
    sleep 0.1
done

PORT=""
for p in $(seq $((18000 + id % 1000)) $((18999 + id % 1000))); do
    if [ -z "$(ss -Htln "sport = :$p")" ]; then PORT=$p; break; fi
done
[ -n "$PORT" ] || die "no free port"

mkdir -p "$OUT"
rm -f "$OUT"/flood-*.toml "$OUT"/latency.toml

# ---------------------------------------------------------------- sluice
# case: userspace | drop | rst
config() {
    local case=$1 file="$WORK/sluice-$1.toml"
    cat >"$file" <<EOF
# sluice for bench/xdp/run.sh, case "$case". One over-quota consumer
# (balance 0): every request is refused at admission with 429
# insufficient_quota and never reaches the provider, which is never
# contacted. Audit on, as in production.
[[listeners]]
address = "$HOST_IP:$PORT"

[admin]
address = "127.0.0.1:0"

[workers]
count = 1
pin_cpus = false
drain_timeout_ms = 1000

[[providers]]
name = "upstream"
base_url = "http://127.0.0.1:9/v1"
api_key = "unused"

[[models]]
name = "gpt-4o-mini"
provider = "upstream"

[[consumers]]
name = "over"
keys = [{ plain = "sk-over" }]
balance = 0

[audit]
path = "$WORK/audit-$case.jsonl"

[quota]
state_path = ""
EOF
    if [ "$case" != userspace ]; then
        cat >>"$file" <<EOF

[ebpf]
enabled = true
attach = true
interfaces = ["$HOST_IF"]
mode = "$MODE"
pin_dir = "$PIN"
action = "$case"
# Long enough that the verdict outlasts the run.
quota_verdict_ms = 3600000
EOF
    fi
    echo "$file"
}

ADMIN=""
start_sluice() {
    local cfg=$1 log="$WORK/sluice-$2"
    # nice -10: a fair share of the server CPU even when other work shares
    # the machine (the CPU it uses is measured either way).
    nice -n -10 taskset -c "$SERVER_CPU" "$BIN_DIR/sluice" --config "$cfg" >"$log.out" 2>"$log.err" &
    SLUICE_PID=$!
    ADMIN=""
    # Up to 60 s: loading the tokenizer tables takes a while on a busy machine.
    for _ in $(seq 1 600); do
        ADMIN=$(sed -n 's|^admin on http://||p' "$log.out" | head -1)
        [ -n "$ADMIN" ] && break
        kill -0 "$SLUICE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$ADMIN" ]; then
        cat "$log.err" >&2
        die "sluice did not start ($cfg)"
    fi
}

net_args=(--netns "$NS" --ns-if "$NS_IF" --host-if "$HOST_IF" --host-ip "$HOST_IP"
    --client-ip "$CLIENT_IP" --port "$PORT" --pin-dir "$PIN"
    --client-cpu "$CLIENT_CPU" --server-cpu "$SERVER_CPU")
perf_args=()
[ -n "$PERF" ] && perf_args=(--perf "$PERF")

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
runs=("userspace $RATE" "drop $RATE" "rst $RATE")
if [ -n "$XDP_RATE" ] && [ "$XDP_RATE" != "$RATE" ]; then
    runs+=("drop $XDP_RATE" "rst $XDP_RATE")
fi
for round in $(seq 1 "$ROUNDS"); do
    for run in "${runs[@]}"; do
        read -r case rate <<<"$run"
        detach_all
        cfg=$(config "$case")
        start_sluice "$cfg" "$case-$rate-r$round"
        flood_case=$case
        [ "$case" = userspace ] || flood_case="xdp-$case"
        if [ "$case" = userspace ] && ip link show dev "$HOST_IF" | grep -q "prog/xdp"; then
            die "an XDP program is still attached to $HOST_IF for the userspace case"
        fi
        "$bench" flood --case "$flood_case" "${net_args[@]}" --admin "$ADMIN" \
            --sluice-pid "$SLUICE_PID" --rate "$rate" --duration "$DURATION" \
            --baseline "$BASELINE" --tick-us "$TICK_US" --mode "$MODE" --round "$round" \
            --work "$WORK" "${perf_args[@]}" --out "$OUT/flood-r$round-$case-$rate.toml"
        stop_sluice
    done
done

# Verdict latency, against sluice with action "rst".
detach_all
start_sluice "$(config rst)" latency
"$bench" latency "${net_args[@]}" --trials "$TRIALS" --interval-us "$INTERVAL_US" \
    --mode "$MODE" --out "$OUT/latency.toml"
stop_sluice
detach_all
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cp "$WORK/sluice-userspace.toml" "$WORK/sluice-rst.toml" "$OUT/" 2>/dev/null || true
sed -i "s|$WORK|<scratch>|g" "$OUT"/sluice-*.toml 2>/dev/null || true
commit=$(git rev-parse --short HEAD 2>/dev/null || echo local)
git diff --quiet HEAD 2>/dev/null || commit="$commit (working tree modified)"
cat >"$OUT/env.txt" <<EOF
date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)
commit:      $commit
kernel:      $(uname -r)
cpu:         $(nproc) × $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
load avg:    $load_before (before), $load_after (after)
xdp mode:    $MODE, on the host end of a veth pair; GRO + threaded NAPI on both ends: host end's thread on CPU $SERVER_CPU, namespace end's on CPU $CLIENT_CPU
sluice:      1 worker, taskset -c $SERVER_CPU, nice -10; load generator pinned to CPU $CLIENT_CPU (SCHED_FIFO 10); NAPI threads SCHED_FIFO $NAPI_FIFO (0 = SCHED_OTHER)
load:        $RATE attempts/s (all cases)${XDP_RATE:+ and $XDP_RATE/s (XDP cases)} for ${DURATION} s each, open loop, ${TICK_US} µs ticks; idle baseline ${BASELINE} s before each; $ROUNDS round(s)
latency:     $TRIALS trials, a SYN every $INTERVAL_US µs
command:     ROUNDS=$ROUNDS RATE=$RATE XDP_RATE=$XDP_RATE DURATION=$DURATION MODE=$MODE bench/xdp/run.sh
EOF
"$bench" report --dir "$OUT" --out "$OUT/report.md" >/dev/null
case "$OUT" in /*) ;; *) OUT="$repo/$OUT" ;; esac
echo "report: $OUT/report.md" >&2
