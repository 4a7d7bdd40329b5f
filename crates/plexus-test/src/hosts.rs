//! Several hosts on one machine: each host is a network namespace with its own address, joined to
//! the others by a bridge (one veth pair per host), so processes started "on" different hosts talk
//! over real routable addresses, as on separate machines.
//!
//! ```text
//!   root namespace (the test): bridge pxt<pid>_<n>b  10.X.Y.1/24
//!      ├── veth pxt<pid>_<n>v0 ══ eth0 in netns pxt<pid>_<n>_<name0>  10.X.Y.2/24
//!      ├── veth pxt<pid>_<n>v1 ══ eth0 in netns pxt<pid>_<n>_<name1>  10.X.Y.3/24
//!      └── …
//! ```
//!
//! - [`Network::start`] builds it; dropping the [`Network`] kills what still runs inside its
//!   namespaces and removes namespaces, veths and the bridge (also when the test panics). Every
//!   start first sweeps what crashed runs left behind: names carry the creating process's id, and
//!   those of processes no longer alive are removed.
//! - [`Host::spawn`] runs a process inside the host (`ip netns exec`); it listens on the host's
//!   own addresses (`127.0.0.1` is that host's loopback, ports do not clash with other hosts).
//! - [`Host::connect`], [`Host::bind`], [`Host::http_get`] open sockets *inside* the host (a
//!   thread enters the namespace, creates the socket and leaves): a local client of that host,
//!   which still works while the host is partitioned.
//! - [`Host::partition`] takes the host's link down (its packets are dropped silently, like a cut
//!   cable: connections time out, nothing is refused); [`Host::heal`] brings it back. `tc netem`
//!   and packet filters are not available on these machines; a link is.
//!
//! Needs root and iproute2's `ip` (tests run as root, as CI does); without them
//! [`Network::start`] fails with a message naming what is missing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::process::Process;

/// Prefix of every name this module creates (namespaces, links); followed by the creating
/// process's id in hex, so a sweep can tell a crashed run's leftovers from a live run's.
const PREFIX: &str = "pxt";
/// Where `ip netns add` puts a namespace's handle.
const NETNS_DIR: &str = "/run/netns";
/// Longest wait for an in-host connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for an in-host HTTP answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_NETWORK: AtomicU32 = AtomicU32::new(0);

/// iproute2's `ip`.
fn ip_bin() -> Result<PathBuf> {
    for candidate in ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"] {
        if Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("iproute2's `ip` is not installed: run scripts/setup-test-env.sh (installs iproute2)")
}

/// Runs `ip args…`; an error carries its stderr.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new(ip_bin()?)
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The process id a name of ours was created by (`pxt<hex pid>_…`).
fn creator(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (hex, _) = rest.split_once('_')?;
    u32::from_str_radix(hex, 16).ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills what runs inside `netns` (best effort).
fn kill_inside(netns: &str) {
    let Ok(pids) = ip(&["netns", "pids", netns]) else {
        return;
    };
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
}

/// Removes namespaces and links left by runs whose process is gone.
fn sweep() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if creator(name).is_some_and(|pid| !alive(pid)) {
                kill_inside(name);
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            // "12: name@peer: <...>" or "3: name: <...>"
            let Some(name) = line
                .split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n))
            else {
                continue;
            };
            if creator(name).is_some_and(|pid| !alive(pid)) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// A free `10.X.Y.0/24` for a new bridge: not on any interface of the root namespace.
fn free_subnet(seed: u32) -> Result<[u8; 3]> {
    let used = ip(&["-o", "-4", "addr", "show"])?;
    const SPAN: u32 = 50 * 256;
    for step in 0..SPAN {
        let n = (seed.wrapping_mul(97).wrapping_add(step)) % SPAN;
        let subnet = [10, 200 + (n / 256) as u8, (n % 256) as u8];
        let prefix = format!(" {}.{}.{}.", subnet[0], subnet[1], subnet[2]);
        if !used.contains(&prefix) {
            return Ok(subnet);
        }
    }
    bail!("no free 10.200-249.x.0/24 subnet for a test network")
}

/// One host: a network namespace with one address on the test network.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    netns: String,
    link: String,
    addr: Ipv4Addr,
}

