//! Joining the mesh in one call: [`MeshConfig`] (`cloud.connector` and friends, from code, the
//! environment or a properties file) and [`EventMesh::start`], which attaches the connector and
//! starts presence for a [`Platform`].
//!
//! Keys (file / environment):
//!
//! | key | env | meaning |
//! | --- | --- | --- |
//! | `cloud.connector` | `PLEXUS_CLOUD_CONNECTOR` | `none` (default), `nats` or `kafka` |
//! | `nats.url` | `PLEXUS_NATS_URL` | NATS server URL |
//! | `kafka.bootstrap` | `PLEXUS_KAFKA_BOOTSTRAP` | Kafka bootstrap `host:port` |
//! | `presence.control` | `PLEXUS_PRESENCE_CONTROL` | control plane `host:port`, or several replicas `host:port,host:port` tried in turn (needed with a connector) |
//! | `presence.group` | `PLEXUS_PRESENCE_GROUP` | presence group (default `default`) |
//! | `presence.token` | `PLEXUS_PRESENCE_TOKEN` | ACL token for presence (`service:write` on the app's name; needed when the control plane enforces ACLs) |
//!
//! A properties file has one `key = value` per line; `#` and `!` start comments. Unknown keys are
//! errors naming the line.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::connector::ConnectorKind;
use crate::connector::kafka::{KafkaConnector, KafkaError};
use crate::connector::nats::{NatsConnector, NatsError};
use crate::platform::Platform;
use crate::presence::PresenceClient;

/// How long [`EventMesh::start`] waits for the first presence welcome before going on (presence
/// keeps retrying in the background).
const PRESENCE_WAIT: Duration = Duration::from_secs(30);

/// Event-mesh settings of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// `cloud.connector` (default `none`).
    pub connector: ConnectorKind,
    /// `nats.url`.
    pub nats_url: Option<String>,
    /// `kafka.bootstrap`.
    pub kafka_bootstrap: Option<String>,
    /// `presence.control`.
    pub control: Option<String>,
    /// `presence.group` (default `default`).
    pub group: String,
    /// `presence.token`: the ACL token sent when joining presence (never shown by `Debug`).
    pub token: Option<plexus_api::acl::SecretId>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            connector: ConnectorKind::None,
            nats_url: None,
            kafka_bootstrap: None,
            control: None,
            group: "default".to_owned(),
            token: None,
        }
    }
}

/// Invalid settings, each naming where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

const KEYS: [(&str, &str); 6] = [
    ("cloud.connector", "PLEXUS_CLOUD_CONNECTOR"),
    ("nats.url", "PLEXUS_NATS_URL"),
    ("kafka.bootstrap", "PLEXUS_KAFKA_BOOTSTRAP"),
    ("presence.control", "PLEXUS_PRESENCE_CONTROL"),
    ("presence.group", "PLEXUS_PRESENCE_GROUP"),
    ("presence.token", "PLEXUS_PRESENCE_TOKEN"),
];

