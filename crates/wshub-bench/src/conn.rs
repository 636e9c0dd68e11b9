//! One client connection inside a worker: connect (bound to its source address), the
//! hand-written handshake and (`wshub.v1`) the subscribe command, the receive path (one
//! `read` per wake-up into the worker's shared buffer, frames decoded in place, each
//! message's header parsed and counted, each push's offset checked, pings answered), the
//! sender logic (closed loop and fixed rate; raw messages or publish commands) and the close
//! handshake.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::deflate::{self, Inflater};
use crate::hist::Histogram;
use crate::payload::{self, Payload};
use crate::proto::{Counters, Mode, OffsetCheck, Plan, Schedule, SenderAnomaly, TargetTally};
use crate::sys::now_us;
use crate::v1::{self, Frame};
use crate::wire::{self, Decoder, Event, HEADER_LEN, Header, MAX_CARRY};

/// Bytes read per `read` call (one buffer per worker, shared by all its connections).
const READ_BUF: usize = 256 * 1024;
/// A fixed-rate sender stops generating (and lets the schedule slip) above this much unsent
/// output.
const OUT_HIGH: usize = 256 * 1024;
/// A closed-loop sender that gets none of its messages back for this long starts over.
const STALL: Duration = Duration::from_secs(5);

/// A worker's counters and buffers, shared by all its connection tasks (one thread).
#[derive(Debug)]
pub(crate) struct Shared {
    /// The worker's plan.
    pub(crate) plan: Plan,
    buf: RefCell<Vec<u8>>,
    /// Inflates compressed messages for every connection (contexts are reset per message).
    inflater: RefCell<Inflater>,
    /// The measured window (warm-up end, window end), µs; `u64::MAX` until `Go`.
    pub(crate) window: Cell<(u64, u64)>,
    pub(crate) opened: Cell<u64>,
    pub(crate) failed: Cell<u64>,
    pub(crate) alive: Cell<u64>,
    pub(crate) dropped: Cell<u64>,
    pub(crate) sent: Cell<u64>,
    pub(crate) sent_measured: Cell<u64>,
    pub(crate) delivered: Cell<u64>,
    pub(crate) received: Cell<u64>,
    pub(crate) received_in_window: Cell<u64>,
    pub(crate) cycles_ok: Cell<u64>,
    pub(crate) cycles_failed: Cell<u64>,
    pub(crate) foreign: Cell<u64>,
    pub(crate) pings: Cell<u64>,
    pub(crate) stalls: Cell<u64>,
    pub(crate) backlog_skipped: Cell<u64>,
    /// Handshakes the server answered without the permessage-deflate we offered.
    pub(crate) declined: Cell<u64>,
    /// Deliveries of this run's messages received compressed during the window.
    pub(crate) compressed_in_window: Cell<u64>,
    /// Bytes read from the sockets during the window (frames as they travel).
    pub(crate) wire_received: Cell<u64>,
    /// Bytes written to the sockets during the window.
    pub(crate) wire_sent: Cell<u64>,
    /// Latencies (fan-out) or handshake times (churn), µs.
    pub(crate) hist: RefCell<Histogram>,
    /// Fan-out: latencies of senders' own copies (the closed loop's round trip), µs.
    pub(crate) echo_hist: RefCell<Histogram>,
    /// Per global sender id.
    pub(crate) anomalies: RefCell<Vec<SenderAnomaly>>,
    /// Channel: offsets seen by the subscribers, publish replies.
    pub(crate) offsets: RefCell<OffsetCheck>,
    /// Channel: how a push on the subscribed channel starts (`v1::push_head`).
    push_head: Vec<u8>,
    errors: RefCell<BTreeMap<String, u64>>,
    /// With several servers: per server of `plan.targets` (empty with one).
    per_target: Vec<PerTarget>,
}

/// One server's connections and deliveries (with several servers).
#[derive(Debug, Default)]
struct PerTarget {
    opened: Cell<u64>,
    delivered: Cell<u64>,
    hist: RefCell<Histogram>,
}

