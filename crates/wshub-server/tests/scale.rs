//! Many sockets against the real binary (its own process, so its own file limit and a
//! measurable RSS): half-open handshakes, abrupt disconnects mid-broadcast, and churn.
//! Each prints what it measured; the assertions are about cleanup, not speed.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as Frame;

const KEY: &str = "scale-test-key";

/// These tests run one at a time: together they would pass this process' file limit and
/// measure each other's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Opens `n` WebSocket clients, `parallel` handshakes at a time.
async fn open_clients(url: &str, n: usize, parallel: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    let mut pending = futures_util::stream::iter(0..n)
        .map(|_| {
            let url = url.to_string();
            async move {
                tokio_tungstenite::connect_async(url)
                    .await
                    .expect("connect")
                    .0
            }
        })
        .buffer_unordered(parallel);
    while let Some(ws) = pending.next().await {
        clients.push(ws);
    }
    clients
}

/// 5,000 sockets that start a handshake and stall: all dropped after
/// `handshake_timeout`, memory bounded meanwhile, and a real client served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_stalled_handshakes_are_dropped() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(&["--handshake-timeout", "3s", "--api-key", KEY], &[]);
    let pid = server.child.id();
    let baseline = rss_kib(pid);
    let mut stalled = Vec::new();
    for _ in 0..5000 {
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        socket
            .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: web")
            .await
            .unwrap();
        stalled.push(socket);
    }
    let held = rss_kib(pid);

    let mut ws = connect(&server.url()).await;
    ws.send(Frame::text("served")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Frame::text("served"));

    let mut dropped = 0;
    for socket in &mut stalled {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(20), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => dropped += 1,
            Ok(Ok(n)) if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") => {
                dropped += 1
            }
            other => panic!("stalled handshake not dropped: {other:?}"),
        }
    }
    assert_eq!(dropped, 5000);
    let per_socket = (held.saturating_sub(baseline)) * 1024 / 5000;
    println!(
        "stalled handshakes: RSS {baseline} KiB → {held} KiB with 5000 held ({per_socket} B each)"
    );
    assert!(
        per_socket < 64 * 1024,
        "{per_socket} bytes per stalled socket"
    );
    eventually_async(WAIT, || async { stats(server.addr, KEY).await.0 == 1 }).await;
}

/// 10,000 clients vanish with a TCP reset while broadcasts are in flight: every one is
/// cleaned up and the server's memory comes back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_resets_mid_broadcast_are_cleaned_up() {
    let _serial = SERIAL.lock().await;
    const N: usize = 10_000;
    let server = Server::start(&["--api-key", KEY], &[]);
    let pid = server.child.id();
    // Warm up (runtime threads, allocator arenas) before taking the baseline.
    drop(open_clients(&server.url(), 100, 50).await);
    eventually_async(WAIT, || async { stats(server.addr, KEY).await.0 == 0 }).await;
    let (_, tasks_before) = stats(server.addr, KEY).await;
    let baseline = rss_kib(pid);

    let clients = open_clients(&server.url(), N, 100).await;
    eventually_async(WAIT, || async {
        stats(server.addr, KEY).await.0 == N as u64
    })
    .await;
    let peak = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let broadcaster = tokio::spawn({
        let stop = stop.clone();
        let addr = server.addr;
        async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                api_broadcast(addr, KEY, "mid-broadcast payload").await;
                sent += 1;
            }
            sent
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for ws in clients {
        if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            #[allow(deprecated)]
            tcp.set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(ws); // linger 0: the kernel sends RST
    }
    eventually_async(Duration::from_secs(60), || async {
        stats(server.addr, KEY).await.0 == 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let broadcasts = broadcaster.await.unwrap();
    eventually_async(WAIT, || async {
        stats(server.addr, KEY).await.1 <= tasks_before
    })
    .await;
    // The allocator returns freed pages to the OS after a decay time, not at once.
    let given_back = |rss: u64| rss.saturating_sub(baseline) * 4 < peak - baseline;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut after = rss_kib(pid);
    while !given_back(after) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss_kib(pid);
    }
    println!(
        "10k resets: RSS baseline {baseline} KiB, peak {peak} KiB ({} B/conn), after {after} KiB; {broadcasts} broadcasts meanwhile",
        (peak - baseline) * 1024 / N as u64
    );
    assert!(
        given_back(after),
        "memory not given back: baseline {baseline}, peak {peak}, after {after} KiB"
    );
}

/// 100,000 connect/disconnect cycles: no RSS growth past the first 10,000, no task left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_cycles_do_not_grow_memory() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(&["--api-key", KEY], &[]);
    let pid = server.child.id();
    let url = server.url();
    let cycles = |n: usize| {
        let url = url.clone();
        async move {
            futures_util::stream::iter(0..n)
                .for_each_concurrent(32, |i| {
                    let url = url.clone();
                    async move {
                        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                            .await
                            .expect("connect");
                        if i % 2 == 0 {
                            ws.close(None).await.unwrap();
                            while let Some(Ok(_)) = ws.next().await {}
                        }
                    }
                })
                .await;
        }
    };
    cycles(10_000).await;
    eventually_async(WAIT, || async { stats(server.addr, KEY).await.0 == 0 }).await;
    let (_, tasks_warm) = stats(server.addr, KEY).await;
    let warm = rss_kib(pid);
    let started = std::time::Instant::now();
    cycles(90_000).await;
    let elapsed = started.elapsed();
    eventually_async(WAIT, || async { stats(server.addr, KEY).await.0 == 0 }).await;
    eventually_async(WAIT, || async {
        stats(server.addr, KEY).await.1 <= tasks_warm
    })
    .await;
    let after = rss_kib(pid);
    println!(
        "churn: RSS after 10k cycles {warm} KiB, after 100k {after} KiB; 90k cycles in {elapsed:?} ({:.0}/s)",
        90_000.0 / elapsed.as_secs_f64()
    );
    assert!(
        after <= warm + 8 * 1024,
        "RSS grew from {warm} to {after} KiB"
    );
}
