#!/usr/bin/env python3
"""DNS benchmark: queries per second and latency percentiles of `plexus dev`'s DNS interface on one
core, measured with dnsperf (Debian) on the other core.

    bench/dns.py [--plexus target/release/plexus] [--seconds 10] [--out bench/results]

Registers 20 instances of `web` (tags v1/v2) and runs, one after the other, over UDP: A of
`web.service.consul`, SRV of `_web._tcp.service.consul`, and an NXDOMAIN name; then A over TCP.
dnsperf runs with `-v` (one line per query with its latency), from which p50/p99 come; qps is
dnsperf's own figure. Writes dns.md and dns.json into --out. The machine is shared and noisy:
run it more than once and read the spread.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(log, name, deadline=60):
    end = time.time() + deadline
    pattern = re.compile(rf'listener="{name}" addr=([0-9.:]+)')
    while time.time() < end:
        text = log.read_text(errors="replace") if log.exists() else ""
        m = pattern.search(text)
        if m:
            return m.group(1)
        time.sleep(0.1)
    sys.exit(f"plexus never listened on {name}; log:\n{log.read_text(errors='replace')}")


def put(http, path, body):
    req = urllib.request.Request(f"http://{http}{path}", data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def run_dnsperf(addr, query, mode, seconds, clients, outstanding):
    host, port = addr.rsplit(":", 1)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(query + "\n")
        data = f.name
    cmd = ["taskset", "-c", "0", "dnsperf", "-s", host, "-p", port, "-d", data, "-l", str(seconds),
           "-m", mode, "-c", str(clients), "-q", str(outstanding), "-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    os.unlink(data)
    latencies = []
    codes = {}
    for line in out.stdout.splitlines():
        # "> NOERROR web.service.consul A 0.000123"
        if line.startswith("> "):
            parts = line.split()
            codes[parts[1]] = codes.get(parts[1], 0) + 1
            try:
                latencies.append(float(parts[-1]))
            except ValueError:
                pass
    qps = re.search(r"Queries per second:\s+([0-9.]+)", out.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", out.stdout)
    latencies.sort()
    return {
        "query": query, "transport": mode, "clients": clients, "outstanding": outstanding,
        "qps": float(qps.group(1)) if qps else None,
        "lost": int(lost.group(1)) if lost else None,
        "answers": sum(codes.values()), "codes": codes,
        "p50_ms": (percentile(latencies, 0.50) or 0) * 1000,
        "p99_ms": (percentile(latencies, 0.99) or 0) * 1000,
        "max_ms": (latencies[-1] if latencies else 0) * 1000,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plexus", default=str(ROOT / "target/release/plexus"))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "bench/results"))
    args = parser.parse_args()
    for tool in ("dnsperf", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/setup-test-env.sh (dnsperf) / apt-get install util-linux")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="plexus-dns-bench-"))
    log = work / "dev.log"
    http_port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", "1", args.plexus, "dev", "--http-addr", f"127.0.0.1:{http_port}",
         "--dns-addr", "127.0.0.1:0", "--data-dir", str(work / "data"), "--node", "bench"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn,plexus=info"},
    )
    try:
        http = wait_listening(log, "http")
        dns = wait_listening(log, "dns-udp")
        for i in range(20):
            put(http, "/v1/agent/service/register", {
                "ID": f"web-{i}", "Name": "web", "Address": f"10.0.{i // 250}.{i % 250 + 1}", "Port": 8080,
                "Tags": ["v1" if i % 2 else "v2"],
                "Check": {"CheckID": f"web-{i}-ttl", "TTL": "1h", "Status": "passing"},
            })
        # Wait until DNS answers all 20 (the index is followed by a watch).
        end = time.time() + 30
        while time.time() < end:
            dig = subprocess.run(["dig", "@127.0.0.1", "-p", dns.rsplit(":", 1)[1], "+short", "+tcp",
                                  "web.service.consul"], capture_output=True, text=True)
            if len(dig.stdout.split()) == 20:
                break
            time.sleep(0.1)
        rows = [
            run_dnsperf(dns, "web.service.consul A", "udp", args.seconds, 4, 64),
            run_dnsperf(dns, "_web._tcp.service.consul SRV", "udp", args.seconds, 4, 64),
            run_dnsperf(dns, "missing.service.consul A", "udp", args.seconds, 4, 64),
            run_dnsperf(dns, "web.service.consul A", "tcp", args.seconds, 4, 64),
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    machine = f"{os.cpu_count()} cores, {os.uname().release}"
    (out / "dns.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = ["| query | transport | qps | p50 | p99 | max | lost | answers |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['query']}` | {r['transport']} | {r['qps']:.0f} | {r['p50_ms']:.3f} ms | "
                     f"{r['p99_ms']:.3f} ms | {r['max_ms']:.1f} ms | {r['lost']} | {r['codes']} |")
    text = "\n".join(lines) + "\n"
    (out / "dns.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
