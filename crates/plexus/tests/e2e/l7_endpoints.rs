//! L7 endpoint selection through real `plexus proxy` processes: load-balancer policies
//! (`ring_hash` by header, `least_request`, `peak_ewma`), outlier detection ejecting a failing instance and
//! readmitting it, routes to another service, failover when the primary has no healthy
//! instance, mirroring to a second service (fire and forget), a resolver redirecting
//! everything to another service, and nested splitters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use plexus_test::upstream::HttpStub;
use plexus_test::{Dev, Sidecar, eventually, free_port};

use crate::l7::{app_hcl, applied, client_hcl, get, write_entry};
use crate::{dev, write_file};

/// One app instance: (instance id, service name, app port).
type Instance<'a> = (&'a str, &'a str, u16);

/// `client → web` (HTTP) plus the instances, each with an HTTP sidecar and a TCP check on its
/// app port (so stopping an app makes its instance critical).
fn mesh_hcl(instances: &[Instance<'_>], upstream_port: u16) -> String {
    instances.iter().fold(
        client_hcl("web", upstream_port, Some("http")),
        |hcl, instance| hcl + &app_hcl(*instance, "", free_port(), Some("http")),
    )
}

/// A dev server, the client's sidecar and one sidecar per instance.
struct Mesh {
    dev: Dev,
    client: Sidecar,
    _sidecars: Vec<Sidecar>,
    url: String,
    _dir: tempfile::TempDir,
}

impl Mesh {
    async fn start(instances: &[Instance<'_>]) -> Mesh {
        let upstream_port = free_port();
        let (dir, file) = write_file("mesh.hcl", &mesh_hcl(instances, upstream_port));
        let dev = dev(&["--config-file", file.to_str().unwrap()]).await;
        let client = dev.sidecar("client").await.unwrap();
        let mut sidecars = Vec::new();
        for (id, _, _) in instances {
            sidecars.push(dev.sidecar(id).await.unwrap());
        }
        for sidecar in &sidecars {
            eventually!(sidecar.is_ready().await);
        }
        let web = instances
            .iter()
            .filter(|(_, name, _)| *name == "web")
            .count();
        eventually!(
            client.is_ready().await
                && client.endpoints("web").await.map(|e| e.len()).unwrap_or(0) == web
        );
        Mesh {
            dev,
            client,
            _sidecars: sidecars,
            url: format!("http://127.0.0.1:{upstream_port}"),
            _dir: dir,
        }
    }

    async fn configure(&self, entries: &[serde_json::Value]) {
        for entry in entries {
            write_entry(&self.dev, entry.clone()).await;
        }
        applied(&self.dev, &self.client, "web").await;
    }

    /// Status and `x-version` (the stub's name) of one GET of `path` with `headers`.
    async fn call(
        &self,
        http: &reqwest::Client,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut request = http.get(format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let version = response
            .headers()
            .get("x-version")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (response.status().as_u16(), version)
    }

    /// The endpoints the client's sidecar shows as ejected in `/config`.
    async fn ejected(&self) -> Vec<String> {
        let (_, body) = self.client.admin_get("/config").await.unwrap();
        let config: serde_json::Value = serde_json::from_str(&body).unwrap();
        config["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| u["destination"] == "web")
            .flat_map(|u| u["ejected"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect()
    }
}

fn defaults(extra: serde_json::Value) -> serde_json::Value {
    let mut entry =
        serde_json::json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"});
    if let (Some(entry), Some(extra)) = (entry.as_object_mut(), extra.as_object()) {
        entry.extend(extra.clone());
    }
    entry
}

fn resolver(load_balancer: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"Kind": "service-resolver", "Name": "web", "LoadBalancer": load_balancer})
}

const EJECTIONS: &str = "plexus_proxy_http_outlier_ejections_total{upstream=\"web\"}";
const EJECTED: &str = "plexus_proxy_http_outlier_ejected{upstream=\"web\"}";

#[tokio::test]
async fn ring_hash_least_request_peak_ewma_and_outlier_ejection_then_readmission() {
    let stubs = [
        HttpStub::start_named("web-1").await.unwrap(),
        HttpStub::start_named("web-2").await.unwrap(),
        HttpStub::start_named("web-3").await.unwrap(),
    ];
    let mesh = Mesh::start(&[
        ("web-1", "web", stubs[0].addr.port()),
        ("web-2", "web", stubs[1].addr.port()),
        ("web-3", "web", stubs[2].addr.port()),
    ])
    .await;
    let http = reqwest::Client::new();

    // ring_hash on `x-user`: every request of one user reaches one instance; users spread.
    mesh.configure(&[
        defaults(serde_json::json!({})),
        resolver(serde_json::json!({"Policy": "ring_hash",
            "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]})),
    ])
    .await;
    let mut instance_of = BTreeMap::new();
    for user in 0..16 {
        let user = format!("user-{user}");
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            let (status, version) = mesh.call(&http, "/", &[("x-user", &user)]).await;
            assert_eq!(status, 200);
            seen.insert(version);
        }
        assert_eq!(seen.len(), 1, "{user} reached {seen:?}");
        instance_of.insert(user, seen.into_iter().next().unwrap());
    }
    let used: BTreeSet<&String> = instance_of.values().collect();
    assert!(used.len() > 1, "16 users all on {used:?}");

    // least_request: a slow instance gets far fewer of many concurrent requests than its
    // round-robin third.
    mesh.configure(&[resolver(serde_json::json!({"Policy": "least_request"}))])
        .await;
    // Six closed-loop workers keep six requests in flight, and least_request evens out the
    // in-flight counts: the slow instance holds its share for as long as it is slow. With a
    // delay far above the others' latency (even on a loaded machine) that share is a few
    // requests for the whole run.
    stubs[2].set_delay(Duration::from_secs(4));
    let before = stubs[2].requests();
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (http, url) = (http.clone(), mesh.url.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..30 {
                let response = http.get(format!("{url}/")).send().await.unwrap();
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let slow = stubs[2].requests() - before;
    eprintln!("least_request: the slow instance got {slow} of 180 requests");
    assert!(
        slow < 180 / 6,
        "the slow instance got {slow} of 180 requests"
    );

    // peak_ewma: latency-aware, so even one request at a time avoids the slow instance once
    // it has answered slowly (round robin would send it a third: 20).
    mesh.configure(&[resolver(serde_json::json!({"Policy": "peak_ewma"}))])
        .await;
    stubs[2].set_delay(Duration::from_secs(1));
    let before = stubs[2].requests();
    for _ in 0..60 {
        assert_eq!(mesh.call(&http, "/", &[]).await.0, 200);
    }
    let slow = stubs[2].requests() - before;
    eprintln!("peak_ewma: the slow instance got {slow} of 60 requests");
    assert!(slow <= 6, "the slow instance got {slow} of 60 requests");
    stubs[2].set_delay(Duration::ZERO);

    // Outlier detection: 3 consecutive 5xx eject an instance (at most 50 % of them) for 4 s.
    mesh.configure(&[
        defaults(serde_json::json!({"PassiveHealthCheck": {"MaxFailures": 3,
            "MaxEjectionPercent": 50, "BaseEjectionTime": "4s"}})),
        resolver(serde_json::json!({"Policy": "round_robin"})),
    ])
    .await;
    stubs[2].set_status(500);
    eventually!({
        let _ = mesh.call(&http, "/", &[]).await;
        mesh.client.metric(EJECTIONS).await.unwrap() >= 1.0
    });
    assert_eq!(mesh.client.metric(EJECTED).await.unwrap(), 1.0);
    assert_eq!(mesh.ejected().await.len(), 1);
    // While it is ejected, no request reaches it and every answer is a 200 from the others.
    let before = stubs[2].requests();
    for _ in 0..20 {
        let (status, version) = mesh.call(&http, "/", &[]).await;
        assert_eq!(status, 200);
        assert_ne!(version, "web-3");
    }
    assert_eq!(stubs[2].requests(), before);
    assert_eq!(mesh.client.metric(EJECTIONS).await.unwrap(), 1.0);

    // Healthy again: readmitted once the ejection time is over, traffic reaches it again.
    stubs[2].set_status(200);
    eventually!(mesh.client.metric(EJECTED).await.unwrap() == 0.0);
    assert!(mesh.ejected().await.is_empty());
    eventually!({
        let _ = mesh.call(&http, "/", &[]).await;
        stubs[2].requests() > before
    });

    // A route timeout counts against the endpoint that did not answer in time: the slow
    // instance is ejected, and then every request is served in time by the others.
    mesh.configure(&[
        defaults(serde_json::json!({"PassiveHealthCheck": {"MaxFailures": 2,
            "MaxEjectionPercent": 50, "BaseEjectionTime": "60s"}})),
        serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"RequestTimeout": "300ms"}}]}),
    ])
    .await;
    stubs[1].set_delay(Duration::from_secs(5));
    let ejections = mesh.client.metric(EJECTIONS).await.unwrap();
    eventually!({
        let _ = mesh.call(&http, "/", &[]).await;
        mesh.client.metric(EJECTIONS).await.unwrap() > ejections
    });
    let before = stubs[1].requests();
    for _ in 0..10 {
        let (status, version) = mesh.call(&http, "/", &[]).await;
        assert_eq!((status, version == "web-2"), (200, false));
    }
    assert_eq!(stubs[1].requests(), before);
}

/// Envoy's and Consul's rule: one endpoint may always be ejected, whatever
/// `MaxEjectionPercent` says. Two instances and the 10 % default: the failing one is ejected
/// (10 % of two is less than one), and a second failing one is not.
#[tokio::test]
async fn with_two_instances_and_the_default_max_ejection_percent_a_failing_one_is_ejected() {
    let stubs = [
        HttpStub::start_named("web-1").await.unwrap(),
        HttpStub::start_named("web-2").await.unwrap(),
    ];
    let mesh = Mesh::start(&[
        ("web-1", "web", stubs[0].addr.port()),
        ("web-2", "web", stubs[1].addr.port()),
    ])
    .await;
    let http = reqwest::Client::new();
    mesh.configure(&[defaults(serde_json::json!({"PassiveHealthCheck": {
        "MaxFailures": 3, "BaseEjectionTime": "60s"}}))])
        .await;
    stubs[1].set_status(500);
    eventually!({
        let _ = mesh.call(&http, "/", &[]).await;
        mesh.client.metric(EJECTED).await.unwrap() == 1.0
    });
    assert_eq!(mesh.ejected().await.len(), 1);
    let before = stubs[1].requests();
    for _ in 0..10 {
        assert_eq!(mesh.call(&http, "/", &[]).await, (200, "web-1".to_owned()));
    }
    assert_eq!(stubs[1].requests(), before);
    // The survivor failing too is not ejected: one of two is already past 10 %.
    stubs[0].set_status(500);
    for _ in 0..10 {
        assert_eq!(mesh.call(&http, "/", &[]).await.0, 500);
    }
    assert_eq!(mesh.client.metric(EJECTED).await.unwrap(), 1.0);
    assert_eq!(mesh.client.metric(EJECTIONS).await.unwrap(), 1.0);
}

#[tokio::test]
async fn routes_and_mirrors_reach_another_service_and_failover_serves_when_the_primary_is_gone() {
    let v1 = HttpStub::start_named("v1").await.unwrap();
    let v2 = HttpStub::start_named("v2").await.unwrap();
    let mesh = Mesh::start(&[
        ("web-1", "web", v1.addr.port()),
        ("web-v2-1", "web-v2", v2.addr.port()),
    ])
    .await;
    let http = reqwest::Client::new();
    mesh.configure(&[
        defaults(serde_json::json!({})),
        serde_json::json!({"Kind": "service-defaults", "Name": "web-v2", "Protocol": "http"}),
        serde_json::json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/v2"}}, "Destination": {"Service": "web-v2"}}]}),
        serde_json::json!({"Kind": "service-resolver", "Name": "web",
            "Failover": {"*": {"Service": "web-v2"}}}),
    ])
    .await;

    // The route to web-v2 reaches web-v2's instance (through its own sidecar), the rest web's.
    for _ in 0..20 {
        assert_eq!(mesh.call(&http, "/v2/x", &[]).await, (200, "v2".to_owned()));
        assert_eq!(mesh.call(&http, "/", &[]).await, (200, "v1".to_owned()));
    }
    assert_eq!((v1.requests(), v2.requests()), (20, 20));

    // Mirror 100 % to web-v2: it sees a copy of every request, the client only web's answers.
    mesh.configure(&[defaults(
        serde_json::json!({"Mirror": {"Service": "web-v2", "Percent": 100}}),
    )])
    .await;
    for _ in 0..30 {
        assert_eq!(mesh.call(&http, "/", &[]).await, (200, "v1".to_owned()));
    }
    assert_eq!(v1.requests(), 50);
    eventually!(v2.requests() == 50);
    assert_eq!(
        mesh.client
            .metric("plexus_proxy_http_mirrored_total{upstream=\"web\",result=\"sent\"}")
            .await
            .unwrap(),
        30.0
    );

    // A mirror service without instances costs the primary nothing.
    mesh.configure(&[defaults(
        serde_json::json!({"Mirror": {"Service": "nowhere", "Percent": 100}}),
    )])
    .await;
    for _ in 0..10 {
        assert_eq!(mesh.call(&http, "/", &[]).await, (200, "v1".to_owned()));
    }
    mesh.configure(&[defaults(serde_json::json!({}))]).await;

    // web's only instance stops: its check goes critical and web fails over to web-v2.
    drop(v1);
    eventually!(mesh.call(&http, "/", &[]).await == (200, "v2".to_owned()));
    for _ in 0..10 {
        assert_eq!(mesh.call(&http, "/", &[]).await, (200, "v2".to_owned()));
    }

    // No healthy instance left anywhere: 503 saying why.
    drop(v2);
    eventually!(
        get(&http, &format!("{}/", mesh.url)).await == (503, "no_healthy_endpoints".to_owned())
    );
    assert!(
        mesh.client
            .metric("plexus_proxy_http_local_responses_total{direction=\"outbound\",upstream=\"web\",reason=\"no_healthy_endpoints\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

/// A resolver's `Redirect`: every request for `web` goes to `web-v2`; a redirect back to
/// itself is refused by field with the stored one kept; deleted, web answers again.
#[tokio::test]
async fn a_resolver_redirect_sends_every_request_to_the_other_service() {
    let v1 = HttpStub::start_named("v1").await.unwrap();
    let v2 = HttpStub::start_named("v2").await.unwrap();
    let mesh = Mesh::start(&[
        ("web-1", "web", v1.addr.port()),
        ("web-v2-1", "web-v2", v2.addr.port()),
    ])
    .await;
    let http = reqwest::Client::new();
    let redirect = serde_json::json!({"Kind": "service-resolver", "Name": "web",
        "Redirect": {"Service": "web-v2"}});
    mesh.configure(&[
        defaults(serde_json::json!({})),
        serde_json::json!({"Kind": "service-defaults", "Name": "web-v2", "Protocol": "http"}),
        redirect,
    ])
    .await;
    for _ in 0..10 {
        assert_eq!(mesh.call(&http, "/", &[]).await, (200, "v2".to_owned()));
    }
    assert_eq!((v1.requests(), v2.requests()), (0, 10));

    let (status, body, _) = crate::http(
        "PUT",
        &format!("http://{}/v1/config", mesh.dev.addr()),
        Some(
            serde_json::json!({"Kind": "service-resolver", "Name": "web",
                "Redirect": {"Service": "web"}})
            .to_string()
            .into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("Redirect.Service"), "{body}");
    assert_eq!(mesh.call(&http, "/", &[]).await, (200, "v2".to_owned()));

    let (status, body, _) = crate::http(
        "DELETE",
        &format!("http://{}/v1/config/service-resolver/web", mesh.dev.addr()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    applied(&mesh.dev, &mesh.client, "web").await;
    assert_eq!(mesh.call(&http, "/", &[]).await, (200, "v1".to_owned()));
}

/// Nested splitters (Consul's): web splits 50/50 between web-a and web-b, and web-b's own
/// splitter sends everything to web-c, so web-b's instance gets nothing and web-c half.
#[tokio::test]
async fn a_split_to_a_service_with_its_own_splitter_follows_it() {
    let stubs = [
        HttpStub::start_named("web").await.unwrap(),
        HttpStub::start_named("a").await.unwrap(),
        HttpStub::start_named("b").await.unwrap(),
        HttpStub::start_named("c").await.unwrap(),
    ];
    let mesh = Mesh::start(&[
        ("web-1", "web", stubs[0].addr.port()),
        ("web-a-1", "web-a", stubs[1].addr.port()),
        ("web-b-1", "web-b", stubs[2].addr.port()),
        ("web-c-1", "web-c", stubs[3].addr.port()),
    ])
    .await;
    let mut entries: Vec<serde_json::Value> = ["web", "web-a", "web-b", "web-c"]
        .iter()
        .map(|name| serde_json::json!({"Kind": "service-defaults", "Name": name, "Protocol": "http"}))
        .collect();
    entries.push(
        serde_json::json!({"Kind": "service-splitter", "Name": "web-b",
        "Splits": [{"Weight": 100, "Service": "web-c"}]}),
    );
    entries.push(
        serde_json::json!({"Kind": "service-splitter", "Name": "web",
        "Splits": [{"Weight": 50, "Service": "web-a"}, {"Weight": 50, "Service": "web-b"}]}),
    );
    mesh.configure(&entries).await;
    let http = reqwest::Client::new();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..400 {
        let (status, version) = mesh.call(&http, "/", &[]).await;
        assert_eq!(status, 200);
        *seen.entry(version).or_default() += 1;
    }
    let (a, c) = (
        seen.get("a").copied().unwrap_or(0),
        seen.get("c").copied().unwrap_or(0),
    );
    assert_eq!(a + c, 400, "only web-a and web-c answer: {seen:?}");
    assert!((140..=260).contains(&a), "about half to web-a: {seen:?}");
}
