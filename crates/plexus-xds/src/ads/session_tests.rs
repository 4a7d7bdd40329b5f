use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::*;

/// The configuration revision of the resources in tests that do not follow revisions.
pub(super) const REVISION: u64 = 1;

pub(super) fn cluster(name: &str, timeout_secs: i64) -> Resource {
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

pub(super) fn listener(name: &str) -> Resource {
    Resource::new(
        name,
        &Listener {
            name: name.into(),
            ..Default::default()
        },
    )
}

pub(super) fn world(clusters: &[(&str, i64)], listeners: &[&str]) -> Resources {
    let mut r = Resources::default();
    for (name, t) in clusters {
        r.insert(TypeUrl::Cluster, cluster(name, *t));
    }
    for name in listeners {
        r.insert(TypeUrl::Listener, listener(name));
    }
    r
}

pub(super) fn sotw(type_url: TypeUrl, nonce: &str, names: &[&str]) -> Request {
    Request {
        type_url,
        nonce: nonce.into(),
        version: String::new(),
        error: None,
        names: Names::Sotw(names.iter().map(|s| (*s).to_owned()).collect()),
    }
}

pub(super) fn names(response: &Response) -> Vec<&str> {
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

pub(super) fn delta(
    type_url: TypeUrl,
    nonce: &str,
    subscribe: &[&str],
    unsubscribe: &[&str],
) -> Request {
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
