//! The agent/server configuration file in Consul's format: a documented Consul server config
//! loads as is, flags override it, go-sockaddr templates resolve, bad files exit 64 naming
//! file, line and key.

use plexus_test::Process;
use plexus_test::mesh::run_cli;

use crate::{bin, write_file};

/// Consul's documented server configuration, with the data directory and ports a test can use
/// (`ports { http = 0 }` picks a free port) and the API address from a go-sockaddr template.
fn server_hcl(data_dir: &str) -> String {
    format!(
        r#"
datacenter = "east"
data_dir = "{data_dir}"
node_name = "from-file"
encrypt = "qDOPBEr+/oUVeOFQOnVypxwDaHzLrD+lvjo5vCEBbZ0="
server = true
bootstrap_expect = 3
ui = true
client_addr = "{{{{ GetAllInterfaces | include \"name\" \"^lo$\" | include \"type\" \"IPv4\" | attr \"address\" }}}}"
bind_addr = "0.0.0.0"
ports {{
  http  = 0
  https = 0
  grpc  = 8502
}}
connect {{
  enabled = true
}}
auto_encrypt = {{
  allow_tls = true
}}
acl {{
  enabled        = true
  default_policy = "deny"
  tokens {{
    initial_management = "f1le-t0ken-5ecret"
  }}
}}
log_level = "INFO"
services {{
  name = "from-config"
  port = 7070
}}
"#
    )
}

#[tokio::test]
async fn a_consul_server_config_loads_and_flags_override_it() {
    let data = tempfile::tempdir().unwrap();
    let (_dir, file) = write_file("server.hcl", &server_hcl(data.path().to_str().unwrap()));
    let server = Process::spawn(
        "server:config",
        bin(),
        &[
            "server",
            "--dns-addr",
            "127.0.0.1:0",
            "--config-file",
            file.to_str().unwrap(),
            "--node",
            "from-flag",
        ]
        .map(str::to_owned),
        &[],
    )
    .unwrap();
    // The template resolved to loopback; ports = 0 picked free ports; https came from ports.
    let http = server.listening("http").await.unwrap();
    let https = server.listening("https").await.unwrap();
    assert!(http.ip().is_loopback() && https.ip().is_loopback());
    // The file's acl block is applied: ACLs on, default deny, its initial management token.
    let anonymous = plexus_api::client::Client::new(&http.to_string()).unwrap();
    assert_eq!(
        anonymous.agent_self().await.unwrap_err().status(),
        Some(403)
    );
    let client = anonymous.with_token(Some(plexus_api::acl::SecretId::new("f1le-t0ken-5ecret")));
    let me = client.agent_self().await.unwrap();
    let shown = serde_json::to_value(&me).unwrap();
    // The flag wins over node_name; the file's datacenter is used.
    assert_eq!(shown["Config"]["NodeName"], "from-flag", "{shown}");
    assert_eq!(shown["Config"]["Datacenter"], "east", "{shown}");
    // The file's service was registered; its data_dir holds the store.
    plexus_test::eventually!(
        client
            .agent_services()
            .await
            .is_ok_and(|s| s.contains_key("from-config"))
    );
    assert!(std::fs::read_dir(data.path()).unwrap().next().is_some());
    // Accepted-but-unused keys are explained; the token never shows.
    server
        .wait_for_line("bootstrap_expect: accepted and not used")
        .await
        .unwrap();
    server.wait_for_line("ACLs enabled").await.unwrap();
    assert!(!server.output().contains("f1le-t0ken-5ecret"));
    // plexus validate reads the same file.
    let (code, out, err) = run_cli(bin(), &["validate", file.to_str().unwrap()], &[]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1 service(s) and agent settings in 1 file(s)"),
        "{out}"
    );
    assert!(
        err.contains("note: ") && err.contains("encrypt: accepted"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_configuration_files_exit_64_naming_file_line_and_key() {
    let hcl = r#"datacenter = "east"
ports {
  http = 70000
}
advertise_addr = "{{ GetInterfaceIP \"no-such-interface-x\" }}"
acl {
  default_policy = "maybe"
}
"#;
    let (_dir, file) = write_file("bad.hcl", hcl);
    let path = file.to_str().unwrap();
    let (code, _, err) = run_cli(
        bin(),
        &[
            "server",
            "--config-file",
            path,
            "--http-addr",
            "127.0.0.1:0",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(code, 64, "{err}");
    for needle in [
        format!("{path}:3: ports.http: 70000 is not a port"),
        format!(
            "{path}:5: advertise_addr: \"{{{{ GetInterfaceIP \\\"no-such-interface-x\\\" }}}}\" resolved to no address"
        ),
        format!("{path}:7: acl.default_policy: \"maybe\": expected \"allow\" or \"deny\""),
        "3 configuration error(s); not starting.".to_owned(),
    ] {
        assert!(err.contains(&needle), "{needle}\nin:\n{err}");
    }
    assert!(!err.contains("listening"), "bound before refusing: {err}");
    // Keys Plexus does not know: file:line:key, for every command and for validate.
    let (_dir2, unknown) = write_file(
        "unknown.json",
        "{\n  \"datacenter\": \"dc1\",\n  \"raft_protocol\": 3\n}\n",
    );
    let unknown = unknown.to_str().unwrap();
    for args in [
        vec!["agent", "--config-file", unknown, "--server", "127.0.0.1:1"],
        vec!["dev", "--config-file", unknown],
        vec!["validate", unknown],
    ] {
        let (code, _, err) = run_cli(bin(), &args, &[]).unwrap();
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{unknown}:3: raft_protocol: unknown key `raft_protocol`"
            )),
            "{args:?}: {err}"
        );
    }
    // A server's file given to an agent.
    let (_dir3, server_file) = write_file("s.hcl", "server = true\n");
    let (code, _, err) = run_cli(
        bin(),
        &[
            "agent",
            "--config-file",
            server_file.to_str().unwrap(),
            "--server",
            "127.0.0.1:1",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(":1: server: `server = true` is a server's configuration"),
        "{err}"
    );
}

/// An agent takes its servers from `retry_join`, TLS from `tls { defaults }`, and `ports.http =
/// -1` turns plain HTTP off.
#[tokio::test]
async fn an_agent_reads_servers_and_listeners_from_its_file() {
    let dev = crate::dev(&[]).await;
    let hcl = format!(
        "retry_join = [\"{}\"]\nnode_name = \"n-file\"\nclient_addr = \"127.0.0.1\"\nports {{\n  http = 0\n}}\nservice {{\n  name = \"filed\"\n  port = 9000\n}}\n",
        dev.addr()
    );
    let (_dir, file) = write_file("agent.hcl", &hcl);
    let agent = Process::spawn(
        "agent:file",
        bin(),
        &[
            "agent",
            "--config-file",
            file.to_str().unwrap(),
            "--lease-ttl",
            "5s",
        ]
        .map(str::to_owned),
        &[],
    )
    .unwrap();
    agent.listening("http").await.unwrap();
    plexus_test::eventually!(
        dev.client
            .catalog_service("filed", Default::default())
            .await
            .is_ok_and(|s| s.value.iter().any(|i| i.node == "n-file"))
    );
}
