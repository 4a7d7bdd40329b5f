//! Bad input over the language connector, from a raw WebSocket client written here: frames
//! before hello, unknown and malformed frames, oversized events, another app's route, floods of
//! calls and of frames. Each is refused with a reason; the node and its apps keep serving.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use plexus_events::segment::{Reassembler, split};
use plexus_events::{EventEnvelope, Value};
use plexus_test::events::{EventsNode, Lang, LangApp};
use plexus_test::eventually;
use tokio_tungstenite::tungstenite::Message;

use crate::{bin, dev};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn frame(entries: &[(&str, Value)]) -> Message {
    let map = Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    );
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &map).unwrap();
    Message::binary(out)
}

/// The next frame from the node as a MsgPack map (`None` once it closed).
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s")?;
        match message.ok()? {
            Message::Binary(bytes) => {
                return Some(rmpv::decode::read_value(&mut &bytes[..]).unwrap());
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

async fn connect(node: &EventsNode) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(node.ws_url())
        .await
        .unwrap();
    ws.send(frame(&[
        ("type", "hello".into()),
        ("protocol", 1.into()),
        ("app", "raw".into()),
    ]))
    .await
    .unwrap();
    let welcome = next(&mut ws).await.unwrap();
    assert_eq!(welcome["type"], Value::from("welcome"), "{welcome}");
    ws
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn bad_input_over_the_connector_is_refused_with_a_reason_and_the_node_carries_on() {
    let dev = dev(&[]).await;
    let node = EventsNode::start(
        bin(),
        "guard-node",
        None,
        &dev.addr(),
        &[
            "--max-frame-bytes",
            "65536",
            "--max-event-bytes",
            "262144",
            "--max-in-flight",
            "20",
        ],
    )
    .await
    .unwrap();
    let _py = LangApp::start(
        Lang::Python,
        &node.ws_url(),
        "py-app",
        &["--routes", "py.echo"],
    )
    .await
    .unwrap();

    // Before hello: refused, then closed.
    let (mut ws, _) = tokio_tungstenite::connect_async(node.ws_url())
        .await
        .unwrap();
    ws.send(frame(&[
        ("type", "register".into()),
        ("ref", 1.into()),
        ("route", "a.b".into()),
    ]))
    .await
    .unwrap();
    let refused = next(&mut ws).await.unwrap();
    assert_eq!(refused["type"], Value::from("error"), "{refused}");
    assert!(
        text(&refused["message"]).contains("first frame must be hello"),
        "{refused}"
    );
    assert!(next(&mut ws).await.is_none(), "closed after the refusal");

    let mut ws = connect(&node).await;
    // Unknown, malformed and text frames: an error each, the connection stays.
    for (message, status, needle) in [
        (
            frame(&[("type", "bogus".into()), ("ref", 1.into())]),
            400,
            "unknown frame type \"bogus\"",
        ),
        (Message::binary(b"\x82\xa1".to_vec()), 400, "not MsgPack"),
        (Message::text("{}"), 400, "binary MsgPack"),
        (
            frame(&[
                ("type", "register".into()),
                ("ref", 2.into()),
                ("route", "Bad.Route".into()),
            ]),
            400,
            "invalid route name",
        ),
        (
            frame(&[
                ("type", "register".into()),
                ("ref", 3.into()),
                ("route", "inbox.x".into()),
            ]),
            400,
            "reserved",
        ),
        // Another app's route.
        (
            frame(&[
                ("type", "register".into()),
                ("ref", 4.into()),
                ("route", "py.echo".into()),
            ]),
            409,
            "served by another app on this node (py-app)",
        ),
        (
            frame(&[
                ("type", "unregister".into()),
                ("ref", 5.into()),
                ("route", "py.echo".into()),
            ]),
            404,
            "not registered by this connection",
        ),
        (
            frame(&[
                ("type", "result".into()),
                ("id", "nope".into()),
                ("event", Value::Binary(EventEnvelope::default().to_bytes())),
            ]),
            404,
            "no delivery",
        ),
    ] {
        ws.send(message).await.unwrap();
        let error = next(&mut ws).await.unwrap();
        assert_eq!(error["type"], Value::from("error"), "{needle}: {error}");
        assert_eq!(error["status"], Value::from(status), "{needle}: {error}");
        assert!(
            text(&error["message"]).contains(needle),
            "{needle}: {error}"
        );
    }

    // An event over the frame limit in one frame: 413, naming the limit.
    let big = EventEnvelope::to("py.echo", Value::Binary(vec![7; 100_000])).to_bytes();
    ws.send(frame(&[
        ("type", "request".into()),
        ("ref", 10.into()),
        ("event", Value::Binary(big.clone())),
    ]))
    .await
    .unwrap();
    let error = next(&mut ws).await.unwrap();
    assert_eq!(
        (error["status"].as_u64(), error["ref"].as_u64()),
        (Some(413), Some(10)),
        "{error}"
    );
    assert!(
        text(&error["message"]).contains("max_frame_bytes"),
        "{error}"
    );
    // The same event in segments is fine: the reply comes back in segments too.
    for part in split(big, 60_000) {
        ws.send(frame(&[
            ("type", "request".into()),
            ("ref", 11.into()),
            ("event", Value::Binary(part)),
        ]))
        .await
        .unwrap();
    }
    let mut reassembler = Reassembler::default();
    let reply = loop {
        let part = next(&mut ws).await.unwrap();
        assert_eq!(part["type"], Value::from("reply"), "{part}");
        let segment = EventEnvelope::from_bytes(part["event"].as_slice().unwrap()).unwrap();
        if let Some(whole) = reassembler.add(segment, std::time::Instant::now()).unwrap() {
            break EventEnvelope::from_bytes(&whole).unwrap();
        }
    };
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["body"], Value::Binary(vec![7; 100_000]));
    // Over the event limit, even in segments: 413.
    let huge = EventEnvelope::to("py.echo", Value::Binary(vec![1; 300_000])).to_bytes();
    for part in split(huge, 60_000) {
        ws.send(frame(&[
            ("type", "send".into()),
            ("ref", 12.into()),
            ("event", Value::Binary(part)),
        ]))
        .await
        .unwrap();
    }
    let error = next(&mut ws).await.unwrap();
    assert_eq!(error["status"], Value::from(413), "{error}");
    assert!(
        text(&error["message"]).contains("max_event_bytes"),
        "{error}"
    );

    // A flood of calls: at most max_in_flight (20) wait at once, the rest are refused with 429.
    let slow = EventEnvelope::to("py.echo", "sleep").to_bytes();
    for i in 0..60 {
        ws.send(frame(&[
            ("type", "request".into()),
            ("ref", (100 + i).into()),
            ("event", Value::Binary(slow.clone())),
        ]))
        .await
        .unwrap();
    }
    let (mut replies, mut refused) = (0, 0);
    while replies + refused < 60 {
        let f = next(&mut ws).await.unwrap();
        match f["type"].as_str() {
            Some("reply") => {
                let reply = EventEnvelope::from_bytes(f["event"].as_slice().unwrap()).unwrap();
                assert_eq!(reply.status, 200, "{reply:?}");
                replies += 1;
            }
            Some("error") => {
                assert_eq!(f["status"], Value::from(429), "{f}");
                assert!(text(&f["message"]).contains("max_in_flight"), "{f}");
                refused += 1;
            }
            other => panic!("unexpected frame {other:?}: {f}"),
        }
    }
    assert_eq!((replies, refused), (20, 40));
    // A flood of junk frames: every one answered, nothing else disturbed.
    for i in 0..2000 {
        ws.send(frame(&[("type", "bogus".into()), ("ref", i.into())]))
            .await
            .unwrap();
    }
    for _ in 0..2000 {
        assert_eq!(next(&mut ws).await.unwrap()["status"], Value::from(400));
    }

    // The node and the Python app are unaffected: the same connection and a new one both work.
    let ok = EventEnvelope::to("py.echo", "still here").to_bytes();
    ws.send(frame(&[
        ("type", "request".into()),
        ("ref", 9999.into()),
        ("event", Value::Binary(ok.clone())),
    ]))
    .await
    .unwrap();
    let f = next(&mut ws).await.unwrap();
    let reply = EventEnvelope::from_bytes(f["event"].as_slice().unwrap()).unwrap();
    assert_eq!(reply.body["body"], Value::from("still here"), "{reply:?}");
    let mut fresh = connect(&node).await;
    fresh
        .send(frame(&[
            ("type", "register".into()),
            ("ref", 1.into()),
            ("route", "raw.route".into()),
        ]))
        .await
        .unwrap();
    assert_eq!(next(&mut fresh).await.unwrap()["type"], Value::from("ack"));
    assert!(node.process.output().contains("events node: app connected"));
    let (status, _) = (
        reqwest::get(node.url("/health")).await.unwrap().status(),
        (),
    );
    assert_eq!(status, 200);
}

/// `plexus events node --acl`: tokens are the control plane's ACL tokens. Saying `hello` as app
/// A needs `service:write` on A; `POST /api/event` speaks as the node's own app (`--name`), so
/// it needs `service:write` on that. The right token, another app's token, none, an unknown one.
#[tokio::test]
async fn an_acl_node_takes_control_plane_tokens_for_the_app_it_acts_as() {
    use crate::acl::AclServer;
    let server = AclServer::start(&[], &[]).await;
    let identity = |name: &str| serde_json::json!({"ServiceIdentities": [{"ServiceName": name}]});
    let (_, node_token) = server.token(identity("orders-node")).await;
    let (_, orders) = server.token(identity("orders")).await;
    let (_, billing) = server.token(identity("billing")).await;

    // --acl needs the control plane to ask.
    let (code, _, err) = plexus_test::mesh::run_cli(
        bin(),
        &["events", "node", "--http-addr", "127.0.0.1:0", "--acl"],
        &[],
    )
    .unwrap();
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--acl: needs --control"), "{err}");

    let process = plexus_test::Process::spawn(
        "events-node:acl",
        bin(),
        &[
            "events",
            "node",
            "--name",
            "orders-node",
            "--http-addr",
            "127.0.0.1:0",
            "--control",
            &server.addr,
            "--acl",
        ]
        .map(str::to_owned),
        &[("PLEXUS_PRESENCE_TOKEN", &node_token)],
    )
    .unwrap();
    let addr = process.listening("events").await.unwrap();
    let ws_url = format!("ws://{addr}/ws/events");

    /// `hello` as `app` with `token`: the node's first answer frame.
    async fn hello(url: &str, app: &str, token: Option<&str>) -> (Ws, Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut entries = vec![
            ("type", Value::from("hello")),
            ("protocol", 1.into()),
            ("app", app.into()),
        ];
        if let Some(token) = token {
            entries.push(("token", token.into()));
        }
        ws.send(frame(&entries)).await.unwrap();
        let answer = next(&mut ws).await.unwrap();
        (ws, answer)
    }
    let unknown = plexus_test::server::random_uuid();
    for (token, status, needle) in [
        (
            Some(billing.as_str()),
            403,
            "lacks permission 'service:write' on \"orders\"",
        ),
        (None, 403, "lacks permission 'service:write' on \"orders\""),
        (Some(unknown.as_str()), 401, "ACL not found"),
    ] {
        let (mut ws, refused) = hello(&ws_url, "orders", token).await;
        assert_eq!(refused["type"], Value::from("error"), "{refused}");
        assert_eq!(refused["status"], Value::from(status), "{refused}");
        assert!(text(&refused["message"]).contains(needle), "{refused}");
        assert!(next(&mut ws).await.is_none(), "closed after the refusal");
    }
    let (mut ws, welcome) = hello(&ws_url, "orders", Some(&orders)).await;
    assert_eq!(welcome["type"], Value::from("welcome"), "{welcome}");
    ws.send(frame(&[
        ("type", "register".into()),
        ("ref", 1.into()),
        ("route", "orders.ping".into()),
    ]))
    .await
    .unwrap();
    let ack = next(&mut ws).await.unwrap();
    assert_eq!(ack["type"], Value::from("ack"), "{ack}");

    // POST /api/event acts as the node's app, orders-node.
    let post = |token: Option<String>| {
        let url = format!("http://{addr}/api/event");
        async move {
            let mut request = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .header("x-async", "true")
                .body(r#"{"to": "orders.ping", "body": "hi"}"#);
            if let Some(token) = token {
                request = request.header("x-consul-token", token);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let (status, body) = post(Some(orders.clone())).await;
    assert_eq!(status, 403, "another app's token: {body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        reply["body"]
            .as_str()
            .unwrap_or_default()
            .contains("'service:write' on \"orders-node\""),
        "{reply}"
    );
    let (status, body) = post(None).await;
    assert_eq!(status, 403, "no token: {body}");
    let (status, body) = post(Some(unknown.clone())).await;
    assert_eq!(status, 401, "unknown token: {body}");
    let (status, body) = post(Some(node_token.clone())).await;
    assert_eq!(status, 202, "the node's token: {body}");

    // The node joined presence with its own token (service:write on orders-node); listing the
    // mesh's apps shows it to a token that reads orders-node, not to another app's or none.
    let apps = |token: Option<String>| {
        let url = server.url("/v1/events/apps");
        async move { crate::acl::call(&url, "GET", token.as_deref(), None).await }
    };
    eventually!(
        apps(Some(node_token.clone()))
            .await
            .1
            .as_array()
            .is_some_and(|a| a.len() == 1)
    );
    let (status, listed, _) = apps(Some(node_token.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(listed[0]["app"], "orders-node", "{listed}");
    let reader = server
        .policy("billing-reader", r#"service "billing" { policy = "read" }"#)
        .await;
    let (_, billing_reader) = server
        .token(serde_json::json!({"Policies": [{"Name": reader}]}))
        .await;
    for token in [Some(billing_reader), None] {
        let (status, listed, headers) = apps(token).await;
        assert_eq!((status, listed), (200, serde_json::json!([])));
        assert_eq!(headers["x-consul-results-filtered-by-acls"], "true");
    }
    for secret in [&node_token, &orders, &billing] {
        assert!(
            !process.output().contains(secret.as_str()),
            "a token was logged"
        );
    }
}
