//! The outbound stack end to end, without sockets and with tokio's clock paused: real layers, a
//! real pool of HTTP/2 connections, each to an in-process HTTP/2 server (the `h2` crate's) over
//! an in-memory pipe.
//! Time only moves when every task waits, so retries' backoff, route timeouts, outlier
//! ejections and their end, and retry budgets are driven exactly.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use plexus_api::GoDuration;
use plexus_api::Indexed;
use plexus_api::config_entry::chain::{
    ChainTarget, CompiledRoute, DiscoveryChain, OutlierPolicy, Protocol, RetryOn, RetryPolicy,
    ServicePolicy, WeightedTarget,
};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::endpoint::{Connect, Io};
use super::stack::{BoxFuture, Outbound, OutboundParts};
use super::targets::{Remote, Service};
use super::{HttpMetrics, Origin, Reason, Report};
use crate::discovery::{EndpointSet, Resolve};

/// How an in-process endpoint answers: after `delay`, with `status` (0: refuses the stream with
/// `REFUSED_STREAM`).
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    status: u16,
    delay: Duration,
}

/// In-process endpoints: each address is an HTTP/2 server behind an in-memory pipe.
#[derive(Default)]
struct Endpoints {
    behaviour: Mutex<HashMap<SocketAddr, Behaviour>>,
    /// Every request, by the endpoint that got it, in order.
    hits: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Endpoints {
    fn set(&self, addr: SocketAddr, status: u16, delay: Duration) {
        self.behaviour
            .lock()
            .unwrap()
            .insert(addr, Behaviour { status, delay });
    }

    fn hits(&self) -> Vec<SocketAddr> {
        self.hits.lock().unwrap().clone()
    }
}

struct Pipes(Arc<Endpoints>);

impl Connect for Pipes {
    fn connect<'a>(
        &'a self,
        addr: SocketAddr,
        _service: &'a Service,
    ) -> BoxFuture<'a, Result<Box<dyn Io>, String>> {
        let known = self.0.behaviour.lock().unwrap().contains_key(&addr);
        let endpoints = Arc::clone(&self.0);
        Box::pin(async move {
            if !known {
                return Err("connection refused".to_owned());
            }
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(server).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    let endpoints = Arc::clone(&endpoints);
                    tokio::spawn(async move {
                        endpoints.hits.lock().unwrap().push(addr);
                        let behaviour = endpoints.behaviour.lock().unwrap()[&addr];
                        tokio::time::sleep(behaviour.delay).await;
                        if behaviour.status == 0 {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            return;
                        }
                        let mut response = Response::new(());
                        *response.status_mut() = StatusCode::from_u16(behaviour.status).unwrap();
                        if let Ok(mut body) = respond.send_response(response, false) {
                            let _ = body.send_data(Bytes::from_static(b"ok"), true);
                        }
                    });
                }
            });
            Ok(Box::new(client) as Box<dyn Io>)
        })
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const A: u16 = 1001;
const B: u16 = 1002;

fn retry(num_retries: u32, budget_percent: f64, budget_min: u32) -> RetryPolicy {
    RetryPolicy {
        num_retries,
        retry_on: vec![RetryOn::Status5xx],
        backoff_base: GoDuration(Duration::from_millis(100)),
        backoff_max: GoDuration(Duration::from_millis(400)),
        budget_percent,
        budget_min_concurrency: budget_min,
        ..RetryPolicy::default()
    }
}

fn outlier(consecutive_5xx: u32, max_ejection_percent: f64) -> OutlierPolicy {
    OutlierPolicy {
        interval: GoDuration(Duration::from_secs(1)),
        consecutive_5xx,
        consecutive_gateway_errors: 0,
        enforcing_percent: 100.0,
        max_ejection_percent,
        base_ejection_time: GoDuration(Duration::from_secs(30)),
    }
}

