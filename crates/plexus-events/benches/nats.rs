//! Cross-instance requests over a real `nats-server` (from `.tools/bin`, installed by
//! `scripts/setup-test-env.sh`): two platforms in this process, each with its own NATS
//! connection and subject, one calling the other through the broker. Reports criterion's timing
//! and, from 5,000 sequential requests, p50 and p99 latency.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use plexus_api::presence::Peer;
use plexus_events::connector::nats::NatsConnector;
use plexus_events::{EventEnvelope, Platform, Value, Visibility};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nats() -> (Child, u16) {
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.tools/bin/nats-server");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server in .tools/bin: run scripts/setup-test-env.sh");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Child(child), port)
}

fn bench(c: &mut Criterion) {
    let (_nats, port) = start_nats();
    let url = format!("nats://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let caller = Platform::new("caller");
    let server = Platform::new("server");
    runtime.block_on(async {
        server
            .register(
                "hello.world",
                10,
                Visibility::Public,
                |e: EventEnvelope| async move { Ok::<Value, plexus_events::Fault>(e.body) },
            )
            .unwrap();
        NatsConnector::start(&url, &caller).await.unwrap();
        NatsConnector::start(&url, &server).await.unwrap();
        let peer = Peer {
            origin: server.origin().to_owned(),
            app: "server".into(),
            group: "default".into(),
            topic: "multiplex.0001-001".into(),
            routes: vec!["hello.world".into()],
        };
        caller.update_table(|t| t.join(peer));
    });
    let timeout = Duration::from_secs(10);

    runtime.block_on(async {
        let mut samples = Vec::with_capacity(5000);
        for i in 0..5000 {
            let started = Instant::now();
            let reply = caller
                .request(EventEnvelope::to("hello.world", i), timeout)
                .await;
            assert_eq!(reply.status, 200);
            samples.push(started.elapsed());
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "nats cross-instance request latency over {} requests: p50 {:?}, p99 {:?}",
            samples.len(),
            at(0.50),
            at(0.99)
        );
    });

    let mut group = c.benchmark_group("nats");
    group.bench_function("cross_instance_request", |b| {
        b.to_async(&runtime).iter(|| async {
            let reply = caller
                .request(EventEnvelope::to("hello.world", 1), timeout)
                .await;
            assert_eq!(reply.status, 200);
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
