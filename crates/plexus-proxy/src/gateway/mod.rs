//! Gateways on the built-in proxy: `plexus gateway --kind ingress|terminating|mesh`.
//!
//! A gateway is a proxy that fronts no app: it registers its own service (Consul's `Kind`
//! `ingress-gateway`, `terminating-gateway`, `mesh-gateway`), takes that service's identity from
//! the CA, and serves what its config entry says, with the sidecar's admin server (`/ready`,
//! `/metrics`), access log and drain.
//!
//! ```text
//!  register (kind checked) ─► identity (leaf for the gateway's service) ─► Context (listener/)
//!     ingress:      config entry ─► one listener per port ─► host router ─► a service's outbound stack ─► mTLS ─► its sidecars
//!     terminating:  mTLS listener ─► SNI picks the linked service (its leaf) ─► intentions ─► TLS origination ─► external server
//!     mesh:         LAN + WAN listeners ─► ClientHello's SNI picks a local service ─► splice to its sidecars (TLS untouched)
//! ```
//!
//! The data path is the sidecar's: listeners and accept loops from `listener/`, the HTTP stack
//! from `http/` (the ingress adds only the host router, `http/host.rs`), mTLS and intentions
//! from `tls/` and `authorize/`. Main items: [`GatewayConfig`], [`GatewayKind`], [`run`].

mod ingress;
mod mesh;
mod terminating;
mod terminating_http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plexus_api::ServiceKind;
use plexus_api::client::{Client, ClientError, QueryOptions};
use plexus_api::registration::ServiceRegistration;
use plexus_runtime::{Backoff, ErrorChain};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::error::ProxyError;
use crate::http::access_log::AccessLog;
use crate::listener::{Context, InboundSecurity, Limits, Security};
use crate::metrics::Metrics;
use crate::{CONNECT_TIMEOUT, MAX_CONNECTIONS_PER_LISTENER, authorize, http, tls};

/// Consul's gateway roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    /// In front of the mesh: outside clients in, routed by host.
    Ingress,
    /// Out of the mesh: mesh clients to linked external services.
    Terminating,
    /// Between datacenters: other datacenters' mTLS in, routed by SNI without terminating it.
    Mesh,
}

impl GatewayKind {
    /// The catalog kind it registers as.
    pub fn service_kind(self) -> ServiceKind {
        match self {
            Self::Ingress => ServiceKind::IngressGateway,
            Self::Terminating => ServiceKind::TerminatingGateway,
            Self::Mesh => ServiceKind::MeshGateway,
        }
    }
}

/// What [`run`] needs. The binary builds it from its flags.
#[derive(Debug)]
pub struct GatewayConfig {
    /// The control plane's HTTP API (an agent's: the gateway registers there).
    pub control: Client,
    /// The role.
    pub kind: GatewayKind,
    /// The gateway's service name (also its service id).
    pub service: String,
    /// The gateway's own listener, already bound (`--address`; port 0 allowed): the mTLS port
    /// of a terminating gateway; an ingress gateway's listeners bind its IP (a wildcard
    /// included) with the ports of its config entry.
    pub listener: TcpListener,
    /// The address registered (the bound one unless `--address` named a wildcard IP).
    pub address: SocketAddr,
    /// `--wan-address`: registered as the `wan` tagged address.
    pub wan_address: Option<SocketAddr>,
    /// A mesh gateway's second listener, already bound, on `--wan-address` (when it is not
    /// the `--address` listener's).
    pub wan_listener: Option<TcpListener>,
    /// The admin listener, already bound (port 0 allowed).
    pub admin_listener: TcpListener,
    /// A mesh gateway's `--servers`: this datacenter's servers' HTTPS API, where TLS naming
    /// `server.<dc>.<domain>` is passed (WAN federation through mesh gateways).
    pub servers: Vec<SocketAddr>,
    /// How long in-flight connections may continue after shutdown starts.
    pub drain_grace: Duration,
    /// The JSON access log; `None`: no log.
    pub access_log: Option<AccessLog>,
}

