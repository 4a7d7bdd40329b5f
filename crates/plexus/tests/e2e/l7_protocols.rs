//! Protocols and hardening of the L7 path through real `plexus proxy` processes: WebSocket
//! (tokio-tungstenite on both ends) and `CONNECT` tunnels over the HTTP/2 hop between sidecars,
//! HTTP/2 floods from a raw-frame client, and the protocol chosen by `service-defaults`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use plexus_test::{Dev, Sidecar, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use crate::{dev, write_file};

/// `client → <name>`; `protocol` in both registrations when given (Consul's proxy `config`
/// key), none at all otherwise.
fn mesh_hcl(name: &str, app_port: u16, upstream_port: u16, protocol: Option<&str>) -> String {
    let (client_port, app_sidecar_port) = (free_port(), free_port());
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
          destination_name = "{name}"
          local_bind_port  = {upstream_port}
          {config}
        }}
      }}
    }}
  }}
}}
services {{
  name = "{name}"
  port = {app_port}
  check {{
    tcp      = "127.0.0.1:{app_port}"
    interval = "1s"
    timeout  = "500ms"
  }}
  connect {{
    sidecar_service {{
      port = {app_sidecar_port}
      proxy {{
        {config}
      }}
    }}
  }}
}}
"#
    )
}

/// A dev server, the two sidecars, and the client's upstream address.
pub(crate) struct Mesh {
    pub dev: Dev,
    pub client: Sidecar,
    pub server: Sidecar,
    pub upstream: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mesh {
    pub(crate) async fn start(name: &str, app_port: u16, protocol: Option<&str>) -> Mesh {
        Self::start_with(name, app_port, protocol, &[]).await
    }

    /// The same, with extra `plexus proxy` arguments for both sidecars.
    pub(crate) async fn start_with(
        name: &str,
        app_port: u16,
        protocol: Option<&str>,
        proxy_args: &[&str],
    ) -> Mesh {
        let upstream_port = free_port();
        let (dir, file) = write_file(
            "mesh.hcl",
            &mesh_hcl(name, app_port, upstream_port, protocol),
        );
        let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
        let client = dev.sidecar_with("client", proxy_args).await.unwrap();
        let server = dev.sidecar_with(name, proxy_args).await.unwrap();
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
            _dir: dir,
        }
    }
}

fn requests(direction: &str, upstream: &str, class: &str) -> String {
    format!(
        "plexus_proxy_http_requests_total{{direction=\"{direction}\",upstream=\"{upstream}\",route=\"default\",class=\"{class}\",grpc_status=\"\"}}"
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
    assert_eq!(app.seen.lock().unwrap().len(), 3);
}
