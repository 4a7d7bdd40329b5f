//! Loopback ports for things that must be told a port up front (registrations, upstream binds).

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::{Mutex, OnceLock};

use rand::Rng;

/// Lowest port handed out: above the well-known and registered services most machines run, and
/// above the agent's default sidecar range (21000–21255).
const LOWEST: u16 = 22000;

/// A port that was free on every address a moment ago (TCP and UDP), for a definition that must
/// name its port before the listener exists.
///
/// Prefer passing `127.0.0.1:0` and reading the `listening` line. Ports come from below the
/// kernel's ephemeral range, so a probed-and-released port is never taken meanwhile by another
/// process's `bind(0)` (the race that made two listeners in one test share a port); one process
/// never hands out the same port twice, and other test processes start at a random place.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    let highest = ephemeral_low().saturating_sub(1).max(LOWEST + 1000);
    let span = u32::from(highest - LOWEST) + 1;
    let start = rand::rng().random_range(0..span);
    for step in 0..span {
        let port = LOWEST + ((start + step) % span) as u16;
        let mut taken = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if taken.contains(&port) || !is_free(port) {
            continue;
        }
        taken.insert(port);
        return port;
    }
    panic!("no free port between {LOWEST} and {highest} on this machine");
}

fn is_free(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok() && UdpSocket::bind(("0.0.0.0", port)).is_ok()
}

/// The first port of the kernel's ephemeral range (`bind(0)` picks from there).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "a port was handed out twice: {ports:?}"
        );
        for port in ports {
            assert!(
                port >= LOWEST && port < ephemeral_low().max(LOWEST + 1001),
                "{port}"
            );
            TcpListener::bind(("127.0.0.1", port)).expect("a handed-out port binds");
        }
    }
}
