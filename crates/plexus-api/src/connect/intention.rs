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

/// What the default policy decides, as a [`Decision`].
pub fn by_default(default: DefaultPolicy) -> Decision {
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
    match governing(intentions, source, destination) {
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn intention(
        id: &str,
        source: &str,
        destination: &str,
        action: IntentionAction,
    ) -> IntentionInput {
        IntentionInput::l4(id, source, destination, action)
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

    fn l7(id: &str, source: &str, destination: &str) -> IntentionInput {
        IntentionInput {
            action: None,
            permissions: vec![IntentionPermission {
                action: Allow,
                http: Some(IntentionHttpPermission {
                    path_prefix: "/v2".into(),
                    ..Default::default()
                }),
            }],
            ..IntentionInput::l4(id, source, destination, Allow)
        }
    }

    #[test]
    fn an_l7_intention_governs_by_precedence_and_denies_without_a_request() {
        let set = [l7("l7", "web", "db"), intention("all", "*", "db", Allow)];
        let winner = governing(&set, "web", "db").expect("a match");
        assert_eq!(winner.id, "l7");
        let d = decide(&set, "web", "db", DefaultPolicy::Allow);
        assert!(!d.allowed, "a connection cannot satisfy permissions");
        assert_eq!(d.matched.as_deref(), Some("l7"));
        assert!(d.reason.contains("Matched L7 intention"), "{}", d.reason);
        // Other sources still get the wildcard's L4 allow.
        assert!(decide(&set, "api", "db", DefaultPolicy::Deny).allowed);
        // A more precise L4 intention beats a wildcard L7 one.
        let set = [l7("l7", "*", "db"), intention("exact", "web", "db", Allow)];
        assert_eq!(
            governing(&set, "web", "db").map(|i| i.id.as_str()),
            Some("exact")
        );
        assert_eq!(
            governing(&set, "api", "db").map(|i| i.id.as_str()),
            Some("l7")
        );
    }

    #[test]
    fn action_reads_as_consul_clients_write_it() {
        let read = |action: serde_json::Value| {
            serde_json::from_value::<Intention>(serde_json::json!({
                "SourceName": "web", "DestinationName": "db", "Action": action,
            }))
        };
        assert_eq!(read("allow".into()).unwrap().action, Some(Allow));
        assert_eq!(read("".into()).unwrap().action, None);
        assert_eq!(read(serde_json::Value::Null).unwrap().action, None);
        let error = read("permit".into()).unwrap_err().to_string();
        assert!(error.contains("\"permit\""), "{error}");
        // Written back without an Action when it has none.
        let mut l7 = read("".into()).unwrap();
        l7.permissions = vec![IntentionPermission {
            action: Deny,
            http: Some(IntentionHttpPermission {
                methods: vec!["DELETE".into()],
                ..Default::default()
            }),
        }];
        let json = serde_json::to_value(&l7).unwrap();
        assert!(json.get("Action").is_none(), "{json}");
        assert_eq!(json["Permissions"][0]["HTTP"]["Methods"][0], "DELETE");
        assert_eq!(serde_json::from_value::<Intention>(json).unwrap(), l7);
    }

    #[test]
    fn invalid_rules_name_the_field() {
        let http = |h: IntentionHttpPermission| IntentionPermission {
            action: Allow,
            http: Some(h),
        };
        let header = |h: IntentionHttpHeaderPermission| IntentionHttpPermission {
            header: vec![h],
            ..Default::default()
        };
        let cases: Vec<(
            Option<IntentionAction>,
            Vec<IntentionPermission>,
            &str,
            &str,
        )> = vec![
            (None, vec![], "Action", "required"),
            (
                Some(Allow),
                vec![http(IntentionHttpPermission {
                    path_exact: "/a".into(),
                    ..Default::default()
                })],
                "Action",
                "omitted",
            ),
            (
                None,
                vec![IntentionPermission {
                    action: Allow,
                    http: None,
                }],
                "Permissions[0].HTTP",
                "required",
            ),
            (
                None,
                vec![http(IntentionHttpPermission::default())],
                "Permissions[0].HTTP",
                "path, a header or a method",
            ),
            (
                None,
                vec![http(IntentionHttpPermission {
                    path_exact: "/a".into(),
                    path_prefix: "/b".into(),
                    ..Default::default()
                })],
                "Permissions[0].HTTP.PathPrefix",
                "at most one",
            ),
            (
                None,
                vec![http(IntentionHttpPermission {
                    path_prefix: "v2".into(),
                    ..Default::default()
                })],
                "Permissions[0].HTTP.PathPrefix",
                "begin with '/'",
            ),
            (
                None,
                vec![http(IntentionHttpPermission {
                    path_regex: "(".into(),
                    ..Default::default()
                })],
                "Permissions[0].HTTP.PathRegex",
                "invalid regex",
            ),
            (
                None,
                vec![http(header(IntentionHttpHeaderPermission {
                    name: "x y".into(),
                    present: true,
                    ..Default::default()
                }))],
                "Permissions[0].HTTP.Header[0].Name",
                "not a header name",
            ),
            (
                None,
                vec![http(header(IntentionHttpHeaderPermission {
                    name: "x".into(),
                    ..Default::default()
                }))],
                "Permissions[0].HTTP.Header[0]",
                "exactly one",
            ),
            (
                None,
                vec![http(header(IntentionHttpHeaderPermission {
                    name: "x".into(),
                    exact: "a".into(),
                    prefix: "b".into(),
                    ..Default::default()
                }))],
                "Permissions[0].HTTP.Header[0]",
                "exactly one",
            ),
            (
                None,
                vec![http(header(IntentionHttpHeaderPermission {
                    name: "x".into(),
                    regex: "[".into(),
                    ..Default::default()
                }))],
                "Permissions[0].HTTP.Header[0].Regex",
                "invalid regex",
            ),
            (
                None,
                vec![
                    http(IntentionHttpPermission {
                        path_exact: "/".into(),
                        ..Default::default()
                    }),
                    http(IntentionHttpPermission {
                        methods: vec!["get".into()],
                        ..Default::default()
                    }),
                ],
                "Permissions[1].HTTP.Methods[0]",
                "is not one of",
            ),
            (
                None,
                vec![http(IntentionHttpPermission {
                    methods: vec!["GET".into(), "GET".into()],
                    ..Default::default()
                })],
                "Permissions[0].HTTP.Methods[1]",
                "twice",
            ),
        ];
        for (action, permissions, field, words) in cases {
            let (got_field, message) = validate_rule(action, &permissions).unwrap_err();
            assert_eq!(got_field, field, "{message}");
            assert!(message.contains(words), "{field}: {message}");
        }
        let contains = IntentionHttpHeaderPermission {
            name: "x".into(),
            contains: "a".into(),
            ignore_case: true,
            ..Default::default()
        };
        validate_rule(None, &[http(header(contains.clone()))]).unwrap();
        let m = header(contains).request_match();
        assert_eq!(m.headers[0].value, ValueMatch::Contains("a".into()));
        assert!(m.headers[0].ignore_case);
        let two = IntentionHttpHeaderPermission {
            name: "x".into(),
            contains: "a".into(),
            suffix: "b".into(),
            ..Default::default()
        };
        let (field, _) = validate_rule(None, &[http(header(two))]).unwrap_err();
        assert_eq!(field, "Permissions[0].HTTP.Header[0]");
        let good = http(IntentionHttpPermission {
            path_regex: "/v[0-9]+/.*".into(),
            header: vec![IntentionHttpHeaderPermission {
                name: "X-Role".into(),
                exact: "admin".into(),
                invert: true,
                ..Default::default()
            }],
            methods: vec!["GET".into(), "HEAD".into()],
            ..Default::default()
        });
        validate_rule(None, std::slice::from_ref(&good)).unwrap();
        let m = good.http.unwrap().request_match();
        assert_eq!(m.path, Some(PathMatch::Regex("/v[0-9]+/.*".into())));
        assert_eq!(m.headers[0].name, "x-role");
        assert_eq!(m.headers[0].value, ValueMatch::Exact("admin".into()));
        assert!(m.headers[0].invert);
        assert_eq!(m.methods, ["GET", "HEAD"]);
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
                Some(top) => !matching.iter().any(|i| precedence(&i.source, &i.destination) == top && i.action == Some(Deny)),
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
            let exact_deny = set.iter().any(|i| i.source == src && i.destination == dst && i.action == Some(Deny));
            let mut with_allow = set.clone();
            with_allow.push(intention("allow", &src, &dst, Allow));
            prop_assert_eq!(decide(&with_allow, &src, &dst, DefaultPolicy::Deny).allowed, !exact_deny);
        }
    }
}
