//! Durable, highly available state: `plexus server` on the embedded store across `kill -9`, and
//! several replicas over a real 3-member etcd cluster (writes visible through every replica,
//! blocking queries woken by another replica's write, replicas and etcd members killed and
//! restarted under a steady writer).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_api::client::{Client, QueryOptions};
use plexus_test::mesh::run_cli;
use plexus_test::{EtcdCluster, Process, Server, eventually};

use crate::bin;

#[tokio::test]
async fn unknown_store_and_bad_etcd_flags_are_config_errors_exit_64() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["server", "--store", "consul"],
            "--store \"consul\" is not a store",
        ),
        (&["server", "--store", "etcd"], "needs --etcd-endpoints"),
        (
            &["server", "--store", "etcd", "--etcd-endpoints", "a:1,nope"],
            "invalid etcd endpoint \"nope\"",
        ),
        (
            &[
                "server",
                "--store",
                "etcd",
                "--etcd-endpoints",
                "a:1",
                "--etcd-prefix",
                "",
            ],
            "--etcd-prefix must not be empty",
        ),
    ];
    for (args, message) in cases {
        let (code, _, err) = run_cli(bin(), args, &[]).unwrap();
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn embedded_store_keeps_every_acknowledged_write_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let mut server = Server::start(bin(), "solo", &["--store", "embedded", "--data-dir", &data])
        .await
        .unwrap();
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let writer = tokio::spawn({
        let client = server.client.clone();
        let acked = acked.clone();
        async move {
            for i in 0.. {
                let key = format!("durable/{i:05}");
                let value = format!("value-{i}");
                match client
                    .kv_put(&key, value.clone().into_bytes(), 0, None)
                    .await
                {
                    Ok(true) => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    _ => return i,
                }
            }
            unreachable!()
        }
    });
    eventually!(acked.lock().unwrap().len() >= 40);
    // Registrations through the server's agent, acknowledged before the kill too.
    for i in 0..5 {
        let registration = plexus_api::ServiceRegistration {
            name: format!("kept-{i}"),
            port: Some(9000 + i),
            ..Default::default()
        };
        server.client.register_service(&registration).await.unwrap();
    }
    server.kill9().unwrap();
    let attempted = writer.await.unwrap();
    server.restart().await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 40 && acked.len() <= attempted + 1);
    let stored = server
        .client
        .kv_list("durable/", QueryOptions::default())
        .await
        .unwrap();
    let stored: BTreeMap<String, Vec<u8>> = stored
        .value
        .into_iter()
        .map(|p| (p.key.clone(), decode(p.value.as_deref())))
        .collect();
    for (key, value) in &acked {
        assert_eq!(
            stored.get(key),
            Some(&value.clone().into_bytes()),
            "{key} lost"
        );
    }
    let services = server
        .client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    for i in 0..5 {
        assert!(
            services.value.contains_key(&format!("kept-{i}")),
            "kept-{i} lost"
        );
    }
}

fn decode(value: Option<&str>) -> Vec<u8> {
    use base64::Engine;
    value.map_or_else(Vec::new, |v| {
        base64::engine::general_purpose::STANDARD.decode(v).unwrap()
    })
}

#[tokio::test]
async fn etcd_unreachable_at_start_is_retried_then_the_server_serves() {
    let mut cluster = EtcdCluster::prepare(1).unwrap();
    let port = plexus_test::free_port();
    let args = [
        "server",
        "--store",
        "etcd",
        "--etcd-endpoints",
        &cluster.endpoints_arg(),
        "--http-addr",
        &format!("127.0.0.1:{port}"),
        "--dns-addr",
        "127.0.0.1:0",
        "--node",
        "patient",
    ]
    .map(str::to_owned);
    let server = Process::spawn(
        "server:patient",
        bin(),
        &args,
        &plexus_test::server::server_env(),
    )
    .unwrap();
    let line = server
        .wait_for_line("cannot reach etcd; retrying")
        .await
        .unwrap();
    assert!(line.contains("no etcd endpoint reachable"), "{line}");
    // Still retrying (a second attempt), not crashed.
    let first = server.output().matches("cannot reach etcd").count();
    eventually!(server.output().matches("cannot reach etcd").count() > first);
    cluster.start_all().await.unwrap();
    let http = server.listening("http").await.unwrap();
    let client = plexus_test::server::management_client(&http.to_string()).unwrap();
    assert!(
        client
            .kv_put("came/up", b"yes".to_vec(), 0, None)
            .await
            .unwrap()
    );
}

