//! `GET /v1/agent/members`: the catalog's nodes in the shape of Consul's Serf members, for tools
//! that list a cluster with it (`consul members`, client libraries' `agent.members()`).
//!
//! Plexus has no gossip layer, so the Serf fields are fixed: `Port` is Consul's Serf LAN port
//! ([`SERF_LAN_PORT`]) and the protocol and delegate versions are those a Consul 1.x agent
//! reports ([`PROTOCOL`], [`DELEGATE`]); clients only display or range-check them. `Status` is
//! 1 (alive), or 4 (failed) for a node whose agent let its liveness lease lapse (its
//! [`LEASE_CHECK_ID`] check is critical). `Tags` carry `dc`, `role` (`consul` for this server,
//! `node` for the rest), `build` and `id`.
//!
//! Served by the control plane (a remote agent passes the request on to a server). Unlike
//! Consul, nodes registered through `/v1/catalog/register` (external nodes) are listed
//! too: the catalog is the only membership Plexus keeps. `?wan` and `?segment` are accepted
//! and ignored (one datacenter, no segments). Nodes the token may not read (`node:read`) are
//! left out, marked with `X-Consul-Results-Filtered-By-ACLs: true`.

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use plexus_api::remote::LEASE_CHECK_ID;
use plexus_api::{CheckStatus, Node};
use plexus_runtime::acl::{Authz, filter, mark_filtered};
use plexus_runtime::http::ApiError;
use serde::Serialize;

use super::{ApiState, ServerInfo, catalog_error};

/// Consul's default Serf LAN port, shown as every member's `Port`.
pub const SERF_LAN_PORT: u16 = 8301;
/// Serf protocol versions (min, max, current) as a Consul 1.x agent reports them.
pub const PROTOCOL: (u8, u8, u8) = (1, 5, 2);
/// Consul delegate protocol versions (min, max, current) as a Consul 1.x agent reports them.
pub const DELEGATE: (u8, u8, u8) = (2, 5, 4);
/// Serf's member status: alive.
pub const STATUS_ALIVE: u8 = 1;
/// Serf's member status: failed.
pub const STATUS_FAILED: u8 = 4;

/// One member, as Consul's `api.AgentMember` spells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Node address.
    pub addr: String,
    /// [`SERF_LAN_PORT`].
    pub port: u16,
    /// `dc`, `role`, `build`, `id`.
    pub tags: BTreeMap<String, String>,
    /// [`STATUS_ALIVE`] or [`STATUS_FAILED`].
    pub status: u8,
    /// See [`PROTOCOL`].
    pub protocol_min: u8,
    /// See [`PROTOCOL`].
    pub protocol_max: u8,
    /// See [`PROTOCOL`].
    pub protocol_cur: u8,
    /// See [`DELEGATE`].
    pub delegate_min: u8,
    /// See [`DELEGATE`].
    pub delegate_max: u8,
    /// See [`DELEGATE`].
    pub delegate_cur: u8,
}

/// The member for `node`; `failed` when its agent's lease lapsed.
pub fn member(node: &Node, info: &ServerInfo, failed: bool) -> Member {
    let role = if node.node == info.node_name {
        "consul"
    } else {
        "node"
    };
    let mut tags = BTreeMap::from([
        ("dc".to_owned(), info.datacenter.clone()),
        ("role".to_owned(), role.to_owned()),
        ("build".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
    ]);
    if !node.id.is_empty() {
        tags.insert("id".to_owned(), node.id.clone());
    }
    Member {
        name: node.node.clone(),
        addr: node.address.clone(),
        port: SERF_LAN_PORT,
        tags,
        status: if failed { STATUS_FAILED } else { STATUS_ALIVE },
        protocol_min: PROTOCOL.0,
        protocol_max: PROTOCOL.1,
        protocol_cur: PROTOCOL.2,
        delegate_min: DELEGATE.0,
        delegate_max: DELEGATE.1,
        delegate_cur: DELEGATE.2,
    }
}

/// `GET /v1/agent/members`: `[Member]`.
pub async fn members(State(state): State<ApiState>, authz: Authz) -> Result<Response, ApiError> {
    let mut nodes = state.catalog.nodes().await.map_err(catalog_error)?.value;
    let filtered = filter(&mut nodes, |node| authz.can_read_node(&node.node));
    let critical = state
        .catalog
        .checks_in_state(Some(CheckStatus::Critical))
        .await
        .map_err(catalog_error)?
        .value;
    let failed: HashSet<&str> = critical
        .iter()
        .filter(|c| c.check_id == LEASE_CHECK_ID)
        .map(|c| c.node.as_str())
        .collect();
    let members: Vec<Member> = nodes
        .iter()
        .map(|node| member(node, &state.info, failed.contains(node.node.as_str())))
        .collect();
    let mut response = Json(members).into_response();
    mark_filtered(&mut response, filtered);
    Ok(response)
}
