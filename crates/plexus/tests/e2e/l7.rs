//! The L7 data path through real `plexus proxy` processes: HTTP/1.1 (reqwest) and h2c (curl)
//! through two mTLS sidecars over one pooled HTTP/2 connection, intentions per request, gRPC
//! unary and server-streaming with Google's Python gRPC client, and the errors the sidecar makes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use plexus_test::upstream::{GrpcHealthStub, HttpStub};
use plexus_test::{Dev, Sidecar, eventually, free_port};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{dev, write_file};

/// The `client` service: its sidecar has one upstream, `destination`, on `upstream_port`, with
/// `protocol` in the upstream's `config` when given (Consul's key).
pub(crate) fn client_hcl(destination: &str, upstream_port: u16, protocol: Option<&str>) -> String {
    let config = protocol
        .map(|protocol| format!("config = {{ protocol = \"{protocol}\" }}"))
        .unwrap_or_default();
    format!(
        r#"
services {{
  name = "client"
  port = 8080
  connect {{
    sidecar_service {{
      port = {client_port}
      proxy {{
        upstreams {{
          destination_name = "{destination}"
          local_bind_port  = {upstream_port}
          {config}
        }}
      }}
    }}
  }}
}}
"#,
        client_port = free_port()
    )
}

/// One app instance `id` of service `name` on `port`, with a TCP check on the port (so stopping
/// the app makes the instance critical), `extra` lines (e.g. `meta`), and a sidecar on
/// `sidecar_port` declaring `protocol` when given.
pub(crate) fn app_hcl(
    (id, name, port): (&str, &str, u16),
    extra: &str,
    sidecar_port: u16,
    protocol: Option<&str>,
) -> String {
    let config = protocol
        .map(|protocol| format!("config = {{ protocol = \"{protocol}\" }}"))
        .unwrap_or_default();
    format!(
        r#"
services {{
  id   = "{id}"
  name = "{name}"
  port = {port}
  {extra}
  check {{
    tcp      = "127.0.0.1:{port}"
    interval = "1s"
    timeout  = "500ms"
  }}
  connect {{
    sidecar_service {{
      port = {sidecar_port}
      proxy {{
        {config}
      }}
    }}
  }}
}}
"#
    )
}

/// `client → <name>` with both sides declaring `protocol` (Consul's proxy `config` key).
fn mesh_hcl(name: &str, app_port: u16, upstream_port: u16, protocol: &str) -> String {
    client_hcl(name, upstream_port, Some(protocol))
        + &app_hcl((name, name, app_port), "", free_port(), Some(protocol))
}

/// A dev server, the two sidecars, and the client's upstream address.
pub(crate) struct L7Mesh {
    pub(crate) dev: Dev,
    pub(crate) client: Sidecar,
    pub(crate) server: Sidecar,
    pub(crate) upstream: SocketAddr,
    _dir: tempfile::TempDir,
}

impl L7Mesh {
    pub(crate) async fn start(name: &str, app_port: u16, protocol: &str) -> L7Mesh {
        Self::start_env(name, app_port, protocol, &[]).await
    }

    /// The same with environment variables for both sidecars.
    async fn start_env(name: &str, app_port: u16, protocol: &str, envs: &[(&str, &str)]) -> L7Mesh {
        let upstream_port = free_port();
        let (dir, file) = write_file(
            "mesh.hcl",
            &mesh_hcl(name, app_port, upstream_port, protocol),
        );
        let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
        let client = dev.sidecar_env("client", envs).await.unwrap();
        let server = dev.sidecar_env(name, envs).await.unwrap();
        eventually!(server.is_ready().await);
        eventually!(
            client.is_ready().await
                && client.endpoints(name).await.map(|e| e.len()).unwrap_or(0) == 1
        );
        L7Mesh {
            dev,
            client,
            server,
            upstream: ([127, 0, 0, 1], upstream_port).into(),
            _dir: dir,
        }
    }
}

fn requests(direction: &str, upstream: &str, class: &str, grpc_status: &str) -> String {
    format!(
        "plexus_proxy_http_requests_total{{direction=\"{direction}\",upstream=\"{upstream}\",route=\"default\",class=\"{class}\",grpc_status=\"{grpc_status}\"}}"
    )
}

const CONNECTIONS: &str =
    "plexus_proxy_http_upstream_connections_total{direction=\"outbound\",upstream=\"web\"}";

