//! Intentions: who may open a connection to whom, in Consul's shape, and the pure functions that
//! decide ([`governing`], [`decide`]).
//!
//! Precedence (Consul's, without namespaces): exact source and exact destination (9) beat a
//! wildcard source with an exact destination (8), which beat an exact source with a wildcard
//! destination (6), which beat `* → *` (5). Among matching intentions of the same precedence a
//! deny wins. When nothing matches, the default policy decides.
//!
//! An intention is either L4 (an `Action`) or L7 (`Permissions`, Consul's application-aware
//! intentions): the first permission whose HTTP criteria match a request decides it, and a request
//! no permission matches gets the default policy. Only a data plane that sees the request can
//! apply permissions; a decision without one (a TCP connection, `/v1/connect/intentions/check`,
//! `/v1/agent/connect/authorize`) denies when an L7 intention governs the pair.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config_entry::chain::{HeaderCriterion, PathMatch, RequestMatch, ValueMatch};

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
    /// Allow or deny; absent (or `""`, as Consul's clients send it) for an L7 intention.
    #[serde(
        rename = "Action",
        default,
        deserialize_with = "optional_action",
        skip_serializing_if = "Option::is_none"
    )]
    pub action: Option<IntentionAction>,
    /// L7 permissions, first match decides (instead of `Action`).
    #[serde(rename = "Permissions", default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<IntentionPermission>,
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

/// `Action` as Consul's clients write it: `"allow"`, `"deny"`, or `""`/`null`/absent for none.
pub(crate) fn optional_action<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<IntentionAction>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("") => Ok(None),
        Some("allow") => Ok(Some(IntentionAction::Allow)),
        Some("deny") => Ok(Some(IntentionAction::Deny)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "Action must be \"allow\" or \"deny\", not {other:?}"
        ))),
    }
}

/// One L7 permission: its `Action` applies to a request its `HTTP` criteria match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentionPermission {
    /// Allow or deny.
    #[serde(rename = "Action")]
    pub action: IntentionAction,
    /// The request criteria (required; absent is reported by validation, naming it).
    #[serde(rename = "HTTP", default, skip_serializing_if = "Option::is_none")]
    pub http: Option<IntentionHttpPermission>,
}

/// A permission's HTTP criteria: all given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentionHttpPermission {
    /// The path (without the query) equals this.
    #[serde(
        rename = "PathExact",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub path_exact: String,
    /// The path starts with this.
    #[serde(
        rename = "PathPrefix",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub path_prefix: String,
    /// The whole path matches this regular expression.
    #[serde(
        rename = "PathRegex",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub path_regex: String,
    /// Header criteria.
    #[serde(rename = "Header", default, skip_serializing_if = "Vec::is_empty")]
    pub header: Vec<IntentionHttpHeaderPermission>,
    /// The method is one of these (uppercase).
    #[serde(rename = "Methods", default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// A header criterion of a permission: exactly one of `Present`, `Exact`, `Prefix`, `Suffix`,
/// `Contains` and `Regex`, possibly inverted, possibly without regard to case (Consul 1.16's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentionHttpHeaderPermission {
    /// Header name (any case).
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Present with any value.
    #[serde(rename = "Present", default, skip_serializing_if = "is_false")]
    pub present: bool,
    /// Equal.
    #[serde(rename = "Exact", default, skip_serializing_if = "String::is_empty")]
    pub exact: String,
    /// Starts with.
    #[serde(rename = "Prefix", default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Ends with.
    #[serde(rename = "Suffix", default, skip_serializing_if = "String::is_empty")]
    pub suffix: String,
    /// Contains.
    #[serde(rename = "Contains", default, skip_serializing_if = "String::is_empty")]
    pub contains: String,
    /// The whole value matches this regular expression.
    #[serde(rename = "Regex", default, skip_serializing_if = "String::is_empty")]
    pub regex: String,
    /// Negate the test.
    #[serde(rename = "Invert", default, skip_serializing_if = "is_false")]
    pub invert: bool,
    /// Compare without regard to ASCII case.
    #[serde(rename = "IgnoreCase", default, skip_serializing_if = "is_false")]
    pub ignore_case: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The methods a permission may name.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

