#!/usr/bin/env bash
# CreatePurge with metrics off and on, from an external load generator (h2load), alternating
# runs of the same release binary on the memory backend: calls/s and the server's CPU time per
# call (user + system, from /proc/PID/stat), which the machine's other load disturbs less.
#
# With RATE set, h2load holds the offered load at RATE calls/s (16 connections, RATE/16 each)
# below what either setting can serve: both then do the same work at the same pace (the same
# batching, the same backlog), so CPU per call compares the recordings alone.
#
#   bench/metrics-cost.sh              # 6 rounds of 100k calls each way, 16 connections x 32 streams
#   ROUNDS=4 N=50000 bench/metrics-cost.sh
#   RATE=16000 N=160000 ROUNDS=8 bench/metrics-cost.sh   # fixed offered load
#   PERF=1 ROUNDS=0 bench/metrics-cost.sh                 # only the share of samples in recording
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
ROUNDS=${ROUNDS:-6}
RATE=${RATE:-}
pace=()
if [[ -n "$RATE" ]]; then
  (( RATE >= 16 && RATE % 16 == 0 )) || { echo "RATE must be a multiple of 16 (16 connections)" >&2; exit 2; }
  pace=(--rps $((RATE / 16)))
fi
OUT=bench/out
mkdir -p "$OUT"
# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_h2load
[[ -n "${NOBUILD:-}" ]] || cargo build --release --bin purge-service
write_create_body "$OUT/body.bin"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# load PORT N: N CreatePurge calls from h2load (paced when RATE is set); h2load's report on stdout.
load() {
  h2load -n "$2" -c 16 -m 32 -t 1 "${pace[@]}" -d "$OUT/body.bin" -H 'content-type: application/grpc' \
    -H 'te: trailers' "http://127.0.0.1:$1/purge.v1.PurgeService/CreatePurge"
}

# run off|on: prints "calls/s cpu_us_per_call"
run() {
  local port admin=() pid t0 t1 rps
  port=$(free_port)
  if [[ $1 == on ]]; then admin=(PURGE_ADMIN__LISTEN="127.0.0.1:$(free_port)"); fi
  env -u PURGE_CONFIG PURGE_SERVER__LISTEN="127.0.0.1:$port" "${admin[@]}" \
    target/release/purge-service >"$OUT/metrics-$1.server.log" 2>&1 & pid=$!
  wait_port "$port"
  t0=$(ticks "$pid")
  load "$port" "$N" > "$OUT/metrics-$1.h2load.txt"
  t1=$(ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rps=$(awk '/^finished in/ {print $4}' "$OUT/metrics-$1.h2load.txt")
  awk -v r="$rps" -v d=$((t1 - t0)) -v hz="$hz" -v n="$N" 'BEGIN { printf "%.0f %.1f\n", r, d / hz * 1e6 / n }'
}

rm -f "$OUT/metrics-cost.rows"
echo "| round | off calls/s | on calls/s | off CPU us/call | on CPU us/call |"
echo "|---|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  read -r off_rps off_cpu < <(run off)
  read -r on_rps on_cpu < <(run on)
  echo "| $r | $off_rps | $on_rps | $off_cpu | $on_cpu |"
  echo "$off_rps $on_rps $off_cpu $on_cpu" >> "$OUT/metrics-cost.rows"
done | tee "$OUT/metrics-cost.md"
if [[ -s "$OUT/metrics-cost.rows" ]]; then
  awk '{a+=$1; b+=$2; c+=$3; d+=$4; n++} END {
    printf "means: off %.0f calls/s, on %.0f calls/s (%+.1f%%); CPU per call off %.1f us, on %.1f us (%+.1f%%)\n",
      a/n, b/n, (b-a)/a*100, c/n, d/n, (d-c)/c*100 }' "$OUT/metrics-cost.rows"
  # Medians, which one disturbed round moves less than the means.
  median() { sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
  m_off=$(cut -d' ' -f3 "$OUT/metrics-cost.rows" | median)
  m_on=$(cut -d' ' -f4 "$OUT/metrics-cost.rows" | median)
  awk -v a="$m_off" -v b="$m_on" 'BEGIN { printf "medians: CPU per call off %.1f us, on %.1f us (%+.1f%%)\n", a, b, (b-a)/a*100 }'
  rm -f "$OUT/metrics-cost.rows"
fi

# PERF=1: where the metrics' own time shows, from inside: `perf record --call-graph dwarf` of a
# server with metrics on under the same load, and the share of its samples whose stack passes
# through a recording (the OpenTelemetry SDK, the RPC layer's call record, the store's timing
# and the per-purge counters).
if [[ -n "${PERF:-}" ]]; then
  command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
  port=$(free_port)
  env -u PURGE_CONFIG PURGE_SERVER__LISTEN="127.0.0.1:$port" PURGE_ADMIN__LISTEN="127.0.0.1:$(free_port)" \
    target/release/purge-service >"$OUT/metrics-perf.server.log" 2>&1 & pid=$!
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  wait_port "$port"
  load "$port" 50000 >/dev/null   # warm-up
  perf record -F 499 --call-graph dwarf,32768 -p "$pid" -o "$OUT/metrics.perf.data" -- sleep 3 \
    >/dev/null 2>&1 & perf_pid=$!
  load "$port" "$N" >/dev/null
  wait "$perf_pid" || { echo "perf record failed (kernel.perf_event_paranoid?)" >&2; exit 1; }
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf 'samples in metric recording (metrics on): '
  perf script -i "$OUT/metrics.perf.data" 2>/dev/null | python3 bench/perf-share.py \
    'opentelemetry|purge_service::metrics::(rpc::Call|metered::backend|Metrics::|bound)|MeteredStore::finished'
fi
