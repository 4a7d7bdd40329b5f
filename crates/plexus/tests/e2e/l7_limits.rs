//! Limits and route features of the L7 path through real `plexus proxy` processes: bulkheads
//! per upstream (`MaxConcurrentRequests`, `MaxPendingRequests`, `MaxConnections`), the retry
//! budget capping the load on a failing upstream, per-route rate limits, `PrefixRewrite` and
//! `IdleTimeout`, and bad entries for them refused.

use std::sync::Arc;

use plexus_test::upstream::HttpStub;
use plexus_test::{Dev, Sidecar, eventually, free_port};
use tokio::task::JoinSet;

use crate::l7::{app_hcl, client_hcl, get, write_entry};
use crate::{dev, write_file};

/// `client` with one upstream per `(name, app port, local bind port)`, each service with its
/// sidecar; everything speaks `http`.
fn mesh_hcl(upstreams: &[(&str, u16, u16)]) -> String {
    let client_upstreams: String = upstreams
        .iter()
        .map(|(name, _, bind)| {
            format!(
                r#"
        upstreams {{
          destination_name = "{name}"
          local_bind_port  = {bind}
          config = {{ protocol = "http" }}
        }}"#
            )
        })
        .collect();
    let services: String = upstreams
        .iter()
        .map(|(name, port, _)| {
            format!(
                r#"
services {{
  name = "{name}"
  port = {port}
  check {{
    tcp      = "127.0.0.1:{port}"
    interval = "1s"
    timeout  = "500ms"
  }}
  connect {{
    sidecar_service {{
      port = {sidecar}
      proxy {{
        config = {{ protocol = "http" }}
      }}
    }}
  }}
}}"#,
                sidecar = free_port()
            )
        })
        .collect();
    format!(
        r#"
services {{
  name = "client"
  port = 8080
  connect {{
    sidecar_service {{
      port = {client}
      proxy {{{client_upstreams}
      }}
    }}
  }}
}}
{services}
"#,
        client = free_port()
    )
}

/// A dev server, the client sidecar and one sidecar per upstream, all ready.
struct Mesh {
    dev: Dev,
    client: Sidecar,
    _sidecars: Vec<Sidecar>,
    _dir: tempfile::TempDir,
}

impl Mesh {
    async fn start(upstreams: &[(&str, u16, u16)]) -> Mesh {
        let (dir, file) = write_file("mesh.hcl", &mesh_hcl(upstreams));
        let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
        let client = dev.sidecar("client").await.unwrap();
        let mut sidecars = Vec::new();
        for (name, _, _) in upstreams {
            let sidecar = dev.sidecar(name).await.unwrap();
            eventually!(sidecar.is_ready().await);
            sidecars.push(sidecar);
        }
        for (name, _, _) in upstreams {
            eventually!(
                client.is_ready().await
                    && client.endpoints(name).await.map(|e| e.len()).unwrap_or(0) == 1
            );
        }
        Mesh {
            dev,
            client,
            _sidecars: sidecars,
            _dir: dir,
        }
    }

    /// Writes `entries`, then waits until the client sidecar applied `service`'s chain as the
    /// control plane has it now ("policy applied" for that upstream, at least that index).
    async fn configure(&self, service: &str, entries: &[serde_json::Value]) {
        for entry in entries {
            write_entry(&self.dev, entry.clone()).await;
        }
        let (status, _, headers) = crate::http(
            "GET",
            &format!("http://{}/v1/discovery-chain/{service}", self.dev.addr()),
            None,
        )
        .await;
        assert_eq!(status, 200);
        let index: u64 = headers["x-consul-index"].to_str().unwrap().parse().unwrap();
        let upstream = format!("upstream={service} ");
        eventually!(self.client.process.output().lines().any(|line| {
            line.contains("policy applied")
                && line.contains(&upstream)
                && line
                    .split("revision=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n >= index)
        }));
    }

    async fn metric(&self, series: &str) -> f64 {
        self.client.metric(series).await.unwrap()
    }
}

fn bulkhead_rejections(upstream: &str, limit: &str) -> String {
    format!(
        "plexus_proxy_http_bulkhead_rejections_total{{upstream=\"{upstream}\",limit=\"{limit}\"}}"
    )
}

fn local_responses(upstream: &str, reason: &str) -> String {
    format!(
        "plexus_proxy_http_local_responses_total{{direction=\"outbound\",upstream=\"{upstream}\",reason=\"{reason}\"}}"
    )
}

/// Sends `n` concurrent GETs to `url`; each result arrives in the returned set.
fn flood(http: &reqwest::Client, url: &str, n: usize) -> JoinSet<(u16, String)> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let (http, url) = (http.clone(), url.to_owned());
        set.spawn(async move { get(&http, &url).await });
    }
    set
}

