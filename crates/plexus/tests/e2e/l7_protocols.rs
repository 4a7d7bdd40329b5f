//! Protocols and hardening of the L7 path through real `plexus proxy` processes: WebSocket
//! (tokio-tungstenite on both ends) and `CONNECT` tunnels over the HTTP/2 hop between sidecars,
//! gRPC statuses, metrics and access logs, and the protocol chosen by `service-defaults` (HTTP/2
//! floods from a raw-frame client: `l7_floods.rs`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use plexus_test::{Dev, Sidecar, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use crate::l7::{app_hcl, client_hcl};
use crate::{dev, write_file};

/// `client → <name>`; `protocol` in both registrations when given (Consul's proxy `config`
/// key), none at all otherwise.
fn mesh_hcl(
    name: &str,
    app_port: u16,
    upstream_port: u16,
    app_sidecar_port: u16,
    protocol: Option<&str>,
) -> String {
    client_hcl(name, upstream_port, protocol)
        + &app_hcl((name, name, app_port), "", app_sidecar_port, protocol)
}

/// A dev server, the two sidecars, and the client's upstream address.
pub(crate) struct Mesh {
    pub dev: Dev,
    pub client: Sidecar,
    pub server: Sidecar,
    pub upstream: SocketAddr,
    /// The app's sidecar's inbound (mTLS) listener.
    pub inbound: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mesh {
    pub(crate) async fn start(name: &str, app_port: u16, protocol: Option<&str>) -> Mesh {
        Self::start_with(name, app_port, protocol, [&[], &[]]).await
    }

    /// The same, with extra `plexus proxy` arguments for the client's and the app's sidecar.
    pub(crate) async fn start_with(
        name: &str,
        app_port: u16,
        protocol: Option<&str>,
        [client_args, server_args]: [&[&str]; 2],
    ) -> Mesh {
        let (upstream_port, inbound_port) = (free_port(), free_port());
        let (dir, file) = write_file(
            "mesh.hcl",
            &mesh_hcl(name, app_port, upstream_port, inbound_port, protocol),
        );
        let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
        let client = dev.sidecar_with("client", client_args).await.unwrap();
        let server = dev.sidecar_with(name, server_args).await.unwrap();
        eventually!(server.is_ready().await);
        eventually!(
            client.is_ready().await
                && client.endpoints(name).await.map(|e| e.len()).unwrap_or(0) == 1
        );
        Mesh {
            dev,
            client,
            server,
            upstream: ([127, 0, 0, 1], upstream_port).into(),
            inbound: ([127, 0, 0, 1], inbound_port).into(),
            _dir: dir,
        }
    }
}

fn requests(direction: &str, upstream: &str, class: &str) -> String {
    grpc_requests(direction, upstream, class, "")
}

fn grpc_requests(direction: &str, upstream: &str, class: &str, grpc_status: &str) -> String {
    format!(
        "plexus_proxy_http_requests_total{{direction=\"{direction}\",upstream=\"{upstream}\",route=\"default\",class=\"{class}\",grpc_status=\"{grpc_status}\"}}"
    )
}

/// An app that speaks WebSocket (tokio-tungstenite: echoes each message as `echo: …`, refuses
/// the path `/forbidden` with 403) and answers `CONNECT` like an HTTP proxy (200, then echoes
/// the tunnel's bytes). It records the request lines it saw.
struct TunnelApp {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TunnelApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TunnelApp {
    async fn start() -> TunnelApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Self::serve(stream, Arc::clone(&recorded)));
            }
        });
        TunnelApp { addr, seen, task }
    }

    async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
        let mut first = [0u8; 7];
        // Health checks connect and close without a byte.
        match stream.peek(&mut first).await {
            Ok(7) => {}
            _ => return,
        }
        if &first == b"CONNECT" {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read_exact(&mut byte).await.is_err() {
                    return;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            seen.lock()
                .unwrap()
                .push(head.lines().next().unwrap_or_default().to_owned());
            if stream
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
            return;
        }
        let record = Arc::clone(&seen);
        #[allow(clippy::result_large_err)] // tungstenite's callback signature
        let callback = move |request: &Request, response: Response| {
            record
                .lock()
                .unwrap()
                .push(format!("GET {} websocket", request.uri().path()));
            if request.uri().path() == "/forbidden" {
                let mut refusal = ErrorResponse::new(Some("no".to_owned()));
                *refusal.status_mut() = http::StatusCode::FORBIDDEN;
                return Err(refusal);
            }
            Ok(response)
        };
        let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
            return;
        };
        while let Some(Ok(message)) = socket.next().await {
            let reply = match message {
                Message::Text(text) => Message::text(format!("echo: {text}")),
                Message::Binary(bytes) => Message::Binary(bytes),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    }
}