struct Replicas {
    cluster: EtcdCluster,
    servers: Vec<Server>,
}

async fn replicas(n: usize) -> Replicas {
    let cluster = EtcdCluster::start(3).await.unwrap();
    let endpoints = cluster.endpoints_arg();
    let mut servers = Vec::new();
    for i in 0..n {
        let name = format!("replica-{i}");
        let server = Server::start(
            bin(),
            &name,
            &["--store", "etcd", "--etcd-endpoints", &endpoints],
        )
        .await
        .unwrap();
        servers.push(server);
    }
    Replicas { cluster, servers }
}

#[tokio::test]
async fn replicas_over_etcd_share_writes_and_a_blocking_query_wakes_on_another_replicas_write() {
    let r = replicas(3).await;
    let [a, b, c] = [&r.servers[0], &r.servers[1], &r.servers[2]];
    assert!(
        a.client
            .kv_put("shared/k", b"1".to_vec(), 0, None)
            .await
            .unwrap()
    );
    for s in [b, c] {
        let got = s
            .client
            .kv_get("shared/k", QueryOptions::default())
            .await
            .unwrap();
        assert_eq!(
            got.value.map(|p| decode(p.value.as_deref())),
            Some(b"1".to_vec())
        );
    }
    // Every replica sees every replica's node (the catalog is shared).
    let nodes = c
        .client
        .catalog_nodes(QueryOptions::default())
        .await
        .unwrap()
        .value;
    let names: Vec<_> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["replica-0", "replica-1", "replica-2"]);

    // A blocking query on b with a ten-minute wait returns with a's write: woken by the watch.
    let index = b
        .client
        .kv_get("shared/k", QueryOptions::default())
        .await
        .unwrap()
        .index;
    let blocked = tokio::spawn({
        let client = b.client.clone();
        async move {
            let query = QueryOptions::blocking(index, Duration::from_secs(600));
            let got = client.kv_get("shared/k", query).await.unwrap();
            (got, Instant::now())
        }
    });
    // The query is blocked (the index has not moved) until a writes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!blocked.is_finished(), "returned without a write");
    let written_at = Instant::now();
    assert!(
        a.client
            .kv_put("shared/k", b"2".to_vec(), 0, None)
            .await
            .unwrap()
    );
    let (got, woke_at) = blocked.await.unwrap();
    assert!(got.index > index);
    assert_eq!(
        got.value.map(|p| decode(p.value.as_deref())),
        Some(b"2".to_vec())
    );
    let latency = woke_at.saturating_duration_since(written_at);
    eprintln!("blocking query on replica b woke {latency:?} after the write through replica a");
    assert!(latency < Duration::from_secs(1), "woke after {latency:?}");
}