/// Both sidecars on one thread each (`PLEXUS_THREADS=1`: tokio's single-threaded scheduler, what
/// a sidecar pinned to one core runs; the other tests run the threaded one on this machine's cores).
#[tokio::test]
async fn http1_and_h2c_through_two_mtls_sidecars_share_one_pooled_connection() {
    let web = HttpStub::start_named("v1").await.unwrap();
    let mesh = L7Mesh::start_env("web", web.addr.port(), "http", &[("PLEXUS_THREADS", "1")]).await;
    let url = format!("http://{}/hello?x=1", mesh.upstream);

    // HTTP/1.1 keep-alive from the app; the web app sees HTTP/1.1 and a new traceparent.
    let http1 = reqwest::Client::new();
    for _ in 0..20 {
        let response = http1.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-version"], "v1");
        assert_eq!(response.text().await.unwrap(), "v1");
    }
    assert_eq!(web.requests(), 20);
    assert_eq!(web.last_version(), "HTTP/1.1");
    // The Host the app's client asked for, across the HTTP/2 hop (`:authority`) and back.
    assert_eq!(web.last_authority(), mesh.upstream.to_string());
    let created = web.last_traceparent().expect("a traceparent is created");
    assert!(
        created.starts_with("00-") && created.len() == 55,
        "{created}"
    );
    // An existing traceparent keeps its trace id; each sidecar hop sets a new parent id.
    let mine = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = http1
        .get(&url)
        .header("traceparent", mine)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = web.last_traceparent().unwrap();
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && seen.ends_with("-01"),
        "{seen}"
    );
    assert_ne!(seen, mine);

    // h2c from the app (curl, prior knowledge).
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-D", "-", &url])
        .output()
        .await
        .expect("curl runs (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.ends_with("v1"), "{text}");
    assert_eq!(web.requests(), 22);

    // Metrics match the traffic: 22 requests each way, over one connection between sidecars.
    let outbound = mesh
        .client
        .metric(&requests("outbound", "web", "2xx", ""))
        .await
        .unwrap();
    assert_eq!(outbound, 22.0);
    let inbound = mesh
        .server
        .metric(&requests("inbound", "local_app", "2xx", ""))
        .await
        .unwrap();
    assert_eq!(inbound, 22.0);
    assert_eq!(mesh.client.metric(CONNECTIONS).await.unwrap(), 1.0);
    assert_eq!(
        mesh.client
            .metric("plexus_proxy_http_request_duration_seconds_count{direction=\"outbound\",upstream=\"web\"}")
            .await
            .unwrap(),
        22.0
    );

    // Intentions decide every request on the pooled connection: a deny answers 403
    // `x-plexus-error: denied` without reaching the app; an allow restores.
    let (code, _, err) = mesh
        .dev
        .cli(&["intention", "create", "--deny", "client", "web"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    eventually!(
        http1
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 403 && r.headers()["x-plexus-error"] == "denied")
    );
    let served = web.requests();
    let (code, _, err) = mesh
        .dev
        .cli(&["intention", "delete", "client", "web"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    eventually!(
        http1
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    );
    assert_eq!(web.requests(), served + 1);
    assert!(
        mesh.server
            .metric("plexus_proxy_http_local_responses_total{direction=\"inbound\",upstream=\"local_app\",reason=\"denied\"}")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(mesh.client.metric(CONNECTIONS).await.unwrap(), 1.0);

    // The app goes away: the web sidecar answers 502 `upstream_connect_failure` (or
    // `upstream_reset` for a request sent on a pooled keep-alive connection the app closed as
    // it went) until the health check takes the instance out; then the client sidecar says 503
    // `no_healthy_endpoints`.
    drop(web);
    let mut reasons = Vec::new();
    eventually!({
        let response = http1.get(&url).send().await.unwrap();
        let reason = response
            .headers()
            .get("x-plexus-error")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status().as_u16();
        if let Some(reason) = &reason
            && !reasons.contains(&(status, reason.clone()))
        {
            reasons.push((status, reason.clone()));
        }
        reason.as_deref() == Some("no_healthy_endpoints")
    });
    assert!(
        reasons.contains(&(503, "no_healthy_endpoints".to_owned())),
        "{reasons:?}"
    );
    for (status, reason) in &reasons {
        assert!(
            matches!(
                (*status, reason.as_str()),
                (502, "upstream_connect_failure" | "upstream_reset")
                    | (503, "no_healthy_endpoints")
            ),
            "{reasons:?}"
        );
    }
}

/// The venv's Python with grpcio (installed by `scripts/setup-test-env.sh`).
pub(crate) fn python() -> PathBuf {
    let python = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.tools/venv/bin/python"
    ));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_health.v1.health_pb2_grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Python grpcio is missing: run scripts/setup-test-env.sh (looked in {})",
        python.display()
    );
    python
}

/// A unary Check, then a server-streaming Watch that prints each status it receives and waits
/// for a line on stdin before reading the next.
const GRPC_CLIENT: &str = r#"
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
stub = health_pb2_grpc.HealthStub(channel)
reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
print("check", health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), flush=True)
try:
    stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
