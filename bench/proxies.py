"""The systems under test: how to start nginx (the upstream), Plexus, Envoy and HAProxy on
loopback in each topology, each proxy process pinned to the proxy core."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LOADGEN_CORE = "0"  # oha, nginx and the Plexus control plane
PROXY_CORE = "1"  # every proxy process under test


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run: the kernel may offer a port again
    once its probe socket is closed, before the process it was meant for has bound it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_port(port: int, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {deadline_s}s")


def wait_http(url: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {deadline_s}s: {last}")


@dataclass(eq=False)  # identity: `_LIVE` holds these
class Running:
    """Processes of one system under test; `proxies` are the ones measured (CPU, RSS)."""

    procs: list[subprocess.Popen] = field(default_factory=list)
    proxies: list[subprocess.Popen] = field(default_factory=list)

    def start(
        self, argv: list[str], core: str, log: Path, proxy: bool, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        if self not in _LIVE:
            _LIVE.append(self)
        out = open(log, "ab")
        p = subprocess.Popen(
            ["taskset", "-c", core, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
        )
        self.procs.append(p)
        if proxy:
            self.proxies.append(p)
        return p

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args} exited with {p.returncode}")

    def stop(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


_LIVE: list[Running] = []


def stop_all() -> None:
    """Stops whatever a set-up that failed half-way left running (its Setup never reached the
    caller, so nothing else would stop it)."""
    for run in list(_LIVE):
        run.stop()


class Nginx:
    """The upstream: one worker on the load-generator core, `return 200` on an h1 and an h2c port."""

    def __init__(self, work: Path):
        self.dir = work / "nginx"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.h1 = free_port()
        self.h2 = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(
            f"""worker_processes 1;
worker_rlimit_nofile 19000;
daemon off;
pid {self.dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 8000; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  client_body_temp_path {self.dir}/body;
  proxy_temp_path {self.dir}/proxy;
  fastcgi_temp_path {self.dir}/fastcgi;
  uwsgi_temp_path {self.dir}/uwsgi;
  scgi_temp_path {self.dir}/scgi;
  server {{ listen 127.0.0.1:{self.h1}; location / {{ return 200 "hello from nginx\\n"; }} }}
  server {{ listen 127.0.0.1:{self.h2} http2; location / {{ return 200 "hello from nginx\\n"; }} }}
}}
"""
        )
        self.run = Running()
        self.run.start(
            ["nginx", "-p", str(self.dir), "-e", "stderr", "-c", str(conf)],
            LOADGEN_CORE,
            self.dir / "nginx.log",
            proxy=False,
        )
        wait_port(self.h1)
        wait_port(self.h2)

    def port(self, proto: str) -> int:
        return self.h2 if proto == "h2" else self.h1

    def stop(self) -> None:
        self.run.stop()


@dataclass
class Setup:
    """A started system: where the load generator points, and the processes to measure."""

    front_port: int
    running: Running
    host: str | None = None  # the Host header every request carries (gateways route by it)
    admin: dict[str, str] = field(default_factory=dict)  # service → a Plexus sidecar's admin address


# --------------------------------------------------------------------------------------- Plexus


def _web_hcl(upstream: int, sidecar_port: int, protocol: str) -> str:
    """The `web` service (nginx at `upstream`) with its sidecar, as `plexus dev --config-file` reads it."""
    return f"""services {{
  name = "web"
  port = {upstream}
  connect {{
    sidecar_service {{
      port = {sidecar_port}
      proxy {{
        config = {{ protocol = "{protocol}" }}
      }}
    }}
  }}
}}
"""


def start_plexus(
    plexus: str,
    work: Path,
    upstream: int,
    hops: int,
    proto: str,
    wrap: dict[str, list[str]] | None = None,
    env: dict[str, str] | None = None,
) -> Setup:
    """`plexus dev` with two services, `client` (upstream `web`) and `web` (nginx), and one
    `plexus proxy` per service, the hop between them mTLS. Two hops: the load goes to client's
    upstream listener → web's inbound sidecar → nginx. (One hop, straight to web's inbound
    sidecar, only answers a peer sidecar's mTLS.) `proto` picks the protocol both sidecars
    declare: tcp (L4), http1 (`http`: HTTP/1.1 to the apps, pooled HTTP/2 between the
    sidecars) or h2 (`http2`: h2c to the apps). `wrap` puts a command in front of a sidecar
    (by service: a profiler); `env` is added to the sidecars' environment."""
    protocol = {"tcp": "tcp", "http1": "http", "h2": "http2"}[proto]
    d = work / f"plexus-{hops}-{proto}"
    shutil.rmtree(d / "data", ignore_errors=True)  # a fresh control plane every time
    d.mkdir(parents=True, exist_ok=True)
    http = free_port()
    client_sidecar, web_sidecar, local_bind = free_port(), free_port(), free_port()
    client_app = free_port()
    (d / "mesh.hcl").write_text(
        f"""services {{
  name = "client"
  port = {client_app}
  connect {{
    sidecar_service {{
      port = {client_sidecar}
      proxy {{
        upstreams {{
          destination_name = "web"
          local_bind_port  = {local_bind}
          config = {{ protocol = "{protocol}" }}
        }}
      }}
    }}
  }}
}}
"""
        + _web_hcl(upstream, web_sidecar, protocol)
    )
    run = Running()
    env_addr = f"127.0.0.1:{http}"
    run.start(
        [
            plexus,
            "dev",
            "--http-addr",
            env_addr,
            "--dns-addr",
            "127.0.0.1:0",
            "--data-dir",
            str(d / "data"),
            "--config-file",
            str(d / "mesh.hcl"),
        ],
        LOADGEN_CORE,
        d / "dev.log",
        proxy=False,
    )
    wait_port(http)
    sidecars = [("web", free_port())]
    if hops == 2:
        sidecars.append(("client", free_port()))
    for service, admin in sidecars:
        run.start(
            [
                *(wrap or {}).get(service, []),
                plexus,
                "proxy",
                "--sidecar-for",
                service,
                "--admin-addr",
                f"127.0.0.1:{admin}",
                "--http-addr",
                env_addr,
            ],
            PROXY_CORE,
            d / f"proxy-{service}.log",
            proxy=True,
            env=env,
        )
    for _, admin in sidecars:
        wait_http(f"http://127.0.0.1:{admin}/ready", deadline_s=300 if wrap else 30)
    front = local_bind if hops == 2 else web_sidecar
    return Setup(front, run, admin={service: f"127.0.0.1:{admin}" for service, admin in sidecars})