impl Host {
    /// The name the test gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace's name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Its address on the test network.
    pub fn ip(&self) -> Ipv4Addr {
        self.addr
    }

    /// `ip:port` on this host.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.addr, port))
    }

    /// Starts `bin args…` inside this host; its log lines are prefixed `[label@host]`.
    pub fn spawn(
        &self,
        label: &str,
        bin: &Path,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> Result<Process> {
        let mut full: Vec<String> = vec!["netns".into(), "exec".into(), self.netns.clone()];
        full.push(bin.display().to_string());
        full.extend(args.iter().cloned());
        Process::spawn(&format!("{label}@{}", self.name), &ip_bin()?, &full, envs)
    }

    /// Runs `bin args…` inside this host to completion: (exit code, stdout, stderr).
    pub fn run(&self, bin: &Path, args: &[&str]) -> Result<(i32, String, String)> {
        let out = Command::new(ip_bin()?)
            .args(["netns", "exec", &self.netns])
            .arg(bin)
            .args(args)
            .env_remove(plexus_api::client::HTTP_ADDR_ENV)
            .output()
            .with_context(|| format!("running {} on {}", bin.display(), self.name))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Cuts the host off the network: its link goes down, packets to and from it are dropped
    /// (connections time out; nothing is refused). Processes and local traffic go on.
    pub fn partition(&self) -> Result<()> {
        ip(&["link", "set", &self.link, "down"]).map(drop)
    }

    /// Puts the host back on the network.
    pub fn heal(&self) -> Result<()> {
        ip(&["link", "set", &self.link, "up"]).map(drop)
    }

    /// Runs `f` on a thread inside this host's network namespace: sockets it creates belong to
    /// the host. The thread ends afterwards, so the namespace never leaks into a shared thread.
    pub async fn inside<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> std::io::Result<T> + Send + 'static,
    {
        let path = PathBuf::from(NETNS_DIR).join(&self.netns);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                let result = (|| {
                    let handle = std::fs::File::open(&path)?;
                    rustix::thread::move_into_link_name_space(
                        handle.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )?;
                    f()
                })();
                let _ = tx.send(result);
            })
            .context("starting a thread for the host's namespace")?;
        let result = rx
            .await
            .map_err(|_| anyhow!("the thread inside host {} panicked", self.name))?;
        result.with_context(|| format!("inside host {}", self.name))
    }

    /// A TCP connection to `addr` made from inside this host (a local client of the host).
    pub async fn connect(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
        let stream = self
            .inside(move || {
                let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
                stream.set_nonblocking(true)?;
                stream.set_nodelay(true)?;
                Ok(stream)
            })
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(tokio::net::TcpStream::from_std(stream)?)
    }

    /// A TCP listener bound to `addr` inside this host.
    pub async fn bind(&self, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
        let listener = self
            .inside(move || {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .await
            .with_context(|| format!("binding {addr}"))?;
        Ok(tokio::net::TcpListener::from_std(listener)?)
    }

    /// A TCP echo server listening inside this host on `addr` (e.g. `127.0.0.1:9090`).
    pub async fn tcp_echo(&self, addr: SocketAddr) -> Result<crate::TcpEcho> {
        crate::TcpEcho::serve(self.bind(addr).await?)
    }

    /// `GET path` (HTTP/1.0) to `addr` from inside this host: (status, body). Works while the host
    /// is partitioned, for addresses of the host itself.
    pub async fn http_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        self.http(addr, "GET", path, &[], &[]).await
    }

    /// Any request (HTTP/1.0, `body` and extra `headers` as given, e.g. `X-Consul-Token`) to
    /// `addr` from inside this host: (status, body).
    pub async fn http(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(u16, String)> {
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.inside(move || {
            let mut stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
            stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
            stream.write_all(&request)?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            Ok(answer)
        })
        .await
        .and_then(|answer| parse_http(&answer))
        .with_context(|| format!("{method} http://{addr}{path}"))
    }
}

/// (status, body) of an HTTP/1.x answer delimited by the connection's end.
fn parse_http(answer: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete HTTP answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Hosts on one bridge; everything is removed on drop.
#[derive(Debug)]
pub struct Network {
    bridge: String,
    gateway: Ipv4Addr,
    hosts: Vec<Host>,
    /// Second interfaces of other networks' hosts on this one ([`Network::attach`]).
    attached: Vec<String>,
}

impl Network {
    /// Builds a network with one host per name (`10.X.Y.2`, `.3`, … in order; the bridge, i.e.
    /// the test itself, is `10.X.Y.1`). Sweeps crashed runs' leftovers first.
    pub fn start(names: &[&str]) -> Result<Self> {
        if names.is_empty() || names.len() > 200 {
            bail!("a test network has 1 to 200 hosts");
        }
        ip(&["netns", "list"])
            .context("network namespaces need root and iproute2 (tests run as root, as CI does)")?;
        sweep();
        let pid = std::process::id();
        let seq = NEXT_NETWORK.fetch_add(1, Ordering::SeqCst);
        let subnet = free_subnet(pid.wrapping_mul(131).wrapping_add(seq))?;
        let base = format!("{PREFIX}{pid:x}_{seq:x}");
        let gateway = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1);
        let mut network = Self {
            bridge: format!("{base}b"),
            gateway,
            hosts: Vec::new(),
            attached: Vec::new(),
        };
        ip(&["link", "add", &network.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            &network.bridge,
        ])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        for (i, name) in names.iter().enumerate() {
            let host = Host {
                name: (*name).to_owned(),
                netns: format!("{base}_{name}"),
                link: format!("{base}v{i:x}"),
                addr: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], (i + 2) as u8),
            };
            if host.link.len() > 15 {
                bail!("link name {} is too long", host.link);
            }
            ip(&["netns", "add", &host.netns])?;
            network.hosts.push(host.clone());
            let ns = host.netns.as_str();
            ip(&[
                "link", "add", &host.link, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["link", "set", &host.link, "master", &network.bridge, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
            ])?;
        }
        Ok(network)
    }

    /// The host named `name`.
    ///
    /// # Panics
    /// When no host has that name (a mistake in the test).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host named {name:?} in this test network"))
    }

    /// Every host, in the order given.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The test's own address on the network (the bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Gives `host` (a host of another network) a second interface on this network (`wanN`,
    /// no default route: only this network's addresses are reached through it) and returns
    /// its address here. The root namespace does not forward, so two networks reach each
    /// other only through hosts attached this way.
    pub fn attach(&mut self, host: &Host) -> Result<Ipv4Addr> {
        let index = self.hosts.len() + self.attached.len();
        let octets = self.gateway.octets();
        let addr = Ipv4Addr::new(octets[0], octets[1], octets[2], (index + 2) as u8);
        let base = self.bridge.trim_end_matches('b');
        let link = format!("{base}w{:x}", self.attached.len());
        if link.len() > 15 {
            bail!("link name {link} is too long");
        }
        let inside = format!("wan{}", self.attached.len());
        let ns = host.netns.as_str();
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", &inside, "netns", ns,
        ])?;
        self.attached.push(link.clone());
        ip(&["link", "set", &link, "master", &self.bridge, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inside,
        ])?;
        ip(&["-n", ns, "link", "set", &inside, "up"])?;
        Ok(addr)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in &self.hosts {
            kill_inside(&host.netns);
            let _ = ip(&["link", "del", &host.link]);
            let _ = ip(&["netns", "del", &host.netns]);
        }
        for link in &self.attached {
            let _ = ip(&["link", "del", link]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_say_who_made_them() {
        assert_eq!(creator("pxt1a2b_0b"), Some(0x1a2b));
        assert_eq!(creator("pxt1a2b_3_web"), Some(0x1a2b));
        assert_eq!(creator("pxtzz_0b"), None);
        assert_eq!(creator("eth0"), None);
        assert_eq!(creator("pxt12"), None);
    }

    /// Two hosts reach each other by address; a partition drops packets (a connect times out
    /// instead of being refused) while the host's own traffic goes on; heal restores it; the
    /// drop removes every namespace and link.
    #[tokio::test]
    async fn hosts_talk_partition_and_clean_up() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let network = Network::start(&["a", "b"]).unwrap();
        let (a, b) = (network.host("a").clone(), network.host("b").clone());
        assert_ne!(a.ip(), b.ip());
        let echo = b
            .tcp_echo(SocketAddr::from(([0, 0, 0, 0], 7000)))
            .await
            .unwrap();
        let roundtrip = |host: Host, to: SocketAddr| async move {
            let mut stream = host.connect(to).await?;
            stream.write_all(b"hi\n").await?;
            let mut buf = [0u8; 3];
            stream.read_exact(&mut buf).await?;
            anyhow::ensure!(&buf == b"hi\n", "echoed {buf:?}");
            Ok::<_, anyhow::Error>(())
        };
        roundtrip(a.clone(), b.addr(7000)).await.unwrap();
        // The test itself reaches hosts through the bridge.
        std::net::TcpStream::connect_timeout(&b.addr(7000), CONNECT_TIMEOUT).unwrap();

        b.partition().unwrap();
        let started = std::time::Instant::now();
        let cut = a
            .inside(move || {
                std::net::TcpStream::connect_timeout(
                    &SocketAddr::from((b.ip(), 7000)),
                    Duration::from_millis(700),
                )
            })
            .await
            .unwrap_err();
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "{cut:#}: refused, not dropped"
        );
        // Local traffic on the partitioned host goes on.
        let b = network.host("b").clone();
        roundtrip(b.clone(), SocketAddr::from(([127, 0, 0, 1], 7000)))
            .await
            .unwrap();
        b.heal().unwrap();
        roundtrip(a.clone(), b.addr(7000)).await.unwrap();
        assert_eq!(echo.connections(), 3);

        let names = [a.netns().to_owned(), b.netns().to_owned()];
        drop(echo);
        drop(network);
        let left = ip(&["netns", "list"]).unwrap();
        for name in names {
            assert!(!left.contains(&name), "{name} still exists: {left}");
        }
    }

    /// Two networks reach each other only through an attached host's second interface: a
    /// host of one reaches the attached address, not the attached host's own address nor the
    /// other network's other hosts.
    #[tokio::test]
    async fn networks_meet_only_at_attached_interfaces() {
        let mut one = Network::start(&["a"]).unwrap();
        let two = Network::start(&["x", "y"]).unwrap();
        let (a, x, y) = (
            one.host("a").clone(),
            two.host("x").clone(),
            two.host("y").clone(),
        );
        let attached = one.attach(&x).unwrap();
        let _echo_x = x
            .tcp_echo(SocketAddr::from(([0, 0, 0, 0], 7001)))
            .await
            .unwrap();
        let _echo_y = y
            .tcp_echo(SocketAddr::from(([0, 0, 0, 0], 7001)))
            .await
            .unwrap();
        a.connect(SocketAddr::from((attached, 7001))).await.unwrap();
        for unreachable in [x.ip(), y.ip()] {
            let refused = a
                .inside(move || {
                    std::net::TcpStream::connect_timeout(
                        &SocketAddr::from((unreachable, 7001)),
                        Duration::from_millis(500),
                    )
                })
                .await;
            assert!(
                refused.is_err(),
                "{unreachable} is reachable from the other network"
            );
        }
        // The attached host still reaches its own network.
        x.connect(y.addr(7001)).await.unwrap();
    }

    /// What a crashed run left (named after a process that is gone) is removed by the next start.
    #[test]
    fn leftovers_of_crashed_runs_are_swept() {
        let mut gone = Command::new("true").spawn().unwrap();
        let pid = gone.id();
        gone.wait().unwrap();
        let stale = format!("{PREFIX}{pid:x}_0_stale");
        let stale_link = format!("{PREFIX}{pid:x}_0b");
        ip(&["netns", "add", &stale]).unwrap();
        ip(&["link", "add", &stale_link, "type", "bridge"]).unwrap();
        let network = Network::start(&["only"]).unwrap();
        assert!(!ip(&["netns", "list"]).unwrap().contains(&stale));
        assert!(!ip(&["-o", "link", "show"]).unwrap().contains(&stale_link));
        // A live run's names are kept.
        assert!(
            ip(&["netns", "list"])
                .unwrap()
                .contains(network.host("only").netns())
        );
    }

    #[test]
    fn answers_are_parsed() {
        let (status, body) = parse_http(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nready").unwrap();
        assert_eq!((status, body.as_str()), (200, "ready"));
        assert!(parse_http(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_http(b"nonsense\r\n\r\n").is_err());
    }
}
