//! Limits on HTTP/2 frames that cost the sidecar work without carrying requests: SETTINGS,
//! PING, PRIORITY and WINDOW_UPDATE floods, ended with GOAWAY `ENHANCE_YOUR_CALM`.
//!
//! h2 keeps at most one SETTINGS or PING acknowledgement unsent and stops reading until it is
//! written, so a flood costs bounded memory, but a peer that reads its ACKs can make the sidecar
//! answer as fast as it sends, and one that does not holds a stalled connection open. PRIORITY
//! and WINDOW_UPDATE frames are accepted by h2 without limit. [`ControlFrameLimit`] wraps a
//! server connection's byte stream and follows the frame headers in both directions (what it
//! reads after the HTTP/2 client preface; anything else, e.g. HTTP/1.1, passes untouched):
//! - SETTINGS and PING frames that ask for an ACK draw from a token bucket
//!   ([`CONTROL_FRAME_BURST`], refilled at [`CONTROL_FRAMES_PER_SECOND`]); legitimate peers send
//!   one SETTINGS at start and a keep-alive or BDP ping now and then;
//! - PRIORITY frames are allowed [`PRIORITY_PER_STREAM`] per stream the peer opened (plus as
//!   many at start), as Envoy's `max_inbound_priority_frames_per_stream`;
//! - WINDOW_UPDATE frames are allowed [`WINDOW_UPDATES_PER_DATA_FRAME`] per DATA frame the
//!   sidecar sent, plus [`WINDOW_UPDATES_PER_STREAM`] per stream (plus a base), as Envoy's
//!   `max_inbound_window_update_frames_per_data_frame_sent`: a peer grows windows because it is
//!   sent data, so a fast download never trips it.
//!
//! Past a limit the wrapper writes GOAWAY (`ENHANCE_YOUR_CALM`, the last stream the peer opened)
//! at the next frame boundary of what h2 writes, then fails the read and hyper closes the
//! connection. A peer that does not read gets [`GOAWAY_WRITE_TIMEOUT`] for the GOAWAY to fit,
//! then the connection is closed without it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::debug;

/// SETTINGS and PING frames (not ACKs) a peer may send at once.
pub const CONTROL_FRAME_BURST: f64 = 1000.0;
/// …and per second after that.
pub const CONTROL_FRAMES_PER_SECOND: f64 = 100.0;
/// PRIORITY frames a peer may send per stream it opened, and at start.
pub const PRIORITY_PER_STREAM: u64 = 100;
/// WINDOW_UPDATE frames a peer may send per DATA frame the sidecar sent…
pub const WINDOW_UPDATES_PER_DATA_FRAME: u64 = 10;
/// …per stream it opened…
pub const WINDOW_UPDATES_PER_STREAM: u64 = 10;
/// …and at start.
pub const WINDOW_UPDATES_AT_START: u64 = 100;
/// How long a GOAWAY may wait for room in a flooding peer's receive window before the
/// connection is closed without it.
pub const GOAWAY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
/// GOAWAY's error code for a peer that sends too much (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Which limit a peer went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flood {
    /// SETTINGS or PING frames asking for an ACK.
    Control,
    /// PRIORITY frames.
    Priority,
    /// WINDOW_UPDATE frames.
    WindowUpdate,
}

impl Flood {
    fn as_str(self) -> &'static str {
        match self {
            Self::Control => "SETTINGS/PING",
            Self::Priority => "PRIORITY",
            Self::WindowUpdate => "WINDOW_UPDATE",
        }
    }
}

/// One frame header: type, flags and stream id.
#[derive(Debug, Clone, Copy)]
struct Header {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Follows frame boundaries in a byte stream of HTTP/2 frames (pure; no I/O).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Reading a 9-byte frame header; this many bytes so far.
    Header(usize, [u8; 9]),
    /// Skipping this many payload bytes.
    Payload(usize),
}

impl Cursor {
    const START: Self = Self::Header(0, [0; 9]);

    /// True between frames.
    fn at_boundary(&self) -> bool {
        matches!(self, Self::Header(0, _))
    }

    /// Follows `bytes`, calling `each` with every complete frame header.
    fn feed(&mut self, mut bytes: &[u8], mut each: impl FnMut(Header)) {
        while !bytes.is_empty() {
            match self {
                Self::Header(have, header) => {
                    let n = (9 - *have).min(bytes.len());
                    header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    *have += n;
                    if *have < 9 {
                        continue;
                    }
                    let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *header;
                    let len = u32::from_be_bytes([0, l0, l1, l2]) as usize;
                    let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
                    *self = if len == 0 {
                        Self::START
                    } else {
                        Self::Payload(len)
                    };
                    each(Header {
                        kind,
                        flags,
                        stream,
                    });
                }
                Self::Payload(remaining) => {
                    let n = (*remaining).min(bytes.len());
                    bytes = &bytes[n..];
                    *self = if *remaining == n {
                        Self::START
                    } else {
                        Self::Payload(*remaining - n)
                    };
                }
            }
        }
    }
}

