//! The accept loop, each connection's first read, and graceful shutdown:
//! `serve(listener, hub, router, shutdown)`.
//!
//! A connection whose first read holds a whole upgrade request for [`WS_PATH`] is answered
//! here and becomes a WebSocket in the same task (the hub's common case, kept lean). Every
//! other connection is served by hyper and the router. We run hyper ourselves rather than
//! `axum::serve` because the request head must arrive within `handshake_timeout`
//! (slowloris: the first byte within it here, then the whole head within it in hyper), its
//! size is bounded (431 above 16 KiB), and shutdown must also drain the WebSocket
//! connections, which outlive the HTTP connections that axum's drain tracks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::connection::{self, Socket};
use crate::http::WS_PATH;
use crate::http::prefixed::Prefixed;
use crate::http::tls::Tls;
use crate::hub::{Hub, Registration};

/// Largest request head (request line + headers) accepted; larger → 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, closes
/// every WebSocket with 1001 and waits up to `drain_timeout` for them and for in-flight
/// HTTP requests. The caller owns the listener (port 0 for tests) and the signal.
///
/// It also ends once a drain ([`Hub::drain`]) is over: the same path, which then finds no
/// connection left (or only those that outlived `drain_period` + `drain_timeout`).
///
/// WebSocket upgrades for [`WS_PATH`] (`/ws`) are the hub's, answered before the router
/// sees them; mount [`Hub::endpoint`] in `router` to take upgrades at other paths too.
///
/// On Linux the listener is given `TCP_DEFER_ACCEPT` for `handshake_timeout`: a
/// connection is accepted once its client has sent its request (or the period is over).
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(listener, hub, router, shutdown, None).await
}

/// [`serve`] over TLS: HTTPS and wss://. Each connection's TLS handshake must finish
/// within `handshake_timeout`; [`Tls::reload`] swaps the certificate for later handshakes.
pub async fn serve_tls(
    listener: TcpListener,
    hub: Hub,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
    tls: Arc<Tls>,
) -> std::io::Result<()> {
    serve_with(listener, hub, router, shutdown, Some(tls)).await
}

async fn serve_with(
    listener: TcpListener,
    hub: Hub,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
    tls: Option<Arc<Tls>>,
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
    // Connections are handed over once their request arrived (see `defer_accept`).
    crate::http::defer_accept::set(&listener, hub.config().handshake_timeout);
    // Each HTTP connection task holds a receiver: `send(true)` asks them to finish their
    // current request and stop; `closed()` resolves once every task has ended.
    let (stop_http, stop_rx) = watch::channel(false);
    // The accept loop runs as a task of its own, on a runtime worker: callers usually
    // `block_on(serve(..))`, and an accept loop left on that thread would need a
    // cross-thread wake-up (a futex) for every accepted connection.
    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    let shared = Arc::new(Shared {
        hub: hub.clone(),
        router,
        http,
        inherits_nodelay,
        stop_http: stop_rx.clone(),
        tls,
    });
    let acceptor = tokio::spawn(accept_loop(listener, shared, accepting_stopped));
    let drained = tokio::select! {
        () = shutdown => false,
        () = hub.drained() => true,
    };
    let _ = stop_accepting.send(());
    // The listener is dropped when the loop ends: new connections are refused from here.
    let _ = acceptor.await;

    tracing::info!(drained, "shutting down: closing connections");
    // After a drain, what is still open has had `drain_period` + `drain_timeout` already.
    let wait = if drained {
        Duration::ZERO
    } else {
        hub.config().drain_timeout
    };
    let left = hub.shutdown_within(wait).await;
    if left > 0 {
        tracing::warn!(left, "drain timeout: connections still open");
    }
    let _ = stop_http.send(true);
    drop(stop_rx);
    let _ = tokio::time::timeout(hub.config().drain_timeout, stop_http.closed()).await;
    Ok(())
}

/// Accepts connections and spawns one task for each, until `stop` fires.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
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
        if !shared.inherits_nodelay {
            let _ = stream.set_nodelay(true);
        }
        match &shared.tls {
            // TLS connections take hyper's way (the first-read path reads a TcpStream).
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(Box::pin(tls_connection(
                    stream,
                    remote,
                    shared.clone(),
                    acceptor,
                )));
            }
            None => {
                tokio::spawn(connection(stream, remote, shared.clone()));
            }
        }
    }
}

