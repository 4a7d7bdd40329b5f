//! Ordering: what goes before what. Clusters and endpoints before the listeners and routes
//! that name them; removals the other way round.

use super::tests::{REVISION, cluster, delta, listener, names, sotw, world};
use super::*;

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

/// A world with `clusters` (each with its endpoints) and the route `web` naming `named`.
fn routed(clusters: &[&str], named: &[&str]) -> Resources {
    let mut w = Resources::default();
    for name in clusters {
        w.insert(TypeUrl::Cluster, cluster(name, 1));
        w.insert(TypeUrl::Endpoint, cluster(name, 2));
    }
    w.insert(TypeUrl::Route, route("web", &named.join(",")));
    w
}

/// A request of `mode` answering `nonce` (empty: none) and subscribing `added` to what it `had`.
fn subscribing(
    mode: Mode,
    type_url: TypeUrl,
    nonce: &str,
    had: &[&str],
    added: &[&str],
) -> Request {
    match mode {
        Mode::Sotw => {
            let all: Vec<&str> = had.iter().chain(added).copied().collect();
            sotw(type_url, nonce, &all)
        }
        Mode::Delta => delta(type_url, nonce, added, &[]),
    }
}

#[test]
fn endpoints_of_a_new_cluster_do_not_wait_for_the_clusters_ack() {
    // Envoy holds a CDS ACK while any cluster warms, and an EDS cluster warms until its
    // endpoints arrive: EDS waiting for that ACK left a new subset cluster unanswered until
    // Envoy's initial_fetch_timeout (15 s) gave up on it.
    for mode in [Mode::Sotw, Mode::Delta] {
        let mut s = Session::new(mode);
        let request = |type_url, nonce: &str, had: &[&str], added: &[&str]| {
            subscribing(mode, type_url, nonce, had, added)
        };
        let before = routed(&["web"], &[]);
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
        let after = routed(&["web", "v1.web"], &["v1.web"]);
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

#[test]
fn endpoints_of_a_removed_cluster_stay_as_long_as_the_cluster() {
    // A service-resolver replaces the plain cluster web with the subset clusters v1.web and
    // v2.web: web stays until the route Envoy ACKed stops naming it, and so do its endpoints,
    // which go only after web's removal was sent (not ~20 ms before the route changes).
    for mode in [Mode::Sotw, Mode::Delta] {
        let mut s = Session::new(mode);
        let request = |type_url, nonce: &str, had: &[&str], added: &[&str]| {
            subscribing(mode, type_url, nonce, had, added)
        };
        let before = routed(&["web"], &["web"]);
        s.on_request(request(TypeUrl::Cluster, "", &[], &[]));
        s.on_request(request(TypeUrl::Endpoint, "", &[], &["web"]));
        s.on_request(request(TypeUrl::Route, "", &[], &["web"]));
        let c = s.next_response(&before, REVISION).expect("clusters");
        s.on_request(request(TypeUrl::Cluster, &c.nonce, &[], &[]));
        let e = s.next_response(&before, REVISION).expect("endpoints");
        s.on_request(request(TypeUrl::Endpoint, &e.nonce, &["web"], &[]));
        let r = s.next_response(&before, REVISION).expect("routes");
        s.on_request(request(TypeUrl::Route, &r.nonce, &["web"], &[]));
        assert!(s.next_response(&before, REVISION).is_none(), "{mode:?}");

        let after = routed(&["v1.web", "v2.web"], &["v1.web", "v2.web"]);
        let c = s.next_response(&after, REVISION).expect("the subsets");
        assert_eq!(c.type_url, TypeUrl::Cluster, "{mode:?}");
        match mode {
            Mode::Sotw => assert_eq!(names(&c), ["v1.web", "v2.web", "web"]),
            Mode::Delta => assert!(c.removed.is_empty(), "web is kept: {c:?}"),
        }
        // Envoy warms the subset clusters: it subscribes to their endpoints, which come
        // without a word about web's going.
        s.on_request(request(
            TypeUrl::Endpoint,
            "",
            &["web"],
            &["v1.web", "v2.web"],
        ));
        let e = s.next_response(&after, REVISION).expect("their endpoints");
        assert_eq!(e.type_url, TypeUrl::Endpoint, "{mode:?}");
        match mode {
            Mode::Sotw => assert_eq!(names(&e), ["v1.web", "v2.web", "web"]),
            Mode::Delta => {
                assert_eq!(names(&e), ["v1.web", "v2.web"]);
                assert!(e.removed.is_empty(), "web's endpoints are kept: {e:?}");
            }
        }
        let all = ["web", "v1.web", "v2.web"];
        s.on_request(request(TypeUrl::Endpoint, &e.nonce, &all, &[]));
        s.on_request(request(TypeUrl::Cluster, &c.nonce, &[], &[]));
        let r = s.next_response(&after, REVISION).expect("the route");
        assert_eq!(r.type_url, TypeUrl::Route, "{mode:?}");
        assert!(
            s.next_response(&after, REVISION).is_none(),
            "{mode:?}: web and its endpoints stay until the route's ACK"
        );
        s.on_request(request(TypeUrl::Route, &r.nonce, &["web"], &[]));
        // The cluster goes first, its endpoints after it.
        let removal = s.next_response(&after, REVISION).expect("web's removal");
        assert_eq!(removal.type_url, TypeUrl::Cluster, "{mode:?}");
        let gone = s.next_response(&after, REVISION).expect("its endpoints'");
        assert_eq!(gone.type_url, TypeUrl::Endpoint, "{mode:?}");
        for response in [&removal, &gone] {
            match mode {
                Mode::Sotw => assert_eq!(names(response), ["v1.web", "v2.web"]),
                Mode::Delta => assert_eq!(response.removed, ["web"]),
            }
        }
    }
}
