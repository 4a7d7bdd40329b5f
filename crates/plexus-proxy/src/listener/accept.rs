//! One listener's accept loop and the life of each connection it accepts:
//! accept → (balance) → endpoint dial → splice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use crate::authorize::{Authorizer, verdict};
use crate::balance::RoundRobin;
use crate::balance::recent::RecentFailures;
use crate::discovery::EndpointSet;
use crate::endpoint::{self, ByteCounters, ConnectError};
use crate::error::ListenerName;
use crate::http;
use crate::http::server::Speaks;
use crate::metrics::ListenerMetrics;
use crate::tls;
use plexus_runtime::ErrorChain;
use plexus_runtime::shutdown::or_cancelled;

/// The reason a raw TCP peer of an HTTP service is told.
const PROTOCOL_MISMATCH: &str = "protocol mismatch: the destination speaks HTTP (ALPN plexus-h2)";

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Per-listener bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served at once by one listener; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Longest wait for one endpoint to accept a connection.
    pub connect_timeout: Duration,
}

/// Where a listener's connections go.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// Inbound: the local app (its address can change without rebinding the listener).
    Local {
        /// The app's address.
        app: watch::Receiver<SocketAddr>,
        /// mTLS and intentions (always set by the proxy; unit tests of the plain data path
        /// leave it out).
        security: Option<InboundSecurity>,
        /// Serves peers that negotiate HTTP/2 (ALPN `plexus-h2`).
        http: Arc<http::Inbound>,
        /// The registration declares `http`, `http2` or `grpc`: only `plexus-h2` peers are
        /// served; raw TCP (another or no ALPN) is refused, never spliced to the app.
        http_only: bool,
    },
    /// Outbound HTTP: each request balanced over pooled HTTP/2 connections.
    Http(Arc<http::Outbound>),
    /// A gateway serving each connection itself.
    Gateway(Arc<dyn ServeConnection>),
    /// An ingress gateway's HTTP listener: clients outside the mesh, optionally over TLS,
    /// routed by host.
    Ingress {
        /// The request path.
        http: Arc<http::Ingress>,
        /// TLS with the gateway's certificate for the listener's hosts (`TLS.Enabled`).
        tls: Option<tls::Front>,
    },
    /// Outbound, protocol not in the registration: each new connection takes the HTTP path
    /// when the upstream's discovery chain says `http`/`http2`/`grpc`, else the L4 one.
    ByChain {
        /// The HTTP path.
        http: Arc<http::Outbound>,
        /// The L4 path (a [`Target::Balanced`]).
        l4: Box<Target>,
        /// The upstream's chain.
        chain: crate::discovery::ChainWatch,
    },
    /// Outbound L4 with failover to other datacenters (`listener/failover.rs`).
    Failover {
        /// The local path (a [`Target::Balanced`]).
        local: Box<Target>,
        /// The upstream's chain (its resolver's `Failover.*.Datacenters`).
        chain: crate::discovery::ChainWatch,
        /// The upstream service.
        destination: String,
        /// Other datacenters' targets.
        remotes: Arc<super::failover::Remotes>,
    },
    /// Outbound: an upstream's endpoints, in round-robin order.
    Balanced {
        /// The latest endpoint set.
        endpoints: watch::Receiver<Arc<EndpointSet>>,
        /// Shared by every connection of the listener.
        picker: Arc<RoundRobin>,
        /// Endpoints whose connect just failed, tried after the others for a while.
        failures: Arc<RecentFailures<SocketAddr>>,
        /// mTLS to the upstream's sidecars (always set by the proxy).
        tls: Option<tls::Outbound>,
    },
}

/// A listener target that serves each connection itself (a terminating gateway).
pub(crate) trait ServeConnection: std::fmt::Debug + Send + Sync {
    /// Serves one accepted connection until it ends (or `stop`, for protocols that drain).
    fn serve(
        self: Arc<Self>,
        downstream: TcpStream,
        peer: SocketAddr,
        bytes: ByteCounters,
        stop: CancellationToken,
    ) -> crate::http::stack::BoxFuture<'static, ()>;
}

/// What the inbound listener demands of every connection.
#[derive(Debug, Clone)]
pub(crate) struct InboundSecurity {
    /// The TLS server side.
    pub tls: tls::Inbound,
    /// The intention check.
    pub authorizer: Authorizer,
}

