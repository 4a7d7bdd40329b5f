//! Access control end to end: a real `plexus server` enforcing ACLs (default deny), tokens made
//! through the API, and every endpoint family answering each kind of token with the exact
//! status; today's attacks refused with nothing changed; bootstrap once and its reset file.

use std::time::Duration;

use plexus_test::{Process, eventually};
use serde_json::{Value, json};

use crate::bin;

/// A `plexus server` with ACLs on (default deny), its data dir and the management token.
pub struct AclServer {
    pub process: Process,
    pub addr: String,
    pub management: String,
    pub data_dir: tempfile::TempDir,
}

impl AclServer {
    /// Starts a server (embedded store) with `extra` arguments and `envs`.
    pub async fn start(extra: &[&str], envs: &[(&str, &str)]) -> AclServer {
        let data_dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "server",
            "--http-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
            "--node",
            "acl-node",
            "--data-dir",
            data_dir.path().to_str().unwrap(),
            "--acl-token-min-expiration-ttl",
            "1s",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let management = plexus_test::server::random_uuid();
        plexus_test::secrets::register(&management);
        let mut all_envs = vec![("PLEXUS_ACL_INITIAL_MANAGEMENT_TOKEN", management.as_str())];
        all_envs.extend_from_slice(envs);
        let process = Process::spawn("server:acl", bin(), &args, &all_envs).unwrap();
        let addr = process.listening("http").await.unwrap().to_string();
        AclServer {
            process,
            addr,
            management,
            data_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with `token` (`None`: no token at all).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        call(&self.url(path), method, token, body).await
    }

    /// A request with the management token that must succeed; its JSON answer.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, json, _) = self.call(method, path, Some(&self.management), body).await;
        assert_eq!(status, 200, "{method} {path}: {json}");
        json
    }

    /// Creates a token with `body` (Consul's shape); returns (AccessorID, SecretID).
    pub async fn token(&self, body: Value) -> (String, String) {
        let token = self.admin("PUT", "/v1/acl/token", Some(body)).await;
        let secret = token["SecretID"].as_str().unwrap().to_owned();
        plexus_test::secrets::register(&secret);
        (token["AccessorID"].as_str().unwrap().to_owned(), secret)
    }

    /// Creates a policy; returns its name.
    pub async fn policy(&self, name: &str, rules: &str) -> String {
        self.admin(
            "PUT",
            "/v1/acl/policy",
            Some(json!({"Name": name, "Rules": rules})),
        )
        .await;
        name.to_owned()
    }
}

/// One HTTP request with an optional token: (status, JSON or Null, headers).
pub async fn call(
    url: &str,
    method: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.header("x-consul-token", token);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

fn filtered(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get("x-consul-results-filtered-by-acls")
        .is_some_and(|v| v == "true")
}

/// A presence join as app `app` with `token`: `welcome`, `refused`, or the HTTP status.
async fn join_presence(addr: &str, app: &str, token: Option<&str>) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let origin = plexus_test::server::random_uuid().replace('-', "");
    let mut request = format!("ws://{addr}/ws/presence/{origin}")
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("x-consul-token", token.parse().unwrap());
    }
    let (mut ws, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            return response.status().as_u16().to_string();
        }
        Err(other) => panic!("presence connect: {other}"),
    };
    let hello = json!({"type": "hello", "app": app, "group": "g", "routes": ["a.b"]});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                let kind = frame["type"].as_str().unwrap_or_default().to_owned();
                let _ = ws.close(None).await;
                return kind;
            }
            Some(Ok(_)) => continue,
            other => panic!("presence: no frame: {other:?}"),
        }
    }
}

const WEB_DEF: &str = r#"{"Name": "web", "ID": "web-1", "Port": 8080,
  "Connect": {"SidecarService": {"Port": 21500}}}"#;
const DB_DEF: &str = r#"{"Name": "db", "ID": "db-1", "Port": 5432,
  "Connect": {"SidecarService": {"Port": 21501}}}"#;

