//! The endpoint layer's pool on its own: in-process HTTP/2 endpoints behind in-memory pipes,
//! counting the connections each one is asked for and the ones that ended. Tokio's clock is
//! paused: opening a connection takes [`DIAL`], during which other requests run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::{Connect, Endpoint, Io, Picked, Pool, Served};
use crate::discovery::{EndpointSet, Resolve};
use crate::http::bulkhead::ConnectionBudget;
use crate::http::stack::BoxFuture;
use crate::http::targets::{Remote, Service, Targets};
use crate::http::{HttpMetrics, Reason};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const A: u16 = 1001;
const B: u16 = 1002;
/// Refuses every connection.
const DOWN: u16 = 1009;
/// How long opening a connection takes.
const DIAL: Duration = Duration::from_millis(10);

/// In-process endpoints: every address but [`DOWN`] takes connections and answers 200.
#[derive(Default)]
struct Pipes {
    /// Connections asked for, by endpoint.
    opened: Mutex<HashMap<SocketAddr, usize>>,
    /// Connections whose client went away, by endpoint (watched: tests wait on it).
    ended: Arc<watch::Sender<HashMap<SocketAddr, usize>>>,
    /// Stops the server of every connection open now (the endpoint closes them).
    close: Mutex<CancellationToken>,
}

impl Pipes {
    fn opened(&self, port: u16) -> usize {
        self.opened
            .lock()
            .unwrap()
            .get(&addr(port))
            .copied()
            .unwrap_or(0)
    }

    fn ended(&self, port: u16) -> usize {
        self.ended.borrow().get(&addr(port)).copied().unwrap_or(0)
    }

    /// Waits (bounded) until `n` connections to `port` ended.
    async fn until_ended(&self, port: u16, n: usize) {
        let mut ended = self.ended.subscribe();
        let reached = ended.wait_for(|m| m.get(&addr(port)).copied().unwrap_or(0) >= n);
        tokio::time::timeout(Duration::from_secs(5), reached)
            .await
            .expect("the connection did not end")
            .expect("the endpoints are gone");
    }

    /// Closes every open connection from the endpoints' side.
    fn close_all(&self) {
        std::mem::take(&mut *self.close.lock().unwrap()).cancel();
    }
}

impl Connect for Arc<Pipes> {
    fn connect<'a>(
        &'a self,
        to: SocketAddr,
        _service: &'a Service,
    ) -> BoxFuture<'a, Result<Box<dyn Io>, String>> {
        *self.opened.lock().unwrap().entry(to).or_default() += 1;
        let ended = Arc::clone(&self.ended);
        let close = self.close.lock().unwrap().clone();
        Box::pin(async move {
            tokio::time::sleep(DIAL).await;
            if to == addr(DOWN) {
                return Err("connection refused".to_owned());
            }
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let serve = async {
                    let Ok(mut connection) = h2::server::handshake(server).await else {
                        return;
                    };
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        if let Ok(mut body) = respond.send_response(Response::new(()), false) {
                            let _ = body.send_data(Bytes::from_static(b"ok"), true);
                        }
                    }
                    // The client closed the connection.
                    ended.send_modify(|ended| *ended.entry(to).or_default() += 1);
                };
                tokio::select! {
                    () = serve => {}
                    () = close.cancelled() => {}
                }
            });
            Ok(Box::new(client) as Box<dyn Io>)
        })
    }
}

struct Harness {
    endpoint: Endpoint,
    pipes: Arc<Pipes>,
    targets: Arc<Targets>,
    budget: Arc<ConnectionBudget>,
    tasks: TaskTracker,
    endpoints: watch::Sender<Arc<EndpointSet>>,
}

impl Harness {
    /// A pool for `web`, whose endpoints are `ports`.
    fn start(ports: &[u16]) -> Self {
        let set = EndpointSet::resolved(ports.iter().map(|p| addr(*p)).collect());
        let (endpoints, endpoints_rx) = watch::channel(Arc::new(set));
        let resolve: Resolve = Arc::new(|_: &str, _| watch::channel(Arc::default()).1);
        let metrics = HttpMetrics::register(&mut Registry::default());
        let tasks = TaskTracker::new();
        let targets = Arc::new(Targets::new(
            "web",
            endpoints_rx,
            None,
            Remote {
                resolve,
                tls: None,
                datacenters: None,
            },
            metrics.clone(),
            tasks.clone(),
            CancellationToken::new(),
        ));
        let pipes = Arc::new(Pipes::default());
        let budget = Arc::new(ConnectionBudget::default());
        let pool = Pool::new(
            Arc::clone(&targets),
            Arc::new(Arc::clone(&pipes)),
            Arc::clone(&budget),
            metrics,
            "web".into(),
            tasks.clone(),
            CancellationToken::new(),
        );
        Self {
            endpoint: Endpoint::new(Arc::new(pool)),
            pipes,
            targets,
            budget,
            tasks,
            endpoints,
        }
    }

