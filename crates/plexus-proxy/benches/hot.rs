//! Micro-benchmarks of the sidecar's hot pure functions:
//! - the balancer's pick for each new connection (`RoundRobin::order`), first choice and a full
//!   failover walk, over 1, 10 and 100 endpoints;
//! - an endpoint change as each proxy handles it: decode a `/v1/health/connect/<name>` answer and
//!   build the `EndpointSet` (10 and 100 instances);
//! - definition handling: parsing the quick start's HCL definition file;
//! - route matching (`RouteTable::find`) over a realistic 20-route table (path exact, prefix and
//!   regex, header and query criteria, methods) for requests that stop at the first, a middle
//!   and the catch-all route, seen through `http::Request` as the L7 path sees them;
//! - header handling of the L7 path: hop-by-hop removal and the `traceparent` check, on a
//!   browser-like request's headers.
//!
//! Run: `cargo bench -p plexus-proxy --bench hot`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plexus_api::ServiceEntry;
use plexus_api::config_entry::chain::{
    CompiledRoute, HeaderCriterion, PathMatch, QueryCriterion, RequestMatch, ValueMatch,
    WeightedTarget,
};
use plexus_proxy::hot::{EndpointSet, RoundRobin};
use plexus_proxy::hot::{RequestView, RouteTable, query_value};

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

/// Paths, headers and query as the L7 path's route matcher reads them from an `http::Request`.
struct View<'a>(&'a http::Request<()>);

impl RequestView for View<'_> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }
    fn path(&self) -> &str {
        self.0.uri().path()
    }
    fn query(&self) -> Option<&str> {
        self.0.uri().query()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.0.headers().get(name).and_then(|v| v.to_str().ok())
    }
}

fn route(name: &str, matcher: RequestMatch) -> CompiledRoute {
    CompiledRoute {
        name: name.to_owned(),
        matcher,
        splits: vec![WeightedTarget {
            weight: 100.0,
            target: format!("{name}.default.dc1"),
            headers: Default::default(),
        }],
        ..CompiledRoute::default()
    }
}

fn header(name: &str, value: ValueMatch, invert: bool) -> HeaderCriterion {
    HeaderCriterion {
        name: name.to_owned(),
        value,
        invert,
        ignore_case: false,
    }
}

fn query(name: &str, value: ValueMatch) -> QueryCriterion {
    QueryCriterion {
        name: name.to_owned(),
        value,
    }
}

/// 20 routes as a service-router for a public API might hold them: versioned prefixes, regex
/// paths with ids, canary and tenant headers, feature flags in the query, method-restricted
/// admin paths, and the chain's catch-all last.
fn route_table() -> RouteTable {
    use PathMatch::{Exact, Prefix, Regex};
    let path = |p: PathMatch| RequestMatch {
        path: Some(p),
        ..RequestMatch::default()
    };
    let s = str::to_owned;
    let mut routes = vec![
        route("health", path(Exact(s("/healthz")))),
        route("ready", path(Exact(s("/readyz")))),
        route(
            "canary-v2",
            RequestMatch {
                path: Some(Prefix(s("/api/v2/"))),
                headers: vec![header("x-canary", ValueMatch::Exact(s("true")), false)],
                ..RequestMatch::default()
            },
        ),
        route(
            "tenant-eu",
            RequestMatch {
                path: Some(Prefix(s("/api/"))),
                headers: vec![header("x-tenant", ValueMatch::Suffix(s(".eu")), false)],
                ..RequestMatch::default()
            },
        ),
        route(
            "order-by-id",
            RequestMatch {
                path: Some(Regex(s("/api/v[12]/orders/[0-9]+"))),
                methods: vec![s("GET"), s("HEAD")],
                ..RequestMatch::default()
            },
        ),
        route(
            "order-write",
            RequestMatch {
                path: Some(Prefix(s("/api/v2/orders"))),
                methods: vec![s("POST"), s("PUT"), s("PATCH"), s("DELETE")],
                ..RequestMatch::default()
            },
        ),
        route(
            "user-by-id",
            path(Regex(s("/api/v[12]/users/[a-f0-9-]{36}"))),
        ),
        route(
            "search-beta",
            RequestMatch {
                path: Some(Exact(s("/api/v2/search"))),
                query: vec![query("beta", ValueMatch::Present)],
                ..RequestMatch::default()
            },
        ),
        route(
            "search-lang",
            RequestMatch {
                path: Some(Exact(s("/api/v2/search"))),
                query: vec![query("lang", ValueMatch::Regex(s("(de|fr|it)")))],
                ..RequestMatch::default()
            },
        ),
        route(
            "grpc-inventory",
            RequestMatch {
                path: Some(Prefix(s("/inventory.v1.Inventory/"))),
                headers: vec![header(
                    "content-type",
                    ValueMatch::Prefix(s("application/grpc")),
                    false,
                )],
                ..RequestMatch::default()
            },
        ),
        route(
            "mobile",
            RequestMatch {
                path: Some(Prefix(s("/api/"))),
                headers: vec![header(
                    "user-agent",
                    ValueMatch::Regex(s(".*(Android|iPhone).*")),
                    false,
                )],
                ..RequestMatch::default()
            },
        ),
        route(
            "no-auth",
            RequestMatch {
                path: Some(Prefix(s("/api/private/"))),
                headers: vec![header("authorization", ValueMatch::Present, true)],
                ..RequestMatch::default()
            },
        ),
        route(
            "admin",
            RequestMatch {
                path: Some(Prefix(s("/admin/"))),
                methods: vec![s("GET")],
                ..RequestMatch::default()
            },
        ),
        route("static", path(Regex(s("/static/.+\\.(css|js|png|svg)")))),
        route("images", path(Prefix(s("/img/")))),
        route(
            "v1-legacy",
            RequestMatch {
                path: Some(Prefix(s("/api/v1/"))),
                query: vec![query("format", ValueMatch::Exact(s("xml")))],
                ..RequestMatch::default()
            },
        ),
        route("v1", path(Prefix(s("/api/v1/")))),
        route(
            "cart",
            path(Regex(s("/api/v2/carts/[0-9]+/items(/[0-9]+)?"))),
        ),
        route("v2", path(Prefix(s("/api/v2/")))),
    ];
    routes.push(route("default", RequestMatch::default()));
    assert_eq!(routes.len(), 20);
    RouteTable::new(&routes).unwrap()
}

