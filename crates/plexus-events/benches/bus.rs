//! In-process event throughput: 1,000 concurrent requests to a local route with 10 workers, and
//! one request at a time (round-trip latency through the post office).

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use plexus_events::{EventEnvelope, Platform, Value, Visibility};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let platform = Platform::with_origin("bench", "bench");
    runtime.block_on(async {
        platform
            .register(
                "hello.world",
                10,
                Visibility::Public,
                |e: EventEnvelope| async move { Ok::<Value, plexus_events::Fault>(e.body) },
            )
            .unwrap();
    });
    let timeout = Duration::from_secs(10);
    let mut group = c.benchmark_group("in_process");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000_concurrent_requests", |b| {
        b.to_async(&runtime).iter(|| async {
            let calls =
                (0..1000).map(|i| platform.request(EventEnvelope::to("hello.world", i), timeout));
            let replies = futures::future::join_all(calls).await;
            assert!(replies.iter().all(|r| r.status == 200));
        });
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_request", |b| {
        b.to_async(&runtime).iter(|| async {
            let reply = platform
                .request(EventEnvelope::to("hello.world", 1), timeout)
                .await;
            assert_eq!(reply.status, 200);
        });
    });
    group.bench_function("envelope_encode_decode", |b| {
        let event = EventEnvelope::to(
            "hello.world",
            "a body of moderate size, about sixty bytes long",
        )
        .with_header("x-trace", "abc");
        b.iter(|| EventEnvelope::from_bytes(&event.to_bytes()).unwrap());
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
