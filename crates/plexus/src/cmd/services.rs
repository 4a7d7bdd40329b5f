//! `plexus services register|deregister|list`: the local agent's services.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use plexus_api::AgentService;

use super::{ControlArgs, EXIT_CONFIG};
use crate::output;

/// `plexus services ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Register the services defined in HCL/JSON files.
    Register {
        /// Definition files (`.hcl` or `.json`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Deregister service instances by id (their sidecars go with them).
    Deregister {
        /// Service ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List the services registered on the local agent.
    List {
        /// Print JSON (Consul's `/v1/agent/services` shape).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Register { files, control } => {
            let mut registrations = Vec::new();
            let mut failed = false;
            for file in &files {
                match plexus_api::definition::load_file(file) {
                    Ok(regs) => registrations.extend(regs),
                    Err(errors) => {
                        failed = true;
                        for error in errors {
                            eprintln!("error: {error}");
                        }
                    }
                }
            }
            if failed {
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            let client = control.client()?;
            for registration in &registrations {
                client
                    .register_service(registration)
                    .await
                    .with_context(|| format!("registering service {:?}", registration.name))?;
                println!("Registered service: {}", registration.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Deregister { ids, control } => {
            let client = control.client()?;
            for id in &ids {
                client
                    .deregister_service(id)
                    .await
                    .with_context(|| format!("deregistering service {id:?}"))?;
                println!("Deregistered service: {id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { json, control } => {
            let services = control.client()?.agent_services().await?;
            if json {
                output::json(&services)?;
            } else {
                let rows: Vec<Vec<String>> = services.values().map(service_row).collect();
                output::table(&["ID", "SERVICE", "KIND", "ADDRESS", "TAGS"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn service_row(s: &AgentService) -> Vec<String> {
    let kind = match s.kind {
        plexus_api::ServiceKind::Typical => "service",
        other => other.as_str(),
    };
    let address = if s.address.is_empty() {
        format!(":{}", s.port)
    } else {
        format!("{}:{}", s.address, s.port)
    };
    vec![
        s.id.clone(),
        s.service.clone(),
        kind.to_owned(),
        address,
        s.tags.join(","),
    ]
}
