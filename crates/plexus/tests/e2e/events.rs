//! The event mesh end to end: `plexus dev` as presence monitor, real `nats-server` / Tansu
//! brokers, `plexus events-app` processes, and (for load tests) this test process joining the mesh
//! as one more app through the library.

use std::collections::BTreeMap;
use std::time::Duration;

use plexus_events::{EventEnvelope, EventMesh, MeshConfig, Platform, Value};
use plexus_test::brokers::{NatsServer, Tansu};
use plexus_test::events::{Broker, EventsApp};
use plexus_test::{Dev, eventually};

use crate::{bin, dev};

const T: Duration = Duration::from_secs(10);

async fn app(dev: &Dev, broker: &Broker, name: &str, routes: &str, extra: &[&str]) -> EventsApp {
    EventsApp::start(bin(), name, routes, broker, &dev.addr(), extra)
        .await
        .expect("events-app starts and joins")
}

/// The origin that served a reply of the example function.
fn served_by(reply: &EventEnvelope) -> String {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["origin"].as_str().unwrap_or_default().to_owned()
}

/// This test process as an app on the mesh (NATS), to drive many requests through the library.
async fn test_app(dev: &Dev, nats: &NatsServer) -> (Platform, EventMesh) {
    test_app_on(dev, &Broker::Nats(nats.url())).await
}

pub(crate) async fn test_app_on(dev: &Dev, broker: &Broker) -> (Platform, EventMesh) {
    let mut config = MeshConfig {
        control: Some(dev.addr()),
        ..MeshConfig::default()
    };
    match broker {
        Broker::Nats(url) => config
            .set("cloud.connector", "nats", "test")
            .and_then(|()| config.set("nats.url", url, "test")),
        Broker::Kafka(bootstrap) => config
            .set("cloud.connector", "kafka", "test")
            .and_then(|()| config.set("kafka.bootstrap", bootstrap, "test")),
    }
    .unwrap();
    let platform = Platform::new("tester");
    let mesh = EventMesh::start(platform.clone(), &config).await.unwrap();
    mesh.presence
        .as_ref()
        .unwrap()
        .connected(T)
        .await
        .expect("tester joins");
    (platform, mesh)
}

