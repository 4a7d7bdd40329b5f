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
