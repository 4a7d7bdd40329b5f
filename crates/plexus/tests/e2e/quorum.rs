//! Three `plexus server` replicas on a 3-member etcd cluster, each replica and member on its own
//! host (network namespaces), and an agent on a fourth host. One replica is cut off with its
//! member: writes through it fail with a clear error, reads through it are refused, the agent
//! fails over to the majority, and no acknowledged write is lost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_api::client::QueryOptions;
use plexus_test::{EtcdCluster, Host, Network, Server, eventually};
use tokio_util::sync::CancellationToken;

use crate::bin;

/// What one writer saw.
#[derive(Debug, Default, Clone)]
struct Writes {
    /// Keys whose PUT was acknowledged (`true`), with their value.
    acked: BTreeMap<String, String>,
    /// Refused or failed PUTs: (during the partition?, status, body or error).
    failed: Vec<(bool, u16, String)>,
}

/// The header carrying the servers' management token (servers enforce ACLs, default deny).
fn management() -> [(&'static str, &'static str); 1] {
    [("X-Consul-Token", plexus_test::management_token())]
}

/// PUTs `w/<name>/<n>` = `<n>` one after another through the server at `addr`, from inside `host`
/// (so it keeps writing through a replica that is cut off, as a client on that host would).
fn writer(
    host: Host,
    name: &'static str,
    addr: std::net::SocketAddr,
    cut: Arc<Mutex<bool>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Writes> {
    tokio::spawn(async move {
        let mut writes = Writes::default();
        let mut n = 0u64;
        while !stop.is_cancelled() {
            let key = format!("w/{name}/{n}");
            let value = n.to_string();
            let during = *cut.lock().unwrap();
            match host
                .http(
                    addr,
                    "PUT",
                    &format!("/v1/kv/{key}"),
                    value.as_bytes(),
                    &management(),
                )
                .await
            {
                Ok((200, body)) if body.trim() == "true" => {
                    writes.acked.insert(key, value);
                }
                Ok((status, body)) => writes.failed.push((during, status, body)),
                Err(error) => writes.failed.push((during, 0, format!("{error:#}"))),
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writes
    })
}

/// Reads `key` through `server`. A 503 (the store between leaders, e.g. while the healed member
/// catches up) is asked again until a deadline; anything else but 200 means the write is lost.
async fn read_through(server: &Server, key: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = reqwest::Client::new()
            .get(format!("http://{}/v1/kv/{key}?raw", server.addr()))
            .header("X-Consul-Token", plexus_test::management_token())
            .send()
            .await
            .unwrap();
        let status = got.status().as_u16();
        let body = got.text().await.unwrap();
        match status {
            200 => return body,
            503 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("{key} acknowledged but lost: {status} {body}"),
        }
    }
}

#[tokio::test]
async fn a_partitioned_replica_refuses_and_no_acknowledged_write_is_lost() {
    let network = Network::start(&["s1", "s2", "s3", "edge"]).unwrap();
    let hosts: Vec<Host> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| network.host(n).clone())
        .collect();
    let etcd = EtcdCluster::start_on(&hosts).await.unwrap();
    let endpoints = etcd.endpoints_arg();
    let mut servers = Vec::new();
    for host in &hosts {
        let server = Server::start_on(
            host,
            bin(),
            host.name(),
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                &endpoints,
                "--default-intention-policy",
                "allow",
            ],
        )
        .await
        .unwrap();
        servers.push(server);
    }
    let (s1, s3) = (&servers[0], &servers[2]);
    let minority = network.host("s3");

    // An agent on its own host, attached to s3 first (the replica about to be cut off).
    let edge = network.host("edge");
    let app = edge
        .tcp_echo(std::net::SocketAddr::from(([127, 0, 0, 1], 9090)))
        .await
        .unwrap();
    let (defs, file) = crate::write_file(
        "web.hcl",
        r#"service {
  name = "web"
  port = 9090
  check {
    tcp      = "127.0.0.1:9090"
    interval = "500ms"
    timeout  = "400ms"
  }
}"#,
    );
    // The agent's token: its node's identity and web's.
    let token = s1
        .identity_token_file(defs.path(), Some("edge"), &["web"])
        .await
        .unwrap();
    // Hosts without a port: 8500.
    let server_list = ["s3", "s1", "s2"]
        .map(|n| network.host(n).ip().to_string())
        .join(",");
    let agent = plexus_test::Agent::start_on(
        edge,
        bin(),
        "edge",
        &server_list,
        &[
            "--lease-ttl",
            "3s",
            "--config-file",
            file.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    let web_passing = |server: &Server| {
        let client = server.client.clone();
        async move {
            client
                .health_service("web", true, QueryOptions::default())
                .await
                .is_ok_and(|e| e.value.len() == 1)
        }
    };
    eventually!(web_passing(s1).await);

    // Writers through every replica, from each replica's own host.
    let cut = Arc::new(Mutex::new(false));
    let stop = CancellationToken::new();
    let names = ["s1", "s2", "s3"];
    let writers: Vec<_> = hosts
        .iter()
        .zip(names)
        .map(|(host, name)| {
            writer(
                host.clone(),
                name,
                host.addr(8500),
                cut.clone(),
                stop.clone(),
            )
        })
        .collect();
    let probe = |host: &Host, path: &str| {
        let (host, path) = (host.clone(), path.to_owned());
        async move {
            host.http(host.addr(8500), "GET", &path, &[], &management())
                .await
        }
    };
    eventually!(
        probe(minority, "/v1/kv/w/s3/1")
            .await
            .is_ok_and(|(s, _)| s == 200)
    );

    *cut.lock().unwrap() = true;
    let cut_at = Instant::now();
    let cut_wall = std::time::SystemTime::now();
    minority.partition().unwrap();
    // Reads through the cut-off replica are refused, at once and with the reason.
    eventually!(
        probe(minority, "/v1/kv/w/s1/0")
            .await
            .is_ok_and(|(status, body)| status == 503 && body.contains("no_quorum")),
        Duration::from_secs(15)
    );
    let refused_after = cut_at.elapsed();
    let started = Instant::now();
    let (_, refusal) = probe(minority, "/v1/health/service/web").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a refusal took {:?}",
        started.elapsed()
    );
    let refusal: serde_json::Value = serde_json::from_str(&refusal).unwrap();
    assert_eq!(refusal["error"]["code"], "no_quorum", "{refusal}");
    // The replica noticed within a probe interval and a probe timeout (plus a loaded machine's
    // slack); requests begun before that wait out the store's own timeouts.
    let noticed = s3
        .process
        .as_ref()
        .unwrap()
        .output()
        .lines()
        .filter(|l| l.contains("store unreachable (no quorum)"))
        .find_map(crate::partition::log_time)
        .expect("s3 logged the lost quorum");
    let noticed_after = noticed.duration_since(cut_wall).unwrap_or_default();
    assert!(
        noticed_after <= Duration::from_secs(4),
        "s3 noticed {noticed_after:?} after the cut"
    );
    eprintln!(
        "quorum lost noticed {noticed_after:?} after the cut (a read refused at {refused_after:?}): {}",
        refusal["error"]["message"]
    );
    // The agent fails over: its node keeps its lease (web stays passing, seen through s1).
    let partition = Duration::from_secs(12);
    while cut_at.elapsed() < partition {
        assert!(
            web_passing(s1).await,
            "web not passing through s1 {:?} into the partition",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    *cut.lock().unwrap() = false;
    minority.heal().unwrap();
    // Writes through s3 succeed again.
    let healed_at = Instant::now();
    let minority_writes_ok = || async {
        minority
            .http(
                minority.addr(8500),
                "PUT",
                "/v1/kv/after/heal",
                b"1",
                &management(),
            )
            .await
            .is_ok_and(|(s, body)| s == 200 && body.trim() == "true")
    };
    eventually!(minority_writes_ok().await, Duration::from_secs(60));
    let recovered_after = healed_at.elapsed();
    // The majority side may itself have been without a quorum for a while (when the cut-off
    // member led, the other two elect a leader): wait until s1 reads again before counting.
    let s1_reads = || async {
        reqwest::Client::new()
            .get(format!("http://{}/v1/kv/after/heal?raw", s1.addr()))
            .header("X-Consul-Token", plexus_test::management_token())
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    };
    eventually!(s1_reads().await, Duration::from_secs(60));
    stop.cancel();
    let mut results = Vec::new();
    for writer in writers {
        results.push(writer.await.unwrap());
    }

    // Writes through the minority during the partition: none acknowledged, each failed clearly.
    let minority_results = &results[2];
    let during: Vec<&(bool, u16, String)> =
        minority_results.failed.iter().filter(|f| f.0).collect();
    assert!(
        !during.is_empty(),
        "no write was tried through s3 while cut off"
    );
    // Each is refused with the reason (503 no_quorum), except the one in flight at the cut,
    // which waits out the store's timeouts.
    let unclear: Vec<_> = during
        .iter()
        .filter(|(_, status, body)| !(*status == 503 && body.contains("no_quorum")))
        .collect();
    assert!(
        unclear.len() <= 1,
        "writes through the minority without a clear refusal: {unclear:?}"
    );
    eprintln!(
        "writes through the minority during the partition: {} failed, e.g. {:?}",
        during.len(),
        during.first()
    );

    // No acknowledged write is lost: each is there, read through the healed replica and s1.
    let mut acked = 0;
    for writes in &results {
        for (key, value) in &writes.acked {
            acked += 1;
            for server in [s1, s3] {
                assert_eq!(read_through(server, key).await, *value, "{key}");
            }
        }
    }
    let failed: usize = results.iter().map(|w| w.failed.len()).sum();
    eprintln!(
        "quorum: {acked} acknowledged writes (s1 {}, s2 {}, s3 {}), all present after the heal; \
         {failed} failed; s3 writable {recovered_after:?} after the heal",
        results[0].acked.len(),
        results[1].acked.len(),
        results[2].acked.len(),
    );
    assert!(agent.process.output().contains("holding the node's lease"));
    assert!(
        !agent
            .process
            .output()
            .contains("lease expired; taking a new one"),
        "the agent lost its lease instead of failing over"
    );
    drop(app);
}
