#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use plexus_api::CheckStatus;

use super::*;
use crate::EmbeddedStore;

fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    (dir, Arc::new(store))
}

fn peer(origin: &str, topic: &str) -> Peer {
    Peer {
        origin: origin.into(),
        app: "app".into(),
        group: "default".into(),
        topic: topic.into(),
        routes: vec!["hello.world".into()],
    }
}

#[tokio::test]
async fn two_replicas_never_hand_one_topic_to_two_apps() {
    let (_dir, store) = store();
    let a = Presence::new(store.clone(), PresenceConfig::default());
    let b = Presence::new(store.clone(), PresenceConfig::default());
    let claims = (0..20).map(|i| {
        let replica = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { replica.claim(peer(&format!("o{i}"), "")).await.unwrap() }
    });
    let claims = futures::future::join_all(claims).await;
    let topics: BTreeSet<_> = claims.iter().map(|c| c.record.peer.topic.clone()).collect();
    assert_eq!(topics.len(), 20);
    assert!(topics.contains("multiplex.0001-000"));
    assert_eq!(a.topics().await.unwrap().len(), 20);
}

#[tokio::test]
async fn claiming_an_owned_topic_is_refused_and_released_topics_are_reused() {
    let (_dir, store) = store();
    let p = Presence::new(store, PresenceConfig::default());
    let first = p.claim(peer("one", "")).await.unwrap();
    assert_eq!(first.record.peer.topic, "multiplex.0001-000");
    let refused = p
        .claim(peer("two", "multiplex.0001-000"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("owned by another app"),
        "{refused}"
    );
    let bad = p.claim(peer("two", "multiplex.9")).await.unwrap_err();
    assert!(bad.to_string().contains("invalid topic"), "{bad}");
    // The same origin may reclaim its own topic (a reconnect).
    let again = p.claim(peer("one", "multiplex.0001-000")).await.unwrap();
    let second = p.claim(peer("two", "")).await.unwrap();
    assert_eq!(second.record.peer.topic, "multiplex.0001-001");
    p.release(&again).await.unwrap();
    assert_eq!(p.apps().await.unwrap().len(), 1);
    let third = p.claim(peer("three", "")).await.unwrap();
    assert_eq!(third.record.peer.topic, "multiplex.0001-000");
    // A stale claim (taken over since) does not delete the new owner's records.
    p.release(&first).await.unwrap();
    assert_eq!(p.apps().await.unwrap().len(), 2);
}

fn short_lease() -> PresenceConfig {
    PresenceConfig {
        lease_ttl: Duration::from_millis(300),
        ..PresenceConfig::default()
    }
}

#[tokio::test]
async fn apps_of_a_crashed_replica_vanish_with_their_lease_and_free_the_topic() {
    let (_dir, store) = store();
    let catalog = crate::StoreCatalog::new(store.clone(), "dc1");
    // A replica that claims an app, then dies: nobody renews the session's lease.
    let crashed = Presence::new(store.clone(), short_lease());
    let ghost = crashed.claim(peer("ghost", "")).await.unwrap();
    assert_eq!(ghost.record.peer.topic, "multiplex.0001-000");
    drop(crashed);
    let live = Presence::new(store.clone(), PresenceConfig::default());
    // While the lease lives the topic stays taken.
    let other = live.claim(peer("alive", "")).await.unwrap();
    assert_eq!(other.record.peer.topic, "multiplex.0001-001");
    plexus_test::eventually!(live.apps().await.unwrap().len() == 1);
    assert_eq!(live.apps().await.unwrap()[0].peer.origin, "alive");
    assert!(
        !live
            .topics()
            .await
            .unwrap()
            .contains_key("multiplex.0001-000")
    );
    let listed = catalog.service_nodes("app", None).await.unwrap().value;
    assert_eq!(
        listed
            .iter()
            .map(|s| s.service_id.as_str())
            .collect::<Vec<_>>(),
        ["alive"],
        "the ghost's catalog instance went with its lease"
    );
    let third = live.claim(peer("third", "")).await.unwrap();
    assert_eq!(
        third.record.peer.topic, "multiplex.0001-000",
        "topic reused"
    );
}

#[tokio::test]
async fn a_connected_app_is_a_catalog_service_until_it_leaves() {
    let (_dir, store) = store();
    let catalog = crate::StoreCatalog::new(store.clone(), "dc1");
    let p = Presence::new(store, PresenceConfig::default());
    let mut claim = p.claim(peer("one", "")).await.unwrap();
    let names = catalog.service_names().await.unwrap().value;
    assert_eq!(
        names.get("app"),
        Some(&vec!["event-app".to_owned(), "hello.world".to_owned()])
    );
    p.update_routes(&mut claim, vec!["hello.pojo".into(), "hello.world".into()])
        .await
        .unwrap();
    let health = catalog
        .service_health(
            "app",
            &crate::catalog::HealthFilter {
                passing: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .value;
    assert_eq!(health.len(), 1);
    let entry = &health[0];
    assert_eq!(entry.node.node, CATALOG_NODE);
    assert_eq!(entry.service.id, "one");
    assert_eq!(entry.service.meta["plexus-kind"], "event-app");
    assert_eq!(entry.service.meta["topic"], "multiplex.0001-000");
    assert_eq!(entry.service.meta["routes"], "hello.pojo,hello.world");
    assert_eq!(entry.checks.len(), 1);
    assert_eq!(entry.checks[0].status, CheckStatus::Passing);
    p.release(&claim).await.unwrap();
    assert!(catalog.service_names().await.unwrap().value.is_empty());
    assert!(
        catalog
            .service_health("app", &Default::default())
            .await
            .unwrap()
            .value
            .is_empty()
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn serve(presence: Presence) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            plexus_runtime::acl::layer(ws::router(presence), Default::default()),
        )
        .await
    });
    addr
}

async fn connect(addr: std::net::SocketAddr, origin: &str) -> Ws {
    let url = format!("ws://{addr}/ws/presence/{origin}");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn hello(ws: &mut Ws, routes: &[&str], topic: Option<&str>) {
    let frame = ClientFrameJson {
        routes: routes.iter().map(|r| (*r).to_owned()).collect(),
        topic: topic.map(str::to_owned),
    };
    ws.send(WsMessage::text(frame.to_json())).await.unwrap();
}

struct ClientFrameJson {
    routes: Vec<String>,
    topic: Option<String>,
}

impl ClientFrameJson {
    fn to_json(&self) -> String {
        serde_json::to_string(&plexus_api::presence::ClientFrame::Hello {
            app: "demo".into(),
            group: String::new(),
            routes: self.routes.clone(),
            topic: self.topic.clone(),
            address: None,
            port: None,
        })
        .unwrap()
    }
}

async fn next_frame(ws: &mut Ws) -> ServerFrame {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("stream open")
            .expect("frame read");
        if let WsMessage::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

use plexus_api::presence::ServerFrame;

#[tokio::test]
async fn websocket_sessions_see_joins_route_changes_and_leaves() {
    let (_dir, store) = store();
    let addr = serve(Presence::new(store, PresenceConfig::default())).await;
    let mut a = connect(addr, "aaa").await;
    hello(&mut a, &["hello.world"], None).await;
    let ServerFrame::Welcome { topic, peers } = next_frame(&mut a).await else {
        panic!("expected welcome")
    };
    assert_eq!(topic, "multiplex.0001-000");
    assert!(peers.is_empty());

    let mut b = connect(addr, "bbb").await;
    hello(&mut b, &["hello.world", "hello.pojo"], None).await;
    let ServerFrame::Welcome { topic, peers } = next_frame(&mut b).await else {
        panic!("expected welcome")
    };
    assert_eq!(topic, "multiplex.0001-001");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].origin, "aaa");
    let ServerFrame::Join { peer } = next_frame(&mut a).await else {
        panic!("expected join")
    };
    assert_eq!(peer.origin, "bbb");

    let routes = plexus_api::presence::ClientFrame::Routes {
        routes: vec!["hello.pojo".into()],
    };
    b.send(WsMessage::text(serde_json::to_string(&routes).unwrap()))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut a).await,
        ServerFrame::Routes {
            origin: "bbb".into(),
            routes: vec!["hello.pojo".into()]
        }
    );

    // A third app claiming b's topic is refused.
    let mut c = connect(addr, "ccc").await;
    hello(&mut c, &[], Some("multiplex.0001-001")).await;
    let ServerFrame::Refused { reason } = next_frame(&mut c).await else {
        panic!("expected refusal")
    };
    assert!(reason.contains("owned by another app"), "{reason}");

    drop(b);
    assert_eq!(
        next_frame(&mut a).await,
        ServerFrame::Leave {
            origin: "bbb".into()
        }
    );
}

