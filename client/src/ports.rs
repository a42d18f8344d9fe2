//! Free loopback ports for local clusters (the test harnesses' nodes).
//!
//! A port from `bind(0)` is an ephemeral port: between our probe and the node's own bind,
//! any outgoing connection on the machine (another node dialling a peer) may be given the
//! same port, and the node then fails to start. Ports below Linux's ephemeral range
//! (32768-60999) are never handed out that way, so a probe there stays valid until the
//! node binds, unless another local cluster picks the same port in that instant.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The first and one past the last port handed out.
const RANGE: (u32, u32) = (20_000, 32_000);

/// A loopback port in 20000-31999 that was free a moment ago. Successive calls in one
/// process walk the range with a large stride from a per-process start, so clusters in
/// concurrent test processes rarely probe the same ports.
pub fn free_loopback_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Drawn once per process. Drawn per call (as it once was), every call landed on a random
    // port, and two clusters started at once by one test binary's threads could both probe
    // the same port before either node bound it: CI saw a node fail to start and its
    // peers' Raft calls answered by another test's server.
    static START: OnceLock<u32> = OnceLock::new();
    let start = *START.get_or_init(|| {
        std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
    });
    let span = RANGE.1 - RANGE.0;
    for _ in 0..1000 {
        let n = NEXT.fetch_add(7919, Ordering::Relaxed).wrapping_add(start);
        let port = (RANGE.0 + n % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {}-{}", RANGE.0, RANGE.1 - 1),
    ))
}

#[cfg(test)]
mod tests {
    /// Successive calls walk the range from one start: no port comes back until the walk
    /// has covered the range, whether or not the ports were bound in between.
    #[test]
    fn successive_calls_never_repeat_a_port() {
        let ports: std::collections::HashSet<u16> = (0..200)
            .map(|_| super::free_loopback_port().expect("a free port"))
            .collect();
        assert_eq!(ports.len(), 200);
    }

    #[test]
    fn ports_are_below_the_ephemeral_range_and_bindable() {
        for _ in 0..20 {
            let port = super::free_loopback_port().expect("a free port");
            assert!((20_000..32_000).contains(&port), "{port}");
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }
}
