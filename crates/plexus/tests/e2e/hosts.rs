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
/// sidecars; `extra` goes to `plexus agent`.
pub async fn node(
    host: &Host,
    servers: &str,
    echo: bool,
    client: bool,
    deregister_after: Option<&str>,
    extra: &[&str],
) -> Node {
    let (dir, file) =
        crate::write_file("services.hcl", &definitions(echo, client, deregister_after));
    let mut args = vec!["--config-file", file.to_str().unwrap()];
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
        Some(agent.sidecar("echo", &[]).await.unwrap())
    } else {
        None
    };
    let client_sidecar = if client {
        Some(agent.sidecar("client", &[]).await.unwrap())
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

/// A server and two agents on three hosts: a line sent through host a's client sidecar reaches
/// the echo app on host b, across the bridge, over mTLS.
#[tokio::test]
async fn a_line_crosses_hosts_through_both_sidecars() {
    let network = Network::start(&["server", "a", "b"]).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server_host = network.host("server");
    let server = Server::start_on(
        server_host,
        bin(),
        "server",
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "--http-addr",
            &server_host.addr(8500).to_string(),
            "--default-intention-policy",
            "allow",
        ],
    )
    .await
    .unwrap();
    let servers = server.addr();
    let (a, b) = (network.host("a"), network.host("b"));
    let a_ip = a.ip().to_string();
    let b_ip = b.ip().to_string();
    let node_a = node(a, &servers, false, true, None, &["--address", &a_ip]).await;
    let node_b = node(b, &servers, true, false, None, &["--address", &b_ip]).await;
    eventually!(passing_echo_nodes(&server).await == ["b"]);
    let client = node_a.client_sidecar.as_ref().unwrap();
    eventually!(
        client
            .endpoints("echo")
            .await
            .is_ok_and(|e| e == [b.addr(21000).to_string()])
    );
    echo_through(a, "hello across hosts").await.unwrap();
    assert_eq!(node_b.echo.as_ref().unwrap().connections(), 1);
}
