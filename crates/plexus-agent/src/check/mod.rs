//! Health checks: one runner task per check on this node, started, restarted and stopped by the
//! [`Supervisor`] as the catalog changes, each reporting through [`Catalog::update_check`].
//!
//! - [`http`], [`tcp`], [`grpc`]: probes run at once, then every `interval`, each run bounded by
//!   `timeout` (default 10s).
//! - [`ttl`]: critical ("TTL expired") unless `/v1/agent/check/pass|warn|fail` came within the TTL.
//! - [`alias`]: mirrors another service on this node, recomputed on every catalog change.
//! - [`critical`]: `deregister_critical_service_after` bookkeeping.

pub(crate) mod alias;
pub(crate) mod critical;
pub(crate) mod grpc;
pub(crate) mod http;
mod supervisor;
pub(crate) mod tcp;
pub(crate) mod ttl;

use std::sync::Arc;
use std::time::Duration;

use plexus_api::{Catalog, CatalogError, CheckStatus, CheckType, HealthCheck};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

pub(crate) use supervisor::Supervisor;

use crate::service::truncate_output;
use ttl::TtlTimers;

/// Timeout of one probe run unless the check sets one (Consul's default).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of a probe check without one (the validator requires one; this is a safety net).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest interval run, so a zero can never spin (the validator enforces Consul's limits).
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// New status.
    pub status: CheckStatus,
    /// New output.
    pub output: String,
}

impl Outcome {
    pub(crate) fn new(status: CheckStatus, output: impl Into<String>) -> Self {
        Self {
            status,
            output: output.into(),
        }
    }

    pub(crate) fn critical(output: impl Into<String>) -> Self {
        Self::new(CheckStatus::Critical, output)
    }
}

/// Writes a check's outcomes to the catalog.
#[derive(Clone)]
pub(crate) struct Reporter {
    catalog: Arc<dyn Catalog>,
    node: String,
    check_id: String,
}

impl Reporter {
    pub(crate) fn new(catalog: Arc<dyn Catalog>, node: &str, check_id: &str) -> Self {
        Self {
            catalog,
            node: node.to_owned(),
            check_id: check_id.to_owned(),
        }
    }

    /// Writes the outcome (the catalog ignores unchanged ones). Failures are logged.
    pub(crate) async fn report(&self, outcome: &Outcome) {
        let output = truncate_output(&outcome.output);
        let result = self
            .catalog
            .update_check(&self.node, &self.check_id, outcome.status, output)
            .await;
        match result {
            Ok(_) => {}
            // Removed while running: the supervisor is about to stop this runner.
            Err(CatalogError::NotFound { .. }) => {
                tracing::debug!(check_id = %self.check_id, "check gone before its result was written");
            }
            Err(error) => {
                tracing::warn!(%error, check_id = %self.check_id, "check result not written");
            }
        }
    }
}

/// What a runner needs besides its check.
#[derive(Clone)]
pub(crate) struct RunnerContext {
    pub catalog: Arc<dyn Catalog>,
    pub node: String,
    pub ttl: Arc<TtlTimers>,
}

/// Runs one check until `token` is cancelled.
pub(crate) async fn run(check: HealthCheck, ctx: RunnerContext, token: CancellationToken) {
    let reporter = Reporter::new(ctx.catalog.clone(), &ctx.node, &check.check_id);
    let def = &check.definition;
    let timeout = def.timeout.map_or(DEFAULT_TIMEOUT, |t| t.get());
    let probe = match check.check_type {
        Some(CheckType::Http) => Probe::Http(Box::new(http::HttpProbe::new(def, timeout))),
        Some(CheckType::Tcp) => Probe::Tcp(tcp::TcpProbe::new(&def.tcp)),
        Some(CheckType::Grpc) => Probe::Grpc(grpc::GrpcProbe::new(def, timeout)),
        Some(CheckType::Ttl) => {
            let ttl = def.ttl.map_or(DEFAULT_TIMEOUT, |t| t.get());
            let updates = ctx.ttl.subscribe(&check.check_id);
            return ttl::run(ttl, updates, reporter, token).await;
        }
        Some(CheckType::Alias) => {
            let aliased = def.alias_service.clone();
            return alias::run(&check.check_id, &aliased, &ctx, reporter, token).await;
        }
        None => {
            tracing::debug!(check_id = %check.check_id, "check has no type; not run");
            return;
        }
    };
    let interval = def
        .interval
        .map_or(DEFAULT_INTERVAL, |i| i.get())
        .max(MIN_INTERVAL);
    run_probe(probe, interval, timeout, reporter, token).await;
}

/// A check that actively probes a target.
enum Probe {
    Http(Box<http::HttpProbe>),
    Tcp(tcp::TcpProbe),
    Grpc(grpc::GrpcProbe),
}

impl Probe {
    async fn probe(&self) -> Outcome {
        match self {
            Probe::Http(p) => p.probe().await,
            Probe::Tcp(p) => p.probe().await,
            Probe::Grpc(p) => p.probe().await,
        }
    }

    fn target(&self) -> String {
        match self {
            Probe::Http(p) => p.target(),
            Probe::Tcp(p) => p.target(),
            Probe::Grpc(p) => p.target(),
        }
    }
}

/// Probes at once, then every `interval` (delayed, never bursting), each run bounded by `timeout`.
async fn run_probe(
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    reporter: Reporter,
    token: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let run = tokio::time::timeout(timeout, probe.probe());
        let outcome = tokio::select! {
            _ = token.cancelled() => return,
            outcome = run => outcome.unwrap_or_else(|_| {
                Outcome::critical(format!(
                    "{}: timed out after {}",
                    probe.target(),
                    plexus_api::GoDuration(timeout)
                ))
            }),
        };
        reporter.report(&outcome).await;
    }
}

#[cfg(test)]
mod tests;
