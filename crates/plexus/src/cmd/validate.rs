//! `plexus validate FILE...`: the same checks `plexus dev|server|agent --config-file` run
//! (service definitions and agent keys in Consul's format), without starting anything. Every
//! error in every file is reported at once.

use std::path::PathBuf;
use std::process::ExitCode;

use super::EXIT_CONFIG;
use super::dev::{DEFAULT_DATACENTER, collect_definition_files, default_node_name};

/// `plexus validate FILE...`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration or definition files, or directories of them (`.hcl`, `.json`).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let files = match collect_definition_files(&args.paths, &[]) {
        Ok(files) => files,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let defaults =
        |config: &plexus_api::agent_config::AgentConfig| plexus_api::validate::Defaults {
            datacenter: config
                .datacenter
                .clone()
                .unwrap_or_else(|| DEFAULT_DATACENTER.to_owned()),
            node: config.node_name.clone().unwrap_or_else(default_node_name),
        };
    match plexus_api::agent_config::load_files(
        &files,
        plexus_api::agent_config::Role::Any,
        &plexus_api::agent_config::sockaddr::system_interfaces,
        defaults,
    ) {
        Ok(loaded) => {
            for note in &loaded.agent.notes {
                eprintln!("note: {note}");
            }
            let agent = if loaded.agent.is_empty() {
                String::new()
            } else {
                " and agent settings".to_owned()
            };
            println!(
                "Configuration is valid: {} service(s){agent} in {} file(s).",
                loaded.services.len(),
                files.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("error: {error}");
            }
            eprintln!("{} error(s); nothing was registered.", errors.len());
            Ok(ExitCode::from(EXIT_CONFIG))
        }
    }
}
