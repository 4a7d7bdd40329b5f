//! Gateways on the built-in proxy (`plexus gateway`), end to end with real processes: a server
//! enforcing ACLs (default deny), apps behind sidecars on this machine, the gateway holding its
//! service identity's token, and a client outside the mesh in its own network namespace
//! (`plexus_test::Network`) reaching the gateway over the bridge.

use std::path::Path;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use plexus_test::pki::Pki;
use plexus_test::upstream::HttpStub;
use plexus_test::{Network, Process, Sidecar, eventually, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::acl::AclServer;
use crate::bin;

/// Writes `token` to a file in `dir` (tokens never go on a command line).
fn token_file(dir: &Path, name: &str, token: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, token).unwrap();
    path.display().to_string()
}

/// Registers HTTP service `name` (app at `app_port`) with a sidecar, its `service-defaults`
/// saying `http`; starts the sidecar with the service's identity and waits until it is ready.
async fn http_service(server: &AclServer, dir: &Path, name: &str, app_port: u16) -> Sidecar {
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": name, "ID": name, "Port": app_port,
                "Connect": {"SidecarService": {"Port": free_port()}}})),
        )
        .await;
    server
        .admin(
            "PUT",
            "/v1/config",
            Some(json!({"Kind": "service-defaults", "Name": name, "Protocol": "http"})),
        )
        .await;
    let (_, token) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": name}]}))
        .await;
    let file = token_file(dir, &format!("token-{name}"), &token);
    let sidecar = Sidecar::start_with(bin(), &server.addr, name, &["--token-file", &file])
        .await
        .unwrap();
    eventually!(sidecar.is_ready().await);
    sidecar
}

/// Sets the intention `source → destination` to `action`.
async fn intention(server: &AclServer, source: &str, destination: &str, action: &str) {
    server
        .admin(
            "PUT",
            &format!("/v1/connect/intentions/exact?source={source}&destination={destination}"),
            Some(json!({"Action": action})),
        )
        .await;
}

/// Starts `plexus gateway --kind <kind> --service <service>` with the service's identity,
/// listening on `address`.
async fn gateway(
    server: &AclServer,
    dir: &Path,
    kind: &str,
    service: &str,
    address: &str,
) -> Process {
    gateway_for(server, dir, kind, service, address, &[], &[]).await
}

