"""Profiles the Plexus sidecars of the two-hop chain (client's sidecar → mTLS → web's sidecar →
nginx), with figures that do not depend on what else runs on the machine where possible.

  --tool callgrind   instructions per request in one sidecar (valgrind; instrumentation switched
                     on after start-up and a warm-up, counters zeroed, N requests, dumped), and
                     the functions that cost most (inclusive and self)
  --tool strace      system calls per request in one sidecar (strace attached for N requests)
  --tool heaptrack   allocations per request in one sidecar (two runs, with and without the N
                     measured requests after the same warm-up; the difference over N); with
                     --connections C, instead the heap at its peak while C connections are open
                     (oha -c C -q 2000 for 4 s, as --tool rss) and the call sites holding most of it
  --tool cpu         CPU seconds of both sidecars per 100k requests from /proc: saturated
                     (oha -c 32) and at a fixed rate (--rate, default 1,000 req/s)
  --tool perf        where both proxies' CPU goes, per request and by object (kernel, the proxy's
                     own executable, libc, …): `perf record -e cpu-clock` (a software clock, so it
                     works where a VM has no hardware counters) on both proxy processes during a
                     saturated run (oha -c 32) and one at --rate over 16 connections; µs per
                     request include perf's own overhead, so compare systems, not absolutes
  --tool rss         RSS of each sidecar idle (after a warm-up) and with 1,000 open connections,
                     and its private (anonymous) part
  --tool layout      the functions each sidecar runs (start-up, then requests, for both sides and
                     every protocol; callgrind from the first instruction), hottest first, written
                     as the linker's symbol ordering file crates/plexus/sidecar.order, which
                     release builds use to put them next to each other in the executable
  --tool layout-check  whether sidecar.order still fits the executable (exit 1 under 95 %: a
                     change to a workspace crate's dependencies renames its functions)
  --system haproxy   (cpu, perf, rss) the same figures for two HAProxy processes, the middle hop mTLS
  --loadgen h2load   nghttp2's h2load instead of oha (its --rps is per connection)

  bench/profile.py --plexus target/release/plexus --oha .tools/bin/oha --tool callgrind \\
      --side client --proto http1 --requests 2000

Writes raw output (callgrind dumps, strace summaries, heaptrack files) into --out. Needs what
bench/run.sh installs, plus valgrind, strace, heaptrack and perf (Debian packages valgrind, strace,
heaptrack, linux-perf) for those tools.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import proxies
from bench import oha, ok_count
from proxies import Nginx


def start(args: argparse.Namespace, nginx: Nginx, wrap: dict[str, list[str]] | None = None,
          env: dict[str, str] | None = None):
    upstream = nginx.port("h2" if args.proto == "h2" else "http1")
    if args.system == "haproxy":
        # The like-for-like anchor: two HAProxy processes, the middle hop in mTLS.
        setup = proxies.start_haproxy(args.work, upstream, 2, args.proto, mtls=True)
        return setup, {"web": setup.running.proxies[0].pid, "client": setup.running.proxies[1].pid}
    setup = proxies.start_plexus(args.plexus, args.work, upstream, 2, args.proto, wrap=wrap, env=env)
    # proxies: [web's sidecar, client's sidecar]
    pids = {"web": setup.running.proxies[0].pid, "client": setup.running.proxies[1].pid}
    return setup, pids


def load(args: argparse.Namespace, setup, connections: int, seconds: int, rate: int | None = None) -> tuple[int, float]:
    """`connections` keep-alive connections for `seconds`, as fast as they go or at `rate` req/s
    in all; returns (successful requests, elapsed seconds). oha, or h2load (`--loadgen h2load`,
    its `--rps` is per connection)."""
    url = f"http://127.0.0.1:{setup.front_port}/"
    if args.loadgen == "h2load":
        argv = ["taskset", "-c", proxies.LOADGEN_CORE, "h2load", "-c", str(connections),
                "-D", str(seconds), url]
        if rate:
            argv.insert(-1, f"--rps={max(rate / connections, 0.1):g}")
        if args.proto != "h2":
            argv.insert(-1, "--h1")
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        # Answered requests ("done" less "errored" and "timeout"): h2load counts an HTTP/1.1
        # status line without a reason phrase (HAProxy's, translating from h2) as no status, so
        # its "succeeded" would read 0 for the HAProxy rows.
        done, errored, timeout = (int(x) for x in re.search(
            r"(\d+) done, \d+ succeeded, \d+ failed, (\d+) errored, (\d+) timeout", out).groups())
        took = float(re.search(r"finished in ([\d.]+)s", out).group(1))
        return done - errored - timeout, took
    extra = ["-z", f"{seconds}s", "-c", str(connections)] + (["-q", str(rate)] if rate else [])
    result = oha(url, "h2" if args.proto == "h2" else "http1", extra, args.oha)
    return ok_count(result), result["summary"]["total"]


def requests(args: argparse.Namespace, setup, n: int, concurrency: int) -> int:
    if args.loadgen == "h2load":
        url = f"http://127.0.0.1:{setup.front_port}/"
        argv = ["taskset", "-c", proxies.LOADGEN_CORE, "h2load", "-n", str(n), "-c", str(concurrency), url]
        if args.proto != "h2":
            argv.insert(4, "--h1")
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        done, errored, timeout = (int(x) for x in re.search(
            r"(\d+) done, \d+ succeeded, \d+ failed, (\d+) errored, (\d+) timeout", out).groups())
        done -= errored + timeout
        if done < n:
            raise RuntimeError(f"only {done} of {n} requests succeeded:\n{out}")
        return done
    url = f"http://127.0.0.1:{setup.front_port}/"
    result = oha(url, "h2" if args.proto == "h2" else "http1", ["-n", str(n), "-c", str(concurrency)], args.oha)
    done = ok_count(result)
    if done < n:
        raise RuntimeError(f"only {done} of {n} requests succeeded: {result.get('errorDistribution')}")
    return done


def callgrind(args: argparse.Namespace, nginx: Nginx) -> dict:
    out = args.out / f"callgrind-{args.side}-{args.proto}.out"
    for old in args.out.glob(f"{out.name}*"):
        old.unlink()
    wrap = {args.side: ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                        f"--callgrind-out-file={out}"]}
    setup, pids = start(args, nginx, wrap)
    try:
        pid = pids[args.side]
        requests(args, setup, 200, args.concurrency)
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
        requests(args, setup, 200, args.concurrency)  # instrumented code warmed up
        # `-d` dumps and zeroes, and waits until the dump is written (`-z` does not wait, so a
        # zeroing could land after the measured requests): the second dump holds them alone.
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        n = requests(args, setup, args.requests, args.concurrency)
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    finally:
        setup.running.stop()
    # `callgrind_control -d` writes <out>.1, <out>.2, …; <out> itself is the dump at exit.
    numbered = [d for d in args.out.glob(f"{out.name}.*") if d.suffix[1:].isdigit()]
    dump = max(numbered, key=lambda d: int(d.suffix[1:]))
    annotate = subprocess.run(["callgrind_annotate", "--inclusive=no", str(dump)],
                              capture_output=True, text=True, check=True).stdout
    inclusive = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(dump)],
                               capture_output=True, text=True, check=True).stdout
    (args.out / f"{dump.name}.self.txt").write_text(annotate)
    (args.out / f"{dump.name}.inclusive.txt").write_text(inclusive)
    total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", annotate).group(1).replace(",", ""))
    return {"tool": "callgrind", "side": args.side, "proto": args.proto, "requests": n,
            "instructions_per_request": round(total / n), "dump": str(dump),
            "top_self": top(annotate, 25), "top_inclusive": top(inclusive, 40)}


ORDER_FILE = Path(__file__).resolve().parent.parent / "crates" / "plexus" / "sidecar.order"


def layout(args: argparse.Namespace, nginx: Nginx) -> dict:
    """The symbol ordering file: every function a sidecar ran, by the instructions it ran (its own,
    summed over the runs), hottest first. Only names the executable defines are kept. Each run
    is made with one thread (tokio's single-threaded scheduler: a sidecar on one core, as the
    benchmarks pin it) and with two (the threaded scheduler: a sidecar on several cores)."""
    cost: dict[str, int] = {}
    runs = []
    for threads in ("1", "2"):
        for proto in ("http1", "h2", "tcp"):
            args.proto = proto
            for side in ("client", "web"):
                out = args.out / f"layout-{side}-{proto}-{threads}.out"
                out.unlink(missing_ok=True)
                wrap = {side: ["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no",
                               f"--callgrind-out-file={out}"]}
                setup, pids = start(args, nginx, wrap, env={"PLEXUS_THREADS": threads})
                try:
                    n = requests(args, setup, args.requests, args.concurrency)
                    urllib.request.urlopen(f"http://{setup.admin[side]}/metrics", timeout=60).read()
                finally:
                    setup.running.stop()  # SIGTERM: the sidecar shuts down, callgrind writes `out`
                for name, c in self_costs(out).items():
                    cost[name] = cost.get(name, 0) + c
                runs.append({"side": side, "proto": proto, "threads": threads, "requests": n})
    defined = text_symbols(args.plexus)
    names = sorted((n for n in cost if n in defined), key=lambda n: (-cost[n], n))
    ORDER_FILE.write_text(
        "# The functions a sidecar runs, hottest first: release builds of `plexus` place them next to\n"
        "# each other (crates/plexus/build.rs passes this file to the linker), so that a sidecar maps\n"
        "# a few MiB of the executable rather than pages scattered over all of it.\n"
        "# Written by `bench/profile.py --tool layout`; names the executable no longer has are ignored.\n"
        + "".join(f"{n}\n" for n in names))
    return {"tool": "layout", "runs": runs, "functions": len(names),
            "mib_of_code": round(sum(defined[n] for n in names) / 2**20, 2), "file": str(ORDER_FILE)}


def self_costs(dump: Path) -> dict[str, int]:
    """Instructions each function ran itself, from a callgrind dump (`--dump-instr=no`): cost lines
    under `fn=`, less the inclusive costs of calls (the line after each `calls=`)."""
    names: dict[str, str] = {}
    costs: dict[str, int] = {}
    current = None
    after_call = False
    for line in dump.read_text(errors="replace").splitlines():
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if m.group(1) == "fn":
                current = names.get(m.group(2))
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        if current and line[:1] in "0123456789+-*":
            parts = line.split()
            if len(parts) >= 2 and not after_call:
                costs[current] = costs.get(current, 0) + int(parts[1])
            after_call = False
    return costs


def text_symbols(binary: str) -> dict[str, int]:
    """The executable's functions and their sizes (`nm -S`)."""
    out = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            sizes[parts[3]] = int(parts[1], 16)
    return sizes


