//! Several hosts (network namespaces on a bridge, `plexus_test::hosts`): a server on one host,
//! agents with their apps and sidecars on others, traffic between hosts over mTLS.

use std::net::SocketAddr;
use std::time::Duration;

use plexus_api::client::QueryOptions;
use plexus_test::{Agent, Host, Network, Server, Sidecar, TcpEcho, eventually};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::bin;

/// The echo app's port on every host.
pub const ECHO_PORT: u16 = 9090;
/// The client sidecar's upstream listener for `echo` on every host.
pub const UPSTREAM_PORT: u16 = 9191;

/// A definition file for a host: an `echo` instance (with `deregister_critical_service_after`
/// when given) and/or a `client` calling `echo`, each with a sidecar.
pub fn definitions(echo: bool, client: bool, deregister_after: Option<&str>) -> String {
    let mut text = String::new();
    if echo {
        let deregister = deregister_after
            .map(|d| format!("deregister_critical_service_after = \"{d}\""))
            .unwrap_or_default();
        text.push_str(&format!(
            r#"
services {{
  name = "echo"
  port = {ECHO_PORT}
  check {{
    tcp      = "127.0.0.1:{ECHO_PORT}"
    interval = "500ms"
    timeout  = "400ms"
    {deregister}
  }}
  connect {{
    sidecar_service {{}}
  }}
}}
"#
        ));
    }
    if client {
        text.push_str(&format!(
            r#"
services {{
  name = "client"
  port = 8080
  connect {{
    sidecar_service {{
      proxy {{
        upstreams {{
          destination_name = "echo"
          local_bind_port  = {UPSTREAM_PORT}
        }}
      }}
    }}
  }}
}}
"#
        ));
    }
    text
}

/// Sends `line` through `host`'s client sidecar (from inside the host) and reads the echo back.
pub async fn echo_through(host: &Host, line: &str) -> anyhow::Result<String> {
    let attempt = async {
        let stream = host
            .connect(SocketAddr::from(([127, 0, 0, 1], UPSTREAM_PORT)))
            .await?;
        let (read, mut write) = stream.into_split();
        write.write_all(format!("{line}\n").as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(read).read_line(&mut reply).await?;
        anyhow::ensure!(
            reply.trim_end() == line,
            "expected {line:?} back, got {reply:?}"
        );
        Ok(reply.trim_end().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| anyhow::anyhow!("no echo within 10 s"))?
}

/// One host of a test mesh: its agent, its apps and sidecars.
pub struct Node {
    /// The host.
    pub host: Host,
    /// Its agent.
    pub agent: Agent,
    /// Its echo app, when it runs one.
    pub echo: Option<TcpEcho>,
    /// Its echo sidecar, when it runs one.
    pub echo_sidecar: Option<Sidecar>,
    /// Its client sidecar, when it runs one.
    pub client_sidecar: Option<Sidecar>,
    _definitions: tempfile::TempDir,
}

/// Starts an agent on `host` (node named after the host) with the given services, their apps and
/// sidecars; `extra` goes to `plexus agent`. The server enforces ACLs (its default: deny): the
/// agent holds a token with its node's identity and its services' identities, each sidecar one
/// with its service's identity.
pub async fn node(
    server: &Server,
    host: &Host,
    servers: &str,
    echo: bool,
    client: bool,
    deregister_after: Option<&str>,
    extra: &[&str],
) -> Node {
    let (dir, file) =
        crate::write_file("services.hcl", &definitions(echo, client, deregister_after));
    let mut services = Vec::new();
    if echo {
        services.push("echo");
    }
    if client {
        services.push("client");
    }
    let agent_token = server
        .identity_token_file(dir.path(), Some(host.name()), &services)
        .await
        .unwrap();
    let sidecar_token = |service: &'static str| {
        let dir = dir.path().to_owned();
        async move {
            server
                .identity_token_file(&dir, None, &[service])
                .await
                .unwrap()
        }
    };
    let mut args = vec![
        "--config-file",
        file.to_str().unwrap(),
        "--token-file",
        agent_token.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start_on(host, bin(), host.name(), servers, &args)
        .await
        .unwrap();
    let echo_app = if echo {
        Some(
            host.tcp_echo(SocketAddr::from(([127, 0, 0, 1], ECHO_PORT)))
                .await
                .unwrap(),
        )
    } else {
        None
    };
    let echo_sidecar = if echo {
        let token = sidecar_token("echo").await;
        let token = token.to_str().unwrap();
        Some(
            agent
                .sidecar("echo", &["--token-file", token])
                .await
                .unwrap(),
        )
    } else {
        None
    };
    let client_sidecar = if client {
        let token = sidecar_token("client").await;
        let token = token.to_str().unwrap();
        Some(
            agent
                .sidecar("client", &["--token-file", token])
                .await
                .unwrap(),
        )
    } else {
        None
    };
    for sidecar in echo_sidecar.iter().chain(&client_sidecar) {
        eventually!(sidecar.is_ready().await);
    }
    Node {
        host: host.clone(),
        agent,
        echo: echo_app,
        echo_sidecar,
        client_sidecar,
        _definitions: dir,
    }
}

/// The passing `echo` sidecars, by node name.
pub async fn passing_echo_nodes(server: &Server) -> Vec<String> {
    server
        .client
        .health_connect("echo", true, QueryOptions::default())
        .await
        .map(|e| e.value.into_iter().map(|e| e.node.node).collect())
        .unwrap_or_default()
}

/// What runs on a [`Cluster`]'s hosts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spec<'a> {
    /// Extra `plexus server` arguments.
    pub server_args: &'a [&'a str],
    /// Extra `plexus agent` arguments (both agents).
    pub agent_args: &'a [&'a str],
    /// (echo, client) on host a.
    pub a: (bool, bool),
    /// (echo, client) on host b.
    pub b: (bool, bool),
    /// `deregister_critical_service_after` of the echo check.
    pub deregister_after: Option<&'a str>,
}

