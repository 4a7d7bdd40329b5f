//! A small domain DSL over the real binary: `Dev::start(bin)` runs `plexus dev` on ephemeral ports,
//! `dev.sidecar(bin, "web")` runs `plexus proxy --sidecar-for web` against it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plexus_api::client::Client;

use crate::hosts::Host;
use crate::process::Process;

/// A running `plexus dev` (control plane + agent) and a client for it.
pub struct Dev {
    /// The child process.
    pub process: Process,
    /// The HTTP API address.
    pub http: SocketAddr,
    /// The DNS address (UDP and TCP).
    pub dns: SocketAddr,
    /// A client for the HTTP API.
    pub client: Client,
    /// Its data directory (removed on drop unless kept by the test).
    pub data_dir: PathBuf,
    _data_guard: Option<tempfile::TempDir>,
    bin: PathBuf,
}

impl Dev {
    /// Starts `plexus dev --http-addr 127.0.0.1:0` with a fresh data dir and `extra` arguments.
    pub async fn start(bin: &Path, extra: &[&str]) -> Result<Self> {
        let guard = tempfile::TempDir::new()?;
        let data_dir = guard.path().to_path_buf();
        let mut dev = Self::start_in(bin, &data_dir, extra).await?;
        dev._data_guard = Some(guard);
        Ok(dev)
    }

    /// Starts `plexus dev` on an existing data directory (for restart tests).
    pub async fn start_in(bin: &Path, data_dir: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_with_env(bin, data_dir, extra, &[]).await
    }

