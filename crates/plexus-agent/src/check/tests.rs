//! Runners against real sockets on 127.0.0.1:0 and the in-memory catalog; TTL and
//! deregister-after with paused time.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use plexus_api::{
    AgentService, Catalog, CheckStatus, CheckType, GoDuration, HealthCheck, HealthCheckDefinition,
    Node, Registration,
};
use plexus_runtime::Shutdown;
use tokio::net::TcpListener;

use super::Supervisor;
use super::ttl::TtlTimers;
use crate::test_catalog::MemCatalog;

const NODE: &str = "node-1";
const WAIT: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Option<GoDuration> {
    Some(GoDuration(Duration::from_millis(n)))
}

fn check(id: &str, kind: CheckType, definition: HealthCheckDefinition) -> HealthCheck {
    HealthCheck {
        check_id: id.into(),
        service_id: "web".into(),
        service_name: "web".into(),
        check_type: Some(kind),
        definition: HealthCheckDefinition {
            interval: ms(50),
            timeout: ms(1000),
            ..definition
        },
        ..HealthCheck::default()
    }
}

/// Registers `web` with `checks` and starts a supervisor over the catalog.
async fn supervise(checks: Vec<HealthCheck>) -> (Arc<MemCatalog>, Arc<TtlTimers>, Shutdown) {
    let catalog = MemCatalog::new();
    let registration = Registration {
        node: Node {
            node: NODE.into(),
            ..Node::default()
        },
        services: vec![AgentService {
            id: "web".into(),
            service: "web".into(),
            ..AgentService::default()
        }],
        checks,
    };
    catalog.register(registration).await.unwrap();
    let ttl = Arc::new(TtlTimers::default());
    let shutdown = Shutdown::new();
    let supervisor = Supervisor::new(catalog.clone(), NODE.into(), ttl.clone(), shutdown.clone());
    shutdown.spawn(supervisor.run());
    (catalog, ttl, shutdown)
}

fn status_is(id: &str, want: CheckStatus) -> impl Fn(&MemCatalog) -> bool {
    let id = id.to_owned();
    move |c: &MemCatalog| c.check(NODE, &id).is_some_and(|c| c.status == want)
}

async fn stop(shutdown: Shutdown) {
    shutdown.trigger();
    assert!(shutdown.drain(WAIT).await, "runners did not stop");
}

#[tokio::test]
async fn tcp_check_follows_the_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let def = HealthCheckDefinition {
        tcp: address,
        ..HealthCheckDefinition::default()
    };
    let (catalog, _, shutdown) = supervise(vec![check("tcp", CheckType::Tcp, def)]).await;
    catalog
        .eventually(WAIT, status_is("tcp", CheckStatus::Passing))
        .await;
    drop(listener);
    catalog
        .eventually(WAIT, status_is("tcp", CheckStatus::Critical))
        .await;
    let output = catalog.check(NODE, "tcp").unwrap().output;
    assert!(output.starts_with("TCP connect 127.0.0.1:"), "{output}");
    stop(shutdown).await;
}