/// Runs the gateway until `shutdown`, then drains as the sidecar does. Fails at start-up when
/// the service is registered with another kind ([`ProxyError::KindMismatch`]), the
/// registration is refused, or a first listener cannot be bound.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> Result<(), ProxyError> {
    let GatewayConfig {
        control,
        kind,
        service,
        listener,
        address,
        wan_address,
        wan_listener,
        admin_listener,
        servers,
        drain_grace,
        access_log,
    } = config;
    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();
    let kill = CancellationToken::new();

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let tls_metrics = tls::TlsMetrics::register(&mut registry);
    let authorize_metrics = authorize::AuthorizeMetrics::register(&mut registry);
    let http_metrics = http::HttpMetrics::register(&mut registry).with_access_log(access_log);
    let mesh_metrics =
        (kind == GatewayKind::Mesh).then(|| mesh::MeshMetrics::register(&mut registry));
    let (applied_tx, applied_rx) = watch::channel(None);
    crate::spawn_admin(
        admin_listener,
        registry,
        applied_rx,
        &control,
        &tasks,
        &stop,
        &kill,
    )?;

    let serving = async {
        if !register(&control, kind, &service, address, wan_address, &stop).await? {
            return Ok(());
        }
        // The gateway's own identity: the source intentions see for its traffic.
        let source = tls::identity::Source {
            control: control.clone(),
            proxy_id: service.clone(),
            service: service.clone(),
            dns_names: Vec::new(),
            state: None,
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
            service.clone(),
            false,
            authorize_metrics.clone(),
            &tasks,
            None,
            stop.clone(),
        )
        .await
        else {
            return Ok(());
        };
        let (resolve, chains, gateways) = crate::resolvers(&control, &tasks, &metrics, None);
        let ctx = Context {
            tasks: tasks.clone(),
            stop: stop.clone(),
            kill: kill.clone(),
            metrics: metrics.clone(),
            limits: Limits {
                max_connections: MAX_CONNECTIONS_PER_LISTENER,
                connect_timeout: CONNECT_TIMEOUT,
            },
            resolve,
            security: Security {
                inbound: InboundSecurity {
                    tls: tls::Inbound::new(&identity, tls_metrics.clone())
                        .map_err(ProxyError::Tls)?,
                    authorizer,
                },
                identity,
                metrics: tls_metrics.clone(),
            },
            http_metrics,
            chains,
            gateways,
        };
        let shared = Shared {
            control: control.clone(),
            service: service.clone(),
            // The bound IP (a wildcard stays one: an ingress listens where `--address` does).
            ip: listener
                .local_addr()
                .map_or(address.ip(), |bound| bound.ip()),
            applied: applied_tx,
            tls_metrics: tls_metrics.clone(),
            authorize_metrics: authorize_metrics.clone(),
        };
        match kind {
            GatewayKind::Ingress => {
                drop(listener);
                ingress::run(ctx, shared).await
            }
            GatewayKind::Terminating => terminating::run(ctx, shared, listener).await,
            GatewayKind::Mesh => {
                let listeners = std::iter::once(listener).chain(wan_listener).collect();
                mesh::run(
                    ctx,
                    shared,
                    listeners,
                    mesh_metrics.unwrap_or_default(),
                    servers,
                )
                .await
            }
        }
    };
    let outcome = serving.await;
    crate::drain(&stop, &tasks, &kill, drain_grace, outcome.is_ok()).await;
    outcome
}

/// What every gateway role gets besides the listener context.
struct Shared {
    control: Client,
    service: String,
    /// The IP the gateway's listeners bind.
    ip: std::net::IpAddr,
    /// Set once the first configuration is applied (`/ready`).
    applied: watch::Sender<Option<Arc<crate::admin::Snapshot>>>,
    tls_metrics: tls::TlsMetrics,
    authorize_metrics: authorize::AuthorizeMetrics,
}

impl Shared {
    /// Marks the gateway ready with the configuration at `revision`.
    fn ready(&self, kind: &str, revision: u64) {
        self.applied
            .send_replace(Some(Arc::new(crate::admin::Snapshot {
                service: self.service.clone(),
                destination: kind.to_owned(),
                revision,
                inbound: None,
                upstreams: Vec::new(),
            })));
    }
}