/// A bound listener, ready to run.
#[derive(Debug)]
pub(crate) struct Accept {
    /// Used in spans and logs.
    pub name: ListenerName,
    /// Already bound.
    pub listener: TcpListener,
    /// Where connections go.
    pub target: Target,
    /// This listener's metrics.
    pub metrics: ListenerMetrics,
    /// Bounds.
    pub limits: Limits,
    /// Connection tasks are spawned here so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cuts in-flight connections (the drain grace period is over).
    pub kill: CancellationToken,
}

impl Accept {
    /// Accepts connections until `stop` fires, then drops the listener. Connections already
    /// accepted keep running until they end or `kill` fires.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let log_name = self.name.log_name();
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_closed) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, listener = %log_name, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            self.metrics.connections.inc();
            // A debug-level span: at the default `info` level it is disabled, so polling the
            // connection does not enter and leave a span on every wake-up (measured in
            // docs/benchmarks.md); warnings carry the peer themselves.
            let span = debug_span!("connection", listener = %log_name, %peer);
            let (target, metrics) = (self.target.clone(), self.metrics.clone());
            let (connect_timeout, stop) = (self.limits.connect_timeout, stop.clone());
            let kill = self.kill.clone();
            self.tasks.spawn(
                async move {
                    let _permit = permit;
                    // Made here, not outside the block: a future moved into the block and then
                    // into the race would take its room twice in the task.
                    let connection = or_cancelled(
                        serve(stream, peer, target, metrics, connect_timeout, stop),
                        &kill,
                    );
                    if connection.await.is_none() {
                        debug!("connection cut: drain grace period is over");
                    }
                }
                .instrument(span),
            );
        }
        debug!(listener = %log_name, "listener stopped accepting");
    }
}

/// Counts a connection as active while alive.
struct Active(Gauge);

impl Active {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one accepted connection: (inbound) TLS handshake and authorization, find an endpoint
/// that accepts, (outbound) TLS handshake, then copy until both sides end.
///
/// Each kind of connection is served by its own boxed future, so that a connection's task holds
/// its own path's state only: inline, every connection carried the largest path's state
/// (~12 KiB), and the task twice that (docs/benchmarks.md, "Sidecar memory per connection").
async fn serve(
    downstream: TcpStream,
    peer: SocketAddr,
    mut target: Target,
    metrics: ListenerMetrics,
    connect_timeout: Duration,
    stop: CancellationToken,
) {
    let _active = Active::new(metrics.active.clone());
    if let Target::ByChain { http, l4, chain } = target {
        target = if http::chain_is_http(&chain) {
            Target::Http(http)
        } else {
            *l4
        };
    }
    if let Target::Failover {
        local,
        chain,
        destination,
        remotes,
    } = target
    {
        let choose =
            super::failover::choose(*local, &chain, &destination, &remotes, connect_timeout);
        target = Box::pin(choose).await;
    }
    match target {
        Target::Http(outbound) => {
            let speaks = Speaks::peek(&downstream, connect_timeout, &stop).await;
            Box::pin(outbound.serve(downstream, speaks, Some(peer.ip()), stop)).await;
        }
        Target::Ingress { http, tls } => {
            Box::pin(async move {
                match tls {
                    Some(front) => {
                        if let Some(stream) = front.accept(downstream, peer).await {
                            let speaks = Speaks::of_alpn(stream.get_ref().1.alpn_protocol());
                            http.serve(stream, speaks, Some(peer.ip()), stop).await;
                        }
                    }
                    None => {
                        let speaks = Speaks::peek(&downstream, connect_timeout, &stop).await;
                        http.serve(downstream, speaks, Some(peer.ip()), stop).await;
                    }
                }
            })
            .await;
        }
        Target::Gateway(gateway) => {
            let bytes = byte_counters(&metrics);
            gateway.serve(downstream, peer, bytes, stop).await;
        }
        target @ Target::Local {
            security: Some(_), ..
        } => {
            Box::pin(serve_inbound(
                downstream,
                peer,
                target,
                metrics,
                connect_timeout,
                stop,
            ))
            .await
        }
        target => Box::pin(serve_l4(downstream, peer, target, metrics, connect_timeout)).await,
    }
}

fn byte_counters(metrics: &ListenerMetrics) -> ByteCounters {
    ByteCounters {
        sent: metrics.bytes_sent.clone(),
        received: metrics.bytes_received.clone(),
    }
}

/// A peer sidecar's mTLS connection to the local app: HTTP/2 between sidecars, or raw TCP
/// checked against intentions once and spliced.
async fn serve_inbound(
    downstream: TcpStream,
    peer: SocketAddr,
    mut target: Target,
    metrics: ListenerMetrics,
    connect_timeout: Duration,
    stop: CancellationToken,
) {
    let Target::Local {
        security: Some(security),
        http,
        http_only,
        ..
    } = &target
    else {
        return;
    };
    let (security, http, http_only) = (security.clone(), Arc::clone(http), *http_only);
    let bytes = byte_counters(&metrics);
    let Some((downstream, source)) = security.tls.accept(downstream, peer).await else {
        return;
    };
    if downstream.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2) {
        // HTTP between sidecars: intentions decide each request (403 `x-plexus-error:
        // denied`), since the connection is pooled and outlives intention changes.
        let authorize = Some((security.authorizer.clone(), source.service.clone()));
        Box::pin(http.serve(downstream, authorize, stop)).await;
        return;
    }
    // `plexus-tcp/2` peers get the verdict as the first bytes; `/1` peers a bare close.
    let tells_verdict = downstream.get_ref().1.alpn_protocol() == Some(tls::ALPN_TCP);
    let mut downstream = downstream;
    if http_only {
        // Raw bytes would reach an app that expects HTTP from its sidecar, unchecked.
        debug!(source = %source.service, "refused raw TCP to an HTTP service");
        if tells_verdict {
            verdict::deny(&mut downstream, PROTOCOL_MISMATCH).await;
        }
        return;
    }
    let decision = security.authorizer.check(&source.service);
    if !decision.allowed {
        if tells_verdict {
            verdict::deny(&mut downstream, &decision.reason).await;
        }
        return;
    }
    let (upstream, endpoint) = match connect(&mut target, connect_timeout).await {
        Ok(connected) => connected,
        Err(error) => {
            metrics.connect_errors.inc();
            warn!(error = %ErrorChain(&error), %peer, "connect failed; closing the connection");
            return;
        }
    };
    if tells_verdict && downstream.write_all(&verdict::ALLOW_FRAME).await.is_err() {
        return;
    }
    debug!(%endpoint, source = %source.service, "connected");
    tokio::select! {
        spliced = endpoint::splice(downstream, upstream, bytes) => log_end(endpoint, spliced),
        _ = security.authorizer.denied_later(&source.service) => {}
    }
}

