//! `GET /v1/mesh/services`: one row per service (sidecars are counted on the service they front,
//! not listed): tags, instance count, health counts, how many instances have a sidecar. A
//! blocking query on the catalog index, so the services page follows changes live.
//!
//! ACLs: the caller says which nodes it may read (`node:read`, as the catalog's health reads
//! ask per instance); instances on other nodes are not counted, and a service none of whose
//! instances is visible is not listed.

use std::collections::BTreeSet;

use plexus_api::model::aggregate;
use plexus_api::{CatalogError, CheckStatus, ServiceKind};
use serde::Serialize;

use crate::catalog::{HealthFilter, StoreCatalog};

/// A service as the services page lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSummary {
    /// Name.
    pub name: String,
    /// Every tag of every instance, sorted, once each.
    pub tags: Vec<String>,
    /// Instances.
    pub instances: usize,
    /// Instances whose checks all pass.
    pub passing: usize,
    /// Instances with a warning (and no critical check).
    pub warning: usize,
    /// Instances with a critical check (or in maintenance).
    pub critical: usize,
    /// Instances with a sidecar registered in front of them.
    pub with_sidecar: usize,
    /// The instances are event-mesh apps.
    pub event_app: bool,
}

/// What [`services`] found: the catalog index, the rows, and whether instances on nodes the
/// caller may not read were left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summaries {
    /// The catalog index read.
    pub index: u64,
    /// One row per service.
    pub rows: Vec<ServiceSummary>,
    /// Some instance was left out because `node_visible` refused its node.
    pub filtered: bool,
}

/// Every service but sidecars, by name, counting only instances on nodes for which
/// `node_visible` holds.
pub async fn services(
    catalog: &StoreCatalog,
    node_visible: impl Fn(&str) -> bool,
) -> Result<Summaries, CatalogError> {
    let names = catalog.service_names().await?;
    let mut rows = Vec::new();
    let mut filtered = false;
    for name in names.value.keys() {
        let mut entries = catalog
            .service_health(name, &HealthFilter::default())
            .await?
            .value;
        let before = entries.len();
        entries.retain(|e| node_visible(&e.node.node));
        filtered |= entries.len() != before;
        if entries
            .iter()
            .all(|e| e.service.kind == ServiceKind::ConnectProxy)
        {
            continue;
        }
        let proxied: BTreeSet<String> = catalog
            .connect_health(name, &HealthFilter::default())
            .await?
            .value
            .into_iter()
            .filter(|e| node_visible(&e.node.node))
            .filter_map(|e| e.service.proxy)
            .map(|p| p.destination_service_id)
            .collect();
        let mut row = ServiceSummary {
            name: name.clone(),
            ..ServiceSummary::default()
        };
        let mut tags = BTreeSet::new();
        for entry in entries
            .iter()
            .filter(|e| e.service.kind != ServiceKind::ConnectProxy)
        {
            row.instances += 1;
            match aggregate(entry.checks.iter().map(|c| c.status)) {
                CheckStatus::Passing => row.passing += 1,
                CheckStatus::Warning => row.warning += 1,
                CheckStatus::Critical | CheckStatus::Maintenance => row.critical += 1,
            }
            if proxied.contains(&entry.service.id) {
                row.with_sidecar += 1;
            }
            if entry.service.meta.get("plexus-kind").map(String::as_str) == Some("event-app") {
                row.event_app = true;
            }
            tags.extend(entry.service.tags.iter().cloned());
        }
        row.tags = tags.into_iter().collect();
        rows.push(row);
    }
    Ok(Summaries {
        index: names.index,
        rows,
        filtered,
    })
}
