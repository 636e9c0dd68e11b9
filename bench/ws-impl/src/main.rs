//! # Which WebSocket implementation should wshub read with?
//!
//! wshub reads and parses client frames with tokio-tungstenite and lets it write the control
//! frames (pong, close); data frames bypass it (encoded once, `writev` straight to the
//! socket). This program measures, for that use, tokio-tungstenite 0.30 against
//! fastwebsockets (Deno's) and yawc, all in the server role:
//!
//! 1. **Memory per connection**: `size_of` of the server-side object over a
//!    `tokio::net::TcpStream`, the size of its "read the next message" future (wshub's
//!    connection task holds it while idle), and the heap each one owns, counted by this
//!    binary's global allocator over 1,000 loopback connections, right after creation and
//!    after each has read one small frame.
//! 2. **Read path CPU**: ns per wire frame to parse pre-built masked client frames (64 B
//!    text, 4 KiB binary, and a mix with pings and fragments), best of several runs, over
//!    `tokio::io::duplex` (the library's own cost) and over loopback TCP (plus the read
//!    system calls its buffer size implies). A row with no library, reading the same bytes
//!    into an 8 KiB buffer, gives the floor that the transport alone costs.
//! 3. **What wshub needs**, probed by feeding each library crafted frames: the 5,120-byte
//!    limit (→ 1009), UTF-8 (→ 1007), fragments, automatic pong, close echo, unmasked
//!    frames (→ 1002), and whether a read cancelled by `select!` can be resumed.
//!
//! Each library is configured as wshub would configure it (see `Tungstenite::wshub`,
//! `FastWebSockets::wshub`, `Yawc::wshub`). Run from the repository root:
//!
//! ```text
//! cargo run --release --manifest-path bench/ws-impl/Cargo.toml
//! ```
//!
//! It measures for about ten seconds on 2 cores and prints Markdown. The results and the
//! conclusion drawn from them are in README.md beside this file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// wshub's `max_message_size` default: larger messages are refused with 1009.
const MAX_MESSAGE: usize = 5120;
/// Connections opened for the memory measurement.
const CONNECTIONS: usize = 1000;
/// Runs of each CPU measurement; the best (fastest) is reported.
const RUNS: usize = 5;

// ---------------------------------------------------------------------------------------
// Counting allocator: bytes and blocks currently allocated, by anyone in this process.

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes and blocks allocated right now.
fn live() -> (isize, isize) {
    (LIVE_BYTES.load(Relaxed), LIVE_BLOCKS.load(Relaxed))
}

// ---------------------------------------------------------------------------------------
// The libraries, reduced to what wshub's read pump looks at.

/// A byte stream a WebSocket can run over (a `TcpStream`, a `DuplexStream`).
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// What one read gives wshub's read pump.
#[derive(Debug)]
enum Event {
    Text(usize),
    Binary(usize),
    Ping,
    Pong,
    Close(Option<u16>),
    Error(String),
    Eof,
}

/// One WebSocket implementation, configured as wshub would configure it.
trait Impl {
    /// The server side of one connection over `S`.
    type Ws<S: Io>: Server;
    fn name(&self) -> &'static str;
    /// Wraps a stream whose handshake is done (wshub answers the upgrade itself).
    async fn wrap<S: Io>(&self, io: S) -> Self::Ws<S>;
    /// The no-library floor: counts bytes, not messages.
    fn is_floor(&self) -> bool {
        false
    }
}

trait Server {
    /// The next message or event, with each library's own automatic replies sent the way
    /// wshub would send them.
    async fn next(&mut self) -> Event;
    /// Size of the library's own "read the next message" future. wshub's connection task
    /// holds this future while the connection is idle, so it is per-connection memory.
    fn read_future_size(&mut self) -> usize;
}

/// tokio-tungstenite, as wshub uses it today.
struct Tungstenite {
    name: &'static str,
    config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
}

impl Tungstenite {
    /// wshub's `http/upgrade.rs::websocket_config` with the default config: 1 KiB buffers,
    /// 5,120-byte messages and frames.
    fn wshub() -> Self {
        Self::with_read_buffer("tokio-tungstenite (wshub config: 1 KiB read buffer)", 1024)
    }

