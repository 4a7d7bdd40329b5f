//! Connection bounds for every HTTP listener: how many connections, how many from one client,
//! how long a client may take to send a request's headers or sit idle between requests.
//!
//! ```text
//! accept ─► Admission::admit(peer ip) ─┬─ refused: one "503 too_many_connections" written
//!                                      │  without waiting, then close (never blocks the loop)
//!                                      └─ admitted: a Permit held by the stream ([`Held`]) for
//!                                         the connection's life, websockets included; hyper
//!                                         with header-read timeout + keep-alive idle
//! ```
//!
//! The global bound is clamped below the process's open-file limit (read once from
//! `/proc/self/limits`), so that the server's own refusal comes before the kernel's `EMFILE`:
//! an accept loop out of descriptors stops answering everyone; a refusal costs one descriptor
//! for a moment.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections one listener serves at once (`--http-max-conns`).
pub const MAX_CONNECTIONS: usize = 8192;
/// Connections one client address may hold on one listener (`--http-max-conns-per-client`).
/// Higher than Consul's 200 on purpose: every sidecar, agent and CLI of a node reaches its
/// local agent from 127.0.0.1, each sidecar with several blocking queries open at once.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 1024;
/// How long a client may take to send a request's headers, and to start the next request on
/// a kept-alive connection (`--http-header-timeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted on HTTP/1.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2 streams one connection may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Descriptors kept free for everything but client connections (store, sockets to etcd, DNS,
/// sidecars' blocking queries going out) when the open-file limit clamps the connection bound.
const RESERVED_FDS: usize = 256;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections at once ([`MAX_CONNECTIONS`]); clamped below the open-file limit.
    pub max_connections: usize,
    /// Connections at once from one IP address ([`MAX_CONNECTIONS_PER_CLIENT`]).
    pub max_per_client: usize,
    /// Header-read and keep-alive idle timeout ([`HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_per_client: MAX_CONNECTIONS_PER_CLIENT,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener is at its connection bound.
    Full {
        /// The bound.
        limit: usize,
    },
    /// This client address is at its bound.
    PerClient {
        /// The bound.
        limit: usize,
    },
}

impl Refusal {
    /// The error code in the refusal's JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Full { .. } => "too_many_connections",
            Refusal::PerClient { .. } => "too_many_connections_from_client",
        }
    }

    /// The message in the refusal's JSON body.
    pub fn message(&self) -> String {
        match self {
            Refusal::Full { limit } => format!(
                "the server has {limit} connections open, its limit (--http-max-conns); retry later"
            ),
            Refusal::PerClient { limit } => format!(
                "this client address has {limit} connections open, the limit per client (--http-max-conns-per-client); reuse connections or close idle ones"
            ),
        }
    }

    /// The whole HTTP/1.1 response written to a refused connection.
    pub fn response(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.message() }
        })
        .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Counts one listener's connections, in total and per client address.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: ConnLimits,
    total: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    _total: OwnedSemaphorePermit,
    client: IpAddr,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = lock(&self.per_client);
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is one step: the counts stay consistent even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Admission {
    /// Bounds for one listener; the global bound is clamped below the open-file limit.
    pub fn new(limits: ConnLimits) -> Self {
        let limits = clamp_to_fd_limit(limits, open_file_limit());
        Self {
            limits,
            total: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: Arc::default(),
        }
    }

    /// The bounds in force (after clamping).
    pub fn limits(&self) -> ConnLimits {
        self.limits
    }

    /// Takes a place for a connection from `client`, or says why not.
    pub fn admit(&self, client: IpAddr) -> Result<Permit, Refusal> {
        let mut counts = lock(&self.per_client);
        let count = counts.entry(client).or_insert(0);
        if *count >= self.limits.max_per_client {
            return Err(Refusal::PerClient {
                limit: self.limits.max_per_client,
            });
        }
        let Ok(total) = Arc::clone(&self.total).try_acquire_owned() else {
            if *count == 0 {
                counts.remove(&client);
            }
            return Err(Refusal::Full {
                limit: self.limits.max_connections,
            });
        };
        *count += 1;
        Ok(Permit {
            _total: total,
            client,
            per_client: Arc::clone(&self.per_client),
        })
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.limits.max_connections - self.total.available_permits()
    }
}

