//! The CA's metrics, served as Prometheus text at `GET /v1/connect/ca/metrics`.
//!
//! | metric | labels |
//! | --- | --- |
//! | `plexus_ca_leaves_signed_total` | |
//! | `plexus_ca_sign_refusals_total` | `reason` (the policy's reason, `rate_limited`, `bad_request`, `not_found`) |
//! | `plexus_ca_rotations_total` | |

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Counters of the CA.
#[derive(Debug, Clone)]
pub struct CaMetrics {
    /// Leaves signed.
    pub signed: Counter,
    refusals: Family<ReasonLabels, Counter>,
    /// Root rotations.
    pub rotations: Counter,
    registry: Arc<Registry>,
}

impl Default for CaMetrics {
    fn default() -> Self {
        let signed = Counter::default();
        let refusals = Family::<ReasonLabels, Counter>::default();
        let rotations = Counter::default();
        let mut registry = Registry::default();
        let sub = registry.sub_registry_with_prefix("plexus_ca");
        sub.register("leaves_signed", "Leaf certificates signed", signed.clone());
        sub.register(
            "sign_refusals",
            "Signing requests refused, by reason",
            refusals.clone(),
        );
        sub.register("rotations", "Root rotations", rotations.clone());
        Self {
            signed,
            refusals,
            rotations,
            registry: Arc::new(registry),
        }
    }
}

impl CaMetrics {
    /// Counts a refused signing request.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
