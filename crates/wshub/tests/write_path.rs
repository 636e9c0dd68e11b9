//! The write path over real sockets: publishers write straight to the socket, only what
//! the kernel refused is queued, and backpressure means exactly that.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Frame;
use wshub::{Broadcast, Config};

/// The scenario: three clients that read everything, one that never reads; one
/// of the readers sends 20,000 × 1 KiB, paced so no reader is ever more than 32 messages
/// behind (32 KiB, far less than a loopback socket buffer). No reader may be evicted;
/// the non-reader must be, with 1008 "slow consumer", once its kernel buffer and then
/// its queue are full.
async fn burst(send_queue: usize) {
    const MESSAGES: usize = 20_000;
    const AHEAD: usize = 32;
    let config = Config {
        send_queue,
        write_wait: Duration::from_secs(30),
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut clients = connect_n(&server, 4).await;
    let mut non_reader = clients.pop().unwrap();
    let (mut sender_sink, sender_stream) = clients.remove(0).split();
    let mut streams = vec![sender_stream];
    // The other halves stay alive to the end: dropping both would close a client.
    let mut sinks = Vec::new();
    for (sink, stream) in clients.into_iter().map(StreamExt::split) {
        sinks.push(sink);
        streams.push(stream);
    }

    let received: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
    let progress = Arc::new(tokio::sync::Notify::new());
    let payload = "m".repeat(1024);
    let readers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(r, mut stream)| {
            let received = received.clone();
            let progress = progress.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                for i in 0..MESSAGES {
                    let frame = loop {
                        let next = tokio::time::timeout(WAIT, stream.next()).await;
                        match next.expect("a reader waited too long").expect("open") {
                            Ok(Frame::Ping(_) | Frame::Pong(_)) => continue,
                            Ok(frame) => break frame,
                            Err(error) => panic!("reader {r}: {error} at message {i}"),
                        }
                    };
                    assert_eq!(
                        frame,
                        Frame::text(payload.clone()),
                        "reader {r}, message {i}"
                    );
                    received[r].store(i + 1, Ordering::Release);
                    progress.notify_waiters();
                }
                stream
            })
        })
        .collect();

    for i in 0..MESSAGES {
        // Pacing: wait until the slowest reader is at most AHEAD messages behind.
        loop {
            let notified = progress.notified();
            let slowest = received
                .iter()
                .map(|r| r.load(Ordering::Acquire))
                .min()
                .unwrap();
            if slowest + AHEAD >= i {
                break;
            }
            tokio::time::timeout(WAIT, notified)
                .await
                .expect("readers progress");
        }
        sender_sink
            .send(Frame::text(payload.clone()))
            .await
            .unwrap();
    }
    let mut streams = Vec::new();
    for reader in readers {
        streams.push(
            reader
                .await
                .expect("every reader got every message, in order, unevicted"),
        );
    }
    // The non-reader was evicted (it could hold neither 20 MB nor the queue), and only it.
    assert_eq!(
        server.hub.broadcast("probe"),
        3,
        "only the non-reader is gone"
    );
    // It reads at last: what its kernel buffer held, then the close frame.
    let (code, reason) = recv_close(&mut non_reader).await;
    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    eventually(|| server.hub.connection_count() == 3).await;
    server.shutdown().await;
}

