//! TLS flags shared by commands, following Consul's names and environment variables.
//!
//! - Client side ([`ClientTlsArgs`], in every client command's [`super::ControlArgs`] and in
//!   `plexus proxy`): `--ca-file`, `--client-cert`, `--client-key`, `--tls-server-name`, each
//!   also from `PLEXUS_*` and then `CONSUL_*` variables; `PLEXUS_HTTP_SSL`/`CONSUL_HTTP_SSL`
//!   make bare `host:port` addresses `https://`.
//! - Listener side ([`HttpsArgs`], `plexus dev|server|agent`): `--https-addr`, the certificate
//!   (`--cert-file`/`--key-file`, or for servers one from the built-in CA), `--ca-file`,
//!   `--verify-incoming`, `--https-only` (no plain-HTTP listener at all).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use plexus_api::client::ClientOptions;
use plexus_control::ca::auto_encrypt::AutoEncrypt;
use plexus_control::ca::server_tls::{CaServerTls, ClientRoots};
use plexus_control::ca::tls_certs::ServerNames;
use plexus_control::ca::wrap::KeyEncryptionKey;
use plexus_runtime::Shutdown;
use plexus_runtime::tls::{ClientAuth, Identity, Roots, TlsServer, client_config, server_config};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Environment variables read for each client setting, in order, after the flag.
pub const CA_FILE_ENV: [&str; 2] = ["PLEXUS_CACERT", "CONSUL_CACERT"];
/// Client certificate variables.
pub const CLIENT_CERT_ENV: [&str; 2] = ["PLEXUS_CLIENT_CERT", "CONSUL_CLIENT_CERT"];
/// Client key variables.
pub const CLIENT_KEY_ENV: [&str; 2] = ["PLEXUS_CLIENT_KEY", "CONSUL_CLIENT_KEY"];
/// Server name variables.
pub const SERVER_NAME_ENV: [&str; 2] = ["PLEXUS_TLS_SERVER_NAME", "CONSUL_TLS_SERVER_NAME"];
/// Variables that make bare addresses `https://` (`true`/`1`).
pub const HTTP_SSL_ENV: [&str; 2] = ["PLEXUS_HTTP_SSL", "CONSUL_HTTP_SSL"];
/// The paths a client without a certificate may call on a `--verify-incoming` listener.
pub const EXEMPT_FROM_CLIENT_CERT: [&str; 1] = [plexus_api::auto_encrypt::SIGN_PATH];

/// How a client verifies the control plane and which certificate it presents.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// CA certificates (PEM) that verify the control plane's HTTPS certificate
    /// [env: PLEXUS_CACERT, CONSUL_CACERT].
    #[arg(long = "ca-file", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify incoming connections
    /// [env: PLEXUS_CLIENT_CERT, CONSUL_CLIENT_CERT].
    #[arg(long = "client-cert", value_name = "PEM")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM) [env: PLEXUS_CLIENT_KEY, CONSUL_CLIENT_KEY].
    #[arg(long = "client-key", value_name = "PEM")]
    pub client_key: Option<PathBuf>,
    /// Verify the server's certificate against this name instead of the address dialled (e.g.
    /// `server.dc1.consul`) [env: PLEXUS_TLS_SERVER_NAME, CONSUL_TLS_SERVER_NAME].
    #[arg(long = "tls-server-name", value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

/// The first non-empty variable of `names`.
pub fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

fn env_flag(names: &[&str]) -> bool {
    env_first(names).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"))
}

impl ClientTlsArgs {
    /// The flags, with the environment filling in what they leave out.
    pub fn resolved(&self) -> Self {
        let path = |flag: &Option<PathBuf>, env: &[&str]| {
            flag.clone().or_else(|| env_first(env).map(PathBuf::from))
        };
        Self {
            ca_file: path(&self.ca_file, &CA_FILE_ENV),
            client_cert: path(&self.client_cert, &CLIENT_CERT_ENV),
            client_key: path(&self.client_key, &CLIENT_KEY_ENV),
            tls_server_name: self
                .tls_server_name
                .clone()
                .or_else(|| env_first(&SERVER_NAME_ENV)),
        }
    }

    /// The client's TLS options (reads the files; errors name them).
    pub fn options(&self) -> anyhow::Result<ClientOptions> {
        let args = self.resolved();
        let https = env_flag(&HTTP_SSL_ENV);
        let identity = match (&args.client_cert, &args.client_key) {
            (Some(cert), Some(key)) => Some(Identity::from_files(cert, key)?),
            (None, None) => None,
            (Some(_), None) => {
                anyhow::bail!("--client-cert needs --client-key (PLEXUS_CLIENT_KEY)")
            }
            (None, Some(_)) => {
                anyhow::bail!("--client-key needs --client-cert (PLEXUS_CLIENT_CERT)")
            }
        };
        let tls = match &args.ca_file {
            Some(ca) => Some(client_config(
                &Roots::from_file(ca)?,
                identity.as_ref(),
                args.tls_server_name.as_deref(),
            )?),
            None if identity.is_some() => {
                anyhow::bail!("--client-cert needs --ca-file (PLEXUS_CACERT) to verify the server")
            }
            None => None,
        };
        Ok(ClientOptions {
            tls,
            https,
            ..ClientOptions::default()
        })
    }
}

