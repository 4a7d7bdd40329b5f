#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicUsize;

use super::*;

const T: Duration = Duration::from_secs(5);

fn platform() -> Platform {
    let p = Platform::with_origin("test", "me");
    p.register(
        "hello.world",
        10,
        Visibility::Public,
        |e: EventEnvelope| async move {
            let mut out = vec![(Value::from("echo"), e.body.clone())];
            out.push((
                Value::from("trace_id"),
                Value::from(e.trace_id.clone().unwrap_or_default()),
            ));
            out.push((
                Value::from("from"),
                Value::from(e.from.clone().unwrap_or_default()),
            ));
            Ok(Value::Map(out))
        },
    )
    .unwrap();
    p
}

#[tokio::test]
async fn request_reply_carries_trace_and_caller() {
    let p = platform();
    let mut e = EventEnvelope::to("hello.world", "hi");
    e.trace_id = Some("t1".into());
    e.trace_path = Some("GET /x".into());
    e.from = Some("my.caller".into());
    let reply = p.request(e, T).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["echo"], Value::from("hi"));
    assert_eq!(reply.body["trace_id"], Value::from("t1"));
    assert_eq!(reply.body["from"], Value::from("my.caller"));
    assert_eq!(reply.trace_id.as_deref(), Some("t1"));
    assert_eq!(reply.trace_path.as_deref(), Some("GET /x"));
    assert_eq!(reply.from.as_deref(), Some("hello.world"));
    assert!(reply.exec_time.is_some() && reply.round_trip.is_some());
}

#[tokio::test]
async fn the_callers_cid_is_preserved_and_concurrent_requests_with_one_cid_do_not_mix() {
    let p = platform();
    let metrics = crate::observe::EventMetrics::new();
    p.set_observer(Arc::new(metrics.clone()));
    let calls = (0..50).map(|i| {
        let mut e = EventEnvelope::to("hello.world", i);
        e.cid = Some("order-42".into());
        p.request(e, T)
    });
    for (i, reply) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(reply.cid.as_deref(), Some("order-42"));
        assert_eq!(reply.body["echo"], Value::from(i));
    }
    // No cid in, none invented.
    let reply = p.request(EventEnvelope::to("hello.world", 1), T).await;
    assert_eq!(reply.cid, None);
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"plexus_events_requests_total{route="hello.world",origin_app="test",status="2xx"} 51"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"plexus_events_handled_total{route="hello.world",origin_app="test",status="2xx"} 51"#
        ),
        "{text}"
    );
    let reply = p.request(EventEnvelope::to("no.such", 1), T).await;
    assert_eq!(reply.status, 404);
    assert!(metrics.encode().contains(
        r#"plexus_events_requests_total{route="unknown",origin_app="unknown",status="4xx"} 1"#
    ));
}

#[test]
fn inbox_routes_are_reserved() {
    let p = Platform::with_origin("test", "me");
    let error = p
        .register(
            "inbox.mine",
            1,
            Visibility::Public,
            |_e: EventEnvelope| async move { Ok(Value::Nil) },
        )
        .unwrap_err();
    assert!(error.message.contains("reserved"), "{error}");
}

#[tokio::test]
async fn unknown_route_is_404_not_a_timeout() {
    let p = platform();
    let reply = p.request(EventEnvelope::to("no.such", 1), T).await;
    assert_eq!(reply.status, 404);
    assert!(reply.error_message().unwrap().contains("no.such"));
    assert_eq!(
        p.send(EventEnvelope::to("no.such", 1))
            .await
            .unwrap_err()
            .status,
        404
    );
    let bad = p.request(EventEnvelope::to("NoDot", 1), T).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn timeout_is_408() {
    let p = platform();
    p.register("slow.route", 1, Visibility::Public, |_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Value::Nil)
    })
    .unwrap();
    let reply = p
        .request(
            EventEnvelope::to("slow.route", 1),
            Duration::from_millis(50),
        )
        .await;
    assert_eq!(reply.status, 408);
    assert!(reply.error_message().unwrap().contains("Timeout"));
}

#[tokio::test]
async fn panicking_handler_is_500_and_pool_survives() {
    let p = platform();
    p.register(
        "boom.route",
        1,
        Visibility::Public,
        |e: EventEnvelope| async move {
            if e.body == Value::from("panic") {
                panic!("handler exploded");
            }
            Ok(Value::from("fine"))
        },
    )
    .unwrap();
    for _ in 0..3 {
        let reply = p.request(EventEnvelope::to("boom.route", "panic"), T).await;
        assert_eq!(reply.status, 500);
        assert!(reply.error_message().unwrap().contains("boom.route"));
    }
    let reply = p.request(EventEnvelope::to("boom.route", "ok"), T).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, Value::from("fine"));
}

