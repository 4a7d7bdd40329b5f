//! The HTTP side of a terminating gateway: a client sidecar that speaks HTTP to a linked
//! service (ALPN `plexus-h2`) has its requests decided one by one by the service's intentions
//! (403 `denied`), then sent as HTTP/1.1 to an instance of the service, over TLS with the
//! entry's `CAFile` and `SNI` when given, on keep-alive connections the linked service's pool
//! holds (the inbound sidecar's pool of connections to its app, dialling with TLS).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::terminating::Linked;
use crate::authorize::Caller;
use crate::endpoint;
use crate::http::app_pool::{AppError, Dial};
use crate::http::endpoint::Io;
use crate::http::{self as proxy_http, Body, HttpError, Reason};
use crate::tls;
use plexus_runtime::ErrorChain;

/// Serves one client sidecar's HTTP/2 connection for `linked` until it ends or `stop` fires: the
/// server the inbound listener uses ([`proxy_http::peer::serve`]: a task per stream, keep-alive
/// pings, a bound on the wait for the preface and on control-frame floods).
pub(super) async fn serve<I>(
    io: I,
    linked: Arc<Linked>,
    source: String,
    connect_timeout: Duration,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let caller = Arc::new(linked.authorizer.for_source(&source));
    let answer = move |request: Request<Body>| {
        let (linked, caller) = (Arc::clone(&linked), Arc::clone(&caller));
        async move {
            respond(&linked, &caller, request, connect_timeout)
                .await
                .unwrap_or_else(|error| error.response(false))
        }
    };
    let io = proxy_http::flood::ControlFrameLimit::new(io);
    if let Err(error) = proxy_http::peer::serve(io, answer, &stop).await {
        debug!(%error, "terminating gateway HTTP/2 connection ended with an error");
    }
}

/// One request: intentions, then HTTP/1.1 to an instance.
async fn respond(
    linked: &Linked,
    caller: &Caller,
    mut request: Request<Body>,
    connect_timeout: Duration,
) -> Result<Response<Body>, HttpError> {
    if !caller.allows(&mut request) {
        return Err(HttpError::new(Reason::Denied));
    }
    let (mut parts, body) = request.into_parts();
    proxy_http::strip_hop_by_hop(&mut parts.headers);
    let host = linked
        .spec
        .sni
        .clone()
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_else(|| linked.spec.name.clone());
    let host = HeaderValue::from_str(&host).map_err(|_| HttpError::new(Reason::BadRequest))?;
    parts.headers.insert(header::HOST, host);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    let request = Request::from_parts(parts, body);

    let mut endpoints = linked.endpoints.clone();
    let _ =
        tokio::time::timeout(connect_timeout, endpoints.wait_for(|set| set.is_resolved())).await;
    let set = Arc::clone(&endpoints.borrow());
    let order = linked.picker.order(&set.addrs).copied();
    let (response, _) = linked
        .http1
        .send_first(order, request)
        .await
        .map_err(|error| {
            debug!(%error, service = %linked.spec.name, "request to the linked service failed");
            HttpError::new(match error {
                AppError::Connect(_) => Reason::UpstreamConnectFailure,
                AppError::Reset(_) => Reason::UpstreamReset,
            })
        })?;
    let (mut parts, body) = response.into_parts();
    proxy_http::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body))
}

/// Dials an instance of a linked service: TCP within the connect timeout, then TLS with the
/// entry's `CAFile` and `SNI` when it has them.
pub(super) struct Originating {
    pub(super) connect_timeout: Duration,
    pub(super) originate: Option<tls::Originate>,
}

impl Dial for Originating {
    type Io = Box<dyn Io>;

    async fn dial(&self, addr: SocketAddr) -> Result<Box<dyn Io>, String> {
        let stream = endpoint::dial(addr, self.connect_timeout)
            .await
            .map_err(|error| ErrorChain(&error).to_string())?;
        match &self.originate {
            Some(originate) => match originate.connect(stream, addr).await {
                Ok(stream) => Ok(Box::new(stream)),
                Err(error) => Err(format!("TLS to {addr}: {}", ErrorChain(&error))),
            },
            None => Ok(Box::new(stream)),
        }
    }
}
