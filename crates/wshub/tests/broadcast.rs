//! The hub's core promises over real sockets: broadcast, send, close, message types,
//! connection info and events, and that a slow handler only delays its own connection.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;
use wshub::{Broadcast, CloseReason, Config, ConnInfo, Handler, Hub, Message};

#[tokio::test]
async fn a_message_reaches_all_three_clients_sender_included() {
    let server = start(Config::default(), Broadcast).await;
    let mut clients = connect_n(&server, 3).await;
    send_text(&mut clients[0], "hello").await;
    for client in &mut clients {
        assert_eq!(recv(client).await, Frame::text("hello"));
    }
    server.shutdown().await;
}

/// Once a client has its 101, it is registered: a broadcast sent at that very moment
/// reaches it (queued until its socket is ready).
#[tokio::test]
async fn a_broadcast_right_after_the_handshake_is_not_missed() {
    let server = start(Config::default(), Broadcast).await;
    for i in 0..20 {
        let mut ws = connect(&server).await;
        assert!(server.hub.broadcast(format!("welcome {i}")) >= 1);
        assert_eq!(recv(&mut ws).await, Frame::text(format!("welcome {i}")));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn binary_stays_binary_and_text_stays_text() {
    let server = start(Config::default(), Broadcast).await;
    let mut clients = connect_n(&server, 2).await;
    let payload = vec![0u8, 159, 146, 150, 255];
    clients[0]
        .send(Frame::binary(payload.clone()))
        .await
        .unwrap();
    for client in &mut clients {
        assert_eq!(recv(client).await, Frame::binary(payload.clone()));
    }
    send_text(&mut clients[1], "ünïcödé").await;
    for client in &mut clients {
        assert_eq!(recv(client).await, Frame::text("ünïcödé"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn hub_broadcast_send_and_close_from_another_thread() {
    let server = start(Config::default(), Recorder::default()).await;
    let mut clients = connect_n(&server, 3).await;
    let hub = server.hub.clone();
    // From a plain OS thread: the handle is Send + Sync and never needs the runtime.
    let recipients = std::thread::spawn(move || hub.broadcast("from a thread"))
        .join()
        .unwrap();
    assert_eq!(recipients, 3);
    for client in &mut clients {
        assert_eq!(recv(client).await, Frame::text("from a thread"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn send_to_one_and_close_one_with_a_code() {
    let recorder = Recorder::default();
    let server = start(Config::default(), recorder.clone()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    let ids = recorder.connected_ids(2).await;

    server.hub.send(ids[1], Message::binary(vec![7u8])).unwrap();
    assert_eq!(recv(&mut b).await, Frame::binary(vec![7u8]));

    assert!(server.hub.close(ids[0], 4001, "bye now"));
    assert_eq!(recv_close(&mut a).await, (4001, "bye now".to_string()));
    eventually(|| server.hub.connection_count() == 1).await;
    assert_eq!(
        server.hub.send(ids[0], "late"),
        Err(wshub::SendError::NotFound)
    );
    assert!(!server.hub.close(ids[0], 4001, "again"), "no double close");
    server.shutdown().await;
}

#[tokio::test]
async fn handler_sees_messages_with_connection_info_and_events() {
    let recorder = Recorder::default();
    let server = start(Config::default(), recorder.clone()).await;
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws?room=lobby", server.addr),
    )
    .unwrap();
    let mut request = request;
    request
        .headers_mut()
        .insert("x-user", "ada".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    send_text(&mut ws, "hi").await;
    ws.send(Frame::binary(vec![1u8, 2])).await.unwrap();

    let mut events = recorder.take(3).await;
    assert_eq!(events.remove(0), Event::Connect);
    let (info, message) = match events.remove(0) {
        Event::Message(info, message) => (info, message),
        other => panic!("{other:?}"),
    };
    assert_eq!(message, Message::text("hi"));
    assert_eq!(info.path, "/ws");
    assert_eq!(info.query.as_deref(), Some("room=lobby"));
    assert_eq!(info.user.as_deref(), Some("ada"));
    assert!(info.remote.unwrap().ip().is_loopback());
    assert!(matches!(&events[0], Event::Message(_, m) if m.as_bytes() == [1, 2] && !m.is_text()));

    ws.close(None).await.unwrap();
    let events = recorder.take(1).await;
    assert!(
        matches!(&events[0], Event::Disconnect(code) if *code == 1005),
        "{events:?}"
    );
    server.shutdown().await;
}

/// A handler that takes two seconds for one client's messages must not delay the others.
#[tokio::test]
async fn a_slow_handler_only_delays_its_own_connection() {
    struct SlowForSleepy;
    impl Handler for SlowForSleepy {
        async fn on_message(&self, hub: &Hub, _conn: &ConnInfo, message: Message) {
            if message.as_text() == Some("sleepy") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            hub.broadcast(message);
        }
    }
    let server = start(Config::default(), SlowForSleepy).await;
    let mut clients = connect_n(&server, 2).await;
    send_text(&mut clients[0], "sleepy").await;
    let started = std::time::Instant::now();
    send_text(&mut clients[1], "quick").await;
    assert_eq!(recv(&mut clients[1]).await, Frame::text("quick"));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "quick message waited for the slow handler"
    );
    assert_eq!(recv(&mut clients[1]).await, Frame::text("sleepy"));
    server.shutdown().await;
}

// ---- a handler that records what it sees ----

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    path: String,
    query: Option<String>,
    user: Option<String>,
    remote: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Connect,
    Message(Seen, Message),
    Disconnect(u16),
}

type Events = mpsc::UnboundedReceiver<(wshub::ConnId, Event)>;

#[derive(Clone)]
struct Recorder {
    tx: mpsc::UnboundedSender<(wshub::ConnId, Event)>,
    rx: Arc<tokio::sync::Mutex<Events>>,
}

impl Default for Recorder {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Recorder {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }
}

impl Recorder {
    async fn next(&self) -> (wshub::ConnId, Event) {
        let mut rx = self.rx.lock().await;
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("event in time")
            .unwrap()
    }
    async fn take(&self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.next().await.1);
        }
        out
    }
    async fn connected_ids(&self, n: usize) -> Vec<wshub::ConnId> {
        let mut ids = Vec::new();
        while ids.len() < n {
            let (id, event) = self.next().await;
            if event == Event::Connect {
                ids.push(id);
            }
        }
        ids
    }
}

impl Handler for Recorder {
    fn keeps_headers(&self) -> bool {
        true
    }
    async fn on_connect(&self, _hub: &Hub, conn: &ConnInfo) {
        let _ = self.tx.send((conn.id(), Event::Connect));
    }
    async fn on_message(&self, hub: &Hub, conn: &ConnInfo, message: Message) {
        let seen = Seen {
            path: conn.path().to_string(),
            query: conn.query().map(str::to_string),
            user: conn
                .headers()
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            remote: conn.remote_addr(),
        };
        let _ = self.tx.send((conn.id(), Event::Message(seen, message)));
        let _ = hub;
    }
    async fn on_disconnect(&self, _hub: &Hub, conn: &ConnInfo, reason: &CloseReason) {
        let _ = self.tx.send((conn.id(), Event::Disconnect(reason.code)));
    }
}
