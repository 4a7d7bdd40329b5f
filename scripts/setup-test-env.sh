#!/usr/bin/env bash
# Installs what the test suite needs, idempotently, into .tools/ (ignored by git):
#   - a Python venv with py-consul, a Consul client nobody here wrote, for the compatibility test;
#   - openssl (Debian package), whose s_client shows what a sidecar's inbound port demands.
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
# openssl: a TLS client nobody here wrote, for the identity tests (s_client against a sidecar).
if ! command -v openssl >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq openssl
fi
echo "test environment ready in $tools"
