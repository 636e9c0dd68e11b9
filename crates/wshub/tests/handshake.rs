//! The ways an upgrade request reaches the hub. `wshub::serve` answers a whole upgrade
//! head for `/ws` from the connection's first reads (one, or more for a head in pieces);
//! anything else (an upgrade behind another request on a kept-alive connection) goes
//! through hyper and the router. Each way must end in the same working connection, and bytes the client sent
//! right behind its request must be its first frames, on either way.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wshub::{Broadcast, Config};

/// Sends a text frame and expects it back (the `Broadcast` handler echoes to everyone).
async fn echoes(client: &mut RawClient, text: &str) {
    client.send_frame(true, 1, text.as_bytes()).await;
    assert_eq!(
        client.read_frame().await,
        Some((true, 1, text.as_bytes().to_vec()))
    );
}

/// The request with a first frame right behind it, in one piece.
fn request_and_early_frame(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut bytes = RawClient::upgrade_request(addr).into_bytes();
    bytes.extend_from_slice(&encode_frame(true, 1, b"early"));
    bytes
}

/// What every way in must end in: a 101 with the right accept value, the frame sent right
/// behind the request as the first message, and a connection that echoes.
async fn upgraded_with_early_frame(stream: TcpStream) {
    let (mut client, head) = RawClient::await_101(stream).await;
    // Names in any case: hyper's way writes them in lower case, the first-read way not.
    let accept = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| value.trim().to_owned())
    });
    assert_eq!(
        accept.as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    assert_eq!(
        client.read_frame().await,
        Some((true, 1, b"early".to_vec()))
    );
    echoes(&mut client, "then more").await;
}

#[tokio::test]
async fn a_frame_right_behind_the_request_is_the_first_message() {
    let server = start(Config::default(), Broadcast).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&request_and_early_frame(server.addr))
        .await
        .unwrap();
    upgraded_with_early_frame(stream).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_head_in_pieces_is_answered() {
    let server = start(Config::default(), Broadcast).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = RawClient::upgrade_request(server.addr);
    let (first, rest) = request.split_at(20);
    stream.write_all(first.as_bytes()).await.unwrap();
    // The pause only makes it likely that the server's first read sees the first piece
    // alone (the path under test); the assertions hold whichever read sees what.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rest = rest.as_bytes().to_vec();
    rest.extend_from_slice(&encode_frame(true, 1, b"early"));
    stream.write_all(&rest).await.unwrap();
    upgraded_with_early_frame(stream).await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_behind_another_request_on_the_same_connection_works() {
    let server = start(Config::default(), Broadcast).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let home = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    stream.write_all(home.as_bytes()).await.unwrap();
    // Read the whole home page (its length is in the head) before upgrading.
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "server closed the kept-alive connection");
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .unwrap()
                .parse()
                .unwrap();
            if response.len() >= end + 4 + length {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                break;
            }
        }
    }
    stream
        .write_all(&request_and_early_frame(server.addr))
        .await
        .unwrap();
    upgraded_with_early_frame(stream).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_head_cut_off_by_the_clients_fin_gets_400() {
    let server = start(Config::default(), Broadcast).await;
    for partial in [
        "GET /ws HTTP/1.1\r\nHost: x\r\n",
        "GET / HTTP/1.1\r\nHo",
        "GET",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(partial.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap(); // half-close: we still read
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .unwrap()
            .unwrap();
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{partial:?} → {response:?}"
        );
    }
    // A client that sends nothing and leaves gets nothing.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.is_empty());
    server.shutdown().await;
}
