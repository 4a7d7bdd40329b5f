//! The HTTP data path, for services whose protocol is `http`, `http2` or `grpc`.
//!
//! Read [`stack`] first: it assembles the per-request path of an upstream listener from named
//! tower layers, top-down, and the inbound path of the sidecar's public listener.
//!
//! ```text
//!  app ──HTTP/1.1 or h2c──► server (edge) ─► edge checks ─► tunnel ─► normalize ─► route ─► rate limit ─► bulkhead
//!      ─► fault ─► rewrite ─► mirror ─► split ─► timeout ─► retry ─► balance ─► endpoint pool
//!      ──one pooled HTTP/2 connection per endpoint, inside mTLS (ALPN plexus-h2)──► peer sidecar
//!  peer sidecar ──h2 over mTLS──► server (edge) ─► edge checks ─► authorize ─► tunnel ─► local app (pooled)
//! ```
//!
//! Modules, by stage:
//! - the edge: [`server`] (hyper connections, graceful shutdown, error → response, metrics and
//!   access log per request: [`metrics`], [`access_log`], [`trailers`]), [`flood`] (HTTP/2
//!   control-frame limit), [`edge`] (strict request checks and client-set identity headers
//!   removed, first in both stacks), [`error`] (the one error type, with blame and retryable);
//! - logical (per request, from the upstream's discovery chain): [`upgrade`] (WebSocket and
//!   `CONNECT` tunnels), [`normalize`], [`route`] (the route table and the policy built from the
//!   chain), [`rate_limit`], [`bulkhead`], [`fault`], [`rewrite`], [`mirror`], [`split`],
//!   [`timeout`], [`retry`];
//! - concrete (per target service): [`balance`] (candidates and order, with `crate::balance`),
//!   [`targets`] (each chain target's endpoints, subset and failover), [`outlier`];
//! - endpoint: [`endpoint`] (the pool of HTTP/2 connections and the attempt itself);
//! - inbound: [`inbound`] (intentions per request, the local app's connection pool);
//! - ingress gateway: [`host`] (routing by `Host` into a service's outbound stack, header
//!   changes), assembled by [`stack::Ingress`].
//!
//! Each layer module holds its pure decision code next to the state it keeps and the tower
//! layer that applies it, with its unit tests. A layer reads what the route layer programmed
//! into the request's extensions (its own types) and passes requests without them through.

pub(crate) mod access_log;
pub(crate) mod app_pool;
pub(crate) mod balance;
pub(crate) mod bulkhead;
pub(crate) mod edge;
pub(crate) mod endpoint;
pub(crate) mod error;
pub(crate) mod fault;
pub(crate) mod flood;
pub(crate) mod headers;
pub(crate) mod host;
pub(crate) mod inbound;
pub(crate) mod metrics;
pub(crate) mod mirror;
pub(crate) mod normalize;
pub(crate) mod outlier;
pub(crate) mod peer;
pub(crate) mod rate_limit;
pub(crate) mod retry;
pub(crate) mod rewrite;
pub(crate) mod route;
pub(crate) mod server;
pub(crate) mod split;
pub(crate) mod stack;
#[cfg(test)]
mod stack_tests;
pub(crate) mod targets;
pub(crate) mod timeout;
pub(crate) mod trailers;
pub(crate) mod upgrade;

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub(crate) use error::{HttpError, Reason};
pub(crate) use metrics::HttpMetrics;
pub(crate) use stack::{Inbound, Ingress, Outbound};

use crate::discovery::ChainWatch;

/// True when the chain declares an HTTP-aware protocol (`service-defaults` `Protocol` `http`,
/// `http2` or `grpc`); `tcp`, and no chain yet, keep the L4 path.
pub(crate) fn chain_is_http(chain: &ChainWatch) -> bool {
    use plexus_api::config_entry::chain::Protocol;
    chain
        .borrow()
        .as_ref()
        .is_some_and(|chain| chain.value.protocol != Protocol::Tcp)
}

/// Bodies of every request and response the sidecar forwards or makes.
pub(crate) type Body = BoxBody<Bytes, BodyError>;

