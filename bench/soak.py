"""Soak benchmark (issue 16): `plexus dev` with two sidecars (client -> echo) under mixed load for
--minutes, sampling RSS and open descriptors of the control plane and both sidecars.

Load, all at once: KV writes (values of 1-64 KiB over 200 keys, some deletes), registrations and
deregistrations of throwaway services, config-entry writes (service-defaults of `echo`
alternating protocol tcp/tcp with a changing meta, so sidecars re-apply), and echo traffic
through the client sidecar (a new TCP connection per round trip).

Flat means: after warm-up (the first third), the last sample is within +-10 % of the warm-up
sample for RSS and descriptors. Prints a Markdown table and writes JSON with every sample.

    python3 bench/soak.py --plexus target/release/plexus --minutes 30 --out soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from proxies import free_port, proc_mem_kib, wait_http

MESH = """
services {{
  name = "client"
  port = 8080
  connect {{ sidecar_service {{ proxy {{ upstreams {{
    destination_name = "echo"
    local_bind_port  = {upstream}
  }} }} }} }}
}}
services {{
  name = "echo"
  port = {echo}
  check {{
    tcp      = "127.0.0.1:{echo}"
    interval = "1s"
    timeout  = "500ms"
  }}
  connect {{ sidecar_service {{}} }}
}}
"""


ERRORS: dict[str, str] = {}


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def call(base: str, method: str, path: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(base + path, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        ERRORS.setdefault(f"{method} {path.split('?')[0].rstrip('0123456789')} {error.code}", error.read()[:200].decode(errors="replace"))
        return error.code


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--plexus", default="target/release/plexus")
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--sample-s", type=float, default=10)
    p.add_argument("--out", default="soak.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="plexus-soak-"))
    http_port, dns_port, echo_port, upstream = free_port(), free_port(), free_port(), free_port()
    (work / "mesh.hcl").write_text(MESH.format(upstream=upstream, echo=echo_port))
    base = f"http://127.0.0.1:{http_port}"
    procs: dict[str, subprocess.Popen] = {}
    log = open(work / "log.txt", "w")
    env = dict(os.environ, RUST_LOG="warn", PLEXUS_HTTP_ADDR=f"127.0.0.1:{http_port}")
    procs["dev"] = subprocess.Popen(
        [args.plexus, "dev", "--http-addr", f"127.0.0.1:{http_port}", "--dns-addr",
         f"127.0.0.1:{dns_port}", "--data-dir", str(work / "data"), "--config-file",
         str(work / "mesh.hcl")], stdout=log, stderr=log, env=env)
    wait_http(base + "/v1/status/leader")
    procs["echo-app"] = subprocess.Popen(
        [args.plexus, "echo-server", "--listen", f"127.0.0.1:{echo_port}"], stdout=log, stderr=log, env=env)
    for name, admin in (("echo", free_port()), ("client", free_port())):
        procs[f"sidecar-{name}"] = subprocess.Popen(
            [args.plexus, "proxy", "--sidecar-for", name, "--admin-addr", f"127.0.0.1:{admin}"],
            stdout=log, stderr=log, env=env)
        wait_http(f"http://127.0.0.1:{admin}/ready", 60)
    stop = threading.Event()
    counts = {"kv": 0, "register": 0, "config": 0, "echo": 0, "echo_failed": 0, "api_errors": 0}

    def kv() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            key = f"soak/{rng.randrange(200)}"
            if rng.random() < 0.1:
                status = call(base, "DELETE", f"/v1/kv/{key}")
            else:
                status = call(base, "PUT", f"/v1/kv/{key}", os.urandom(rng.randrange(1, 64) * 1024))
            counts["kv"] += 1
            counts["api_errors"] += status >= 400

    def registrations() -> None:
        i = 0
        while not stop.is_set():
            body = json.dumps({"Name": f"soak-{i % 50}", "ID": f"soak-{i % 50}", "Port": 10000 + i % 50}).encode()
            counts["api_errors"] += call(base, "PUT", "/v1/agent/service/register", body) >= 400
            # 404: that one was not registered (yet); expected.
            status = call(base, "PUT", f"/v1/agent/service/deregister/soak-{(i + 25) % 50}")
            counts["api_errors"] += status >= 400 and status != 404
            counts["register"] += 1
            i += 1
            time.sleep(0.05)

    def config() -> None:
        i = 0
        while not stop.is_set():
            body = json.dumps({"Kind": "service-defaults", "Name": "echo", "Protocol": "tcp",
                               "Meta": {"round": str(i)}}).encode()
            counts["api_errors"] += call(base, "PUT", "/v1/config", body) >= 400
            counts["config"] += 1
            i += 1
            time.sleep(1)

    def echo() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", upstream), timeout=5) as s:
                    s.sendall(b"soak\n")
                    s.recv(16)
                counts["echo"] += 1
            except OSError:
                counts["echo_failed"] += 1
                time.sleep(0.1)

    threads = [threading.Thread(target=f, daemon=True) for f in (kv, registrations, config, echo)]
    for t in threads:
        t.start()
    samples = []
    started = time.time()
    load = os.getloadavg
    try:
        while time.time() - started < args.minutes * 60:
            row = {"t": round(time.time() - started), "load1": load()[0]}
            for name in ("dev", "sidecar-client", "sidecar-echo"):
                pid = procs[name].pid
                row[f"{name}_rss_kib"] = proc_mem_kib(pid)["VmRSS"]
                row[f"{name}_fds"] = fds(pid)
            row.update(counts)
            samples.append(row)
            print(json.dumps(row), flush=True)
            time.sleep(args.sample_s)
    finally:
        stop.set()
        for proc in procs.values():
            proc.terminate()
    Path(args.out).write_text(json.dumps(samples, indent=1))
    warm = samples[len(samples) // 3]
    last = samples[-1]
    print("| process | RSS after warm-up | RSS at end | change | fds after warm-up | fds at end |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("dev", "sidecar-client", "sidecar-echo"):
        a, b = warm[f"{name}_rss_kib"], last[f"{name}_rss_kib"]
        print(f"| {name} | {a / 1024:.1f} MiB | {b / 1024:.1f} MiB | {100 * (b - a) / a:+.1f} % | "
              f"{warm[f'{name}_fds']} | {last[f'{name}_fds']} |")
    print(f"load: {counts}, load average at end {load()}")
    for what, body in ERRORS.items():
        print(f"first error of a kind: {what}: {body}")


if __name__ == "__main__":
    sys.exit(main())