def layout_counts(binary: str) -> tuple[int, int]:
    """How many of the ordering file's functions the executable has, of how many."""
    if not ORDER_FILE.exists():
        return 0, 0
    names = [n for n in ORDER_FILE.read_text().splitlines() if n and not n.startswith("#")]
    defined = text_symbols(binary)
    return sum(1 for n in names if n in defined), len(names)


def layout_in_use(binary: str) -> str:
    """How much of the ordering file the executable still has (a stale file orders nothing)."""
    present, total = layout_counts(binary)
    if total == 0:
        return "no ordering file"
    return f"{present} of {total} ordered functions present"


def layout_check(binary: str) -> int:
    """Says whether `sidecar.order` still fits `binary` (non-zero when under 95 % of it does).

    Symbol names carry a hash of their crate's metadata, which changes with the crate's
    dependencies: adding one to a workspace crate renames most of Plexus's own functions, and the
    linker then leaves them scattered (idle sidecar RSS ~19 MiB instead of ~11)."""
    present, total = layout_counts(binary)
    print(f"layout: {layout_in_use(binary)}")
    if total and present < 0.95 * total:
        print(f"warning: crates/plexus/sidecar.order is stale for {binary}: regenerate it with "
              f"bench/profile.py --plexus {binary} --tool layout, then rebuild", file=sys.stderr)
        return 1
    return 0