/// [`gateway`], its token also holding the identities of `linked` services (a terminating
/// gateway presents them, as Consul's needs `service:write` on them).
async fn gateway_for(
    server: &AclServer,
    dir: &Path,
    kind: &str,
    service: &str,
    address: &str,
    linked: &[&str],
    extra: &[&str],
) -> Process {
    let identities: Vec<Value> = std::iter::once(service)
        .chain(linked.iter().copied())
        .map(|name| json!({"ServiceName": name}))
        .collect();
    let (_, token) = server.token(json!({"ServiceIdentities": identities})).await;
    let file = token_file(dir, &format!("token-gw-{service}"), &token);
    let mut args: Vec<String> = [
        "gateway",
        "--kind",
        kind,
        "--service",
        service,
        "--address",
        address,
        "--http-addr",
        &server.addr,
        "--token-file",
        &file,
        "--admin-addr",
        "127.0.0.1:0",
        "--grace",
        "1s",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let process = Process::spawn(&format!("gateway:{service}"), bin(), &args, &[]).unwrap();
    process.listening("admin").await.unwrap();
    process
}

/// `curl` from inside the `outside` host: (status, lowercase headers, body), or status 0 and
/// curl's error. `args` go before the URL. It runs on a blocking thread: the apps answering it
/// live on this test's runtime.
async fn curl(network: &Network, args: &[&str], url: &str) -> (u16, String, String) {
    let mut all: Vec<String> = ["-sS", "--max-time", "10", "-D", "-", "-o", "-"]
        .map(str::to_owned)
        .to_vec();
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.push(url.to_owned());
    let host = network.host("outside").clone();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        host.run(Path::new("/usr/bin/curl"), &all)
    })
    .await
    .unwrap()
    .unwrap();
    if code != 0 {
        return (0, String::new(), format!("curl exit {code}: {stderr}"));
    }
    // The last header block (after any 100-continue) then the body.
    let (head, body) = stdout.split_once("\r\n\r\n").unwrap_or((&stdout, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A client outside the mesh (own namespace) calls two services through one ingress listener
/// by host, a listed host and the default `<service>.ingress.*` host; the entry's header
/// changes apply; an unknown host gets 404 with `x-plexus-error`; a TLS listener presents a
/// certificate for its host that curl verifies against the mesh CA's root (and not without
/// it); a deny intention from the gateway to a service turns its answers into 403.
#[tokio::test]
async fn ingress_routes_outside_clients_by_host_over_tls_and_under_intentions() {
    let network = Network::start(&["outside"]).unwrap();
    let bridge = network.gateway().to_string();
    let dir = tempfile::tempdir().unwrap();
    let server = AclServer::start(&[], &[]).await;
    let web_app = HttpStub::start_named("web").await.unwrap();
    let api_app = HttpStub::start_named("api").await.unwrap();
    let _web = http_service(&server, dir.path(), "web", web_app.addr.port()).await;
    let _api = http_service(&server, dir.path(), "api", api_app.addr.port()).await;
    intention(&server, "ingress", "web", "allow").await;
    intention(&server, "ingress", "api", "allow").await;
    server
        .admin(
            "PUT",
            "/v1/config",
            Some(json!({
                "Kind": "ingress-gateway", "Name": "ingress",
                "Listeners": [
                    {"Port": 8080, "Protocol": "http", "Services": [
                        {"Name": "web", "Hosts": ["web.example.com"],
                         "RequestHeaders": {"Add": {"x-from-ingress": "yes"}},
                         "ResponseHeaders": {"Set": {"x-gateway": "ingress"}}},
                        {"Name": "api", "Hosts": ["api.example.com"]}]},
                    {"Port": 8443, "Protocol": "http", "TLS": {"Enabled": true},
                     "Services": [{"Name": "web", "Hosts": ["secure.example.com"]}]},
                    {"Port": 8081, "Protocol": "http", "Services": [{"Name": "*"}]}
                ]
            })),
        )
        .await;
    let access_log = dir.path().join("access.log");
    let gw = gateway_for(
        &server,
        dir.path(),
        "ingress",
        "ingress",
        &format!("{bridge}:0"),
        &[],
        &["--access-log", access_log.to_str().unwrap()],
    )
    .await;
    gw.listening("ingress:8080").await.unwrap();
    gw.listening("ingress:8443").await.unwrap();
    gw.listening("ingress:8081").await.unwrap();
    let admin = gw.listening("admin").await.unwrap();
    let plain = format!("http://{bridge}:8080/hello");

    // Two services through one listener, by host (listed, then default).
    eventually!({
        let (status, _, body) = curl(&network, &["-H", "Host: web.example.com"], &plain).await;
        status == 200 && body.contains("web")
    });
    let (status, head, body) = curl(&network, &["-H", "Host: web.example.com"], &plain).await;
    assert_eq!((status, body.trim()), (200, "web"), "{head}");
    assert!(head.contains("x-gateway: ingress"), "{head}");
    assert!(
        web_app
            .last_headers()
            .iter()
            .any(|(name, value)| name == "x-from-ingress" && value == "yes"),
        "{:?}",
        web_app.last_headers()
    );
    eventually!({
        let (status, _, body) = curl(&network, &["-H", "Host: api.example.com"], &plain).await;
        status == 200 && body.trim() == "api"
    });
    let (status, _, body) = curl(&network, &["-H", "Host: api.ingress.consul"], &plain).await;
    assert_eq!((status, body.trim()), (200, "api"));

    // The destination's discovery chain applies: api's router sends /v2 to web.
    server
        .admin(
            "PUT",
            "/v1/config",
            Some(json!({"Kind": "service-router", "Name": "api", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/v2"}}, "Destination": {"Service": "web"}}]})),
        )
        .await;
    let v2 = format!("http://{bridge}:8080/v2/x");
    eventually!({
        let (status, _, body) = curl(&network, &["-H", "Host: api.example.com"], &v2).await;
        status == 200 && body.trim() == "web"
    });

    // The wildcard listener: any service by its default host; an unknown one is 404.
    let any = format!("http://{bridge}:8081/");
    let (status, _, body) = curl(&network, &["-H", "Host: web.ingress.example.org"], &any).await;
    assert_eq!((status, body.trim()), (200, "web"));
    let (status, head, _) = curl(&network, &["-H", "Host: web.example.com"], &any).await;
    assert_eq!(status, 404, "{head}");

    // An unknown host.
    let (status, head, _) = curl(&network, &["-H", "Host: nobody.example.com"], &plain).await;
    assert_eq!(status, 404, "{head}");
    assert!(head.contains("x-plexus-error: unknown_host"), "{head}");

    // TLS: the chain verifies against the mesh CA's root only.
    let roots = server.admin("GET", "/v1/connect/ca/roots", None).await;
    let pem: String = roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|root| root["RootCert"].as_str())
        .collect();
    let ca = dir.path().join("mesh-ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let resolve = format!("secure.example.com:8443:{bridge}");
    let secure = "https://secure.example.com:8443/tls";
    let (status, _, body) = curl(
        &network,
        &["--cacert", ca.to_str().unwrap(), "--resolve", &resolve],
        secure,
    )
    .await;
    assert_eq!((status, body.trim()), (200, "web"));
    let (status, _, error) = curl(&network, &["--resolve", &resolve], secure).await;
    assert_eq!(status, 0, "without the mesh CA the chain must not verify");
    assert!(error.contains("exit 60"), "{error}");

    // A deny intention from the gateway: 403, said by the destination.
    intention(&server, "ingress", "api", "deny").await;
    eventually!({
        let (status, head, _) = curl(&network, &["-H", "Host: api.example.com"], &plain).await;
        status == 403 && head.contains("x-plexus-error: denied")
    });
    let (status, _, body) = curl(&network, &["-H", "Host: web.example.com"], &plain).await;
    assert_eq!((status, body.trim()), (200, "web"));

    // Sidecar operability: ready, per-listener metrics, and a clean drain on SIGTERM.
    let (status, _) = admin_get(admin, "/ready").await;
    assert_eq!(status, 200);
    let (_, metrics) = admin_get(admin, "/metrics").await;
    assert!(metrics.contains("upstream=\"ingress:8080\""), "{metrics}");
    let mut gw = gw;
    assert!(gw.terminate().await.unwrap().success());
    let log = std::fs::read_to_string(&access_log).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("\"path\":\"/hello\"") && line.contains("\"status\":200")),
        "{log}"
    );
}

/// GET on a gateway's admin server: (status, body).
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{admin}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Reads the stored `ingress-gateway/ingress` entry's listener ports.
async fn stored_ports(server: &AclServer) -> Vec<Value> {
    let entry = server
        .admin("GET", "/v1/config/ingress-gateway/ingress", None)
        .await;
    entry["Listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["Port"].clone())
        .collect()
}

/// Each bad ingress entry is refused with 400 naming the field, and the stored entry stays;
/// a gateway whose kind does not match its service's registration exits naming both kinds.
#[tokio::test]
async fn bad_ingress_entries_and_mismatched_gateway_kinds_are_refused_naming_the_field() {
    let server = AclServer::start(&[], &[]).await;
    let dir = tempfile::tempdir().unwrap();
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "web", "ID": "web", "Port": free_port()})),
        )
        .await;
    let good = json!({"Kind": "ingress-gateway", "Name": "ingress", "Listeners": [
        {"Port": 8080, "Protocol": "http", "Services": [{"Name": "web"}]}]});
    server.admin("PUT", "/v1/config", Some(good)).await;
    let cases = [
        (
            json!([{"Port": 8080, "Protocol": "http", "Services": [{"Name": "web"}]},
                   {"Port": 8080, "Protocol": "http", "Services": [{"Name": "web", "Hosts": ["a.example.com"]}]}]),
            "Listeners[1].Port",
            "already used",
        ),
        (
            json!([{"Port": 8080, "Protocol": "http", "Services": [{"Name": "ghost"}]}]),
            "Listeners[0].Services[0].Name",
            "unknown service",
        ),
        (
            json!([{"Port": 9000, "Protocol": "tcp", "Services": [{"Name": "*"}]}]),
            "Listeners[0].Services[0].Name",
            "http listener",
        ),
        (
            json!([{"Port": 8443, "Protocol": "http", "TLS": {"Enabled": true},
                    "Services": [{"Name": "web"}]}]),
            "Listeners[0].Services[0].Hosts",
            "TLS is enabled",
        ),
    ];
    for (listeners, field, says) in cases {
        let body = json!({"Kind": "ingress-gateway", "Name": "ingress", "Listeners": listeners});
        let (status, answer, _) = server
            .call(
                "PUT",
                "/v1/config",
                Some(server.management.as_str()),
                Some(body),
            )
            .await;
        assert_eq!(status, 400, "{field}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{field}: {message}");
        assert_eq!(stored_ports(&server).await, [json!(8080)]);
    }

    // A terminating gateway links registered services only, with whole file pairs.
    for (services, field, says) in [
        (
            json!([{"Name": "ghost"}]),
            "Services[0].Name",
            "unknown service",
        ),
        (
            json!([{"Name": "web", "CertFile": "/tmp/cert.pem"}]),
            "Services[0].KeyFile",
            "go together",
        ),
    ] {
        let body = json!({"Kind": "terminating-gateway", "Name": "out", "Services": services});
        let (status, answer, _) = server
            .call(
                "PUT",
                "/v1/config",
                Some(server.management.as_str()),
                Some(body),
            )
            .await;
        assert_eq!(status, 400, "{field}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{field}: {message}");
    }
    let (status, _, _) = server
        .call(
            "GET",
            "/v1/config/terminating-gateway/out",
            Some(server.management.as_str()),
            None,
        )
        .await;
    assert_eq!(status, 404, "nothing was stored");

    // `web` is an ordinary service: no gateway may run as it.
    let mut refused = gateway(&server, dir.path(), "ingress", "web", "127.0.0.1:0").await;
    let status = refused.wait_exit().await.unwrap();
    assert_eq!(status.code(), Some(64));
    let output = refused.output();
    assert!(
        output.contains("service \"web\" is registered with kind \"\", not \"ingress-gateway\""),
        "{output}"
    );
    // A registered ingress gateway cannot be started as a terminating one.
    let mut ingress = gateway(&server, dir.path(), "ingress", "front", "127.0.0.1:0").await;
    eventually!(
        server
            .call(
                "GET",
                "/v1/agent/service/front",
                Some(server.management.as_str()),
                None
            )
            .await
            .1["Kind"]
            == "ingress-gateway"
    );
    ingress.terminate().await.unwrap();
    let mut wrong = gateway(&server, dir.path(), "terminating", "front", "127.0.0.1:0").await;
    assert_eq!(wrong.wait_exit().await.unwrap().code(), Some(64));
    assert!(
        wrong
            .output()
            .contains("registered with kind \"ingress-gateway\", not \"terminating-gateway\""),
        "{}",
        wrong.output()
    );
}

