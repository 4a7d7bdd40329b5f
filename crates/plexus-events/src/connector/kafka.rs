//! The Kafka connector (pure-Rust `rskafka` client, standard Kafka protocol only).
//!
//! Each instance consumes exactly one topic-partition, the one the presence monitor assigned it
//! (`multiplex.0001-003` is partition 3 of topic `multiplex.0001`), read from the latest offset by
//! explicit assignment: no consumer group, so no rebalancing hands one instance's events to
//! another. A message to a peer is produced to the peer's topic-partition, which presence also
//! tells. Topics are created on first use with [`PARTITIONS`] partitions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use plexus_runtime::ErrorChain;
use plexus_runtime::lock::lock;
use rskafka::client::consumer::{StartOffset, StreamConsumerBuilder};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use super::{Connector, ConnectorError};
use crate::platform::Platform;
use crate::presence::PresenceClient;

/// Partitions per topic (matches the presence monitor's topic naming).
pub const PARTITIONS: i32 = 32;
/// Largest message produced (Kafka's default `message.max.bytes` is about 1 MB).
pub const MAX_PAYLOAD: usize = 900 * 1024;

/// Why the Kafka connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The bootstrap broker did not answer.
    #[error("cannot connect to Kafka at {bootstrap}")]
    Connect {
        /// The bootstrap address.
        bootstrap: String,
        /// The cause.
        #[source]
        source: rskafka::client::error::Error,
    },
    /// Presence did not assign a topic-partition in time.
    #[error("no topic-partition assigned by the presence monitor")]
    NoTopic,
    /// The assigned name is not `<topic>-<partition>`.
    #[error("invalid topic-partition {0:?}")]
    BadTopic(String),
    /// The partition could not be opened.
    #[error("cannot open {topic} partition {partition}")]
    Partition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The cause.
        #[source]
        source: rskafka::client::error::Error,
    },
}

/// Splits `multiplex.0001-003` into (`multiplex.0001`, 3).
pub fn split_topic(name: &str) -> Option<(String, i32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    let partition: i32 = partition.parse().ok()?;
    (!topic.is_empty() && (0..PARTITIONS).contains(&partition))
        .then(|| (topic.to_owned(), partition))
}

fn now() -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    rskafka::chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Held while producing to one topic-partition.
type ProduceTurn = Arc<tokio::sync::Mutex<()>>;

/// A connector over Kafka topic-partitions.
pub struct KafkaConnector {
    client: Client,
    partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
    /// One produce at a time per topic-partition (see [`Connector::send`] below).
    producing: Mutex<HashMap<(String, i32), ProduceTurn>>,
    connected: Arc<AtomicBool>,
    bootstrap: String,
}

