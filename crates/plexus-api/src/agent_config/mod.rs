//! The agent/server configuration file in Consul's format (`--config-file`, `--config-dir`),
//! HCL or JSON. One file may hold both agent keys and `service`/`services` blocks, as Consul's
//! do.
//!
//! ```text
//! file ─► definition::parse_value ─┬─ service/services ─► definition checks ─► registrations
//!                                  ├─ agent keys ─► RawAgentConfig ─► AgentConfig (validated)
//!                                  └─ anything else ─► error file:line: key
//! ```
//!
//! Raw (as written, `raw`) → validated ([`AgentConfig`], by `file_checks`): go-sockaddr templates resolved
//! ([`sockaddr`]), ports and policies typed, secrets wrapped in [`Secret`]. Every problem in
//! every file is reported at once, each naming the file, line and key path, like definition
//! files. Keys Consul has but Plexus does not use are either accepted with a note saying why
//! ([`AgentConfig::notes`]) or refused; the table is in docs/architecture.md. Files are merged in
//! order: a later file's setting replaces an earlier one's; `retry_join` lists add up. Every
//! field is optional: the commands' flags override the file, and defaults are the flags'.

pub mod advertise;
mod file_checks;
mod raw;
pub mod sockaddr;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use self::file_checks::validate_file;
use self::raw::{AGENT_KEYS, RawAgentConfig};
use self::sockaddr::IfAddr;
use crate::definition::locate;
use crate::definition::{self, DefinitionError};
use crate::registration::ServiceRegistration;
use crate::validate;

/// A secret from a configuration file (a token, a gossip key): `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// The secret itself (pass it on; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Which command reads the file: some keys belong to servers or to agents only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `plexus server`.
    Server,
    /// `plexus agent`.
    Agent,
    /// `plexus dev` (a server and its agent).
    Dev,
    /// `plexus validate`: any role.
    Any,
}

/// A listener port: Consul's `-1` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// `-1`: no listener.
    Disabled,
    /// A port (0: any free port, logged).
    Number(u16),
}

/// `ports { … }`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    /// `http` (default 8500).
    pub http: Option<Port>,
    /// `https` (default off).
    pub https: Option<Port>,
    /// `grpc`: stored for the gRPC (xDS) listener.
    pub grpc: Option<Port>,
    /// `dns`: stored for the DNS listener.
    pub dns: Option<Port>,
}

/// ACL default policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclPolicy {
    /// Anything not denied is allowed.
    Allow,
    /// Anything not allowed is denied.
    Deny,
}

/// `acl { … }`: stored for the ACL system (issue 12 parts 1-2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclConfig {
    /// `enabled`.
    pub enabled: Option<bool>,
    /// `default_policy`.
    pub default_policy: Option<AclPolicy>,
    /// `tokens.initial_management`.
    pub initial_management: Option<Secret>,
    /// `tokens.agent`.
    pub agent_token: Option<Secret>,
    /// `tokens.default`.
    pub default_token: Option<Secret>,
    /// `tokens.replication`: the token a server presents to other datacenters' servers (WAN
    /// federation).
    pub replication_token: Option<Secret>,
}

/// `tls { defaults { … } https { … } }` (the `https` block overrides `defaults`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// `ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `cert_file`.
    pub cert_file: Option<PathBuf>,
    /// `key_file`.
    pub key_file: Option<PathBuf>,
    /// `verify_incoming`.
    pub verify_incoming: Option<bool>,
    /// `verify_outgoing`.
    pub verify_outgoing: Option<bool>,
}

/// `auto_encrypt { … }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoEncryptConfig {
    /// `allow_tls` (servers): sign agents' certificates.
    pub allow_tls: Option<bool>,
    /// `tls` (agents): obtain this agent's certificate from a server.
    pub tls: Option<bool>,
    /// `dns_san`: more DNS names in the agent's certificate.
    pub dns_san: Vec<String>,
    /// `ip_san`: more IP addresses in the agent's certificate.
    pub ip_san: Vec<IpAddr>,
}

/// `log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// `trace`.
    Trace,
    /// `debug`.
    Debug,
    /// `info`.
    Info,
    /// `warn`.
    Warn,
    /// `err`/`error`.
    Error,
}

