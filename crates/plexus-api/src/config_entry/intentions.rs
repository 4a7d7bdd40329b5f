//! `Kind = "service-intentions"`: every intention whose destination is `Name`, as one entry
//! (Consul's shape since 1.9). It is a view of the intentions, not stored apart: writing it
//! replaces the destination's intentions, reading it gathers them, and an intention written
//! through `/v1/connect/intentions` shows up in it (with its `LegacyID`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::connect::intention::{
    Intention, IntentionAction, IntentionPermission, WILDCARD, precedence, validate_rule,
};

use super::validate::Errs;

/// `service-intentions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceIntentions {
    /// Always `service-intentions`.
    #[serde(rename = "Kind", alias = "kind")]
    pub kind: String,
    /// The destination service, or `*` for every destination.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// Free-form metadata (kept on each intention, under the entry's keys).
    #[serde(
        rename = "Meta",
        alias = "meta",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub meta: BTreeMap<String, String>,
    /// One per source service (or `*`).
    #[serde(rename = "Sources", alias = "sources", default)]
    pub sources: Vec<SourceIntention>,
    /// Store revision: the oldest of the destination's intentions.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// Store revision: the newest of the destination's intentions (what `?cas=` compares).
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

/// One source of a [`ServiceIntentions`]: an L4 `Action` or L7 `Permissions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceIntention {
    /// The source service, or `*`.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// `allow` or `deny`; absent with `Permissions`.
    #[serde(
        rename = "Action",
        alias = "action",
        default,
        deserialize_with = "crate::connect::intention::optional_action",
        skip_serializing_if = "Option::is_none"
    )]
    pub action: Option<IntentionAction>,
    /// L7 permissions, first match decides.
    #[serde(
        rename = "Permissions",
        alias = "permissions",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub permissions: Vec<IntentionPermission>,
    /// Free text.
    #[serde(
        rename = "Description",
        alias = "description",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub description: String,
    /// Consul's precedence (read-only: computed).
    #[serde(rename = "Precedence", default)]
    pub precedence: u32,
    /// Always `consul`.
    #[serde(rename = "Type", alias = "type", default)]
    pub source_type: String,
    /// The intention's id in `/v1/connect/intentions` (read-only).
    #[serde(rename = "LegacyID", default, skip_serializing_if = "String::is_empty")]
    pub legacy_id: String,
    /// The intention's `Meta` (as written through `/v1/connect/intentions`).
    #[serde(
        rename = "LegacyMeta",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub legacy_meta: BTreeMap<String, String>,
    /// Consul's namespaces (only `default` or empty).
    #[serde(
        rename = "Namespace",
        alias = "namespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    /// Consul Enterprise's partitions (only `default` or empty).
    #[serde(
        rename = "Partition",
        alias = "partition",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub partition: String,
    /// Cluster peering (not supported: must be empty).
    #[serde(
        rename = "Peer",
        alias = "peer",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub peer: String,
}

impl ServiceIntentions {
    /// The entry the intentions whose destination is `name` make (`None`: there are none).
    pub fn gather(name: &str, intentions: &[Intention]) -> Option<Self> {
        let mut mine: Vec<&Intention> = intentions
            .iter()
            .filter(|i| i.destination_name == name)
            .collect();
        if mine.is_empty() {
            return None;
        }
        mine.sort_by(|a, b| {
            b.precedence
                .cmp(&a.precedence)
                .then_with(|| a.source_name.cmp(&b.source_name))
        });
        Some(Self {
            kind: "service-intentions".to_owned(),
            name: name.to_owned(),
            meta: BTreeMap::new(),
            create_index: mine.iter().map(|i| i.create_index).min().unwrap_or(0),
            modify_index: mine.iter().map(|i| i.modify_index).max().unwrap_or(0),
            sources: mine
                .into_iter()
                .map(|i| SourceIntention {
                    name: i.source_name.clone(),
                    action: i.action,
                    permissions: i.permissions.clone(),
                    description: i.description.clone(),
                    precedence: i.precedence,
                    source_type: "consul".to_owned(),
                    legacy_id: i.id.clone(),
                    legacy_meta: i.meta.clone(),
                    namespace: String::new(),
                    partition: String::new(),
                    peer: String::new(),
                })
                .collect(),
        })
    }

    /// The intentions this entry stands for (ids left for the store to keep or assign).
    pub fn intentions(&self) -> Vec<Intention> {
        self.sources
            .iter()
            .map(|source| {
                let mut meta = source.legacy_meta.clone();
                meta.extend(self.meta.clone());
                Intention {
                    id: String::new(),
                    source_name: source.name.clone(),
                    destination_name: self.name.clone(),
                    source_ns: String::new(),
                    destination_ns: String::new(),
                    source_type: String::new(),
                    action: source.action,
                    permissions: source.permissions.clone(),
                    description: source.description.clone(),
                    meta,
                    precedence: precedence(&source.name, &self.name),
                    create_index: 0,
                    modify_index: 0,
                }
            })
            .collect()
    }
}

