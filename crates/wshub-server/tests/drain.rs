//! Lossless drain and readiness, against the real binary: SIGUSR1 and `POST /api/drain`
//! refuse new upgrades (503, `/readyz` 503), close every client with 1012 "service restart"
//! spread over `drain_period`, and exit 0 after the last one; `drain_timeout` bounds a
//! client that never finishes its close; SIGTERM keeps its fast 1001, during a drain too.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as Frame;

const KEY: &str = "drain-test-key";

/// `METHOD path` with the API key (or without), on a fresh socket → (status, body as JSON).
async fn request(addr: SocketAddr, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let auth = key
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    let response = http(
        addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
        ),
    )
    .await;
    status_and_json(&response)
}

/// The status line of the answer to a WebSocket upgrade request for `/ws`.
async fn upgrade_status(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(UPGRADE).await.unwrap();
    let mut response = Vec::new();
    while !response.windows(2).any(|w| w == b"\r\n") {
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "an answer before the end");
        response.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or("").to_owned()
}

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Reads `client` until its close frame: when it came, its code and reason.
async fn close_of(mut client: Client) -> (Instant, u16, String) {
    loop {
        let frame = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("a close in time")
            .expect("a close frame before the end")
            .expect("a frame");
        if let Frame::Close(close) = frame {
            let at = Instant::now();
            let close = close.expect("a close code");
            return (at, u16::from(close.code), close.reason.to_string());
        }
    }
}

/// Polls `/readyz` until it answers `status`.
async fn readyz_becomes(addr: SocketAddr, want: u16, status: &str) {
    eventually_async(WAIT, || async {
        let (code, body) = request(addr, "GET", "/readyz", None).await;
        code == want && body["status"] == status
    })
    .await;
}

/// 20 clients; `start` begins the drain; every step of the drain is checked.
async fn drain_case(start: impl AsyncFnOnce(&Server)) {
    const CLIENTS: usize = 20;
    let period = Duration::from_millis(1500);
    let mut server = Server::start(
        &[
            "--api-key",
            KEY,
            "--drain-period",
            "1500ms",
            "--drain-timeout",
            "3s",
        ],
        &[],
    );
    let addr = server.addr;
    assert_eq!(
        request(addr, "GET", "/readyz", None).await,
        (200, serde_json::json!({ "status": "ready" }))
    );
    let mut closes = Vec::new();
    for _ in 0..CLIENTS {
        closes.push(tokio::spawn(close_of(connect(&server.url()).await)));
    }
    eventually_async(WAIT, || async {
        stats(addr, KEY).await.0 == CLIENTS as u64
    })
    .await;

    start(&server).await;
    readyz_becomes(addr, 503, "draining").await;
    assert!(
        upgrade_status(addr).await.starts_with("HTTP/1.1 503"),
        "a new upgrade is refused while draining"
    );

    let mut times = Vec::new();
    for close in closes {
        let (at, code, reason) = close.await.unwrap();
        assert_eq!((code, reason.as_str()), (1012, "service restart"));
        times.push(at);
    }
    times.sort();
    let spread = times[CLIENTS - 1] - times[0];
    assert!(
        spread >= period / 3,
        "the closes are spread over the drain period, not all at once: {spread:?}"
    );
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "exit 0 after the last client");
    let log: Vec<String> = server.stderr.try_iter().collect();
    assert!(
        log.iter().any(|line| line.contains("drained")),
        "the drain is logged: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_drains_with_1012_spread_over_the_period_then_exits_0() {
    drain_case(async |server: &Server| server.signal("USR1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_api_drain_drains_with_1012_spread_over_the_period_then_exits_0() {
    drain_case(async |server: &Server| {
        let addr = server.addr;
        let (status, body) = request(addr, "POST", "/api/drain", None).await;
        assert_eq!(status, 401, "the API key is needed: {body}");
        let (status, body) = request(addr, "POST", "/api/drain", Some("wrong")).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            request(addr, "POST", "/api/drain", Some(KEY)).await,
            (
                202,
                serde_json::json!({
                    "draining": true,
                    "already": false,
                    "connections": 20,
                    "drain_period": "1500ms",
                })
            )
        );
        let (status, body) = request(addr, "POST", "/api/drain", Some(KEY)).await;
        assert_eq!(status, 202, "asked again: {body}");
        assert_eq!(body["draining"], true);
        assert_eq!(body["already"], true);
    })
    .await;
}

/// A drain with no client at all is over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_without_clients_exits_at_once() {
    let mut server = Server::start(&["--drain-period", "30s"], &[]);
    let started = Instant::now();
    server.signal("USR1");
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A client that never reads: our close frame cannot even be written, and `write_wait`
/// (60 s) would keep its connection. The drain gives up at `drain_period` +
/// `drain_timeout` and the process exits 0 then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_a_client_that_never_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = Server::start(
        &[
            "--api-key",
            KEY,
            "--drain-period",
            "1s",
            "--drain-timeout",
            "1s",
            "--write-wait",
            "60s",
        ],
        &[],
    );
    let addr = server.addr;
    let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
    stuck.write_all(UPGRADE).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stuck.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    // Broadcast until the kernel's buffers and the queue are full: the hub evicts it, and
    // its close frame waits behind bytes nobody reads.
    let body = "x".repeat(512 * 1024);
    let mut evicted = false;
    for _ in 0..200 {
        if api_broadcast(addr, KEY, &body).await == 0 {
            evicted = true;
            break;
        }
    }
    assert!(evicted, "the buffers filled up");
    assert_eq!(stats(addr, KEY).await.0, 1, "the connection is still open");

    let started = Instant::now();
    server.signal("USR1");
    let status = server.wait_exit();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(1800),
        "the drain waited for the client until drain_period + drain_timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(6),
        "the drain did not wait for write_wait: {took:?}"
    );
    drop(stuck);
}

/// SIGTERM keeps the fast shutdown: 1001 for everyone, also in the middle of a drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_still_closes_with_1001_and_ends_a_drain_quickly() {
    // Without a drain.
    let mut server = Server::start(&["--api-key", KEY], &[]);
    let clients: Vec<_> = futures_util::future::join_all((0..3).map(|_| connect_to(&server))).await;
    eventually_async(WAIT, || async { stats(server.addr, KEY).await.0 == 3 }).await;
    server.signal("TERM");
    for client in clients {
        let (_, code, _) = close_of(client).await;
        assert_eq!(code, 1001);
    }
    assert_eq!(server.wait_exit().code(), Some(0));

    // During a drain of 30 s: the first client got its 1012 at once, the rest get 1001.
    let mut server = Server::start(&["--api-key", KEY, "--drain-period", "30s"], &[]);
    let addr = server.addr;
    let mut closes = Vec::new();
    for _ in 0..5 {
        closes.push(tokio::spawn(close_of(connect(&server.url()).await)));
    }
    eventually_async(WAIT, || async { stats(addr, KEY).await.0 == 5 }).await;
    server.signal("USR1");
    readyz_becomes(addr, 503, "draining").await;
    let started = Instant::now();
    server.signal("TERM");
    let mut codes = Vec::new();
    for close in closes {
        codes.push(close.await.unwrap().1);
    }
    codes.sort();
    assert_eq!(codes, [1001, 1001, 1001, 1001, 1012]);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM ends a drain quickly: {:?}",
        started.elapsed()
    );
}

async fn connect_to(server: &Server) -> Client {
    connect(&server.url()).await
}
