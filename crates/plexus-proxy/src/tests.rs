//! [`run`] against a small in-process stand-in for the control plane's HTTP API, with a stand-in
//! CA (trust domain `td`) that signs whatever it is asked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plexus_api::client::Client;
use plexus_api::{AgentService, AgentUpstream, Node, ServiceEntry};
use plexus_runtime::http::{ApiError, BlockingQuery, indexed_json};
use plexus_test::pki::{self, Issued, LeafSpec, Pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::discovery::tests::sidecar;

#[derive(Default)]
struct Catalog {
    services: BTreeMap<String, AgentService>,
    connect: BTreeMap<String, Vec<ServiceEntry>>,
}

/// The control plane: a catalog behind a lock, and its index for blocking queries.
#[derive(Clone)]
struct Control {
    catalog: Arc<Mutex<Catalog>>,
    index: watch::Sender<u64>,
    ca: Arc<Pki>,
}

const TD: &str = "td";

fn spiffe(service: &str) -> String {
    plexus_api::connect::service_spiffe_id(TD, "dc1", service)
}

impl Control {
    async fn start(catalog: Catalog) -> (Self, Client) {
        Self::start_with_ca(catalog, Arc::new(Pki::new("stand-in").unwrap())).await
    }

    async fn start_with_ca(catalog: Catalog, ca: Arc<Pki>) -> (Self, Client) {
        let control = Control {
            catalog: Arc::new(Mutex::new(catalog)),
            index: watch::Sender::new(1),
            ca,
        };
        let router = Router::new()
            .route("/v1/agent/self", get(agent_self))
            .route("/v1/connect/ca/roots", get(roots))
            .route("/v1/connect/ca/sign", post(sign))
            .route("/v1/connect/intentions/match", get(intentions))
            .route("/v1/agent/services", get(services))
            .route("/v1/agent/service/{id}", get(service))
            .route("/v1/health/connect/{name}", get(connect))
            .with_state(control.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (control, Client::new(&addr.to_string()).unwrap())
    }

    fn change(&self, edit: impl FnOnce(&mut Catalog)) {
        edit(&mut self.catalog.lock().unwrap());
        self.index.send_modify(|i| *i += 1);
    }
}

async fn agent_self() -> Response {
    axum::Json(serde_json::json!({"Config": {"Datacenter": "dc1", "NodeName": "n1"}, "Member": {}}))
        .into_response()
}

async fn roots(State(c): State<Control>, q: BlockingQuery) -> Response {
    q.block(c.index.subscribe()).await;
    let root = serde_json::json!({
        "ID": "root-1", "Name": "stand-in", "SerialNumber": 1, "SigningKeyID": "root-1",
        "ExternalTrustDomain": TD, "NotBefore": "", "NotAfter": "", "RootCert": c.ca.root_pem(),
        "IntermediateCerts": [], "Active": true, "PrivateKeyType": "ec", "PrivateKeyBits": 256,
    });
    let body = serde_json::json!({"ActiveRootID": "root-1", "TrustDomain": TD, "Roots": [root]});
    indexed_json(*c.index.borrow(), &body)
}

async fn sign(
    State(c): State<Control>,
    axum::Json(request): axum::Json<plexus_api::connect::SignRequest>,
) -> Response {
    let cert = c.ca.sign_csr(&request.csr).unwrap();
    let not_after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    axum::Json(serde_json::json!({
        "SerialNumber": "01", "CertPEM": cert, "Service": "web", "ServiceURI": spiffe("web"),
        "ValidAfter": "", "ValidBefore": "", "ValidBeforeUnix": not_after, "RootID": "root-1",
    }))
    .into_response()
}

async fn intentions(State(c): State<Control>, q: BlockingQuery) -> Response {
    q.block(c.index.subscribe()).await;
    let mut response = indexed_json(*c.index.borrow(), &serde_json::json!({"web": []}));
    response.headers_mut().insert(
        "x-plexus-default-intention-policy",
        axum::http::HeaderValue::from_static("allow"),
    );
    response
}

async fn services(State(control): State<Control>) -> Response {
    let services = control.catalog.lock().unwrap().services.clone();
    axum::Json(services).into_response()
}

async fn service(State(c): State<Control>, Path(id): Path<String>, q: BlockingQuery) -> Response {
    q.block(c.index.subscribe()).await;
    let found = c.catalog.lock().unwrap().services.get(&id).cloned();
    match found {
        Some(service) => indexed_json(*c.index.borrow(), &service),
        None => ApiError::not_found("no such service").into_response(),
    }
}

async fn connect(State(c): State<Control>, Path(name): Path<String>, q: BlockingQuery) -> Response {
    q.block(c.index.subscribe()).await;
    let entries = c.catalog.lock().unwrap().connect.get(&name).cloned();
    indexed_json(*c.index.borrow(), &entries.unwrap_or_default())
}

fn endpoint(addr: SocketAddr) -> ServiceEntry {
    ServiceEntry {
        node: Node {
            address: addr.ip().to_string(),
            ..Node::default()
        },
        service: AgentService {
            port: addr.port(),
            ..AgentService::default()
        },
        checks: Vec::new(),
    }
}

/// A `web` sidecar on 127.0.0.1:0 in front of `app`, with upstreams on 127.0.0.1:`port`.
fn web_sidecar(app: SocketAddr, upstreams: &[(&str, u16)]) -> AgentService {
    let mut service = sidecar(upstreams);
    service.address = "127.0.0.1".into();
    service.port = 0;
    if let Some(proxy) = service.proxy.as_mut() {
        proxy.local_service_port = app.port();
    }
    service
}

/// A server that says its one-letter name, then echoes.
async fn named_server(name: u8) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                socket.write_all(&[name]).await?;
                let (mut read, mut write) = socket.split();
                tokio::io::copy(&mut read, &mut write).await
            });
        }
    });
    addr
}

