//! Ports this agent hands out, checked against the whole host: several agents (or other programs)
//! on one host must never be given the same port.
//!
//! Two checks, both at assignment:
//! - **reservation**: every agent on the host takes an exclusive lock on `DIR/<port>.lock` for each
//!   port it hands out and holds it while the port is assigned. The lock dies with the process,
//!   so a crashed agent frees its ports. This covers ports assigned but not bound yet (a sidecar
//!   registered before its proxy starts).
//! - **bind test**: the port must bind on `0.0.0.0` now, so a port some other program listens on
//!   is skipped.
//!
//! `DIR` is per network namespace ([`host_ports_dir`]): ports are a per-namespace resource, so
//! agents on test "hosts" (namespaces) do not see each other's reservations.

use std::collections::BTreeMap;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The default reservation directory of this host: `$TMPDIR/plexus-ports/<network namespace>`.
pub fn host_ports_dir() -> PathBuf {
    let namespace = std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|link| {
            let text = link.to_string_lossy().into_owned();
            let inode: String = text.chars().filter(char::is_ascii_digit).collect();
            (!inode.is_empty()).then(|| format!("net-{inode}"))
        })
        .unwrap_or_else(|| "host".to_owned());
    std::env::temp_dir().join("plexus-ports").join(namespace)
}

/// Why a port cannot be handed out.
#[derive(Debug, thiserror::Error)]
pub enum PortTaken {
    /// Another agent on this host holds it.
    #[error("port {port} is reserved by another agent on this host")]
    Reserved {
        /// The port.
        port: u16,
    },
    /// Something on this host listens on it.
    #[error("port {port} is in use on this host")]
    InUse {
        /// The port.
        port: u16,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
}

/// One port held by this agent.
struct Held {
    owner: String,
    /// The lock; dropping it releases the reservation.
    _lock: Option<File>,
}

/// This agent's reservations on the host.
pub(crate) struct HostPorts {
    /// `None`: no host checks (unit tests of the agent alone).
    dir: Option<PathBuf>,
    held: Mutex<BTreeMap<u16, Held>>,
}

impl HostPorts {
    /// Reservations in `dir` (created when missing); `None` checks nothing.
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        if let Some(dir) = &dir
            && let Err(error) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(%error, dir = %dir.display(), "cannot create the port reservation directory; ports are only bind-tested");
        }
        Self {
            dir,
            held: Mutex::new(BTreeMap::new()),
        }
    }

    /// Claims `port` for `owner` (a service id). `Ok(true)` when newly claimed, `Ok(false)` when
    /// `owner` already held it. `bind_test` false skips the bind test (a port the owner's own
    /// process is expected to listen on already).
    pub(crate) fn claim(&self, port: u16, owner: &str, bind_test: bool) -> Result<bool, PortTaken> {
        let Some(dir) = &self.dir else {
            return Ok(true);
        };
        let mut held = plexus_runtime::lock::lock(&self.held);
        if let Some(h) = held.get(&port) {
            return if h.owner == owner {
                Ok(false)
            } else {
                Err(PortTaken::Reserved { port })
            };
        }
        let lock = lock_file(dir, port)?;
        if bind_test && let Err(source) = std::net::TcpListener::bind(("0.0.0.0", port)) {
            return Err(PortTaken::InUse { port, source });
        }
        held.insert(
            port,
            Held {
                owner: owner.to_owned(),
                _lock: lock,
            },
        );
        Ok(true)
    }

    /// Releases `port`.
    pub(crate) fn release(&self, port: u16) {
        plexus_runtime::lock::lock(&self.held).remove(&port);
    }

    /// Releases every port of `owner` except `keep`.
    pub(crate) fn release_owner(&self, owner: &str, keep: Option<u16>) {
        plexus_runtime::lock::lock(&self.held)
            .retain(|port, h| h.owner != owner || Some(*port) == keep);
    }
}

/// Takes the host-wide lock of `port`; `None` when the directory is unusable (then only the bind
/// test guards the port).
fn lock_file(dir: &Path, port: u16) -> Result<Option<File>, PortTaken> {
    let path = dir.join(format!("{port}.lock"));
    let file = match File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(error) => {
            tracing::debug!(%error, path = %path.display(), "cannot open a port lock");
            return Ok(None);
        }
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Err(PortTaken::Reserved { port }),
        Err(TryLockError::Error(error)) => {
            tracing::debug!(%error, path = %path.display(), "cannot lock a port lock");
            Ok(None)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn two_agents_never_share_a_port_and_a_listening_port_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = HostPorts::new(Some(dir.path().to_path_buf()));
        let b = HostPorts::new(Some(dir.path().to_path_buf()));
        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);

        assert!(a.claim(port, "web-sidecar-proxy", true).unwrap());
        assert!(!a.claim(port, "web-sidecar-proxy", true).unwrap());
        let taken = b.claim(port, "api-sidecar-proxy", true).unwrap_err();
        assert_eq!(
            taken.to_string(),
            format!("port {port} is reserved by another agent on this host")
        );
        a.release_owner("web-sidecar-proxy", None);
        assert!(b.claim(port, "api-sidecar-proxy", true).unwrap());

        let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let taken = a.claim(busy_port, "x", true).unwrap_err();
        assert!(
            taken.to_string().contains(&busy_port.to_string()),
            "{taken}"
        );
        // Its own process may already listen on the owner's port.
        assert!(a.claim(busy_port, "x", false).unwrap());
        a.release(busy_port);
        assert!(b.claim(busy_port, "y", false).unwrap());
    }

    #[test]
    fn without_a_directory_nothing_is_checked() {
        let none = HostPorts::new(None);
        assert!(none.claim(1, "a", true).unwrap());
        assert!(none.claim(1, "b", true).unwrap());
    }
}