/// A 3 MB body each way: over the broker's message limit (NATS 1 MB, Kafka 900 KB here).
async fn large_events(broker: Broker) {
    let dev = dev(&[]).await;
    let b = app(&dev, &broker, "hello-b", "hello.pojo", &[]).await;
    let (tester, stop) = test_app_on(&dev, &broker).await;
    eventually!(tester.exists("hello.pojo"));
    let big: String = (0..3 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let reply = tester
        .request(EventEnvelope::to("hello.pojo", big.as_str()), T)
        .await;
    assert_eq!(served_by(&reply), b.origin);
    assert_eq!(reply.body["body"].as_str().map(str::len), Some(big.len()));
    assert!(reply.body["body"] == Value::from(big.as_str()));
    stop.stop();
}

#[tokio::test]
async fn large_events_are_segmented_over_nats() {
    let nats = NatsServer::start().await.unwrap();
    large_events(Broker::Nats(nats.url())).await;
}

#[tokio::test]
async fn large_events_are_segmented_over_kafka() {
    let kafka = Tansu::start().await.unwrap();
    large_events(Broker::Kafka(kafka.bootstrap())).await;
}

async fn scenario(broker: Broker, dev: Dev) {
    let a = app(&dev, &broker, "hello-a", "hello.world", &[]).await;
    let b = app(&dev, &broker, "hello-b", "hello.world,hello.pojo", &[]).await;
    // Discovery, as log lines.
    a.process
        .wait_for_line(&format!("peer {} joins", b.origin))
        .await
        .unwrap();
    a.process
        .wait_for_line(&format!("hello.pojo ({}) registered", b.origin))
        .await
        .unwrap();
    b.process
        .wait_for_line(&format!("peer {} joins", a.origin))
        .await
        .unwrap();
    // A request from one app to a route only the other serves names the origin that served it.
    let reply = a.request("hello.pojo", "hi", T).await.unwrap();
    assert_eq!(served_by(&reply), b.origin);
    assert_eq!(reply.body["body"], Value::from("hi"));
    assert_eq!(reply.body["app"], Value::from("hello-b"));
    // Local first: hello.world is served by A itself.
    assert_eq!(
        served_by(&a.request("hello.world", "x", T).await.unwrap()),
        a.origin
    );
    // The control plane shows the mesh.
    let (_, apps, _) = crate::http(
        "GET",
        &format!("http://{}/v1/events/apps", dev.addr()),
        None,
    )
    .await;
    let apps = apps.as_array().unwrap();
    assert_eq!(apps.len(), 2);
    let topics: Vec<_> = apps
        .iter()
        .map(|a| a["topic"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        topics.iter().all(|t| t.starts_with("multiplex.0001-")),
        "{topics:?}"
    );
    assert_ne!(topics[0], topics[1]);
    let (_, info, _) = crate::http(
        "GET",
        &format!("http://{}/v1/events/info", dev.addr()),
        None,
    )
    .await;
    assert_eq!(info["connections"], 2, "{info}");
    let owner = info["topics"][&topics[0]]["app"]
        .as_str()
        .unwrap_or_default();
    assert!(owner == "hello-a" || owner == "hello-b", "{info}");
    // A second instance of app B shares the load.
    let mut b2 = app(&dev, &broker, "hello-b", "hello.world,hello.pojo", &[]).await;
    a.process
        .wait_for_line(&format!("hello.pojo ({}) registered", b2.origin))
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for i in 0..20 {
        let reply = a.request("hello.pojo", &i.to_string(), T).await.unwrap();
        *counts.entry(served_by(&reply)).or_insert(0) += 1;
    }
    assert_eq!(counts.get(&b.origin), Some(&10), "{counts:?}");
    assert_eq!(counts.get(&b2.origin), Some(&10), "{counts:?}");
    // Stopping one updates the other's table.
    b2.process.terminate().await.unwrap();
    a.process
        .wait_for_line(&format!("peer {} left", b2.origin))
        .await
        .unwrap();
    a.process
        .wait_for_line(&format!("hello.pojo ({}) unregistered", b2.origin))
        .await
        .unwrap();
    assert_eq!(a.serving("hello.pojo").await, vec![b.origin.clone()]);
    assert_eq!(
        served_by(&a.request("hello.pojo", "after", T).await.unwrap()),
        b.origin
    );
}

#[tokio::test]
async fn demo_scenario_over_nats() {
    let nats = NatsServer::start().await.unwrap();
    scenario(Broker::Nats(nats.url()), dev(&[]).await).await;
}

#[tokio::test]
async fn demo_scenario_over_kafka() {
    let kafka = Tansu::start().await.unwrap();
    scenario(Broker::Kafka(kafka.bootstrap()), dev(&[]).await).await;
}

#[tokio::test]
async fn load_is_shared_within_ten_percent_and_nothing_is_lost() {
    let nats = NatsServer::start().await.unwrap();
    let dev = dev(&[]).await;
    let broker = Broker::Nats(nats.url());
    let b1 = app(&dev, &broker, "hello-b", "hello.pojo", &["--workers", "10"]).await;
    let b2 = app(&dev, &broker, "hello-b", "hello.pojo", &["--workers", "10"]).await;
    let (tester, stop) = test_app(&dev, &nats).await;
    eventually!(tester.search("hello.pojo").len() == 2);
    // 1,000 concurrent requests, 10 workers per route on each instance.
    let mut traced = EventEnvelope::to("hello.pojo", "traced");
    traced.trace_id = Some("trace-42".into());
    traced.trace_path = Some("GET /api/demo".into());
    let reply = tester.request(traced, T).await;
    assert_eq!(reply.trace_id.as_deref(), Some("trace-42"), "{reply:?}");
    assert_eq!(reply.trace_path.as_deref(), Some("GET /api/demo"));
    assert_eq!(reply.from.as_deref(), Some("hello.pojo"));
    assert!(reply.round_trip.is_some() && reply.exec_time.is_some());
    let calls = (0..1000).map(|i| tester.request(EventEnvelope::to("hello.pojo", i), T));
    let replies = futures::future::join_all(calls).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.body["body"], Value::from(i), "reply {i}: {reply:?}");
        *counts.entry(served_by(reply)).or_insert(0) += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), 1000);
    for origin in [&b1.origin, &b2.origin] {
        let n = counts.get(origin).copied().unwrap_or(0);
        assert!((450..=550).contains(&n), "{origin} served {n}: {counts:?}");
    }
    stop.stop();
}

