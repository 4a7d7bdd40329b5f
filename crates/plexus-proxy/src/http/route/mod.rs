//! Route: the first route of the upstream's current policy that the request matches, and the
//! programming of the layers below for it (see [`Policy::program`]).
//!
//! [`table`] is the pure matching ([`table::RouteTable`], first match wins like Consul);
//! [`policy`] builds everything the layers need from a compiled discovery chain;
//! [`follow_chain`] swaps a new policy in whenever the chain changes. A request keeps the
//! policy it was matched against for its whole life. The route's name labels the request's
//! metrics: the edge reads it from the request's [`Report`](super::Report).

mod policy;
pub(crate) mod table;

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use tower::{Layer, Service};
use tracing::{info, warn};

pub(crate) use policy::{Policy, View};

use super::bulkhead::ConnectionBudget;
use super::stack::{AnswerFuture, HttpService};
use super::targets::Targets;
use super::{Body, HttpError, Origin};
use crate::discovery::ChainWatch;

/// Adds [`Route`].
#[derive(Clone)]
pub(crate) struct RouteLayer {
    policy: Arc<ArcSwapOption<Policy>>,
}

impl RouteLayer {
    /// Routes by the policy in `policy` (none until the control plane answered: every request
    /// goes straight to the destination).
    pub(crate) fn new(policy: Arc<ArcSwapOption<Policy>>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// Matches each request against the current policy and programs the layers below.
#[derive(Clone)]
pub(crate) struct Route<S> {
    inner: S,
    policy: Arc<ArcSwapOption<Policy>>,
}

impl<S: HttpService> Service<Request<Body>> for Route<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let label = self
            .policy
            .load()
            .as_ref()
            .and_then(|policy| policy.program(&mut request));
        if let Some(label) = label
            && let Some(origin) = request.extensions().get::<Origin>()
        {
            // One route per request: an ingress's request meets one outbound route layer.
            let _ = origin.report.route.set(label);
        }
        self.inner.call(request)
    }
}

/// Rebuilds the policy whenever the chain changes, until the chain's watch ends. A newer index
/// with the same chain keeps the policy in force (and its counters) and is only announced.
pub(crate) async fn follow_chain(
    mut chain: ChainWatch,
    policy: Arc<ArcSwapOption<Policy>>,
    targets: Arc<Targets>,
    connections: Arc<ConnectionBudget>,
    destination: Arc<str>,
) {
    loop {
        let current = chain.borrow_and_update().clone();
        if let Some(current) = current {
            let unchanged = policy
                .load()
                .as_deref()
                .is_some_and(|applied| *applied.chain == current.value);
            if unchanged {
                info!(upstream = %destination, revision = current.index, changed = false, "policy applied");
            } else {
                match Policy::new(Arc::new(current.value.clone())) {
                    Ok(built) => {
                        let routes = built.chain.routes.len();
                        targets.sync(&built.chain);
                        connections.set_max(built.chain.policy.limits.max_connections);
                        // In force before it is announced: "policy applied" means new requests
                        // see it.
                        policy.store(Some(Arc::new(built)));
                        info!(upstream = %destination, revision = current.index, routes, "policy applied");
                    }
                    Err(error) => {
                        warn!(%error, upstream = %destination, "cannot compile the chain's routes; keeping the previous policy");
                    }
                }
            }
        }
        if chain.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