/// A server on host `server` (embedded store) and agents on hosts `a` and `b`, everything
/// registered, passing and known to the client sidecars.
pub struct Cluster {
    /// The server.
    pub server: Server,
    /// Host a.
    pub a: Node,
    /// Host b.
    pub b: Node,
    _data: tempfile::TempDir,
    /// The hosts (dropped last: namespaces go after the processes).
    pub _network: Network,
}

/// Starts a [`Cluster`] with a client on a and echo on b.
pub async fn cluster(server_args: &[&str]) -> Cluster {
    cluster_with(Spec {
        server_args,
        a: (false, true),
        b: (true, false),
        ..Spec::default()
    })
    .await
}

/// Starts a [`Cluster`] as `spec` says and waits until every echo instance passes and every
/// client sidecar knows them all.
pub async fn cluster_with(spec: Spec<'_>) -> Cluster {
    let network = Network::start(&["server", "a", "b"]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server_host = network.host("server");
    // No address flags anywhere: the server listens on 0.0.0.0:8500 and advertises its host's
    // private address; agents are told the server's host and advertise their own.
    let mut args = vec!["--data-dir".to_owned(), data.path().display().to_string()];
    args.extend(spec.server_args.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_on(server_host, bin(), "server", &args)
        .await
        .unwrap();
    let servers = server_host.ip().to_string();
    let mut nodes = Vec::new();
    for (name, (echo, client)) in [("a", spec.a), ("b", spec.b)] {
        let host = network.host(name);
        let deregister = spec.deregister_after;
        nodes.push(
            node(
                &server,
                host,
                &servers,
                echo,
                client,
                deregister,
                spec.agent_args,
            )
            .await,
        );
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let mut echo_nodes = Vec::new();
    let mut echo_endpoints = Vec::new();
    for node in [&a, &b] {
        if node.echo.is_some() {
            echo_nodes.push(node.host.name().to_owned());
            echo_endpoints.push(node.host.addr(21000).to_string());
        }
    }
    eventually!(passing_echo_nodes(&server).await == echo_nodes);
    for client in [&a, &b].iter().filter_map(|n| n.client_sidecar.as_ref()) {
        eventually!(
            client
                .endpoints("echo")
                .await
                .is_ok_and(|e| e == echo_endpoints)
        );
    }
    Cluster {
        server,
        a,
        b,
        _data: data,
        _network: network,
    }
}

/// A server and two agents on three hosts with no address flags: every node advertises its
/// host's address (with `lan`/`wan` tagged addresses), services and sidecars carry their node's,
/// and with the server's default intention policy `allow` and no intention, a line sent through
/// host a's client sidecar reaches the echo app on host b, across the bridge, over mTLS (the
/// policy reached the sidecar behind b's agent). ACLs are the server's default (on, deny): agents
/// and sidecars hold identity tokens.
#[tokio::test]
async fn a_line_crosses_hosts_through_both_sidecars() {
    let cluster = cluster(&["--default-intention-policy", "allow"]).await;
    let client = &cluster.server.client;
    let nodes = client.catalog_nodes(QueryOptions::default()).await.unwrap();
    for node in &nodes.value {
        let ip = cluster._network.host(&node.node).ip().to_string();
        assert_eq!(node.address, ip, "{node:?}");
        assert_eq!(node.tagged_addresses["lan"], ip, "{node:?}");
        assert_eq!(node.tagged_addresses["wan"], ip, "{node:?}");
        assert_eq!(node.tagged_addresses["lan_ipv4"], ip, "{node:?}");
    }
    assert_eq!(nodes.value.len(), 3);
    // With the server's defaults (ACLs on, deny), an anonymous read from another host sees none.
    let (status, body) = cluster
        .a
        .host
        .http_get(cluster.server.http, "/v1/catalog/nodes")
        .await
        .unwrap();
    assert_eq!((status, body.trim()), (200, "[]"));
    let b_ip = cluster.b.host.ip().to_string();
    for name in ["echo", "echo-sidecar-proxy"] {
        let rows = client
            .catalog_service(name, QueryOptions::default())
            .await
            .unwrap()
            .value;
        assert_eq!(rows.len(), 1, "{name}: {rows:?}");
        assert_eq!(rows[0].service_address, b_ip, "{name}");
        let tagged = rows[0].service_tagged_addresses.clone().unwrap_or_default();
        assert_eq!(tagged["lan"]["address"], b_ip, "{name}: {tagged}");
        assert_eq!(tagged["wan"]["address"], b_ip, "{name}: {tagged}");
        assert_eq!(
            tagged["lan"]["port"], rows[0].service_port,
            "{name}: {tagged}"
        );
    }
    assert_eq!(
        client.status_leader().await.unwrap(),
        cluster.server.addr(),
        "the leader is the server's advertised address"
    );
    echo_through(&cluster.a.host, "hello across hosts")
        .await
        .unwrap();
    assert_eq!(cluster.b.echo.as_ref().unwrap().connections(), 1);

    // An agent told to advertise loopback while its server is not on loopback is warned.
    let tokens = tempfile::tempdir().unwrap();
    let token = cluster
        .server
        .identity_token_file(tokens.path(), Some("a-loopback"), &[])
        .await
        .unwrap();
    let misled = Agent::start_on(
        &cluster.a.host,
        bin(),
        "a-loopback",
        &cluster.server.addr(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--advertise-addr",
            "127.0.0.1",
            "--token-file",
            token.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    let warning = misled
        .process
        .wait_for_line("advertising a loopback address while the servers are not on loopback")
        .await
        .unwrap();
    assert!(warning.contains("--advertise-addr"), "{warning}");
}

/// With a production server's default (deny) and no intention, the *client* sidecar sees the
/// denial: it logs it with the destination's reason and counts it; the app's connection closes.
/// An allow intention then lets the next connection through.
#[tokio::test]
async fn a_denial_is_logged_and_counted_by_the_client_sidecar() {
    let cluster = cluster(&[]).await;
    let client = cluster.a.client_sidecar.as_ref().unwrap();
    let error = echo_through(&cluster.a.host, "knock knock")
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("got \"\""), "{error:#}");
    let line = client
        .process
        .wait_for_line("connection denied by the destination's intentions")
        .await
        .unwrap();
    assert!(
        line.contains("default intention policy: deny") && line.contains("svc/echo"),
        "{line}"
    );
    eventually!(
        client
            .metric(r#"plexus_proxy_upstream_denied_total{upstream="echo"}"#)
            .await
            .is_ok_and(|n| n == 1.0)
    );
    assert_eq!(cluster.b.echo.as_ref().unwrap().connections(), 0);

    let (code, out, err) = plexus_test::mesh::run_cli(
        bin(),
        &[
            "intention",
            "create",
            "--allow",
            "client",
            "echo",
            "--http-addr",
            &cluster.server.addr(),
        ],
        &Server::token_env(),
    )
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let echo_sidecar = cluster.b.echo_sidecar.as_ref().unwrap();
    echo_sidecar
        .process
        .wait_for_line("intentions changed")
        .await
        .unwrap();
    echo_through(&cluster.a.host, "let me in").await.unwrap();
    assert_eq!(
        client
            .metric(r#"plexus_proxy_upstream_denied_total{upstream="echo"}"#)
            .await
            .unwrap(),
        1.0
    );
}
