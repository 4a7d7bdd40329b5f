//! Datacenters (issue 20): the federation of this datacenter's servers with other datacenters'
//! servers, and `?dc=` requests forwarded to them.
//!
//! ```text
//!  --retry-join-wan a,b ──► join::run (Backoff; every 10 s once joined)
//!        │  PUT /v1/internal/wan/exchange {Datacenter, Servers, Known}  (operator:write)
//!        ▼
//!  Federation: own dc + other dcs' server addresses ──► GET /v1/catalog/datacenters
//!        │
//!  ?dc=dc2 on catalog, health, KV, config, intentions ──► forward::layer ──► a dc2 server
//! ```
//!
//! - [`Federation`]: what this server knows of the other datacenters (in memory; each server
//!   learns it again from its joins after a restart).
//! - [`exchange`]: the Plexus-own WAN endpoint servers tell each other who they are on.
//! - [`join`]: the retry-join loop.
//! - [`gateways`]: `/v1/internal/mesh-gateways`, where sidecars find another datacenter's
//!   mesh gateways.
//! - [`forward`]: the middleware that relays `?dc=` requests.
//! - [`health`]: another datacenter's instances of a service, for this server's own answers.

pub mod exchange;
pub mod forward;
pub mod gateways;
pub mod health;
pub mod join;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use plexus_api::client::{Client, ClientOptions};

/// What a server knows of the federation: its own datacenter and servers, and the other
/// datacenters' servers (base URLs of their HTTP API).
pub struct Federation {
    own: String,
    own_servers: Mutex<BTreeSet<String>>,
    known: Mutex<BTreeMap<String, Known>>,
    tls: Option<rustls::ClientConfig>,
    /// Federation through mesh gateways: other datacenters are reached through their gateways
    /// (when known), and this datacenter's own are told to them.
    via_gateways: bool,
    /// This datacenter's passing mesh gateways' WAN addresses (followed from the catalog).
    own_gateways: Mutex<Vec<SocketAddr>>,
}

/// The DNS domain of the server names reached through mesh gateways (`server.<dc>.consul`, as
/// in Consul's server certificates).
pub const SERVER_DOMAIN: &str = "consul";

/// The name a server of `dc` is reached by through a mesh gateway (its SNI, and what its
/// certificate is verified for).
pub fn server_name(dc: &str) -> String {
    format!("server.{dc}.{SERVER_DOMAIN}")
}

/// Options of a client reaching `dc`'s servers through `gateways`: a base URL
/// `https://server.<dc>.consul:<port>` per gateway port, the name connected at the gateways.
pub fn gateway_client_options(
    dc: &str,
    gateways: &[SocketAddr],
    tls: Option<rustls::ClientConfig>,
) -> (Vec<String>, ClientOptions) {
    let name = server_name(dc);
    let ports: BTreeSet<u16> = gateways.iter().map(SocketAddr::port).collect();
    let bases = ports
        .into_iter()
        .map(|port| format!("https://{name}:{port}"))
        .collect();
    let options = ClientOptions {
        tls,
        https: true,
        resolve: vec![(name, gateways.to_vec())],
    };
    (bases, options)
}

/// One other datacenter: its servers, its mesh gateways, and the client that reaches them
/// (built again when either changes).
struct Known {
    servers: BTreeSet<String>,
    gateways: Vec<SocketAddr>,
    client: Option<Client>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("own", &self.own)
            .field("datacenters", &self.datacenters())
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// A federation of one: this server's datacenter `own`.
    pub fn new(own: &str) -> Self {
        Self {
            own: own.to_owned(),
            own_servers: Mutex::new(BTreeSet::new()),
            known: Mutex::new(BTreeMap::new()),
            tls: None,
            via_gateways: false,
            own_gateways: Mutex::new(Vec::new()),
        }
    }

    /// Federates through mesh gateways (`--mesh-gateway-wan-federation`): a datacenter whose
    /// gateways are known is reached through them, and this one's are told to the others.
    pub fn via_gateways(mut self, on: bool) -> Self {
        self.via_gateways = on;
        self
    }

    /// Whether this server federates through mesh gateways.
    pub fn federates_via_gateways(&self) -> bool {
        self.via_gateways
    }

    /// Sets this datacenter's mesh gateways' WAN addresses (sorted, deduplicated).
    pub fn set_own_gateways(&self, mut gateways: Vec<SocketAddr>) {
        gateways.sort_unstable();
        gateways.dedup();
        let mut own = plexus_runtime::lock::lock(&self.own_gateways);
        if *own != gateways {
            tracing::info!(gateways = ?gateways, "this datacenter's mesh gateways");
            *own = gateways;
        }
    }

