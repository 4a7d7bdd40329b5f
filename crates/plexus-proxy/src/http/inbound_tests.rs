//! The inbound stack's own layers: the per-request intention decision, and the translation of a
//! peer's HTTP/2 request for the app (HTTP/1.1 or h2c) against real apps on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use plexus_api::connect::{
    DefaultPolicy, IntentionAction, IntentionHttpHeaderPermission, IntentionHttpPermission,
    IntentionInput, IntentionPermission,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{Layer, Service, ServiceExt};

use super::{AppClient, AuthorizeLayer, Caller};
use crate::authorize::{Authorizer, Policy};
use crate::discovery::Protocol;
use crate::http::stack::AnswerFuture;
use crate::http::{Body, HttpError, Reason};

/// Answers 200, counts the requests that reached it and keeps the last one's path and query.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>, Arc<Mutex<String>>);

impl Service<Request<Body>> for Counting {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = AnswerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> AnswerFuture {
        self.0.fetch_add(1, Ordering::SeqCst);
        *self.1.lock().unwrap() = request.uri().to_string();
        Box::pin(async { Ok(Response::new(crate::http::empty())) })
    }
}

fn policy(default: DefaultPolicy, rules: &[(&str, IntentionAction)]) -> Arc<Policy> {
    Arc::new(Policy {
        intentions: rules
            .iter()
            .enumerate()
            .map(|(i, (source, action))| {
                IntentionInput::l4(&format!("i{i}"), source, "api", *action)
            })
            .collect(),
        default,
    })
}

fn from(caller: Option<&Caller>) -> Request<Body> {
    let mut request = Request::new(crate::http::empty());
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller.clone());
    }
    request
}

#[tokio::test]
async fn each_request_is_decided_by_the_intentions_in_force_when_it_arrives() {
    let (set, current) = watch::channel(policy(
        DefaultPolicy::Deny,
        &[("web", IntentionAction::Allow)],
    ));
    let authorizer = Authorizer::following("api", current);
    let web = Caller(Arc::new(authorizer.for_source("web")));
    let other = Caller(Arc::new(authorizer.for_source("other")));
    let reached = Counting::default();
    let mut stack = AuthorizeLayer.layer(reached.clone());

    assert!(stack.call(from(Some(&web))).await.is_ok());
    let denied = stack.call(from(Some(&other))).await.unwrap_err();
    assert_eq!(denied.reason(), Reason::Denied);
    assert_eq!(
        reached.0.load(Ordering::SeqCst),
        1,
        "a denied request goes no further"
    );

    // The same caller (one connection between sidecars), the intentions changed: the next
    // request is decided anew.
    set.send(policy(
        DefaultPolicy::Deny,
        &[("web", IntentionAction::Deny)],
    ))
    .unwrap();
    let denied = stack.call(from(Some(&web))).await.unwrap_err();
    assert_eq!(denied.reason(), Reason::Denied);
    set.send(policy(DefaultPolicy::Allow, &[])).unwrap();
    assert!(stack.call(from(Some(&other))).await.is_ok());
    // A request without a caller (no verified peer) is not the layer's to refuse.
    assert!(stack.call(from(None)).await.is_ok());
    assert_eq!(reached.0.load(Ordering::SeqCst), 3);
}

/// `web` → `api` decided by permissions: deny `/admin…`; allow GET and HEAD under `/v2/`; allow
/// any method with `x-role: ops`.
fn l7_policy(default: DefaultPolicy) -> Arc<Policy> {
    let permission = |action, http| IntentionPermission {
        action,
        http: Some(http),
    };
    Arc::new(Policy {
        intentions: vec![IntentionInput {
            action: None,
            permissions: vec![
                permission(
                    IntentionAction::Deny,
                    IntentionHttpPermission {
                        path_prefix: "/admin".into(),
                        ..Default::default()
                    },
                ),
                permission(
                    IntentionAction::Allow,
                    IntentionHttpPermission {
                        path_regex: "/v2/.*".into(),
                        methods: vec!["GET".into(), "HEAD".into()],
                        ..Default::default()
                    },
                ),
                permission(
                    IntentionAction::Allow,
                    IntentionHttpPermission {
                        header: vec![IntentionHttpHeaderPermission {
                            name: "X-Role".into(),
                            exact: "ops".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
            ],
            ..IntentionInput::l4("l7", "web", "api", IntentionAction::Allow)
        }],
        default,
    })
}

fn request(caller: &Caller, method: &str, uri: &str, role: Option<&str>) -> Request<Body> {
    let mut request = from(Some(caller));
    *request.method_mut() = method.parse().unwrap();
    *request.uri_mut() = uri.parse().unwrap();
    if let Some(role) = role {
        request
            .headers_mut()
            .insert("x-role", role.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn an_l7_intention_decides_each_request_by_its_permissions_first_match_first() {
    let (set, current) = watch::channel(l7_policy(DefaultPolicy::Deny));
    let authorizer = Authorizer::following("api", current);
    let web = Caller(Arc::new(authorizer.for_source("web")));
    let other = Caller(Arc::new(authorizer.for_source("other")));
    let reached = Counting::default();
    let mut stack = AuthorizeLayer.layer(reached.clone());
    let mut verdict = async |req: Request<Body>| match stack.call(req).await {
        Ok(_) => true,
        Err(error) => {
            assert_eq!(error.reason(), Reason::Denied);
            false
        }
    };

    assert!(verdict(request(&web, "GET", "/v2/widgets?page=2", None)).await);
    assert_eq!(*reached.1.lock().unwrap(), "/v2/widgets?page=2");
    assert!(
        !verdict(request(&web, "POST", "/v2/widgets", None)).await,
        "no permission matches: the default denies"
    );
    assert!(verdict(request(&web, "POST", "/v2/widgets", Some("ops"))).await);
    assert!(
        !verdict(request(&web, "GET", "/admin/users", Some("ops"))).await,
        "the first match decides"
    );
    // What is tested is the path the app gets: dot segments, doubled slashes and escaped
    // letters cannot walk around the deny, and the app gets the path tested.
    for sneaky in [
        "/v2/../admin/users",
        "//admin",
        "/%61dmin",
        "/v2/%2e%2e/admin",
    ] {
        assert!(
            !verdict(request(&web, "GET", sneaky, Some("ops"))).await,
            "{sneaky}"
        );
    }
    assert!(verdict(request(&web, "GET", "/v2/./a//b?q=/../", None)).await);
    assert_eq!(*reached.1.lock().unwrap(), "/v2/a/b?q=/../");
    // Another caller is not governed by the L7 intention: the default decides.
    assert!(!verdict(request(&other, "GET", "/v2/widgets", None)).await);
    // Under a default allow, a request no permission matches goes through.
    set.send(l7_policy(DefaultPolicy::Allow)).unwrap();
    assert!(verdict(request(&web, "POST", "/v2/widgets", None)).await);
    assert!(!verdict(request(&web, "DELETE", "/admin", None)).await);
    assert_eq!(
        reached.0.load(Ordering::SeqCst),
        4,
        "only the allowed reached the app"
    );
}

/// An HTTP/1.1 app: answers each request with `ok` (closing the connection) and keeps the
/// request heads it read.
async fn http1_app() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).to_lowercase());
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close, x-hop\r\n\
                      x-hop: 1\r\nkeep-alive: timeout=5\r\nx-app: kept\r\n\r\nok",
                )
                .await;
        }
    });
    (addr, heads)
}

