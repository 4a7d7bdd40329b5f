//! A limit on HTTP/2 control frames a peer may send: SETTINGS and PING floods.
//!
//! h2 keeps at most one SETTINGS or PING acknowledgement unsent and stops reading until it is
//! written, so a flood costs bounded memory, but a peer that reads its ACKs can make the sidecar
//! answer as fast as it sends, and one that does not holds a stalled connection open.
//! [`ControlFrameLimit`] wraps a server connection's byte stream, follows the frame headers of
//! what it reads (after the HTTP/2 client preface; anything else, e.g. HTTP/1.1, passes
//! untouched) and counts SETTINGS and PING frames that ask for an ACK in a token bucket
//! ([`CONTROL_FRAME_BURST`], refilled at [`CONTROL_FRAMES_PER_SECOND`]). Past it the read fails,
//! and hyper closes the connection. Legitimate peers send a handful: one SETTINGS at start and a
//! keep-alive or BDP ping now and then.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

/// SETTINGS and PING frames (not ACKs) a peer may send at once.
pub const CONTROL_FRAME_BURST: f64 = 1000.0;
/// …and per second after that.
pub const CONTROL_FRAMES_PER_SECOND: f64 = 100.0;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// Where the parser is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the client preface; this many bytes matched.
    Preface(usize),
    /// Not HTTP/2: nothing to count.
    Passthrough,
    /// Reading a 9-byte frame header; this many bytes so far.
    Header(usize),
    /// Skipping this many payload bytes.
    Payload(usize),
}

/// Counts a peer's control frames from the bytes it sends (pure; no I/O).
#[derive(Debug)]
pub(crate) struct ControlFrames {
    state: State,
    header: [u8; 9],
    tokens: f64,
    refilled: Instant,
}

impl ControlFrames {
    /// A new connection's counter, full.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            state: State::Preface(0),
            header: [0; 9],
            tokens: CONTROL_FRAME_BURST,
            refilled: now,
        }
    }

    /// Follows `bytes`; false once the peer sent more control frames than allowed.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * CONTROL_FRAMES_PER_SECOND).min(CONTROL_FRAME_BURST);
        self.refilled = now;
        while !bytes.is_empty() {
            match self.state {
                State::Passthrough => return true,
                State::Preface(matched) => {
                    let want = &PREFACE[matched..];
                    let n = want.len().min(bytes.len());
                    if bytes[..n] != want[..n] {
                        self.state = State::Passthrough;
                        return true;
                    }
                    bytes = &bytes[n..];
                    self.state = if matched + n == PREFACE.len() {
                        State::Header(0)
                    } else {
                        State::Preface(matched + n)
                    };
                }
                State::Header(have) => {
                    let n = (9 - have).min(bytes.len());
                    self.header[have..have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if have + n < 9 {
                        self.state = State::Header(have + n);
                        continue;
                    }
                    let [l0, l1, l2, kind, flags, ..] = self.header;
                    let len = u32::from_be_bytes([0, l0, l1, l2]) as usize;
                    if matches!(kind, SETTINGS | PING) && flags & ACK == 0 {
                        self.tokens -= 1.0;
                        if self.tokens < 0.0 {
                            return false;
                        }
                    }
                    self.state = State::Payload(len);
                }
                State::Payload(remaining) => {
                    let n = remaining.min(bytes.len());
                    bytes = &bytes[n..];
                    self.state = if remaining == n {
                        State::Header(0)
                    } else {
                        State::Payload(remaining - n)
                    };
                }
            }
            if self.state == State::Payload(0) {
                self.state = State::Header(0);
            }
        }
        true
    }
}

/// A server connection's stream with the control-frame limit applied to what it reads.
#[derive(Debug)]
pub(crate) struct ControlFrameLimit<I> {
    inner: I,
    frames: ControlFrames,
}

impl<I> ControlFrameLimit<I> {
    /// Wraps a freshly accepted connection.
    pub(crate) fn new(inner: I) -> Self {
        Self {
            inner,
            frames: ControlFrames::new(Instant::now()),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ControlFrameLimit<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && !this.frames.feed(&buf.filled()[before..], Instant::now())
        {
            debug!("HTTP/2 control frame flood; closing the connection");
            return Poll::Ready(Err(io::Error::other("HTTP/2 control frame flood")));
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ControlFrameLimit<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn a_ping_flood_is_cut_after_the_burst_and_acks_and_data_are_free() {
        let start = Instant::now();
        let mut frames = ControlFrames::new(start);
        assert!(frames.feed(PREFACE, start));
        let ack = frame(PING, ACK, &[0; 8]);
        let data = frame(0x0, 0, &[7; 100]);
        for _ in 0..5000 {
            assert!(frames.feed(&ack, start) && frames.feed(&data, start));
        }
        let ping = frame(PING, 0, &[0; 8]);
        let allowed = (0..5000).take_while(|_| frames.feed(&ping, start)).count();
        assert_eq!(allowed, CONTROL_FRAME_BURST as usize);
        // Tokens come back with time: a keep-alive ping a second is never refused.
        let mut frames = ControlFrames::new(start);
        frames.feed(PREFACE, start);
        for second in 0..3000 {
            assert!(frames.feed(&ping, start + Duration::from_secs(second)));
        }
    }

    #[test]
    fn frames_split_across_reads_are_followed_and_http1_passes() {
        let start = Instant::now();
        let mut frames = ControlFrames::new(start);
        let mut bytes = PREFACE.to_vec();
        for _ in 0..(CONTROL_FRAME_BURST as usize + 1) {
            bytes.extend(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]));
        }
        // One byte at a time: only the last SETTINGS (15 bytes) is refused.
        let fed: Vec<bool> = bytes.iter().map(|b| frames.feed(&[*b], start)).collect();
        assert!(fed[..bytes.len() - 15].iter().all(|ok| *ok));
        assert!(fed.iter().any(|ok| !ok));
        let mut http1 = ControlFrames::new(start);
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".repeat(10_000);
        assert!(http1.feed(&request, start));
        assert!(http1.feed(&frame(PING, 0, &[0; 8]).repeat(5000), start));
    }
}