#[tokio::test]
async fn kill_9_removes_the_instance_from_peers_within_5s() {
    let nats = NatsServer::start().await.unwrap();
    let dev = dev(&[]).await;
    let broker = Broker::Nats(nats.url());
    let a = app(&dev, &broker, "hello-a", "hello.world", &[]).await;
    let b = app(&dev, &broker, "hello-b", "hello.pojo", &[]).await;
    eventually!(a.serving("hello.pojo").await == vec![b.origin.clone()]);
    b.process.signal("KILL").unwrap();
    eventually!(
        a.serving("hello.pojo").await.is_empty(),
        Duration::from_secs(5)
    );
    let reply = a.request("hello.pojo", "x", T).await.unwrap();
    assert_eq!(reply.status, 404, "{reply:?}");
    // Its topic is released: the next app gets it.
    let (_, topics, _) = crate::http(
        "GET",
        &format!("http://{}/v1/events/topics", dev.addr()),
        None,
    )
    .await;
    assert_eq!(topics.as_object().unwrap().len(), 1, "{topics}");
    let c = app(&dev, &broker, "hello-c", "hello.pojo", &[]).await;
    let (_, info) = c.get("/info").await.unwrap();
    assert_eq!(info["more"]["topic"], "multiplex.0001-001", "{info}");
}

#[tokio::test]
async fn event_over_http_bad_input_and_faults() {
    let nats = NatsServer::start().await.unwrap();
    let dev = dev(&[]).await;
    let broker = Broker::Nats(nats.url());
    let a = app(
        &dev,
        &broker,
        "hello-a",
        "hello.world",
        &["--private-routes", "demo.secret"],
    )
    .await;
    type Case<'a> = (Vec<u8>, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], vec![], 400, "empty body"),
        (
            b"not msgpack".to_vec(),
            vec![],
            400,
            "not an event envelope",
        ),
        (vec![0x92, 0x01, 0x02], vec![], 400, "must be a MsgPack map"),
        (
            vec![
                0x81, 0xa6, b's', b't', b'a', b't', b'u', b's', 0xa2, b'o', b'k',
            ],
            vec![],
            400,
            "expected an integer status",
        ),
        (
            EventEnvelope::default().to_bytes(),
            vec![],
            400,
            "no destination",
        ),
        (
            EventEnvelope::to("hello.world", 1).to_bytes(),
            vec![("X-Timeout", "soon")],
            400,
            "X-Timeout",
        ),
        (
            EventEnvelope::to("hello.world", 1).to_bytes(),
            vec![("X-Async", "maybe")],
            400,
            "X-Async",
        ),
    ];
    // Every refusal is an error envelope with the HTTP status and the reason as its body.
    for (body, headers, status, cause) in cases {
        let (got, bytes) = a.post_event(body, &headers).await.unwrap();
        let reply = EventEnvelope::from_bytes(&bytes).unwrap();
        let text = reply.error_message().unwrap_or_default();
        assert_eq!((got, reply.status), (status, status), "{cause}: {text}");
        assert!(text.contains(cause), "{cause}: {text}");
    }
    let call = |route: &str, body: &str| EventEnvelope::to(route, body).to_bytes();
    let (status, bytes) = a.post_event(call("demo.secret", "x"), &[]).await.unwrap();
    assert_eq!(status, 403);
    assert!(
        EventEnvelope::from_bytes(&bytes)
            .unwrap()
            .error_message()
            .unwrap()
            .contains("private")
    );
    let (status, bytes) = a.post_event(call("no.such", "x"), &[]).await.unwrap();
    assert_eq!(status, 404);
    assert!(
        EventEnvelope::from_bytes(&bytes)
            .unwrap()
            .error_message()
            .unwrap()
            .contains("no.such")
    );
    // A panicking function: 500 to the caller; the pool keeps serving.
    let (status, _) = a
        .post_event(call("hello.world", "panic"), &[])
        .await
        .unwrap();
    assert_eq!(status, 500);
    let (status, _) = a
        .post_event(call("hello.world", "fine"), &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = a
        .post_event(call("hello.world", "x"), &[("X-Async", "true")])
        .await
        .unwrap();
    assert_eq!(status, 202);
    // Actuator endpoints.
    assert_eq!(
        a.get("/livenessprobe").await.unwrap(),
        (200, serde_json::Value::from("OK"))
    );
    let (status, health) = a.get("/health").await.unwrap();
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "UP");
    assert!(
        health.to_string().contains("Loopback test took"),
        "{health}"
    );
    let (_, routes) = a.get("/info/routes").await.unwrap();
    assert_eq!(routes["routing"]["private"]["demo.secret"], 10, "{routes}");
    assert_eq!(routes["routing"]["public"]["hello.world"], 10, "{routes}");
    let (_, lib) = a.get("/info/lib").await.unwrap();
    assert!(
        lib["library"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("async-nats-")),
        "{lib}"
    );
    let (_, info) = a.get("/info").await.unwrap();
    assert_eq!(info["app"]["name"], "hello-a");
    assert_eq!(info["origin"], a.origin.as_str());
}