    fn with_read_buffer(name: &'static str, read_buffer: usize) -> Self {
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .write_buffer_size(1024)
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        Self { name, config }
    }
}

struct TungsteniteWs<S>(tokio_tungstenite::WebSocketStream<S>);

impl Impl for Tungstenite {
    type Ws<S: Io> = TungsteniteWs<S>;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn wrap<S: Io>(&self, io: S) -> TungsteniteWs<S> {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            Role::Server,
            Some(self.config),
        )
        .await;
        TungsteniteWs(ws)
    }
}

impl<S: Io> Server for TungsteniteWs<S> {
    async fn next(&mut self) -> Event {
        use tokio_tungstenite::tungstenite::{Error, Message};
        loop {
            return match self.0.next().await {
                Some(Ok(Message::Text(text))) => Event::Text(text.len()),
                Some(Ok(Message::Binary(bytes))) => Event::Binary(bytes.len()),
                // As wshub's connection/mod.rs does: tungstenite queued the pong (or the echo
                // of the close); send it now rather than with the next write.
                Some(Ok(Message::Ping(_))) => match self.0.flush().await {
                    Ok(()) => Event::Ping,
                    Err(error) => Event::Error(error.to_string()),
                },
                Some(Ok(Message::Close(frame))) => {
                    let _ = self.0.flush().await;
                    Event::Close(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(Message::Pong(_))) => Event::Pong,
                Some(Ok(Message::Frame(_))) => continue, // only with raw frames enabled
                Some(Err(Error::Capacity(_))) => Event::Error("Capacity".into()),
                Some(Err(Error::Utf8(_))) => Event::Error("Utf8".into()),
                Some(Err(Error::Protocol(error))) => Event::Error(format!("Protocol({error:?})")),
                Some(Err(error)) => Event::Error(error.to_string()),
                None => Event::Eof,
            };
        }
    }

    fn read_future_size(&mut self) -> usize {
        std::mem::size_of_val(&self.0.next())
    }
}

/// fastwebsockets behind its `FragmentCollector` (wshub must accept fragmented messages).
struct FastWebSockets;

impl FastWebSockets {
    /// The limit is exclusive (`payload_len >= max_message_size` is refused), hence + 1.
    /// Automatic close and pong are the defaults; set here for the record.
    fn configure<S: Io>(ws: &mut fastwebsockets::WebSocket<S>) {
        ws.set_max_message_size(MAX_MESSAGE + 1);
        ws.set_auto_pong(true);
        ws.set_auto_close(true);
    }
}

struct FastWs<S>(fastwebsockets::FragmentCollector<S>);

impl Impl for FastWebSockets {
    type Ws<S: Io> = FastWs<S>;

    fn name(&self) -> &'static str {
        "fastwebsockets (FragmentCollector)"
    }

    async fn wrap<S: Io>(&self, io: S) -> FastWs<S> {
        let mut ws = fastwebsockets::WebSocket::after_handshake(io, fastwebsockets::Role::Server);
        Self::configure(&mut ws);
        FastWs(fastwebsockets::FragmentCollector::new(ws))
    }
}

impl<S: Io> Server for FastWs<S> {
    async fn next(&mut self) -> Event {
        use fastwebsockets::{OpCode, WebSocketError};
        // Pings are answered inside `read_frame` (it writes the pong itself) and not
        // returned; continuations are assembled by the collector.
        match self.0.read_frame().await {
            Ok(frame) => match frame.opcode {
                OpCode::Text => Event::Text(frame.payload.len()),
                OpCode::Binary => Event::Binary(frame.payload.len()),
                OpCode::Close => Event::Close(
                    (frame.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]])),
                ),
                OpCode::Ping => Event::Ping,
                OpCode::Pong => Event::Pong,
                OpCode::Continuation => Event::Error("stray continuation".into()),
            },
            Err(WebSocketError::UnexpectedEOF) => Event::Eof,
            Err(error) => Event::Error(format!("{error:?}")),
        }
    }

    fn read_future_size(&mut self) -> usize {
        std::mem::size_of_val(&self.0.read_frame())
    }
}

/// yawc's `WebSocket` (it reassembles fragments and queues pong and close replies).
struct Yawc {
    name: &'static str,
    options: yawc::Options,
}