/// A browser-like request with 14 headers, as it reaches the outbound sidecar.
fn request(method: &str, uri: &str) -> http::Request<()> {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.8"),
        ("accept-encoding", "gzip, deflate, br"),
        (
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl",
        ),
        ("x-tenant", "acme.us"),
        ("x-request-id", "6f1c2d7e-2f4b-4a8e-9a0e-5d1f0c7b9e21"),
        ("cookie", "session=abc123; theme=dark; consent=1"),
        ("referer", "https://shop.example.com/basket"),
        ("connection", "keep-alive, x-debug"),
        ("keep-alive", "timeout=5"),
        ("x-debug", "1"),
        ("te", "trailers"),
    ] {
        builder = builder.header(name, value);
    }
    builder.body(()).unwrap()
}

fn route_match(c: &mut Criterion) {
    let table = route_table();
    let cases = [
        ("first_route", "GET", "/healthz", "health"),
        (
            "regex_route_5",
            "GET",
            "/api/v2/orders/12345",
            "order-by-id",
        ),
        (
            "query_route_9",
            "GET",
            "/api/v2/search?q=shoes&lang=fr&page=2",
            "search-lang",
        ),
        ("prefix_route_19", "GET", "/api/v2/accounts/42", "v2"),
        ("catch_all_20", "GET", "/unknown/path", "default"),
    ];
    let mut group = c.benchmark_group("route_match");
    for (case, method, uri, expected) in cases {
        let req = request(method, uri);
        // Each request must take the route it is named for, or the benchmark measures nothing.
        let (_, hit) = table.find(&View(&req)).unwrap();
        assert_eq!(hit.name, expected, "{uri}");
        group.bench_with_input(BenchmarkId::new("find_20_routes", case), &req, |b, req| {
            b.iter(|| black_box(table.find(&View(black_box(req))).map(|(i, _)| i)))
        });
    }
    group.finish();
}

fn header_handling(c: &mut Criterion) {
    let req = request("GET", "/api/v2/orders/1");
    let mut group = c.benchmark_group("headers");
    let mut stripped = req.headers().clone();
    plexus_proxy::hot::strip_hop_by_hop(&mut stripped);
    assert!(!stripped.contains_key("x-debug") && !stripped.contains_key("keep-alive"));
    assert_eq!(stripped.len(), req.headers().len() - 3);
    group.bench_function("strip_hop_by_hop_14", |b| {
        b.iter_batched_ref(
            || req.headers().clone(),
            |h| plexus_proxy::hot::strip_hop_by_hop(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("ensure_traceparent_new", |b| {
        b.iter_batched_ref(
            || stripped.clone(),
            |h| plexus_proxy::hot::ensure_traceparent(black_box(h)),
            BatchSize::SmallInput,
        )
    });
    let mut traced = stripped.clone();
    plexus_proxy::hot::ensure_traceparent(&mut traced);
    assert!(traced.contains_key("traceparent"));
    group.bench_function("ensure_traceparent_present", |b| {
        b.iter(|| plexus_proxy::hot::ensure_traceparent(black_box(&mut traced)))
    });
    group.bench_function("query_value", |b| {
        b.iter(|| {
            black_box(query_value(
                black_box(Some("q=red+shoes&lang=fr&page=2&sort=price%20asc")),
                "sort",
            ))
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    balance,
    endpoint_change,
    definitions,
    route_match,
    header_handling
);
criterion_main!(benches);
