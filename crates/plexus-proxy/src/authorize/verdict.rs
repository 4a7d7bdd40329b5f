//! The inbound's verdict on a TCP connection, told to the outbound sidecar (ALPN `plexus-tcp/2`),
//! so a denial is seen by the *client* side as a denial, with its reason, not as a network error.
//!
//! Right after the mTLS handshake, before any application byte, the inbound writes one frame:
//!
//! ```text
//! allowed:  0x00                                   application bytes follow
//! denied:   0x01  len:u16 (big endian)  reason     then close_notify; len ≤ 1024, UTF-8
//! ```
//!
//! The outbound does not wait for it before sending: the app's bytes go out at once (an inbound
//! that denies discards them), and [`VerdictStream`] takes the frame off the front of what the
//! inbound sends back. `plexus-tcp/1` (older sidecars) has no frame: a denial is a bare close.
//!
//! Parsing is bounded and never panics on any input (property-tested).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The first byte of an "allowed" frame.
const ALLOWED: u8 = 0x00;
/// The first byte of a "denied" frame.
const DENIED: u8 = 0x01;
/// Longest reason carried (longer ones are cut at a character boundary).
pub(crate) const MAX_REASON: usize = 1024;
/// Longest time the inbound spends telling a peer it is denied.
const DENY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection was denied by the destination's intentions; the reason is the inbound's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("denied by the destination: {reason}")]
pub(crate) struct Denied {
    /// Why (e.g. "Default behavior configured by default intention policy: deny").
    pub reason: String,
}

/// The frame telling the peer it is allowed.
pub(crate) const ALLOW_FRAME: [u8; 1] = [ALLOWED];

/// The frame telling the peer it is denied, and why.
pub(crate) fn deny_frame(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut frame = Vec::with_capacity(3 + reason.len());
    frame.push(DENIED);
    frame.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// Tells the peer it is denied and closes the TLS session (bounded in time; errors ignored: the
/// connection is going away either way).
pub(crate) async fn deny<S: AsyncWrite + Unpin>(stream: &mut S, reason: &str) {
    let frame = deny_frame(reason);
    let tell = async {
        stream.write_all(&frame).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(DENY_WRITE_TIMEOUT, tell).await;
}

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// Allowed; the frame took this many bytes.
    Allowed(usize),
    /// Denied with this reason.
    Denied(String),
    /// Not a verdict frame.
    Invalid(u8),
}

/// Parses a verdict frame at the start of `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    match bytes.first() {
        None => Parsed::Incomplete,
        Some(&ALLOWED) => Parsed::Allowed(1),
        Some(&DENIED) => {
            let Some(len) = bytes.get(1..3) else {
                return Parsed::Incomplete;
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]])).min(MAX_REASON);
            match bytes.get(3..3 + len) {
                Some(reason) => Parsed::Denied(String::from_utf8_lossy(reason).into_owned()),
                None => Parsed::Incomplete,
            }
        }
        Some(&other) => Parsed::Invalid(other),
    }
}

enum State {
    /// Collecting the frame.
    Awaiting(Vec<u8>),
    /// Allowed: bytes after the frame still to hand out, then the stream itself.
    Open { leftover: Vec<u8>, at: usize },
    /// Denied: every read fails with this.
    Denied(Denied),
}

/// The outbound's stream to an inbound speaking `plexus-tcp/2`: reads start after the verdict;
/// a denial makes reads fail with an [`io::ErrorKind::PermissionDenied`] error carrying
/// [`Denied`]. Writes pass straight through.
pub(crate) struct VerdictStream<S> {
    inner: S,
    state: State,
}

impl<S> VerdictStream<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            state: State::Awaiting(Vec::new()),
        }
    }
}

/// The [`Denied`] inside an I/O error, if that is what it is.
pub(crate) fn denied(error: &io::Error) -> Option<&Denied> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Denied>())
}

fn denied_error(denied: &Denied) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, denied.clone())
}

