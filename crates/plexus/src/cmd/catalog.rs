//! `plexus catalog services|nodes`: catalog reads.

use std::process::ExitCode;

use plexus_api::client::QueryOptions;

use super::ControlArgs;
use crate::output;

/// `plexus catalog ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List service names with their tags.
    Services {
        /// Print JSON (Consul's `/v1/catalog/services` shape).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List nodes.
    Nodes {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Services { json, control } => {
            let services = control
                .client()?
                .catalog_services(QueryOptions::default())
                .await?
                .value;
            if json {
                output::json(&services)?;
            } else {
                let rows: Vec<Vec<String>> = services
                    .iter()
                    .map(|(name, tags)| vec![name.clone(), tags.join(",")])
                    .collect();
                output::table(&["SERVICE", "TAGS"], &rows);
            }
        }
        Command::Nodes { json, control } => {
            let nodes = control
                .client()?
                .catalog_nodes(QueryOptions::default())
                .await?
                .value;
            if json {
                output::json(&nodes)?;
            } else {
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|n| vec![n.node.clone(), n.address.clone(), n.datacenter.clone()])
                    .collect();
                output::table(&["NODE", "ADDRESS", "DC"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
