//! `plexus operator`: the servers, the store backend with its members' health, and each proxy with
//! the configuration revision it last acknowledged.

use std::process::ExitCode;

use super::ControlArgs;
use crate::output;

/// `plexus operator`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
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