impl LogLevel {
    /// The `tracing` filter directive.
    pub fn directive(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// The validated agent settings of the configuration files; `None` where no file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentConfig {
    /// `datacenter`.
    pub datacenter: Option<String>,
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `node_name`.
    pub node_name: Option<String>,
    /// `server`.
    pub server: Option<bool>,
    /// `ui` or `ui_config.enabled`: stored for the web UI.
    pub ui: Option<bool>,
    /// `client_addr`: where the HTTP(S) API listens.
    pub client_addr: Option<IpAddr>,
    /// `bind_addr`.
    pub bind_addr: Option<IpAddr>,
    /// `advertise_addr`: the address others reach this node at.
    pub advertise_addr: Option<IpAddr>,
    /// `advertise_addr_wan`: the node's `wan` tagged address (default: the advertised one).
    pub advertise_addr_wan: Option<IpAddr>,
    /// `ports`.
    pub ports: Ports,
    /// `connect.enabled`.
    pub connect_enabled: Option<bool>,
    /// `acl`.
    pub acl: AclConfig,
    /// `tls`.
    pub tls: TlsConfig,
    /// `auto_encrypt`.
    pub auto_encrypt: AutoEncryptConfig,
    /// `retry_join`: an agent's servers (`host` or `host:port`).
    pub retry_join: Vec<String>,
    /// `retry_join_wan`: other datacenters' servers (`host:port`, `http://host:port` or
    /// `https://host:port` of their HTTP API) a server federates with.
    pub retry_join_wan: Vec<String>,
    /// `primary_datacenter`: the datacenter whose CA the federation trusts.
    pub primary_datacenter: Option<String>,
    /// `log_level`.
    pub log_level: Option<LogLevel>,
    /// `domain` (of `server.<dc>.<domain>`).
    pub domain: Option<String>,
    /// Keys accepted but not used, each with why (`file:line: key: …`); commands log them.
    pub notes: Vec<String>,
}

/// The files' agent settings and service definitions.
#[derive(Debug, Clone, Default)]
pub struct ConfigFiles {
    /// Agent settings.
    pub agent: AgentConfig,
    /// Service definitions, validated, with their files.
    pub services: Vec<(PathBuf, ServiceRegistration)>,
}

/// Reads, splits and checks configuration files. `interfaces` is asked (once, if a template
/// needs it) for the machine's addresses; `defaults` gives the datacenter and node the service
/// definitions are validated with, from the settings the files hold. Every problem in every
/// file comes back at once.
pub fn load_files(
    paths: &[PathBuf],
    role: Role,
    interfaces: &dyn Fn() -> std::io::Result<Vec<IfAddr>>,
    defaults: impl FnOnce(&AgentConfig) -> validate::Defaults,
) -> Result<ConfigFiles, Vec<DefinitionError>> {
    let mut errors = Vec::new();
    let mut loaded = Vec::new();
    let mut agent = AgentConfig::default();
    let mut cache: Option<Result<Vec<IfAddr>, String>> = None;
    let mut interfaces = || {
        cache
            .get_or_insert_with(|| interfaces().map_err(|e| e.to_string()))
            .clone()
    };
    for path in paths {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                errors.push(error(path, None, None, format!("cannot read file: {e}")));
                continue;
            }
        };
        let value = match definition::parse_value(path, &text) {
            Ok(value) => value,
            Err(e) => {
                errors.extend(e);
                continue;
            }
        };
        let Value::Object(top) = value else {
            errors.push(error(
                path,
                Some(1),
                None,
                "the file must hold an object of keys".into(),
            ));
            continue;
        };
        let file = File { path, text: &text };
        let (mut services, mut agent_keys) = (serde_json::Map::new(), serde_json::Map::new());
        for (key, value) in top {
            if key == "service" || key == "services" {
                services.insert(key, value);
            } else if AGENT_KEYS.contains(&key.as_str()) {
                agent_keys.insert(key, value);
            } else {
                errors.push(file.error(&key, unknown_key(&key)));
            }
        }
        match definition::loaded_from_value(path, &text, Value::Object(services)) {
            Ok(file) => loaded.push(file),
            Err(e) => errors.extend(e),
        }
        match decode(&file, Value::Object(agent_keys)) {
            Ok(raw) => match validate_file(&file, raw, role, &mut interfaces) {
                Ok(config) => agent.merge(config),
                Err(e) => errors.extend(e),
            },
            Err(e) => errors.push(e),
        }
    }
    let defaults = defaults(&agent);
    let services = definition::check_loaded(loaded, errors, &defaults)?;
    Ok(ConfigFiles { agent, services })
}

/// The `.hcl` and `.json` files directly in `dir`, sorted (Consul's `-config-dir`).
pub fn files_in_dir(dir: &Path) -> Result<Vec<PathBuf>, DefinitionError> {
    let read_err =
        |e: std::io::Error| error(dir, None, None, format!("cannot read directory: {e}"));
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if path.is_file() && matches!(ext.as_deref(), Some("hcl" | "json")) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn error(
    file: &Path,
    line: Option<usize>,
    field: Option<String>,
    message: String,
) -> DefinitionError {
    DefinitionError {
        file: file.to_owned(),
        line,
        field,
        message,
    }
}

struct File<'a> {
    path: &'a Path,
    text: &'a str,
}

impl File<'_> {
    fn error(&self, field: &str, message: String) -> DefinitionError {
        error(
            self.path,
            locate::line_of(self.text, &locate::parse_path(field)),
            Some(field.to_owned()),
            message,
        )
    }
}

