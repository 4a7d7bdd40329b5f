//! Registration via definition files and the API; sidecar expansion; blocking queries.

use plexus_api::client::QueryOptions;
use plexus_test::{TcpEcho, eventually, free_port};
use serde_json::json;

use crate::{client_echo_hcl, dev, http, write_file};

#[tokio::test]
async fn definitions_from_a_file_expand_sidecars_like_consul() {
    let upstream = free_port();
    let (_dir, file) = write_file("mesh.hcl", &client_echo_hcl(9090, upstream));
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    let (status, services, _) = http(
        "GET",
        &format!("http://{}/v1/agent/services", dev.http),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let ids: Vec<&String> = services.as_object().unwrap().keys().collect();
    assert_eq!(
        ids,
        [
            "client",
            "client-sidecar-proxy",
            "echo",
            "echo-sidecar-proxy"
        ],
        "{services:#}"
    );
    let sidecar = &services["client-sidecar-proxy"];
    assert_eq!(sidecar["Kind"], "connect-proxy");
    assert_eq!(sidecar["Service"], "client-sidecar-proxy");
    let port = sidecar["Port"].as_u64().unwrap();
    assert!((21000..=21255).contains(&port), "sidecar port {port}");
    assert_eq!(sidecar["Proxy"]["DestinationServiceName"], "client");
    assert_eq!(sidecar["Proxy"]["DestinationServiceID"], "client");
    assert_eq!(sidecar["Proxy"]["LocalServiceAddress"], "127.0.0.1");
    assert_eq!(sidecar["Proxy"]["LocalServicePort"], 8080);
    let up = &sidecar["Proxy"]["Upstreams"][0];
    assert_eq!(up["DestinationType"], "service");
    assert_eq!(up["DestinationName"], "echo");
    assert_eq!(up["LocalBindPort"], upstream);
    assert_eq!(up["LocalBindAddress"], "127.0.0.1");
    let echo_sidecar_port = services["echo-sidecar-proxy"]["Port"].as_u64().unwrap();
    assert_ne!(port, echo_sidecar_port, "each sidecar gets its own port");
    assert!(
        services["echo"].get("Kind").is_none(),
        "plain services omit Kind"
    );

    let checks = dev.client.agent_checks().await.unwrap();
    let echo_check = &checks["service:echo"];
    assert_eq!(echo_check.definition.tcp, "127.0.0.1:9090");
    assert_eq!(echo_check.interval, "1s");
}

#[tokio::test]
async fn api_registration_is_visible_in_catalog_and_health() {
    let dev = dev(&[]).await;
    let body = json!({
        "ID": "web-1", "Name": "web", "Port": 8080, "Tags": ["v1"], "Meta": {"team": "a"},
        "Check": {"TTL": "30s", "Status": "passing"}
    });
    let url = format!("http://{}/v1/agent/service/register", dev.http);
    let (status, _, _) = http("PUT", &url, Some(body.to_string().into_bytes())).await;
    assert_eq!(status, 200);

    let one = dev
        .client
        .agent_service("web-1", QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(one.value.service, "web");
    assert_eq!(one.value.meta["team"], "a");

    let services = dev
        .client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(services.value["web"], vec!["v1".to_owned()]);
    assert!(services.index > 0);

    let rows = dev
        .client
        .catalog_service("web", QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(rows.value.len(), 1);
    assert_eq!(rows.value[0].service_port, 8080);
    assert_eq!(rows.value[0].node, "test-node");

    let healthy = dev
        .client
        .health_service("web", true, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(healthy.value.len(), 1);
    assert_eq!(healthy.value[0].checks[0].check_id, "service:web-1");

    let nodes = dev
        .client
        .catalog_nodes(QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(nodes.value[0].node, "test-node");
    let me = dev.client.agent_self().await.unwrap();
    assert_eq!(me.config.datacenter, "dc1");
    assert_eq!(me.config.node_name, "test-node");
    assert!(!dev.client.status_leader().await.unwrap().is_empty());

    let by_state = dev
        .client
        .health_state("passing", QueryOptions::default())
        .await
        .unwrap();
    assert!(by_state.value.iter().any(|c| c.check_id == "service:web-1"));
    let checks = dev
        .client
        .health_checks("web", QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(checks.value.len(), 1);

    dev.client.deregister_service("web-1").await.unwrap();
    let gone = dev
        .client
        .catalog_service("web", QueryOptions::default())
        .await
        .unwrap();
    assert!(gone.value.is_empty());
    let err = dev
        .client
        .agent_service("web-1", QueryOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
}

#[tokio::test]
async fn blocking_query_wakes_on_change() {
    let dev = dev(&[]).await;
    let first = dev
        .client
        .health_service("late", false, QueryOptions::default())
        .await
        .unwrap();
    assert!(first.value.is_empty());
    let client = dev.client.clone();
    let index = first.index;
    // A long wait: only a write can make this return with the new instance in it.
    let waiter = tokio::spawn(async move {
        client
            .health_service(
                "late",
                false,
                QueryOptions::blocking(index, std::time::Duration::from_secs(120)),
            )
            .await
    });
    let echo = TcpEcho::start().await.unwrap();
    let reg = plexus_api::ServiceRegistration {
        name: "late".into(),
        port: Some(echo.port().into()),
        ..Default::default()
    };
    dev.client.register_service(&reg).await.unwrap();
    let woke = waiter.await.unwrap().unwrap();
    assert!(woke.index > index, "index moved: {} > {index}", woke.index);
    assert_eq!(woke.value.len(), 1, "the response carries the change");
    eventually!(
        dev.client
            .agent_services()
            .await
            .unwrap()
            .contains_key("late")
    );
}

#[tokio::test]
async fn config_dir_loads_every_definition_and_default_data_dir_is_temporary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.hcl"),
        "service {\n  name = \"alpha\"\n  port = 1\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.json"),
        r#"{"service": {"Name": "beta", "Port": 2}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a definition").unwrap();
    let args = [
        "dev",
        "--http-addr",
        "127.0.0.1:0",
        "--dns-addr",
        "127.0.0.1:0",
        "--node",
        "n1",
        "--config-dir",
        dir.path().to_str().unwrap(),
    ]
    .map(str::to_owned);
    let process = plexus_test::Process::spawn("dev", crate::bin(), &args, &[]).unwrap();
    let line = process.wait_for_line("using embedded store").await.unwrap();
    assert!(line.contains("temporary=true"), "{line}");
    let http = process.listening("http").await.unwrap();
    let client = plexus_api::client::Client::new(&http.to_string()).unwrap();
    let services = client.agent_services().await.unwrap();
    assert_eq!(services.keys().collect::<Vec<_>>(), ["alpha", "beta"]);
}