/// The HTTPS listener of `plexus dev|server|agent`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HttpsArgs {
    /// HTTPS API address; port 0 picks a free port (logged as listener "https"). Off unless
    /// given (or `ports { https }` in the config file).
    #[arg(long = "https-addr")]
    pub https_addr: Option<String>,
    /// Certificate (PEM, leaf first) of the HTTPS listener. Servers default to one issued by
    /// the built-in CA; agents need this or --auto-encrypt.
    #[arg(long = "cert-file", value_name = "PEM")]
    pub cert_file: Option<PathBuf>,
    /// The certificate's key (PEM).
    #[arg(long = "key-file", value_name = "PEM")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to under --verify-incoming
    /// (servers default to the built-in CA's roots); agents also verify servers with them.
    #[arg(long = "ca-file", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Require a client certificate signed by the CA on every HTTPS request (except an agent's
    /// auto-encrypt signing request, which its token authorizes).
    #[arg(long = "verify-incoming")]
    pub verify_incoming: bool,
    /// Serve the API over HTTPS only: no plain-HTTP listener is opened.
    #[arg(long = "https-only")]
    pub https_only: bool,
    /// More names (DNS names or IP addresses, comma-separated) for the built-in CA's server
    /// certificate, besides `server.<dc>.<domain>`, `localhost`, 127.0.0.1 and ::1.
    #[arg(long = "tls-san", value_delimiter = ',', value_name = "NAME|IP")]
    pub sans: Vec<String>,
}

/// Where an HTTPS listener's certificate comes from.
#[derive(Debug)]
pub enum CertSource {
    /// Issued (and renewed) by the built-in CA, for these extra names.
    BuiltIn {
        /// Extra DNS names.
        dns: Vec<String>,
        /// Extra IP addresses.
        ips: Vec<IpAddr>,
    },
    /// Files (read and checked at start).
    Files(Identity),
    /// The agent's own certificate from `auto_encrypt`.
    AutoEncrypt,
}

/// A validated HTTPS listener plan.
#[derive(Debug)]
pub struct HttpsPlan {
    /// Where to bind.
    pub addr: String,
    /// The certificate.
    pub cert: CertSource,
    /// Client-certificate roots from `--ca-file` (else, for built-in certificates, the CA's).
    pub client_roots: Option<Roots>,
    /// Whether requests need a client certificate.
    pub verify_incoming: bool,
}

impl HttpsArgs {
    /// Checks the flags and reads the files they name. `Ok(None)`: no HTTPS listener.
    /// `auto_encrypt`: the agent gets its certificate from a server (so files are optional).
    pub fn plan(&self, built_in_ca: bool, auto_encrypt: bool) -> Result<Option<HttpsPlan>, String> {
        let Some(addr) = self.https_addr.clone() else {
            if self.https_only {
                return Err(
                    "--https-only needs an HTTPS listener: --https-addr (or ports { https })"
                        .into(),
                );
            }
            if self.verify_incoming {
                return Err(
                    "--verify-incoming needs an HTTPS listener: --https-addr (or ports { https })"
                        .into(),
                );
            }
            return Ok(None);
        };
        let cert = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => CertSource::Files(
                Identity::from_files(cert, key)
                    .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?,
            ),
            (Some(_), None) => return Err("--cert-file needs --key-file".into()),
            (None, Some(_)) => return Err("--key-file needs --cert-file".into()),
            (None, None) if auto_encrypt => CertSource::AutoEncrypt,
            (None, None) if built_in_ca => {
                let (mut dns, mut ips) = (Vec::new(), Vec::new());
                for san in &self.sans {
                    match san.parse::<IpAddr>() {
                        Ok(ip) => ips.push(ip),
                        Err(_) if plexus_api::validate::is_dns_name(san) => dns.push(san.clone()),
                        Err(_) => {
                            return Err(format!(
                                "--tls-san {san:?} is neither an IP address nor a DNS name"
                            ));
                        }
                    }
                }
                CertSource::BuiltIn { dns, ips }
            }
            (None, None) => {
                return Err(
                    "an agent's HTTPS listener needs --cert-file and --key-file, or --auto-encrypt"
                        .into(),
                );
            }
        };
        let client_roots = match &self.ca_file {
            Some(file) => {
                Some(Roots::from_file(file).map_err(|e| format!("{:#}", anyhow::Error::new(e)))?)
            }
            None => None,
        };
        if self.verify_incoming
            && client_roots.is_none()
            && !matches!(cert, CertSource::BuiltIn { .. })
        {
            return Err(
                "--verify-incoming needs --ca-file: the CA client certificates must chain to"
                    .into(),
            );
        }
        Ok(Some(HttpsPlan {
            addr,
            cert,
            client_roots,
            verify_incoming: self.verify_incoming,
        }))
    }
}