    /// One attempt on the first of `order` that takes it: the endpoint that answered, or why
    /// none did.
    async fn send(&self, order: &[u16]) -> Result<SocketAddr, Reason> {
        let mut request = Request::builder()
            .uri("/hello")
            .header("host", "web")
            .body(crate::http::empty())
            .unwrap();
        request.extensions_mut().insert(Picked {
            service: self.targets.service("web").unwrap(),
            order: order.iter().map(|p| addr(*p)).collect(),
            tracks_load: false,
            report: true,
        });
        match self.endpoint.clone().oneshot(request).await {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                Ok(response.extensions().get::<Served>().unwrap().0)
            }
            Err(error) => Err(error.reason()),
        }
    }
}

/// Waits (bounded) until every task of `tasks` (the pool's connections) has ended.
async fn until_no_task(tasks: &TaskTracker) {
    tasks.close();
    tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .expect("a pooled connection is still running");
    tasks.reopen();
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_requests_share_one_connection_and_later_ones_reuse_it() {
    let h = Arc::new(Harness::start(&[A]));
    let mut first = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let h = Arc::clone(&h);
        first.spawn(async move { h.send(&[A]).await });
    }
    while let Some(answered) = first.join_next().await {
        assert_eq!(answered.unwrap(), Ok(addr(A)));
    }
    for _ in 0..5 {
        assert_eq!(h.send(&[A]).await, Ok(addr(A)));
    }
    assert_eq!(h.pipes.opened(A), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_the_endpoint_closed_is_replaced_on_the_next_request() {
    let h = Harness::start(&[A]);
    assert_eq!(h.send(&[A]).await, Ok(addr(A)));
    assert_eq!(h.tasks.len(), 1, "the pooled connection's task");
    h.pipes.close_all();
    // The pooled connection sees the end and marks its sender closed.
    until_no_task(&h.tasks).await;
    assert_eq!(h.send(&[A]).await, Ok(addr(A)));
    assert_eq!(h.pipes.opened(A), 2);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_refusing_connections_is_passed_over_for_the_next_candidate() {
    let h = Harness::start(&[DOWN, A]);
    assert_eq!(h.send(&[DOWN, A]).await, Ok(addr(A)));
    assert_eq!((h.pipes.opened(DOWN), h.pipes.opened(A)), (1, 1));
    // Nobody takes it: a connect failure.
    assert_eq!(h.send(&[DOWN]).await, Err(Reason::UpstreamConnectFailure));
}

#[tokio::test(start_paused = true)]
async fn at_max_connections_a_request_takes_one_open_to_another_endpoint() {
    let h = Harness::start(&[A, B]);
    h.budget.set_max(Some(1));
    assert_eq!(h.send(&[A]).await, Ok(addr(A)));
    // B would need a second connection: A's serves instead, and B is never dialled.
    assert_eq!(h.send(&[B, A]).await, Ok(addr(A)));
    assert_eq!(h.pipes.opened(B), 0);
    // Only B will do: refused as the bulkhead's, not as B's failure.
    assert_eq!(h.send(&[B]).await, Err(Reason::ConcurrencyLimit));
    // The limit lifted, B gets its own.
    h.budget.set_max(None);
    assert_eq!(h.send(&[B]).await, Ok(addr(B)));
    assert_eq!(h.pipes.opened(B), 1);
}

#[tokio::test(start_paused = true)]
async fn the_connection_of_an_endpoint_that_left_the_set_closes_when_the_pool_next_opens_one() {
    let h = Harness::start(&[A, B]);
    assert_eq!(h.send(&[A]).await, Ok(addr(A)));
    h.endpoints
        .send(Arc::new(EndpointSet::resolved(vec![addr(B)])))
        .unwrap();
    assert_eq!(h.pipes.ended(A), 0, "kept until the pool opens another");
    // Opening B's connection prunes A's slot: its connection has no sender left and closes.
    assert_eq!(h.send(&[B]).await, Ok(addr(B)));
    h.pipes.until_ended(A, 1).await;
    // B's connection stays, and serves the next request.
    assert_eq!(h.send(&[B]).await, Ok(addr(B)));
    assert_eq!((h.pipes.ended(B), h.pipes.opened(B)), (0, 1));
}