/// Why a body could not be read to its end: hyper's error, or the peer's HTTP/2 stream's. (A
/// type of its own rather than a boxed `dyn Error`: futures holding a `dyn Error` across an
/// await do not prove `Send` for every lifetime.)
#[derive(Debug)]
pub(crate) struct BodyError(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<hyper::Error> for BodyError {
    fn from(error: hyper::Error) -> Self {
        Self(Box::new(error))
    }
}

impl From<h2::Error> for BodyError {
    fn from(error: h2::Error) -> Self {
        Self(Box::new(error))
    }
}

impl From<std::io::Error> for BodyError {
    fn from(error: std::io::Error) -> Self {
        Self(Box::new(error))
    }
}

/// The header naming the rule behind a response the sidecar made itself.
pub const ERROR_HEADER: &str = "x-plexus-error";
/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// Largest request or response header block accepted (HTTP/1 buffer and HTTP/2 header list);
/// larger HTTP/1 headers get 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2 streams one connection may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams a client may reset before they are accepted (rapid reset) before the connection is
/// closed with GOAWAY.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 32;
/// Idle HTTP/2 connections are pinged this often; an unanswered ping closes the connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// A body of `bytes`.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body hyper received, as the stack's [`Body`].
pub(crate) fn incoming(body: hyper::body::Incoming) -> Body {
    body.map_err(BodyError::from).boxed()
}

/// An empty body.
pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

/// True for a gRPC request (`content-type: application/grpc…`).
pub(crate) fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// Removes the connection-specific headers (RFC 9110 §7.6.1), including any named in
/// `Connection`: they describe one hop and are not allowed in HTTP/2. `te: trailers` is kept
/// (gRPC needs it).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: the usual request or response carries none of them, or
    // one (`connection: keep-alive` from an HTTP/1.1 server, `te: trailers`), and each removal
    // by name costs a hash, so only the names present are removed.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut te = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        } else if name == header::TE {
            te = true;
        }
    }
    // HOP_BY_HOP[0] is `connection`: the usual tokens name no header (or one removed below),
    // so there is nothing to collect then.
    if present[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|token| {
                !["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|usual| token.eq_ignore_ascii_case(usual))
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    // `te` may also have been named in `connection` and removed above.
    if te
        && headers
            .get(header::TE)
            .is_some_and(|value| !value.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

const HOP_BY_HOP_COUNT: usize = 7;
/// The connection-specific headers always removed ([`strip_hop_by_hop`]; `te` only when it asks
/// for more than trailers).
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Adds a W3C `traceparent` (version 00, sampled) when the request has none, so the trace
/// starts here; an existing one is passed on unchanged.
pub(crate) fn ensure_traceparent(headers: &mut HeaderMap) {
    if headers.contains_key(&TRACEPARENT_NAME) {
        return;
    }
    set_traceparent(headers, None);
}

/// The `traceparent` header's name, parsed once.
const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);

/// Writes `traceparent: 00-<trace>-<new span>-<flags>`: `kept` trace id and flags, else a new
/// trace (random id, sampled). Hex is written by hand into a fixed buffer (no formatting), and
/// the value is marked sensitive: it changes with every request, so HTTP/2's header compression
/// must not fill its table with it.
fn set_traceparent(headers: &mut HeaderMap, kept: Option<([u8; 32], [u8; 2])>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    fn hex(out: &mut [u8], mut value: u128) {
        for digit in out.iter_mut().rev() {
            *digit = HEX[(value & 0xf) as usize];
            value >>= 4;
        }
    }
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    match kept {
        Some((trace, flags)) => {
            value[3..35].copy_from_slice(&trace);
            value[53..55].copy_from_slice(&flags);
        }
        None => hex(&mut value[3..35], rand::random::<u128>().max(1)),
    }
    hex(&mut value[36..52], u128::from(rand::random::<u64>().max(1)));
    if let Ok(mut value) = HeaderValue::from_bytes(&value) {
        value.set_sensitive(true);
        headers.insert(TRACEPARENT_NAME, value);
    }
}

/// Where a request came in, and what the layers report back to the edge about it (request
/// extension, set by the edge; clones share the report). One allocation per request carries
/// both ways what the route layer once wrapped every answer for.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    /// The app's address, for the source-IP hash key.
    pub client: Option<IpAddr>,
    /// Filled in by the layers, read by the edge when the answer is back.
    pub report: Arc<Report>,
}

/// What the layers tell the edge about one request.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// The route it took (set by the route layer): its metrics label.
    pub route: OnceLock<Arc<str>>,
    /// Its body could not be read (set by the edge's body wrapper): the answer is a 400.
    pub malformed: AtomicBool,
}

/// What the access log records about a request, taken when it arrives.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestInfo {
    /// Method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The W3C trace id it carries.
    pub trace_id: Option<String>,
    /// The calling service (inbound).
    pub peer: Option<String>,
}

