//! `plexus intention create|list|delete|check`: who may connect to whom.
//!
//! `check` exits 0 when the connection is allowed and 1 when it is denied (as `consul intention
//! check` does), printing the verdict either way.

use std::process::ExitCode;

use plexus_api::connect::{Intention, IntentionAction};

use super::ControlArgs;
use crate::output;

/// `plexus intention ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create an intention from SRC to DST (`*` for any); allow unless `--deny`.
    Create {
        /// Allow connections (the default).
        #[arg(long, conflicts_with = "deny")]
        allow: bool,
        /// Deny connections.
        #[arg(long)]
        deny: bool,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Replace the intention for SRC → DST if one exists.
        #[arg(long)]
        replace: bool,
        /// Source service name or `*`.
        source: String,
        /// Destination service name or `*`.
        destination: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List every intention, highest precedence first.
    List {
        /// Print JSON (Consul's `/v1/connect/intentions` shape).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Delete the intention from SRC to DST.
    Delete {
        /// Source service name or `*`.
        source: String,
        /// Destination service name or `*`.
        destination: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Would a connection from SRC to DST be allowed? Exit 0 if so, 1 if not.
    Check {
        /// Source service name.
        source: String,
        /// Destination service name.
        destination: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Create {
            allow: _,
            deny,
            description,
            replace,
            source,
            destination,
            control,
        } => {
            let client = control.client()?;
            let action = if deny {
                IntentionAction::Deny
            } else {
                IntentionAction::Allow
            };
            let intention = Intention {
                id: String::new(),
                source_name: source.clone(),
                destination_name: destination.clone(),
                source_ns: String::new(),
                destination_ns: String::new(),
                source_type: String::new(),
                action: Some(action),
                permissions: Vec::new(),
                description,
                meta: Default::default(),
                precedence: 0,
                create_index: 0,
                modify_index: 0,
            };
            if replace && let Ok(existing) = client.intention_exact(&source, &destination).await {
                client.delete_intention(&existing.id).await?;
            }
            let id = client.create_intention(&intention).await?;
            println!("Created: {source} => {destination} ({action})  ID {id}");
        }
        Command::List { json, control } => {
            let intentions = control.client()?.intentions().await?;
            if json {
                output::json(&intentions)?;
            } else {
                let rows: Vec<Vec<String>> = intentions
                    .iter()
                    .map(|i| {
                        vec![
                            i.id.clone(),
                            i.source_name.clone(),
                            match i.action {
                                Some(action) => action.to_string(),
                                None => format!("L7 ({} permissions)", i.permissions.len()),
                            },
                            i.destination_name.clone(),
                            i.precedence.to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &["ID", "SOURCE", "ACTION", "DESTINATION", "PRECEDENCE"],
                    &rows,
                );
            }
        }
        Command::Delete {
            source,
            destination,
            control,
        } => {
            let client = control.client()?;
            let existing = client.intention_exact(&source, &destination).await?;
            client.delete_intention(&existing.id).await?;
            println!("Intention deleted: {source} => {destination}");
        }
        Command::Check {
            source,
            destination,
            control,
        } => {
            let allowed = control
                .client()?
                .intention_check(&source, &destination)
                .await?;
            if allowed {
                println!("Allowed: {source} => {destination}");
            } else {
                println!("Denied: {source} => {destination}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
