//! Authorize: the inbound sidecar's intention check on every new connection, from a local copy
//! of the intentions that can apply to its service, followed by blocking query.
//!
//! The decision is [`plexus_api::connect::decide`], the same pure function the control plane's
//! `/v1/connect/intentions/check` uses. A change reaches this cache as soon as the blocking
//! query returns (well within a second), so it applies to the next connection. With
//! `close_denied`, connections already open are re-checked on every change and closed when now
//! denied. [`verdict`] tells the calling sidecar the decision (and the reason for a denial).
//!
//! HTTP requests between sidecars are decided one by one ([`Caller::allows`]): an L4 intention
//! decides every request of the caller alike; an L7 intention's permissions are tested against
//! each request (path in normal form, [`path::normal`]), the first that matches deciding and the
//! default policy when none does.

use std::sync::Arc;
use std::time::Duration;

use plexus_api::client::{Client, IntentionSet, QueryOptions};
use plexus_api::connect::{
    Decision, DefaultPolicy, IntentionAction, IntentionInput, Verdict, decide, verdict,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) mod path;
pub(crate) mod verdict;

use crate::discovery::BLOCKING_WAIT;
use crate::http::route::View;
use crate::http::route::table::Matcher;
use crate::state::StateDir;
use plexus_runtime::Backoff;
use plexus_runtime::ErrorChain;

/// The intentions that can apply to this sidecar's service, with the default policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Matching intentions.
    pub intentions: Vec<IntentionInput>,
    /// When none matches. A server that does not say is taken as `deny`.
    pub default: DefaultPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    source: String,
    destination: String,
    result: &'static str,
}

/// Decision metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthorizeMetrics {
    decisions: Family<DecisionLabels, Counter>,
    closed: Counter,
}

impl AuthorizeMetrics {
    /// Registers under `plexus_proxy_`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("plexus_proxy");
        sub.register(
            "intention_decisions",
            "Inbound connections authorized or denied, by source, destination and result",
            metrics.decisions.clone(),
        );
        sub.register(
            "intention_closed_connections",
            "Open connections closed because an intention change denies them now",
            metrics.closed.clone(),
        );
        metrics
    }
}

/// Decides for one destination service.
#[derive(Debug, Clone)]
pub(crate) struct Authorizer {
    /// This sidecar's service.
    pub destination: String,
    /// The latest policy.
    pub policy: watch::Receiver<Arc<Policy>>,
    /// Close open connections that a change denies.
    pub close_denied: bool,
    metrics: AuthorizeMetrics,
}

impl Authorizer {
    /// An authorizer following `policy`, counting into metrics of its own (unit tests).
    #[cfg(test)]
    pub(crate) fn following(destination: &str, policy: watch::Receiver<Arc<Policy>>) -> Self {
        Self {
            destination: destination.to_owned(),
            policy,
            close_denied: false,
            metrics: AuthorizeMetrics::default(),
        }
    }

    /// Decides, counts and logs a new connection from `source`.
    pub(crate) fn check(&self, source: &str) -> Decision {
        let policy = Arc::clone(&self.policy.borrow());
        let decision = decide(
            &policy.intentions,
            source,
            &self.destination,
            policy.default,
        );
        let result = if decision.allowed { "allow" } else { "deny" };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                source: source.to_owned(),
                destination: self.destination.clone(),
                result,
            })
            .inc();
        if decision.allowed {
            tracing::debug!(source, destination = %self.destination, reason = %decision.reason, "connection authorized");
        } else {
            info!(source, destination = %self.destination, reason = %decision.reason, "connection denied by intention");
        }
        decision
    }

    /// The decisions for the requests of one connection from `source`: decided once per policy
    /// (again when the intentions change), each request still counted.
    pub(crate) fn for_source(&self, source: &str) -> Caller {
        Caller {
            authorizer: self.clone(),
            source: source.to_owned(),
            counters: Default::default(),
            decided: std::sync::Mutex::new(None),
        }
    }

    /// Resolves when a policy change denies `source` (only with `close_denied`; otherwise never).
    pub(crate) async fn denied_later(&self, source: &str) {
        if !self.close_denied {
            return std::future::pending().await;
        }
        let mut policy = self.policy.clone();
        loop {
            if policy.changed().await.is_err() {
                return std::future::pending().await;
            }
            let current = Arc::clone(&policy.borrow_and_update());
            let decision = decide(
                &current.intentions,
                source,
                &self.destination,
                current.default,
            );
            if !decision.allowed {
                self.metrics.closed.inc();
                info!(source, destination = %self.destination, reason = %decision.reason, "closing a connection that an intention now denies");
                return;
            }
        }
    }
}