    /// Learns that `dc`'s mesh gateways are `gateways` (replacing what was known; an empty
    /// list is ignored, as is this server's own datacenter).
    pub fn learn_gateways(&self, dc: &str, mut gateways: Vec<SocketAddr>) {
        if dc == self.own || !valid_name(dc) || gateways.is_empty() {
            return;
        }
        gateways.sort_unstable();
        gateways.dedup();
        let mut known = plexus_runtime::lock::lock(&self.known);
        let entry = known.entry(dc.to_owned()).or_insert_with(|| Known {
            servers: BTreeSet::new(),
            gateways: Vec::new(),
            client: None,
        });
        if entry.gateways != gateways {
            tracing::info!(datacenter = dc, gateways = ?gateways, "learned mesh gateways of a datacenter");
            entry.gateways = gateways;
            entry.client = None;
        }
    }

    /// Reaches `https://` servers of other datacenters with `tls` (their CA).
    pub fn with_tls(mut self, tls: Option<rustls::ClientConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// This server's datacenter.
    pub fn own(&self) -> &str {
        &self.own
    }

    /// Adds a base URL (`http://host:port`) other datacenters reach this server at.
    pub fn add_own_server(&self, base: String) {
        plexus_runtime::lock::lock(&self.own_servers).insert(base);
    }

    /// Every known datacenter: this server's first, then the others by name (Consul sorts by
    /// network distance; Plexus has no coordinates, so name order).
    pub fn datacenters(&self) -> Vec<String> {
        let known = plexus_runtime::lock::lock(&self.known);
        std::iter::once(self.own.clone())
            .chain(known.keys().filter(|dc| **dc != self.own).cloned())
            .collect()
    }

    /// Whether `dc` is a known datacenter (this server's included).
    pub fn knows(&self, dc: &str) -> bool {
        dc == self.own || plexus_runtime::lock::lock(&self.known).contains_key(dc)
    }

    /// Learns that `dc`'s servers include `servers` (this server's own datacenter is ignored:
    /// it is served locally).
    pub fn learn(&self, dc: &str, servers: impl IntoIterator<Item = String>) {
        if dc == self.own || !valid_name(dc) {
            return;
        }
        let servers: Vec<String> = servers
            .into_iter()
            .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
            .collect();
        if servers.is_empty() {
            return;
        }
        let mut known = plexus_runtime::lock::lock(&self.known);
        let entry = known.entry(dc.to_owned()).or_insert_with(|| Known {
            servers: BTreeSet::new(),
            gateways: Vec::new(),
            client: None,
        });
        let before = entry.servers.len();
        entry.servers.extend(servers);
        if entry.servers.len() != before {
            entry.client = None;
            tracing::info!(datacenter = dc, servers = ?entry.servers, "learned servers of a datacenter");
        }
    }

    /// What this server tells others: its datacenter, its own servers, and every datacenter it
    /// knows with their servers.
    pub fn view(&self) -> exchange::WanView {
        let own_servers = plexus_runtime::lock::lock(&self.own_servers).clone();
        let known_map = plexus_runtime::lock::lock(&self.known);
        let known = known_map
            .iter()
            .filter(|(_, known)| !known.servers.is_empty())
            .map(|(dc, known)| (dc.clone(), known.servers.iter().cloned().collect()))
            .collect();
        let mut gateways: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if self.via_gateways {
            let own = plexus_runtime::lock::lock(&self.own_gateways);
            if !own.is_empty() {
                gateways.insert(
                    self.own.clone(),
                    own.iter().map(ToString::to_string).collect(),
                );
            }
            for (dc, known) in known_map.iter() {
                if !known.gateways.is_empty() {
                    gateways.insert(
                        dc.clone(),
                        known.gateways.iter().map(ToString::to_string).collect(),
                    );
                }
            }
        }
        exchange::WanView {
            datacenter: self.own.clone(),
            servers: own_servers.into_iter().collect(),
            known,
            gateways,
        }
    }

    /// Takes in what another server told: its datacenter and servers, and what it knows.
    pub fn merge(&self, view: exchange::WanView) {
        self.learn(&view.datacenter, view.servers);
        for (dc, servers) in view.known {
            self.learn(&dc, servers);
        }
        if self.via_gateways {
            for (dc, gateways) in view.gateways {
                let addrs = gateways.iter().filter_map(|g| g.parse().ok()).collect();
                self.learn_gateways(&dc, addrs);
            }
        }
    }

    /// A client of `dc`'s servers (failing over between them); `None` for an unknown
    /// datacenter (or one whose servers cannot be addressed).
    pub fn client_for(&self, dc: &str) -> Option<Result<Client, plexus_api::client::ClientError>> {
        let mut known = plexus_runtime::lock::lock(&self.known);
        let entry = known.get_mut(dc)?;
        if let Some(client) = &entry.client {
            return Some(Ok(client.clone()));
        }
        let made = if self.via_gateways && !entry.gateways.is_empty() {
            let (bases, options) = gateway_client_options(dc, &entry.gateways, self.tls.clone());
            Client::with_options(&bases, options)
        } else if entry.servers.is_empty() {
            return None;
        } else {
            let servers: Vec<&String> = entry.servers.iter().collect();
            Client::with_options(
                &servers,
                ClientOptions {
                    tls: self.tls.clone(),
                    https: false,
                    resolve: Vec::new(),
                },
            )
        };
        if let Ok(client) = &made {
            entry.client = Some(client.clone());
        }
        Some(made)
    }
}

/// A datacenter name: 1 to 128 letters, digits, `-` and `_` (the config file's rule).
pub fn valid_name(dc: &str) -> bool {
    !dc.is_empty()
        && dc.len() <= 128
        && dc
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The TLS client settings servers use towards other datacenters' `https://` servers.
pub type ClientTls = rustls::ClientConfig;

/// The federation shared by the routes, the join loops and the forwarding layer.
pub type Shared = Arc<Federation>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_datacenter_comes_first_then_the_others_by_name() {
        let federation = Federation::new("dc2");
        federation.learn("dc3", ["http://10.0.0.3:8500".to_owned()]);
        federation.learn("dc1", ["http://10.0.0.1:8500".to_owned()]);
        federation.learn("dc2", ["http://10.0.0.9:8500".to_owned()]);
        federation.learn("bad name", ["http://10.0.0.4:8500".to_owned()]);
        assert_eq!(federation.datacenters(), ["dc2", "dc1", "dc3"]);
        assert!(federation.knows("dc1") && federation.knows("dc2"));
        assert!(!federation.knows("dc4"));
    }

    #[test]
    fn a_view_carries_what_is_known_and_merging_it_teaches_the_rest() {
        let one = Federation::new("dc1");
        one.add_own_server("http://10.0.0.1:8500".to_owned());
        one.learn("dc3", ["http://10.0.0.3:8500".to_owned()]);
        let two = Federation::new("dc2");
        two.merge(one.view());
        assert_eq!(two.datacenters(), ["dc2", "dc1", "dc3"]);
        let client = two.client_for("dc1").unwrap().unwrap();
        assert_eq!(client.servers(), ["http://10.0.0.1:8500"]);
        assert!(two.client_for("dc9").is_none());
        // Addresses that are not base URLs are not learned.
        two.learn("dc4", ["10.0.0.4:8500".to_owned()]);
        assert!(two.client_for("dc4").is_none());
    }

    fn tls() -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    }

