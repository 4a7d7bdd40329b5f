//! Consul's rule language, in HCL or JSON, into [`Rules`], every problem reported at once with
//! the line (HCL) or the key path (JSON) at fault.
//!
//! ```hcl
//! service "web" {
//!   policy     = "write"
//!   intentions = "read"
//! }
//! key_prefix "app/" { policy = "list" }
//! operator = "read"
//! ```
//!
//! The same in JSON: `{"service": {"web": {"policy": "write", "intentions": "read"}},
//! "key_prefix": {"app/": {"policy": "list"}}, "operator": "read"}`. Named rules are blocks with
//! one label (`service`, `service_prefix`, `node`, `node_prefix`, `key`, `key_prefix`, `agent`,
//! `agent_prefix`, `session`, `session_prefix`, `event`, `event_prefix`, `query`,
//! `query_prefix`); `acl`, `operator`, `mesh`, `keyring` and `peering` are attributes. `list`
//! is only for keys, `intentions` only inside service rules. HCL 1's one-line blocks
//! (`service "web" { policy = "write" intentions = "read" }`) are accepted, as in definitions.

use std::fmt;

use hcl_edit::Span;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{BlockLabel, Body, Structure};

use super::access::{Access, Resource};
use super::rules::{Rules, SegmentRule};

/// One problem in a policy's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The line (HCL), when known.
    pub line: Option<usize>,
    /// Where: `service "web".policy`, `operator`, `key_prefix`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a policy's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&texts.join("; "))
    }
}

/// The rule kind a block or key names, and whether it is the `_prefix` form.
fn kind(name: &str) -> Option<(Resource, bool)> {
    let (base, prefix) = match name.strip_suffix("_prefix") {
        Some(base) => (base, true),
        None => (name, false),
    };
    let resource = match base {
        "service" => Resource::Service,
        "node" => Resource::Node,
        "key" => Resource::Key,
        "agent" => Resource::Agent,
        "session" => Resource::Session,
        "event" => Resource::Event,
        "query" => Resource::Query,
        "acl" if !prefix => Resource::Acl,
        "operator" if !prefix => Resource::Operator,
        "mesh" if !prefix => Resource::Mesh,
        "keyring" if !prefix => Resource::Keyring,
        "peering" if !prefix => Resource::Peering,
        _ => return None,
    };
    Some((resource, prefix))
}

const KNOWN: &str = "service, service_prefix, node, node_prefix, key, key_prefix, agent, agent_prefix, session, session_prefix, event, event_prefix, query, query_prefix, acl, operator, mesh, keyring, peering";

/// Checks an access value for a resource (`list` only for keys; single-valued resources take
/// `read`, `write` or `deny`).
fn access_for(resource: Resource, text: &str) -> Result<Access, String> {
    let access = Access::parse(text).ok_or_else(|| {
        format!("invalid policy {text:?}: expected \"read\", \"write\", \"list\" or \"deny\"")
    })?;
    if access == Access::List && resource != Resource::Key {
        return Err(format!(
            "\"list\" is only valid for key rules, not {resource}"
        ));
    }
    Ok(access)
}

/// Parses rules written in HCL or JSON (a text starting with `{` is JSON). Empty text is a
/// policy with no rules.
pub fn parse_rules(text: &str) -> Result<Rules, RuleErrors> {
    if text.trim_start().starts_with('{') {
        parse_json(text)
    } else {
        parse_hcl(text)
    }
}

