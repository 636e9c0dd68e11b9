//! `drain`: what a node's clients go through when it is taken out of service. N `wshub.v1`
//! subscribers of one channel on node A, a publisher publishing at a fixed rate through node
//! B, then A is drained (`POST /api/drain`) or stopped (SIGTERM to its pid). Each subscriber
//! whose connection ends reconnects to one of the other nodes (round-robin, as a load
//! balancer would), waiting as wshub.js does (a random time up to `--restart-jitter` after
//! 1012, its backoff after anything else), subscribes with `since` = the last offset it saw
//! and recovers. At the end every subscriber must have seen every acknowledged offset exactly
//! once, in order; the report adds the successful reconnects per wall-clock second on the
//! other nodes (client-side), the figure a drain is meant to flatten.
//!
//! One process, one current-thread runtime: N connections plus reconnects stay well under
//! one process's file limit for N up to about 18,000.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::{LocalSet, spawn_local};
use tokio::time::{Instant, sleep, timeout};

use crate::cli::{DrainArgs, Stop};
use crate::plan::{Target, parse_url};
use crate::v1;
use crate::wire::{self, op};

/// Bytes read per `read` call into a connection's own buffer.
const READ_CHUNK: usize = 16 * 1024;

/// Shared by every task of the run (one thread).
struct State {
    /// Node A, where every subscriber starts.
    a: Target,
    /// The other nodes, where dropped subscribers go.
    others: Vec<Target>,
    /// Round-robin position over `others`.
    next_other: Cell<usize>,
    channel: String,
    push_head: Vec<u8>,
    /// When the drain request or the signal went out.
    stopped_at: Cell<Option<Instant>>,
    /// Subscribers whose first subscription is live.
    subscribed: Cell<u64>,
    /// Subscribers that lost their connection to A and are subscribed again elsewhere.
    back: Cell<u64>,
    /// Successful reconnects (101 + subscribe sent) per second since the stop, per other node.
    per_second: RefCell<BTreeMap<u64, Vec<u64>>>,
    /// ... and per 100 ms, for the storm's sharpest edge.
    per_100ms: RefCell<BTreeMap<u64, u64>>,
    /// Attempts that failed (connect, handshake refused, ...), by reason.
    failures: RefCell<BTreeMap<String, u64>>,
    /// Close codes the subscribers' connections ended with (0: no close frame).
    closes: RefCell<BTreeMap<u16, u64>>,
    /// Every subscriber's last offset seen, for the end of the run.
    last: RefCell<Vec<u64>>,
    args: DrainArgs,
}

impl State {
    fn fail(&self, what: impl Into<String>) {
        *self.failures.borrow_mut().entry(what.into()).or_default() += 1;
    }

    fn next_other(&self) -> usize {
        let i = self.next_other.get();
        self.next_other.set(i + 1);
        i % self.others.len()
    }

    fn count_reconnect(&self, node: usize) {
        let Some(stopped) = self.stopped_at.get() else {
            return;
        };
        let since = stopped.elapsed();
        let nodes = self.others.len();
        self.per_second
            .borrow_mut()
            .entry(since.as_secs())
            .or_insert_with(|| vec![0; nodes])[node] += 1;
        *self
            .per_100ms
            .borrow_mut()
            .entry(since.as_millis() as u64 / 100)
            .or_default() += 1;
    }
}

/// One subscriber's account of the channel.
#[derive(Debug, Default)]
struct Account {
    epoch: Option<String>,
    /// The subscribe reply's offset the first time: what came before is not ours.
    start: u64,
    last: u64,
    delivered: u64,
    duplicates: u64,
    gaps: u64,
    not_recovered: u64,
    other_epoch: u64,
    reconnects: u64,
    /// Subscribed again on another node after its connection to A ended.
    back: bool,
}

impl Account {
    fn see(&mut self, offset: u64) {
        if offset == self.last + 1 {
            self.last = offset;
            self.delivered += 1;
        } else if offset <= self.last {
            self.duplicates += 1;
        } else {
            self.gaps += offset - self.last - 1;
            self.last = offset;
            self.delivered += 1;
        }
    }
}

