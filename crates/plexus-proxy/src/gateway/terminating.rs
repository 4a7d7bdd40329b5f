//! The terminating gateway (in progress).

use tokio::net::TcpListener;

use super::Shared;
use crate::error::ProxyError;
use crate::listener::Context;

/// Serves the linked services until the context's `stop` fires.
pub(super) async fn run(
    _ctx: Context,
    _shared: Shared,
    _listener: TcpListener,
) -> Result<(), ProxyError> {
    Err(ProxyError::Unsupported {
        kind: "terminating",
    })
}
