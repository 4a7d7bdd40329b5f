//! The TCP echo scenario through real `plexus proxy` processes: echo through two sidecars, round
//! robin over two instances, failover when one dies, and the admin endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use plexus_test::{Sidecar, TcpEcho, eventually, free_port};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{client_echo_hcl_with_sidecar_ports, dev, http, write_file};

/// Sends one line through `addr` and returns the reply line.
async fn round_trip(addr: SocketAddr, line: &str) -> String {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to upstream listener");
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(read).read_line(&mut reply),
    )
    .await
    .expect("reply within 10s")
    .unwrap();
    reply.trim_end().to_owned()
}

async fn wait_endpoints(sidecar: &Sidecar, n: usize) {
    eventually!(
        sidecar.is_ready().await
            && sidecar
                .endpoints("echo")
                .await
                .map(|e| e.len())
                .unwrap_or(0)
                == n
    );
}

#[tokio::test]
async fn echo_round_robin_and_failover_through_two_sidecars() {
    let echo1 = TcpEcho::start().await.unwrap();
    let upstream_port = free_port();
    let (_dir, file) = write_file(
        "mesh.hcl",
        &client_echo_hcl_with_sidecar_ports(echo1.port(), upstream_port),
    );
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();

    let client_sidecar = dev.sidecar("client").await.unwrap();
    let echo_sidecar = dev.sidecar("echo").await.unwrap();
    client_sidecar
        .process
        .listening("upstream:echo")
        .await
        .unwrap();
    eventually!(echo_sidecar.is_ready().await);
    wait_endpoints(&client_sidecar, 1).await;

    // Echo through both sidecars.
    assert_eq!(round_trip(upstream, "hello").await, "hello");
    assert_eq!(round_trip(upstream, "plexus").await, "plexus");
    assert_eq!(echo1.connections(), 2);

    // A long-lived connection opened now must survive every change below.
    let long_lived = TcpStream::connect(upstream).await.unwrap();
    let (long_read, mut long_write) = long_lived.into_split();
    let mut long_read = BufReader::new(long_read);

    // A second instance: connections alternate.
    let echo2 = TcpEcho::start().await.unwrap();
    let reg = json!({
        "ID": "echo-2", "Name": "echo", "Port": echo2.port(),
        "Check": {"TCP": echo2.addr.to_string(), "Interval": "1s", "Timeout": "500ms"},
        "Connect": {"SidecarService": {"Port": free_port()}}
    });
    let url = format!("http://{}/v1/agent/service/register", dev.http);
    assert_eq!(
        http("PUT", &url, Some(reg.to_string().into_bytes()))
            .await
            .0,
        200
    );
    let echo2_sidecar = dev.sidecar("echo-2").await.unwrap();
    eventually!(echo2_sidecar.is_ready().await);
    wait_endpoints(&client_sidecar, 2).await;
    let (before1, before2) = (echo1.connections(), echo2.connections());
    for i in 0..6 {
        assert_eq!(
            round_trip(upstream, &format!("rr {i}")).await,
            format!("rr {i}")
        );
    }
    assert_eq!(
        echo1.connections() - before1,
        3,
        "round robin: half to echo"
    );
    assert_eq!(
        echo2.connections() - before2,
        3,
        "round robin: half to echo-2"
    );

    // The long-lived connection is still served.
    long_write.write_all(b"still here\n").await.unwrap();
    let mut reply = String::new();
    long_read.read_line(&mut reply).await.unwrap();
    assert_eq!(reply, "still here\n");

    // echo-2 dies: its check goes critical and new connections all reach echo.
    drop(echo2);
    wait_endpoints(&client_sidecar, 1).await;
    let before1 = echo1.connections();
    for i in 0..4 {
        assert_eq!(
            round_trip(upstream, &format!("fo {i}")).await,
            format!("fo {i}")
        );
    }
    assert_eq!(echo1.connections() - before1, 4);

    // Metrics and config on the admin listener.
    let (status, metrics) = client_sidecar.admin_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("plexus_proxy_connections_total"),
        "{metrics}"
    );
    assert!(metrics.contains("upstream=\"echo\""), "{metrics}");
    let (status, config) = client_sidecar.admin_get("/config").await.unwrap();
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(config["revision"].as_u64().unwrap() > 0, "{config}");
    assert_eq!(config["service"], "client-sidecar-proxy");
}

#[tokio::test]
async fn proxy_started_before_the_control_plane_waits_and_then_serves() {
    let echo = TcpEcho::start().await.unwrap();
    let upstream_port = free_port();
    let http_port = free_port();
    let control = format!("127.0.0.1:{http_port}");
    let sidecar = Sidecar::start(crate::bin(), &control, "client")
        .await
        .unwrap();
    sidecar
        .process
        .wait_for_line("control plane")
        .await
        .unwrap();
    assert!(
        !sidecar.is_ready().await,
        "not ready without a control plane"
    );

    let (_dir, file) = write_file(
        "mesh.hcl",
        &client_echo_hcl_with_sidecar_ports(echo.port(), upstream_port),
    );
    let data = tempfile::tempdir().unwrap();
    let dev = plexus_test::Dev::start_in(
        crate::bin(),
        data.path(),
        &[
            "--config-file",
            file.to_str().unwrap(),
            "--http-addr",
            &control,
        ],
    )
    .await
    .unwrap();
    let echo_sidecar = dev.sidecar("echo").await.unwrap();
    eventually!(echo_sidecar.is_ready().await);
    wait_endpoints(&sidecar, 1).await;
    let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
    assert_eq!(round_trip(upstream, "late start").await, "late start");
}