#[tokio::test]
async fn malformed_broker_messages_are_dropped_and_counted() {
    let nats = NatsServer::start().await.unwrap();
    let dev = dev(&[]).await;
    let broker = Broker::Nats(nats.url());
    let a = app(&dev, &broker, "hello-a", "hello.world", &[]).await;
    let b = app(&dev, &broker, "hello-b", "hello.pojo", &[]).await;
    eventually!(a.serving("hello.pojo").await.len() == 1);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let subject = plexus_events::connector::nats::subject(&b.origin);
    let good = EventEnvelope::to("hello.pojo", "x").to_bytes();
    for bad in [
        b"garbage".to_vec(),
        good[..good.len() / 2].to_vec(),
        vec![0xc1],
    ] {
        client.publish(subject.clone(), bad.into()).await.unwrap();
    }
    client.flush().await.unwrap();
    eventually!(b.get("/info").await.unwrap().1["more"]["malformed_messages"] == 3);
    assert!(
        b.process
            .output()
            .contains("malformed message from the broker dropped")
    );
    assert_eq!(
        served_by(&a.request("hello.pojo", "still", T).await.unwrap()),
        b.origin
    );
}

#[tokio::test]
async fn broker_restart_fails_in_flight_requests_then_recovers() {
    let nats = NatsServer::start().await.unwrap();
    let dev = dev(&[]).await;
    let broker = Broker::Nats(nats.url());
    let b = app(&dev, &broker, "hello-b", "hello.pojo", &[]).await;
    let (tester, stop) = test_app(&dev, &nats).await;
    eventually!(tester.exists("hello.pojo"));
    assert_eq!(
        served_by(
            &tester
                .request(EventEnvelope::to("hello.pojo", "x"), T)
                .await
        ),
        b.origin
    );
    // An in-flight request: the function sleeps (body "sleep"), the broker goes away meanwhile.
    let pending = tokio::spawn({
        let tester = tester.clone();
        async move {
            tester
                .request(
                    EventEnvelope::to("hello.pojo", "sleep"),
                    Duration::from_secs(30),
                )
                .await
        }
    });
    b.process
        .wait_for_line("example function sleeping")
        .await
        .unwrap();
    let port = nats.port;
    drop(nats);
    let failed = pending.await.unwrap();
    assert_eq!(failed.status, 503, "{failed:?}");
    assert!(
        failed
            .error_message()
            .unwrap()
            .contains("lost its broker connection")
    );
    // While the broker is down, requests fail at once with 503.
    let down = tester
        .request(EventEnvelope::to("hello.pojo", "x"), T)
        .await;
    assert_eq!(down.status, 503, "{down:?}");
    let _nats = NatsServer::start_on(port).await.unwrap();
    eventually!(
        tester
            .request(EventEnvelope::to("hello.pojo", "x"), T)
            .await
            .status
            == 200
    );
    stop.stop();
}

