//! Each check kind, run by the agent inside `plexus dev`, going passing → critical → passing.

use plexus_api::{CheckStatus, ServiceRegistration};
use plexus_test::upstream::{GrpcHealthStub, HttpStub};
use plexus_test::{Dev, TcpEcho, eventually};
use serde_json::json;

use crate::{dev, http};

async fn register(dev: &Dev, body: serde_json::Value) {
    let url = format!("http://{}/v1/agent/service/register", dev.http);
    let (status, reply, _) = http("PUT", &url, Some(body.to_string().into_bytes())).await;
    assert_eq!(status, 200, "{reply}");
}

async fn status_of(dev: &Dev, check_id: &str) -> Option<CheckStatus> {
    dev.client
        .agent_checks()
        .await
        .ok()?
        .get(check_id)
        .map(|c| c.status)
}

#[tokio::test]
async fn http_check_follows_the_status_code() {
    let dev = dev(&[]).await;
    let stub = HttpStub::start(200).await.unwrap();
    register(
        &dev,
        json!({"Name": "web", "Port": 1, "Check": {"HTTP": stub.url(), "Interval": "200ms"}}),
    )
    .await;
    eventually!(status_of(&dev, "service:web").await == Some(CheckStatus::Passing));
    stub.set_status(429);
    eventually!(status_of(&dev, "service:web").await == Some(CheckStatus::Warning));
    stub.set_status(500);
    eventually!(status_of(&dev, "service:web").await == Some(CheckStatus::Critical));
    stub.set_status(204);
    eventually!(status_of(&dev, "service:web").await == Some(CheckStatus::Passing));
}

#[tokio::test]
async fn tcp_check_follows_the_listener() {
    let dev = dev(&[]).await;
    let echo = TcpEcho::start().await.unwrap();
    let addr = echo.addr.to_string();
    register(&dev, json!({"Name": "db", "Port": echo.port(), "Check": {"TCP": addr, "Interval": "200ms", "Timeout": "1s"}})).await;
    eventually!(status_of(&dev, "service:db").await == Some(CheckStatus::Passing));
    drop(echo);
    eventually!(status_of(&dev, "service:db").await == Some(CheckStatus::Critical));
    let _echo = TcpEcho::start_on(&addr).await.unwrap();
    eventually!(status_of(&dev, "service:db").await == Some(CheckStatus::Passing));
}

#[tokio::test]
async fn grpc_check_follows_the_serving_status() {
    let dev = dev(&[]).await;
    let stub = GrpcHealthStub::start().await.unwrap();
    register(&dev, json!({"Name": "rpc", "Port": stub.addr.port(), "Check": {"GRPC": stub.addr.to_string(), "Interval": "200ms"}})).await;
    eventually!(status_of(&dev, "service:rpc").await == Some(CheckStatus::Passing));
    stub.set_serving(false).await;
    eventually!(status_of(&dev, "service:rpc").await == Some(CheckStatus::Critical));
    stub.set_serving(true).await;
    eventually!(status_of(&dev, "service:rpc").await == Some(CheckStatus::Passing));
}

#[tokio::test]
async fn ttl_check_expires_and_recovers() {
    let dev = dev(&[]).await;
    register(
        &dev,
        json!({"Name": "job", "Port": 1, "Check": {"TTL": "1s"}}),
    )
    .await;
    assert_eq!(
        status_of(&dev, "service:job").await,
        Some(CheckStatus::Critical),
        "initial status is critical"
    );
    dev.client
        .update_ttl_check("service:job", CheckStatus::Passing, "alive")
        .await
        .unwrap();
    let checks = dev.client.agent_checks().await.unwrap();
    assert_eq!(checks["service:job"].status, CheckStatus::Passing);
    assert_eq!(checks["service:job"].output, "alive");
    // No more updates: the TTL runs out.
    eventually!(status_of(&dev, "service:job").await == Some(CheckStatus::Critical));
    dev.client
        .update_ttl_check("service:job", CheckStatus::Passing, "")
        .await
        .unwrap();
    assert_eq!(
        status_of(&dev, "service:job").await,
        Some(CheckStatus::Passing)
    );
    dev.client
        .update_ttl_check("service:job", CheckStatus::Warning, "slow")
        .await
        .unwrap();
    assert_eq!(
        status_of(&dev, "service:job").await,
        Some(CheckStatus::Warning)
    );
}

#[tokio::test]
async fn initial_status_and_deregister_critical_service_after() {
    let dev = dev(&[]).await;
    let reg: ServiceRegistration = serde_json::from_value(json!({
        "Name": "flaky", "Port": 1,
        "Check": {"TCP": "127.0.0.1:1", "Interval": "200ms", "Status": "passing",
                  "DeregisterCriticalServiceAfter": "1s"}
    }))
    .unwrap();
    dev.client.register_service(&reg).await.unwrap();
    eventually!(status_of(&dev, "service:flaky").await == Some(CheckStatus::Critical));
    eventually!(
        !dev.client
            .agent_services()
            .await
            .unwrap()
            .contains_key("flaky")
    );
}
