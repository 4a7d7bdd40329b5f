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
//! Raw (as written, `raw`) → validated ([`AgentConfig`]): go-sockaddr templates resolved
//! ([`sockaddr`]), ports and policies typed, secrets wrapped in [`Secret`]. Every problem in
//! every file is reported at once, each naming the file, line and key path, like definition
//! files. Keys Consul has but Plexus does not use are either accepted with a note saying why
//! ([`AgentConfig::notes`]) or refused; the table is in docs/architecture.md. Files are merged in
//! order: a later file's setting replaces an earlier one's; `retry_join` lists add up. Every
//! field is optional: the commands' flags override the file, and defaults are the flags'.

pub mod advertise;
mod raw;
pub mod sockaddr;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use self::raw::{AGENT_KEYS, RawAgentConfig, RawTlsBlock};
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

/// Collects a file's problems while validating it.
struct Check<'a> {
    file: &'a File<'a>,
    errors: Vec<DefinitionError>,
    notes: Vec<String>,
}

impl Check<'_> {
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(self.file.error(field, message.into()));
    }

    fn note(&mut self, field: &str, message: &str) {
        let at = self.file.error(field, message.to_owned());
        self.notes.push(at.to_string());
    }
}

fn validate_file(
    file: &File<'_>,
    raw: RawAgentConfig,
    role: Role,
    interfaces: &mut dyn FnMut() -> Result<Vec<IfAddr>, String>,
) -> Result<AgentConfig, Vec<DefinitionError>> {
    let mut check = Check {
        file,
        errors: Vec::new(),
        notes: Vec::new(),
    };
    let mut config = AgentConfig {
        datacenter: raw
            .datacenter
            .filter(|dc| name_ok(&mut check, "datacenter", dc, false)),
        data_dir: match raw.data_dir {
            Some(dir) if dir.trim().is_empty() => {
                check.fail("data_dir", "must not be empty");
                None
            }
            dir => dir.map(PathBuf::from),
        },
        node_name: raw
            .node_name
            .filter(|node| name_ok(&mut check, "node_name", node, true)),
        server: raw.server,
        ui: raw.ui_config.and_then(|ui| ui.enabled).or(raw.ui),
        retry_join: raw.retry_join.unwrap_or_default(),
        retry_join_wan: raw.retry_join_wan.unwrap_or_default(),
        primary_datacenter: raw
            .primary_datacenter
            .filter(|dc| name_ok(&mut check, "primary_datacenter", dc, false)),
        domain: raw
            .domain
            .filter(|d| name_ok(&mut check, "domain", d, true)),
        ..AgentConfig::default()
    };
    match (role, raw.server) {
        (Role::Agent, Some(true)) => check.fail(
            "server",
            "`server = true` is a server's configuration: run it with `plexus server`",
        ),
        (Role::Server, Some(false)) => check.fail(
            "server",
            "`server = false` is an agent's configuration: run it with `plexus agent`",
        ),
        _ => {}
    }
    if raw.bootstrap_expect.is_some() || raw.bootstrap.is_some() {
        let key = if raw.bootstrap_expect.is_some() {
            "bootstrap_expect"
        } else {
            "bootstrap"
        };
        check.note(key, "accepted and not used: Plexus servers share one store (embedded, or etcd for several replicas), so there is no Raft quorum to bootstrap");
    }
    if raw.encrypt.is_some() {
        check.note("encrypt", "accepted and not used: Plexus has no gossip layer to encrypt; API traffic is protected with tls");
    }
    if raw.performance.is_some() {
        check.note(
            "performance",
            "accepted and not used: there is no Raft to tune",
        );
    }
    for (key, value) in [
        ("client_addr", raw.client_addr),
        ("bind_addr", raw.bind_addr),
        ("advertise_addr", raw.advertise_addr),
        ("advertise_addr_wan", raw.advertise_addr_wan),
    ] {
        let Some(text) = value else { continue };
        let address = address(&mut check, key, &text, interfaces);
        match key {
            "client_addr" => config.client_addr = address,
            "bind_addr" => config.bind_addr = address,
            "advertise_addr_wan" => config.advertise_addr_wan = address,
            _ => config.advertise_addr = address,
        }
    }
    if let Some(ports) = raw.ports {
        let mut port = |key: &str, value: Option<i64>| match value {
            None => None,
            Some(-1) => Some(Port::Disabled),
            Some(n) => match u16::try_from(n) {
                Ok(n) => Some(Port::Number(n)),
                Err(_) => {
                    check.fail(
                        &format!("ports.{key}"),
                        format!(
                            "{n} is not a port: expected -1 (off) or 0–65535 (0: any free port)"
                        ),
                    );
                    None
                }
            },
        };
        config.ports = Ports {
            http: port("http", ports.http),
            https: port("https", ports.https),
            grpc: port("grpc", ports.grpc),
            dns: port("dns", ports.dns),
        };
    }
    if let Some(connect) = raw.connect {
        config.connect_enabled = connect.enabled;
        if connect.enabled == Some(false) {
            check.note("connect.enabled", "accepted: connect cannot be turned off in Plexus (the CA and intentions always run)");
        }
    }
    if let Some(acl) = raw.acl {
        config.acl = AclConfig {
            enabled: acl.enabled,
            default_policy: match acl.default_policy.as_deref() {
                None => None,
                Some("allow") => Some(AclPolicy::Allow),
                Some("deny") => Some(AclPolicy::Deny),
                Some(other) => {
                    check.fail(
                        "acl.default_policy",
                        format!("{other:?}: expected \"allow\" or \"deny\""),
                    );
                    None
                }
            },
            initial_management: None,
            agent_token: None,
            default_token: None,
            replication_token: None,
        };
        if acl.enable_token_persistence.is_some() {
            check.note(
                "acl.enable_token_persistence",
                "accepted and not used: tokens given to an agent are not persisted",
            );
        }
        if let Some(tokens) = acl.tokens {
            for (key, token) in [
                ("initial_management", &tokens.initial_management),
                ("agent", &tokens.agent),
                ("default", &tokens.default),
                ("replication", &tokens.replication),
            ] {
                if token.as_ref().is_some_and(|t| t.0.trim().is_empty()) {
                    check.fail(&format!("acl.tokens.{key}"), "must not be empty");
                }
            }
            config.acl.initial_management = tokens.initial_management;
            config.acl.agent_token = tokens.agent;
            config.acl.default_token = tokens.default;
            config.acl.replication_token = tokens.replication;
        }
    }
    if let Some(tls) = raw.tls {
        let mut merged = TlsConfig::default();
        for (block, settings) in [("defaults", tls.defaults), ("https", tls.https)] {
            if let Some(settings) = settings {
                tls_block(&mut check, block, settings, &mut merged);
            }
        }
        config.tls = merged;
        if let Some(rpc) = tls.internal_rpc {
            let _ = (rpc.verify_incoming, rpc.verify_outgoing);
            let note = if rpc.verify_server_hostname == Some(true) {
                "accepted: there is no RPC port; to check that agents talk to a server, they verify `server.<dc>.<domain>` with --tls-server-name"
            } else {
                "accepted and not used: there is no RPC port (agents talk to servers over the HTTPS API)"
            };
            check.note("tls.internal_rpc", note);
        }
    }
    if let Some(auto) = raw.auto_encrypt {
        match role {
            Role::Server if auto.tls == Some(true) => {
                check.fail("auto_encrypt.tls", "`tls` is for agents (they obtain certificates); servers sign them with `allow_tls`")
            }
            Role::Agent if auto.allow_tls == Some(true) => {
                check.fail("auto_encrypt.allow_tls", "`allow_tls` is for servers; agents obtain certificates with `tls = true`")
            }
            _ => {}
        }
        for (i, name) in auto.dns_san.iter().enumerate() {
            if !dns_name(name) {
                check.fail(
                    &format!("auto_encrypt.dns_san[{i}]"),
                    format!("{name:?} is not a DNS name"),
                );
            }
        }
        let mut ips = Vec::new();
        for (i, ip) in auto.ip_san.iter().enumerate() {
            match ip.parse() {
                Ok(ip) => ips.push(ip),
                Err(_) => check.fail(
                    &format!("auto_encrypt.ip_san[{i}]"),
                    format!("{ip:?} is not an IP address"),
                ),
            }
        }
        config.auto_encrypt = AutoEncryptConfig {
            allow_tls: auto.allow_tls,
            tls: auto.tls,
            dns_san: auto.dns_san,
            ip_san: ips,
        };
    }
    for (i, server) in config.retry_join.clone().iter().enumerate() {
        if server.trim().is_empty() || server.contains(char::is_whitespace) {
            check.fail(
                &format!("retry_join[{i}]"),
                format!("{server:?} is not an address (host, host:port or https://host:port)"),
            );
        }
    }
    for (i, server) in config.retry_join_wan.clone().iter().enumerate() {
        if server.trim().is_empty() || server.contains(char::is_whitespace) {
            check.fail(
                &format!("retry_join_wan[{i}]"),
                format!("{server:?} is not an address: expected a server's HTTP API as host:port or an http(s) URL"),
            );
        }
    }
    if role == Role::Agent && !config.retry_join_wan.is_empty() {
        check.note(
            "retry_join_wan",
            "accepted and not used by agents: servers federate datacenters",
        );
    }
    if role == Role::Server && !config.retry_join.is_empty() {
        check.note("retry_join", "accepted and not used by servers: replicas share a store and need no join (agents use retry_join as their server list)");
    }
    config.log_level = match raw
        .log_level
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => None,
        Some("trace") => Some(LogLevel::Trace),
        Some("debug") => Some(LogLevel::Debug),
        Some("info") => Some(LogLevel::Info),
        Some("warn") => Some(LogLevel::Warn),
        Some("err" | "error") => Some(LogLevel::Error),
        Some(other) => {
            check.fail(
                "log_level",
                format!("{other:?}: expected trace, debug, info, warn or err"),
            );
            None
        }
    };
    config.notes = check.notes;
    if check.errors.is_empty() {
        Ok(config)
    } else {
        Err(check.errors)
    }
}