#[tokio::test]
async fn presence_loss_clears_remote_routes_then_reannounces() {
    let nats = NatsServer::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = plexus_test::free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let mut control = Dev::start_in(bin(), data.path(), &["--http-addr", &addr])
        .await
        .unwrap();
    let broker = Broker::Nats(nats.url());
    let a = app(&control, &broker, "hello-a", "hello.world", &[]).await;
    let b = app(&control, &broker, "hello-b", "hello.pojo", &[]).await;
    eventually!(a.serving("hello.pojo").await.len() == 1);
    control.process.terminate().await.unwrap();
    eventually!(a.serving("hello.pojo").await.is_empty());
    a.process
        .wait_for_line("presence connection")
        .await
        .unwrap();
    let (status, health) = a.get("/health").await.unwrap();
    assert_eq!(
        (status, health["status"].as_str()),
        (400, Some("DOWN")),
        "{health}"
    );
    let _control = Dev::start_in(bin(), data.path(), &["--http-addr", &addr])
        .await
        .unwrap();
    eventually!(a.serving("hello.pojo").await == vec![b.origin.clone()]);
    eventually!(b.serving("hello.world").await == vec![a.origin.clone()]);
    assert_eq!(
        served_by(&a.request("hello.pojo", "back", T).await.unwrap()),
        b.origin
    );
}

#[test]
fn events_app_config_errors_exit_64_naming_the_flag() {
    let (_dir, file) = crate::write_file(
        "app.properties",
        "# mesh\ncloud.connector = nats\nbogus.key = 1\n",
    );
    let file = file.display().to_string();
    for (args, flag) in [
        (
            vec!["--cloud-connector", "nats", "--control", "127.0.0.1:1"],
            "nats.url: required with cloud.connector = nats",
        ),
        (vec!["--routes", "NoDot"], "invalid route name"),
        (
            vec![
                "--cloud-connector",
                "nats",
                "--nats-url",
                "nats://127.0.0.1:1",
            ],
            "presence.control",
        ),
        (vec!["--workers", "0"], "--workers"),
        (
            vec!["--control", "127.0.0.1:8500,nowhere"],
            "presence.control: invalid address \"nowhere\"",
        ),
        (
            vec!["--cloud-connector", "rabbit"],
            "--cloud-connector: cloud.connector: expected none, nats or kafka",
        ),
        (
            vec!["--config", &file],
            "app.properties:3: unknown key \"bogus.key\"",
        ),
    ] {
        let mut all = vec!["events-app", "--name", "x"];
        all.extend(args);
        let (code, _, err) = plexus_test::mesh::run_cli(bin(), &all, &[]).unwrap();
        assert_eq!(code, 64, "{all:?}: {err}");
        assert!(err.contains(flag), "{all:?}: {err}");
    }
}