/// Acceptance (a): 3 etcd members, 3 server replicas, an agent (talking to all three) with two
/// sidecars carrying traffic. A writer registers services and writes KV keys through a random
/// replica at a steady rate while one etcd member and one server replica are killed (SIGKILL) and
/// restarted three times. Afterwards: every acknowledged write is present exactly once, the
/// indexes a reader saw through random replicas never went backwards, and not one proxied request
/// failed.
#[tokio::test]
async fn acceptance_replicas_etcd_members_killed_under_writes_and_traffic() {
    let mut r = replicas(3).await;
    let servers: Vec<String> = r.servers.iter().map(Server::addr).collect();
    let clients: Vec<Client> = r.servers.iter().map(|s| s.client.clone()).collect();
    // A server's default intention policy is deny: allow client → echo as an operator would.
    let allow: plexus_api::connect::Intention = serde_json::from_value(serde_json::json!({
        "SourceName": "client", "DestinationName": "echo", "Action": "allow"
    }))
    .unwrap();
    clients[0].create_intention(&allow).await.unwrap();

    // The data plane: an agent on its own node, two sidecars talking to the agent.
    let echo = plexus_test::TcpEcho::start().await.unwrap();
    let upstream_port = plexus_test::free_port();
    let (_defs, file) = crate::write_file(
        "mesh.hcl",
        &crate::client_echo_hcl_with_sidecar_ports(echo.port(), upstream_port),
    );
    let (_agent, agent_client) = crate::agent::agent(
        "edge",
        &servers.join(","),
        &["--config-file", file.to_str().unwrap()],
    )
    .await;
    let agent_addr = agent_client.base().trim_start_matches("http://").to_owned();
    let token = ["--token", plexus_test::management_token()];
    let client_sidecar = plexus_test::Sidecar::start_with(bin(), &agent_addr, "client", &token)
        .await
        .unwrap();
    let echo_sidecar = plexus_test::Sidecar::start_with(bin(), &agent_addr, "echo", &token)
        .await
        .unwrap();
    eventually!(echo_sidecar.is_ready().await);
    eventually!(
        client_sidecar.is_ready().await
            && client_sidecar
                .endpoints("echo")
                .await
                .is_ok_and(|e| e.len() == 1)
    );
    let upstream: std::net::SocketAddr = ([127, 0, 0, 1], upstream_port).into();
    assert!(echo_once(upstream, "first").await);

    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut i = 0u64;
            while !stop.is_cancelled() {
                if echo_once(upstream, &format!("t{i}")).await {
                    ok += 1;
                } else {
                    failed += 1;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }
    });
    let acked_kv: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let acked_services: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = tokio::spawn({
        let clients = clients.clone();
        let (acked_kv, acked_services) = (acked_kv.clone(), acked_services.clone());
        let stop = stop.clone();
        async move {
            let mut i = 0u64;
            let mut failed = 0u64;
            while !stop.is_cancelled() {
                let client = &clients[rand::random::<u32>() as usize % clients.len()];
                let key = format!("chaos/{i:06}");
                let value = format!("v{i}");
                let written = client
                    .kv_put(&key, value.clone().into_bytes(), 0, Some(0))
                    .await;
                let service = format!("svc-{i:05}");
                // A catalog registration for the writer's own node, through whichever replica:
                // the same id again replaces it, so a retry cannot duplicate it.
                let registration = plexus_api::remote::NodeRegistration {
                    node: plexus_api::Node {
                        node: "writer".to_owned(),
                        address: "127.0.0.1".to_owned(),
                        ..Default::default()
                    },
                    services: vec![plexus_api::AgentService {
                        id: service.clone(),
                        service: service.clone(),
                        port: 10_000 + (i % 1000) as u16,
                        ..Default::default()
                    }],
                    checks: Vec::new(),
                };
                let registered = reqwest::Client::new()
                    .put(format!("{}/v1/internal/node/register", client.base()))
                    .header("x-consul-token", plexus_test::management_token())
                    .json(&registration)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .ok_or(());
                match (written, registered) {
                    // cas=0 and false: an earlier unacknowledged try did land.
                    (Ok(_), Ok(_)) => {
                        acked_kv.lock().unwrap().insert(key, value);
                        acked_services.lock().unwrap().push(service);
                        i += 1;
                    }
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failed
        }
    });
    let reader = tokio::spawn({
        let clients = clients.clone();
        let stop = stop.clone();
        async move {
            let mut last = 0u64;
            let mut reads = 0u64;
            while !stop.is_cancelled() {
                let client = &clients[rand::random::<u32>() as usize % clients.len()];
                if let Ok(got) = client.kv_list("chaos/", QueryOptions::default()).await {
                    assert!(
                        got.index >= last,
                        "KV index went backwards: {last} -> {}",
                        got.index
                    );
                    last = got.index;
                    reads += 1;
                }
                if let Ok(got) = client.catalog_services(QueryOptions::default()).await {
                    assert!(
                        got.index >= last,
                        "catalog index went backwards: {last} -> {}",
                        got.index
                    );
                    last = got.index;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            reads
        }
    });
    let progress = |n: usize| {
        let acked = acked_kv.clone();
        async move {
            let before = acked.lock().unwrap().len();
            eventually!(acked.lock().unwrap().len() >= before + n);
        }
    };
    for round in 0..3 {
        progress(15).await;
        let member = round % 3;
        r.cluster.kill(member).unwrap();
        r.servers[1].kill9().unwrap();
        progress(15).await;
        r.cluster.restart(member).await.unwrap();
        r.servers[1].restart().await.unwrap();
    }
    progress(15).await;
    stop.cancel();
    let write_failures = writer.await.unwrap();
    let reads = reader.await.unwrap();
    let (served, failed) = traffic.await.unwrap();
    let acked_kv = acked_kv.lock().unwrap().clone();
    let acked_services = acked_services.lock().unwrap().clone();
    eprintln!(
        "acknowledged: {} KV writes and {} registrations ({write_failures} failed attempts); \
         {reads} monotonic reads; proxied: {served} served, {failed} failed",
        acked_kv.len(),
        acked_services.len()
    );
    assert_eq!(failed, 0, "proxied requests failed");

    // Every acknowledged write, exactly once, through every replica.
    for client in &clients {
        let stored = client
            .kv_list("chaos/", QueryOptions::default())
            .await
            .unwrap();
        let keys: Vec<&String> = stored.value.iter().map(|p| &p.key).collect();
        let unique: std::collections::BTreeSet<&String> = keys.iter().copied().collect();
        assert_eq!(keys.len(), unique.len(), "a key listed twice");
        let values: BTreeMap<String, Vec<u8>> = stored
            .value
            .iter()
            .map(|p| (p.key.clone(), decode(p.value.as_deref())))
            .collect();
        for (key, value) in &acked_kv {
            assert_eq!(
                values.get(key),
                Some(&value.clone().into_bytes()),
                "{key} lost"
            );
        }
        let services = client
            .catalog_services(QueryOptions::default())
            .await
            .unwrap()
            .value;
        for service in &acked_services {
            assert!(services.contains_key(service), "{service} lost");
            let instances = client
                .catalog_service(service, QueryOptions::default())
                .await
                .unwrap();
            assert_eq!(
                instances.value.len(),
                1,
                "{service} registered more than once"
            );
        }
    }

    // The operator view: three replicas, etcd with three healthy members and a leader, both
    // proxies with the revision they last applied.
    let (code, out, err) = plexus_test::mesh::run_cli(
        bin(),
        &["operator", "--json", "--http-addr", &servers[0]],
        &Server::token_env(),
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes: Vec<&str> = view["Servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["replica-0", "replica-1", "replica-2"], "{view}");
    assert_eq!(view["Store"]["Backend"], "etcd");
    let members = view["Store"]["Members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{view}");
    assert!(members.iter().all(|m| m["Healthy"] == true), "{view}");
    assert_eq!(
        members.iter().filter(|m| m["Leader"] == true).count(),
        1,
        "{view}"
    );
    let proxies: Vec<&str> = view["Proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["Revision"].as_u64().unwrap_or(0) > 0)
        .map(|p| p["ID"].as_str().unwrap())
        .collect();
    assert_eq!(
        proxies,
        ["client-sidecar-proxy", "echo-sidecar-proxy"],
        "{view}"
    );
}

#[tokio::test]
async fn operator_shows_an_unreachable_etcd_member_and_a_stopped_replica_leaves_the_list() {
    let mut r = replicas(2).await;
    let view = r.servers[0].client.operator().await.unwrap();
    assert_eq!(view.servers.len(), 2);
    assert_eq!(view.answered_by, "replica-0");
    r.cluster.kill(2).unwrap();
    let client = r.servers[0].client.clone();
    eventually!(client.operator().await.is_ok_and(|v| {
        v.store.members.iter().filter(|m| !m.healthy).count() == 1
            && v.store.members.iter().filter(|m| m.healthy).count() == 2
    }));
    let (code, out, _) = plexus_test::mesh::run_cli(
        bin(),
        &["operator", "--http-addr", &r.servers[0].addr()],
        &Server::token_env(),
    )
    .unwrap();
    assert_eq!(code, 0);
    assert!(
        out.contains("unreachable") && out.contains("healthy"),
        "{out}"
    );
    // A replica stopped gracefully withdraws its announcement.
    r.servers[1]
        .process
        .as_mut()
        .unwrap()
        .terminate()
        .await
        .unwrap();
    eventually!(client.operator().await.is_ok_and(|v| v.servers.len() == 1));
}

/// One line through `addr` and back; false on any failure (connect, write, read, wrong echo).
async fn echo_once(addr: std::net::SocketAddr, line: &str) -> bool {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (read, mut write) = stream.into_split();
        write.write_all(format!("{line}\n").as_bytes()).await.ok()?;
        let mut reply = String::new();
        BufReader::new(read).read_line(&mut reply).await.ok()?;
        Some(reply.trim_end() == line)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), attempt).await,
        Ok(Some(true))
    )
}

/// Acceptance (c): the control plane is stopped (`kill -9`) for 60 s while traffic flows through
/// two sidecars: not one request fails, the sidecars say `stale since …`, and they resync when
/// the control plane is back. The client sidecar is given two servers, the first of them dead,
/// so it also shows `--server` failover.
#[tokio::test]
async fn sidecar_traffic_flows_with_zero_failures_while_the_control_plane_is_down_for_60s() {
    let echo = plexus_test::TcpEcho::start().await.unwrap();
    let upstream_port = plexus_test::free_port();
    let (_dir, file) = crate::write_file(
        "mesh.hcl",
        &crate::client_echo_hcl_with_sidecar_ports(echo.port(), upstream_port),
    );
    let data = tempfile::tempdir().unwrap();
    let control = format!("127.0.0.1:{}", plexus_test::free_port());
    let dev_args = [
        "--config-file",
        file.to_str().unwrap(),
        "--http-addr",
        &control,
    ];
    let dev = plexus_test::Dev::start_in(bin(), data.path(), &dev_args)
        .await
        .unwrap();
    let dead = format!("127.0.0.1:{}", plexus_test::free_port());
    let client_args = [
        "proxy",
        "--sidecar-for",
        "client",
        "--server",
        &format!("{dead},{control}"),
        "--admin-addr",
        "127.0.0.1:0",
    ]
    .map(str::to_owned);
    let client_process = Process::spawn("proxy:client", bin(), &client_args, &[]).unwrap();
    let client_admin = client_process.listening("admin").await.unwrap();
    let client_sidecar = plexus_test::Sidecar {
        process: client_process,
        admin: client_admin,
    };
    let echo_sidecar = dev.sidecar("echo").await.unwrap();
    eventually!(echo_sidecar.is_ready().await);
    eventually!(
        client_sidecar.is_ready().await
            && client_sidecar
                .endpoints("echo")
                .await
                .is_ok_and(|e| e.len() == 1)
    );
    let upstream: std::net::SocketAddr = ([127, 0, 0, 1], upstream_port).into();
    assert!(echo_once(upstream, "before").await);

    // Steady traffic, one new connection every 20 ms, counted.
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut i = 0u64;
            while !stop.is_cancelled() {
                if echo_once(upstream, &format!("req {i}")).await {
                    ok += 1;
                } else {
                    failed.push(std::time::Instant::now());
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }
    });

    // The whole control plane goes away, without a chance to deregister anything.
    let mut dev = dev;
    let killed_at = std::time::Instant::now();
    dev.process.signal("KILL").unwrap();
    dev.process.wait_exit().await.unwrap();
    eventually!(
        client_sidecar
            .admin_get("/ready")
            .await
            .is_ok_and(|(status, body)| status == 200 && body.contains("stale since"))
    );
    let (_, config) = client_sidecar.admin_get("/config").await.unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(config["stale_since"].is_string(), "{config}");
    assert_eq!(
        config["upstreams"][0]["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The scenario itself: 60 s without a control plane, traffic running.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let down_for = 60;

    // Back on the same address and data: the sidecars resync.
    let restarted_at = std::time::Instant::now();
    let _dev = plexus_test::Dev::start_in(bin(), data.path(), &dev_args)
        .await
        .unwrap();
    eventually!(
        client_sidecar
            .admin_get("/ready")
            .await
            .is_ok_and(|(status, body)| status == 200 && body == "ready")
    );
    eventually!(
        echo_sidecar
            .admin_get("/config")
            .await
            .is_ok_and(|(_, body)| body.contains("\"stale_since\":null"))
    );
    stop.cancel();
    let (ok, failed) = traffic.await.unwrap();
    eprintln!(
        "control plane down {down_for}s: {ok} requests served, {} failed",
        failed.len()
    );
    // When each failure happened, relative to the kill and the restart (for diagnosis).
    let when: Vec<String> = failed
        .iter()
        .map(|at| {
            let since = |t: std::time::Instant| {
                at.checked_duration_since(t).map_or_else(
                    || "before".to_owned(),
                    |d| format!("{:.1}s", d.as_secs_f64()),
                )
            };
            format!("kill+{} restart+{}", since(killed_at), since(restarted_at))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed while the control plane was down: {when:?}"
    );
    assert!(ok > 100, "traffic kept flowing: {ok}");
    assert!(echo_once(upstream, "after").await);
}