/// Reads an HTTP/1.1 response head (up to the blank line) from a raw socket.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(plexus_test::DEADLINE, stream.read(&mut byte))
            .await
            .expect("a response head within the deadline")
            .unwrap();
        assert_eq!(read, 1, "connection closed after {:?}", head);
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Sends `text` on `socket` and waits for the app's echo.
async fn echo(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    text: &str,
) {
    socket.send(Message::text(text.to_owned())).await.unwrap();
    let reply = tokio::time::timeout(plexus_test::DEADLINE, socket.next())
        .await
        .expect("an echo within the deadline")
        .expect("the socket is open")
        .unwrap();
    assert_eq!(reply, Message::text(format!("echo: {text}")));
}

/// Shutdown with a WebSocket open through both sidecars: the tunnel keeps carrying messages
/// through the drain grace period, then it is cut and `plexus proxy` exits (an open tunnel used
/// to hold it forever). The inbound side first, then, with a new app sidecar, the outbound one.
#[tokio::test]
async fn an_open_websocket_does_not_hold_a_sidecar_past_its_grace_period() {
    let app = TunnelApp::start().await;
    let grace: &[&str] = &["--grace", "2s"];
    let mut mesh = Mesh::start_with("chat", app.addr.port(), Some("http"), [grace, grace]).await;
    let url = format!("ws://{}/chat", mesh.upstream);
    for side in ["inbound", "outbound"] {
        let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        echo(&mut socket, "before").await;
        let sidecar = match side {
            "inbound" => &mut mesh.server,
            _ => &mut mesh.client,
        };
        sidecar.process.signal("TERM").unwrap();
        echo(&mut socket, "while draining").await;
        let started = std::time::Instant::now();
        // `wait_exit` gives up after plexus_test::DEADLINE (30 s): far past the 2 s grace.
        let status = sidecar.process.wait_exit().await.unwrap();
        eprintln!(
            "{side} sidecar exited {:?} after SIGTERM",
            started.elapsed()
        );
        let output = sidecar.process.output();
        assert!(status.success(), "{side}: {status:?}\n{output}");
        assert!(
            output.contains("drain grace period over"),
            "{side}: the tunnel was open at the end of the grace period\n{output}"
        );
        // The tunnel was cut: the client's socket ends instead of echoing.
        let end = tokio::time::timeout(plexus_test::DEADLINE, socket.next())
            .await
            .expect("the socket ends within the deadline");
        assert!(
            !matches!(end, Some(Ok(Message::Text(_)))),
            "{side}: still echoing: {end:?}"
        );
        if side == "inbound" {
            mesh.server = mesh.dev.sidecar_with("chat", grace).await.unwrap();
            eventually!(tokio_tungstenite::connect_async(&url).await.is_ok());
        }
    }
}