#[inline]
fn bump(cell: &Cell<u64>, by: u64) {
    cell.set(cell.get() + by);
}

impl Shared {
    /// Fresh counters for `plan`.
    pub(crate) fn new(plan: Plan) -> Self {
        let senders = if matches!(plan.mode, Mode::Fanout | Mode::Channel) {
            plan.senders as usize
        } else {
            0
        };
        Self {
            buf: RefCell::new(vec![0; MAX_CARRY + READ_BUF]),
            inflater: RefCell::new(Inflater::default()),
            window: Cell::new((u64::MAX, u64::MAX)),
            opened: Cell::default(),
            failed: Cell::default(),
            alive: Cell::default(),
            dropped: Cell::default(),
            sent: Cell::default(),
            sent_measured: Cell::default(),
            delivered: Cell::default(),
            received: Cell::default(),
            received_in_window: Cell::default(),
            cycles_ok: Cell::default(),
            cycles_failed: Cell::default(),
            foreign: Cell::default(),
            pings: Cell::default(),
            stalls: Cell::default(),
            backlog_skipped: Cell::default(),
            declined: Cell::default(),
            compressed_in_window: Cell::default(),
            wire_received: Cell::default(),
            wire_sent: Cell::default(),
            hist: RefCell::new(Histogram::new()),
            echo_hist: RefCell::new(Histogram::new()),
            anomalies: RefCell::new(
                (0..senders)
                    .map(|s| SenderAnomaly {
                        sender: s as u32,
                        ..SenderAnomaly::default()
                    })
                    .collect(),
            ),
            offsets: RefCell::new(OffsetCheck::default()),
            push_head: plan
                .channel
                .as_deref()
                .map(v1::push_head)
                .unwrap_or_default(),
            errors: RefCell::new(BTreeMap::new()),
            per_target: if plan.targets.len() > 1 {
                (0..plan.targets.len())
                    .map(|_| PerTarget::default())
                    .collect()
            } else {
                Vec::new()
            },
            plan,
        }
    }

    /// Counts a connection opened to target `target`.
    pub(crate) fn opened_to(&self, target: usize) {
        if let Some(t) = self.per_target.get(target) {
            bump(&t.opened, 1);
        }
    }

    /// Per server of the plan (empty with one server).
    pub(crate) fn per_target(&self) -> Vec<TargetTally> {
        self.per_target
            .iter()
            .map(|t| TargetTally {
                opened: t.opened.get(),
                delivered: t.delivered.get(),
                latency: t.hist.borrow().to_sparse(),
            })
            .collect()
    }

    /// Whether wall-clock time `now` (µs) is inside the measured window.
    #[inline]
    fn in_window(&self, now: u64) -> bool {
        let (warmup_end, window_end) = self.window.get();
        now >= warmup_end && now < window_end
    }

    /// Counts `n` bytes written to a socket now.
    #[inline]
    fn wrote(&self, n: usize) {
        if self.in_window(now_us()) {
            bump(&self.wire_sent, n as u64);
        }
    }

    /// Counts one error of kind `what`.
    pub(crate) fn error(&self, what: String) {
        *self.errors.borrow_mut().entry(what).or_default() += 1;
    }

    /// Errors by kind.
    pub(crate) fn errors(&self) -> Vec<(String, u64)> {
        self.errors
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// A snapshot of the counters.
    pub(crate) fn counters(&self) -> Counters {
        Counters {
            opened: self.opened.get(),
            failed: self.failed.get(),
            alive: self.alive.get(),
            dropped: self.dropped.get(),
            sent: self.sent.get(),
            sent_measured: self.sent_measured.get(),
            delivered: self.delivered.get(),
            received: self.received.get(),
            received_in_window: self.received_in_window.get(),
            cycles_ok: self.cycles_ok.get(),
            cycles_failed: self.cycles_failed.get(),
            declined: self.declined.get(),
        }
    }

    /// The sender id of global connection `index`, if it is one: senders are spread evenly
    /// over the connections (every `total / senders`-th).
    pub(crate) fn sender_of(&self, index: u64) -> Option<u32> {
        let plan = &self.plan;
        if !matches!(plan.mode, Mode::Fanout | Mode::Channel) || plan.senders == 0 {
            return None;
        }
        let stride = (plan.total / plan.senders).max(1);
        (index % stride == 0 && index / stride < plan.senders).then_some((index / stride) as u32)
    }
}

/// Why a drive step returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// Data was read and handled.
    Data,
    /// The server closed the TCP connection.
    Eof,
}

