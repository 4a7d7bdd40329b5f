//! The gateway config entries, in Consul's shape: `ingress-gateway` (listeners in front of the
//! mesh, routed by `Host`) and `terminating-gateway` (mesh service names linked to services
//! outside the mesh), with their validation.
//!
//! JSON uses Consul's `PascalCase` keys; `snake_case` is accepted too. Unknown keys are
//! rejected.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::validate::EntryError;

/// `Kind = "ingress-gateway"`: the listeners of the ingress gateway service `Name`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressGateway {
    /// Always `ingress-gateway`.
    #[serde(rename = "Kind", alias = "kind")]
    pub kind: String,
    /// The gateway service this configures.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// TLS for every listener (a listener's own `TLS` overrides it).
    #[serde(rename = "TLS", alias = "tls", default)]
    pub tls: Option<GatewayTls>,
    /// The listeners.
    #[serde(rename = "Listeners", alias = "listeners", default)]
    pub listeners: Vec<IngressListener>,
    /// Free-form metadata.
    #[serde(rename = "Meta", alias = "meta", default)]
    pub meta: BTreeMap<String, String>,
    /// Set by the server; ignored when written.
    #[serde(rename = "CreateIndex", alias = "create_index", default)]
    pub create_index: u64,
    /// Set by the server; ignored when written.
    #[serde(rename = "ModifyIndex", alias = "modify_index", default)]
    pub modify_index: u64,
}

/// `TLS { Enabled }`: serve a listener over TLS with a certificate from the built-in CA for
/// the hosts of its services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTls {
    /// TLS on or off.
    #[serde(rename = "Enabled", alias = "enabled", default)]
    pub enabled: bool,
}

/// One listener of an ingress gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressListener {
    /// The port, on the gateway's address.
    #[serde(rename = "Port", alias = "port", default)]
    pub port: i64,
    /// `tcp` (default), `http`, `http2` or `grpc`.
    #[serde(rename = "Protocol", alias = "protocol", default)]
    pub protocol: Option<String>,
    /// The services reachable through it (`tcp`: exactly one).
    #[serde(rename = "Services", alias = "services", default)]
    pub services: Vec<IngressService>,
    /// TLS for this listener (else the entry's).
    #[serde(rename = "TLS", alias = "tls", default)]
    pub tls: Option<GatewayTls>,
}

/// One service behind an ingress listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressService {
    /// The mesh service (`*`: every service, on an `http` listener, by its default host).
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// The `Host` values routed to it, besides the default `<name>.ingress.*`.
    #[serde(rename = "Hosts", alias = "hosts", default)]
    pub hosts: Vec<String>,
    /// Changes to the requests sent to it.
    #[serde(rename = "RequestHeaders", alias = "request_headers", default)]
    pub request_headers: Option<HeaderModifiers>,
    /// Changes to its responses.
    #[serde(rename = "ResponseHeaders", alias = "response_headers", default)]
    pub response_headers: Option<HeaderModifiers>,
}

/// Header changes: `Add` appends, `Set` replaces, `Remove` deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifiers {
    /// Appended values.
    #[serde(rename = "Add", alias = "add", default)]
    pub add: BTreeMap<String, String>,
    /// Replacing values.
    #[serde(rename = "Set", alias = "set", default)]
    pub set: BTreeMap<String, String>,
    /// Removed headers.
    #[serde(rename = "Remove", alias = "remove", default)]
    pub remove: Vec<String>,
}

impl HeaderModifiers {
    /// Changes from name–value pairs to add and to set, and names to remove.
    pub fn of(add: &[(&str, &str)], set: &[(&str, &str)], remove: &[&str]) -> Self {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect()
        };
        Self {
            add: map(add),
            set: map(set),
            remove: remove.iter().map(|name| (*name).to_owned()).collect(),
        }
    }
}

/// `Kind = "terminating-gateway"`: the services outside the mesh the gateway `Name` fronts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminatingGateway {
    /// Always `terminating-gateway`.
    #[serde(rename = "Kind", alias = "kind")]
    pub kind: String,
    /// The gateway service this configures.
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// The linked services.
    #[serde(rename = "Services", alias = "services", default)]
    pub services: Vec<LinkedService>,
    /// Free-form metadata.
    #[serde(rename = "Meta", alias = "meta", default)]
    pub meta: BTreeMap<String, String>,
    /// Set by the server; ignored when written.
    #[serde(rename = "CreateIndex", alias = "create_index", default)]
    pub create_index: u64,
    /// Set by the server; ignored when written.
    #[serde(rename = "ModifyIndex", alias = "modify_index", default)]
    pub modify_index: u64,
}

