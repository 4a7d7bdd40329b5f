//! One TLS connection's start: look at the first byte, answer plaintext HTTP with a clear 400,
//! run the handshake within [`HANDSHAKE_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The longest a client may take from connecting to finishing the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a plaintext HTTP request to a TLS port is told (as Go's `net/http` says it).
pub const PLAINTEXT_ANSWER: &str = "Client sent an HTTP request to an HTTPS server; use https://";

/// The TLS record type of a handshake message: the first byte of every TLS client hello.
const TLS_HANDSHAKE: u8 = 0x16;
/// How much of a plaintext request is read before answering it.
const PLAINTEXT_READ_LIMIT: usize = 8 * 1024;
/// How long the connection stays open after the answer to a plaintext request, or after a
/// refused handshake's alert, so the client reads it before the close (closing with unread data
/// would reset the connection).
const LINGER: Duration = Duration::from_secs(1);

/// The client's certificate chain as the handshake verified it (empty: none presented). Each
/// request on the connection carries it as an extension.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

impl PeerCertificates {
    /// Whether the client presented a (verified) certificate.
    pub fn is_present(&self) -> bool {
        !self.0.is_empty()
    }
}

/// Why a connection did not become a TLS stream. Peer problems, logged at debug by callers.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The client spoke plaintext HTTP; it was answered with a 400 naming the mistake.
    #[error("plaintext HTTP on the TLS port (answered 400)")]
    Plaintext,
    /// Neither a TLS client hello nor an HTTP request.
    #[error("not TLS (first byte {0:#04x})")]
    NotTls(u8),
    /// The client closed before sending anything.
    #[error("closed before the handshake")]
    Closed,
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake timed out")]
    Timeout,
    /// The handshake failed (unknown CA, bad certificate, no common protocol, …).
    #[error("TLS handshake failed")]
    Handshake(#[source] std::io::Error),
}

/// Runs the server side of a handshake on `tcp` with `config`.
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<(TlsStream<TcpStream>, PeerCertificates), AcceptError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, config)).await {
        Ok(result) => result,
        Err(_) => Err(AcceptError::Timeout),
    }
}

async fn handshake(
    mut tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<(TlsStream<TcpStream>, PeerCertificates), AcceptError> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await.map_err(AcceptError::Handshake)?;
    if n == 0 {
        return Err(AcceptError::Closed);
    }
    match first[0] {
        TLS_HANDSHAKE => {}
        b'A'..=b'Z' => {
            answer_plaintext(&mut tcp).await;
            return Err(AcceptError::Plaintext);
        }
        other => return Err(AcceptError::NotTls(other)),
    }
    let stream = match tokio_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .into_fallible()
        .await
    {
        Ok(stream) => stream,
        Err((error, tcp)) => {
            linger(tcp).await;
            return Err(AcceptError::Handshake(error));
        }
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_else(|| Arc::from(Vec::new()));
    Ok((stream, PeerCertificates(peer)))
}

/// Closes a connection whose handshake failed so the client reads the alert: with TLS 1.3 a
/// client whose certificate is refused has already sent its request, and closing with that
/// unread would reset the connection, losing the alert (the client then saw "connection was not
/// ready" instead of the refusal). Half-close, then drain briefly.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Reads the request head (bounded), answers 400 in the API's JSON error shape and closes.
async fn answer_plaintext(tcp: &mut TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < PLAINTEXT_READ_LIMIT && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = serde_json::json!({
        "error": { "code": "https_required", "message": PLAINTEXT_ANSWER }
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if tcp.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let _ = tcp.shutdown().await;
    // Let the client read the answer: drain what it still sends, briefly.
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