def top(annotate: str, count: int) -> list[str]:
    lines = [line for line in annotate.splitlines() if re.match(r"^\s*[\d,]+ \(\s*[\d.]+%\)\s+\S", line)]
    return [line.strip() for line in lines if "PROGRAM TOTALS" not in line][:count]


def stop_wrapped(setup, wrapper: int) -> None:
    """Ends a sidecar started under a wrapper script (heaptrack) the way shutdown does, SIGTERM
    to the sidecar itself, so that the wrapper writes its data, and waits for the wrapper."""
    children = subprocess.run(["pgrep", "-P", str(wrapper)], capture_output=True, text=True).stdout.split()
    for child in children:
        comm = Path(f"/proc/{child}/comm").read_text().strip() if Path(f"/proc/{child}/comm").exists() else ""
        if comm.startswith("plexus"):
            os.kill(int(child), signal.SIGTERM)
    for p in setup.running.proxies:
        if p.pid == wrapper:
            p.wait(timeout=120)


def strace(args: argparse.Namespace, nginx: Nginx) -> dict:
    setup, pids = start(args, nginx)
    summary = args.out / f"strace-{args.side}-{args.proto}.txt"
    try:
        requests(args, setup, 1000, args.concurrency)
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(summary), "-p", str(pids[args.side])],
                                  stderr=subprocess.DEVNULL)
        time.sleep(1)  # attached to every thread
        n = requests(args, setup, args.requests, args.concurrency)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    finally:
        setup.running.stop()
    calls = {}
    for line in summary.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    per_request = {name: round(count / n, 3) for name, count in sorted(calls.items(), key=lambda kv: -kv[1])}
    return {"tool": "strace", "side": args.side, "proto": args.proto, "requests": n,
            "syscalls_per_request": round(sum(calls.values()) / n, 3), "by_call": per_request}


