//! The UDP and TCP loops around [`Dns::respond`], on sockets the caller bound.
//!
//! Bounds: a UDP datagram is read into 4 KiB (a longer one arrives cut and is answered FORMERR
//! or dropped); catalog answers are computed inline (microseconds, no I/O); at most
//! [`MAX_FORWARDS`] recursor forwards run at once (more are dropped: the client retries). TCP:
//! at most [`MAX_TCP_CONNECTIONS`] connections and [`MAX_TCP_CONNECTIONS_PER_CLIENT`] from one
//! address (more are closed as soon as accepted), each closed after [`TCP_IDLE`] without a
//! query (or while a query trickles in) or on a frame longer than [`MAX_TCP_QUERY`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use plexus_runtime::connections::{Admission, ConnLimits};

use super::{Dns, MAX_UDP_PAYLOAD, Reply, Transport, recursor};

/// Recursor forwards in flight at once (per transport).
pub const MAX_FORWARDS: usize = 256;
/// TCP connections open at once; more are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// TCP connections one client address may hold; more are closed at once.
pub const MAX_TCP_CONNECTIONS_PER_CLIENT: usize = 32;
/// How long a TCP connection may wait for its next query.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Longest query accepted over TCP.
pub const MAX_TCP_QUERY: u16 = 4096;

/// Serves DNS over UDP on `socket` until `stop` fires.
pub async fn udp(socket: UdpSocket, dns: Dns, stop: CancellationToken) {
    let socket = Arc::new(socket);
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let tasks = TaskTracker::new();
    let mut buffer = vec![0u8; usize::from(MAX_UDP_PAYLOAD)];
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => break,
            received = socket.recv_from(&mut buffer) => received,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors of earlier sends surface here on some systems; keep serving.
                tracing::debug!(%error, "DNS UDP receive failed");
                continue;
            }
        };
        let packet = &buffer[..len];
        match dns.respond(packet, Transport::Udp).await {
            Reply::Send(answer) => {
                if let Err(error) = socket.send_to(&answer, peer).await {
                    tracing::debug!(%error, %peer, "DNS UDP send failed");
                }
            }
            Reply::Drop => {}
            Reply::Forward => {
                let Ok(permit) = Arc::clone(&forwards).try_acquire_owned() else {
                    tracing::debug!(%peer, "too many DNS forwards in flight; query dropped");
                    continue;
                };
                let (socket, dns, query) = (Arc::clone(&socket), dns.clone(), packet.to_vec());
                tasks.spawn(async move {
                    let config = dns.config();
                    if let Some(answer) = recursor::forward(
                        &query,
                        &config.recursors,
                        config.recursor_timeout,
                        Transport::Udp,
                    )
                    .await
                    {
                        let _ = socket.send_to(&answer, peer).await;
                    }
                    drop(permit);
                });
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// Serves DNS over TCP on `listener` until `stop` fires (open connections end with it).
pub async fn tcp(listener: TcpListener, dns: Dns, stop: CancellationToken) {
    // Accept, then admit or close at once: a full listener never leaves clients waiting in the
    // kernel's backlog, and one client cannot hold every place.
    let admission = Admission::new(ConnLimits {
        max_connections: MAX_TCP_CONNECTIONS,
        max_per_client: MAX_TCP_CONNECTIONS_PER_CLIENT,
        header_read_timeout: TCP_IDLE,
    });
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "DNS TCP accept failed");
                // Out of descriptors and the like: pause instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match admission.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                tracing::debug!(%peer, code = refusal.code(), "DNS TCP connection refused");
                drop(stream);
                continue;
            }
        };
        let (dns, stop) = (dns.clone(), stop.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                served = connection(stream, &dns) => {
                    if let Err(error) = served {
                        tracing::debug!(%error, %peer, "DNS TCP connection ended");
                    }
                }
            }
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Answers the queries of one TCP connection, in order, until it closes or idles.
async fn connection(mut stream: TcpStream, dns: &Dns) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len,
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(error)) => return Err(error),
            Err(_) => return Ok(()),
        };
        if len == 0 || len > MAX_TCP_QUERY {
            return Err(std::io::Error::other(format!(
                "query frame of {len} bytes refused"
            )));
        }
        let mut query = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::other("query frame not completed in time"))??;
        let answer = match dns.respond(&query, Transport::Tcp).await {
            Reply::Send(answer) => Some(answer),
            Reply::Drop => None,
            Reply::Forward => {
                let config = dns.config();
                recursor::forward(
                    &query,
                    &config.recursors,
                    config.recursor_timeout,
                    Transport::Tcp,
                )
                .await
            }
        };
        if let Some(answer) = answer {
            let len = u16::try_from(answer.len()).map_err(std::io::Error::other)?;
            let mut frame = Vec::with_capacity(answer.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&answer);
            stream.write_all(&frame).await?;
        }
    }
}
