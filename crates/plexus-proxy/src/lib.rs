//! The sidecar data path: `plexus proxy -sidecar-for <service id>`, at L4 (TCP).
//!
//! The proxy finds its own `connect-proxy` registration on the control plane, then runs:
//!
//! - an **inbound** listener on the sidecar's port, forwarding to the local app;
//! - one **outbound** listener per upstream on `LocalBindAddress:LocalBindPort`, balancing new
//!   connections round-robin over the sidecars in front of the upstream's healthy instances;
//! - an **admin** HTTP server: `/ready`, `/metrics` (`/stats`), `/config`.
//!
//! Registration and endpoints are followed with blocking queries, so changes apply as soon as the
//! control plane sees them. If the control plane goes away, the proxy keeps serving its last good
//! configuration (static stability) and resyncs when it is back.
//!
//! ```text
//!             control plane (HTTP API, blocking queries)
//!               │ /v1/agent/service/:sidecar        │ /v1/health/connect/:upstream?passing
//!               ▼                                   ▼
//!   discovery::watch_sidecar ─► SidecarConfig   discovery::watch_endpoints ─► watch<EndpointSet>
//!               │                                   │
//!               ▼                                   ▼
//!   listener::Listeners::apply ─► listener (accept) ─► balance (round robin) ─► endpoint (dial + splice)
//!               │
//!               ▼
//!   admin (/ready, /metrics, /config)      metrics: one explicit registry, passed down
//! ```
//!
//! Stages are modules: `discovery/`, `listener/`, `balance/`, `endpoint/`, plus `admin` and
//! `metrics`. [`run`] assembles them; read it first.
//!
//! Sidecar to sidecar traffic is mTLS (`tls/`: TLS 1.3 only, SPIFFE identities from the control
//! plane's CA, renewed at about half-life); the inbound listener authorizes every connection
//! against the intentions (`authorize/`). Apps see plain TCP on 127.0.0.1.
//!
//! HTTP-aware upstreams and the inbound HTTP/2 path: `http/`, whose `http/stack.rs` assembles
//! the per-request path from named tower layers (route, rate limit, bulkhead, fault, rewrite,
//! mirror, split, timeout, retry, balance, endpoint pool); see docs/architecture.md, "L7 data
//! path". The listener only detects the protocol and hands HTTP connections to it.
//!
//! Main types: [`ProxyConfig`], [`run`], [`ProxyError`].

mod acknowledge;
mod admin;
mod authorize;
pub mod balance;
mod discovery;
mod endpoint;
mod error;
pub mod gateway;
mod http;
mod listener;
mod metrics;
mod staleness;
mod state;
#[cfg(test)]
mod tests;
mod tls;

/// The hot pure functions, reachable by the criterion micro-benchmarks in `benches/`
/// (`cargo bench -p plexus-proxy`). Not a stable API.
#[doc(hidden)]
pub mod hot {
    pub use crate::balance::RoundRobin;
    pub use crate::discovery::EndpointSet;
    pub use crate::http::route::table::{RequestView, RouteTable};
    pub use plexus_runtime::http::query_value;

    /// The L7 path's removal of hop-by-hop headers, as each proxied request and response gets it.
    pub fn strip_hop_by_hop(headers: &mut ::http::HeaderMap) {
        crate::http::strip_hop_by_hop(headers);
    }

    /// The L7 path's `traceparent` check (and creation when absent), once per request.
    pub fn ensure_traceparent(headers: &mut ::http::HeaderMap) {
        crate::http::ensure_traceparent(headers);
    }
}

use std::sync::Arc;
use std::time::Duration;

use plexus_runtime::telemetry;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use discovery::RegistrationError;
pub use error::{ListenerName, ProxyError};
pub use http::access_log::AccessLog;
pub use state::{StateDir, StateError};

use discovery::{EndpointSet, Resolve, ResolveChain, SidecarConfig};
use listener::{Context, Limits, Listeners, OnBindError};
use metrics::Metrics;

/// Connections one listener serves at once; more wait in the kernel's accept backlog.
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 10_000;
/// Longest wait for an endpoint (or the local app) to accept a connection before trying the next.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// After the drain grace period, how long connections and tunnels that were cut get to close
/// their sockets before [`run`] returns without them.
pub const CUT_WAIT: Duration = Duration::from_secs(1);

/// What [`run`] needs. The binary builds it from its flags.
#[derive(Debug)]
pub struct ProxyConfig {
    /// The control plane's HTTP API.
    pub control: plexus_api::client::Client,
    /// The app's service id (like `consul connect proxy -sidecar-for web`).
    pub sidecar_for: String,
    /// The id of an explicitly registered `connect-proxy` service to run as
    /// (`plexus proxy --proxy-id`); when set, `sidecar_for` is not used.
    pub proxy_id: Option<String>,
    /// The admin listener, already bound (`--admin-addr`; port 0 allowed).
    pub admin_listener: tokio::net::TcpListener,
    /// How long in-flight connections may continue after shutdown starts.
    pub drain_grace: Duration,
    /// Close open inbound connections as soon as an intention change denies them (otherwise
    /// a change applies to new connections only).
    pub close_denied: bool,
    /// The JSON access log (`--access-log`): one line per HTTP request; `None`: no log.
    pub access_log: Option<AccessLog>,
    /// Where the last good configuration is kept (`--state-dir`), to serve from after a restart
    /// during a control-plane outage; `None`: nothing is kept.
    pub state: Option<Arc<StateDir>>,
}

