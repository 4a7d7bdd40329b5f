"""Data-plane benchmark: direct, one hop and two hops on loopback, for Plexus, Envoy and HAProxy,
TCP / HTTP/1.1 / h2c. Writes results.json, results.md and a chart into --out.

Run through bench/run.sh, which installs everything first."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import proxies
from proxies import LOADGEN_CORE, PROXY_CORE, Nginx, Setup

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    system: str  # direct | plexus | envoy | haproxy
    hops: int
    proto: str  # tcp | http1 | h2
    mtls: bool = False
    unavailable: str = ""  # why the row cannot be measured yet (empty: it can)

    @property
    def name(self) -> str:
        if self.system == "direct":
            return f"direct {self.label_proto}"
        sec = "mTLS" if self.mtls else "plaintext"
        return f"{self.system} {self.hops} hop{'s' if self.hops > 1 else ''} {self.label_proto} {sec}"

    @property
    def label_proto(self) -> str:
        return {"tcp": "TCP (HTTP/1.1 over L4)", "http1": "HTTP/1.1 (L7)", "h2": "h2c (L7)"}[self.proto]

    @property
    def load_proto(self) -> str:
        """What the load generator speaks: HTTP/1.1 keep-alive, or h2c with prior knowledge."""
        return "h2" if self.proto == "h2" else "http1"


def cases(args: argparse.Namespace) -> list[Case]:
    # Every hop between Plexus sidecars is mutual TLS and an inbound sidecar accepts nothing
    # else, so Plexus has no plaintext rows: its sidecar path is the two-hop mTLS chain.
    no_plaintext = "n/a: Plexus sidecars only speak mTLS to each other (see the two-hop mTLS row)"
    out = [Case("direct", 0, "http1"), Case("direct", 0, "h2")]
    for proto in ("tcp", "http1", "h2"):
        for hops in (1, 2):
            out.append(Case("plexus", hops, proto, unavailable=no_plaintext))
            out.append(Case("envoy", hops, proto))
            out.append(Case("haproxy", hops, proto))
        out.append(Case("plexus", 2, proto, mtls=True))
        out.append(Case("plexus-envoy", 2, proto, mtls=True))
        out.append(Case("envoy", 2, proto, mtls=True))
        out.append(Case("haproxy", 2, proto, mtls=True))
    # The ingress gateway (issue 20): outside client → gateway → mTLS → the web sidecar → nginx,
    # routed by Host; only the gateway process is measured.
    out.append(Case("plexus-ingress", 2, "http1", mtls=True))
    out.append(Case("envoy-ingress", 2, "http1", mtls=True))
    if args.only:
        out = [c for c in out if any(o in c.name for o in args.only)]
    return out


def oha(url: str, proto: str, extra: list[str], oha_bin: str) -> dict:
    argv = [
        "taskset", "-c", LOADGEN_CORE, oha_bin, "--no-tui", "--output-format", "json",
        "--disable-compression", *extra,
    ]
    if proto == "h2":
        argv.append("--http2")
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"oha failed ({done.returncode}): {done.stderr.strip()[:500]}")
    return json.loads(done.stdout)


def host_header(setup: Setup) -> list[str]:
    """oha's arguments for the Host header the system routes by, if any."""
    return ["-H", f"Host: {setup.host}"] if setup.host else []


def ok_count(result: dict) -> int:
    return int(sum(result.get("statusCodeDistribution", {}).get(k, 0) for k in ("200",)))


def error_count(result: dict) -> int:
    # Requests cut by the end of a -z run are not errors.
    return int(sum(v for k, v in result.get("errorDistribution", {}).items() if k != "aborted due to deadline"))


def start(case: Case, args: argparse.Namespace, nginx: Nginx, work: Path) -> Setup:
    upstream = nginx.port(case.load_proto)
    if case.system == "direct":
        return Setup(upstream, proxies.Running())
    if case.system == "plexus":
        return proxies.start_plexus(args.plexus, work, upstream, case.hops, case.proto)
    if case.system == "envoy":
        return proxies.start_envoy(args.envoy, work, upstream, case.hops, case.proto, case.mtls)
    if case.system == "plexus-ingress":
        return proxies.start_plexus_ingress(args.plexus, work, upstream)
    if case.system == "envoy-ingress":
        return proxies.start_envoy_ingress(args.envoy, work, upstream)
    if case.system == "plexus-envoy":
        return proxies.start_plexus_envoy(args.plexus, args.envoy, work, upstream, case.proto)
    if case.system == "haproxy":
        return proxies.start_haproxy(work, upstream, case.hops, case.proto, case.mtls)
    raise ValueError(case.system)