impl RequestInfo {
    /// The method, path and trace id of `request`; `peer` is the caller's service.
    pub(crate) fn of<B>(request: &Request<B>, peer: Option<String>) -> Self {
        let trace_id = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split('-').nth(1))
            .filter(|id| id.len() == 32)
            .map(str::to_owned);
        Self {
            method: request.method().as_str().to_owned(),
            path: request.uri().path().to_owned(),
            trace_id,
            peer,
        }
    }
}

/// One hop of the W3C trace: a request without a valid `traceparent` gets a new one (version
/// 00, random trace and span ids, sampled); one with a valid `traceparent` keeps its trace id
/// and flags and gets a new parent id (this sidecar's span), so the next hop sees this hop as
/// its parent.
pub(crate) fn trace_hop(headers: &mut HeaderMap) {
    let kept = headers
        .get(&TRACEPARENT_NAME)
        .and_then(|value| parse_traceparent(value.as_bytes()));
    set_traceparent(headers, kept);
}

/// The trace id and flags of a valid version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`,
/// lowercase, ids not all zero (a fixed layout, read by position).
fn parse_traceparent(value: &[u8]) -> Option<([u8; 32], [u8; 2])> {
    let value = value.trim_ascii();
    if value.len() != 55 || !value.starts_with(b"00-") || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    let hex = |text: &[u8]| text.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let valid = hex(trace)
        && hex(parent)
        && hex(flags)
        && trace.iter().any(|&b| b != b'0')
        && parent.iter().any(|&b| b != b'0');
    if !valid {
        return None;
    }
    Some((trace.try_into().ok()?, flags.try_into().ok()?))
}

/// True when the chain says the app speaks HTTP/2 (`http2` or `grpc`).
pub(crate) fn chain_is_http2(chain: &ChainWatch) -> bool {
    use plexus_api::config_entry::chain::Protocol;
    chain
        .borrow()
        .as_ref()
        .is_some_and(|chain| matches!(chain.value.protocol, Protocol::Http2 | Protocol::Grpc))
}

/// The response class label: `1xx` … `5xx`.
pub(crate) fn class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_te_trailers_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-end", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["te", "x-end"]);
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers);
        assert!(!headers.contains_key(header::TE));
        // One of them alone (an HTTP/1.1 server's `connection: keep-alive`, a proxy credential).
        for (name, value) in [
            ("connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("x-first", HeaderValue::from_static("1"));
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
            strip_hop_by_hop(&mut headers);
            let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
            left.sort_unstable();
            assert_eq!(left, ["content-length", "x-first"], "{name}");
        }
    }

    #[test]
    fn traceparent_is_created_when_absent_and_kept_when_present() {
        let mut headers = HeaderMap::new();
        ensure_traceparent(&mut headers);
        let created = headers[TRACEPARENT].to_str().unwrap().to_owned();
        assert!(headers[TRACEPARENT].is_sensitive());
        let parts: Vec<&str> = created.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        ensure_traceparent(&mut headers);
        assert_eq!(headers[TRACEPARENT], created.as_str());
    }

    #[test]
    fn a_trace_hop_keeps_the_trace_id_with_a_new_parent_and_replaces_invalid_ones() {
        let mine = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(mine));
        trace_hop(&mut headers);
        let next = headers[TRACEPARENT].to_str().unwrap().to_owned();
        assert!(
            next.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{next}"
        );
        assert!(next.ends_with("-01") && next.len() == 55, "{next}");
        assert_ne!(next, mine);
        // Surrounding whitespace is not part of the value.
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 "),
        );
        trace_hop(&mut headers);
        assert!(
            headers[TRACEPARENT]
                .to_str()
                .unwrap()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "zz",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            headers.insert(TRACEPARENT, HeaderValue::from_static(bad));
            trace_hop(&mut headers);
            let fresh = headers[TRACEPARENT].to_str().unwrap().to_owned();
            assert!(parse_traceparent(fresh.as_bytes()).is_some(), "{fresh}");
            assert!(!fresh.contains("4bf92f"), "{bad} → {fresh}");
        }
    }
}
