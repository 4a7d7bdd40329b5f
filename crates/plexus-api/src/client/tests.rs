//! The client against real HTTP servers on loopback: failover, staleness, fresh connections.

use super::*;

#[test]
fn addresses_accept_both_forms() {
    assert_eq!(base_url("127.0.0.1:8500").unwrap(), "http://127.0.0.1:8500");
    assert_eq!(
        base_url("http://127.0.0.1:8500/").unwrap(),
        "http://127.0.0.1:8500"
    );
    assert_eq!(base_url("localhost:1").unwrap(), "http://localhost:1");
    for bad in ["", "8500", "host:", "host:99999", "http://h:1/x", ":80"] {
        assert!(base_url(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn fails_over_to_the_next_server_and_tracks_staleness() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = live.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let body = "\"10.0.0.1:8300\"";
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    });
    let client = Client::with_servers(&[dead.as_str(), live_addr.as_str()]).unwrap();
    assert_eq!(client.status_leader().await.unwrap(), "10.0.0.1:8300");
    assert_eq!(client.base(), format!("http://{live_addr}"));
    assert_eq!(client.stale_since(), None);

    let lonely = Client::with_servers(&[dead.as_str()]).unwrap();
    let error = lonely.status_leader().await.unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    let since = lonely.stale_since().unwrap();
    // Still stale after another failure: the time of the first one is kept.
    let _ = lonely.status_leader().await;
    assert_eq!(lonely.stale_since(), Some(since));
    assert!(Client::with_servers::<&str>(&[]).is_err());

    // An agent that reaches no server says so; its clients are stale too.
    let agent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = agent.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = agent.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let body = r#"{"error":{"code":"unavailable","message":"no server is reachable"}}"#;
            let reply = format!(
                "HTTP/1.1 503 Service Unavailable\r\n{SERVERS_UNREACHABLE_HEADER}: true\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    });
    let behind_agent = Client::new(&agent_addr).unwrap();
    let error = behind_agent.status_leader().await.unwrap_err();
    assert_eq!(error.status(), Some(503), "{error}");
    assert!(behind_agent.stale_since().is_some());
}

/// What lease renewals rely on: a fresh-connection client opens a new connection for every
/// request (a pooled one that died silently is never reused), and a server that accepts but
/// never answers costs one request timeout, not more.
#[tokio::test]
async fn fresh_connections_are_new_every_time_and_bounded() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let answer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    tokio::spawn({
        let (accepted, answer) = (accepted.clone(), answer.clone());
        async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if answer {
                            let body = r#"{"ID":1,"TTL":3}"#;
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = stream.write_all(reply.as_bytes()).await;
                        }
                    }
                });
            }
        }
    });
    let pooled = Client::new(&addr).unwrap();
    let fresh = pooled
        .with_fresh_connections(Duration::from_millis(500))
        .unwrap();
    let timeout = Duration::from_millis(300);
    for _ in 0..3 {
        let lease: crate::remote::NodeLease = fresh
            .put_json_within::<(), _>("/x", None, timeout)
            .await
            .unwrap();
        assert_eq!(lease.id, 1);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one connection per request"
    );
    for _ in 0..2 {
        let _: crate::remote::NodeLease = pooled.put_json::<(), _>("/x", None).await.unwrap();
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "the shared client pools"
    );

    answer.store(false, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let error = fresh
        .put_json_within::<(), crate::remote::NodeLease>("/x", None, timeout)
        .await
        .unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn forwarded_requests_wait_as_long_as_they_may_take() {
    let secs = |s: u64| Duration::from_secs(s);
    assert_eq!(forward_timeout("/v1/agent/services"), REQUEST_TIMEOUT);
    assert_eq!(forward_timeout("/v1/kv/a?recurse"), REQUEST_TIMEOUT);
    assert_eq!(
        forward_timeout("/v1/health/service/web?index=7&wait=16s"),
        secs(17) + REQUEST_TIMEOUT
    );
    assert_eq!(
        forward_timeout("/v1/health/service/web?index=7"),
        secs(300) + secs(300) / 16 + REQUEST_TIMEOUT
    );
    assert_eq!(
        forward_timeout("/v1/catalog/nodes?index=1&wait=2h"),
        secs(600) + secs(600) / 16 + REQUEST_TIMEOUT
    );
    assert_eq!(
        forward_timeout("/v1/catalog/nodes?index=1&wait=soon"),
        secs(300) + secs(300) / 16 + REQUEST_TIMEOUT
    );
}

#[test]
fn path_segments_are_encoded() {
    assert_eq!(encode("web-1"), "web-1");
    assert_eq!(encode("a b/c"), "a%20b%2Fc");
    assert_eq!(encode("é:~%"), "%C3%A9:~%25");
    assert_eq!(encode_key("app/a b/"), "app/a%20b/");
}
