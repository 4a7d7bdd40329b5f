//! A real etcd cluster on loopback ports, for the etcd backend's tests.
//!
//! [`EtcdCluster::start`] runs `n` members of Debian's `etcd` (installed by
//! `scripts/setup-test-env.sh`) on ephemeral 127.0.0.1 ports in a temporary directory and waits until
//! every member answers. [`EtcdCluster::start_on`] runs one member on each of several
//! test hosts ([`crate::hosts`]), on the host's address and etcd's usual ports. Members can be
//! killed (`SIGKILL`) and restarted on the same data directory and ports. Everything is killed
//! on drop.
//!
//! Production-like set-ups: [`EtcdCluster::start_tls`] serves clients over TLS and requires client
//! certificates (a throwaway CA from [`crate::pki`]; [`EtcdTls`] has the files Plexus is given, and a
//! second CA that signed nothing, for the wrong-CA case); [`EtcdCluster::enable_auth`] turns on
//! etcd's authentication with a root user, and [`EtcdCluster::add_user`] adds users with readwrite
//! permission on one prefix. Admin requests go through etcd's own gRPC API (`etcd-client`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{
    Certificate, Client, CompactionOptions, ConnectOptions, GetOptions, Identity, Permission,
    TlsOptions,
};

use crate::hosts::Host;
use crate::pki::Pki;
use crate::process::Process;
use crate::{DEADLINE, free_port};

/// The etcd binary.
pub fn etcd_bin() -> Result<PathBuf> {
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("etcd is not installed: run scripts/setup-test-env.sh (installs Debian's etcd-server)")
}

struct Member {
    name: String,
    ip: String,
    client_port: u16,
    peer_port: u16,
    host: Option<Host>,
    process: Option<Process>,
}

/// TLS files of a cluster started with [`EtcdCluster::start_tls`] (PEM files in its directory).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that signed the members' and the client's certificates (`--etcd-cacert`).
    pub ca: PathBuf,
    /// A client certificate the members accept (`--etcd-cert`).
    pub client_cert: PathBuf,
    /// Its key (`--etcd-key`).
    pub client_key: PathBuf,
    /// A CA that signed nothing here: a client trusting it must refuse the members.
    pub other_ca: PathBuf,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    token: String,
    bin: PathBuf,
    tls: Option<EtcdTls>,
    /// Root's password once authentication is on.
    root: Option<String>,
}

impl EtcdCluster {
    /// Starts `n` plain-text members and waits until all are healthy.
    pub async fn start(n: usize) -> Result<Self> {
        let mut cluster = Self::prepare(n)?;
        cluster.start_all().await?;
        Ok(cluster)
    }

    /// Starts `n` members serving clients over TLS only, requiring a client certificate signed
    /// by the cluster's CA, and waits until all are healthy.
    pub async fn start_tls(n: usize) -> Result<Self> {
        let mut cluster = Self::prepare(n)?;
        let pki = Pki::new("etcd")?;
        let server = pki.server_leaf(&["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])?;
        let client = pki.client_leaf("plexus")?;
        let other = Pki::new("somebody else")?;
        let dir = cluster.dir.path().to_owned();
        let write = |name: &str, pem: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        write("server.pem", &server.cert_pem)?;
        write("server-key.pem", &server.key_pem)?;
        cluster.tls = Some(EtcdTls {
            ca: write("ca.pem", &pki.root_pem())?,
            client_cert: write("client.pem", &client.cert_pem)?,
            client_key: write("client-key.pem", &client.key_pem)?,
            other_ca: write("other-ca.pem", &other.root_pem())?,
        });
        cluster.start_all().await?;
        Ok(cluster)
    }

    /// Picks ports and a directory for `n` members without starting any (to test a client that
    /// starts before etcd does).
    pub fn prepare(n: usize) -> Result<Self> {
        let bin = etcd_bin()?;
        let dir = tempfile::Builder::new().prefix("plexus-etcd-").tempdir()?;
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                ip: "127.0.0.1".to_owned(),
                client_port: free_port(),
                peer_port: free_port(),
                host: None,
                process: None,
            })
            .collect();
        let token = format!(
            "plexus-test-{}-{}",
            std::process::id(),
            dir.path().display().to_string().len() + n
        );
        Ok(Self {
            members,
            dir,
            token,
            bin,
            tls: None,
            root: None,
        })
    }

    /// Starts one member on each host (client port 2379, peer port 2380 on the host's address)
    /// and waits until all are healthy.
    pub async fn start_on(hosts: &[Host]) -> Result<Self> {
        let mut cluster = Self::prepare(hosts.len())?;
        for (member, host) in cluster.members.iter_mut().zip(hosts) {
            member.ip = host.ip().to_string();
            member.client_port = 2379;
            member.peer_port = 2380;
            member.host = Some(host.clone());
        }
        cluster.start_all().await?;
        Ok(cluster)
    }

