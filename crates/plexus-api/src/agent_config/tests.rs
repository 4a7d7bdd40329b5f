#![allow(clippy::unwrap_used)]

use super::*;

/// A machine with a private address on eth0 (the default route) and loopback.
fn interfaces() -> std::io::Result<Vec<IfAddr>> {
    let addr = |name: &str, addr: &str, prefix_len, default_route| IfAddr {
        name: name.to_owned(),
        addr: addr.parse().unwrap(),
        prefix_len,
        up: true,
        default_route,
    };
    Ok(vec![
        addr("lo", "127.0.0.1", 8, false),
        addr("eth0", "10.0.0.5", 24, true),
    ])
}

fn defaults(config: &AgentConfig) -> validate::Defaults {
    validate::Defaults {
        datacenter: config.datacenter.clone().unwrap_or_else(|| "dc1".into()),
        node: config.node_name.clone().unwrap_or_else(|| "n".into()),
    }
}

fn load(files: &[(&str, &str)], role: Role) -> Result<ConfigFiles, Vec<DefinitionError>> {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = files
        .iter()
        .map(|(name, text)| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    load_files(&paths, role, &interfaces, defaults)
}

fn errors(files: &[(&str, &str)], role: Role) -> Vec<String> {
    load(files, role)
        .unwrap_err()
        .iter()
        .map(|e| {
            let text = e.to_string();
            // Drop the temporary directory.
            text.rsplit_once('/')
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or(text)
        })
        .collect()
}

/// A server configuration as Consul's documentation writes it.
const CONSUL_SERVER_HCL: &str = r#"
datacenter = "dc1"
data_dir = "/opt/consul"
encrypt = "qDOPBEr+/oUVeOFQOnVypxwDaHzLrD+lvjo5vCEBbZ0="
server = true
bootstrap_expect = 3
ui = true
client_addr = "0.0.0.0"
bind_addr = "{{ GetPrivateIP }}"
advertise_addr = "{{ GetAllInterfaces | include \"network\" \"10.0.0.0/8\" | attr \"address\" }}"
ports {
  grpc = 8502
}
connect {
  enabled = true
}
auto_encrypt = {
  allow_tls = true
}
tls {
  defaults {
    ca_file = "/etc/consul.d/consul-agent-ca.pem"
    cert_file = "/etc/consul.d/dc1-server-consul-0.pem"
    key_file = "/etc/consul.d/dc1-server-consul-0-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}
acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = true
  tokens {
    initial_management = "b1gs33cr3t-0000-0000-0000-000000000000"
  }
}
retry_join = ["10.0.0.2"]
log_level = "INFO"
performance {
  raft_multiplier = 1
}
"#;

#[test]
fn consuls_documented_server_config_loads_as_is() {
    let files = load(&[("server.hcl", CONSUL_SERVER_HCL)], Role::Server).unwrap();
    let config = files.agent;
    assert!(files.services.is_empty());
    assert_eq!(config.datacenter.as_deref(), Some("dc1"));
    assert_eq!(config.data_dir, Some(PathBuf::from("/opt/consul")));
    assert_eq!(config.server, Some(true));
    assert_eq!(config.ui, Some(true));
    assert_eq!(config.client_addr, Some("0.0.0.0".parse().unwrap()));
    assert_eq!(config.bind_addr, Some("10.0.0.5".parse().unwrap()));
    assert_eq!(config.advertise_addr, Some("10.0.0.5".parse().unwrap()));
    assert_eq!(config.ports.grpc, Some(Port::Number(8502)));
    assert_eq!(config.ports.http, None);
    assert_eq!(config.connect_enabled, Some(true));
    assert_eq!(config.auto_encrypt.allow_tls, Some(true));
    assert_eq!(config.tls.verify_incoming, Some(true));
    assert_eq!(
        config.tls.ca_file,
        Some(PathBuf::from("/etc/consul.d/consul-agent-ca.pem"))
    );
    assert_eq!(config.acl.enabled, Some(true));
    assert_eq!(config.acl.default_policy, Some(AclPolicy::Deny));
    assert_eq!(
        config.acl.initial_management.as_ref().map(Secret::expose),
        Some("b1gs33cr3t-0000-0000-0000-000000000000")
    );
    assert_eq!(config.log_level, Some(LogLevel::Info));
    // Accepted-but-unused keys are explained, with their place; secrets never shown.
    let notes = config.notes.join("\n");
    for key in [
        "bootstrap_expect",
        "encrypt",
        "performance",
        "tls.internal_rpc",
        "retry_join",
    ] {
        assert!(
            notes.contains(&format!(": {key}: accepted")),
            "{key}: {notes}"
        );
    }
    assert!(notes.contains("server.hcl:6: bootstrap_expect"), "{notes}");
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("b1gs33cr3t") && !shown.contains("qDOPBEr"),
        "{shown}"
    );
}

#[test]
fn the_same_in_json_with_services_in_the_same_file() {
    let json = r#"{
  "datacenter": "east",
  "node_name": "web-1",
  "server": false,
  "retry_join": ["10.0.0.2", "https://10.0.0.3:8501"],
  "auto_encrypt": {"tls": true, "dns_san": ["web-1.example"], "ip_san": ["10.0.0.5"]},
  "ports": {"http": -1, "https": 8501},
  "service": {"name": "web", "port": 8080}
}"#;
    let files = load(&[("agent.json", json)], Role::Agent).unwrap();
    assert_eq!(files.agent.retry_join.len(), 2);
    assert_eq!(files.agent.ports.http, Some(Port::Disabled));
    assert_eq!(files.agent.ports.https, Some(Port::Number(8501)));
    assert_eq!(files.agent.auto_encrypt.tls, Some(true));
    assert_eq!(files.services.len(), 1);
    // Services are validated with the file's datacenter.
    assert_eq!(files.services[0].1.name, "web");
}

