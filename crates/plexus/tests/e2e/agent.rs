//! `plexus agent --server a,b,c`: a node agent on its own, writing through servers, holding a
//! liveness lease. Its services go critical and are deregistered when the lease expires; it
//! re-registers what it owns when it comes back.

use plexus_api::client::{Client, QueryOptions};
use plexus_test::{Process, Server, TcpEcho, eventually, free_port};

use crate::bin;

/// Starts `plexus agent` against `servers` with extra arguments; returns it and a client for it.
pub async fn agent(name: &str, servers: &str, extra: &[&str]) -> (Process, Client) {
    let mut args: Vec<String> = [
        "agent",
        "--server",
        servers,
        "--node",
        name,
        "--http-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let process = Process::spawn(&format!("agent:{name}"), bin(), &args, &[]).unwrap();
    let http = process.listening("http").await.unwrap();
    (process, Client::new(&http.to_string()).unwrap())
}

async fn web_passing(server: &Client) -> bool {
    server
        .health_service("web", true, QueryOptions::default())
        .await
        .is_ok_and(|e| e.value.len() == 1 && e.value[0].node.node == "edge-1")
}

async fn web_registered(server: &Client) -> bool {
    server
        .catalog_service("web", QueryOptions::default())
        .await
        .is_ok_and(|s| !s.value.is_empty())
}

#[tokio::test]
async fn an_agent_whose_lease_expires_loses_its_services_and_reregisters_them_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let server = Server::start(
        bin(),
        "server-1",
        &["--store", "embedded", "--data-dir", &data],
    )
    .await
    .unwrap();
    let app = TcpEcho::start().await.unwrap();
    let definition = format!(
        r#"service {{
  name = "web"
  port = {port}
  check {{
    tcp      = "127.0.0.1:{port}"
    interval = "500ms"
    timeout  = "400ms"
    deregister_critical_service_after = "2s"
  }}
}}"#,
        port = app.port()
    );
    let (_defs, file) = crate::write_file("web.hcl", &definition);
    // The first server listed is down: the agent fails over.
    let dead = format!("127.0.0.1:{}", free_port());
    let servers = format!("{dead},{}", server.addr());
    let (agent, local) = agent(
        "edge-1",
        &servers,
        &["--lease-ttl", "1s", "--config-file", file.to_str().unwrap()],
    )
    .await;
    eventually!(web_passing(&server.client).await);
    // The agent answers catalog reads itself by passing them on to a server.
    let through_agent = local
        .health_service("web", true, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(through_agent.value.len(), 1);
    let kv_through_agent = local
        .kv_put("via/agent", b"1".to_vec(), 0, None)
        .await
        .unwrap();
    assert!(kv_through_agent);

    // Freeze the agent: its lease runs out, the server marks its checks critical and then
    // deregisters the service (deregister_critical_service_after = 2s).
    agent.signal("STOP").unwrap();
    eventually!(
        server
            .client
            .health_checks("web", QueryOptions::default())
            .await
            .is_ok_and(|c| c
                .value
                .iter()
                .any(|c| c.output.contains("agent lease expired")))
            || !web_registered(&server.client).await
    );
    eventually!(!web_registered(&server.client).await);

    // Thawed, it takes a new lease and writes back what it owns: web is back and passing.
    agent.signal("CONT").unwrap();
    eventually!(web_passing(&server.client).await);
    agent
        .wait_for_line("re-registered what this agent owns")
        .await
        .unwrap();
}

#[tokio::test]
async fn agent_flags_are_checked_before_anything_starts() {
    let (code, _, err) = plexus_test::mesh::run_cli(
        bin(),
        &["agent", "--server", "nowhere", "--http-addr", "127.0.0.1:0"],
        &[],
    )
    .unwrap();
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("nowhere"), "{err}");
    let (code, _, err) = plexus_test::mesh::run_cli(
        bin(),
        &["agent", "--server", "127.0.0.1:1", "--lease-ttl", "0s"],
        &[],
    )
    .unwrap();
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--lease-ttl"), "{err}");
}
