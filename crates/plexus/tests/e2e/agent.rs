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
    // The agent's own token and its callers' (servers enforce ACLs): the run's management token.
    let process =
        Process::spawn(&format!("agent:{name}"), bin(), &args, &Server::token_env()).unwrap();
    let http = process.listening("http").await.unwrap();
    (
        process,
        plexus_test::server::management_client(&http.to_string()).unwrap(),
    )
}

async fn web_passing_on(server: &Client, node: &str) -> bool {
    server
        .health_service("web", true, QueryOptions::default())
        .await
        .is_ok_and(|e| e.value.len() == 1 && e.value[0].node.node == node)
}

async fn web_passing(server: &Client) -> bool {
    web_passing_on(server, "edge-1").await
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

/// Servers away: the agent keeps running its checks and reports the results when a server is
/// back. Here the app dies while the only server is down (`kill -9`); after the server restarts
/// on its data, the agent writes the critical result it kept.
#[tokio::test]
async fn an_agent_reports_check_results_from_while_the_servers_were_away() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let mut server = Server::start(
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
    interval = "300ms"
    timeout  = "200ms"
  }}
}}"#,
        port = app.port()
    );
    let (_defs, file) = crate::write_file("web.hcl", &definition);
    let (agent, _local) = agent(
        "edge-2",
        &server.addr(),
        &[
            "--lease-ttl",
            "30s",
            "--config-file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    eventually!(web_passing_on(&server.client, "edge-2").await);
    server.kill9().unwrap();
    agent
        .wait_for_line("cannot renew the node's lease")
        .await
        .unwrap();
    // The check now fails, with no server to tell: the agent runs it and keeps the result.
    let unsent = || agent.output().matches("check result not written").count();
    let before = unsent();
    drop(app);
    eventually!(unsent() > before);
    server.restart().await.unwrap();
    agent
        .wait_for_line("servers reachable again")
        .await
        .unwrap();
    eventually!(
        server
            .client
            .health_checks("web", QueryOptions::default())
            .await
            .is_ok_and(|c| c
                .value
                .iter()
                .any(|c| c.status == plexus_api::CheckStatus::Critical))
    );
}

/// Bad input on the endpoints agents and proxies use: clear 400s naming the field, nothing
/// written, the server stays up.
#[tokio::test]
async fn internal_endpoints_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let server = Server::start(
        bin(),
        "server-1",
        &["--store", "embedded", "--data-dir", &data],
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.addr());
    for (method, path, body, field) in [
        ("PUT", "/v1/internal/node/n1/lease?ttl=0s", None, "ttl"),
        ("PUT", "/v1/internal/node/n1/lease?ttl=1h", None, "ttl"),
        ("PUT", "/v1/internal/node/n1/lease?ttl=soon", None, "ttl"),
        (
            "PUT",
            "/v1/internal/node/register",
            Some(r#"{"Node":{"Node":""}}"#),
            "Node.Node",
        ),
        (
            "PUT",
            "/v1/internal/node/register",
            Some(r#"{"Node":{"Node":"x"},"Extra":1}"#),
            "",
        ),
        (
            "PUT",
            "/v1/internal/proxy/p1/ack?revision=-2",
            None,
            "revision",
        ),
    ] {
        let (status, json, _) = crate::http(
            method,
            &format!("{base}{path}"),
            body.map(|b| b.as_bytes().to_vec()),
        )
        .await;
        assert_eq!(status, 400, "{path}: {json}");
        if !field.is_empty() {
            assert_eq!(json["error"]["field"], field, "{path}: {json}");
        }
        assert!(json["error"]["message"].is_string(), "{path}: {json}");
    }
    let (status, _, _) = crate::http(
        "PUT",
        &format!("{base}/v1/internal/node/n1/lease/12345"),
        None,
    )
    .await;
    assert_eq!(status, 404, "renewing an unknown lease");
    let nodes = server
        .client
        .catalog_nodes(QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        nodes.value.len(),
        1,
        "only the server's own node: nothing was written"
    );
    let view = server.client.operator().await.unwrap();
    assert!(view.proxies.is_empty());
}