#[tokio::test]
async fn websocket_and_connect_tunnels_cross_two_mtls_sidecars_over_http2() {
    let app = TunnelApp::start().await;
    let mesh = Mesh::start("chat", app.addr.port(), Some("http")).await;

    // WebSocket: a real client and server exchange messages both ways (text and a large
    // binary one) through outbound → extended CONNECT on the pooled h2 → inbound → app.
    let url = format!("ws://{}/chat", mesh.upstream);
    let (mut socket, response) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(response.status(), 101);
    for n in 0..5 {
        socket
            .send(Message::text(format!("ping {n}")))
            .await
            .unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply, Message::text(format!("echo: ping {n}")));
    }
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    socket.send(Message::binary(big.clone())).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_data().as_ref(), big.as_slice());
    socket.close(None).await.unwrap();

    // A refused upgrade comes back as the app's own response.
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/forbidden", mesh.upstream)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected a 403 refusal, got {other:?}"),
    }

    // CONNECT: the app (acting as a proxy) gets `CONNECT db.internal:5432`, and the tunnel
    // carries bytes both ways.
    let mut tunnel = TcpStream::connect(mesh.upstream).await.unwrap();
    tunnel
        .write_all(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for round in 0..3 {
        let payload: Vec<u8> = (0..64 * 1024).map(|i| ((i + round) % 256) as u8).collect();
        tunnel.write_all(&payload).await.unwrap();
        let mut back = vec![0u8; payload.len()];
        tokio::time::timeout(plexus_test::DEADLINE, tunnel.read_exact(&mut back))
            .await
            .expect("echo within the deadline")
            .unwrap();
        assert_eq!(back, payload);
    }
    drop(tunnel);

    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "GET /chat websocket",
            "GET /forbidden websocket",
            "CONNECT db.internal:5432 HTTP/1.1"
        ]
    );
    // Counted like requests (101, 403, 200), all over the one pooled connection.
    for (class, count) in [("1xx", 1.0), ("4xx", 1.0), ("2xx", 1.0)] {
        let outbound = mesh
            .client
            .metric(&requests("outbound", "chat", class))
            .await
            .unwrap();
        assert_eq!(outbound, count, "outbound {class}");
    }
    assert_eq!(
        mesh.client
            .metric(
                "plexus_proxy_http_upstream_connections_total{direction=\"outbound\",upstream=\"chat\"}"
            )
            .await
            .unwrap(),
        1.0
    );
    // The inbound sidecar answered the tunnels with 200 on the HTTP/2 hop, the refusal as is.
    for (class, count) in [("2xx", 2.0), ("4xx", 1.0)] {
        let inbound = mesh
            .server
            .metric(&requests("inbound", "local_app", class))
            .await
            .unwrap();
        assert_eq!(inbound, count, "inbound {class}");
    }

    // Intentions decide tunnels too: a denied caller's upgrade gets 403 `denied` from the
    // inbound sidecar, and the app sees nothing.
    let (code, _, err) = mesh
        .dev
        .cli(&["intention", "create", "--deny", "client", "chat"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    eventually!(matches!(
        tokio_tungstenite::connect_async(&url).await,
        Err(tokio_tungstenite::tungstenite::Error::Http(response))
            if response.status() == 403 && response.headers()["x-plexus-error"] == "denied"
    ));
    // (Attempts before the deny arrived may have reached the app; none after it does.)
    let reached = app.seen.lock().unwrap().len();
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    assert_eq!(app.seen.lock().unwrap().len(), reached);
}

/// One GET on a new connection: (status, whether the app saw a `traceparent` the sidecar made,
/// which only the L7 path does).
async fn get_fresh(url: &str, web: &plexus_test::upstream::HttpStub) -> (u16, bool) {
    let before = web.requests();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let status = http.get(url).send().await.unwrap().status().as_u16();
    assert_eq!(web.requests(), before + 1);
    (status, web.last_traceparent().is_some())
}

#[tokio::test]
async fn service_defaults_protocol_switches_the_outbound_listener_live() {
    let web = plexus_test::upstream::HttpStub::start_named("v1")
        .await
        .unwrap();
    // No protocol anywhere in the registrations.
    let mesh = Mesh::start("web", web.addr.port(), None).await;
    let url = format!("http://{}/x", mesh.upstream);
    let counted = requests("outbound", "web", "2xx");

    // No service-defaults: the L4 path (bytes spliced, no traceparent added, no HTTP metrics).
    assert_eq!(get_fresh(&url, &web).await, (200, false));
    assert_eq!(mesh.client.metric(&counted).await.unwrap(), 0.0);

    // Protocol = "http": new connections take the L7 path.
    let defaults = |protocol: &str| serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": protocol});
    write_entry(&mesh.dev, defaults("http")).await;
    eventually!(get_fresh(&url, &web).await == (200, true));
    let l7 = mesh.client.metric(&counted).await.unwrap();
    assert!(l7 >= 1.0, "{l7}");
    // A keep-alive connection opened now stays on the L7 path…
    let kept = reqwest::Client::new();
    assert_eq!(kept.get(&url).send().await.unwrap().status(), 200);
    assert!(web.last_traceparent().is_some());

    // …and Protocol = "tcp" takes new connections back to L4.
    write_entry(&mesh.dev, defaults("tcp")).await;
    eventually!(get_fresh(&url, &web).await == (200, false));
    let l4 = mesh.client.metric(&counted).await.unwrap();
    assert_eq!(get_fresh(&url, &web).await, (200, false));
    assert_eq!(mesh.client.metric(&counted).await.unwrap(), l4);

    // A bad Protocol is refused with the field named, and the running protocol is kept.
    let (status, body, _) = crate::http(
        "PUT",
        &format!("http://{}/v1/config", mesh.dev.addr()),
        Some(defaults("smtp").to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "Protocol", "{body}");
    assert_eq!(get_fresh(&url, &web).await, (200, false));
    assert!(mesh.client.is_ready().await && mesh.server.is_ready().await);
}

/// Writes a config entry through `/v1/config` and checks it was stored.
async fn write_entry(dev: &Dev, entry: serde_json::Value) {
    let (status, body, _) = crate::http(
        "PUT",
        &format!("http://{}/v1/config", dev.addr()),
        Some(entry.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A grpcio server with raw-bytes methods: `Ok` answers, `Unavailable` sends its headers and
/// then fails UNAVAILABLE, `Stream` sends one message and then fails NOT_FOUND (both statuses
/// in trailers after the headers, not trailers-only).
const GRPC_SERVER: &str = r#"
import grpc
from concurrent import futures
def ok(request, context):
    return b"pong"
def unavailable(request, context):
    context.send_initial_metadata((("x-stage", "headers"),))
    context.abort(grpc.StatusCode.UNAVAILABLE, "backend gone")
def stream(request, context):
    yield b"one"
    context.abort(grpc.StatusCode.NOT_FOUND, "no more")
handler = grpc.method_handlers_generic_handler("plexus.Test", {
    "Ok": grpc.unary_unary_rpc_method_handler(ok),
    "Unavailable": grpc.unary_unary_rpc_method_handler(unavailable),
    "Stream": grpc.unary_stream_rpc_method_handler(stream),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print("listening", port, flush=True)
server.wait_for_termination()
"#;

const GRPC_CALLS: &str = r#"
import sys, grpc
channel = grpc.insecure_channel(sys.argv[1])
print("ok", channel.unary_unary("/plexus.Test/Ok")(b"ping", timeout=10).decode(), flush=True)
try:
    channel.unary_unary("/plexus.Test/Unavailable")(b"x", timeout=10)
except grpc.RpcError as error:
    print("unary", error.code().name, flush=True)
got = []
try:
    for message in channel.unary_stream("/plexus.Test/Stream")(b"x", timeout=10):
        got.append(message.decode())
except grpc.RpcError as error:
    print("stream", ",".join(got), error.code().name, flush=True)
"#;

#[tokio::test]
async fn grpc_status_sent_in_trailers_after_data_is_in_the_request_metric() {
    let python = crate::l7::python();
    let (_server, port) = grpc_server(&python).await;
    let mesh = Mesh::start("svc", port, Some("grpc")).await;

    let out = tokio::process::Command::new(&python)
        .args(["-c", GRPC_CALLS, &mesh.upstream.to_string()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["ok pong", "unary UNAVAILABLE", "stream one NOT_FOUND"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each call's status, wherever it came, labels its request on both sidecars.
    for (sidecar, direction, upstream) in [
        (&mesh.client, "outbound", "svc"),
        (&mesh.server, "inbound", "local_app"),
    ] {
        for status in ["0", "14", "5"] {
            let series = grpc_requests(direction, upstream, "2xx", status);
            assert_eq!(sidecar.metric(&series).await.unwrap(), 1.0, "{series}");
        }
        let unlabelled = grpc_requests(direction, upstream, "2xx", "");
        assert_eq!(
            sidecar.metric(&unlabelled).await.unwrap(),
            0.0,
            "{unlabelled}"
        );
    }
}

/// The JSON lines of an access log file.
fn access_log(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each access log line is JSON"))
        .collect()
}

#[tokio::test]
async fn metrics_and_access_logs_match_a_known_mix_and_trace_context_is_carried() {
    let web = plexus_test::upstream::HttpStub::start_named("v1")
        .await
        .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (client_log, server_log) = (
        logs.path().join("client.log"),
        logs.path().join("server.log"),
    );
    let client_args = ["--access-log", client_log.to_str().unwrap()];
    let server_args = ["--access-log", server_log.to_str().unwrap()];
    let mesh = Mesh::start_with(
        "web",
        web.addr.port(),
        Some("http"),
        [&client_args, &server_args],
    )
    .await;
    let url = format!("http://{}/mix?secret=1", mesh.upstream);
    let http = reqwest::Client::new();
    // Requests carrying `x-fault: 1` are aborted with 503 by the client's sidecar.
    write_entry(
        &mesh.dev,
        serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
            "FaultInjection": {"Abort": {"HttpStatus": 503, "Percent": 100},
                               "Header": {"Name": "x-fault", "Value": "1"}}}),
    )
    .await;
    let mut seen: std::collections::BTreeMap<u16, u32> = Default::default();
    let mut send = async |fault: bool, traceparent: Option<&str>| {
        let mut request = http.get(&url);
        if fault {
            request = request.header("x-fault", "1");
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let local = response.headers().get("x-plexus-error").is_some();
        *seen.entry(status).or_default() += 1;
        (status, local)
    };
    // K local 503s (waiting for the policy to arrive counts what it sees too).
    let mut local = 0;
    while local < 10 {
        let (status, by_sidecar) = send(true, None).await;
        if by_sidecar {
            assert_eq!(status, 503);
            local += 1;
        } else {
            assert_eq!(status, 200, "before the fault policy arrived");
        }
    }
    // N 2xx, one without and one with a traceparent.
    for _ in 0..18 {
        assert_eq!(send(false, None).await, (200, false));
    }
    assert_eq!(send(false, None).await, (200, false));
    let created = web.last_traceparent().expect("a traceparent is created");
    let parts: Vec<&str> = created.split('-').collect();
    assert_eq!(parts.len(), 4, "{created}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len()),
        ("00", 32, 16),
        "{created}"
    );
    let mine = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(send(false, Some(mine)).await, (200, false));
    let carried = web.last_traceparent().unwrap();
    assert!(
        carried.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{carried}"
    );
    assert!(carried.ends_with("-01") && carried != mine, "{carried}");
    // M 5xx from the app.
    web.set_status(500);
    for _ in 0..7 {
        assert_eq!(send(false, None).await, (500, false));
    }

    let count = |status: u16| f64::from(seen.get(&status).copied().unwrap_or(0));
    let total: u32 = seen.values().sum();
    let expected_outbound = [("2xx", count(200)), ("5xx", count(500) + count(503))];
    let expected_inbound = [("2xx", count(200)), ("5xx", count(500))];
    for (class, expected) in expected_outbound {
        let series = requests("outbound", "web", class);
        assert_eq!(
            mesh.client.metric(&series).await.unwrap(),
            expected,
            "{series}"
        );
    }
    for (class, expected) in expected_inbound {
        let series = requests("inbound", "local_app", class);
        assert_eq!(
            mesh.server.metric(&series).await.unwrap(),
            expected,
            "{series}"
        );
    }
    assert_eq!(count(503), 10.0);
    assert_eq!(
        mesh.client
            .metric("plexus_proxy_http_local_responses_total{direction=\"outbound\",upstream=\"web\",reason=\"fault_injected\"}")
            .await
            .unwrap(),
        10.0
    );

    // The access logs have one line per request, each side's own.
    let outbound = access_log(&client_log);
    assert_eq!(outbound.len(), total as usize);
    let inbound = access_log(&server_log);
    assert_eq!(inbound.len(), (total - 10) as usize);
    for line in &outbound {
        assert_eq!(line["direction"], "outbound", "{line}");
        assert_eq!(line["upstream"], "web", "{line}");
        assert_eq!(
            (&line["method"], &line["path"]),
            (&"GET".into(), &"/mix".into()),
            "{line}"
        );
        assert!(
            line["trace_id"].as_str().is_some_and(|id| id.len() == 32),
            "{line}"
        );
        assert!(
            line["duration_ms"].as_f64().is_some() && line["time"].is_string(),
            "{line}"
        );
        let local = line["status"] == 503;
        assert_eq!(line["error"] == "fault_injected", local, "{line}");
    }
    for line in &inbound {
        assert_eq!(
            (&line["direction"], &line["peer"]),
            (&"inbound".into(), &"client".into())
        );
    }
    let mine_logged = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .filter(|line| line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736")
            .count()
    };
    assert_eq!((mine_logged(&outbound), mine_logged(&inbound)), (1, 1));
    let statuses = |lines: &[serde_json::Value], status: u16| {
        lines.iter().filter(|line| line["status"] == status).count() as f64
    };
    assert_eq!(statuses(&outbound, 500), count(500));
    assert_eq!(statuses(&inbound, 200), count(200));
}

#[tokio::test]
async fn an_access_log_that_cannot_be_opened_stops_the_proxy_with_its_path() {
    let out = std::process::Command::new(crate::bin())
        .args([
            "proxy",
            "--sidecar-for",
            "web",
            "--admin-addr",
            "127.0.0.1:0",
            "--access-log",
            "/nonexistent-dir/access.log",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--access-log /nonexistent-dir/access.log"),
        "{stderr}"
    );
}

/// Starts [`GRPC_SERVER`]; returns the process and its port.
async fn grpc_server(python: &std::path::Path) -> (tokio::process::Child, u16) {
    use tokio::io::AsyncBufReadExt;
    let mut server = tokio::process::Command::new(python)
        .args(["-c", GRPC_SERVER])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(plexus_test::DEADLINE, lines.next_line())
        .await
        .expect("the grpc server starts")
        .unwrap()
        .unwrap();
    let port = line.strip_prefix("listening ").unwrap().parse().unwrap();
    (server, port)
}

#[tokio::test]
async fn service_defaults_grpc_makes_both_sidecars_speak_grpc_to_an_unannotated_service() {
    let python = crate::l7::python();
    let (_server, port) = grpc_server(&python).await;
    let mesh = Mesh::start("svc", port, None).await;
    let call = async || {
        let out = tokio::process::Command::new(&python)
            .args([
                "-c",
                "import sys, grpc; print(grpc.insecure_channel(sys.argv[1]).unary_unary('/plexus.Test/Ok')(b'ping', timeout=10).decode())",
                &mesh.upstream.to_string(),
            ])
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let ok_out = grpc_requests("outbound", "svc", "2xx", "0");
    let ok_in = grpc_requests("inbound", "local_app", "2xx", "0");
    // Without an entry the bytes go through L4 (gRPC works, no HTTP metrics).
    assert_eq!(call().await, "pong");
    assert_eq!(mesh.client.metric(&ok_out).await.unwrap(), 0.0);

    // Protocol = "grpc": the client's sidecar takes the HTTP/2 path and the app's sidecar
    // reaches the app over h2c (HTTP/1.1 would fail the call).
    write_entry(
        &mesh.dev,
        serde_json::json!({"Kind": "service-defaults", "Name": "svc", "Protocol": "grpc"}),
    )
    .await;
    eventually!(call().await == "pong" && mesh.client.metric(&ok_out).await.unwrap() >= 1.0);
    let before = mesh.server.metric(&ok_in).await.unwrap();
    assert!(before >= 1.0, "{before}");
    assert_eq!(call().await, "pong");
    assert_eq!(mesh.server.metric(&ok_in).await.unwrap(), before + 1.0);
}
