//! `plexus acl bootstrap | token … | policy … | role …`: ACL tokens, policies and roles, in
//! the shape of `consul acl`. Every command takes `--json` for scripts; people get `Key: value`
//! lines. Rules are given inline or as `@FILE`.

use std::process::ExitCode;

use plexus_api::acl::model::{
    Link, NodeIdentity, Policy, PolicyWrite, Role, RoleWrite, ServiceIdentity, Token, TokenWrite,
};

use super::{ControlArgs, EXIT_CONFIG};
use crate::output;

/// `plexus acl ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the first management token (once; prints its SecretID).
    Bootstrap {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Create, list, read, update and delete tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create, list, read, update and delete policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Create, list, read, update and delete roles.
    #[command(subcommand)]
    Role(RoleCommand),
}

/// What a token or role links to.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Links {
    /// A policy by name (repeatable).
    #[arg(long = "policy-name")]
    pub policy_names: Vec<String>,
    /// A policy by ID (repeatable).
    #[arg(long = "policy-id")]
    pub policy_ids: Vec<String>,
    /// A service identity: write on SERVICE and its sidecar, read on the catalog (repeatable).
    #[arg(long = "service-identity", value_name = "SERVICE")]
    pub service_identities: Vec<String>,
    /// A node identity, NODE:DATACENTER (repeatable).
    #[arg(long = "node-identity", value_name = "NODE:DATACENTER")]
    pub node_identities: Vec<String>,
}

impl Links {
    fn policies(&self) -> Vec<Link> {
        let by_name = self.policy_names.iter().map(|n| Link {
            id: String::new(),
            name: n.clone(),
        });
        let by_id = self.policy_ids.iter().map(|i| Link {
            id: i.clone(),
            name: String::new(),
        });
        by_name.chain(by_id).collect()
    }

    fn services(&self) -> Vec<ServiceIdentity> {
        self.service_identities
            .iter()
            .map(|s| ServiceIdentity {
                service_name: s.clone(),
                datacenters: Vec::new(),
            })
            .collect()
    }

    fn nodes(&self) -> Result<Vec<NodeIdentity>, String> {
        self.node_identities
            .iter()
            .map(|text| match text.split_once(':') {
                Some((node, dc)) if !node.is_empty() && !dc.is_empty() => Ok(NodeIdentity {
                    node_name: node.to_owned(),
                    datacenter: dc.to_owned(),
                }),
                _ => Err(format!(
                    "--node-identity {text:?}: expected NODE:DATACENTER"
                )),
            })
            .collect()
    }
}