#[tokio::test]
async fn http_check_maps_status_codes() {
    let code = Arc::new(AtomicU16::new(200));
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get({
            let code = code.clone();
            move || async move {
                let status = http::StatusCode::from_u16(code.load(Ordering::SeqCst)).unwrap();
                (status, "hello from the app")
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let def = HealthCheckDefinition {
        http: format!("http://{address}/health"),
        ..HealthCheckDefinition::default()
    };
    let (catalog, _, shutdown) = supervise(vec![check("http", CheckType::Http, def)]).await;

    catalog
        .eventually(WAIT, status_is("http", CheckStatus::Passing))
        .await;
    let output = catalog.check(NODE, "http").unwrap().output;
    assert!(
        output.contains("200 OK") && output.contains("hello from the app"),
        "{output}"
    );
    code.store(429, Ordering::SeqCst);
    catalog
        .eventually(WAIT, status_is("http", CheckStatus::Warning))
        .await;
    code.store(500, Ordering::SeqCst);
    catalog
        .eventually(WAIT, status_is("http", CheckStatus::Critical))
        .await;
    code.store(200, Ordering::SeqCst);
    catalog
        .eventually(WAIT, status_is("http", CheckStatus::Passing))
        .await;
    server.abort();
    let _ = server.await;
    catalog
        .eventually(WAIT, status_is("http", CheckStatus::Critical))
        .await;
    stop(shutdown).await;
}

#[tokio::test]
async fn https_and_grpc_tls_report_unsupported() {
    let https = HealthCheckDefinition {
        http: "https://127.0.0.1:1/".into(),
        ..HealthCheckDefinition::default()
    };
    let grpc_tls = HealthCheckDefinition {
        grpc: "127.0.0.1:1".into(),
        grpc_use_tls: true,
        ..HealthCheckDefinition::default()
    };
    let checks = vec![
        check("https", CheckType::Http, https),
        check("grpcs", CheckType::Grpc, grpc_tls),
    ];
    let (catalog, _, shutdown) = supervise(checks).await;
    let has_output = |id: &'static str, text: &'static str| {
        move |c: &MemCatalog| c.check(NODE, id).is_some_and(|c| c.output.contains(text))
    };
    catalog
        .eventually(WAIT, has_output("https", "https checks not supported yet"))
        .await;
    catalog
        .eventually(WAIT, has_output("grpcs", "not supported yet"))
        .await;
    stop(shutdown).await;
}

#[tokio::test]
async fn grpc_check_follows_the_health_service() {
    use tonic_health::pb::health_check_response::ServingStatus;

    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("my.Svc", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    let def = HealthCheckDefinition {
        grpc: format!("{address}/my.Svc"),
        ..HealthCheckDefinition::default()
    };
    let (catalog, _, shutdown) = supervise(vec![check("grpc", CheckType::Grpc, def)]).await;
    catalog
        .eventually(WAIT, status_is("grpc", CheckStatus::Passing))
        .await;
    reporter
        .set_service_status("my.Svc", tonic_health::ServingStatus::NotServing)
        .await;
    catalog
        .eventually(WAIT, status_is("grpc", CheckStatus::Critical))
        .await;
    let output = catalog.check(NODE, "grpc").unwrap().output;
    assert!(
        output.contains(ServingStatus::NotServing.as_str_name()),
        "{output}"
    );
    reporter
        .set_service_status("my.Svc", tonic_health::ServingStatus::Serving)
        .await;
    catalog
        .eventually(WAIT, status_is("grpc", CheckStatus::Passing))
        .await;
    server.abort();
    stop(shutdown).await;
}

#[tokio::test(start_paused = true)]
async fn ttl_expires_unless_updated_within_the_ttl() {
    let def = HealthCheckDefinition {
        ttl: Some(GoDuration(Duration::from_secs(10))),
        ..HealthCheckDefinition::default()
    };
    let mut ttl_check = check("ttl", CheckType::Ttl, def);
    ttl_check.status = CheckStatus::Passing;
    let (catalog, ttl, shutdown) = supervise(vec![ttl_check]).await;
    let start = tokio::time::Instant::now();
    let expired = |c: &MemCatalog| {
        c.check(NODE, "ttl")
            .is_some_and(|c| c.output == "TTL expired")
    };

    // Updated at 6s: the deadline moves to 16s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    ttl.touch("ttl");
    catalog
        .update_check(NODE, "ttl", CheckStatus::Passing, "ok")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(!expired(&catalog), "expired before its deadline");
    catalog.eventually(Duration::from_secs(60), expired).await;
    assert_eq!(start.elapsed(), Duration::from_secs(16));
    assert_eq!(
        catalog.check(NODE, "ttl").unwrap().status,
        CheckStatus::Critical
    );

    // A later update revives it, and it expires again a TTL later.
    ttl.touch("ttl");
    catalog
        .update_check(NODE, "ttl", CheckStatus::Warning, "slow")
        .await
        .unwrap();
    catalog.eventually(Duration::from_secs(60), expired).await;
    assert_eq!(start.elapsed(), Duration::from_secs(26));
    stop(shutdown).await;
}

#[tokio::test(start_paused = true)]
async fn critical_service_is_deregistered_after_the_period() {
    let def = HealthCheckDefinition {
        ttl: Some(GoDuration(Duration::from_secs(5))),
        deregister_critical_service_after: Some(GoDuration(Duration::from_secs(60))),
        ..HealthCheckDefinition::default()
    };
    let (catalog, _, shutdown) = supervise(vec![check("ttl", CheckType::Ttl, def)]).await;
    let start = tokio::time::Instant::now();
    catalog
        .eventually(Duration::from_secs(600), |c| !c.has_service(NODE, "web"))
        .await;
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    stop(shutdown).await;
}

#[tokio::test]
async fn alias_mirrors_the_worst_check_of_the_aliased_service() {
    let ttl = HealthCheckDefinition {
        ttl: Some(GoDuration(Duration::from_secs(300))),
        ..HealthCheckDefinition::default()
    };
    let mut alias = check(
        "alias",
        CheckType::Alias,
        HealthCheckDefinition {
            alias_service: "web".into(),
            ..HealthCheckDefinition::default()
        },
    );
    alias.service_id = "web-sidecar-proxy".into();
    let (catalog, _, shutdown) = supervise(vec![check("ttl", CheckType::Ttl, ttl), alias]).await;
    catalog
        .eventually(WAIT, status_is("alias", CheckStatus::Critical))
        .await;
    catalog
        .update_check(NODE, "ttl", CheckStatus::Warning, "meh")
        .await
        .unwrap();
    catalog
        .eventually(WAIT, status_is("alias", CheckStatus::Warning))
        .await;
    catalog
        .update_check(NODE, "ttl", CheckStatus::Passing, "fine")
        .await
        .unwrap();
    catalog
        .eventually(WAIT, status_is("alias", CheckStatus::Passing))
        .await;
    stop(shutdown).await;
}

mod pure {
    use super::super::alias::outcome;
    use super::super::ttl::deadline;
    use super::*;

    fn status(id: &str, service: &str, status: CheckStatus) -> HealthCheck {
        HealthCheck {
            check_id: id.into(),
            service_id: service.into(),
            status,
            ..HealthCheck::default()
        }
    }

    #[test]
    fn alias_aggregation() {
        let checks = [
            status("a", "web", CheckStatus::Passing),
            status("b", "web", CheckStatus::Warning),
            status("own", "sidecar", CheckStatus::Critical),
            status("other", "db", CheckStatus::Critical),
        ];
        let o = outcome("web", "own", true, &checks);
        assert_eq!(o.status, CheckStatus::Warning);
        assert!(o.output.contains('b'), "{o:?}");
        assert_eq!(
            outcome("web", "own", true, &checks[..1]).status,
            CheckStatus::Passing
        );
        let none = outcome("web", "own", true, &[]);
        assert_eq!(none.status, CheckStatus::Passing);
        let gone = outcome("ghost", "own", false, &checks);
        assert_eq!(
            gone,
            super::super::Outcome::critical("service ghost not registered")
        );
        // Node checks count, the alias itself does not.
        let node = [status("serfHealth", "", CheckStatus::Critical)];
        assert_eq!(
            outcome("web", "own", true, &node).status,
            CheckStatus::Critical
        );
        let own = [status("own", "web", CheckStatus::Critical)];
        assert_eq!(
            outcome("web", "own", true, &own).status,
            CheckStatus::Passing
        );
    }

    #[test]
    fn ttl_deadline_counts_from_the_later_of_start_and_update() {
        let t0 = tokio::time::Instant::now();
        let ttl = Duration::from_secs(10);
        assert_eq!(deadline(t0, None, ttl), t0 + ttl);
        let later = t0 + Duration::from_secs(3);
        assert_eq!(deadline(t0, Some(later), ttl), later + ttl);
        assert_eq!(deadline(later, Some(t0), ttl), later + ttl);
    }
}
