//! `?filter=` (Consul's filter language) on catalog, health and agent lists (issue 15): rows
//! that do not match are left out; a bad expression is a 400 naming the column; nothing stored
//! changes.

use serde_json::{Value, json};

use crate::dev;

async fn call(
    http: &reqwest::Client,
    dev: &plexus_test::Dev,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("http://{}{path}", dev.http);
    let mut request = http.request(method.parse().unwrap(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn get(filter: &str) -> String {
    let mut out = String::new();
    for b in filter.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn filters_select_rows_and_bad_ones_are_refused_naming_the_column() {
    let dev = dev(&[]).await;
    let http = reqwest::Client::new();
    for (id, version, tags, ttl_status) in [
        ("web-1", "1", json!(["v1"]), "passing"),
        ("web-2", "2", json!(["v2", "canary"]), "critical"),
    ] {
        let (status, body) = call(
            &http,
            &dev,
            "PUT",
            "/v1/agent/service/register",
            Some(json!({
                "Name": "web", "ID": id, "Port": 8080, "Tags": tags, "Meta": {"version": version},
                "Check": {"CheckID": format!("{id}-ttl"), "TTL": "10m", "Status": ttl_status}
            })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let ids = |rows: &Value, field: &str| -> Vec<String> {
        let mut ids: Vec<String> = match rows {
            Value::Array(rows) => rows
                .iter()
                .map(|r| {
                    field
                        .split('.')
                        .fold(r, |v, k| &v[k])
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect(),
            Value::Object(map) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        ids.sort();
        ids
    };
    for (path, filter, field, expected) in [
        (
            "/v1/catalog/service/web",
            "ServiceMeta.version == \"2\"",
            "ServiceID",
            vec!["web-2"],
        ),
        (
            "/v1/catalog/service/web",
            "v1 in ServiceTags",
            "ServiceID",
            vec!["web-1"],
        ),
        (
            "/v1/catalog/service/web",
            "ServiceTags is empty",
            "ServiceID",
            vec![],
        ),
        (
            "/v1/health/service/web",
            "Service.Tags contains canary",
            "Service.ID",
            vec!["web-2"],
        ),
        (
            "/v1/health/service/web",
            "Checks.Status == critical",
            "Service.ID",
            vec!["web-2"],
        ),
        (
            "/v1/health/service/web",
            "not (Checks.Status == critical)",
            "Service.ID",
            vec!["web-1"],
        ),
        (
            "/v1/health/checks/web",
            "Status == passing",
            "CheckID",
            vec!["web-1-ttl"],
        ),
        (
            "/v1/health/state/any",
            "ServiceID matches \"^web-[12]$\" and Status != passing",
            "CheckID",
            vec!["web-2-ttl"],
        ),
        (
            "/v1/agent/services",
            "Meta.version == 1 or Tags contains canary",
            "",
            vec!["web-1", "web-2"],
        ),
        (
            "/v1/agent/services",
            "Service == web and Meta.version == 1",
            "",
            vec!["web-1"],
        ),
        (
            "/v1/agent/checks",
            "Status == critical",
            "",
            vec!["web-2-ttl"],
        ),
        (
            "/v1/catalog/nodes",
            "Node == \"test-node\"",
            "Node",
            vec!["test-node"],
        ),
        ("/v1/catalog/nodes", "Node != \"test-node\"", "Node", vec![]),
    ] {
        let (status, rows) = call(
            &http,
            &dev,
            "GET",
            &format!("{path}?filter={}", get(filter)),
            None,
        )
        .await;
        assert_eq!(status, 200, "{path} {filter}: {rows}");
        assert_eq!(ids(&rows, field), expected, "{path} {filter}: {rows}");
    }

    // Bad expressions: 400 invalid_field naming `filter` and the column; the process stays up
    // and nothing stored changed.
    for (path, filter, needle) in [
        (
            "/v1/catalog/service/web",
            "ServceMeta.version == 2",
            "column 1: unknown selector \"ServceMeta.version\"",
        ),
        (
            "/v1/health/service/web",
            "Service.Tags contains",
            "column 22: expected a value",
        ),
        ("/v1/agent/services", "Service = web", "column 9"),
        (
            "/v1/health/checks/web",
            "Status == passing and",
            "column 22: expected a selector",
        ),
        (
            "/v1/catalog/nodes",
            "Node matches \"[\"",
            "invalid regular expression",
        ),
        (
            "/v1/health/state/any",
            "(Status == passing",
            "expected \")\"",
        ),
    ] {
        let (status, body) = call(
            &http,
            &dev,
            "GET",
            &format!("{path}?filter={}", get(filter)),
            None,
        )
        .await;
        assert_eq!(status, 400, "{path} {filter}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{body}");
        assert_eq!(body["error"]["field"], "filter", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{path} {filter}: {message}");
    }
    let (status, rows) = call(&http, &dev, "GET", "/v1/catalog/service/web", None).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&rows, "ServiceID"), ["web-1", "web-2"]);

    // ?node-meta=key:value: only instances on nodes with that meta.
    let (status, body) = call(
        &http,
        &dev,
        "PUT",
        "/v1/catalog/register",
        Some(json!({
            "Node": "rack-node", "Address": "10.0.0.9", "NodeMeta": {"rack": "r2"},
            "Service": {"Service": "web", "ID": "web-3", "Port": 80}
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (path, field, expected) in [
        (
            "/v1/catalog/service/web?node-meta=rack:r2",
            "ServiceID",
            vec!["web-3"],
        ),
        (
            "/v1/catalog/nodes?node-meta=rack:r2",
            "Node",
            vec!["rack-node"],
        ),
        (
            "/v1/health/service/web?node-meta=rack:r2",
            "Service.ID",
            vec!["web-3"],
        ),
        (
            "/v1/health/service/web?node-meta=rack:r1",
            "Service.ID",
            vec![],
        ),
    ] {
        let (status, rows) = call(&http, &dev, "GET", path, None).await;
        assert_eq!(status, 200, "{path}: {rows}");
        assert_eq!(ids(&rows, field), expected, "{path}: {rows}");
    }
    let (status, body) = call(&http, &dev, "GET", "/v1/catalog/nodes?node-meta=rack", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "node-meta", "{body}");

    // ?stale and ?consistent are each answered (one store, read consistently), not together;
    // ?cached says it was a miss.
    for query in ["stale", "consistent"] {
        let (status, _) = call(
            &http,
            &dev,
            "GET",
            &format!("/v1/catalog/nodes?{query}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{query}");
    }
    let (status, body) = call(
        &http,
        &dev,
        "GET",
        "/v1/catalog/nodes?stale&consistent",
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("conflicting")
    );
    let cached = http
        .get(format!("http://{}/v1/catalog/nodes?cached", dev.http))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.headers()["x-cache"], "MISS");
    assert_eq!(cached.headers()["age"], "0");
}
