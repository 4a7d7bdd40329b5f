//! The xDS server: Envoy as a Plexus data plane.
//!
//! Envoy sidecars connect to `--grpc-addr` (default `127.0.0.1:8502`) with their proxy's service
//! id as node id and receive, over one Aggregated Discovery Service stream (state of the world
//! or delta), clusters, endpoints, listeners, routes and secrets computed from what the control
//! plane knows: the proxy's `connect-proxy` registration, the discovery chains of its upstreams
//! (the same compiled chains `plexus proxy` applies), the passing endpoints of every service they
//! reach, the intentions protecting its service, and its leaf certificate and the CA's roots.
//!
//! ```text
//!  control plane HTTP API (blocking queries, each followed once: source::Hub)
//!     │ /v1/agent/services  /v1/discovery-chain/:s  /v1/health/connect/:s?passing
//!     │ /v1/connect/intentions/match  /v1/connect/ca/roots  /v1/connect/ca/sign (leaves)
//!     ▼
//!  proxy::run (one per proxy with a stream) ─► model::Inputs ─► translate ─► Resources (versioned)
//!     ▼ watch
//!  ads: one task per stream ─► session::Session (nonces, ACK/NACK, order) ─► Envoy
//!     └─► status: ACK/NACK per proxy ─► PUT /v1/internal/proxies/xds ─► plexus operator
//! ```
//!
//! What it does not do: serve proxies registered on another node (Envoy talks to its own node's
//! agent or server, as with Consul), ECDS/VHDS/scoped routes, or any resource type but the five.
//!
//! Main items: [`XdsConfig`], [`XdsListeners`], [`serve`], [`translate::translate`], [`model::ProxySpec`].

pub mod ads;
mod incoming;
pub mod model;
mod proxy;
pub mod resources;
mod source;
pub mod translate;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request accepted from an Envoy (a request names resources; it is never large).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest response sent (a proxy's whole configuration of one type).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// What [`serve`] needs.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// The control plane's HTTP API (this process's own).
    pub control: plexus_api::client::Client,
    /// This node's name (shown as the server of each Envoy's status).
    pub node: String,
    /// Resolves the ACL token each Envoy presents (`x-consul-token`); the process's own
    /// resolver (allow-all with ACLs off).
    pub resolver: plexus_runtime::acl::Resolver,
    /// Connection bounds of the gRPC listeners (the HTTP API's flags).
    pub limits: plexus_runtime::connections::ConnLimits,
}

/// Why the gRPC server stopped.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// The xDS server's listeners, already bound (at least one).
#[derive(Debug, Default)]
pub struct XdsListeners {
    /// Plain gRPC (`--grpc-addr`).
    pub plain: Option<TcpListener>,
    /// gRPC over TLS (`--grpc-tls-addr`), with the HTTPS API's certificate.
    pub tls: Option<(TcpListener, plexus_runtime::tls::TlsServer)>,
}

/// Serves ADS on `listeners` until `shutdown` is cancelled; open streams are then ended.
pub async fn serve(
    listeners: XdsListeners,
    config: XdsConfig,
    shutdown: CancellationToken,
) -> Result<(), XdsError> {
    let tasks = TaskTracker::new();
    let status = Arc::new(ads::StatusBook::new(&config.node));
    tasks.spawn({
        let (status, client, stop) = (
            Arc::clone(&status),
            config.control.clone(),
            shutdown.clone(),
        );
        async move { status.report(client, stop).await }
    });
    let registry = Arc::new(ads::Registry::new(
        config.control.clone(),
        config.resolver.clone(),
        tasks.clone(),
        shutdown.clone(),
        status,
    ));
    let service = AggregatedDiscoveryServiceServer::new(ads::Ads::new(registry))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming::accept_all(
        listeners.plain,
        listeners.tls,
        config.limits,
        &tasks,
        shutdown.clone(),
    ));
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(plexus_runtime::connections::MAX_CONCURRENT_STREAMS))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .map_err(XdsError::Serve);
    tasks.close();
    tasks.wait().await;
    served
}
