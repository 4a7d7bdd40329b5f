"""ACL overhead benchmark: CPU the control plane spends per request with ACLs on vs off.

Starts `plexus server --store embedded` twice on this machine: once with `--acl-enabled false`,
once enforcing ACLs (default deny) with the requests carrying a service-identity token (what a
sidecar runs with). Registers `web` with 10 instances and a sidecar each, then sends --requests
keep-alive requests per endpoint from --clients concurrent connections:

- catalog/health reads: /v1/catalog/service/web, /v1/health/service/web;
- the sidecar's authorization path on the control plane: /v1/health/connect/web?passing,
  /v1/connect/intentions/match?by=destination&name=web (what an inbound sidecar follows),
  /v1/agent/connect/ca/leaf/web (cached leaf, service:write).

CPU is the server process's utime+stime from /proc/<pid>/stat (clock ticks) over the run,
divided by the requests answered: the machine is shared and noisy, so wall-clock rates are
reported only as context; CPU per request is what is compared. Each configuration runs
--repeat times and the median is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from proxies import free_port, wait_http

TICKS = os.sysconf("SC_CLK_TCK")
ENDPOINTS = [
    ("catalog", "/v1/catalog/service/web"),
    ("health", "/v1/health/service/web"),
    ("sidecar: health connect", "/v1/health/connect/web?passing"),
    ("sidecar: intentions match", "/v1/connect/intentions/match?by=destination&name=web"),
    ("sidecar: leaf (cached)", "/v1/agent/connect/ca/leaf/web"),
]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


async def request(reader, writer, method: str, path: str, token: str | None, body: bytes = b"") -> int:
    auth = f"X-Consul-Token: {token}\r\n" if token else ""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def call(port: int, method: str, path: str, token: str | None, body: dict | None = None) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data = json.dumps(body).encode() if body is not None else b""
        return await request(reader, writer, method, path, token, data)
    finally:
        writer.close()


async def load(port: int, path: str, token: str | None, total: int, clients: int) -> int:
    per = total // clients

    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ok = 0
        for _ in range(per):
            if await request(reader, writer, "GET", path, token) == 200:
                ok += 1
        writer.close()
        return ok

    return sum(await asyncio.gather(*(one() for _ in range(clients))))


async def run_one(plexus: str, acl: bool, requests: int, clients: int) -> dict[str, dict]:
    port = free_port()
    management = str(uuid.uuid4())
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, RUST_LOG="warn", PLEXUS_ACL_INITIAL_MANAGEMENT_TOKEN=management)
        args = [plexus, "server", "--http-addr", f"127.0.0.1:{port}", "--data-dir", data,
                "--node", "bench", "--acl-enabled", "true" if acl else "false"]
        server = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{port}/v1/status/leader")
            for i in range(10):
                reg = {"Name": "web", "ID": f"web-{i}", "Port": 8000 + i,
                       "Connect": {"SidecarService": {"Port": 21000 + i}}}
                assert await call(port, "PUT", "/v1/agent/service/register", management, reg) == 200
            assert await call(port, "PUT", "/v1/connect/intentions/exact?source=client&destination=web",
                              management, {"Action": "allow"}) == 200
            token = None
            if acl:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                body = json.dumps({"ServiceIdentities": [{"ServiceName": "web"}]}).encode()
                writer.write(f"PUT /v1/acl/token HTTP/1.1\r\nHost: b\r\nX-Consul-Token: {management}\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                n = int([l for l in head.decode().split("\r\n") if l.lower().startswith("content-length")][0].split(":")[1])
                token = json.loads(await reader.readexactly(n))["SecretID"]
                writer.close()
            results = {}
            for name, path in ENDPOINTS:
                await load(port, path, token, clients * 10, clients)  # warm up
                before, started = cpu_ticks(server.pid), time.monotonic()
                ok = await load(port, path, token, requests, clients)
                ticks, wall = cpu_ticks(server.pid) - before, time.monotonic() - started
                assert ok == requests - requests % clients, (name, ok)
                results[name] = {"cpu_us_per_request": ticks / TICKS * 1e6 / ok, "rps": ok / wall}
            return results
        finally:
            server.terminate()
            server.wait(timeout=10)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--plexus", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    runs = {False: [], True: []}
    for _ in range(a.repeat):
        for acl in (False, True):
            runs[acl].append(asyncio.run(run_one(a.plexus, acl, a.requests, a.clients)))
    rows = []
    for name, _ in ENDPOINTS:
        off = statistics.median(r[name]["cpu_us_per_request"] for r in runs[False])
        on = statistics.median(r[name]["cpu_us_per_request"] for r in runs[True])
        rps_off = statistics.median(r[name]["rps"] for r in runs[False])
        rps_on = statistics.median(r[name]["rps"] for r in runs[True])
        rows.append((name, off, on, (on / off - 1) * 100, rps_off, rps_on))
    lines = [
        "| endpoint | CPU µs/request, ACLs off | ACLs on (service-identity token) | overhead | req/s off | req/s on |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {n} | {off:.1f} | {on:.1f} | {d:+.1f} % | {r0:,.0f} | {r1:,.0f} |" for n, off, on, d, r0, r1 in rows]
    text = "\n".join(lines) + "\n"
    a.out.write_text(text)
    print(text)
    (a.out.with_suffix(".json")).write_text(json.dumps({"off": runs[False], "on": runs[True]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
