//! Fault injection (`service-defaults` `FaultInjection`): delay and/or abort a share of the
//! requests, optionally only those carrying a header.
//!
//! [`decide`] is the pure decision (random draws in); the layer applies it to requests with a
//! [`Fault`] (set by the route layer), counting each fault by kind.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use plexus_api::config_entry::chain::FaultPolicy;
use tower::{Layer, Service};

use super::metrics::Observe;
use super::stack::{AnswerFuture, HttpService, fail, take};
use super::{Body, HttpError, Reason};

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    /// Wait this long before going on.
    pub delay: Option<Duration>,
    /// Answer with this status instead of calling the upstream.
    pub abort: Option<u16>,
}

/// Decides for one request. `header` looks a request header up by lowercase name; the draws
/// are uniform in `[0, 100)`.
pub fn decide<'a>(
    policy: &FaultPolicy,
    header: impl Fn(&str) -> Option<&'a str>,
    delay_draw: f64,
    abort_draw: f64,
) -> FaultDecision {
    if let Some((name, value)) = &policy.header {
        match (header(name), value) {
            (None, _) => return FaultDecision::default(),
            (Some(got), Some(want)) if got != want => return FaultDecision::default(),
            _ => {}
        }
    }
    FaultDecision {
        delay: policy
            .delay
            .filter(|(_, pct)| delay_draw < *pct)
            .map(|(d, _)| d.0),
        abort: policy
            .abort
            .filter(|(_, pct)| abort_draw < *pct)
            .map(|(s, _)| s),
    }
}

/// The upstream's fault policy (set by the route layer when there is one).
#[derive(Debug, Clone)]
pub(crate) struct Fault(pub Arc<FaultPolicy>);

/// Adds [`Faults`].
#[derive(Debug, Clone)]
pub(crate) struct FaultLayer {
    observe: Observe,
}

impl FaultLayer {
    /// Faults counted in `observe`'s metrics.
    pub(crate) fn new(observe: Observe) -> Self {
        Self { observe }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Faults<S>;
    fn layer(&self, inner: S) -> Faults<S> {
        Faults {
            inner,
            observe: self.observe.clone(),
        }
    }
}

/// Delays and/or aborts a request with a [`Fault`] as its draws decide.
#[derive(Debug, Clone)]
pub(crate) struct Faults<S> {
    inner: S,
    observe: Observe,
}

impl<S: HttpService> Service<Request<Body>> for Faults<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        let Some(Fault(policy)) = request.extensions_mut().remove::<Fault>() else {
            return self.inner.call(request);
        };
        let headers = request.headers();
        let decision = decide(
            &policy,
            |name| headers.get(name).and_then(|value| value.to_str().ok()),
            rand::random::<f64>() * 100.0,
            rand::random::<f64>() * 100.0,
        );
        let abort = decision.abort.map(|status| {
            self.observe.fault("abort");
            HttpError::new(Reason::FaultInjected(status))
        });
        let Some(delay) = decision.delay else {
            return match abort {
                Some(error) => fail(error),
                None => self.inner.call(request),
            };
        };
        self.observe.fault("delay");
        let mut inner = take(&mut self.inner);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            match abort {
                Some(error) => Err(error),
                None => inner.call(request).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use plexus_api::GoDuration;
    use proptest::prelude::*;

    use super::*;

    fn policy(header: Option<(&str, Option<&str>)>) -> FaultPolicy {
        FaultPolicy {
            delay: Some((GoDuration(Duration::from_millis(100)), 25.0)),
            abort: Some((503, 50.0)),
            header: header.map(|(n, v)| (n.to_owned(), v.map(str::to_owned))),
        }
    }

    #[test]
    fn header_gates_faults() {
        let p = policy(Some(("x-chaos", Some("on"))));
        assert_eq!(decide(&p, |_| None, 0.0, 0.0), FaultDecision::default());
        assert_eq!(
            decide(&p, |_| Some("off"), 0.0, 0.0),
            FaultDecision::default()
        );
        let d = decide(&p, |n| (n == "x-chaos").then_some("on"), 0.0, 0.0);
        assert_eq!(d.abort, Some(503));
        assert_eq!(d.delay, Some(Duration::from_millis(100)));
    }

    proptest! {
        #[test]
        fn abort_rate_matches_percent(draws in proptest::collection::vec(0.0f64..100.0, 1..50)) {
            let p = policy(None);
            for d in draws {
                let dec = decide(&p, |_| None, d, d);
                prop_assert_eq!(dec.abort.is_some(), d < 50.0);
                prop_assert_eq!(dec.delay.is_some(), d < 25.0);
            }
        }
    }

    #[test]
    fn evenly_spread_draws_give_the_configured_share() {
        let p = policy(None);
        let n = 10_000;
        let aborted = (0..n)
            .filter(|i| {
                decide(&p, |_| None, 99.0, f64::from(*i) * 100.0 / f64::from(n))
                    .abort
                    .is_some()
            })
            .count();
        assert_eq!(aborted, 5000);
    }
}
