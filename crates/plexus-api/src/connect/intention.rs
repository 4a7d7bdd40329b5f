//! Intentions: who may open a connection to whom, in Consul's shape, and the one pure function that
//! decides ([`decide`]).
//!
//! Precedence (Consul's, without namespaces): exact source and exact destination (9) beat a
//! wildcard source with an exact destination (8), which beat an exact source with a wildcard
//! destination (6), which beat `* → *` (5). Among matching intentions of the same precedence a
//! deny wins. When nothing matches, the default policy decides.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The wildcard source or destination.
pub const WILDCARD: &str = "*";

/// `Action` of an intention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentionAction {
    /// Connections are allowed.
    Allow,
    /// Connections are refused.
    Deny,
}

impl fmt::Display for IntentionAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IntentionAction::Allow => "allow",
            IntentionAction::Deny => "deny",
        })
    }
}

/// `connect.default_intention_policy`: what happens when no intention matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Allow (the dev default).
    Allow,
    /// Deny (the production default).
    Deny,
}

impl FromStr for DefaultPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(DefaultPolicy::Allow),
            "deny" => Ok(DefaultPolicy::Deny),
            other => Err(format!(
                "default intention policy must be \"allow\" or \"deny\", not {other:?}"
            )),
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

/// An intention as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intention {
    /// Server-assigned id (a UUID-shaped string).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Source service name or `*` (required; absent is reported by validation, naming it).
    #[serde(rename = "SourceName", default)]
    pub source_name: String,
    /// Destination service name or `*` (required, like `SourceName`).
    #[serde(rename = "DestinationName", default)]
    pub destination_name: String,
    /// Always `default`.
    #[serde(rename = "SourceNS", default = "default_ns")]
    pub source_ns: String,
    /// Always `default`.
    #[serde(rename = "DestinationNS", default = "default_ns")]
    pub destination_ns: String,
    /// Always `consul` (Consul's only source type).
    #[serde(rename = "SourceType", default = "default_source_type")]
    pub source_type: String,
    /// Allow or deny.
    #[serde(rename = "Action")]
    pub action: IntentionAction,
    /// Free text.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// Metadata.
    #[serde(rename = "Meta", default)]
    pub meta: BTreeMap<String, String>,
    /// Consul's precedence number (9, 8, 6 or 5); computed by the server.
    #[serde(rename = "Precedence", default)]
    pub precedence: u32,
    /// Store revision that created it.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// Store revision that last changed it.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

fn default_ns() -> String {
    super::DEFAULT_NAMESPACE.to_owned()
}

fn default_source_type() -> String {
    "consul".to_owned()
}

/// What [`decide`] needs of an intention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentionInput {
    /// Id, reported back when it decides.
    pub id: String,
    /// Source name or `*`.
    pub source: String,
    /// Destination name or `*`.
    pub destination: String,
    /// Allow or deny.
    pub action: IntentionAction,
}

impl From<&Intention> for IntentionInput {
    fn from(intention: &Intention) -> Self {
        Self {
            id: intention.id.clone(),
            source: intention.source_name.clone(),
            destination: intention.destination_name.clone(),
            action: intention.action,
        }
    }
}

/// Consul's precedence of an intention from `source` to `destination` (higher wins).
pub fn precedence(source: &str, destination: &str) -> u32 {
    match (source == WILDCARD, destination == WILDCARD) {
        (false, false) => 9,
        (true, false) => 8,
        (false, true) => 6,
        (true, true) => 5,
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the connection is allowed.
    pub allowed: bool,
    /// The deciding intention's id; `None` when the default policy decided.
    pub matched: Option<String>,
    /// A sentence saying why, for logs and `/v1/agent/connect/authorize`'s `Reason`.
    pub reason: String,
}

/// Decides whether `source` may connect to `destination`: the matching intention of highest
/// precedence decides (deny wins a tie); with none, `default`.
pub fn decide<'a>(
    intentions: impl IntoIterator<Item = &'a IntentionInput>,
    source: &str,
    destination: &str,
    default: DefaultPolicy,
) -> Decision {
    let matches = |pattern: &str, name: &str| pattern == WILDCARD || pattern == name;
    let mut best: Option<(u32, &IntentionInput)> = None;
    for intention in intentions {
        if !matches(&intention.source, source) || !matches(&intention.destination, destination) {
            continue;
        }
        let rank = precedence(&intention.source, &intention.destination);
        let better = match best {
            None => true,
            Some((best_rank, current)) => {
                rank > best_rank
                    || (rank == best_rank
                        && intention.action == IntentionAction::Deny
                        && current.action == IntentionAction::Allow)
            }
        };
        if better {
            best = Some((rank, intention));
        }
    }
    match best {
        Some((_, intention)) => Decision {
            allowed: intention.action == IntentionAction::Allow,
            matched: Some(intention.id.clone()),
            reason: format!(
                "Matched L4 intention: {} {} => {}",
                intention.action, intention.source, intention.destination
            ),
        },
        None => Decision {
            allowed: default == DefaultPolicy::Allow,
            matched: None,
            reason: format!("Default behavior configured by default intention policy: {default}"),
        },
    }
}

