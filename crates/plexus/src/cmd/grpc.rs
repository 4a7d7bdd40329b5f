//! `--grpc-addr` and `--grpc-tls-addr`: the xDS (gRPC) listeners that `plexus server`,
//! `plexus dev` and `plexus agent` serve Envoys on, fed from the process's own HTTP API.
//!
//! Envoy talks to the xDS server of the node its proxy is registered on (its local agent, or
//! the server or dev process whose agent holds the registration), as Consul's Envoys talk to
//! their local agent. `--grpc-tls-addr` (Consul's `grpc_tls` port) serves the same over TLS
//! with the HTTPS API's certificate (and its `--verify-incoming`).

use std::net::SocketAddr;

use anyhow::Context;
use plexus_runtime::Shutdown;
use plexus_runtime::tls::TlsServer;
use tokio::net::TcpListener;
use tracing::{error, warn};

/// Consul's gRPC port.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:8502";

/// The xDS listeners' flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GrpcArgs {
    /// Address Envoys fetch their configuration from (xDS over gRPC): `ip:port` (port 0 picks a
    /// free port, logged as listener "grpc"), or `off`. Default: 127.0.0.1:8502; when that
    /// port is taken (another Plexus on this machine) xDS is off, with a warning.
    #[arg(long = "grpc-addr", value_name = "IP:PORT|off")]
    pub grpc_addr: Option<String>,
    /// xDS over TLS (Consul's `grpc_tls` port) with the HTTPS API's certificate and its
    /// --verify-incoming: `ip:port` (port 0 picks a free port, logged as listener "grpc_tls").
    /// Off unless given; needs --https-addr.
    #[arg(long = "grpc-tls-addr", value_name = "IP:PORT")]
    pub grpc_tls_addr: Option<String>,
}

/// Where to listen, checked before anything is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcListen {
    /// Not at all.
    Off,
    /// The default address (may be taken).
    Default(SocketAddr),
    /// An address the user named (must bind).
    Explicit(SocketAddr),
}

/// Both listeners' plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcPlan {
    /// `--grpc-addr`.
    pub plain: GrpcListen,
    /// `--grpc-tls-addr`.
    pub tls: Option<SocketAddr>,
}

/// Both listeners, bound.
#[derive(Debug, Default)]
pub struct GrpcBound {
    plain: Option<TcpListener>,
    tls: Option<TcpListener>,
}

impl GrpcBound {
    /// The plain listener's address (`None` when off or the default address was taken).
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|l| l.local_addr().ok())
    }
}

impl GrpcArgs {
    /// Checks the flags; `Err` names the problem (exit 64). The xDS server reads the catalog
    /// through this process's plain-HTTP API on loopback, so `--https-only` turns the default
    /// listener off and refuses an explicit one; `--grpc-tls-addr` needs the HTTPS listener's
    /// certificate (`has_https`).
    pub fn listen(&self, https_only: bool, has_https: bool) -> Result<GrpcPlan, String> {
        let needs_http = |flag: &str, text: &str| {
            format!(
                "{flag} {text:?} needs the plain HTTP API, which --https-only turns off \
                 (the xDS server reads the catalog through it)"
            )
        };
        let plain = match self.grpc_addr.as_deref() {
            Some("off") => GrpcListen::Off,
            None if https_only => GrpcListen::Off,
            None => DEFAULT_GRPC_ADDR
                .parse()
                .map(GrpcListen::Default)
                .map_err(|e| format!("default --grpc-addr: {e}"))?,
            Some(text) => match text.parse() {
                Err(_) => {
                    return Err(format!(
                        "--grpc-addr {text:?} is not an ip:port address (or \"off\")"
                    ));
                }
                Ok(_) if https_only => return Err(needs_http("--grpc-addr", text)),
                Ok(addr) => GrpcListen::Explicit(addr),
            },
        };
        let tls = match self.grpc_tls_addr.as_deref() {
            None => None,
            Some(text) => match text.parse() {
                Err(_) => {
                    return Err(format!(
                        "--grpc-tls-addr {text:?} is not an ip:port address"
                    ));
                }
                Ok(_) if https_only => return Err(needs_http("--grpc-tls-addr", text)),
                Ok(_) if !has_https => {
                    return Err(format!(
                        "--grpc-tls-addr {text:?} serves the HTTPS API's certificate: give \
                         --https-addr too"
                    ));
                }
                Ok(addr) => Some(addr),
            },
        };
        Ok(GrpcPlan { plain, tls })
    }
}