/// A stand-in for an upstream sidecar: TLS with an `echo` leaf from `ca`, then says its name
/// and echoes.
async fn tls_named_server(name: u8, ca: &Pki) -> SocketAddr {
    let leaf = ca.leaf(&LeafSpec::service(&spiffe("echo"))).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Pki::server_config(&leaf).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut socket = acceptor.accept(socket).await?;
                socket.write_all(&[name]).await?;
                let (mut read, mut write) = tokio::io::split(socket);
                tokio::io::copy(&mut read, &mut write).await
            });
        }
    });
    addr
}

/// A client leaf for `service` from `ca`.
fn client_leaf(ca: &Pki, service: &str) -> Issued {
    ca.leaf(&LeafSpec::service(&spiffe(service))).unwrap()
}

async fn reached(addr: SocketAddr) -> (Option<u8>, TcpStream) {
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut name = [0u8; 1];
    let n = client.read(&mut name).await.unwrap_or(0);
    ((n == 1).then_some(name[0]), client)
}

/// `GET path` on the admin server: (status, body).
async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// Waits until `/config` is one `check` accepts (the harness's deadline) and returns it.
async fn config_until(
    admin: SocketAddr,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut config = serde_json::Value::Null;
    plexus_test::eventually!(
        {
            let (status, body) = admin_get(admin, "/config").await;
            status == 200 && {
                config = serde_json::from_str(&body).unwrap();
                check(&config)
            }
        },
        plexus_test::DEADLINE
    );
    config
}

fn upstream_bind(config: &serde_json::Value, name: &str) -> Option<SocketAddr> {
    let upstreams = config["upstreams"].as_array()?;
    let upstream = upstreams.iter().find(|u| u["destination"] == name)?;
    upstream["bind"].as_str()?.parse().ok()
}

async fn start_proxy(
    client: Client,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), ProxyError>>,
) {
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let config = ProxyConfig {
        control: client,
        sidecar_for: "web".into(),
        proxy_id: None,
        admin_listener,
        drain_grace: Duration::from_millis(200),
        close_denied: false,
        access_log: None,
        state: None,
    };
    let proxy = tokio::spawn(run(config, shutdown.clone()));
    (admin, shutdown, proxy)
}

