//! L7 config entries through the real binary: `plexus config write|read|list|delete` with HCL and
//! JSON files, `/v1/config*` over HTTP (bad input refused naming the field, stored config kept),
//! blocking queries waking on change, the compiled `/v1/discovery-chain/:service`, and py-consul.

use std::time::Duration;

use serde_json::{Value, json};

use crate::consul_client::python;
use crate::{dev, write_file};

const RESOLVER_HCL: &str = r#"
Kind = "service-resolver"
Name = "web"
DefaultSubset = "v1"
Subsets = {
  v1 = { Filter = "Service.Meta.version == v1" }
  v2 = { Filter = "Service.Meta.version == v2" }
}
LoadBalancer = {
  Policy = "least_request"
}
"#;

/// Consul's own HCL style: blocks inside list elements.
const ROUTER_HCL: &str = r#"
Kind = "service-router"
Name = "web"
Routes = [
  {
    Match {
      HTTP {
        Header = [
          { Name = "x-canary", Exact = "1" },
        ]
      }
    }
    Destination {
      ServiceSubset = "v2"
      NumRetries    = 3
      RetryOn       = ["5xx", "unavailable"]
    }
  },
]
"#;

const SPLITTER_JSON: &str = r#"{
  "Kind": "service-splitter",
  "Name": "web",
  "Splits": [
    {"Weight": 90, "ServiceSubset": "v1"},
    {"Weight": 10, "ServiceSubset": "v2"}
  ]
}"#;

async fn http(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value, u64) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url).timeout(Duration::from_secs(30));
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let index = resp
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, index)
}