/// A plain HTTPS server (not in the mesh) on `listener`: answers every request `200 external`
/// and counts them.
/// What the external HTTPS server counted: requests answered, TLS connections accepted.
#[derive(Clone, Default)]
struct Served {
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl Served {
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An HTTPS server for `external.test` answering `external` to every request, keeping the
/// connection open unless the request says `Connection: close`.
fn https_server(listener: tokio::net::TcpListener, pki: &Pki) -> Served {
    let leaf = pki.server_leaf(&["external.test"], &[]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Pki::server_config(&leaf).unwrap());
    let served = Served::default();
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                count.connections.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.requests.fetch_add(1, Ordering::SeqCst);
                    let close = String::from_utf8_lossy(&head)
                        .to_ascii_lowercase()
                        .contains("\r\nconnection: close\r\n");
                    let answer = if close {
                        "HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nexternal"
                    } else {
                        "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nexternal"
                    };
                    if tls.write_all(answer.as_bytes()).await.is_err() || close {
                        let _ = tls.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    served
}

/// One HTTP/1.1 request through the client's sidecar upstream: the whole answer ("" when the
/// connection was closed without one).
async fn through_sidecar(port: u16) -> String {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: external.test\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), attempt).await {
        Ok(Ok(answer)) => answer,
        _ => String::new(),
    }
}

/// A terminating gateway in front of a plain HTTPS server in the `external` namespace (linked
/// with the server's CA file and SNI), and a mesh `client` whose sidecar has it as an upstream,
/// started before the link was written; the linked service declared `protocol` when given.
struct Terminating {
    server: AclServer,
    upstream: u16,
    served: Served,
    _client: Sidecar,
    _gateway: Process,
    _dir: tempfile::TempDir,
    _network: Network,
}

async fn terminating(protocol: Option<&str>) -> Terminating {
    let network = Network::start(&["external"]).unwrap();
    let external = network.host("external");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("external-ca").unwrap();
    let ca_file = dir.path().join("external-ca.pem");
    std::fs::write(&ca_file, pki.root_pem()).unwrap();
    let served = https_server(external.bind(external.addr(443)).await.unwrap(), &pki);
    let server = AclServer::start(&[], &[]).await;
    server
        .admin(
            "PUT",
            "/v1/catalog/register",
            Some(
                json!({"Node": "external-node", "Address": external.ip().to_string(),
                "NodeMeta": {"external-node": "true"},
                "Service": {"Service": "external", "Port": 443}}),
            ),
        )
        .await;
    if let Some(protocol) = protocol {
        server
            .admin(
                "PUT",
                "/v1/config",
                Some(json!({"Kind": "service-defaults", "Name": "external", "Protocol": protocol})),
            )
            .await;
    }
    let upstream = free_port();
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "client", "ID": "client", "Port": 8080,
                "Connect": {"SidecarService": {"Port": free_port(), "Proxy": {"Upstreams": [
                    {"DestinationName": "external", "LocalBindPort": upstream}]}}}})),
        )
        .await;
    let (_, token) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "client"}]}))
        .await;
    let file = token_file(dir.path(), "token-client", &token);
    let client = Sidecar::start_with(bin(), &server.addr, "client", &["--token-file", &file])
        .await
        .unwrap();
    eventually!(client.is_ready().await);
    // The client runs before the link exists: its blocking query hears of the link.
    eventually!(
        client
            .endpoints("external")
            .await
            .is_ok_and(|e| e.is_empty())
    );
    server
        .admin(
            "PUT",
            "/v1/config",
            Some(json!({"Kind": "terminating-gateway", "Name": "terminating", "Services": [
                {"Name": "external", "CAFile": ca_file.to_str().unwrap(), "SNI": "external.test"}]})),
        )
        .await;
    let gateway = gateway_for(
        &server,
        dir.path(),
        "terminating",
        "terminating",
        "127.0.0.1:0",
        &["external"],
        &[],
    )
    .await;
    gateway.wait_for_line("linked service ready").await.unwrap();
    eventually!(
        client
            .endpoints("external")
            .await
            .is_ok_and(|e| e.len() == 1)
    );
    Terminating {
        server,
        upstream,
        served,
        _client: client,
        _gateway: gateway,
        _dir: dir,
        _network: network,
    }
}

