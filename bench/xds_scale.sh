#!/usr/bin/env bash
# The xDS scale benchmark: 1,000 simulated Envoys (one delta ADS stream each, CDS + EDS, every
# response ACKed) watch one service through a release `plexus dev`; the target's endpoints change
# 20 times and each change is timed until it reached every stream. Also the server's resident
# memory per stream. Writes bench/results/xds_scale.json.
#
#   bench/xds_scale.sh [--clients N] [--changes N] [--connections N]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/bench/results"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
(cd "$root" && cargo build --release --locked -p plexus)
plexus="$target/release/plexus"
ulimit -n "$(ulimit -Hn)"

work="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http="$(free_port)"; grpc="$(free_port)"
RUST_LOG=warn "$plexus" dev --http-addr "127.0.0.1:$http" --grpc-addr "127.0.0.1:$grpc" \
  --dns-addr 127.0.0.1:0 --data-dir "$work/data" >"$work/dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$http/v1/status/leader" >/dev/null && break
  sleep 0.1
done
"$plexus" xds-load --http-addr "127.0.0.1:$http" --grpc-addr "127.0.0.1:$grpc" \
  --server-pid "$dev" "$@" | tee "$out/xds_scale.json"