/// Binds the listeners (the plain one is `None` when off, or when the default address is
/// taken).
pub async fn bind(plan: GrpcPlan) -> anyhow::Result<GrpcBound> {
    let plain = match plan.plain {
        GrpcListen::Off => None,
        GrpcListen::Explicit(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind the gRPC (xDS) listener on {addr}"))?,
        ),
        GrpcListen::Default(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                warn!(%addr, %error, "cannot bind the default gRPC (xDS) address; xDS is off (use --grpc-addr)");
                None
            }
        },
    };
    let tls = match plan.tls {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind the gRPC TLS (xDS) listener on {addr}"))?,
        ),
    };
    Ok(GrpcBound { plain, tls })
}

/// Serves xDS on the bound listeners for the control plane at `http_addr` until shutdown;
/// `https_tls` is the HTTPS listener's TLS, which `--grpc-tls-addr` shares; `resolver` is the
/// API's, for the tokens Envoys present.
pub fn start(
    bound: GrpcBound,
    https_tls: Option<TlsServer>,
    http_addr: SocketAddr,
    node: &str,
    resolver: plexus_runtime::acl::Resolver,
    limits: plexus_runtime::connections::ConnLimits,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let tls = match (bound.tls, https_tls) {
        (None, _) => None,
        (Some(listener), Some(tls)) => Some((listener, tls)),
        (Some(_), None) => anyhow::bail!("--grpc-tls-addr needs the HTTPS listener's TLS"),
    };
    if bound.plain.is_none() && tls.is_none() {
        return Ok(());
    }
    if let Some(listener) = &bound.plain {
        plexus_runtime::telemetry::listening("grpc", listener.local_addr()?);
    }
    if let Some((listener, _)) = &tls {
        plexus_runtime::telemetry::listening("grpc_tls", listener.local_addr()?);
    }
    let control = plexus_api::client::Client::new(&http_addr.to_string())?;
    let config = plexus_xds::XdsConfig {
        control,
        node: node.to_owned(),
        resolver,
        limits,
    };
    let listeners = plexus_xds::XdsListeners {
        plain: bound.plain,
        tls,
    };
    let stop = shutdown.token();
    shutdown.spawn(async move {
        if let Err(failure) = plexus_xds::serve(listeners, config, stop).await {
            error!(error = %format!("{:#}", anyhow::Error::new(failure)), "xDS server failed");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(plain: Option<&str>, tls: Option<&str>) -> GrpcArgs {
        GrpcArgs {
            grpc_addr: plain.map(str::to_owned),
            grpc_tls_addr: tls.map(str::to_owned),
        }
    }

    fn plain(listen: GrpcListen) -> Result<GrpcPlan, String> {
        Ok(GrpcPlan {
            plain: listen,
            tls: None,
        })
    }

    #[test]
    fn the_flag_is_checked() {
        assert_eq!(
            args(None, None).listen(false, false),
            plain(GrpcListen::Default("127.0.0.1:8502".parse().expect("addr")))
        );
        assert_eq!(
            args(Some("off"), None).listen(false, false),
            plain(GrpcListen::Off)
        );
        assert_eq!(
            args(Some("127.0.0.1:0"), None).listen(false, false),
            plain(GrpcListen::Explicit("127.0.0.1:0".parse().expect("addr")))
        );
        assert_eq!(
            args(Some("localhost:8502"), None).listen(false, false),
            Err("--grpc-addr \"localhost:8502\" is not an ip:port address (or \"off\")".to_owned())
        );
    }

    #[test]
    fn https_only_turns_the_default_off_and_refuses_an_explicit_address() {
        assert_eq!(args(None, None).listen(true, true), plain(GrpcListen::Off));
        assert_eq!(
            args(Some("off"), None).listen(true, true),
            plain(GrpcListen::Off)
        );
        let refused = |flag: &str| {
            Err(format!(
                "{flag} \"127.0.0.1:0\" needs the plain HTTP API, which --https-only turns off \
                 (the xDS server reads the catalog through it)"
            ))
        };
        assert_eq!(
            args(Some("127.0.0.1:0"), None).listen(true, true),
            refused("--grpc-addr")
        );
        assert_eq!(
            args(Some("off"), Some("127.0.0.1:0")).listen(true, true),
            refused("--grpc-tls-addr")
        );
    }

    #[test]
    fn the_tls_listener_needs_an_https_certificate() {
        assert_eq!(
            args(Some("off"), Some("127.0.0.1:0")).listen(false, true),
            Ok(GrpcPlan {
                plain: GrpcListen::Off,
                tls: Some("127.0.0.1:0".parse().expect("addr")),
            })
        );
        assert_eq!(
            args(None, Some("127.0.0.1:0")).listen(false, false),
            Err(
                "--grpc-tls-addr \"127.0.0.1:0\" serves the HTTPS API's certificate: give \
                 --https-addr too"
                    .to_owned()
            )
        );
        assert_eq!(
            args(None, Some("8503")).listen(false, true),
            Err("--grpc-tls-addr \"8503\" is not an ip:port address".to_owned())
        );
    }
}
