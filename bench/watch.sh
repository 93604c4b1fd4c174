#!/usr/bin/env bash
# Server memory per open WatchPurge stream, purge-service (memory backend, purges kept running
# by a sandbox with a 1 h delay) beside bare-grpc (a bare tonic server-streaming handler),
# measured by watch-bench in the same run.
#
#   bench/watch.sh              # 10,000 streams over 100 connections
#   STREAMS=2000 bench/watch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS=${STREAMS:-10000}
CONNS=${CONNS:-100}
[[ -n "${NOBUILD:-}" ]] || cargo build --release --bin purge-service --bin bare-grpc --bin watch-bench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

measure() { # NAME CMD... ; prints "NAME <watch-bench line>"
  local name=$1; shift
  local port; port=$(free_port)
  PURGE_SERVER__LISTEN="127.0.0.1:$port" "$@" "127.0.0.1:$port" >/dev/null 2>&1 & local pid=$!
  PIDS+=("$pid")
  wait_port "$port"
  echo "$name $(target/release/watch-bench --addr "http://127.0.0.1:$port" --pid "$pid" \
    --streams "$STREAMS" --connections "$CONNS")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

measure bare target/release/bare-grpc
# purge-service takes no address argument: a wrapper drops it.
measure purge-service env -u PURGE_CONFIG PURGE_PROVIDERS__0__NAME=sandbox \
  PURGE_PROVIDERS__0__TYPE=sandbox PURGE_PROVIDERS__0__DELAY=1h \
  sh -c 'exec target/release/purge-service' --