/// How one caller's requests are decided under one policy.
#[derive(Debug)]
enum Rule {
    /// Every request alike (an L4 intention or the default policy).
    All(bool),
    /// An L7 intention: the first permission that matches decides (`true`: allow), else the
    /// default policy.
    Permissions {
        permissions: Vec<(bool, Matcher)>,
        otherwise: bool,
    },
}

impl Rule {
    fn of(policy: &Policy, source: &str, destination: &str) -> (Self, String) {
        let intention = match verdict(&policy.intentions, source, destination, policy.default) {
            Verdict::Decided(decision) => return (Self::All(decision.allowed), decision.reason),
            Verdict::Permissions(intention) => intention,
        };
        let permissions = intention
            .permissions
            .iter()
            .map(|permission| {
                let allow = permission.action == IntentionAction::Allow;
                let compiled = permission
                    .http
                    .as_ref()
                    .map(|http| Matcher::new(&http.request_match()));
                match compiled {
                    Some(Ok(matcher)) => (allow, matcher),
                    // Validated by the control plane; if one still does not compile, fail
                    // closed: an allow that never matches, a deny that always does.
                    _ => {
                        warn!(intention = %intention.id, "an intention permission does not compile; failing closed");
                        (allow, Matcher::never_or_always(!allow))
                    }
                }
            })
            .collect();
        let reason = format!(
            "Matched L7 intention {}: {} => {} ({} permissions)",
            intention.id,
            intention.source,
            intention.destination,
            intention.permissions.len()
        );
        (
            Self::Permissions {
                permissions,
                otherwise: policy.default == DefaultPolicy::Allow,
            },
            reason,
        )
    }
}

/// One caller's decisions (per connection between sidecars, whose requests the intentions
/// decide one by one).
#[derive(Debug)]
pub(crate) struct Caller {
    authorizer: Authorizer,
    source: String,
    /// `deny`, `allow` (each made on first use).
    counters: [std::sync::OnceLock<Counter>; 2],
    /// The policy last decided on, and the rule it gives this caller.
    decided: std::sync::Mutex<Option<(Arc<Policy>, Arc<Rule>)>>,
}

impl Caller {
    /// The calling service.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// This caller's rule under the policy in force (made once per policy).
    fn rule(&self) -> Arc<Rule> {
        let policy = Arc::clone(&self.authorizer.policy.borrow());
        let mut decided = plexus_runtime::lock::lock(&self.decided);
        match &*decided {
            Some((known, rule)) if Arc::ptr_eq(known, &policy) => Arc::clone(rule),
            _ => {
                let (rule, reason) = Rule::of(&policy, &self.source, &self.authorizer.destination);
                match rule {
                    Rule::All(true) => {
                        tracing::debug!(source = %self.source, destination = %self.authorizer.destination, %reason, "requests authorized");
                    }
                    Rule::All(false) => {
                        info!(source = %self.source, destination = %self.authorizer.destination, %reason, "requests denied by intention");
                    }
                    Rule::Permissions { .. } => {
                        info!(source = %self.source, destination = %self.authorizer.destination, %reason, "requests decided by L7 permissions");
                    }
                }
                let rule = Arc::new(rule);
                *decided = Some((policy, Arc::clone(&rule)));
                rule
            }
        }
    }

    /// Whether the intentions allow `request` from this caller now; counted. Under an L7
    /// intention the request's path is put in normal form first (what is tested is what the app
    /// gets).
    pub(crate) fn allows<B>(&self, request: &mut http::Request<B>) -> bool {
        let allowed = match &*self.rule() {
            Rule::All(allowed) => *allowed,
            Rule::Permissions {
                permissions,
                otherwise,
            } => {
                normalize_path(request);
                let view = View(request);
                let allowed = permissions
                    .iter()
                    .find(|(_, matcher)| matcher.matches(&view))
                    .map_or(*otherwise, |(allow, _)| *allow);
                if !allowed {
                    tracing::debug!(source = %self.source, destination = %self.authorizer.destination, method = %request.method(), path = request.uri().path(), "request denied by an L7 intention");
                }
                allowed
            }
        };
        self.counters[usize::from(allowed)]
            .get_or_init(|| {
                self.authorizer
                    .metrics
                    .decisions
                    .get_or_create(&DecisionLabels {
                        source: self.source.clone(),
                        destination: self.authorizer.destination.clone(),
                        result: if allowed { "allow" } else { "deny" },
                    })
                    .clone()
            })
            .inc();
        allowed
    }
}

