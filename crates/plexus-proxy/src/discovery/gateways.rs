//! Another datacenter's mesh gateways: where this sidecar sends connections for that
//! datacenter's services (`/v1/internal/mesh-gateways?dc=<dc>&passing`, forwarded there by the
//! control plane), each at its `wan` tagged address (else its address and port).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use plexus_api::ServiceEntry;
use plexus_api::client::{Client, ClientError, QueryOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::EndpointSet;
use super::watch::follow;
use plexus_runtime::ErrorChain;

/// The address another datacenter reaches a mesh gateway at: its `wan` tagged address, else
/// the instance's own.
pub(crate) fn wan_address(entry: &ServiceEntry) -> Option<SocketAddr> {
    entry.wan_address()
}

/// The endpoint set of a datacenter's gateways.
pub(crate) fn gateway_set(revision: u64, entries: &[ServiceEntry]) -> EndpointSet {
    let mut addrs: Vec<SocketAddr> = entries.iter().filter_map(wan_address).collect();
    addrs.sort_unstable();
    addrs.dedup();
    EndpointSet {
        revision: Some(revision),
        addrs,
        labels: BTreeMap::new(),
    }
}

/// Follows datacenter `datacenter`'s passing mesh gateways until `stop`, publishing their set
/// on `tx` when it changes. While that cannot be read, the last set stays.
pub(crate) async fn watch_gateways(
    client: Client,
    datacenter: String,
    tx: watch::Sender<Arc<EndpointSet>>,
    stop: CancellationToken,
) {
    let path = format!(
        "/v1/internal/mesh-gateways?dc={}&passing",
        plexus_api::client::encode(&datacenter)
    );
    let fetch = |query: QueryOptions| client.get::<Vec<ServiceEntry>>(&path, query, &[]);
    let on_update = |update: plexus_api::Indexed<Vec<ServiceEntry>>| {
        let set = gateway_set(update.index, &update.value);
        tx.send_if_modified(|current| {
            let changed = current.addrs != set.addrs || !current.is_resolved();
            if changed {
                info!(%datacenter, gateways = ?set.addrs, "mesh gateways of a datacenter changed");
                *current = Arc::new(set);
            }
            changed
        });
    };
    let on_error = |error: &ClientError| {
        warn!(error = %ErrorChain(error), %datacenter, "cannot read the datacenter's mesh gateways; keeping the last ones");
    };
    follow(0, &stop, fetch, on_update, on_error).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_api::{AgentService, Node};

    #[test]
    fn the_wan_address_wins_and_unusable_rows_are_left_out() {
        let entry = |address: &str, port: u16, tagged: Option<serde_json::Value>| ServiceEntry {
            node: Node {
                address: "10.0.0.1".into(),
                ..Node::default()
            },
            service: AgentService {
                address: address.into(),
                port,
                tagged_addresses: tagged,
                ..AgentService::default()
            },
            checks: Vec::new(),
        };
        let set = gateway_set(
            7,
            &[
                entry(
                    "10.0.0.2",
                    8443,
                    Some(serde_json::json!({"wan": {"Address": "192.0.2.1", "Port": 443}})),
                ),
                entry("", 8444, None),
                entry("gw.example", 8445, None),
                entry(
                    "10.0.0.3",
                    0,
                    Some(serde_json::json!({"wan": {"Address": "bad", "Port": 1}})),
                ),
            ],
        );
        let expected: Vec<SocketAddr> = vec![
            "10.0.0.1:8444".parse().unwrap(),
            "192.0.2.1:443".parse().unwrap(),
        ];
        assert_eq!(set.addrs, expected);
        assert_eq!(set.revision, Some(7));
    }
}
