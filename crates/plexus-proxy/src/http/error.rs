//! The one error type of the HTTP stack: why the sidecar answers a request itself.
//!
//! As in pingora, every error says who is to blame (the downstream client, the upstream, or
//! the sidecar's own policy) and whether the request may be sent again. Layers return
//! [`HttpError`]; only the edge (`server.rs`) turns it into a response, once
//! ([`HttpError::response`]): plain text with `x-plexus-error: <reason>`, or a trailers-only gRPC
//! response for a gRPC request (STYLE 7).

use std::fmt;
use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::edge::Refusal;
use super::{Body, ERROR_HEADER};

/// What went wrong (the `x-plexus-error` value and the `reason` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The local rate limit refused the request.
    RateLimited,
    /// A bulkhead of the upstream is full.
    ConcurrencyLimit,
    /// Fault injection aborted the request with this status.
    FaultInjected(u16),
    /// No healthy endpoint is known for the upstream.
    NoHealthyEndpoints,
    /// Every endpoint refused the connection (or the TLS handshake failed).
    UpstreamConnectFailure,
    /// The connection to the upstream broke before a response arrived.
    UpstreamReset,
    /// The upstream refused the request's stream unprocessed (HTTP/2 `REFUSED_STREAM`, or a
    /// stream above a GOAWAY's last one): safe to send again. Labelled as a reset.
    UpstreamRefusedStream,
    /// The intentions deny the caller.
    Denied,
    /// The request cannot be forwarded as it is (an unusable host, a body that does not decode).
    BadRequest,
    /// The edge refused a request that parsers may read in more than one way (`edge.rs`).
    Refused(Refusal),
    /// The request took longer than its route's timeout.
    Timeout,
    /// An ingress gateway listener routes no service by the request's `Host` (404).
    UnknownHost,
}

/// Who caused an error (pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    /// The client: a malformed or refused request, or one over its rate.
    Downstream,
    /// The upstream: unreachable, reset, slow, or saturated.
    Upstream,
    /// The sidecar itself (fault injection).
    Internal,
}

/// A request the sidecar answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpError {
    reason: Reason,
    /// The endpoint the failed attempt went to (a reset), so a retry can avoid it.
    endpoint: Option<SocketAddr>,
}

impl From<Reason> for HttpError {
    fn from(reason: Reason) -> Self {
        Self {
            reason,
            endpoint: None,
        }
    }
}

impl HttpError {
    /// An error for `reason`.
    pub(crate) fn new(reason: Reason) -> Self {
        reason.into()
    }

    /// The same error, from an attempt at `endpoint`.
    pub(crate) fn at(mut self, endpoint: SocketAddr) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// What went wrong.
    pub(crate) fn reason(&self) -> Reason {
        self.reason
    }

    /// The endpoint the failed attempt went to, if one was reached.
    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Who caused it.
    pub(crate) fn blame(&self) -> Blame {
        match self.reason {
            Reason::RateLimited
            | Reason::Denied
            | Reason::BadRequest
            | Reason::Refused(_)
            | Reason::UnknownHost => Blame::Downstream,
            Reason::FaultInjected(_) => Blame::Internal,
            Reason::ConcurrencyLimit
            | Reason::NoHealthyEndpoints
            | Reason::UpstreamConnectFailure
            | Reason::UpstreamReset
            | Reason::UpstreamRefusedStream
            | Reason::Timeout => Blame::Upstream,
        }
    }

    /// Whether the request may be sent again (if its route's retry policy says so): the
    /// upstream was not reached, or broke before answering. A timeout is not: the route's time
    /// is spent.
    pub(crate) fn retryable(&self) -> bool {
        matches!(
            self.reason,
            Reason::NoHealthyEndpoints
                | Reason::UpstreamConnectFailure
                | Reason::UpstreamReset
                | Reason::UpstreamRefusedStream
        )
    }

