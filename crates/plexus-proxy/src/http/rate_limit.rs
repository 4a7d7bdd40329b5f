//! Local rate limits (`RateLimits.InstanceLevel`): token buckets, `burst` tokens at most,
//! refilled at `requests_per_second`; a request takes one token or is refused (429
//! `rate_limited`). Each per-route limit (`Routes`, by path) has its own bucket: the first one
//! whose path matches the request replaces the service-wide bucket for that request; a request
//! no route limit matches takes from the service-wide bucket (if any).
//!
//! [`TokenBucket`] is the pure decision (time passed in); [`RateLimits`] is one upstream's
//! buckets; the layer applies them to requests with a [`RateLimit`] (set by the route layer).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use plexus_api::config_entry::chain::{PathMatch, RouteRateLimit, TokenBucketPolicy};
use regex::Regex;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::stack::{AnswerFuture, HttpService, fail};
use super::{Body, HttpError, Reason};
use plexus_runtime::lock::lock;

/// A token bucket. Starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket per `policy`, as of `now`.
    pub fn new(policy: &TokenBucketPolicy, now: Instant) -> Self {
        let burst = f64::from(policy.burst.max(1));
        Self {
            rate: policy.requests_per_second.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token at `now` if one is available.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens available at `now`.
    #[cfg(test)]
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let dt = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
            self.last = now;
        }
    }
}

/// A compiled path criterion.
#[derive(Debug)]
enum PathTest {
    Exact(String),
    Prefix(String),
    /// Anchored to the whole path.
    Regex(Regex),
}

impl PathTest {
    fn new(path: &PathMatch) -> Result<Self, regex::Error> {
        Ok(match path {
            PathMatch::Exact(p) => Self::Exact(p.clone()),
            PathMatch::Prefix(p) => Self::Prefix(p.clone()),
            PathMatch::Regex(r) => Self::Regex(Regex::new(&format!("^(?:{r})$"))?),
        })
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(path),
        }
    }
}

/// The local rate limits of one upstream: per-route buckets, then the service-wide one.
#[derive(Debug)]
pub(crate) struct RateLimits {
    routes: Vec<(PathTest, Mutex<TokenBucket>)>,
    service: Option<Mutex<TokenBucket>>,
}

impl RateLimits {
    /// Full buckets as of `now`; fails on a regex the control plane should have refused.
    pub(crate) fn new(
        service: Option<&TokenBucketPolicy>,
        routes: &[RouteRateLimit],
        now: Instant,
    ) -> Result<Self, regex::Error> {
        Ok(Self {
            routes: routes
                .iter()
                .map(|limit| {
                    Ok((
                        PathTest::new(&limit.path)?,
                        Mutex::new(TokenBucket::new(&limit.bucket, now)),
                    ))
                })
                .collect::<Result<_, regex::Error>>()?,
            service: service.map(|bucket| Mutex::new(TokenBucket::new(bucket, now))),
        })
    }

    /// True when there is no limit at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.service.is_none()
    }

    /// Takes a token for a request to `path` at `now` (true when no limit applies).
    pub(crate) fn admit(&self, path: &str, now: Instant) -> bool {
        let bucket = self
            .routes
            .iter()
            .find(|(test, _)| test.matches(path))
            .map(|(_, bucket)| bucket)
            .or(self.service.as_ref());
        bucket.is_none_or(|bucket| lock(bucket).try_acquire(now))
    }
}

/// The upstream's rate limits (set by the route layer when the policy has any).
#[derive(Debug, Clone)]
pub(crate) struct RateLimit(pub Arc<RateLimits>);

/// Adds [`Limited`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RateLimitLayer;

impl<S> Layer<S> for RateLimitLayer {
    type Service = Limited<S>;
    fn layer(&self, inner: S) -> Limited<S> {
        Limited { inner }
    }
}

/// Takes a token for each request with a [`RateLimit`], or refuses it (429).
#[derive(Debug, Clone)]
pub(crate) struct Limited<S> {
    inner: S,
}

