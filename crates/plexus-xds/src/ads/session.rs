//! One ADS stream's protocol state, without I/O: what Envoy subscribed to, what it has, which
//! response awaits its ACK, and what to send next. The same machine serves both variants:
//! state of the world (every response carries every subscribed resource of its type) and delta
//! (responses carry what changed and what was removed, with a version per resource).
//!
//! Rules:
//! - A request whose `response_nonce` is not the last one sent for its type is stale: it is
//!   neither an ACK nor a NACK. In state of the world it is ignored (Envoy sends a fresh one
//!   after it processed the newer response); in delta its subscribe and unsubscribe lists are
//!   still applied, since Envoy sends each subscription change only once.
//! - A request answering the pending nonce is an ACK, or a NACK when it carries an error: the
//!   rejected content is not sent again (Envoy keeps its last accepted config); the next change
//!   is.
//! - Types go out in the order of [`TypeUrl::ALL`] — clusters, endpoints, listeners, routes,
//!   secrets — one response in flight per type. Clusters and endpoints must be ACKed before
//!   listeners, routes or secrets are sent, so a route never names a cluster Envoy has not
//!   accepted and fed with endpoints (Envoy warms a new cluster until its endpoints arrive).
//!   Endpoints do not wait for the clusters' ACK: Envoy withholds that ACK until every new
//!   cluster has warmed, which an EDS cluster does only once its endpoints arrive
//!   ([`TypeUrl::holds_back`]). Listeners, routes and secrets are pipelined behind them:
//!   Envoy applies one stream's responses in order and warms a new listener until the routes
//!   it names arrive, so an intention change (L4 rules in LDS, L7 rules in RDS) reaches both
//!   without waiting for a round trip in between. A stuck Envoy only ever holds up its own
//!   stream.
//! - Removals go the other way: a cluster is kept until the listeners and routes Envoy has
//!   ACKed no longer name it; one it rejected leaves the last accepted one in force. Its
//!   endpoints (the load assignment named as the cluster) are kept exactly as long, and go only
//!   once the cluster's removal has been sent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::resources::{Resource, Resources, TypeUrl};

/// Which protocol variant a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// State of the world.
    Sotw,
    /// Incremental.
    Delta,
}

/// A request, converted from the wire.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    /// Its type.
    pub type_url: TypeUrl,
    /// The nonce of the response it answers (empty: none).
    pub nonce: String,
    /// State of the world: the version Envoy has of this type.
    pub version: String,
    /// A NACK's error detail.
    pub error: Option<String>,
    /// The subscription.
    pub names: Names,
}

/// How a request names resources.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Names {
    /// State of the world: the complete list (empty for LDS/CDS: all).
    Sotw(Vec<String>),
    /// Delta: changes to the subscription, and (first request only) what Envoy already has.
    Delta {
        /// Names to add (`*`: wildcard).
        subscribe: Vec<String>,
        /// Names to drop.
        unsubscribe: Vec<String>,
        /// Resources Envoy has from an earlier stream, with their versions.
        initial: BTreeMap<String, String>,
    },
}

/// A response to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Response {
    /// Its type.
    pub type_url: TypeUrl,
    /// State of the world: the version of the whole set; delta: a system version.
    pub version: String,
    /// Its nonce.
    pub nonce: String,
    /// Resources (all subscribed for SotW, the changed ones for delta).
    pub resources: Vec<Arc<Resource>>,
    /// Delta: names Envoy must forget.
    pub removed: Vec<String>,
}

/// What a request meant, for logs and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A first request or a subscription change (no nonce).
    Subscribed,
    /// Envoy accepted `version`.
    Ack {
        /// The accepted version.
        version: String,
        /// The configuration revision the accepted response was built from (not the one
        /// current when the ACK arrives, which Envoy may not have been sent yet).
        revision: u64,
    },
    /// Envoy rejected `version`.
    Nack {
        /// The rejected version.
        version: String,
        /// Envoy's error detail.
        error: String,
    },
    /// The nonce was not the pending one: not an answer to it (state of the world: ignored;
    /// delta: its subscription changes applied).
    Stale,
}

#[derive(Debug, Clone, Default)]
struct TypeState {
    requested: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// What Envoy has (delta) or was last sent (SotW): name → version.
    known: BTreeMap<String, String>,
    /// What Envoy last ACKed (it keeps that through a NACK): name → version.
    accepted: BTreeMap<String, String>,
    /// SotW: version of the last set sent.
    sent_version: Option<String>,
    /// The resources last sent (whole set): a cluster being removed is kept from them until
    /// no listener or route names it any more.
    sent: BTreeMap<String, Arc<Resource>>,
    /// Delta: names subscribed since the last response (answered even when they do not exist).
    unanswered: BTreeSet<String>,
    must_respond: bool,
    pending: Option<Pending>,
    acked: Option<String>,
}

/// The response of a type that awaits its ACK or NACK.
#[derive(Debug, Clone)]
struct Pending {
    nonce: String,
    version: String,
    /// What Envoy has of the type once it accepts this response: name → version.
    known: BTreeMap<String, String>,
    /// The configuration revision it was built from.
    revision: u64,
}

