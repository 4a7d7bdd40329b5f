//! Two datacenters federated through mesh gateways (issue 20), each in its own network
//! namespaces:
//!
//! ```text
//!  dc1 network: server1, client (agent; client + echo apps and sidecars), gateway (agent; mesh gateway)
//!  dc2 network: server2, app (agent; echo + billing apps and sidecars), gateway (agent; mesh gateway)
//!  between them: each gateway has a second interface on the other datacenter's network (its
//!  WAN address); nothing else is routed (the root namespace does not forward): the servers
//!  reach each other only through the gateways (HTTPS to server.<dc>.consul, passed through)
//! ```
//!
//! dc2 is a secondary (`--primary-datacenter dc1`, `--primary-gateways`): one trust domain.
//! Both servers enforce ACLs (default deny) with the same management token; the client's token
//! exists in both datacenters (tokens are per datacenter).

use std::net::SocketAddr;
use std::path::Path;

use plexus_api::acl::SecretId;
use plexus_api::acl::model::{NodeIdentity, ServiceIdentity, TokenWrite};
use plexus_test::upstream::HttpStub;
use plexus_test::{Agent, Host, Network, Server, Sidecar, TcpEcho, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::acl::call;
use crate::bin;

const ECHO_PORT: u16 = 9090;
const BILLING_PORT: u16 = 9093;
const ECHO_UPSTREAM: u16 = 9191;
const BILLING_UPSTREAM: u16 = 9192;
const API_PORT: u16 = 9095;
const API_UPSTREAM: u16 = 9194;

/// Creates the token `secret` in `server` (datacenter `dc`) with a node identity and service
/// identities; writes it to a file in `dir`.
/// `name`'s sidecar on `agent`, with a fresh token holding `name`'s service identity in `dc`.
async fn sidecar_as(agent: &Agent, server: &Server, dir: &Path, dc: &str, name: &str) -> Sidecar {
    let file = token(
        server,
        dir,
        &plexus_test::server::random_uuid(),
        dc,
        None,
        &[name],
    )
    .await;
    agent.sidecar(name, &["--token-file", &file]).await.unwrap()
}

async fn token(
    server: &Server,
    dir: &Path,
    secret: &str,
    dc: &str,
    node: Option<&str>,
    services: &[&str],
) -> String {
    let request = TokenWrite {
        secret_id: SecretId::new(secret),
        description: format!("{dc}: {node:?} {services:?}"),
        node_identities: node
            .map(|node| NodeIdentity {
                node_name: node.to_owned(),
                datacenter: dc.to_owned(),
            })
            .into_iter()
            .collect(),
        service_identities: services
            .iter()
            .map(|s| ServiceIdentity {
                service_name: (*s).to_owned(),
                datacenters: Vec::new(),
            })
            .collect(),
        ..TokenWrite::default()
    };
    server.client.acl_token_create(&request).await.unwrap();
    plexus_test::secrets::register(secret);
    let path = dir.join(format!("token-{dc}-{}", services.join("-")));
    std::fs::write(&path, secret).unwrap();
    path.display().to_string()
}

async fn admin(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, body, _) = call(
        &format!("http://{}{path}", server.addr()),
        method,
        Some(plexus_test::server::management_token()),
        body,
    )
    .await;
    (status, body)
}

