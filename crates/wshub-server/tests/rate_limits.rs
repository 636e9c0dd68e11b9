//! The rate limits through the real `wshub` binary: the keys' three spellings, their
//! errors (exit 2 naming the key), a raw flood closed with 1008 and counted in
//! `/api/stats`, and the connect rate per address answered with 429.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity
)]

mod common;

use std::net::SocketAddr;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as Frame;

#[test]
fn the_keys_are_client_rate_client_burst_connect_rate_per_ip_in_file_env_and_flags() {
    let (code, out, _) = run(&["config"], &[]);
    assert_eq!(code, 0);
    for line in [
        "client_rate = 0",
        "client_burst = 0",
        "connect_rate_per_ip = 0",
    ] {
        assert!(out.contains(line), "`{line}` in:\n{out}");
    }
    let file = temp_file(
        "rates.toml",
        "client_rate = 7\nclient_burst = 3\nconnect_rate_per_ip = 1\n",
    );
    let file = file.to_str().unwrap();
    let (code, out, err) = run(&["check", "--config", file], &[]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "client_rate = 7",
        "client_burst = 3",
        "connect_rate_per_ip = 1",
    ] {
        assert!(out.contains(line), "file: `{line}` in:\n{out}");
    }
    let env = [
        ("WSHUB_CLIENT_RATE", "8"),
        ("WSHUB_CLIENT_BURST", "4"),
        ("WSHUB_CONNECT_RATE_PER_IP", "2"),
    ];
    let (code, out, err) = run(&["check", "--config", file], &env);
    assert_eq!(code, 0, "{err}");
    for line in [
        "client_rate = 8",
        "client_burst = 4",
        "connect_rate_per_ip = 2",
    ] {
        assert!(out.contains(line), "env: `{line}` in:\n{out}");
    }
    let flags = [
        "check",
        "--config",
        file,
        "--client-rate",
        "9",
        "--client-burst",
        "5",
        "--connect-rate-per-ip",
        "3",
    ];
    let (code, out, err) = run(&flags, &env);
    assert_eq!(code, 0, "{err}");
    for line in [
        "client_rate = 9",
        "client_burst = 5",
        "connect_rate_per_ip = 3",
    ] {
        assert!(out.contains(line), "flags: `{line}` in:\n{out}");
    }
    // 0 is the default burst (twice the rate), also with a rate.
    let (code, _, err) = run(&["check", "--client-rate", "5", "--client-burst", "0"], &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn bad_rate_settings_exit_2_naming_the_key() {
    let cases: &[(&[&str], &[(&str, &str)], &[&str])] = &[
        (
            &["--client-burst", "5"],
            &[],
            &["client_burst", "client_rate"],
        ),
        (&[], &[("WSHUB_CLIENT_BURST", "5")], &["client_burst"]),
        (
            &["--client-rate", "fast"],
            &[],
            &["client_rate", "--client-rate"],
        ),
        (&["--client-rate", "2000000000"], &[], &["client_rate"]),
        (
            &[],
            &[("WSHUB_CONNECT_RATE_PER_IP", "-1")],
            &["connect_rate_per_ip", "WSHUB_CONNECT_RATE_PER_IP"],
        ),
    ];
    for (args, env, needles) in cases {
        for command in ["check", "serve"] {
            let mut full = vec![command, "--bind", "127.0.0.1:0"];
            full.extend_from_slice(args);
            let (code, _, err) = run(&full, env);
            assert_eq!(code, 2, "{command} {args:?} {env:?}: {err}");
            let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "one line: {err}");
            for needle in *needles {
                assert!(err.contains(needle), "`{needle}` not in: {err}");
            }
        }
    }
}

/// `GET /api/stats` as JSON.
async fn stats_json(addr: SocketAddr, key: &str) -> serde_json::Value {
    let response = http(
        addr,
        format!("GET /api/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\r\n"),
    )
    .await;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("{response}"))
}

#[tokio::test]
async fn a_raw_flood_is_dropped_counted_and_closed_with_1008() {
    let server = Server::start(
        &[
            "--client-rate",
            "2",
            "--client-burst",
            "5",
            "--api-key",
            "k",
        ],
        &[],
    );
    assert_eq!(stats_json(server.addr, "k").await["rate_limited"], 0);
    let mut flood = connect(&server.url()).await;
    for n in 1..=20 {
        flood.feed(Frame::text(format!("m{n}"))).await.unwrap();
    }
    flood.flush().await.unwrap();
    // The chat broadcasts the burst back; the rest is dropped; still over: closed.
    for n in 1..=5 {
        assert_eq!(next_data(&mut flood).await, Frame::text(format!("m{n}")));
    }
    match next_data(&mut flood).await {
        Frame::Close(Some(close)) => {
            assert_eq!(u16::from(close.code), 1008);
            assert_eq!(close.reason.as_str(), "rate limit");
        }
        other => panic!("expected the close, got {other:?}"),
    }
    assert_eq!(stats_json(server.addr, "k").await["rate_limited"], 6);
}

/// An upgrade request sent from `source`: the socket, and the answer's status and headers.
async fn upgrade_from(source: [u8; 4], addr: SocketAddr) -> (tokio::net::TcpStream, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before answering");
        head.extend_from_slice(&chunk[..n]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test]
async fn connect_rate_per_ip_answers_429_with_retry_after() {
    let server = Server::start(&[], &[("WSHUB_CONNECT_RATE_PER_IP", "3")]);
    let mut open = Vec::new();
    for _ in 0..3 {
        let (stream, head) = upgrade_from([127, 0, 0, 1], server.addr).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        open.push(stream);
    }
    let (_, head) = upgrade_from([127, 0, 0, 1], server.addr).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: "),
        "{head}"
    );
    let (_other, head) = upgrade_from([127, 0, 0, 2], server.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "another address: {head}");
}
