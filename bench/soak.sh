#!/usr/bin/env bash
# Soak and footprint benchmarks of purge-service, load from another process (purge-soak).
#
#   bench/soak.sh memory      1M two-URL purges, memory backend, default max_records (50,000)
#   bench/soak.sh redis       the same on Redis, record_retention = 10s
#   bench/soak.sh perpurge    bytes per finished purge: 200k purges, no eviction (RSS delta)
#   bench/soak.sh footprint   idle RSS and exec -> health SERVING (the image's binary if built;
#                             FOOTPRINT_BIN overrides)
#   bench/soak.sh all         all of them
#
# TOTAL (1000000) and RATE (10000/s) override the load. Results: bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${TOTAL:-1000000}
RATE=${RATE:-10000}
PORT=${PORT:-50061}
OUT=bench/results
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
[[ -n "${NOBUILD:-}" ]] || cargo build --release --bin purge-service --bin purge-soak
BIN=target/release/purge-service
SOAK=target/release/purge-soak

# shellcheck source=bench/lib.sh
source bench/lib.sh   # free_port, wait_port

serve() { # config-file log-file -> sets SERVER_PID
  "$BIN" --config "$1" >"$2" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_port "$PORT"
}

memory_config() { # max_records
  cat >"$WORK/memory.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
max_concurrent_requests = 4096
[store.memory]
max_records = $1
max_idempotency_keys = $1
[telemetry]
filter = "warn,purge_service::store::memory=debug"
TOML
}

run_memory() {
  memory_config 50000
  serve "$WORK/memory.toml" "$WORK/memory.log"
  "$SOAK" load --addr "127.0.0.1:$PORT" --pid "$SERVER_PID" --total "$TOTAL" --rate "$RATE" \
    --server-log "$WORK/memory.log" --csv "$OUT/soak-memory.csv" 2>/dev/null | tee "$OUT/soak-memory.txt"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  python3 bench/plot.py "$OUT/soak-memory.csv" "$OUT/soak-memory.png" \
    "memory backend, store.memory.max_records = 50000: $(cut -d, -f1-3 "$OUT/soak-memory.txt")"
}

run_perpurge() {
  local n=${PERPURGE:-200000}
  memory_config 2000000
  serve "$WORK/memory.toml" "$WORK/perpurge.log"
  "$SOAK" load --addr "127.0.0.1:$PORT" --pid "$SERVER_PID" --total "$n" --rate "$RATE" \
    --server-log "$WORK/perpurge.log" --csv "$OUT/perpurge-memory.csv" 2>/dev/null
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  python3 - "$OUT/perpurge-memory.csv" <<'PY' | tee "$OUT/perpurge-memory.txt"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
first, last = int(rows[0]["rss_kb"]), int(rows[-1]["rss_kb"])
kept = int([r for r in rows if r["records"]][-1]["records"])
print(f"{kept} records kept, RSS {first} kB -> {last} kB: {(last - first) * 1024 / kept:.0f} bytes per purge")
PY
}

run_redis() {
  command -v redis-server >/dev/null || { sudo apt-get install -y redis-server || apt-get install -y redis-server; }
  local rport=$((PORT + 1))
  redis-server --port "$rport" --save '' --appendonly no --daemonize no >"$WORK/redis.log" 2>&1 &
  local rpid=$!
  PIDS+=("$rpid")
  wait_port "$rport"
  cat >"$WORK/redis.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
max_concurrent_requests = 4096
record_retention = "10s"
idempotency_retention = "10s"
[store]
backend = "redis"
url = "redis://127.0.0.1:$rport"
[telemetry]
filter = "warn"
TOML
  serve "$WORK/redis.toml" "$WORK/redis-server.log"
  "$SOAK" load --addr "127.0.0.1:$PORT" --pid "$SERVER_PID" --total "$TOTAL" --rate "$RATE" \
    --redis-url "redis://127.0.0.1:$rport" --redis-pid "$rpid" --tail-secs 15 \
    --csv "$OUT/soak-redis.csv" 2>/dev/null | tee "$OUT/soak-redis.txt"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  # Bytes per finished record, kept a little longer for the probe.
  sed -i 's/record_retention = "10s"/record_retention = "1h"/' "$WORK/redis.toml"
  serve "$WORK/redis.toml" "$WORK/redis-server2.log"
  "$SOAK" load --addr "127.0.0.1:$PORT" --pid "$SERVER_PID" --total 2000 --rate 1000 --tail-secs 2 \
    --csv "$WORK/probe.csv" >/dev/null 2>&1
  "$SOAK" redis-usage --redis-url "redis://127.0.0.1:$rport" | tee "$OUT/redis-usage.txt"
  kill "$SERVER_PID" "$rpid"; wait 2>/dev/null || true
  python3 bench/plot.py "$OUT/soak-redis.csv" "$OUT/soak-redis.png" \
    "Redis backend, record_retention = 10s: $(cut -d, -f1-3 "$OUT/soak-redis.txt")"
}

run_footprint() {
  # The image's static binary (what a sidecar runs) when `scripts/image --build-only` made it.
  local bin=target/image/x86_64-unknown-linux-gnu/release/purge-service
  [[ -x "$bin" ]] || bin=$BIN
  bin=${FOOTPRINT_BIN:-$bin}
  echo "binary: $bin" | tee "$OUT/footprint.txt"
  # A binary the linker just wrote sits in the page cache in large folios, which fault in
  # whole; a container starts from one read from disk. Its cached pages are dropped first.
  sync "$bin"
  dd if="$bin" iflag=nocache count=0 status=none of=/dev/null
  echo "metrics off (no admin listener):" | tee -a "$OUT/footprint.txt"
  "$SOAK" footprint --bin "$bin" --runs 7 | tee -a "$OUT/footprint.txt"
  # As the chart runs it: the admin listener (/metrics, /healthz, /readyz) on.
  echo "admin listener on, as the chart sets it:" | tee -a "$OUT/footprint.txt"
  "$SOAK" footprint --bin "$bin" --runs 7 --env "PURGE_ADMIN__LISTEN=127.0.0.1:$(free_port)" \
    | tee -a "$OUT/footprint.txt"
}

case "${1:-all}" in
  memory) run_memory ;;
  redis) run_redis ;;
  perpurge) run_perpurge ;;
  footprint) run_footprint ;;
  all) run_footprint; run_perpurge; run_memory; run_redis ;;
  *) echo "usage: $0 [memory|redis|perpurge|footprint|all]" >&2; exit 2 ;;
esac
