//! One file's agent keys, raw → validated: every setting checked (names, ports, addresses,
//! policies, TLS files) and every problem collected with its file, line and key path.

use std::net::IpAddr;
use std::path::PathBuf;

use super::raw::{RawAgentConfig, RawTlsBlock};
use super::sockaddr::IfAddr;
use super::{
    AclConfig, AclPolicy, AgentConfig, AutoEncryptConfig, File, LogLevel, Port, Ports, Role,
    TlsConfig, resolve_address,
};
use crate::definition::DefinitionError;

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

pub(super) fn validate_file(
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
            if !crate::validate::is_dns_name(name) {
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
