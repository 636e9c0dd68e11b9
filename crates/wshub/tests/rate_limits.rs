//! Rate limits over real sockets: a connection's message budget (`client_rate`,
//! `client_burst`) in both modes, and the connect rate per address
//! (`connect_rate_per_ip`) on both ways in (the accept loop's fast path and hyper's).
//!
//! No test waits for a bucket to refill: the rates are slow (a token every 500 ms) and the
//! messages or upgrades over them are sent at once.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wshub::{Broadcast, Config, Site};

/// Two messages a second, five at once, and five more over the budget before the close.
fn limited() -> Config {
    Config {
        client_rate: 2,
        client_burst: Some(5),
        ..Config::default()
    }
}

/// The client's frames, all in one write.
async fn send_at_once(client: &mut RawClient, texts: impl Iterator<Item = String>) {
    let bytes: Vec<u8> = texts
        .flat_map(|text| encode_frame(true, 1, text.as_bytes()))
        .collect();
    client.stream.write_all(&bytes).await.unwrap();
}

/// The next text frame as JSON (a close frame panics).
async fn next_json(client: &mut RawClient) -> Value {
    let (_, opcode, payload) = client.read_frame().await.expect("a frame");
    assert_eq!(
        opcode,
        1,
        "a text frame: {}",
        String::from_utf8_lossy(&payload)
    );
    serde_json::from_slice(&payload).unwrap()
}

async fn next_text(client: &mut RawClient) -> String {
    let (_, opcode, payload) = client.read_frame().await.expect("a frame");
    assert_eq!(opcode, 1, "a text frame");
    String::from_utf8(payload).unwrap()
}

async fn connect_v1(addr: SocketAddr) -> RawClient {
    let (client, head) =
        RawClient::connect_with(addr, "Sec-WebSocket-Protocol: wshub.v1\r\n").await;
    assert!(head.contains("wshub.v1"), "{head}");
    client
}