#[tokio::test]
async fn cli_writes_hcl_and_json_reads_lists_and_deletes() {
    let dev = dev(&[]).await;
    let (_d1, resolver) = write_file("resolver.hcl", RESOLVER_HCL);
    let (_d2, splitter) = write_file("splitter.json", SPLITTER_JSON);
    let (code, out, err) = dev
        .cli(&["config", "write", resolver.to_str().unwrap()])
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("service-resolver/web"), "{out}");
    let (code, _, err) = dev
        .cli(&["config", "write", splitter.to_str().unwrap()])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let (_d3, router) = write_file("router.hcl", ROUTER_HCL);
    let (code, _, err) = dev
        .cli(&["config", "write", router.to_str().unwrap()])
        .unwrap();
    assert_eq!(code, 0, "{err}");

    let (code, out, _) = dev
        .cli(&[
            "config",
            "read",
            "--kind",
            "service-resolver",
            "--name",
            "web",
        ])
        .unwrap();
    assert_eq!(code, 0);
    let entry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(entry["DefaultSubset"], "v1");
    assert_eq!(
        entry["Subsets"]["v2"]["Filter"],
        "Service.Meta.version == v2"
    );
    assert!(entry["ModifyIndex"].as_u64().unwrap() > 0, "{entry}");
    let (_, out, _) = dev
        .cli(&["config", "list", "--kind", "service-splitter"])
        .unwrap();
    assert_eq!(out, "web\n");

    // The compiled chain: 90/10 over the two subsets with their filters.
    let (status, chain, index) = http(
        reqwest::Method::GET,
        format!("http://{}/v1/discovery-chain/web", dev.http),
        None,
    )
    .await;
    assert_eq!(status, 200, "{chain}");
    assert!(index > 0);
    assert_eq!(
        chain["routes"][0]["matcher"]["headers"][0]["name"],
        "x-canary"
    );
    assert_eq!(
        chain["routes"][0]["splits"],
        json!([{"weight": 100.0, "target": "v2.web"}])
    );
    assert_eq!(
        chain["routes"][0]["retry"]["retry_on"],
        json!(["5xx", "unavailable"])
    );
    assert_eq!(chain["routes"][1]["name"], "default");
    let splits = &chain["routes"][1]["splits"];
    assert_eq!(splits[0], json!({"weight": 90.0, "target": "v1.web"}));
    assert_eq!(splits[1], json!({"weight": 10.0, "target": "v2.web"}));
    assert_eq!(
        chain["targets"]["v2.web"]["filter_expression"],
        "Service.Meta.version == v2"
    );
    assert_eq!(
        chain["targets"]["v1.web"]["load_balancer"]["policy"],
        "least_request"
    );

    // Deleting the resolver while the splitter needs it is refused; in order, both go.
    let (code, _, err) = dev
        .cli(&[
            "config",
            "delete",
            "--kind",
            "service-resolver",
            "--name",
            "web",
        ])
        .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("still needs it"), "{err}");
    for kind in ["service-router", "service-splitter", "service-resolver"] {
        let (code, _, err) = dev
            .cli(&["config", "delete", "--kind", kind, "--name", "web"])
            .unwrap();
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = dev
        .cli(&[
            "config",
            "read",
            "--kind",
            "service-resolver",
            "--name",
            "web",
        ])
        .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn cli_refuses_invalid_files_naming_the_field() {
    let dev = dev(&[]).await;
    let cases = [
        (
            "kind.json",
            r#"{"Kind": "service-nope", "Name": "web"}"#,
            "Kind",
        ),
        (
            "weights.json",
            r#"{"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 60}, {"Weight": 30}]}"#,
            "Splits: weights sum to 90",
        ),
        (
            "regex.hcl",
            "Kind = \"service-router\"\nName = \"web\"\nRoutes = [ { Match { HTTP { PathRegex = \"(oops\" } } } ]\n",
            "Routes[0].Match.HTTP.PathRegex",
        ),
        (
            "retry.json",
            r#"{"Kind": "service-router", "Name": "web", "Routes": [{"Destination": {"RetryOn": ["sometimes"]}}]}"#,
            "Routes[0].Destination.RetryOn[0]",
        ),
        (
            "status.json",
            r#"{"Kind": "service-router", "Name": "web", "Routes": [{"Destination": {"RetryOnStatusCodes": [700]}}]}"#,
            "Routes[0].Destination.RetryOnStatusCodes[0]",
        ),
        (
            "percent.json",
            r#"{"Kind": "service-defaults", "Name": "web", "FaultInjection": {"Abort": {"HttpStatus": 503, "Percent": 150}}}"#,
            "FaultInjection.Abort.Percent",
        ),
        (
            "field.json",
            r#"{"Kind": "service-defaults", "Name": "web", "Protocl": "http"}"#,
            "Protocl",
        ),
    ];
    for (name, text, field) in cases {
        let (_dir, path) = write_file(name, text);
        let (code, _, err) = dev
            .cli(&["config", "write", path.to_str().unwrap()])
            .unwrap();
        assert_eq!(code, 64, "{name}: {err}");
        assert!(err.contains(field), "{name}: {err}");
    }
    // Unknown subset is a cross-entry check: the server refuses it (exit 1, field named).
    let (_dir, path) = write_file(
        "subset.json",
        r#"{"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 100, "ServiceSubset": "v9"}]}"#,
    );
    let (code, _, err) = dev
        .cli(&["config", "write", path.to_str().unwrap()])
        .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Splits[0].ServiceSubset") && err.contains("unknown subset"),
        "{err}"
    );
    let (_, out, _) = dev
        .cli(&["config", "list", "--kind", "service-splitter"])
        .unwrap();
    assert_eq!(out, "");
}

