# Shared by the bench/*.sh scripts that drive CreatePurge with h2load (sourced, not run).

# Installs h2load (Debian nghttp2-client) when it is missing.
ensure_h2load() {
  command -v h2load >/dev/null && return
  apt-get install -y nghttp2-client || { apt-get update && apt-get install -y nghttp2-client; }
}

# Writes to $1 one gRPC frame (0x00, 4-byte big-endian length, protobuf) of a
# CreatePurgeRequest: provider "sandbox" (field 1), kind URL (field 2 = 1), two fixed URLs
# (field 3).
write_create_body() {
  hex8() { printf '\\x%02x' "$1"; }
  field() { printf "$(hex8 "$1")$(hex8 "${#2}")%s" "$2"; }
  local msg len
  msg="$(field 10 sandbox)$(printf '\x10\x01')$(field 26 https://www.example.com/a.js)$(field 26 https://www.example.com/b.js)"
  len=${#msg}
  { printf '\x00\x00\x00'; printf "$(hex8 $((len >> 8)))$(hex8 $((len & 255)))"; printf '%s' "$msg"; } > "$1"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
