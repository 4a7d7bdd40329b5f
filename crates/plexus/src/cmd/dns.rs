//! The DNS flags of `plexus dev` and `plexus server`, checked before anything is bound, and the
//! DNS listeners (UDP and TCP on the same address) started beside the HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use plexus_control::StoreCatalog;
use plexus_control::dns::{Dns, DnsConfig, DnsSettings};
use plexus_runtime::Shutdown;
use tokio::net::{TcpListener, UdpSocket};

use super::parse_duration;

/// DNS flags (Consul's `dns_config` and `ports.dns`).
#[derive(Debug, Clone, clap::Args)]
pub struct DnsArgs {
    /// DNS address, UDP and TCP; port 0 picks a free port (both bound addresses are logged).
    #[arg(long = "dns-addr", default_value = "127.0.0.1:8600")]
    pub dns_addr: String,
    /// The domain DNS answers for (`web.service.<domain>`).
    #[arg(long = "dns-domain", default_value = "consul")]
    pub dns_domain: String,
    /// TTL of service answers.
    #[arg(long = "dns-service-ttl", default_value = "0s", value_parser = parse_duration)]
    pub dns_service_ttl: Duration,
    /// TTL of node answers.
    #[arg(long = "dns-node-ttl", default_value = "0s", value_parser = parse_duration)]
    pub dns_node_ttl: Duration,
    /// SOA minimum TTL (how long resolvers cache NXDOMAIN).
    #[arg(long = "dns-soa-min-ttl", default_value = "0s", value_parser = parse_duration)]
    pub dns_soa_min_ttl: Duration,
    /// Answer only instances whose checks all pass (default: warning ones too, never critical).
    #[arg(long = "dns-only-passing")]
    pub dns_only_passing: bool,
    /// A DNS server (`ip[:port]`, port 53 by default) for names outside the domain; repeatable,
    /// tried in order. Without one such names are REFUSED.
    #[arg(long = "dns-recursor")]
    pub dns_recursors: Vec<String>,
}

impl DnsArgs {
    /// The validated configuration for a server of `datacenter`; `Err` names the flag.
    pub fn config(&self, datacenter: &str) -> Result<DnsConfig, String> {
        let recursors = self
            .dns_recursors
            .iter()
            .map(|r| parse_recursor(r))
            .collect::<Result<Vec<_>, _>>()?;
        self.dns_addr
            .parse::<SocketAddr>()
            .map_err(|e| format!("--dns-addr {:?} is not ip:port: {e}", self.dns_addr))?;
        DnsConfig::try_from(DnsSettings {
            domain: self.dns_domain.clone(),
            datacenter: datacenter.to_owned(),
            service_ttl: self.dns_service_ttl,
            node_ttl: self.dns_node_ttl,
            soa_min_ttl: self.dns_soa_min_ttl,
            only_passing: self.dns_only_passing,
            recursors,
            ..DnsSettings::default()
        })
        .map_err(|e| e.to_string())
    }

    /// Binds UDP and TCP on `--dns-addr` (the TCP port follows the UDP one when 0 was asked).
    pub async fn bind(&self) -> anyhow::Result<(UdpSocket, TcpListener)> {
        let addr: SocketAddr = self
            .dns_addr
            .parse()
            .with_context(|| format!("--dns-addr {:?}", self.dns_addr))?;
        // With port 0, a free UDP port may be taken over TCP: try a few.
        for _ in 0..16 {
            let udp = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("cannot bind DNS (UDP) on {addr}"))?;
            let bound = udp.local_addr()?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => return Ok((udp, tcp)),
                Err(_) if addr.port() == 0 => continue,
                Err(error) => {
                    return Err(error).with_context(|| format!("cannot bind DNS (TCP) on {bound}"));
                }
            }
        }
        anyhow::bail!("cannot find a port free for DNS over both UDP and TCP on {addr}")
    }
}

fn parse_recursor(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("--dns-recursor {text:?} is not ip[:port]"))
}

/// Serves DNS on the bound sockets until shutdown, logging a `listening` line for each; queries
/// are answered as `acl` resolves a request without a token (the default token, else anonymous).
pub fn serve(
    catalog: Arc<StoreCatalog>,
    queries: Arc<plexus_control::query::Queries>,
    federation: plexus_control::wan::Shared,
    acl: plexus_runtime::acl::Resolver,
    config: DnsConfig,
    (udp, tcp): (UdpSocket, TcpListener),
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let dns = Dns::new(catalog, config)
        .with_acl(acl)
        .with_queries(queries)
        .with_federation(federation);
    plexus_runtime::telemetry::listening("dns-udp", udp.local_addr()?);
    plexus_runtime::telemetry::listening("dns-tcp", tcp.local_addr()?);
    shutdown.spawn(plexus_control::dns::serve::udp(
        udp,
        dns.clone(),
        shutdown.token(),
    ));
    shutdown.spawn(plexus_control::dns::serve::tcp(tcp, dns, shutdown.token()));
    Ok(())
}