    /// The `x-plexus-error` value and `reason` metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self.reason {
            Reason::RateLimited => "rate_limited",
            Reason::ConcurrencyLimit => "concurrency_limit",
            Reason::FaultInjected(_) => "fault_injected",
            Reason::NoHealthyEndpoints => "no_healthy_endpoints",
            Reason::UpstreamConnectFailure => "upstream_connect_failure",
            Reason::UpstreamReset | Reason::UpstreamRefusedStream => "upstream_reset",
            Reason::Denied => "denied",
            Reason::Timeout => "timeout",
            Reason::BadRequest => "bad_request",
            Reason::Refused(refusal) => refusal.label(),
            Reason::UnknownHost => "unknown_host",
        }
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self.reason {
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::ConcurrencyLimit | Reason::NoHealthyEndpoints => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reason::FaultInjected(status) => {
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            Reason::UpstreamConnectFailure
            | Reason::UpstreamReset
            | Reason::UpstreamRefusedStream => StatusCode::BAD_GATEWAY,
            Reason::Denied => StatusCode::FORBIDDEN,
            Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::BadRequest | Reason::Refused(_) => StatusCode::BAD_REQUEST,
            Reason::UnknownHost => StatusCode::NOT_FOUND,
        }
    }

    /// The gRPC status code used for gRPC requests.
    pub(crate) fn grpc_status(&self) -> u8 {
        match self.reason {
            // RESOURCE_EXHAUSTED
            Reason::RateLimited => 8,
            Reason::FaultInjected(status) => match status {
                429 => 8,
                504 => 4,
                403 => 7,
                // UNAVAILABLE for 5xx, UNKNOWN otherwise
                500..=599 => 14,
                _ => 2,
            },
            // UNAVAILABLE
            Reason::ConcurrencyLimit
            | Reason::NoHealthyEndpoints
            | Reason::UpstreamConnectFailure
            | Reason::UpstreamReset
            | Reason::UpstreamRefusedStream => 14,
            // PERMISSION_DENIED
            Reason::Denied => 7,
            // DEADLINE_EXCEEDED
            Reason::Timeout => 4,
            // INVALID_ARGUMENT
            Reason::BadRequest | Reason::Refused(_) => 3,
            // UNIMPLEMENTED (no such service here)
            Reason::UnknownHost => 12,
        }
    }

    /// The response: plain text with `x-plexus-error`, or a gRPC trailers-only response.
    pub(crate) fn response(&self, grpc: bool) -> Response<Body> {
        let reason = HeaderValue::from_static(self.label());
        let mut response = if grpc {
            let mut response = Response::new(super::empty());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(
                "grpc-status",
                HeaderValue::from(u16::from(self.grpc_status())),
            );
            headers.insert("grpc-message", reason.clone());
            response
        } else {
            let mut response = Response::new(super::full(format!("plexus: {}\n", self.label())));
            *response.status_mut() = self.status();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        };
        response.headers_mut().insert(ERROR_HEADER, reason);
        response
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())?;
        if let Some(endpoint) = self.endpoint {
            write!(f, " (endpoint {endpoint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for HttpError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errors_say_why_in_http_and_in_grpc() {
        let response = HttpError::new(Reason::NoHealthyEndpoints).response(false);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[ERROR_HEADER], "no_healthy_endpoints");
        let response = HttpError::new(Reason::UpstreamConnectFailure).response(true);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()[ERROR_HEADER], "upstream_connect_failure");
        assert_eq!(
            super::super::trailers::grpc_status(response.headers()),
            Some(14)
        );
        assert_eq!(HttpError::new(Reason::Denied).response(false).status(), 403);
        assert_eq!(
            HttpError::new(Reason::Timeout).response(false).status(),
            504
        );
        assert_eq!(
            HttpError::new(Reason::FaultInjected(418))
                .response(false)
                .status(),
            418
        );
    }

    #[test]
    fn blame_and_retryable_follow_the_reason() {
        let reset = HttpError::new(Reason::UpstreamReset).at("127.0.0.1:1".parse().unwrap());
        assert!(reset.retryable());
        assert_eq!(reset.blame(), Blame::Upstream);
        assert_eq!(reset.to_string(), "upstream_reset (endpoint 127.0.0.1:1)");
        for reason in [
            Reason::RateLimited,
            Reason::Denied,
            Reason::BadRequest,
            Reason::Refused(Refusal::MissingHost),
            Reason::Timeout,
            Reason::ConcurrencyLimit,
            Reason::FaultInjected(503),
        ] {
            assert!(!HttpError::new(reason).retryable(), "{reason:?}");
        }
        assert_eq!(
            HttpError::new(Reason::BadRequest).blame(),
            Blame::Downstream
        );
        let refused = HttpError::new(Reason::Refused(Refusal::HostMismatch));
        assert_eq!(refused.blame(), Blame::Downstream);
        assert_eq!(refused.response(false).status(), 400);
        assert_eq!(
            refused.response(false).headers()[ERROR_HEADER],
            "host_mismatch"
        );
        assert_eq!(
            HttpError::new(Reason::FaultInjected(500)).blame(),
            Blame::Internal
        );
    }
}
