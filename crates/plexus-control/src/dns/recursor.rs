//! Names outside the domain go to the configured recursors, in order, over the transport the
//! client used; the first answer whose id matches is relayed (with RA set). None answering:
//! SERVFAIL.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{Transport, to_vec};

/// Asks each recursor in turn (each within `timeout`) and returns the first answer, or SERVFAIL.
pub async fn forward(
    query: &[u8],
    recursors: &[SocketAddr],
    timeout: Duration,
    transport: Transport,
) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let id = request.metadata.id;
    for recursor in recursors {
        let asked = tokio::time::timeout(timeout, ask(query, *recursor, transport)).await;
        match asked {
            Ok(Ok(mut answer))
                if answer.len() >= 12 && answer.get(..2) == Some(&id.to_be_bytes()[..]) =>
            {
                // We did recurse, whatever the recursor says of itself: set RA.
                answer[3] |= 0x80;
                return Some(answer);
            }
            Ok(Ok(_)) => tracing::debug!(%recursor, "recursor answered another id"),
            Ok(Err(error)) => tracing::debug!(%recursor, %error, "recursor failed"),
            Err(_) => tracing::debug!(%recursor, "recursor timed out"),
        }
    }
    let mut failed = Message::error_msg(id, request.metadata.op_code, ResponseCode::ServFail);
    failed.metadata.recursion_desired = request.metadata.recursion_desired;
    failed.metadata.recursion_available = true;
    failed.add_queries(request.queries);
    to_vec(&failed)
}

async fn ask(query: &[u8], recursor: SocketAddr, transport: Transport) -> std::io::Result<Vec<u8>> {
    match transport {
        Transport::Udp => {
            let local: SocketAddr = if recursor.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let socket = UdpSocket::bind(local).await?;
            socket.connect(recursor).await?;
            socket.send(query).await?;
            let mut buffer = vec![0u8; usize::from(super::MAX_UDP_PAYLOAD)];
            let n = socket.recv(&mut buffer).await?;
            buffer.truncate(n);
            Ok(buffer)
        }
        Transport::Tcp => {
            let mut stream = TcpStream::connect(recursor).await?;
            let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
            let mut frame = Vec::with_capacity(query.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(query);
            stream.write_all(&frame).await?;
            let len = stream.read_u16().await?;
            let mut buffer = vec![0u8; usize::from(len)];
            stream.read_exact(&mut buffer).await?;
            Ok(buffer)
        }
    }
}
