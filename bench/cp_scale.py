"""Control-plane scale benchmark against `plexus server --store embedded`:

1. registers 10,000 services x 10 instances (10,000 nodes, each hosting 10 instances of 10
   different services, so every service has 10 instances on 10 nodes) through
   PUT /v1/internal/node/register (what `plexus agent` uses), from --writers concurrent clients;
   reports the registration rate and the server's RSS;
2. opens 1,000 simulated proxies in this one process (asyncio, one keep-alive HTTP/1.1
   connection each) doing blocking queries on /v1/health/service/s0?index=N, changes one s0
   endpoint (its port) --changes times, and reports the time from the write being sent to each
   watcher having the answer, p50/p99 over all watchers and changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from proxies import free_port, proc_mem_kib, wait_http

SERVICES = 10_000
PER_SERVICE = 10


def node_body(i: int, port_bump: int = 0) -> bytes:
    services = []
    for j in range(PER_SERVICE):
        s = (i + j) % SERVICES
        services.append({
            "ID": f"s{s}-n{i}",
            "Service": f"s{s}",
            "Address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
            "Port": 20000 + j + (port_bump if s == 0 else 0),
        })
    return json.dumps({"Node": {"Node": f"n{i}", "Address": "127.0.0.1"}, "Services": services}).encode()


async def request(reader, writer, method: str, path: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    payload = await reader.readexactly(n) if n else b""
    return status, headers, payload


async def register_all(port: int, nodes: int, writers: int) -> float:
    queue = list(range(nodes))
    queue.reverse()

    async def writer_task() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            i = queue.pop()
            status, _, payload = await request(reader, writer, "PUT", "/v1/internal/node/register", node_body(i))
            if status != 200:
                raise RuntimeError(f"register n{i}: {status} {payload[:300]!r}")
        writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(writer_task() for _ in range(writers)))
    return time.monotonic() - t0


async def watch_changes(port: int, watchers: int, changes: int) -> list[float]:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(watchers)]
    # Every watcher first learns the current index.
    indexes = []
    for reader, writer in conns:
        status, headers, _ = await request(reader, writer, "GET", "/v1/health/service/s0")
        assert status == 200, status
        indexes.append(int(headers["x-consul-index"]))
    delays: list[float] = []
    change_writer = await asyncio.open_connection("127.0.0.1", port)
    for c in range(changes):
        armed = asyncio.Event()
        sent = [0]
        got: list[float] = []

        async def watch(k: int) -> None:
            reader, writer = conns[k]
            writer.write(
                f"GET /v1/health/service/s0?index={indexes[k]}&wait=60s HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
            )
            await writer.drain()
            sent[0] += 1
            if sent[0] == watchers:
                armed.set()
            head = await reader.readuntil(b"\r\n\r\n")
            at = time.monotonic()
            hdrs = dict(
                line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
            )
            hdrs = {k.lower(): v for k, v in hdrs.items()}
            await reader.readexactly(int(hdrs.get("content-length", "0")))
            indexes[k] = int(hdrs["x-consul-index"])
            got.append(at)

        tasks = [asyncio.create_task(watch(k)) for k in range(watchers)]
        await armed.wait()
        await asyncio.sleep(0.5)  # the server has read every blocking request by now
        t0 = time.monotonic()
        status, _, payload = await request(*change_writer, "PUT", "/v1/internal/node/register", node_body(0, c + 1))
        if status != 200:
            raise RuntimeError(f"change {c}: {status} {payload[:300]!r}")
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        delays.extend((t - t0) * 1000 for t in got)
    return delays


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--plexus", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--nodes", type=int, default=SERVICES)
    p.add_argument("--writers", type=int, default=16)
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--changes", type=int, default=20)
    args = p.parse_args()
    args.out = args.out.resolve()
    work = args.out / "work" / "cp"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(work / "server.log", "wb")
    server = subprocess.Popen(
        [args.plexus, "server", "--store", "embedded", "--data-dir", str(work / f"data-{port}"),
         "--http-addr", f"127.0.0.1:{port}", "--dns-addr", "127.0.0.1:0",
         "--node", "bench-server"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/status/leader")
        idle = proc_mem_kib(server.pid)
        secs = asyncio.run(register_all(port, args.nodes, args.writers))
        loaded = proc_mem_kib(server.pid)
        instances = args.nodes * PER_SERVICE
        delays = asyncio.run(watch_changes(port, args.watchers, args.changes))
        after = proc_mem_kib(server.pid)
        result = {
            "nodes": args.nodes,
            "instances": instances,
            "writers": args.writers,
            "register_s": secs,
            "nodes_per_s": args.nodes / secs,
            "instances_per_s": instances / secs,
            "rss_idle_mib": idle["VmRSS"] / 1024,
            "rss_loaded_mib": loaded["VmRSS"] / 1024,
            "hwm_mib": after["VmHWM"] / 1024,
            "rss_with_watchers_mib": after["VmRSS"] / 1024,
            "watchers": args.watchers,
            "changes": args.changes,
            "change_p50_ms": statistics.median(delays),
            "change_p99_ms": pct(delays, 99),
            "change_max_ms": max(delays),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
    (args.out / "cp_scale.json").write_text(json.dumps(result, indent=1))
    md = (
        f"| Figure | Value |\n|---|---|\n"
        f"| registered | {result['instances']:,} instances of {min(SERVICES, result['nodes'] + PER_SERVICE - 1):,} "
        f"services on {result['nodes']:,} nodes |\n"
        f"| registration time ({result['writers']} concurrent writers) | {result['register_s']:.1f} s |\n"
        f"| registration rate | {result['nodes_per_s']:,.0f} node registrations/s = "
        f"{result['instances_per_s']:,.0f} instances/s |\n"
        f"| server RSS empty / loaded / with {result['watchers']:,} watchers (peak) | "
        f"{result['rss_idle_mib']:.1f} / {result['rss_loaded_mib']:.1f} / {result['rss_with_watchers_mib']:.1f} "
        f"({result['hwm_mib']:.1f}) MiB |\n"
        f"| endpoint change → {result['watchers']:,} watchers ({result['changes']} changes) | "
        f"p50 {result['change_p50_ms']:.1f} ms, p99 {result['change_p99_ms']:.1f} ms, "
        f"max {result['change_max_ms']:.1f} ms |\n"
    )
    (args.out / "cp_scale.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
