#!/usr/bin/env bash
# Installs what the test suite needs, idempotently, into .tools/ (ignored by git):
#   - a Python venv with py-consul, a Consul client nobody here wrote, for the compatibility test;
#   - etcd (Debian's etcd-server), for the etcd store backend's tests (real 3-member clusters).
# Later issues add etcd, NATS, Envoy, ... here, from the package registries only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools"

venv="$tools/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
want_py_consul="1.8.0"
have=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("py-consul"))' 2>/dev/null || true)
if [ "$have" != "$want_py_consul" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "py-consul==$want_py_consul"
fi
if ! command -v etcd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq etcd-server >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
  }
fi
echo "test environment ready in $tools"
