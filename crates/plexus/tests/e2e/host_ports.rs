//! Ports on one host: two agents on the same machine (one server) hand out different sidecar
//! ports, even before any sidecar listens, and every sidecar then serves.

use std::net::SocketAddr;
use std::time::Duration;

use plexus_api::ServiceRegistration;
use plexus_test::{Process, Server, Sidecar, TcpEcho, eventually, free_port};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::agent::agent;
use crate::bin;

fn echo(name: &str, port: u16) -> ServiceRegistration {
    serde_json::from_value(serde_json::json!({
        "Name": name, "Port": port,
        "Check": {"TCP": format!("127.0.0.1:{port}"), "Interval": "500ms", "Timeout": "400ms"},
        "Connect": {"SidecarService": {}}
    }))
    .unwrap()
}

async fn round_trip(addr: SocketAddr, line: &str) -> Option<String> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{line}\n").as_bytes()).await.ok()?;
    let mut reply = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(read).read_line(&mut reply),
    )
    .await
    .ok()?
    .ok()?;
    Some(reply.trim_end().to_owned())
}

/// `plexus proxy --sidecar-for ID` against `agent`, with the run's management token.
async fn sidecar(agent: &plexus_api::client::Client, id: &str) -> Sidecar {
    let args: Vec<String> = [
        "proxy",
        "--sidecar-for",
        id,
        "--http-addr",
        agent.base(),
        "--admin-addr",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec();
    let process =
        Process::spawn(&format!("proxy:{id}"), bin(), &args, &Server::token_env()).unwrap();
    let admin = process.listening("admin").await.unwrap();
    Sidecar {
        process,
        admin,
        host: None,
    }
}

async fn sidecar_port(client: &plexus_api::client::Client, id: &str) -> u16 {
    client.agent_services().await.unwrap()[id].port
}

#[tokio::test]
async fn two_agents_on_one_host_hand_out_different_sidecar_ports_and_both_sidecars_serve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let server = Server::start(
        bin(),
        "server-1",
        &["--store", "embedded", "--data-dir", &data],
    )
    .await
    .unwrap();
    let (_a, a) = agent("host-a1", &server.addr(), &[]).await;
    let (_b, b) = agent("host-a2", &server.addr(), &[]).await;

    // Both register before any sidecar listens: only the host reservation keeps them apart.
    let (app_a, app_b) = (
        TcpEcho::start().await.unwrap(),
        TcpEcho::start().await.unwrap(),
    );
    a.register_service(&echo("echo-a", app_a.port()))
        .await
        .unwrap();
    b.register_service(&echo("echo-b", app_b.port()))
        .await
        .unwrap();
    let upstream_a = free_port();
    let upstream_b = free_port();
    let client: ServiceRegistration = serde_json::from_value(serde_json::json!({
        "Name": "client", "Port": 8080,
        "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
            {"DestinationName": "echo-a", "LocalBindPort": upstream_a},
            {"DestinationName": "echo-b", "LocalBindPort": upstream_b}
        ]}}}
    }))
    .unwrap();
    b.register_service(&client).await.unwrap();

    let port_a = sidecar_port(&a, "echo-a-sidecar-proxy").await;
    let port_b = sidecar_port(&b, "echo-b-sidecar-proxy").await;
    let port_client = sidecar_port(&b, "client-sidecar-proxy").await;
    assert!(
        port_a != port_b && port_a != port_client && port_b != port_client,
        "sidecar ports {port_a}, {port_b}, {port_client}"
    );
    for port in [port_a, port_b, port_client] {
        assert!((21000..=21255).contains(&port), "sidecar port {port}");
    }

    for destination in ["echo-a", "echo-b"] {
        let intention: plexus_api::connect::Intention = serde_json::from_value(serde_json::json!({
            "SourceName": "client", "DestinationName": destination, "Action": "allow"
        }))
        .unwrap();
        server.client.create_intention(&intention).await.unwrap();
    }
    let _sa = sidecar(&a, "echo-a").await;
    let _sb = sidecar(&b, "echo-b").await;
    let _sc = sidecar(&b, "client").await;
    for (upstream, line) in [(upstream_a, "to a"), (upstream_b, "to b")] {
        let addr = SocketAddr::from(([127, 0, 0, 1], upstream));
        eventually!(round_trip(addr, line).await.as_deref() == Some(line));
    }

    // A third registration on the first agent skips the ports now listening.
    a.register_service(&echo("echo-c", app_a.port()))
        .await
        .unwrap();
    let port_c = sidecar_port(&a, "echo-c-sidecar-proxy").await;
    assert!(
        ![port_a, port_b, port_client].contains(&port_c),
        "sidecar port {port_c}"
    );
}
