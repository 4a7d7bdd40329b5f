#!/usr/bin/env python3
"""How fast a deny intention reaches Envoy sidecars: a release `plexus dev`, a TCP echo app and
an HTTP app, an Envoy in front of each and an Envoy client (all `plexus connect envoy`). Each
round creates `client => * deny` through the API and times, from the API's answer, until a new
TCP connection through the client Envoy is refused AND an HTTP request gets 403 `denied`; then
deletes it and waits for traffic to pass again. Prints JSON (per-round milliseconds, p50, max).

    bench/xds_deny.py --plexus target/release/plexus --envoy .tools/bin/envoy [--rounds 20]
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from proxies import free_port, wait_http, wait_port  # noqa: E402


def tcp_echoes(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"ping\n")
            return s.recv(16).startswith(b"ping")
    except OSError:
        return False


def http_status(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-plexus-error", "")
    except OSError:
        return 0, ""


def api(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
    return json.loads(text) if text else {}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--plexus", required=True)
    p.add_argument("--envoy", required=True)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xds-deny-"))
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], log: str) -> None:
        procs.append(
            subprocess.Popen(argv, stdout=open(work / log, "wb"), stderr=subprocess.STDOUT)
        )

    try:
        echo_app, web_app = free_port(), free_port()
        echo_local, web_local = free_port(), free_port()
        http, grpc = free_port(), free_port()
        start([args.plexus, "echo-server", "--listen", f"127.0.0.1:{echo_app}"], "echo.log")
        start([sys.executable, "-m", "http.server", str(web_app), "--bind", "127.0.0.1"], "web.log")
        (work / "mesh.hcl").write_text(
            f"""services {{
  name = "client"
  port = {free_port()}
  connect {{ sidecar_service {{
    port = {free_port()}
    proxy {{
      upstreams {{
        destination_name = "echo"
        local_bind_port  = {echo_local}
      }}
      upstreams {{
        destination_name = "web"
        local_bind_port  = {web_local}
        config = {{ protocol = "http" }}
      }}
    }}
  }} }}
}}
services {{
  name = "echo"
  port = {echo_app}
  connect {{ sidecar_service {{ port = {free_port()} }} }}
}}
services {{
  name = "web"
  port = {web_app}
  connect {{ sidecar_service {{
    port = {free_port()}
    proxy {{ config = {{ protocol = "http" }} }}
  }} }}
}}
"""
        )
        start(
            [args.plexus, "dev", "--http-addr", f"127.0.0.1:{http}", "--grpc-addr",
             f"127.0.0.1:{grpc}", "--dns-addr", "127.0.0.1:0", "--data-dir", str(work / "data"), "--config-file",
             str(work / "mesh.hcl")],
            "dev.log",
        )
        wait_port(http)
        admins = []
        for base_id, service in enumerate(("echo", "web", "client"), start=50):
            admin = free_port()
            admins.append(admin)
            start(
                [args.plexus, "connect", "envoy", "-sidecar-for", service, "-admin-bind",
                 f"127.0.0.1:{admin}", "--http-addr", f"127.0.0.1:{http}", "--grpc-addr",
                 f"127.0.0.1:{grpc}", "--envoy-binary", args.envoy, "--", "--concurrency", "1",
                 "--base-id", str(base_id), "-l", "warning"],
                f"envoy-{service}.log",
            )
        for admin in admins:
            wait_http(f"http://127.0.0.1:{admin}/ready")
        deadline = time.time() + 30
        while not (tcp_echoes(echo_local) and http_status(web_local)[0] == 200):
            if time.time() > deadline:
                raise RuntimeError("the mesh did not come up")
            time.sleep(0.05)

        base = f"http://127.0.0.1:{http}/v1/connect/intentions"
        rounds = []
        for _ in range(args.rounds):
            created = api("POST", base, {"SourceName": "client", "DestinationName": "*", "Action": "deny"})
            t0 = time.monotonic()
            while True:
                if not tcp_echoes(echo_local) and http_status(web_local) == (403, "denied"):
                    break
                if time.monotonic() - t0 > 30:
                    raise RuntimeError("the deny never took effect")
                time.sleep(0.005)
            rounds.append((time.monotonic() - t0) * 1000)
            api("DELETE", f"{base}/{created['ID']}")
            while not (tcp_echoes(echo_local) and http_status(web_local)[0] == 200):
                time.sleep(0.02)
        ordered = sorted(rounds)
        print(json.dumps({
            "rounds": len(rounds),
            "deny_enforced_ms": {
                "p50": round(ordered[len(ordered) // 2], 1),
                "max": round(ordered[-1], 1),
                "each": [round(r, 1) for r in rounds],
            },
        }, indent=2))
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