    #[test]
    fn through_gateways_a_datacenter_is_reached_at_its_server_name_and_gateways_spread() {
        let one = Federation::new("dc1")
            .with_tls(Some(tls()))
            .via_gateways(true);
        one.add_own_server("https://10.0.0.1:8501".to_owned());
        one.set_own_gateways(vec![
            "192.0.2.1:8443".parse().unwrap(),
            "192.0.2.2:9443".parse().unwrap(),
        ]);
        let two = Federation::new("dc2")
            .with_tls(Some(tls()))
            .via_gateways(true);
        two.merge(one.view());
        let client = two.client_for("dc1").unwrap().unwrap();
        assert_eq!(
            client.servers(),
            [
                "https://server.dc1.consul:8443",
                "https://server.dc1.consul:9443"
            ]
        );
        // What dc2 tells a third datacenter includes dc1's gateways.
        let three = Federation::new("dc3")
            .with_tls(Some(tls()))
            .via_gateways(true);
        three.merge(two.view());
        assert_eq!(
            three.client_for("dc1").unwrap().unwrap().servers(),
            [
                "https://server.dc1.consul:8443",
                "https://server.dc1.consul:9443"
            ]
        );
        // A server not federating through gateways neither tells nor uses them.
        let direct = Federation::new("dc4").with_tls(Some(tls()));
        assert!(direct.view().gateways.is_empty());
        direct.merge(one.view());
        assert_eq!(
            direct.client_for("dc1").unwrap().unwrap().servers(),
            ["https://10.0.0.1:8501"]
        );
        assert!(one.view().gateways.contains_key("dc1"));
    }
}