def cpu_of(setup: Setup) -> float:
    return sum(proxies.proc_cpu_seconds(p.pid) for p in setup.running.proxies)


def max_rss_kib(setup: Setup, key: str = "VmRSS") -> int:
    """The largest proxy process's resident memory; `key` "RssAnon" counts only its private
    (anonymous) pages, not the executable's code pages it shares with every other process
    running the same binary."""
    return max((proxies.proc_mem_kib(p.pid)[key] for p in setup.running.proxies), default=0)


def measure(case: Case, args: argparse.Namespace, nginx: Nginx, work: Path) -> dict:
    setup = start(case, args, nginx, work)
    try:
        url = f"http://127.0.0.1:{setup.front_port}/"
        hdr = host_header(setup)
        warm = oha(url, case.load_proto, [*hdr, "-n", "2000", "-c", "8"], args.oha)
        if ok_count(warm) < 2000:
            raise RuntimeError(f"warm-up through {case.name}: {warm.get('statusCodeDistribution')} "
                               f"errors {warm.get('errorDistribution')}")
        time.sleep(1)
        idle_rss = max_rss_kib(setup)
        idle_anon = max_rss_kib(setup, "RssAnon")
        reps = []
        for _ in range(args.reps):
            cpu0 = cpu_of(setup)
            tput = oha(url, case.load_proto, [*hdr, "-z", f"{args.duration}s", "-c", str(args.concurrency)], args.oha)
            cpu1 = cpu_of(setup)
            requests = ok_count(tput)
            lat = oha(
                url, case.load_proto,
                [*hdr, "-z", f"{args.duration}s", "-c", str(args.latency_connections), "-q", str(args.rate),
                 "--latency-correction"],
                args.oha,
            )
            pct = lat["latencyPercentiles"]
            # CPU per request at a fixed, low rate (what a service at a few hundred req/s pays:
            # wake-ups, timers, per-connection tasks), next to the saturated figure above.
            cpu2 = cpu_of(setup)
            fixed = oha(
                url, case.load_proto,
                [*hdr, "-z", f"{args.duration}s", "-c", str(args.latency_connections), "-q", str(args.fixed_rate)],
                args.oha,
            )
            cpu3 = cpu_of(setup)
            fixed_requests = ok_count(fixed)
            reps.append({
                "rps": requests / tput["summary"]["total"],
                "errors": error_count(tput) + error_count(lat) + error_count(fixed),
                "cpu_s_per_100k": (cpu1 - cpu0) / requests * 100_000 if setup.running.proxies else None,
                "cpu_s_per_100k_fixed": (cpu3 - cpu2) / fixed_requests * 100_000
                if setup.running.proxies and fixed_requests else None,
                "p50_us": pct["p50"] * 1e6,
                "p99_us": pct["p99"] * 1e6,
                "p999_us": pct["p99.9"] * 1e6,
                "lat_rps": lat["summary"]["requestsPerSec"],
            })
            setup.running.check_alive()
        conn_rss = conn_anon = None
        if setup.running.proxies:
            conn_rss, conn_anon = rss_with_connections(setup, case, args)
        measured = bool(setup.running.proxies)
        return {"case": case.__dict__, "name": case.name, "reps": reps,
                "idle_rss_kib": idle_rss if measured else None, "conn_rss_kib": conn_rss,
                "idle_anon_kib": idle_anon if measured else None, "conn_anon_kib": conn_anon}
    finally:
        setup.running.stop()


def rss_with_connections(setup: Setup, case: Case, args: argparse.Namespace) -> tuple[int, int]:
    """Peak RSS and peak private RSS (largest proxy process) while 1,000 connections are open
    through the chain, each carrying a light request load (oha -c 1000 at a low rate)."""
    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], max_rss_kib(setup))
            peak[1] = max(peak[1], max_rss_kib(setup, "RssAnon"))
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    try:
        res = oha(f"http://127.0.0.1:{setup.front_port}/", case.load_proto,
                  [*host_header(setup), "-z", "4s", "-c", "1000", "-q", "2000"], args.oha)
        if ok_count(res) == 0:
            raise RuntimeError(f"1,000-connection run through {case.name} failed: {res.get('errorDistribution')}")
    finally:
        stop.set()
        t.join()
    return peak[0], peak[1]