/// An open WebSocket connection.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    decoder: Decoder,
    carry: Vec<u8>,
    out: Vec<u8>,
    /// Per sender: the sequence number expected next (fan-out only).
    next_seq: Vec<u32>,
    /// This connection's sender id, if it sends.
    me: Option<u32>,
    /// Own messages received back since the sender logic last looked.
    echoes: u32,
    /// The server sent a close frame (or broke the protocol).
    closing: bool,
    /// We sent a close frame.
    close_sent: bool,
    /// `wshub.v1` with a channel: the subscription and its offsets.
    subscription: Option<Subscription>,
    /// Which of the plan's targets this connection went to.
    pub(crate) target: usize,
}

/// Where a subscription stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SubState {
    /// The subscribe command is out, no reply yet.
    Waiting,
    /// Subscribed; the next push must carry this offset.
    Live { next: u64 },
    /// The server refused (code and message).
    Failed(String),
}

/// A `wshub.v1` connection's subscription to the plan's channel.
#[derive(Debug)]
struct Subscription {
    state: SubState,
    /// This subscriber has counted in `subscribers_affected` already.
    affected: bool,
}

impl Subscription {
    /// Handles one server frame (its prefix): checks a push's offset and returns its data
    /// (empty for frames that are neither pushes nor replies, so they count as foreign);
    /// consumes replies (`None`): the subscribe reply starts the offset check, publish
    /// replies are counted as acknowledgements or errors, never as deliveries.
    #[inline]
    fn frame<'a>(&mut self, shared: &Shared, payload: &'a [u8]) -> Option<&'a [u8]> {
        match v1::parse(payload, &shared.push_head) {
            Frame::Push { offset, data } => {
                if let SubState::Live { next } = &mut self.state {
                    let mut check = shared.offsets.borrow_mut();
                    check.pushes += 1;
                    if offset == *next {
                        *next += 1;
                    } else {
                        if offset > *next {
                            check.gaps += offset - *next;
                            *next = offset + 1;
                        } else {
                            check.duplicates += 1;
                        }
                        if !self.affected {
                            self.affected = true;
                            check.subscribers_affected += 1;
                        }
                    }
                }
                Some(v1::data_header(data).unwrap_or_default())
            }
            Frame::Result { id, offset } => {
                if id == Some(v1::SUBSCRIBE_ID) && self.state == SubState::Waiting {
                    self.state = match offset {
                        Some(offset) => SubState::Live { next: offset + 1 },
                        None => SubState::Failed("reply without an offset".into()),
                    };
                } else {
                    shared.offsets.borrow_mut().publish_acks += 1;
                }
                None
            }
            Frame::Error { id, code, message } => {
                if id == Some(v1::SUBSCRIBE_ID) && self.state == SubState::Waiting {
                    self.state = SubState::Failed(format!("{code} {message}"));
                } else {
                    shared.offsets.borrow_mut().publish_errors += 1;
                    shared.error(format!("publish: {code} {message}"));
                }
                None
            }
            Frame::Other => Some(&[]),
        }
    }
}

