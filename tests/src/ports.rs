//! Loopback ports for child processes that must be told where to listen
//! (the sidecar and the operator take addresses, not port 0).
//!
//! A port from `bind(127.0.0.1:0)` comes from the kernel's ephemeral range,
//! the same range every outgoing connection takes its local port from; in
//! the time between releasing it and the child binding it, a sidecar's
//! connection to the operator could take it and the child fail to start
//! (seen once in CI: a sidecar never became live). Ports are therefore
//! taken from just below the ephemeral range, which no outgoing connection
//! uses, each handed out once per test process.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range are used.
const SPAN: u32 = 8192;

/// A loopback address nothing listens on, outside the ephemeral range.
pub fn free_port() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let top = ephemeral_start();
    let span = SPAN.min(top.saturating_sub(1024));
    // Test processes running side by side start at different offsets.
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span.max(1);
    for _ in 0..span {
        let i = (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span.max(1);
        let Ok(port) = u16::try_from(top - span + i) else {
            continue;
        };
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port))
            && let Ok(addr) = l.local_addr()
        {
            return addr;
        }
    }
    // Everything there taken: an ephemeral port, as before.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The first port of the kernel's ephemeral range (Linux's default when
/// it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_handed_out_once() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert!(u32::from(a.port()) < ephemeral_start(), "{a}");
        assert!(TcpListener::bind(a).is_ok(), "{a} is free");
    }
}