def mib(rss_kib: int | None, anon_kib: int | None) -> str:
    """RSS in MiB, with the private (anonymous) part in brackets when measured."""
    if not rss_kib:
        return "–"
    return f"{rss_kib / 1024:.1f}" + (f" ({anon_kib / 1024:.1f})" if anon_kib else "")


def med(values: list[float]) -> float:
    return statistics.median(values)


def summarise(result: dict, direct: dict[str, dict]) -> dict:
    reps = result["reps"]
    out = {}
    for key in ("rps", "p50_us", "p99_us", "p999_us", "cpu_s_per_100k", "cpu_s_per_100k_fixed"):
        vals = [r[key] for r in reps if r.get(key) is not None]
        if vals:
            out[key] = (med(vals), min(vals), max(vals))
    out["errors"] = sum(r["errors"] for r in reps)
    base = direct.get(result["case"]["proto"] if result["case"]["proto"] != "tcp" else "http1")
    if base and result["case"]["system"] != "direct":
        out["added_p50_us"] = out["p50_us"][0] - base["p50_us"][0]
        out["added_p99_us"] = out["p99_us"][0] - base["p99_us"][0]
    return out


def fmt_triplet(t: tuple[float, float, float] | None, digits: int = 0) -> str:
    if t is None:
        return "–"
    m, lo, hi = t
    return f"{m:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def write_report(results: list[dict], meta: dict, out: Path) -> None:
    direct = {}
    for r in results:
        if r.get("reps") and r["case"]["system"] == "direct":
            direct[r["case"]["proto"]] = summarise(r, {})
    lines = [
        "| Row | Throughput req/s (c={c}) | p50 µs | p99 µs | p99.9 µs | added p50 / p99 µs | "
        "proxy CPU s / 100k req (saturated) | proxy CPU s / 100k req at {r:,} req/s | RSS idle MiB (private) | "
        "RSS 1,000 conns MiB (private) |".format(c=meta["concurrency"], r=meta["fixed_rate"]),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r.get("reps"):
            lines.append(f"| {r['name']} | {r['unavailable']} | | | | | | | | |")
            continue
        s = summarise(r, direct)
        added = (f"{s['added_p50_us']:,.0f} / {s['added_p99_us']:,.0f}" if "added_p50_us" in s else "–")
        idle = mib(r["idle_rss_kib"], r.get("idle_anon_kib"))
        conn = mib(r["conn_rss_kib"], r.get("conn_anon_kib"))
        errs = f" ({s['errors']} errors)" if s["errors"] else ""
        lines.append(
            f"| {r['name']}{errs} | {fmt_triplet(s['rps'])} | {fmt_triplet(s['p50_us'])} | "
            f"{fmt_triplet(s['p99_us'])} | {fmt_triplet(s['p999_us'])} | {added} | "
            f"{fmt_triplet(s.get('cpu_s_per_100k'), 2)} | {fmt_triplet(s.get('cpu_s_per_100k_fixed'), 2)} | "
            f"{idle} | {conn} |"
        )
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(
        f"# Data-plane run {meta['started']}\n\n{meta['settings']}\n\n"
        "Cells: median of the repetitions, (min–max) in brackets. RSS is the largest single proxy process "
        "(one sidecar).\n\n" + table
    )
    chart(results, direct, out / "chart.png")


def chart(results: list[dict], direct: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.get("reps")]
    names = [r["name"] for r in rows]
    sums = [summarise(r, direct) for r in rows]
    colours = {
        "direct": "#888888",
        "plexus": "#1f77b4",
        "plexus-envoy": "#9467bd",
        "envoy": "#d62728",
        "haproxy": "#2ca02c",
        "plexus-ingress": "#17becf",
        "envoy-ingress": "#ff7f0e",
    }
    cols = [colours[r["case"]["system"]] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.42 * len(rows) + 1.5), sharey=True)
    y = list(range(len(rows)))
    rps = [s["rps"][0] for s in sums]
    rps_err = [[s["rps"][0] - s["rps"][1] for s in sums], [s["rps"][2] - s["rps"][0] for s in sums]]
    ax1.barh(y, rps, xerr=rps_err, color=cols)
    ax1.set_title("max throughput, req/s (median, min–max)")
    ax1.set_yticks(y, names, fontsize=8)
    ax1.invert_yaxis()
    p50 = [s["p50_us"][0] for s in sums]
    p99 = [s["p99_us"][0] for s in sums]
    ax2.barh([v - 0.2 for v in y], p50, height=0.4, color=cols, alpha=0.6, label="p50")
    ax2.barh([v + 0.2 for v in y], p99, height=0.4, color=cols, label="p99")
    ax2.set_title("latency at fixed rate, µs (light: p50, dark: p99)")
    ax2.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> dict:
    def sh(cmd: str) -> str:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()

    return {
        "lscpu": sh("lscpu | grep -E 'Model name|^CPU\\(s\\)|Thread|Core|Socket|MHz|L1d|L2|L3|Hypervisor'"),
        "kernel": platform.release(),
        "memory": sh("grep MemTotal /proc/meminfo"),
        "envoy": sh(f"{ARGS.envoy} --version | grep -o 'version: .*'"),
        "haproxy": sh("haproxy -v | head -1"),
        "nginx": sh("nginx -v 2>&1"),
        "oha": sh(f"{ARGS.oha} --version"),
        "plexus": sh(f"git -C {ROOT} rev-parse --short HEAD") + (" (dirty)" if sh(f"git -C {ROOT} status --porcelain") else ""),
        "loadavg": Path("/proc/loadavg").read_text().strip(),
    }