impl IntentionHttpPermission {
    /// The criteria as a route matcher's (the sidecar and the xDS translation match them as
    /// they match routes). Only valid criteria (see [`validate_rule`]) give a faithful matcher.
    pub fn request_match(&self) -> RequestMatch {
        let path = if !self.path_exact.is_empty() {
            Some(PathMatch::Exact(self.path_exact.clone()))
        } else if !self.path_prefix.is_empty() {
            Some(PathMatch::Prefix(self.path_prefix.clone()))
        } else if !self.path_regex.is_empty() {
            Some(PathMatch::Regex(self.path_regex.clone()))
        } else {
            None
        };
        let headers = self
            .header
            .iter()
            .map(|h| HeaderCriterion {
                name: h.name.to_ascii_lowercase(),
                value: if !h.exact.is_empty() {
                    ValueMatch::Exact(h.exact.clone())
                } else if !h.prefix.is_empty() {
                    ValueMatch::Prefix(h.prefix.clone())
                } else if !h.suffix.is_empty() {
                    ValueMatch::Suffix(h.suffix.clone())
                } else if !h.contains.is_empty() {
                    ValueMatch::Contains(h.contains.clone())
                } else if !h.regex.is_empty() {
                    ValueMatch::Regex(h.regex.clone())
                } else {
                    ValueMatch::Present
                },
                invert: h.invert,
                ignore_case: h.ignore_case,
            })
            .collect();
        RequestMatch {
            path,
            headers,
            query: Vec::new(),
            methods: self.methods.clone(),
        }
    }
}

/// Checks an intention's rule: exactly one of `Action` and `Permissions`, and each permission's
/// criteria. The error names the field (`Permissions[1].HTTP.Header[0].Regex`) and the cause.
pub fn validate_rule(
    action: Option<IntentionAction>,
    permissions: &[IntentionPermission],
) -> Result<(), (String, String)> {
    let fail = |field: String, message: String| Err((field, message));
    match (action, permissions.is_empty()) {
        (Some(_), false) => {
            return fail(
                "Action".into(),
                "Action must be omitted when Permissions are given (an intention is either L4 \
                 or L7)"
                    .into(),
            );
        }
        (None, true) => {
            return fail(
                "Action".into(),
                "Action is required (\"allow\" or \"deny\") unless Permissions are given".into(),
            );
        }
        _ => {}
    }
    for (i, permission) in permissions.iter().enumerate() {
        let at = format!("Permissions[{i}].HTTP");
        let Some(http) = &permission.http else {
            return fail(at.clone(), format!("{at} is required"));
        };
        let paths = [
            ("PathExact", &http.path_exact),
            ("PathPrefix", &http.path_prefix),
            ("PathRegex", &http.path_regex),
        ];
        let given: Vec<&str> = paths
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, _)| *n)
            .collect();
        if given.len() > 1 {
            return fail(
                format!("{at}.{}", given[1]),
                format!("{at}: at most one of PathExact, PathPrefix and PathRegex, not {given:?}"),
            );
        }
        for (name, value) in &paths[..2] {
            if !value.is_empty() && !value.starts_with('/') {
                return fail(
                    format!("{at}.{name}"),
                    format!("{at}.{name} {value:?} must begin with '/'"),
                );
            }
        }
        if let Err(e) = regex_valid(&http.path_regex) {
            return fail(
                format!("{at}.PathRegex"),
                format!("{at}.PathRegex: invalid regex: {e}"),
            );
        }
        if given.is_empty() && http.header.is_empty() && http.methods.is_empty() {
            return fail(
                at.clone(),
                format!("{at} must test a path, a header or a method"),
            );
        }
        for (j, header) in http.header.iter().enumerate() {
            let at = format!("{at}.Header[{j}]");
            if header.name.is_empty()
                || !header
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:".contains(&b))
            {
                return fail(
                    format!("{at}.Name"),
                    format!("{at}.Name {:?} is not a header name", header.name),
                );
            }
            let tests = usize::from(header.present)
                + [
                    &header.exact,
                    &header.prefix,
                    &header.suffix,
                    &header.contains,
                    &header.regex,
                ]
                .iter()
                .filter(|v| !v.is_empty())
                .count();
            if tests != 1 {
                return fail(
                    at.clone(),
                    format!(
                        "{at} must set exactly one of Present, Exact, Prefix, Suffix, Contains and Regex"
                    ),
                );
            }
            if let Err(e) = regex_valid(&header.regex) {
                return fail(
                    format!("{at}.Regex"),
                    format!("{at}.Regex: invalid regex: {e}"),
                );
            }
        }
        for (j, method) in http.methods.iter().enumerate() {
            if !METHODS.contains(&method.as_str()) {
                return fail(
                    format!("{at}.Methods[{j}]"),
                    format!(
                        "{at}.Methods[{j}] {method:?} is not one of {}",
                        METHODS.join(", ")
                    ),
                );
            }
            if http.methods[..j].contains(method) {
                return fail(
                    format!("{at}.Methods[{j}]"),
                    format!("{at}.Methods lists {method:?} twice"),
                );
            }
        }
    }
    Ok(())
}

