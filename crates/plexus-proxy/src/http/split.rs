//! Split: a weighted pick among the route's targets (a subset of this or another service), and
//! the request's hash key for the target's consistent-hash load balancer.
//!
//! [`pick`] is the pure decision (weights and a uniform draw in, an index out). The layer reads
//! the route's [`Splits`] (set by the route layer) and names the pick for the balance layer
//! ([`Selected`]); a request without splits goes to the destination itself, unfiltered.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use plexus_api::config_entry::chain::{ChainTarget, DiscoveryChain};
use tower::{Layer, Service};

use super::Origin;
use super::balance::Selected;
use super::headers::{Changes, SplitHeaders};
use super::stack::{AnswerFuture, HttpService};
use super::{Body, HttpError};
use crate::balance::{HashInput, request_hash};

/// The index of the weight picked with probability proportional to it; `draw` is uniform in
/// `[0, 1)`. `None` when `weights` is empty or every weight is 0.
pub(crate) fn pick<I>(weights: I, draw: f64) -> Option<usize>
where
    I: IntoIterator<Item = f64>,
    I::IntoIter: Clone,
{
    let weights = weights.into_iter().map(|w| w.max(0.0));
    let total: f64 = weights.clone().sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = draw.clamp(0.0, 1.0) * total;
    let mut last = None;
    for (i, weight) in weights.enumerate().filter(|(_, w)| *w > 0.0) {
        if point < weight {
            return Some(i);
        }
        point -= weight;
        last = Some(i);
    }
    last
}

/// One of a route's weighted targets.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    /// Its share.
    pub weight: f64,
    /// `None` for a target id the chain does not define (the destination is used then).
    pub target: Option<Arc<ChainTarget>>,
    /// The split's header changes.
    pub headers: Option<Arc<Changes>>,
}

/// A route's weighted targets, resolved against its chain (set by the route layer).
#[derive(Debug, Clone)]
pub(crate) struct Splits {
    /// The targets.
    pub choices: Arc<[Choice]>,
    /// The chain, for the targets' failover lists.
    pub chain: Arc<DiscoveryChain>,
}

/// Adds [`Split`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SplitLayer;

impl<S> Layer<S> for SplitLayer {
    type Service = Split<S>;
    fn layer(&self, inner: S) -> Split<S> {
        Split { inner }
    }
}

/// Picks the target of a request with [`Splits`].
#[derive(Debug, Clone)]
pub(crate) struct Split<S> {
    inner: S,
}

impl<S: HttpService> Service<Request<Body>> for Split<S> {
    type Response = http::Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        if let Some(splits) = request.extensions_mut().remove::<Splits>() {
            let picked = pick(
                splits.choices.iter().map(|choice| choice.weight),
                rand::random::<f64>(),
            )
            .and_then(|i| splits.choices.get(i));
            if let Some(headers) = picked.and_then(|choice| choice.headers.clone()) {
                request.extensions_mut().insert(SplitHeaders(headers));
            }
            if let Some(target) = picked.and_then(|choice| choice.target.clone()) {
                let source = request.extensions().get::<Origin>().and_then(|o| o.client);
                let hash = request_hash(
                    &target.load_balancer,
                    &HashInput {
                        headers: request.headers(),
                        query: request.uri().query(),
                        source,
                    },
                );
                request.extensions_mut().insert(Selected {
                    target,
                    chain: splits.chain,
                    hash,
                });
            }
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn edges() {
        let w = [90.0, 0.0, 10.0];
        assert_eq!(pick(w, 0.0), Some(0));
        assert_eq!(pick(w, 0.8999), Some(0));
        assert_eq!(pick(w, 0.9), Some(2));
        assert_eq!(pick(w, 1.0), Some(2));
        assert_eq!(pick([0.0], 0.5), None);
        assert_eq!(pick([], 0.5), None);
        assert_eq!(pick([-5.0, 1.0], 0.0), Some(1));
    }

    proptest! {
        #[test]
        fn splits_converge_to_weights(raw in proptest::collection::vec(0u32..100, 1..6)) {
            prop_assume!(raw.iter().any(|w| *w > 0));
            let total: u32 = raw.iter().sum();
            let weights: Vec<f64> = raw.iter().map(|w| f64::from(*w) * 100.0 / f64::from(total)).collect();
            // Evenly spaced draws: each target's share is its weight within one step.
            let n = 10_000u32;
            let mut counts = vec![0u32; weights.len()];
            for i in 0..n {
                let picked = pick(weights.iter().copied(), (f64::from(i) + 0.5) / f64::from(n)).unwrap();
                counts[picked] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                let share = f64::from(counts[i]) * 100.0 / f64::from(n);
                prop_assert!((share - w).abs() <= 0.02 + 1e-9, "target {} share {} weight {}", i, share, w);
            }
        }
    }
}
