//! Bad input at every door: a clear error naming the cause, the right status or exit code, the
//! process stays up and nothing already registered is lost.

use plexus_test::mesh::run_cli;
use plexus_test::{Dev, Process, free_port};
use serde_json::json;

use crate::{bin, client_echo_hcl_with_sidecar_ports, dev, http, write_file};

/// Registers `keeper` so each test can show that nothing already stored is lost.
async fn with_keeper() -> Dev {
    let dev = dev(&[]).await;
    let body = json!({"Name": "keeper", "Port": 7000});
    let url = format!("http://{}/v1/agent/service/register", dev.http);
    assert_eq!(
        http("PUT", &url, Some(body.to_string().into_bytes()))
            .await
            .0,
        200
    );
    dev
}

async fn keeper_survives(dev: &Dev) {
    let services = dev.client.agent_services().await.expect("dev is still up");
    assert!(
        services.contains_key("keeper"),
        "keeper was lost: {services:?}"
    );
}

async fn put_register(dev: &Dev, body: Vec<u8>) -> (u16, serde_json::Value) {
    let url = format!("http://{}/v1/agent/service/register", dev.http);
    let (status, json, _) = http("PUT", &url, Some(body)).await;
    (status, json)
}

#[tokio::test]
async fn api_rejects_bad_bodies_with_json_errors() {
    let dev = with_keeper().await;

    let (status, body) = put_register(&dev, vec![b'x'; 10 * 1024 * 1024]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, body) = put_register(&dev, b"{\"Name\": \"\xff\xfe\"}".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("UTF-8"),
        "{body}"
    );

    let (status, body) = put_register(&dev, b"{not json".to_vec()).await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = put_register(
        &dev,
        json!({"Name": "x", "Prot": 1}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("Prot"),
        "{body}"
    );

    let (status, body) = put_register(
        &dev,
        json!({"Name": "x", "Port": 70000}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["field"].as_str().unwrap().contains("port"),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("70000"),
        "{body}"
    );

    let (status, body) = put_register(&dev, json!({"Port": 80}).to_string().into_bytes()).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["field"].as_str().unwrap().contains("name"),
        "{body}"
    );

    let (status, body, _) = http(
        "PUT",
        &format!("http://{}/v1/agent/service/deregister/nope", dev.http),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");

    keeper_survives(&dev).await;
    assert!(
        !dev.client.agent_services().await.unwrap().contains_key("x"),
        "nothing half-registered"
    );
}

#[tokio::test]
async fn blocking_query_with_a_bad_wait_is_a_400() {
    let dev = with_keeper().await;
    for path in [
        "/v1/health/service/keeper?index=1&wait=soon",
        "/v1/catalog/services?index=1&wait=10",
        "/v1/catalog/services?index=x",
    ] {
        let (status, body, _) = http("GET", &format!("http://{}{path}", dev.http), None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"]["field"].is_string(), "{path}: {body}");
    }
    let (status, body, _) = http(
        "GET",
        &format!("http://{}/v1/health/state/sideways", dev.http),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = http("GET", &format!("http://{}/v1/nope", dev.http), None).await;
    assert_eq!(status, 404);
    for (method, path) in [
        ("POST", "/v1/agent/services"),
        ("DELETE", "/v1/catalog/services"),
    ] {
        let (status, body, _) = http(method, &format!("http://{}{path}", dev.http), None).await;
        assert_eq!(status, 405, "{method} {path}");
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}: {body}"
        );
    }
    keeper_survives(&dev).await;
}

#[tokio::test]
async fn upstream_port_clash_between_registrations_is_rejected() {
    let dev = with_keeper().await;
    let upstream = free_port();
    let reg = |name: &str| {
        json!({"Name": name, "Port": 8080, "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
            {"DestinationName": "db", "LocalBindPort": upstream}]}}}})
        .to_string()
        .into_bytes()
    };
    assert_eq!(put_register(&dev, reg("a")).await.0, 200);
    let (status, body) = put_register(&dev, reg("b")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["field"]
            .as_str()
            .unwrap()
            .contains("local_bind_port"),
        "{body}"
    );
    keeper_survives(&dev).await;
    assert!(dev.client.agent_services().await.unwrap().contains_key("a"));
}

fn dev_with_file(name: &str, text: &str) -> (i32, String) {
    let (_dir, file) = write_file(name, text);
    let data = tempfile::tempdir().unwrap();
    let (code, _out, err) = run_cli(
        bin(),
        &[
            "dev",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--config-file",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    (code, err)
}

#[test]
fn malformed_definitions_stop_dev_before_it_binds() {
    let (code, err) = dev_with_file("bad.hcl", "services {\n  name = \"web\"\n  port = \n}\n");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("bad.hcl:"), "names file and line: {err}");

    let (code, err) = dev_with_file(
        "bad.json",
        "{\"service\": {\"name\": \"web\",\n \"port\": }}",
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("bad.json:2"), "names file and line: {err}");

    let (code, err) = dev_with_file(
        "unknown.hcl",
        "service {\n  name = \"web\"\n  prot = 80\n}\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("prot"), "names the field: {err}");
    assert!(!err.contains("listening"), "nothing was bound: {err}");

    let (code, err) = dev_with_file(
        "port.hcl",
        "service {\n  name = \"web\"\n  port = 70000\n}\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("port") && err.contains("70000"), "{err}");

    let dup = "services {\n  name = \"web\"\n  port = 1\n}\nservices {\n  name = \"web\"\n  port = 2\n}\n";
    let (code, err) = dev_with_file("dup.hcl", dup);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("web") && err.to_lowercase().contains("duplicate"),
        "{err}"
    );
}

#[tokio::test]
async fn sidecar_for_an_unknown_service_exits_with_a_clear_error() {
    let dev = with_keeper().await;
    let (code, _out, err) = run_cli(
        bin(),
        &[
            "proxy",
            "--sidecar-for",
            "ghost",
            "--http-addr",
            &dev.addr(),
            "--admin-addr",
            "127.0.0.1:0",
        ],
        &[],
    )
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("ghost"), "{err}");
    keeper_survives(&dev).await;
}

#[tokio::test]
async fn an_upstream_port_already_in_use_is_a_clear_proxy_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (_dir, file) = write_file(
        "mesh.hcl",
        &client_echo_hcl_with_sidecar_ports(free_port(), port),
    );
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    let mut proxy = Process::spawn(
        "proxy",
        bin(),
        &[
            "proxy",
            "--sidecar-for",
            "client",
            "--http-addr",
            &dev.addr(),
            "--admin-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned),
        &[],
    )
    .unwrap();
    let status = proxy.wait_exit().await.unwrap();
    assert!(!status.success());
    let out = proxy.output();
    assert!(
        out.contains(&port.to_string()) && out.contains("echo"),
        "{out}"
    );
    assert!(
        dev.client
            .agent_services()
            .await
            .unwrap()
            .contains_key("client")
    );
}

#[test]
fn bad_cli_flags_are_usage_errors() {
    let (code, _, err) = run_cli(
        bin(),
        &["dev", "--http-addr", "127.0.0.1:0", "--grace", "forever"],
        &[],
    )
    .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("grace"), "{err}");
    let (code, _, err) = run_cli(
        bin(),
        &["services", "list", "--http-addr", "not an address"],
        &[],
    )
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("not an address"), "{err}");
}