/// Tokens of the matrix, in column order.
const TOKENS: [&str; 8] = [
    "none",
    "anonymous",
    "read",
    "other",
    "right",
    "deleted",
    "expired",
    "management",
];

#[tokio::test]
async fn permissions_matrix_every_family_and_every_kind_of_token() {
    let server = AclServer::start(&["--auto-encrypt-allow-tls"], &[]).await;
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(serde_json::from_str(WEB_DEF).unwrap()),
        )
        .await;
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(serde_json::from_str(DB_DEF).unwrap()),
        )
        .await;
    server
        .admin("PUT", "/v1/kv/app/config", Some(json!("v1")))
        .await;
    server
        .admin("PUT", "/v1/kv/secret/db", Some(json!("pw")))
        .await;
    let reader = server
        .policy(
            "reader",
            r#"
service "web" { policy = "read" }
node_prefix "" { policy = "read" }
key_prefix "app/" { policy = "read" }
agent_prefix "" { policy = "read" }
operator = "read"
acl = "read"
"#,
        )
        .await;
    let (_, read) = server.token(json!({"Policies": [{"Name": reader}]})).await;
    let (_, other) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "db"}]}))
        .await;
    let (_, right) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "web"}]}))
        .await;
    let (deleted_id, deleted) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "web"}]}))
        .await;
    server
        .admin("DELETE", &format!("/v1/acl/token/{deleted_id}"), None)
        .await;
    let (_, expired) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "web"}], "ExpirationTTL": "1s"}))
        .await;
    eventually!(
        server
            .call("GET", "/v1/catalog/services", Some(&expired), None)
            .await
            .0
            == 403
    );
    let secrets: [Option<&str>; 8] = [
        None,
        Some("anonymous"),
        Some(&read),
        Some(&other),
        Some(&right),
        Some(&deleted),
        Some(&expired),
        Some(&server.management),
    ];
    let roots = server.admin("GET", "/v1/connect/ca/roots", None).await;
    let trust_domain = roots["TrustDomain"].as_str().unwrap().to_owned();
    let spiffe = plexus_api::connect::service_spiffe_id(&trust_domain, "dc1", "web");
    let (csr, _) = plexus_test::pki::csr(&[&spiffe]).unwrap();
    let (agent_csr, _) =
        plexus_test::pki::csr(&["spiffe://x.invalid/agent/client/dc/dc1/id/agent-x"]).unwrap();

    // (family, method, path, body, statuses for: none anonymous read other right deleted expired management)
    type Row = (&'static str, &'static str, String, Option<Value>, [u16; 8]);
    let rows: Vec<Row> = vec![
        (
            "catalog read",
            "GET",
            "/v1/catalog/service/web".into(),
            None,
            [200, 200, 200, 200, 200, 403, 403, 200],
        ),
        (
            "health read",
            "GET",
            "/v1/health/service/web".into(),
            None,
            [200, 200, 200, 200, 200, 403, 403, 200],
        ),
        (
            "agent read",
            "GET",
            "/v1/agent/self".into(),
            None,
            [403, 403, 200, 200, 200, 403, 403, 200],
        ),
        (
            "agent write",
            "PUT",
            "/v1/agent/service/register".into(),
            Some(json!({"Name": "web", "ID": "web-2", "Port": 8081})),
            [403, 403, 403, 403, 200, 403, 403, 200],
        ),
        (
            "kv read",
            "GET",
            "/v1/kv/app/config".into(),
            None,
            [403, 403, 200, 403, 403, 403, 403, 200],
        ),
        (
            "kv write",
            "PUT",
            "/v1/kv/app/new".into(),
            Some(json!("x")),
            [403, 403, 403, 403, 403, 403, 403, 200],
        ),
        (
            "config write",
            "PUT",
            "/v1/config".into(),
            Some(json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"})),
            [403, 403, 403, 403, 200, 403, 403, 200],
        ),
        (
            "discovery chain",
            "GET",
            "/v1/discovery-chain/web".into(),
            None,
            [403, 403, 200, 200, 200, 403, 403, 200],
        ),
        (
            "intentions read",
            "GET",
            "/v1/connect/intentions/match?by=destination&name=web".into(),
            None,
            [403, 403, 200, 200, 200, 403, 403, 200],
        ),
        (
            "intentions write",
            "PUT",
            "/v1/connect/intentions/exact?source=db&destination=web".into(),
            Some(json!({"Action": "allow"})),
            [403, 403, 403, 403, 403, 403, 403, 200],
        ),
        (
            "CA configuration",
            "GET",
            "/v1/connect/ca/configuration".into(),
            None,
            [403, 403, 200, 403, 403, 403, 403, 200],
        ),
        (
            "CA roots",
            "GET",
            "/v1/connect/ca/roots".into(),
            None,
            [200, 200, 200, 200, 200, 403, 403, 200],
        ),
        (
            "leaf",
            "GET",
            "/v1/agent/connect/ca/leaf/web".into(),
            None,
            [403, 403, 403, 403, 200, 403, 403, 200],
        ),
        (
            "CSR",
            "POST",
            "/v1/connect/ca/sign".into(),
            Some(json!({"ProxyID": "web-1-sidecar-proxy", "CSR": csr})),
            [403, 403, 403, 403, 200, 403, 403, 200],
        ),
        (
            "ACL read",
            "GET",
            "/v1/acl/tokens".into(),
            None,
            [403, 403, 200, 403, 403, 403, 403, 200],
        ),
        (
            "ACL write",
            "PUT",
            "/v1/acl/policy".into(),
            Some(json!({"Name": "p-NAME", "Rules": "operator = \"read\""})),
            [403, 403, 403, 403, 403, 403, 403, 200],
        ),
        (
            "token self",
            "GET",
            "/v1/acl/token/self".into(),
            None,
            [200, 200, 200, 200, 200, 403, 403, 200],
        ),
        (
            "operator",
            "GET",
            "/v1/operator/plexus".into(),
            None,
            [403, 403, 200, 403, 403, 403, 403, 200],
        ),
        (
            "events",
            "GET",
            "/v1/events/info".into(),
            None,
            [403, 403, 200, 403, 403, 403, 403, 200],
        ),
        (
            "events list",
            "GET",
            "/v1/events/apps".into(),
            None,
            [200, 200, 200, 200, 200, 403, 403, 200],
        ),
        (
            "CA rotate",
            "POST",
            "/v1/connect/ca/rotate".into(),
            None,
            [403, 403, 403, 403, 403, 403, 403, 200],
        ),
        (
            "mesh services",
            "GET",
            "/v1/mesh/services".into(),
            None,
            [200, 200, 200, 200, 200, 403, 403, 200],
        ),
        (
            "mesh topology",
            "GET",
            "/v1/mesh/topology".into(),
            None,
            [200, 200, 200, 200, 200, 403, 403, 200],
        ),
        (
            "auto-encrypt sign",
            "POST",
            "/v1/internal/auto-encrypt/sign".into(),
            Some(json!({"Node": "agent-x", "CSR": agent_csr})),
            [403, 403, 403, 403, 403, 403, 403, 200],
        ),
    ];
    // The presence monitor's actuator: operator:read, but probes answer without a token.
    let mut rows = rows;
    for path in ["/info", "/info/routes", "/info/lib", "/env"] {
        rows.push((
            "actuator",
            "GET",
            path.into(),
            None,
            [403, 403, 200, 403, 403, 403, 403, 200],
        ));
    }
    for path in ["/health", "/livenessprobe"] {
        rows.push((
            "probe",
            "GET",
            path.into(),
            None,
            [200, 200, 200, 200, 200, 403, 403, 200],
        ));
    }
    let mut failures = Vec::new();
    for (family, method, path, body, expected) in &rows {
        for (i, token) in secrets.iter().enumerate() {
            let body = body.clone().map(|b| {
                serde_json::from_str(&b.to_string().replace("NAME", &i.to_string())).unwrap()
            });
            let (status, answer, _) = server.call(method, path, *token, body).await;
            if status != expected[i] {
                failures.push(format!(
                    "{family} ({method} {path}) with {} token: {status}, expected {}: {answer}",
                    TOKENS[i], expected[i]
                ));
            }
            if status == 403 && i != 5 && i != 6 {
                let message = answer["error"]["message"].as_str().unwrap_or_default();
                if !message.starts_with("Permission denied: token with AccessorID '") {
                    failures.push(format!("{family} with {}: message {message:?}", TOKENS[i]));
                }
            }
            if status == 403 && (i == 5 || i == 6) && answer["error"]["message"] != "ACL not found"
            {
                failures.push(format!("{family} with {}: {answer}", TOKENS[i]));
            }
        }
    }
    // A probe without operator:read learns up or down only; operator:read gets the report.
    let (_, health, _) = server.call("GET", "/health", None, None).await;
    assert_eq!(
        health,
        json!({"status": "UP"}),
        "anonymous /health: {health}"
    );
    let (_, health, _) = server.call("GET", "/health", Some(&read), None).await;
    assert_eq!(health["status"], "UP");
    assert!(
        health["dependency"].is_array(),
        "operator:read /health: {health}"
    );
    // /v1/mesh/services counts only instances on nodes the token may read (node:read).
    let services_only = server
        .policy("services-only", r#"service_prefix "" { policy = "read" }"#)
        .await;
    let (_, blind) = server
        .token(json!({"Policies": [{"Name": services_only}]}))
        .await;
    let (_, rows, headers) = server
        .call("GET", "/v1/mesh/services", Some(&blind), None)
        .await;
    assert_eq!(rows, json!([]), "no node:read, no instances: {rows}");
    assert!(filtered(&headers));
    let with_node = server
        .policy(
            "services-and-node",
            r#"service_prefix "" { policy = "read" }
node "acl-node" { policy = "read" }"#,
        )
        .await;
    let (_, sighted) = server
        .token(json!({"Policies": [{"Name": with_node}]}))
        .await;
    let (_, rows, headers) = server
        .call("GET", "/v1/mesh/services", Some(&sighted), None)
        .await;
    let listed: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["db", "web"], "{rows}");
    assert!(!filtered(&headers), "{rows}");
    // Auto-encrypt: the agent's own node identity signs, another node's does not.
    let node_token =
        |node: &str| json!({"NodeIdentities": [{"NodeName": node, "Datacenter": "dc1"}]});
    let (_, agent_x) = server.token(node_token("agent-x")).await;
    let (_, agent_y) = server.token(node_token("agent-y")).await;
    let sign = json!({"Node": "agent-x", "CSR": agent_csr});
    let (status, answer, _) = server
        .call(
            "POST",
            "/v1/internal/auto-encrypt/sign",
            Some(&agent_x),
            Some(sign.clone()),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer, _) = server
        .call(
            "POST",
            "/v1/internal/auto-encrypt/sign",
            Some(&agent_y),
            Some(sign),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("'node:write' on \"agent-x\""),
        "{answer}"
    );

    // Presence: joining as "web" needs service:write on web.
    let presence = [
        "refused", "refused", "refused", "refused", "welcome", "403", "403", "welcome",
    ];
    for (i, token) in secrets.iter().enumerate() {
        let got = join_presence(&server.addr, "web", *token).await;
        if got != presence[i] {
            failures.push(format!(
                "presence with {} token: {got}, expected {}",
                TOKENS[i], presence[i]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Each join above closed its session: wait until the last app has left the catalog.
    plexus_test::eventually!(
        server
            .call(
                "GET",
                "/v1/health/service/web",
                Some(&server.management),
                None
            )
            .await
            .1
            .as_array()
            .is_some_and(|instances| instances.len() == 2)
    );

    // Filtered lists: each token sees what it may, and is told when something was left out.
    let names = |v: &Value| {
        let mut n: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        n.sort();
        n
    };
    let (_, all, headers) = server
        .call(
            "GET",
            "/v1/catalog/services",
            Some(&server.management),
            None,
        )
        .await;
    assert!(names(&all).contains(&"db".to_owned()) && !filtered(&headers));
    let (_, seen, headers) = server
        .call("GET", "/v1/catalog/services", Some(&read), None)
        .await;
    assert_eq!(names(&seen), ["web"], "{seen}");
    assert!(filtered(&headers));
    let (_, seen, headers) = server.call("GET", "/v1/catalog/services", None, None).await;
    assert_eq!(seen, json!({}));
    assert!(filtered(&headers));
    let (_, keys, headers) = server.call("GET", "/v1/kv/?keys", Some(&read), None).await;
    assert_eq!(keys, json!(["app/config", "app/new"]), "{keys}");
    assert!(filtered(&headers));
    let (status, _, headers) = server
        .call("GET", "/v1/health/service/db", Some(&read), None)
        .await;
    assert_eq!(status, 200);
    assert!(filtered(&headers));
    let (_, services, headers) = server
        .call("GET", "/v1/agent/services", Some(&read), None)
        .await;
    assert_eq!(names(&services), ["web-1", "web-2"], "{services}");
    assert!(filtered(&headers));
    // A blocking query with a token waits and answers with the token's view.
    let (_, first, h) = server
        .call("GET", "/v1/health/service/web", Some(&right), None)
        .await;
    let index: u64 = h["x-consul-index"].to_str().unwrap().parse().unwrap();
    assert_eq!(first.as_array().unwrap().len(), 2, "{first}");
    let waiting = {
        let url = server.url(&format!("/v1/health/service/web?index={index}&wait=20s"));
        let right = right.clone();
        tokio::spawn(async move { call(&url, "GET", Some(&right), None).await })
    };
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "web", "ID": "web-3", "Port": 8083})),
        )
        .await;
    let (status, after, _) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(after.as_array().unwrap().len(), 3, "{after}");
    // The anonymous token has policies of its own.
    let public = server
        .policy("public", r#"service "db" { policy = "read" }"#)
        .await;
    server
        .admin(
            "PUT",
            &format!("/v1/acl/token/{}", plexus_api::acl::ANONYMOUS_ACCESSOR_ID),
            Some(json!({"Description": "Anonymous Token", "Policies": [{"Name": public}]})),
        )
        .await;
    let (_, seen, _) = server.call("GET", "/v1/catalog/services", None, None).await;
    assert_eq!(names(&seen), ["db"], "{seen}");
}

#[tokio::test]
async fn todays_attacks_are_refused_and_nothing_changes() {
    let server = AclServer::start(&[], &[]).await;
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(serde_json::from_str(WEB_DEF).unwrap()),
        )
        .await;
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(serde_json::from_str(DB_DEF).unwrap()),
        )
        .await;
    for key in ["a/1", "a/2", "b/1"] {
        server
            .admin("PUT", &format!("/v1/kv/{key}"), Some(json!("v")))
            .await;
    }
    server
        .admin(
            "PUT",
            "/v1/connect/intentions/exact?source=web&destination=db",
            Some(json!({"Action": "allow"})),
        )
        .await;
    let (_, web) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "web"}]}))
        .await;
    let kv_reader = server
        .policy("kv-reader", r#"key_prefix "" { policy = "read" }"#)
        .await;
    let (_, reader) = server
        .token(json!({"Policies": [{"Name": kv_reader}]}))
        .await;
    let acl_reader = server.policy("acl-reader", r#"acl = "read""#).await;
    let (_, acl_read) = server
        .token(json!({"Policies": [{"Name": acl_reader}]}))
        .await;
    let roots_before = server.admin("GET", "/v1/connect/ca/roots", None).await;
    let intentions_before = server.admin("GET", "/v1/connect/intentions", None).await;
    let policies_before = server.admin("GET", "/v1/acl/policies", None).await;
    let trust_domain = roots_before["TrustDomain"].as_str().unwrap().to_owned();
    let db_id = plexus_api::connect::service_spiffe_id(&trust_domain, "dc1", "db");
    let (db_csr, _) = plexus_test::pki::csr(&[&db_id]).unwrap();

    type Attack<'a> = (&'a str, &'a str, String, Option<&'a str>, Option<Value>);
    let attacks: Vec<Attack> = vec![
        (
            "leaf and key without a token",
            "GET",
            "/v1/agent/connect/ca/leaf/web".into(),
            None,
            None,
        ),
        (
            "a CSR for another service with web's token",
            "POST",
            "/v1/connect/ca/sign".into(),
            Some(&web),
            Some(json!({"ProxyID": "db-1-sidecar-proxy", "CSR": db_csr})),
        ),
        (
            "an intention write with a service token",
            "PUT",
            "/v1/connect/intentions/exact?source=web&destination=db".into(),
            Some(&web),
            Some(json!({"Action": "deny"})),
        ),
        (
            "a CA rotation with a service token",
            "POST",
            "/v1/connect/ca/rotate".into(),
            Some(&web),
            None,
        ),
        (
            "a CA rotation through the configuration",
            "PUT",
            "/v1/connect/ca/configuration".into(),
            Some(&web),
            Some(json!({"Provider": "plexus", "Config": {"RotateRoot": true}})),
        ),
        (
            "a recursive KV delete with a read token",
            "DELETE",
            "/v1/kv/?recurse".into(),
            Some(&reader),
            None,
        ),
        (
            "policy escalation by an acl=read token",
            "PUT",
            "/v1/acl/policy".into(),
            Some(&acl_read),
            Some(json!({"Name": "mine", "Rules": plexus_api::acl::rules::GLOBAL_MANAGEMENT_RULES})),
        ),
        (
            "a management token made by an acl=read token",
            "PUT",
            "/v1/acl/token".into(),
            Some(&acl_read),
            Some(json!({"Policies": [{"ID": plexus_api::acl::GLOBAL_MANAGEMENT_POLICY_ID}]})),
        ),
        (
            "a second bootstrap",
            "PUT",
            "/v1/acl/bootstrap".into(),
            None,
            None,
        ),
    ];
    for (what, method, path, token, body) in attacks {
        let (status, answer, _) = server.call(method, &path, token, body).await;
        assert_eq!(status, 403, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Permission denied: "),
            "{what}: {message}"
        );
    }
    // Nothing changed.
    assert_eq!(
        server.admin("GET", "/v1/connect/ca/roots", None).await["ActiveRootID"],
        roots_before["ActiveRootID"]
    );
    assert_eq!(
        server.admin("GET", "/v1/connect/intentions", None).await,
        intentions_before
    );
    assert_eq!(
        server.admin("GET", "/v1/acl/policies", None).await,
        policies_before
    );
    assert_eq!(
        server.admin("GET", "/v1/kv/?keys", None).await,
        json!(["a/1", "a/2", "b/1"])
    );
    let tokens = server.admin("GET", "/v1/acl/tokens", None).await;
    assert_eq!(tokens.as_array().unwrap().len(), 5, "{tokens}");
    // The refusals name who lacked what, and never the secret.
    let (_, answer, _) = server
        .call("POST", "/v1/connect/ca/rotate", Some(&web), None)
        .await;
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("lacks permission 'operator:write'"),
        "{message}"
    );
    assert!(!message.contains(&web));
}