/// `web`'s chain: one catch-all route with `retry` and `timeout`, and `outlier`.
fn chain(
    retry: RetryPolicy,
    timeout: Option<Duration>,
    outlier: Option<OutlierPolicy>,
) -> DiscoveryChain {
    DiscoveryChain {
        service: "web".into(),
        protocol: Protocol::Http,
        routes: vec![CompiledRoute {
            name: "all".into(),
            splits: vec![WeightedTarget {
                weight: 100.0,
                target: "web".into(),
                headers: Default::default(),
            }],
            request_timeout: timeout.map(GoDuration),
            retry,
            ..CompiledRoute::default()
        }],
        targets: BTreeMap::from([(
            "web".to_owned(),
            ChainTarget {
                service: "web".into(),
                ..ChainTarget::default()
            },
        )]),
        policy: ServicePolicy {
            outlier,
            ..ServicePolicy::default()
        },
    }
}

struct Harness {
    outbound: Outbound,
    endpoints: Arc<Endpoints>,
    registry: Registry,
    /// Kept so that the endpoint and chain watches stay open.
    _endpoints: watch::Sender<Arc<EndpointSet>>,
    _chain: watch::Sender<Option<Arc<Indexed<DiscoveryChain>>>>,
}

impl Harness {
    /// An outbound stack for `web` at endpoints `ports`, under `chain`, once its policy is in
    /// force.
    async fn start(ports: &[u16], chain: DiscoveryChain) -> Self {
        let endpoints = Arc::new(Endpoints::default());
        for port in ports {
            endpoints.set(addr(*port), 200, Duration::ZERO);
        }
        let set = EndpointSet::resolved(ports.iter().map(|p| addr(*p)).collect());
        let (endpoints_tx, endpoints_rx) = watch::channel(Arc::new(set));
        let resolve: Resolve = Arc::new(|_: &str, _| watch::channel(Arc::default()).1);
        let (chain_tx, chain_rx) = watch::channel(Some(Arc::new(Indexed {
            index: 1,
            value: chain,
        })));
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let outbound = Outbound::new(OutboundParts {
            destination: "web".into(),
            endpoints: endpoints_rx,
            tls: None,
            metrics,
            connect_timeout: Duration::from_secs(1),
            tasks: TaskTracker::new(),
            kill: CancellationToken::new(),
            chain: chain_rx,
            remote: Remote {
                resolve,
                tls: None,
                datacenters: None,
            },
            stop: CancellationToken::new(),
            connect: Some(Arc::new(Pipes(Arc::clone(&endpoints)))),
        });
        while !outbound.has_policy() {
            tokio::task::yield_now().await;
        }
        Self {
            outbound,
            endpoints,
            registry,
            _endpoints: endpoints_tx,
            _chain: chain_tx,
        }
    }

