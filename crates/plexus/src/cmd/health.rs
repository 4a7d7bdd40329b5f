//! `plexus health SERVICE`: each instance with its aggregated status and checks.

use std::process::ExitCode;

use plexus_api::client::QueryOptions;

use super::ControlArgs;
use crate::output;

/// `plexus health SERVICE`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service name.
    pub service: String,
    /// Only instances whose checks all pass.
    #[arg(long)]
    pub passing: bool,
    /// Print JSON (Consul's `/v1/health/service/:name` shape).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let entries = args
        .control
        .client()?
        .health_service(&args.service, args.passing, QueryOptions::default())
        .await?
        .value;
    if args.json {
        output::json(&entries)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let checks = e
                .checks
                .iter()
                .map(|c| format!("{}={}", c.check_id, c.status))
                .collect::<Vec<_>>()
                .join(",");
            vec![
                e.service.id.clone(),
                e.node.node.clone(),
                format!("{}:{}", e.dial_address(), e.service.port),
                e.aggregated_status().to_string(),
                checks,
            ]
        })
        .collect();
    output::table(&["ID", "NODE", "ADDRESS", "STATUS", "CHECKS"], &rows);
    Ok(ExitCode::SUCCESS)
}
