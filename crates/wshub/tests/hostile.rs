//! Hostile and broken input, each with its specific answer: bad HTTP, slow handshakes,
//! protocol violations, invalid UTF-8, ping floods, and the connection limits.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use wshub::{Broadcast, Config};

/// A chat round trip on a fresh client: proof that the server still serves.
async fn still_serving(server: &TestServer) {
    let mut ws = connect(server).await;
    send_text(&mut ws, "alive?").await;
    assert_eq!(recv(&mut ws).await, Frame::text("alive?"));
}

#[tokio::test]
async fn garbage_and_oversized_http_get_400_and_431() {
    let server = start(Config::default(), Broadcast).await;
    let garbage = raw_http(
        server.addr,
        "\x16\x03\x01\x00\x7fgarbage that is not http\r\n\r\n",
    )
    .await;
    assert_eq!(status(&garbage), 400, "{garbage:?}");

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    let response = raw_http(server.addr, &huge).await;
    assert_eq!(status(&response), 431, "{response:?}");

    // A request cut off mid-way: the server just closes that socket.
    let mut truncated = TcpStream::connect(server.addr).await.unwrap();
    truncated
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr")
        .await
        .unwrap();
    truncated.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, truncated.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();

    still_serving(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn slow_handshakes_are_dropped_after_handshake_timeout() {
    let config = Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    // Silent: connects and sends nothing.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Trickle: one byte of the request every 100 ms, never finishing in time.
    let mut trickle = TcpStream::connect(server.addr).await.unwrap();
    let request = b"GET /ws HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n\r\n";
    let started = tokio::time::Instant::now();
    let trickler = tokio::spawn(async move {
        for byte in request {
            if trickle.write_all(&[*byte]).await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("silent socket closed")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    let cut_after = tokio::time::timeout(WAIT, trickler).await.unwrap().unwrap();
    let cut_after = cut_after.expect("the trickling client was cut off");
    assert!(
        cut_after < Duration::from_secs(3),
        "cut after {cut_after:?}"
    );
    still_serving(&server).await;
    server.shutdown().await;
}

/// Each protocol violation closes with 1002.
#[tokio::test]
async fn protocol_violations_close_with_1002() {
    let server = start(Config::default(), Broadcast).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i']),
        ("reserved bits", {
            let mut f = encode_frame(true, 1, b"hi");
            f[0] |= 0x40;
            f
        }),
        ("reserved opcode", encode_frame(true, 3, b"hi")),
        (
            "control frame over 125 bytes",
            encode_frame(true, 9, &[0u8; 126]),
        ),
        ("fragmented control frame", encode_frame(false, 9, b"ping")),
        ("continuation without a start", encode_frame(true, 0, b"hi")),
        ("new message inside a fragmented one", {
            let mut f = encode_frame(false, 1, b"a");
            f.extend(encode_frame(true, 1, b"b"));
            f
        }),
    ];
    for (name, bytes) in cases {
        let mut raw = RawClient::connect(server.addr).await;
        raw.stream.write_all(&bytes).await.unwrap();
        let (code, _) = raw.read_close().await;
        assert_eq!(code, 1002, "{name}");
    }
    still_serving(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_also_across_fragments() {
    let server = start(Config::default(), Broadcast).await;
    let mut raw = RawClient::connect(server.addr).await;
    raw.send_frame(true, 1, &[b'o', b'k', 0xff]).await;
    assert_eq!(raw.read_close().await.0, 1007);

    // "é" is C3 A9: the first fragment ends in the middle of it, the second breaks it.
    let mut raw = RawClient::connect(server.addr).await;
    raw.send_frame(false, 1, &[b'a', 0xC3]).await;
    raw.send_frame(true, 0, &[0x28, b'b']).await;
    assert_eq!(raw.read_close().await.0, 1007);

    // A sequence split correctly across fragments is fine.
    let mut raw = RawClient::connect(server.addr).await;
    raw.send_frame(false, 1, &[b'a', 0xC3]).await;
    raw.send_frame(true, 0, &[0xA9]).await;
    let (_, opcode, payload) = raw.read_frame().await.unwrap();
    assert_eq!((opcode, payload), (1, "aé".as_bytes().to_vec()));
    server.shutdown().await;
}

/// 10,000 pings as fast as one client can send them: answered (the latest pong at least),
/// and another client's chat still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_does_not_starve_others() {
    let server = start(Config::default(), Broadcast).await;
    let flooder = RawClient::connect(server.addr).await;
    let (mut read, mut write) = flooder.into_stream().into_split();
    let pongs = tokio::spawn(async move {
        let mut bytes = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(2), read.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            bytes += n;
        }
        bytes
    });
    let flood = tokio::spawn(async move {
        let ping = encode_frame(true, 9, b"flood");
        let batch: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 100)
            .collect();
        for _ in 0..100 {
            if write.write_all(&batch).await.is_err() {
                break;
            }
        }
        write
    });
    let mut ws = connect(&server).await;
    for i in 0..20 {
        send_text(&mut ws, &format!("m{i}")).await;
        assert_eq!(recv(&mut ws).await, Frame::text(format!("m{i}")));
    }
    let _write = flood.await.unwrap();
    let pong_bytes = pongs.await.unwrap();
    assert!(pong_bytes > 0, "the flood was answered");
    server.shutdown().await;
}

#[tokio::test]
async fn max_connections_is_enforced_with_503() {
    let config = Config {
        max_connections: 2,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut first = connect(&server).await;
    let _second = connect(&server).await;
    let refused = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("503"), "{refused}");
    let response = get(
        server.addr,
        "/ws",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    )
    .await;
    assert_eq!(status(&response), 503);
    assert!(response.contains("max_connections"), "{response}");
    // A place frees up when a client leaves.
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = first.next().await {}
    eventually(|| server.hub.connection_count() == 1).await;
    let _third = connect(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn max_connections_per_ip_is_enforced_with_503() {
    let config = Config {
        max_connections_per_ip: 1,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let _first = connect(&server).await;
    let response = get(
        server.addr,
        "/ws",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    )
    .await;
    assert_eq!(status(&response), 503, "{response}");
    assert!(response.contains("max_connections_per_ip"), "{response}");
    server.shutdown().await;
}