/// A plain TCP connection: to the local app (no security: unit tests) or balanced over the
/// destination's endpoints, with mTLS to a peer sidecar when the target has it.
async fn serve_l4(
    downstream: TcpStream,
    peer: SocketAddr,
    mut target: Target,
    metrics: ListenerMetrics,
    connect_timeout: Duration,
) {
    let bytes = byte_counters(&metrics);
    let (upstream, endpoint) = match connect(&mut target, connect_timeout).await {
        Ok(connected) => connected,
        Err(error) => {
            metrics.connect_errors.inc();
            warn!(
                error = %ErrorChain(&error),
                %peer,
                "connect failed; closing the connection"
            );
            return;
        }
    };
    debug!(%endpoint, "connected");
    match &target {
        Target::Balanced { tls: Some(tls), .. } => {
            let Ok(upstream) = tls.connect(upstream, endpoint).await else {
                metrics.connect_errors.inc();
                return;
            };
            if upstream.get_ref().1.alpn_protocol() != Some(tls::ALPN_TCP) {
                // An older sidecar (`plexus-tcp/1`): no verdict, a denial is a bare close.
                log_end(
                    endpoint,
                    endpoint::splice(downstream, upstream, bytes).await,
                );
                return;
            }
            let spliced =
                endpoint::splice(downstream, verdict::VerdictStream::new(upstream), bytes).await;
            if let Err(error) = &spliced
                && let Some(denied) = verdict::denied(error)
            {
                metrics.denied.inc();
                warn!(
                    %endpoint,
                    destination = %tls.expected(),
                    reason = %denied.reason,
                    "connection denied by the destination's intentions"
                );
                return;
            }
            log_end(endpoint, spliced);
        }
        _ => log_end(
            endpoint,
            endpoint::splice(downstream, upstream, bytes).await,
        ),
    }
}

fn log_end(endpoint: SocketAddr, spliced: std::io::Result<(u64, u64)>) {
    match spliced {
        Ok((received, sent)) => debug!(%endpoint, received, sent, "connection closed"),
        Err(error) => debug!(%endpoint, %error, "connection ended with an error"),
    }
}