/// `POST /v1/agent/connect/authorize` request, as Consul's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// Destination service name.
    #[serde(rename = "Target")]
    pub target: String,
    /// The client certificate's URI SAN (the source's SPIFFE id).
    #[serde(rename = "ClientCertURI")]
    pub client_cert_uri: String,
    /// The client certificate's serial (informational).
    #[serde(rename = "ClientCertSerial", default)]
    pub client_cert_serial: String,
}

/// `POST /v1/agent/connect/authorize` response, as Consul's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeResponse {
    /// Whether the connection is allowed.
    #[serde(rename = "Authorized")]
    pub authorized: bool,
    /// Why.
    #[serde(rename = "Reason")]
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn intention(
        id: &str,
        source: &str,
        destination: &str,
        action: IntentionAction,
    ) -> IntentionInput {
        IntentionInput {
            id: id.into(),
            source: source.into(),
            destination: destination.into(),
            action,
        }
    }

    use IntentionAction::{Allow, Deny};

    #[test]
    fn exact_beats_wildcard_and_default_applies_otherwise() {
        let set = [
            intention("a", "*", "db", Deny),
            intention("b", "web", "db", Allow),
            intention("c", "*", "*", Deny),
        ];
        let d = decide(&set, "web", "db", DefaultPolicy::Allow);
        assert!(d.allowed);
        assert_eq!(d.matched.as_deref(), Some("b"));
        let d = decide(&set, "api", "db", DefaultPolicy::Allow);
        assert!(!d.allowed);
        assert_eq!(d.matched.as_deref(), Some("a"));
        let d = decide(&set, "api", "cache", DefaultPolicy::Allow);
        assert_eq!(d.matched.as_deref(), Some("c"));
        let d = decide(&[], "api", "cache", DefaultPolicy::Deny);
        assert!(!d.allowed);
        assert!(d.reason.contains("default intention policy: deny"));
        // Wildcard source with exact destination beats exact source with wildcard destination.
        let set = [
            intention("s", "web", "*", Allow),
            intention("d", "*", "db", Deny),
        ];
        assert_eq!(
            decide(&set, "web", "db", DefaultPolicy::Allow)
                .matched
                .as_deref(),
            Some("d")
        );
    }

    #[test]
    fn deny_wins_a_tie() {
        let set = [
            intention("x", "web", "db", Allow),
            intention("y", "web", "db", Deny),
        ];
        assert!(!decide(&set, "web", "db", DefaultPolicy::Allow).allowed);
        let reversed = [set[1].clone(), set[0].clone()];
        assert!(!decide(&reversed, "web", "db", DefaultPolicy::Allow).allowed);
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![Just("*".to_owned()), "[a-c]".prop_map(|s| s)]
    }

    fn action() -> impl Strategy<Value = IntentionAction> {
        prop_oneof![Just(Allow), Just(Deny)]
    }

    fn intentions() -> impl Strategy<Value = Vec<IntentionInput>> {
        proptest::collection::vec((name(), name(), action()), 0..8).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (s, d, a))| intention(&i.to_string(), &s, &d, a))
                .collect()
        })
    }

    proptest! {
        /// The order intentions are listed in never changes the outcome.
        #[test]
        fn order_does_not_matter(set in intentions(), src in "[a-c]", dst in "[a-c]", deny_default: bool) {
            let default = if deny_default { DefaultPolicy::Deny } else { DefaultPolicy::Allow };
            let forward = decide(&set, &src, &dst, default).allowed;
            let mut reversed = set.clone();
            reversed.reverse();
            prop_assert_eq!(forward, decide(&reversed, &src, &dst, default).allowed);
        }

        /// The decision equals the action of the highest-precedence match (deny if any deny at
        /// that precedence), or the default when nothing matches: checked against a brute force.
        #[test]
        fn matches_the_specification(set in intentions(), src in "[a-c]", dst in "[a-c]", deny_default: bool) {
            let default = if deny_default { DefaultPolicy::Deny } else { DefaultPolicy::Allow };
            let matching: Vec<_> = set.iter()
                .filter(|i| (i.source == "*" || i.source == src) && (i.destination == "*" || i.destination == dst))
                .collect();
            let expected = match matching.iter().map(|i| precedence(&i.source, &i.destination)).max() {
                None => default == DefaultPolicy::Allow,
                Some(top) => !matching.iter().any(|i| precedence(&i.source, &i.destination) == top && i.action == Deny),
            };
            let decision = decide(&set, &src, &dst, default);
            prop_assert_eq!(decision.allowed, expected);
            prop_assert_eq!(decision.matched.is_none(), matching.is_empty());
        }

        /// Adding an exact deny for the pair always denies; adding an exact allow always allows
        /// unless an exact deny for the pair exists.
        #[test]
        fn an_exact_intention_decides(set in intentions(), src in "[a-c]", dst in "[a-c]") {
            let mut with_deny = set.clone();
            with_deny.push(intention("deny", &src, &dst, Deny));
            prop_assert!(!decide(&with_deny, &src, &dst, DefaultPolicy::Allow).allowed);
            let exact_deny = set.iter().any(|i| i.source == src && i.destination == dst && i.action == Deny);
            let mut with_allow = set.clone();
            with_allow.push(intention("allow", &src, &dst, Allow));
            prop_assert_eq!(decide(&with_allow, &src, &dst, DefaultPolicy::Deny).allowed, !exact_deny);
        }
    }
}
