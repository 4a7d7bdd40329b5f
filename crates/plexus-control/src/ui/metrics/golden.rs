//! Golden metrics from sidecar samples: what one sidecar carried (cumulative counters and a
//! latency histogram, per direction and upstream) and, from two such readings, the rate, success
//! rate and p50/p99 latency over the time between them. Pure: property- and unit-tested.

use std::collections::BTreeMap;

use serde::Serialize;

use super::prom::Sample;

/// The traffic one sidecar counted in one direction (and, outbound, towards one upstream):
/// cumulative since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// HTTP requests answered.
    pub requests: f64,
    /// Of those, answered 5xx.
    pub errors: f64,
    /// TCP connections (every listener's, HTTP ones included).
    pub connections: f64,
    /// Latency histogram: cumulative count per upper bound (seconds), ascending.
    pub buckets: Vec<(f64, f64)>,
}

impl Traffic {
    /// Adds `other` (another sidecar's counts for the same thing).
    pub fn add(&mut self, other: &Traffic) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.connections += other.connections;
        let mut merged: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (le, count) in self.buckets.iter().chain(&other.buckets) {
            merged.entry(le.to_bits()).or_insert((*le, 0.0)).1 += count;
        }
        self.buckets = merged.into_values().collect();
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// What was counted between `earlier` and `self` (a reset counter counts from zero).
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        let delta = |now: f64, then: f64| if now >= then { now - then } else { now };
        let buckets = self
            .buckets
            .iter()
            .map(|(le, count)| {
                let then = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| l.to_bits() == le.to_bits())
                    .map_or(0.0, |(_, c)| *c);
                (*le, delta(*count, then))
            })
            .collect();
        Traffic {
            requests: delta(self.requests, earlier.requests),
            errors: delta(self.errors, earlier.errors),
            connections: delta(self.connections, earlier.connections),
            buckets,
        }
    }
}

/// What a sidecar's samples say: inbound traffic, and outbound traffic per upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarTraffic {
    /// Requests and connections that reached the local app.
    pub inbound: Traffic,
    /// Requests and connections the local app sent, by upstream service.
    pub outbound: BTreeMap<String, Traffic>,
}

/// Reads the traffic families out of a sidecar's samples.
pub fn sidecar_traffic(samples: &[Sample]) -> SidecarTraffic {
    let mut traffic = SidecarTraffic::default();
    for sample in samples {
        let Some(direction) = sample.label("direction") else {
            continue;
        };
        let slot = match (direction, sample.label("upstream")) {
            ("inbound", _) => &mut traffic.inbound,
            ("outbound", Some(upstream)) => {
                traffic.outbound.entry(upstream.to_owned()).or_default()
            }
            _ => continue,
        };
        match sample.name.as_str() {
            "plexus_proxy_http_requests_total" => {
                slot.requests += sample.value;
                if sample.label("class") == Some("5xx") {
                    slot.errors += sample.value;
                }
            }
            "plexus_proxy_connections_total" => slot.connections += sample.value,
            "plexus_proxy_http_request_duration_seconds_bucket" => {
                let le = match sample.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse::<f64>() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                slot.add(&Traffic {
                    buckets: vec![(le, sample.value)],
                    ..Traffic::default()
                });
            }
            _ => {}
        }
    }
    traffic
}

/// Rate, success and latency over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Golden {
    /// HTTP requests per second.
    pub request_rate: f64,
    /// New TCP connections per second.
    pub connection_rate: f64,
    /// Share of HTTP requests not answered 5xx (`None` without requests).
    pub success_rate: Option<f64>,
    /// Median latency, milliseconds (`None` without requests).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: Option<f64>,
    /// Requests counted since the sidecars started.
    pub requests_total: f64,
    /// Connections counted since the sidecars started.
    pub connections_total: f64,
}

/// Golden metrics of `window` (the traffic between two readings `seconds` apart), with `total`
/// (the later reading) for the totals.
pub fn golden(window: &Traffic, seconds: f64, total: &Traffic) -> Golden {
    let per_second = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
    let has_requests = window.requests > 0.0;
    Golden {
        request_rate: per_second(window.requests),
        connection_rate: per_second(window.connections),
        success_rate: has_requests.then(|| 1.0 - window.errors / window.requests),
        p50_ms: quantile(&window.buckets, 0.5).map(|s| s * 1000.0),
        p99_ms: quantile(&window.buckets, 0.99).map(|s| s * 1000.0),
        requests_total: total.requests,
        connections_total: total.connections,
    }
}