/// A runtime like `wshub serve`'s: workers flush what they corked when they park, so
/// corks span every connection a worker polled (see `wshub::flush_corked`).
fn serve_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_park(wshub::flush_corked)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_evicts_no_reader_at_send_queue_8() {
    burst(8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_evicts_no_reader_at_the_default_send_queue() {
    burst(Config::default().send_queue).await;
}

#[test]
fn a_burst_evicts_no_reader_at_send_queue_8_with_corks_across_connections() {
    serve_runtime().block_on(burst(8));
}

#[test]
fn a_burst_evicts_no_reader_at_the_default_send_queue_with_corks_across_connections() {
    serve_runtime().block_on(burst(Config::default().send_queue));
}

/// Four OS threads broadcast at once to one connection: every message arrives whole
/// (frames never interleave) and each thread's messages in the order it sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_from_several_threads_arrive_complete_and_in_order() {
    several_threads().await;
}

#[test]
fn publishes_from_several_threads_arrive_complete_and_in_order_with_corks_across_connections() {
    serve_runtime().block_on(several_threads());
}

/// Reads one `source:i:padding` message (padding `i % pad` long): it must be whole and
/// the next of its source's.
async fn expect_next(client: &mut Client, next: &mut [usize], pad: usize) {
    let Frame::Text(text) = recv(client).await else {
        panic!("a text frame");
    };
    let mut parts = text.split(':');
    let source: usize = parts.next().unwrap().parse().unwrap();
    let i: usize = parts.next().unwrap().parse().unwrap();
    assert_eq!(
        parts.next().unwrap().len(),
        i % pad,
        "message {source}:{i} is whole"
    );
    assert_eq!(
        i, next[source],
        "source {source}'s messages arrive in order"
    );
    next[source] += 1;
}

async fn several_threads() {
    const THREADS: usize = 4;
    const EACH: usize = 5_000;
    let config = Config {
        send_queue: 1_000_000,
        send_queue_bytes: 1 << 30,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut client = connect(&server).await;
    eventually(|| server.hub.connection_count() == 1).await;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let hub = server.hub.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    // Sizes vary so frames of different lengths meet in one write.
                    let padding = "p".repeat(i % 300);
                    assert_eq!(hub.broadcast(format!("{t}:{i}:{padding}")), 1);
                }
            })
        })
        .collect();
    let mut next = [0usize; THREADS];
    for _ in 0..THREADS * EACH {
        expect_next(&mut client, &mut next, 300).await;
    }
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(next, [EACH; THREADS]);
    server.shutdown().await;
}

