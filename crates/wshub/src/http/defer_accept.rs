//! `TCP_DEFER_ACCEPT` on the listener: the kernel hands over a connection only once its
//! client has sent something (for us, the upgrade request), so a handshake costs the
//! server one wake-up instead of two (accept, then the request), and the first read finds
//! the request. nginx (`listen … deferred`) and HAProxy (`defer-accept`) do the same.
//! Measured: 10,000 upgrades, server on one CPU, 39–44k → 44–51k handshakes per CPU-s
//! (`wshub-bench idle --conns 10000`, BENCHMARKS.md).
//!
//! A client that connects and sends nothing stays in the kernel's queue of half-open
//! connections (no task, no buffer of ours) until the period passes; then it is accepted
//! and `handshake_timeout` applies as before.
//!
//! socket2 and std (unstable: `tcp_deferaccept`) have no setter for it, so the option is
//! defined with nix's `sockopt_impl!`, the macro nix itself defines its options with and
//! exports for options it lacks: the `setsockopt(2)` call and its `u32` (C `int`) value
//! are nix's code, no `unsafe` of ours.

#[cfg(target_os = "linux")]
mod linux {
    use nix::libc;
    use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};

    sockopt_impl!(
        /// Linux's `TCP_DEFER_ACCEPT` (`tcp(7)`): seconds to wait for the client's data.
        DeferAccept,
        Both,
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        u32
    );

    pub(super) fn set(listener: &tokio::net::TcpListener, seconds: u32) -> bool {
        nix::sys::socket::setsockopt(listener, DeferAccept, &seconds).is_ok()
    }

    #[cfg(test)]
    pub(super) fn get(listener: &tokio::net::TcpListener) -> Option<u32> {
        nix::sys::socket::getsockopt(listener, DeferAccept).ok()
    }
}

/// Asks the kernel to hold each new connection until its client sends data, for up to
/// `wait` (whole seconds, at least one); false where that is not possible (not Linux).
pub(crate) fn set(listener: &tokio::net::TcpListener, wait: std::time::Duration) -> bool {
    let seconds = u32::try_from(wait.as_secs_f64().ceil() as u64)
        .unwrap_or(u32::MAX)
        .max(1);
    #[cfg(target_os = "linux")]
    return linux::set(listener, seconds);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (listener, seconds);
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[tokio::test]
    async fn the_listener_gets_the_option_and_a_request_is_still_accepted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(super::set(&listener, std::time::Duration::from_millis(300)));
        // The kernel rounds the seconds to its retransmission steps: at least 1.
        assert!(super::linux::get(&listener).is_some_and(|s| s >= 1));
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let mut got = [0u8; 5];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