impl<S: HttpService> Service<Request<Body>> for Limited<S> {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> AnswerFuture {
        match request.extensions_mut().remove::<RateLimit>() {
            Some(RateLimit(limits)) if !limits.admit(request.uri().path(), Instant::now()) => {
                fail(HttpError::new(Reason::RateLimited))
            }
            _ => self.inner.call(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn token_bucket(rps: f64, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket::new(
            &TokenBucketPolicy {
                requests_per_second: rps,
                burst,
            },
            now,
        )
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = token_bucket(10.0, 5, t0);
        assert_eq!((0..20).filter(|_| b.try_acquire(t0)).count(), 5);
        // 1 s later: 10 tokens accrued, capped at 5.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.try_acquire(t1)).count(), 5);
        // 100 ms later: one token.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| b.try_acquire(t2)).count(), 1);
    }

    proptest! {
        #[test]
        fn never_exceeds_burst_or_rate(
            rps in 0.1f64..1000.0, burst in 1u32..100,
            steps in proptest::collection::vec((0u64..200, 0u32..50), 1..100),
        ) {
            let t0 = Instant::now();
            let mut b = token_bucket(rps, burst, t0);
            let mut elapsed_ms = 0u64;
            let mut granted = 0u64;
            for (dt, tries) in steps {
                elapsed_ms += dt;
                let now = t0 + Duration::from_millis(elapsed_ms);
                prop_assert!(b.available(now) <= f64::from(burst) + 1e-9);
                granted += (0..tries).filter(|_| b.try_acquire(now)).count() as u64;
                let max = f64::from(burst) + rps * elapsed_ms as f64 / 1000.0;
                prop_assert!(granted as f64 <= max + 1e-6, "granted {} > {}", granted, max);
            }
        }
    }

    fn bucket(rps: f64, burst: u32) -> TokenBucketPolicy {
        TokenBucketPolicy {
            requests_per_second: rps,
            burst,
        }
    }

    #[test]
    fn a_route_bucket_only_affects_matching_paths() {
        let now = Instant::now();
        let limits = RateLimits::new(
            None,
            &[RouteRateLimit {
                path: PathMatch::Prefix("/limited".into()),
                bucket: bucket(1.0, 2),
            }],
            now,
        )
        .unwrap();
        assert_eq!(
            (0..10).filter(|_| limits.admit("/limited/a", now)).count(),
            2
        );
        assert!((0..100).all(|_| limits.admit("/other", now)));
    }

    #[test]
    fn first_matching_route_replaces_the_service_bucket() {
        let now = Instant::now();
        let limits = RateLimits::new(
            Some(&bucket(1.0, 3)),
            &[
                RouteRateLimit {
                    path: PathMatch::Exact("/a".into()),
                    bucket: bucket(1.0, 1),
                },
                RouteRateLimit {
                    path: PathMatch::Regex("/a|/b".into()),
                    bucket: bucket(1.0, 5),
                },
            ],
            now,
        )
        .unwrap();
        assert_eq!((0..10).filter(|_| limits.admit("/a", now)).count(), 1);
        assert_eq!((0..10).filter(|_| limits.admit("/b", now)).count(), 5);
        // The regex is anchored: "/bc" is not "/b".
        assert_eq!((0..10).filter(|_| limits.admit("/bc", now)).count(), 3);
    }

    proptest! {
        #[test]
        fn unmatched_paths_never_take_from_a_route_bucket(
            paths in proptest::collection::vec("/(x|y)[a-z]{0,3}", 1..100),
        ) {
            let now = Instant::now();
            let limits = RateLimits::new(
                None,
                &[RouteRateLimit { path: PathMatch::Prefix("/x".into()), bucket: bucket(0.0, 1) }],
                now,
            )
            .unwrap();
            let mut x_admitted = 0;
            for path in &paths {
                let admitted = limits.admit(path, now);
                if path.starts_with("/x") {
                    x_admitted += usize::from(admitted);
                } else {
                    prop_assert!(admitted);
                }
            }
            prop_assert!(x_admitted <= 1);
        }
    }
}
