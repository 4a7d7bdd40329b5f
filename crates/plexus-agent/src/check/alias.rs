//! Alias checks: the worst status of another service's checks on this node (and of the node's
//! own checks, as Consul does), recomputed on every catalog change. No polling.

use plexus_api::model::aggregate;
use plexus_api::{CheckStatus, HealthCheck};
use tokio_util::sync::CancellationToken;

use super::{Outcome, Reporter, RunnerContext};

/// The alias check `own_id`'s outcome for the aliased instance `service_id`.
///
/// Absent service → critical; present with no checks → passing; else the worst status among
/// its checks and the node's checks (excluding the alias check itself).
pub(crate) fn outcome(
    service_id: &str,
    own_id: &str,
    service_exists: bool,
    checks: &[HealthCheck],
) -> Outcome {
    if !service_exists {
        return Outcome::critical(format!("service {service_id} not registered"));
    }
    let relevant: Vec<&HealthCheck> = checks
        .iter()
        .filter(|c| c.check_id != own_id)
        .filter(|c| c.service_id == service_id || c.service_id.is_empty())
        .collect();
    if relevant.is_empty() {
        return Outcome::new(CheckStatus::Passing, "No checks found.");
    }
    let status = aggregate(relevant.iter().map(|c| c.status));
    let output = match status {
        CheckStatus::Passing => "All checks passing.".to_owned(),
        _ => {
            let failing: Vec<&str> = relevant
                .iter()
                .filter(|c| c.status == status)
                .map(|c| c.check_id.as_str())
                .collect();
            format!("{status}: {}", failing.join(", "))
        }
    };
    Outcome::new(status, output)
}

/// Recomputes on every catalog index change until `token` is cancelled.
pub(crate) async fn run(
    own_id: &str,
    service_id: &str,
    ctx: &RunnerContext,
    reporter: Reporter,
    token: CancellationToken,
) {
    let mut index = ctx.catalog.index_watch();
    loop {
        index.borrow_and_update();
        let services = ctx.catalog.node_services(&ctx.node).await;
        let checks = ctx.catalog.node_checks(&ctx.node).await;
        match (services, checks) {
            (Ok(services), Ok(checks)) => {
                let exists = services.value.iter().any(|s| s.id == service_id);
                reporter
                    .report(&outcome(service_id, own_id, exists, &checks.value))
                    .await;
            }
            (Err(error), _) | (_, Err(error)) => {
                // Retried on the next catalog change.
                tracing::warn!(%error, check_id = own_id, "alias check could not read the catalog");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            changed = index.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
