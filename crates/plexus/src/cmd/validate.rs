//! `plexus validate FILE...`: the same checks `plexus dev --config-file` runs, without starting
//! anything. Every error in every file is reported at once.

use std::path::PathBuf;
use std::process::ExitCode;

use super::EXIT_CONFIG;
use super::dev::{DEFAULT_DATACENTER, collect_definition_files, default_node_name};

/// `plexus validate FILE...`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Definition files or directories (`.hcl`, `.json`).
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
    let defaults = plexus_api::validate::Defaults {
        datacenter: DEFAULT_DATACENTER.to_owned(),
        node: default_node_name(),
    };
    match plexus_api::definition::check_files(&files, &defaults) {
        Ok(services) => {
            println!(
                "Configuration is valid: {} service(s) in {} file(s).",
                services.len(),
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
