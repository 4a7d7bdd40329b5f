//! `plexus event NAME [PAYLOAD]`: fires a user event (`consul event`). Prints its ID.

use std::process::ExitCode;

use plexus_api::client::EventFilters;

use super::ControlArgs;

/// `plexus event`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The event's name.
    name: String,
    /// The payload (at most 512 bytes).
    #[arg(default_value = "")]
    payload: String,
    /// Regular expression on node names.
    #[arg(long, default_value = "")]
    node: String,
    /// Regular expression on service names.
    #[arg(long, default_value = "")]
    service: String,
    /// Regular expression on tags (needs --service).
    #[arg(long, default_value = "")]
    tag: String,
    #[command(flatten)]
    control: ControlArgs,
}

/// Runs the command.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let id = args
        .control
        .client()?
        .event_fire(
            &args.name,
            args.payload.into_bytes(),
            &EventFilters {
                node: args.node,
                service: args.service,
                tag: args.tag,
            },
        )
        .await?;
    println!("Event ID: {id}");
    Ok(ExitCode::SUCCESS)
}