ARGS: argparse.Namespace


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--plexus", required=True)
    p.add_argument("--envoy", required=True)
    p.add_argument("--oha", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="seconds per throughput / latency run")
    p.add_argument("--concurrency", type=int, default=32, help="connections for the throughput run")
    p.add_argument("--rate", type=int, default=2000, help="req/s of the latency run")
    p.add_argument("--latency-connections", type=int, default=16)
    p.add_argument("--fixed-rate", type=int, default=1000, help="req/s of the fixed-rate CPU run")
    p.add_argument("--only", action="append", help="run only rows whose name contains this")
    args = p.parse_args()
    ARGS = args
    args.out = args.out.resolve()  # nginx and the proxies get absolute paths
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    settings = (
        f"Load generator oha and upstream nginx (1 worker) on core {LOADGEN_CORE}; every proxy process on "
        f"core {PROXY_CORE} (taskset). {args.reps} repetitions per row. Throughput: {args.duration} s at "
        f"{args.concurrency} connections, keep-alive. Latency: {args.duration} s at a constant "
        f"{args.rate} req/s over {args.latency_connections} connections, oha --latency-correction "
        "(coordinated-omission corrected). CPU: utime+stime of the proxy processes (both, for two hops) "
        "over the throughput run, per 100k requests, and likewise over a run at a fixed "
        f"{args.fixed_rate} req/s ({args.duration} s, {args.latency_connections} connections). RSS idle: after a 2,000-request warm-up; "
        "with 1,000 connections: highest VmRSS sampled every 50 ms during a 4 s run of oha -c 1000 -q 2000."
    )
    meta = {"started": started, "settings": settings, "concurrency": args.concurrency,
            "fixed_rate": args.fixed_rate,
            "machine": machine()}
    nginx = Nginx(work)
    results = []
    try:
        for case in cases(args):
            if case.unavailable:
                print(f"-- {case.name}: {case.unavailable}", flush=True)
                results.append({"case": case.__dict__, "name": case.name, "unavailable": case.unavailable})
                continue
            print(f"-- {case.name} ...", flush=True)
            t0 = time.monotonic()
            try:
                r = measure(case, args, nginx, work)
            except Exception as e:  # noqa: BLE001 - a failed row is reported, the run goes on
                proxies.stop_all()
                print(f"   FAILED: {e}", flush=True)
                results.append({"case": case.__dict__, "name": case.name, "unavailable": f"FAILED: {e}"})
                continue
            results.append(r)
            rps = med([x["rps"] for x in r["reps"]])
            p99 = med([x["p99_us"] for x in r["reps"]])
            print(f"   {rps:,.0f} req/s, p99 {p99:,.0f} µs ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        nginx.stop()
    meta["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    write_report(results, meta, args.out)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