impl MeshConfig {
    /// Sets one key; `source` names where it came from in errors.
    pub fn set(&mut self, key: &str, value: &str, source: &str) -> Result<(), String> {
        let value = value.trim();
        match key {
            "cloud.connector" => {
                self.connector = value.parse().map_err(|e| format!("{source}: {e}"))?;
            }
            "nats.url" => self.nats_url = Some(value.to_owned()),
            "kafka.bootstrap" => self.kafka_bootstrap = Some(value.to_owned()),
            "presence.control" => self.control = Some(value.to_owned()),
            "presence.token" => {
                self.token =
                    Some(plexus_api::acl::SecretId::new(value.trim())).filter(|t| !t.is_empty())
            }
            "presence.group" if !value.is_empty() => self.group = value.to_owned(),
            "presence.group" => return Err(format!("{source}: presence.group must not be empty")),
            other => {
                let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!(
                    "{source}: unknown key {other:?} (expected one of {})",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Applies the `PLEXUS_*` environment variables of the table above over `self`.
    pub fn with_env(mut self) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        for (key, var) in KEYS {
            if let Ok(value) = std::env::var(var)
                && let Err(e) = self.set(key, &value, var)
            {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// Parses a properties file's text; `name` is used in errors (`name:line`).
    pub fn parse_properties(text: &str, name: &str) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        let mut errors = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let source = format!("{name}:{}", n + 1);
            match line.split_once(['=', ':']) {
                Some((key, value)) => {
                    if let Err(e) = config.set(key.trim(), value, &source) {
                        errors.push(e);
                    }
                }
                None => errors.push(format!("{source}: expected key = value")),
            }
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// Reads a properties file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Self::parse_properties(&text, &path.display().to_string())
    }

    /// Checks that the chosen connector has what it needs; reports every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        match self.connector {
            ConnectorKind::Nats if self.nats_url.is_none() => {
                errors.push("nats.url: required with cloud.connector = nats".to_owned());
            }
            ConnectorKind::Kafka if self.kafka_bootstrap.is_none() => {
                errors.push("kafka.bootstrap: required with cloud.connector = kafka".to_owned());
            }
            _ => {}
        }
        if self.connector != ConnectorKind::None && self.control.is_none() {
            errors.push(
                "presence.control: a connector needs the presence monitor's address".to_owned(),
            );
        }
        if let Some(control) = &self.control {
            let addresses: Vec<&str> = control.split(',').map(str::trim).collect();
            if let Some(bad) = addresses.iter().find(|a| !valid_control_address(a)) {
                errors.push(format!(
                    "presence.control: invalid address {bad:?} in {control:?} (expected host:port, several comma-separated)"
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors))
        }
    }
}

/// True for `host:port` with a non-empty host and a numeric port.
fn valid_control_address(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Why joining the mesh failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The settings are invalid.
    #[error("invalid event mesh settings")]
    Config(#[from] ConfigError),
    /// NATS could not be reached.
    #[error("NATS connector failed")]
    Nats(#[from] NatsError),
    /// Kafka could not be reached.
    #[error("Kafka connector failed")]
    Kafka(#[from] KafkaError),
}

/// A platform joined to the mesh: connector attached, presence running until dropped or stopped.
pub struct EventMesh {
    /// The platform.
    pub platform: Platform,
    /// The presence client (with a connector).
    pub presence: Option<PresenceClient>,
    stop: CancellationToken,
}

impl EventMesh {
    /// Attaches the configured connector to `platform` and starts presence.
    pub async fn start(platform: Platform, config: &MeshConfig) -> Result<Self, MeshError> {
        config.validate()?;
        let stop = CancellationToken::new();
        // NATS first: the instance's subject must be subscribed before presence announces it, or a
        // peer's first request can reach the broker before anyone listens (lost, then a 408).
        if config.connector == ConnectorKind::Nats {
            let url = config.nats_url.clone().unwrap_or_default();
            NatsConnector::start(&url, &platform).await?;
        }
        let presence = config.control.as_ref().map(|control| {
            PresenceClient::start_with_token(
                platform.clone(),
                control.clone(),
                config.group.clone(),
                config.token.clone(),
                stop.clone(),
            )
        });
        if let (ConnectorKind::Kafka, Some(presence)) = (config.connector, &presence) {
            let bootstrap = config.kafka_bootstrap.clone().unwrap_or_default();
            KafkaConnector::start(&bootstrap, &platform, presence.clone()).await?;
        }
        if let Some(presence) = &presence {
            match presence.connected(PRESENCE_WAIT).await {
                Some(topic) => tracing::info!(%topic, "joined the event mesh"),
                None => tracing::warn!("not yet connected to the presence monitor; still trying"),
            }
        }
        Ok(Self {
            platform,
            presence,
            stop,
        })
    }

    /// Stops presence (peers see this instance leave).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for EventMesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn properties_file() {
        let text = "# event mesh\ncloud.connector = nats\nnats.url=nats://127.0.0.1:4222\n\npresence.control: 127.0.0.1:8500\n";
        let c = MeshConfig::parse_properties(text, "app.properties").unwrap();
        assert_eq!(c.connector, ConnectorKind::Nats);
        assert_eq!(c.nats_url.as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!(c.control.as_deref(), Some("127.0.0.1:8500"));
        assert_eq!(c.group, "default");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn errors_name_line_and_key_and_are_all_reported() {
        let text = "cloud.connector = rabbit\nbogus.key = 1\njust text\n";
        let e = MeshConfig::parse_properties(text, "a.properties").unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(
            e.0[0].starts_with("a.properties:1: cloud.connector: expected none, nats or kafka"),
            "{e}"
        );
        assert!(
            e.0[1].contains("a.properties:2: unknown key \"bogus.key\""),
            "{e}"
        );
        assert!(
            e.0[2].contains("a.properties:3: expected key = value"),
            "{e}"
        );
        let missing = MeshConfig {
            connector: ConnectorKind::Kafka,
            ..MeshConfig::default()
        };
        let e = missing.validate().unwrap_err();
        assert!(
            e.to_string().contains("kafka.bootstrap") && e.to_string().contains("presence.control"),
            "{e}"
        );
        for (control, ok) in [
            ("127.0.0.1:8500", true),
            ("a:1,b:2", true),
            (" a:1 , b:2 ", true),
            ("a:1,", false),
            ("a:1,nope", false),
            (":1", false),
            ("a:port", false),
        ] {
            let config = MeshConfig {
                control: Some(control.to_owned()),
                ..MeshConfig::default()
            };
            match config.validate() {
                Ok(()) => assert!(ok, "{control:?} accepted"),
                Err(e) => {
                    assert!(!ok, "{control:?}: {e}");
                    assert!(
                        e.0[0].starts_with("presence.control: invalid address"),
                        "{e}"
                    );
                }
            }
        }
    }
}
