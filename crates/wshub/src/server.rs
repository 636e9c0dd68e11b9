//! The accept loop and graceful shutdown: `serve(listener, hub, router, shutdown)`.
//!
//! We run hyper ourselves rather than `axum::serve` for three reasons: the request head
//! must arrive within `handshake_timeout` (slowloris), its size is bounded (431 above
//! 16 KiB), and shutdown must also drain the upgraded WebSocket connections, which
//! outlive the HTTP connections that axum's drain tracks.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::hub::Hub;

/// Largest request head (request line + headers) accepted; larger → 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, closes
/// every WebSocket with 1001 and waits up to `drain_timeout` for them and for in-flight
/// HTTP requests. The caller owns the listener (port 0 for tests) and the signal.
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(hub.config().handshake_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one system call
    // per connection saved (a handshake is only five). Elsewhere, or if this fails, each
    // accepted socket gets it.
    let inherits_nodelay = cfg!(target_os = "linux")
        && socket2::SockRef::from(&listener)
            .set_tcp_nodelay(true)
            .is_ok();
    // Each HTTP connection task holds a receiver: `send(true)` asks them to finish their
    // current request and stop; `closed()` resolves once every task has ended.
    let (stop_http, stop_rx) = watch::channel(false);
    // The accept loop runs as a task of its own, on a runtime worker: callers usually
    // `block_on(serve(..))`, and an accept loop left on that thread would need a
    // cross-thread wake-up (a futex) for every accepted connection.
    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    let acceptor = tokio::spawn(accept_loop(
        listener,
        router,
        http,
        inherits_nodelay,
        stop_rx.clone(),
        accepting_stopped,
    ));
    shutdown.await;
    let _ = stop_accepting.send(());
    // The listener is dropped when the loop ends: new connections are refused from here.
    let _ = acceptor.await;

    tracing::info!("shutting down: closing connections");
    let left = hub.shutdown().await;
    if left > 0 {
        tracing::warn!(left, "drain timeout: connections still open");
    }
    let _ = stop_http.send(true);
    drop(stop_rx);
    let _ = tokio::time::timeout(hub.config().drain_timeout, stop_http.closed()).await;
    Ok(())
}

/// Accepts connections and spawns one HTTP connection task for each, until `stop` fires.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    http: hyper::server::conn::http1::Builder,
    inherits_nodelay: bool,
    stop_rx: watch::Receiver<bool>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or a transient error: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        if !inherits_nodelay {
            let _ = stream.set_nodelay(true);
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            // Recorded as axum's `ConnectInfo`, so handlers (and ConnInfo) see the peer.
            request.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(request)
        });
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop_http = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop_http.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %remote, "http connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    /// What `serve` relies on to skip one system call per connection.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        socket2::SockRef::from(&listener)
            .set_tcp_nodelay(true)
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
