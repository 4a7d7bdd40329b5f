//! `GET /v1/internal/mesh-gateways[?passing]`: every instance of kind `mesh-gateway` with its
//! node and checks (`[ServiceEntry]`, as `/v1/health/service`), a blocking query. A sidecar
//! reads it with `?dc=<dc>` (forwarded there) to find where another datacenter's services are
//! reached: each gateway's `wan` tagged address. Filtered by `service:read` on each gateway.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use plexus_api::{CheckStatus, ServiceKind};
use plexus_runtime::acl::{Authz, mark_filtered};
use plexus_runtime::http::{ApiError, BlockingQuery, QueryParams, indexed_json};

use crate::api::catalog_error;
use crate::catalog::{HealthFilter, StoreCatalog, Topic};

/// How often a server federating through mesh gateways reads its own datacenter's gateways.
pub const OWN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// This datacenter's passing mesh gateways' WAN addresses.
pub async fn own_wan_addresses(
    catalog: &StoreCatalog,
) -> Result<Vec<std::net::SocketAddr>, plexus_api::CatalogError> {
    let names = catalog.service_names().await?;
    let mut addrs = Vec::new();
    for name in names.value.keys() {
        let rows = catalog
            .service_health(
                name,
                &HealthFilter {
                    tag: None,
                    passing: true,
                },
            )
            .await?;
        addrs.extend(
            rows.value
                .iter()
                .filter(|entry| entry.service.kind == ServiceKind::MeshGateway)
                .filter_map(plexus_api::ServiceEntry::wan_address),
        );
    }
    Ok(addrs)
}

/// Follows this datacenter's mesh gateways into `federation` (told to other datacenters in
/// the exchange) every [`OWN_EVERY`] until `stop`.
pub async fn follow_own(
    federation: super::Shared,
    catalog: Arc<StoreCatalog>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match own_wan_addresses(&catalog).await {
            Ok(addrs) => federation.set_own_gateways(addrs),
            Err(error) => {
                tracing::debug!(error = %plexus_runtime::ErrorChain(&error), "cannot read this datacenter's mesh gateways");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(OWN_EVERY) => {}
        }
    }
}

/// The endpoint's path.
pub const PATH: &str = "/v1/internal/mesh-gateways";

/// The route.
pub fn router(catalog: Arc<StoreCatalog>) -> Router {
    Router::new()
        .route(PATH, get(mesh_gateways))
        .with_state(catalog)
}

async fn mesh_gateways(
    State(catalog): State<Arc<StoreCatalog>>,
    authz: Authz,
    query: BlockingQuery,
    params: QueryParams,
) -> Result<Response, ApiError> {
    if query.index.is_some_and(|index| index > 0) {
        let (services, services_index) = catalog
            .topic_watch(Topic::Services)
            .await
            .map_err(catalog_error)?;
        let (checks, checks_index) = catalog
            .topic_watch(Topic::Checks)
            .await
            .map_err(catalog_error)?;
        tokio::select! {
            () = query.block_until(services, |_| services_index()) => {}
            () = query.block_until(checks, |_| checks_index()) => {}
        }
    }
    let names = catalog.service_names().await.map_err(catalog_error)?;
    let passing = params.flag("passing");
    let mut entries = Vec::new();
    let mut filtered = false;
    for name in names.value.keys() {
        let rows = catalog
            .service_health(
                name,
                &HealthFilter {
                    tag: None,
                    passing: false,
                },
            )
            .await
            .map_err(catalog_error)?;
        for entry in rows.value {
            if entry.service.kind != ServiceKind::MeshGateway {
                continue;
            }
            if !authz.can_read_service(name) {
                filtered = true;
                continue;
            }
            if passing && entry.aggregated_status() != CheckStatus::Passing {
                continue;
            }
            entries.push(entry);
        }
    }
    let mut response = indexed_json(names.index, &entries);
    mark_filtered(&mut response, filtered);
    Ok(response)
}
