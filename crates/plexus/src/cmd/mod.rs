//! One module per subcommand.

pub mod agent;
pub mod catalog;
pub mod config;
pub mod connect;
pub mod demo;
pub mod demo_events;
pub mod demo_http;
pub mod dev;
pub mod echo_server;
pub mod envoy;
pub mod events_app;
pub mod grpc;
pub mod health;
pub mod intention;
pub mod kv;
pub mod operator;
pub mod proxy;
pub mod server;
pub mod services;
pub mod validate;
pub mod xds_load;

use plexus_api::client::{Client, DEFAULT_HTTP_ADDR, HTTP_ADDR_ENV};

/// How client commands find the control plane: `--http-addr`, else `PLEXUS_HTTP_ADDR`, else
/// `127.0.0.1:8500`; `host:port` and `http://host:port` both work.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Control-plane HTTP address (host:port or http://host:port).
    #[arg(long = "http-addr", env = HTTP_ADDR_ENV, default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: String,
}

impl ControlArgs {
    /// A client for the control plane.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.http_addr)?)
    }
}

/// Parses a Go-style duration flag (`10s`, `500ms`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    plexus_api::GoDuration::parse(text)
        .map(|d| d.get())
        .map_err(|e| e.to_string())
}

/// Exit code for invalid configuration (sysexits' EX_USAGE), used before any socket is bound.
pub const EXIT_CONFIG: u8 = 64;