/// Connects (from `source`, if given) and performs the WebSocket handshake. Errors are short
/// descriptions, used as error kinds in the report.
pub(crate) async fn open(
    shared: &Shared,
    target: usize,
    source: Option<std::net::IpAddr>,
    me: Option<u32>,
) -> Result<Conn, String> {
    let plan = &shared.plan;
    let server = plan
        .targets
        .get(target)
        .ok_or_else(|| format!("no target {target}"))?;
    let socket = match server.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(source) = source {
        // Let connect() pick the port (unique per 4-tuple, found quickly) instead of bind():
        // bind(port 0) searches the odd ports first and gets slow once they are used up,
        // about 14,000 sockets into one source address.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let mut stream = socket
        .connect(server.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let key = wire::new_key();
    let protocol = plan.protocol.as_deref();
    let offer = plan.deflate.then_some(deflate::OFFER);
    stream
        .write_all(wire::request(&server.host, &server.path, &key, protocol, offer).as_bytes())
        .await
        .map_err(|e| format!("handshake write: {e}"))?;
    let mut head = Vec::with_capacity(512);
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("handshake read: {e}"))?;
        if n == 0 {
            return Err("closed during handshake".into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = wire::head_end(&head) {
            break end;
        }
        if head.len() > 16 * 1024 {
            return Err("handshake response too long".into());
        }
    };
    wire::check_response(&head[..end], &key, protocol).map_err(|e| format!("handshake: {e}"))?;
    let agreed =
        deflate::check_answer(&head[..end], plan.deflate).map_err(|e| format!("handshake: {e}"))?;
    if plan.deflate && !agreed {
        bump(&shared.declined, 1);
        return Err(deflate::DECLINED.into());
    }
    let mut conn = Conn {
        stream,
        decoder: if plan.channel.is_some() {
            Decoder::new(v1::PREFIX)
        } else {
            Decoder::new(plan.payload.header_at() + HEADER_LEN)
        }
        .with_deflate(agreed),
        carry: Vec::new(),
        out: Vec::new(),
        next_seq: if me.is_some() || matches!(plan.mode, Mode::Fanout | Mode::Channel) {
            vec![0; plan.senders as usize]
        } else {
            Vec::new()
        },
        me,
        echoes: 0,
        closing: false,
        close_sent: false,
        subscription: plan.channel.as_ref().map(|_| Subscription {
            state: SubState::Waiting,
            affected: false,
        }),
        target,
    };
    let mut rest = head.split_off(end);
    if !rest.is_empty() {
        let used = conn.handle(shared, &mut rest, now_us());
        conn.carry.extend_from_slice(&rest[used..]);
    }
    if let Some(channel) = &plan.channel {
        conn.subscribe(shared, channel).await?;
    }
    Ok(conn)
}

impl Conn {
    /// Sends the subscribe command and waits for its reply (pings are answered meanwhile);
    /// the error is a short description for the report.
    async fn subscribe(&mut self, shared: &Shared, channel: &str) -> Result<(), String> {
        let command = v1::subscribe(channel, v1::SUBSCRIBE_ID, None);
        wire::push_frame(&mut self.out, wire::op::TEXT, command.as_bytes());
        let mut chunk = vec![0u8; 4096];
        loop {
            if !self.out.is_empty() {
                self.stream
                    .write_all(&self.out)
                    .await
                    .map_err(|e| format!("subscribe write: {e}"))?;
                self.out.clear();
            }
            match self.subscription.as_ref().map(|s| &s.state) {
                Some(SubState::Waiting) => {}
                Some(SubState::Failed(why)) => return Err(format!("subscribe: {why}")),
                _ => return Ok(()),
            }
            if self.closing {
                return Err("closed before the subscribe reply".into());
            }
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("subscribe read: {e}"))?;
            if n == 0 {
                return Err("closed before the subscribe reply".into());
            }
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(&chunk[..n]);
            let used = self.handle(shared, &mut buf, now_us());
            self.carry = buf[used..].to_vec();
        }
    }

    /// Decodes `bytes` (carry already in front) and handles every complete event; returns
    /// how many bytes were used.
    fn handle(&mut self, shared: &Shared, bytes: &mut [u8], now: u64) -> usize {
        let Conn {
            decoder,
            out,
            next_seq,
            me,
            echoes,
            closing,
            close_sent,
            subscription,
            target,
            ..
        } = self;
        let per_target = shared.per_target.get(*target);
        let plan = &shared.plan;
        let header_at = plan.payload.header_at();
        let in_window = shared.in_window(now);
        let mut inflater = shared.inflater.borrow_mut();
        decoder.feed(bytes, &mut inflater, |event| match event {
            Event::Message {
                prefix: payload,
                compressed,
            } => {
                let header = match subscription.as_mut() {
                    None => Header::parse(payload.get(header_at..).unwrap_or_default()),
                    Some(subscription) => match subscription.frame(shared, payload) {
                        Some(data) => Header::parse(data),
                        None => return,
                    },
                };
                let Some(h) = header.filter(|h| h.tag == plan.tag) else {
                    bump(&shared.foreign, 1);
                    return;
                };
                bump(&shared.received, 1);
                if in_window {
                    bump(&shared.received_in_window, 1);
                    if compressed {
                        bump(&shared.compressed_in_window, 1);
                    }
                }
                if h.measured {
                    bump(&shared.delivered, 1);
                    let latency = now.saturating_sub(h.sent_us);
                    shared.hist.borrow_mut().record(latency);
                    if let Some(t) = per_target {
                        bump(&t.delivered, 1);
                        t.hist.borrow_mut().record(latency);
                    }
                }
                if *me == Some(h.sender) {
                    *echoes += 1;
                    if h.measured {
                        shared
                            .echo_hist
                            .borrow_mut()
                            .record(now.saturating_sub(h.sent_us));
                    }
                }
                if let Some(next) = next_seq.get_mut(h.sender as usize) {
                    let expected = *next;
                    if h.seq == expected {
                        *next = expected.wrapping_add(1);
                    } else {
                        let mut anomalies = shared.anomalies.borrow_mut();
                        if let Some(a) = anomalies.get_mut(h.sender as usize) {
                            if h.seq > expected {
                                a.skipped += u64::from(h.seq - expected);
                                *next = h.seq.wrapping_add(1);
                            } else if h.seq.wrapping_add(1) == expected {
                                a.duplicates += 1;
                            } else {
                                a.out_of_order += 1;
                            }
                        }
                    }
                } else {
                    bump(&shared.foreign, 1);
                }
            }
            Event::Ping(payload) => {
                bump(&shared.pings, 1);
                wire::push_frame(out, wire::op::PONG, payload);
            }
            Event::Close => {
                *closing = true;
                if !*close_sent {
                    wire::push_close(out);
                    *close_sent = true;
                }
            }
            Event::Bad(violation) => {
                shared.error(format!("protocol: {violation} from server"));
                *closing = true;
            }
        })
    }

    /// Writes what it can of `out` and reads once; handles what was read.
    fn poll_drive(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<io::Result<Drive>> {
        while !self.out.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.out.drain(..n);
                    shared.wrote(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        let mut buf = shared.buf.borrow_mut();
        let (front, back) = buf.split_at_mut(MAX_CARRY);
        let mut read = ReadBuf::new(back);
        match Pin::new(&mut self.stream).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(Drive::Eof));
                }
                let now = now_us();
                if shared.in_window(now) {
                    bump(&shared.wire_received, n as u64);
                }
                let carry = self.carry.len();
                front[MAX_CARRY - carry..].copy_from_slice(&self.carry);
                let region = &mut buf[MAX_CARRY - carry..MAX_CARRY + n];
                let used = self.handle(shared, region, now);
                if !shared.plan.quick_acks {
                    // Back to delayed ACKs (the kernel leaves that mode on its own): no ACK
                    // per read, which on loopback this process would pay for twice.
                    let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(false);
                }
                self.carry.clear();
                self.carry.extend_from_slice(&region[used..]);
                Poll::Ready(Ok(Drive::Data))
            }
        }
    }

    async fn drive(&mut self, shared: &Shared) -> io::Result<Drive> {
        poll_fn(|cx| self.poll_drive(cx, shared)).await
    }

    /// Writes now what the socket takes without waiting; the rest goes on the next drive.
    fn try_flush(&mut self, shared: &Shared) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.stream.try_write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                    shared.wrote(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends the close frame (unless done) and waits up to `limit` for the server's close and
    /// its end of the TCP connection (the server closes first, so TIME_WAIT stays there).
    pub(crate) async fn close(mut self, shared: &Shared, limit: Duration) {
        if !self.close_sent {
            wire::push_close(&mut self.out);
            self.close_sent = true;
        }
        let _ = tokio::time::timeout(limit, async {
            while let Ok(Drive::Data) = self.drive(shared).await {}
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    /// Queues one benchmark message stamped `sent_us`.
    fn push_message(&mut self, shared: &Shared, s: &mut SenderState, sent_us: u64) {
        let (warmup_end, window_end) = shared.window.get();
        let measured = sent_us >= warmup_end && sent_us < window_end;
        if let Some(json) = s.json.as_mut() {
            json.fill(&mut s.body, shared.plan.size, sent_us);
        }
        Header {
            measured,
            tag: shared.plan.tag,
            sender: s.id,
            seq: s.seq,
            sent_us,
        }
        .write(&mut s.body[s.header_at..s.header_at + HEADER_LEN]);
        wire::push_frame(&mut self.out, wire::op::TEXT, &s.body);
        s.seq = s.seq.wrapping_add(1);
        bump(&shared.sent, 1);
        if measured {
            bump(&shared.sent_measured, 1);
        }
    }
}

/// A sending connection's state.
#[derive(Debug)]
struct SenderState {
    id: u32,
    seq: u32,
    /// The frame payload: the raw message, or (channel) the publish command.
    body: Vec<u8>,
    /// Where the benchmark header goes in `body`.
    header_at: usize,
    /// `--payload json`: makes each message's body anew.
    json: Option<payload::Json>,
    /// Closed loop: messages this sender keeps outstanding.
    quota: u32,
    outstanding: u32,
    last_echo: Instant,
    /// Fixed rate: µs between this sender's messages, and the next message's number.
    interval_us: f64,
    next_k: u64,
}

/// Holds an open connection until `stop`: counts what arrives, answers pings, and (if it is
/// a sender) sends on the schedule that arrives through `go`.
pub(crate) async fn run(
    mut conn: Conn,
    shared: Rc<Shared>,
    mut go: watch::Receiver<Option<Schedule>>,
    mut stop: watch::Receiver<bool>,
) {
    let plan = &shared.plan;
    let mut sender = conn.me.map(|id| {
        let (senders, k) = (plan.senders.max(1), plan.in_flight);
        let quota = (k / senders + u64::from(u64::from(id) < k % senders)) as u32;
        let (body, header_at) = match (&plan.channel, plan.mode) {
            (Some(channel), Mode::Channel) => {
                v1::publish_template(channel, v1::PUBLISH_ID, plan.size)
            }
            _ => (wire::body_template(plan.size), plan.payload.header_at()),
        };
        SenderState {
            id,
            seq: 0,
            body,
            header_at,
            json: (plan.payload == Payload::Json && plan.mode == Mode::Fanout)
                .then(|| payload::Json::new(id)),
            quota,
            outstanding: 0,
            last_echo: Instant::now(),
            interval_us: if plan.msg_rate > 0.0 {
                plan.senders as f64 / plan.msg_rate * 1e6
            } else {
                0.0
            },
            next_k: 0,
        }
    });
    let mut schedule: Option<Schedule> = None;
    let far = Instant::now() + Duration::from_secs(10 * 365 * 86_400);
    let timer = tokio::time::sleep_until(far);
    tokio::pin!(timer);
    let mut armed = false;
    let mut started = false;
    if sender.is_some() {
        schedule = *go.borrow_and_update();
        if let Some(s) = schedule {
            timer.as_mut().reset(instant_at(s.start_us));
            armed = true;
        }
    }
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    let outcome: Result<(), String> = loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break Ok(()),
            changed = go.changed(), if sender.is_some() && schedule.is_none() => {
                if changed.is_err() {
                    // The worker is going away; keep receiving until stopped.
                    schedule = Some(Schedule { start_us: u64::MAX, warmup_end_us: u64::MAX, window_end_us: u64::MAX });
                    continue;
                }
                schedule = *go.borrow_and_update();
                if let Some(s) = schedule {
                    timer.as_mut().reset(instant_at(s.start_us));
                    armed = true;
                }
            }
            _ = &mut timer, if armed => {
                let (Some(s), Some(st)) = (schedule, sender.as_mut()) else { armed = false; continue };
                let now = now_us();
                if st.interval_us > 0.0 {
                    // Fixed rate: send everything that is due, stamped with its scheduled time.
                    let interval = st.interval_us;
                    let offset = interval * f64::from(st.id) / plan.senders.max(1) as f64;
                    let due = move |k: u64| s.start_us + (offset + interval * k as f64) as u64;
                    while now < s.window_end_us && due(st.next_k) <= now && due(st.next_k) < s.window_end_us && conn.out.len() < OUT_HIGH {
                        let t = due(st.next_k);
                        conn.push_message(&shared, st, t);
                        st.next_k += 1;
                    }
                    let next = due(st.next_k);
                    if next >= s.window_end_us {
                        armed = false;
                    } else if now >= s.window_end_us {
                        let missed = ((s.window_end_us - next) as f64 / interval).ceil() as u64;
                        bump(&shared.backlog_skipped, missed.max(1));
                        armed = false;
                    } else if conn.out.len() >= OUT_HIGH {
                        timer.as_mut().reset(Instant::now() + Duration::from_millis(1));
                    } else {
                        timer.as_mut().reset(instant_at(next));
                    }
                } else {
                    // Closed loop: prime the quota, then watch for a stall once a second.
                    if now >= s.window_end_us {
                        armed = false;
                    } else if !started || (st.outstanding > 0 && st.last_echo.elapsed() > STALL) {
                        if started {
                            bump(&shared.stalls, 1);
                        }
                        started = true;
                        for _ in 0..st.quota {
                            conn.push_message(&shared, st, now);
                        }
                        st.outstanding = st.quota;
                        st.last_echo = Instant::now();
                        timer.as_mut().reset(Instant::now() + Duration::from_secs(1));
                    } else {
                        timer.as_mut().reset(Instant::now() + Duration::from_secs(1));
                    }
                }
                if let Err(e) = conn.try_flush(&shared) {
                    break Err(format!("write: {e}"));
                }
            }
            step = conn.drive(&shared) => {
                match step {
                    Ok(Drive::Data) => {}
                    Ok(Drive::Eof) => break Err(if conn.closing { "closed by server".into() } else { "EOF from server".into() }),
                    Err(e) => break Err(format!("read: {e}")),
                }
                if conn.echoes > 0 {
                    if let (Some(s), Some(st)) = (schedule, sender.as_mut()) && st.interval_us == 0.0 && started {
                        let echoes = std::mem::take(&mut conn.echoes);
                        st.outstanding = st.outstanding.saturating_sub(echoes);
                        st.last_echo = Instant::now();
                        let now = now_us();
                        if now < s.window_end_us {
                            for _ in 0..echoes {
                                conn.push_message(&shared, st, now);
                            }
                            st.outstanding += echoes;
                        }
                    } else {
                        conn.echoes = 0;
                    }
                }
                if conn.closing {
                    let _ = conn.try_flush(&shared);
                    break Err("closed by server".into());
                }
                if let Err(e) = conn.try_flush(&shared) {
                    break Err(format!("write: {e}"));
                }
            }
        }
    };
    match outcome {
        Ok(()) => conn.close(&shared, Duration::from_secs(1)).await,
        Err(why) => {
            bump(&shared.dropped, 1);
            shared.error(format!("dropped: {why}"));
        }
    }
    shared.alive.set(shared.alive.get().saturating_sub(1));
}

/// The tokio instant at wall-clock time `us` (µs since the epoch).
fn instant_at(us: u64) -> Instant {
    let now = now_us();
    Instant::now() + Duration::from_micros(us.saturating_sub(now))
}