#[tokio::test]
async fn bootstrap_works_once_then_again_only_after_the_reset_file() {
    // No initial management token here: bootstrap is how the first one is made.
    let data_dir = tempfile::tempdir().unwrap();
    let args = [
        "server",
        "--http-addr",
        "127.0.0.1:0",
        "--dns-addr",
        "127.0.0.1:0",
        "--node",
        "boot",
        "--data-dir",
        data_dir.path().to_str().unwrap(),
    ]
    .map(str::to_owned);
    let process = Process::spawn("server:boot", bin(), &args, &[]).unwrap();
    let addr = process.listening("http").await.unwrap().to_string();
    let server = AclServer {
        process,
        addr,
        management: String::new(),
        data_dir,
    };
    let (status, token, _) = server.call("PUT", "/v1/acl/bootstrap", None, None).await;
    assert_eq!(status, 200, "{token}");
    let secret = token["SecretID"].as_str().unwrap().to_owned();
    assert_eq!(token["Policies"][0]["Name"], "global-management");
    let (status, answer, _) = server.call("PUT", "/v1/acl/bootstrap", None, None).await;
    assert_eq!(status, 403);
    let message = answer["error"]["message"].as_str().unwrap().to_owned();
    let index = message
        .split("reset index: ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .to_owned();
    // A wrong index does not reset.
    let reset = server.data_dir.path().join("acl-bootstrap-reset");
    std::fs::write(&reset, "1").unwrap();
    assert_eq!(
        server.call("PUT", "/v1/acl/bootstrap", None, None).await.0,
        403
    );
    std::fs::write(&reset, &index).unwrap();
    let (status, again, _) = server.call("PUT", "/v1/acl/bootstrap", None, None).await;
    assert_eq!(status, 200, "{again}");
    assert!(!reset.exists(), "the reset file is used up");
    assert_ne!(again["SecretID"].as_str().unwrap(), secret);
    assert_eq!(
        server.call("PUT", "/v1/acl/bootstrap", None, None).await.0,
        403
    );
    // Both management tokens work.
    for token in [secret.as_str(), again["SecretID"].as_str().unwrap()] {
        assert_eq!(
            server
                .call("GET", "/v1/acl/tokens", Some(token), None)
                .await
                .0,
            200
        );
    }
    // Tokens in every form Consul clients send them.
    let by_query = format!("/v1/acl/token/self?token={secret}");
    assert_eq!(server.call("GET", &by_query, None, None).await.0, 200);
    let (status, _, _) = {
        let response = reqwest::Client::new()
            .get(server.url("/v1/acl/tokens"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), (), ())
    };
    assert_eq!(status, 200);
}

#[tokio::test]
async fn acl_bad_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let server = AclServer::start(&[], &[]).await;
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "/v1/acl/policy",
            json!({"Name": "bad", "Rules": "service \"web\" {\n  policy = \"owner\"\n}"}),
            "Rules",
            "line 2",
        ),
        (
            "/v1/acl/policy",
            json!({"Name": "bad name!", "Rules": ""}),
            "Name",
            "invalid policy name",
        ),
        (
            "/v1/acl/policy",
            json!({"Name": "x", "Rules": "", "Colour": "red"}),
            "",
            "unknown field",
        ),
        (
            "/v1/acl/token",
            json!({"Policies": [{"Name": "nope"}]}),
            "Policies[0]",
            "cannot find policy",
        ),
        (
            "/v1/acl/token",
            json!({"ExpirationTTL": "soon"}),
            "ExpirationTTL",
            "",
        ),
        (
            "/v1/acl/token",
            json!({"ExpirationTTL": "1000h"}),
            "ExpirationTTL",
            "between",
        ),
        (
            "/v1/acl/token",
            json!({"ExpirationTime": "yesterday"}),
            "ExpirationTime",
            "RFC 3339",
        ),
        (
            "/v1/acl/token",
            json!({"SecretID": "short"}),
            "SecretID",
            "UUID",
        ),
        (
            "/v1/acl/token",
            json!({"ServiceIdentities": [{"ServiceName": "Web!"}]}),
            "ServiceIdentities[0].ServiceName",
            "",
        ),
        (
            "/v1/acl/role",
            json!({"Name": "r", "Policies": [{"ID": "00000000-0000-0000-0000-00000000abcd"}]}),
            "Policies[0]",
            "cannot find policy",
        ),
    ];
    for (path, body, field, text) in cases {
        let (status, answer, _) = server
            .call("PUT", path, Some(&server.management), Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
        }
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(text),
            "{body}: {answer}"
        );
    }
    let policies = server.admin("GET", "/v1/acl/policies", None).await;
    assert_eq!(
        policies.as_array().unwrap().len(),
        1,
        "only global-management: {policies}"
    );
    assert_eq!(
        server
            .admin("GET", "/v1/acl/tokens", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(server.admin("GET", "/v1/acl/roles", None).await, json!([]));
    // Built-ins stay.
    let (status, _, _) = server
        .call(
            "DELETE",
            &format!(
                "/v1/acl/policy/{}",
                plexus_api::acl::GLOBAL_MANAGEMENT_POLICY_ID
            ),
            Some(&server.management),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _, _) = server
        .call(
            "DELETE",
            &format!("/v1/acl/token/{}", plexus_api::acl::ANONYMOUS_ACCESSOR_ID),
            Some(&server.management),
            None,
        )
        .await;
    assert_eq!(status, 400);
    // A bad token header is an unknown token, and the process stays up.
    assert_eq!(
        server
            .call("GET", "/v1/catalog/services", Some("not-a-token"), None)
            .await
            .0,
        403
    );
    assert_eq!(
        server.admin("GET", "/v1/acl/token/self", None).await["Policies"][0]["Name"],
        "global-management"
    );
}

#[tokio::test]
async fn each_mode_says_so_at_start_and_bad_acl_flags_exit_64_naming_the_flag() {
    let server = AclServer::start(&[], &[]).await;
    server.process.wait_for_line("ACLs enabled").await.unwrap();
    let dev = crate::dev(&[]).await;
    dev.process
        .wait_for_line("ACLs disabled: the API is open")
        .await
        .unwrap();
    let guarded = crate::dev(&["--acl", "--acl-default-policy", "deny"]).await;
    guarded.process.wait_for_line("ACLs enabled").await.unwrap();
    let (status, answer, _) = call(
        &format!("http://{}/v1/kv/x", guarded.addr()),
        "PUT",
        None,
        Some(json!("v")),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let allow = crate::dev(&["--acl", "--acl-default-policy", "allow"]).await;
    let (status, _, _) = call(
        &format!("http://{}/v1/kv/x", allow.addr()),
        "PUT",
        None,
        Some(json!("v")),
    )
    .await;
    assert_eq!(
        status, 200,
        "default allow lets the anonymous token write KV"
    );
    let (status, _, _) = call(
        &format!("http://{}/v1/acl/tokens", allow.addr()),
        "GET",
        None,
        None,
    )
    .await;
    assert_eq!(status, 403, "but not manage ACLs");

    for (args, code, text) in [
        (
            vec!["server", "--acl-default-policy", "maybe"],
            2,
            "invalid default policy \"maybe\"",
        ),
        (
            vec![
                "server",
                "--acl-initial-management-token-file",
                "/nonexistent/m",
            ],
            64,
            "/nonexistent/m",
        ),
        (
            vec!["server", "--acl-token-min-expiration-ttl", "48h"],
            64,
            "--acl-token-min-expiration-ttl",
        ),
        (
            vec!["server", "--acl-enabled", "perhaps"],
            2,
            "--acl-enabled",
        ),
        (
            vec![
                "dev",
                "--acl-initial-management-token-file",
                "/nonexistent/d",
            ],
            64,
            "/nonexistent/d",
        ),
        (
            vec![
                "proxy",
                "--sidecar-for",
                "web",
                "--token-file",
                "/nonexistent/p",
            ],
            64,
            "/nonexistent/p",
        ),
        (
            vec![
                "agent",
                "--server",
                "127.0.0.1:1",
                "--token-file",
                "/nonexistent/a",
            ],
            64,
            "/nonexistent/a",
        ),
    ] {
        let mut all = args.clone();
        let control = if matches!(args[0], "server" | "dev") {
            "127.0.0.1:0"
        } else {
            "127.0.0.1:1"
        };
        all.extend(["--http-addr", control]);
        let (got, _, err) = plexus_test::mesh::run_cli(bin(), &all, &[]).unwrap();
        assert_eq!(got, code, "{args:?}: {err}");
        assert!(err.contains(text), "{args:?}: {err}");
    }
}
