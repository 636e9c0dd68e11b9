//! Shared helpers for the integration tests: a real server on an ephemeral port, real
//! WebSocket clients, and waits that always have a deadline.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wshub::{Config, Handler, Hub, Site};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Every wait in a test is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Triggers the graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task")
            .expect("serve ok");
    }
}

pub async fn start(config: Config, handler: impl Handler) -> TestServer {
    start_site(config, handler, Site::default()).await
}

pub async fn start_site(config: Config, handler: impl Handler, site: Site) -> TestServer {
    let hub = Hub::new(config, handler).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let router = wshub::router(hub.clone(), site);
    let task = tokio::spawn(wshub::serve(listener, hub.clone(), router, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        hub,
        stop: Some(stop),
        task,
    }
}

pub async fn connect(server: &TestServer) -> Client {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.url()))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

/// Connects `n` clients and waits until the hub has registered all of them.
pub async fn connect_n(server: &TestServer, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(connect(server).await);
    }
    eventually(|| server.hub.connection_count() >= n).await;
    clients
}

/// The next data or close message (pings and pongs are skipped).
pub async fn recv(ws: &mut Client) -> Message {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("no error");
        if !matches!(next, Message::Ping(_) | Message::Pong(_)) {
            return next;
        }
    }
}

/// Waits for the close frame; returns (code, reason).
pub async fn recv_close(ws: &mut Client) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

pub async fn send_text(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

/// Polls `condition` every 10 ms until it holds, failing after `WAIT`.
pub async fn eventually(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends raw bytes as one HTTP exchange and returns the whole response text.
pub async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP response.
pub fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A plain GET with `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
    raw_http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}\r\n"),
    )
    .await
}

/// A WebSocket client speaking raw frames, for what a well-behaved client library
/// refuses to do (never answer pings, send oversized or broken frames).
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame the server sent: (fin, RSV bits and opcode (0x41: compressed text), payload).
pub type RawFrame = (bool, u8, Vec<u8>);

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient::connect_with(addr, "").await.0
    }

    /// Connects with extra request headers (each ending in `\r\n`); returns the client
    /// and the 101's head.
    pub async fn connect_with(addr: SocketAddr, extra_headers: &str) -> (RawClient, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        RawClient::await_101(stream).await
    }

    /// The upgrade request, for tests that send it their own way (in pieces, behind
    /// another request, with frames right behind it).
    pub fn upgrade_request(addr: SocketAddr) -> String {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    }

    /// Reads the server's answer up to the end of a 101's head (anything else panics);
    /// returns the client and the head. Bytes after it stay for [`RawClient::read_frame`].
    pub async fn await_101(mut stream: TcpStream) -> (RawClient, String) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "server closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                buf.drain(..end + 4);
                return (RawClient { stream, buf }, head);
            }
        }
    }

    /// The socket itself (after the handshake).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&encode_frame(fin, opcode, payload))
            .await
            .unwrap();
    }

    /// The next frame, or `None` once the server closed the TCP connection.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = decode_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("server answered in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until a close frame; returns its code and reason.
    pub async fn read_close(&mut self) -> (u16, String) {
        while let Some((_, opcode, payload)) = self.read_frame().await {
            if opcode == 8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).to_string());
            }
        }
        panic!("connection ended without a close frame");
    }
}

/// A client frame: masked with a fixed key.
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn decode_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x7F;
    let (len, mut at) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        at += 4; // servers never mask, but be tolerant
    }
    if buf.len() < at + len {
        return None;
    }
    Some(((fin, opcode, buf[at..at + len].to_vec()), at + len))
}
