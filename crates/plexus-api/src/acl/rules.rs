//! A policy's rules as data, and the policies Consul templates for service and node identities
//! and for the built-in management policy.
//!
//! Rules are parsed from Consul's rule language (HCL or JSON) by [`super::parse`]; this module
//! only holds them.

use std::collections::BTreeMap;

use super::access::{Access, Resource};

/// One rule naming a segment: `service "web" { policy = "write" }` or
/// `key_prefix "app/" { policy = "read" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRule {
    /// What the rule is about (never a single-valued resource such as `operator`).
    pub resource: Resource,
    /// The name (`web`) or prefix (`app/`; `""` matches everything).
    pub name: String,
    /// `*_prefix` rather than an exact name.
    pub prefix: bool,
    /// The grant.
    pub access: Access,
    /// Service rules only: the `intentions` field, when written.
    pub intentions: Option<Access>,
}

/// The rules of one policy (or of a templated identity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Rules on named segments, in the order written.
    pub segments: Vec<SegmentRule>,
    /// Single-valued rules: `acl`, `operator`, `mesh`, `keyring`, `peering`.
    pub singles: BTreeMap<Resource, Access>,
}

impl Rules {
    /// Adds a segment rule.
    pub fn with(mut self, resource: Resource, name: &str, prefix: bool, access: Access) -> Self {
        self.segments.push(SegmentRule {
            resource,
            name: name.to_owned(),
            prefix,
            access,
            intentions: None,
        });
        self
    }

    /// Sets a single-valued rule.
    pub fn with_single(mut self, resource: Resource, access: Access) -> Self {
        self.singles.insert(resource, access);
        self
    }

    /// Consul's service identity template: write on the service and its sidecar proxy, read on
    /// every service and node (for discovery).
    pub fn service_identity(name: &str) -> Rules {
        Rules::default()
            .with(Resource::Service, name, false, Access::Write)
            .with(
                Resource::Service,
                &format!("{name}-sidecar-proxy"),
                false,
                Access::Write,
            )
            .with(Resource::Service, "", true, Access::Read)
            .with(Resource::Node, "", true, Access::Read)
    }

    /// Consul's node identity template: write on the node, read on every service.
    pub fn node_identity(name: &str) -> Rules {
        Rules::default()
            .with(Resource::Node, name, false, Access::Write)
            .with(Resource::Service, "", true, Access::Read)
    }

    /// The built-in `global-management` policy: write on everything, ACLs included.
    pub fn global_management() -> Rules {
        let mut rules = Rules::default();
        for resource in [
            Resource::Agent,
            Resource::Event,
            Resource::Key,
            Resource::Node,
            Resource::Query,
            Resource::Service,
            Resource::Session,
        ] {
            rules = rules.with(resource, "", true, Access::Write);
        }
        if let Some(service) = rules
            .segments
            .iter_mut()
            .find(|r| r.resource == Resource::Service)
        {
            service.intentions = Some(Access::Write);
        }
        for single in [
            Resource::Acl,
            Resource::Keyring,
            Resource::Mesh,
            Resource::Operator,
            Resource::Peering,
        ] {
            rules = rules.with_single(single, Access::Write);
        }
        rules
    }
}

/// The rules text of the built-in `global-management` policy, as Consul shows it.
pub const GLOBAL_MANAGEMENT_RULES: &str = r#"acl = "write"
agent_prefix "" {
  policy = "write"
}
event_prefix "" {
  policy = "write"
}
key_prefix "" {
  policy = "write"
}
keyring = "write"
node_prefix "" {
  policy = "write"
}
operator = "write"
mesh = "write"
peering = "write"
query_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "write"
  intentions = "write"
}
session_prefix "" {
  policy = "write"
}
"#;