/// A service outside the mesh that mesh clients reach through a terminating gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkedService {
    /// The service's name (registered on an external node).
    #[serde(rename = "Name", alias = "name", default)]
    pub name: String,
    /// The CA (PEM file) the external server's certificate is verified against; with it the
    /// gateway originates TLS.
    #[serde(rename = "CAFile", alias = "ca_file", default)]
    pub ca_file: Option<String>,
    /// A client certificate (PEM file) presented to the external server.
    #[serde(rename = "CertFile", alias = "cert_file", default)]
    pub cert_file: Option<String>,
    /// Its key (PEM file).
    #[serde(rename = "KeyFile", alias = "key_file", default)]
    pub key_file: Option<String>,
    /// The server name sent and verified (else the service's address).
    #[serde(rename = "SNI", alias = "sni", default)]
    pub sni: Option<String>,
}

/// A listener's protocol, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// Raw TCP: one service.
    Tcp,
    /// HTTP/1.1 or HTTP/2 (`http`, `http2`, `grpc`): routed by `Host`.
    Http,
}

impl IngressListener {
    /// The protocol (`tcp` when absent); `None` for an unknown one.
    pub fn parsed_protocol(&self) -> Option<ListenerProtocol> {
        match self.protocol.as_deref().unwrap_or("tcp") {
            "tcp" | "" => Some(ListenerProtocol::Tcp),
            "http" | "http2" | "grpc" => Some(ListenerProtocol::Http),
            _ => None,
        }
    }

    /// Whether TLS is on for this listener (its own `TLS`, else the entry's).
    pub fn tls_enabled(&self, entry: &IngressGateway) -> bool {
        self.tls.or(entry.tls).is_some_and(|tls| tls.enabled)
    }
}

impl IngressGateway {
    /// Every host a TLS listener serves (what its certificate must name), sorted.
    pub fn tls_hosts(&self) -> Vec<String> {
        let hosts: BTreeSet<String> = self
            .listeners
            .iter()
            .filter(|l| l.tls_enabled(self))
            .flat_map(|l| l.services.iter().flat_map(|s| s.hosts.iter().cloned()))
            .collect();
        hosts.into_iter().collect()
    }

    /// Every service named (not `*`), with the field that names it.
    pub fn named_services(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            for (j, service) in listener.services.iter().enumerate() {
                if service.name != "*" {
                    out.push((
                        format!("Listeners[{i}].Services[{j}].Name"),
                        service.name.as_str(),
                    ));
                }
            }
        }
        out
    }
}

impl TerminatingGateway {
    /// Every linked service, with the field that names it.
    pub fn named_services(&self) -> Vec<(String, &str)> {
        self.services
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("Services[{i}].Name"), s.name.as_str()))
            .collect()
    }
}

/// True for a DNS name or a wildcard one (`*.example.com`): labels of letters, digits and `-`.
fn is_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && host.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Checks header changes at `field`: names are header names, values header values.
pub(super) fn check_header_modifiers(
    field: &str,
    modifiers: &HeaderModifiers,
    push: &mut impl FnMut(String, String),
) {
    for (where_, name) in header_names(field, modifiers) {
        if !is_header_name(name) {
            push(where_, format!("{name:?} is not a header name"));
        }
    }
    for (name, value) in modifiers.add.iter().chain(&modifiers.set) {
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            push(
                field.to_owned(),
                format!("the value of {name:?} is not a header value"),
            );
        }
    }
}

/// Every header name `modifiers` names, with its field.
fn header_names<'a>(field: &str, modifiers: &'a HeaderModifiers) -> Vec<(String, &'a str)> {
    let mut out: Vec<(String, &str)> = Vec::new();
    out.extend(
        modifiers
            .add
            .keys()
            .map(|k| (format!("{field}.Add"), k.as_str())),
    );
    out.extend(
        modifiers
            .set
            .keys()
            .map(|k| (format!("{field}.Set"), k.as_str())),
    );
    out.extend(
        modifiers
            .remove
            .iter()
            .map(|k| (format!("{field}.Remove"), k.as_str())),
    );
    out
}

