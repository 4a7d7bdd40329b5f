//! `plexus operator`: the servers, the store backend with its members' health, and each proxy with
//! the configuration revision it last acknowledged; `plexus operator backup FILE` and `restore
//! FILE` save and put back a consistent snapshot of the store (`/v1/snapshot`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use plexus_control::snapshot;

use super::ControlArgs;
use crate::output;

/// `plexus operator`
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `plexus operator <command>`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Save a consistent snapshot of the whole store to FILE (mode 0600: it holds the CA's keys).
    Backup(FileArgs),
    /// Replace the store's contents with the snapshot in FILE (checked before anything changes).
    Restore(FileArgs),
}

/// A snapshot file and the control plane.
#[derive(Debug, clap::Args)]
pub struct FileArgs {
    /// The snapshot file.
    pub file: PathBuf,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(Command::Backup(args)) => return backup(args).await,
        Some(Command::Restore(args)) => return restore(args).await,
        None => {}
    }
    let view = args.control.client()?.operator().await?;
    if args.json {
        output::json(&view)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("Answered by: {}", view.answered_by);
    println!();
    let rows: Vec<Vec<String>> = view
        .servers
        .iter()
        .map(|s| vec![s.node.clone(), s.http_addr.clone(), s.store.clone()])
        .collect();
    output::table(&["SERVER", "HTTP", "STORE"], &rows);
    println!();
    println!("Store: {} ({})", view.store.backend, view.store.location);
    if !view.store.members.is_empty() {
        let rows: Vec<Vec<String>> = view
            .store
            .members
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.endpoint.clone(),
                    if m.healthy { "healthy" } else { "unreachable" }.to_owned(),
                    if m.leader { "leader" } else { "" }.to_owned(),
                    m.version.clone(),
                ]
            })
            .collect();
        output::table(&["MEMBER", "ENDPOINT", "HEALTH", "ROLE", "VERSION"], &rows);
    }
    println!();
    let rows: Vec<Vec<String>> = view
        .proxies
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.data_plane.clone().unwrap_or_else(|| "plexus".to_owned()),
                p.revision.to_string(),
                p.acknowledged_at.to_string(),
                xds_summary(p),
            ]
        })
        .collect();
    output::table(
        &["PROXY", "DATA PLANE", "ACKED REVISION", "AT (UNIX)", "XDS"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// An Envoy's xDS state in one cell: the accepted types, or the last rejection.
fn xds_summary(proxy: &plexus_api::operator::ProxyAck) -> String {
    let Some(xds) = &proxy.xds else {
        return String::new();
    };
    match &xds.nack {
        Some(nack) => format!(
            "NACK {} {}: {} (last accepted config in force)",
            nack.type_url, nack.version, nack.error
        ),
        None => format!(
            "accepted {} (via {})",
            xds.acked.keys().cloned().collect::<Vec<_>>().join(","),
            xds.served_by
        ),
    }
}

/// Fails with the server's error message when the answer is not a success.
async fn answer(what: &str, response: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("reading the {what} answer"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<plexus_api::ErrorBody>(&body)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
        anyhow::bail!("{what} failed ({status}): {message}");
    }
    Ok(body.to_vec())
}

async fn backup(args: FileArgs) -> anyhow::Result<ExitCode> {
    let client = args.control.client()?;
    let response = client
        .forward(
            reqwest::Method::GET,
            "/v1/snapshot",
            None,
            Vec::new(),
            client.token(),
        )
        .await?;
    let body = answer("backup", response).await?;
    let (taken, entries) = snapshot::parse(&body).context("the server sent a damaged snapshot")?;
    write_private(&args.file, &body)?;
    println!(
        "Saved a snapshot of {} keys at index {} to {}",
        entries.len(),
        taken.revision,
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to a new 0600 file beside `path`, syncs it and renames it into place.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    plexus_runtime::private_fs::create_file(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&partial)
        .with_context(|| format!("opening {}", partial.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn restore(args: FileArgs) -> anyhow::Result<ExitCode> {
    let body = std::fs::read(&args.file)
        .with_context(|| format!("reading the snapshot {}", args.file.display()))?;
    let (taken, entries) = snapshot::parse(&body)
        .with_context(|| format!("{} is not a usable snapshot", args.file.display()))?;
    let client = args.control.client()?;
    let response = client
        .forward(
            reqwest::Method::PUT,
            "/v1/snapshot",
            Some("application/json"),
            body,
            client.token(),
        )
        .await?;
    let answer = answer("restore", response).await?;
    let index = serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v.get("Index").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    println!(
        "Restored {} keys from the snapshot taken at index {}; the store is now at index {index}",
        entries.len(),
        taken.revision
    );
    Ok(ExitCode::SUCCESS)
}
