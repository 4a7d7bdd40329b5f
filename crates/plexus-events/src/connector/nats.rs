//! The NATS connector: each instance subscribes to its own subject `plexus.<origin>`; a message
//! to a peer is published on the peer's subject. The client reconnects by itself after a broker
//! restart; while disconnected, sends fail at once (503 to the caller) and requests waiting for a
//! reply are failed with 503 rather than left to time out.

use std::sync::Arc;

use async_nats::connection::State;
use futures::StreamExt;
use futures::future::BoxFuture;

use super::{Connector, ConnectorError};
use crate::platform::Platform;

/// The subject an instance consumes.
pub fn subject(origin: &str) -> String {
    format!("plexus.{origin}")
}

/// Why the NATS connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The first connection failed.
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// The server URL.
        url: String,
        /// The cause.
        #[source]
        source: async_nats::ConnectError,
    },
    /// Subscribing to the instance's subject failed.
    #[error("cannot subscribe to {subject}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The cause.
        #[source]
        source: async_nats::SubscribeError,
    },
}

/// A connector over core NATS.
pub struct NatsConnector {
    client: async_nats::Client,
    href: String,
}

impl NatsConnector {
    /// Connects to `url`, subscribes to this instance's subject and attaches itself to `platform`.
    pub async fn start(url: &str, platform: &Platform) -> Result<Arc<Self>, NatsError> {
        let events = platform.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("plexus-events {}", platform.app()))
            .event_callback(move |event| {
                let platform = events.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            tracing::warn!("connector lost its NATS connection");
                            platform.fail_pending(503, "connector lost its broker connection; the request may not have completed");
                        }
                        async_nats::Event::Connected => tracing::info!("connector connected to NATS"),
                        other => tracing::debug!(event = %other, "NATS client event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|source| NatsError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let subject = subject(platform.origin());
        let mut subscription =
            client
                .subscribe(subject.clone())
                .await
                .map_err(|source| NatsError::Subscribe {
                    subject: subject.clone(),
                    source,
                })?;
        // Make sure the server has the subscription before anyone is told about this instance.
        if let Err(error) = client.flush().await {
            tracing::warn!(%error, "NATS flush after subscribe failed");
        }
        let consumer = platform.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                consumer.receive(&message.payload).await;
            }
            tracing::debug!("NATS subscription ended");
        });
        tracing::info!(%subject, url, "NATS connector ready");
        let href = url
            .rsplit_once('@')
            .map_or_else(|| url.to_owned(), |(_, host)| format!("nats://{host}"));
        let connector = Arc::new(Self { client, href });
        platform.set_connector(connector.clone());
        Ok(connector)
    }

    /// The underlying client (for tests that publish raw bytes).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

impl Connector for NatsConnector {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn href(&self) -> String {
        self.href.clone()
    }

    fn send<'a>(
        &'a self,
        origin: &'a str,
        _topic: Option<&'a str>,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), ConnectorError>> {
        Box::pin(async move {
            if !self.is_connected() {
                return Err(ConnectorError::Unavailable("not connected to NATS".into()));
            }
            self.client
                .publish(subject(origin), bytes.into())
                .await
                .map_err(|e| ConnectorError::Unavailable(Box::new(e)))
        })
    }
}
