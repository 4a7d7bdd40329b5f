//! Mercury compatibility end to end: actuator documents compared field by field with the golden
//! files written from Mercury's shapes, `/livenessprobe` failing after a failed health check, and
//! event over HTTP as Mercury's callers speak it (compact and standard MsgPack, JSON, `x-ttl`,
//! error envelopes, `traceparent`), on a real `plexus events node` with a Python app behind it.

use std::time::Duration;

use plexus_events::Value;
use plexus_events::envelope::{EventEnvelope, Format};
use plexus_test::brokers::NatsServer;
use plexus_test::events::{Broker, EventsNode, Lang, LangApp};
use plexus_test::golden::assert_matches;

use crate::{bin, dev};

macro_rules! golden {
    ($path:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../plexus-api/tests/golden/actuator/",
            $path
        ))
    };
}

/// (status, content type, body text) of a GET.
async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, kind, response.text().await.unwrap())
}

async fn get_json(url: &str) -> serde_json::Value {
    let (_, _, text) = get(url).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}

async fn liveness(url: &str) -> serde_json::Value {
    let (status, kind, body) = get(url).await;
    serde_json::json!({ "status": status, "content_type": kind, "body": body })
}

#[tokio::test]
async fn actuators_match_mercurys_shapes_and_liveness_follows_health() {
    let nats = NatsServer::start().await.unwrap();
    let dev = dev(&[]).await;
    let broker = Broker::Nats(nats.url());
    let node = EventsNode::start(bin(), "hello-node", Some(&broker), &dev.addr(), &[])
        .await
        .unwrap();
    let _py = LangApp::start(
        Lang::Python,
        &node.ws_url(),
        "py-app",
        &["--routes", "hello.world", "--private", "hello.secret"],
    )
    .await
    .unwrap();
    plexus_test::eventually!(
        get_json(&node.url("/info/routes")).await["routing"]["private"]["hello.secret"] == 10
    );

    // The app's (the node's) actuator.
    for (path, golden) in [
        ("/info", golden!("app/info.json")),
        ("/info/routes", golden!("app/info_routes.json")),
        ("/info/lib", golden!("app/info_lib.json")),
        ("/env", golden!("app/env.json")),
        ("/health", golden!("app/health.json")),
    ] {
        assert_matches(path, &get_json(&node.url(path)).await, golden);
    }
    let routes = get_json(&node.url("/info/routes")).await;
    assert_eq!(routes["routing"]["public"]["hello.world"], 10, "{routes}");
    assert_eq!(
        routes["network"]["routes"]["hello.world"][0],
        format!("hello-node, {}", node.origin),
        "{routes}"
    );
    let health = get_json(&node.url("/health")).await;
    assert!(
        health["dependency"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("Loopback test took"),
        "{health}"
    );
    assert_eq!(
        health["dependency"][1]["route"], "presence.health",
        "{health}"
    );
    assert_matches(
        "/livenessprobe",
        &liveness(&node.url("/livenessprobe")).await,
        golden!("app/livenessprobe.json"),
    );

    // The presence monitor's.
    let control = format!("http://{}", dev.addr());
    for (path, golden) in [
        ("/info", golden!("presence/info.json")),
        ("/info/routes", golden!("presence/info_routes.json")),
        ("/info/lib", golden!("presence/info_lib.json")),
        ("/env", golden!("presence/env.json")),
        ("/health", golden!("presence/health.json")),
    ] {
        assert_matches(path, &get_json(&format!("{control}{path}")).await, golden);
    }
    let info = get_json(&format!("{control}/info")).await;
    assert_eq!(info["more"]["total"]["connections"], 1, "{info}");
    assert_eq!(
        info["more"]["connections"][0]["name"], "hello-node",
        "{info}"
    );
    assert_matches(
        "monitor /livenessprobe",
        &liveness(&format!("{control}/livenessprobe")).await,
        golden!("presence/livenessprobe.json"),
    );

    // The broker goes away: health is DOWN (400) and from then on liveness fails too.
    drop(nats);
    let (status, _, text) = get(&node.url("/health")).await;
    assert_eq!(status, 400, "{text}");
    let health: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(health["status"], "DOWN", "{health}");
    assert_matches(
        "/health (down)",
        &health,
        golden!("app/health.json").replace("=UP", "=DOWN").as_str(),
    );
    let (status, kind, body) = get(&node.url("/livenessprobe")).await;
    assert_eq!(
        (status, kind.as_str(), body.as_str()),
        (400, "text/plain", plexus_api::actuator::LIVENESS_FAILED)
    );
}

/// POSTs `body` to the node's `/api/event` with `headers`: (status, headers, body).
async fn post(
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().post(url).body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn event_over_http_speaks_as_mercury_callers_do() {
    let dev = dev(&[]).await;
    let node = EventsNode::start(bin(), "http-node", None, &dev.addr(), &[])
        .await
        .unwrap();
    let _py = LangApp::start(
        Lang::Python,
        &node.ws_url(),
        "py-app",
        &["--routes", "hello.world"],
    )
    .await
    .unwrap();
    let url = node.url("/api/event");
    let mut event = EventEnvelope::to("hello.world", "hi");
    event.cid = Some("order-7".into());

    // Compact in, compact out; standard in, standard out; the caller's cid comes back.
    for format in [Format::Compact, Format::Standard] {
        let (status, _, bytes) = post(&url, event.to_bytes_as(format), &[]).await;
        let (reply, form) = EventEnvelope::decode(&bytes).unwrap();
        assert_eq!((status, form), (200, format), "{reply:?}");
        assert_eq!(reply.cid.as_deref(), Some("order-7"));
        assert_eq!(reply.body["body"], Value::from("hi"));
        assert_eq!(reply.body["cid"], Value::from("order-7"));
    }
    // JSON in, JSON out (content negotiation), headers always present.
    let json = serde_json::json!({"to": "hello.world", "body": {"a": [1, 2]}, "cid": "c-json"});
    let (status, headers, bytes) = post(
        &url,
        serde_json::to_vec(&json).unwrap(),
        &[("Content-Type", "application/json")],
    )
    .await;
    let reply: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        reply["body"]["body"],
        serde_json::json!({"a": [1, 2]}),
        "{reply}"
    );
    assert_eq!(reply["cid"], "c-json");
    assert!(reply["headers"].is_object(), "{reply}");
    // A broken JSON body: a JSON error envelope naming the cause.
    let (status, _, bytes) = post(
        &url,
        b"{not json".to_vec(),
        &[("Content-Type", "application/json")],
    )
    .await;
    let reply: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (status, reply["status"].as_u64()),
        (400, Some(400)),
        "{reply}"
    );
    assert!(
        reply["body"].as_str().unwrap().contains("not JSON"),
        "{reply}"
    );

    // x-ttl is honoured like X-Timeout: the 2 s function times out at 300 ms (408, an envelope
    // in the caller's compact form).
    let slow = EventEnvelope::to("hello.world", "sleep").to_bytes_as(Format::Compact);
    let (status, _, bytes) = post(&url, slow.clone(), &[("x-ttl", "300")]).await;
    let (reply, form) = EventEnvelope::decode(&bytes).unwrap();
    assert_eq!(
        (status, reply.status, form),
        (408, 408, Format::Compact),
        "{reply:?}"
    );
    let (status, _, bytes) = post(&url, slow, &[("x-ttl", "soon")]).await;
    let reply = EventEnvelope::from_bytes(&bytes).unwrap();
    assert_eq!(status, 400);
    assert!(
        reply.error_message().unwrap().contains("x-ttl"),
        "{reply:?}"
    );
    // Errors are envelopes: unknown route 404, no destination 400.
    let (status, _, bytes) = post(&url, EventEnvelope::to("no.such", 1).to_bytes(), &[]).await;
    let reply = EventEnvelope::from_bytes(&bytes).unwrap();
    assert_eq!((status, reply.status), (404, 404));
    assert!(reply.error_message().unwrap().contains("no.such"));
    // X-Async: 202 with Mercury's acknowledgement body.
    let (status, _, bytes) = post(&url, event.to_bytes(), &[("X-Async", "true")]).await;
    let reply = EventEnvelope::from_bytes(&bytes).unwrap();
    assert_eq!(status, 202);
    assert_eq!(reply.body["type"], Value::from("async"));
    assert_eq!(reply.body["delivered"], Value::from(true));

    // traceparent: its trace id reaches the function and comes back in the reply's header.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, headers, bytes) = post(
        &url,
        EventEnvelope::to("hello.world", "traced").to_bytes(),
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    )
    .await;
    let reply = EventEnvelope::from_bytes(&bytes).unwrap();
    assert_eq!(status, 200, "{reply:?}");
    assert_eq!(reply.body["trace_id"], Value::from(trace));
    assert_eq!(reply.trace_id.as_deref(), Some(trace));
    let back = headers["traceparent"].to_str().unwrap();
    assert!(back.starts_with(&format!("00-{trace}-")), "{back}");

    // Per-route metrics by route and origin app, and the JSON access log.
    let (_, _, metrics) = get(&node.url("/metrics")).await;
    assert!(
        metrics.contains(r#"plexus_events_handled_total{route="hello.world",origin_app="http-node",status="2xx"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"plexus_events_handler_duration_seconds_count{route="hello.world",origin_app="http-node"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"plexus_events_requests_total{route="unknown",origin_app="unknown",status="4xx"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_token_guards_the_connector_and_event_over_http() {
    let dev = dev(&[]).await;
    let (_dir, token_file) = crate::write_file("token", "s3cret-token\n");
    let token_file = token_file.display().to_string();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("access.log").display().to_string();
    let node = EventsNode::start(
        bin(),
        "guarded-node",
        None,
        &dev.addr(),
        &["--token-file", &token_file, "--access-log", &log],
    )
    .await
    .unwrap();
    // Without the token the app is refused with the reason; with it, it serves.
    let refused = LangApp::start(
        Lang::Python,
        &node.ws_url(),
        "py-app",
        &["--routes", "hello.world"],
    )
    .await;
    let error = format!("{:#}", refused.err().expect("refused without a token"));
    assert!(
        error.contains("exited") && error.contains("401") && error.contains("requires a token"),
        "{error}"
    );
    let _py = LangApp::start(
        Lang::Python,
        &node.ws_url(),
        "py-app",
        &["--routes", "hello.world", "--token", "s3cret-token"],
    )
    .await
    .unwrap();
    let url = node.url("/api/event");
    let event = EventEnvelope::to("hello.world", "x").to_bytes();
    for headers in [vec![], vec![("Authorization", "Bearer wrong")]] {
        let (status, _, bytes) = post(&url, event.clone(), &headers).await;
        let reply = EventEnvelope::from_bytes(&bytes).unwrap();
        assert_eq!(status, 401, "{reply:?}");
        assert!(
            reply.error_message().unwrap().contains("token"),
            "{reply:?}"
        );
    }
    let (status, _, _) = post(
        &url,
        event.clone(),
        &[("Authorization", "Bearer s3cret-token")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = post(&url, event, &[("X-Plexus-Token", "s3cret-token")]).await;
    assert_eq!(status, 200);
    // The access log has a line per handled event, and never the token.
    plexus_test::eventually!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2,
        Duration::from_secs(10)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["route"], "hello.world", "{line}");
    assert_eq!(line["kind"], "handled", "{line}");
    assert!(
        line["duration_ms"].is_number() && line["time"].is_string(),
        "{line}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}
