//! `plexus echo-server`: a tiny TCP echo service for the demo and the quick start (what Consul's
//! guide uses `socat` for).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `plexus echo-server --listen ADDR`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free one; the bound address is logged).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: String,
}

/// Runs the echo server until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind echo listener on {}: {e}", args.listen))?;
    plexus_runtime::telemetry::listening("echo", listener.local_addr()?);
    let shutdown = plexus_runtime::Shutdown::new();
    shutdown.trigger_on_signals();
    let token = shutdown.token();
    serve(listener, token, Default::default()).await;
    Ok(ExitCode::SUCCESS)
}

/// Echoes every byte back on each accepted connection until `shutdown` is cancelled, counting in
/// `served` the connections that sent data (health probes that only connect are not counted).
/// Open connections are closed when it returns.
pub async fn serve(
    listener: TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    served: Arc<AtomicUsize>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((mut stream, peer)) = accepted else { continue };
                tracing::debug!(%peer, "echo connection");
                let served = served.clone();
                connections.spawn(async move {
                    let mut buf = [0u8; 8192];
                    let mut first = true;
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if std::mem::take(&mut first) {
                                    served.fetch_add(1, Ordering::SeqCst);
                                }
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        }
    }
}
