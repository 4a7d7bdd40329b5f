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
//! listing the allowed ones. An L7 intention (Consul's permissions) becomes the requests it
//! allows, as a permission tree: an allow permission's criteria with every deny listed before it
//! negated, or'ed, and (default allow) "no permission matches"; first match wins as in the
//! built-in sidecar. When the wildcard source is governed by one, the others' policy names every
//! named source in a `not_id`. The network filter cannot see requests: there an L7 intention
//! denies the connection, as [`decide`] does. Each policy is named after the deciding intention, so Envoy's deny
//! reason (`rbac_access_denied_matched_policy[...]` in access logs and response details, and
//! the `rbac.denied` statistics) says which intention denied.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher, string_matcher,
};
use plexus_api::connect::{
    DefaultPolicy, IntentionAction, IntentionHttpPermission, IntentionInput, Verdict, decide,
    verdict,
};

use super::{regex_literal, routes};
use crate::model::Inputs;

/// A source name no intention can name, standing for "any service not named".
const OTHER_SOURCE: &str = "*";

/// What the intentions make of one source's requests.
enum Rule<'a> {
    /// All alike: allowed or not, and the policy name saying why.
    All(bool, String),
    /// An L7 intention's permissions, then the default (`true`: allow).
    Permissions(&'a IntentionInput, bool),
}

impl Rule<'_> {
    fn all(&self) -> Option<bool> {
        match self {
            Rule::All(allowed, _) => Some(*allowed),
            Rule::Permissions(..) => None,
        }
    }

    fn name(&self) -> String {
        match self {
            Rule::All(_, name) => name.clone(),
            Rule::Permissions(intention, _) => format!(
                "intention {}: L7 {} => {}",
                intention.id, intention.source, intention.destination
            ),
        }
    }

    /// The requests this rule allows, as an RBAC permission.
    fn allowed(&self) -> Permission {
        match self {
            Rule::All(true, _) => any_request(),
            Rule::All(false, _) => not(any_request()),
            Rule::Permissions(intention, otherwise) => {
                // Allowed: an allow permission matches and no deny listed before it does, or
                // (default allow) no permission matches at all.
                let mut ways = Vec::new();
                let mut denied_before = Vec::new();
                let mut matched_before = Vec::new();
                for permission in &intention.permissions {
                    let matches = request_matches(permission.http.as_ref());
                    if permission.action == IntentionAction::Allow {
                        let mut all = denied_before.clone();
                        all.push(matches.clone());
                        ways.push(and(all));
                    } else {
                        denied_before.push(not(matches.clone()));
                    }
                    matched_before.push(not(matches));
                }
                if *otherwise {
                    ways.push(and(matched_before));
                }
                match ways.len() {
                    0 => not(any_request()),
                    1 => ways.remove(0),
                    _ => Permission {
                        rule: Some(permission::Rule::OrRules(permission::Set { rules: ways })),
                    },
                }
            }
        }
    }
}

fn any_request() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn not(p: Permission) -> Permission {
    Permission {
        rule: Some(permission::Rule::NotRule(Box::new(p))),
    }
}

fn and(mut rules: Vec<Permission>) -> Permission {
    match rules.len() {
        0 => any_request(),
        1 => rules.remove(0),
        _ => Permission {
            rule: Some(permission::Rule::AndRules(permission::Set { rules })),
        },
    }
}

/// A permission's HTTP criteria: path (RBAC's `url_path`, without the query), headers, method.
fn request_matches(http: Option<&IntentionHttpPermission>) -> Permission {
    let Some(http) = http else {
        // Validated by the control plane: a permission without criteria matches nothing.
        return not(any_request());
    };
    let criteria = http.request_match();
    let mut all: Vec<Permission> = Vec::new();
    if let Some(path) = &criteria.path {
        all.push(Permission {
            rule: Some(permission::Rule::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(routes::path_matcher(path))),
            })),
        });
    }
    all.extend(
        routes::header_matchers(&criteria)
            .into_iter()
            .map(|header| Permission {
                rule: Some(permission::Rule::Header(header)),
            }),
    );
    and(all)
}

/// What the intentions make of `source`'s requests to `service`; without `http` (the network
/// filter) an L7 intention denies, as [`decide`] does.
fn rule_of<'a>(
    intentions: &'a [IntentionInput],
    source: &str,
    service: &str,
    default: DefaultPolicy,
    http: bool,
) -> Rule<'a> {
    let decision = if http {
        match verdict(intentions, source, service, default) {
            Verdict::Permissions(intention) => {
                return Rule::Permissions(intention, default == DefaultPolicy::Allow);
            }
            Verdict::Decided(decision) => decision,
        }
    } else {
        decide(intentions, source, service, default)
    };
    let verb = if decision.allowed { "allow" } else { "deny" };
    let name = match &decision.matched {
        Some(id) => format!("intention {id}: {verb} {source} => {service}"),
        None => format!("default: {verb} {source} => {service}"),
    };
    Rule::All(decision.allowed, name)
}

/// The RBAC rules for the proxy's service: for the HTTP filter (`http`, L7 intentions' permissions
/// apply) or the network filter (an L7 intention denies the connection).
pub(super) fn rules(inputs: &Inputs, http: bool) -> Rbac {
    let service = &inputs.proxy.service;
    let trust_domain = &inputs.roots.trust_domain;
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
    let others = rule_of(&intentions, OTHER_SOURCE, service, default, http);
    let mut policies = HashMap::new();
    let action = match others.all() {
        // Others allowed: deny the listed sources' denied requests.
        Some(true) => {
            for source in &named {
                let rule = rule_of(&intentions, source, service, default, http);
                if rule.all() != Some(true) {
                    policies.insert(
                        rule.name(),
                        policy(not_allowed(&rule), source_principal(trust_domain, source)),
                    );
                }
            }
            rbac::Action::Deny
        }
        // Others denied, or decided request by request: allow what each source may do.
        others_all => {
            for source in &named {
                let rule = rule_of(&intentions, source, service, default, http);
                if rule.all() != Some(false) {
                    policies.insert(
                        rule.name(),
                        policy(rule.allowed(), source_principal(trust_domain, source)),
                    );
                }
            }
            if others_all.is_none() {
                let not_named = named
                    .iter()
                    .map(|source| Principal {
                        identifier: Some(principal::Identifier::NotId(Box::new(source_principal(
                            trust_domain,
                            source,
                        )))),
                    })
                    .collect::<Vec<_>>();
                let principal = if not_named.is_empty() {
                    Principal {
                        identifier: Some(principal::Identifier::Any(true)),
                    }
                } else {
                    Principal {
                        identifier: Some(principal::Identifier::AndIds(principal::Set {
                            ids: not_named,
                        })),
                    }
                };
                policies.insert(others.name(), policy(others.allowed(), principal));
            }
            rbac::Action::Allow
        }
    };
    Rbac {
        action: action as i32,
        policies,
        ..Default::default()
    }
}

/// The requests `rule` does not allow (an L4 deny: all of them, as before L7 intentions).
fn not_allowed(rule: &Rule<'_>) -> Permission {
    match rule {
        Rule::All(false, _) => any_request(),
        other => not(other.allowed()),
    }
}

fn policy(permission: Permission, principal: Principal) -> Policy {
    Policy {
        permissions: vec![permission],
        principals: vec![principal],
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

#[cfg(test)]
#[path = "rbac_tests.rs"]
mod tests;