impl Yawc {
    /// Limits are exclusive, hence + 1: one frame, and all fragments of one message.
    /// UTF-8 checking is off by default in yawc; wshub needs it on.
    fn wshub() -> Self {
        Self {
            name: "yawc (default 8 KiB buffers)",
            options: Self::limits(),
        }
    }

    /// The "many idle connections" setting from yawc's docs.
    fn small_buffers() -> Self {
        Self {
            name: "yawc (1 KiB buffers)",
            options: Self::limits()
                .with_read_buffer_capacity(1024)
                .with_write_buffer_capacity(1024),
        }
    }

    /// Buffers of 0 bytes: yawc gives a read buffer back after each frame larger than the
    /// configured capacity, so an idle connection holds none (reads then start small).
    fn no_idle_buffers() -> Self {
        Self {
            name: "yawc (0 B buffers: none while idle)",
            options: Self::limits()
                .with_read_buffer_capacity(0)
                .with_write_buffer_capacity(0),
        }
    }

    fn limits() -> yawc::Options {
        yawc::Options::default()
            .with_utf8()
            .with_max_payload_read(MAX_MESSAGE + 1)
            .with_max_read_buffer(MAX_MESSAGE + 1)
    }
}

struct YawcWs<S>(yawc::WebSocket<S>);

impl Impl for Yawc {
    type Ws<S: Io> = YawcWs<S>;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn wrap<S: Io>(&self, io: S) -> YawcWs<S> {
        let ws = yawc::WebSocket::from_stream(io, yawc::Role::Server, self.options.clone());
        YawcWs(ws.expect("yawc refused a plain stream"))
    }
}

impl<S: Io> Server for YawcWs<S> {
    async fn next(&mut self) -> Event {
        use yawc::OpCode;
        match self.0.next_frame().await {
            Ok(frame) => match frame.opcode() {
                OpCode::Text => Event::Text(frame.payload().len()),
                OpCode::Binary => Event::Binary(frame.payload().len()),
                OpCode::Close => {
                    // yawc queued the echo; the next read writes it (and reports the end).
                    let _ = self.0.next_frame().await;
                    Event::Close(frame.close_code().map(u16::from))
                }
                // The pong is queued and written when the next read would wait.
                OpCode::Ping => Event::Ping,
                OpCode::Pong => Event::Pong,
                OpCode::Continuation => Event::Error("stray continuation".into()),
            },
            Err(yawc::WebSocketError::ConnectionClosed) => Event::Eof,
            Err(error) => Event::Error(format!("{error:?}")),
        }
    }

    fn read_future_size(&mut self) -> usize {
        std::mem::size_of_val(&self.0.next_frame())
    }
}

/// No library: reads the bytes into an 8 KiB buffer and looks at nothing. The cost of
/// the transport and the client alone, for scale.
struct Floor;

struct FloorWs<S> {
    io: S,
    buffer: Vec<u8>,
}

impl Impl for Floor {
    type Ws<S: Io> = FloorWs<S>;

    fn name(&self) -> &'static str {
        "no library (read into 8 KiB, parse nothing)"
    }

    async fn wrap<S: Io>(&self, io: S) -> FloorWs<S> {
        FloorWs {
            io,
            buffer: vec![0; 8192],
        }
    }

    fn is_floor(&self) -> bool {
        true
    }
}

impl<S: Io> Server for FloorWs<S> {
    async fn next(&mut self) -> Event {
        match self.io.read(&mut self.buffer).await {
            Ok(0) => Event::Eof,
            Ok(n) => Event::Binary(n),
            Err(error) => Event::Error(error.to_string()),
        }
    }

    fn read_future_size(&mut self) -> usize {
        0
    }
}

// ---------------------------------------------------------------------------------------
// Client frames: what a browser sends (masked; the mask varies per frame).

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// Builds client frames into one buffer, each with its own masking key.
struct Client {
    wire: Vec<u8>,
    /// xorshift state for the masking keys: deterministic, different per frame.
    seed: u32,
}

impl Client {
    fn new() -> Self {
        Self {
            wire: Vec::new(),
            seed: 0x9E37_79B9,
        }
    }

    fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> &mut Self {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 17;
        self.seed ^= self.seed << 5;
        let mask = self.seed.to_be_bytes();
        self.header(fin, opcode, payload.len(), true);
        self.wire.extend_from_slice(&mask);
        let masked = payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]);
        self.wire.extend(masked);
        self
    }

    /// A frame without a masking key, which a server must refuse (RFC 6455 §5.1).
    fn unmasked(&mut self, opcode: u8, payload: &[u8]) -> &mut Self {
        self.header(true, opcode, payload.len(), false);
        self.wire.extend_from_slice(payload);
        self
    }

    fn header(&mut self, fin: bool, opcode: u8, len: usize, masked: bool) {
        let mask_bit = if masked { 0x80 } else { 0 };
        self.wire.push(u8::from(fin) << 7 | opcode);
        match len {
            0..=125 => self.wire.push(mask_bit | len as u8),
            126..=0xFFFF => {
                self.wire.push(mask_bit | 126);
                self.wire.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.wire.push(mask_bit | 127);
                self.wire.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.wire)
    }
}

/// Printable ASCII, as a chat message's JSON would be.
fn text(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn binary(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Describes the frames a server wrote (unmasked), e.g. `pong, close 1009`.
fn server_frames(mut wire: &[u8]) -> String {
    let mut frames = Vec::new();
    while wire.len() >= 2 {
        let opcode = wire[0] & 0x0F;
        let (len, head) = match wire[1] & 0x7F {
            126 if wire.len() >= 4 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
            127 => break, // not expected from these probes
            len => (usize::from(len), 2),
        };
        let Some(payload) = wire.get(head..head + len) else {
            frames.push("(truncated frame)".to_owned());
            break;
        };
        frames.push(match opcode {
            0x8 if payload.len() >= 2 => {
                format!("close {}", u16::from_be_bytes([payload[0], payload[1]]))
            }
            0x8 => "close (no code)".to_owned(),
            0xA => "pong".to_owned(),
            other => format!("opcode {other:#x}"),
        });
        wire = &wire[head + len..];
    }
    if frames.is_empty() {
        "nothing".to_owned()
    } else {
        frames.join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// 1. Memory per connection.

struct MemoryRow {
    name: &'static str,
    size_of: usize,
    read_future: usize,
    created: (isize, isize),
    after_frame: (isize, isize),
}

/// Opens `CONNECTIONS` loopback connections, then wraps each server side and reads one
/// 16-byte text frame on each, counting the heap that this adds.
async fn memory<I: Impl>(imp: &I) -> MemoryRow {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut clients = Vec::with_capacity(CONNECTIONS);
    let mut servers = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let (client, server) = tcp_pair(&listener).await;
        clients.push(client);
        servers.push(server);
    }
    let frame = Client::new().frame(true, TEXT, &text(16)).take();
    // Allocated before the baseline, so that only what the libraries allocate counts.
    let mut conns: Vec<I::Ws<TcpStream>> = Vec::with_capacity(CONNECTIONS);

    let before = live();
    for server in servers.drain(..) {
        conns.push(imp.wrap(server).await);
    }
    let created = live();
    for client in &mut clients {
        client.write_all(&frame).await.expect("client write");
    }
    for ws in &mut conns {
        match ws.next().await {
            Event::Text(16) => {}
            other => panic!(
                "{}: expected a 16-byte text message, got {other:?}",
                imp.name()
            ),
        }
    }
    let after_frame = live();

    let per_conn = |(bytes, blocks): (isize, isize)| {
        let n = CONNECTIONS as isize;
        ((bytes - before.0) / n, (blocks - before.1) / n)
    };
    MemoryRow {
        name: imp.name(),
        size_of: std::mem::size_of::<I::Ws<TcpStream>>(),
        read_future: conns[0].read_future_size(),
        created: per_conn(created),
        after_frame: per_conn(after_frame),
    }
}

async fn tcp_pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let addr = listener.local_addr().expect("listener address");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client.expect("connect");
    let (server, _) = accepted.expect("accept");
    client.set_nodelay(true).expect("nodelay");
    server.set_nodelay(true).expect("nodelay");
    (client, server)
}

// ---------------------------------------------------------------------------------------
// 2. Read path CPU.

/// A pre-built stream of client frames and what reading it must yield.
struct Workload {
    name: &'static str,
    wire: Vec<u8>,
    frames: usize,
    messages: usize,
    payload: usize,
}

impl Workload {
    fn text_64(n: usize) -> Self {
        let mut client = Client::new();
        let payload = text(64);
        for _ in 0..n {
            client.frame(true, TEXT, &payload);
        }
        Self {
            name: "64 B text",
            wire: client.take(),
            frames: n,
            messages: n,
            payload: n * 64,
        }
    }

    fn binary_4k(n: usize) -> Self {
        let mut client = Client::new();
        let payload = binary(4096);
        for _ in 0..n {
            client.frame(true, BINARY, &payload);
        }
        Self {
            name: "4 KiB binary",
            wire: client.take(),
            frames: n,
            messages: n,
            payload: n * 4096,
        }
    }

    /// Per cycle, 10 wire frames making 7 messages: five 64 B texts, a 1 KiB binary, a
    /// ping (8 B) and a 120 B text sent as three fragments.
    fn mix(cycles: usize) -> Self {
        let mut client = Client::new();
        let (small, kib, part) = (text(64), binary(1024), text(40));
        for _ in 0..cycles {
            for _ in 0..5 {
                client.frame(true, TEXT, &small);
            }
            client.frame(true, BINARY, &kib);
            client.frame(true, PING, b"keepaliv");
            client.frame(false, TEXT, &part);
            client.frame(false, CONTINUATION, &part);
            client.frame(true, CONTINUATION, &part);
        }
        Self {
            name: "mix (pings, fragments)",
            wire: client.take(),
            frames: cycles * 10,
            messages: cycles * 7,
            payload: cycles * (5 * 64 + 1024 + 120),
        }
    }
}

#[derive(Clone, Copy)]
enum Transport {
    Duplex,
    Tcp,
}

/// Best ns per wire frame over `RUNS` runs, and the pongs the server wrote in the last.
async fn cpu<I: Impl>(imp: &I, workload: &Workload, transport: Transport) -> (f64, usize) {
    let mut best = Duration::MAX;
    let mut pongs = 0;
    for _ in 0..RUNS {
        let (elapsed, written_back) = match transport {
            // 64 KiB each way, about what a loopback socket buffers.
            Transport::Duplex => {
                let (client, server) = tokio::io::duplex(64 * 1024);
                read_all(imp, server, client, workload).await
            }
            Transport::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let (client, server) = tcp_pair(&listener).await;
                read_all(imp, server, client, workload).await
            }
        };
        best = best.min(elapsed);
        pongs = written_back / 10; // a pong with 8 bytes of payload is 10 bytes on the wire
    }
    (best.as_nanos() as f64 / workload.frames as f64, pongs)
}

/// One run: the client writes the whole workload (and reads whatever the server writes
/// back) while the server reads every message. Timed from the first byte written to the
/// last message read, on one thread (the runtime is current-thread).
async fn read_all<I: Impl, S: Io, C: Io>(
    imp: &I,
    server: S,
    client: C,
    workload: &Workload,
) -> (Duration, usize) {
    let mut ws = imp.wrap(server).await;
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let expected_bytes = if imp.is_floor() {
        workload.wire.len()
    } else {
        workload.payload
    };
    let start = Instant::now();

    let send = async {
        to_server
            .write_all(&workload.wire)
            .await
            .expect("client write");
        // End of input: a library that loses a message then fails instead of waiting.
        to_server.shutdown().await.expect("client shutdown");
    };
    let drain = async {
        let mut buffer = vec![0; 64 * 1024];
        let mut total = 0;
        while let Ok(n @ 1..) = from_server.read(&mut buffer).await {
            total += n;
        }
        total
    };
    let read = async move {
        let (mut messages, mut bytes) = (0, 0);
        while bytes < expected_bytes {
            match ws.next().await {
                Event::Text(n) | Event::Binary(n) => {
                    messages += 1;
                    bytes += n;
                }
                Event::Ping | Event::Pong => {}
                other => panic!("{}: {other:?} after {messages} messages", imp.name()),
            }
        }
        let elapsed = start.elapsed();
        assert_eq!(bytes, expected_bytes, "{}: payload bytes", imp.name());
        if !imp.is_floor() {
            assert_eq!(messages, workload.messages, "{}: messages", imp.name());
        }
        drop(ws); // the client's drain sees the end
        elapsed
    };
    let ((), written_back, elapsed) = tokio::join!(send, drain, read);
    (elapsed, written_back)
}

// ---------------------------------------------------------------------------------------
// 3. What wshub needs: each library fed crafted frames.

struct Probe {
    name: &'static str,
    wire: Vec<u8>,
    /// Write only this many bytes first, let a read start and cancel it (as wshub's
    /// `select!` does whenever the outbox is ready first), then write the rest.
    cancel_after: Option<usize>,
}

fn probes() -> Vec<Probe> {
    let probe = |name, wire| Probe {
        name,
        wire,
        cancel_after: None,
    };
    let mut c = Client::new();
    vec![
        probe(
            "5,120 B binary frame (at the limit)",
            c.frame(true, BINARY, &binary(MAX_MESSAGE)).take(),
        ),
        probe(
            "5,121 B binary frame (over the limit: 1009)",
            c.frame(true, BINARY, &binary(MAX_MESSAGE + 1)).take(),
        ),
        probe(
            "6,144 B in three 2,048 B fragments (1009)",
            c.frame(false, BINARY, &binary(2048))
                .frame(false, CONTINUATION, &binary(2048))
                .frame(true, CONTINUATION, &binary(2048))
                .take(),
        ),
        probe(
            "text frame with invalid UTF-8 (1007)",
            c.frame(true, TEXT, b"ab\xFFcd").take(),
        ),
        probe(
            "invalid UTF-8 across two fragments (1007)",
            c.frame(false, TEXT, b"ab\xC3")
                .frame(true, CONTINUATION, b"\x28")
                .take(),
        ),
        probe(
            "\"hel\" + ping + \"lo\" + \"!\" (fragments, pong)",
            c.frame(false, TEXT, b"hel")
                .frame(true, PING, b"p")
                .frame(false, CONTINUATION, b"lo")
                .frame(true, CONTINUATION, b"!")
                .take(),
        ),
        probe(
            "close 1000 (echoed)",
            c.frame(true, CLOSE, &1000u16.to_be_bytes()).take(),
        ),
        probe(
            "unmasked client frame (1002)",
            c.unmasked(TEXT, b"hello").take(),
        ),
        Probe {
            name: "read cancelled after 3 header bytes, resumed",
            wire: c.frame(true, TEXT, b"hello").take(),
            cancel_after: Some(3),
        },
    ]
}

/// Runs one probe: what the application saw, then what the library wrote back.
async fn probe<I: Impl>(imp: &I, probe: &Probe) -> String {
    const QUIET: Duration = Duration::from_millis(50);
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let mut ws = imp.wrap(server).await;
    let mut seen = Vec::new();

    let rest = match probe.cancel_after {
        Some(split) => {
            client
                .write_all(&probe.wire[..split])
                .await
                .expect("client write");
            if let Ok(event) = tokio::time::timeout(Duration::from_millis(20), ws.next()).await {
                seen.push(format!("{event:?} before the rest"));
            }
            &probe.wire[split..]
        }
        None => &probe.wire[..],
    };
    client.write_all(rest).await.expect("client write");
    // Read until the library ends the connection or has nothing more to say.
    loop {
        match tokio::time::timeout(QUIET, ws.next()).await {
            Err(_) => break,
            Ok(event) => {
                let end = matches!(event, Event::Close(_) | Event::Error(_) | Event::Eof);
                seen.push(match event {
                    Event::Text(n) => format!("text {n} B"),
                    Event::Binary(n) => format!("binary {n} B"),
                    Event::Ping => "ping".into(),
                    Event::Pong => "pong".into(),
                    Event::Close(code) => format!("close {code:?}"),
                    Event::Error(error) => format!("error {error}"),
                    Event::Eof => "end of stream".into(),
                });
                if end {
                    break;
                }
            }
        }
    }
    drop(ws);
    let mut written = Vec::new();
    client.read_to_end(&mut written).await.expect("client read");
    let seen = if seen.is_empty() {
        "nothing".to_owned()
    } else {
        seen.join(", ")
    };
    format!("{seen}; wrote {}", server_frames(&written))
}

// ---------------------------------------------------------------------------------------

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(report());
}

