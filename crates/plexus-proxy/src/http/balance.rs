//! Balance: the candidate endpoints of one attempt, in the order to try them.
//!
//! The candidates are the selected target's (`targets.rs`: its service's healthy endpoints that
//! match its subset, minus those ejected, else its failover targets'); the order is the target's
//! load balancer's (`crate::balance::Balancer`: round robin, least request, peak EWMA, ring
//! hash, Maglev), with endpoints earlier attempts of the same request went to moved to the end
//! ([`untried_first`], Envoy's `previous_hosts` retry predicate). The endpoint pool below tries
//! them in that order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use plexus_api::config_entry::chain::{ChainTarget, DiscoveryChain, LbAlgorithm};
use tower::{Layer, Service};

use super::endpoint::Picked;
use super::stack::{AnswerFuture, HttpService, take};
use super::targets::Targets;
use super::{Body, HttpError, Reason};

/// The target a request goes to (set by the split layer; absent: the destination, unfiltered).
#[derive(Debug, Clone)]
pub(crate) struct Selected {
    /// The target.
    pub target: Arc<ChainTarget>,
    /// The chain holding its failover targets.
    pub chain: Arc<DiscoveryChain>,
    /// The request's key for `ring_hash` / `maglev`.
    pub hash: Option<u64>,
}

/// Endpoints earlier attempts of the request went to (set by the retry layer).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tried(pub Vec<SocketAddr>);

/// `order` with the endpoints in `tried` moved to the end (each part keeping its order), so a
/// retry goes to an endpoint not tried yet while there is one, and still has somewhere to go when
/// every endpoint was tried.
pub(crate) fn untried_first(mut order: Vec<SocketAddr>, tried: &[SocketAddr]) -> Vec<SocketAddr> {
    if !tried.is_empty() {
        order.sort_by_key(|addr| tried.contains(addr));
    }
    order
}

/// Adds [`Balance`].
#[derive(Clone)]
pub(crate) struct BalanceLayer {
    targets: Arc<Targets>,
    wait: Duration,
}

impl BalanceLayer {
    /// Balances over `targets`, waiting up to `wait` for a service's first endpoints.
    pub(crate) fn new(targets: Arc<Targets>, wait: Duration) -> Self {
        Self { targets, wait }
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            inner,
            targets: Arc::clone(&self.targets),
            wait: self.wait,
        }
    }
}

/// Orders a request's candidate endpoints ([`Picked`]); 503 `no_healthy_endpoints` when there
/// are none.
#[derive(Clone)]
pub(crate) struct Balance<S> {
    inner: S,
    targets: Arc<Targets>,
    wait: Duration,
}

impl<S: HttpService> Service<Request<Body>> for Balance<S> {
    type Response = http::Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let selected = request.extensions_mut().remove::<Selected>();
        let tried = request.extensions_mut().remove::<Tried>();
        let (targets, wait) = (Arc::clone(&self.targets), self.wait);
        let mut inner = take(&mut self.inner);
        Box::pin(async move {
            let target = selected.as_ref().map(|s| (&*s.target, &*s.chain));
            let candidates = targets
                .candidates(target, wait)
                .await
                .ok_or(HttpError::new(Reason::NoHealthyEndpoints))?;
            let hash = selected.as_ref().and_then(|s| s.hash);
            let service = candidates.service;
            let load_balancer = candidates.load_balancer;
            let order = service
                .balancer
                .order(&load_balancer, hash, candidates.addrs);
            let report = tried.is_some();
            let order = match tried {
                Some(tried) => untried_first(order, &tried.0),
                None => order,
            };
            let tracks_load = matches!(
                load_balancer.policy,
                LbAlgorithm::LeastRequest | LbAlgorithm::PeakEwma
            );
            request.extensions_mut().insert(Picked {
                service,
                order,
                tracks_load,
                report,
            });
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    proptest::proptest! {
        #[test]
        fn untried_endpoints_come_first_and_none_is_lost(
            ports in proptest::collection::vec(1u16..40, 0..12),
            tried_ports in proptest::collection::vec(1u16..40, 0..6),
        ) {
            let mut order: Vec<SocketAddr> = ports.iter().map(|p| addr(*p)).collect();
            order.dedup();
            let tried: Vec<SocketAddr> = tried_ports.iter().map(|p| addr(*p)).collect();
            let out = untried_first(order.clone(), &tried);
            // The same endpoints, untried ones first, each part in the balancer's order.
            let mut sorted_in = order.clone();
            let mut sorted_out = out.clone();
            sorted_in.sort();
            sorted_out.sort();
            proptest::prop_assert_eq!(sorted_in, sorted_out);
            let first_tried = out.iter().position(|a| tried.contains(a)).unwrap_or(out.len());
            proptest::prop_assert!(out[first_tried..].iter().all(|a| tried.contains(a)));
            let untried: Vec<_> = order.iter().filter(|a| !tried.contains(a)).copied().collect();
            proptest::prop_assert_eq!(&out[..first_tried], &untried[..]);
        }
    }
}
