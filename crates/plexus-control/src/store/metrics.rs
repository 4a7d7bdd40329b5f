//! The store's counters, served as Prometheus text at `GET /v1/operator/store/metrics`.
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `plexus_store_errors_total` | `kind` (`damaged`, `backend`, `task`) | store operations that failed |
//! | `plexus_store_history_revisions` | | revisions kept in memory for resuming watches |
//! | `plexus_store_history_bytes` | | bytes of keys and values those revisions hold |
//! | `plexus_store_history_evicted_total` | | revisions dropped from the history to stay in bounds |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Counters and gauges of one store.
#[derive(Debug)]
pub struct StoreMetrics {
    errors: Family<KindLabels, Counter>,
    /// Revisions kept in the watch history.
    pub history_revisions: Gauge,
    /// Bytes held by the watch history.
    pub history_bytes: Gauge,
    /// Revisions evicted from the watch history.
    pub history_evicted: Counter,
    registry: Registry,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        let errors = Family::<KindLabels, Counter>::default();
        let history_revisions = Gauge::default();
        let history_bytes = Gauge::default();
        let history_evicted = Counter::default();
        let mut registry = Registry::default();
        let sub = registry.sub_registry_with_prefix("plexus_store");
        sub.register(
            "errors",
            "Store operations that failed, by kind",
            errors.clone(),
        );
        sub.register(
            "history_revisions",
            "Revisions kept in memory for resuming watches",
            history_revisions.clone(),
        );
        sub.register(
            "history_bytes",
            "Bytes of keys and values held by the watch history",
            history_bytes.clone(),
        );
        sub.register(
            "history_evicted",
            "Revisions dropped from the watch history to stay within its bounds",
            history_evicted.clone(),
        );
        Self {
            errors,
            history_revisions,
            history_bytes,
            history_evicted,
            registry,
        }
    }
}

impl StoreMetrics {
    /// Counts a failed operation.
    pub fn failed(&self, error: &StoreError) {
        self.errors
            .get_or_create(&KindLabels { kind: error.kind() })
            .inc();
    }

    /// Failed operations of one kind so far.
    pub fn errors(&self, kind: &'static str) -> u64 {
        self.errors.get_or_create(&KindLabels { kind }).get()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