#[tokio::test]
async fn events_app_joins_from_a_properties_file() {
    let nats = NatsServer::start().await.unwrap();
    let dev = dev(&[]).await;
    let text = format!(
        "cloud.connector = nats\nnats.url = {}\npresence.control = {}\n",
        nats.url(),
        dev.addr()
    );
    let (_dir, file) = crate::write_file("app.properties", &text);
    let file = file.display().to_string();
    let args = [
        "events-app",
        "--name",
        "from-file",
        "--routes",
        "file.route",
        "--config",
        &file,
    ]
    .map(str::to_owned);
    let app = plexus_test::Process::spawn("from-file", bin(), &args, &[]).unwrap();
    app.wait_for_line("joined the event mesh").await.unwrap();
    let addr = app.listening("actuator").await.unwrap();
    let env: serde_json::Value = reqwest::get(format!("http://{addr}/env"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(env["env"]["properties"]["cloud.connector"], "nats", "{env}");
    let (_, apps, _) = crate::http(
        "GET",
        &format!("http://{}/v1/events/apps", dev.addr()),
        None,
    )
    .await;
    assert_eq!(apps[0]["routes"][0], "file.route", "{apps}");
}

#[tokio::test]
async fn malformed_kafka_records_are_dropped_and_counted() {
    let kafka = Tansu::start().await.unwrap();
    let dev = dev(&[]).await;
    let broker = Broker::Kafka(kafka.bootstrap());
    let b = app(&dev, &broker, "hello-b", "hello.pojo", &[]).await;
    let (tester, mesh) = test_app_on(&dev, &broker).await;
    eventually!(tester.exists("hello.pojo"));
    let (_, info) = b.get("/info").await.unwrap();
    let topic = info["more"]["topic"].as_str().unwrap().to_owned();
    let (name, partition) = plexus_events::connector::kafka::split_topic(&topic).unwrap();
    let client = rskafka::client::ClientBuilder::new(vec![kafka.bootstrap()])
        .build()
        .await
        .unwrap();
    let partition = client
        .partition_client(
            name,
            partition,
            rskafka::client::partition::UnknownTopicHandling::Retry,
        )
        .await
        .unwrap();
    let good = EventEnvelope::to("hello.pojo", "x").to_bytes();
    let records = [
        b"garbage".to_vec(),
        good[..good.len() / 2].to_vec(),
        vec![0xc1],
    ]
    .into_iter()
    .map(|value| rskafka::record::Record {
        key: None,
        value: Some(value),
        headers: Default::default(),
        timestamp: rskafka::chrono::DateTime::from_timestamp_millis(0).unwrap(),
    })
    .collect();
    partition
        .produce(
            records,
            rskafka::client::partition::Compression::NoCompression,
        )
        .await
        .unwrap();
    eventually!(b.get("/info").await.unwrap().1["more"]["malformed_messages"] == 3);
    let reply = tester
        .request(EventEnvelope::to("hello.pojo", "still"), T)
        .await;
    assert_eq!(served_by(&reply), b.origin);
    mesh.stop();
}

#[tokio::test]
async fn kafka_broker_restart_recovers() {
    let kafka = Tansu::start().await.unwrap();
    let dev = dev(&[]).await;
    let broker = Broker::Kafka(kafka.bootstrap());
    let b = app(&dev, &broker, "hello-b", "hello.pojo", &[]).await;
    let (tester, mesh) = test_app_on(&dev, &broker).await;
    eventually!(tester.exists("hello.pojo"));
    assert_eq!(
        served_by(
            &tester
                .request(EventEnvelope::to("hello.pojo", "x"), T)
                .await
        ),
        b.origin
    );
    // The broker restarts empty (in-memory storage): topics are re-created, consumers reopened.
    let _kafka = kafka.restart().await.unwrap();
    eventually!(
        tester
            .request(
                EventEnvelope::to("hello.pojo", "again"),
                Duration::from_secs(2)
            )
            .await
            .status
            == 200
    );
    mesh.stop();
}

/// GETs a control-plane path as JSON.
async fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, json, _) = crate::http("GET", &format!("http://{addr}{path}"), None).await;
    assert_eq!(status, 200, "GET {path}: {json}");
    json
}

