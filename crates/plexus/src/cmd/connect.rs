//! `plexus connect ca roots|rotate|get-config|set-config`: the built-in CA;
//! `plexus connect envoy`: run Envoy as a sidecar (see `envoy.rs`).

use std::process::ExitCode;

use plexus_api::client::QueryOptions;
use plexus_api::connect::{CaConfiguration, CaProviderConfig, CaRoots};

use super::ControlArgs;
use crate::output;

/// `plexus connect ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run Envoy as the sidecar of a service instance (`-sidecar-for ID`) or of an explicitly
    /// registered connect-proxy (`-proxy-id ID`), configured over xDS.
    Envoy(super::envoy::Args),
}

/// `plexus connect ca ...`
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Show the trusted roots (never their keys).
    Roots {
        /// Print JSON (Consul's `/v1/connect/ca/roots` shape), including the PEMs.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Create a new root, cross-signed by the current one; both stay trusted until every leaf
    /// of the old one has expired.
    Rotate {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Show the CA configuration.
    GetConfig {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Set the leaf certificate lifetime (e.g. `72h`, `2m`).
    SetConfig {
        /// Leaf lifetime, a Go duration between 1m and 8760h.
        #[arg(long = "leaf-cert-ttl")]
        leaf_cert_ttl: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

fn print_roots(roots: &CaRoots) {
    println!("Trust domain: {}", roots.trust_domain);
    let rows: Vec<Vec<String>> = roots
        .roots
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.name.clone(),
                if r.active { "yes" } else { "no" }.to_owned(),
                r.not_after.clone(),
                if r.intermediate_certs.is_empty() {
                    "no"
                } else {
                    "yes"
                }
                .to_owned(),
            ]
        })
        .collect();
    output::table(
        &["ID", "NAME", "ACTIVE", "NOT AFTER", "CROSS-SIGNED"],
        &rows,
    );
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let command = match command {
        Command::Ca(command) => command,
        Command::Envoy(args) => return super::envoy::run(args).await,
    };
    match command {
        CaCommand::Roots { json, control } => {
            let roots = control
                .client()?
                .connect_ca_roots(QueryOptions::default())
                .await?
                .value;
            if json {
                output::json(&roots)?;
            } else {
                print_roots(&roots);
            }
        }
        CaCommand::Rotate { control } => {
            let roots = control.client()?.connect_ca_rotate().await?;
            println!("Rotated: new active root {}", roots.active_root_id);
            print_roots(&roots);
        }
        CaCommand::GetConfig { control } => {
            output::json(&control.client()?.connect_ca_configuration().await?)?;
        }
        CaCommand::SetConfig {
            leaf_cert_ttl,
            control,
        } => {
            control
                .client()?
                .set_connect_ca_configuration(&CaConfiguration {
                    provider: "plexus".to_owned(),
                    config: CaProviderConfig {
                        leaf_cert_ttl: Some(leaf_cert_ttl.clone()),
                        rotate_root: false,
                        private_key: None,
                    },
                    create_index: 0,
                    modify_index: 0,
                })
                .await?;
            println!("Leaf certificate TTL set to {leaf_cert_ttl}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
