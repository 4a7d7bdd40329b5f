//! The HTTP API over TLS: accept, handshake (one task per connection, so a slow client holds up
//! no one), HTTP/1.1 or HTTP/2 by ALPN, graceful shutdown.

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::{PeerCertificates, TlsServer, accept};
use crate::connections::{self, Admission, ConnLimits};
use crate::http::ApiError;

/// What a request without a client certificate is told when the listener requires one.
pub const CLIENT_CERT_REQUIRED: &str = "this server requires a client certificate signed by its CA (verify_incoming): give one with --client-cert and --client-key (or PLEXUS_CLIENT_CERT and PLEXUS_CLIENT_KEY)";

/// Serves `router` over TLS on an already-bound listener until `shutdown` is cancelled, then
/// stops accepting and lets open connections finish their requests (HTTP/2 GOAWAY, HTTP/1
/// close after the response); blocked queries answer at once, as with `http::serve`.
///
/// Each request carries the connection's [`PeerCertificates`] as an extension. When `tls`
/// requires client certificates, a request without one is answered 403 with
/// [`CLIENT_CERT_REQUIRED`] (unless its path is exempt) and never reaches the router.
pub async fn serve(
    listener: TcpListener,
    tls: TlsServer,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, tls, router, shutdown, ConnLimits::default()).await
}

/// [`serve`] within `limits` (see `crate::http::serve_with`); a refused connection gets the
/// plaintext 503 before any handshake.
pub async fn serve_with(
    listener: TcpListener,
    tls: TlsServer,
    router: Router,
    shutdown: CancellationToken,
    limits: ConnLimits,
) -> std::io::Result<()> {
    let router = crate::http::with_shutdown(router, shutdown.clone());
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
                    warn!(%error, "accepting a TLS connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match admission.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                debug!(%peer, code = refusal.code(), "TLS connection refused");
                connections::refuse(tcp, refusal);
                continue;
            }
        };
        let builder = builder.clone();
        let config = tls.current();
        let tls = tls.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let (stream, certificates) = match accept(tcp, config).await {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%peer, ?error, "TLS connection refused");
                    return;
                }
            };
            let service = tower::service_fn(move |request: http::Request<_>| {
                respond(tls.clone(), router.clone(), certificates.clone(), request)
            });
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(connections::Held::new(stream, permit)),
                TowerToHyperService::new(service),
            );
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                debug!(%peer, %error, "TLS connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn respond(
    tls: TlsServer,
    router: Router,
    certificates: PeerCertificates,
    mut request: http::Request<hyper::body::Incoming>,
) -> Result<axum::response::Response, Infallible> {
    if tls.require_client_cert && !certificates.is_present() && !tls.is_exempt(request.uri().path())
    {
        return Ok(ApiError::new(
            StatusCode::FORBIDDEN,
            "client_certificate_required",
            CLIENT_CERT_REQUIRED,
        )
        .into_response());
    }
    request.extensions_mut().insert(certificates);
    router.oneshot(request.map(Body::new)).await
}