#[tokio::test]
async fn a_saturated_bulkhead_on_one_upstream_does_not_slow_another() {
    let (slow, fast) = (
        HttpStub::start_named("slow").await.unwrap(),
        HttpStub::start_named("fast").await.unwrap(),
    );
    let (slow_port, fast_port) = (free_port(), free_port());
    let mesh = Mesh::start(&[
        ("slow", slow.addr.port(), slow_port),
        ("fast", fast.addr.port(), fast_port),
    ])
    .await;
    mesh.configure(
        "slow",
        &[
            serde_json::json!({"Kind": "service-defaults", "Name": "slow", "Protocol": "http",
            "Limits": {"MaxConcurrentRequests": 2}}),
        ],
    )
    .await;
    mesh.configure(
        "fast",
        &[serde_json::json!({"Kind": "service-defaults", "Name": "fast", "Protocol": "http"})],
    )
    .await;
    let http = reqwest::Client::new();

    // `slow` holds its two slots far longer than this test runs; the other 18 requests of the
    // flood are refused at once, without waiting for them.
    slow.set_delay(std::time::Duration::from_secs(120));
    let mut flooding = flood(&http, &format!("http://127.0.0.1:{slow_port}/"), 20);
    let mut refused = 0;
    while refused < 18 {
        let result = tokio::time::timeout(plexus_test::DEADLINE, flooding.join_next())
            .await
            .expect("18 requests refused at once")
            .unwrap()
            .unwrap();
        assert_eq!(result, (503, "concurrency_limit".to_owned()));
        refused += 1;
    }
    eventually!(slow.requests() == 2);
    assert_eq!(
        mesh.metric(&bulkhead_rejections("slow", "max_concurrent_requests"))
            .await,
        18.0
    );

    // Meanwhile every request to `fast`, through the same client sidecar, gets through.
    let fast_url = format!("http://127.0.0.1:{fast_port}/");
    let mut results = flood(&http, &fast_url, 50);
    while let Some(result) = results.join_next().await {
        assert_eq!(result.unwrap(), (200, String::new()));
    }
    for _ in 0..50 {
        assert_eq!(get(&http, &fast_url).await, (200, String::new()));
    }
    assert_eq!(fast.requests(), 100);
    assert_eq!(
        mesh.metric(&local_responses("fast", "concurrency_limit"))
            .await,
        0.0
    );
    assert_eq!(
        mesh.metric(&bulkhead_rejections("fast", "max_concurrent_requests"))
            .await,
        0.0
    );
    // The two slow requests still hold their slots: `slow` stayed saturated throughout.
    assert_eq!(flooding.len(), 2);
    assert_eq!(
        get(&http, &format!("http://127.0.0.1:{slow_port}/")).await,
        (503, "concurrency_limit".to_owned())
    );
    flooding.abort_all();

    // With a queue: 2 in flight and 3 waiting are served in turn; the rest are refused at
    // once as `max_pending_requests`.
    slow.set_delay(std::time::Duration::from_secs(1));
    mesh.configure(
        "slow",
        &[
            serde_json::json!({"Kind": "service-defaults", "Name": "slow", "Protocol": "http",
            "Limits": {"MaxConcurrentRequests": 2, "MaxPendingRequests": 3}}),
        ],
    )
    .await;
    let (mut ok, mut queue_full) = (0, 0);
    let mut flooding = flood(&http, &format!("http://127.0.0.1:{slow_port}/"), 20);
    while let Some(result) = flooding.join_next().await {
        match result.unwrap() {
            (200, reason) if reason.is_empty() => ok += 1,
            (503, reason) if reason == "concurrency_limit" => queue_full += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok + queue_full, 20);
    // Without the queue only the 2 in flight would pass while the flood arrives (it arrives
    // well within the 1 s each one takes).
    assert!(ok >= 5, "{ok} served");
    assert!(queue_full >= 1, "{queue_full} refused");
    assert_eq!(
        mesh.metric(&bulkhead_rejections("slow", "max_pending_requests"))
            .await,
        f64::from(queue_full)
    );
}

#[tokio::test]
async fn the_retry_budget_caps_the_load_on_a_failing_upstream() {
    let web = HttpStub::start(503).await.unwrap();
    let port = free_port();
    let mesh = Mesh::start(&[("web", web.addr.port(), port)]).await;
    mesh.configure(
        "web",
        &[
            serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
            serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/"}},
                 "Destination": {"NumRetries": 3, "RetryOnStatusCodes": [503],
                                 "RetryBudget": {"Percent": 20, "MinRetryConcurrency": 3}}}]}),
        ],
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/");
    let http = reqwest::Client::new();
    let before = web.requests();

    // 40 clients, 25 requests each, all failing.
    const CLIENTS: usize = 40;
    const EACH: usize = 25;
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let (http, url) = (http.clone(), url.clone());
        clients.spawn(async move {
            for _ in 0..EACH {
                assert_eq!(get(&http, &url).await, (503, String::new()));
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let sent = (CLIENTS * EACH) as f64;
    let seen = (web.requests() - before) as f64;
    let retries = mesh
        .metric("plexus_proxy_http_retries_total{direction=\"outbound\",upstream=\"web\"}")
        .await;
    let exhausted = mesh
        .metric(
            "plexus_proxy_http_retry_budget_exhausted_total{direction=\"outbound\",upstream=\"web\"}",
        )
        .await;
    eprintln!(
        "retry budget: {sent} requests, upstream saw {seen}, {retries} retries, {exhausted} refused"
    );
    // The stub saw each request once plus every retry the sidecar counted.
    assert_eq!(seen, sent + retries);
    // Retries in flight ≤ 20 % of live requests (at least 3): with 40 clients at most 8 wait
    // on a retry at a time, so the upstream sees about 1.2 × the requests at most, far less
    // than the 4 × that unbudgeted retries would send. The slack covers the 3 retries the
    // minimum allows while few requests are live (as the run starts and ends).
    assert!(seen <= sent * 1.2 + 3.0 * EACH as f64, "{seen} for {sent}");
    assert!(seen < sent * 2.0, "{seen} for {sent}");
    // Each request either used its 3 retries or was refused one by the budget (counted once):
    // 3 × (sent − exhausted) ≤ retries ≤ 3 × (sent − exhausted) + 2 × exhausted.
    assert!(exhausted > 0.0);
    let full = 3.0 * (sent - exhausted);
    assert!(
        full <= retries && retries <= full + 2.0 * exhausted,
        "{retries} retries, {exhausted} refused of {sent}"
    );
}

#[tokio::test]
async fn a_route_rate_limit_only_affects_its_route() {
    let web = HttpStub::start_named("web").await.unwrap();
    let port = free_port();
    let mesh = Mesh::start(&[("web", web.addr.port(), port)]).await;
    // 1 request/s with a burst of 3 on /limited; nothing on the rest.
    mesh.configure(
        "web",
        &[
            serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
            "RateLimits": {"InstanceLevel": {"Routes": [
                {"PathPrefix": "/limited", "RequestsPerSecond": 1, "RequestsMaxBurst": 3}]}}}),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    for i in 0..30 {
        match get(&http, &format!("http://127.0.0.1:{port}/limited/{i}")).await {
            (200, _) => ok += 1,
            (429, reason) if reason == "rate_limited" => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
        // Interleaved: the other route is never limited.
        assert_eq!(
            get(&http, &format!("http://127.0.0.1:{port}/open/{i}")).await,
            (200, String::new())
        );
    }
    let allowed = 3.0 + started.elapsed().as_secs_f64() + 1.0;
    assert!(
        ok >= 3 && f64::from(ok) <= allowed,
        "{ok} passed, {allowed} allowed"
    );
    assert_eq!(ok + limited, 30);
    assert_eq!(
        mesh.metric(&local_responses("web", "rate_limited")).await,
        f64::from(limited)
    );
    assert_eq!(web.requests(), 30 + ok as usize);
}

#[tokio::test]
async fn prefix_rewrite_changes_the_path_the_upstream_sees() {
    let web = Arc::new(HttpStub::start_named("web").await.unwrap());
    let port = free_port();
    let mesh = Mesh::start(&[("web", web.addr.port(), port)]).await;
    mesh.configure(
        "web",
        &[
            serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
            serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/api/v1/"}},
                 "Destination": {"PrefixRewrite": "/"}},
                {"Match": {"HTTP": {"PathExact": "/status"}},
                 "Destination": {"PrefixRewrite": "/health"}}]}),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    for (sent, seen) in [
        ("/api/v1/users?id=3", "/users?id=3"),
        ("/status", "/health"),
        ("/other/path", "/other/path"),
        ("/api/v2/users", "/api/v2/users"),
    ] {
        assert_eq!(
            get(&http, &format!("{base}{sent}")).await,
            (200, String::new())
        );
        assert_eq!(web.last_path(), seen, "for {sent}");
    }

    // Bad entries for these features are refused, naming the field; the running policy stays.
    for (entry, field) in [
        (
            serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/api/"}},
                 "Destination": {"PrefixRewrite": "v2/"}}]}),
            "Routes[0].Destination.PrefixRewrite",
        ),
        (
            serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
                "Limits": {"MaxConcurrentRequests": 2, "MaxPendingRequests": -1}}),
            "Limits.MaxPendingRequests",
        ),
        (
            serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
                "RateLimits": {"InstanceLevel": {"Routes": [
                    {"PathPrefix": "/a", "RequestsPerSecond": 0}]}}}),
            "RateLimits.InstanceLevel.Routes[0].RequestsPerSecond",
        ),
    ] {
        let (status, body, _) = crate::http(
            "PUT",
            &format!("http://{}/v1/config", mesh.dev.addr()),
            Some(entry.to_string().into_bytes()),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let (status, _, _) = crate::http(
        "PUT",
        &format!("http://{}/v1/config", mesh.dev.addr()),
        Some(
            serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/api/"}},
                 "Destination": {"IdleTimeout": "soon"}}]})
            .to_string()
            .into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        get(&http, &format!("{base}/api/v1/again")).await,
        (200, String::new())
    );
    assert_eq!(web.last_path(), "/again");
}

