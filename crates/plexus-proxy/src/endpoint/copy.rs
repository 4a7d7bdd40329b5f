//! Copying both ways between two streams with buffers held only while bytes wait.
//!
//! tokio's `copy_bidirectional` keeps one buffer per direction for the connection's whole life,
//! 8 KiB in all even with small buffers, although a request/response connection is idle nearly
//! all the time. Here each direction reads into a per-thread scratch buffer and writes straight
//! from it; only bytes the writer does not take at once are copied into a buffer of their own,
//! which is dropped as soon as it is drained and the reader has nothing more (what HAProxy does
//! with its buffer pool). An idle spliced connection then holds no copy buffer at all.
//!
//! Semantics are `copy_bidirectional`'s: a direction that reads EOF flushes and shuts down its
//! writer (a half-close is passed on) while the other direction goes on; the copy ends when both
//! have; the first error ends it.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read at once: one TLS record's worth of plaintext.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// Every direction of every connection polled on this thread reads here first.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// One direction's state.
#[derive(Debug, Default)]
struct OneWay {
    /// Bytes read but not yet written, from `pending_from` on; `None` while there are none.
    pending: Option<Vec<u8>>,
    pending_from: usize,
    /// The reader reached EOF.
    read_done: bool,
    /// The writer was shut down: this direction is over.
    done: bool,
    /// Written since the last flush.
    needs_flush: bool,
    /// Bytes copied.
    copied: u64,
}

impl OneWay {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.copied));
            }
            if let Some(pending) = &self.pending {
                let written = match writer
                    .as_mut()
                    .poll_write(cx, &pending[self.pending_from..])
                {
                    Poll::Ready(written) => written?,
                    Poll::Pending => return self.flush_then_pending(cx, writer),
                };
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.copied += written as u64;
                self.needs_flush = true;
                self.pending_from += written;
                if self.pending_from == pending.len() {
                    self.pending = None;
                    self.pending_from = 0;
                }
                continue;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                self.needs_flush = false;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            match self.read_and_write(cx, reader.as_mut(), writer.as_mut()) {
                Poll::Ready(result) => result?,
                Poll::Pending => return self.flush_then_pending(cx, writer),
            }
        }
    }

    /// Reads what there is into the scratch buffer and writes as much of it as the writer takes
    /// now; keeps the rest in a buffer of its own.
    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        SCRATCH_BUF.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            ready!(reader.poll_read(cx, &mut buf))?;
            let read = buf.filled();
            if read.is_empty() {
                self.read_done = true;
                return Poll::Ready(Ok(()));
            }
            let written = match writer.poll_write(cx, read) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(written) => written?,
                Poll::Pending => 0,
            };
            self.copied += written as u64;
            self.needs_flush |= written > 0;
            if written < read.len() {
                self.pending = Some(read[written..].to_vec());
                self.pending_from = 0;
            }
            Poll::Ready(Ok(()))
        })
    }

    fn flush_then_pending<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>> {
        if self.needs_flush {
            ready!(writer.poll_flush(cx))?;
            self.needs_flush = false;
        }
        Poll::Pending
    }
}

/// Copies `a` → `b` and `b` → `a` until both directions have ended; returns the bytes copied
/// each way, `(a → b, b → a)`.
pub(crate) async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Both {
        a,
        b,
        a_to_b: OneWay::default(),
        b_to_a: OneWay::default(),
    }
    .await
}

struct Both<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: OneWay,
    b_to_a: OneWay,
}

impl<A, B> Future for Both<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let a_to_b = this
            .a_to_b
            .poll_copy(cx, Pin::new(&mut *this.a), Pin::new(&mut *this.b))?;
        let b_to_a = this
            .b_to_a
            .poll_copy(cx, Pin::new(&mut *this.b), Pin::new(&mut *this.a))?;
        match (a_to_b, b_to_a) {
            (Poll::Ready(a_to_b), Poll::Ready(b_to_a)) => Poll::Ready(Ok((a_to_b, b_to_a))),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A pattern that shows misordered or lost bytes.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_slow_reader_gets_every_byte_in_order_and_half_closes_pass_on() {
        // Small pipes: the writer side is full most of the time, so bytes wait in `pending`.
        let (client, mut proxy_a) = tokio::io::duplex(64);
        let (mut proxy_b, mut server) = tokio::io::duplex(100);
        let copy =
            tokio::spawn(async move { copy_bidirectional(&mut proxy_a, &mut proxy_b).await });
        let up = pattern(1 << 20);
        let down = pattern(300_000);
        let up_sent = up.clone();
        let client_side = tokio::spawn(async move {
            let (mut read, mut write) = tokio::io::split(client);
            let writer = tokio::spawn(async move {
                write.write_all(&up_sent).await.unwrap();
                write.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            read.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            got
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 7];
        loop {
            // Reads in small pieces: slower than the copy can write.
            let n = server.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(
            got == up,
            "upstream got {} bytes, not the ones sent",
            got.len()
        );
        // The client's half-close reached the server; the other way still flows.
        server.write_all(&down).await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        let got_down = client_side.await.unwrap();
        assert!(got_down == down, "downstream got {} bytes", got_down.len());
        let (a_to_b, b_to_a) = copy.await.unwrap().unwrap();
        assert_eq!((a_to_b, b_to_a), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn an_idle_copy_holds_no_buffer_and_an_error_ends_it() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, server) = tokio::io::duplex(1024);
        let mut both = Box::pin(Both {
            a: &mut proxy_a,
            b: &mut proxy_b,
            a_to_b: OneWay::default(),
            b_to_a: OneWay::default(),
        });
        client.write_all(b"hello").await.unwrap();
        let polled = std::future::poll_fn(|cx| Poll::Ready(both.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
        assert!(both.a_to_b.pending.is_none() && both.b_to_a.pending.is_none());
        assert_eq!(both.a_to_b.copied, 5);
        // The server side goes away: writing to it fails and ends the copy.
        drop(server);
        client.write_all(b"more").await.unwrap();
        let ended = std::future::poll_fn(|cx| both.as_mut().poll(cx)).await;
        assert!(ended.is_err());
    }
}