/// The state of one stream.
#[derive(Debug)]
pub(crate) struct Session {
    mode: Mode,
    types: BTreeMap<TypeUrl, TypeState>,
    nonces: u64,
}

impl Session {
    /// A new stream.
    pub(crate) fn new(mode: Mode) -> Self {
        Self {
            mode,
            types: TypeUrl::ALL
                .into_iter()
                .map(|t| (t, TypeState::default()))
                .collect(),
            nonces: 0,
        }
    }

    /// The last version Envoy accepted of each type.
    #[cfg(test)]
    pub(crate) fn acked(&self) -> BTreeMap<TypeUrl, String> {
        self.types
            .iter()
            .filter_map(|(t, s)| s.acked.clone().map(|v| (*t, v)))
            .collect()
    }

    /// The types Envoy has ACKed at least once and holds exactly as `resources` has them now:
    /// nothing in flight, the last accepted content the current one (not after a NACK, nor
    /// while a removed cluster is kept). Those have reached the revision `resources` was built
    /// from even when it changed nothing of theirs and so sent nothing.
    pub(crate) fn up_to_date<'a>(
        &'a self,
        resources: &'a Resources,
    ) -> impl Iterator<Item = TypeUrl> + 'a {
        self.types
            .iter()
            .filter(|(_, state)| state.requested && state.acked.is_some())
            .map(|(type_url, _)| *type_url)
            .filter(move |type_url| self.settled(*type_url, resources))
    }

    /// Applies a request.
    pub(crate) fn on_request(&mut self, request: Request) -> Outcome {
        let mode = self.mode;
        let state = self.types.entry(request.type_url).or_default();
        let mut outcome = Outcome::Subscribed;
        if !request.nonce.is_empty() {
            match state.pending.take_if(|p| p.nonce == request.nonce) {
                Some(Pending {
                    version,
                    revision,
                    known,
                    ..
                }) => {
                    outcome = match request.error {
                        Some(error) => Outcome::Nack { version, error },
                        None => {
                            state.acked = Some(version.clone());
                            state.accepted = known;
                            Outcome::Ack { version, revision }
                        }
                    };
                }
                // State of the world: a stale request's list is an old view of the
                // subscription, which Envoy repeats once it has seen the newer response. Delta:
                // its subscribe and unsubscribe lists are changes Envoy sends only once, so
                // they apply whatever response it answers; only the ACK or NACK is ignored.
                None if mode == Mode::Sotw => return Outcome::Stale,
                None => outcome = Outcome::Stale,
            }
        }
        match request.names {
            Names::Sotw(list) => {
                let wildcard = request.type_url.is_wildcard_type()
                    && (list.is_empty() || list.iter().any(|n| n == "*"));
                let names: BTreeSet<String> = list.into_iter().filter(|n| n != "*").collect();
                if !state.requested || wildcard != state.wildcard || names != state.names {
                    state.must_respond = true;
                }
                state.requested = true;
                state.wildcard = wildcard;
                state.names = names;
            }
            Names::Delta {
                subscribe,
                unsubscribe,
                initial,
            } => {
                if !state.requested {
                    state.requested = true;
                    state.must_respond = true;
                    state.wildcard = request.type_url.is_wildcard_type() && subscribe.is_empty();
                    state.accepted.clone_from(&initial);
                    state.known = initial;
                }
                for name in subscribe {
                    if name == "*" {
                        state.wildcard = true;
                        state.must_respond = true;
                    } else if state.names.insert(name.clone()) {
                        state.unanswered.insert(name);
                    }
                }
                for name in unsubscribe {
                    if name == "*" {
                        state.wildcard = false;
                    } else {
                        state.names.remove(&name);
                        state.unanswered.remove(&name);
                        state.known.remove(&name);
                        state.accepted.remove(&name);
                        if let Some(pending) = &mut state.pending {
                            pending.known.remove(&name);
                        }
                    }
                }
                if mode == Mode::Delta && !state.wildcard {
                    let names = &state.names;
                    state.known.retain(|name, _| names.contains(name));
                    state.accepted.retain(|name, _| names.contains(name));
                    if let Some(pending) = &mut state.pending {
                        pending.known.retain(|name, _| names.contains(name));
                    }
                }
            }
        }
        outcome
    }

    /// The next response to send given the current `resources`, built from configuration
    /// `revision`, if any may be sent now.
    pub(crate) fn next_response(
        &mut self,
        resources: &Resources,
        revision: u64,
    ) -> Option<Response> {
        for type_url in TypeUrl::ALL {
            let held = self
                .types
                .iter()
                .any(|(earlier, s)| s.pending.is_some() && earlier.holds_back(type_url));
            let state = self.types.get(&type_url)?;
            if held || state.pending.is_some() || !state.requested {
                continue;
            }
            let mut wanted: BTreeMap<String, Arc<Resource>> = resources
                .of(type_url)
                .iter()
                .filter(|(name, _)| state.wildcard || state.names.contains(*name))
                .map(|(name, r)| (name.clone(), Arc::clone(r)))
                .collect();
            // Removals go in reverse order: a cluster stays until no listener or route that
            // Envoy may still hold names it: until the listeners and routes Envoy accepted are
            // the current ones (one it rejected leaves the last accepted one in force).
            if type_url == TypeUrl::Cluster
                && !(self.settled(TypeUrl::Listener, resources)
                    && self.settled(TypeUrl::Route, resources))
            {
                for (name, resource) in &state.sent {
                    wanted
                        .entry(name.clone())
                        .or_insert_with(|| Arc::clone(resource));
                }
            }
            // A cluster's endpoints (named as the cluster) go with it: while a removed cluster
            // is kept, so is its load assignment, which leaves only once the cluster's removal
            // has been sent.
            if type_url == TypeUrl::Endpoint {
                for name in self.kept_clusters(resources) {
                    if let Some(resource) = state.sent.get(name)
                        && (state.wildcard || state.names.contains(name))
                    {
                        wanted
                            .entry(name.clone())
                            .or_insert_with(|| Arc::clone(resource));
                    }
                }
            }
            let response = match self.mode {
                Mode::Sotw => self.sotw(type_url, wanted, revision),
                Mode::Delta => self.delta(type_url, wanted, revision),
            };
            if response.is_some() {
                return response;
            }
        }
        None
    }

    /// The clusters Envoy still has (or is being sent) although the configuration dropped them:
    /// their removal waits for the listeners and routes naming them to be replaced.
    fn kept_clusters<'a>(&'a self, resources: &'a Resources) -> impl Iterator<Item = &'a String> {
        let current = resources.of(TypeUrl::Cluster);
        self.types
            .get(&TypeUrl::Cluster)
            .into_iter()
            .flat_map(|state| state.sent.keys())
            .filter(move |name| !current.contains_key(*name))
    }

    /// Whether Envoy has accepted exactly what it should have of `type_url`: nothing in flight,
    /// and its last ACKed content is the current one (after a NACK it is not: Envoy keeps the
    /// content it accepted before).
    fn settled(&self, type_url: TypeUrl, resources: &Resources) -> bool {
        let Some(state) = self.types.get(&type_url) else {
            return true;
        };
        if !state.requested {
            return true;
        }
        if state.pending.is_some() {
            return false;
        }
        let wanted: Vec<(&String, &Arc<Resource>)> = resources
            .of(type_url)
            .iter()
            .filter(|(name, _)| state.wildcard || state.names.contains(*name))
            .collect();
        wanted.len() == state.accepted.len()
            && wanted
                .iter()
                .all(|(name, r)| state.accepted.get(*name) == Some(&r.version))
    }

    fn nonce(&mut self) -> String {
        self.nonces += 1;
        self.nonces.to_string()
    }

    fn sotw(
        &mut self,
        type_url: TypeUrl,
        wanted: BTreeMap<String, Arc<Resource>>,
        revision: u64,
    ) -> Option<Response> {
        let version = Resources::version_of(wanted.values());
        let state = self.types.get(&type_url)?;
        if !state.must_respond && state.sent_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        let nonce = self.nonce();
        let state = self.types.get_mut(&type_url)?;
        state.must_respond = false;
        state.sent_version = Some(version.clone());
        state.known = wanted
            .iter()
            .map(|(name, r)| (name.clone(), r.version.clone()))
            .collect();
        state.sent = wanted.clone();
        state.pending = Some(Pending {
            nonce: nonce.clone(),
            version: version.clone(),
            known: state.known.clone(),
            revision,
        });
        Some(Response {
            type_url,
            version,
            nonce,
            resources: wanted.into_values().collect(),
            removed: Vec::new(),
        })
    }

    fn delta(
        &mut self,
        type_url: TypeUrl,
        wanted: BTreeMap<String, Arc<Resource>>,
        revision: u64,
    ) -> Option<Response> {
        let state = self.types.get(&type_url)?;
        let updated: Vec<Arc<Resource>> = wanted
            .iter()
            .filter(|(name, r)| state.known.get(*name) != Some(&r.version))
            .map(|(_, r)| Arc::clone(r))
            .collect();
        let mut removed: BTreeSet<String> = state
            .known
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        removed.extend(
            state
                .unanswered
                .iter()
                .filter(|name| !wanted.contains_key(*name))
                .cloned(),
        );
        if updated.is_empty() && removed.is_empty() && !state.must_respond {
            return None;
        }
        let version = Resources::version_of(wanted.values());
        let nonce = self.nonce();
        let state = self.types.get_mut(&type_url)?;
        state.must_respond = false;
        state.unanswered.clear();
        state.sent = wanted;
        for resource in &updated {
            state
                .known
                .insert(resource.name.clone(), resource.version.clone());
        }
        for name in &removed {
            state.known.remove(name);
        }
        state.pending = Some(Pending {
            nonce: nonce.clone(),
            version: version.clone(),
            known: state.known.clone(),
            revision,
        });
        Some(Response {
            type_url,
            version,
            nonce,
            resources: updated,
            removed: removed.into_iter().collect(),
        })
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "session_order_tests.rs"]
mod order_tests;