/// Checks an `ingress-gateway` entry alone: ports in range and unique, known protocols, a
/// `tcp` listener with exactly one service and no hosts, `*` only on `http` listeners, TLS only
/// with hosts to certify, host names and header names well formed.
pub(super) fn check_ingress(entry: &IngressGateway, errors: &mut Vec<EntryError>) {
    let mut push = |field: String, message: String| errors.push(EntryError::new(field, message));
    let mut ports: BTreeMap<i64, usize> = BTreeMap::new();
    for (i, listener) in entry.listeners.iter().enumerate() {
        let base = format!("Listeners[{i}]");
        if !(1..=65535).contains(&listener.port) {
            push(
                format!("{base}.Port"),
                format!("{} is not a port (1–65535)", listener.port),
            );
        } else if let Some(first) = ports.insert(listener.port, i) {
            push(
                format!("{base}.Port"),
                format!(
                    "port {} is already used by Listeners[{first}]",
                    listener.port
                ),
            );
        }
        let protocol = listener.parsed_protocol();
        if protocol.is_none() {
            push(
                format!("{base}.Protocol"),
                format!(
                    "unknown protocol {:?}; expected tcp, http, http2 or grpc",
                    listener.protocol.as_deref().unwrap_or_default()
                ),
            );
        }
        if listener.services.is_empty() {
            push(
                format!("{base}.Services"),
                "a listener needs at least one service".to_owned(),
            );
        }
        if protocol == Some(ListenerProtocol::Tcp) && listener.services.len() > 1 {
            push(
                format!("{base}.Services"),
                format!(
                    "a tcp listener serves exactly one service, not {}",
                    listener.services.len()
                ),
            );
        }
        let tls = listener.tls_enabled(entry);
        if tls && protocol == Some(ListenerProtocol::Tcp) {
            push(
                format!("{base}.TLS"),
                "TLS on a tcp listener is not supported yet; use an http listener".to_owned(),
            );
        }
        for (j, service) in listener.services.iter().enumerate() {
            let field = format!("{base}.Services[{j}]");
            if service.name == "*" {
                if protocol != Some(ListenerProtocol::Http) {
                    push(
                        format!("{field}.Name"),
                        "the wildcard service \"*\" needs an http listener (Protocol = \"http\")"
                            .to_owned(),
                    );
                }
                if !service.hosts.is_empty() {
                    push(
                        format!("{field}.Hosts"),
                        "the wildcard service \"*\" takes no Hosts".to_owned(),
                    );
                }
            } else if !is_service_name(&service.name) {
                push(
                    format!("{field}.Name"),
                    format!(
                        "{:?} is not a service name (letters, digits, '-', '_', '.')",
                        service.name
                    ),
                );
            }
            if protocol == Some(ListenerProtocol::Tcp) && !service.hosts.is_empty() {
                push(
                    format!("{field}.Hosts"),
                    "Hosts need an http listener: a tcp listener cannot route by Host".to_owned(),
                );
            }
            for (k, host) in service.hosts.iter().enumerate() {
                if !is_host(host) {
                    push(
                        format!("{field}.Hosts[{k}]"),
                        format!("{host:?} is not a host name (a DNS name, optionally *.-prefixed)"),
                    );
                }
            }
            if tls && service.name != "*" && service.hosts.is_empty() {
                push(
                    format!("{field}.Hosts"),
                    "TLS is enabled on this listener, so the service needs Hosts for its certificate"
                        .to_owned(),
                );
            }
            for (part, modifiers) in [
                ("RequestHeaders", &service.request_headers),
                ("ResponseHeaders", &service.response_headers),
            ] {
                let Some(modifiers) = modifiers else { continue };
                if protocol == Some(ListenerProtocol::Tcp) {
                    push(
                        format!("{field}.{part}"),
                        "header changes need an http listener".to_owned(),
                    );
                }
                check_header_modifiers(&format!("{field}.{part}"), modifiers, &mut push);
            }
        }
        if tls
            && listener.services.iter().all(|s| s.hosts.is_empty())
            && !listener.services.is_empty()
            && listener.services.iter().all(|s| s.name == "*")
        {
            push(
                format!("{base}.TLS"),
                "TLS is enabled but no service of this listener lists Hosts to certify".to_owned(),
            );
        }
    }
    // Hosts are unique across the services of one listener.
    for (i, listener) in entry.listeners.iter().enumerate() {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (j, service) in listener.services.iter().enumerate() {
            for (k, host) in service.hosts.iter().enumerate() {
                if let Some(first) = seen.insert(host.to_ascii_lowercase(), j) {
                    push(
                        format!("Listeners[{i}].Services[{j}].Hosts[{k}]"),
                        format!("host {host:?} is already routed to Services[{first}]"),
                    );
                }
            }
        }
    }
}

/// Checks a `terminating-gateway` entry alone: service names, file pairs, SNI.
pub(super) fn check_terminating(entry: &TerminatingGateway, errors: &mut Vec<EntryError>) {
    let mut seen = BTreeSet::new();
    for (i, service) in entry.services.iter().enumerate() {
        let base = format!("Services[{i}]");
        if !is_service_name(&service.name) {
            errors.push(EntryError::new(
                format!("{base}.Name"),
                format!(
                    "{:?} is not a service name (letters, digits, '-', '_', '.')",
                    service.name
                ),
            ));
        } else if !seen.insert(service.name.as_str()) {
            errors.push(EntryError::new(
                format!("{base}.Name"),
                format!("{:?} is linked twice", service.name),
            ));
        }
        if service.cert_file.is_some() != service.key_file.is_some() {
            errors.push(EntryError::new(
                format!("{base}.KeyFile"),
                "CertFile and KeyFile go together".to_owned(),
            ));
        }
        for (field, path) in [
            ("CAFile", &service.ca_file),
            ("CertFile", &service.cert_file),
            ("KeyFile", &service.key_file),
        ] {
            if path.as_deref().is_some_and(str::is_empty) {
                errors.push(EntryError::new(
                    format!("{base}.{field}"),
                    "must not be empty when given".to_owned(),
                ));
            }
        }
        if let Some(sni) = &service.sni
            && !is_host(sni)
        {
            errors.push(EntryError::new(
                format!("{base}.SNI"),
                format!("{sni:?} is not a host name"),
            ));
        }
    }
}

