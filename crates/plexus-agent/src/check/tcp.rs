//! TCP checks: a connect to `host:port` (within the check's timeout) is passing, anything else
//! critical.

use plexus_api::CheckStatus;
use tokio::net::TcpStream;

use super::Outcome;

/// One TCP check's target.
pub(crate) struct TcpProbe {
    address: String,
}

impl TcpProbe {
    pub(crate) fn new(address: &str) -> Self {
        Self {
            address: address.to_owned(),
        }
    }

    pub(crate) fn target(&self) -> String {
        format!("TCP connect {}", self.address)
    }

    /// Connects and closes at once; the caller bounds the time.
    pub(crate) async fn probe(&self) -> Outcome {
        match TcpStream::connect(self.address.as_str()).await {
            Ok(_) => Outcome::new(CheckStatus::Passing, format!("{}: Success", self.target())),
            Err(error) => Outcome::critical(format!("{}: {error}", self.target())),
        }
    }
}
