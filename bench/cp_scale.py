"""Control-plane scale benchmark against `plexus server --store embedded` (default) or
`--store etcd` (a fresh 3-member etcd cluster on loopback, started here; `--etcd-members N`):

1. registers 10,000 services x 10 instances (10,000 nodes, each hosting 10 instances of 10
   different services, so every service has 10 instances on 10 nodes) through
   PUT /v1/internal/node/register (what `plexus agent` uses), from --writers concurrent clients;
   reports the registration rate and the server's RSS;
2. opens 1,000 simulated proxies in this one process (asyncio, one keep-alive HTTP/1.1
   connection each) doing blocking queries on /v1/health/service/s0?index=N, changes one s0
   endpoint (its port) --changes times, and reports the time from the write being sent to each
   watcher having the answer, p50/p99 over all watchers and changes;
3. memory per open blocking query: the server's RSS once every watcher's first blocking query is
   parked, minus its RSS before the watchers connected, divided by the number of watchers (what
   the parked queries and their connections hold; the changes' answers come after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from proxies import free_port, proc_mem_kib, wait_http

SERVICES = 10_000
# The server enforces ACLs: it starts with this management token and every request carries it.
TOKEN = str(uuid.uuid4())
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
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\nX-Consul-Token: {TOKEN}\r\nContent-Type: application/json\r\n"
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


async def watch_changes(port: int, watchers: int, changes: int, pid: int) -> tuple[list[float], dict]:
    before = proc_mem_kib(pid)
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(watchers)]
    # Every watcher first learns the current index.
    indexes = []
    for reader, writer in conns:
        status, headers, _ = await request(reader, writer, "GET", "/v1/health/service/s0")
        assert status == 200, status
        indexes.append(int(headers["x-consul-index"]))
    delays: list[float] = []
    change_writer = await asyncio.open_connection("127.0.0.1", port)
    cpu_at_start = cpu_seconds([pid])
    for c in range(changes):
        armed = asyncio.Event()
        sent = [0]
        got: list[float] = []

        async def watch(k: int) -> None:
            reader, writer = conns[k]
            writer.write(
                f"GET /v1/health/service/s0?index={indexes[k]}&wait=60s HTTP/1.1\r\nHost: bench\r\nX-Consul-Token: {TOKEN}\r\n\r\n".encode()
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
        if c == 0:
            parked = proc_mem_kib(pid)
            threads = proc_threads(pid)
        t0 = time.monotonic()
        status, _, payload = await request(*change_writer, "PUT", "/v1/internal/node/register", node_body(0, c + 1))
        if status != 200:
            raise RuntimeError(f"change {c}: {status} {payload[:300]!r}")
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        delays.extend((t - t0) * 1000 for t in got)
    memory = {
        # Server CPU per change: the write, 1,000 answers, 1,000 queries parked again.
        "change_server_cpu_ms": (cpu_seconds([pid]) - cpu_at_start) * 1000 / changes,
        "rss_before_watchers_mib": before["VmRSS"] / 1024,
        "rss_parked_mib": parked["VmRSS"] / 1024,
        "per_query_kib": (parked["VmRSS"] - before["VmRSS"]) / watchers,
        "threads_parked": threads,
    }
    return delays, memory


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` so far (/proc/<pid>/stat), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def start_etcd(work: Path, members: int, log) -> tuple[list[subprocess.Popen], str]:
    """A fresh `members`-member etcd cluster on loopback (Debian's etcd, as the tests use)."""
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    ports = [(free_port(), free_port()) for _ in range(members)]
    initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
    token = f"cp-scale-{ports[0][0]}"
    procs = []
    for i, (client, peer) in enumerate(ports):
        data = work / f"etcd-{client}-m{i}"
        procs.append(subprocess.Popen(
            [binary, "--name", f"m{i}", "--data-dir", str(data),
             "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", initial, "--initial-cluster-state", "new",
             "--initial-cluster-token", token,
             # Room for 100,000 instances and their history (the 2 GiB default is tight).
             "--quota-backend-bytes", str(8 * 1024**3),
             "--logger", "zap", "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT,
        ))
    try:
        for client, _ in ports:
            wait_http(f"http://127.0.0.1:{client}/health")
    except Exception:
        for proc in procs:
            proc.terminate()
        raise
    return procs, ",".join(f"127.0.0.1:{client}" for client, _ in ports)


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
    p.add_argument("--store", choices=["embedded", "etcd"], default="embedded")
    p.add_argument("--etcd-members", type=int, default=3)
    args = p.parse_args()
    args.out = args.out.resolve()
    work = args.out / "work" / "cp"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(work / f"server-{args.store}.log", "wb")
    etcd: list[subprocess.Popen] = []
    if args.store == "etcd":
        etcd, endpoints = start_etcd(work, args.etcd_members, open(work / "etcd.log", "wb"))
        store = ["--store", "etcd", "--etcd-endpoints", endpoints, "--etcd-prefix", f"bench-{port}/"]
    else:
        store = ["--store", "embedded", "--data-dir", str(work / f"data-{port}")]
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    server = subprocess.Popen(
        [args.plexus, "server", *store, "--http-addr", f"127.0.0.1:{port}",
         "--dns-addr", "127.0.0.1:0", "--node", "bench-server"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PLEXUS_ACL_INITIAL_MANAGEMENT_TOKEN": TOKEN},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/status/leader")
        idle = proc_mem_kib(server.pid)
        etcd_pids = [member.pid for member in etcd]
        cpu_before = (cpu_seconds([server.pid]), cpu_seconds(etcd_pids))
        secs = asyncio.run(register_all(port, args.nodes, args.writers))
        cpu_after = (cpu_seconds([server.pid]), cpu_seconds(etcd_pids))
        loaded = proc_mem_kib(server.pid)
        instances = args.nodes * PER_SERVICE
        delays, memory = asyncio.run(watch_changes(port, args.watchers, args.changes, server.pid))
        after = proc_mem_kib(server.pid)
        result = {
            "store": args.store,
            "etcd_members": args.etcd_members if args.store == "etcd" else 0,
            "load_average_before": load_before,
            "load_average_after": Path("/proc/loadavg").read_text().split()[:3],
            "nodes": args.nodes,
            "instances": instances,
            "writers": args.writers,
            "register_s": secs,
            "nodes_per_s": args.nodes / secs,
            "instances_per_s": instances / secs,
            # CPU per 1,000 instances registered: less sensitive to a shared machine than the rate.
            "register_server_cpu_ms_per_1000": (cpu_after[0] - cpu_before[0]) * 1e6 / instances,
            "register_etcd_cpu_ms_per_1000": (cpu_after[1] - cpu_before[1]) * 1e6 / instances,
            "rss_idle_mib": idle["VmRSS"] / 1024,
            "rss_loaded_mib": loaded["VmRSS"] / 1024,
            "hwm_mib": after["VmHWM"] / 1024,
            "rss_with_watchers_mib": after["VmRSS"] / 1024,
            "watchers": args.watchers,
            "changes": args.changes,
            "change_p50_ms": statistics.median(delays),
            "change_p99_ms": pct(delays, 99),
            "change_max_ms": max(delays),
            **memory,
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        for member in etcd:
            member.terminate()
            member.wait(timeout=30)
    name = "cp_scale" if args.store == "embedded" else "cp_scale_etcd"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    backend = "embedded store" if args.store == "embedded" else f"etcd, {args.etcd_members} members"
    md = (
        f"| Figure ({backend}) | Value |\n|---|---|\n"
        f"| registered | {result['instances']:,} instances of {min(SERVICES, result['nodes'] + PER_SERVICE - 1):,} "
        f"services on {result['nodes']:,} nodes |\n"
        f"| registration time ({result['writers']} concurrent writers) | {result['register_s']:.1f} s |\n"
        f"| registration rate | {result['nodes_per_s']:,.0f} node registrations/s = "
        f"{result['instances_per_s']:,.0f} instances/s |\n"
        f"| CPU per 1,000 instances registered: server / etcd (all members) | "
        f"{result['register_server_cpu_ms_per_1000']:.0f} / {result['register_etcd_cpu_ms_per_1000']:.0f} ms |\n"
        f"| server RSS empty / loaded / with {result['watchers']:,} watchers (peak) | "
        f"{result['rss_idle_mib']:.1f} / {result['rss_loaded_mib']:.1f} / {result['rss_with_watchers_mib']:.1f} "
        f"({result['hwm_mib']:.1f}) MiB |\n"
        f"| endpoint change → {result['watchers']:,} watchers ({result['changes']} changes) | "
        f"p50 {result['change_p50_ms']:.1f} ms, p99 {result['change_p99_ms']:.1f} ms, "
        f"max {result['change_max_ms']:.1f} ms |\n"
        f"| server CPU per change (the write, {result['watchers']:,} answers, {result['watchers']:,} queries parked again) | "
        f"{result['change_server_cpu_ms']:.0f} ms |\n"
        f"| memory per open blocking query (RSS with {result['watchers']:,} parked / before) | "
        f"{result['per_query_kib']:.1f} KiB ({result['rss_parked_mib']:.1f} / "
        f"{result['rss_before_watchers_mib']:.1f} MiB, {result['threads_parked']} threads) |\n"
        f"| load average before / after | {' '.join(result['load_average_before'])} / "
        f"{' '.join(result['load_average_after'])} |\n"
    )
    (args.out / f"{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