#[tokio::test]
async fn handler_faults_keep_their_status() {
    let p = platform();
    p.register("bad.route", 1, Visibility::Public, |_| async {
        Err(Fault::new(422, "no good"))
    })
    .unwrap();
    let reply = p.request(EventEnvelope::to("bad.route", 1), T).await;
    assert_eq!(
        (reply.status, reply.error_message().unwrap().as_str()),
        (422, "no good")
    );
}

#[tokio::test]
async fn bulkhead_limits_concurrency_and_loses_nothing() {
    let p = Platform::with_origin("test", "me");
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, pk) = (running.clone(), peak.clone());
    p.register(
        "work.route",
        10,
        Visibility::Public,
        move |e: EventEnvelope| {
            let (r, pk) = (r.clone(), pk.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                pk.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(e.body)
            }
        },
    )
    .unwrap();
    let calls = (0..1000).map(|i| p.request(EventEnvelope::to("work.route", i), T));
    let replies = futures::future::join_all(calls).await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, Value::from(i));
    }
    assert!(peak.load(Ordering::SeqCst) <= 10);
    assert!(peak.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn fork_join_in_order_and_partial() {
    let p = platform();
    p.register("slow.route", 1, Visibility::Public, |_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Value::Nil)
    })
    .unwrap();
    let events = (0..5)
        .map(|i| EventEnvelope::to("hello.world", i))
        .collect();
    let replies = p.fork_join(events, T, false).await.unwrap();
    let bodies: Vec<_> = replies.iter().map(|r| r.body["echo"].clone()).collect();
    assert_eq!(bodies, (0..5).map(Value::from).collect::<Vec<_>>());

    let mixed = vec![
        EventEnvelope::to("hello.world", 1),
        EventEnvelope::to("slow.route", 2),
        EventEnvelope::to("hello.world", 3),
    ];
    let short = Duration::from_millis(100);
    let partial = p.fork_join(mixed.clone(), short, true).await.unwrap();
    let bodies: Vec<_> = partial.iter().map(|r| r.body["echo"].clone()).collect();
    assert_eq!(bodies, vec![Value::from(1), Value::from(3)]);
    assert_eq!(
        p.fork_join(mixed, short, false).await.unwrap_err().status,
        408
    );
}

#[tokio::test]
async fn broadcast_exists_search() {
    let p = platform();
    assert!(p.exists("hello.world"));
    assert!(!p.exists("hello.pojo"));
    assert_eq!(p.search("hello.world"), vec!["me".to_owned()]);
    p.update_table(|t| {
        t.join(plexus_api::presence::Peer {
            origin: "peer1".into(),
            app: "other".into(),
            group: "default".into(),
            topic: "multiplex.0001-001".into(),
            routes: vec!["hello.world".into(), "hello.pojo".into()],
        })
    });
    assert!(p.exists("hello.pojo"));
    assert_eq!(
        p.search("hello.world"),
        vec!["me".to_owned(), "peer1".to_owned()]
    );
    // Without a connector the peer is unreachable: a clear 503, not a hang.
    let reply = p.request(EventEnvelope::to("hello.pojo", 1), T).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    // Local routes are preferred.
    assert_eq!(
        p.request(EventEnvelope::to("hello.world", 1), T)
            .await
            .status,
        200
    );
    assert_eq!(
        p.broadcast(EventEnvelope::to("no.route", 1))
            .await
            .unwrap_err()
            .status,
        404
    );
    p.update_table(|t| t.clear());
    assert!(!p.exists("hello.pojo"));
}

#[tokio::test]
async fn private_routes_refuse_outside_callers() {
    let p = platform();
    p.register("secret.route", 1, Visibility::Private, |_| async {
        Ok(Value::from(1))
    })
    .unwrap();
    assert_eq!(
        p.request(EventEnvelope::to("secret.route", 1), T)
            .await
            .status,
        200
    );
    let outside = p
        .request_external(EventEnvelope::to("secret.route", 1), T)
        .await;
    assert_eq!(outside.status, 403);
    assert_eq!(*p.public_routes().borrow(), vec!["hello.world".to_owned()]);
}

#[tokio::test]
async fn malformed_broker_messages_are_counted_and_dropped() {
    let p = platform();
    p.receive(&[0xc1]).await;
    p.receive(b"not msgpack at all").await;
    assert_eq!(p.stats().malformed.load(Ordering::Relaxed), 2);
    // A well-formed event still goes through afterwards.
    let reply = p.request(EventEnvelope::to("hello.world", 1), T).await;
    assert_eq!(reply.status, 200);
}

#[test]
fn registration_validates() {
    let p = Platform::with_origin("test", "me");
    let f = |_| async { Ok(Value::Nil) };
    assert_eq!(
        p.register("nodot", 1, Visibility::Public, f)
            .unwrap_err()
            .status,
        400
    );
    assert_eq!(
        p.register("a.b", 0, Visibility::Public, f)
            .unwrap_err()
            .status,
        400
    );
}
