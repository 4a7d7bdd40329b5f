//! Intentions → Envoy RBAC rules, enforced by Envoy itself on the inbound side: the network
//! RBAC filter at L4 (every new TCP connection) and the HTTP RBAC filter at L7 (every request,
//! configured per route through RDS so a change reaches open HTTP/2 connections at once).
//!
//! Why RBAC and not `ext_authz` against the agent: the decision stays inside Envoy (no extra
//! hop per connection or request, no dependency on the control plane being reachable: the last
//! rules stay in force, as the built-in sidecar keeps its last intentions), and the rules are
//! computed with the same pure [`decide`] the built-in sidecar and the API use, so both data
//! planes agree by construction.
//!
//! The rules are exact, not an approximation of precedence: every source service an intention
//! names is decided on its own with [`decide`], and every other source with the wildcard. When
//! other sources are allowed, the rule is a DENY listing the denied sources; otherwise an ALLOW
//! listing the allowed ones. Each policy is named after the deciding intention, so Envoy's deny
//! reason (`rbac_access_denied_matched_policy[...]` in access logs and response details, and
//! the `rbac.denied` statistics) says which intention denied.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use plexus_api::connect::{DefaultPolicy, IntentionInput, decide};

use super::regex_literal;
use crate::model::Inputs;

/// A source name no intention can name, standing for "any service not named".
const OTHER_SOURCE: &str = "*";

/// The RBAC rules for the proxy's service.
pub(super) fn rules(inputs: &Inputs) -> Rbac {
    let service = &inputs.proxy.service;
    let default = inputs
        .intentions
        .default_policy
        .unwrap_or(DefaultPolicy::Deny);
    let intentions: Vec<IntentionInput> = inputs
        .intentions
        .intentions
        .iter()
        .map(IntentionInput::from)
        .filter(|i| i.destination == *service || i.destination == OTHER_SOURCE)
        .collect();
    let named: BTreeSet<&str> = intentions
        .iter()
        .map(|i| i.source.as_str())
        .filter(|s| *s != OTHER_SOURCE)
        .collect();
    let others = decide(&intentions, OTHER_SOURCE, service, default);
    let mut policies = HashMap::new();
    for source in named {
        let decision = decide(&intentions, source, service, default);
        if decision.allowed == others.allowed {
            continue;
        }
        let verb = if decision.allowed { "allow" } else { "deny" };
        let name = match &decision.matched {
            Some(id) => format!("intention {id}: {verb} {source} => {service}"),
            None => format!("default: {verb} {source} => {service}"),
        };
        policies.insert(
            name,
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                principals: vec![source_principal(&inputs.roots.trust_domain, source)],
                ..Default::default()
            },
        );
    }
    Rbac {
        // Others allowed: deny the listed sources. Others denied: allow the listed ones.
        action: if others.allowed {
            rbac::Action::Deny as i32
        } else {
            rbac::Action::Allow as i32
        },
        policies,
        ..Default::default()
    }
}

/// A peer whose certificate names `source` in our trust domain, in any datacenter.
fn source_principal(trust_domain: &str, source: &str) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                        regex: format!(
                            "^spiffe://{}/ns/[^/]+/dc/[^/]+/svc/{}$",
                            regex_literal(trust_domain),
                            regex_literal(source)
                        ),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
            },
        )),
    }
}
