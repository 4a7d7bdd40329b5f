//! The distributed routing table: which peer instance serves which route, fed by presence, and
//! the balancer's pick (least-dispatched, ties broken by origin). Pure data, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use plexus_api::presence::Peer;

/// A change the table went through, for logs (`peer … joins`, `… registered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A peer joined.
    Joined(Peer),
    /// A peer left.
    Left(Peer),
    /// A peer now serves a route.
    Registered {
        /// The route.
        route: String,
        /// The peer.
        origin: String,
    },
    /// A peer no longer serves a route.
    Unregistered {
        /// The route.
        route: String,
        /// The peer.
        origin: String,
    },
}

/// Remote peers and their routes, with dispatch counts for least-dispatched balancing.
#[derive(Debug, Default, Clone)]
pub struct RoutingTable {
    peers: BTreeMap<String, Peer>,
    dispatched: BTreeMap<String, u64>,
}

impl RoutingTable {
    /// Adds or replaces a peer; returns the changes. A new peer resets every dispatch count, so
    /// load is shared evenly from then on.
    pub fn join(&mut self, peer: Peer) -> Vec<Change> {
        let mut changes = Vec::new();
        let old = self.peers.remove(&peer.origin);
        let old_routes: BTreeSet<String> = old
            .as_ref()
            .map(|p| p.routes.iter().cloned().collect())
            .unwrap_or_default();
        if old.is_none() {
            changes.push(Change::Joined(peer.clone()));
            // A newcomer starts even with everyone: without this it would take every request
            // until its count caught up with the peers' history.
            self.dispatched.values_mut().for_each(|n| *n = 0);
        }
        changes.extend(route_diff(&peer.origin, &old_routes, &peer.routes));
        self.dispatched.entry(peer.origin.clone()).or_insert(0);
        self.peers.insert(peer.origin.clone(), peer);
        changes
    }

    /// Removes a peer; returns the changes (its routes unregistered, then the leave).
    pub fn leave(&mut self, origin: &str) -> Vec<Change> {
        let Some(peer) = self.peers.remove(origin) else {
            return Vec::new();
        };
        self.dispatched.remove(origin);
        let mut changes = route_diff(origin, &peer.routes.iter().cloned().collect(), &[]);
        changes.push(Change::Left(peer));
        changes
    }

    /// Replaces a peer's routes; returns the changes.
    pub fn set_routes(&mut self, origin: &str, routes: Vec<String>) -> Vec<Change> {
        let Some(peer) = self.peers.get_mut(origin) else {
            return Vec::new();
        };
        let old: BTreeSet<String> = peer.routes.iter().cloned().collect();
        let changes = route_diff(origin, &old, &routes);
        peer.routes = routes;
        changes
    }

    /// Forgets every peer (presence lost); returns the changes.
    pub fn clear(&mut self) -> Vec<Change> {
        let origins: Vec<String> = self.peers.keys().cloned().collect();
        origins.iter().flat_map(|o| self.leave(o)).collect()
    }

    /// A peer by origin.
    pub fn peer(&self, origin: &str) -> Option<&Peer> {
        self.peers.get(origin)
    }

    /// Every peer.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// The origins serving `route`, sorted.
    pub fn serving(&self, route: &str) -> Vec<String> {
        self.peers
            .values()
            .filter(|p| p.routes.iter().any(|r| r == route))
            .map(|p| p.origin.clone())
            .collect()
    }

    /// Picks the peer serving `route` that was dispatched to least (ties: lowest origin), and
    /// counts the dispatch.
    pub fn pick(&mut self, route: &str) -> Option<Peer> {
        let origin = self
            .serving(route)
            .into_iter()
            .min_by_key(|o| (self.dispatched.get(o).copied().unwrap_or(0), o.clone()))?;
        *self.dispatched.entry(origin.clone()).or_insert(0) += 1;
        self.peers.get(&origin).cloned()
    }
}

fn route_diff(origin: &str, old: &BTreeSet<String>, new: &[String]) -> Vec<Change> {
    let new: BTreeSet<&String> = new.iter().collect();
    let mut changes: Vec<Change> = old
        .iter()
        .filter(|r| !new.contains(r))
        .map(|r| Change::Unregistered {
            route: r.clone(),
            origin: origin.to_owned(),
        })
        .collect();
    changes.extend(
        new.into_iter()
            .filter(|r| !old.contains(*r))
            .map(|r| Change::Registered {
                route: r.clone(),
                origin: origin.to_owned(),
            }),
    );
    changes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn peer(origin: &str, routes: &[&str]) -> Peer {
        Peer {
            origin: origin.into(),
            app: "app".into(),
            group: "default".into(),
            topic: format!("multiplex.0001-{origin}"),
            routes: routes.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn join_route_change_leave() {
        let mut t = RoutingTable::default();
        let c = t.join(peer("a", &["hello.world"]));
        assert!(matches!(&c[0], Change::Joined(p) if p.origin == "a"));
        assert!(matches!(&c[1], Change::Registered { route, .. } if route == "hello.world"));
        let c = t.set_routes("a", vec!["hello.pojo".into()]);
        assert_eq!(c.len(), 2);
        assert_eq!(t.serving("hello.pojo"), vec!["a".to_owned()]);
        assert!(t.serving("hello.world").is_empty());
        let c = t.leave("a");
        assert!(matches!(c.last(), Some(Change::Left(_))));
        assert!(t.pick("hello.pojo").is_none());
    }

    #[test]
    fn a_newcomer_does_not_take_everything() {
        let mut t = RoutingTable::default();
        t.join(peer("a", &["r.x"]));
        for _ in 0..100 {
            t.pick("r.x");
        }
        t.join(peer("b", &["r.x"]));
        let picks: Vec<String> = (0..4).map(|_| t.pick("r.x").unwrap().origin).collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
    }

    proptest! {
        /// Over any number of picks, instances serving a route differ by at most one dispatch.
        #[test]
        fn least_dispatched_is_even(n in 1usize..6, picks in 0usize..500) {
            let mut t = RoutingTable::default();
            for i in 0..n {
                t.join(peer(&format!("o{i}"), &["hello.world"]));
            }
            t.join(peer("other", &["other.route"]));
            let mut counts = BTreeMap::new();
            for _ in 0..picks {
                let p = t.pick("hello.world").unwrap();
                *counts.entry(p.origin).or_insert(0usize) += 1;
            }
            prop_assert!(!counts.contains_key("other"));
            let max = counts.values().max().copied().unwrap_or(0);
            let min = if counts.len() == n { counts.values().min().copied().unwrap_or(0) } else { 0 };
            prop_assert!(max - min <= 1);
        }
    }
}
