//! Event-mode apps for black-box tests: `plexus events-app` processes with their actuator, and
//! event-over-HTTP calls to them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use plexus_events::EventEnvelope;

use crate::process::Process;

/// Which broker the app uses.
#[derive(Debug, Clone)]
pub enum Broker {
    /// NATS at this URL.
    Nats(String),
    /// Kafka at this bootstrap address.
    Kafka(String),
}

/// A running `plexus events-app`.
pub struct EventsApp {
    /// The child process.
    pub process: Process,
    /// Its actuator address.
    pub actuator: SocketAddr,
    /// Its origin (instance id).
    pub origin: String,
}

impl EventsApp {
    /// Starts an app named `name` serving `routes` (comma-separated) and `extra` arguments, through
    /// `broker`, announced to the control plane at `control`; waits until it joined the mesh.
    pub async fn start(
        bin: &Path,
        name: &str,
        routes: &str,
        broker: &Broker,
        control: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_with_env(bin, name, routes, broker, control, extra, &[]).await
    }

    /// Like [`EventsApp::start`] with extra environment variables (e.g. `PLEXUS_PRESENCE_TOKEN`
    /// for a control plane that enforces ACLs).
    pub async fn start_with_env(
        bin: &Path,
        name: &str,
        routes: &str,
        broker: &Broker,
        control: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Self> {
        let mut args: Vec<String> = [
            "events-app",
            "--name",
            name,
            "--routes",
            routes,
            "--control",
            control,
        ]
        .map(str::to_owned)
        .to_vec();
        match broker {
            Broker::Nats(url) => {
                args.extend(["--cloud-connector", "nats", "--nats-url", url].map(str::to_owned))
            }
            Broker::Kafka(bootstrap) => args.extend(
                ["--cloud-connector", "kafka", "--kafka-bootstrap", bootstrap].map(str::to_owned),
            ),
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = Process::spawn(name, bin, &args, envs)?;
        let line = process.wait_for_line("event app starting").await?;
        let origin = line
            .split("origin=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .context("origin in the start-up line")?
            .to_owned();
        process.wait_for_line("joined the event mesh").await?;
        let actuator = process.listening("actuator").await?;
        Ok(Self {
            process,
            actuator,
            origin,
        })
    }

    /// The actuator URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.actuator)
    }

    /// GETs an actuator path: (status, JSON body or the text as a JSON string).
    pub async fn get(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        let response = reqwest::get(self.url(path)).await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, json))
    }

    /// POSTs raw bytes to `/api/event` with headers: (status, body bytes).
    pub async fn post_event(
        &self,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>)> {
        let mut request = reqwest::Client::new()
            .post(self.url("/api/event"))
            .body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.bytes().await?.to_vec()))
    }

    /// Asks this app to request `route` with `body` (event over HTTP) and decodes the reply.
    pub async fn request(
        &self,
        route: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<EventEnvelope> {
        let event = EventEnvelope::to(route, body);
        let ms = timeout.as_millis().to_string();
        let (_, bytes) = self
            .post_event(event.to_bytes(), &[("X-Timeout", &ms)])
            .await?;
        EventEnvelope::from_bytes(&bytes).context("reply is an envelope")
    }

    /// The origins serving `route` in this app's routing table (`/info/routes`).
    pub async fn serving(&self, route: &str) -> Vec<String> {
        let Ok((_, json)) = self.get("/info/routes").await else {
            return Vec::new();
        };
        json["routes"][route]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str().map(str::to_owned))
            .collect()
    }

    /// How many log lines contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.process
            .output()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}
