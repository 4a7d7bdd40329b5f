//! Envoy as a data plane: real Envoy 1.40 processes (`plexus connect envoy`) configured over xDS
//! by `plexus dev`, alone and mixed with `plexus proxy` sidecars in both directions.

use std::net::SocketAddr;
use std::time::Duration;

use plexus_test::{Dev, Envoy, Sidecar, TcpEcho, eventually, free_port};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{bin, client_echo_hcl_with_sidecar_ports, dev, http, write_file};

/// Sends one line through `addr`; the reply line, or `None` when the path is not up yet.
pub(crate) async fn try_round_trip(addr: SocketAddr, line: &str) -> Option<String> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (read, mut write) = stream.into_split();
        write.write_all(format!("{line}\n").as_bytes()).await.ok()?;
        let mut reply = String::new();
        let read = BufReader::new(read).read_line(&mut reply).await.ok()?;
        // End of stream before a line: the connection was closed (e.g. refused by RBAC).
        (read > 0).then(|| reply.trim_end().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// Waits until a line sent through `addr` comes back.
pub(crate) async fn echoes(addr: SocketAddr, line: &str) {
    eventually!(try_round_trip(addr, line).await.as_deref() == Some(line));
}

pub(crate) async fn envoy(dev: &Dev, target: &[&str], options: &[&str]) -> Envoy {
    let envoy = Envoy::start(bin(), dev, target, options)
        .await
        .expect("Envoy starts");
    eventually!(envoy.is_live().await);
    envoy
}

#[tokio::test]
async fn quick_start_through_two_envoys_and_mixed_with_plexus_sidecars() {
    let echo = TcpEcho::start().await.unwrap();
    let upstream_port = free_port();
    let (_dir, file) = write_file(
        "mesh.hcl",
        &client_echo_hcl_with_sidecar_ports(echo.port(), upstream_port),
    );
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();

    // Two Envoys, one on each xDS variant.
    let echo_envoy = envoy(&dev, &["-sidecar-for", "echo"], &["--xds", "sotw"]).await;
    let client_envoy = envoy(&dev, &["--sidecar-for", "client"], &["--xds", "delta"]).await;
    echoes(upstream, "hello").await;
    assert!(echo.connections() >= 1);

    // The xDS server reports what each Envoy accepted (the echo proxy has no upstream, so no
    // endpoints to ask for).
    let accepted = |view: &plexus_api::operator::OperatorView, id: &str, types: &[&str]| {
        view.proxies.iter().any(|p| {
            p.id == id
                && p.data_plane.as_deref() == Some("envoy")
                && p.xds.as_ref().is_some_and(|x| {
                    types.iter().all(|t| x.acked.contains_key(*t)) && x.nack.is_none()
                })
        })
    };
    eventually!(dev.client.operator().await.is_ok_and(|view| {
        accepted(
            &view,
            "client-sidecar-proxy",
            &["CDS", "EDS", "LDS", "RDS", "SDS"],
        ) && accepted(&view, "echo-sidecar-proxy", &["CDS", "LDS", "RDS", "SDS"])
    }));
    let (code, out, err) = dev.cli(&["operator"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("client-sidecar-proxy") && l.contains("envoy")),
        "{out}"
    );

    // A Plexus client sidecar to the Envoy inbound.
    drop(client_envoy);
    let client_sidecar = dev.sidecar("client").await.unwrap();
    eventually!(client_sidecar.is_ready().await);
    echoes(upstream, "plexus to envoy").await;

    // An Envoy client to a Plexus inbound.
    drop(client_sidecar);
    drop(echo_envoy);
    let echo_sidecar = dev.sidecar("echo").await.unwrap();
    eventually!(echo_sidecar.is_ready().await);
    let _client_envoy = envoy(&dev, &["-sidecar-for", "client"], &[]).await;
    echoes(upstream, "envoy to plexus").await;
    assert!(
        echo_sidecar
            .metric("plexus_proxy_tls_refusals_total")
            .await
            .unwrap()
            == 0.0,
        "the Plexus inbound accepted Envoy's certificate"
    );
}

/// Envoys fetch their configuration over TLS (`--grpc-tls-addr`, the HTTPS API's certificate,
/// verified by Envoy against the CA file and the IP address) with client certificates
/// (`--verify-incoming`); an Envoy without one is closed out and gets no configuration.
#[tokio::test]
async fn envoys_fetch_their_configuration_over_tls_with_client_certificates() {
    let echo = TcpEcho::start().await.unwrap();
    let upstream_port = free_port();
    let (_dir, file) = write_file(
        "mesh.hcl",
        &client_echo_hcl_with_sidecar_ports(echo.port(), upstream_port),
    );
    let dev = dev(&[
        "--config-file",
        file.to_str().unwrap(),
        "--https-addr",
        "127.0.0.1:0",
        "--verify-incoming",
        // Signs the client certificate the test gives Envoy.
        "--auto-encrypt-allow-tls",
        "--grpc-addr",
        "off",
        "--grpc-tls-addr",
        "127.0.0.1:0",
    ])
    .await;
    let grpc_tls = dev.process.listening("grpc_tls").await.unwrap();
    assert!(!dev.process.output().contains("listener=\"grpc\""));
    let files = crate::tls::Files::new();
    let ca = files.write("ca.pem", &crate::tls::roots_pem(dev.http).await);
    let (cert, key) = crate::tls::client_cert(dev.http, "envoy").await;
    let (cert, key) = (
        files.write("envoy.pem", &cert),
        files.write("envoy-key.pem", &key),
    );
    let url = format!("https://127.0.0.1:{}", grpc_tls.port());
    let (ca, cert, key) = (
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let with_cert = [
        "--grpc-addr",
        &url,
        "--ca-file",
        ca,
        "--client-cert",
        cert,
        "--client-key",
        key,
    ];
    let _echo_envoy = envoy(&dev, &["-sidecar-for", "echo"], &with_cert).await;
    let client_envoy = envoy(&dev, &["-sidecar-for", "client"], &with_cert).await;
    echoes(([127, 0, 0, 1], upstream_port).into(), "over tls").await;
    assert!(
        client_envoy
            .stat("cluster.plexus_xds.ssl.handshake")
            .await
            .unwrap()
            >= 1
    );
    drop(client_envoy);

    // Without a client certificate the handshake completes but the server closes the
    // connection: Envoy gets no listener.
    // (It never initialises, so the test does not wait for it to be live.)
    let no_cert = Envoy::start(
        bin(),
        &dev,
        &["-sidecar-for", "client"],
        &["--grpc-addr", &url, "--ca-file", ca],
    )
    .await
    .unwrap();
    eventually!(
        no_cert
            .stat("cluster.plexus_xds.upstream_cx_destroy_remote")
            .await
            .unwrap_or(0)
            >= 1
    );
    assert_eq!(
        no_cert
            .stat("listener_manager.total_listeners_active")
            .await
            .unwrap(),
        0
    );
    // `https://` without a CA file is refused before Envoy starts.
    let (code, _, err) = plexus_test::mesh::run_cli(
        bin(),
        &[
            "connect",
            "envoy",
            "-sidecar-for",
            "client",
            "--http-addr",
            &dev.addr(),
            "--grpc-addr",
            &url,
            "-bootstrap",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("needs --ca-file"), "{err}");
}

/// An app `name` on `app_port` and a connect-proxy registered on its own (not as a sidecar
/// block), with upstreams `(destination, local port)`.
fn explicit_proxy(
    id: &str,
    name: &str,
    app_port: u16,
    upstreams: &[(&str, u16)],
) -> serde_json::Value {
    json!({
        "Kind": "connect-proxy",
        "ID": id,
        "Name": id,
        "Port": free_port(),
        "Proxy": {
            "DestinationServiceName": name,
            "DestinationServiceID": name,
            "LocalServicePort": app_port,
            "Upstreams": upstreams.iter().map(|(d, p)| json!({
                "DestinationName": d, "LocalBindPort": p
            })).collect::<Vec<_>>()
        }
    })
}

async fn register(dev: &Dev, body: serde_json::Value) {
    let url = format!("http://{}/v1/agent/service/register", dev.http);
    let (status, reply, _) = http("PUT", &url, Some(body.to_string().into_bytes())).await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn explicit_connect_proxy_runs_under_envoy_and_under_plexus_proxy() {
    let counting = TcpEcho::start().await.unwrap();
    let dev = dev(&[]).await;
    let upstream_port = free_port();
    let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
    register(&dev, json!({"Name": "counting", "Port": counting.port()})).await;
    register(&dev, json!({"Name": "dashboard", "Port": free_port()})).await;
    register(
        &dev,
        explicit_proxy("counting-proxy", "counting", counting.port(), &[]),
    )
    .await;
    register(
        &dev,
        explicit_proxy(
            "dashboard-proxy",
            "dashboard",
            free_port(),
            &[("counting", upstream_port)],
        ),
    )
    .await;

    // Envoy for counting, plexus proxy for the dashboard.
    let counting_envoy = envoy(&dev, &["-proxy-id", "counting-proxy"], &[]).await;
    let dashboard = Sidecar::start_proxy_id(bin(), &dev.addr(), "dashboard-proxy")
        .await
        .unwrap();
    eventually!(dashboard.is_ready().await);
    echoes(upstream, "count 1").await;

    // And the other way round.
    drop(dashboard);
    drop(counting_envoy);
    let counting_sidecar = Sidecar::start_proxy_id(bin(), &dev.addr(), "counting-proxy")
        .await
        .unwrap();
    eventually!(counting_sidecar.is_ready().await);
    let _dashboard_envoy = envoy(&dev, &["-proxy-id", "dashboard-proxy"], &[]).await;
    echoes(upstream, "count 2").await;
}

#[tokio::test]
async fn connect_envoy_refuses_bad_input_with_the_cause() {
    let dev = dev(&[]).await;
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &["connect", "envoy"],
            64,
            "-sidecar-for SERVICE_ID or -proxy-id ID is required",
        ),
        (
            &[
                "connect",
                "envoy",
                "-sidecar-for",
                "web",
                "-admin-bind",
                "nowhere",
            ],
            64,
            "-admin-bind \"nowhere\" is not an ip:port address",
        ),
        (
            &[
                "connect",
                "envoy",
                "-sidecar-for",
                "web",
                "--grpc-addr",
                "x:y",
            ],
            64,
            "--grpc-addr \"x:y\" is not an ip:port address",
        ),
        (
            &["connect", "envoy", "-sidecar-for", "nope"],
            1,
            "no sidecar proxy for service id \"nope\"",
        ),
        (
            &["connect", "envoy", "-proxy-id", "nope"],
            1,
            "looking up proxy \"nope\"",
        ),
    ];
    for (args, code, message) in cases {
        let (got, _, err) = dev.cli(args).unwrap();
        assert_eq!(got, code, "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    // -bootstrap prints the configuration instead of running Envoy.
    register(
        &dev,
        json!({"Name": "web", "Port": 8080, "Connect": {"SidecarService": {"Port": free_port()}}}),
    )
    .await;
    let (code, out, err) = dev
        .cli(&["connect", "envoy", "-sidecar-for", "web", "-bootstrap"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let bootstrap: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(bootstrap["node"]["id"], "web-sidecar-proxy");
    // A missing Envoy binary is named.
    let (code, _, err) = dev
        .cli(&[
            "connect",
            "envoy",
            "-sidecar-for",
            "web",
            "--envoy-binary",
            "/nonexistent/envoy",
        ])
        .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot run Envoy (/nonexistent/envoy)"),
        "{err}"
    );
}