/// Runs the sidecar until `shutdown` is cancelled, then stops accepting on every listener, lets
/// in-flight connections, requests and tunnels (WebSocket, `CONNECT`) finish for up to
/// `drain_grace`, cuts what is left (waiting at most [`CUT_WAIT`] for it to close), and returns
/// `Ok(())`. Nothing holds shutdown past that.
///
/// Fails only at start-up: [`ProxyError::NoSidecar`] when the control plane has no sidecar for
/// `sidecar_for`, [`ProxyError::InvalidRegistration`], [`ProxyError::Bind`] when a listener of
/// the first configuration cannot be bound, or [`ProxyError::AdminListener`]. While the control
/// plane is unreachable it retries with backoff (100 ms doubling to 5 s, jittered) instead; a
/// shutdown during that wait returns `Ok(())`.
pub async fn run(config: ProxyConfig, shutdown: CancellationToken) -> Result<(), ProxyError> {
    let ProxyConfig {
        control,
        sidecar_for,
        proxy_id,
        admin_listener,
        drain_grace,
        close_denied,
        access_log,
        state,
    } = config;
    let tasks = TaskTracker::new();
    // `stop` ends accepting everywhere (shutdown, or a start-up error); `kill` ends in-flight
    // connections once the drain grace period is over.
    let stop = shutdown.child_token();
    let kill = CancellationToken::new();

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let tls_metrics = tls::TlsMetrics::register(&mut registry);
    let authorize_metrics = authorize::AuthorizeMetrics::register(&mut registry);
    let http_metrics = http::HttpMetrics::register(&mut registry).with_access_log(access_log);

    // Admin first, so readiness probes get 503 (not a refused connection) while we start.
    let (applied_tx, applied_rx) = watch::channel(None);
    let admin_addr = spawn_admin(
        admin_listener,
        registry,
        applied_rx,
        &control,
        &tasks,
        &stop,
        &kill,
    )?;

    let serving = async {
        // discovery: our own registration (retried while the control plane is unreachable).
        let found = match &proxy_id {
            Some(proxy_id) => {
                discovery::find_proxy(&control, proxy_id, state.as_deref(), &stop).await?
            }
            None => {
                discovery::find_sidecar(&control, &sidecar_for, state.as_deref(), &stop).await?
            }
        };
        let Some(registration) = found else {
            return Ok(()); // shut down before the control plane answered
        };
        let initial = SidecarConfig::from_registration(&registration).map_err(|source| {
            ProxyError::InvalidRegistration {
                sidecar_id: registration.value.id.clone(),
                source,
            }
        })?;
        info!(sidecar_id = %initial.sidecar_id, revision = initial.revision, "found sidecar registration");

        // tls: a key of our own, a leaf for our service, the roots; then the intentions that
        // can apply to connections to our service. Both before any listener accepts.
        let service = registration
            .value
            .proxy
            .as_ref()
            .map(|p| p.destination_service_name.clone())
            .unwrap_or_default();
        let source = tls::identity::Source {
            control: control.clone(),
            proxy_id: registration.value.id.clone(),
            service: service.clone(),
            state: state.clone(),
            dns_names: Vec::new(),
        };
        let Some((identity, roots_index)) =
            tls::identity::obtain(&source, &tls_metrics, &stop).await
        else {
            return Ok(());
        };
        tasks.spawn(tls::identity::maintain(
            Arc::clone(&identity),
            source,
            roots_index,
            tls_metrics.clone(),
            stop.clone(),
        ));
        let Some(authorizer) = authorize::start(
            control.clone(),
            service,
            close_denied,
            authorize_metrics,
            &tasks,
            state.clone(),
            stop.clone(),
        )
        .await
        else {
            return Ok(());
        };
        let inbound_tls =
            tls::Inbound::new(&identity, tls_metrics.clone()).map_err(ProxyError::Tls)?;
        let security = listener::Security {
            identity,
            metrics: tls_metrics.clone(),
            inbound: listener::InboundSecurity {
                tls: inbound_tls,
                authorizer,
            },
        };

        // listener → balance → endpoint, with endpoints discovered per upstream.
        let (resolve, chains, gateways) = resolvers(&control, &tasks, &metrics, state.clone());
        let mut listeners = Listeners::new(Context {
            tasks: tasks.clone(),
            stop: stop.clone(),
            kill: kill.clone(),
            metrics: metrics.clone(),
            limits: Limits {
                max_connections: MAX_CONNECTIONS_PER_LISTENER,
                connect_timeout: CONNECT_TIMEOUT,
            },
            resolve,
            security,
            http_metrics,
            chains,
            gateways,
        });
        listeners.apply(&initial, OnBindError::Fail).await?;
        applied_tx.send_replace(Some(Arc::new(listeners.snapshot(&initial))));
        acknowledge::report(
            &tasks,
            &stop,
            &control,
            &initial.sidecar_id,
            initial.revision,
            admin_addr,
        );
        info!(revision = initial.revision, "ready");

        // Follow the registration; later failures are logged, never fatal.
        let initial = Arc::new(initial);
        let (config_tx, mut config_rx) = watch::channel(Arc::clone(&initial));
        tasks.spawn(discovery::watch_sidecar(
            control.clone(),
            initial,
            config_tx,
            state.clone(),
            stop.clone(),
        ));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = config_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let config = Arc::clone(&config_rx.borrow_and_update());
                    listeners.apply(&config, OnBindError::Skip).await?;
                    applied_tx.send_replace(Some(Arc::new(listeners.snapshot(&config))));
                    acknowledge::report(&tasks, &stop, &control, &config.sidecar_id, config.revision, admin_addr);
                    info!(revision = config.revision, "applied sidecar registration");
                }
            }
        }
        Ok(())
    };
    let outcome = serving.await;

    // Shutdown (or a start-up error): stop accepting, drain, then cut what is left.
    drain(&stop, &tasks, &kill, drain_grace, outcome.is_ok()).await;
    outcome
}