/// Registers the gateway service `service` of `kind` at `address` on the agent, after checking
/// that an existing registration of that id has the same kind. Retries while the control plane
/// cannot be reached; `Ok(false)` when `stop` fires first.
async fn register(
    control: &Client,
    kind: GatewayKind,
    service: &str,
    address: SocketAddr,
    wan_address: Option<SocketAddr>,
    stop: &CancellationToken,
) -> Result<bool, ProxyError> {
    let wanted = kind.service_kind();
    let refused = |error: &ClientError| ProxyError::Register {
        service: service.to_owned(),
        message: match error {
            ClientError::Status { message, .. } => message.clone(),
            other => ErrorChain(other).to_string(),
        },
    };
    let mut backoff = Backoff::default();
    loop {
        let attempt = async {
            match control
                .agent_service(service, QueryOptions::default())
                .await
            {
                Ok(found) if found.value.kind != wanted => {
                    return Ok(Err(ProxyError::KindMismatch {
                        service: service.to_owned(),
                        registered: found.value.kind.as_str().to_owned(),
                        requested: wanted.as_str().to_owned(),
                    }));
                }
                Ok(_) => {}
                Err(error) if error.status() == Some(404) => {}
                Err(error) => return Err(error),
            }
            let mut tagged = serde_json::Map::new();
            tagged.insert(
                "lan".to_owned(),
                serde_json::json!({ "Address": address.ip().to_string(), "Port": address.port() }),
            );
            if let Some(wan) = wan_address {
                tagged.insert(
                    "wan".to_owned(),
                    serde_json::json!({ "Address": wan.ip().to_string(), "Port": wan.port() }),
                );
            }
            let registration = ServiceRegistration {
                kind: Some(wanted.as_str().to_owned()),
                id: Some(service.to_owned()),
                name: service.to_owned(),
                address: Some(address.ip().to_string()),
                port: Some(i64::from(address.port())),
                tagged_addresses: Some(serde_json::Value::Object(tagged)),
                ..ServiceRegistration::default()
            };
            control.register_service(&registration).await.map(Ok)
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            result = attempt => result,
        };
        match result {
            Ok(Ok(())) => {
                info!(service, kind = wanted.as_str(), %address, "registered the gateway service");
                return Ok(true);
            }
            Ok(Err(mismatch)) => return Err(mismatch),
            Err(error) if error.status().is_some() => return Err(refused(&error)),
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(error = %ErrorChain(&error), service, retry_in = ?delay, "cannot register the gateway yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Follows the gateway's config entry of `kind` (`extract` picks its type): publishes
/// `Some(entry)`, or `None` while there is none (then asked again with backoff), until `stop`.
async fn follow_entry<T: Send + Sync + 'static>(
    control: Client,
    kind: plexus_api::config_entry::Kind,
    service: String,
    extract: fn(plexus_api::config_entry::ConfigEntry) -> Option<T>,
    tx: watch::Sender<Option<plexus_api::Indexed<Option<T>>>>,
    stop: CancellationToken,
) {
    use plexus_api::Indexed;
    let fetch = |query| {
        let (control, service) = (control.clone(), service.clone());
        async move {
            match control.config_read(kind, &service, query).await {
                Ok(found) => Ok(Indexed {
                    index: found.index,
                    value: extract(found.value),
                }),
                // No entry: nothing to serve (the follower asks again from index 0).
                Err(error) if error.status() == Some(404) => Ok(Indexed {
                    index: 0,
                    value: None,
                }),
                Err(error) => Err(error),
            }
        }
    };
    let on_update = |update: Indexed<Option<T>>| {
        if update.value.is_none() {
            warn!(gateway = %service, %kind, "no config entry for this gateway yet; serving nothing");
        }
        tx.send_replace(Some(update));
    };
    let on_error = |error: &ClientError| {
        warn!(error = %ErrorChain(error), gateway = %service, %kind, "config entry watch failed; keeping what is served");
    };
    crate::discovery::follow(0, &stop, fetch, on_update, on_error).await;
}