/// Checks a `service-intentions` entry (its `Name` is checked by the caller, `*` allowed).
pub(super) fn check(entry: &ServiceIntentions, e: &mut Errs) {
    let mut seen = BTreeMap::new();
    for (i, source) in entry.sources.iter().enumerate() {
        let at = format!("Sources[{i}]");
        if source.name.is_empty() {
            e.push(format!("{at}.Name"), "is required");
        } else if source.name != WILDCARD {
            e.service_name(&format!("{at}.Name"), &source.name);
        }
        if let Some(first) = seen.insert(source.name.clone(), i) {
            e.push(
                format!("{at}.Name"),
                format!("{:?} is listed twice (also Sources[{first}])", source.name),
            );
        }
        for (field, value) in [
            ("Namespace", &source.namespace),
            ("Partition", &source.partition),
        ] {
            if !value.is_empty() && value != "default" {
                e.push(
                    format!("{at}.{field}"),
                    format!(
                        "{value:?}: only \"default\" (namespaces and partitions are not supported)"
                    ),
                );
            }
        }
        if !source.peer.is_empty() {
            e.push(format!("{at}.Peer"), "cluster peering is not supported");
        }
        if !source.source_type.is_empty() && source.source_type != "consul" {
            e.push(
                format!("{at}.Type"),
                format!("{:?}: only \"consul\"", source.source_type),
            );
        }
        if source.description.len() > 4096 {
            e.push(format!("{at}.Description"), "is longer than 4096 bytes");
        }
        if let Err((field, message)) = validate_rule(source.action, &source.permissions) {
            e.push(format!("{at}.{field}"), message);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config_entry::{ConfigEntry, validate::validate};

    const HCL: &str = r#"
Kind = "service-intentions"
Name = "api"
Sources = [
  {
    Name = "admin-dashboard"
    Permissions = [
      {
        Action = "allow"
        HTTP {
          PathPrefix = "/v2"
          Methods    = ["GET", "PUT", "POST", "DELETE", "HEAD"]
        }
      }
    ]
  },
  {
    Name   = "*"
    Action = "deny"
  }
]
"#;

    #[test]
    fn consuls_hcl_reads_and_stands_for_one_intention_per_source() {
        let entry = ConfigEntry::parse_file_text(Path::new("i.hcl"), HCL).unwrap();
        validate(&entry).unwrap();
        let ConfigEntry::ServiceIntentions(entry) = entry else {
            panic!("{entry:?}")
        };
        let intentions = entry.intentions();
        assert_eq!(intentions.len(), 2);
        assert_eq!(intentions[0].source_name, "admin-dashboard");
        assert_eq!(intentions[0].action, None);
        assert_eq!(
            intentions[0].permissions[0]
                .http
                .as_ref()
                .unwrap()
                .path_prefix,
            "/v2"
        );
        assert_eq!(intentions[1].action, Some(IntentionAction::Deny));
        assert_eq!(intentions[1].precedence, 8);

        // Gathered back from stored intentions: highest precedence first, with their ids.
        let mut stored = intentions.clone();
        stored[0].id = "a".into();
        stored[1].id = "b".into();
        stored[0].modify_index = 7;
        stored[1].modify_index = 9;
        stored.push(Intention {
            destination_name: "other".into(),
            ..stored[1].clone()
        });
        let gathered = ServiceIntentions::gather("api", &stored).unwrap();
        assert_eq!(gathered.sources.len(), 2);
        assert_eq!(gathered.sources[0].legacy_id, "a");
        assert_eq!(gathered.modify_index, 9);
        assert_eq!(gathered.sources[1].name, "*");
        assert!(ServiceIntentions::gather("nobody", &stored).is_none());
    }

    #[test]
    fn bad_sources_are_named() {
        let entry = |sources: serde_json::Value| {
            ConfigEntry::from_json(serde_json::json!({
                "Kind": "service-intentions", "Name": "api", "Sources": sources,
            }))
        };
        for (sources, field) in [
            (serde_json::json!([{"Action": "allow"}]), "Sources[0].Name"),
            (
                serde_json::json!([{"Name": "web", "Action": "allow"}, {"Name": "web", "Action": "deny"}]),
                "Sources[1].Name",
            ),
            (
                serde_json::json!([{"Name": "web", "Action": "allow", "Permissions": [{"Action": "deny", "HTTP": {"PathExact": "/"}}]}]),
                "Sources[0].Action",
            ),
            (
                serde_json::json!([{"Name": "web", "Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "x"}}]}]),
                "Sources[0].Permissions[0].HTTP.PathPrefix",
            ),
            (
                serde_json::json!([{"Name": "web", "Action": "allow", "Peer": "p"}]),
                "Sources[0].Peer",
            ),
            (
                serde_json::json!([{"Name": "w b", "Action": "allow"}]),
                "Sources[0].Name",
            ),
        ] {
            let errors = validate(&entry(sources.clone()).unwrap()).unwrap_err();
            assert_eq!(errors.0[0].field, field, "{sources}: {errors}");
        }
        // Unknown fields and bad actions are refused by the parser, naming the field.
        let error = entry(serde_json::json!([{"Name": "web", "Action": "permit"}])).unwrap_err();
        assert!(error.field.starts_with("Sources[0]"), "{error}");
        let error = entry(serde_json::json!([{"Name": "web", "Verdict": "allow"}])).unwrap_err();
        assert!(error.to_string().contains("Verdict"), "{error}");
        // `*` names every destination.
        let star = ConfigEntry::from_json(serde_json::json!({
            "Kind": "service-intentions", "Name": "*", "Sources": [{"Name": "web", "Action": "deny"}],
        }))
        .unwrap();
        validate(&star).unwrap();
    }
}