/// Starts the admin server (`/ready`, `/metrics`, `/config`) on the bound `admin_listener`
/// until `stop` (or `kill`); logs its `listening` line and returns its address.
fn spawn_admin(
    admin_listener: tokio::net::TcpListener,
    registry: Registry,
    applied: watch::Receiver<Option<Arc<admin::Snapshot>>>,
    control: &plexus_api::client::Client,
    tasks: &TaskTracker,
    stop: &CancellationToken,
    kill: &CancellationToken,
) -> Result<std::net::SocketAddr, ProxyError> {
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| ProxyError::AdminListener { source })?;
    telemetry::listening("admin", admin_addr);
    let router = admin::router(Arc::new(registry), applied, control.clone());
    let (stop, kill) = (stop.clone(), kill.clone());
    tasks.spawn(async move {
        tokio::select! {
            served = plexus_runtime::http::serve(admin_listener, router, stop) => {
                if let Err(error) = served {
                    error!(%error, addr = %admin_addr, "admin server failed");
                }
            }
            _ = kill.cancelled() => {}
        }
    });
    Ok(admin_addr)
}

/// Endpoint discovery and discovery-chain watches over the control plane, each watch a task
/// on `tasks` that ends with the token it is given.
fn resolvers(
    control: &plexus_api::client::Client,
    tasks: &TaskTracker,
    metrics: &Metrics,
    state: Option<Arc<StateDir>>,
) -> (Resolve, ResolveChain, Resolve) {
    let resolve: Resolve = {
        let (control, tasks, metrics) = (control.clone(), tasks.clone(), metrics.clone());
        let state = state.clone();
        Arc::new(move |destination: &str, stop: CancellationToken| {
            let (tx, rx) = watch::channel(Arc::new(EndpointSet::default()));
            let gauge = metrics.endpoints(destination);
            let destination = destination.to_owned();
            tasks.spawn(discovery::watch_endpoints(
                control.clone(),
                destination,
                tx,
                gauge,
                state.clone(),
                stop,
            ));
            rx
        })
    };
    let chains: ResolveChain = {
        let (control, tasks) = (control.clone(), tasks.clone());
        Arc::new(move |destination: &str, stop: CancellationToken| {
            let (tx, rx) = watch::channel(None);
            tasks.spawn(discovery::watch_chain(
                control.clone(),
                destination.to_owned(),
                tx,
                state.clone(),
                stop,
            ));
            rx
        })
    };
    // Another datacenter's mesh gateways, by datacenter name.
    let gateways: Resolve = {
        let (control, tasks) = (control.clone(), tasks.clone());
        Arc::new(move |datacenter: &str, stop: CancellationToken| {
            let (tx, rx) = watch::channel(Arc::new(EndpointSet::default()));
            tasks.spawn(discovery::watch_gateways(
                control.clone(),
                datacenter.to_owned(),
                tx,
                stop,
            ));
            rx
        })
    };
    (resolve, chains, gateways)
}

/// Shutdown: `stop` (no more accepting), let tasks finish for up to `drain_grace`, then `kill`
/// what is left and wait at most [`CUT_WAIT`] for it.
async fn drain(
    stop: &CancellationToken,
    tasks: &TaskTracker,
    kill: &CancellationToken,
    drain_grace: Duration,
    log: bool,
) {
    stop.cancel();
    tasks.close();
    if log {
        info!(grace = ?drain_grace, "draining connections");
    }
    if tokio::time::timeout(drain_grace, tasks.wait())
        .await
        .is_err()
    {
        warn!(grace = ?drain_grace, left = tasks.len(), "drain grace period over; closing remaining connections");
        kill.cancel();
        if tokio::time::timeout(CUT_WAIT, tasks.wait()).await.is_err() {
            warn!(
                left = tasks.len(),
                "tasks still running after the cut; exiting without them"
            );
        }
    }
}