/// `plexus acl token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token.
    Create {
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        links: Links,
        /// A role by name (repeatable).
        #[arg(long = "role-name")]
        role_names: Vec<String>,
        /// The token stops working after this long (e.g. 1h; Consul's -expires-ttl).
        #[arg(long = "expires-ttl")]
        expires_ttl: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List tokens (secrets shown only to acl:write tokens).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Read a token by AccessorID, or the one this command sends with --self.
    Read {
        /// The AccessorID.
        #[arg(long, required_unless_present = "self_")]
        id: Option<String>,
        /// Read the token this command sends.
        #[arg(long = "self")]
        self_: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Replace a token's description, policies, roles and identities.
    Update {
        /// The AccessorID.
        #[arg(long)]
        id: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        links: Links,
        /// A role by name (repeatable).
        #[arg(long = "role-name")]
        role_names: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Delete a token.
    Delete {
        /// The AccessorID.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// `plexus acl policy ...`
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Create a policy.
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Rules in HCL or JSON, or @FILE.
        #[arg(long, default_value = "")]
        rules: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List policies.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Read a policy by --id or --name.
    Read {
        /// The ID.
        #[arg(long, required_unless_present = "name")]
        id: Option<String>,
        /// The name.
        #[arg(long)]
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Replace a policy's name, description and rules.
    Update {
        /// The ID.
        #[arg(long)]
        id: String,
        /// The (new) name.
        #[arg(long)]
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Rules in HCL or JSON, or @FILE.
        #[arg(long, default_value = "")]
        rules: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Delete a policy.
    Delete {
        /// The ID.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// `plexus acl role ...`
#[derive(Debug, clap::Subcommand)]
pub enum RoleCommand {
    /// Create a role.
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        links: Links,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List roles.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Read a role by --id or --name.
    Read {
        /// The ID.
        #[arg(long, required_unless_present = "name")]
        id: Option<String>,
        /// The name.
        #[arg(long)]
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Replace a role's name, description, policies and identities.
    Update {
        /// The ID.
        #[arg(long)]
        id: String,
        /// The (new) name.
        #[arg(long)]
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        links: Links,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Delete a role.
    Delete {
        /// The ID.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

fn rules_text(rules: &str) -> anyhow::Result<String> {
    match rules.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read rules file {path}: {e}")),
        None => Ok(rules.to_owned()),
    }
}

fn links_of(names: &[String]) -> Vec<Link> {
    names
        .iter()
        .map(|n| Link {
            id: String::new(),
            name: n.clone(),
        })
        .collect()
}

fn print_token(token: &Token, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(token);
    }
    println!("AccessorID:       {}", token.accessor_id);
    println!("SecretID:         {}", token.secret_id.expose());
    println!("Description:      {}", token.description);
    println!("Local:            {}", token.local);
    println!("Create Time:      {}", token.create_time);
    if let Some(at) = &token.expiration_time {
        println!("Expiration Time:  {at}");
    }
    if !token.policies.is_empty() {
        println!("Policies:");
        for p in &token.policies {
            println!("   {} - {}", p.id, p.name);
        }
    }
    if !token.roles.is_empty() {
        println!("Roles:");
        for r in &token.roles {
            println!("   {} - {}", r.id, r.name);
        }
    }
    if !token.service_identities.is_empty() {
        println!("Service Identities:");
        for s in &token.service_identities {
            println!("   {}", s.service_name);
        }
    }
    if !token.node_identities.is_empty() {
        println!("Node Identities:");
        for n in &token.node_identities {
            println!("   {} ({})", n.node_name, n.datacenter);
        }
    }
    Ok(())
}

fn print_policy(policy: &Policy, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(policy);
    }
    println!("ID:           {}", policy.id);
    println!("Name:         {}", policy.name);
    println!("Description:  {}", policy.description);
    println!("Rules:\n{}", policy.rules);
    Ok(())
}

fn print_role(role: &Role, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(role);
    }
    println!("ID:           {}", role.id);
    println!("Name:         {}", role.name);
    println!("Description:  {}", role.description);
    for p in &role.policies {
        println!("Policy:       {} - {}", p.id, p.name);
    }
    for s in &role.service_identities {
        println!("Service Identity: {}", s.service_name);
    }
    Ok(())
}

/// Runs one `plexus acl` command.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Bootstrap { json, control } => {
            let token = control.client()?.acl_bootstrap().await?;
            print_token(&token, json)?;
        }
        Command::Token(command) => return token(command).await,
        Command::Policy(command) => policy(command).await?,
        Command::Role(command) => return role(command).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            description,
            links,
            role_names,
            expires_ttl,
            json,
            control,
        } => {
            let nodes = match links.nodes() {
                Ok(nodes) => nodes,
                Err(message) => {
                    eprintln!("error: {message}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let body = TokenWrite {
                description,
                policies: links.policies(),
                roles: links_of(&role_names),
                service_identities: links.services(),
                node_identities: nodes,
                expiration_ttl: expires_ttl,
                ..TokenWrite::default()
            };
            print_token(&control.client()?.acl_token_create(&body).await?, json)?;
        }
        TokenCommand::List { json, control } => {
            let tokens = control.client()?.acl_token_list().await?;
            if json {
                output::json(&tokens)?;
            } else {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        let policies: Vec<&str> =
                            t.policies.iter().map(|p| p.name.as_str()).collect();
                        vec![
                            t.accessor_id.clone(),
                            t.description.clone(),
                            policies.join(","),
                        ]
                    })
                    .collect();
                output::table(&["ACCESSOR ID", "DESCRIPTION", "POLICIES"], &rows);
            }
        }
        TokenCommand::Read {
            id,
            self_,
            json,
            control,
        } => {
            let client = control.client()?;
            let token = match (self_, id) {
                (true, _) | (false, None) => client.acl_token_self().await?,
                (false, Some(id)) => client.acl_token_read(&id).await?,
            };
            print_token(&token, json)?;
        }
        TokenCommand::Update {
            id,
            description,
            links,
            role_names,
            json,
            control,
        } => {
            let nodes = match links.nodes() {
                Ok(nodes) => nodes,
                Err(message) => {
                    eprintln!("error: {message}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let body = TokenWrite {
                description,
                policies: links.policies(),
                roles: links_of(&role_names),
                service_identities: links.services(),
                node_identities: nodes,
                ..TokenWrite::default()
            };
            print_token(&control.client()?.acl_token_update(&id, &body).await?, json)?;
        }
        TokenCommand::Delete { id, control } => {
            control.client()?.acl_token_delete(&id).await?;
            println!("Token {id:?} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Create {
            name,
            description,
            rules,
            json,
            control,
        } => {
            let body = PolicyWrite {
                name,
                description,
                rules: rules_text(&rules)?,
                ..PolicyWrite::default()
            };
            print_policy(&control.client()?.acl_policy_create(&body).await?, json)?;
        }
        PolicyCommand::List { json, control } => {
            let policies = control.client()?.acl_policy_list().await?;
            if json {
                output::json(&policies)?;
            } else {
                let rows: Vec<Vec<String>> = policies
                    .iter()
                    .map(|p| vec![p.id.clone(), p.name.clone(), p.description.clone()])
                    .collect();
                output::table(&["ID", "NAME", "DESCRIPTION"], &rows);
            }
        }
        PolicyCommand::Read {
            id,
            name,
            json,
            control,
        } => {
            let client = control.client()?;
            let policy = match (id, name) {
                (Some(id), _) => client.acl_policy_read(&id, false).await?,
                (None, Some(name)) => client.acl_policy_read(&name, true).await?,
                (None, None) => anyhow::bail!("give --id or --name"),
            };
            print_policy(&policy, json)?;
        }
        PolicyCommand::Update {
            id,
            name,
            description,
            rules,
            json,
            control,
        } => {
            let body = PolicyWrite {
                id: id.clone(),
                name,
                description,
                rules: rules_text(&rules)?,
                ..PolicyWrite::default()
            };
            print_policy(
                &control.client()?.acl_policy_update(&id, &body).await?,
                json,
            )?;
        }
        PolicyCommand::Delete { id, control } => {
            control.client()?.acl_policy_delete(&id).await?;
            println!("Policy {id:?} deleted");
        }
    }
    Ok(())
}

async fn role(command: RoleCommand) -> anyhow::Result<ExitCode> {
    match command {
        RoleCommand::Create {
            name,
            description,
            links,
            json,
            control,
        } => {
            let body = role_body(String::new(), name, description, &links)?;
            print_role(&control.client()?.acl_role_create(&body).await?, json)?;
        }
        RoleCommand::List { json, control } => {
            let roles = control.client()?.acl_role_list().await?;
            if json {
                output::json(&roles)?;
            } else {
                let rows: Vec<Vec<String>> = roles
                    .iter()
                    .map(|r| vec![r.id.clone(), r.name.clone(), r.description.clone()])
                    .collect();
                output::table(&["ID", "NAME", "DESCRIPTION"], &rows);
            }
        }
        RoleCommand::Read {
            id,
            name,
            json,
            control,
        } => {
            let client = control.client()?;
            let role = match (id, name) {
                (Some(id), _) => client.acl_role_read(&id, false).await?,
                (None, Some(name)) => client.acl_role_read(&name, true).await?,
                (None, None) => anyhow::bail!("give --id or --name"),
            };
            print_role(&role, json)?;
        }
        RoleCommand::Update {
            id,
            name,
            description,
            links,
            json,
            control,
        } => {
            let body = role_body(id.clone(), name, description, &links)?;
            print_role(&control.client()?.acl_role_update(&id, &body).await?, json)?;
        }
        RoleCommand::Delete { id, control } => {
            control.client()?.acl_role_delete(&id).await?;
            println!("Role {id:?} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn role_body(
    id: String,
    name: String,
    description: String,
    links: &Links,
) -> anyhow::Result<RoleWrite> {
    Ok(RoleWrite {
        id,
        name,
        description,
        policies: links.policies(),
        service_identities: links.services(),
        node_identities: links.nodes().map_err(anyhow::Error::msg)?,
    })
}