/// One TLS connection: the handshake within `handshake_timeout`, then hyper and the router.
async fn tls_connection(
    stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let timeout = shared.hub.config().handshake_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => serve_http(stream, remote, shared).await,
        Ok(Err(error)) => tracing::debug!(%error, %remote, "TLS handshake failed"),
        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
    }
}

/// What every connection task shares.
struct Shared {
    hub: Hub,
    router: Router,
    http: hyper::server::conn::http1::Builder,
    inherits_nodelay: bool,
    stop_http: watch::Receiver<bool>,
    /// With TLS, the certificate to accept with.
    tls: Option<Arc<Tls>>,
}

/// One accepted connection, for its whole life.
///
/// The hub's WebSocket upgrades are most of what a hub accepts, so we answer them here,
/// straight from the first read: `httparse` parses the head, the rules of
/// [`crate::http::upgrade`] decide, we write the 101 and this task becomes the connection. No HTTP
/// connection state, router, second task or hand-over channel (measured: see BENCHMARKS.md,
/// "handshakes"). Everything else — other paths, a refusal (which deserves its specific
/// status), a later request on a kept-alive connection — goes to hyper and the router with
/// the bytes read so far, and is served exactly as before.
///
/// Its future is the connection's task, so its size is per-connection memory: the two
/// stages share one place (`then`), and the HTTP stage, rare and large, is boxed.
fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send {
    first_read(stream, remote, shared).then(move |first| match first {
        FirstRead::Upgraded(socket, registration, request) => {
            Either::Left(connection::run(socket, registration, request))
        }
        FirstRead::Http(stream, shared) => {
            Either::Right(Either::Left(Box::pin(serve_http(stream, remote, shared))))
        }
        FirstRead::Gone => Either::Right(Either::Right(std::future::ready(()))),
    })
}

/// What the first read of a connection showed.
enum FirstRead {
    /// A WebSocket upgrade for the hub, answered: run the connection.
    Upgraded(Socket, Registration, connection::Request),
    /// Anything else: the router's, with the bytes read so far in front.
    Http(Prefixed, Arc<Shared>),
    /// The peer left, or sent nothing within `handshake_timeout`.
    Gone,
}

/// Reads the request head (all of it within `handshake_timeout`, usually one read), and
/// answers the upgrade if it is a whole request head for the hub's path that every rule
/// accepts. A head the client cuts off with its FIN gets a 400, as from Go's net/http and
/// Node (hyper would close without a word).
async fn first_read(stream: TcpStream, remote: SocketAddr, shared: Arc<Shared>) -> FirstRead {
    const FIRST_READ: usize = 2048;
    let mut head = Vec::with_capacity(FIRST_READ);
    let deadline = tokio::time::Instant::now() + shared.hub.config().handshake_timeout;
    loop {
        match read_some(&stream, &mut head) {
            Ok(0) if head.is_empty() => return FirstRead::Gone,
            Ok(0) => {
                half_closed(stream).await;
                return FirstRead::Gone;
            }
            // Complete, or not HTTP (hyper answers that), or too long (hyper's 431).
            Ok(_) if !is_partial(&head) || head.len() >= MAX_HEADER_BYTES => break,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                match tokio::time::timeout_at(deadline, stream.readable()).await {
                    Ok(Ok(())) => {}
                    _ => return FirstRead::Gone,
                }
            }
            Err(_) => return FirstRead::Gone,
        }
    }
    let Some((response, registration, request, head_len)) = answer(&head, remote, &shared.hub)
    else {
        return FirstRead::Http(Prefixed::new(head.into(), stream), shared);
    };
    // Nothing of the HTTP side stays: its receiver of the stop signal would hold
    // shutdown's wait for HTTP connections until this WebSocket ends.
    drop(shared);
    // A fresh socket takes a 101 in one go; if not, the rest is written when it can be.
    let written = match stream.try_write(&response) {
        Ok(n) => n,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return FirstRead::Gone,
    };
    let mut stream = stream;
    if written < response.len() {
        use tokio::io::AsyncWriteExt as _;
        if stream.write_all(&response[written..]).await.is_err() {
            return FirstRead::Gone;
        }
    }
    // Frames the client sent right behind its request are the connection's first input.
    let read_ahead = Bytes::copy_from_slice(&head[head_len..]);
    FirstRead::Upgraded(Socket::tcp(stream, read_ahead), registration, request)
}