def start_plexus_envoy(plexus: str, envoy: str, work: Path, upstream: int, proto: str) -> Setup:
    """The same two services as `start_plexus`, but each sidecar is an Envoy started by
    `plexus connect envoy` and configured by `plexus dev` over xDS (delta ADS): client's
    upstream listener → web's inbound Envoy (mTLS with SPIFFE checks, RBAC) → nginx."""
    protocol = {"tcp": "tcp", "http1": "http", "h2": "http2"}[proto]
    d = work / f"plexus-envoy-2-{proto}"
    shutil.rmtree(d / "data", ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    http, grpc = free_port(), free_port()
    client_sidecar, web_sidecar, local_bind = free_port(), free_port(), free_port()
    (d / "mesh.hcl").write_text(
        f"""services {{
  name = "client"
  port = {free_port()}
  connect {{
    sidecar_service {{
      port = {client_sidecar}
      proxy {{
        upstreams {{
          destination_name = "web"
          local_bind_port  = {local_bind}
          config = {{ protocol = "{protocol}" }}
        }}
      }}
    }}
  }}
}}
"""
        + _web_hcl(upstream, web_sidecar, protocol)
    )
    run = Running()
    env_addr = f"127.0.0.1:{http}"
    run.start(
        [plexus, "dev", "--http-addr", env_addr, "--grpc-addr", f"127.0.0.1:{grpc}",
         "--dns-addr", "127.0.0.1:0", "--data-dir", str(d / "data"), "--config-file", str(d / "mesh.hcl")],
        LOADGEN_CORE,
        d / "dev.log",
        proxy=False,
    )
    wait_port(http)
    admins = []
    for service in ("web", "client"):
        admin = free_port()
        admins.append(admin)
        _BASE_ID[0] += 1
        run.start(
            [plexus, "connect", "envoy", "-sidecar-for", service, "-admin-bind",
             f"127.0.0.1:{admin}", "--http-addr", env_addr, "--grpc-addr", f"127.0.0.1:{grpc}",
             "--envoy-binary", envoy, "--", "--concurrency", "1", "--disable-hot-restart",
             "--base-id", str(_BASE_ID[0]), "-l", "warning"],
            PROXY_CORE,
            d / f"envoy-{service}.log",
            proxy=True,
        )
    for admin in admins:
        wait_http(f"http://127.0.0.1:{admin}/ready")
    return Setup(local_bind, run)


INGRESS_HOST = "web.bench"


def _put(base: str, path: str, body: dict) -> None:
    request = urllib.request.Request(
        f"{base}{path}", data=json.dumps(body).encode(), method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        if answer.status != 200:
            raise RuntimeError(f"PUT {path}: {answer.status}")


def start_plexus_ingress(plexus: str, work: Path, upstream: int) -> Setup:
    """The ingress chain on Plexus: oha → `plexus gateway --kind ingress` (an `ingress-gateway`
    entry with one http listener routing `Host: web.bench` to web) → mTLS → web's `plexus
    proxy` sidecar → nginx. Only the gateway process is measured (CPU, RSS)."""
    d = work / "plexus-ingress"
    shutil.rmtree(d / "data", ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    http, web_sidecar, listener = free_port(), free_port(), free_port()
    (d / "mesh.hcl").write_text(
        _web_hcl(upstream, web_sidecar, "http")
    )
    run = Running()
    base = f"http://127.0.0.1:{http}"
    run.start(
        [plexus, "dev", "--http-addr", f"127.0.0.1:{http}", "--dns-addr", "127.0.0.1:0",
         "--data-dir", str(d / "data"), "--config-file", str(d / "mesh.hcl")],
        LOADGEN_CORE,
        d / "dev.log",
        proxy=False,
    )
    wait_port(http)
    _put(base, "/v1/config", {"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
    _put(base, "/v1/config", {
        "Kind": "ingress-gateway", "Name": "ingress",
        "Listeners": [{"Port": listener, "Protocol": "http",
                       "Services": [{"Name": "web", "Hosts": [INGRESS_HOST]}]}],
    })
    _put(base, "/v1/connect/intentions/exact?source=ingress&destination=web", {"Action": "allow"})
    admins = [free_port(), free_port()]
    run.start(
        [plexus, "proxy", "--sidecar-for", "web", "--admin-addr", f"127.0.0.1:{admins[0]}",
         "--http-addr", f"127.0.0.1:{http}"],
        PROXY_CORE,
        d / "proxy-web.log",
        proxy=False,
    )
    run.start(
        [plexus, "gateway", "--kind", "ingress", "--service", "ingress", "--address", "127.0.0.1:0",
         "--admin-addr", f"127.0.0.1:{admins[1]}", "--http-addr", f"127.0.0.1:{http}"],
        PROXY_CORE,
        d / "gateway.log",
        proxy=True,
    )
    for admin in admins:
        wait_http(f"http://127.0.0.1:{admin}/ready")
    wait_port(listener)
    return Setup(listener, run, host=INGRESS_HOST)


def start_envoy_ingress(envoy: str, work: Path, upstream: int) -> Setup:
    """The same chain on Envoy: an ingress Envoy (one virtual host, `web.bench`) → mTLS (TLS 1.3,
    ALPN h2, client certificate) → an Envoy sidecar → nginx. Only the ingress Envoy is measured."""
    d = work / "envoy-ingress"
    d.mkdir(parents=True, exist_ok=True)
    certs = make_certs(work)
    run = Running()
    inbound = free_port()
    _start_envoy(
        envoy, run, d, "inbound",
        _envoy_listener(inbound, "http1", "app", certs),
        _envoy_cluster("app", upstream, "http1", None),
        measured=False,
    )
    front = free_port()
    _start_envoy(
        envoy, run, d, "ingress",
        _envoy_listener(front, "http1", "peer", None, domains=[INGRESS_HOST]),
        _envoy_cluster("peer", inbound, "http1", certs),
    )
    return Setup(front, run, host=INGRESS_HOST)


# ---------------------------------------------------------------------------------------- Envoy

_BASE_ID = [100]


def _envoy_listener(
    port: int, proto: str, cluster: str, mtls_server: Path | None, domains: list[str] | None = None
) -> str:
    """A listener; with `mtls_server` it is the inbound end of the mTLS hop (TLS 1.3, client
    certificate required, ALPN h2 offered for the HTTP rows). `domains`: the virtual host's
    (every host when not given)."""
    domain_list = json.dumps(domains or ["*"])
    if proto == "tcp":
        filters = f"""
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: {cluster}"""
    else:
        filters = f"""
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: {domain_list}
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster}, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"""
    tls = ""
    alpn = "" if proto == "tcp" else """
            alpn_protocols: ["h2", "http/1.1"]"""
    if mtls_server is not None:
        tls = f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{ tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }}{alpn}
            tls_certificates:
            - certificate_chain: {{ filename: {mtls_server}/server.crt }}
              private_key: {{ filename: {mtls_server}/server.key }}
            validation_context:
              trusted_ca: {{ filename: {mtls_server}/ca.crt }}"""
    return f"""
  - name: l{port}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:{filters}{tls}
"""


def _envoy_cluster(name: str, port: int, proto: str, mtls_client: Path | None) -> str:
    """A cluster; with `mtls_client` it is the outbound end of the mTLS hop, which speaks
    HTTP/2 (ALPN h2) for the HTTP rows, as Plexus's sidecars and HAProxy's `alpn h2` do."""
    h2 = ""
    if proto == "h2" or (mtls_client is not None and proto != "tcp"):
        h2 = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"""
    tls = ""
    alpn = "" if proto == "tcp" else """
          alpn_protocols: ["h2"]"""
    if mtls_client is not None:
        tls = f"""
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: web
        common_tls_context:
          tls_params: {{ tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }}{alpn}
          tls_certificates:
          - certificate_chain: {{ filename: {mtls_client}/client.crt }}
            private_key: {{ filename: {mtls_client}/client.key }}
          validation_context:
            trusted_ca: {{ filename: {mtls_client}/ca.crt }}"""
    return f"""
  - name: {name}
    type: STATIC
    connect_timeout: 5s
    circuit_breakers:
      thresholds:
      - max_connections: 100000
        max_pending_requests: 100000
        max_requests: 100000
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}{h2}{tls}
"""


def _start_envoy(
    envoy: str, run: Running, d: Path, name: str, listener: str, cluster: str, measured: bool = True
) -> None:
    admin = free_port()
    conf = d / f"{name}.yaml"
    conf.write_text(
        f"""admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:{listener}
  clusters:{cluster}
"""
    )
    _BASE_ID[0] += 1
    run.start(
        [
            envoy,
            "-c",
            str(conf),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--base-id",
            str(_BASE_ID[0]),
            "-l",
            "warning",
        ],
        PROXY_CORE,
        d / f"{name}.log",
        proxy=measured,
    )
    wait_http(f"http://127.0.0.1:{admin}/ready")


def make_certs(d: Path) -> Path:
    """A CA and a server and a client certificate, made with openssl, for the mTLS hop."""
    certs = d / "certs"
    if (certs / "client.pem").exists():
        return certs
    certs.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=certs, check=True, capture_output=True)

    ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    ossl("req", "-x509", "-new", "-key", "ca.key", "-days", "30", "-subj", "/CN=bench-ca", "-out", "ca.crt")
    for who in ("server", "client"):
        ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{who}.key")
        ossl("req", "-new", "-key", f"{who}.key", "-subj", f"/CN={who}", "-out", f"{who}.csr")
        (certs / f"{who}.ext").write_text("subjectAltName=DNS:web,DNS:client\n")
        ossl(
            "x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "30", "-extfile", f"{who}.ext", "-out", f"{who}.crt",
        )
        # HAProxy reads the certificate and its key from one file.
        (certs / f"{who}.pem").write_text((certs / f"{who}.crt").read_text() + (certs / f"{who}.key").read_text())
    return certs


def start_envoy(envoy: str, work: Path, upstream: int, hops: int, proto: str, mtls: bool) -> Setup:
    """One hop: listener → nginx. Two hops: outbound Envoy → inbound Envoy → nginx, the middle hop
    in mTLS when asked (the same chain Envoy runs as a sidecar pair)."""
    d = work / f"envoy-{hops}-{proto}-{'mtls' if mtls else 'plain'}"
    d.mkdir(parents=True, exist_ok=True)
    certs = make_certs(work) if mtls else None
    run = Running()
    inbound = free_port()
    _start_envoy(
        envoy, run, d, "inbound",
        _envoy_listener(inbound, proto, "app", certs),
        _envoy_cluster("app", upstream, proto, None),
    )
    if hops == 1:
        return Setup(inbound, run)
    outbound = free_port()
    _start_envoy(
        envoy, run, d, "outbound",
        _envoy_listener(outbound, proto, "peer", None),
        _envoy_cluster("peer", inbound, proto, certs),
    )
    return Setup(outbound, run)


# -------------------------------------------------------------------------------------- HAProxy


def _start_haproxy(
    run: Running,
    d: Path,
    name: str,
    port: int,
    target: int,
    proto: str,
    bind_tls: Path | None = None,
    server_tls: Path | None = None,
) -> None:
    """One HAProxy process. `bind_tls`: the inbound end of the mTLS hop (its listener demands a
    client certificate); `server_tls`: the outbound end (it presents one and verifies the
    server's). Both TLS 1.3 only, ECDSA P-256 certificates, `verify required`; the HTTP rows
    speak HTTP/2 between the hops (`alpn h2`), as Plexus's sidecars do."""
    mode = "tcp" if proto == "tcp" else "http"
    h2 = " proto h2" if proto == "h2" else ""
    alpn = " alpn h2" if mode == "http" else ""
    bind = h2
    if bind_tls is not None:
        bind = f" ssl crt {bind_tls}/server.pem ca-file {bind_tls}/ca.crt verify required{alpn}"
    server = h2
    if server_tls is not None:
        server = (f" ssl crt {server_tls}/client.pem ca-file {server_tls}/ca.crt verify required"
                  f" sni str(web){alpn}")
    conf = d / f"{name}.cfg"
    conf.write_text(
        f"""global
  nbthread 1
  maxconn 5000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode {mode}
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  maxconn 5000
frontend front
  bind 127.0.0.1:{port}{bind}
  default_backend back
backend back
  http-reuse always
  server s1 127.0.0.1:{target}{server}
""".replace("  http-reuse always\n", "  http-reuse always\n" if mode == "http" else "")
    )
    run.start(["haproxy", "-db", "-f", str(conf)], PROXY_CORE, d / f"{name}.log", proxy=True)
    wait_port(port)


def start_haproxy(work: Path, upstream: int, hops: int, proto: str, mtls: bool = False) -> Setup:
    """One hop: frontend → nginx. Two hops: outbound HAProxy → inbound HAProxy → nginx, the
    middle hop in mTLS when asked."""
    d = work / f"haproxy-{hops}-{proto}-{'mtls' if mtls else 'plain'}"
    d.mkdir(parents=True, exist_ok=True)
    certs = make_certs(work) if mtls else None
    run = Running()
    inbound = free_port()
    _start_haproxy(run, d, "inbound", inbound, upstream, proto, bind_tls=certs)
    if hops == 1:
        return Setup(inbound, run)
    outbound = free_port()
    _start_haproxy(run, d, "outbound", outbound, inbound, proto, server_tls=certs)
    return Setup(outbound, run)


def which(name: str, fallback: Path) -> str:
    found = shutil.which(name)
    if found:
        return found
    if fallback.exists():
        return str(fallback)
    raise SystemExit(f"{name} not found: run bench/run.sh, which installs it")


def proc_cpu_seconds(pid: int) -> float:
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime is field 14, stime field 15 (1-based).
    utime, stime = int(fields[11]), int(fields[12])
    return utime / os.sysconf("SC_CLK_TCK"), stime / os.sysconf("SC_CLK_TCK")


def proc_mem_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out
