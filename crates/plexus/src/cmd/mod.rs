//! One module per subcommand.

pub mod agent;
pub mod auto_encrypt;
pub mod catalog;
pub mod config;
pub mod config_file;
pub mod connect;
pub mod demo;
pub mod demo_events;
pub mod demo_http;
pub mod dev;
pub mod dns;
pub mod echo_server;
pub mod events;
pub mod events_app;
pub mod health;
pub mod intention;
pub mod kv;
pub mod limits;
pub mod operator;
pub mod proxy;
pub mod server;
pub mod services;
pub mod tls;
pub mod validate;

use plexus_api::client::{Client, DEFAULT_HTTP_ADDR, HTTP_ADDR_ENV};

/// How client commands find the control plane: `--http-addr`, else `PLEXUS_HTTP_ADDR`, else
/// `CONSUL_HTTP_ADDR`, else `127.0.0.1:8500`; `host:port`, `http://host:port` and
/// `https://host:port` work. TLS settings: [`tls::ClientTlsArgs`].
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Control-plane address (host:port, http://host:port or https://host:port), or several
    /// separated by commas: each is tried in turn while connections fail
    /// [env: PLEXUS_HTTP_ADDR, CONSUL_HTTP_ADDR].
    #[arg(long = "http-addr", env = HTTP_ADDR_ENV, default_value_t = default_http_addr(), hide_env = true)]
    pub http_addr: String,
    #[command(flatten)]
    pub tls: tls::ClientTlsArgs,
}

/// `CONSUL_HTTP_ADDR`, else `127.0.0.1:8500` (`PLEXUS_HTTP_ADDR` and the flag come first).
fn default_http_addr() -> String {
    tls::env_first(&["CONSUL_HTTP_ADDR"]).unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned())
}

impl ControlArgs {
    /// A client for the control plane.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.client_for(&split_addrs(&self.http_addr)?)
    }

    /// A client for these servers (failover), with this command's TLS settings.
    pub fn client_for(&self, servers: &[String]) -> anyhow::Result<Client> {
        Ok(Client::with_options(servers, self.tls.options()?)?)
    }
}

/// `a,b,c` as addresses (spaces around commas allowed); an empty one is an error naming the flag.
pub fn split_addrs(list: &str) -> anyhow::Result<Vec<String>> {
    let addrs: Vec<String> = list.split(',').map(|a| a.trim().to_owned()).collect();
    if addrs.iter().any(String::is_empty) {
        anyhow::bail!(
            "--http-addr {list:?}: expected one or more addresses separated by commas, with none empty"
        );
    }
    Ok(addrs)
}

/// Parses a Go-style duration flag (`10s`, `500ms`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    plexus_api::GoDuration::parse(text)
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

/// Exit code for invalid configuration (sysexits' EX_USAGE), used before any socket is bound.
pub const EXIT_CONFIG: u8 = 64;
