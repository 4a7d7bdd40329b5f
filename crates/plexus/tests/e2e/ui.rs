//! The web UI in a real browser: headless Chromium driven by Selenium (`ui-tests/browser.py`),
//! against a real `plexus dev` with two HTTP sidecars. The script loads every page, creates a KV
//! key and an intention through the forms, watches a service turn critical and a topology edge
//! appear after traffic; this test then reads what the forms created back through the API.
//! Chromium, chromedriver and Selenium come from `scripts/setup-test-env.sh`.

use std::path::PathBuf;

use plexus_test::upstream::HttpStub;
use plexus_test::{eventually, free_port};
use serde_json::json;

use crate::l7::{app_hcl, client_hcl};
use crate::{dev, http, write_file};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../ui-tests/browser.py")
}

#[tokio::test]
async fn every_page_works_in_chromium_forms_write_and_views_update_live() {
    let python = crate::consul_client::python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
        python.display()
    );
    let web = HttpStub::start_named("web-1").await.unwrap();
    let web_port = web.addr.port();
    let upstream_port = free_port();
    let hcl = client_hcl("web", upstream_port, Some("http"))
        + &app_hcl(("web-1", "web", web_port), "", free_port(), Some("http"));
    let (_dir, file) = write_file("mesh.hcl", &hcl);
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    // `api`: a service whose TTL check the browser test turns critical and back.
    let api = json!({
        "ID": "api-1", "Name": "api", "Address": "127.0.0.1", "Port": 7000, "Tags": ["blue"],
        "Check": {"CheckID": "api-ttl", "Name": "api heartbeat", "TTL": "10m", "Status": "passing"},
    });
    let (code, body, _) = http(
        "PUT",
        &format!("http://{}/v1/agent/service/register", dev.http),
        Some(serde_json::to_vec(&api).unwrap()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let server = dev.sidecar("web-1").await.unwrap();
    let client = dev.sidecar("client").await.unwrap();
    eventually!(server.is_ready().await);
    eventually!(
        client.is_ready().await && client.endpoints("web").await.is_ok_and(|e| e.len() == 1)
    );

    // An L7 intention the intentions page must show by its permissions (the browser's traffic
    // to `/` is not under `/admin`).
    let (code, body, _) = http(
        "PUT",
        &format!(
            "http://{}/v1/connect/intentions/exact?source=client&destination=web",
            dev.http
        ),
        Some(
            serde_json::json!({"Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "/admin"}}]})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    let mut command = tokio::process::Command::new(&python);
    command.arg(script()).args([
        "--url",
        &format!("http://{}", dev.http),
        "--upstream",
        &format!("127.0.0.1:{upstream_port}"),
        "--critical-check",
        "api-ttl",
    ]);
    // PLEXUS_UI_SCREENSHOTS=docs/screenshots refreshes the README's pictures.
    if let Ok(dir) = std::env::var("PLEXUS_UI_SCREENSHOTS") {
        command.args(["--screenshots", &dir]);
    }
    let out = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("all browser checks passed"), "{stdout}");

    // What the forms wrote, read back through the API.
    let raw = reqwest::get(format!("http://{}/v1/kv/ui/greeting?raw", dev.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(raw, "hello again");
    let (code, intentions, _) = http(
        "GET",
        &format!("http://{}/v1/connect/intentions", dev.http),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let made = intentions
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["SourceName"] == "client" && i["DestinationName"] == "api")
        .unwrap_or_else(|| panic!("no client -> api intention: {intentions}"));
    assert_eq!(made["Action"], "deny");
    assert_eq!(made["Description"], "made in the UI");
    // The bad config entry the browser tried was not stored.
    let (code, _, _) = http(
        "GET",
        &format!("http://{}/v1/config/service-defaults/web", dev.http),
        None,
    )
    .await;
    assert_eq!(code, 404);
    let (code, entry, _) = http(
        "GET",
        &format!("http://{}/v1/config/service-defaults/api", dev.http),
        None,
    )
    .await;
    assert_eq!(code, 200, "{entry}");
    assert_eq!(entry["Protocol"], "http");
    assert!(web.requests() >= 40, "the traffic went through the mesh");
}

/// The UI against a `plexus server` that enforces ACLs (default deny): a page read without a
/// token shows the 403 as a message; a token entered once in the dialog serves every page of the
/// tab; a services-only token's 403 on a key is a message too (`ui-tests/browser.py --acl-token`).
#[tokio::test]
async fn with_acls_a_token_entered_once_serves_every_page_and_a_403_is_a_message() {
    let python = crate::consul_client::python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
        python.display()
    );
    let server = crate::acl::AclServer::start(&[], &[]).await;
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"ID": "web-1", "Name": "web", "Address": "127.0.0.1", "Port": 8080})),
        )
        .await;
    let services_only = server
        .policy(
            "ui-services-only",
            r#"service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }"#,
        )
        .await;
    let (_, limited) = server
        .token(json!({"Policies": [{"Name": services_only}]}))
        .await;
    let out = tokio::process::Command::new(&python)
        .arg(script())
        .args([
            "--url",
            &server.url(""),
            "--acl-token",
            &server.management,
            "--limited-token",
            &limited,
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("all browser checks passed"), "{stdout}");
    // What the form wrote with the token entered in the browser.
    let value = server.admin("GET", "/v1/kv/ui/acl", None).await;
    let decoded = value[0]["Value"].as_str().unwrap();
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, decoded).unwrap(),
        b"written with a token"
    );
}
