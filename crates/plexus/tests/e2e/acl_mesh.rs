//! Identity bound to authorization, end to end: sidecars and agents running with tokens
//! against a server that enforces ACLs, a revoked token stopping the next leaf renewal, a
//! sidecar without a token refused at start, py-consul with a token, the `plexus acl` CLI, the
//! leaf endpoint as a blocking query — and no secret in any log line or answer seen.

use std::time::{Duration, Instant};

use plexus_test::secrets::SecretLedger;
use plexus_test::{Process, Sidecar, TcpEcho, eventually, free_port};
use serde_json::{Value, json};

use crate::acl::{AclServer, call};
use crate::bin;
use crate::identity::try_round_trip;

/// Records an answer in the ledger and returns it.
async fn seen(
    ledger: &SecretLedger,
    server: &AclServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, answer, headers) = server.call(method, path, token, body).await;
    ledger.answer(format!("{method} {path}"), &format!("{headers:?} {answer}"));
    (status, answer)
}

#[tokio::test]
async fn sidecars_run_with_their_tokens_a_revoked_token_stops_renewal_and_nothing_leaks() {
    let ledger = SecretLedger::new();
    let server = AclServer::start(&["--connect-leaf-ttl", "1m"], &[("RUST_LOG", "debug")]).await;
    ledger.secret(&server.management);
    let echo = TcpEcho::start().await.unwrap();
    let upstream_port = free_port();
    let (web_port, client_port) = (free_port(), free_port());
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "web", "ID": "web", "Port": echo.port(),
                "Connect": {"SidecarService": {"Port": web_port}}})),
        )
        .await;
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "client", "ID": "client", "Port": 8080,
                "Connect": {"SidecarService": {"Port": client_port, "Proxy": {"Upstreams": [
                    {"DestinationName": "web", "LocalBindPort": upstream_port}]}}}})),
        )
        .await;
    server
        .admin(
            "PUT",
            "/v1/connect/intentions/exact?source=client&destination=web",
            Some(json!({"Action": "allow"})),
        )
        .await;
    let (web_id, web_token) = server
        .token(json!({"Description": "web sidecar", "ServiceIdentities": [{"ServiceName": "web"}]}))
        .await;
    let (_, client_token) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "client"}]}))
        .await;
    ledger.secret(&web_token);
    ledger.secret(&client_token);

    // Without a token the sidecar exits at once, saying why.
    let mut bare = Process::spawn(
        "proxy:bare",
        bin(),
        &[
            "proxy",
            "--sidecar-for",
            "web",
            "--http-addr",
            &server.addr,
            "--admin-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned),
        &[],
    )
    .unwrap();
    let status = bare.wait_exit().await.unwrap();
    assert!(!status.success());
    let out = bare.output();
    assert!(
        out.contains("refused this sidecar's token (no token given)")
            && out.contains("lacks permission 'service:read'"),
        "{out}"
    );

    // With their tokens (from a file, as a deployment would), both serve.
    let dir = tempfile::tempdir().unwrap();
    let web_file = dir.path().join("web.token");
    std::fs::write(&web_file, format!("{web_token}\n")).unwrap();
    let web = Sidecar::start_with(
        bin(),
        &server.addr,
        "web",
        &["--token-file", web_file.to_str().unwrap()],
    )
    .await
    .unwrap();
    let client = Sidecar::start_with(bin(), &server.addr, "client", &["--token", &client_token])
        .await
        .unwrap();
    eventually!(web.is_ready().await);
    eventually!(
        client.is_ready().await && client.endpoints("web").await.is_ok_and(|e| e.len() == 1)
    );
    let upstream = ([127, 0, 0, 1], upstream_port).into();
    eventually!(try_round_trip(upstream, "hello").await.as_deref() == Some("hello"));

    // A token cannot take another service's identity.
    let (status, answer) = seen(
        &ledger,
        &server,
        "GET",
        "/v1/agent/connect/ca/leaf/client",
        Some(&web_token),
        None,
    )
    .await;
    assert_eq!(status, 403, "{answer}");

    // Revoke web's token: every call the web sidecar makes is refused from then on (its
    // watches say so), and its next leaf renewal (leaves live 1m here, renewed at about half
    // life) fails, visibly. It keeps serving with the leaf it has until that expires.
    seen(
        &ledger,
        &server,
        "DELETE",
        &format!("/v1/acl/token/{web_id}"),
        Some(&server.management),
        None,
    )
    .await;
    eventually!(
        web.process
            .output()
            .lines()
            .any(|l| l.contains("leaf renewal failed") && l.contains("ACL not found")),
        Duration::from_secs(90)
    );
    // The watches that ask again are refused, visibly. (The CA roots watch is not among them
    // within the test: its blocking query wakes only when the roots change, which a token
    // deletion does not do, as with Consul's blocking queries.)
    assert!(web.process.output().contains(
        "sidecar watch failed; retrying error=GET /v1/agent/service/web-sidecar-proxy: 403: ACL not found"
    ));
    assert_eq!(
        try_round_trip(upstream, "still").await.as_deref(),
        Some("still")
    );

    // Answers a test sees, with tokens of every kind.
    let acl_reader = server
        .policy(
            "auditor",
            r#"acl = "read"
operator = "read""#,
        )
        .await;
    let (_, auditor) = server
        .token(json!({"Policies": [{"Name": acl_reader}]}))
        .await;
    ledger.secret(&auditor);
    for (path, token) in [
        ("/v1/acl/tokens", Some(auditor.as_str())),
        ("/v1/acl/token/self", Some(client_token.as_str())),
        ("/v1/acl/token/self", None),
        ("/v1/catalog/services", Some(web_token.as_str())),
        ("/v1/operator/plexus", Some(auditor.as_str())),
        ("/v1/connect/ca/configuration", Some(auditor.as_str())),
        ("/v1/kv/x", Some(client_token.as_str())),
        ("/v1/acl/policies", Some(auditor.as_str())),
        (&format!("/v1/acl/token/{web_id}"), Some(auditor.as_str())),
    ] {
        let (status, answer) = seen(&ledger, &server, "GET", path, token, None).await;
        assert!(
            status == 200 || status == 403 || status == 404,
            "{path}: {answer}"
        );
    }
    let (_, tokens) = seen(
        &ledger,
        &server,
        "GET",
        "/v1/acl/tokens",
        Some(&auditor),
        None,
    )
    .await;
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["SecretID"] == "<hidden>"),
        "{tokens}"
    );
    let (code, out, err) = plexus_test::mesh::run_cli(
        bin(),
        &["operator", "--json", "--http-addr", &server.addr],
        &[("PLEXUS_HTTP_TOKEN", &auditor)],
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    ledger.answer("plexus operator --json", &format!("{out}{err}"));
    let (code, out, err) = plexus_test::mesh::run_cli(
        bin(),
        &["acl", "token", "list", "--http-addr", &server.addr],
        &[("CONSUL_HTTP_TOKEN", &auditor)],
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    ledger.answer("plexus acl token list", &format!("{out}{err}"));

    // No secret anywhere: not in the server's debug log, the sidecars' logs, or any answer.
    let (secrets, answers) = ledger.counts();
    assert!(secrets >= 4 && answers >= 10);
    let leaks = ledger.leaks(&[
        ("server", server.process.output()),
        ("web sidecar", web.process.output()),
        ("client sidecar", client.process.output()),
        ("bare sidecar", bare.output()),
    ]);
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

#[tokio::test]
async fn a_remote_agent_resolves_callers_tokens_through_the_server_and_uses_its_own() {
    let server = AclServer::start(&[], &[]).await;
    let agent_policy = server
        .policy("agent-edge", r#"service_prefix "" { policy = "write" }"#)
        .await;
    let (_, agent_token) = server
        .token(
            json!({"NodeIdentities": [{"NodeName": "edge", "Datacenter": "dc1"}],
                      "Policies": [{"Name": agent_policy}]}),
        )
        .await;
    let (web_id, web_token) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "web"}]}))
        .await;
    let (_, db_token) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "db"}]}))
        .await;
    // An agent without a token cannot even register its node.
    let mut lonely = Process::spawn(
        "agent:lonely",
        bin(),
        &[
            "agent",
            "--server",
            &server.addr,
            "--node",
            "lonely",
            "--http-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned),
        &[],
    )
    .unwrap();
    let status = lonely.wait_exit().await.unwrap();
    assert!(!status.success());
    let out = lonely.output();
    assert!(
        out.contains("the servers refused this agent's token")
            && out.contains("lacks permission 'node:write' on \"lonely\""),
        "{out}"
    );

    let agent = Process::spawn(
        "agent:edge",
        bin(),
        &[
            "agent",
            "--server",
            &server.addr,
            "--node",
            "edge",
            "--http-addr",
            "127.0.0.1:0",
            "--acl-token-ttl",
            "1s",
        ]
        .map(str::to_owned),
        &[("PLEXUS_HTTP_TOKEN", &agent_token)],
    )
    .unwrap();
    let agent_addr = agent.listening("http").await.unwrap().to_string();
    let url = |path: &str| format!("http://{agent_addr}{path}");
    let web = json!({"Name": "web", "ID": "web-1", "Port": 9000});
    let (status, answer, _) = call(
        &url("/v1/agent/service/register"),
        "PUT",
        Some(&db_token),
        Some(web.clone()),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'service:write' on \"web\""),
        "{answer}"
    );
    let (status, answer, _) = call(
        &url("/v1/agent/service/register"),
        "PUT",
        Some(&web_token),
        Some(web),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    eventually!(
        server
            .admin("GET", "/v1/catalog/service/web", None)
            .await
            .as_array()
            .is_some_and(|a| a.len() == 1)
    );
    // Forwarded reads carry the caller's token: filtered for db's, refused for an unknown one.
    let (status, _, _) = call(
        &url("/v1/kv/x"),
        "GET",
        Some("0e9f0c4b-0000-4000-8000-000000000000"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = call(
        &url("/v1/agent/services"),
        "GET",
        Some("0e9f0c4b-0000-4000-8000-000000000000"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // A deleted token stops working at the agent within its token TTL (1s here).
    let probe = url("/v1/agent/service/web-1");
    assert_eq!(call(&probe, "GET", Some(&web_token), None).await.0, 200);
    server
        .admin("DELETE", &format!("/v1/acl/token/{web_id}"), None)
        .await;
    eventually!(
        call(&probe, "GET", Some(&web_token), None).await.0 == 403,
        Duration::from_secs(10)
    );
    let (status, answer, _) = call(
        &url("/v1/agent/service/deregister/web-1"),
        "PUT",
        Some(&web_token),
        None,
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["message"], "ACL not found");
    assert_eq!(
        server
            .admin("GET", "/v1/catalog/service/web", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    drop(agent);
}

const PY_ACL: &str = r#"
import sys, consul
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
anon = consul.Consul(host=host, port=port)
try:
    anon.agent.service.register("pyweb", service_id="pyweb-1", port=8181)
    raise SystemExit("registered without a token")
except consul.ACLPermissionDenied:
    pass
c = consul.Consul(host=host, port=port, token=token)
c.agent.service.register("pyweb", service_id="pyweb-1", address="127.0.0.1", port=8181,
                         tags=["py"], check=consul.Check.ttl("30s"))
c.agent.check.ttl_pass("service:pyweb-1", notes="from python")
index, nodes = c.health.service("pyweb", passing=True)
assert len(nodes) == 1 and nodes[0]["Service"]["ID"] == "pyweb-1", nodes
assert c.kv.put("pyweb/config", "1") is True
index, item = c.kv.get("pyweb/config")
assert item["Value"] == b"1", item
index, services = anon.catalog.services()
assert "pyweb" not in services, services
print("py-consul ACL OK")
"#;

#[tokio::test]
async fn py_consul_with_a_token_registers_writes_kv_and_reads_health() {
    let python = crate::consul_client::python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh",
        python.display()
    );
    let server = AclServer::start(&[], &[]).await;
    let kv = server
        .policy("pyweb-kv", r#"key_prefix "pyweb/" { policy = "write" }"#)
        .await;
    let (_, token) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "pyweb"}], "Policies": [{"Name": kv}]}))
        .await;
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let out = tokio::process::Command::new(&python)
        .args(["-c", PY_ACL, "127.0.0.1", &port, &token])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("py-consul ACL OK"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_acl_cli_manages_policies_roles_and_tokens() {
    let server = AclServer::start(&[], &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("mgmt");
    std::fs::write(&token_file, &server.management).unwrap();
    let rules = dir.path().join("rules.hcl");
    std::fs::write(&rules, "key_prefix \"app/\" {\n  policy = \"read\"\n}\n").unwrap();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--http-addr",
            &server.addr,
            "--token-file",
            token_file.to_str().unwrap(),
        ]);
        plexus_test::mesh::run_cli(bin(), &all, &[]).unwrap()
    };
    let (code, out, err) = cli(&[
        "acl",
        "policy",
        "create",
        "--name",
        "app-read",
        "--rules",
        &format!("@{}", rules.display()),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let policy: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(policy["Name"], "app-read");
    let (code, out, err) = cli(&[
        "acl",
        "role",
        "create",
        "--name",
        "reader",
        "--policy-name",
        "app-read",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let role: Value = serde_json::from_str(&out).unwrap();
    let (code, out, err) = cli(&[
        "acl",
        "token",
        "create",
        "--description",
        "cli",
        "--role-name",
        "reader",
        "--service-identity",
        "web",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let token: Value = serde_json::from_str(&out).unwrap();
    let secret = token["SecretID"].as_str().unwrap();
    assert_eq!(token["Roles"][0]["ID"], role["ID"]);
    // The new token reads app/ through its role and writes web through its identity.
    server.admin("PUT", "/v1/kv/app/x", Some(json!("1"))).await;
    assert_eq!(
        server
            .call("GET", "/v1/kv/app/x", Some(secret), None)
            .await
            .0,
        200
    );
    assert_eq!(
        server
            .call("PUT", "/v1/kv/app/x", Some(secret), Some(json!("2")))
            .await
            .0,
        403
    );
    let (code, out, _) = cli(&["acl", "token", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("cli") && out.contains("ACCESSOR ID"), "{out}");
    let (code, out, _) = cli(&["acl", "policy", "read", "--name", "app-read"]);
    assert_eq!(code, 0);
    assert!(out.contains("key_prefix \"app/\""), "{out}");
    // Bad rules: exit 1 naming the line; a token file that does not exist: exit 1 naming it.
    std::fs::write(&rules, "key \"a\" {\n  policy = \"maybe\"\n}\n").unwrap();
    let (code, _, err) = cli(&[
        "acl",
        "policy",
        "create",
        "--name",
        "bad",
        "--rules",
        &format!("@{}", rules.display()),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 2") && err.contains("invalid policy \"maybe\""),
        "{err}"
    );
    let (code, _, err) = plexus_test::mesh::run_cli(
        bin(),
        &[
            "acl",
            "token",
            "list",
            "--http-addr",
            &server.addr,
            "--token-file",
            "/nonexistent/t",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/t"), "{err}");
    let (code, _, err) = plexus_test::mesh::run_cli(
        bin(),
        &[
            "acl",
            "token",
            "delete",
            "--id",
            token["AccessorID"].as_str().unwrap(),
            "--http-addr",
            &server.addr,
            "--token",
            secret,
        ],
        &[],
    )
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("lacks permission 'acl:write'"), "{err}");
    let (code, _, _) = cli(&[
        "acl",
        "token",
        "delete",
        "--id",
        token["AccessorID"].as_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        server
            .call("GET", "/v1/kv/app/x", Some(secret), None)
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn the_leaf_endpoint_is_a_blocking_query_over_a_cached_leaf() {
    let server = AclServer::start(&[], &[]).await;
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "web", "ID": "web", "Port": 80})),
        )
        .await;
    let (_, token) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "web"}]}))
        .await;
    let leaf = |query: String| {
        let url = server.url(&format!("/v1/agent/connect/ca/leaf/web{query}"));
        let token = token.clone();
        async move {
            let (status, body, headers) = call(&url, "GET", Some(&token), None).await;
            assert_eq!(status, 200, "{body}");
            let index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
            (index, body)
        }
    };
    let (index, first) = leaf(String::new()).await;
    // Watching it is no longer a signing flood: 30 reads, one certificate, no 429.
    for _ in 0..30 {
        let (again, body) = leaf(String::new()).await;
        assert_eq!(
            (again, &body["SerialNumber"]),
            (index, &first["SerialNumber"])
        );
    }
    // A blocking read waits (here until its wait ends) and answers the same leaf.
    let started = Instant::now();
    let (same, body) = leaf(format!("?index={index}&wait=1s")).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        (same, &body["SerialNumber"]),
        (index, &first["SerialNumber"])
    );
    // A root rotation wakes a waiting read with a new leaf from the new root.
    let waiting = tokio::spawn(leaf(format!("?index={index}&wait=30s")));
    server.admin("POST", "/v1/connect/ca/rotate", None).await;
    let (next, body) = waiting.await.unwrap();
    assert!(next > index);
    assert_ne!(body["SerialNumber"], first["SerialNumber"]);
    assert_ne!(body["RootID"], first["RootID"]);
}

/// Static stability across restarts (issue 16): two sidecars keep their last good config in
/// `--state-dir`; the control plane dies, both are restarted, and they serve HTTP through the
/// mesh from what they kept (registration, leaf and roots, intentions, endpoints, the discovery
/// chain), saying they are stale. The leaf's key is on disk only sealed under the sidecar's
/// token: with another token it does not open, and nothing is served.
#[tokio::test]
async fn sidecars_restarted_during_an_outage_serve_from_their_last_good_config() {
    let mut server = AclServer::start(&[], &[]).await;
    let web_app = plexus_test::upstream::HttpStub::start_named("web-1")
        .await
        .unwrap();
    let (upstream_port, web_port, client_port) = (free_port(), free_port(), free_port());
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(
                json!({"Name": "web", "ID": "web", "Port": web_app.addr.port(),
                "Connect": {"SidecarService": {"Port": web_port}}}),
            ),
        )
        .await;
    server
        .admin(
            "PUT",
            "/v1/agent/service/register",
            Some(json!({"Name": "client", "ID": "client", "Port": 8080,
                "Connect": {"SidecarService": {"Port": client_port, "Proxy": {"Upstreams": [
                    {"DestinationName": "web", "LocalBindPort": upstream_port}]}}}})),
        )
        .await;
    server
        .admin(
            "PUT",
            "/v1/config",
            Some(json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"})),
        )
        .await;
    server
        .admin(
            "PUT",
            "/v1/connect/intentions/exact?source=client&destination=web",
            Some(json!({"Action": "allow"})),
        )
        .await;
    let (_, web_token) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "web"}]}))
        .await;
    let (_, client_token) = server
        .token(json!({"ServiceIdentities": [{"ServiceName": "client"}]}))
        .await;
    let states = tempfile::tempdir().unwrap();
    let state = |name: &str| states.path().join(name).display().to_string();
    let start = |id: &'static str, token: String| {
        let (addr, dir) = (server.addr.clone(), state(id));
        async move {
            Sidecar::start_with(bin(), &addr, id, &["--token", &token, "--state-dir", &dir])
                .await
                .unwrap()
        }
    };
    let url = format!("http://127.0.0.1:{upstream_port}/kept");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let served = || async {
        http.get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200 && r.headers().contains_key("x-version"))
    };
    {
        let web = start("web", web_token.clone()).await;
        let client = start("client", client_token.clone()).await;
        eventually!(web.is_ready().await && client.is_ready().await);
        eventually!(served().await);
    }
    // Every piece is on disk; the key only sealed, the token nowhere.
    for (id, token) in [("web", &web_token), ("client", &client_token)] {
        let dir = std::path::PathBuf::from(state(id));
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(!text.contains("PRIVATE KEY"), "{}", path.display());
            assert!(!text.contains(token.as_str()), "{}", path.display());
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
        names.sort();
        for kept in [
            "intentions.json",
            "leaf.json",
            "registration.json",
            "roots.json",
        ] {
            assert!(names.iter().any(|n| n == kept), "{id}: {names:?}");
        }
        let leaf: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("leaf.json")).unwrap()).unwrap();
        assert!(leaf["value"]["key"]["ciphertext"].is_string(), "{leaf}");
    }
    assert!(
        std::path::Path::new(&state("client"))
            .join("endpoints%2fweb.json")
            .exists()
            && std::path::Path::new(&state("client"))
                .join("chain%2fweb.json")
                .exists()
    );

    // The control plane goes away; both sidecars were stopped with it (dropped above) and
    // are started again while no server answers.
    server.process.signal("KILL").unwrap();
    server.process.wait_exit().await.unwrap();
    let web = start("web", web_token.clone()).await;
    let client = start("client", client_token.clone()).await;
    for sidecar in [&web, &client] {
        eventually!(
            sidecar
                .admin_get("/ready")
                .await
                .is_ok_and(|(status, body)| status == 200 && body.contains("stale since"))
        );
    }
    eventually!(served().await);
    assert!(web_app.requests() >= 2);
    assert!(
        client
            .process
            .output()
            .contains("starting from the last good registration")
    );
    drop(client);

    // With another service's token the sealed key does not open: the client's sidecar says
    // so and does not become ready (it waits for the control plane).
    let wrong = start("client", web_token.clone()).await;
    eventually!(
        wrong
            .process
            .output()
            .contains("does not open with this token")
    );
    let (status, _) = wrong.admin_get("/ready").await.unwrap();
    assert_eq!(status, 503);
    drop(wrong);

    // A state directory that cannot be made is refused at start, naming it.
    let file = states.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let dir = file.join("state");
    let mut bad = Process::spawn(
        "proxy:bad-state",
        bin(),
        &[
            "proxy",
            "--sidecar-for",
            "web",
            "--http-addr",
            "127.0.0.1:1",
            "--admin-addr",
            "127.0.0.1:0",
            "--state-dir",
            dir.to_str().unwrap(),
        ]
        .map(str::to_owned),
        &[],
    )
    .unwrap();
    let status = bad.wait_exit().await.unwrap();
    assert!(!status.success());
    assert!(
        bad.output()
            .contains(&format!("--state-dir: state directory {}", dir.display())),
        "{}",
        bad.output()
    );
}
