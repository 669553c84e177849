#!/usr/bin/env bash
# Quick side-by-side numbers until the full harness (issue 3) lands:
# wrk against the mock directly and through sluice, in one run, with the
# mock + wrk pinned to CPU 0 and sluice (1 worker) to CPU 1. Prints
# requests/s, latency percentiles and sluice's CPU µs per request (from
# /proc/PID/stat utime+stime). Needs: wrk (apt-get install wrk), a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
DUR=${DUR:-10}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

taskset -c 0 $BIN/sluice-mock --listen 127.0.0.1:0 --api-key mock-key --no-record > "$WORK/mock.out" &
for _ in $(seq 50); do grep -q listening "$WORK/mock.out" 2>/dev/null && break; sleep 0.1; done
MOCK=$(awk '/listening on/ {print $3}' "$WORK/mock.out")
sed -e "s#127.0.0.1:9000#$MOCK#" -e 's#127.0.0.1:8080#127.0.0.1:0#' -e 's#127.0.0.1:9901#127.0.0.1:0#' \
    -e 's#^count = .*#count = 1#' -e "s#run/audit.jsonl#$WORK/audit.jsonl#" \
    config/examples/quickstart.toml > "$WORK/sluice.toml"
taskset -c 1 $BIN/sluice --config "$WORK/sluice.toml" > "$WORK/sluice.out" 2> "$WORK/sluice.err" &
SLUICE_PID=$!
for _ in $(seq 50); do grep -q "admin on" "$WORK/sluice.out" 2>/dev/null && break; sleep 0.1; done
SLUICE=$(awk '/listening on/ {sub("http://","",$3); print $3}' "$WORK/sluice.out")

cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)

run() { # name url key script conns
  local t0 t1 out reqs
  t0=$(cpu_ticks $SLUICE_PID)
  out=$(KEY=$3 taskset -c 0 wrk -t1 -c"$5" -d"${DUR}s" --latency -s "bench/wrk/$4" "$2" 2>&1)
  t1=$(cpu_ticks $SLUICE_PID)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local cpu="-"
  if [ "$1" != "direct" ]; then cpu=$(awk -v d=$((t1-t0)) -v hz=$HZ -v n="$reqs" 'BEGIN {printf "%.1f", d/hz*1e6/n}'); fi
  printf "| %-22s | %5s | %10s | %8s | %8s | %12s |\n" "$1" "$5" "$rps" "$p50" "$p99" "$cpu"
}
echo "| target                 | conns |      req/s |      p50 |      p99 | sluice CPU µs/req |"
echo "|------------------------|-------|------------|----------|----------|--------------|"
run direct            "http://$MOCK/v1/chat/completions"    mock-key       chat.lua 1
run sluice            "http://$SLUICE/v1/chat/completions"  sk-sluice-demo chat.lua 1
run direct            "http://$MOCK/v1/chat/completions"    mock-key       chat.lua 32
run sluice            "http://$SLUICE/v1/chat/completions"  sk-sluice-demo chat.lua 32
run "direct stream64"  "http://$MOCK/v1/chat/completions"   mock-key       stream.lua 32
run "sluice stream64"  "http://$SLUICE/v1/chat/completions" sk-sluice-demo stream.lua 32
