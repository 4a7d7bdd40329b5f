//! [`Authorizer`]: what one request's token may do, compiled once from its policies, roles and
//! identities, and asked by handlers (`authz.require_service_write("web")?`).
//!
//! Evaluation (Consul's): for a named resource, an exact rule wins over any prefix rule; among
//! prefix rules the longest matching prefix wins (`""` matches everything); when several policies
//! write a rule for the same name, `deny` wins, otherwise the larger grant ([`Access::merge`]).
//! Without a matching rule the default policy decides: `allow` grants everything except ACL
//! management, `deny` nothing.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::access::{Access, Resource};
use super::rules::Rules;

/// What happens when no rule matches (`acl.default_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Everything not denied is allowed, except ACL management.
    Allow,
    /// Everything not granted is denied (a production server's default).
    #[default]
    Deny,
}

impl DefaultPolicy {
    fn access(self, resource: Resource) -> Access {
        match (self, resource) {
            (DefaultPolicy::Allow, Resource::Acl) => Access::Deny,
            (DefaultPolicy::Allow, _) => Access::Write,
            (DefaultPolicy::Deny, _) => Access::Deny,
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DefaultPolicy::Allow => "allow",
            DefaultPolicy::Deny => "deny",
        })
    }
}

impl std::str::FromStr for DefaultPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "allow" => Ok(DefaultPolicy::Allow),
            "deny" => Ok(DefaultPolicy::Deny),
            other => Err(format!(
                "invalid default policy {other:?}: expected \"allow\" or \"deny\""
            )),
        }
    }
}

/// A refusal: Consul's 403 message naming the accessor, the permission and the resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Denied {
    /// The token's AccessorID (never its secret).
    pub accessor_id: String,
    /// The resource kind.
    pub resource: Resource,
    /// The access that was needed.
    pub access: Access,
    /// The name within the resource (`web`, `app/config`); `None` for `operator`, `acl`, `mesh`.
    pub segment: Option<String>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Permission denied: token with AccessorID '{}' lacks permission '{}:{}'",
            self.accessor_id, self.resource, self.access
        )?;
        if let Some(segment) = &self.segment {
            write!(f, " on {segment:?}")?;
        }
        Ok(())
    }
}

/// The rules of one resource kind, compiled for lookups.
#[derive(Debug, Clone, Default)]
struct Segments {
    exact: HashMap<String, Access>,
    /// Longest prefix first.
    prefixes: Vec<(String, Access)>,
}

impl Segments {
    fn add(&mut self, name: &str, prefix: bool, access: Access) {
        if prefix {
            match self.prefixes.iter_mut().find(|(p, _)| p == name) {
                Some((_, existing)) => *existing = existing.merge(access),
                None => self.prefixes.push((name.to_owned(), access)),
            }
        } else {
            self.exact
                .entry(name.to_owned())
                .and_modify(|existing| *existing = existing.merge(access))
                .or_insert(access);
        }
    }

    fn finish(&mut self) {
        self.prefixes
            .sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    /// The exact rule, else the longest matching prefix rule.
    fn lookup(&self, name: &str) -> Option<Access> {
        if let Some(access) = self.exact.get(name) {
            return Some(*access);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix.as_str()))
            .map(|(_, access)| *access)
    }

    /// Every rule whose name lies under `prefix` (exact names and longer prefixes).
    fn below<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = Access> + 'a {
        let exact = self
            .exact
            .iter()
            .filter(move |(name, _)| name.starts_with(prefix))
            .map(|(_, a)| *a);
        let prefixes = self
            .prefixes
            .iter()
            .filter(move |(name, _)| name.starts_with(prefix) && name.len() > prefix.len())
            .map(|(_, a)| *a);
        exact.chain(prefixes)
    }
}

/// The compiled rules of a token: every policy, role and identity merged.
#[derive(Debug, Clone, Default)]
struct Table {
    segments: HashMap<Resource, Segments>,
    singles: HashMap<Resource, Access>,
}

impl Table {
    fn compile<'a>(all: impl IntoIterator<Item = &'a Rules>) -> Table {
        let mut table = Table::default();
        for rules in all {
            for rule in &rules.segments {
                table.segments.entry(rule.resource).or_default().add(
                    &rule.name,
                    rule.prefix,
                    rule.access,
                );
                if rule.resource == Resource::Service {
                    // Consul: without `intentions`, read or write on a service reads its
                    // intentions; anything else denies them.
                    let intentions = rule.intentions.unwrap_or(match rule.access {
                        Access::Read | Access::List | Access::Write => Access::Read,
                        Access::Deny => Access::Deny,
                    });
                    table.segments.entry(Resource::Intention).or_default().add(
                        &rule.name,
                        rule.prefix,
                        intentions,
                    );
                }
            }
            for (resource, access) in &rules.singles {
                table
                    .singles
                    .entry(*resource)
                    .and_modify(|existing| *existing = existing.merge(*access))
                    .or_insert(*access);
            }
        }
        for segments in table.segments.values_mut() {
            segments.finish();
        }
        table
    }
}

