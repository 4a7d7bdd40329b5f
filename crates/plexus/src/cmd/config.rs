//! `plexus config write|read|list|delete`: L7 config entries from the command line.
//!
//! `write FILE` reads one entry from an HCL (`.hcl`) or JSON (`.json`) file, checks it locally
//! (exit 64 naming the field when it is invalid) and stores it (the server checks it again against
//! the stored entries: a refusal exits 1 with the server's field-named message).

use std::path::PathBuf;
use std::process::ExitCode;

use plexus_api::client::{ClientError, QueryOptions};
use plexus_api::config_entry::validate::validate;
use plexus_api::config_entry::{ConfigEntry, Kind};

use super::{ControlArgs, EXIT_CONFIG};
use crate::output;

fn parse_kind(text: &str) -> Result<Kind, String> {
    Kind::parse(text).ok_or_else(|| {
        format!(
            "unknown config entry kind {text:?}; expected one of {}",
            Kind::EXPECTED
        )
    })
}

/// `plexus config ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Store the entry in FILE (.hcl or .json).
    Write {
        /// The entry file.
        file: PathBuf,
        /// Write only when the stored entry's modify index is this (0: only when absent).
        #[arg(long)]
        cas: Option<u64>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Print one entry as JSON (exit 1 when absent).
    Read {
        /// Entry kind.
        #[arg(long, value_parser = parse_kind)]
        kind: Kind,
        /// Entry name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List the entries of a kind (names; `--json` for the entries).
    List {
        /// Entry kind.
        #[arg(long, value_parser = parse_kind)]
        kind: Kind,
        /// Print the entries as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Delete an entry.
    Delete {
        /// Entry kind.
        #[arg(long, value_parser = parse_kind)]
        kind: Kind,
        /// Entry name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Write { file, cas, control } => {
            let entry = match ConfigEntry::load_file(&file) {
                Ok(entry) => entry,
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            if let Err(errs) = validate(&entry) {
                for e in errs.0 {
                    eprintln!("error: {}: {e}", file.display());
                }
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            if !control.client()?.config_write(&entry, cas).await? {
                eprintln!(
                    "error: {} {:?} was not written: its modify index is not {}",
                    entry.kind(),
                    entry.name(),
                    cas.unwrap_or_default()
                );
                return Ok(ExitCode::FAILURE);
            }
            println!("Config entry written: {}/{}", entry.kind(), entry.name());
        }
        Command::Read {
            kind,
            name,
            control,
        } => {
            match control
                .client()?
                .config_read(kind, &name, QueryOptions::default())
                .await
            {
                Ok(entry) => output::json(&entry.value)?,
                Err(ClientError::Status { status: 404, .. }) => {
                    eprintln!("error: config entry {kind}/{name} not found");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::List {
            kind,
            json,
            control,
        } => {
            let list = control
                .client()?
                .config_list(kind, QueryOptions::default())
                .await?;
            if json {
                output::json(&list.value)?;
            } else {
                for entry in &list.value {
                    println!("{}", entry.name());
                }
            }
        }
        Command::Delete {
            kind,
            name,
            control,
        } => {
            control.client()?.config_delete(kind, &name).await?;
            println!("Config entry deleted: {kind}/{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