/// How a connection of a subscriber ended.
enum Ended {
    /// The run is over.
    Stop,
    /// The server closed with this code (0: the stream ended without a close frame).
    Closed(u16),
    /// The attempt failed before or during the session.
    Failed(String),
}

/// The subscribe reply (and any other reply: they carry an `id`).
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    result: Option<Subscribed>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Subscribed {
    epoch: String,
    offset: u64,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    publications: Vec<Recovered>,
}

#[derive(Deserialize)]
struct Recovered {
    offset: u64,
}

/// A server frame.
enum Incoming {
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Close(u16),
}

/// A WebSocket client connection: the hand-written handshake (`wire`), whole server frames.
struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    async fn connect(target: &Target, connect_timeout: Duration) -> Result<Ws, String> {
        let attempt = async {
            let mut stream = TcpStream::connect(target.addr)
                .await
                .map_err(|e| format!("connect: {}", e.kind()))?;
            let _ = stream.set_nodelay(true);
            let key = wire::new_key();
            let request = wire::request(
                &target.host,
                &target.path,
                &key,
                Some(v1::SUBPROTOCOL),
                None,
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("handshake write: {}", e.kind()))?;
            let mut buf = Vec::with_capacity(1024);
            let end = loop {
                if let Some(end) = wire::head_end(&buf) {
                    break end;
                }
                if buf.len() > 16 * 1024 {
                    return Err("handshake: response head too long".to_string());
                }
                let n = stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| format!("handshake read: {}", e.kind()))?;
                if n == 0 {
                    return Err("handshake: connection closed".to_string());
                }
            };
            wire::check_response(&buf[..end], &key, Some(v1::SUBPROTOCOL))?;
            buf.drain(..end);
            Ok(Ws { stream, buf })
        };
        timeout(connect_timeout, attempt)
            .await
            .map_err(|_| "connect timeout".to_string())?
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        wire::push_frame(&mut out, opcode, payload);
        self.stream.write_all(&out).await
    }

    /// The next whole frame (pongs skipped); `None` when the stream ended.
    async fn next(&mut self) -> Result<Option<Incoming>, String> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf)? {
                self.buf.drain(..used);
                match frame {
                    Some(frame) => return Ok(Some(frame)),
                    None => continue,
                }
            }
            self.buf.reserve(READ_CHUNK);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("read: {}", e.kind()))?;
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

/// One whole unmasked server frame at the start of `buf`, and its length; `None` until it
/// is all there. Pongs and other frames the tool ignores come back as `Some((None, len))`.
fn parse_frame(buf: &[u8]) -> Result<Option<(Option<Incoming>, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0F;
    let (len, head) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if buf[1] & 0x80 != 0 {
        return Err("a masked server frame".to_string());
    }
    let total = head + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    if !fin {
        return Err("a fragmented message (the tool reads whole frames only)".to_string());
    }
    let payload = &buf[head..total];
    let frame = match opcode {
        op::TEXT => Some(Incoming::Text(payload.to_vec())),
        op::PING => Some(Incoming::Ping(payload.to_vec())),
        op::CLOSE => Some(Incoming::Close(if payload.len() >= 2 {
            u16::from_be_bytes([payload[0], payload[1]])
        } else {
            1005
        })),
        _ => None,
    };
    Ok(Some((frame, total)))
}

