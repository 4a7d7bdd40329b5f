//! The policy state of one HTTP upstream, built from its compiled discovery chain: route table,
//! retry budgets (one per route), bulkhead, rate limits and fault policy. Rebuilt
//! whenever the chain changes (a new chain starts with fresh counters).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use plexus_api::config_entry::chain::{DiscoveryChain, FaultPolicy};

use super::bulkhead::Bulkhead;
use super::route_limit::RateLimits;
use crate::resilience::retry::RetryBudget;
use crate::route::{RequestView, RouteTable};

/// Live policy of one upstream.
#[derive(Debug)]
pub(crate) struct Policy {
    /// The chain it was built from.
    pub chain: Arc<DiscoveryChain>,
    /// Routes, first match wins.
    pub routes: RouteTable,
    /// One retry budget per route (same order as the chain's routes).
    pub budgets: Vec<Mutex<RetryBudget>>,
    /// `max_concurrent_requests` with its `max_pending_requests` queue.
    pub bulkhead: Bulkhead,
    /// Per-route and whole-service local rate limits.
    pub rate: RateLimits,
    /// Fault injection.
    pub fault: Option<FaultPolicy>,
}

impl Policy {
    /// Builds the state for `chain`; `None` (logged by the caller) if a route regex does not
    /// compile, which the control plane's validation should have refused.
    pub(crate) fn new(chain: Arc<DiscoveryChain>) -> Result<Self, regex::Error> {
        let routes = RouteTable::new(&chain.routes)?;
        let budgets = chain
            .routes
            .iter()
            .map(|route| {
                Mutex::new(RetryBudget::new(
                    route.retry.budget_percent,
                    route.retry.budget_min_concurrency,
                ))
            })
            .collect();
        let policy = &chain.policy;
        Ok(Self {
            routes,
            budgets,
            bulkhead: Bulkhead::new(&policy.limits),
            rate: RateLimits::new(
                policy.rate_limit.as_ref(),
                &policy.route_rate_limits,
                Instant::now(),
            )?,
            fault: policy.fault.clone(),
            chain: Arc::clone(&chain),
        })
    }

    /// Takes a rate-limit token for a request to `path` (true when no limit applies).
    pub(crate) fn admit(&self, path: &str) -> bool {
        self.rate.admit(path, Instant::now())
    }
}

/// An HTTP request as the route matcher sees it.
pub(crate) struct View<'a, B>(pub &'a http::Request<B>);

impl<B> RequestView for View<'_, B> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }
    fn path(&self) -> &str {
        self.0.uri().path()
    }
    fn query(&self) -> Option<&str> {
        self.0.uri().query()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.0
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    }
}