/// One read into `head`'s spare room. A read that leaves room drained the socket, so
/// tokio is told it is no longer readable, as tokio's own `poll_read` does after a short
/// read: the connection's first read then waits for the client's data instead of costing
/// a `recv` that fails with EAGAIN (one system call of the handshake's ten, measured with
/// strace). Safe against a race: tokio clears the readiness only if no new event came
/// since the read began (`try_io`).
fn read_some(stream: &TcpStream, head: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::io::Read as _;
    let mut short = 0;
    let read = stream.try_io(tokio::io::Interest::READABLE, || {
        let start = head.len();
        head.reserve(1);
        let room = head.capacity() - start;
        head.resize(head.capacity(), 0);
        let read = (&*socket2::SockRef::from(stream)).read(&mut head[start..]);
        head.truncate(start + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(n) if n > 0 && n < room => {
                short = n;
                Err(std::io::ErrorKind::WouldBlock.into())
            }
            other => other,
        }
    });
    match read {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock && short > 0 => Ok(short),
        other => other,
    }
}

/// True while `head` is the start of a request head that needs more bytes.
fn is_partial(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    matches!(
        httparse::Request::new(&mut headers).parse(head),
        Ok(httparse::Status::Partial)
    )
}

/// Answers a request head cut off by the client's FIN (its write side is still open).
async fn half_closed(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    const BODY: &str = "400 Bad Request: the request head ended before its blank line\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Parses `head` and, if it is a whole upgrade request for the hub's path that every rule
/// accepts, registers the connection: the 101 to write, the registration, what the
/// connection keeps of the request, and the length of the head. A plain function, so the
/// parser's header array lives on the stack, not in the connection's task.
pub(crate) fn answer(
    head: &[u8],
    remote: SocketAddr,
    hub: &Hub,
) -> Option<(Vec<u8>, Registration, connection::Request, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = request.parse(head).ok()? else {
        return None;
    };
    let path = request.path?;
    let for_hub = request.method == Some("GET")
        && request.version == Some(1)
        && path.split_once('?').map_or(path, |(path, _)| path) == WS_PATH;
    if !for_hub {
        return None;
    }
    let (response, registration, request) =
        crate::http::upgrade::accept_parsed(&request, hub, remote)?;
    Some((response, registration, request, head_len))
}

/// Serves one HTTP connection with hyper and the router, until it ends or the server stops.
async fn serve_http<S>(stream: S, remote: SocketAddr, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let router = shared.router.clone();
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        // Recorded as axum's `ConnectInfo`, so handlers (and ConnInfo) see the peer.
        request.extensions_mut().insert(ConnectInfo(remote));
        router.clone().oneshot(request)
    });
    let connection = shared
        .http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut stop_http = shared.stop_http.clone();
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A connection's task is the accept path's future around the connection's own (see
    /// `the_connection_future_stays_small`): the HTTP side must add next to nothing.
    #[tokio::test]
    async fn the_accepted_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, remote) = listener.accept().await.unwrap();
        let hub = Hub::new(crate::Config::default(), crate::Broadcast).unwrap();
        let (_stop, stop_http) = watch::channel(false);
        let shared = Arc::new(Shared {
            router: crate::router(hub.clone(), crate::Site::default()),
            hub,
            http: hyper::server::conn::http1::Builder::new(),
            inherits_nodelay: true,
            stop_http,
            tls: None,
        });
        let future = connection(stream, remote, shared);
        let size = std::mem::size_of_val(&future);
        println!("accepted connection future: {size} bytes");
        assert!(
            size <= 1100,
            "the accepted connection future grew to {size} bytes"
        );
    }
}