/// A mesh client reaches a plain HTTPS server in another namespace, registered on an external
/// node, through the terminating gateway: the gateway presents the linked service's identity
/// to the client's sidecar and originates TLS with the entry's CA file and SNI. Without an
/// allowing intention the connection is refused and the server never sees a request.
#[tokio::test]
async fn terminating_gateway_links_an_external_https_server_under_intentions() {
    let t = terminating(None).await;
    // No intention (default deny): refused, the server untouched.
    assert_eq!(through_sidecar(t.upstream).await, "");
    assert_eq!(t.served.requests(), 0);

    intention(&t.server, "client", "external", "allow").await;
    eventually!(through_sidecar(t.upstream).await.ends_with("external"));
    let answer = through_sidecar(t.upstream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(t.served.requests() >= 2);
}

/// The same for a linked service declared `http`: the client's sidecar speaks HTTP/2 to the
/// gateway, which decides each request by the intentions (403 `denied`; L7 permissions too) and
/// sends it on as HTTP/1.1 over TLS.
#[tokio::test]
async fn terminating_gateway_carries_http_requests_per_intention() {
    let t = terminating(Some("http")).await;
    let denied = through_sidecar(t.upstream).await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert!(denied.contains("x-plexus-error: denied"), "{denied}");
    assert_eq!(t.served.requests(), 0);

    intention(&t.server, "client", "external", "allow").await;
    eventually!(through_sidecar(t.upstream).await.ends_with("external"));
    let answer = through_sidecar(t.upstream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // Requests go on the gateway's keep-alive connections to the service (the client's
    // `Connection: close` is its own hop's): ten more, no new TLS connection.
    let (requests, connections) = (t.served.requests(), t.served.connections());
    for _ in 0..10 {
        let answer = through_sidecar(t.upstream).await;
        assert!(answer.ends_with("external"), "{answer}");
    }
    assert_eq!(t.served.requests(), requests + 10);
    assert_eq!(t.served.connections(), connections);

    // L7 intentions: the gateway decides each request by the permissions too.
    for (permission, answer) in [
        (
            json!({"Action": "deny", "HTTP": {"PathExact": "/"}}),
            "HTTP/1.1 403",
        ),
        (
            json!({"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["GET"]}}),
            "HTTP/1.1 200",
        ),
    ] {
        t.server
            .admin(
                "PUT",
                "/v1/connect/intentions/exact?source=client&destination=external",
                Some(json!({"Permissions": [permission]})),
            )
            .await;
        eventually!(through_sidecar(t.upstream).await.starts_with(answer));
    }

    // A mesh peer that completes TLS for the linked service (its SNI) and then sends nothing,
    // not even the HTTP/2 preface: the gateway closes it after its handshake timeout (10 s), as
    // a sidecar's inbound listener does, instead of holding it for good.
    let endpoints = t._client.endpoints("external").await.unwrap();
    let gateway: std::net::SocketAddr = endpoints[0].parse().unwrap();
    let leaf = t
        .server
        .admin("GET", "/v1/agent/connect/ca/leaf/client", None)
        .await;
    let leaf = plexus_test::pki::Issued::from_pem(
        leaf["CertPEM"].as_str().unwrap(),
        leaf["PrivateKeyPEM"].as_str().unwrap(),
    )
    .unwrap();
    let roots = t.server.admin("GET", "/v1/connect/ca/roots", None).await;
    let sni = format!(
        "external.default.dc1.internal.{}",
        roots["TrustDomain"].as_str().unwrap()
    );
    let silent = plexus_test::pki::connect_with_sni(gateway, &leaf, b"plexus-h2", &sni)
        .await
        .unwrap();
    let held = plexus_test::pki::held_then_closed(silent, std::time::Duration::from_secs(9)).await;
    eprintln!("terminating gateway: silent peer closed after {held:?}");
    // Still serving.
    let answer = through_sidecar(t.upstream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}