#[tokio::test]
async fn proxy_follows_the_control_plane_and_drains() {
    let ca = Arc::new(Pki::new("stand-in").unwrap());
    let (app, b, c) = (
        named_server(b'a').await,
        tls_named_server(b'b', &ca).await,
        tls_named_server(b'c', &ca).await,
    );
    let mut catalog = Catalog::default();
    catalog
        .services
        .insert("web-sidecar-proxy".into(), web_sidecar(app, &[("echo", 0)]));
    catalog.connect.insert("echo".into(), vec![endpoint(b)]);
    let (control, client) = Control::start_with_ca(catalog, Arc::clone(&ca)).await;
    let (admin, shutdown, proxy) = start_proxy(client).await;

    let config = config_until(admin, |c| {
        c["upstreams"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| e.len() == 1)
    })
    .await;
    assert_eq!(admin_get(admin, "/ready").await, (200, "ready".to_owned()));
    assert_eq!(config["service"], "web-sidecar-proxy");
    assert_eq!(config["destination"], "web");
    assert_eq!(config["revision"], 1);
    let inbound: SocketAddr = config["inbound"]["bind"].as_str().unwrap().parse().unwrap();
    // Inbound is mTLS: a client of our CA gets through, plaintext does not.
    pki::connect(inbound, Some(&client_leaf(&ca, "api")))
        .await
        .unwrap();
    let mut plain = TcpStream::connect(inbound).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest).await;
    assert!(!rest.contains(&b'a'), "plaintext reached the app");
    let echo = upstream_bind(&config, "echo").unwrap();
    assert_eq!(reached(echo).await.0, Some(b'b'));

    // A new healthy instance joins: connections alternate.
    control.change(|cat| {
        cat.connect
            .insert("echo".into(), vec![endpoint(b), endpoint(c)]);
    });
    config_until(admin, |c| {
        c["upstreams"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(reached(echo).await.0.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, b"bbcc");

    // The upstream is replaced: its listener closes, established connections keep working.
    let (_, mut established) = reached(echo).await;
    control.change(|cat| {
        cat.services.insert(
            "web-sidecar-proxy".into(),
            web_sidecar(app, &[("other", 0)]),
        );
    });
    let config = config_until(admin, |c| upstream_bind(c, "other").is_some()).await;
    assert!(upstream_bind(&config, "echo").is_none());
    assert!(TcpStream::connect(echo).await.is_err());
    established.write_all(b"hi").await.unwrap();
    let mut echoed = [0u8; 2];
    established.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hi");

    let (status, text) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"plexus_proxy_connections_total{direction="outbound",upstream="echo"} 6"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"plexus_proxy_connections_total{direction="inbound",upstream="local_app"} 2"#
        )
    );
    assert!(text.contains(r#"plexus_proxy_endpoints{upstream="local_app"} 1"#));
    assert!(
        text.contains(r#"plexus_proxy_tls_refusals_total{direction="inbound",reason="not_tls"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"plexus_proxy_intention_decisions_total{source="api",destination="web",result="allow"} 1"#
    ));

    // Shutdown with a connection still open: it is cut after the grace period.
    shutdown.cancel();
    let finished = tokio::time::timeout(Duration::from_secs(5), proxy).await;
    assert!(matches!(finished, Ok(Ok(Ok(())))), "{finished:?}");
    let mut rest = Vec::new();
    let _ = established.read_to_end(&mut rest).await;
}

#[tokio::test]
async fn start_up_errors_are_reported() {
    let app = named_server(b'a').await;
    let (_control, client) = Control::start(Catalog::default()).await;
    let (_, _shutdown, proxy) = start_proxy(client).await;
    let error = proxy.await.unwrap().unwrap_err();
    assert_eq!(
        error.to_string(),
        "no sidecar proxy is registered for service \"web\""
    );

    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut catalog = Catalog::default();
    let mut registration = web_sidecar(app, &[("echo", port)]);
    if let Some(proxy) = registration.proxy.as_mut() {
        proxy.upstreams.push(AgentUpstream {
            destination_name: "db".into(),
            ..AgentUpstream::default()
        });
    }
    catalog
        .services
        .insert("web-sidecar-proxy".into(), registration);
    let (_control, client) = Control::start(catalog).await;
    let (_, _shutdown, proxy) = start_proxy(client).await;
    let error = proxy.await.unwrap().unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("cannot bind upstream \"echo\" listener on 127.0.0.1:{port}")
    );
}

#[tokio::test]
async fn unreachable_control_plane_is_retried_until_shutdown() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (admin, shutdown, proxy) = start_proxy(Client::new(&closed.to_string()).unwrap()).await;
    assert_eq!(admin_get(admin, "/ready").await.0, 503);
    assert_eq!(admin_get(admin, "/config").await.0, 503);
    shutdown.cancel();
    let finished = tokio::time::timeout(Duration::from_secs(5), proxy).await;
    assert!(matches!(finished, Ok(Ok(Ok(())))), "{finished:?}");
}