/// While a flood of data goes to a client, its ping is answered ahead of the queued data,
/// and the data stream stays intact around the pong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_is_answered_under_a_flood_of_outbound_data() {
    let config = Config {
        send_queue: 1_000_000,
        send_queue_bytes: 1 << 30,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut client = RawClient::connect(server.addr).await;
    eventually(|| server.hub.connection_count() == 1).await;
    let hub = server.hub.clone();
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = flooding.clone();
    let flood = std::thread::spawn(move || {
        let chunk = "f".repeat(4096);
        let mut sent = 0;
        // Bounded: at most 200 MB, and it stops once the pong was seen.
        while flag.load(Ordering::Relaxed) && sent < 50_000 {
            hub.broadcast(chunk.clone());
            sent += 1;
        }
        sent
    });
    // Let the flood fill the socket buffers before pinging.
    let mut data_frames = 0;
    while data_frames < 1000 {
        let (_, opcode, _) = client.read_frame().await.expect("frame");
        assert_eq!(opcode, 1);
        data_frames += 1;
    }
    client.send_frame(true, 0x9, b"are you there").await;
    loop {
        let (fin, opcode, payload) = client.read_frame().await.expect("frame");
        assert!(fin);
        match opcode {
            1 => assert_eq!(payload.len(), 4096, "data frames stay whole"),
            0xA => {
                assert_eq!(payload, b"are you there");
                break;
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    flooding.store(false, Ordering::Relaxed);
    flood.join().unwrap();
    assert_eq!(
        server.hub.connection_count(),
        1,
        "the reader was not evicted"
    );
    server.shutdown().await;
}

/// `send_queue_bytes` bounds what a non-reader costs, whatever `send_queue` says.
#[tokio::test]
async fn a_non_reader_is_evicted_at_send_queue_bytes() {
    let config = Config {
        send_queue: 1_000_000,
        send_queue_bytes: 64 * 1024,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut stalled = connect(&server).await;
    eventually(|| server.hub.connection_count() == 1).await;
    let chunk = "z".repeat(16 * 1024);
    let mut sent = 0;
    while server.hub.broadcast(chunk.clone()) == 1 {
        sent += 1;
        assert!(sent < 10_000, "never evicted");
    }
    let (code, reason) = recv_close(&mut stalled).await;
    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    eventually(|| server.hub.connection_count() == 0).await;
    server.shutdown().await;
}

/// A handler that mixes broadcasts with a send to one connection and its close, all in
/// one round: that connection must see them in the order they were made, although the
/// round's broadcasts are kept and written together at its end.
struct Mixed(std::sync::Mutex<Vec<wshub::ConnId>>);

impl wshub::Handler for Mixed {
    async fn on_connect(&self, _hub: &wshub::Hub, conn: &wshub::ConnInfo) {
        self.0.lock().unwrap().push(conn.id());
    }

    async fn on_message(&self, hub: &wshub::Hub, _conn: &wshub::ConnInfo, _m: wshub::Message) {
        let first = self.0.lock().unwrap()[0];
        hub.broadcast("a");
        hub.send(first, "x").unwrap();
        hub.broadcast("b");
        hub.broadcast("c");
        hub.send(first, "y").unwrap();
        hub.broadcast("d");
        assert!(hub.close(first, 4000, "done"));
        hub.broadcast("e");
    }
}

async fn mixed_round() {
    let server = start(Config::default(), Mixed(Default::default())).await;
    let mut first = connect(&server).await;
    eventually(|| server.hub.connection_count() == 1).await;
    let mut others = connect_n(&server, 3).await;
    send_text(&mut others[0], "go").await;
    for expected in ["a", "x", "b", "c", "y", "d"] {
        assert_eq!(recv(&mut first).await, Frame::text(expected));
    }
    assert_eq!(recv_close(&mut first).await, (4000, "done".to_string()));
    for client in &mut others {
        for expected in ["a", "b", "c", "d", "e"] {
            assert_eq!(recv(client).await, Frame::text(expected));
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_round_keeps_each_connections_order_across_broadcasts_sends_and_a_close() {
    mixed_round().await;
}

#[test]
fn a_round_keeps_each_connections_order_with_corks_across_connections() {
    serve_runtime().block_on(mixed_round());
}

/// Several clients publish at once through the chat handler on two workers whose rounds
/// span connections: a reader gets every message whole, each publisher's in order.
#[test]
fn broadcasts_from_several_connections_arrive_complete_and_in_order() {
    serve_runtime().block_on(async {
        const PUBLISHERS: usize = 4;
        const EACH: usize = 2_000;
        let config = Config {
            send_queue: 1_000_000,
            send_queue_bytes: 1 << 30,
            ..Config::default()
        };
        let server = start(config, Broadcast).await;
        let mut reader = connect(&server).await;
        let publishers = connect_n(&server, PUBLISHERS + 1).await;
        let tasks: Vec<_> = publishers
            .into_iter()
            .skip(1)
            .enumerate()
            .map(|(p, client)| {
                let (mut sink, mut stream) = client.split();
                // A publisher reads everything too, or it would be a slow consumer.
                let drain = tokio::spawn(async move {
                    for _ in 0..PUBLISHERS * EACH {
                        stream.next().await.unwrap().unwrap();
                    }
                    stream
                });
                tokio::spawn(async move {
                    for i in 0..EACH {
                        let padding = "p".repeat(i % 200);
                        sink.send(Frame::text(format!("{p}:{i}:{padding}")))
                            .await
                            .unwrap();
                    }
                    (sink, drain.await.unwrap())
                })
            })
            .collect();
        let mut next = [0usize; PUBLISHERS];
        for _ in 0..PUBLISHERS * EACH {
            expect_next(&mut reader, &mut next, 200).await;
        }
        for task in tasks {
            let (_sink, _stream) = task.await.unwrap();
        }
        server.shutdown().await;
    });
}
