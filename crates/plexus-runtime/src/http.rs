//! HTTP plumbing for the JSON APIs: the one error shape, a bounded JSON body extractor, blocking
//! queries (`?index=N&wait=30s`) and the serve loop with graceful shutdown.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use plexus_api::{ErrorBody, GoDuration};
use serde::Serialize;

/// Headers of an answer relayed from another server (an agent relaying its server, a server
/// relaying another datacenter's) that are not passed on: those that describe one connection,
/// not the answer (RFC 9110 §7.6.1), and `content-length`, which the relaying server sets for
/// the body it sends.
pub const NOT_RELAYED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use crate::connections::{self, Admission, ConnLimits};

/// Largest request body accepted by the JSON APIs.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How much of an oversized body is read and discarded so the client gets its 413.
pub const MAX_DRAIN_BYTES: usize = 64 * 1024 * 1024;
/// How long an oversized body is drained at most.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);
/// Longest blocking-query wait; longer requests are clamped (Consul's limit).
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Blocking-query wait when `wait` is not given (Consul's default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// An error response: a status code and the shared JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body.
    pub body: ErrorBody,
}

impl ApiError {
    /// Any status, code and message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message, None),
        }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.body.error.field = Some(field.into());
        self
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 `invalid_field` naming the field.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field(field)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 500 `internal`; log the cause before building this, the client only gets `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// Router fallback: every unknown path answers 404 in the JSON error shape.
pub async fn not_found_fallback(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// Router fallback for a known path with a method it does not serve: 405 in the JSON error shape.
pub async fn method_not_allowed_fallback(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not supported on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// A JSON request body of at most [`MAX_BODY_BYTES`], UTF-8, decoded into `T`.
///
/// Rejections: 413 when too large, 400 when empty, not UTF-8, not JSON, or not of `T`'s shape (the
/// error names the field path, e.g. `Connect.SidecarService.Port`).
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req).await?;
        decode_json(&bytes).map(JsonBody)
    }
}

/// Reads a request body of at most [`MAX_BODY_BYTES`] (413 beyond).
///
/// An oversized body is read on and thrown away (up to [`MAX_DRAIN_BYTES`], for at most
/// [`DRAIN_TIME`]) before answering, so that a client still writing it receives the 413 instead of a
/// broken connection.
pub async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let mut body = req.into_body();
    let mut kept: Vec<u8> = Vec::new();
    let mut seen: usize = 0;
    let drain_deadline = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let frame = if seen > MAX_BODY_BYTES {
            match tokio::time::timeout_at(drain_deadline, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => return Err(too_large()),
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else { break };
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= MAX_BODY_BYTES {
            kept.extend_from_slice(&data);
        } else {
            kept = Vec::new();
            if seen > MAX_DRAIN_BYTES {
                return Err(too_large());
            }
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(Bytes::from(kept))
}

/// Decodes a JSON body, naming the field at fault on error.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body is empty; expected JSON",
        ));
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ApiError::bad_request(format!(
            "request body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = format!("invalid request body: {inner}");
        if path == "." || path.is_empty() {
            ApiError::bad_request(message)
        } else {
            ApiError::invalid_field(path, message)
        }
    })
}

/// A JSON response carrying `X-Consul-Index` (and the other headers Consul clients look for).
pub fn indexed_json<T: Serialize>(index: u64, value: &T) -> Response {
    let mut response = axum::Json(value).into_response();
    let headers = response.headers_mut();
    headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    response
}

/// Query parameters as a map, for endpoints that take flags like `?passing`.
#[derive(Debug, Clone, Default)]
pub struct QueryParams(pub HashMap<String, String>);

impl QueryParams {
    /// Consul-style flag: present with no value, `true` or `1`.
    pub fn flag(&self, name: &str) -> bool {
        matches!(
            self.0.get(name).map(String::as_str),
            Some("" | "true" | "1")
        )
    }

    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Parses a query string (`a=1&b`), percent-decoding names and values.
    pub fn parse(query: &str) -> Self {
        QueryParams(parse_query(query))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(QueryParams(parse_query(parts.uri.query().unwrap_or(""))))
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k).into_owned(), form_decode(v).into_owned())
        })
        .collect()
}

/// The first value of query parameter `name` in `query` (keys and values form-decoded), e.g.
/// for a route's query criteria.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == name).then(|| form_decode(v).into_owned())
    })
}

/// Decodes one key or value of a query string (`application/x-www-form-urlencoded`): `+` is a
/// space, `%XX` a byte (with the `percent-encoding` crate); invalid UTF-8 becomes U+FFFD and a
/// `%` not followed by two hex digits stays as it is.
pub fn form_decode(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('+') {
        let spaced = text.replace('+', " ");
        std::borrow::Cow::Owned(
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8_lossy()
                .into_owned(),
        )
    } else {
        percent_encoding::percent_decode_str(text).decode_utf8_lossy()
    }
}

/// `?index=N&wait=D`: a Consul blocking query.
///
/// Served through [`serve`], a blocked request also ends when the server starts shutting down, so
/// a long wait never holds up shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockingQuery {
    /// Block until the index moves past this (absent or 0: answer at once).
    pub index: Option<u64>,
    /// The longest time to block (clamped to [`MAX_WAIT`]).
    pub wait: Duration,
    /// Ends the wait early: the server's shutdown, when served through [`serve`].
    pub shutdown: Option<CancellationToken>,
}

/// The serving loop's shutdown token, as a request extension (see [`serve`]).
#[derive(Debug, Clone)]
struct ServerShutdown(CancellationToken);

impl BlockingQuery {
    /// Parses `index` and `wait` from query parameters. Bad values are 400 naming the parameter.
    pub fn from_params(params: &QueryParams) -> Result<Self, ApiError> {
        // One store, always read consistently: `?stale` and `?consistent` are both honoured
        // (a consistent read is a valid stale one), but not together, as Consul refuses.
        if params.get("stale").is_some() && params.get("consistent").is_some() {
            return Err(ApiError::invalid_field(
                "consistent",
                "cannot specify ?stale with ?consistent, conflicting semantics",
            ));
        }
        let index = match params.get("index") {
            None | Some("") => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                ApiError::invalid_field(
                    "index",
                    format!("invalid index {text:?}: expected a non-negative integer"),
                )
            })?),
        };
        let wait = match params.get("wait") {
            None | Some("") => DEFAULT_WAIT,
            Some(text) => GoDuration::parse(text)
                .map_err(|e| ApiError::invalid_field("wait", e.to_string()))?
                .get()
                .min(MAX_WAIT),
        };
        Ok(Self {
            index,
            wait,
            shutdown: None,
        })
    }

    /// Waits until the watched index is past `index`, or `wait` (plus up to 1/16 jitter, as
    /// Consul does) has passed. Returns at once without an index.
    pub async fn block(&self, indexes: watch::Receiver<u64>) {
        self.block_until(indexes, |current| *current).await;
    }

    /// Like [`BlockingQuery::block`] for an answer with its own modify index: waits until
    /// `index_of` (re-evaluated each time `changes` moves) is past `index`. A query on one service
    /// then wakes only when that service changed, not on every write to the store.
    pub async fn block_until<T>(
        &self,
        mut changes: watch::Receiver<T>,
        mut index_of: impl FnMut(&T) -> u64,
    ) {
        let Some(min) = self.index.filter(|i| *i > 0) else {
            return;
        };
        tracing::debug!(index = min, wait = ?self.wait, "blocking query waiting");
        let deadline = tokio::time::Instant::now() + crate::backoff::spread(self.wait, 1.0 / 16.0);
        let moved = tokio::time::timeout_at(
            deadline,
            changes.wait_for(move |current| index_of(current) > min),
        );
        match &self.shutdown {
            Some(token) => {
                tokio::select! {
                    _ = moved => {}
                    _ = token.cancelled() => {}
                }
            }
            None => {
                let _ = moved.await;
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BlockingQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = QueryParams::from_request_parts(parts, state).await?;
        let mut query = Self::from_params(&params)?;
        query.shutdown = parts
            .extensions
            .get::<ServerShutdown>()
            .map(|s| s.0.clone());
        Ok(query)
    }
}

/// Gives every request `shutdown` so blocked queries answer at once when serving stops.
pub(crate) fn with_shutdown(router: Router, shutdown: CancellationToken) -> Router {
    router.layer(axum::Extension(ServerShutdown(shutdown)))
}

/// Serves `router` on an already-bound listener until `shutdown` is cancelled, then stops accepting
/// and lets in-flight requests finish; blocked [`BlockingQuery`] requests answer at once.
/// Connections are bounded by the default [`ConnLimits`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, ConnLimits::default()).await
}

/// [`serve`] within `limits`: connections beyond the total or per-client bound get one 503
/// naming the bound and are closed; a client that takes longer than the header-read timeout to
/// send a request's headers (or to start the next one on a kept-alive connection) is closed.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: ConnLimits,
) -> std::io::Result<()> {
    // Routes are turned into services once, here: a bare `Router` would rebuild its route table
    // (`with_state`) for every connection (~19 KiB each, most of what an open blocking query
    // cost); each connection then only clones an `Arc`.
    let router = with_shutdown(router, shutdown.clone()).with_state(());
    let admission = Admission::new(limits);
    let builder = connections::builder(&admission.limits());
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match admission.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                tracing::debug!(%peer, code = refusal.code(), "connection refused");
                connections::refuse(tcp, refusal);
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let stream = TokioIo::new(connections::Held::new(tcp, permit));
        let connection = builder
            .serve_connection_with_upgrades(stream, service)
            .into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query on an answer with its own index sleeps through changes that leave that index
    /// alone and wakes on the first that moves it (paused time: the timeouts are virtual).
    #[tokio::test(start_paused = true)]
    async fn block_until_wakes_only_when_its_own_index_moves() {
        let query = BlockingQuery {
            index: Some(5),
            wait: Duration::from_secs(60),
            shutdown: None,
        };
        let (tx, rx) = watch::channel((10_u64, 5_u64));
        let mut blocked = Box::pin(query.block_until(rx, |(_, own)| *own));
        tx.send_replace((11, 5));
        let still = tokio::time::timeout(Duration::from_secs(30), &mut blocked).await;
        assert!(still.is_err(), "woke although its own index did not move");
        tx.send_replace((12, 6));
        let woke = tokio::time::timeout(Duration::from_secs(1), &mut blocked).await;
        assert!(woke.is_ok());
    }

    #[test]
    fn query_flags_and_decoding() {
        let q = QueryParams(parse_query("passing&wait=30s&name=a%2Fb&x=1+2"));
        assert!(q.flag("passing"));
        assert!(!q.flag("stale"));
        assert_eq!(q.get("name"), Some("a/b"));
        assert_eq!(q.get("x"), Some("1 2"));
        assert_eq!(q.get("wait"), Some("30s"));
    }

    #[test]
    fn query_values_are_found_by_decoded_name() {
        assert_eq!(
            query_value(Some("a=1&b%20c=2+3&b c=x"), "b c").as_deref(),
            Some("2 3")
        );
        assert_eq!(query_value(Some("flag&x=1"), "flag").as_deref(), Some(""));
        assert_eq!(query_value(Some("x=1"), "y"), None);
        assert_eq!(query_value(None, "x"), None);
    }

    #[test]
    fn form_decoding_edges() {
        // A escape at the very end decodes (the hand-written decoder this replaced missed it).
        assert_eq!(form_decode("a%2F"), "a/");
        assert_eq!(form_decode("%2B+%2b"), "+ +");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert_eq!(form_decode("%FF"), "\u{FFFD}");
        assert!(matches!(
            form_decode("plain"),
            std::borrow::Cow::Borrowed("plain")
        ));
    }

    #[test]
    fn blocking_query_rejects_bad_wait_and_index() {
        let bad_wait = QueryParams(parse_query("index=5&wait=soon"));
        let err = BlockingQuery::from_params(&bad_wait).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.body.error.field.as_deref(), Some("wait"));
        let bad_index = QueryParams(parse_query("index=-1"));
        let err = BlockingQuery::from_params(&bad_index).unwrap_err();
        assert_eq!(err.body.error.field.as_deref(), Some("index"));
        let long = QueryParams(parse_query("index=1&wait=1h"));
        assert_eq!(BlockingQuery::from_params(&long).unwrap().wait, MAX_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn blocking_query_wakes_on_index_change_and_times_out() {
        let (tx, rx) = watch::channel(5u64);
        let q = BlockingQuery {
            index: Some(5),
            wait: Duration::from_secs(30),
            shutdown: None,
        };
        let waiter = tokio::spawn({
            let rx = rx.clone();
            let q = q.clone();
            async move { q.block(rx).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.send_replace(6);
        waiter.await.unwrap();

        let started = tokio::time::Instant::now();
        q.block(rx.clone()).await; // index 6 > 5 already: immediate
        assert_eq!(started.elapsed(), Duration::ZERO);
        let stale = BlockingQuery {
            index: Some(6),
            wait: Duration::from_secs(30),
            shutdown: None,
        };
        stale.block(rx.clone()).await;
        assert!(started.elapsed() >= Duration::from_secs(30));

        // Shutdown ends a wait at once.
        let token = CancellationToken::new();
        let stopping = BlockingQuery {
            shutdown: Some(token.clone()),
            ..stale
        };
        let waiter = tokio::spawn(async move { stopping.block(rx).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let before = tokio::time::Instant::now();
        token.cancel();
        waiter.await.unwrap();
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[test]
    fn json_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Body {
            #[serde(rename = "Port")]
            port: u16,
        }
        let err = decode_json::<Body>(br#"{"Port": "x"}"#).unwrap_err();
        assert_eq!(err.body.error.field.as_deref(), Some("Port"));
        let err = decode_json::<Body>(b"\xff\xfe").unwrap_err();
        assert!(err.body.error.message.contains("UTF-8"), "{err:?}");
        let err = decode_json::<Body>(b"").unwrap_err();
        assert!(err.body.error.message.contains("empty"));
    }
}
