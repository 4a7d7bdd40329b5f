//! Access levels (`read`, `list`, `write`, `deny`) and the resources rules are written for.

use std::fmt;

/// What a rule grants on a resource, in Consul's words.
///
/// Precedence when two rules for the same name meet (several policies on one token):
/// `deny` > `write` > `list` > `read` ([`Access::merge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Nothing, and it wins every tie.
    Deny,
    /// Read.
    Read,
    /// Read and list (keys: list a prefix).
    List,
    /// Read, list and write.
    Write,
}

impl Access {
    /// Parses `read`, `list`, `write` or `deny`.
    pub fn parse(text: &str) -> Option<Access> {
        match text {
            "deny" => Some(Access::Deny),
            "read" => Some(Access::Read),
            "list" => Some(Access::List),
            "write" => Some(Access::Write),
            _ => None,
        }
    }

    /// The access two rules for the same name add up to: deny wins, otherwise the larger grant.
    pub fn merge(self, other: Access) -> Access {
        match (self, other) {
            (Access::Deny, _) | (_, Access::Deny) => Access::Deny,
            (a, b) => a.max(b),
        }
    }

    /// Whether holding `self` allows doing `wanted` (`wanted` is never `Deny`).
    pub fn allows(self, wanted: Access) -> bool {
        match wanted {
            Access::Deny => false,
            Access::Read => matches!(self, Access::Read | Access::List | Access::Write),
            Access::List => matches!(self, Access::List | Access::Write),
            Access::Write => self == Access::Write,
        }
    }

    /// `read`, `list`, `write`, `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Deny => "deny",
            Access::Read => "read",
            Access::List => "list",
            Access::Write => "write",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind of resource a permission is about (`service:write` → [`Resource::Service`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// ACL tokens, policies and roles (no name: `acl = "write"`).
    Acl,
    /// An agent's own endpoints, by node name.
    Agent,
    /// User events and the event mesh's `/v1/events/*`, by name.
    Event,
    /// Intentions, by destination service (the `intentions` field of service rules).
    Intention,
    /// KV keys.
    Key,
    /// Gossip keyring (accepted in rules, nothing in Plexus asks for it).
    Keyring,
    /// Mesh-wide configuration (no name).
    Mesh,
    /// Nodes, by name.
    Node,
    /// Cluster operations: CA configuration and rotation, operator view (no name).
    Operator,
    /// Cluster peering (accepted in rules, nothing in Plexus asks for it).
    Peering,
    /// Prepared queries, by name.
    Query,
    /// Services, by name.
    Service,
    /// Sessions, by node name.
    Session,
}

impl Resource {
    /// The name Consul uses in permission strings (`service`, `key`, `intention`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Acl => "acl",
            Resource::Agent => "agent",
            Resource::Event => "event",
            Resource::Intention => "intention",
            Resource::Key => "key",
            Resource::Keyring => "keyring",
            Resource::Mesh => "mesh",
            Resource::Node => "node",
            Resource::Operator => "operator",
            Resource::Peering => "peering",
            Resource::Query => "query",
            Resource::Service => "service",
            Resource::Session => "session",
        }
    }

    /// Whether rules for this resource name segments (`service "web"`) rather than being one
    /// value (`operator = "write"`).
    pub fn is_segmented(self) -> bool {
        !matches!(
            self,
            Resource::Acl
                | Resource::Keyring
                | Resource::Mesh
                | Resource::Operator
                | Resource::Peering
        )
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_lets_deny_win_then_the_larger_grant() {
        use Access::*;
        assert_eq!(Read.merge(Write), Write);
        assert_eq!(Write.merge(Deny), Deny);
        assert_eq!(List.merge(Read), List);
        assert_eq!(Deny.merge(Read), Deny);
    }

    #[test]
    fn allows_follows_the_grant_order() {
        use Access::*;
        assert!(Write.allows(Read) && Write.allows(List) && Write.allows(Write));
        assert!(List.allows(Read) && List.allows(List) && !List.allows(Write));
        assert!(Read.allows(Read) && !Read.allows(List));
        assert!(!Deny.allows(Read));
        for a in [Deny, Read, List, Write] {
            assert!(!a.allows(Deny));
            assert_eq!(Access::parse(a.as_str()), Some(a));
        }
    }
}
