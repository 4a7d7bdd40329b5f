//! The agent configuration as written (serde, Consul's key names, unknown keys refused).

use serde::Deserialize;

use super::Secret;

/// The agent keys of one file (`service`/`services` are split off before decoding).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgentConfig {
    pub datacenter: Option<String>,
    pub data_dir: Option<String>,
    pub node_name: Option<String>,
    pub server: Option<bool>,
    pub bootstrap_expect: Option<u32>,
    pub bootstrap: Option<bool>,
    pub ui: Option<bool>,
    pub ui_config: Option<RawUiConfig>,
    pub client_addr: Option<String>,
    pub bind_addr: Option<String>,
    pub advertise_addr: Option<String>,
    pub advertise_addr_wan: Option<String>,
    pub ports: Option<RawPorts>,
    pub connect: Option<RawConnect>,
    pub acl: Option<RawAcl>,
    pub tls: Option<RawTls>,
    pub auto_encrypt: Option<RawAutoEncrypt>,
    pub retry_join: Option<Vec<String>>,
    pub retry_join_wan: Option<Vec<String>>,
    pub primary_datacenter: Option<String>,
    pub log_level: Option<String>,
    pub encrypt: Option<Secret>,
    pub domain: Option<String>,
    pub performance: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUiConfig {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPorts {
    pub http: Option<i64>,
    pub https: Option<i64>,
    pub grpc: Option<i64>,
    pub dns: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnect {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcl {
    pub enabled: Option<bool>,
    pub default_policy: Option<String>,
    pub enable_token_persistence: Option<bool>,
    pub tokens: Option<RawAclTokens>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAclTokens {
    pub initial_management: Option<Secret>,
    pub agent: Option<Secret>,
    pub default: Option<Secret>,
    pub replication: Option<Secret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub defaults: Option<RawTlsBlock>,
    pub https: Option<RawTlsBlock>,
    pub internal_rpc: Option<RawInternalRpc>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsBlock {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub verify_incoming: Option<bool>,
    pub verify_outgoing: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInternalRpc {
    pub verify_server_hostname: Option<bool>,
    pub verify_incoming: Option<bool>,
    pub verify_outgoing: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAutoEncrypt {
    pub allow_tls: Option<bool>,
    pub tls: Option<bool>,
    #[serde(default)]
    pub dns_san: Vec<String>,
    #[serde(default)]
    pub ip_san: Vec<String>,
}

/// The top-level keys this module owns (a file's other keys are service definitions or
/// unknown).
pub(super) const AGENT_KEYS: [&str; 24] = [
    "datacenter",
    "data_dir",
    "node_name",
    "server",
    "bootstrap_expect",
    "bootstrap",
    "ui",
    "ui_config",
    "client_addr",
    "bind_addr",
    "advertise_addr",
    "advertise_addr_wan",
    "ports",
    "connect",
    "acl",
    "tls",
    "auto_encrypt",
    "retry_join",
    "retry_join_wan",
    "primary_datacenter",
    "log_level",
    "encrypt",
    "domain",
    "performance",
];
