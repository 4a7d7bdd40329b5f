//! `--retry-join-wan`: a server tells another datacenter's server who it is and learns what
//! that one knows, again and again: with jittered backoff (`plexus_runtime::Backoff`, 0.5 s
//! doubling to 30 s) while it does not answer, every [`REFRESH`] once it does (so datacenters
//! and servers learned later spread through the federation).

use std::time::Duration;

use plexus_api::acl::SecretId;
use plexus_api::client::{Client, ClientError, ClientOptions};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use super::exchange::{PATH, WanView};

/// How often a joined server exchanges views again.
pub const REFRESH: Duration = Duration::from_secs(10);

/// How one server joins another datacenter's.
#[derive(Clone)]
pub struct Join {
    /// The other server's HTTP API (`host:port`, `http://host:port`, `https://host:port`).
    pub address: String,
    /// The token presented there (`acl.tokens.replication`, else the initial management token).
    pub token: Option<SecretId>,
    /// TLS for an `https://` address.
    pub tls: Option<rustls::ClientConfig>,
    /// Host names connected to elsewhere: a primary reached through its mesh gateways
    /// (`--primary-gateways`) is `https://server.<dc>.consul:<port>` connected at the gateways.
    pub resolve: Vec<(String, Vec<std::net::SocketAddr>)>,
}

impl std::fmt::Debug for Join {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Join")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Join {
    /// The client this join talks through; `Err` for an address that is not one (exit 64 at
    /// start, naming `--retry-join-wan`).
    pub fn client(&self) -> Result<Client, ClientError> {
        Ok(Client::with_options(
            &self.address.split(',').collect::<Vec<_>>(),
            ClientOptions {
                tls: self.tls.clone(),
                https: false,
                resolve: self.resolve.clone(),
            },
        )?
        .with_token(self.token.clone()))
    }
}

/// Exchanges views with `join.address` until `stop` fires.
pub async fn run(federation: Shared, join: Join, stop: CancellationToken) {
    let client = match join.client() {
        Ok(client) => client,
        Err(error) => {
            warn!(address = %join.address, %error, "cannot join a datacenter's server");
            return;
        }
    };
    let mut backoff =
        plexus_runtime::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut joined: Option<String> = None;
    loop {
        let delay = match client
            .put_json::<WanView, WanView>(PATH, Some(&federation.view()))
            .await
        {
            Ok(view) if view.datacenter == federation.own() => {
                let delay = backoff.next_delay();
                warn!(address = %join.address, datacenter = %view.datacenter, retry_in = ?delay, "retry_join_wan names a server of this server's own datacenter; name other datacenters' servers");
                delay
            }
            Ok(view) => {
                if joined.as_deref() != Some(view.datacenter.as_str()) {
                    info!(address = %join.address, datacenter = %view.datacenter, "joined a datacenter");
                    joined = Some(view.datacenter.clone());
                }
                federation.merge(view);
                backoff.reset();
                REFRESH
            }
            Err(error) => {
                let delay = backoff.next_delay();
                if joined.take().is_some() || backoff_is_first(&backoff) {
                    warn!(address = %join.address, error = %plexus_runtime::ErrorChain(&error), retry_in = ?delay, "cannot exchange datacenters with a server; retrying");
                } else {
                    debug!(address = %join.address, %error, retry_in = ?delay, "still cannot exchange datacenters");
                }
                delay
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Whether the schedule has just counted its first failure (log that one, not every retry).
fn backoff_is_first(backoff: &plexus_runtime::Backoff) -> bool {
    backoff.next_ceiling() == backoff.ceiling(1)
}
