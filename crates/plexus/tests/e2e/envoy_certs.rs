//! Certificates under traffic through Envoys: 2-minute leaves renewed over SDS for five minutes,
//! and a root rotation, with no failed connection and no Envoy restart.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use plexus_test::{Envoy, TcpEcho, eventually, free_port};

use crate::envoy::{echoes, envoy};
use crate::identity_long::{LongLived, Traffic};
use crate::{client_echo_hcl_with_sidecar_ports, dev, write_file};

/// The serial numbers of the leaves Envoy currently presents (`/certs`).
async fn leaf_serials(envoy: &Envoy) -> BTreeSet<String> {
    let Ok((_, body)) = envoy.admin_get("/certs").await else {
        return BTreeSet::new();
    };
    let certs: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cert_chain"][0]["serial_number"].as_str())
        .map(str::to_owned)
        .collect()
}

/// How many root certificates Envoy trusts (`/certs`, the validation contexts).
async fn trusted_roots(envoy: &Envoy) -> usize {
    let Ok((_, body)) = envoy.admin_get("/certs").await else {
        return 0;
    };
    let certs: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    certs["certificates"][0]["ca_cert"]
        .as_array()
        .map_or(0, Vec::len)
}

struct EnvoyMesh {
    dev: plexus_test::Dev,
    client: Envoy,
    echo: Envoy,
    upstream: SocketAddr,
    _app: TcpEcho,
    _dir: tempfile::TempDir,
}

impl EnvoyMesh {
    async fn start(extra: &[&str]) -> Self {
        let app = TcpEcho::start().await.unwrap();
        let upstream_port = free_port();
        let (dir, file) = write_file(
            "mesh.hcl",
            &client_echo_hcl_with_sidecar_ports(app.port(), upstream_port),
        );
        let mut args = vec!["--config-file", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let dev = dev(&args).await;
        let echo = envoy(&dev, &["-sidecar-for", "echo"], &[]).await;
        let client = envoy(&dev, &["-sidecar-for", "client"], &["--xds", "sotw"]).await;
        let upstream = ([127, 0, 0, 1], upstream_port).into();
        echoes(upstream, "ready").await;
        Self {
            dev,
            client,
            echo,
            upstream,
            _app: app,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn two_minute_leaves_renew_over_sds_under_five_minutes_of_traffic_through_envoy() {
    let mesh = EnvoyMesh::start(&["--connect-leaf-ttl", "2m"]).await;
    let (client_pid, echo_pid) = (mesh.client.process.pid(), mesh.echo.process.pid());
    let mut long_lived = LongLived::open(mesh.upstream).await;
    let traffic = Traffic::start(mesh.upstream);
    let mut client_leaves = leaf_serials(&mesh.client).await;
    let mut echo_leaves = leaf_serials(&mesh.echo).await;
    let scenario = Duration::from_secs(5 * 60);
    let started = Instant::now();
    while started.elapsed() < scenario {
        // Pacing, not synchronisation: look at the mesh every few seconds for five minutes.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            traffic.failed(),
            0,
            "a connection failed after {:?}",
            started.elapsed()
        );
        client_leaves.extend(leaf_serials(&mesh.client).await);
        echo_leaves.extend(leaf_serials(&mesh.echo).await);
        if started.elapsed().as_secs() % 30 < 5 {
            long_lived.echo("still open").await;
        }
    }
    let (ok, failed) = traffic.finish().await;
    println!(
        "{ok} connections, {failed} failed; leaves seen in /certs: client {}, echo {}",
        client_leaves.len(),
        echo_leaves.len()
    );
    assert_eq!(failed, 0);
    assert!(ok > 1000, "only {ok} connections");
    // At about half-life: at least three renewals each in five minutes of 2-minute leaves.
    assert!(client_leaves.len() >= 4, "{client_leaves:?}");
    assert!(echo_leaves.len() >= 4, "{echo_leaves:?}");
    // Same processes all along: no restart.
    assert_eq!(mesh.client.process.pid(), client_pid);
    assert_eq!(mesh.echo.process.pid(), echo_pid);
    assert!(mesh.client.is_live().await && mesh.echo.is_live().await);
    long_lived.echo("the end").await;
}

#[tokio::test]
async fn a_root_rotation_under_traffic_through_envoy_fails_no_connection() {
    let mesh = EnvoyMesh::start(&[]).await;
    let mut long_lived = LongLived::open(mesh.upstream).await;
    let traffic = Traffic::start(mesh.upstream);
    eventually!(traffic.ok() >= 10);
    let before = (
        leaf_serials(&mesh.client).await,
        leaf_serials(&mesh.echo).await,
    );
    assert_eq!(trusted_roots(&mesh.client).await, 1);

    let (code, _, err) = mesh.dev.cli(&["connect", "ca", "rotate"]).unwrap();
    assert_eq!(code, 0, "{err}");
    // Both Envoys trust both roots and present new leaves from the new root.
    eventually!(trusted_roots(&mesh.client).await == 2 && trusted_roots(&mesh.echo).await == 2);
    eventually!(
        leaf_serials(&mesh.client).await.is_disjoint(&before.0)
            && leaf_serials(&mesh.echo).await.is_disjoint(&before.1)
    );
    let after_rotation = traffic.ok();
    eventually!(traffic.ok() >= after_rotation + 20);
    long_lived.echo("across the rotation").await;
    let (ok, failed) = traffic.finish().await;
    println!("rotation through Envoy: {ok} connections, {failed} failed");
    assert_eq!(failed, 0, "{failed} of {} connections failed", ok + failed);
    echoes(mesh.upstream, "after").await;
}