#[tokio::test]
async fn bad_hello_frames_are_refused_naming_the_cause() {
    let (_dir, store) = store();
    let addr = serve(Presence::new(store, PresenceConfig::default())).await;
    for (frame, cause) in [
        ("not json", "malformed frame"),
        (r#"{"type":"routes","routes":[]}"#, "must be hello"),
        (
            r#"{"type":"hello","app":"x","routes":["NoDot"]}"#,
            "invalid route name",
        ),
        (r#"{"type":"hello","app":""}"#, "app: must not be empty"),
        (r#"{"type":"hello","app":"x","bogus":1}"#, "unknown field"),
    ] {
        let mut ws = connect(addr, "bad").await;
        ws.send(WsMessage::text(frame)).await.unwrap();
        let ServerFrame::Refused { reason } = next_frame(&mut ws).await else {
            panic!("expected refusal for {frame}")
        };
        assert!(reason.contains(cause), "{frame}: {reason}");
    }
    // A bad origin in the path is a 400 before any upgrade.
    let response = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/presence/a.b")).await;
    assert!(response.is_err());
}

#[tokio::test]
async fn a_silent_app_is_dropped_and_its_topic_released() {
    let (_dir, store) = store();
    let config = PresenceConfig {
        ping_interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
        ..PresenceConfig::default()
    };
    let presence = Presence::new(store, config);
    let addr = serve(presence.clone()).await;
    let mut watcher = connect(addr, "watcher").await;
    hello(&mut watcher, &[], None).await;
    assert!(matches!(
        next_frame(&mut watcher).await,
        ServerFrame::Welcome { .. }
    ));
    // This app says hello, then never reads again: it never answers the server's pings.
    let mut silent = connect(addr, "silent").await;
    hello(&mut silent, &["hello.world"], None).await;
    let ServerFrame::Join { peer } = next_frame(&mut watcher).await else {
        panic!("expected join")
    };
    assert_eq!(peer.origin, "silent");
    assert_eq!(
        next_frame(&mut watcher).await,
        ServerFrame::Leave {
            origin: "silent".into()
        }
    );
    let topics = presence.topics().await.unwrap();
    assert_eq!(topics.len(), 1, "{topics:?}");
    drop(silent);
}

#[tokio::test]
async fn a_connected_app_does_not_wake_catalog_blocking_queries() {
    use plexus_api::Catalog;
    let (_dir, store) = store();
    let catalog = crate::StoreCatalog::new(store.clone(), "dc1");
    let config = PresenceConfig {
        ping_interval: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
        lease_ttl: Duration::from_millis(300),
    };
    let presence = Presence::new(store.clone(), config);
    let addr = serve(presence.clone()).await;
    let mut app = connect(addr, "steady").await;
    hello(&mut app, &["hello.world"], None).await;
    assert!(matches!(
        next_frame(&mut app).await,
        ServerFrame::Welcome { .. }
    ));
    let before = catalog.service_names().await.unwrap();
    assert!(before.value.contains_key("demo"));
    // A blocking query parked at the current index.
    let mut index = catalog.index_watch();
    index.mark_unchanged();
    let woken = tokio::spawn(async move { index.changed().await.is_ok() });
    // 40 pings at 50 ms: well over five lease TTLs, so the lease was renewed many times (or
    // the app's records would be gone and the index would have moved).
    let mut pings = 0;
    while pings < 40 {
        let message = tokio::time::timeout(Duration::from_secs(10), app.next())
            .await
            .expect("a ping within 10 s")
            .expect("stream open")
            .expect("frame read");
        if matches!(message, WsMessage::Ping(_)) {
            pings += 1;
        }
    }
    let after = catalog.service_names().await.unwrap();
    assert_eq!(
        after.index, before.index,
        "the catalog index moved while the app stayed"
    );
    assert!(after.value.contains_key("demo"));
    assert!(
        !woken.is_finished(),
        "a blocking query was woken for nothing"
    );
    // Control: the app leaving does wake it.
    drop(app);
    assert!(
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .unwrap()
            .unwrap()
    );
    plexus_test::eventually!(
        !catalog
            .service_names()
            .await
            .unwrap()
            .value
            .contains_key("demo")
    );
}