/// A connection's stream with its [`Permit`]: the place is freed when the stream is dropped,
/// so a connection upgraded away from HTTP (a websocket) keeps counting for as long as it lives.
#[derive(Debug)]
pub struct Held<T> {
    inner: T,
    _permit: Permit,
}

impl<T> Held<T> {
    /// `inner`, holding `permit` until dropped.
    pub fn new(inner: T, permit: Permit) -> Self {
        Self {
            inner,
            _permit: permit,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Answers a refused connection with [`Refusal::response`] as far as the socket takes it
/// without waiting, then closes it (the accept loop never waits on a refused client).
pub fn refuse(tcp: TcpStream, refusal: Refusal) {
    let _ = tcp.try_write(&refusal.response());
    drop(tcp);
}

/// The process's soft limit on open files (`None` when it cannot be read or is unlimited).
pub fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&limits)
}

fn parse_open_file_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clamp_to_fd_limit(mut limits: ConnLimits, fd_limit: Option<usize>) -> ConnLimits {
    if let Some(fds) = fd_limit {
        let room = fds.saturating_sub(RESERVED_FDS).max(1);
        if limits.max_connections > room {
            tracing::warn!(
                requested = limits.max_connections,
                open_file_limit = fds,
                max_connections = room,
                "connection limit lowered below the open-file limit; raise `ulimit -n` for more"
            );
            limits.max_connections = room;
        }
    }
    limits.max_per_client = limits
        .max_per_client
        .clamp(1, limits.max_connections.max(1));
    limits
}

/// A hyper connection builder with the bounds: header-read (and keep-alive idle) timeout, head
/// size, HTTP/2 streams and keep-alive pings.
pub fn builder(
    limits: &ConnLimits,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES.max(8192));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    builder
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(total: usize, per_client: usize) -> ConnLimits {
        ConnLimits {
            max_connections: total,
            max_per_client: per_client,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }

    #[test]
    fn per_client_and_total_bounds_refuse_and_free_on_drop() {
        let admission = Admission {
            limits: limits(3, 2),
            total: Arc::new(Semaphore::new(3)),
            per_client: Arc::default(),
        };
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        assert_eq!(
            admission.admit(a).unwrap_err(),
            Refusal::PerClient { limit: 2 }
        );
        let _b1 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(c).unwrap_err(), Refusal::Full { limit: 3 });
        assert_eq!(admission.open(), 3);
        drop(a1);
        assert_eq!(admission.open(), 2);
        let _c1 = admission.admit(c).unwrap();
        assert!(lock(&admission.per_client).get(&c).is_some());
        // A refused client leaves no count behind.
        let d: IpAddr = "127.0.0.4".parse().unwrap();
        assert!(admission.admit(d).is_err());
        assert!(lock(&admission.per_client).get(&d).is_none());
    }

    #[test]
    fn the_bound_stays_below_the_open_file_limit() {
        let clamped = clamp_to_fd_limit(limits(4096, 200), Some(1024));
        assert_eq!(clamped.max_connections, 768);
        assert_eq!(clamped.max_per_client, 200);
        let tiny = clamp_to_fd_limit(limits(4096, 200), Some(100));
        assert_eq!((tiny.max_connections, tiny.max_per_client), (1, 1));
        assert_eq!(clamp_to_fd_limit(limits(10, 2), None), limits(10, 2));
        let text = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            20000                20000                files\n";
        assert_eq!(parse_open_file_limit(text), Some(20000));
        assert_eq!(parse_open_file_limit("Max open files unlimited x"), None);
    }

    #[test]
    fn the_refusal_is_a_complete_json_503() {
        let response = String::from_utf8(Refusal::PerClient { limit: 7 }.response()).unwrap();
        assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections_from_client");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("7 connections")
        );
    }
}