    /// Starts `plexus dev` on an existing data directory with extra environment variables
    /// (e.g. `RUST_LOG` to see debug lines a test waits for).
    pub async fn start_with_env(
        bin: &Path,
        data_dir: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Self> {
        let mut args = vec!["dev".to_owned()];
        if !extra.contains(&"--http-addr") {
            args.extend(["--http-addr".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        if !extra.contains(&"--grpc-addr") {
            args.extend(["--grpc-addr".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        if !extra.contains(&"--dns-addr") {
            args.extend(["--dns-addr".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        args.extend([
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--node".to_owned(),
            "test-node".to_owned(),
        ]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = Process::spawn("dev", bin, &args, envs)?;
        let http = process.listening("http").await?;
        let dns = process.listening("dns-udp").await?;
        let client = Client::new(&http.to_string())?;
        Ok(Self {
            process,
            http,
            dns,
            client,
            data_dir: data_dir.to_path_buf(),
            _data_guard: None,
            bin: bin.to_path_buf(),
        })
    }

    /// The address in the form clients take (`127.0.0.1:PORT`).
    pub fn addr(&self) -> String {
        self.http.to_string()
    }

    /// The xDS (gRPC) address Envoys connect to, from its `listening` line.
    pub async fn grpc(&self) -> Result<SocketAddr> {
        self.process.listening("grpc").await
    }

    /// Starts `plexus proxy --sidecar-for <service_id>` against this control plane.
    pub async fn sidecar(&self, service_id: &str) -> Result<Sidecar> {
        Sidecar::start(&self.bin, &self.addr(), service_id).await
    }

    /// The same with environment variables for the sidecar (e.g. `PLEXUS_THREADS`).
    pub async fn sidecar_env(&self, service_id: &str, envs: &[(&str, &str)]) -> Result<Sidecar> {
        Sidecar::start_env(&self.bin, &self.addr(), service_id, &[], envs).await
    }

    /// The same with extra `plexus proxy` arguments (e.g. `--close-denied`).
    pub async fn sidecar_with(&self, service_id: &str, extra: &[&str]) -> Result<Sidecar> {
        Sidecar::start_with(&self.bin, &self.addr(), service_id, extra).await
    }

    /// Runs a CLI command against this control plane and returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(i32, String, String)> {
        run_cli(
            &self.bin,
            args,
            &[(plexus_api::client::HTTP_ADDR_ENV, &self.addr())],
        )
    }
}

/// Runs the binary to completion with `args` and `envs`; returns (exit code, stdout, stderr).
pub fn run_cli(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<(i32, String, String)> {
    let mut command = std::process::Command::new(bin);
    command
        .args(args)
        .env_remove(plexus_api::client::HTTP_ADDR_ENV);
    for name in crate::CLIENT_ENV {
        command.env_remove(name);
    }
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command
        .output()
        .with_context(|| format!("running plexus {}", args.join(" ")))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A running `plexus proxy`.
pub struct Sidecar {
    /// The child process.
    pub process: Process,
    /// Its admin address.
    pub admin: SocketAddr,
    /// The test host it runs on (`None`: this machine); its admin endpoint is then read from
    /// inside the host, which works while the host is partitioned.
    pub host: Option<Host>,
}

impl Sidecar {
    /// Starts a sidecar for `service_id` and waits until its admin listener is up.
    pub async fn start(bin: &Path, control: &str, service_id: &str) -> Result<Self> {
        Self::start_with(bin, control, service_id, &[]).await
    }

    /// Starts a sidecar with extra arguments.
    pub async fn start_with(
        bin: &Path,
        control: &str,
        service_id: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_env(bin, control, service_id, extra, &[]).await
    }

    /// Starts a sidecar with extra arguments and environment variables.
    pub async fn start_env(
        bin: &Path,
        control: &str,
        service_id: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Self> {
        let mut args: Vec<String> = [
            "proxy",
            "--sidecar-for",
            service_id,
            "--http-addr",
            control,
            "--admin-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = Process::spawn(&format!("proxy:{service_id}"), bin, &args, envs)?;
        let admin = process.listening("admin").await?;
        Ok(Self {
            process,
            admin,
            host: None,
        })
    }

    /// Starts `plexus proxy --sidecar-for <service_id> --http-addr <control>` inside `host`, its
    /// admin listener on the host's `127.0.0.1:0`.
    pub async fn start_on(
        host: &Host,
        bin: &Path,
        control: &str,
        service_id: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args: Vec<String> = [
            "proxy",
            "--sidecar-for",
            service_id,
            "--http-addr",
            control,
            "--admin-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = host.spawn(&format!("proxy:{service_id}"), bin, &args, &[])?;
        let admin = process.listening("admin").await?;
        Ok(Self {
            process,
            admin,
            host: Some(host.clone()),
        })
    }

    /// Starts `plexus proxy --proxy-id <proxy_id>` for an explicitly registered connect-proxy.
    pub async fn start_proxy_id(bin: &Path, control: &str, proxy_id: &str) -> Result<Self> {
        let args: Vec<String> = [
            "proxy",
            "--proxy-id",
            proxy_id,
            "--http-addr",
            control,
            "--admin-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec();
        let process = Process::spawn(&format!("proxy:{proxy_id}"), bin, &args, &[])?;
        let admin = process.listening("admin").await?;
        Ok(Self {
            process,
            admin,
            host: None,
        })
    }

    /// GETs an admin path and returns (status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        if let Some(host) = &self.host {
            return host.http_get(self.admin, path).await;
        }
        let response = reqwest::get(format!("http://{}{}", self.admin, path)).await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// The value of the metric sample `series` (name with labels exactly as `/metrics` prints
    /// them, e.g. `plexus_proxy_leaf_renewals_total`); 0 when absent.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let (_, text) = self.admin_get("/metrics").await?;
        Ok(text
            .lines()
            .filter_map(|line| line.strip_prefix(series))
            .filter_map(|rest| rest.strip_prefix(' '))
            .filter_map(|value| value.trim().parse::<f64>().ok())
            .sum())
    }

    /// True once `/ready` answers 200.
    pub async fn is_ready(&self) -> bool {
        matches!(self.admin_get("/ready").await, Ok((200, _)))
    }

    /// The endpoints the proxy currently uses for `upstream`, from `/config`.
    pub async fn endpoints(&self, upstream: &str) -> Result<Vec<String>> {
        let (_, body) = self.admin_get("/config").await?;
        let config: serde_json::Value = serde_json::from_str(&body)?;
        let endpoints = config["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| u["destination"] == upstream)
            .flat_map(|u| u["endpoints"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect();
        Ok(endpoints)
    }
}