impl<S: AsyncRead + Unpin> AsyncRead for VerdictStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Denied(denied) => return Poll::Ready(Err(denied_error(denied))),
                State::Open { leftover, at } => {
                    if *at < leftover.len() {
                        let n = (leftover.len() - *at).min(out.remaining());
                        out.put_slice(&leftover[*at..*at + n]);
                        *at += n;
                        if *at == leftover.len() {
                            *leftover = Vec::new();
                            *at = 0;
                        }
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, out);
                }
                State::Awaiting(collected) => {
                    if matches!(parse(collected), Parsed::Incomplete) {
                        // At most one frame's worth: a frame is decided within 3 + 1024 bytes.
                        let mut chunk = [0u8; 3 + MAX_REASON];
                        let mut buf = ReadBuf::new(&mut chunk);
                        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
                        if buf.filled().is_empty() {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the destination closed the connection before its verdict",
                            )));
                        }
                        collected.extend_from_slice(buf.filled());
                    }
                    match parse(collected) {
                        Parsed::Incomplete => continue,
                        Parsed::Allowed(used) => {
                            let leftover = collected.split_off(used);
                            this.state = State::Open { leftover, at: 0 };
                        }
                        Parsed::Denied(reason) => {
                            this.state = State::Denied(Denied { reason });
                        }
                        Parsed::Invalid(byte) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("not a verdict frame (first byte {byte:#04x})"),
                            )));
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for VerdictStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn frames_round_trip() {
        assert_eq!(parse(&ALLOW_FRAME), Parsed::Allowed(1));
        let frame = deny_frame("no intention allows it");
        assert_eq!(
            parse(&frame),
            Parsed::Denied("no intention allows it".into())
        );
        assert_eq!(parse(&frame[..2]), Parsed::Incomplete);
        assert_eq!(parse(&frame[..5]), Parsed::Incomplete);
        assert_eq!(parse(b"GET /"), Parsed::Invalid(b'G'));
        // Long reasons are cut at a character boundary.
        let long = "é".repeat(MAX_REASON);
        match parse(&deny_frame(&long)) {
            Parsed::Denied(reason) => {
                assert!(reason.len() <= MAX_REASON && reason.len() >= MAX_REASON - 1)
            }
            other => panic!("{other:?}"),
        }
    }

    /// The allow frame comes off the front; bytes after it, in the same read or later, are the
    /// application's.
    #[tokio::test]
    async fn allowed_streams_start_after_the_frame() {
        let (mut inbound, outbound) = tokio::io::duplex(64);
        inbound.write_all(&[ALLOWED, b'h', b'i']).await.unwrap();
        inbound.write_all(b" there").await.unwrap();
        drop(inbound);
        let mut got = String::new();
        VerdictStream::new(outbound)
            .read_to_string(&mut got)
            .await
            .unwrap();
        assert_eq!(got, "hi there");
    }

    #[tokio::test]
    async fn a_denial_is_an_error_with_the_reason_and_eof_is_not_a_denial() {
        let (mut inbound, outbound) = tokio::io::duplex(64);
        deny(
            &mut inbound,
            "Default behavior configured by default intention policy: deny",
        )
        .await;
        let mut stream = VerdictStream::new(outbound);
        let mut buf = [0u8; 8];
        let error = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            denied(&error).map(|d| d.reason.as_str()),
            Some("Default behavior configured by default intention policy: deny")
        );
        // Still denied on the next read.
        assert!(denied(&stream.read(&mut buf).await.unwrap_err()).is_some());

        let (inbound, outbound) = tokio::io::duplex(64);
        drop(inbound);
        let error = VerdictStream::new(outbound)
            .read(&mut buf)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(denied(&error).is_none());
    }

    proptest! {
        /// Any bytes, cut anywhere: parsing never panics, and a frame that parses says the
        /// same whatever follows it.
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
            let cut = cut.min(bytes.len());
            let head = parse(&bytes[..cut]);
            if !matches!(head, Parsed::Incomplete) {
                prop_assert_eq!(head, parse(&bytes));
            }
        }

        #[test]
        fn deny_frames_carry_their_reason(reason in ".{0,250}") {
            prop_assert_eq!(parse(&deny_frame(&reason)), Parsed::Denied(reason));
        }
    }
}