    /// Sends one request through the stack: its status, or why the sidecar answered.
    async fn get(&self) -> Result<u16, Reason> {
        let request = Request::builder()
            .uri("/hello")
            .header("host", "web")
            .body(super::empty())
            .unwrap();
        match self.outbound.stack.clone().oneshot(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.into_body().collect().await;
                Ok(status)
            }
            Err(error) => Err(error.reason()),
        }
    }

    /// The value of a counter or gauge line of the metrics text, 0 when absent.
    fn metric(&self, name: &str) -> f64 {
        let text = crate::metrics::encode(&self.registry).unwrap();
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }

    fn ejected(&self) -> Vec<SocketAddr> {
        self.outbound.ejected().borrow().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_is_retried_on_the_other_endpoint_after_a_backoff() {
    let h = Harness::start(&[A, B], chain(retry(2, 20.0, 3), None, None)).await;
    h.endpoints.set(addr(A), 503, Duration::ZERO);
    for _ in 0..4 {
        let started = Instant::now();
        assert_eq!(h.get().await, Ok(200));
        // A retry waits at most the first backoff ceiling; a first pick of B none.
        assert!(started.elapsed() <= Duration::from_millis(100));
    }
    let hits = h.endpoints.hits();
    // Every request that went to A first went to B next: never to A twice in a row.
    for pair in hits.windows(2) {
        assert!(!(pair[0] == addr(A) && pair[1] == addr(A)), "{hits:?}");
    }
    assert_eq!(hits.iter().filter(|a| **a == addr(B)).count(), 4);
    assert_eq!(
        h.metric("plexus_proxy_http_retries_total"),
        hits.iter().filter(|a| **a == addr(A)).count() as f64
    );
}

#[tokio::test(start_paused = true)]
async fn retries_give_up_after_num_retries_with_the_last_answer() {
    let h = Harness::start(&[A], chain(retry(3, 20.0, 3), None, None)).await;
    h.endpoints.set(addr(A), 500, Duration::ZERO);
    let started = Instant::now();
    assert_eq!(h.get().await, Ok(500));
    assert_eq!(h.endpoints.hits().len(), 4);
    // Three backoffs, each below its ceiling (100, 200, 400 ms).
    assert!(started.elapsed() <= Duration::from_millis(700));
    assert_eq!(h.metric("plexus_proxy_http_retries_total"), 3.0);
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_answers_504_on_time_and_blames_the_endpoint_awaited() {
    // One gateway error ejects: the slow endpoint is out after its first timeout.
    let policy = OutlierPolicy {
        consecutive_5xx: 0,
        consecutive_gateway_errors: 1,
        ..outlier(0, 50.0)
    };
    let h = Harness::start(
        &[A, B],
        chain(
            RetryPolicy::default(),
            Some(Duration::from_secs(1)),
            Some(policy),
        ),
    )
    .await;
    h.endpoints.set(addr(A), 200, Duration::from_secs(10));
    let mut timed_out = 0;
    for _ in 0..4 {
        let started = Instant::now();
        match h.get().await {
            Err(reason) => {
                assert_eq!(reason, Reason::Timeout);
                assert_eq!(started.elapsed(), Duration::from_secs(1));
                timed_out += 1;
            }
            Ok(status) => assert_eq!(status, 200),
        }
    }
    assert_eq!(timed_out, 1, "A is ejected after its first timeout");
    assert_eq!(h.ejected(), [addr(A)]);
    assert_eq!(h.metric("plexus_proxy_http_outlier_ejections_total"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_comes_back_after_the_ejection_time() {
    let h = Harness::start(
        &[A, B],
        chain(RetryPolicy::default(), None, Some(outlier(2, 50.0))),
    )
    .await;
    h.endpoints.set(addr(A), 500, Duration::ZERO);
    while h.ejected().is_empty() {
        let _ = h.get().await;
    }
    assert_eq!(h.ejected(), [addr(A)]);
    let hits_at_ejection = h.endpoints.hits().len();
    for _ in 0..6 {
        assert_eq!(h.get().await, Ok(200));
    }
    assert!(
        h.endpoints.hits()[hits_at_ejection..]
            .iter()
            .all(|a| *a == addr(B))
    );
    // The base ejection time (30 s) later, the readmission is published and A is used again.
    tokio::time::sleep(Duration::from_secs(30)).await;
    for _ in 0..10 {
        if h.ejected().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(h.ejected().is_empty());
    assert_eq!(h.metric("plexus_proxy_http_outlier_ejected"), 0.0);
    h.endpoints.set(addr(A), 200, Duration::ZERO);
    let before = h.endpoints.hits().len();
    for _ in 0..4 {
        assert_eq!(h.get().await, Ok(200));
    }
    assert!(h.endpoints.hits()[before..].contains(&addr(A)));
}

#[tokio::test(start_paused = true)]
async fn with_two_endpoints_and_the_default_max_percent_a_failing_one_is_ejected() {
    // Consul's defaults: MaxEjectionPercent 10 of two endpoints still allows one ejection.
    let h = Harness::start(
        &[A, B],
        chain(RetryPolicy::default(), None, Some(outlier(3, 10.0))),
    )
    .await;
    h.endpoints.set(addr(A), 500, Duration::ZERO);
    for _ in 0..6 {
        let _ = h.get().await;
    }
    assert_eq!(h.ejected(), [addr(A)]);
    // B failing too stays in: one ejected of two is already over 10 %.
    h.endpoints.set(addr(B), 500, Duration::ZERO);
    for _ in 0..6 {
        assert_eq!(h.get().await, Ok(500));
    }
    assert_eq!(h.ejected(), [addr(A)]);
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_caps_concurrent_retries() {
    // 0 % of live requests, at least 1: of 5 concurrent failing requests one retries at a time.
    let h = Arc::new(Harness::start(&[A], chain(retry(1, 0.0, 1), None, None)).await);
    h.endpoints.set(addr(A), 503, Duration::from_millis(500));
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let h = Arc::clone(&h);
            tokio::spawn(async move { h.get().await })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), Ok(503));
    }
    let retries = h.metric("plexus_proxy_http_retries_total");
    let exhausted = h.metric("plexus_proxy_http_retry_budget_exhausted_total");
    assert_eq!(retries + exhausted, 5.0);
    assert!(
        retries >= 1.0 && exhausted >= 1.0,
        "{retries} / {exhausted}"
    );
    assert_eq!(h.endpoints.hits().len() as f64, 5.0 + retries);
}

#[tokio::test(start_paused = true)]
async fn a_refused_stream_is_retried_under_refused_stream_and_only_then() {
    let only = |cond| RetryPolicy {
        retry_on: vec![cond],
        ..retry(2, 100.0, 10)
    };
    let h = Harness::start(&[A, B], chain(only(RetryOn::RefusedStream), None, None)).await;
    h.endpoints.set(addr(A), 0, Duration::ZERO);
    for _ in 0..4 {
        assert_eq!(h.get().await, Ok(200));
    }
    let hits = h.endpoints.hits();
    assert!(hits.contains(&addr(A)), "{hits:?}");
    assert_eq!(
        hits.iter().filter(|a| **a == addr(B)).count(),
        4,
        "{hits:?}"
    );

    // `connect-failure` does not cover a stream the endpoint refused: the refusal is the answer.
    let h = Harness::start(&[A], chain(only(RetryOn::ConnectFailure), None, None)).await;
    h.endpoints.set(addr(A), 0, Duration::ZERO);
    assert_eq!(h.get().await, Err(Reason::UpstreamRefusedStream));
    assert_eq!(h.endpoints.hits(), vec![addr(A)]);
}

#[tokio::test(start_paused = true)]
async fn no_endpoint_taking_a_connection_is_a_connect_failure_and_none_at_all_no_healthy_endpoints()
{
    let h = Harness::start(&[A], chain(RetryPolicy::default(), None, None)).await;
    h.endpoints.behaviour.lock().unwrap().clear();
    assert_eq!(h.get().await, Err(Reason::UpstreamConnectFailure));
    let empty = Harness::start(&[], chain(RetryPolicy::default(), None, None)).await;
    assert_eq!(empty.get().await, Err(Reason::NoHealthyEndpoints));
}

#[tokio::test(start_paused = true)]
async fn the_route_a_request_took_is_reported_to_the_edge_whether_answered_or_failed() {
    fn request(report: &Arc<Report>) -> Request<super::Body> {
        let mut request = Request::builder()
            .uri("/hello")
            .header("host", "web")
            .body(super::empty())
            .unwrap();
        request.extensions_mut().insert(Origin {
            client: None,
            report: Arc::clone(report),
        });
        request
    }
    let h = Harness::start(&[A], chain(RetryPolicy::default(), None, None)).await;
    let answered = Arc::new(Report::default());
    let response = h.outbound.stack.call(request(&answered)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(answered.route.get().map(|r| &**r), Some("all"));
    // The same when the sidecar answers itself.
    let empty = Harness::start(&[], chain(RetryPolicy::default(), None, None)).await;
    let failed = Arc::new(Report::default());
    let error = empty
        .outbound
        .stack
        .call(request(&failed))
        .await
        .unwrap_err();
    assert_eq!(error.reason(), Reason::NoHealthyEndpoints);
    assert_eq!(failed.route.get().map(|r| &**r), Some("all"));
}