/// One subscriber, for the whole run: on A first, then wherever its reconnects take it.
async fn subscriber(
    index: usize,
    state: Rc<State>,
    opening: std::sync::Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Account {
    let mut account = Account::default();
    let mut target: Option<usize> = None; // None: node A
    let mut attempt = 0u32;
    let mut permit = opening.acquire_owned().await.ok();
    loop {
        let to = match target {
            None => &state.a,
            Some(i) => &state.others[i],
        };
        let ended = session(
            &state,
            index,
            &mut account,
            to,
            target,
            &mut stop,
            &mut permit,
        )
        .await;
        permit = None;
        let delay = match ended {
            Ended::Stop => break,
            Ended::Closed(code) => {
                *state.closes.borrow_mut().entry(code).or_default() += 1;
                if code == 1012 {
                    attempt = 0;
                    state.args.restart_jitter.mul_f64(fastrand::f64())
                } else {
                    backoff(&state.args, &mut attempt)
                }
            }
            Ended::Failed(why) => {
                state.fail(why);
                backoff(&state.args, &mut attempt)
            }
        };
        if target.is_none() && account.epoch.is_none() {
            // Its first subscription on A failed: the run cannot count it.
            state.fail("subscriber never subscribed on node A");
            break;
        }
        tokio::select! {
            () = sleep(delay) => {}
            _ = stop.changed() => break,
        }
        target = Some(state.next_other());
        account.reconnects += 1;
    }
    account
}

/// wshub.js's backoff: a random time between the minimum and a cap doubling per attempt.
fn backoff(args: &DrainArgs, attempt: &mut u32) -> Duration {
    *attempt = (*attempt + 1).min(16);
    let min = args.min_delay;
    let cap = (min * 2u32.pow(*attempt)).min(Duration::from_secs(20));
    min + (cap - min).mul_f64(fastrand::f64())
}

/// One connection of a subscriber: connect, subscribe (with `since` after the first), read
/// until the close, the end of the stream, or the end of the run.
async fn session(
    state: &State,
    index: usize,
    account: &mut Account,
    target: &Target,
    node: Option<usize>,
    stop: &mut watch::Receiver<bool>,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> Ended {
    let mut ws = match Ws::connect(target, state.args.connect_timeout).await {
        Ok(ws) => ws,
        Err(why) => return Ended::Failed(why),
    };
    let since = account.epoch.clone().map(|epoch| (epoch, account.last));
    let command = v1::subscribe(
        &state.channel,
        v1::SUBSCRIBE_ID,
        since.as_ref().map(|(e, o)| (e.as_str(), *o)),
    );
    if ws.send(op::TEXT, command.as_bytes()).await.is_err() {
        return Ended::Failed("subscribe write".to_string());
    }
    if let Some(node) = node {
        state.count_reconnect(node);
    }
    // Pushes that come before the subscribe reply: applied after its publications.
    let mut early: Option<Vec<u64>> = Some(Vec::new());
    loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            _ = stop.changed() => {
                let mut out = Vec::new();
                wire::push_close(&mut out);
                let _ = ws.stream.write_all(&out).await;
                return Ended::Stop;
            }
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ended::Closed(0),
            Err(why) => return Ended::Failed(why),
        };
        match frame {
            Incoming::Ping(payload) => {
                let _ = ws.send(op::PONG, &payload).await;
            }
            Incoming::Close(code) => {
                let mut out = Vec::new();
                wire::push_frame(&mut out, op::CLOSE, &code.to_be_bytes());
                let _ = ws.stream.write_all(&out).await;
                return Ended::Closed(code);
            }
            Incoming::Text(payload) => match v1::parse(&payload, &state.push_head) {
                v1::Frame::Push { offset, .. } => {
                    if !epoch_matches(&payload, &state.push_head, account.epoch.as_deref()) {
                        account.other_epoch += 1;
                    }
                    match &mut early {
                        Some(early) => early.push(offset),
                        None => account.see(offset),
                    }
                }
                v1::Frame::Result { id: Some(0), .. } | v1::Frame::Error { id: Some(0), .. } => {
                    let reply: Reply = match serde_json::from_slice(&payload) {
                        Ok(reply) => reply,
                        Err(e) => return Ended::Failed(format!("subscribe reply: {e}")),
                    };
                    let Some(result) = reply.result else {
                        return Ended::Failed(format!("subscribe refused: {:?}", reply.error));
                    };
                    let first = account.epoch.is_none();
                    if first {
                        account.start = result.offset;
                        account.last = result.offset;
                        account.epoch = Some(result.epoch);
                        state.subscribed.set(state.subscribed.get() + 1);
                    } else if result.recovered != Some(true) {
                        account.not_recovered += 1;
                        // Carries on from the new position: what it missed is counted lost.
                        account.gaps += result.offset.saturating_sub(account.last);
                        account.last = result.offset;
                    }
                    for publication in &result.publications {
                        account.see(publication.offset);
                    }
                    for offset in early.take().unwrap_or_default() {
                        account.see(offset);
                    }
                    if node.is_some() && !account.back {
                        account.back = true;
                        state.back.set(state.back.get() + 1);
                    }
                    // Opening at a bounded parallelism: the next subscriber may start.
                    permit.take();
                }
                _ => {}
            },
        }
        if let Some(slot) = state.last.borrow_mut().get_mut(index) {
            *slot = account.last;
        }
    }
}