/// Where the reading side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Matching the client preface; this many bytes matched.
    Preface(usize),
    /// Not HTTP/2: nothing to count.
    Passthrough,
    /// Following frames.
    Frames,
}

/// Counts a peer's costly frames from the bytes it sends and the DATA frames it is sent (pure;
/// no I/O).
#[derive(Debug)]
pub(crate) struct ControlFrames {
    reading: Reading,
    read: Cursor,
    written: Cursor,
    tokens: f64,
    refilled: Instant,
    /// HEADERS frames the peer sent (streams it opened, trailers included).
    streams: u64,
    /// The highest stream id the peer opened (GOAWAY's last stream).
    last_stream: u32,
    priorities: u64,
    window_updates: u64,
    /// DATA frames written to the peer.
    data_sent: u64,
}

impl ControlFrames {
    /// A new connection's counter, full.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            reading: Reading::Preface(0),
            read: Cursor::START,
            written: Cursor::START,
            tokens: CONTROL_FRAME_BURST,
            refilled: now,
            streams: 0,
            last_stream: 0,
            priorities: 0,
            window_updates: 0,
            data_sent: 0,
        }
    }

    /// Follows bytes the peer sent; the limit it went past, if any.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), Flood> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * CONTROL_FRAMES_PER_SECOND).min(CONTROL_FRAME_BURST);
        self.refilled = now;
        if let Reading::Preface(matched) = self.reading {
            let want = &PREFACE[matched..];
            let n = want.len().min(bytes.len());
            if bytes[..n] != want[..n] {
                self.reading = Reading::Passthrough;
                return Ok(());
            }
            bytes = &bytes[n..];
            self.reading = if matched + n == PREFACE.len() {
                Reading::Frames
            } else {
                Reading::Preface(matched + n)
            };
        }
        if self.reading != Reading::Frames {
            return Ok(());
        }
        let mut flood = None;
        let mut read = self.read;
        read.feed(bytes, |header| {
            if let Some(over) = self.count(header) {
                flood.get_or_insert(over);
            }
        });
        self.read = read;
        flood.map_or(Ok(()), Err)
    }

    /// Counts one frame the peer sent.
    fn count(&mut self, header: Header) -> Option<Flood> {
        match header.kind {
            SETTINGS | PING if header.flags & ACK == 0 => {
                self.tokens -= 1.0;
                (self.tokens < 0.0).then_some(Flood::Control)
            }
            HEADERS => {
                self.streams += 1;
                self.last_stream = self.last_stream.max(header.stream);
                None
            }
            PRIORITY => {
                self.priorities += 1;
                (self.priorities > PRIORITY_PER_STREAM * (1 + self.streams))
                    .then_some(Flood::Priority)
            }
            WINDOW_UPDATE => {
                self.window_updates += 1;
                let allowed = WINDOW_UPDATES_AT_START
                    + WINDOW_UPDATES_PER_STREAM * self.streams
                    + WINDOW_UPDATES_PER_DATA_FRAME * self.data_sent;
                (self.window_updates > allowed).then_some(Flood::WindowUpdate)
            }
            _ => None,
        }
    }

    /// Follows bytes written to the peer (HTTP/2 frames from the first byte when the peer
    /// speaks HTTP/2; ignored otherwise).
    pub(crate) fn sent(&mut self, bytes: &[u8]) {
        if self.reading == Reading::Passthrough {
            return;
        }
        let mut data = 0;
        self.written.feed(bytes, |header| {
            if header.kind == DATA {
                data += 1;
            }
        });
        self.data_sent += data;
    }

    /// The GOAWAY that ends a flooding connection, if it can go now (between written frames).
    fn goaway(&self) -> Option<Vec<u8>> {
        if !self.written.at_boundary() {
            return None;
        }
        let debug = b"flood";
        let len = u32::try_from(8 + debug.len()).ok()?.to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], GOAWAY, 0, 0, 0, 0, 0];
        frame.extend(self.last_stream.to_be_bytes());
        frame.extend(ENHANCE_YOUR_CALM.to_be_bytes());
        frame.extend(debug);
        Some(frame)
    }
}

/// A GOAWAY being written before a flooding connection is closed.
struct Ending {
    flood: Flood,
    frame: Vec<u8>,
    written: usize,
    deadline: Pin<Box<Sleep>>,
}

/// A server connection's stream with the frame limits applied to what it reads.
pub(crate) struct ControlFrameLimit<I> {
    inner: I,
    frames: ControlFrames,
    ending: Option<Ending>,
}

