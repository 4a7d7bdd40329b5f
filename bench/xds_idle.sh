#!/usr/bin/env bash
# What an idle control plane costs with Envoys attached: a release `plexus dev` serving two Envoy
# sidecars (`plexus connect envoy`, web and a client of web) over delta ADS; once both are ready,
# the dev process's CPU time (utime+stime) over 10 s with nothing changing.
#
#   bench/xds_idle.sh [PLEXUS_BINARY]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
plexus="${1:-}"
if [ -z "$plexus" ]; then
  (cd "$root" && cargo build --release --locked -p plexus)
  plexus="${CARGO_TARGET_DIR:-$root/target}/release/plexus"
fi
envoy_dir="$root/.tools/venv/bin"
[ -x "$envoy_dir/envoy" ] || { echo "no Envoy at $envoy_dir/envoy: run scripts/setup-test-env.sh" >&2; exit 1; }
work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port); grpc=$(free_port)
cat >"$work/mesh.hcl" <<HCL
services { name = "web"  port = 1  connect { sidecar_service { port = $(free_port) } } }
services {
  name = "client"  port = 2
  connect { sidecar_service { port = $(free_port)
    proxy { upstreams { destination_name = "web"  local_bind_port = $(free_port) } } } }
}
HCL
RUST_LOG=warn "$plexus" dev --http-addr "127.0.0.1:$http" --grpc-addr "127.0.0.1:$grpc" \
  --dns-addr 127.0.0.1:0 --data-dir "$work/data" --config-file "$work/mesh.hcl" >"$work/dev.log" 2>&1 &
dev=$!; pids+=("$dev")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/v1/status/leader" >/dev/null && break; sleep 0.1; done
admins=()
for service in web client; do
  admin=$(free_port); admins+=("$admin")
  PATH="$envoy_dir:$PATH" "$plexus" connect envoy -sidecar-for "$service" -admin-bind "127.0.0.1:$admin" \
    --http-addr "127.0.0.1:$http" --grpc-addr "127.0.0.1:$grpc" -- --base-id "$admin" >"$work/$service.log" 2>&1 &
  pids+=("$!")
done
for admin in "${admins[@]}"; do
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$admin/ready" >/dev/null || { echo "Envoy on admin port $admin never became ready" >&2; exit 1; }
done
cpu() { awk '{print $14 + $15}' "/proc/$dev/stat"; }
t0=$(cpu); sleep 10; t1=$(cpu)
echo "{\"idle_seconds\": 10, \"envoys\": 2, \"dev_cpu_seconds\": $(python3 -c "print(($t1 - $t0) / $(getconf CLK_TCK))")}"
