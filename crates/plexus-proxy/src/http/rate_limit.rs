//! Per-route local rate limits (`RateLimits.InstanceLevel.Routes`): each path criterion has its
//! own token bucket. The first route limit whose path matches the request replaces the
//! service-wide bucket for that request; a request no route limit matches takes from the
//! service-wide bucket (if any).

use std::sync::Mutex;
use std::time::Instant;

use plexus_api::config_entry::chain::{PathMatch, RouteRateLimit, TokenBucketPolicy};
use regex::Regex;

use crate::resilience::rate::TokenBucket;
use plexus_runtime::lock::lock;

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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
