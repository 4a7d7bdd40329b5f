//! `PUT /v1/internal/wan/exchange`: how servers of different datacenters tell each other who
//! they are (a Plexus-own endpoint; Consul does this over its WAN gossip pool).
//!
//! The caller sends its [`WanView`] (its datacenter, its own servers, the datacenters it
//! knows); the answer is this server's view after taking the caller's in. Needs
//! `operator:write` (the caller's `acl.tokens.replication`, else its initial management token).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, put};
use axum::{Json, Router};
use plexus_runtime::acl::Authz;
use plexus_runtime::http::{ApiError, JsonBody};
use serde::{Deserialize, Serialize};

use super::{Shared, valid_name};

/// The exchange endpoint's path.
pub const PATH: &str = "/v1/internal/wan/exchange";

/// What one server knows of the federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct WanView {
    /// The sender's datacenter.
    pub datacenter: String,
    /// The sender's own base URLs (`http://host:port`, `https://host:port`).
    pub servers: Vec<String>,
    /// Other datacenters the sender knows, with their servers' base URLs.
    #[serde(default)]
    pub known: BTreeMap<String, Vec<String>>,
    /// Mesh gateways' WAN addresses (`ip:port`) by datacenter, told by servers federating
    /// through them (the sender's own included).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gateways: BTreeMap<String, Vec<String>>,
}

impl WanView {
    /// Every problem of a received view, naming the field: datacenter names as the config
    /// file's, servers as `http(s)://host:port` base URLs.
    pub fn check(&self) -> Result<(), ApiError> {
        if !valid_name(&self.datacenter) {
            return Err(ApiError::invalid_field(
                "Datacenter",
                format!(
                    "{:?}: expected 1 to 128 letters, digits, '-' and '_'",
                    self.datacenter
                ),
            ));
        }
        if self.servers.is_empty() {
            return Err(ApiError::invalid_field(
                "Servers",
                "name at least one server of the sender's datacenter",
            ));
        }
        let lists = std::iter::once(("Servers".to_owned(), &self.servers)).chain(
            self.known
                .iter()
                .map(|(dc, servers)| (format!("Known.{dc}"), servers)),
        );
        for (dc, gateways) in &self.gateways {
            if !valid_name(dc) {
                return Err(ApiError::invalid_field(
                    format!("Gateways.{dc}"),
                    format!("{dc:?} is not a datacenter name"),
                ));
            }
            for (i, gateway) in gateways.iter().enumerate() {
                if gateway.parse::<std::net::SocketAddr>().is_err() {
                    return Err(ApiError::invalid_field(
                        format!("Gateways.{dc}[{i}]"),
                        format!("{gateway:?}: expected ip:port"),
                    ));
                }
            }
        }
        for (field, servers) in lists {
            if let Some(dc) = field.strip_prefix("Known.")
                && !valid_name(dc)
            {
                return Err(ApiError::invalid_field(
                    field.clone(),
                    format!("{dc:?} is not a datacenter name"),
                ));
            }
            for (i, server) in servers.iter().enumerate() {
                if !base_url_ok(server) {
                    return Err(ApiError::invalid_field(
                        format!("{field}[{i}]"),
                        format!("{server:?}: expected http://host:port or https://host:port"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `http(s)://host:port` with nothing after the port.
fn base_url_ok(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(['/', '?', '#', '@', ' '])
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

/// The exchange endpoint and `GET /v1/catalog/datacenters`.
pub fn router(federation: Shared) -> Router {
    Router::new()
        .route(PATH, put(exchange))
        .route("/v1/catalog/datacenters", get(datacenters))
        .with_state(federation)
}

async fn exchange(
    State(federation): State<Shared>,
    authz: Authz,
    JsonBody(view): JsonBody<WanView>,
) -> Result<Json<WanView>, ApiError> {
    authz.require_operator_write()?;
    view.check()?;
    if view.datacenter == federation.own() {
        return Err(ApiError::invalid_field(
            "Datacenter",
            format!(
                "{:?} is this server's own datacenter: retry_join_wan names other datacenters' servers",
                view.datacenter
            ),
        ));
    }
    federation.merge(view);
    Ok(Json(federation.view()))
}

/// `GET /v1/catalog/datacenters`: this server's datacenter first, then the others it knows by
/// name (reachable or not).
async fn datacenters(State(federation): State<Shared>) -> Json<Vec<String>> {
    Json(federation.datacenters())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(dc: &str, servers: &[&str]) -> WanView {
        WanView {
            datacenter: dc.to_owned(),
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            known: BTreeMap::new(),
            gateways: BTreeMap::new(),
        }
    }

    #[test]
    fn bad_views_are_refused_naming_the_field() {
        assert!(view("dc1", &["http://10.0.0.1:8500"]).check().is_ok());
        let field = |v: WanView| v.check().unwrap_err().body.error.field.unwrap();
        assert_eq!(field(view("dc 1", &["http://a:1"])), "Datacenter");
        assert_eq!(field(view("dc1", &[])), "Servers");
        assert_eq!(field(view("dc1", &["http://a:1", "a:1"])), "Servers[1]");
        assert_eq!(field(view("dc1", &["http://a:0"])), "Servers[0]");
        assert_eq!(field(view("dc1", &["http://a:1/x"])), "Servers[0]");
        let mut known = view("dc1", &["https://a:1"]);
        known
            .known
            .insert("dc3".to_owned(), vec!["ftp://c:1".to_owned()]);
        assert_eq!(field(known.clone()), "Known.dc3[0]");
        known.known.clear();
        known
            .known
            .insert("no/pe".to_owned(), vec!["http://c:1".to_owned()]);
        assert_eq!(field(known), "Known.no/pe");
        let mut gateways = view("dc1", &["https://a:1"]);
        gateways
            .gateways
            .insert("dc1".to_owned(), vec!["10.0.0.1:8443".to_owned()]);
        assert!(gateways.check().is_ok());
        gateways
            .gateways
            .insert("dc2".to_owned(), vec!["gw.example:8443".to_owned()]);
        assert_eq!(field(gateways.clone()), "Gateways.dc2[0]");
        gateways.gateways.clear();
        gateways
            .gateways
            .insert("d c".to_owned(), vec!["10.0.0.1:1".to_owned()]);
        assert_eq!(field(gateways), "Gateways.d c");
    }
}