async fn connect(
    target: &mut Target,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    match target {
        Target::Local { app, .. } => {
            let addr = *app.borrow();
            endpoint::dial(addr, timeout)
                .await
                .map(|stream| (stream, addr))
                .map_err(|last| ConnectError::Unreachable { attempts: 1, last })
        }
        // Served above.
        Target::Http(_)
        | Target::ByChain { .. }
        | Target::Ingress { .. }
        | Target::Gateway(_)
        | Target::Failover { .. } => Err(ConnectError::NoEndpoints),
        Target::Balanced {
            endpoints,
            picker,
            failures,
            ..
        } => {
            // Right after start-up the control plane's first answer may still be on its way.
            let _ =
                tokio::time::timeout(timeout, endpoints.wait_for(|set| set.is_resolved())).await;
            let set = Arc::clone(&endpoints.borrow());
            let order = failures.reorder(picker.order(&set.addrs), Instant::now());
            endpoint::dial_first(order, timeout, |addr, connected| {
                if connected {
                    failures.record_success(addr);
                } else {
                    failures.record_failure(addr, Instant::now());
                }
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server that first says its one-letter name.
    async fn echo_server(name: u8) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    socket.write_all(&[name]).await.unwrap();
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        (addr, task)
    }

    /// Starts an outbound listener over `endpoints`; returns its address and metrics.
    async fn outbound(
        endpoints: watch::Receiver<Arc<EndpointSet>>,
        stop: CancellationToken,
    ) -> (SocketAddr, ListenerMetrics) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = ListenerMetrics::default();
        let accept = Accept {
            name: ListenerName::Upstream("echo".into()),
            listener,
            target: Target::Balanced {
                endpoints,
                picker: Arc::default(),
                failures: Arc::default(),
                tls: None,
            },
            metrics: metrics.clone(),
            limits: Limits {
                max_connections: 16,
                connect_timeout: Duration::from_secs(1),
            },
            tasks: TaskTracker::new(),
            kill: CancellationToken::new(),
        };
        tokio::spawn(accept.run(stop));
        (addr, metrics)
    }

    /// Connects through the proxy and returns the name of the server reached (None: closed).
    async fn reached(proxy: SocketAddr) -> (Option<u8>, TcpStream) {
        let mut client = TcpStream::connect(proxy).await.unwrap();
        let mut name = [0u8; 1];
        let n = client.read(&mut name).await.unwrap();
        ((n == 1).then_some(name[0]), client)
    }

    #[tokio::test]
    async fn connections_alternate_and_move_to_the_survivor() {
        let (a, server_a) = echo_server(b'a').await;
        let (b, _server_b) = echo_server(b'b').await;
        let (tx, rx) = watch::channel(Arc::new(EndpointSet::resolved(vec![a, b])));
        let stop = CancellationToken::new();
        let (proxy, metrics) = outbound(rx, stop.clone()).await;

        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(reached(proxy).await.0);
        }
        assert_eq!(names, [Some(b'a'), Some(b'b'), Some(b'a'), Some(b'b')]);

        // An established connection survives its endpoint leaving the set.
        let (name, mut established) = reached(proxy).await;
        assert_eq!(name, Some(b'a'));
        tx.send_replace(Arc::new(EndpointSet::resolved(vec![b])));
        established.write_all(b"still here").await.unwrap();
        let mut echoed = [0u8; 10];
        established.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"still here");

        // Server a dies while still listed: every new connection skips to b.
        tx.send_replace(Arc::new(EndpointSet::resolved(vec![a, b])));
        server_a.abort();
        let _ = server_a.await;
        for _ in 0..4 {
            assert_eq!(reached(proxy).await.0, Some(b'b'));
        }
        assert_eq!(metrics.connect_errors.get(), 0);
        assert_eq!(metrics.connections.get(), 9);
        drop(established);
        stop.cancel();
    }

    #[tokio::test]
    async fn no_endpoints_closes_the_connection_and_counts_an_error() {
        let (tx, rx) = watch::channel(Arc::new(EndpointSet::resolved(Vec::new())));
        let stop = CancellationToken::new();
        let (proxy, metrics) = outbound(rx, stop.clone()).await;
        assert_eq!(reached(proxy).await.0, None);
        assert_eq!(metrics.connect_errors.get(), 1);
        drop(tx);
        stop.cancel();
    }

    #[tokio::test]
    async fn stop_closes_the_listener() {
        let (_tx, rx) = watch::channel(Arc::new(EndpointSet::resolved(Vec::new())));
        let stop = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = Accept {
            name: ListenerName::Inbound,
            listener,
            target: Target::Balanced {
                endpoints: rx,
                picker: Arc::default(),
                failures: Arc::default(),
                tls: None,
            },
            metrics: ListenerMetrics::default(),
            limits: Limits {
                max_connections: 1,
                connect_timeout: Duration::from_secs(1),
            },
            tasks: TaskTracker::new(),
            kill: CancellationToken::new(),
        };
        let task = tokio::spawn(accept.run(stop.clone()));
        stop.cancel();
        task.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
