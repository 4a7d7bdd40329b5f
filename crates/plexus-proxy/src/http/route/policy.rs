//! The policy of one HTTP upstream, built from its compiled discovery chain: the route table
//! and, per route, what each layer below the route layer is to do with a request that takes it.
//! Rebuilt whenever the chain changes (a new chain starts with fresh counters: buckets,
//! budgets, bulkhead).

use std::sync::{Arc, Mutex};

use http::Request;
use plexus_api::config_entry::chain::{ChainTarget, DiscoveryChain};
use tokio::time::Instant;

use super::table::{RequestView, RouteTable};
use crate::http::Body;
use crate::http::balance::Selected;
use crate::http::bulkhead::{Admission, Bulkhead};
use crate::http::fault::Fault;
use crate::http::headers::{Changes, RouteHeaders};
use crate::http::mirror::Mirror;
use crate::http::rate_limit::{RateLimit, RateLimits};
use crate::http::retry::{Retry, RetryBudget};
use crate::http::rewrite::PrefixRewrite;
use crate::http::split::{Choice, Splits};
use crate::http::timeout::Timeouts;

/// Live policy of one upstream.
#[derive(Debug)]
pub(crate) struct Policy {
    /// The chain it was built from.
    pub chain: Arc<DiscoveryChain>,
    table: RouteTable,
    /// Same order as the table.
    routes: Vec<RoutePolicy>,
    rate: Option<RateLimit>,
    fault: Option<Fault>,
    mirror: Option<Mirror>,
}

/// What the layers do with a request that takes one route.
#[derive(Debug)]
struct RoutePolicy {
    label: Arc<str>,
    admission: Option<Admission>,
    rewrite: Option<PrefixRewrite>,
    headers: Option<RouteHeaders>,
    splits: Option<Splits>,
    timeouts: Option<Timeouts>,
    retry: Option<Retry>,
}

impl Policy {
    /// Builds the state for `chain`; fails if a route regex does not compile, which the control
    /// plane's validation should have refused.
    pub(crate) fn new(chain: Arc<DiscoveryChain>) -> Result<Self, regex::Error> {
        let table = RouteTable::new(&chain.routes)?;
        let policy = &chain.policy;
        let bulkhead = policy
            .limits
            .max_concurrent_requests
            .map(|_| Arc::new(Bulkhead::new(&policy.limits)));
        let targets: Vec<(&String, Arc<ChainTarget>)> = chain
            .targets
            .iter()
            .map(|(id, target)| (id, Arc::new(target.clone())))
            .collect();
        let target = |id: &str| {
            targets
                .iter()
                .find(|(known, _)| known.as_str() == id)
                .map(|(_, target)| Arc::clone(target))
        };
        let routes = chain
            .routes
            .iter()
            .map(|route| {
                let request = route.request_timeout.map(|t| t.0);
                let idle = route.idle_timeout.map(|t| t.0);
                RoutePolicy {
                    label: Arc::from(route.name.as_str()),
                    admission: bulkhead.as_ref().map(|bulkhead| Admission {
                        bulkhead: Arc::clone(bulkhead),
                        wait: request,
                    }),
                    rewrite: PrefixRewrite::of(route),
                    headers: Changes::of(&route.headers).map(RouteHeaders),
                    splits: (!route.splits.is_empty()).then(|| Splits {
                        choices: route
                            .splits
                            .iter()
                            .map(|split| Choice {
                                weight: split.weight,
                                target: target(&split.target),
                                headers: Changes::of(&split.headers),
                            })
                            .collect(),
                        chain: Arc::clone(&chain),
                    }),
                    timeouts: (request.is_some() || idle.is_some())
                        .then_some(Timeouts { request, idle }),
                    retry: (route.retry.num_retries > 0).then(|| Retry {
                        policy: Arc::new(route.retry.clone()),
                        budget: Arc::new(Mutex::new(RetryBudget::new(
                            route.retry.budget_percent,
                            route.retry.budget_min_concurrency,
                        ))),
                    }),
                }
            })
            .collect();
        let rate = RateLimits::new(
            policy.rate_limit.as_ref(),
            &policy.route_rate_limits,
            Instant::now(),
        )?;
        Ok(Self {
            table,
            routes,
            rate: (!rate.is_empty()).then(|| RateLimit(Arc::new(rate))),
            fault: policy.fault.clone().map(|fault| Fault(Arc::new(fault))),
            mirror: policy.mirror.as_ref().map(|mirror| Mirror {
                percent: mirror.percent,
                to: Selected {
                    target: Arc::new(ChainTarget {
                        service: mirror.service.clone(),
                        ..ChainTarget::default()
                    }),
                    chain: Arc::clone(&chain),
                    hash: None,
                },
            }),
            chain,
        })
    }

    /// Looks `request` up in the route table and programs the layers below for the route it
    /// takes; its name, `None` when no route matches (a compiled chain always ends with a
    /// catch-all, so only an empty table does that): the request then goes straight to the
    /// destination.
    pub(crate) fn program(&self, request: &mut Request<Body>) -> Option<Arc<str>> {
        let (index, _) = self.table.find(&View(request))?;
        let route = self.routes.get(index)?;
        let extensions = request.extensions_mut();
        if let Some(rate) = &self.rate {
            extensions.insert(rate.clone());
        }
        if let Some(admission) = &route.admission {
            extensions.insert(admission.clone());
        }
        if let Some(fault) = &self.fault {
            extensions.insert(fault.clone());
        }
        if let Some(rewrite) = &route.rewrite {
            extensions.insert(rewrite.clone());
        }
        if let Some(headers) = &route.headers {
            extensions.insert(headers.clone());
        }
        if let Some(mirror) = &self.mirror {
            extensions.insert(mirror.clone());
        }
        if let Some(splits) = &route.splits {
            extensions.insert(splits.clone());
        }
        if let Some(timeouts) = route.timeouts {
            extensions.insert(timeouts);
        }
        if let Some(retry) = &route.retry {
            extensions.insert(retry.clone());
        }
        Some(Arc::clone(&route.label))
    }
}

/// An HTTP request as the route matcher sees it.
pub(crate) struct View<'a, B>(pub &'a Request<B>);

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