/// `/v1/events/apps` as origin → replica id.
async fn apps_by_replica(addr: &str) -> BTreeMap<String, String> {
    get_json(addr, "/v1/events/apps")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["origin"].as_str().unwrap().to_owned(),
                a["replica"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_event_app_is_in_the_catalog_while_connected() {
    let nats = NatsServer::start().await.unwrap();
    let dev = dev(&[]).await;
    let broker = Broker::Nats(nats.url());
    let mut a = app(&dev, &broker, "hello-a", "hello.world,hello.pojo", &[]).await;
    let services = get_json(&dev.addr(), "/v1/catalog/services").await;
    assert_eq!(
        services["hello-a"],
        serde_json::json!(["event-app", "hello.pojo", "hello.world"]),
        "{services}"
    );
    let instances = get_json(&dev.addr(), "/v1/catalog/service/hello-a").await;
    let instances = instances.as_array().unwrap();
    assert_eq!(instances.len(), 1, "{instances:?}");
    let instance = &instances[0];
    assert_eq!(instance["ServiceID"], a.origin.as_str());
    assert_eq!(instance["Node"], "event-mesh");
    // Listed with its actuator's address and port.
    assert_eq!(instance["ServiceAddress"], a.actuator.ip().to_string());
    assert_eq!(instance["ServicePort"], a.actuator.port());
    assert_eq!(instance["ServiceMeta"]["plexus-kind"], "event-app");
    assert_eq!(instance["ServiceMeta"]["routes"], "hello.pojo,hello.world");
    let (_, info) = a.get("/info").await.unwrap();
    assert_eq!(
        instance["ServiceMeta"]["topic"], info["more"]["topic"],
        "{info}"
    );
    let health = get_json(&dev.addr(), "/v1/health/service/hello-a?passing=true").await;
    let health = health.as_array().unwrap();
    assert_eq!(health.len(), 1, "{health:?}");
    assert_eq!(health[0]["Service"]["ID"], a.origin.as_str());
    assert_eq!(health[0]["Checks"][0]["Status"], "passing");
    // A clean stop removes it from every view.
    a.process.terminate().await.unwrap();
    eventually!(
        get_json(&dev.addr(), "/v1/catalog/services")
            .await
            .get("hello-a")
            .is_none()
    );
    assert_eq!(
        get_json(&dev.addr(), "/v1/health/service/hello-a").await,
        serde_json::json!([])
    );
}

#[tokio::test]
async fn presence_over_two_replicas_on_etcd_survives_kill_9_of_one() {
    use plexus_test::{EtcdCluster, Server};
    let nats = NatsServer::start().await.unwrap();
    let cluster = EtcdCluster::start(3).await.unwrap();
    let endpoints = cluster.endpoints_arg();
    let store = ["--store", "etcd", "--etcd-endpoints", &endpoints];
    let mut one = Server::start(bin(), "replica-1", &store).await.unwrap();
    let two = Server::start(bin(), "replica-2", &store).await.unwrap();
    let (one_addr, two_addr) = (one.addr(), two.addr());
    let one_id = get_json(&one_addr, "/v1/events/info").await["replica"].clone();
    let two_id = get_json(&two_addr, "/v1/events/info").await["replica"].clone();
    let (one_id, two_id) = (
        one_id.as_str().unwrap().to_owned(),
        two_id.as_str().unwrap().to_owned(),
    );
    assert_ne!(one_id, two_id);

    // Throughout: every topic listed by either replica has one owner, and no app two topics.
    let watching = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn({
        let watching = watching.clone();
        let addrs = [one_addr.clone(), two_addr.clone()];
        async move {
            let mut seen: BTreeMap<String, String> = BTreeMap::new();
            let mut reads = 0;
            while !watching.is_cancelled() {
                for addr in &addrs {
                    let url = format!("http://{addr}/v1/events/topics");
                    let request = reqwest::Client::new()
                        .get(&url)
                        .header("x-consul-token", plexus_test::management_token());
                    let Ok(response) = request.send().await else {
                        continue; // that replica was killed
                    };
                    let Ok(topics) = response.json::<BTreeMap<String, String>>().await else {
                        continue;
                    };
                    reads += 1;
                    let mut owners = std::collections::BTreeSet::new();
                    for (topic, origin) in topics {
                        assert!(owners.insert(origin.clone()), "{origin} owns two topics");
                        let first = seen.entry(topic.clone()).or_insert(origin.clone());
                        assert_eq!(*first, origin, "topic {topic} handed to two apps");
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            reads
        }
    });

    let broker = Broker::Nats(nats.url());
    // a: replica 1 first, replica 2 as fallback; b: replica 2 only; c: replica 1 only.
    let both = format!("{one_addr},{two_addr}");
    // The servers enforce ACLs: each app joins presence with a token (here the management one).
    let token = [("PLEXUS_PRESENCE_TOKEN", plexus_test::management_token())];
    let a = EventsApp::start_with_env(bin(), "hello-a", "hello.world", &broker, &both, &[], &token)
        .await
        .unwrap();
    let b = EventsApp::start_with_env(
        bin(),
        "hello-b",
        "hello.pojo",
        &broker,
        &two_addr,
        &[],
        &token,
    )
    .await
    .unwrap();
    let c = EventsApp::start_with_env(
        bin(),
        "hello-c",
        "hello.echo",
        &broker,
        &one_addr,
        &[],
        &token,
    )
    .await
    .unwrap();
    let expected: BTreeMap<String, String> = [
        (a.origin.clone(), one_id.clone()),
        (b.origin.clone(), two_id.clone()),
        (c.origin.clone(), one_id.clone()),
    ]
    .into();
    for addr in [&one_addr, &two_addr] {
        assert_eq!(apps_by_replica(addr).await, expected);
    }
    let mut topics = std::collections::BTreeSet::new();
    for app in [&a, &b, &c] {
        let (_, info) = app.get("/info").await.unwrap();
        assert!(
            topics.insert(info["more"]["topic"].as_str().unwrap().to_owned()),
            "{info}"
        );
    }
    // Apps on different replicas see each other's routes and call each other over NATS.
    eventually!(a.serving("hello.pojo").await == vec![b.origin.clone()]);
    eventually!(b.serving("hello.world").await == vec![a.origin.clone()]);
    eventually!(b.serving("hello.echo").await == vec![c.origin.clone()]);
    assert_eq!(
        served_by(&a.request("hello.pojo", "x", T).await.unwrap()),
        b.origin
    );
    assert_eq!(
        served_by(&b.request("hello.echo", "x", T).await.unwrap()),
        c.origin
    );
    let (_, a_info) = a.get("/info").await.unwrap();

    one.kill9().unwrap();
    // c knew only replica 1: its records vanish when its lease (5 s) expires; a fails over to
    // replica 2 and re-announces with the topic it held.
    eventually!(
        !apps_by_replica(&two_addr).await.contains_key(&c.origin),
        Duration::from_secs(15)
    );
    eventually!(apps_by_replica(&two_addr).await.get(&a.origin) == Some(&two_id));
    eventually!(b.serving("hello.echo").await.is_empty());
    eventually!(b.serving("hello.world").await == vec![a.origin.clone()]);
    eventually!(a.serving("hello.pojo").await == vec![b.origin.clone()]);
    let (_, a_after) = a.get("/info").await.unwrap();
    assert_eq!(a_after["more"]["topic"], a_info["more"]["topic"]);
    assert_eq!(
        served_by(&b.request("hello.world", "after", T).await.unwrap()),
        a.origin
    );
    let catalog = get_json(&two_addr, "/v1/catalog/services").await;
    assert!(catalog.get("hello-c").is_none(), "{catalog}");
    assert!(catalog.get("hello-a").is_some(), "{catalog}");
    let topics = get_json(&two_addr, "/v1/events/topics").await;
    assert_eq!(topics.as_object().unwrap().len(), 2, "{topics}");

    watching.cancel();
    let reads = watcher.await.expect("no topic was ever owned twice");
    assert!(reads > 0);
    drop(cluster);
}