#[test]
fn unknown_and_bad_keys_are_reported_at_once_with_file_line_and_key() {
    let hcl = r#"datacenter = "dc1"
ports {
  http = 8500
  serf_lan = 8301
}
raft_protocol = 3
services {
  name = "web"
  port = 99999
}
"#;
    let found = errors(&[("bad.hcl", hcl)], Role::Agent);
    let expected = [
        "bad.hcl:6: raft_protocol: unknown key `raft_protocol`: Plexus reads the agent keys datacenter,",
        "bad.hcl:4: ports.serf_lan: unknown field `serf_lan` (expected one of http, https, grpc, dns)",
        "bad.hcl:9: services[0].port: port 99999 is outside 1–65535",
    ];
    assert_eq!(found.len(), expected.len(), "{}", found.join("\n"));
    for needle in expected {
        assert!(
            found.iter().any(|e| e.starts_with(needle)),
            "{needle}\nin:\n{}",
            found.join("\n")
        );
    }
    // Fixing the shape errors shows the value errors, all at once too.
    let hcl = r#"datacenter = "dc 1"
server = false
ports {
  http = 70000
}
acl {
  default_policy = "maybe"
}
client_addr = "{{ GetPrivateIp }}"
bind_addr = "{{ GetAllInterfaces | include \"type\" \"IPv4\" | join \"address\" \" \" }}"
advertise_addr = "not-an-ip"
log_level = "loud"
advertise_addr_wan = "wan?"
"#;
    let found = errors(&[("values.hcl", hcl)], Role::Server);
    let expected = [
        "values.hcl:1: datacenter: \"dc 1\": expected 1 to 128 letters, digits, '-' and '_'",
        "values.hcl:2: server: `server = false` is an agent's configuration",
        "values.hcl:4: ports.http: 70000 is not a port",
        "values.hcl:7: acl.default_policy: \"maybe\": expected \"allow\" or \"deny\"",
        "values.hcl:9: client_addr: template \"{{ GetPrivateIp }}\": unknown function \"GetPrivateIp\"",
        "values.hcl:10: bind_addr: \"{{ GetAllInterfaces | include \\\"type\\\" \\\"IPv4\\\" | join \\\"address\\\" \\\" \\\" }}\" resolved to 2 addresses (127.0.0.1 10.0.0.5)",
        "values.hcl:11: advertise_addr: \"not-an-ip\" is not an IP address or a go-sockaddr template",
        "values.hcl:12: log_level: \"loud\": expected trace, debug, info, warn or err",
        "values.hcl:13: advertise_addr_wan: \"wan?\" is not an IP address or a go-sockaddr template",
    ];
    assert_eq!(found.len(), expected.len(), "{}", found.join("\n"));
    for needle in expected {
        assert!(
            found.iter().any(|e| e.starts_with(needle)),
            "{needle}\nin:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn role_specific_keys_and_typos() {
    let found = errors(
        &[("a.hcl", "auto_encrypt {\n  tls = true\n}\n")],
        Role::Server,
    );
    assert!(
        found[0].starts_with("a.hcl:2: auto_encrypt.tls: `tls` is for agents"),
        "{found:?}"
    );
    let found = errors(
        &[("a.hcl", "auto_encrypt {\n  allow_tls = true\n}\n")],
        Role::Agent,
    );
    assert!(found[0].contains("`allow_tls` is for servers"), "{found:?}");
    let found = errors(&[("a.hcl", "datacentre = \"dc1\"\n")], Role::Any);
    assert_eq!(
        found,
        ["a.hcl:1: datacentre: unknown key `datacentre` (did you mean `datacenter`?)"]
    );
    let found = errors(&[("a.json", "{\"ports\": {\"http\": \"80\"}}")], Role::Any);
    assert!(
        found[0].starts_with("a.json:1: ports.http: invalid type"),
        "{found:?}"
    );
    let found = errors(&[("a.json", "{\"ports\": ")], Role::Any);
    assert!(found[0].contains("invalid JSON"), "{found:?}");
}

#[test]
fn later_files_override_earlier_ones() {
    let files = load(
        &[
            (
                "1.hcl",
                "datacenter = \"one\"\nretry_join = [\"a\"]\nports {\n  http = 1\n}\n",
            ),
            ("2.hcl", "datacenter = \"two\"\nretry_join = [\"b\"]\n"),
        ],
        Role::Agent,
    )
    .unwrap();
    assert_eq!(files.agent.datacenter.as_deref(), Some("two"));
    assert_eq!(files.agent.retry_join, ["a", "b"]);
    assert_eq!(files.agent.ports.http, Some(Port::Number(1)));
}

#[test]
fn federation_keys_load_and_bad_ones_are_named() {
    let files = load(
        &[(
            "wan.hcl",
            "datacenter = \"dc2\"\nprimary_datacenter = \"dc1\"\nretry_join_wan = [\"10.0.1.10:8500\"]\nacl {\n  tokens {\n    replication = \"r-secret\"\n  }\n}\n",
        )],
        Role::Server,
    )
    .unwrap();
    assert_eq!(files.agent.retry_join_wan, ["10.0.1.10:8500"]);
    assert_eq!(files.agent.primary_datacenter.as_deref(), Some("dc1"));
    assert_eq!(
        files
            .agent
            .acl
            .replication_token
            .as_ref()
            .map(|t| t.expose()),
        Some("r-secret")
    );
    let found = errors(
        &[(
            "wan.hcl",
            "primary_datacenter = \"d c\"\nretry_join_wan = [\"a:1\", \"\"]\n",
        )],
        Role::Server,
    );
    assert!(
        found.iter().any(|e| e.contains("primary_datacenter")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|e| e.contains("retry_join_wan[1]")),
        "{found:?}"
    );
}