/// Whether a push in wshub's field order (`{"channel":…,"offset":N,"epoch":"E",…`) has
/// epoch `epoch`: compared in place, right after the offset's digits.
fn epoch_matches(payload: &[u8], head: &[u8], epoch: Option<&str>) -> bool {
    let Some(epoch) = epoch else {
        return true;
    };
    let Some(rest) = payload.strip_prefix(head) else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = &rest[digits..];
    let Some(rest) = rest.strip_prefix(b",\"epoch\":\"".as_slice()) else {
        return false;
    };
    rest.strip_prefix(epoch.as_bytes())
        .is_some_and(|rest| rest.first() == Some(&b'"'))
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Published {
    sent: u64,
    /// Offsets of the acknowledged publications, in reply order.
    acked: Vec<u64>,
    errors: u64,
    /// Its connection ended before the run did.
    lost_connection: bool,
}

/// Publishes `{"id":n,"cmd":"publish","channel":C,"data":n}` at `--rate` through its node
/// until `stop`, then waits (up to 5 s) for the outstanding replies.
async fn publisher(
    state: Rc<State>,
    target: Target,
    mut stop: watch::Receiver<bool>,
    out: Rc<RefCell<Published>>,
) -> Result<(), String> {
    let mut ws = Ws::connect(&target, state.args.connect_timeout).await?;
    let every = Duration::from_secs_f64(1.0 / state.args.rate.max(0.001));
    let mut tick = tokio::time::interval(every);
    let channel = serde_json::Value::from(state.channel.as_str());
    let mut stopping: Option<Instant> = None;
    loop {
        let (sent, answered) = {
            let out = out.borrow();
            (out.sent, out.acked.len() as u64 + out.errors)
        };
        if let Some(since) = stopping
            && (answered >= sent || since.elapsed() > Duration::from_secs(5))
        {
            let mut close = Vec::new();
            wire::push_close(&mut close);
            let _ = ws.stream.write_all(&close).await;
            return Ok(());
        }
        tokio::select! {
            _ = tick.tick(), if stopping.is_none() => {
                let id = sent + 1;
                let command = format!(r#"{{"id":{id},"cmd":"publish","channel":{channel},"data":{id}}}"#);
                ws.send(op::TEXT, command.as_bytes())
                    .await
                    .map_err(|e| format!("publisher write: {}", e.kind()))?;
                out.borrow_mut().sent = id;
            }
            _ = stop.changed(), if stopping.is_none() => stopping = Some(Instant::now()),
            frame = ws.next() => match frame? {
                Some(Incoming::Text(payload)) => match v1::parse(&payload, &state.push_head) {
                    v1::Frame::Result { id: Some(_), offset: Some(offset) } => {
                        out.borrow_mut().acked.push(offset);
                    }
                    v1::Frame::Error { .. } | v1::Frame::Result { .. } => out.borrow_mut().errors += 1,
                    _ => {}
                },
                Some(Incoming::Ping(payload)) => {
                    let _ = ws.send(op::PONG, &payload).await;
                }
                Some(Incoming::Close(_)) | None => {
                    out.borrow_mut().lost_connection = true;
                    return Err("the publisher's connection ended".to_string());
                }
            },
        }
    }
}

/// `POST /api/drain` to node A with the API key: its status line and body.
async fn post_drain(target: &Target, key: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("POST /api/drain: {e}"))?;
    let request = format!(
        "POST /api/drain HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        target.host
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("POST /api/drain: {e}"))?;
    let mut response = String::new();
    timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .map_err(|_| "POST /api/drain: no answer".to_string())?
    .map_err(|e| format!("POST /api/drain: {e}"))?;
    if !response.starts_with("HTTP/1.1 202") {
        return Err(format!(
            "POST /api/drain: {}",
            response.lines().next().unwrap_or("")
        ));
    }
    Ok(response.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Waits until `condition` holds, looking every 20 ms; false after `limit`.
async fn until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Runs the whole scenario (see the module's doc).
pub(crate) fn drain(args: &DrainArgs) -> Result<(DrainReport, bool), String> {
    let limit = crate::sys::raise_fd_limit();
    if args.conns + 256 > limit {
        return Err(format!(
            "{} subscribers need about {} file descriptors; this process may open {limit}",
            args.conns,
            args.conns + 256
        ));
    }
    if args.reconnect_url.is_empty() {
        return Err("--reconnect-url: at least one other node".to_string());
    }
    if args.stop == Stop::Drain && args.api_key.is_none() {
        return Err("--stop drain needs --api-key (node A's)".to_string());
    }
    if args.stop == Stop::Sigterm && args.pid.is_none() {
        return Err("--stop sigterm needs --pid (node A's)".to_string());
    }
    v1::check_channel(&args.channel)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let report = LocalSet::new().block_on(&runtime, run(args.clone()))?;
    Ok((report, args.json))
}

async fn run(args: DrainArgs) -> Result<DrainReport, String> {
    let a = parse_url(&args.url)?;
    let others = args
        .reconnect_url
        .iter()
        .map(|url| parse_url(url))
        .collect::<Result<Vec<_>, _>>()?;
    let publish_to = match &args.publish_url {
        Some(url) => parse_url(url)?,
        None => others[0].clone(),
    };
    let channel = format!(
        "{}-{}-{}",
        args.channel,
        std::process::id(),
        crate::sys::now_us() % 1_000_000
    );
    let say = |text: String| {
        if !args.quiet {
            eprintln!("drain: {text}");
        }
    };
    let n = args.conns as usize;
    let state = Rc::new(State {
        push_head: v1::push_head(&channel),
        channel: channel.clone(),
        others,
        next_other: Cell::new(0),
        stopped_at: Cell::new(None),
        subscribed: Cell::new(0),
        back: Cell::new(0),
        per_second: RefCell::default(),
        per_100ms: RefCell::default(),
        failures: RefCell::default(),
        closes: RefCell::default(),
        last: RefCell::new(vec![0; n]),
        a: a.clone(),
        args: args.clone(),
    });
    let (stop_subscribers, stopped) = watch::channel(false);
    let opening = std::sync::Arc::new(Semaphore::new(args.parallel.max(1)));
    let began = Instant::now();
    let subscribers: Vec<_> = (0..n)
        .map(|i| {
            spawn_local(subscriber(
                i,
                state.clone(),
                opening.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    let all_open = until(args.timeout, || {
        state.subscribed.get() as usize == n
            || state
                .failures
                .borrow()
                .contains_key("subscriber never subscribed on node A")
    })
    .await;
    if !all_open || state.subscribed.get() as usize != n {
        return Err(format!(
            "only {} of {n} subscribers subscribed on node A in {:?}: {:?}",
            state.subscribed.get(),
            args.timeout,
            state.failures.borrow()
        ));
    }
    let open_s = began.elapsed().as_secs_f64();
    say(format!(
        "{n} subscribers on {} in {open_s:.1} s; publishing at {}/s through {}",
        args.url, args.rate, publish_to.host
    ));

    let published = Rc::new(RefCell::new(Published::default()));
    let (stop_publisher, publisher_stop) = watch::channel(false);
    let publishing = spawn_local(publisher(
        state.clone(),
        publish_to,
        publisher_stop,
        published.clone(),
    ));
    sleep(args.before).await;

    let stopped_at = Instant::now();
    state.stopped_at.set(Some(stopped_at));
    let drain_answer = match args.stop {
        Stop::Drain => Some(post_drain(&a, args.api_key.as_deref().unwrap_or("")).await?),
        Stop::Sigterm => {
            let pid = args.pid.unwrap_or(0).to_string();
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .map_err(|e| format!("kill -TERM {pid}: {e}"))?;
            if !status.success() {
                return Err(format!("kill -TERM {pid} failed"));
            }
            None
        }
    };
    say(format!(
        "node A stopped ({:?}); waiting for every subscriber to be back",
        args.stop
    ));
    // Both timed in one loop: every subscriber back elsewhere, and node A's process gone.
    let a_gone = |pid: u32| {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.contains(") Z "))
    };
    let (mut all_back_s, mut node_a_exit_s) = (None, None);
    let deadline = Instant::now() + args.timeout;
    while Instant::now() < deadline {
        if all_back_s.is_none() && state.back.get() as usize == n {
            all_back_s = Some(stopped_at.elapsed().as_secs_f64());
        }
        if node_a_exit_s.is_none() && args.pid.is_some_and(a_gone) {
            node_a_exit_s = Some(stopped_at.elapsed().as_secs_f64());
        }
        if all_back_s.is_some() && (node_a_exit_s.is_some() || args.pid.is_none()) {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    let all_back = all_back_s.is_some();
    say(format!(
        "{} of {n} back after {all_back_s:?} s; node A gone after {node_a_exit_s:?} s",
        state.back.get()
    ));
    sleep(args.after).await;

    let _ = stop_publisher.send(true);
    let publisher_result = publishing
        .await
        .map_err(|e| format!("publisher task: {e}"))?;
    let (sent, acked, publish_errors, lost_connection) = {
        let p = published.borrow();
        (p.sent, p.acked.clone(), p.errors, p.lost_connection)
    };
    let last_offset = acked.iter().copied().max().unwrap_or(0);
    let caught_up = until(Duration::from_secs(15), || {
        state.last.borrow().iter().all(|&last| last >= last_offset)
    })
    .await;
    let _ = stop_subscribers.send(true);
    let mut accounts = Vec::with_capacity(n);
    for subscriber in subscribers {
        accounts.push(
            subscriber
                .await
                .map_err(|e| format!("subscriber task: {e}"))?,
        );
    }

    // The publisher's own view: consecutive offsets from the channel's start.
    let start = accounts.first().map_or(0, |a| a.start);
    let mut sorted = acked.clone();
    sorted.sort_unstable();
    let publisher_consecutive = sorted
        .iter()
        .enumerate()
        .all(|(i, &offset)| offset == start + 1 + i as u64);
    let mut check = Check::default();
    for account in &accounts {
        let missing = account.gaps + last_offset.saturating_sub(account.last);
        let wrong_start = u64::from(account.start != start);
        check.lost += missing;
        check.duplicates += account.duplicates;
        check.not_recovered += account.not_recovered;
        check.other_epoch += account.other_epoch;
        check.wrong_start += wrong_start;
        check.delivered += account.delivered;
        if missing + account.duplicates + account.not_recovered + account.other_epoch + wrong_start
            > 0
        {
            check.subscribers_affected += 1;
        }
    }
    let nodes = state.others.len();
    let per_second: Vec<Second> = state
        .per_second
        .borrow()
        .iter()
        .map(|(&second, counts)| Second {
            second,
            total: counts.iter().sum(),
            per_node: counts.clone(),
        })
        .collect();
    let peak_per_second = per_second.iter().map(|s| s.total).max().unwrap_or(0);
    let peak_per_100ms = state
        .per_100ms
        .borrow()
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    let reconnected: u64 = per_second.iter().map(|s| s.total).sum();
    let failures = check.lost
        + check.duplicates
        + check.not_recovered
        + check.other_epoch
        + check.wrong_start
        + publish_errors
        + u64::from(!publisher_consecutive)
        + u64::from(!all_back)
        + u64::from(!caught_up)
        + u64::from(publisher_result.is_err() || lost_connection);
    Ok(DrainReport {
        stop: format!("{:?}", args.stop).to_lowercase(),
        subscribers: args.conns,
        channel,
        node_a: args.url.clone(),
        others: args.reconnect_url.clone(),
        drain_answer: drain_answer.and_then(|body| serde_json::from_str(&body).ok()),
        open_s,
        publications: Publications {
            rate: args.rate,
            sent,
            acked: acked.len() as u64,
            errors: publish_errors,
            first_offset: sorted.first().copied().unwrap_or(0),
            last_offset,
            consecutive: publisher_consecutive,
            publisher_error: publisher_result.err(),
        },
        expected_per_subscriber: last_offset.saturating_sub(start),
        check,
        reconnects: Reconnects {
            total: reconnected,
            nodes,
            peak_per_second,
            peak_per_100ms,
            per_second,
            failed_attempts: state.failures.borrow().clone(),
            closes: state
                .closes
                .borrow()
                .iter()
                .map(|(code, count)| (code.to_string(), *count))
                .collect(),
            all_back_s,
            node_a_exit_s,
        },
        caught_up,
        failures,
    })
}

/// Per-subscriber verification, summed.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Check {
    /// Publications delivered (each once, in order), all subscribers together.
    pub(crate) delivered: u64,
    /// Acknowledged publications some subscriber never got (offset gaps and a short end).
    pub(crate) lost: u64,
    /// Offsets that came again (or out of order).
    pub(crate) duplicates: u64,
    /// Resubscribes the server answered with `recovered: false`.
    pub(crate) not_recovered: u64,
    /// Pushes of another epoch.
    pub(crate) other_epoch: u64,
    /// Subscribers that did not start at the channel's position before the first publication.
    pub(crate) wrong_start: u64,
    pub(crate) subscribers_affected: u64,
}

/// What the publisher did.
#[derive(Debug, Serialize)]
pub(crate) struct Publications {
    pub(crate) rate: f64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) errors: u64,
    pub(crate) first_offset: u64,
    pub(crate) last_offset: u64,
    /// The acknowledged offsets are the channel's, one by one, none skipped.
    pub(crate) consecutive: bool,
    pub(crate) publisher_error: Option<String>,
}

/// Successful reconnects in one wall-clock second after the stop.
#[derive(Debug, Serialize)]
pub(crate) struct Second {
    /// Seconds since the stop (0: the first).
    pub(crate) second: u64,
    pub(crate) total: u64,
    /// By node, in `--reconnect-url` order.
    pub(crate) per_node: Vec<u64>,
}

/// How the subscribers came back.
#[derive(Debug, Serialize)]
pub(crate) struct Reconnects {
    pub(crate) total: u64,
    pub(crate) nodes: usize,
    pub(crate) peak_per_second: u64,
    /// The busiest 100 ms (multiply by 10 for a rate per second).
    pub(crate) peak_per_100ms: u64,
    pub(crate) per_second: Vec<Second>,
    pub(crate) failed_attempts: BTreeMap<String, u64>,
    /// Close codes the subscribers saw (0: the connection ended without a close frame).
    pub(crate) closes: BTreeMap<String, u64>,
    /// From the stop until every subscriber was subscribed again elsewhere.
    pub(crate) all_back_s: Option<f64>,
    /// From the stop until node A's process was gone (with --pid).
    pub(crate) node_a_exit_s: Option<f64>,
}

/// The `drain` report.
#[derive(Debug, Serialize)]
pub(crate) struct DrainReport {
    pub(crate) stop: String,
    pub(crate) subscribers: u64,
    pub(crate) channel: String,
    pub(crate) node_a: String,
    pub(crate) others: Vec<String>,
    /// Node A's answer to `POST /api/drain`.
    pub(crate) drain_answer: Option<serde_json::Value>,
    /// Seconds to open and subscribe every subscriber on A.
    pub(crate) open_s: f64,
    pub(crate) publications: Publications,
    pub(crate) expected_per_subscriber: u64,
    pub(crate) check: Check,
    pub(crate) reconnects: Reconnects,
    /// Every subscriber reached the last acknowledged offset.
    pub(crate) caught_up: bool,
    /// 0 in a good run: lost, duplicated, unrecovered, publisher trouble, not back in time.
    pub(crate) failures: u64,
}

impl DrainReport {
    /// The human-readable report.
    pub(crate) fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let r = &self.reconnects;
        let p = &self.publications;
        let c = &self.check;
        let _ = writeln!(
            out,
            "drain scenario:    node A {} stopped by {}; {} subscribers of {}, reconnecting to {}",
            self.node_a,
            self.stop,
            self.subscribers,
            self.channel,
            self.others.join(", ")
        );
        let _ = writeln!(
            out,
            "publications:      {} sent at {}/s, {} acknowledged (offsets {}..{}, consecutive: {}), {} errors",
            p.sent, p.rate, p.acked, p.first_offset, p.last_offset, p.consecutive, p.errors
        );
        let _ = writeln!(
            out,
            "per subscriber:    {} expected; {} delivered in all; lost {}, duplicated {}, not recovered {}, other epoch {} ({} subscribers affected)",
            self.expected_per_subscriber,
            c.delivered,
            c.lost,
            c.duplicates,
            c.not_recovered,
            c.other_epoch,
            c.subscribers_affected
        );
        let _ = writeln!(
            out,
            "reconnects:        {} on the other nodes; peak {}/s (busiest 100 ms: {}); all back after {} s; node A gone after {} s",
            r.total,
            r.peak_per_second,
            r.peak_per_100ms,
            r.all_back_s.map_or("-".into(), |s| format!("{s:.2}")),
            r.node_a_exit_s.map_or("-".into(), |s| format!("{s:.2}"))
        );
        let series: Vec<String> = r
            .per_second
            .iter()
            .map(|s| format!("{}s:{}", s.second, s.total))
            .collect();
        let _ = writeln!(out, "per second:        {}", series.join(" "));
        let _ = writeln!(
            out,
            "closes seen:       {:?}; failed attempts: {:?}",
            r.closes, r.failed_attempts
        );
        if self.failures > 0 {
            let _ = writeln!(out, "FAILURES:          {}", self.failures);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_counts_gaps_and_duplicates() {
        let mut account = Account {
            last: 10,
            ..Account::default()
        };
        for offset in [11, 12, 12, 14, 13, 15] {
            account.see(offset);
        }
        assert_eq!(
            (
                account.last,
                account.delivered,
                account.gaps,
                account.duplicates
            ),
            (15, 4, 1, 2)
        );
    }

    #[test]
    fn frames_are_read_whole() {
        let push = br#"{"channel":"c","offset":7,"epoch":"e1","data":7}"#;
        let mut buf = vec![0x81, push.len() as u8];
        buf.extend_from_slice(push);
        buf.extend_from_slice(&[0x88, 0x02, 0x03, 0xF4]); // close 1012
        assert!(parse_frame(&buf[..10]).unwrap().is_none(), "not whole yet");
        let Some((Some(Incoming::Text(text)), used)) = parse_frame(&buf).unwrap() else {
            panic!("a text frame");
        };
        assert_eq!(text, push);
        let head = v1::push_head("c");
        assert!(epoch_matches(&text, &head, Some("e1")));
        assert!(!epoch_matches(&text, &head, Some("e2")));
        let Some((Some(Incoming::Close(code)), _)) = parse_frame(&buf[used..]).unwrap() else {
            panic!("a close frame");
        };
        assert_eq!(code, 1012);
    }
}
