//! Black-box tests: the real `plexus` binary on 127.0.0.1 ephemeral ports, driven over sockets.
//! One integration-test binary; each module is one area of behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test binary: a failed unwrap is a failed test

mod acl;
mod acl_mesh;
mod agent;
mod bad_input;
mod checks;
mod cli;
mod config_entries;
mod config_file;
mod consul_client;
mod consul_compat;
mod datacenters;
mod demo;
mod demo_http;
mod dns;
mod durable;
mod envoy;
mod envoy_certs;
mod envoy_l7;
mod envoy_xds;
mod etcd;
mod events;
mod events_connector;
mod events_lang;
mod events_mercury;
mod filter;
mod gateways;
mod host_ports;
mod hosts;
mod identity;
mod identity_long;
mod intentions;
mod intentions_l7;
mod jobs;
mod jobs_envoy;
mod jobs_rollout;
mod kv;
mod l7;
mod l7_edge;
mod l7_endpoints;
mod l7_floods;
mod l7_limits;
mod l7_protocols;
mod lock;
mod mesh_gateways;
mod partition;
mod quorum;
mod registration;
mod robust;
mod robust_conns;
mod shutdown;
mod sidecar;
mod tls;
mod ui;

use std::path::{Path, PathBuf};

use plexus_test::Dev;

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_plexus"))
}

/// Starts `plexus dev` with extra arguments.
pub async fn dev(extra: &[&str]) -> Dev {
    Dev::start(bin(), extra).await.expect("plexus dev starts")
}

/// Writes `text` to `name` inside a fresh temporary directory, kept alive by the returned guard.
pub fn write_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write definition");
    (dir, path)
}

/// The issue's example: `client` calling `echo` through 127.0.0.1:<upstream>; sidecar ports are
/// assigned by the agent from 21000–21255.
pub fn client_echo_hcl(echo_port: u16, upstream_port: u16) -> String {
    mesh_hcl(echo_port, upstream_port, "", "")
}

/// The same with sidecar ports of this test's own, for tests that run proxies: tests run in
/// parallel, and two agents would each hand out 21000.
pub fn client_echo_hcl_with_sidecar_ports(echo_port: u16, upstream_port: u16) -> String {
    let client = format!("port = {}", plexus_test::free_port());
    let echo = format!("port = {}", plexus_test::free_port());
    mesh_hcl(echo_port, upstream_port, &client, &echo)
}

fn mesh_hcl(
    echo_port: u16,
    upstream_port: u16,
    client_sidecar: &str,
    echo_sidecar: &str,
) -> String {
    format!(
        r#"
services {{
  name = "client"
  port = 8080
  connect {{
    sidecar_service {{
      {client_sidecar}
      proxy {{
        upstreams {{
          destination_name = "echo"
          local_bind_port  = {upstream_port}
        }}
      }}
    }}
  }}
}}
services {{
  name = "echo"
  port = {echo_port}
  check {{
    tcp      = "127.0.0.1:{echo_port}"
    interval = "1s"
    timeout  = "500ms"
  }}
  connect {{
    sidecar_service {{
      {echo_sidecar}
    }}
  }}
}}
"#
    )
}

/// Raw HTTP helper: (status, parsed JSON body or Null, headers). It sends the test run's
/// management token (servers enforce ACLs; a `plexus dev` without `--acl` ignores it); tests
/// about ACLs use `acl::call` with the token they mean.
pub async fn http(
    method: &str,
    url: &str,
    body: Option<Vec<u8>>,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client
        .request(method, url)
        .header("x-consul-token", plexus_test::management_token());
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body read");
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, json, headers)
}
