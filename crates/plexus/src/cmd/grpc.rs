//! `--grpc-addr`: the xDS (gRPC) listener that `plexus server`, `plexus dev` and `plexus agent`
//! serve Envoys on, fed from the process's own HTTP API.
//!
//! Envoy talks to the xDS server of the node its proxy is registered on (its local agent, or
//! the server or dev process whose agent holds the registration), as Consul's Envoys talk to
//! their local agent.

use std::net::SocketAddr;

use anyhow::Context;
use plexus_runtime::Shutdown;
use tokio::net::TcpListener;
use tracing::{error, warn};

/// Consul's gRPC port.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:8502";

/// The xDS listener's flag.
#[derive(Debug, Clone, clap::Args)]
pub struct GrpcArgs {
    /// Address Envoys fetch their configuration from (xDS over gRPC): `ip:port` (port 0 picks a
    /// free port, logged as listener "grpc"), or `off`. Default: 127.0.0.1:8502; when that
    /// port is taken (another Plexus on this machine) xDS is off, with a warning.
    #[arg(long = "grpc-addr", value_name = "IP:PORT|off")]
    pub grpc_addr: Option<String>,
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

impl GrpcArgs {
    /// Checks the flag; `Err` names the problem (exit 64). The xDS server reads the catalog
    /// through this process's plain-HTTP API on loopback, so `--https-only` turns the default
    /// listener off and refuses an explicit one.
    pub fn listen(&self, https_only: bool) -> Result<GrpcListen, String> {
        match self.grpc_addr.as_deref() {
            Some("off") => Ok(GrpcListen::Off),
            None if https_only => Ok(GrpcListen::Off),
            None => DEFAULT_GRPC_ADDR
                .parse()
                .map(GrpcListen::Default)
                .map_err(|e| format!("default --grpc-addr: {e}")),
            Some(text) => match text.parse() {
                Err(_) => Err(format!(
                    "--grpc-addr {text:?} is not an ip:port address (or \"off\")"
                )),
                Ok(_) if https_only => Err(format!(
                    "--grpc-addr {text:?} needs the plain HTTP API, which --https-only turns off \
                     (use --grpc-addr off)"
                )),
                Ok(addr) => Ok(GrpcListen::Explicit(addr)),
            },
        }
    }
}

/// Binds the listener (`None`: off, or the default address is taken).
pub async fn bind(listen: GrpcListen) -> anyhow::Result<Option<TcpListener>> {
    match listen {
        GrpcListen::Off => Ok(None),
        GrpcListen::Explicit(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .with_context(|| format!("cannot bind the gRPC (xDS) listener on {addr}")),
        GrpcListen::Default(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Ok(Some(listener)),
            Err(error) => {
                warn!(%addr, %error, "cannot bind the default gRPC (xDS) address; xDS is off (use --grpc-addr)");
                Ok(None)
            }
        },
    }
}

/// Serves xDS on `listener` for the control plane at `http_addr` until shutdown.
pub fn start(
    listener: TcpListener,
    http_addr: SocketAddr,
    node: &str,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let control = plexus_api::client::Client::new(&http_addr.to_string())?;
    let config = plexus_xds::XdsConfig {
        control,
        node: node.to_owned(),
    };
    plexus_runtime::telemetry::listening("grpc", addr);
    let stop = shutdown.token();
    shutdown.spawn(async move {
        if let Err(failure) = plexus_xds::serve(listener, config, stop).await {
            error!(error = %format!("{:#}", anyhow::Error::new(failure)), "xDS server failed");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_checked() {
        let args = |v: Option<&str>| GrpcArgs {
            grpc_addr: v.map(str::to_owned),
        };
        assert_eq!(
            args(None).listen(false),
            Ok(GrpcListen::Default("127.0.0.1:8502".parse().expect("addr")))
        );
        assert_eq!(args(Some("off")).listen(false), Ok(GrpcListen::Off));
        assert_eq!(
            args(Some("127.0.0.1:0")).listen(false),
            Ok(GrpcListen::Explicit("127.0.0.1:0".parse().expect("addr")))
        );
        assert_eq!(
            args(Some("localhost:8502")).listen(false),
            Err("--grpc-addr \"localhost:8502\" is not an ip:port address (or \"off\")".to_owned())
        );
    }

    #[test]
    fn https_only_turns_the_default_off_and_refuses_an_explicit_address() {
        let args = |v: Option<&str>| GrpcArgs {
            grpc_addr: v.map(str::to_owned),
        };
        assert_eq!(args(None).listen(true), Ok(GrpcListen::Off));
        assert_eq!(args(Some("off")).listen(true), Ok(GrpcListen::Off));
        assert_eq!(
            args(Some("127.0.0.1:0")).listen(true),
            Err(
                "--grpc-addr \"127.0.0.1:0\" needs the plain HTTP API, which --https-only turns \
                 off (use --grpc-addr off)"
                    .to_owned()
            )
        );
    }
}
