//! The agent configuration file (`--config-file`, `--config-dir`) applied to a command's flags:
//! a flag given on the command line (or through its environment variable) wins; otherwise the
//! file's setting; otherwise the flag's default.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use plexus_api::agent_config::{self, AgentConfig, ConfigFiles, Port, Role};
use tracing::{info, warn};

use super::EXIT_CONFIG;
use super::dev::{DEFAULT_DATACENTER, default_node_name};

/// Which of a command's flags were given (command line or environment), not defaulted.
#[derive(Debug, Clone, Default)]
pub struct Given(Option<clap::ArgMatches>);

impl Given {
    /// From the subcommand's matches.
    pub fn new(matches: Option<clap::ArgMatches>) -> Self {
        Self(matches)
    }

    /// Whether the flag whose field is `id` was given.
    pub fn flag(&self, id: &str) -> bool {
        self.0.as_ref().is_some_and(|m| {
            matches!(
                m.try_get_raw(id)
                    .ok()
                    .flatten()
                    .and_then(|_| m.value_source(id)),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
    }
}

/// The configuration files of `--config-file` (files or directories) and `--config-dir`, read
/// and checked; errors are printed and give exit 64, before anything is bound.
pub fn load(
    files: &[PathBuf],
    dirs: &[PathBuf],
    role: Role,
    given: &Given,
    datacenter_flag: &str,
    node_flag: Option<&str>,
) -> Result<ConfigFiles, ExitCode> {
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    for path in files.iter().chain(dirs) {
        if path.is_dir() {
            match agent_config::files_in_dir(path) {
                Ok(found) => paths.extend(found),
                Err(error) => errors.push(error.to_string()),
            }
        } else if dirs.contains(path) {
            errors.push(format!(
                "config directory {} is not a directory",
                path.display()
            ));
        } else {
            paths.push(path.clone());
        }
    }
    if !errors.is_empty() {
        return Err(report(errors));
    }
    if paths.is_empty() {
        return Ok(ConfigFiles::default());
    }
    let dc_given = given.flag("datacenter");
    let node_given = node_flag.is_some();
    let defaults = |config: &AgentConfig| plexus_api::validate::Defaults {
        datacenter: match &config.datacenter {
            Some(dc) if !dc_given => dc.clone(),
            _ => datacenter_flag.to_owned(),
        },
        node: match (node_flag, &config.node_name) {
            (Some(node), _) => node.to_owned(),
            (None, Some(node)) if !node_given => node.clone(),
            _ => default_node_name(),
        },
    };
    match agent_config::load_files(
        &paths,
        role,
        &agent_config::sockaddr::system_interfaces,
        defaults,
    ) {
        Ok(files) => Ok(files),
        Err(errors) => Err(report(errors.iter().map(ToString::to_string).collect())),
    }
}

fn report(errors: Vec<String>) -> ExitCode {
    for error in &errors {
        eprintln!("error: {error}");
    }
    eprintln!("{} configuration error(s); not starting.", errors.len());
    ExitCode::from(EXIT_CONFIG)
}

/// Logs what the files hold that this build accepts without using (each with why), applies
/// `log_level` (unless `RUST_LOG` is set); says that `acl.tokens.default` is not applied.
pub fn announce(config: &AgentConfig) {
    for note in &config.notes {
        info!(%note, "configuration note");
    }
    if let Some(level) = config.log_level {
        plexus_runtime::telemetry::set_level(level.directive());
    }
    if config.acl.default_token.is_some() {
        warn!(
            "acl.tokens.default from the configuration file is not applied yet: callers without a token are the anonymous token"
        );
    }
}

/// `acl { enabled default_policy }` from the file onto a server's (or dev's) ACL flags, unless
/// given: `enabled_id` is the id of the command's enable flag (`acl_enabled`, dev's `acl`).
pub fn apply_acl(
    config: &AgentConfig,
    given: &Given,
    enabled_id: &str,
    enabled: &mut bool,
    acl: &mut super::dev::AclArgs,
) {
    if !given.flag(enabled_id)
        && let Some(on) = config.acl.enabled
    {
        *enabled = on;
    }
    if !given.flag("default_policy")
        && let Some(policy) = config.acl.default_policy
    {
        acl.default_policy = match policy {
            agent_config::AclPolicy::Allow => plexus_api::acl::DefaultPolicy::Allow,
            agent_config::AclPolicy::Deny => plexus_api::acl::DefaultPolicy::Deny,
        };
    }
}

/// The file's `acl.tokens.initial_management` when the flag and the environment gave none.
pub fn apply_initial_management(config: &AgentConfig, acl: &mut super::dev::AclSettings) {
    if acl.initial_management.is_none() {
        acl.initial_management = config
            .acl
            .initial_management
            .as_ref()
            .map(|secret| plexus_api::acl::SecretId::new(secret.expose()));
    }
}

/// An agent's own token: the flags or the environment, else the file's `acl.tokens.agent`.
pub fn agent_token(
    config: &AgentConfig,
    resolved: Option<plexus_api::acl::SecretId>,
) -> Option<plexus_api::acl::SecretId> {
    resolved.or_else(|| {
        config
            .acl
            .agent_token
            .as_ref()
            .map(|secret| plexus_api::acl::SecretId::new(secret.expose()))
    })
}

/// An API listener address from `client_addr` and a port setting; `None` when the file says
/// neither, `Some(None)` when the port is `-1` (off).
pub fn listener(
    config: &AgentConfig,
    port: Option<Port>,
    default_port: u16,
) -> Option<Option<String>> {
    if config.client_addr.is_none() && port.is_none() {
        return None;
    }
    let ip = config.client_addr.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    match port {
        Some(Port::Disabled) => Some(None),
        Some(Port::Number(port)) => Some(Some(SocketAddr::new(ip, port).to_string())),
        None => Some(Some(SocketAddr::new(ip, default_port).to_string())),
    }
}

/// The address others reach this node at: `advertise_addr`, else a specific `bind_addr`.
pub fn advertised(config: &AgentConfig) -> Option<IpAddr> {
    config
        .advertise_addr
        .or(config.bind_addr.filter(|ip| !ip.is_unspecified()))
}

/// The datacenter a command runs in, for commands that have no other use for [`Given`].
pub fn datacenter(config: &AgentConfig, given: &Given, flag: &str) -> String {
    match &config.datacenter {
        Some(dc) if !given.flag("datacenter") => dc.clone(),
        _ if flag.is_empty() => DEFAULT_DATACENTER.to_owned(),
        _ => flag.to_owned(),
    }
}

/// Applies `client_addr`, `ports { http https }` and `tls { … }` to the listener flags not
/// given: `ports.http = -1` means `--https-only`.
pub fn apply_listeners(
    config: &AgentConfig,
    given: &Given,
    http_addr: &mut String,
    https: &mut super::tls::HttpsArgs,
) {
    if !given.flag("http_addr") {
        match listener(config, config.ports.http, 8500) {
            Some(Some(addr)) => *http_addr = addr,
            Some(None) => https.https_only = true,
            None => {}
        }
    }
    if https.https_addr.is_none()
        && let Some(Port::Number(_)) = config.ports.https
    {
        https.https_addr = listener(config, config.ports.https, 8501).flatten();
    }
    let tls = &config.tls;
    fill(&mut https.cert_file, &tls.cert_file);
    fill(&mut https.key_file, &tls.key_file);
    fill(&mut https.ca_file, &tls.ca_file);
    if !given.flag("verify_incoming") {
        https.verify_incoming = tls.verify_incoming.unwrap_or(false);
    }
}

fn fill<T: Clone>(flag: &mut Option<T>, file: &Option<T>) {
    if flag.is_none() {
        flag.clone_from(file);
    }
}

/// Applies the control-plane settings (`plexus dev|server`) not given as flags.
pub fn apply_server(
    config: &AgentConfig,
    given: &Given,
    datacenter: &mut String,
    node: &mut Option<String>,
    tls: &mut super::tls::ServerTlsArgs,
) {
    *datacenter = self::datacenter(config, given, datacenter);
    fill(node, &config.node_name);
    if !given.flag("domain")
        && let Some(domain) = &config.domain
    {
        tls.domain.clone_from(domain);
    }
    if !given.flag("auto_encrypt_allow_tls") {
        tls.auto_encrypt_allow_tls = config.auto_encrypt.allow_tls.unwrap_or(false);
    }
}
