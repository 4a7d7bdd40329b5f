//! L7 intentions (Consul's `Permissions`): each HTTP request decided by its path, method and
//! headers, first match first, through Plexus sidecars and through Envoy inbounds; the path
//! tested is the path the app gets; bad permissions refused by name; a TCP check denies.

use std::net::SocketAddr;

use plexus_test::upstream::HttpStub;
use plexus_test::{Dev, eventually, free_port};
use serde_json::json;

use crate::envoy::envoy;
use crate::l7::{L7Mesh, app_hcl, client_hcl, raw};
use crate::{dev, http, write_file};

/// `client` → `web`: `/admin…` only with an `x-role` containing `ops` in any case; no DELETE;
/// anything else the default.
fn permissions() -> serde_json::Value {
    json!({
        "Description": "ops only on /admin",
        "Permissions": [
            {"Action": "allow", "HTTP": {"PathPrefix": "/admin", "Header": [{"Name": "X-Role", "Contains": "ops", "IgnoreCase": true}]}},
            {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
            {"Action": "deny", "HTTP": {"Methods": ["DELETE"]}},
        ],
    })
}

async fn put_exact(dev: &Dev, body: &serde_json::Value) -> (u16, String) {
    let (status, body, _) = http(
        "PUT",
        &format!(
            "http://{}/v1/connect/intentions/exact?source=client&destination=web",
            dev.addr()
        ),
        Some(body.to_string().into_bytes()),
    )
    .await;
    (status, body.to_string())
}

/// The status the client's upstream answers `method path` with (`role`: an `x-role` header),
/// sent as raw HTTP/1.1 so that the path reaches the sidecars exactly as written.
async fn status(upstream: SocketAddr, method: &str, path: &str, role: Option<&str>) -> u16 {
    let role = role.map(|r| format!("x-role: {r}\r\n")).unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: web\r\n{role}connection: close\r\n\r\n");
    let (answer, _) = raw(upstream, request.as_bytes()).await;
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// What both data planes must do under [`permissions`] with the default policy `allow`.
async fn decided_by_permissions(upstream: SocketAddr, web: &HttpStub) {
    // Every case, with the sidecars' answer the permissions give.
    let cases = [
        ("GET", "/v2/widgets", None, 200),
        ("GET", "/admin/users", Some("ops"), 200),
        ("GET", "/admin/users", Some("DevOps"), 200),
        ("GET", "/admin/users", Some("dev"), 403),
        ("GET", "/admin/users", None, 403),
        ("DELETE", "/v2/widgets", None, 403),
        ("POST", "/v2/widgets", None, 200),
        // The path tested is the app's: dot segments and doubled slashes do not walk around
        // the deny.
        ("GET", "/v2/../admin/users", None, 403),
        ("GET", "//admin/users", None, 403),
        ("GET", "/v2/%2e%2e/admin", None, 403),
    ];
    for (method, path, role, expected) in cases {
        assert_eq!(
            status(upstream, method, path, role).await,
            expected,
            "{method} {path} {role:?}"
        );
    }
    // An allowed request with dot segments reaches the app in normal form.
    assert_eq!(status(upstream, "GET", "/v2/./a//b?q=1", None).await, 200);
    assert_eq!(web.last_path(), "/v2/a/b?q=1");
}

#[tokio::test]
async fn l7_intentions_decide_each_request_through_plexus_sidecars() {
    let web = HttpStub::start_named("web").await.unwrap();
    let mesh = L7Mesh::start("web", web.addr.port(), "http").await;
    let dev = &mesh.dev;
    assert_eq!(status(mesh.upstream, "GET", "/admin", None).await, 200);

    // Bad permissions are refused, naming the field; nothing is stored.
    for (body, field) in [
        (
            json!({"Action": "allow", "Permissions": permissions()["Permissions"]}),
            "Action",
        ),
        (
            json!({"Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "admin"}}]}),
            "Permissions[0].HTTP.PathPrefix",
        ),
        (
            json!({"Permissions": [{"Action": "deny", "HTTP": {"Header": [{"Name": "x", "Regex": "("}]}}]}),
            "Permissions[0].HTTP.Header[0].Regex",
        ),
        (
            json!({"Permissions": [{"Action": "deny", "HTTP": {"Methods": ["FETCH"]}}]}),
            "Permissions[0].HTTP.Methods[0]",
        ),
        (
            json!({"Permissions": [{"Action": "deny"}]}),
            "Permissions[0].HTTP",
        ),
        (
            json!({"Permissions": [{"Action": "maybe", "HTTP": {"PathExact": "/"}}]}),
            "Permissions[0].Action",
        ),
    ] {
        let (code, answer) = put_exact(dev, &body).await;
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains(field), "{field}: {answer}");
    }
    assert!(dev.client.intentions().await.unwrap().is_empty());

    let (code, answer) = put_exact(dev, &permissions()).await;
    assert_eq!(code, 200, "{answer}");
    eventually!(status(mesh.upstream, "GET", "/admin/users", None).await == 403);
    decided_by_permissions(mesh.upstream, &web).await;

    // Read back in Consul's shape; a check without a request denies (an L7 intention governs).
    let stored = dev.client.intention_exact("client", "web").await.unwrap();
    assert_eq!(stored.action, None);
    assert_eq!(stored.permissions.len(), 3);
    assert!(!dev.client.intention_check("client", "web").await.unwrap());
    let (code, out, _) = dev.cli(&["intention", "list"]).unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("L7 (3 permissions)"), "{out}");
    // Counted per request by the inbound sidecar.
    let denied = "plexus_proxy_intention_decisions_total{source=\"client\",destination=\"web\",result=\"deny\"}";
    assert!(mesh.server.metric(denied).await.unwrap() >= 7.0);

    // Replaced by an L4 allow: the same pooled connection now lets everything through.
    let (code, answer) = put_exact(dev, &json!({"Action": "allow"})).await;
    assert_eq!(code, 200, "{answer}");
    eventually!(status(mesh.upstream, "DELETE", "/admin", None).await == 200);
}

#[tokio::test]
async fn l7_intentions_decide_each_request_through_envoy_inbounds() {
    let web = HttpStub::start_named("web").await.unwrap();
    let upstream_port = free_port();
    let hcl = client_hcl("web", upstream_port, Some("http"))
        + &app_hcl(
            ("web", "web", web.addr.port()),
            "",
            free_port(),
            Some("http"),
        );
    let (_dir, file) = write_file("mesh.hcl", &hcl);
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    let _web_envoy = envoy(&dev, &["-sidecar-for", "web"], &[]).await;
    let _client_envoy = envoy(&dev, &["-sidecar-for", "client"], &[]).await;
    let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
    eventually!(status(upstream, "GET", "/admin", None).await == 200);

    let (code, answer) = put_exact(&dev, &permissions()).await;
    assert_eq!(code, 200, "{answer}");
    eventually!(status(upstream, "GET", "/admin/users", None).await == 403);
    decided_by_permissions(upstream, &web).await;
}

/// Consul's `service-intentions` entry, in HCL, for `web`: the same rules as [`permissions`] for
/// `client`, and every other source denied.
const SERVICE_INTENTIONS_HCL: &str = r#"
Kind = "service-intentions"
Name = "web"
Sources = [
  {
    Name = "client"
    Permissions = [
      {
        Action = "allow"
        HTTP {
          PathPrefix = "/admin"
          Header = [{ Name = "X-Role", Contains = "ops", IgnoreCase = true }]
        }
      },
      { Action = "deny", HTTP { PathPrefix = "/admin" } },
      { Action = "deny", HTTP { Methods = ["DELETE"] } },
    ]
  },
  { Name = "*", Action = "deny" }
]
"#;

#[tokio::test]
async fn a_service_intentions_entry_is_the_destinations_intentions() {
    let web = HttpStub::start_named("web").await.unwrap();
    let mesh = L7Mesh::start("web", web.addr.port(), "http").await;
    let dev = &mesh.dev;
    // An intention written the old way first: the entry replaces it, keeping its ID.
    let (code, answer) = put_exact(dev, &json!({"Action": "deny"})).await;
    assert_eq!(code, 200, "{answer}");
    let legacy = dev.client.intention_exact("client", "web").await.unwrap();
    eventually!(status(mesh.upstream, "GET", "/", None).await == 403);

    // A bad entry is refused naming the field, by the CLI and by the API; nothing changes.
    let bad =
        SERVICE_INTENTIONS_HCL.replace("PathPrefix = \"/admin\" }", "PathPrefix = \"admin\" }");
    let (_bad_dir, bad_file) = write_file("bad.hcl", &bad);
    let (code, _, err) = dev
        .cli(&["config", "write", bad_file.to_str().unwrap()])
        .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("Sources[0].Permissions[1].HTTP.PathPrefix"),
        "{err}"
    );
    let (code, answer, _) = http(
        "PUT",
        &format!("http://{}/v1/config", dev.addr()),
        Some(
            json!({"Kind": "service-intentions", "Name": "web", "Sources": [{"Name": "client"}]})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer.to_string().contains("Sources[0].Action"), "{answer}");
    assert_eq!(dev.client.intentions().await.unwrap().len(), 1);

    let (_dir, file) = write_file("intentions.hcl", SERVICE_INTENTIONS_HCL);
    let (code, out, err) = dev
        .cli(&["config", "write", file.to_str().unwrap()])
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("service-intentions/web"), "{out}");
    eventually!(status(mesh.upstream, "GET", "/", None).await == 200);
    decided_by_permissions(mesh.upstream, &web).await;

    // Read back as Consul shows it: one source per intention, the old one's ID kept.
    let (code, entry, _) = http(
        "GET",
        &format!("http://{}/v1/config/service-intentions/web", dev.addr()),
        None,
    )
    .await;
    assert_eq!(code, 200, "{entry}");
    assert_eq!(entry["Sources"][0]["Name"], "client");
    assert_eq!(entry["Sources"][0]["LegacyID"], legacy.id.as_str());
    assert_eq!(
        entry["Sources"][0]["Permissions"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(entry["Sources"][1]["Name"], "*");
    assert_eq!(entry["Sources"][1]["Action"], "deny");
    assert_eq!(dev.client.intentions().await.unwrap().len(), 2);
    let (code, out, _) = dev
        .cli(&["config", "list", "--kind", "service-intentions"])
        .unwrap();
    assert_eq!((code, out.trim()), (0, "web"));

    // Deleted: the intentions are gone, the default (allow) decides again.
    let (code, _, err) = dev
        .cli(&[
            "config",
            "delete",
            "--kind",
            "service-intentions",
            "--name",
            "web",
        ])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(dev.client.intentions().await.unwrap().is_empty());
    eventually!(status(mesh.upstream, "DELETE", "/admin", None).await == 200);
}
