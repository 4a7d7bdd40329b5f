//! HTTP/2 floods against both sidecar listeners (the outbound listener's h2c from the app, the
//! inbound listener's HTTP/2 inside mTLS from a mesh peer): each kind of flood is bounded (a
//! GOAWAY or a close), a well-behaved connection keeps being served meanwhile, memory comes
//! back, and a peer that never sends the preface is closed. Hand-written frames, so the floods
//! are exactly what an attacker would send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::l7_protocols::Mesh;

/// Hand-written HTTP/2 frames (RFC 9113 §4.1) for the flood tests.
pub(crate) mod frames {
    /// The client connection preface followed by an empty SETTINGS frame.
    pub fn preface() -> Vec<u8> {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        bytes
    }

    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// GOAWAY / RST_STREAM error code ENHANCE_YOUR_CALM.
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// `GET /` with `:authority: web`, in HPACK: three static-table entries and a literal.
    pub const GET_ROOT: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x03, b'w', b'e', b'b'];
    /// One literal header `x-a: b` (without indexing, new name).
    pub const ONE_HEADER: &[u8] = &[0x00, 0x03, b'x', b'-', b'a', 0x01, b'b'];

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, flags];
        bytes.extend((stream & 0x7fff_ffff).to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }
}

/// How a flooding connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The sidecar sent GOAWAY with this error code.
    GoAway(u32),
    /// The connection closed without a GOAWAY.
    Closed,
}

/// A byte stream to flood: h2c over TCP, or h2 inside mTLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Where a flood goes.
enum FloodTarget {
    /// The outbound listener (h2c from the app).
    H2c(SocketAddr),
    /// The inbound listener: mTLS with a certificate of the mesh, ALPN `plexus-h2`.
    Mtls(SocketAddr, plexus_test::pki::Issued),
}