fn tls_block(check: &mut Check<'_>, block: &str, raw: RawTlsBlock, into: &mut TlsConfig) {
    for (key, value, slot) in [
        ("ca_file", raw.ca_file, &mut into.ca_file),
        ("cert_file", raw.cert_file, &mut into.cert_file),
        ("key_file", raw.key_file, &mut into.key_file),
    ] {
        match value {
            Some(path) if path.trim().is_empty() => {
                check.fail(&format!("tls.{block}.{key}"), "must not be empty")
            }
            Some(path) => *slot = Some(PathBuf::from(path)),
            None => {}
        }
    }
    into.verify_incoming = raw.verify_incoming.or(into.verify_incoming);
    into.verify_outgoing = raw.verify_outgoing.or(into.verify_outgoing);
}

/// Letters, digits, `-`, `_` (and `.` where `dots`), 1 to 128 of them.
fn name_ok(check: &mut Check<'_>, key: &str, value: &str, dots: bool) -> bool {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.'));
    if !ok {
        let allowed = if dots {
            "letters, digits, '-', '_' and '.'"
        } else {
            "letters, digits, '-' and '_'"
        };
        check.fail(key, format!("{value:?}: expected 1 to 128 {allowed}"));
    }
    ok
}

fn dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        })
}

/// An address setting: an IP, or a template resolving to exactly one.
fn address(
    check: &mut Check<'_>,
    key: &str,
    text: &str,
    interfaces: &mut dyn FnMut() -> Result<Vec<IfAddr>, String>,
) -> Option<IpAddr> {
    match resolve_address(text, interfaces) {
        Ok(ip) => Some(ip),
        Err(message) => {
            check.fail(key, message);
            None
        }
    }
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