    /// The TLS files, for a cluster started with [`EtcdCluster::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// Starts every member that is not running and waits until all are healthy.
    pub async fn start_all(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].process.is_none() {
                self.spawn(i)?;
            }
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i).await?;
        }
        Ok(())
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.ip, m.peer_port))
            .collect();
        let member = &self.members[i];
        let client = format!("{}://{}:{}", self.scheme(), member.ip, member.client_port);
        let peer = format!("http://{}:{}", member.ip, member.peer_port);
        let data = self.dir.path().join(&member.name);
        let mut args: Vec<String> = [
            "--name",
            &member.name,
            "--data-dir",
            &data.display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &initial.join(","),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &self.token,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            // A member cut off and healed does not depose the majority's leader when it returns
            // (etcd 3.5's default; 3.4, the one tests use, needs it asked for).
            "--pre-vote",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if self.tls.is_some() {
            let dir = self.dir.path();
            for (flag, file) in [
                ("--cert-file", "server.pem"),
                ("--key-file", "server-key.pem"),
                ("--trusted-ca-file", "ca.pem"),
            ] {
                args.push(flag.to_owned());
                args.push(dir.join(file).display().to_string());
            }
            args.push("--client-cert-auth".to_owned());
        }
        let name = format!("etcd:{}", member.name);
        let process = match &member.host {
            Some(host) => host.spawn(&name, &self.bin, &args, &[])?,
            None => Process::spawn(&name, &self.bin, &args, &[])?,
        };
        self.members[i].process = Some(process);
        Ok(())
    }

    /// Connect options for an admin client: TLS with the cluster's client certificate, and
    /// root's credentials once authentication is on.
    fn admin_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            let read = |path: &Path| std::fs::read(path).unwrap_or_default();
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read(&tls.ca)))
                    .identity(Identity::from_pem(
                        read(&tls.client_cert),
                        read(&tls.client_key),
                    )),
            );
        }
        if let Some(password) = &self.root {
            options = options.with_user("root", password.clone());
        }
        options
    }

    /// An etcd client of the cluster's administrator (every member, root once auth is on).
    pub async fn admin(&self) -> Result<Client> {
        Client::connect(self.urls(), Some(self.admin_options()))
            .await
            .context("connecting an admin client to etcd")
    }

    /// Waits until member `i` answers a status request.
    pub async fn wait_healthy(&self, i: usize) -> Result<()> {
        let url = format!(
            "{}://{}:{}",
            self.scheme(),
            self.members[i].ip,
            self.members[i].client_port
        );
        let started = Instant::now();
        loop {
            let status = async {
                let mut client = Client::connect([url.as_str()], Some(self.admin_options()))
                    .await
                    .ok()?;
                client.status().await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(3), status)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return Ok(());
            }
            if started.elapsed() > DEADLINE {
                let output = self.members[i]
                    .process
                    .as_ref()
                    .map(Process::output)
                    .unwrap_or_default();
                bail!("etcd member {i} not healthy within {DEADLINE:?}; output:\n{output}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client endpoints, `127.0.0.1:PORT` (or the host's address), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}:{}", m.ip, m.client_port))
            .collect()
    }

    /// The client URLs (`http(s)://127.0.0.1:PORT`, or the host's address), in member order.
    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://{}:{}", self.scheme(), m.ip, m.client_port))
            .collect()
    }

    /// The client endpoints joined with commas (for `--etcd-endpoints`).
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(process) = self.members[i].process.take() {
            process.signal("KILL")?;
            drop(process);
        }
        Ok(())
    }

    /// Restarts member `i` on its data directory and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)?;
        self.wait_healthy(i).await
    }

    /// Compacts the key history up to `revision`.
    pub async fn compact(&self, revision: u64) -> Result<()> {
        let revision = i64::try_from(revision).context("revision")?;
        self.admin()
            .await?
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .with_context(|| format!("compaction to {revision} refused"))?;
        Ok(())
    }

    /// The current etcd revision.
    pub async fn revision(&self) -> Result<u64> {
        let answer = self
            .admin()
            .await?
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await
            .context("range")?;
        let revision = answer.header().map_or(0, |h| h.revision());
        u64::try_from(revision).context("revision")
    }

    /// Writes `key` (a full etcd key, outside any Plexus prefix if you like) as an unrelated
    /// user of the cluster would; returns the revision of the write.
    pub async fn put(&self, key: &str, value: &str) -> Result<u64> {
        let answer = self
            .admin()
            .await?
            .put(key, value, None)
            .await
            .with_context(|| format!("put {key}"))?;
        let revision = answer.header().map_or(0, |h| h.revision());
        u64::try_from(revision).context("revision")
    }

    /// Turns on etcd's authentication with user `root` (password `root_password`); later admin
    /// requests authenticate as root.
    pub async fn enable_auth(&mut self, root_password: &str) -> Result<()> {
        let mut admin = self.admin().await?;
        admin
            .user_add("root", root_password, None)
            .await
            .context("adding root")?;
        admin
            .user_grant_role("root", "root")
            .await
            .context("granting root its role")?;
        admin.auth_enable().await.context("enabling auth")?;
        self.root = Some(root_password.to_owned());
        Ok(())
    }

    /// Adds user `name` with `password`, with readwrite permission on keys starting with
    /// `prefix` (none: a user who may do nothing).
    pub async fn add_user(&self, name: &str, password: &str, prefix: Option<&str>) -> Result<()> {
        let mut admin = self.admin().await?;
        admin
            .user_add(name, password, None)
            .await
            .with_context(|| format!("adding user {name}"))?;
        let role = format!("{name}-role");
        admin
            .role_add(role.as_str())
            .await
            .with_context(|| format!("adding role {role}"))?;
        if let Some(prefix) = prefix {
            admin
                .role_grant_permission(role.as_str(), Permission::read_write(prefix).with_prefix())
                .await
                .with_context(|| format!("granting {role} readwrite on {prefix}"))?;
        }
        admin
            .user_grant_role(name, role.as_str())
            .await
            .with_context(|| format!("granting {name} {role}"))?;
        Ok(())
    }
}
