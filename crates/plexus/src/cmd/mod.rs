//! One module per subcommand.

pub mod acl;
pub mod addresses;
pub mod agent;
pub mod auto_encrypt;
pub mod catalog;
pub mod config;
pub mod config_file;
pub mod connect;
pub mod demo;
pub mod demo_calculator;
pub mod demo_events;
pub mod demo_http;
pub mod dev;
pub mod dns;
pub mod echo_server;
pub mod envoy;
pub mod events;
pub mod events_app;
pub mod gateway;
pub mod grpc;
pub mod health;
pub mod intention;
pub mod job;
pub mod kv;
pub mod limits;
pub mod lock;
pub mod operator;
pub mod proxy;
pub mod server;
pub mod services;
pub mod tls;
pub mod user_event;
pub mod validate;
pub mod xds_load;

use plexus_api::acl::SecretId;
use plexus_api::client::{Client, DEFAULT_HTTP_ADDR, HTTP_ADDR_ENV};

/// How client commands find the control plane: `--http-addr`, else `PLEXUS_HTTP_ADDR`, else
/// `CONSUL_HTTP_ADDR`, else `127.0.0.1:8500`; `host:port`, `http://host:port` and
/// `https://host:port` work. TLS settings: [`tls::ClientTlsArgs`]. The ACL token: `--token`,
/// else `--token-file`, else `PLEXUS_HTTP_TOKEN`, `PLEXUS_HTTP_TOKEN_FILE`, `CONSUL_HTTP_TOKEN`,
/// `CONSUL_HTTP_TOKEN_FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Control-plane address (host:port, http://host:port or https://host:port), or several
    /// separated by commas: each is tried in turn while connections fail
    /// [env: PLEXUS_HTTP_ADDR, CONSUL_HTTP_ADDR].
    #[arg(long = "http-addr", env = HTTP_ADDR_ENV, default_value_t = default_http_addr(), hide_env = true)]
    pub http_addr: String,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub tls: tls::ClientTlsArgs,
}

/// The ACL token flags every client command, `plexus proxy` and `plexus agent` take.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TokenArgs {
    /// ACL token sent with every request (X-Consul-Token). Default: PLEXUS_HTTP_TOKEN, then
    /// CONSUL_HTTP_TOKEN; none means the anonymous token. Prefer --token-file: a flag shows in
    /// the process list.
    #[arg(long = "token", value_parser = parse_secret, value_name = "SECRET")]
    pub token: Option<SecretId>,
    /// A file holding the ACL token (instead of --token).
    #[arg(long = "token-file", value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
}

impl TokenArgs {
    /// The token to send, from the flags or the environment (`None`: anonymous).
    pub fn resolve(&self) -> anyhow::Result<Option<SecretId>> {
        Ok(plexus_api::client::resolve_token(
            self.token.as_ref(),
            self.token_file.as_deref(),
        )?)
    }
}

/// The token a server or agent uses for requests (HTTP API and DNS) that carry none: Consul's
/// `acl.tokens.default` (without it, such requests are the anonymous token).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DefaultTokenArgs {
    /// ACL token for requests without one, HTTP API and DNS (`acl.tokens.default`); default:
    /// the anonymous token. Prefer --default-token-file: a flag shows in the process list.
    #[arg(long = "default-token", value_parser = parse_secret, value_name = "SECRET")]
    pub default_token: Option<SecretId>,
    /// A file holding the default token (instead of --default-token).
    #[arg(
        long = "default-token-file",
        value_name = "PATH",
        conflicts_with = "default_token"
    )]
    pub default_token_file: Option<std::path::PathBuf>,
}

impl DefaultTokenArgs {
    /// The default token from the flags, else the configuration file's `acl.tokens.default`;
    /// `Err` names the flag (an unreadable or empty file).
    pub fn resolve(
        &self,
        config: &plexus_api::agent_config::AgentConfig,
    ) -> Result<Option<SecretId>, String> {
        if let Some(token) = &self.default_token {
            return Ok(Some(token.clone()).filter(|t| !t.expose().is_empty()));
        }
        if let Some(path) = &self.default_token_file {
            return plexus_api::client::read_token_file(path)
                .map(Some)
                .map_err(|e| format!("--default-token-file: {e}"));
        }
        Ok(config
            .acl
            .default_token
            .as_ref()
            .map(|secret| SecretId::new(secret.expose())))
    }
}

fn parse_secret(text: &str) -> Result<SecretId, String> {
    Ok(SecretId::new(text.trim()))
}

/// `CONSUL_HTTP_ADDR`, else `127.0.0.1:8500` (`PLEXUS_HTTP_ADDR` and the flag come first).
fn default_http_addr() -> String {
    tls::env_first(&["CONSUL_HTTP_ADDR"]).unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned())
}

impl ControlArgs {
    /// A client for the control plane, sending the ACL token.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.client_for(&split_addrs(&self.http_addr)?)
    }

    /// A client for these servers (failover), with this command's TLS settings and ACL token.
    pub fn client_for(&self, servers: &[String]) -> anyhow::Result<Client> {
        Ok(Client::with_options(servers, self.tls.options()?)?.with_token(self.token.resolve()?))
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