/// `client → web` with two `web` instances (`web-1`, `web-2`).
fn two_instances_hcl(ports: [u16; 2], upstream_port: u16) -> String {
    let instance = |i: usize| {
        app_hcl(
            (&format!("web-{i}"), "web", ports[i - 1]),
            "",
            free_port(),
            Some("http"),
        )
    };
    client_hcl("web", upstream_port, Some("http")) + &instance(1) + &instance(2)
}

#[tokio::test]
async fn max_connections_caps_the_pooled_connections_to_an_upstream() {
    let (a, b) = (
        HttpStub::start_named("a").await.unwrap(),
        HttpStub::start_named("b").await.unwrap(),
    );
    let port = free_port();
    let (_dir, file) = write_file(
        "mesh.hcl",
        &two_instances_hcl([a.addr.port(), b.addr.port()], port),
    );
    let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
    let client = dev.sidecar("client").await.unwrap();
    let (web1, web2) = (
        dev.sidecar("web-1").await.unwrap(),
        dev.sidecar("web-2").await.unwrap(),
    );
    eventually!(web1.is_ready().await && web2.is_ready().await);
    eventually!(
        client.is_ready().await && client.endpoints("web").await.map(|e| e.len()).unwrap_or(0) == 2
    );
    let mesh = Mesh {
        dev,
        client,
        _sidecars: vec![web1, web2],
        _dir,
    };
    mesh.configure(
        "web",
        &[
            serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
            "Limits": {"MaxConnections": 1}}),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/");
    // One connection at most: every request goes over it, to one of the two instances.
    for _ in 0..20 {
        assert_eq!(get(&http, &url).await, (200, String::new()));
    }
    assert!(
        (a.requests() == 20 && b.requests() == 0) || (a.requests() == 0 && b.requests() == 20),
        "a {} b {}",
        a.requests(),
        b.requests()
    );
    let connections =
        "plexus_proxy_http_upstream_connections_total{direction=\"outbound\",upstream=\"web\"}";
    assert_eq!(mesh.metric(connections).await, 1.0);
    assert_eq!(
        mesh.metric(&bulkhead_rejections("web", "max_connections"))
            .await,
        0.0
    );

    // Two allowed: round robin reaches both again.
    mesh.configure(
        "web",
        &[
            serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
            "Limits": {"MaxConnections": 2}}),
        ],
    )
    .await;
    let (a0, b0) = (a.requests(), b.requests());
    for _ in 0..20 {
        assert_eq!(get(&http, &url).await, (200, String::new()));
    }
    assert_eq!((a.requests() - a0, b.requests() - b0), (10, 10));
    assert_eq!(mesh.metric(connections).await, 2.0);
}

#[tokio::test]
async fn idle_timeout_cuts_a_stalled_body_and_ends_a_silent_request() {
    let web = HttpStub::start_named("web").await.unwrap();
    let port = free_port();
    let mesh = Mesh::start(&[("web", web.addr.port(), port)]).await;
    mesh.configure(
        "web",
        &[
            serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
            serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/idle"}},
                 "Destination": {"IdleTimeout": "2s"}}]}),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    // The body pauses 5 s after its first chunk: cut on the idle route, whole elsewhere.
    web.set_body_stall(std::time::Duration::from_secs(5));
    let response = http.get(format!("{base}/idle/body")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cut = response.bytes().await;
    assert!(cut.is_err(), "the stalled body was not cut: {cut:?}");
    let response = http.get(format!("{base}/other")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "web-first-rest");

    // No response at all for 5 s: the idle route ends the request with 504 `timeout`.
    web.set_body_stall(std::time::Duration::ZERO);
    web.set_delay(std::time::Duration::from_secs(5));
    assert_eq!(
        get(&http, &format!("{base}/idle/headers")).await,
        (504, "timeout".to_owned())
    );
    assert_eq!(mesh.metric(&local_responses("web", "timeout")).await, 1.0);
}
