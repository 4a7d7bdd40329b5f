//! Loopback ports for things that must be told a port up front (registrations, upstream binds).

use std::net::TcpListener;

/// A port that was free on 127.0.0.1 a moment ago (bound to port 0, then released).
///
/// Prefer passing `127.0.0.1:0` and reading the `listening` line; use this only where a port must
/// be written into a definition before the listener exists.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 works on any test machine")
}