/// Rewrites `request`'s path to its normal form, keeping the query.
fn normalize_path<B>(request: &mut http::Request<B>) {
    let uri = request.uri();
    let normal = path::normal(uri.path());
    if let std::borrow::Cow::Owned(normal) = normal {
        let path_and_query = match uri.query() {
            Some(query) => format!("{normal}?{query}"),
            None => normal,
        };
        let mut parts = uri.clone().into_parts();
        match http::uri::PathAndQuery::try_from(path_and_query) {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return,
        }
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

async fn fetch(
    client: &Client,
    destination: &str,
    index: u64,
) -> Result<(Policy, u64, IntentionSet), plexus_api::client::ClientError> {
    let query = if index == 0 {
        QueryOptions::default()
    } else {
        QueryOptions::blocking(index, BLOCKING_WAIT)
    };
    let set = client
        .intentions_for_destination(destination, query)
        .await?;
    Ok((policy_of(destination, &set), set.index, set))
}

/// The state file of the intentions for this sidecar's service.
const INTENTIONS: &str = "intentions";

/// The policy an answer gives.
fn policy_of(destination: &str, set: &IntentionSet) -> Policy {
    if set.default_policy.is_none() {
        // Fail closed, but say so: a proxy between us and the server that drops the header
        // would otherwise turn an `allow` server into a silent `deny`.
        warn!(
            destination,
            "the control plane did not say its default intention policy; denying what no intention allows"
        );
    }
    Policy {
        intentions: set.intentions.iter().map(IntentionInput::from).collect(),
        default: set.default_policy.unwrap_or(DefaultPolicy::Deny),
    }
}

/// Fetches the policy for `destination` once (retrying with backoff), then follows it until
/// `stop`. `None` when stopped before the first answer.
pub(crate) async fn start(
    client: Client,
    destination: String,
    close_denied: bool,
    metrics: AuthorizeMetrics,
    tasks: &tokio_util::task::TaskTracker,
    state: Option<Arc<StateDir>>,
    stop: CancellationToken,
) -> Option<Authorizer> {
    let mut backoff = Backoff::default();
    let (policy, index) = loop {
        match fetch(&client, &destination, 0).await {
            Ok((policy, index, set)) => {
                if let Some(state) = &state {
                    state.save(INTENTIONS, &set);
                }
                break (policy, index);
            }
            Err(error) => {
                // While no server answers: the intentions saved before a restart, if any.
                let saved = state
                    .as_deref()
                    .and_then(|s| s.load::<IntentionSet>(INTENTIONS));
                if let Some((set, at)) = saved {
                    warn!(
                        destination,
                        saved_at = %crate::staleness::rfc3339(at),
                        "no control-plane server answers; using the last good intentions (stale)"
                    );
                    break (policy_of(&destination, &set), 0);
                }
                warn!(error = %ErrorChain(&error), "cannot read intentions yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    info!(destination, intentions = policy.intentions.len(), default = %policy.default, "intentions loaded");
    let (tx, rx) = watch::channel(Arc::new(policy));
    tasks.spawn({
        let (client, destination) = (client.clone(), destination.clone());
        async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = follow(client, destination, index, tx, state) => {}
            }
        }
    });
    Some(Authorizer {
        destination,
        policy: rx,
        close_denied,
        metrics,
    })
}

async fn follow(
    client: Client,
    destination: String,
    mut index: u64,
    tx: watch::Sender<Arc<Policy>>,
    state: Option<Arc<StateDir>>,
) {
    let mut backoff = Backoff::default();
    loop {
        match fetch(&client, &destination, index.max(1)).await {
            Ok((policy, new_index, set)) => {
                backoff.reset();
                if new_index == index {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                index = if new_index < index { 0 } else { new_index };
                if **tx.borrow() != policy {
                    info!(destination, intentions = policy.intentions.len(), default = %policy.default, "intentions changed");
                    if let Some(state) = &state {
                        state.save(INTENTIONS, &set);
                    }
                    tx.send_replace(Arc::new(policy));
                }
            }
            Err(error) => {
                warn!(error = %ErrorChain(&error), "intentions watch failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
