//! Intentions through real sidecars: a deny blocks, an allow restores, the CLI and the
//! Consul-shaped API, closing denied connections on request, and bad input refused.

use std::time::Duration;

use plexus_test::eventually;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::http;
use crate::identity::{Mesh, try_round_trip};

fn denied(source: &str, destination: &str, result: &str) -> String {
    format!(
        "plexus_proxy_intention_decisions_total{{source=\"{source}\",destination=\"{destination}\",result=\"{result}\"}}"
    )
}

#[tokio::test]
async fn a_deny_blocks_and_an_allow_restores() {
    let mesh = Mesh::start(&["--default-intention-policy", "deny"], &[]).await;
    // Default deny: the client is refused by the echo sidecar.
    assert_eq!(try_round_trip(mesh.upstream, "hello").await, None);
    assert_eq!(mesh.echo.connections(), 0);
    assert_eq!(
        mesh.echo_sidecar
            .metric(&denied("client", "echo", "deny"))
            .await
            .unwrap(),
        1.0
    );
    mesh.echo_sidecar
        .process
        .wait_for_line("connection denied by intention")
        .await
        .unwrap();
    let (code, out, _) = mesh
        .dev
        .cli(&["intention", "check", "client", "echo"])
        .unwrap();
    assert_eq!((code, out.trim()), (1, "Denied: client => echo"));

    // Allow: new connections get through.
    let (code, out, err) = mesh
        .dev
        .cli(&["intention", "create", "--allow", "client", "echo"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Created: client => echo (allow)"), "{out}");
    eventually!(try_round_trip(mesh.upstream, "hello").await.as_deref() == Some("hello"));
    let (code, out, _) = mesh
        .dev
        .cli(&["intention", "check", "client", "echo"])
        .unwrap();
    assert_eq!((code, out.trim()), (0, "Allowed: client => echo"));

    // A connection opened while allowed stays open when a deny arrives (no --close-denied)...
    let long_lived = TcpStream::connect(mesh.upstream).await.unwrap();
    let (read, mut write) = long_lived.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"first\n").await.unwrap();
    let mut line = String::new();
    read.read_line(&mut line).await.unwrap();
    assert_eq!(line, "first\n");

    let (code, _, err) = mesh
        .dev
        .cli(&[
            "intention",
            "create",
            "--deny",
            "--replace",
            "client",
            "echo",
        ])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    eventually!(try_round_trip(mesh.upstream, "hello").await.is_none());
    // ...while new ones are refused.
    write.write_all(b"second\n").await.unwrap();
    line.clear();
    read.read_line(&mut line).await.unwrap();
    assert_eq!(line, "second\n");

    let (code, out, _) = mesh.dev.cli(&["intention", "list"]).unwrap();
    assert_eq!(code, 0);
    assert!(
        out.contains("client") && out.contains("deny") && out.contains("echo"),
        "{out}"
    );
    // Wildcard below exact: `* => echo allow` does not override the exact deny.
    let (code, _, err) = mesh
        .dev
        .cli(&["intention", "create", "--allow", "*", "echo"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = mesh
        .dev
        .cli(&["intention", "check", "client", "echo"])
        .unwrap();
    assert_eq!(code, 1);
    // Deleting the exact deny lets the wildcard allow decide.
    let (code, out, err) = mesh
        .dev
        .cli(&["intention", "delete", "client", "echo"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Intention deleted: client => echo");
    eventually!(try_round_trip(mesh.upstream, "again").await.as_deref() == Some("again"));
    assert!(
        mesh.echo_sidecar
            .metric(&denied("client", "echo", "allow"))
            .await
            .unwrap()
            >= 2.0
    );
}

#[tokio::test]
async fn close_denied_closes_connections_that_a_change_denies() {
    let mesh = Mesh::start(&[], &["--close-denied"]).await;
    let mut long_lived = TcpStream::connect(mesh.upstream).await.unwrap();
    long_lived.write_all(b"x\n").await.unwrap();
    let mut echoed = [0u8; 2];
    long_lived.read_exact(&mut echoed).await.unwrap();

    let (code, _, err) = mesh
        .dev
        .cli(&["intention", "create", "--deny", "client", "echo"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    // The sidecar closes it; the client sees the end of the stream.
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(20), long_lived.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    let series = "plexus_proxy_intention_closed_connections_total";
    eventually!(mesh.echo_sidecar.metric(series).await.unwrap() == 1.0);
    mesh.echo_sidecar
        .process
        .wait_for_line("closing a connection that an intention now denies")
        .await
        .unwrap();
}

#[tokio::test]
async fn the_intention_api_in_consuls_shape_and_bad_input() {
    let mesh = Mesh::start(&[], &[]).await;
    let base = format!("http://{}", mesh.dev.addr());
    let post = |path: &str, body: serde_json::Value| {
        let url = format!("{base}{path}");
        async move { http("POST", &url, Some(body.to_string().into_bytes())).await }
    };

    let (status, created, _) = post(
        "/v1/connect/intentions",
        json!({"SourceName": "web", "DestinationName": "db", "Action": "deny"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let id = created["ID"].as_str().unwrap().to_owned();
    let (status, got, headers) =
        http("GET", &format!("{base}/v1/connect/intentions/{id}"), None).await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("x-consul-index"));
    assert_eq!(got["SourceName"], "web");
    assert_eq!(got["Action"], "deny");
    assert_eq!(got["Precedence"], 9);
    assert_eq!(got["SourceNS"], "default");

    // Exact, match, check.
    let (status, exact, _) = http(
        "GET",
        &format!("{base}/v1/connect/intentions/exact?source=web&destination=db"),
        None,
    )
    .await;
    assert_eq!((status, exact["ID"].as_str()), (200, Some(id.as_str())));
    let (status, matched, headers) = http(
        "GET",
        &format!("{base}/v1/connect/intentions/match?by=destination&name=db"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(matched["db"][0]["ID"], id.as_str());
    assert_eq!(headers["x-plexus-default-intention-policy"], "allow");
    let (_, check, _) = http(
        "GET",
        &format!("{base}/v1/connect/intentions/check?source=web&destination=db"),
        None,
    )
    .await;
    assert_eq!(check, json!({"Allowed": false}));
    let (_, check, _) = http(
        "GET",
        &format!("{base}/v1/connect/intentions/check?source=api&destination=db"),
        None,
    )
    .await;
    assert_eq!(check, json!({"Allowed": true}));

    // Authorize, as Consul's agent endpoint.
    let uri = mesh.spiffe("web").await;
    let (status, auth, _) = post(
        "/v1/agent/connect/authorize",
        json!({"Target": "db", "ClientCertURI": uri}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(auth["Authorized"], false);
    assert!(auth["Reason"].as_str().unwrap().contains("deny"), "{auth}");
    let foreign = "spiffe://other.plexus/ns/default/dc/dc1/svc/web";
    let (_, auth, _) = post(
        "/v1/agent/connect/authorize",
        json!({"Target": "cache", "ClientCertURI": foreign}),
    )
    .await;
    assert_eq!(auth["Authorized"], false);

    // Update by id (PUT) and the exact-match upsert.
    let (status, _, _) = http(
        "PUT",
        &format!("{base}/v1/connect/intentions/{id}"),
        Some(
            json!({"SourceName": "web", "DestinationName": "db", "Action": "allow"})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let (_, check, _) = http(
        "GET",
        &format!("{base}/v1/connect/intentions/check?source=web&destination=db"),
        None,
    )
    .await;
    assert_eq!(check, json!({"Allowed": true}));
    let (status, _, _) = http(
        "PUT",
        &format!("{base}/v1/connect/intentions/exact?source=web&destination=db"),
        Some(json!({"Action": "deny"}).to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 200);
    let (_, check, _) = http(
        "GET",
        &format!("{base}/v1/connect/intentions/check?source=web&destination=db"),
        None,
    )
    .await;
    assert_eq!(check, json!({"Allowed": false}));

    // Bad input: right status, field named, nothing stored lost.
    let cases = [
        (
            json!({"DestinationName": "db", "Action": "allow"}),
            400,
            Some("SourceName"),
        ),
        (
            json!({"SourceName": "", "DestinationName": "db", "Action": "allow"}),
            400,
            Some("SourceName"),
        ),
        (
            json!({"SourceName": "w*b", "DestinationName": "db", "Action": "allow"}),
            400,
            Some("SourceName"),
        ),
        (
            json!({"SourceName": "web", "DestinationName": "db", "Action": "maybe"}),
            400,
            Some("Action"),
        ),
        (
            json!({"SourceName": "web", "DestinationName": "db", "Action": "allow", "SourceNS": "prod"}),
            400,
            Some("SourceNS"),
        ),
        (
            json!({"SourceName": "web", "DestinationName": "db", "Action": "allow"}),
            409,
            None,
        ),
        (
            json!({"ID": "x", "SourceName": "a", "DestinationName": "b", "Action": "allow"}),
            400,
            Some("ID"),
        ),
    ];
    for (body, want, field) in cases {
        let (status, error, _) = post("/v1/connect/intentions", body.clone()).await;
        assert_eq!(status, want, "{body}: {error}");
        if let Some(field) = field {
            assert_eq!(error["error"]["field"], field, "{body}: {error}");
        }
    }
    for (method, path, want) in [
        ("GET", "/v1/connect/intentions/check?source=web", 400),
        (
            "GET",
            "/v1/connect/intentions/match?by=nothing&name=db",
            400,
        ),
        (
            "GET",
            "/v1/connect/intentions/exact?source=a&destination=b",
            404,
        ),
        ("GET", "/v1/connect/intentions/no-such-id", 404),
        ("DELETE", "/v1/connect/intentions/no-such-id", 404),
    ] {
        let (status, error, _) = http(method, &format!("{base}{path}"), None).await;
        assert_eq!(status, want, "{method} {path}: {error}");
    }
    let (status, error, _) = post(
        "/v1/agent/connect/authorize",
        json!({"Target": "db", "ClientCertURI": "https://web"}),
    )
    .await;
    assert_eq!(
        (status, &error["error"]["field"]),
        (400, &json!("ClientCertURI"))
    );
    let (_, list, _) = http("GET", &format!("{base}/v1/connect/intentions"), None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (status, _, _) = http(
        "DELETE",
        &format!("{base}/v1/connect/intentions/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, list, _) = http("GET", &format!("{base}/v1/connect/intentions"), None).await;
    assert_eq!(list, json!([]));
    mesh.still_serves().await;
}

const PY_CONSUL: &str = r#"
import sys, consul
c = consul.Consul(host="127.0.0.1", port=int(sys.argv[1]))
roots = c.connect.ca.roots()
assert roots["ActiveRootID"] == roots["Roots"][0]["ID"], roots
assert roots["Roots"][0]["RootCert"].startswith("-----BEGIN CERTIFICATE-----"), roots
config = c.connect.ca.configuration()
assert config["Config"]["LeafCertTTL"] == "72h", config
assert c.connect.intentions.upsert("client", "echo", action="deny")
assert c.connect.intentions.check("client", "echo") is False
intention = c.connect.intentions.read("client", "echo")
assert intention["Action"] == "deny" and intention["Precedence"] == 9, intention
matched = c.connect.intentions.match("destination", "echo")
assert matched["echo"][0]["SourceName"] == "client", matched
assert c.connect.intentions.delete("client", "echo")
assert c.connect.intentions.check("client", "echo") is True
print("py-consul connect OK", roots["TrustDomain"])
"#;

#[tokio::test]
async fn py_consul_reads_the_ca_and_manages_intentions() {
    let python = crate::consul_client::python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh",
        python.display()
    );
    let mesh = Mesh::start(&[], &[]).await;
    let out = tokio::process::Command::new(&python)
        .args(["-c", PY_CONSUL, &mesh.dev.http.port().to_string()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "py-consul connect OK {}",
            mesh.trust_domain().await
        )),
        "{stdout}"
    );
    // The intention is gone again: the mesh serves.
    mesh.still_serves().await;
}
