//! Real brokers for the event mesh's tests: `nats-server` and Tansu (a Kafka-protocol broker),
//! both installed into `.tools/bin` by `scripts/setup-test-env.sh`, started on a free loopback
//! port and killed on drop.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::process::Process;

/// Where `scripts/setup-test-env.sh` links the brokers.
pub fn tools_bin() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.tools/bin"))
}

fn tool(name: &str) -> Result<PathBuf> {
    let path = tools_bin().join(name);
    if !path.exists() {
        bail!(
            "{name} not found at {}: run scripts/setup-test-env.sh to install it",
            path.display()
        );
    }
    Ok(path)
}

/// A running `nats-server`.
pub struct NatsServer {
    /// The child process.
    pub process: Process,
    /// Its client port on 127.0.0.1.
    pub port: u16,
}

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p <free port>` and waits until it is ready.
    pub async fn start() -> Result<Self> {
        Self::start_on(crate::free_port()).await
    }

    /// Starts it on a given port (a restart keeps the port clients reconnect to).
    pub async fn start_on(port: u16) -> Result<Self> {
        let args = ["-a", "127.0.0.1", "-p", &port.to_string()].map(str::to_owned);
        let process = Process::spawn("nats", &tool("nats-server")?, &args, &[])?;
        process.wait_for_line("Server is ready").await?;
        Ok(Self { process, port })
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL) and starts a new one on the same port.
    pub async fn restart(self) -> Result<Self> {
        let port = self.port;
        drop(self);
        Self::start_on(port).await
    }
}

/// A running Tansu broker (Kafka protocol, in-memory storage).
pub struct Tansu {
    /// The child process.
    pub process: Process,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Tansu {
    /// Starts `tansu broker` on a free port with in-memory storage.
    pub async fn start() -> Result<Self> {
        Self::start_on(crate::free_port()).await
    }

    /// Stops the broker (SIGKILL; its in-memory topics are gone) and starts a new one on the
    /// same port.
    pub async fn restart(self) -> Result<Self> {
        let port = self.port;
        drop(self);
        Self::start_on(port).await
    }

    /// Starts it on a given port.
    pub async fn start_on(port: u16) -> Result<Self> {
        let url = format!("tcp://127.0.0.1:{port}");
        let args = [
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ]
        .map(str::to_owned);
        // Tansu logs every request's spans at info: under load that is gigabytes of lines held
        // by the harness. Warnings are enough.
        let process = Process::spawn("tansu", &tool("tansu")?, &args, &[("RUST_LOG", "warn")])?;
        process.wait_for_line("ready in").await?;
        Ok(Self { process, port })
    }

    /// The bootstrap address (`127.0.0.1:PORT`).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
