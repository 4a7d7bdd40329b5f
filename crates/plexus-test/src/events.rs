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

    /// The origins serving `route` in this app's routing table (`/info/routes`: the network
    /// table lists `"<app>, <origin>"` per instance).
    pub async fn serving(&self, route: &str) -> Vec<String> {
        let Ok((_, json)) = self.get("/info/routes").await else {
            return Vec::new();
        };
        json["network"]["routes"][route]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str()?.rsplit(", ").next().map(str::to_owned))
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

/// A running `plexus events node`: the language connector apps in other languages connect to.
pub struct EventsNode {
    /// The child process.
    pub process: Process,
    /// Its HTTP address (`/ws/events`, actuator, `/api/event`, `/metrics`).
    pub addr: SocketAddr,
    /// Its origin (instance id).
    pub origin: String,
}

impl EventsNode {
    /// Starts a node named `name` through `broker`, announced to the control plane at `control`
    /// (or without a connector when `broker` is `None`), with `extra` arguments; waits until it
    /// joined the mesh.
    pub async fn start(
        bin: &Path,
        name: &str,
        broker: Option<&Broker>,
        control: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args: Vec<String> = [
            "events",
            "node",
            "--name",
            name,
            "--http-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec();
        match broker {
            Some(Broker::Nats(url)) => args.extend(
                [
                    "--cloud-connector",
                    "nats",
                    "--nats-url",
                    url,
                    "--control",
                    control,
                ]
                .map(str::to_owned),
            ),
            Some(Broker::Kafka(bootstrap)) => args.extend(
                [
                    "--cloud-connector",
                    "kafka",
                    "--kafka-bootstrap",
                    bootstrap,
                    "--control",
                    control,
                ]
                .map(str::to_owned),
            ),
            None => {}
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = Process::spawn(name, bin, &args, &[])?;
        let line = process.wait_for_line("events node starting").await?;
        let origin = line
            .split("origin=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .context("origin in the start-up line")?
            .to_owned();
        if broker.is_some() {
            process.wait_for_line("joined the event mesh").await?;
        }
        let addr = process.listening("events").await?;
        Ok(Self {
            process,
            addr,
            origin,
        })
    }

    /// The connector's WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/events", self.addr)
    }

    /// The URL of `path` on the node.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The language of an example app in `clients/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// `clients/python/examples/mesh_app.py` with `.tools/venv/bin/python`.
    Python,
    /// `clients/node/examples/mesh-app.js` with `node`.
    Node,
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The interpreter and the example program of `lang`, or an error naming what is missing.
pub fn lang_program(lang: Lang) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let root = repo();
    match lang {
        Lang::Python => {
            let python = root.join(".tools/venv/bin/python");
            let ok = std::process::Command::new(&python)
                .args(["-c", "import websockets, msgpack"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                anyhow::bail!(
                    "{} with websockets and msgpack not found: run scripts/setup-test-env.sh",
                    python.display()
                );
            }
            Ok((python, root.join("clients/python/examples/mesh_app.py")))
        }
        Lang::Node => {
            let node = std::path::PathBuf::from("node");
            if std::process::Command::new(&node)
                .arg("--version")
                .output()
                .is_err()
            {
                anyhow::bail!("node (Node.js) not found: run scripts/setup-test-env.sh");
            }
            for module in ["ws", "@msgpack/msgpack"] {
                if !root.join("clients/node/node_modules").join(module).is_dir() {
                    anyhow::bail!(
                        "clients/node/node_modules/{module} not found: run scripts/setup-test-env.sh (npm ci)"
                    );
                }
            }
            Ok((node, root.join("clients/node/examples/mesh-app.js")))
        }
    }
}

/// An example app in Python or Node.js (`clients/*/examples`) connected to an [`EventsNode`].
pub struct LangApp {
    /// The child process.
    pub process: Process,
    /// The app name it connected with.
    pub app: String,
}

impl LangApp {
    /// Starts the example app of `lang` named `app` against `node`'s connector with `args`
    /// (`--routes a.b,c.d`, `--private x.y`, `--load-route l.r`, `--workers N`, `--token T`);
    /// waits until it registered its routes.
    pub async fn start(lang: Lang, node: &str, app: &str, args: &[&str]) -> Result<Self> {
        let (interpreter, program) = lang_program(lang)?;
        let mut all = vec![
            program.display().to_string(),
            "--node".to_owned(),
            node.to_owned(),
            "--app".to_owned(),
            app.to_owned(),
        ];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let process = Process::spawn(app, &interpreter, &all, &[])?;
        process.wait_for_line("ready app=").await?;
        Ok(Self {
            process,
            app: app.to_owned(),
        })
    }
}
