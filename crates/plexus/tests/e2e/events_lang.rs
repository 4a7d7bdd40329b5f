//! Apps in Python and Node.js on the event mesh: real `plexus events node` processes (the
//! language connector), the example apps of `clients/python` and `clients/node` as real
//! processes, real brokers (NATS, Tansu), and this test process as a Rust app through the library.

use std::time::{Duration, Instant};

use plexus_events::{EventEnvelope, Value};
use plexus_test::brokers::{NatsServer, Tansu};
use plexus_test::events::{Broker, EventsNode, Lang, LangApp};
use plexus_test::eventually;

use crate::events::test_app_on;
use crate::{bin, dev};

const T: Duration = Duration::from_secs(30);

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

/// `count` concurrent requests from the Rust app to `route`; every reply must echo its body.
async fn rust_load(tester: &plexus_events::Platform, route: &str, count: usize, app: &str) {
    let calls = (0..count).map(|i| tester.request(EventEnvelope::to(route, i), T));
    let replies = futures::future::join_all(calls).await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200, "{route} reply {i}: {reply:?}");
        assert_eq!(reply.body["body"], Value::from(i), "{route} reply {i}");
        assert_eq!(reply.body["app"], Value::from(app), "{route} reply {i}");
    }
}

/// Asks the app serving `load_route` to fire `count` concurrent requests at `target`.
async fn app_load(
    tester: &plexus_events::Platform,
    load_route: &str,
    target: &str,
    count: usize,
) -> Value {
    let body = map(&[
        ("route", Value::from(target)),
        ("count", Value::from(count)),
    ]);
    let reply = tester
        .request(EventEnvelope::to(load_route, body), Duration::from_secs(90))
        .await;
    assert_eq!(reply.status, 200, "{load_route}: {reply:?}");
    reply.body
}

async fn languages(broker: Broker) {
    let dev = dev(&[]).await;
    let control = dev.addr();
    let node_py = EventsNode::start(bin(), "node-py", Some(&broker), &control, &[])
        .await
        .expect("python's node starts");
    let node_js = EventsNode::start(bin(), "node-js", Some(&broker), &control, &[])
        .await
        .expect("node.js's node starts");
    let py = LangApp::start(
        Lang::Python,
        &node_py.ws_url(),
        "py-app",
        &[
            "--routes",
            "py.echo",
            "--load-route",
            "py.load",
            "--workers",
            "50",
        ],
    )
    .await
    .expect("the Python app starts and registers");
    let _js = LangApp::start(
        Lang::Node,
        &node_js.ws_url(),
        "js-app",
        &[
            "--routes",
            "js.echo",
            "--load-route",
            "js.load",
            "--workers",
            "50",
        ],
    )
    .await
    .expect("the Node.js app starts and registers");
    let (tester, mesh) = test_app_on(&dev, &broker).await;
    eventually!(
        ["py.echo", "py.load", "js.echo", "js.load"]
            .iter()
            .all(|r| tester.exists(r))
    );

    // The Rust app calls both, 1,000 concurrent requests each: nothing lost.
    let started = Instant::now();
    rust_load(&tester, "py.echo", 1000, "py-app").await;
    rust_load(&tester, "js.echo", 1000, "js-app").await;
    println!(
        "rust -> python, rust -> node: 2 x 1000 requests in {:?}",
        started.elapsed()
    );

    // Python and Node.js call each other across the broker, 1,000 concurrent requests each way.
    let started = Instant::now();
    let outcome = app_load(&tester, "py.load", "js.echo", 1000).await;
    assert_eq!(outcome["ok"], Value::from(1000), "{outcome}");
    assert_eq!(
        outcome["served_by"]["js-app"],
        Value::from(1000),
        "{outcome}"
    );
    let outcome = app_load(&tester, "js.load", "py.echo", 1000).await;
    assert_eq!(outcome["ok"], Value::from(1000), "{outcome}");
    assert_eq!(
        outcome["served_by"]["py-app"],
        Value::from(1000),
        "{outcome}"
    );
    println!(
        "python <-> node: 2 x 1000 requests in {:?}",
        started.elapsed()
    );

    // The caller's cid and trace id reach the function and come back.
    let mut traced = EventEnvelope::to("py.echo", "traced");
    traced.cid = Some("order-42".into());
    traced.trace_id = Some("0af7651916cd43dd8448eb211c80319c".into());
    let reply = tester.request(traced, T).await;
    assert_eq!(reply.cid.as_deref(), Some("order-42"), "{reply:?}");
    assert_eq!(reply.body["cid"], Value::from("order-42"));
    assert_eq!(
        reply.body["trace_id"],
        Value::from("0af7651916cd43dd8448eb211c80319c")
    );
    // A handler that raises answers 500 with the reason; one that refuses keeps its status.
    let reply = tester
        .request(EventEnvelope::to("js.echo", "boom"), T)
        .await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(
        reply.error_message().unwrap().contains("asked to fail"),
        "{reply:?}"
    );
    let reply = tester
        .request(EventEnvelope::to("py.echo", "fail"), T)
        .await;
    assert_eq!(reply.status, 422, "{reply:?}");

    // kill -9 of the Python app: its routes leave every routing table within the lease TTL.
    py.process.signal("KILL").unwrap();
    let killed = Instant::now();
    eventually!(!tester.exists("py.echo"), Duration::from_secs(5));
    println!(
        "py.echo left the Rust app's routing table {:?} after kill -9",
        killed.elapsed()
    );
    let reply = tester.request(EventEnvelope::to("py.echo", 1), T).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert!(tester.exists("js.echo"));
    mesh.stop();
}

#[tokio::test]
async fn python_and_node_apps_serve_rust_and_each_other_over_nats() {
    let nats = NatsServer::start().await.unwrap();
    languages(Broker::Nats(nats.url())).await;
}

#[tokio::test]
async fn python_and_node_apps_serve_rust_and_each_other_over_kafka() {
    let kafka = Tansu::start().await.unwrap();
    languages(Broker::Kafka(kafka.bootstrap())).await;
}
