//! Tracing set-up: human-readable logs on stderr, filtered by `RUST_LOG` (default `info`, or
//! the configuration file's `log_level` through [`set_level`]).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global tracing subscriber. Safe to call more than once (later calls do nothing).
pub fn init(default_filter: &str) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let explicit = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(default_filter));
    let (filter, handle) = reload::Layer::new(filter);
    let use_ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(use_ansi)
                .with_target(false),
        )
        .try_init()
        .is_ok();
    if installed && !explicit {
        let _ = LEVEL.set(handle);
    }
}

/// Sets the log level (`trace` … `error`) unless `RUST_LOG` chose the filter.
pub fn set_level(directive: &str) {
    if let Some(handle) = LEVEL.get() {
        let _ = handle.reload(EnvFilter::new(directive));
    }
}

/// Logs the one `listening` line per listener that tests and people read:
/// `listening listener=<name> addr=<addr>`.
pub fn listening(name: &str, addr: std::net::SocketAddr) {
    tracing::info!(listener = name, %addr, "listening");
}
