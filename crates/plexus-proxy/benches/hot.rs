//! Micro-benchmarks of the sidecar's hot pure functions:
//! - the balancer's pick for each new connection (`RoundRobin::order`), first choice and a full
//!   failover walk, over 1, 10 and 100 endpoints;
//! - an endpoint change as each proxy handles it: decode a `/v1/health/connect/<name>` answer and
//!   build the `EndpointSet` (10 and 100 instances);
//! - definition handling: parsing the quick start's HCL definition file.
//!
//! Route matching joins here once the L7 proxy (issue 4) lands.
//! Run: `cargo bench -p plexus-proxy --bench hot`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plexus_api::ServiceEntry;
use plexus_proxy::hot::{EndpointSet, RoundRobin};

fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 21000)))
        .collect()
}

fn balance(c: &mut Criterion) {
    let mut group = c.benchmark_group("balance");
    for n in [1usize, 10, 100] {
        let endpoints = addrs(n);
        let picker = RoundRobin::default();
        group.bench_with_input(BenchmarkId::new("first_pick", n), &endpoints, |b, e| {
            b.iter(|| black_box(picker.order(black_box(e)).next().copied()))
        });
        group.bench_with_input(
            BenchmarkId::new("full_failover_walk", n),
            &endpoints,
            |b, e| b.iter(|| black_box(picker.order(black_box(e)).fold(0u16, |a, s| a ^ s.port()))),
        );
    }
    group.finish();
}

/// A `/v1/health/connect/web` answer with `n` passing sidecar instances, as the server sends it.
fn health_answer(n: usize) -> Vec<u8> {
    let rows: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "Node": {"ID": "", "Node": format!("n{i}"), "Address": format!("10.0.{}.{}", i / 256, i % 256),
                         "Datacenter": "dc1", "TaggedAddresses": {}, "Meta": {}},
                "Service": {"Kind": "connect-proxy", "ID": format!("web-{i}-sidecar-proxy"),
                            "Service": "web-sidecar-proxy", "Tags": [], "Meta": {}, "Port": 21000,
                            "Address": "", "Weights": {"Passing": 1, "Warning": 1},
                            "EnableTagOverride": false},
                "Checks": [{"Node": format!("n{i}"), "CheckID": "serfHealth", "Name": "Serf Health Status",
                            "Status": "passing", "Notes": "", "Output": "", "ServiceID": "",
                            "ServiceName": "", "ServiceTags": [], "Type": ""}]
            })
        })
        .collect();
    serde_json::to_vec(&rows).unwrap()
}

fn endpoint_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("endpoint_change");
    for n in [10usize, 100] {
        let body = health_answer(n);
        // The fixture must decode to n passing endpoints, or the benchmark measures nothing.
        let entries: Vec<ServiceEntry> = serde_json::from_slice(&body).unwrap();
        assert_eq!(EndpointSet::from_entries(1, &entries).0.addrs.len(), n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("decode_and_build", n), &body, |b, body| {
            b.iter(|| {
                let entries: Vec<ServiceEntry> = serde_json::from_slice(black_box(body)).unwrap();
                black_box(EndpointSet::from_entries(7, &entries))
            })
        });
        group.bench_with_input(BenchmarkId::new("build_only", n), &entries, |b, entries| {
            b.iter(|| black_box(EndpointSet::from_entries(7, black_box(entries))))
        });
    }
    group.finish();
}

const QUICK_START: &str = r#"services {
  name = "client"
  port = 8080
  connect {
    sidecar_service {
      proxy {
        upstreams {
          destination_name = "echo"
          local_bind_port  = 9191
        }
      }
    }
  }
}
services {
  name = "echo"
  port = 9090
  check {
    tcp      = "127.0.0.1:9090"
    interval = "1s"
    timeout  = "500ms"
  }
  connect {
    sidecar_service {}
  }
}
"#;

fn definitions(c: &mut Criterion) {
    let file = Path::new("mesh.hcl");
    assert_eq!(
        plexus_api::definition::parse_str(file, QUICK_START)
            .unwrap()
            .len(),
        2
    );
    c.bench_function("definition/parse_quick_start_hcl", |b| {
        b.iter(|| {
            black_box(plexus_api::definition::parse_str(
                file,
                black_box(QUICK_START),
            ))
        })
    });
}

criterion_group!(benches, balance, endpoint_change, definitions);
criterion_main!(benches);
