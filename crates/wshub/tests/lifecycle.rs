//! The connection lifecycle with short configured timeouts: size limit, pings, the pong
//! deadline, slow-consumer eviction, graceful shutdown, and churn leaving nothing behind.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Frame;
use wshub::{Broadcast, Config};

fn quick() -> Config {
    Config {
        max_message_size: 64,
        ..Config::default()
    }
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let server = start(quick(), Broadcast).await;
    let mut raw = RawClient::connect(server.addr).await;
    raw.send_frame(true, 1, &[b'a'; 65]).await;
    assert_eq!(raw.read_close().await, (1009, "message too big".into()));
    eventually(|| server.hub.connection_count() == 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_message_across_fragments_closes_with_1009() {
    let server = start(quick(), Broadcast).await;
    let mut raw = RawClient::connect(server.addr).await;
    // 5 fragments of 16 bytes: each one is small, the message is 80 > 64 bytes.
    raw.send_frame(false, 1, &[b'a'; 16]).await;
    for _ in 0..3 {
        raw.send_frame(false, 0, &[b'a'; 16]).await;
    }
    raw.send_frame(true, 0, &[b'a'; 16]).await;
    assert_eq!(raw.read_close().await, (1009, "message too big".into()));
    server.shutdown().await;
}

#[tokio::test]
async fn a_message_at_the_limit_passes() {
    let server = start(quick(), Broadcast).await;
    let mut raw = RawClient::connect(server.addr).await;
    raw.send_frame(false, 2, &[7u8; 32]).await;
    raw.send_frame(true, 0, &[7u8; 32]).await;
    let (fin, opcode, payload) = raw.read_frame().await.unwrap();
    assert!(fin);
    assert_eq!(opcode, 2, "binary stays binary");
    assert_eq!(payload, vec![7u8; 64]);
    server.shutdown().await;
}

#[tokio::test]
async fn server_pings_at_the_configured_period() {
    let config = Config {
        ping_period: Duration::from_millis(200),
        pong_wait: Duration::from_secs(5),
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut raw = RawClient::connect(server.addr).await;
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        let (_, opcode, _) = raw.read_frame().await.unwrap();
        assert_eq!(opcode, 9, "a ping");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(550),
        "three pings came too fast: {elapsed:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_dropped_after_pong_wait() {
    let config = Config {
        ping_period: Duration::from_millis(100),
        pong_wait: Duration::from_millis(400),
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut raw = RawClient::connect(server.addr).await;
    assert_eq!(raw.read_close().await, (1001, "pong timeout".into()));
    eventually(|| server.hub.connection_count() == 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_past_pong_wait() {
    let config = Config {
        ping_period: Duration::from_millis(100),
        pong_wait: Duration::from_millis(300),
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut ws = connect(&server).await;
    // Reading makes tungstenite answer each ping with a pong; run well past pong_wait.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    let mut pings = 0;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if matches!(frame, Frame::Ping(_)) {
            pings += 1;
        }
    }
    assert!(pings >= 5, "only {pings} pings");
    assert_eq!(server.hub.connection_count(), 1);
    send_text(&mut ws, "still here").await;
    assert_eq!(recv(&mut ws).await, Frame::text("still here"));
    server.shutdown().await;
}

/// A client that stops reading is evicted with 1008 once its queue fills, while a
/// client that keeps reading gets every message.
#[tokio::test]
async fn a_client_that_stops_reading_is_evicted_and_others_still_receive() {
    let config = Config {
        send_queue: 8,
        write_wait: Duration::from_secs(5),
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut stalled = connect(&server).await;
    let mut reader = connect(&server).await;
    eventually(|| server.hub.connection_count() == 2).await;

    let payload = "x".repeat(16 * 1024);
    let mut evicted_at = None;
    for i in 0..20_000 {
        let recipients = server.hub.broadcast(payload.clone());
        // Lockstep with the reader, so only the stalled client's queue can grow.
        assert_eq!(
            recv(&mut reader).await,
            Frame::text(payload.clone()),
            "message {i}"
        );
        if recipients == 1 {
            evicted_at = Some(i);
            break;
        }
    }
    let evicted_at = evicted_at.expect("the stalled client was never evicted");
    // The reader keeps receiving after the eviction.
    for _ in 0..10 {
        assert_eq!(server.hub.broadcast("after"), 1);
        assert_eq!(recv(&mut reader).await, Frame::text("after"));
    }
    // The stalled client reads again: what the kernel held, then the close frame.
    let (code, reason) = recv_close(&mut stalled).await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "slow consumer"),
        "evicted after {evicted_at}"
    );
    eventually(|| server.hub.connection_count() == 1).await;
    server.shutdown().await;
}

/// A client whose TCP window is full stalls our write: it is dropped after `write_wait`,
/// even though its queue never filled.
#[tokio::test]
async fn a_stalled_write_is_dropped_after_write_wait() {
    let config = Config {
        send_queue: 100_000,
        send_queue_bytes: 1 << 30,
        write_wait: Duration::from_millis(500),
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let _stalled = connect(&server).await; // never reads
    eventually(|| server.hub.connection_count() == 1).await;
    let chunk = "y".repeat(64 * 1024);
    // Far more than the socket buffers hold, far less than the queue.
    for _ in 0..400 {
        server.hub.broadcast(chunk.clone());
    }
    let started = tokio::time::Instant::now();
    eventually(|| server.hub.connection_count() == 0).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "dropped after {:?}",
        started.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_1001_to_every_client_and_returns() {
    let server = start(Config::default(), Broadcast).await;
    let clients = connect_n(&server, 3).await;
    let hub = server.hub.clone();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { recv_close(&mut ws).await }))
        .collect();
    server.shutdown().await;
    for reader in readers {
        assert_eq!(reader.await.unwrap(), (1001, "server shutting down".into()));
    }
    assert_eq!(hub.connection_count(), 0);
}

#[tokio::test]
async fn a_peer_close_is_answered_and_forgotten() {
    let server = start(Config::default(), Broadcast).await;
    let mut ws = connect(&server).await;
    eventually(|| server.hub.connection_count() == 1).await;
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000u16.into(),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    // The server echoes the close; then the stream ends cleanly.
    let echoed = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(
        matches!(echoed, Some(Ok(Frame::Close(Some(ref f)))) if u16::from(f.code) == 1000),
        "{echoed:?}"
    );
    eventually(|| server.hub.connection_count() == 0).await;
    server.shutdown().await;
}

/// 10,000 connect/disconnect cycles (clean closes and abrupt drops) leave no connection
/// and no task behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_10000_connections_leaves_nothing_behind() {
    let server = start(Config::default(), Broadcast).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    // The baseline is a served, idle server: its `serve` task and its accept loop.
    let mut warm_up = connect(&server).await;
    warm_up.close(None).await.unwrap();
    while let Some(Ok(_)) = warm_up.next().await {}
    eventually(|| server.hub.connection_count() == 0).await;
    eventually(|| metrics.num_alive_tasks() == 2).await;
    let tasks_before = metrics.num_alive_tasks();
    const CYCLES: usize = 10_000;
    const PARALLEL: usize = 32;
    let url = server.url();
    let workers: Vec<_> = (0..PARALLEL)
        .map(|w| {
            let url = url.clone();
            tokio::spawn(async move {
                for i in (w..CYCLES).step_by(PARALLEL) {
                    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                        .await
                        .expect("connect");
                    if i % 2 == 0 {
                        ws.send(Frame::text("hi")).await.unwrap();
                        ws.close(None).await.unwrap();
                        while let Some(Ok(_)) = ws.next().await {}
                    } else {
                        drop(ws); // abrupt: no close frame
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(120), worker)
            .await
            .unwrap()
            .unwrap();
    }
    eventually(|| server.hub.connection_count() == 0).await;
    eventually(|| metrics.num_alive_tasks() <= tasks_before).await;
    server.shutdown().await;
}
