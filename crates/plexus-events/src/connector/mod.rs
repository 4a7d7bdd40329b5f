//! Cloud connectors: move encoded envelopes between instances through a broker.
//!
//! A connector only carries bytes: the platform encodes, segments (to [`Connector::max_payload`])
//! and reassembles. Each instance consumes its own subject (NATS) or topic-partition (Kafka);
//! incoming bytes go to [`crate::Platform::receive`].

pub mod kafka;
pub mod nats;

use futures::future::BoxFuture;

/// Which connector an app uses (`cloud.connector`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorKind {
    /// In-process only.
    None,
    /// NATS core subjects.
    Nats,
    /// Kafka topic-partitions.
    Kafka,
}

impl std::str::FromStr for ConnectorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "nats" => Ok(Self::Nats),
            "kafka" => Ok(Self::Kafka),
            other => Err(format!(
                "cloud.connector: expected none, nats or kafka, got {other:?}"
            )),
        }
    }
}

/// Why the connector could not send.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The broker is not reachable now.
    #[error("broker unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The target cannot be addressed (e.g. no topic known for it).
    #[error("no address for instance: {0}")]
    NoAddress(String),
}

/// Carries encoded envelopes to other instances.
pub trait Connector: Send + Sync + 'static {
    /// `nats`, `kafka`.
    fn name(&self) -> &'static str;
    /// Largest message the broker takes, in bytes.
    fn max_payload(&self) -> usize;
    /// True while connected to the broker.
    fn is_connected(&self) -> bool;
    /// Where the broker is (for `/health`; never with credentials).
    fn href(&self) -> String;
    /// Sends one message to the instance `origin` (consuming `topic`, when known).
    fn send<'a>(
        &'a self,
        origin: &'a str,
        topic: Option<&'a str>,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), ConnectorError>>;
}
