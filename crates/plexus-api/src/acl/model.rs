//! Tokens, policies and roles as Consul's HTTP API shows and takes them (`PascalCase`, `ID`
//! spelled as Consul does).
//!
//! Stored records and answers share these types; a token's secret is a [`SecretId`], so it
//! never shows in a `Debug`. Answers that must not carry it replace it with `<hidden>`
//! ([`Token::hidden`]).

use serde::{Deserialize, Serialize};

use super::secret::SecretId;

/// What answers show instead of a secret the caller may not see.
pub const HIDDEN_SECRET: &str = "<hidden>";

/// A link to a policy or role, by `ID` or `Name` (writes may give either; answers give both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The ID.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The name.
    #[serde(rename = "Name", default)]
    pub name: String,
}

/// A service identity: Consul's templated policy for a service and its sidecar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceIdentity {
    /// The service.
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    /// Datacenters it applies in (empty: all).
    #[serde(rename = "Datacenters", default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
}

/// A node identity: Consul's templated policy for a node's agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    /// The node.
    #[serde(rename = "NodeName")]
    pub node_name: String,
    /// The datacenter it applies in.
    #[serde(rename = "Datacenter", default)]
    pub datacenter: String,
}

/// A token as stored and answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Public identifier (UUID), safe to log.
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    /// The secret callers present.
    #[serde(rename = "SecretID")]
    pub secret_id: SecretId,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// Linked policies.
    #[serde(rename = "Policies", default)]
    pub policies: Vec<Link>,
    /// Linked roles.
    #[serde(rename = "Roles", default)]
    pub roles: Vec<Link>,
    /// Service identities.
    #[serde(rename = "ServiceIdentities", default)]
    pub service_identities: Vec<ServiceIdentity>,
    /// Node identities.
    #[serde(rename = "NodeIdentities", default)]
    pub node_identities: Vec<NodeIdentity>,
    /// Local to this datacenter (always true in effect: there is one datacenter).
    #[serde(rename = "Local", default)]
    pub local: bool,
    /// When the token stops working (RFC 3339), if ever.
    #[serde(
        rename = "ExpirationTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration_time: Option<String>,
    /// When it was created (RFC 3339).
    #[serde(rename = "CreateTime", default)]
    pub create_time: String,
    /// Store index of the creation.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// Store index of the last change.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

impl Token {
    /// The same token with its secret replaced by `<hidden>`.
    pub fn hidden(mut self) -> Token {
        self.secret_id = SecretId::new(HIDDEN_SECRET);
        self
    }
}

/// The body of `PUT /v1/acl/token` and `PUT /v1/acl/token/:id`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenWrite {
    /// Given to update (in the path) or to create with a chosen id.
    #[serde(
        rename = "AccessorID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub accessor_id: String,
    /// A chosen secret (a UUID is generated otherwise).
    #[serde(
        rename = "SecretID",
        default,
        skip_serializing_if = "SecretId::is_empty"
    )]
    pub secret_id: SecretId,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// Policies by ID or Name.
    #[serde(rename = "Policies", default)]
    pub policies: Vec<Link>,
    /// Roles by ID or Name.
    #[serde(rename = "Roles", default)]
    pub roles: Vec<Link>,
    /// Service identities.
    #[serde(rename = "ServiceIdentities", default)]
    pub service_identities: Vec<ServiceIdentity>,
    /// Node identities.
    #[serde(rename = "NodeIdentities", default)]
    pub node_identities: Vec<NodeIdentity>,
    /// Local to this datacenter.
    #[serde(rename = "Local", default)]
    pub local: bool,
    /// An absolute expiry (RFC 3339).
    #[serde(
        rename = "ExpirationTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration_time: Option<String>,
    /// A lifetime from now (`1h`, `10m`; Go duration).
    #[serde(
        rename = "ExpirationTTL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration_ttl: Option<String>,
}

/// A policy as stored and answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Unique name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// The rules, HCL or JSON, as written.
    #[serde(rename = "Rules", default)]
    pub rules: String,
    /// Datacenters it applies in (empty: all).
    #[serde(rename = "Datacenters", default)]
    pub datacenters: Vec<String>,
    /// Store index of the creation.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// Store index of the last change.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

/// The body of `PUT /v1/acl/policy` and `PUT /v1/acl/policy/:id`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyWrite {
    /// Given to update (also in the path).
    #[serde(rename = "ID", default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Unique name: letters, digits, `-` and `_`, at most 128.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// The rules, HCL or JSON.
    #[serde(rename = "Rules", default)]
    pub rules: String,
    /// Datacenters it applies in.
    #[serde(rename = "Datacenters", default)]
    pub datacenters: Vec<String>,
}

/// A role as stored and answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Unique name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// Linked policies.
    #[serde(rename = "Policies", default)]
    pub policies: Vec<Link>,
    /// Service identities.
    #[serde(rename = "ServiceIdentities", default)]
    pub service_identities: Vec<ServiceIdentity>,
    /// Node identities.
    #[serde(rename = "NodeIdentities", default)]
    pub node_identities: Vec<NodeIdentity>,
    /// Store index of the creation.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// Store index of the last change.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

/// The body of `PUT /v1/acl/role` and `PUT /v1/acl/role/:id`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleWrite {
    /// Given to update (also in the path).
    #[serde(rename = "ID", default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Unique name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// Policies by ID or Name.
    #[serde(rename = "Policies", default)]
    pub policies: Vec<Link>,
    /// Service identities.
    #[serde(rename = "ServiceIdentities", default)]
    pub service_identities: Vec<ServiceIdentity>,
    /// Node identities.
    #[serde(rename = "NodeIdentities", default)]
    pub node_identities: Vec<NodeIdentity>,
}

/// What a server tells a remote agent a token may do (`GET /v1/internal/acl/authorizer`):
/// enough to build the same [`super::Authorizer`] without another round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedToken {
    /// The token's AccessorID.
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    /// The rules of every policy, direct and through roles.
    #[serde(rename = "PolicyRules")]
    pub policy_rules: Vec<String>,
    /// Service identities, direct and through roles.
    #[serde(rename = "ServiceIdentities")]
    pub service_identities: Vec<String>,
    /// Node identities, direct and through roles.
    #[serde(rename = "NodeIdentities")]
    pub node_identities: Vec<String>,
    /// The server's default policy.
    #[serde(rename = "DefaultPolicy")]
    pub default_policy: super::DefaultPolicy,
    /// False when the server runs without ACLs (everything allowed).
    #[serde(rename = "Enabled")]
    pub enabled: bool,
}

impl ResolvedToken {
    /// The authorizer these rules make (a rule text that no longer parses grants nothing).
    pub fn authorizer(&self) -> super::Authorizer {
        if !self.enabled {
            return super::Authorizer::allow_all();
        }
        let mut all: Vec<super::Rules> = self
            .policy_rules
            .iter()
            .filter_map(|text| super::parse_rules(text).ok())
            .collect();
        all.extend(
            self.service_identities
                .iter()
                .map(|s| super::Rules::service_identity(s)),
        );
        all.extend(
            self.node_identities
                .iter()
                .map(|n| super::Rules::node_identity(n)),
        );
        super::Authorizer::from_rules(self.accessor_id.clone(), &all, self.default_policy)
    }
}

/// The answer to `GET /v1/acl/bootstrap` refusals and the reset procedure: Consul's text.
pub fn bootstrap_refused_message(reset_index: u64) -> String {
    format!("ACL bootstrap no longer allowed (reset index: {reset_index})")
}