impl FloodTarget {
    async fn open(&self) -> Box<dyn Io> {
        match self {
            FloodTarget::H2c(addr) => Box::new(TcpStream::connect(addr).await.unwrap()),
            FloodTarget::Mtls(addr, leaf) => Box::new(
                plexus_test::pki::connect_with_alpn(*addr, leaf, b"plexus-h2")
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// Reads frames until a GOAWAY (its error code) or the end of the connection.
async fn read_until_goaway(mut read: impl tokio::io::AsyncRead + Unpin) -> Ended {
    loop {
        let mut head = [0u8; 9];
        if read.read_exact(&mut head).await.is_err() {
            return Ended::Closed;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            return Ended::Closed;
        }
        if head[3] == frames::GOAWAY && payload.len() >= 8 {
            return Ended::GoAway(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
    }
}

/// Opens an HTTP/2 connection to `target` and writes `first`, then `round(n)` for n = 0, 1, …
/// until the sidecar ends the connection or `max_rounds` were written. Returns how it ended and
/// the rounds written.
async fn flood(
    target: &FloodTarget,
    first: Vec<u8>,
    max_rounds: usize,
    round: impl Fn(usize) -> Vec<u8>,
) -> (Ended, usize) {
    let (read, mut write) = tokio::io::split(target.open().await);
    let reader = tokio::spawn(read_until_goaway(read));
    let mut bytes = frames::preface();
    bytes.extend(first);
    write.write_all(&bytes).await.unwrap();
    let mut written = 0;
    while written < max_rounds && !reader.is_finished() {
        if write.write_all(&round(written)).await.is_err() {
            break;
        }
        written += 1;
    }
    let ended = tokio::time::timeout(plexus_test::DEADLINE, reader)
        .await
        .expect("the sidecar ends the flooding connection within the deadline")
        .unwrap();
    (ended, written)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn http2_floods_are_bounded_and_spare_a_well_behaved_connection() {
    let web = plexus_test::upstream::HttpStub::start_named("v1")
        .await
        .unwrap();
    let mesh = Mesh::start("web", web.addr.port(), Some("http")).await;
    let url = format!("http://{}/ok", mesh.upstream);

    // A well-behaved keep-alive connection runs all along.
    let http = reqwest::Client::new();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calm = {
        let (http, url, stop) = (http.clone(), url.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match http.get(&url).send().await {
                    Ok(response) if response.status() == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    let pid = mesh.client.process.pid();
    let server_pid = mesh.server.process.pid();
    let rss_before = (rss_kib(pid), rss_kib(server_pid));

    run_floods("outbound h2c", &FloodTarget::H2c(mesh.upstream)).await;
    // The same against the app's sidecar's inbound listener, inside mTLS with a certificate of
    // the mesh (the peer a sidecar trusts).
    let issued = mesh.dev.client.agent_connect_leaf("client").await.unwrap();
    let leaf =
        plexus_test::pki::Issued::from_pem(&issued.cert_pem, &issued.private_key_pem).unwrap();
    let inbound = FloodTarget::Mtls(mesh.inbound, leaf);
    run_floods("inbound mTLS", &inbound).await;

    // A mesh peer that completes TLS and then sends nothing, not even the HTTP/2 preface: the
    // sidecar closes it after its handshake timeout (10 s) instead of holding it for good.
    let silent = inbound.open().await;
    let held = plexus_test::pki::held_then_closed(silent, std::time::Duration::from_secs(9)).await;
    eprintln!("inbound mTLS: silent peer closed after {held:?}");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = calm.await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok >= 1);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    let rss_after = (rss_kib(pid), rss_kib(server_pid));
    eprintln!(
        "calm connection: {ok} requests; RSS (client, server) {rss_before:?} → {rss_after:?} KiB"
    );
    assert!(
        rss_after.0 < rss_before.0 + 64 * 1024 && rss_after.1 < rss_before.1 + 64 * 1024,
        "RSS grew from {rss_before:?} KiB to {rss_after:?} KiB"
    );
}

/// Rapid reset, CONTINUATION, PRIORITY, WINDOW_UPDATE, SETTINGS and PING floods against one
/// listener.
async fn run_floods(name: &str, target: &FloodTarget) {
    use frames::*;
    // Rapid reset (CVE-2023-44487): HEADERS then RST_STREAM, 50 streams a write. Reset
    // streams that pile up unaccepted end the connection with GOAWAY ENHANCE_YOUR_CALM.
    let (ended, rounds) = flood(target, Vec::new(), 4_000, |round| {
        let mut bytes = Vec::new();
        for i in 0..50 {
            let stream = u32::try_from(1 + 2 * (round * 50 + i)).unwrap();
            bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, GET_ROOT));
            bytes.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
        }
        bytes
    })
    .await;
    assert_eq!(
        ended,
        Ended::GoAway(ENHANCE_YOUR_CALM),
        "after {rounds} rounds"
    );
    assert!(rounds < 4_000, "{rounds}");
    eprintln!("{name}: rapid reset: GOAWAY after {rounds} rounds of 50 streams");

    // CONTINUATION flood (CVE-2024-27316 family): a header block that never ends.
    let first = frame(HEADERS, 0, 1, GET_ROOT);
    let (ended, rounds) = flood(target, first, 100_000, |_| {
        let mut bytes = Vec::new();
        for _ in 0..100 {
            bytes.extend(frame(CONTINUATION, 0, 1, ONE_HEADER));
        }
        bytes
    })
    .await;
    assert_eq!(
        ended,
        Ended::GoAway(ENHANCE_YOUR_CALM),
        "after {rounds} rounds"
    );
    assert!(rounds < 100_000, "{rounds}");
    eprintln!("{name}: CONTINUATION flood: GOAWAY after {rounds} rounds of 100 frames");

    // PRIORITY and WINDOW_UPDATE(0, +1) floods, 20,000 frames each: past their budgets (100
    // PRIORITY per stream opened; 10 WINDOW_UPDATE per DATA frame sent, 10 per stream, 100 at
    // start) the sidecar sends GOAWAY ENHANCE_YOUR_CALM and closes.
    let label = name;
    for (name, unit) in [
        ("PRIORITY", frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16])),
        (
            "WINDOW_UPDATE",
            frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()),
        ),
    ] {
        let (ended, rounds) = flood(target, Vec::new(), 200, |_| unit.repeat(100)).await;
        assert_eq!(
            ended,
            Ended::GoAway(ENHANCE_YOUR_CALM),
            "{label}: {name} after {rounds} rounds"
        );
        // (All 20,000 may be written before the GOAWAY arrives: they fit in socket buffers.)
        eprintln!("{label}: {name} flood: GOAWAY, {rounds} rounds of 100 frames written");
    }

    // SETTINGS and PING floods: past the control-frame budget (1,000 at once, then 100/s)
    // the sidecar ends the connection, whether the client reads its ACKs or not.
    for (name, unit) in [
        ("SETTINGS", frame(SETTINGS, 0, 0, &[])),
        ("PING", frame(PING, 0, 0, &[7; 8])),
    ] {
        // Reading the ACKs: GOAWAY after a bounded number of frames.
        let (ended, rounds) = flood(target, Vec::new(), 100_000, |_| unit.repeat(100)).await;
        assert_eq!(
            ended,
            Ended::GoAway(ENHANCE_YOUR_CALM),
            "{label}: {name} after {rounds} rounds"
        );
        assert!(rounds < 100_000, "{label}: {name}: {rounds}");
        eprintln!("{label}: {name} flood (reading): GOAWAY after {rounds} rounds of 100 frames");

        // Not reading them: the sidecar lets a bounded number of bytes in, then closes.
        let mut stream = target.open().await;
        stream.write_all(&preface()).await.unwrap();
        let chunk = unit.repeat(4096);
        let limit = 256 * 1024 * 1024;
        let mut accepted = 0usize;
        while accepted < limit {
            match tokio::time::timeout(Duration::from_secs(1), stream.write_all(&chunk)).await {
                Ok(Ok(())) => accepted += chunk.len(),
                // Stalled (backpressure) or closed: bounded either way.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        assert!(
            accepted < limit,
            "{label}: {name} flood: {accepted} bytes accepted"
        );
        // Closed: reading what the sidecar sent before ends in EOF or a reset.
        let mut sink = vec![0u8; 64 * 1024];
        let closed = tokio::time::timeout(plexus_test::DEADLINE, async {
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{label}: {name}: the connection stays open");
        eprintln!("{label}: {name} flood (not reading): closed after {accepted} bytes");
    }
}
