//! permessage-deflate over real sockets: what is agreed, a broadcast compressed once for
//! everyone, inbound messages inflated within `max_message_size`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::AsyncWriteExt;
use wshub::{Broadcast, Config};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn compressing(config: Config) -> Config {
    Config {
        compression: true,
        ..config
    }
}

/// The `sec-websocket-extensions` value of a 101's head, if any.
fn extensions(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    })
}

/// What a client does before sending: raw deflate, sync flush, tail removed.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    compress
        .compress_vec(data, &mut out, FlushCompress::Sync)
        .unwrap();
    assert_eq!(compress.total_in() as usize, data.len());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(64 * 1024);
    Decompress::new(false)
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// A JSON-like message of about 1 KiB, as a chat or a feed would send.
fn json_message() -> String {
    let items: Vec<String> = (0..16)
        .map(|i| {
            format!(
                r#"{{"id":{i},"user":"user-{i}","text":"the quick brown fox jumps","likes":{}}}"#,
                i * 7
            )
        })
        .collect();
    format!(r#"{{"type":"batch","items":[{}]}}"#, items.join(","))
}

#[tokio::test]
async fn a_compressed_broadcast_is_byte_identical_for_every_compressing_client() {
    let server = start(compressing(Config::default()), Broadcast).await;
    let (mut a, head_a) = RawClient::connect_with(server.addr, OFFER).await;
    let (mut b, head_b) = RawClient::connect_with(server.addr, OFFER).await;
    let (mut plain, head_plain) = RawClient::connect_with(server.addr, "").await;
    assert_eq!(extensions(&head_a).as_deref(), Some(AGREED));
    assert_eq!(extensions(&head_b).as_deref(), Some(AGREED));
    assert_eq!(extensions(&head_plain), None, "no offer, no compression");
    eventually(|| server.hub.connection_count() == 3).await;

    let text = json_message();
    assert!(text.len() > 1000);
    assert_eq!(server.hub.broadcast(text.clone()), 3);
    let (fin_a, op_a, wire_a) = a.read_frame().await.unwrap();
    let (_, op_b, wire_b) = b.read_frame().await.unwrap();
    assert!(fin_a);
    assert_eq!((op_a, op_b), (0x41, 0x41), "RSV1 set: compressed text");
    assert_eq!(wire_a, wire_b, "the same compressed bytes for both");
    assert!(
        wire_a.len() * 3 < text.len(),
        "{} bytes for {}",
        wire_a.len(),
        text.len()
    );
    assert_eq!(inflate(&wire_a), text.as_bytes());
    let (_, op_plain, payload) = plain.read_frame().await.unwrap();
    assert_eq!((op_plain, payload), (0x1, text.into_bytes()));

    // Below compression_min_size (256), messages go out as they are.
    server.hub.broadcast("short");
    assert_eq!(
        a.read_frame().await.unwrap(),
        (true, 0x1, b"short".to_vec())
    );
    server.shutdown().await;
}

/// Broadcasts made in one round leave in one walk, deflated once for every client
/// compressing with the default window (the same bytes, frames back to back), deflated
/// for a smaller window's client alone, plain for the rest; each in order.
#[tokio::test]
async fn a_rounds_broadcasts_reach_every_kind_of_client_in_order() {
    let server = start(compressing(Config::default()), Broadcast).await;
    let (mut a, _) = RawClient::connect_with(server.addr, OFFER).await;
    let (mut b, _) = RawClient::connect_with(server.addr, OFFER).await;
    let small = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n";
    let (mut narrow, head) = RawClient::connect_with(server.addr, small).await;
    assert!(
        extensions(&head)
            .unwrap()
            .ends_with("server_max_window_bits=10")
    );
    let (mut plain, _) = RawClient::connect_with(server.addr, "").await;
    eventually(|| server.hub.connection_count() == 4).await;

    // Three messages in one write: the sender's task handles them in one round.
    let texts = [
        json_message(),
        "short".to_owned(),
        json_message().replace("fox", "cat"),
    ];
    let mut burst = Vec::new();
    for text in &texts {
        burst.extend(encode_frame(true, 0x1, text.as_bytes()));
    }
    plain.stream.write_all(&burst).await.unwrap();

    let mut seen_a = Vec::new();
    let mut wire_bytes = 0;
    for text in &texts {
        let (_, op_a, wire_a) = a.read_frame().await.unwrap();
        let (_, op_b, wire_b) = b.read_frame().await.unwrap();
        assert_eq!(
            wire_a, wire_b,
            "the same bytes for both default-window clients"
        );
        let (_, op_n, wire_n) = narrow.read_frame().await.unwrap();
        let (_, op_p, payload) = plain.read_frame().await.unwrap();
        let compressed = text.len() >= 256;
        let expected = if compressed { 0x41 } else { 0x1 };
        assert_eq!(
            (op_a, op_b, op_n, op_p),
            (expected, expected, expected, 0x1)
        );
        for (wire, who) in [(&wire_a, "default window"), (&wire_n, "small window")] {
            let got = if compressed {
                inflate(wire)
            } else {
                wire.clone()
            };
            assert_eq!(got, text.as_bytes(), "{who}");
        }
        assert_eq!(payload, text.as_bytes());
        wire_bytes += [&wire_a, &wire_b, &wire_n, &payload]
            .iter()
            .map(|w| w.len() + if w.len() < 126 { 2 } else { 4 })
            .sum::<usize>();
        seen_a.push(wire_a);
    }
    assert_ne!(seen_a[0], seen_a[2]);
    // Counted once per recipient and message, with the bytes each was sent.
    let metrics = server.hub.metrics_text();
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(sample("wshub_messages_sent_total{type=\"text\"}"), 12.0);
    let payload: usize = texts.iter().map(|t| t.len()).sum();
    assert_eq!(
        sample("wshub_bytes_sent_total{type=\"text\"}"),
        (4 * payload) as f64,
        "payload bytes before compression"
    );
    assert_eq!(
        sample("wshub_wire_bytes_sent_total{type=\"text\"}"),
        wire_bytes as f64
    );
    server.shutdown().await;
}

#[tokio::test]
async fn compressed_messages_from_a_client_are_inflated() {
    let server = start(compressing(Config::default()), Broadcast).await;
    let (mut client, _) = RawClient::connect_with(server.addr, OFFER).await;
    let text = json_message();
    let compressed = deflate(text.as_bytes());
    // Fragmented: RSV1 on the first frame only.
    let (first, rest) = compressed.split_at(compressed.len() / 2);
    client.send_frame(false, 0x41, first).await;
    client.send_frame(true, 0x0, rest).await;
    let (_, opcode, echo) = client.read_frame().await.unwrap();
    assert_eq!(opcode, 0x41);
    assert_eq!(inflate(&echo), text.as_bytes());
    server.shutdown().await;
}

#[tokio::test]
async fn a_decompression_bomb_is_closed_with_1009() {
    let config = Config {
        max_message_size: 64 * 1024,
        ..compressing(Config::default())
    };
    let server = start(config, Broadcast).await;
    let (mut client, _) = RawClient::connect_with(server.addr, OFFER).await;
    // 16 MiB of zeros: about 16 KB compressed, far under the limit on the wire.
    let bomb = deflate(&vec![0u8; 16 << 20]);
    assert!(bomb.len() < 64 * 1024);
    client.send_frame(true, 0x42, &bomb).await;
    let (code, reason) = client.read_close().await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    eventually(|| server.hub.connection_count() == 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn rsv1_without_an_agreement_is_a_protocol_error() {
    let server = start(compressing(Config::default()), Broadcast).await;
    let (mut client, head) = RawClient::connect_with(server.addr, "").await;
    assert_eq!(extensions(&head), None);
    client.send_frame(true, 0x41, &deflate(b"hello")).await;
    assert_eq!(client.read_close().await.0, 1002);
    server.shutdown().await;
}

#[tokio::test]
async fn compression_is_off_by_default_and_a_smaller_window_is_honoured() {
    let server = start(Config::default(), Broadcast).await;
    let (_client, head) = RawClient::connect_with(server.addr, OFFER).await;
    assert_eq!(
        extensions(&head),
        None,
        "compression = false: the offer is declined"
    );
    server.shutdown().await;

    let server = start(compressing(Config::default()), Broadcast).await;
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n";
    let (mut client, head) = RawClient::connect_with(server.addr, offer).await;
    assert_eq!(
        extensions(&head).as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        )
    );
    let text = json_message();
    server.hub.broadcast(text.clone());
    let (_, opcode, wire) = client.read_frame().await.unwrap();
    assert_eq!(opcode, 0x41);
    assert_eq!(inflate(&wire), text.as_bytes());
    // An offer we cannot honour (an 8-bit window) is declined, not half-honoured.
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n";
    let (_client, head) = RawClient::connect_with(server.addr, offer).await;
    assert_eq!(extensions(&head), None);
    server.shutdown().await;
}