impl KafkaConnector {
    /// Connects, waits for presence to assign this instance its topic-partition, consumes it
    /// (following reassignments after a presence reconnect) and attaches itself to `platform`.
    pub async fn start(
        bootstrap: &str,
        platform: &Platform,
        presence: PresenceClient,
    ) -> Result<Arc<Self>, KafkaError> {
        let client = ClientBuilder::new(vec![bootstrap.to_owned()])
            .client_id(format!("plexus-events-{}", platform.origin()))
            // Surface broker trouble as errors (503 to callers) instead of retrying forever.
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
                deadline: Some(Duration::from_secs(5)),
            })
            .build()
            .await
            .map_err(|source| KafkaError::Connect {
                bootstrap: bootstrap.to_owned(),
                source,
            })?;
        let connector = Arc::new(Self {
            client,
            partitions: Mutex::default(),
            producing: Mutex::default(),
            connected: Arc::new(AtomicBool::new(true)),
            bootstrap: bootstrap.to_owned(),
        });
        let topic = presence
            .connected(Duration::from_secs(30))
            .await
            .ok_or(KafkaError::NoTopic)?;
        let consumer = connector.consume(&topic, platform.clone()).await?;
        platform.set_connector(Arc::clone(&connector) as Arc<dyn Connector>);
        tracing::info!(%topic, bootstrap, "Kafka connector ready");
        let follower = Arc::clone(&connector);
        let platform = platform.clone();
        let mut state = presence.state();
        tokio::spawn(async move {
            let mut current = (topic, consumer);
            while state.changed().await.is_ok() {
                let Some(next) = state.borrow_and_update().topic.clone() else {
                    continue;
                };
                if next == current.0 {
                    continue;
                }
                current.1.abort();
                match follower.consume(&next, platform.clone()).await {
                    Ok(task) => current = (next, task),
                    Err(error) => {
                        tracing::warn!(error = %ErrorChain(&error), "cannot consume the new topic-partition");
                    }
                }
            }
        });
        Ok(connector)
    }

    async fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, KafkaError> {
        let key = (topic.to_owned(), partition);
        if let Some(found) = lock(&self.partitions).get(&key) {
            return Ok(Arc::clone(found));
        }
        let error = |source| KafkaError::Partition {
            topic: topic.to_owned(),
            partition,
            source,
        };
        let controller = self.client.controller_client().map_err(error)?;
        match controller.create_topic(topic, PARTITIONS, 1, 5_000).await {
            Ok(()) => tracing::info!(topic, "created Kafka topic"),
            Err(rskafka::client::error::Error::ServerError {
                protocol_error: rskafka::client::error::ProtocolError::TopicAlreadyExists,
                ..
            }) => {}
            Err(source) => return Err(error(source)),
        }
        let client = self
            .client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .map_err(error)?;
        let client = Arc::new(client);
        lock(&self.partitions).insert(key, Arc::clone(&client));
        Ok(client)
    }

    /// Drops a cached partition client (after a failure: the next use re-creates the topic if
    /// the broker lost it, e.g. after a restart with in-memory storage).
    fn forget(&self, topic: &str, partition: i32) {
        lock(&self.partitions).remove(&(topic.to_owned(), partition));
    }

    /// Consumes `name` from the latest offset until aborted; after a failure, waits, reopens the
    /// partition (re-creating the topic when needed) and consumes from the latest offset again.
    async fn consume(
        self: &Arc<Self>,
        name: &str,
        platform: Platform,
    ) -> Result<tokio::task::JoinHandle<()>, KafkaError> {
        let (topic, partition) =
            split_topic(name).ok_or_else(|| KafkaError::BadTopic(name.to_owned()))?;
        let mut client = self.partition(&topic, partition).await?;
        let this = Arc::clone(self);
        Ok(tokio::spawn(async move {
            loop {
                let mut stream =
                    StreamConsumerBuilder::new(Arc::clone(&client), StartOffset::Latest)
                        .with_max_wait_ms(100)
                        .build();
                while let Some(next) = stream.next().await {
                    match next {
                        Ok((record, _)) => {
                            this.connected.store(true, Ordering::Relaxed);
                            if let Some(value) = record.record.value {
                                platform.receive(&value).await;
                            }
                        }
                        Err(error) => {
                            if this.connected.swap(false, Ordering::Relaxed) {
                                tracing::warn!(%error, "Kafka consumer failed; reconnecting");
                                platform.fail_pending(503, "connector lost its broker connection; the request may not have completed");
                            }
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                this.forget(&topic, partition);
                match this.partition(&topic, partition).await {
                    Ok(reopened) => {
                        client = reopened;
                        this.connected.store(true, Ordering::Relaxed);
                        tracing::info!(%topic, partition, "Kafka consumer reconnected");
                    }
                    Err(error) => {
                        tracing::debug!(error = %ErrorChain(&error), "Kafka partition not reachable yet");
                    }
                }
            }
        }))
    }
}

impl Connector for KafkaConnector {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn max_payload(&self) -> usize {
        MAX_PAYLOAD
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn href(&self) -> String {
        format!("kafka://{}", self.bootstrap)
    }

    fn send<'a>(
        &'a self,
        origin: &'a str,
        topic: Option<&'a str>,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), ConnectorError>> {
        Box::pin(async move {
            let name = topic.ok_or_else(|| ConnectorError::NoAddress(origin.to_owned()))?;
            let (topic, partition) =
                split_topic(name).ok_or_else(|| ConnectorError::NoAddress(name.to_owned()))?;
            let client = self
                .partition(&topic, partition)
                .await
                .map_err(|e| ConnectorError::Unavailable(Box::new(e)))?;
            let record = Record {
                key: None,
                value: Some(bytes),
                headers: Default::default(),
                timestamp: now(),
            };
            // Concurrent produce requests to one partition lost a record now and then on the
            // Kafka-protocol broker the tests use (Tansu 0.6: one of 1,000 concurrent requests
            // never arrived); produced one at a time per partition, none is lost.
            let turn = Arc::clone(
                lock(&self.producing)
                    .entry((topic.clone(), partition))
                    .or_default(),
            );
            let _turn = turn.lock().await;
            if let Err(error) = client
                .produce(vec![record], Compression::NoCompression)
                .await
            {
                self.forget(&topic, partition);
                return Err(ConnectorError::Unavailable(Box::new(error)));
            }
            Ok(())
        })
    }
}