fn unknown_key(key: &str) -> String {
    let mut known: Vec<&str> = AGENT_KEYS.to_vec();
    known.extend(["service", "services"]);
    let closest = known
        .iter()
        .map(|k| (definition::edit_distance(&key.to_ascii_lowercase(), k), *k))
        .filter(|(d, _)| *d <= 2)
        .min();
    match closest {
        Some((_, name)) => format!("unknown key `{key}` (did you mean `{name}`?)"),
        None => format!(
            "unknown key `{key}`: Plexus reads the agent keys {} and the service definitions service, services",
            AGENT_KEYS.join(", ")
        ),
    }
}

fn decode(file: &File<'_>, value: Value) -> Result<RawAgentConfig, DefinitionError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = definition::field_path(e.path());
        let rendered = locate::render_path(&path);
        error(
            file.path,
            locate::line_of(file.text, &path),
            (!path.is_empty()).then_some(rendered),
            definition::tidy(&e.inner().to_string()),
        )
    })
}

/// One IP address from an address setting: an address, or a go-sockaddr template that resolves
/// to exactly one (`{{ GetPrivateIP }}`). The error is a sentence about `text`.
pub fn resolve_address(
    text: &str,
    interfaces: &mut dyn FnMut() -> Result<Vec<IfAddr>, String>,
) -> Result<IpAddr, String> {
    let rendered = if sockaddr::is_template(text) {
        let list = interfaces()
            .map_err(|e| format!("cannot list network interfaces for the template: {e}"))?;
        sockaddr::render(text, &list).map_err(|e| format!("template {text:?}: {e}"))?
    } else {
        text.to_owned()
    };
    let parts: Vec<&str> = rendered.split_whitespace().collect();
    match parts.as_slice() {
        [] => Err(format!("{text:?} resolved to no address")),
        [one] => match one.parse() {
            Ok(ip) => Ok(ip),
            Err(_) if rendered == text => Err(format!(
                "{text:?} is not an IP address or a go-sockaddr template"
            )),
            Err(_) => Err(format!(
                "{text:?} resolved to {one:?}, which is not an IP address"
            )),
        },
        many => Err(format!(
            "{text:?} resolved to {} addresses ({}); Plexus needs exactly one",
            many.len(),
            many.join(" ")
        )),
    }
}

impl AgentConfig {
    /// Applies a later file's settings over these.
    fn merge(&mut self, later: AgentConfig) {
        fn or<T>(earlier: &mut Option<T>, later: Option<T>) {
            if later.is_some() {
                *earlier = later;
            }
        }
        or(&mut self.datacenter, later.datacenter);
        or(&mut self.data_dir, later.data_dir);
        or(&mut self.node_name, later.node_name);
        or(&mut self.server, later.server);
        or(&mut self.ui, later.ui);
        or(&mut self.client_addr, later.client_addr);
        or(&mut self.bind_addr, later.bind_addr);
        or(&mut self.advertise_addr, later.advertise_addr);
        or(&mut self.advertise_addr_wan, later.advertise_addr_wan);
        or(&mut self.ports.http, later.ports.http);
        or(&mut self.ports.https, later.ports.https);
        or(&mut self.ports.grpc, later.ports.grpc);
        or(&mut self.ports.dns, later.ports.dns);
        or(&mut self.connect_enabled, later.connect_enabled);
        or(&mut self.acl.enabled, later.acl.enabled);
        or(&mut self.acl.default_policy, later.acl.default_policy);
        or(
            &mut self.acl.initial_management,
            later.acl.initial_management,
        );
        or(&mut self.acl.agent_token, later.acl.agent_token);
        or(&mut self.acl.default_token, later.acl.default_token);
        or(&mut self.acl.replication_token, later.acl.replication_token);
        or(&mut self.tls.ca_file, later.tls.ca_file);
        or(&mut self.tls.cert_file, later.tls.cert_file);
        or(&mut self.tls.key_file, later.tls.key_file);
        or(&mut self.tls.verify_incoming, later.tls.verify_incoming);
        or(&mut self.tls.verify_outgoing, later.tls.verify_outgoing);
        or(
            &mut self.auto_encrypt.allow_tls,
            later.auto_encrypt.allow_tls,
        );
        or(&mut self.auto_encrypt.tls, later.auto_encrypt.tls);
        self.auto_encrypt.dns_san.extend(later.auto_encrypt.dns_san);
        self.auto_encrypt.ip_san.extend(later.auto_encrypt.ip_san);
        self.retry_join.extend(later.retry_join);
        self.retry_join_wan.extend(later.retry_join_wan);
        or(&mut self.primary_datacenter, later.primary_datacenter);
        or(&mut self.log_level, later.log_level);
        or(&mut self.domain, later.domain);
        self.notes.extend(later.notes);
    }

    /// Whether any file set anything at all.
    pub fn is_empty(&self) -> bool {
        *self == AgentConfig::default()
    }
}