def heaptrack(args: argparse.Namespace, nginx: Nginx) -> dict:
    if args.connections:
        return heaptrack_peak(args, nginx)
    allocations = {}
    for measured in (0, args.requests):
        out = args.out / f"heaptrack-{args.side}-{args.proto}-{measured}"
        wrap = {args.side: ["heaptrack", "-o", str(out)]}
        setup, pids = start(args, nginx, wrap)
        try:
            requests(args, setup, 1000, args.concurrency)
            if measured:
                requests(args, setup, measured, args.concurrency)
            stop_wrapped(setup, pids[args.side])
        finally:
            setup.running.stop()
        printed = heaptrack_print(args, out, ["-s", "0", "-a", "0", "-T", "0", "-p", "0"])
        calls = int(re.search(r"calls to allocation functions: (\d+)", printed).group(1))
        peak = re.search(r"peak heap memory consumption: (\S+)", printed).group(1)
        allocations[measured] = {"calls": calls, "peak_heap": peak}
    per_request = (allocations[args.requests]["calls"] - allocations[0]["calls"]) / args.requests
    return {"tool": "heaptrack", "side": args.side, "proto": args.proto, "requests": args.requests,
            "allocations_per_request": round(per_request, 1), "runs": allocations}


def heaptrack_print(args: argparse.Namespace, out: Path, options: list[str]) -> str:
    """heaptrack_print's report on the newest data file of the run written to `out`, kept beside
    it as text."""
    files = sorted(args.out.glob(f"{out.name}*"), key=lambda p: p.stat().st_mtime)
    files = [f for f in files if not f.name.endswith(".txt")]
    printed = subprocess.run(["heaptrack_print", *options, "-f", str(files[-1])],
                             capture_output=True, text=True).stdout
    (args.out / f"{out.name}.txt").write_text(printed)
    return printed


def heaptrack_peak(args: argparse.Namespace, nginx: Nginx) -> dict:
    out = args.out / f"heaptrack-{args.side}-{args.proto}-peak-{args.connections}"
    wrap = {args.side: ["heaptrack", "-o", str(out)]}
    setup, pids = start(args, nginx, wrap)
    try:
        requests(args, setup, 2000, 8)
        load(args, setup, args.connections, 4, 2000)
        stop_wrapped(setup, pids[args.side])
    finally:
        setup.running.stop()
    printed = heaptrack_print(args, out, ["-a", "0", "-T", "0", "-l", "0", "-n", "15", "-s", "3"])
    peak = re.search(r"peak heap memory consumption: (\S+)", printed).group(1)
    return {"tool": "heaptrack", "side": args.side, "proto": args.proto,
            "connections": args.connections, "peak_heap": peak,
            "report": str(args.out / f"{out.name}.txt")}


def cpu(args: argparse.Namespace, nginx: Nginx) -> dict:
    setup, pids = start(args, nginx)

    def seconds() -> float:
        return sum(proxies.proc_cpu_seconds(pid) for pid in pids.values())

    def system() -> float:
        return sum(proxies.proc_cpu_split(pid)[1] for pid in pids.values())

    try:
        requests(args, setup, 2000, 8)
        time.sleep(1)
        c0, s0 = seconds(), system()
        saturated, took = load(args, setup, 32, args.duration)
        c1, s1 = seconds(), system()
        time.sleep(1)
        c2 = seconds()
        fixed, _ = load(args, setup, 16, args.duration, args.rate)
        c3 = seconds()
        time.sleep(args.duration)
        c4 = seconds()
    finally:
        setup.running.stop()
    return {"tool": "cpu", "system": args.system, "proto": args.proto,
            "saturated_cpu_s_per_100k": round((c1 - c0) / saturated * 100_000, 3),
            "saturated_system_cpu_s_per_100k": round((s1 - s0) / saturated * 100_000, 3),
            "saturated_rps": round(saturated / took),
            f"cpu_s_per_100k_at_{args.rate}": round((c3 - c2) / fixed * 100_000, 3),
            f"requests_at_{args.rate}": fixed,
            "idle_cpu_s_per_s": round((c4 - c3) / args.duration, 4)}