impl<I> std::fmt::Debug for ControlFrameLimit<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlFrameLimit")
            .field("frames", &self.frames)
            .field("ending", &self.ending.as_ref().map(|e| e.flood))
            .finish_non_exhaustive()
    }
}

impl<I> ControlFrameLimit<I> {
    /// Wraps a freshly accepted connection.
    pub(crate) fn new(inner: I) -> Self {
        Self {
            inner,
            frames: ControlFrames::new(Instant::now()),
            ending: None,
        }
    }
}

fn flooded(flood: Flood) -> io::Error {
    io::Error::other(format!("HTTP/2 {} flood", flood.as_str()))
}

impl<I: AsyncWrite + Unpin> ControlFrameLimit<I> {
    /// Writes the pending GOAWAY; ready (with the error that ends the connection) once it is
    /// out or its time is up.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(ending) = self.ending.as_mut() else {
            return Poll::Ready(io::Error::other("no flood"));
        };
        while ending.written < ending.frame.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &ending.frame[ending.written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(flooded(ending.flood));
                }
                Poll::Ready(Ok(n)) => ending.written += n,
                Poll::Pending => {
                    return match ending.deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(flooded(ending.flood)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => match ending.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(flooded(ending.flood)),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(_) => Poll::Ready(flooded(ending.flood)),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for ControlFrameLimit<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ending.is_some() {
            return this.poll_end(cx).map(Err);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && let Err(flood) = this.frames.feed(&buf.filled()[before..], Instant::now())
        {
            debug!(
                flood = flood.as_str(),
                "HTTP/2 frame flood; ending the connection with GOAWAY"
            );
            let Some(frame) = this.frames.goaway() else {
                // h2 is in the middle of writing a frame: no room for a GOAWAY.
                return Poll::Ready(Err(flooded(flood)));
            };
            this.ending = Some(Ending {
                flood,
                frame,
                written: 0,
                deadline: Box::pin(tokio::time::sleep(GOAWAY_WRITE_TIMEOUT)),
            });
            return this.poll_end(cx).map(Err);
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
        let this = self.get_mut();
        if let Some(ending) = &this.ending {
            // Nothing after the GOAWAY.
            return Poll::Ready(Err(flooded(ending.flood)));
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.frames.sent(&buf[..n]);
        }
        polled
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
        let this = self.get_mut();
        if let Some(ending) = &this.ending {
            return Poll::Ready(Err(flooded(ending.flood)));
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            for buf in bufs {
                let take = n.min(buf.len());
                this.frames.sent(&buf[..take]);
                n -= take;
                if n == 0 {
                    break;
                }
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, flags];
        bytes.extend(stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    /// Feeds `unit` until refused; how many went in.
    fn allowed(frames: &mut ControlFrames, unit: &[u8], now: Instant) -> usize {
        (0..100_000)
            .take_while(|_| frames.feed(unit, now).is_ok())
            .count()
    }

    #[test]
    fn a_ping_flood_is_cut_after_the_burst_and_acks_and_data_are_free() {
        let start = Instant::now();
        let mut frames = ControlFrames::new(start);
        assert!(frames.feed(PREFACE, start).is_ok());
        let ack = frame(PING, ACK, 0, &[0; 8]);
        let data = frame(DATA, 0, 1, &[7; 100]);
        for _ in 0..5000 {
            assert!(frames.feed(&ack, start).is_ok() && frames.feed(&data, start).is_ok());
        }
        let ping = frame(PING, 0, 0, &[0; 8]);
        assert_eq!(
            allowed(&mut frames, &ping, start),
            CONTROL_FRAME_BURST as usize
        );
        assert_eq!(frames.feed(&ping, start), Err(Flood::Control));
        // Tokens come back with time: a keep-alive ping a second is never refused.
        let mut frames = ControlFrames::new(start);
        frames.feed(PREFACE, start).unwrap();
        for second in 0..3000 {
            assert!(
                frames
                    .feed(&ping, start + Duration::from_secs(second))
                    .is_ok()
            );
        }
    }

    #[test]
    fn frames_split_across_reads_are_followed_and_http1_passes() {
        let start = Instant::now();
        let mut frames = ControlFrames::new(start);
        let mut bytes = PREFACE.to_vec();
        for _ in 0..(CONTROL_FRAME_BURST as usize + 1) {
            bytes.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        }
        // One byte at a time: only the last SETTINGS (15 bytes) is refused.
        let fed: Vec<bool> = bytes
            .iter()
            .map(|b| frames.feed(&[*b], start).is_ok())
            .collect();
        assert!(fed[..bytes.len() - 15].iter().all(|ok| *ok));
        assert!(fed.iter().any(|ok| !ok));
        let mut http1 = ControlFrames::new(start);
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".repeat(10_000);
        assert!(http1.feed(&request, start).is_ok());
        assert!(
            http1
                .feed(&frame(PING, 0, 0, &[0; 8]).repeat(5000), start)
                .is_ok()
        );
        // What an HTTP/1 server writes is not followed as frames.
        http1.sent(&frame(DATA, 0, 1, &[0; 10]).repeat(10));
        assert_eq!(http1.data_sent, 0);
    }

    #[test]
    fn priority_frames_are_allowed_per_stream_opened() {
        let start = Instant::now();
        let mut frames = ControlFrames::new(start);
        frames.feed(PREFACE, start).unwrap();
        let priority = frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16]);
        // A browser's handful at start, then a few per stream: never refused.
        for stream in 0..1000u32 {
            frames
                .feed(&frame(HEADERS, 0x4, 1 + 2 * stream, &[0x82]), start)
                .unwrap();
            for _ in 0..5 {
                frames.feed(&priority, start).unwrap();
            }
        }
        // A flood on one stream: cut at the budget the streams earned.
        let earned = PRIORITY_PER_STREAM * 1001 - 5000;
        assert_eq!(allowed(&mut frames, &priority, start) as u64, earned);
        assert_eq!(frames.feed(&priority, start), Err(Flood::Priority));
        assert_eq!(frames.last_stream, 1999);
    }

    #[test]
    fn window_updates_follow_the_data_sent_and_a_flood_without_data_is_cut() {
        let start = Instant::now();
        let update = frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes());
        // A download: the peer grows windows (connection and stream) for every DATA frame.
        let mut frames = ControlFrames::new(start);
        frames.feed(PREFACE, start).unwrap();
        frames.sent(&frame(SETTINGS, 0, 0, &[]));
        frames
            .feed(&frame(HEADERS, 0x5, 1, &[0x82]), start)
            .unwrap();
        let data = frame(DATA, 0, 1, &[7; 16_384]);
        for _ in 0..10_000 {
            // Written in pieces, as a socket takes them.
            let (a, b) = data.split_at(5000);
            frames.sent(a);
            frames.sent(b);
            frames.feed(&update, start).unwrap();
            frames.feed(&update, start).unwrap();
        }
        assert_eq!(frames.data_sent, 10_000);
        // 20,000 WINDOW_UPDATE(0, +1) with no data sent: cut at the base budget.
        let mut frames = ControlFrames::new(start);
        frames.feed(PREFACE, start).unwrap();
        let budget = WINDOW_UPDATES_AT_START as usize;
        assert_eq!(allowed(&mut frames, &update, start), budget);
        assert_eq!(frames.feed(&update, start), Err(Flood::WindowUpdate));
    }

    #[test]
    fn the_goaway_waits_for_a_frame_boundary_and_names_the_last_stream() {
        let start = Instant::now();
        let mut frames = ControlFrames::new(start);
        frames.feed(PREFACE, start).unwrap();
        frames
            .feed(&frame(HEADERS, 0x5, 7, &[0x82]), start)
            .unwrap();
        let data = frame(DATA, 0, 7, &[0; 100]);
        frames.sent(&data[..50]);
        assert_eq!(frames.goaway(), None);
        frames.sent(&data[50..]);
        let goaway = frames.goaway().unwrap();
        assert_eq!(goaway[3], GOAWAY);
        assert_eq!(goaway[9..13], 7u32.to_be_bytes());
        assert_eq!(goaway[13..17], ENHANCE_YOUR_CALM.to_be_bytes());
        assert_eq!(usize::from(goaway[2]), goaway.len() - 9);
    }

    #[tokio::test]
    async fn a_flooding_peer_reads_goaway_then_the_end() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut server = ControlFrameLimit::new(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut flood = PREFACE.to_vec();
        flood.extend(frame(HEADERS, 0x5, 5, &[0x82]));
        flood.extend(frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()).repeat(20_000));
        client_write.write_all(&flood).await.unwrap();
        // The server reads until the limit, then its read fails.
        let mut buf = vec![0u8; 4096];
        let error = loop {
            match server.read(&mut buf).await {
                Ok(n) => assert!(n > 0, "EOF before the limit"),
                Err(error) => break error,
            }
        };
        assert!(error.to_string().contains("WINDOW_UPDATE"), "{error}");
        // Nothing is written after the GOAWAY.
        assert!(server.write_all(b"late").await.is_err());
        let mut goaway = [0u8; 22];
        client_read.read_exact(&mut goaway).await.unwrap();
        assert_eq!(goaway[3], GOAWAY);
        assert_eq!(goaway[9..13], 5u32.to_be_bytes());
        assert_eq!(goaway[13..17], ENHANCE_YOUR_CALM.to_be_bytes());
    }
}