fn regex_valid(re: &str) -> Result<(), regex::Error> {
    if re.is_empty() {
        return Ok(());
    }
    regex::Regex::new(re).map(|_| ())
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
    /// Allow or deny; `None` for an L7 intention.
    pub action: Option<IntentionAction>,
    /// L7 permissions (empty for an L4 intention).
    pub permissions: Vec<IntentionPermission>,
}

impl IntentionInput {
    /// An L4 intention (tests and tools).
    pub fn l4(id: &str, source: &str, destination: &str, action: IntentionAction) -> Self {
        Self {
            id: id.to_owned(),
            source: source.to_owned(),
            destination: destination.to_owned(),
            action: Some(action),
            permissions: Vec::new(),
        }
    }

    fn denies(&self) -> bool {
        self.action == Some(IntentionAction::Deny)
    }
}

impl From<&Intention> for IntentionInput {
    fn from(intention: &Intention) -> Self {
        Self {
            id: intention.id.clone(),
            source: intention.source_name.clone(),
            destination: intention.destination_name.clone(),
            action: intention.action,
            permissions: intention.permissions.clone(),
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

/// The intention that governs `source` → `destination`: the matching one of highest precedence
/// (an L4 deny wins a tie); `None` when none matches and the default policy decides.
pub fn governing<'a>(
    intentions: impl IntoIterator<Item = &'a IntentionInput>,
    source: &str,
    destination: &str,
) -> Option<&'a IntentionInput> {
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
                rank > best_rank || (rank == best_rank && intention.denies() && !current.denies())
            }
        };
        if better {
            best = Some((rank, intention));
        }
    }
    best.map(|(_, intention)| intention)
}

/// What decides the requests of `source` to `destination` for a data plane that sees them: one
/// [`Decision`] for every request (an L4 intention, or the default policy), or the permissions of
/// the governing L7 intention.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Every request alike.
    Decided(Decision),
    /// Each request by this intention's permissions (first match), else the default policy.
    Permissions(&'a IntentionInput),
}

/// The [`Verdict`] for `source` → `destination`, finding the governing intention once.
pub fn verdict<'a>(
    intentions: impl IntoIterator<Item = &'a IntentionInput>,
    source: &str,
    destination: &str,
    default: DefaultPolicy,
) -> Verdict<'a> {
    match governing(intentions, source, destination) {
        Some(intention) if intention.action.is_none() => Verdict::Permissions(intention),
        governing => Verdict::Decided(decision_of(governing, default)),
    }
}

/// What the default policy decides, as a [`Decision`].
fn by_default(default: DefaultPolicy) -> Decision {
    Decision {
        allowed: default == DefaultPolicy::Allow,
        matched: None,
        reason: format!("Default behavior configured by default intention policy: {default}"),
    }
}

/// Decides whether `source` may connect to `destination` without seeing a request: the
/// governing intention's action, a deny when it is an L7 intention (its permissions need the
/// request), the default policy when none governs.
pub fn decide<'a>(
    intentions: impl IntoIterator<Item = &'a IntentionInput>,
    source: &str,
    destination: &str,
    default: DefaultPolicy,
) -> Decision {
    decision_of(governing(intentions, source, destination), default)
}

/// The decision the `governing` intention (or, with none, `default`) makes without a request.
fn decision_of(governing: Option<&IntentionInput>, default: DefaultPolicy) -> Decision {
    match governing {
        Some(intention) => match intention.action {
            Some(action) => Decision {
                allowed: action == IntentionAction::Allow,
                matched: Some(intention.id.clone()),
                reason: format!(
                    "Matched L4 intention: {action} {} => {}",
                    intention.source, intention.destination
                ),
            },
            None => Decision {
                allowed: false,
                matched: Some(intention.id.clone()),
                reason: format!(
                    "Matched L7 intention: {} => {}; its permissions decide HTTP requests only, so \
                     a connection without one is denied",
                    intention.source, intention.destination
                ),
            },
        },
        None => by_default(default),
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
#[path = "intention_tests.rs"]
mod tests;