#[derive(Debug)]
enum Kind {
    /// ACLs are off: everything is allowed.
    Disabled,
    /// A token's rules over a default policy.
    Rules {
        table: Table,
        default: DefaultPolicy,
    },
}

#[derive(Debug)]
struct Inner {
    accessor_id: String,
    kind: Kind,
}

/// What one request may do. Resolved once per request at the edge (from the token it carried)
/// and handed to handlers; cheap to clone.
///
/// Handlers ask it and never look at tokens: `require_*` methods return [`Denied`] (403 with
/// Consul's message), `can_*` methods answer for filtering lists.
#[derive(Debug, Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

impl Authorizer {
    /// ACLs disabled: every request may do everything.
    pub fn allow_all() -> Authorizer {
        Authorizer {
            inner: Arc::new(Inner {
                accessor_id: String::new(),
                kind: Kind::Disabled,
            }),
        }
    }

    /// A token's authorizer: the union of `rules` (its policies, roles' policies and templated
    /// identities) over `default`.
    pub fn from_rules<'a>(
        accessor_id: impl Into<String>,
        rules: impl IntoIterator<Item = &'a Rules>,
        default: DefaultPolicy,
    ) -> Authorizer {
        Authorizer {
            inner: Arc::new(Inner {
                accessor_id: accessor_id.into(),
                kind: Kind::Rules {
                    table: Table::compile(rules),
                    default,
                },
            }),
        }
    }

    /// Whether ACLs are enforced for this request (false: ACLs are disabled).
    pub fn enforcing(&self) -> bool {
        !matches!(self.inner.kind, Kind::Disabled)
    }

    /// The token's AccessorID (empty with ACLs disabled).
    pub fn accessor_id(&self) -> &str {
        &self.inner.accessor_id
    }

    /// The access the token holds on `resource` (`segment` for named resources).
    pub fn access(&self, resource: Resource, segment: &str) -> Access {
        match &self.inner.kind {
            Kind::Disabled => Access::Write,
            Kind::Rules { table, default } => {
                let found = if resource.is_segmented() {
                    table
                        .segments
                        .get(&resource)
                        .and_then(|s| s.lookup(segment))
                } else {
                    table.singles.get(&resource).copied()
                };
                found.unwrap_or_else(|| default.access(resource))
            }
        }
    }

    /// Whether the token may read every name of `resource` (no rule grants less than read and
    /// the rest is covered by a `""` prefix rule or the default): lets a read skip filtering.
    pub fn can_read_all(&self, resource: Resource) -> bool {
        match &self.inner.kind {
            Kind::Disabled => true,
            Kind::Rules { table, default } => {
                let Some(segments) = table.segments.get(&resource) else {
                    return default.access(resource).allows(Access::Read);
                };
                let all_read = segments.exact.values().all(|a| a.allows(Access::Read))
                    && segments
                        .prefixes
                        .iter()
                        .all(|(_, a)| a.allows(Access::Read));
                let covered = segments.prefixes.iter().any(|(p, _)| p.is_empty())
                    || default.access(resource).allows(Access::Read);
                all_read && covered
            }
        }
    }

    /// Whether the token may do `wanted` on `resource`/`segment`.
    pub fn allows(&self, resource: Resource, segment: &str, wanted: Access) -> bool {
        self.access(resource, segment).allows(wanted)
    }

    /// `Ok` when allowed, else the 403 naming what was missing.
    pub fn require(&self, resource: Resource, segment: &str, wanted: Access) -> Result<(), Denied> {
        if self.allows(resource, segment, wanted) {
            return Ok(());
        }
        Err(Denied {
            accessor_id: self.inner.accessor_id.clone(),
            resource,
            access: wanted,
            segment: resource.is_segmented().then(|| segment.to_owned()),
        })
    }

    // Services and their intentions.

    /// May read service `name` (filtering lists).
    pub fn can_read_service(&self, name: &str) -> bool {
        self.allows(Resource::Service, name, Access::Read)
    }
    /// Needs `service:read` on `name`.
    pub fn require_service_read(&self, name: &str) -> Result<(), Denied> {
        self.require(Resource::Service, name, Access::Read)
    }
    /// Needs `service:write` on `name` (register, deregister, leaf, CSR).
    pub fn require_service_write(&self, name: &str) -> Result<(), Denied> {
        self.require(Resource::Service, name, Access::Write)
    }
    /// May read intentions whose destination is `destination`.
    pub fn can_read_intention(&self, destination: &str) -> bool {
        self.allows(Resource::Intention, destination, Access::Read)
    }
    /// Needs `intention:read` on `destination`.
    pub fn require_intention_read(&self, destination: &str) -> Result<(), Denied> {
        self.require(Resource::Intention, destination, Access::Read)
    }
    /// Needs `intention:write` on `destination`.
    pub fn require_intention_write(&self, destination: &str) -> Result<(), Denied> {
        self.require(Resource::Intention, destination, Access::Write)
    }

    // Nodes and agents.

    /// May read node `name`.
    pub fn can_read_node(&self, name: &str) -> bool {
        self.allows(Resource::Node, name, Access::Read)
    }
    /// Needs `node:read` on `name`.
    pub fn require_node_read(&self, name: &str) -> Result<(), Denied> {
        self.require(Resource::Node, name, Access::Read)
    }
    /// Needs `node:write` on `name`.
    pub fn require_node_write(&self, name: &str) -> Result<(), Denied> {
        self.require(Resource::Node, name, Access::Write)
    }
    /// Needs `agent:read` on node `name`.
    pub fn require_agent_read(&self, name: &str) -> Result<(), Denied> {
        self.require(Resource::Agent, name, Access::Read)
    }
    /// Needs `agent:write` on node `name`.
    pub fn require_agent_write(&self, name: &str) -> Result<(), Denied> {
        self.require(Resource::Agent, name, Access::Write)
    }

    // KV.

    /// May read key `key`.
    pub fn can_read_key(&self, key: &str) -> bool {
        self.allows(Resource::Key, key, Access::Read)
    }
    /// Needs `key:read` on `key`.
    pub fn require_key_read(&self, key: &str) -> Result<(), Denied> {
        self.require(Resource::Key, key, Access::Read)
    }
    /// Needs `key:list` on `prefix` (listing keys or values under it).
    pub fn require_key_list(&self, prefix: &str) -> Result<(), Denied> {
        self.require(Resource::Key, prefix, Access::List)
    }
    /// Needs `key:write` on `key`.
    pub fn require_key_write(&self, key: &str) -> Result<(), Denied> {
        self.require(Resource::Key, key, Access::Write)
    }
    /// Needs `key:write` on `prefix` and on everything under it (a recursive delete): a rule
    /// below the prefix that grants less than write refuses the whole operation.
    pub fn require_key_write_prefix(&self, prefix: &str) -> Result<(), Denied> {
        let denied = || Denied {
            accessor_id: self.inner.accessor_id.clone(),
            resource: Resource::Key,
            access: Access::Write,
            segment: Some(prefix.to_owned()),
        };
        if let Kind::Rules { table, .. } = &self.inner.kind
            && let Some(segments) = table.segments.get(&Resource::Key)
            && segments.below(prefix).any(|a| a != Access::Write)
        {
            return Err(denied());
        }
        self.require_key_write(prefix)
    }

    // Events, sessions, queries.

    /// May read event `name`.
    pub fn can_read_event(&self, name: &str) -> bool {
        self.allows(Resource::Event, name, Access::Read)
    }
    /// Needs `event:write` on `name`.
    pub fn require_event_write(&self, name: &str) -> Result<(), Denied> {
        self.require(Resource::Event, name, Access::Write)
    }
    /// Needs `session:write` on node `node`.
    pub fn require_session_write(&self, node: &str) -> Result<(), Denied> {
        self.require(Resource::Session, node, Access::Write)
    }
    /// May read prepared query `name`.
    pub fn can_read_query(&self, name: &str) -> bool {
        self.allows(Resource::Query, name, Access::Read)
    }
    /// Needs `query:read` on `name`.
    pub fn require_query_read(&self, name: &str) -> Result<(), Denied> {
        self.require(Resource::Query, name, Access::Read)
    }
    /// Needs `query:write` on `name`.
    pub fn require_query_write(&self, name: &str) -> Result<(), Denied> {
        self.require(Resource::Query, name, Access::Write)
    }

    // Single-valued resources.

    /// Needs `operator:read`.
    pub fn require_operator_read(&self) -> Result<(), Denied> {
        self.require(Resource::Operator, "", Access::Read)
    }
    /// Needs `operator:write` (CA configuration and rotation).
    pub fn require_operator_write(&self) -> Result<(), Denied> {
        self.require(Resource::Operator, "", Access::Write)
    }
    /// Needs `mesh:read` (config entries are read with service or mesh read).
    pub fn require_mesh_read(&self) -> Result<(), Denied> {
        self.require(Resource::Mesh, "", Access::Read)
    }
    /// Needs `mesh:write`.
    pub fn require_mesh_write(&self) -> Result<(), Denied> {
        self.require(Resource::Mesh, "", Access::Write)
    }
    /// Needs `acl:read` (list and read tokens, policies, roles).
    pub fn require_acl_read(&self) -> Result<(), Denied> {
        self.require(Resource::Acl, "", Access::Read)
    }
    /// Needs `acl:write` (create, update, delete them).
    pub fn require_acl_write(&self) -> Result<(), Denied> {
        self.require(Resource::Acl, "", Access::Write)
    }
}

#[cfg(test)]
#[path = "authorizer_tests.rs"]
mod tests;