/// Parses rules in HCL.
pub fn parse_hcl(text: &str) -> Result<Rules, RuleErrors> {
    let (laid_out, line_map) = crate::definition::layout::relayout(text);
    let original_line = |offset: usize| {
        let line = laid_out[..offset.min(laid_out.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count();
        line_map.get(line).copied().unwrap_or(line + 1)
    };
    let body: Body = hcl_edit::parser::parse_body(&laid_out).map_err(|error| {
        let line = error.location().line();
        RuleErrors(vec![RuleError {
            line: Some(
                line_map
                    .get(line.saturating_sub(1))
                    .copied()
                    .unwrap_or(line),
            ),
            field: "rules".to_owned(),
            message: format!("not valid HCL: {}", error.message()),
        }])
    })?;
    let mut rules = Rules::default();
    let mut errors = Vec::new();
    for structure in body.iter() {
        let line = structure.span().map(|s| original_line(s.start));
        match structure {
            Structure::Attribute(attr) => {
                let key = attr.key.as_str();
                let fail = |message: String| RuleError {
                    line,
                    field: key.to_owned(),
                    message,
                };
                match kind(key) {
                    Some((resource, false)) if !resource.is_segmented() => {
                        match string_value(&attr.value) {
                            Some(text) => match access_for(resource, text) {
                                Ok(access) => {
                                    rules.singles.insert(resource, access);
                                }
                                Err(message) => errors.push(fail(message)),
                            },
                            None => errors.push(fail("expected a string".to_owned())),
                        }
                    }
                    Some(_) => errors.push(fail(format!(
                        "{key} rules are blocks with a name: {key} \"NAME\" {{ policy = \"read\" }}"
                    ))),
                    None => errors.push(fail(format!(
                        "unknown rule {key:?}; expected one of {KNOWN}"
                    ))),
                }
            }
            Structure::Block(block) => {
                let key = block.ident.as_str();
                let fail = |field: String, message: String| RuleError {
                    line,
                    field,
                    message,
                };
                let Some((resource, prefix)) = kind(key) else {
                    errors.push(fail(
                        key.to_owned(),
                        format!("unknown rule {key:?}; expected one of {KNOWN}"),
                    ));
                    continue;
                };
                if !resource.is_segmented() {
                    errors.push(fail(
                        key.to_owned(),
                        format!("{key} is an attribute: {key} = \"read\""),
                    ));
                    continue;
                }
                let name = match block.labels.as_slice() {
                    [BlockLabel::String(name)] => name.as_str().to_owned(),
                    [BlockLabel::Ident(name)] => name.as_str().to_owned(),
                    _ => {
                        errors.push(fail(
                            key.to_owned(),
                            format!(
                                "a {key} block takes exactly one name: {key} \"NAME\" {{ ... }}"
                            ),
                        ));
                        continue;
                    }
                };
                let field = format!("{key} {name:?}");
                let mut policy = None;
                let mut policy_written = false;
                let mut intentions = None;
                for inner in block.body.iter() {
                    let inner_line = inner.span().map(|s| original_line(s.start));
                    let Structure::Attribute(attr) = inner else {
                        errors.push(RuleError {
                            line: inner_line,
                            field: field.clone(),
                            message: "nested blocks are not allowed in a rule".to_owned(),
                        });
                        continue;
                    };
                    let name = attr.key.as_str();
                    policy_written |= name == "policy";
                    let at = RuleError {
                        line: inner_line,
                        field: format!("{field}.{name}"),
                        message: String::new(),
                    };
                    let Some(text) = string_value(&attr.value) else {
                        errors.push(RuleError {
                            message: "expected a string".to_owned(),
                            ..at
                        });
                        continue;
                    };
                    match name {
                        "policy" => match access_for(resource, text) {
                            Ok(access) => policy = Some(access),
                            Err(message) => errors.push(RuleError { message, ..at }),
                        },
                        "intentions" if resource == Resource::Service => {
                            match access_for(resource, text) {
                                Ok(access) => intentions = Some(access),
                                Err(message) => errors.push(RuleError { message, ..at }),
                            }
                        }
                        "intentions" => errors.push(RuleError {
                            message: "intentions are only valid in service rules".to_owned(),
                            ..at
                        }),
                        other => errors.push(RuleError {
                            message: format!(
                                "unknown field {other:?}; expected policy{}",
                                if resource == Resource::Service {
                                    " or intentions"
                                } else {
                                    ""
                                }
                            ),
                            ..at
                        }),
                    }
                }
                match policy {
                    Some(access) => rules.segments.push(SegmentRule {
                        resource,
                        name,
                        prefix,
                        access,
                        intentions,
                    }),
                    None if policy_written => {}
                    None => errors.push(fail(field, "policy is required".to_owned())),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(RuleErrors(errors))
    }
}

fn string_value(value: &Expression) -> Option<&str> {
    match value {
        Expression::String(text) => Some(text.as_str()),
        _ => None,
    }
}

/// Parses rules in JSON: `{"service": {"web": {"policy": "write"}}, "operator": "read"}` (a
/// list of such objects is accepted where a map is expected, as HCL's JSON form allows).
pub fn parse_json(text: &str) -> Result<Rules, RuleErrors> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| {
        RuleErrors(vec![RuleError {
            line: Some(error.line()),
            field: "rules".to_owned(),
            message: format!("not valid JSON: {error}"),
        }])
    })?;
    let serde_json::Value::Object(top) = value else {
        return Err(RuleErrors(vec![RuleError {
            line: None,
            field: "rules".to_owned(),
            message: "expected a JSON object".to_owned(),
        }]));
    };
    let mut rules = Rules::default();
    let mut errors = Vec::new();
    let fail = |field: String, message: String| RuleError {
        line: None,
        field,
        message,
    };
    for (key, value) in &top {
        let Some((resource, prefix)) = kind(key) else {
            errors.push(fail(
                key.clone(),
                format!("unknown rule {key:?}; expected one of {KNOWN}"),
            ));
            continue;
        };
        if !resource.is_segmented() {
            match value.as_str() {
                Some(text) => match access_for(resource, text) {
                    Ok(access) => {
                        rules.singles.insert(resource, access);
                    }
                    Err(message) => errors.push(fail(key.clone(), message)),
                },
                None => errors.push(fail(key.clone(), "expected a string".to_owned())),
            }
            continue;
        }
        let maps: Vec<&serde_json::Map<String, serde_json::Value>> = match value {
            serde_json::Value::Object(map) => vec![map],
            serde_json::Value::Array(items) => items.iter().filter_map(|i| i.as_object()).collect(),
            _ => {
                errors.push(fail(key.clone(), format!("expected an object of names: {{\"{key}\": {{\"NAME\": {{\"policy\": \"read\"}}}}}}")));
                continue;
            }
        };
        for map in maps {
            for (name, rule) in map {
                let field = format!("{key}.{name}");
                let Some(rule) = rule.as_object() else {
                    errors.push(fail(field, "expected an object with \"policy\"".to_owned()));
                    continue;
                };
                let mut policy = None;
                let mut policy_written = false;
                let mut intentions = None;
                for (attr, value) in rule {
                    policy_written |= attr == "policy";
                    let at = format!("{field}.{attr}");
                    let Some(text) = value.as_str() else {
                        errors.push(fail(at, "expected a string".to_owned()));
                        continue;
                    };
                    match attr.as_str() {
                        "policy" => match access_for(resource, text) {
                            Ok(a) => policy = Some(a),
                            Err(m) => errors.push(fail(at, m)),
                        },
                        "intentions" if resource == Resource::Service => {
                            match access_for(resource, text) {
                                Ok(a) => intentions = Some(a),
                                Err(m) => errors.push(fail(at, m)),
                            }
                        }
                        "intentions" => errors.push(fail(
                            at,
                            "intentions are only valid in service rules".to_owned(),
                        )),
                        other => errors.push(fail(at, format!("unknown field {other:?}"))),
                    }
                }
                match policy {
                    Some(access) => rules.segments.push(SegmentRule {
                        resource,
                        name: name.clone(),
                        prefix,
                        access,
                        intentions,
                    }),
                    None if policy_written => {}
                    None => errors.push(fail(field, "policy is required".to_owned())),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(RuleErrors(errors))
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
