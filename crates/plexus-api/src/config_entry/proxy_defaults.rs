//! `Kind = "proxy-defaults"`, `Name = "global"`: defaults for every proxy. What Plexus applies of
//! it: `Config.protocol`, the protocol of every service whose `service-defaults` does not name
//! one (so `protocol = "http"` here turns L7 on mesh-wide, as in Consul). The rest of `Config`
//! is kept as written (Consul treats it as opaque too); `MeshGateway.Mode` is kept and checked,
//! and not used (cross-datacenter traffic always goes through the mesh gateways).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::chain::Protocol;
use super::validate::Errs;

/// The only name a `proxy-defaults` entry may have.
pub const GLOBAL: &str = "global";

/// `proxy-defaults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyDefaults {
    /// Always `proxy-defaults`.
    #[serde(rename = "Kind", alias = "kind")]
    pub kind: String,
    /// Always `global`.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// Free-form metadata.
    #[serde(
        rename = "Meta",
        alias = "meta",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub meta: BTreeMap<String, String>,
    /// Proxy configuration: `protocol` is applied, the rest kept.
    #[serde(
        rename = "Config",
        alias = "config",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub config: BTreeMap<String, serde_json::Value>,
    /// Mesh gateway mode (checked, kept, not used).
    #[serde(
        rename = "MeshGateway",
        alias = "mesh_gateway",
        alias = "meshgateway",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mesh_gateway: Option<MeshGatewayConfig>,
    /// Set by the server.
    #[serde(rename = "CreateIndex", alias = "create_index", default)]
    pub create_index: u64,
    /// Set by the server.
    #[serde(rename = "ModifyIndex", alias = "modify_index", default)]
    pub modify_index: u64,
}

/// `MeshGateway { Mode = "local" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshGatewayConfig {
    /// `""`, `none`, `local` or `remote`.
    #[serde(rename = "Mode", alias = "mode", default)]
    pub mode: String,
}

impl ProxyDefaults {
    /// `Config.protocol`, when it names one.
    pub fn protocol(&self) -> Option<Protocol> {
        self.config
            .get("protocol")
            .and_then(serde_json::Value::as_str)
            .and_then(Protocol::parse)
    }
}

/// Checks a `proxy-defaults` entry (its `Name` is checked here: only `global`).
pub(super) fn check(entry: &ProxyDefaults, e: &mut Errs) {
    if entry.name != GLOBAL {
        e.push(
            "Name",
            format!(
                "{:?}: a proxy-defaults entry is named \"global\"",
                entry.name
            ),
        );
    }
    if let Some(protocol) = entry.config.get("protocol") {
        match protocol.as_str() {
            Some(p) if Protocol::parse(p).is_some() => {}
            _ => e.push(
                "Config.protocol",
                format!("unknown protocol {protocol}; expected tcp, http, http2 or grpc"),
            ),
        }
    }
    if let Some(gateway) = &entry.mesh_gateway
        && !matches!(gateway.mode.as_str(), "" | "none" | "local" | "remote")
    {
        e.push(
            "MeshGateway.Mode",
            format!(
                "{:?}: expected \"none\", \"local\" or \"remote\"",
                gateway.mode
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config_entry::compile::compile;
    use crate::config_entry::validate::validate;
    use crate::config_entry::{ConfigEntry, Kind};

    #[test]
    fn the_global_protocol_is_every_services_unless_its_own_defaults_say() {
        let global = ConfigEntry::parse_file_text(
            Path::new("proxy-defaults.hcl"),
            "Kind = \"proxy-defaults\"\nName = \"global\"\nConfig {\n  protocol = \"http\"\n  local_connect_timeout_ms = 1000\n}\nMeshGateway {\n  Mode = \"local\"\n}\n",
        )
        .unwrap();
        validate(&global).unwrap();
        assert_eq!(global.kind(), Kind::ProxyDefaults);
        let own = ConfigEntry::from_json(serde_json::json!({
            "Kind": "service-defaults", "Name": "db", "Protocol": "tcp",
        }))
        .unwrap();
        let entries = [global, own];
        assert_eq!(compile("web", &entries).protocol, Protocol::Http);
        assert_eq!(compile("db", &entries).protocol, Protocol::Tcp);
        assert_eq!(compile("web", &entries[1..]).protocol, Protocol::Tcp);
    }

    #[test]
    fn bad_fields_are_named() {
        for (entry, field) in [
            (serde_json::json!({"Name": "web"}), "Name"),
            (
                serde_json::json!({"Name": "global", "Config": {"protocol": "udp"}}),
                "Config.protocol",
            ),
            (
                serde_json::json!({"Name": "global", "Config": {"protocol": 7}}),
                "Config.protocol",
            ),
            (
                serde_json::json!({"Name": "global", "MeshGateway": {"Mode": "far"}}),
                "MeshGateway.Mode",
            ),
        ] {
            let mut entry = entry;
            entry["Kind"] = "proxy-defaults".into();
            let errors = validate(&ConfigEntry::from_json(entry.clone()).unwrap()).unwrap_err();
            assert_eq!(errors.0[0].field, field, "{entry}: {errors}");
        }
        let unknown = ConfigEntry::from_json(serde_json::json!({
            "Kind": "proxy-defaults", "Name": "global", "TransparentProxy": {},
        }))
        .unwrap_err();
        assert!(
            unknown.to_string().contains("TransparentProxy"),
            "{unknown}"
        );
    }
}
