//! Tracing set-up: human-readable logs on stderr, filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. Safe to call more than once (later calls do nothing).
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let use_ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_ansi)
        .with_target(false)
        .try_init();
}

/// Logs the one `listening` line per listener that tests and people read:
/// `listening listener=<name> addr=<addr>`.
pub fn listening(name: &str, addr: std::net::SocketAddr) {
    tracing::info!(listener = name, %addr, "listening");
}
