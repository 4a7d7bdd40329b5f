//! Plexus's event mesh library: functions registered under route names inside an app, called by
//! route from the same instance or from any other instance through a broker.
//!
//! ```text
//! app code ─► Platform (post office) ─┬─► local worker pool ─► function
//!                                     └─► RoutingTable ─► Connector (NATS | Kafka) ─► peer
//! PresenceClient ◄─ websocket ─► control plane (joins, leaves, route changes, topic assignment)
//! ```
//!
//! Main types: [`EventEnvelope`] (the MsgPack envelope, Mercury's standard and compact forms),
//! [`Platform`] (register, send, request, fork-join, broadcast, exists, search),
//! [`routing::RoutingTable`], [`connector::Connector`] with [`connector::nats::NatsConnector`],
//! [`presence::PresenceClient`], and [`actuator`] (HTTP endpoints of an event-mode app).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), plexus_events::Fault> {
//! use std::time::Duration;
//! use plexus_events::{EventEnvelope, Platform, Value, Visibility};
//!
//! let platform = Platform::new("hello-app");
//! platform.register("hello.world", 10, Visibility::Public, |event: EventEnvelope| async move {
//!     Ok(Value::Map(vec![(Value::from("echo"), event.body)]))
//! })?;
//! let reply = platform
//!     .request(EventEnvelope::to("hello.world", "hi"), Duration::from_secs(5))
//!     .await;
//! assert_eq!(reply.status, 200);
//! assert_eq!(reply.body["echo"], Value::from("hi"));
//! // Joining other instances: `EventMesh::start(platform, &MeshConfig::default().with_env()?)`.
//! # Ok(())
//! # }
//! ```
//!
//! Not here: persistence of events (brokers are used as transports, not logs), consumer groups.

pub mod actuator;
pub mod connector;
pub mod envelope;
pub mod mesh;
pub mod node;
pub mod observe;
pub mod platform;
pub mod presence;
pub mod route;
pub mod routing;
pub mod segment;

pub use envelope::EventEnvelope;
pub use mesh::{EventMesh, MeshConfig};
pub use platform::{Fault, Platform, Visibility};
pub use rmpv::Value;