#[tokio::test]
async fn a_v1_client_over_its_rate_gets_429_then_1008_and_one_within_it_is_never_limited() {
    let server = start(limited(), Broadcast).await;
    let mut flood = connect_v1(server.addr).await;
    let mut calm = connect_v1(server.addr).await;

    send_at_once(
        &mut flood,
        (1..=20).map(|id| format!(r#"{{"id":{id},"cmd":"ping"}}"#)),
    )
    .await;
    // The burst is run...
    for id in 1..=5 {
        let reply = next_json(&mut flood).await;
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["result"], serde_json::json!({}), "{reply}");
    }
    // ...the next five are refused, each with its id...
    for id in 6..=10 {
        let reply = next_json(&mut flood).await;
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["error"]["code"], 429, "{reply}");
        assert_eq!(
            reply["error"]["message"],
            "rate limit: 2 messages per second (client_rate)"
        );
    }
    // ...and the client, still over, is closed: nothing after the 11th is answered.
    assert_eq!(flood.read_close().await, (1008, "rate limit".to_owned()));
    assert_eq!(server.hub.rate_limited(), 6);

    // A budget is the connection's own: the other client's burst is whole.
    send_at_once(
        &mut calm,
        (1..=5).map(|id| format!(r#"{{"id":{id},"cmd":"ping"}}"#)),
    )
    .await;
    for id in 1..=5 {
        let reply = next_json(&mut calm).await;
        assert_eq!(reply["id"], id, "{reply}");
        assert!(reply.get("error").is_none(), "never limited: {reply}");
    }
    assert_eq!(server.hub.rate_limited(), 6);
    server.shutdown().await;
}

#[tokio::test]
async fn pings_are_never_limited() {
    let server = start(limited(), Broadcast).await;
    let mut client = RawClient::connect(server.addr).await;
    // Far more pings than the budget, in one write: each gets its pong, nothing closes.
    let pings: Vec<u8> = (0..30u8)
        .flat_map(|i| encode_frame(true, 9, &[i]))
        .collect();
    client.stream.write_all(&pings).await.unwrap();
    for i in 0..30u8 {
        let (_, opcode, payload) = client.read_frame().await.expect("a pong");
        assert_eq!((opcode, payload), (10, vec![i]));
    }
    assert_eq!(server.hub.rate_limited(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_raw_client_over_its_rate_is_dropped_and_counted_then_closed() {
    let site = Site {
        api_key: Some("k".to_owned()),
        ..Site::default()
    };
    let server = start_site(limited(), Broadcast, site).await;
    let mut flood = RawClient::connect(server.addr).await;
    let mut other = RawClient::connect(server.addr).await;
    eventually(|| server.hub.connection_count() == 2).await;

    send_at_once(&mut flood, (1..=20).map(|n| format!("m{n}"))).await;
    // The chat handler broadcasts the burst (the sender gets its own too)...
    for n in 1..=5 {
        assert_eq!(next_text(&mut flood).await, format!("m{n}"));
    }
    // ...drops the rest without a word, and closes the client once it is still over.
    assert_eq!(flood.read_close().await, (1008, "rate limit".to_owned()));

    // The other client saw the burst and nothing else of it: its own message comes next.
    send_at_once(&mut other, std::iter::once("mine".to_owned())).await;
    for n in 1..=5 {
        assert_eq!(next_text(&mut other).await, format!("m{n}"));
    }
    assert_eq!(next_text(&mut other).await, "mine");

    let response = get(server.addr, "/api/stats", "Authorization: Bearer k\r\n").await;
    assert_eq!(status(&response), 200, "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let stats: Value = serde_json::from_str(body).unwrap();
    // Five dropped, and the one that closed the connection.
    assert_eq!(stats["rate_limited"], 6, "{stats}");
    server.shutdown().await;
}

/// A raw upgrade request from `source` (any address of 127/8 is loopback); returns the
/// socket and the response: a 101's head, or a refusal's head and body.
async fn upgrade_from(source: [u8; 4], addr: SocketAddr) -> (TcpStream, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(RawClient::upgrade_request(addr).as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = header(head, "content-length").map_or(0, |n| n.parse().unwrap());
            if head.starts_with("HTTP/1.1 101") || body.len() >= length {
                return (stream, text);
            }
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before answering: {text}");
        response.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test]
async fn the_upgrade_over_connect_rate_per_ip_gets_429_with_retry_after_other_addresses_do_not() {
    let config = Config {
        connect_rate_per_ip: 2,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let (stream, head) = upgrade_from([127, 0, 0, 1], server.addr).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        open.push(stream);
    }
    let (_, response) = upgrade_from([127, 0, 0, 1], server.addr).await;
    assert_eq!(status(&response), 429, "{response}");
    let retry_after: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{response}");
    // The body is one line naming the key.
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    assert!(body.contains("connect_rate_per_ip"), "{body}");
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    // Nothing of the refused upgrade exists in the hub.
    assert_eq!(server.hub.connection_count(), 2);

    // Another source address has a bucket of its own.
    let (_other, head) = upgrade_from([127, 0, 0, 2], server.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_refused_for_another_limit_takes_no_connect_token() {
    let config = Config {
        max_connections_per_ip: 1,
        connect_rate_per_ip: 2,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let (first, head) = upgrade_from([127, 0, 0, 1], server.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Refused on the fast path, asked again (and answered) by hyper's endpoint: 503, and
    // neither took a token.
    for _ in 0..3 {
        let (_, response) = upgrade_from([127, 0, 0, 1], server.addr).await;
        assert_eq!(status(&response), 503, "{response}");
    }
    drop(first);
    eventually(|| server.hub.connection_count() == 0).await;
    // One token was taken by the first upgrade; the second is still there.
    let (_second, head) = upgrade_from([127, 0, 0, 1], server.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_through_hyper_costs_one_token() {
    let config = Config {
        connect_rate_per_ip: 2,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    // A request before the upgrade on one connection: the upgrade is hyper's.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n{}",
        server.addr,
        RawClient::upgrade_request(server.addr)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("HTTP/1.1 101") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    // One token left: one more upgrade, then the 429.
    let (_second, head) = upgrade_from([127, 0, 0, 1], server.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, response) = upgrade_from([127, 0, 0, 1], server.addr).await;
    assert_eq!(status(&response), 429, "{response}");
    server.shutdown().await;
}
