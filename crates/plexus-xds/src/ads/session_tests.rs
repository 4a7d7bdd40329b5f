use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::*;

/// The configuration revision of the resources in tests that do not follow revisions.
const REVISION: u64 = 1;

fn cluster(name: &str, timeout_secs: i64) -> Resource {
    Resource::new(
        name,
        &Cluster {
            name: name.into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout_secs,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
}

fn listener(name: &str) -> Resource {
    Resource::new(
        name,
        &Listener {
            name: name.into(),
            ..Default::default()
        },
    )
}

fn world(clusters: &[(&str, i64)], listeners: &[&str]) -> Resources {
    let mut r = Resources::default();
    for (name, t) in clusters {
        r.insert(TypeUrl::Cluster, cluster(name, *t));
    }
    for name in listeners {
        r.insert(TypeUrl::Listener, listener(name));
    }
    r
}

fn sotw(type_url: TypeUrl, nonce: &str, names: &[&str]) -> Request {
    Request {
        type_url,
        nonce: nonce.into(),
        version: String::new(),
        error: None,
        names: Names::Sotw(names.iter().map(|s| (*s).to_owned()).collect()),
    }
}

fn names(response: &Response) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn sotw_sends_everything_then_only_changes() {
    let mut s = Session::new(Mode::Sotw);
    let w = world(&[("a", 1), ("b", 1)], &[]);
    assert_eq!(
        s.on_request(sotw(TypeUrl::Cluster, "", &[])),
        Outcome::Subscribed
    );
    let first = s.next_response(&w, REVISION).expect("initial response");
    assert_eq!(names(&first), ["a", "b"]);
    // Nothing else until Envoy answers.
    assert!(s.next_response(&w, REVISION).is_none());
    let ack = s.on_request(sotw(TypeUrl::Cluster, &first.nonce, &[]));
    assert_eq!(
        ack,
        Outcome::Ack {
            version: first.version.clone(),
            revision: REVISION,
        }
    );
    assert_eq!(s.acked()[&TypeUrl::Cluster], first.version);
    assert!(
        s.next_response(&w, REVISION).is_none(),
        "no change, nothing sent"
    );
    let changed = world(&[("a", 1), ("b", 2)], &[]);
    let second = s
        .next_response(&changed, REVISION)
        .expect("a change is pushed");
    assert_eq!(names(&second), ["a", "b"], "SotW carries the whole set");
    assert_ne!(second.version, first.version);
    assert_ne!(second.nonce, first.nonce);
}

#[test]
fn a_nack_keeps_the_last_accepted_version_and_is_not_resent() {
    let mut s = Session::new(Mode::Sotw);
    let good = world(&[("a", 1)], &[]);
    s.on_request(sotw(TypeUrl::Cluster, "", &[]));
    let first = s.next_response(&good, REVISION).expect("first");
    s.on_request(sotw(TypeUrl::Cluster, &first.nonce, &[]));
    let bad = world(&[("a", 99)], &[]);
    let rejected = s.next_response(&bad, REVISION).expect("bad one sent");
    let mut nack = sotw(TypeUrl::Cluster, &rejected.nonce, &[]);
    nack.error = Some("invalid cluster".into());
    assert_eq!(
        s.on_request(nack),
        Outcome::Nack {
            version: rejected.version.clone(),
            error: "invalid cluster".into()
        }
    );
    assert_eq!(s.acked()[&TypeUrl::Cluster], first.version);
    assert!(
        s.next_response(&bad, REVISION).is_none(),
        "the rejected set is not resent"
    );
    let fixed = world(&[("a", 2)], &[]);
    assert!(
        s.next_response(&fixed, REVISION).is_some(),
        "the next change is sent"
    );
}

#[test]
fn stale_nonces_are_ignored() {
    let mut s = Session::new(Mode::Sotw);
    let w = world(&[("a", 1)], &[]);
    s.on_request(sotw(TypeUrl::Cluster, "", &[]));
    let first = s.next_response(&w, REVISION).expect("first");
    assert_eq!(
        s.on_request(sotw(TypeUrl::Cluster, "not-a-nonce", &[])),
        Outcome::Stale
    );
    assert!(
        s.next_response(&w, REVISION).is_none(),
        "still waiting for the ACK"
    );
    assert!(matches!(
        s.on_request(sotw(TypeUrl::Cluster, &first.nonce, &[])),
        Outcome::Ack { .. }
    ));
}

#[test]
fn listeners_routes_and_secrets_are_pipelined_behind_acked_clusters() {
    let mut s = Session::new(Mode::Sotw);
    let mut w = world(&[], &["l"]);
    w.insert(TypeUrl::Route, listener("r"));
    s.on_request(sotw(TypeUrl::Listener, "", &[]));
    s.on_request(sotw(TypeUrl::Route, "", &["r"]));
    let first = s.next_response(&w, REVISION).expect("listeners");
    assert_eq!(first.type_url, TypeUrl::Listener);
    let second = s
        .next_response(&w, REVISION)
        .expect("routes without waiting");
    assert_eq!(second.type_url, TypeUrl::Route);
    assert!(
        s.next_response(&w, REVISION).is_none(),
        "one in flight per type"
    );
}

#[test]
fn clusters_go_first_and_one_response_is_in_flight() {
    let mut s = Session::new(Mode::Sotw);
    let w = world(&[("a", 1)], &["l"]);
    s.on_request(sotw(TypeUrl::Listener, "", &[]));
    s.on_request(sotw(TypeUrl::Cluster, "", &[]));
    let first = s.next_response(&w, REVISION).expect("first");
    assert_eq!(first.type_url, TypeUrl::Cluster);
    assert!(
        s.next_response(&w, REVISION).is_none(),
        "listeners wait for the clusters' ACK"
    );
    s.on_request(sotw(TypeUrl::Cluster, &first.nonce, &[]));
    let second = s.next_response(&w, REVISION).expect("second");
    assert_eq!(second.type_url, TypeUrl::Listener);
    s.on_request(sotw(TypeUrl::Listener, &second.nonce, &[]));
    // A change to both: clusters again first.
    let both = world(&[("a", 2)], &["l", "m"]);
    assert_eq!(
        s.next_response(&both, REVISION).map(|r| r.type_url),
        Some(TypeUrl::Cluster)
    );
}

#[test]
fn sotw_named_types_answer_subscription_changes() {
    let mut s = Session::new(Mode::Sotw);
    let mut w = Resources::default();
    w.insert(TypeUrl::Endpoint, cluster("a", 1));
    w.insert(TypeUrl::Endpoint, cluster("b", 1));
    s.on_request(sotw(TypeUrl::Endpoint, "", &["a"]));
    let first = s.next_response(&w, REVISION).expect("first");
    assert_eq!(names(&first), ["a"]);
    s.on_request(sotw(TypeUrl::Endpoint, &first.nonce, &["a", "b"]));
    let second = s.next_response(&w, REVISION).expect("b added");
    assert_eq!(names(&second), ["a", "b"]);
}

fn delta(type_url: TypeUrl, nonce: &str, subscribe: &[&str], unsubscribe: &[&str]) -> Request {
    Request {
        type_url,
        nonce: nonce.into(),
        version: String::new(),
        error: None,
        names: Names::Delta {
            subscribe: subscribe.iter().map(|s| (*s).to_owned()).collect(),
            unsubscribe: unsubscribe.iter().map(|s| (*s).to_owned()).collect(),
            initial: BTreeMap::new(),
        },
    }
}

#[test]
fn delta_sends_changes_and_removals() {
    let mut s = Session::new(Mode::Delta);
    s.on_request(delta(TypeUrl::Cluster, "", &[], &[]));
    let first = s
        .next_response(&world(&[("a", 1), ("b", 1)], &[]), REVISION)
        .expect("first");
    assert_eq!(names(&first), ["a", "b"]);
    s.on_request(delta(TypeUrl::Cluster, &first.nonce, &[], &[]));
    let second = s
        .next_response(&world(&[("a", 2), ("c", 1)], &[]), REVISION)
        .expect("second");
    assert_eq!(names(&second), ["a", "c"], "only what changed");
    assert_eq!(second.removed, ["b"]);
}

#[test]
fn delta_answers_names_that_do_not_exist_and_forgets_unsubscribed_ones() {
    let mut s = Session::new(Mode::Delta);
    let mut w = Resources::default();
    w.insert(TypeUrl::Endpoint, cluster("a", 1));
    s.on_request(delta(TypeUrl::Endpoint, "", &["a", "ghost"], &[]));
    let first = s.next_response(&w, REVISION).expect("first");
    assert_eq!(names(&first), ["a"]);
    assert_eq!(
        first.removed,
        ["ghost"],
        "a missing resource is said to be gone"
    );
    s.on_request(delta(TypeUrl::Endpoint, &first.nonce, &[], &["a"]));
    assert!(
        s.next_response(&w, REVISION).is_none(),
        "nothing subscribed changed"
    );
    s.on_request(delta(TypeUrl::Endpoint, "", &["a"], &[]));
    let again = s.next_response(&w, REVISION).expect("re-subscribed");
    assert_eq!(names(&again), ["a"]);
}

#[test]
fn a_delta_request_with_a_stale_nonce_still_changes_the_subscription() {
    let mut s = Session::new(Mode::Delta);
    let mut w = Resources::default();
    for name in ["a", "b", "c"] {
        w.insert(TypeUrl::Endpoint, cluster(name, 1));
    }
    s.on_request(delta(TypeUrl::Endpoint, "", &["a", "b"], &[]));
    let first = s.next_response(&w, REVISION).expect("first");
    assert_eq!(names(&first), ["a", "b"]);
    // Envoy answers an older response (or none it knows of) while changing its subscription:
    // not an answer to `first`, but c is wanted from now on and b is not.
    let mut stale = delta(TypeUrl::Endpoint, "older", &["c"], &["b"]);
    stale.error = Some("about an older response".into());
    assert_eq!(s.on_request(stale), Outcome::Stale);
    assert!(
        s.next_response(&w, REVISION).is_none(),
        "still one response in flight"
    );
    assert_eq!(
        s.on_request(delta(TypeUrl::Endpoint, &first.nonce, &[], &[])),
        Outcome::Ack {
            version: first.version.clone(),
            revision: REVISION,
        }
    );
    let second = s
        .next_response(&w, REVISION)
        .expect("c, subscribed by the stale request");
    assert_eq!(names(&second), ["c"]);
    s.on_request(delta(TypeUrl::Endpoint, &second.nonce, &[], &[]));
    // b was unsubscribed: its changes are not sent.
    let mut changed = w.clone();
    changed.insert(TypeUrl::Endpoint, cluster("b", 2));
    assert!(
        s.next_response(&changed, REVISION).is_none(),
        "b is not subscribed"
    );
}

#[test]
fn a_sotw_request_with_a_stale_nonce_is_ignored_entirely() {
    let mut s = Session::new(Mode::Sotw);
    let mut w = Resources::default();
    for name in ["a", "b"] {
        w.insert(TypeUrl::Endpoint, cluster(name, 1));
    }
    s.on_request(sotw(TypeUrl::Endpoint, "", &["a"]));
    let first = s.next_response(&w, REVISION).expect("first");
    assert_eq!(
        s.on_request(sotw(TypeUrl::Endpoint, "older", &["a", "b"])),
        Outcome::Stale
    );
    s.on_request(sotw(TypeUrl::Endpoint, &first.nonce, &["a"]));
    assert!(
        s.next_response(&w, REVISION).is_none(),
        "the stale list was an old view, not a change"
    );
}

#[test]
fn delta_resumes_from_the_versions_envoy_already_has() {
    let mut s = Session::new(Mode::Delta);
    let w = world(&[("a", 1), ("b", 1)], &[]);
    let has_a = w.of(TypeUrl::Cluster)["a"].version.clone();
    let mut request = delta(TypeUrl::Cluster, "", &["*"], &[]);
    request.names = Names::Delta {
        subscribe: vec!["*".into()],
        unsubscribe: Vec::new(),
        initial: BTreeMap::from([("a".to_owned(), has_a), ("old".to_owned(), "x".into())]),
    };
    s.on_request(request);
    let first = s.next_response(&w, REVISION).expect("first");
    assert_eq!(names(&first), ["b"]);
    assert_eq!(first.removed, ["old"]);
}

fn route(name: &str, cluster: &str) -> Resource {
    Resource::new(
        name,
        &envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
            name: name.into(),
            request_headers_to_remove: vec![cluster.into()],
            ..Default::default()
        },
    )
}

#[test]
fn a_cluster_is_removed_only_after_the_routes_that_named_it_are_replaced() {
    for mode in [Mode::Sotw, Mode::Delta] {
        let mut s = Session::new(mode);
        let mut before = world(&[("a", 1), ("b", 1)], &[]);
        before.insert(TypeUrl::Route, route("r", "b"));
        s.on_request(match mode {
            Mode::Sotw => sotw(TypeUrl::Cluster, "", &[]),
            Mode::Delta => delta(TypeUrl::Cluster, "", &[], &[]),
        });
        s.on_request(match mode {
            Mode::Sotw => sotw(TypeUrl::Route, "", &["r"]),
            Mode::Delta => delta(TypeUrl::Route, "", &["r"], &[]),
        });
        let ack = |s: &mut Session, r: &Response, names: &[&str]| {
            s.on_request(match mode {
                Mode::Sotw => sotw(r.type_url, &r.nonce, names),
                Mode::Delta => delta(r.type_url, &r.nonce, &[], &[]),
            })
        };
        let c = s.next_response(&before, REVISION).expect("clusters");
        ack(&mut s, &c, &[]);
        let r = s.next_response(&before, REVISION).expect("routes");
        ack(&mut s, &r, &["r"]);
        // The route stops naming b and b goes away: the route first, b's removal after.
        let mut after = world(&[("a", 1)], &[]);
        after.insert(TypeUrl::Route, route("r", "a"));
        let first = s.next_response(&after, REVISION).expect("a response");
        assert_eq!(first.type_url, TypeUrl::Route, "{mode:?}");
        assert!(
            s.next_response(&after, REVISION).is_none(),
            "{mode:?}: b stays until the ACK"
        );
        ack(&mut s, &first, &["r"]);
        let removal = s.next_response(&after, REVISION).expect("the removal");
        assert_eq!(removal.type_url, TypeUrl::Cluster);
        match mode {
            Mode::Sotw => assert_eq!(names(&removal), ["a"]),
            Mode::Delta => assert_eq!(removal.removed, ["b"]),
        }
    }
}

#[test]
fn a_cluster_stays_while_envoy_keeps_a_route_naming_it_after_rejecting_its_replacement() {
    for mode in [Mode::Sotw, Mode::Delta] {
        let mut s = Session::new(mode);
        let mut before = world(&[("a", 1), ("b", 1)], &[]);
        before.insert(TypeUrl::Route, route("r", "b"));
        let request = |type_url, nonce: &str, names: &[&str]| match mode {
            Mode::Sotw => sotw(type_url, nonce, names),
            Mode::Delta if nonce.is_empty() => delta(type_url, nonce, names, &[]),
            Mode::Delta => delta(type_url, nonce, &[], &[]),
        };
        s.on_request(request(TypeUrl::Cluster, "", &[]));
        s.on_request(request(TypeUrl::Route, "", &["r"]));
        let c = s.next_response(&before, REVISION).expect("clusters");
        s.on_request(request(TypeUrl::Cluster, &c.nonce, &[]));
        let r = s.next_response(&before, REVISION).expect("routes");
        s.on_request(request(TypeUrl::Route, &r.nonce, &["r"]));

        // The route stops naming b and b goes away, but Envoy rejects the new route: the
        // route it keeps still names b, so b must stay.
        let mut after = world(&[("a", 1)], &[]);
        after.insert(TypeUrl::Route, route("r", "a"));
        let rejected = s.next_response(&after, REVISION).expect("the new route");
        assert_eq!(rejected.type_url, TypeUrl::Route, "{mode:?}");
        let mut nack = request(TypeUrl::Route, &rejected.nonce, &["r"]);
        nack.error = Some("route rejected".into());
        assert!(
            matches!(s.on_request(nack), Outcome::Nack { .. }),
            "{mode:?}"
        );
        assert!(
            s.next_response(&after, REVISION).is_none(),
            "{mode:?}: b stays while the route Envoy kept names it"
        );
        // Another cluster change goes out, with b still in it.
        let mut changed = world(&[("a", 2)], &[]);
        changed.insert(TypeUrl::Route, route("r", "a"));
        let c = s.next_response(&changed, REVISION).expect("a's change");
        assert_eq!(c.type_url, TypeUrl::Cluster, "{mode:?}");
        match mode {
            Mode::Sotw => assert_eq!(names(&c), ["a", "b"]),
            Mode::Delta => assert!(c.removed.is_empty(), "{mode:?}: {c:?}"),
        }
        s.on_request(request(TypeUrl::Cluster, &c.nonce, &[]));

        // A route Envoy accepts no longer names b: only then does b go.
        let mut fixed = world(&[("a", 2)], &[]);
        fixed.insert(TypeUrl::Route, route("r", "a,fixed"));
        let accepted = s.next_response(&fixed, REVISION).expect("the fixed route");
        assert_eq!(accepted.type_url, TypeUrl::Route, "{mode:?}");
        assert!(s.next_response(&fixed, REVISION).is_none(), "{mode:?}");
        s.on_request(request(TypeUrl::Route, &accepted.nonce, &["r"]));
        let removal = s.next_response(&fixed, REVISION).expect("the removal");
        assert_eq!(removal.type_url, TypeUrl::Cluster, "{mode:?}");
        match mode {
            Mode::Sotw => assert_eq!(names(&removal), ["a"]),
            Mode::Delta => assert_eq!(removal.removed, ["b"]),
        }
    }
}

/// A world with the cluster `web` (and its endpoints) plus each subset cluster in `subsets` (and
/// its endpoints), and the route `web` naming every one of them.
fn subsets(subsets: &[&str]) -> Resources {
    let mut w = Resources::default();
    for name in std::iter::once("web").chain(subsets.iter().copied()) {
        w.insert(TypeUrl::Cluster, cluster(name, 1));
        w.insert(TypeUrl::Endpoint, cluster(name, 2));
    }
    w.insert(TypeUrl::Route, route("web", &subsets.join(",")));
    w
}

#[test]
fn endpoints_of_a_new_cluster_do_not_wait_for_the_clusters_ack() {
    // Envoy holds a CDS ACK while any cluster warms, and an EDS cluster warms until its
    // endpoints arrive: EDS waiting for that ACK left a new subset cluster unanswered until
    // Envoy's initial_fetch_timeout (15 s) gave up on it.
    for mode in [Mode::Sotw, Mode::Delta] {
        let mut s = Session::new(mode);
        // A request answering `nonce` (empty: none) and subscribing `added` to what it had.
        let request = |type_url, nonce: &str, had: &[&str], added: &[&str]| match mode {
            Mode::Sotw => {
                let all: Vec<&str> = had.iter().chain(added).copied().collect();
                sotw(type_url, nonce, &all)
            }
            Mode::Delta => delta(type_url, nonce, added, &[]),
        };
        let before = subsets(&[]);
        s.on_request(request(TypeUrl::Cluster, "", &[], &[]));
        s.on_request(request(TypeUrl::Route, "", &[], &["web"]));
        let c = s.next_response(&before, REVISION).expect("clusters");
        s.on_request(request(TypeUrl::Endpoint, "", &[], &["web"]));
        s.on_request(request(TypeUrl::Cluster, &c.nonce, &[], &[]));
        let e = s.next_response(&before, REVISION).expect("endpoints");
        s.on_request(request(TypeUrl::Endpoint, &e.nonce, &["web"], &[]));
        let r = s.next_response(&before, REVISION).expect("routes");
        s.on_request(request(TypeUrl::Route, &r.nonce, &["web"], &[]));
        assert!(
            s.next_response(&before, REVISION).is_none(),
            "{mode:?}: all ACKed"
        );

        // A service-resolver adds the subset cluster v1.web, which the route now names.
        let after = subsets(&["v1.web"]);
        let c = s.next_response(&after, REVISION).expect("the new cluster");
        assert_eq!(c.type_url, TypeUrl::Cluster, "{mode:?}");
        assert!(names(&c).contains(&"v1.web"), "{mode:?}");
        assert!(
            s.next_response(&after, REVISION).is_none(),
            "{mode:?}: the route waits for the clusters' ACK"
        );
        // Envoy warms v1.web: it subscribes to its endpoints and holds the CDS ACK until they
        // arrive.
        s.on_request(request(TypeUrl::Endpoint, "", &["web"], &["v1.web"]));
        let e = s
            .next_response(&after, REVISION)
            .expect("the endpoints, while the clusters' ACK is held");
        assert_eq!(e.type_url, TypeUrl::Endpoint, "{mode:?}");
        assert!(names(&e).contains(&"v1.web"), "{mode:?}");
        assert!(
            s.next_response(&after, REVISION).is_none(),
            "{mode:?}: the route still waits for the clusters' ACK"
        );
        // v1.web has warmed: Envoy ACKs both, and only then is the route naming it sent.
        s.on_request(request(
            TypeUrl::Endpoint,
            &e.nonce,
            &["web", "v1.web"],
            &[],
        ));
        assert!(
            s.next_response(&after, REVISION).is_none(),
            "{mode:?}: the clusters are not ACKed yet"
        );
        s.on_request(request(TypeUrl::Cluster, &c.nonce, &[], &[]));
        let r = s.next_response(&after, REVISION).expect("the route");
        assert_eq!(
            (r.type_url, names(&r)),
            (TypeUrl::Route, vec!["web"]),
            "{mode:?}"
        );
    }
}

mod properties {
    //! Arbitrary request sequences (issue 16's fuzzing on stable): whatever an Envoy sends, in
    //! whatever order, the session never panics, never reuses a nonce, keeps at most one
    //! response in flight per type, only sends types that were asked for, and sends listeners,
    //! routes and secrets only while no cluster or endpoint response awaits an answer.

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// A request; `nonce` picks a sent nonce by index (or a made-up one when none fits).
        Request {
            type_url: usize,
            nonce: Option<usize>,
            junk_nonce: String,
            error: bool,
            names: Vec<String>,
            unsubscribe: Vec<String>,
        },
        /// The world changes to these clusters and listeners.
        World(Vec<(String, i64)>, Vec<String>),
        /// The server sends what it would.
        Send,
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_owned()), Just("b".to_owned()), "[a-z*]{0,3}"]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (
                0..TypeUrl::ALL.len(),
                proptest::option::of(0usize..8),
                "[a-z0-9]{0,4}",
                any::<bool>(),
                proptest::collection::vec(name(), 0..3),
                proptest::collection::vec(name(), 0..2),
            )
                .prop_map(
                    |(type_url, nonce, junk_nonce, error, names, unsubscribe)| {
                        Step::Request {
                            type_url,
                            nonce,
                            junk_nonce,
                            error,
                            names,
                            unsubscribe,
                        }
                    }
                ),
            (
                proptest::collection::vec((name(), 0i64..3), 0..3),
                proptest::collection::vec(name(), 0..2)
            )
                .prop_map(|(c, l)| Step::World(c, l)),
            Just(Step::Send),
        ]
    }

    fn run(mode: Mode, steps: Vec<Step>) {
        let mut session = Session::new(mode);
        let mut resources = Resources::default();
        let mut sent: Vec<(TypeUrl, String)> = Vec::new();
        let mut nonces = BTreeSet::new();
        let mut asked = BTreeSet::new();
        // Per type, the nonce of the response awaiting an answer.
        let mut in_flight: BTreeMap<TypeUrl, String> = BTreeMap::new();
        for step in steps {
            match step {
                Step::Request {
                    type_url,
                    nonce,
                    junk_nonce,
                    error,
                    names,
                    unsubscribe,
                } => {
                    let type_url = TypeUrl::ALL[type_url];
                    let nonce = match nonce.and_then(|i| sent.get(i)) {
                        Some((_, nonce)) => nonce.clone(),
                        None => junk_nonce,
                    };
                    let names = match mode {
                        Mode::Sotw => Names::Sotw(names),
                        Mode::Delta => Names::Delta {
                            subscribe: names,
                            unsubscribe,
                            initial: BTreeMap::new(),
                        },
                    };
                    let outcome = session.on_request(Request {
                        type_url,
                        nonce: nonce.clone(),
                        version: String::new(),
                        error: error.then(|| "rejected".to_owned()),
                        names,
                    });
                    asked.insert(type_url);
                    if matches!(outcome, Outcome::Ack { .. } | Outcome::Nack { .. }) {
                        // Only the response awaiting an answer can be answered.
                        assert_eq!(in_flight.remove(&type_url), Some(nonce));
                    }
                }
                Step::World(clusters, listeners) => {
                    let clusters: Vec<(&str, i64)> =
                        clusters.iter().map(|(n, t)| (n.as_str(), *t)).collect();
                    let listeners: Vec<&str> = listeners.iter().map(String::as_str).collect();
                    resources = world(&clusters, &listeners);
                }
                Step::Send => {
                    while let Some(response) = session.next_response(&resources, REVISION) {
                        assert!(asked.contains(&response.type_url), "{response:?}");
                        assert!(nonces.insert(response.nonce.clone()), "nonce reused");
                        if !matches!(response.type_url, TypeUrl::Cluster | TypeUrl::Endpoint) {
                            assert!(
                                !in_flight.contains_key(&TypeUrl::Cluster)
                                    && !in_flight.contains_key(&TypeUrl::Endpoint),
                                "{:?} sent before the clusters and endpoints were answered",
                                response.type_url
                            );
                        }
                        let before = in_flight.insert(response.type_url, response.nonce.clone());
                        assert_eq!(before, None, "two responses in flight for one type");
                        sent.push((response.type_url, response.nonce));
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_sotw_request_sequence_keeps_the_protocol(
            steps in proptest::collection::vec(step(), 0..40)
        ) {
            run(Mode::Sotw, steps);
        }

        #[test]
        fn any_delta_request_sequence_keeps_the_protocol(
            steps in proptest::collection::vec(step(), 0..40)
        ) {
            run(Mode::Delta, steps);
        }
    }
}