async fn allow(server: &Server, source: &str, destination: &str) {
    let (status, body) = admin(
        server,
        "PUT",
        &format!("/v1/connect/intentions/exact?source={source}&destination={destination}"),
        Some(json!({"Action": "allow"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

fn service(name: &str, port: u16, upstreams: &str) -> String {
    format!(
        r#"
services {{
  name = "{name}"
  port = {port}
  check {{
    tcp      = "127.0.0.1:{port}"
    interval = "300ms"
    timeout  = "250ms"
  }}
  connect {{
    sidecar_service {{
      proxy {{
        {upstreams}
      }}
    }}
  }}
}}
"#
    )
}

/// Sends `line` to `host`'s local port `port` (a client sidecar's upstream) and checks the echo.
async fn echo_through(host: &Host, port: u16, line: &str) -> anyhow::Result<()> {
    let attempt = async {
        let stream = host
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await?;
        let (read, mut write) = stream.into_split();
        write.write_all(format!("{line}\n").as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(read).read_line(&mut reply).await?;
        anyhow::ensure!(
            reply.trim_end() == line,
            "expected {line:?} back, got {reply:?}"
        );
        Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), attempt)
        .await
        .map_err(|_| anyhow::anyhow!("no echo within 10 s"))?
}

/// An HTTP app answering 200 with `name`, inside `host` on `127.0.0.1:API_PORT`.
async fn http_on(host: &Host, name: &str) -> HttpStub {
    let listener = host
        .bind(SocketAddr::from(([127, 0, 0, 1], API_PORT)))
        .await
        .unwrap();
    HttpStub::serve(listener, name).unwrap()
}

/// `api` speaks HTTP (its `service-defaults`).
async fn http_service(server: &Server) {
    let (status, body) = admin(
        server,
        "PUT",
        "/v1/config",
        Some(json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn echo_on(host: &Host, port: u16) -> TcpEcho {
    host.tcp_echo(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

#[tokio::test]
async fn with_only_the_mesh_gateways_routed_servers_federate_and_a_dc1_client_reaches_and_fails_over_to_dc2()
 {
    let mut dc1 = Network::start(&["server", "client", "gateway"]).unwrap();
    let mut dc2 = Network::start(&["server", "app", "gateway"]).unwrap();
    let gateway2_wan = dc1.attach(dc2.host("gateway")).unwrap();
    let gateway1_wan = dc2.attach(dc1.host("gateway")).unwrap();
    let gateway1_wan = SocketAddr::from((gateway1_wan, 8443));
    let gateway2_wan = SocketAddr::from((gateway2_wan, 8443));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let pki = plexus_test::pki::Pki::new("wan").unwrap();
    let ca = write("ca.pem", &pki.root_pem());
    let tls_args = |dc: &str, host: &Host| {
        let leaf = pki
            .server_leaf(
                &[&format!("server.{dc}.consul"), "localhost"],
                &[host.ip().into(), "127.0.0.1".parse().unwrap()],
            )
            .unwrap();
        [
            "--https-addr".to_owned(),
            "0.0.0.0:8501".to_owned(),
            "--cert-file".to_owned(),
            write(&format!("{dc}.pem"), &leaf.cert_pem),
            "--key-file".to_owned(),
            write(&format!("{dc}-key.pem"), &leaf.key_pem),
            "--ca-file".to_owned(),
            ca.clone(),
        ]
        .to_vec()
    };
    let (data1, data2) = (dir.path().join("s1"), dir.path().join("s2"));

    let mut args1 = vec![
        "--data-dir".to_owned(),
        data1.display().to_string(),
        "--mesh-gateway-wan-federation".to_owned(),
    ];
    args1.extend(tls_args("dc1", dc1.host("server")));
    let mut server1 = Server::start_on(dc1.host("server"), bin(), "server1", &refs(&args1))
        .await
        .unwrap();
    let mut args2 = vec![
        "--data-dir".to_owned(),
        data2.display().to_string(),
        "--datacenter".to_owned(),
        "dc2".to_owned(),
        "--primary-datacenter".to_owned(),
        "dc1".to_owned(),
        "--primary-gateways".to_owned(),
        gateway1_wan.to_string(),
    ];
    args2.extend(tls_args("dc2", dc2.host("server")));
    let server2 = Server::start_on(dc2.host("server"), bin(), "server2", &refs(&args2))
        .await
        .unwrap();

    // The servers' WAN addresses are not routed: dc1's server cannot reach dc2's.
    let server2_https = dc2.host("server").addr(8501);
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_secs(3),
            dc1.host("server").connect(server2_https)
        )
        .await
        .map_or(true, |connected| connected.is_err()),
        "dc2's server must not be reachable from dc1"
    );

    // dc1's gateway first: dc2 joins dc1 and gets its intermediate through it.
    let (_gateway1_agent, gateway1, gateway1_admin) = mesh_gateway(
        &server1,
        dc1.host("gateway"),
        dir.path(),
        "dc1",
        gateway1_wan,
        &dc1.host("server").addr(8501).to_string(),
    )
    .await;
    eventually!(
        admin(&server2, "GET", "/v1/catalog/datacenters", None)
            .await
            .1
            == json!(["dc2", "dc1"])
    );
    let trust_domain =
        admin(&server1, "GET", "/v1/connect/ca/roots", None).await.1["TrustDomain"].clone();
    eventually!(
        admin(&server2, "GET", "/v1/connect/ca/roots", None).await.1["TrustDomain"] == trust_domain
    );
    assert!(gateway_count(dc1.host("gateway"), gateway1_admin, "server", "passed").await >= 1.0);

    let gateway_wan = gateway2_wan.ip();
    // dc2: echo and billing on host app; the mesh gateway on host gateway.
    let app = dc2.host("app");
    let app_services = format!(
        "{}{}{}",
        service("echo", ECHO_PORT, ""),
        service("billing", BILLING_PORT, ""),
        service("api", API_PORT, "")
    );
    let app_file = dir.path().join("app.hcl");
    std::fs::write(&app_file, app_services).unwrap();
    let app_token = token(
        &server2,
        dir.path(),
        &plexus_test::server::random_uuid(),
        "dc2",
        Some("app"),
        &["echo", "billing", "api"],
    )
    .await;
    let servers2 = dc2.host("server").ip().to_string();
    let app_agent = Agent::start_on(
        app,
        bin(),
        "app",
        &servers2,
        &[
            "--datacenter",
            "dc2",
            "--config-file",
            app_file.to_str().unwrap(),
            "--token-file",
            &app_token,
        ],
    )
    .await
    .unwrap();
    let echo2 = echo_on(app, ECHO_PORT).await;
    let billing2 = echo_on(app, BILLING_PORT).await;
    let api2 = http_on(app, "api-dc2").await;
    let mut dc2_sidecars = Vec::new();
    for name in ["echo", "billing", "api"] {
        dc2_sidecars.push(sidecar_as(&app_agent, &server2, dir.path(), "dc2", name).await);
    }
    let gateway_host = dc2.host("gateway");
    let gateway_agent_token = token(
        &server2,
        dir.path(),
        &plexus_test::server::random_uuid(),
        "dc2",
        Some("gateway"),
        &["mesh-gw"],
    )
    .await;
    let gateway_agent = Agent::start_on(
        gateway_host,
        bin(),
        "gateway",
        &servers2,
        &["--datacenter", "dc2", "--token-file", &gateway_agent_token],
    )
    .await
    .unwrap();
    let gateway_token = token(
        &server2,
        dir.path(),
        &plexus_test::server::random_uuid(),
        "dc2",
        None,
        &["mesh-gw"],
    )
    .await;
    let lan = gateway_host.addr(8443).to_string();
    let wan = SocketAddr::from((gateway_wan, 8443)).to_string();
    let gateway_args: Vec<String> = [
        "gateway",
        "--kind",
        "mesh",
        "--service",
        "mesh-gw",
        "--address",
        &lan,
        "--wan-address",
        &wan,
        "--servers",
        &server2_https.to_string(),
        "--http-addr",
        &gateway_agent.addr(),
        "--token-file",
        &gateway_token,
        "--admin-addr",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec();
    let gateway = gateway_host
        .spawn("gateway:mesh", bin(), &gateway_args, &[])
        .unwrap();
    gateway.listening("gateway-wan").await.unwrap();
    let gateway_admin = gateway.listening("admin").await.unwrap();
    allow(&server2, "client", "echo").await;
    allow(&server2, "client", "billing").await;
    allow(&server2, "client", "api").await;
    http_service(&server2).await;

    // dc1: the client (billing in dc2, echo here with failover to dc2) and a local echo.
    let client_host = dc1.host("client");
    let client_upstreams = format!(
        r#"upstreams {{
          destination_name = "echo"
          local_bind_port  = {ECHO_UPSTREAM}
          config {{ protocol = "tcp" }}
        }}
        upstreams {{
          destination_name = "billing"
          datacenter       = "dc2"
          local_bind_port  = {BILLING_UPSTREAM}
        }}
        upstreams {{
          destination_name = "api"
          local_bind_port  = {API_UPSTREAM}
        }}"#
    );
    let client_services = format!(
        "{}{}{}",
        service("client", 8080, &client_upstreams),
        service("echo", ECHO_PORT, ""),
        service("api", API_PORT, "")
    );
    let client_file = dir.path().join("client.hcl");
    std::fs::write(&client_file, client_services).unwrap();
    let servers1 = dc1.host("server").ip().to_string();
    let client_agent_token = token(
        &server1,
        dir.path(),
        &plexus_test::server::random_uuid(),
        "dc1",
        Some("client"),
        &["client", "echo", "api"],
    )
    .await;
    let client_agent = Agent::start_on(
        client_host,
        bin(),
        "client",
        &servers1,
        &[
            "--config-file",
            client_file.to_str().unwrap(),
            "--token-file",
            &client_agent_token,
        ],
    )
    .await
    .unwrap();
    let mut echo1 = Some(echo_on(client_host, ECHO_PORT).await);
    let mut api1 = Some(http_on(client_host, "api-dc1").await);
    // The client's token in both datacenters (the same secret): dc2's sidecars and servers
    // check it there.
    let client_secret = plexus_test::server::random_uuid();
    let client_token = token(
        &server1,
        dir.path(),
        &client_secret,
        "dc1",
        None,
        &["client"],
    )
    .await;
    token(
        &server2,
        dir.path(),
        &client_secret,
        "dc2",
        None,
        &["client"],
    )
    .await;
    let echo1_sidecar = sidecar_as(&client_agent, &server1, dir.path(), "dc1", "echo").await;
    let client_sidecar = client_agent
        .sidecar("client", &["--token-file", &client_token])
        .await
        .unwrap();
    allow(&server1, "client", "echo").await;
    allow(&server1, "client", "api").await;
    http_service(&server1).await;
    for name in ["echo", "api"] {
        let (status, body) = admin(
            &server1,
            "PUT",
            "/v1/config",
            Some(json!({"Kind": "service-resolver", "Name": name,
                "Failover": {"*": {"Datacenters": ["dc2"]}}})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let api1_sidecar = sidecar_as(&client_agent, &server1, dir.path(), "dc1", "api").await;
    for sidecar in dc2_sidecars
        .iter()
        .chain([&echo1_sidecar, &client_sidecar, &api1_sidecar])
    {
        eventually!(sidecar.is_ready().await);
    }

    // A dc1 client reaches billing in dc2, through the gateway's WAN address.
    eventually!(
        client_sidecar
            .endpoints("billing")
            .await
            .unwrap_or_default()
            == vec![wan.clone()]
    );
    eventually!(
        echo_through(client_host, BILLING_UPSTREAM, "to dc2")
            .await
            .is_ok()
    );
    let before = billing2.connections();
    for i in 0..5 {
        echo_through(client_host, BILLING_UPSTREAM, &format!("billing {i}"))
            .await
            .unwrap();
    }
    assert_eq!(billing2.connections(), before + 5);
    let (_, metrics) = gateway_host
        .http_get(gateway_admin, "/metrics")
        .await
        .unwrap();
    let passed = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                r#"plexus_gateway_mesh_connections_total{service="billing",result="passed"} "#,
            )
        })
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or_default();
    assert!(passed >= 5.0, "{metrics}");
    // Identities are end to end: dc2's billing sidecar decides the dc1 client's own identity.
    let (status, body) = admin(
        &server2,
        "PUT",
        "/v1/connect/intentions/exact?source=client&destination=billing",
        Some(json!({"Action": "deny"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually!(
        echo_through(client_host, BILLING_UPSTREAM, "denied")
            .await
            .is_err()
    );
    eventually!(
        client_sidecar
            .metric(r#"plexus_proxy_upstream_denied_total{upstream="billing"}"#)
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    allow(&server2, "client", "billing").await;
    eventually!(
        echo_through(client_host, BILLING_UPSTREAM, "allowed again")
            .await
            .is_ok()
    );

    // ?dc=dc2 reads through a dc1 server.
    let (status, body) = admin(
        &server1,
        "GET",
        "/v1/health/service/billing?dc=dc2&passing",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["Node"]["Node"], "app", "{body}");
    let (status, body) = admin(&server1, "GET", "/v1/internal/mesh-gateways?dc=dc2", None).await;
    assert_eq!(
        (status, &body[0]["Service"]["Kind"]),
        (200, &json!("mesh-gateway")),
        "{body}"
    );
    // Both went through dc2's gateway to dc2's server (the servers' addresses are not routed).
    assert!(gateway_count(gateway_host, gateway_admin, "server", "passed").await >= 1.0);

    // Echo is served here while it passes here.
    eventually!(
        client_sidecar
            .endpoints("echo")
            .await
            .unwrap_or_default()
            .len()
            == 1
    );
    let (here, there) = (echo1.as_ref().unwrap().connections(), echo2.connections());
    for i in 0..5 {
        echo_through(client_host, ECHO_UPSTREAM, &format!("echo {i}"))
            .await
            .unwrap();
    }
    assert_eq!(
        (echo1.as_ref().unwrap().connections(), echo2.connections()),
        (here + 5, there)
    );

    // Every dc1 echo fails: once the sidecar has seen it, every request goes to dc2.
    drop(echo1.take());
    eventually!(
        client_sidecar
            .endpoints("echo")
            .await
            .unwrap_or_default()
            .is_empty()
    );
    let there = echo2.connections();
    for i in 0..10 {
        echo_through(client_host, ECHO_UPSTREAM, &format!("failover {i}"))
            .await
            .unwrap();
    }
    assert_eq!(echo2.connections(), there + 10);

    // HTTP too: with dc1's api instance gone, requests are answered by dc2's, through the
    // gateway (the chain's failover datacenters, on the pooled HTTP/2 path).
    let api = SocketAddr::from(([127, 0, 0, 1], API_UPSTREAM));
    eventually!(
        client_sidecar
            .endpoints("api")
            .await
            .unwrap_or_default()
            .len()
            == 1
    );
    eventually!(
        client_host
            .http(api, "GET", "/", b"", &[])
            .await
            .is_ok_and(|(status, _)| status == 200)
    );
    for _ in 0..3 {
        let (status, body) = client_host.http(api, "GET", "/", b"", &[]).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("api-dc1"), "{body}");
    }
    drop(api1.take());
    eventually!(
        client_sidecar
            .endpoints("api")
            .await
            .unwrap_or_default()
            .is_empty()
    );
    // The sidecar no longer lists dc1's instance; dc2's answers once its failover target has
    // caught up too (the two views update apart, as the TCP echo's above).
    eventually!(
        client_host
            .http(api, "GET", "/", b"", &[])
            .await
            .is_ok_and(|(status, body)| status == 200 && body.contains("api-dc2"))
    );
    let before = api2.requests();
    for _ in 0..10 {
        let (status, body) = client_host.http(api, "GET", "/", b"", &[]).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("api-dc2"), "{body}");
    }
    assert_eq!(api2.requests(), before + 10);

    // Bad input: an unknown datacenter; a mesh gateway registered under another kind.
    let (status, body) = admin(&server1, "GET", "/v1/catalog/services?dc=dc9", None).await;
    assert_eq!(status, 500, "{body}");
    let (code, _, stderr) = gateway_host
        .run(
            bin(),
            &[
                "gateway",
                "--kind",
                "terminating",
                "--service",
                "mesh-gw",
                "--address",
                "127.0.0.1:0",
                "--http-addr",
                &gateway_agent.addr(),
                "--token-file",
                &gateway_token,
                "--admin-addr",
                "127.0.0.1:0",
            ],
        )
        .unwrap();
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("mesh-gateway"), "{stderr}");
    // Bad input, each refused naming the flag (exit 64).
    let (code, _, stderr) = dc1
        .host("server")
        .run(
            bin(),
            &[
                "server",
                "--data-dir",
                dir.path().join("bad").to_str().unwrap(),
                "--primary-gateways",
                &gateway1_wan.to_string(),
            ],
        )
        .unwrap();
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("--primary-gateways") && stderr.contains("--ca-file"),
        "{stderr}"
    );
    let mut no_primary = vec![
        "server".to_owned(),
        "--data-dir".to_owned(),
        dir.path().join("bad2").display().to_string(),
        "--primary-gateways".to_owned(),
        gateway1_wan.to_string(),
    ];
    no_primary.extend(tls_args("dc1", dc1.host("server")));
    let (code, _, stderr) = dc1.host("server").run(bin(), &refs(&no_primary)).unwrap();
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("--primary-gateways") && stderr.contains("--primary-datacenter"),
        "{stderr}"
    );
    // A server name of another datacenter is closed at dc2's gateway, never passed on.
    let other_dc = gateway_count(gateway_host, gateway_admin, "server", "other_datacenter").await;
    let (_, out, _) = dc1
        .host("client")
        .run(
            Path::new("openssl"),
            &[
                "s_client",
                "-connect",
                &wan,
                "-servername",
                "server.dc9.consul",
                "-brief",
            ],
        )
        .unwrap();
    assert!(!out.contains("CONNECTION ESTABLISHED"), "{out}");
    eventually!(
        gateway_count(gateway_host, gateway_admin, "server", "other_datacenter").await
            == other_dc + 1.0
    );
    let (code, _, stderr) = dc1
        .host("client")
        .run(
            bin(),
            &[
                "gateway",
                "--kind",
                "ingress",
                "--service",
                "in",
                "--servers",
                "127.0.0.1:8501",
            ],
        )
        .unwrap();
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--servers"), "{stderr}");

    // dc1's echo back; dc2's servers killed: dc1 serves its own traffic.
    echo1 = Some(echo_on(client_host, ECHO_PORT).await);
    eventually!(
        client_sidecar
            .endpoints("echo")
            .await
            .unwrap_or_default()
            .len()
            == 1
    );
    let mut server2 = server2;
    server2.kill9().unwrap();
    let here = echo1.as_ref().unwrap().connections();
    for i in 0..5 {
        echo_through(client_host, ECHO_UPSTREAM, &format!("after {i}"))
            .await
            .unwrap();
    }
    assert_eq!(echo1.as_ref().unwrap().connections(), here + 5);
    let (status, _) = admin(&server1, "GET", "/v1/catalog/services", None).await;
    assert_eq!(status, 200);
    let (status, body) = admin(&server1, "GET", "/v1/catalog/services?dc=dc2", None).await;
    assert_eq!(status, 503, "{body}");
    drop((
        gateway,
        gateway1,
        dc2_sidecars,
        client_sidecar,
        echo1_sidecar,
        api1_sidecar,
    ));
    server1.kill9().unwrap();
}

/// `plexus_gateway_mesh_connections_total{service,result}` from a gateway's admin `/metrics`.
async fn gateway_count(host: &Host, admin: SocketAddr, service: &str, result: &str) -> f64 {
    let Ok((_, metrics)) = host.http_get(admin, "/metrics").await else {
        return 0.0;
    };
    let prefix = format!(
        r#"plexus_gateway_mesh_connections_total{{service="{service}",result="{result}"}} "#
    );
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or_default()
}

/// Starts an agent on `host` and a mesh gateway `mesh-gw` behind it: LAN on the host's address,
/// WAN at `wan`, passing server SNI to `servers`. Returns the agent, the gateway process and
/// its admin address.
async fn mesh_gateway(
    server: &Server,
    host: &Host,
    dir: &Path,
    dc: &str,
    wan: SocketAddr,
    servers: &str,
) -> (Agent, plexus_test::Process, SocketAddr) {
    let agent_token = token(
        server,
        dir,
        &plexus_test::server::random_uuid(),
        dc,
        Some(&format!("gateway-{dc}")),
        &["mesh-gw"],
    )
    .await;
    let agent = Agent::start_on(
        host,
        bin(),
        &format!("gateway-{dc}"),
        &server.http.ip().to_string(),
        &["--datacenter", dc, "--token-file", &agent_token],
    )
    .await
    .unwrap();
    let gateway_token = token(
        server,
        dir,
        &plexus_test::server::random_uuid(),
        dc,
        None,
        &["mesh-gw"],
    )
    .await;
    let args: Vec<String> = [
        "gateway",
        "--kind",
        "mesh",
        "--service",
        "mesh-gw",
        "--address",
        &host.addr(8443).to_string(),
        "--wan-address",
        &wan.to_string(),
        "--servers",
        servers,
        "--http-addr",
        &agent.addr(),
        "--token-file",
        &gateway_token,
        "--admin-addr",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec();
    let gateway = host
        .spawn(&format!("gateway:{dc}"), bin(), &args, &[])
        .unwrap();
    gateway.listening("gateway-wan").await.unwrap();
    let admin = gateway.listening("admin").await.unwrap();
    (agent, gateway, admin)
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