except grpc.RpcError as error:
    print("unknown", error.code().name, flush=True)
watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
for update in watch:
    print("watch", health_pb2.HealthCheckResponse.ServingStatus.Name(update.status), flush=True)
    if sys.stdin.readline().strip() == "done":
        break
"#;

/// An app declared `http2` gets the host its caller asked for as `:authority`, as an HTTP/1.1
/// app gets it as `Host` (it used to get its own socket address).
#[tokio::test]
async fn an_h2c_app_sees_the_host_its_caller_asked_for() {
    let web = HttpStub::start_named("v1").await.unwrap();
    let mesh = L7Mesh::start("web", web.addr.port(), "http2").await;
    let url = format!("http://{}/hello", mesh.upstream);
    let response = reqwest::Client::new()
        .get(&url)
        .header("host", "web.internal:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(web.last_version(), "HTTP/2.0");
    assert_eq!(web.last_authority(), "web.internal:8080");
}

#[tokio::test]
async fn grpc_unary_and_server_streaming_through_two_mtls_sidecars_with_grpcio() {
    let python = python();
    let grpc = GrpcHealthStub::start().await.unwrap();
    let mesh = L7Mesh::start("health", grpc.addr.port(), "grpc").await;

    let mut child = tokio::process::Command::new(python)
        .args(["-c", GRPC_CLIENT, &mesh.upstream.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("grpc client answers within 20 s")
            .unwrap()
            .unwrap_or_default()
    };
    assert_eq!(next().await, "check SERVING");
    assert_eq!(next().await, "unknown NOT_FOUND");
    assert_eq!(next().await, "watch SERVING");
    // The stream stays open through both sidecars and carries the next update.
    grpc.set_serving(false).await;
    stdin.write_all(b"more\n").await.unwrap();
    assert_eq!(next().await, "watch NOT_SERVING");
    stdin.write_all(b"done\n").await.unwrap();
    let status = child.wait().await.unwrap();
    assert!(status.success());

    // Every call was a 200; the unary OK's status came in trailers after the body, the
    // NOT_FOUND as a trailers-only response; the Watch the client cancelled has none.
    // (The cancelled stream is counted when the sidecar sees the reset, maybe a bit later.)
    eventually!({
        let mut labelled = Vec::new();
        for status in ["", "0", "5"] {
            let series = requests("outbound", "health", "2xx", status);
            labelled.push(mesh.client.metric(&series).await.unwrap());
        }
        labelled == [1.0, 1.0, 1.0]
    });
}

/// Writes a config entry through `/v1/config` and checks it was stored.
pub(crate) async fn write_entry(dev: &Dev, entry: serde_json::Value) {
    let (status, body, _) = crate::http(
        "PUT",
        &format!("http://{}/v1/config", dev.addr()),
        Some(entry.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Waits until the client sidecar has applied the chain of `service` as the control plane
/// has it now (a "policy applied" line with at least the chain's current index).
pub(crate) async fn applied(dev: &Dev, client: &Sidecar, service: &str) {
    let (status, _, headers) = crate::http(
        "GET",
        &format!("http://{}/v1/discovery-chain/{service}", dev.addr()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
    eventually!(client.process.output().lines().any(|line| {
        line.contains("policy applied")
            && line
                .split("revision=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= index)
    }));
}

/// (status, x-plexus-error) of one GET.
pub(crate) async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    let response = http.get(url).send().await.unwrap();
    let reason = response
        .headers()
        .get("x-plexus-error")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), reason)
}

#[tokio::test]
async fn policies_from_config_entries_apply_live_fault_rate_limit_retries_timeout() {
    let web = HttpStub::start_named("v1").await.unwrap();
    let mesh = L7Mesh::start("web", web.addr.port(), "http").await;
    let url = format!("http://{}/api", mesh.upstream);
    let http = reqwest::Client::new();

    // 50 % abort fault: 50 ± 5 % errors over 2,000 requests, each saying why.
    write_entry(
        &mesh.dev,
        serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
            "FaultInjection": {"Abort": {"HttpStatus": 503, "Percent": 50}}}),
    )
    .await;
    applied(&mesh.dev, &mesh.client, "web").await;
    let before = web.requests();
    let mut aborted = 0u32;
    for _ in 0..2000 {
        match get(&http, &url).await {
            (200, reason) if reason.is_empty() => {}
            (503, reason) if reason == "fault_injected" => aborted += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((900..=1100).contains(&aborted), "{aborted} of 2000 aborted");
    assert_eq!(web.requests() - before, 2000 - aborted as usize);
    assert_eq!(
        mesh.client
            .metric("plexus_proxy_http_faults_injected_total{upstream=\"web\",kind=\"abort\"}")
            .await
            .unwrap(),
        f64::from(aborted)
    );

    // Rate limit: 5/s with a burst of 5. Of 40 requests sent at once-ish, no more than the
    // burst plus what refilled while they ran get through; the rest are 429 `rate_limited`.
    write_entry(
        &mesh.dev,
        serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
            "RateLimits": {"InstanceLevel": {"RequestsPerSecond": 5, "RequestsMaxBurst": 5}}}),
    )
    .await;
    applied(&mesh.dev, &mesh.client, "web").await;
    let started = std::time::Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    for _ in 0..40 {
        match get(&http, &url).await {
            (200, _) => ok += 1,
            (429, reason) if reason == "rate_limited" => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let allowed = 5.0 + 5.0 * started.elapsed().as_secs_f64() + 1.0;
    assert!(
        ok >= 5 && f64::from(ok) <= allowed,
        "{ok} passed, {allowed} allowed"
    );
    assert_eq!(ok + limited, 40);

    // Retries: a 1-in-3 failing upstream, 2 retries on 503: every request succeeds.
    write_entry(
        &mesh.dev,
        serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
    )
    .await;
    write_entry(
        &mesh.dev,
        serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/slow"}},
             "Destination": {"RequestTimeout": "200ms"}},
            {"Match": {"HTTP": {"PathPrefix": "/"}},
             "Destination": {"NumRetries": 2, "RetryOnStatusCodes": [503]}}]}),
    )
    .await;
    applied(&mesh.dev, &mesh.client, "web").await;
    web.fail_every(3);
    let before = web.requests();
    for _ in 0..300 {
        assert_eq!(get(&http, &url).await, (200, String::new()));
    }
    let served = web.requests() - before;
    let retries = mesh
        .client
        .metric("plexus_proxy_http_retries_total{direction=\"outbound\",upstream=\"web\"}")
        .await
        .unwrap();
    assert_eq!(served as f64, 300.0 + retries);
    assert!(retries >= 100.0, "{retries}");

    // Per-route timeout: 504 `timeout` from the route that has one.
    web.fail_every(0);
    web.set_delay(Duration::from_secs(2));
    assert_eq!(
        get(&http, &format!("http://{}/slow", mesh.upstream)).await,
        (504, "timeout".to_owned())
    );
    assert!(
        mesh.client
            .metric("plexus_proxy_http_local_responses_total{direction=\"outbound\",upstream=\"web\",reason=\"timeout\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

/// Sends raw bytes on a fresh connection; returns what the sidecar answered and whether it
/// closed the connection (within 5 s: a connection still open then counts as not closed).
pub(crate) async fn raw(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

#[tokio::test]
async fn http1_smuggling_attempts_are_refused_or_defused_and_big_headers_get_431() {
    let web = HttpStub::start_named("v1").await.unwrap();
    let mesh = L7Mesh::start("web", web.addr.port(), "http").await;
    let cases: [(&str, &[u8]); 3] = [
        (
            "two different content-lengths",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "bare CR in a header",
            b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\rb\r\n\r\n",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\r\n b\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (name, request) in cases {
        let (answer, closed) = raw(mesh.upstream, request).await;
        let statuses = answer.matches("HTTP/1.1 ").count();
        if !answer.starts_with("HTTP/1.1 400") || statuses != 1 || !closed {
            failures.push(format!("{name}: closed={closed} {answer:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(web.requests(), 0, "nothing reached the app");

    // Content-Length with Transfer-Encoding: hyper reads the body as chunked (the
    // Content-Length is dropped), answers that one request and closes the connection, so the
    // request hidden behind it is never read.
    let (answer, closed) = raw(
        mesh.upstream,
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer:?}");
    assert!(closed && answer.contains("connection: close"), "{answer:?}");
    assert_eq!(
        web.requests(),
        1,
        "the smuggled request never reached the app"
    );

    // An invalid chunk size is only seen once the body streams: the request head may already
    // be on its way to the app (as with any streaming proxy), but the sidecar answers 400,
    // closes, and what follows the bad chunk is never read as a request.
    let (answer, closed) = raw(
        mesh.upstream,
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.matches("HTTP/1.1 ").count() == 1 && closed,
        "invalid chunk size: closed={closed} {answer:?}"
    );
    assert!(
        web.requests() <= 2,
        "at most the cut-off request reached the app"
    );

    // Headers above 64 KiB: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: web\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let (answer, closed) = raw(mesh.upstream, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431") && closed, "{answer:?}");
    // The sidecar is unharmed.
    let response = reqwest::get(format!("http://{}/", mesh.upstream))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// `client → web` with two web instances, `v1` and `v2` (meta `version`), each with a sidecar.
fn two_versions_hcl(v1: u16, v2: u16, upstream_port: u16) -> String {
    let instance = |id: &str, version: &str, port: u16| {
        let meta = format!("meta = {{ version = \"{version}\" }}");
        app_hcl((id, "web", port), &meta, free_port(), Some("http"))
    };
    client_hcl("web", upstream_port, Some("http"))
        + &instance("web-1", "v1", v1)
        + &instance("web-2", "v2", v2)
}

#[tokio::test]
async fn split_90_10_over_2000_requests_and_header_routing_to_the_canary() {
    let (v1, v2) = (
        HttpStub::start_named("v1").await.unwrap(),
        HttpStub::start_named("v2").await.unwrap(),
    );
    let upstream_port = free_port();
    let (_dir, file) = write_file(
        "mesh.hcl",
        &two_versions_hcl(v1.addr.port(), v2.addr.port(), upstream_port),
    );
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    let client = dev.sidecar("client").await.unwrap();
    let web1 = dev.sidecar("web-1").await.unwrap();
    let web2 = dev.sidecar("web-2").await.unwrap();
    eventually!(web1.is_ready().await && web2.is_ready().await);
    eventually!(
        client.is_ready().await && client.endpoints("web").await.map(|e| e.len()).unwrap_or(0) == 2
    );
    for entry in [
        serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
        serde_json::json!({"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                        "v2": {"Filter": "Service.Meta.version == v2"}}}),
        serde_json::json!({"Kind": "service-splitter", "Name": "web",
            "Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                       {"Weight": 10, "ServiceSubset": "v2",
                        "ResponseHeaders": {"Add": {"x-split": "10%"}}}]}),
        serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
             "Destination": {"ServiceSubset": "v2",
                 "RequestHeaders": {"Set": {"x-route": "canary"}, "Remove": ["x-debug"]},
                 "ResponseHeaders": {"Set": {"x-version": "canary"}}}}]}),
    ] {
        write_entry(&dev, entry).await;
    }
    applied(&dev, &client, "web").await;

    let url = format!("http://127.0.0.1:{upstream_port}/");
    let http = reqwest::Client::new();
    let mut to_v2 = 0;
    for _ in 0..2000 {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        if from_the_v2_split(&response, "v2") {
            to_v2 += 1;
        }
    }
    // 10 % ± 3 % of 2,000.
    assert!((140..=260).contains(&to_v2), "{to_v2} of 2000 went to v2");
    assert_eq!(v1.requests() + v2.requests(), 2000);

    // The header route sends every canary request to v2, with its header changes: the route's
    // Set replaces the app's x-version.
    for _ in 0..50 {
        let response = http
            .get(&url)
            .header("x-canary", "1")
            .header("x-debug", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-version"], "canary");
        assert_eq!(response.text().await.unwrap(), "v2");
    }
    assert_canary_request(&v2);
}

/// Whether `response` came from the v2 split (its app's `x-version` is `v2`), checking that the
/// split's response header (`x-split: 10%`) came with it, and only with it.
pub(crate) fn from_the_v2_split(response: &reqwest::Response, v2: &str) -> bool {
    let split = response.headers().get("x-split").map(|v| v.as_bytes());
    let from_v2 = response.headers()["x-version"] == v2;
    assert_eq!(split, from_v2.then_some(&b"10%"[..]), "x-split");
    from_v2
}

/// Checks that the canary route's request changes reached `app` last: `x-route: canary` set,
/// the client's `x-debug` removed.
pub(crate) fn assert_canary_request(app: &HttpStub) {
    let seen = app.last_headers();
    assert!(
        seen.contains(&("x-route".to_owned(), "canary".to_owned())),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|(name, _)| name == "x-debug"), "{seen:?}");
}