/// An HTTP field name (RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `host` (a request's `Host`, port removed, lowercased) matches `pattern` (a listed
/// host, `*.suffix`, or the default `<service>.ingress.*`).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    if let Some(prefix) = pattern.strip_suffix(".*") {
        // `<service>.ingress.*`: any domain after the prefix.
        return host
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1);
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1);
    }
    pattern == host
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: serde_json::Value) -> IngressGateway {
        serde_json::from_value(json).unwrap()
    }

    fn fields(entry: &IngressGateway) -> Vec<String> {
        let mut errors = Vec::new();
        check_ingress(entry, &mut errors);
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_valid_entry_passes() {
        let e = entry(serde_json::json!({
            "Kind": "ingress-gateway", "Name": "in",
            "TLS": {"Enabled": false},
            "Listeners": [
                {"Port": 8080, "Protocol": "http", "Services": [
                    {"Name": "web", "Hosts": ["web.example.com"],
                     "RequestHeaders": {"Add": {"x-a": "1"}, "Remove": ["x-b"]}},
                    {"Name": "*"}]},
                {"Port": 9000, "Services": [{"Name": "db"}]}
            ]
        }));
        assert_eq!(fields(&e), Vec::<String>::new());
    }

    #[test]
    fn each_bad_input_names_its_field() {
        let e = entry(serde_json::json!({
            "Kind": "ingress-gateway", "Name": "in",
            "Listeners": [
                {"Port": 8080, "Protocol": "http", "Services": [{"Name": "web"}]},
                {"Port": 8080, "Protocol": "http", "Services": [{"Name": "api"}]},
                {"Port": 9000, "Services": [{"Name": "*"}]},
                {"Port": 9443, "Protocol": "http", "TLS": {"Enabled": true},
                 "Services": [{"Name": "web"}]},
                {"Port": 70000, "Protocol": "smtp", "Services": [{"Name": "a b"}]},
                {"Port": 9001, "TLS": {"Enabled": true}, "Services": [{"Name": "db"}]}
            ]
        }));
        assert_eq!(
            fields(&e),
            [
                "Listeners[1].Port",
                "Listeners[2].Services[0].Name",
                "Listeners[3].Services[0].Hosts",
                "Listeners[4].Port",
                "Listeners[4].Protocol",
                "Listeners[4].Services[0].Name",
                "Listeners[5].TLS",
                "Listeners[5].Services[0].Hosts",
            ]
        );
    }

    #[test]
    fn hosts_match_exactly_by_wildcard_and_by_default() {
        assert!(host_matches("web.example.com", "web.example.com"));
        assert!(!host_matches("web.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("web.ingress.*", "web.ingress.consul"));
        assert!(host_matches("web.ingress.*", "web.ingress.example.com"));
        assert!(!host_matches("web.ingress.*", "web.ingress"));
        assert!(!host_matches("web.ingress.*", "webx.ingress.consul"));
    }
}

#[cfg(test)]
mod file_tests {
    use super::super::ConfigEntry;

    #[test]
    fn an_hcl_ingress_entry_parses_in_consul_style() {
        let text = r#"
Kind = "ingress-gateway"
Name = "ingress"
TLS {
  Enabled = true
}
Listeners = [
  {
    Port     = 8443
    Protocol = "http"
    Services = [
      {
        Name  = "web"
        Hosts = ["web.example.com"]
        RequestHeaders {
          Add = { "x-from" = "ingress" }
        }
      }
    ]
  }
]
"#;
        let entry =
            ConfigEntry::parse_file_text(std::path::Path::new("ingress.hcl"), text).unwrap();
        let ConfigEntry::IngressGateway(gateway) = &entry else {
            panic!("{entry:?}");
        };
        assert_eq!(gateway.tls_hosts(), ["web.example.com"]);
        let service = &gateway.listeners[0].services[0];
        assert_eq!(
            service.request_headers.as_ref().unwrap().add["x-from"],
            "ingress"
        );
        super::super::validate::validate(&entry).unwrap();
    }
}