def perf(args: argparse.Namespace, nginx: Nginx) -> dict:
    setup, pids = start(args, nginx)
    result: dict = {"tool": "perf", "system": args.system, "proto": args.proto}
    try:
        requests(args, setup, 2000, 8)
        for label, connections, rate in (("saturated", 32, None), (f"at_{args.rate}", 16, args.rate)):
            data = args.out / f"perf-{args.system}-{args.proto}-{label}.data"
            recorder = subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", "10000", "-o", str(data),
                 "-p", ",".join(str(pid) for pid in pids.values())],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # attached to both processes
            n, _ = load(args, setup, connections, args.duration, rate)
            recorder.send_signal(signal.SIGINT)
            recorder.wait(timeout=60)
            report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                                     "--sort", "dso", "-g", "none"],
                                    capture_output=True, text=True, check=True).stdout
            # "# Event count (approx.): N" is in nanoseconds for cpu-clock; rows are "share%  object".
            total_ns = int(re.search(r"Event count \(approx\.\): (\d+)", report).group(1))
            by_object = {}
            for share, name in re.findall(r"^\s+([\d.]+)%\s+(\S+)", report, re.M):
                by_object[name] = round(float(share) / 100 * total_ns / 1000 / n, 2)
            result[label] = {"requests": n, "us_per_request": round(total_ns / 1000 / n, 2),
                             "us_per_request_by_object": by_object}
    finally:
        setup.running.stop()
    return result


def rss(args: argparse.Namespace, nginx: Nginx) -> dict:
    setup, pids = start(args, nginx)
    peak = {side: 0 for side in pids}
    peak_private = {side: 0 for side in pids}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for side, pid in pids.items():
                mem = proxies.proc_mem_kib(pid)
                peak[side] = max(peak[side], mem["VmRSS"])
                peak_private[side] = max(peak_private[side], mem["RssAnon"])
            time.sleep(0.05)

    try:
        requests(args, setup, 2000, 8)
        time.sleep(1)
        idle = {side: proxies.proc_mem_kib(pid)["VmRSS"] for side, pid in pids.items()}
        idle_private = {side: proxies.proc_mem_kib(pid)["RssAnon"] for side, pid in pids.items()}
        for side, pid in pids.items():
            # Which mappings the idle RSS is made of (the executable's text, heap, stacks, libc).
            (args.out / f"smaps-idle-{side}.txt").write_text(Path(f"/proc/{pid}/smaps").read_text())
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            load(args, setup, 1000, 4, 2000)
        finally:
            stop.set()
            sampler.join()
    finally:
        setup.running.stop()
    return {"tool": "rss", "system": args.system, "proto": args.proto,
            "layout": layout_in_use(args.plexus) if args.system == "plexus" else None,
            "idle_mib": {side: round(kib / 1024, 1) for side, kib in idle.items()},
            "with_1000_connections_mib": {side: round(kib / 1024, 1) for side, kib in peak.items()},
            "idle_private_mib": {side: round(kib / 1024, 1) for side, kib in idle_private.items()},
            "with_1000_connections_private_mib": {
                side: round(kib / 1024, 1) for side, kib in peak_private.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plexus", required=True)
    p.add_argument("--oha", default=str(Path(__file__).resolve().parent.parent / ".tools" / "bin" / "oha"))
    p.add_argument("--tool", required=True, choices=["callgrind", "strace", "heaptrack", "cpu", "perf", "rss", "layout", "layout-check"])
    p.add_argument("--side", default="client", choices=["client", "web"])
    p.add_argument("--proto", default="http1", choices=["tcp", "http1", "h2"])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--connections", type=int, default=0,
                   help="--tool heaptrack: the heap at its peak with this many connections open")
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--loadgen", default="oha", choices=["oha", "h2load"],
                   help="load generator (oha, or nghttp2's h2load)")
    p.add_argument("--system", default="plexus", choices=["plexus", "haproxy"],
                   help="the two-hop mTLS chain measured by --tool cpu|rss (haproxy: the anchor)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "profile")
    args = p.parse_args()
    if args.tool == "layout-check":
        return layout_check(args.plexus)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.out / "work"
    args.work.mkdir(exist_ok=True)
    nginx = Nginx(args.work)
    try:
        result = {"callgrind": callgrind, "strace": strace, "heaptrack": heaptrack, "cpu": cpu,
                  "perf": perf, "rss": rss, "layout": layout}[args.tool](args, nginx)
    finally:
        nginx.stop()
        proxies.stop_all()
    result["plexus"] = args.plexus
    result["at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result["loadavg"] = Path("/proc/loadavg").read_text().strip()
    line = json.dumps(result)
    with open(args.out / "profile.jsonl", "a") as f:
        f.write(line + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