/// An h2c app: answers `ok`, keeping each request's version and authority.
async fn h2c_app() -> (SocketAddr, Arc<Mutex<Vec<(Version, Option<String>)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let authority = request.uri().authority().map(|a| a.to_string());
                    seen.lock().unwrap().push((request.version(), authority));
                    if let Ok(mut body) = respond.send_response(Response::new(()), false) {
                        let _ = body.send_data(Bytes::from_static(b"ok"), true);
                    }
                }
            });
        }
    });
    (addr, requests)
}

/// A request as it comes from a peer sidecar: HTTP/2, its authority in the URI.
fn from_peer(uri: &str) -> Request<Body> {
    let mut request = Request::builder()
        .uri(uri)
        .header("proxy-connection", "keep-alive")
        .header("x-caller", "kept")
        .body(crate::http::empty())
        .unwrap();
    *request.version_mut() = Version::HTTP_2;
    request
}

fn client(app: SocketAddr, protocol: Protocol) -> AppClient {
    AppClient::new(
        watch::channel(app).1,
        protocol,
        None,
        Duration::from_secs(5),
    )
}

#[tokio::test]
async fn an_http1_app_gets_the_callers_authority_as_host_and_no_connection_headers() {
    let (app, heads) = http1_app().await;
    let response = client(app, Protocol::Http)
        .oneshot(from_peer("http://api.internal:8080/orders?id=7"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );
    let head = heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("get /orders?id=7 http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: api.internal:8080\r\n"), "{head}");
    assert!(head.contains("\r\nx-caller: kept\r\n"), "{head}");
    assert!(head.contains("\r\ntraceparent: 00-"), "{head}");
    assert!(!head.contains("proxy-connection"), "{head}");
    // The app's connection-specific headers stay on its own hop.
    for name in ["connection", "keep-alive", "x-hop"] {
        assert!(!headers.contains_key(name), "{name}: {headers:?}");
    }
    assert_eq!(headers["x-app"], "kept");

    // No authority from the caller: Host is the app's address.
    client(app, Protocol::Http)
        .oneshot(from_peer("/plain"))
        .await
        .unwrap();
    let head = heads.lock().unwrap()[1].clone();
    assert!(head.contains(&format!("\r\nhost: {app}\r\n")), "{head}");
}

#[tokio::test]
async fn an_h2c_app_gets_the_callers_authority() {
    let (app, requests) = h2c_app().await;
    let h2c = client(app, Protocol::Http2);
    let response = h2c
        .clone()
        .oneshot(from_peer("http://api.internal:8080/orders"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    h2c.oneshot(from_peer("/plain")).await.unwrap();
    assert_eq!(
        *requests.lock().unwrap(),
        [
            (Version::HTTP_2, Some("api.internal:8080".to_owned())),
            (Version::HTTP_2, Some(app.to_string())),
        ]
    );
}

#[tokio::test]
async fn an_app_that_is_not_listening_is_a_connect_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = listener.local_addr().unwrap();
    drop(listener);
    for protocol in [Protocol::Http, Protocol::Http2] {
        let error = client(gone, protocol)
            .oneshot(from_peer("http://api/"))
            .await
            .unwrap_err();
        assert_eq!(
            error.reason(),
            Reason::UpstreamConnectFailure,
            "{protocol:?}"
        );
    }
}