#[tokio::test]
async fn api_refuses_bad_entries_with_400_naming_the_field_and_keeps_stored_config() {
    let dev = dev(&[]).await;
    let base = format!("http://{}", dev.http);
    let resolver = json!({"Kind": "service-resolver", "Name": "web",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}});
    let (status, body, _) = http(
        reqwest::Method::PUT,
        format!("{base}/v1/config"),
        Some(resolver),
    )
    .await;
    assert_eq!((status, body), (200, json!(true)));
    let good_split = json!({"Kind": "service-splitter", "Name": "web",
        "Splits": [{"Weight": 100, "ServiceSubset": "v1"}]});
    let (status, _, _) = http(
        reqwest::Method::PUT,
        format!("{base}/v1/config"),
        Some(good_split),
    )
    .await;
    assert_eq!(status, 200);
    let (_, before, index_before) = http(
        reqwest::Method::GET,
        format!("{base}/v1/config/service-splitter/web"),
        None,
    )
    .await;

    let bad = [
        (json!({"Kind": "service-nope", "Name": "web"}), "Kind"),
        (
            json!({"Kind": "service-splitter", "Name": "web",
            "Splits": [{"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 20, "ServiceSubset": "v1"}]}),
            "Splits",
        ),
        (
            json!({"Kind": "service-splitter", "Name": "web",
            "Splits": [{"Weight": 100, "ServiceSubset": "v2"}]}),
            "Splits[0].ServiceSubset",
        ),
        (
            json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Match": {"HTTP": {"Header": [{"Name": "x", "Regex": "[bad"}]}}}]}),
            "Routes[0].Match.HTTP.Header[0].Regex",
        ),
        (
            json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Destination": {"RetryOn": ["5xx", "on-tuesdays"]}}]}),
            "Routes[0].Destination.RetryOn[1]",
        ),
        (
            json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Destination": {"ServiceSubset": "v7"}}]}),
            "Routes[0].Destination.ServiceSubset",
        ),
        (
            json!({"Kind": "service-defaults", "Name": "web", "Mirror": {"Service": "shadow", "Percent": -5}}),
            "Mirror.Percent",
        ),
        (
            json!({"Kind": "service-defaults", "Name": "web", "Protocol": "smtp"}),
            "Protocol",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "web", "LoadBalancer": {"Policy": "random"}}),
            "LoadBalancer.Policy",
        ),
    ];
    for (entry, field) in bad {
        let (status, body, _) = http(
            reqwest::Method::PUT,
            format!("{base}/v1/config"),
            Some(entry.clone()),
        )
        .await;
        assert_eq!(status, 400, "{entry}: {body}");
        assert_eq!(body["error"]["field"], field, "{entry}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    // Not JSON at all, and an unknown kind in the path.
    let (status, _, _) = http(
        reqwest::Method::PUT,
        format!("{base}/v1/config"),
        Some(Value::String("{".into())),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body, _) = http(
        reqwest::Method::GET,
        format!("{base}/v1/config/service-nope"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (400, json!("kind"))
    );
    // Nothing stored changed; the server is still up.
    let (status, after, index_after) = http(
        reqwest::Method::GET,
        format!("{base}/v1/config/service-splitter/web"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!((after, index_after), (before, index_before));
}

#[tokio::test]
async fn blocking_read_wakes_on_change_and_cas_guards_writes() {
    let dev = dev(&[]).await;
    let base = format!("http://{}", dev.http);
    let v1 = json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"});
    let (status, _, _) = http(
        reqwest::Method::PUT,
        format!("{base}/v1/config?cas=0"),
        Some(v1.clone()),
    )
    .await;
    assert_eq!(status, 200);
    let (_, entry, index) = http(
        reqwest::Method::GET,
        format!("{base}/v1/config/service-defaults/web"),
        None,
    )
    .await;
    let modify = entry["ModifyIndex"].as_u64().unwrap();
    assert_eq!(index, modify);
    // cas=0 again: refused (false), nothing changes.
    let (_, body, _) = http(
        reqwest::Method::PUT,
        format!("{base}/v1/config?cas=0"),
        Some(v1),
    )
    .await;
    assert_eq!(body, json!(false));

    let waiter = tokio::spawn(http(
        reqwest::Method::GET,
        format!("{base}/v1/config/service-defaults/web?index={index}&wait=20s"),
        None,
    ));
    // The waiter must still be blocked: no config write happened.
    let (_, chain_before, _) = http(
        reqwest::Method::GET,
        format!("{base}/v1/discovery-chain/web?index={index}&wait=10ms"),
        None,
    )
    .await;
    assert_eq!(chain_before["protocol"], "http");
    assert!(!waiter.is_finished());
    let grpc = json!({"Kind": "service-defaults", "Name": "web", "Protocol": "grpc"});
    let (status, body, _) = http(
        reqwest::Method::PUT,
        format!("{base}/v1/config?cas={modify}"),
        Some(grpc),
    )
    .await;
    assert_eq!((status, body), (200, json!(true)));
    let (status, entry, new_index) = waiter.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(entry["Protocol"], "grpc");
    assert!(new_index > index);
}

const PY_CONFIG: &str = r#"
import sys, consul
c = consul.Consul(host=sys.argv[1], port=int(sys.argv[2]))
entry = {"Protocol": "http", "Limits": {"MaxConcurrentRequests": 7}}
assert c.config.set("service-defaults", "pyweb", entry) is True
got = c.config.get("service-defaults", "pyweb")
assert got["Protocol"] == "http" and got["Limits"]["MaxConcurrentRequests"] == 7, got
assert got["ModifyIndex"] > 0, got
stale = got["ModifyIndex"] + 100
assert c.config.set("service-defaults", "pyweb", {"Protocol": "grpc"}, cas=stale) is False
listed = c.config.list("service-defaults")
assert [e["Name"] for e in listed] == ["pyweb"], listed
try:
    c.config.set("service-splitter", "pyweb", {"Splits": [{"Weight": 40}]})
    raise SystemExit("an invalid splitter was accepted")
except consul.ConsulException as e:
    assert "Splits" in str(e), e
assert c.config.delete("service-defaults", "pyweb") is True
assert c.config.list("service-defaults") == []
print("py-consul config OK")
"#;

#[tokio::test]
async fn py_consul_writes_and_reads_a_config_entry() {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-env.sh (the README's test command does)",
        python.display()
    );
    let dev = dev(&[]).await;
    let out = tokio::process::Command::new(&python)
        .args(["-c", PY_CONFIG, "127.0.0.1", &dev.http.port().to_string()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("py-consul config OK"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `proxy-defaults` (`global`): its `Config.protocol` turns L7 on for a service whose
/// registration and service-defaults name no protocol (a route's header change then reaches the
/// app), bad ones are refused by field with the stored one kept, and deleting it turns L7 off.
#[tokio::test]
async fn proxy_defaults_protocol_turns_l7_on_for_services_that_name_none() {
    use plexus_test::upstream::HttpStub;
    use plexus_test::{eventually, free_port};

    let web = HttpStub::start_named("v1").await.unwrap();
    let upstream = free_port();
    let hcl = crate::l7::client_hcl("web", upstream, None)
        + &crate::l7::app_hcl(("web-1", "web", web.addr.port()), "", free_port(), None);
    let (_dir, file) = write_file("mesh.hcl", &hcl);
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    let server = dev.sidecar("web-1").await.unwrap();
    let client = dev.sidecar("client").await.unwrap();
    eventually!(server.is_ready().await);
    eventually!(
        client.is_ready().await && client.endpoints("web").await.is_ok_and(|e| e.len() == 1)
    );
    crate::l7::write_entry(
        &dev,
        json!({"Kind": "service-router", "Name": "web", "Routes": [{
            "Match": {"HTTP": {"PathPrefix": "/"}},
            "Destination": {"RequestHeaders": {"Set": {"x-l7": "on"}}}}]}),
    )
    .await;
    let url = format!("http://127.0.0.1:{upstream}/");
    // A new connection for every request: the protocol is decided per connection.
    let browser = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let l7_seen = || {
        web.last_headers()
            .iter()
            .any(|(name, value)| name == "x-l7" && value == "on")
    };
    // tcp by default: the route is not applied.
    assert_eq!(browser.get(&url).send().await.unwrap().status(), 200);
    assert!(!l7_seen());

    let (status, body, _) = http(
        reqwest::Method::PUT,
        format!("http://{}/v1/config", dev.addr()),
        Some(json!({"Kind": "proxy-defaults", "Name": "global",
            "Config": {"protocol": "http", "local_connect_timeout_ms": 1000}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually!(
        browser
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
            && l7_seen()
    );

    for (entry, field) in [
        (json!({"Kind": "proxy-defaults", "Name": "web"}), "Name"),
        (
            json!({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "udp"}}),
            "Config.protocol",
        ),
    ] {
        let (status, body, _) = http(
            reqwest::Method::PUT,
            format!("http://{}/v1/config", dev.addr()),
            Some(entry),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let (status, body, _) = http(
        reqwest::Method::GET,
        format!("http://{}/v1/config/proxy-defaults/global", dev.addr()),
        None,
    )
    .await;
    assert_eq!(
        (status, &body["Config"]["protocol"]),
        (200, &json!("http")),
        "{body}"
    );

    let (code, out, err) = dev
        .cli(&[
            "config",
            "delete",
            "--kind",
            "proxy-defaults",
            "--name",
            "global",
        ])
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let before = web.requests();
    eventually!({
        let ok = browser
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        ok && web.requests() > before && !l7_seen()
    });
}
