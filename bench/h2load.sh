#!/usr/bin/env bash
# CreatePurge under an external load generator (h2load), beside a bare tonic server answering
# the same method path, on the memory and the Redis backend. Prints a Markdown table.
#
#   bench/h2load.sh            # 300k calls, 16 connections x 32 streams, 1 h2load thread
#   N=100000 bench/h2load.sh
#   PERF=1 bench/h2load.sh     # also `perf record -g` the server, reports in bench/out/
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-300000}
C=${C:-16}
M=${M:-32}
OUT=bench/out
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
source bench/lib.sh
ensure_h2load
[[ -n "${NOBUILD:-}" ]] || cargo build --release --bin purge-service --bin bare-grpc
write_create_body "$OUT/body.bin"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# load NAME PORT SERVER_PID: runs h2load, writes one row, keeps the raw output in $OUT.
load() {
  local name=$1 port=$2 pid=$3 perf_pid=""
  if [[ "${PERF:-0}" == 1 ]]; then
    perf record -g -o "$OUT/$name.perf.data" -p "$pid" >/dev/null 2>&1 & perf_pid=$!
  fi
  rm -f "$OUT/$name.log.tsv" # h2load appends to its log
  h2load -n "$N" -c "$C" -m "$M" -t 1 -d "$OUT/body.bin" --log-file="$OUT/$name.log.tsv" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$port/purge.v1.PurgeService/CreatePurge" > "$OUT/$name.h2load.txt"
  if [[ -n "$perf_pid" ]]; then
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    perf report -i "$OUT/$name.perf.data" --no-children --percent-limit 1.5 --stdio \
      > "$OUT/$name.perf.txt" 2>/dev/null || true
  fi
  local txt="$OUT/$name.h2load.txt" rps ok data p99 rss
  rps=$(awk '/^finished in/ {print $4}' "$txt")
  ok=$(awk '/^requests:/ {print $8}' "$txt")
  # A call that failed in gRPC still answers HTTP 200, but without a message (trailers
  # only): data bytes per call show that every call got its Purge back.
  data=$(grep -oE '\([0-9]+\) data' "$txt" | tr -dc 0-9)
  # The log has one line per request: start (us), HTTP status, latency (us).
  p99=$(awk '{print $3}' "$OUT/$name.log.tsv" | sort -n | awk '{a[NR]=$1} END {print a[int(NR*0.99)]/1000}')
  rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status")
  echo "$name $rps $ok $((data / N)) $p99 $rss" > "$OUT/$name.row"
}

results=()
run_server() { # NAME PORT CMD...
  local name=$1 port=$2; shift 2
  "$@" >"$OUT/$name.server.log" 2>&1 & local pid=$!
  PIDS+=("$pid")
  wait_port "$port"
  load "$name" "$port" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

port=$(free_port)
run_server bare "$port" target/release/bare-grpc "127.0.0.1:$port"

port=$(free_port)
run_server memory "$port" env -u PURGE_CONFIG PURGE_SERVER__LISTEN="127.0.0.1:$port" target/release/purge-service

rport=$(free_port)
redis-server --port "$rport" --save '' --appendonly no >"$OUT/redis.log" 2>&1 & PIDS+=($!)
wait_port "$rport"
port=$(free_port)
run_server redis "$port" env -u PURGE_CONFIG PURGE_SERVER__LISTEN="127.0.0.1:$port" \
  PURGE_STORE__BACKEND=redis PURGE_STORE__URL="redis://127.0.0.1:$rport" target/release/purge-service

read -r _ bare_rps _ _ bare_p99 _ < "$OUT/bare.row"
echo "| server | calls/s | vs bare | p99 ms | p99 vs bare | succeeded | data B/call | RSS MiB |"
echo "|---|---|---|---|---|---|---|---|"
for name in bare memory redis; do
  read -r n rps ok per p99 rss < "$OUT/$name.row"
  awk -v n="$n" -v rps="$rps" -v br="$bare_rps" -v p99="$p99" -v bp="$bare_p99" -v ok="$ok" -v per="$per" -v rss="$rss" \
    'BEGIN { printf "| %s | %.0f | %.2f | %.1f | %.2f | %s | %s | %s |\n", n, rps, rps / br, p99, p99 / bp, ok, per, rss }'
done