/// The `q` quantile of a cumulative histogram (Prometheus's `histogram_quantile`: linear within
/// the bucket; the highest finite bound when it falls in `+Inf`). `None` when empty.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let share = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ui::metrics::prom;

    const SIDECAR: &str = "\
plexus_proxy_http_requests_total{direction=\"inbound\",upstream=\"web\",route=\"\",class=\"2xx\",grpc_status=\"\"} 90
plexus_proxy_http_requests_total{direction=\"inbound\",upstream=\"web\",route=\"\",class=\"5xx\",grpc_status=\"\"} 10
plexus_proxy_http_requests_total{direction=\"outbound\",upstream=\"db\",route=\"default\",class=\"2xx\",grpc_status=\"\"} 4
plexus_proxy_connections_total{direction=\"outbound\",upstream=\"cache\"} 3
plexus_proxy_http_request_duration_seconds_bucket{direction=\"inbound\",upstream=\"web\",le=\"0.001\"} 50
plexus_proxy_http_request_duration_seconds_bucket{direction=\"inbound\",upstream=\"web\",le=\"0.002\"} 100
plexus_proxy_http_request_duration_seconds_bucket{direction=\"inbound\",upstream=\"web\",le=\"+Inf\"} 100
";

    #[test]
    fn a_sidecar_reading_splits_by_direction_and_upstream() {
        let traffic = sidecar_traffic(&prom::parse(SIDECAR));
        assert_eq!(traffic.inbound.requests, 100.0);
        assert_eq!(traffic.inbound.errors, 10.0);
        assert_eq!(traffic.outbound["db"].requests, 4.0);
        assert_eq!(traffic.outbound["cache"].connections, 3.0);
        let g = golden(&traffic.inbound, 10.0, &traffic.inbound);
        assert_eq!(g.request_rate, 10.0);
        assert_eq!(g.success_rate, Some(0.9));
        assert_eq!(g.p50_ms, Some(1.0));
        assert!((g.p99_ms.unwrap() - 1.98).abs() < 1e-9, "{g:?}");
    }

    #[test]
    fn windows_subtract_and_survive_resets() {
        let later = Traffic {
            requests: 30.0,
            errors: 3.0,
            connections: 2.0,
            buckets: vec![(0.1, 30.0), (f64::INFINITY, 30.0)],
        };
        let earlier = Traffic {
            requests: 10.0,
            errors: 3.0,
            connections: 5.0,
            buckets: vec![(0.1, 10.0), (f64::INFINITY, 10.0)],
        };
        let window = later.since(&earlier);
        assert_eq!(window.requests, 20.0);
        assert_eq!(window.errors, 0.0);
        assert_eq!(window.connections, 2.0, "a reset counts from zero");
        assert_eq!(window.buckets, vec![(0.1, 20.0), (f64::INFINITY, 20.0)]);
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[(1.0, 0.0)], 0.5), None);
        assert_eq!(
            quantile(&[(1.0, 0.0), (f64::INFINITY, 4.0)], 0.5),
            Some(1.0)
        );
    }

    proptest! {
        /// A quantile lies within the bounds of the bucket holding its rank and never decreases
        /// with q.
        #[test]
        fn quantiles_are_monotonic_and_bounded(
            counts in proptest::collection::vec(0u32..100, 1..10),
            q1 in 0.0f64..1.0,
            q2 in 0.0f64..1.0,
        ) {
            let mut cumulative = 0.0;
            let buckets: Vec<(f64, f64)> = counts
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cumulative += f64::from(*c);
                    (0.001 * 2f64.powi(i as i32), cumulative)
                })
                .collect();
            let (lo, hi) = if q1 <= q2 { (q1, q2) } else { (q2, q1) };
            match (quantile(&buckets, lo), quantile(&buckets, hi)) {
                (Some(a), Some(b)) => {
                    prop_assert!(a <= b + 1e-12, "{a} > {b}");
                    prop_assert!(b <= buckets.last().unwrap().0 + 1e-12);
                    prop_assert!(a >= 0.0);
                }
                (None, None) => prop_assert_eq!(cumulative, 0.0),
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