async fn report() {
    let tungstenite = Tungstenite::wshub();
    let tungstenite_8k =
        Tungstenite::with_read_buffer("tokio-tungstenite (8 KiB read buffer)", 8192);
    let fast = FastWebSockets;
    let yawc = Yawc::wshub();
    let yawc_small = Yawc::small_buffers();
    let yawc_none = Yawc::no_idle_buffers();

    println!("# WebSocket implementations for wshub's read path\n");
    println!("Versions: {}\n", env!("MEASURED_VERSIONS"));
    println!(
        "Machine: {}, {} CPUs; current-thread tokio runtime.\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!("## 1. Memory per connection\n");
    println!(
        "{CONNECTIONS} loopback connections. `size_of` is the object over a `TcpStream` \
         (itself {} B); heap is the bytes and allocations live per connection, as requested \
         from the allocator (before its overhead); total idle = size_of + read future + \
         heap after the first frame.\n",
        std::mem::size_of::<TcpStream>()
    );
    println!(
        "| implementation | size_of | read future | heap after creation | heap after 1st frame | total idle |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let rows = [
        memory(&tungstenite).await,
        memory(&tungstenite_8k).await,
        memory(&fast).await,
        memory(&yawc).await,
        memory(&yawc_small).await,
        memory(&yawc_none).await,
    ];
    for row in rows {
        println!(
            "| {} | {} B | {} B | {} B / {} allocs | {} B / {} allocs | {} B |",
            row.name,
            row.size_of,
            row.read_future,
            row.created.0,
            row.created.1,
            row.after_frame.0,
            row.after_frame.1,
            row.size_of as isize + row.read_future as isize + row.after_frame.0,
        );
    }

    println!("\n## 2. Read path CPU\n");
    let workloads = [
        Workload::text_64(100_000),
        Workload::binary_4k(10_000),
        Workload::mix(10_000),
    ];
    for w in &workloads {
        println!(
            "- {}: {} frames, {} messages, {:.1} MB on the wire",
            w.name,
            w.frames,
            w.messages,
            w.wire.len() as f64 / 1e6
        );
    }
    for (transport, title) in [
        (Transport::Duplex, "`tokio::io::duplex` (64 KiB)"),
        (Transport::Tcp, "loopback TCP"),
    ] {
        println!(
            "\n### Over {title}: ns per wire frame (frames/s), best of {RUNS}; pongs written in the mix\n"
        );
        print!("| implementation |");
        for w in &workloads {
            print!(" {} |", w.name);
        }
        println!(" pongs |");
        println!("|---|---:|---:|---:|---:|");
        cpu_row(&Floor, &workloads, transport).await;
        cpu_row(&tungstenite, &workloads, transport).await;
        cpu_row(&tungstenite_8k, &workloads, transport).await;
        cpu_row(&fast, &workloads, transport).await;
        cpu_row(&yawc, &workloads, transport).await;
        cpu_row(&yawc_small, &workloads, transport).await;
        cpu_row(&yawc_none, &workloads, transport).await;
    }

    println!("\n## 3. What wshub needs, probed\n");
    println!(
        "Each cell: what the application saw; what the library itself wrote to the peer. \
         Limits set to wshub's {MAX_MESSAGE} bytes.\n"
    );
    println!(
        "| input | {} | {} | {} |",
        tungstenite.name(),
        fast.name(),
        yawc.name()
    );
    println!("|---|---|---|---|");
    for p in probes() {
        println!(
            "| {} | {} | {} | {} |",
            p.name,
            probe(&tungstenite, &p).await,
            probe(&fast, &p).await,
            probe(&yawc, &p).await,
        );
    }
}

async fn cpu_row<I: Impl>(imp: &I, workloads: &[Workload], transport: Transport) {
    print!("| {} |", imp.name());
    let mut pongs = 0;
    for w in workloads {
        let (ns, p) = cpu(imp, w, transport).await;
        print!(" {ns:.0} ({:.2} M/s) |", 1e3 / ns);
        pongs = p; // the mix is last
    }
    println!(" {pongs} |");
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