/// Builds the listener's TLS settings: a certificate from files (checked at start) or from the
/// built-in CA (renewed by a task on `shutdown`).
pub async fn server_tls(
    plan: &HttpsPlan,
    ca: Option<Arc<plexus_control::ca::CertificateAuthority>>,
    names: impl FnOnce(&[String], &[IpAddr]) -> ServerNames,
    shutdown: &Shutdown,
) -> anyhow::Result<TlsServer> {
    let tls = match (&plan.cert, ca) {
        (CertSource::Files(identity), _) => {
            let client_auth = match &plan.client_roots {
                Some(roots) if plan.verify_incoming => ClientAuth::Optional(roots.clone()),
                _ => ClientAuth::None,
            };
            TlsServer::new(server_config(identity, &client_auth)?)
        }
        (CertSource::BuiltIn { dns, ips }, Some(ca)) => {
            let client_roots = match &plan.client_roots {
                _ if !plan.verify_incoming => ClientRoots::None,
                Some(roots) => ClientRoots::Fixed(roots.clone()),
                None => ClientRoots::BuiltIn,
            };
            let renewer = CaServerTls::new(ca, names(dns, ips), client_roots);
            let (tls, cert) = renewer
                .start()
                .await
                .context("issuing the HTTPS certificate")?;
            shutdown.spawn({
                let (tls, stop) = (tls.clone(), shutdown.token());
                async move { renewer.run_renewal(tls, cert, stop).await }
            });
            tls
        }
        (CertSource::BuiltIn { .. }, None) | (CertSource::AutoEncrypt, _) => {
            anyhow::bail!("this HTTPS listener's certificate must be set up by its command")
        }
    };
    Ok(if plan.verify_incoming {
        tls.require_client_cert(&EXEMPT_FROM_CLIENT_CERT)
    } else {
        tls
    })
}

/// Serves `router` over TLS on `listener` until `stop`, logging the `listening` line.
pub fn serve_https(
    listener: TcpListener,
    tls: TlsServer,
    router: axum::Router,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    serve_https_with(listener, tls, router, stop, Default::default())
}

/// [`serve_https`] within connection bounds.
pub fn serve_https_with(
    listener: TcpListener,
    tls: TlsServer,
    router: axum::Router,
    stop: CancellationToken,
    limits: plexus_runtime::connections::ConnLimits,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let addr = listener.local_addr()?;
    plexus_runtime::telemetry::listening("https", addr);
    Ok(tokio::spawn(plexus_runtime::tls::serve_with(
        listener, tls, router, stop, limits,
    )))
}

/// The TLS and secrets settings of a control plane (`plexus dev|server`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    #[command(flatten)]
    pub https: HttpsArgs,
    /// Domain of the servers' certificate name `server.<dc>.<domain>` (Consul's default).
    #[arg(long, default_value = "consul")]
    pub domain: String,
    /// Sign agents' certificates (`auto_encrypt { allow_tls = true }`).
    #[arg(long = "auto-encrypt-allow-tls")]
    pub auto_encrypt_allow_tls: bool,
    /// A file holding the key-encryption key (random text, at least 32 bytes) that wraps the
    /// CA's private keys in the store [env: PLEXUS_CA_KEY holds the key itself].
    #[arg(long = "ca-key-file", value_name = "FILE")]
    pub ca_key_file: Option<PathBuf>,
}

/// The environment variable holding the CA's key-encryption key itself.
pub const CA_KEY_ENV: &str = "PLEXUS_CA_KEY";

impl ServerTlsArgs {
    /// The key-encryption key from `--ca-key-file` or `PLEXUS_CA_KEY`, if any (errors never
    /// show the key).
    pub fn kek(&self) -> Result<Option<KeyEncryptionKey>, String> {
        let secret = match &self.ca_key_file {
            Some(file) => std::fs::read_to_string(file)
                .map_err(|e| format!("--ca-key-file {}: {e}", file.display()))?,
            None => match std::env::var(CA_KEY_ENV) {
                Ok(secret) if !secret.is_empty() => secret,
                _ => return Ok(None),
            },
        };
        let from = match &self.ca_key_file {
            Some(file) => format!("--ca-key-file {}", file.display()),
            None => CA_KEY_ENV.to_owned(),
        };
        KeyEncryptionKey::from_secret(&secret)
            .map(Some)
            .map_err(|e| format!("{from}: {e}"))
    }

    /// The auto-encrypt settings.
    pub fn auto_encrypt(&self) -> AutoEncrypt {
        AutoEncrypt {
            allow_tls: self.auto_encrypt_allow_tls,
            domain: self.domain.clone(),
        }
    }
}

/// The names in a server's built-in certificate: `server.<dc>.<domain>`, `localhost`,
/// loopback, the `--tls-san` names, and the listener's own address when it is a specific one.
pub fn server_names(
    datacenter: &str,
    domain: &str,
    listener: Option<std::net::SocketAddr>,
) -> impl FnOnce(&[String], &[IpAddr]) -> ServerNames {
    let (datacenter, domain) = (datacenter.to_owned(), domain.to_owned());
    move |dns, ips| {
        let mut ips = ips.to_vec();
        ips.extend(listener.map(|a| a.ip()));
        ServerNames::for_server(&datacenter, &domain, dns, &ips)
    }
}
