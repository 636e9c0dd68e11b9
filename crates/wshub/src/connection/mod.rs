//! One connection's life: reading, keepalive, what the kernel refused, and the close.
//!
//! The connection owns its socket's read half; its write half sits in the
//! [`Outbox`](crate::wire::outbox), where publishers write to it directly. A single `select!`
//! loop reads frames (into this worker thread's scratch buffer, parsed by the
//! [`FrameReader`]), drives out what the kernel refused, pings, and watches the pong and
//! write deadlines. It ends exactly once, for one [`CloseReason`]: then it sends that close
//! frame after everything queued (if the link still works), waits briefly for the peer's,
//! leaves the hub and tells the handler. Every exit goes through the same `finish` path.

mod session;

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::auth::Auth;
use crate::connection::session::Session;
use crate::handler::ConnInfo;
use crate::hub::{Hub, Registration};
use crate::message::{CloseReason, Message};
use crate::metrics::Kind;
use crate::rate::{MessageRate, Spend};
use crate::wire::cork;
use crate::wire::outbox::{Drive, Writer};
use crate::wire::reader::{FrameReader, Inbound, ReadError};

/// How long we wait for the peer's close frame after sending ours ("wait briefly").
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The read half of a connection's socket.
pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// An upgraded socket, in its two directions.
pub(crate) struct Socket {
    pub(crate) read: Reader,
    pub(crate) write: Writer,
    /// Bytes the HTTP layer read past the upgrade request (the client's first frames).
    pub(crate) read_ahead: Bytes,
}

impl Socket {
    /// Any byte stream, split in two (the halves share a lock).
    pub(crate) fn split<S>(stream: S, read_ahead: Bytes) -> Socket
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        Socket {
            read: Box::new(read),
            write: Writer::Stream(Box::new(write)),
            read_ahead,
        }
    }

    /// A TCP socket: its halves need no lock, so publishers and the reader never meet.
    pub(crate) fn tcp(stream: tokio::net::TcpStream, read_ahead: Bytes) -> Socket {
        let (read, write) = stream.into_split();
        Socket {
            read: Box::new(read),
            write: Writer::Tcp(write),
            read_ahead,
        }
    }
}

/// How the loop ended.
enum End {
    /// We close, for this reason: send the close frame, then wait for the peer's.
    Close(CloseReason),
    /// The peer sent its close frame: echo it, and we are done.
    PeerClosed(CloseReason),
    /// The link broke (or stalled past `write_wait`).
    Gone(CloseReason),
}

/// What the upgrade request told us about the peer, kept for the handler.
pub(crate) struct Request {
    pub(crate) remote_addr: Option<std::net::SocketAddr>,
    pub(crate) uri: http::Uri,
    /// Only when the handler keeps them.
    pub(crate) headers: Option<Box<http::HeaderMap>>,
    /// The client chose the `wshub.v1` subprotocol: frames are commands, not messages.
    pub(crate) structured: bool,
    /// permessage-deflate was agreed: inbound messages may be compressed.
    pub(crate) compressed: bool,
    /// Who the client is, as far as the upgrade request showed.
    pub(crate) auth: crate::auth::Auth,
}

/// Runs one connection to its end: reads, writes and closes `socket`.
///
/// This future is the connection's task for its whole life, so its size is per-connection
/// memory (a test below keeps it small). Hence its shape: a plain function that does
/// everything it can before the future exists (the request turned into the handler's
/// [`ConnInfo`], the socket split, the client's first frames parsed), then one `async
/// move` block holding only what the connection needs from then on (rustc keeps an async
/// fn's arguments for its whole life, beside what they were moved into), and rare, large
/// futures boxed.
pub(crate) fn run(
    socket: Socket,
    registration: Registration,
    request: Request,
) -> impl Future<Output = ()> + Send {
    let pending = matches!(request.auth, Auth::Pending);
    let identity = match request.auth {
        Auth::User(identity) => Some(identity),
        Auth::Open | Auth::Pending => None,
    };
    let hub = &registration.hub;
    if pending {
        hub.set_deadline(
            registration.id,
            std::time::Instant::now() + hub.config().handshake_timeout,
            4001,
            "unauthorized: no connect command within handshake_timeout",
        );
    }
    if let Some(at) = identity.as_ref().and_then(|identity| identity.expires_at) {
        hub.set_deadline(registration.id, instant_of(at), 4002, "token expired");
    }
    // Boxed: 160 bytes that the task would otherwise carry inline, padded to its layout.
    let info = Box::new(ConnInfo {
        id: registration.id,
        remote_addr: request.remote_addr,
        uri: request.uri,
        headers: request.headers,
        user: identity.as_ref().map(|identity| identity.user.clone()),
        budget: hub.message_rate().map(MessageRate::budget),
    });
    let session = request
        .structured
        .then(|| Box::new(Session::new(identity, pending)));
    let Socket {
        mut read,
        write,
        read_ahead,
    } = socket;
    registration.outbox.attach(write);
    let mut reader = FrameReader::new(registration.hub.config().max_message_size);
    reader.inflate(request.compressed);
    // The client's first frames may have come with the upgrade request: parsed now (the
    // bytes are a slice of the HTTP side's buffer, never kept), handled once the handler
    // has seen the connection. A protocol error among them (`broken`) ends the connection
    // after the events read before it are handled.
    let mut events = Vec::new();
    let broken = reader.feed(&mut read_ahead.to_vec(), &mut events).err();
    drop(read_ahead);
    async move {
        let hub = &registration.hub;
        tracing::debug!(conn_id = %info.id, remote = ?info.remote_addr, "connected");
        hub.metrics().accepted();
        hub.handler().on_connect(hub, &info).await;

        let mut session = session;
        let end = {
            let pump = pump(
                &mut read,
                &mut reader,
                &mut events,
                broken,
                hub,
                &info,
                &registration,
                &mut session,
            );
            let mut pump = std::pin::pin!(pump);
            // Every poll of the connection is a round: what its handler publishes while
            // it runs leaves in one write per recipient when the poll returns.
            let own = &registration.outbox;
            std::future::poll_fn(|cx| cork::round(own, || pump.as_mut().poll(cx))).await
        };
        // Boxed: it runs once, at the end, and should not size every idle task.
        let reason = Box::pin(finish(
            &mut read,
            end,
            reader.peer_closed(),
            &registration,
            hub.config().write_wait,
        ))
        .await;

        registration.leave();
        if let Some(session) = session {
            session.end(hub, &registration).await;
        }
        tracing::debug!(conn_id = %info.id, code = reason.code, reason = %reason.reason, "disconnected");
        hub.metrics().closed(reason.code);
        hub.handler().on_disconnect(hub, &info, &reason).await;
        drop(registration);
    }
}

/// The `Instant` of a wall-clock time (now, if it has passed).
pub(crate) fn instant_of(at: std::time::SystemTime) -> std::time::Instant {
    std::time::Instant::now()
        + at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
}

/// Reading, keepalive and the write deadline, interleaved; returns why the connection
/// must end.
#[allow(clippy::too_many_arguments)] // borrows of the connection's parts, one each
async fn pump(
    read: &mut Reader,
    reader: &mut FrameReader,
    events: &mut Vec<Inbound>,
    mut broken: Option<ReadError>,
    hub: &Hub,
    info: &ConnInfo,
    registration: &Registration,
    session: &mut Option<Box<Session>>,
) -> End {
    let config = hub.config();
    let outbox = &*registration.outbox;
    // One timer serves every deadline: the next ping, the pong deadline and, while the
    // kernel refuses our writes, `write_wait`. Any bytes from the peer prove it alive;
    // rather than re-arm the timer per read, we note the time and look at it when the
    // timer fires.
    let mut last_seen = Instant::now();
    let mut next_ping = last_seen + config.ping_period;
    // Pinned where it is made: `tokio::pin!` would keep a moved-from copy (112 bytes).
    let mut keepalive = std::pin::pin!(tokio::time::sleep_until(
        next_ping.min(last_seen + config.pong_wait)
    ));
    let read_size = config.read_buffer_size.max(16);

    // A protocol error (`broken`) ends the connection after the events read before it
    // are handled, as a client that sent a good message and then a bad frame expects.
    // Set after this connection published while the hub was congested: it reads
    // nothing more from its client until the recipients catch up (see `backpressure`).
    let mut paused = false;
    loop {
        let pushes = cork::pushes();
        // Taken one at a time, by index: an iterator and its item would both sit in
        // this future across the handler's await (160 bytes per connection).
        count_received(hub, events);
        let mut next = 0;
        while next < events.len() {
            let event = std::mem::replace(&mut events[next], Inbound::Ping(Bytes::new()));
            next += 1;
            match event {
                Inbound::Message(message) => {
                    match over_budget(hub, info) {
                        Spend::Within => {}
                        Spend::Over => {
                            // Refused: a command gets its 429, a raw message is dropped.
                            if let (Some(session), Some(rate)) = (&session, hub.message_rate()) {
                                session.over_budget(registration, &message, rate.rate());
                            }
                            continue;
                        }
                        Spend::Exhausted => return End::Close(CloseReason::RATE_LIMIT),
                    }
                    match session {
                        // Boxed: a command in progress should not size every idle task.
                        Some(session) => {
                            Box::pin(session.handle(hub, registration, message)).await;
                        }
                        None => hub.handler().on_message(hub, info, message).await,
                    }
                }
                Inbound::Ping(payload) => outbox.push_control(Message::pong(&payload)),
                Inbound::Close(reason) => return End::PeerClosed(reason),
            }
        }
        events.clear();
        if let Some(error) = broken {
            return End::Close(error.close_reason());
        }
        if cork::pushes() != pushes && hub.backpressure().is_congested() {
            paused = true;
        }
        // Unbiased: under a steady stream of reads, the deadlines must still be looked at.
        tokio::select! {
            drive = std::future::poll_fn(|cx| outbox.poll_drive(cx)) => {
                return match drive {
                    Drive::Close(reason) => End::Close(reason),
                    Drive::Failed => End::Gone(CloseReason::ABNORMAL),
                };
            }
            // Boxed, and made only once paused: an idle connection should not carry it.
            () = async { Box::pin(hub.backpressure().relieved()).await }, if paused => paused = false,
            read = std::future::poll_fn(|cx| poll_read(read, reader, read_size, events, cx)), if !paused => {
                last_seen = Instant::now();
                match read {
                    Ok(true) => {}
                    Ok(false) => return End::Gone(CloseReason::ABNORMAL),
                    Err(error) => broken = Some(error),
                }
            }
            // Looked at on every poll: a stall begins when a publisher's write is refused,
            // which wakes this task without completing any branch.
            () = std::future::poll_fn(|cx| {
                if let Some(since) = outbox.stalled_since() {
                    let deadline = since + config.write_wait;
                    if deadline < keepalive.deadline() {
                        keepalive.as_mut().reset(deadline);
                    }
                }
                keepalive.as_mut().poll(cx)
            }) => {
                let now = Instant::now();
                let stall = outbox.stalled_since();
                if stall.is_some_and(|since| now >= since + config.write_wait) {
                    return End::Gone(CloseReason::new(1006, "write timeout"));
                }
                if now >= last_seen + config.pong_wait {
                    return End::Close(CloseReason::PONG_TIMEOUT);
                }
                if now >= next_ping {
                    outbox.push_control(Message::ping());
                    next_ping = now + config.ping_period;
                }
                let mut next = next_ping.min(last_seen + config.pong_wait);
                if let Some(since) = stall {
                    next = next.min(since + config.write_wait);
                }
                keepalive.as_mut().reset(next);
            }
        }
    }
}

/// Counts the messages among what was read (`wshub_messages_received_total`): all at
/// once, before they are handled, as one borrow of the list (a borrow of each message
/// before it is moved into its handler cost the connection's future 72 bytes).
fn count_received(hub: &Hub, events: &[Inbound]) {
    let metrics = hub.metrics();
    for event in events {
        if let Inbound::Message(message) = event {
            metrics.received(
                Kind::of(message.is_text()),
                message.len(),
                cork::is_active(),
            );
        }
    }
}

/// What an inbound message costs the connection's budget (`client_rate`); always within
/// when there is none. A refused message is counted in the hub's `rate_limited`.
fn over_budget(hub: &Hub, info: &ConnInfo) -> Spend {
    let (Some(rate), Some(budget)) = (hub.message_rate(), &info.budget) else {
        return Spend::Within;
    };
    let spend = rate.spend(budget);
    if spend != Spend::Within {
        hub.count_rate_limited();
    }
    spend
}

thread_local! {
    /// The worker thread's read buffer, shared by all its connections: an idle
    /// connection holds none (bytes are parsed out of it before the next read).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads what the client sent into the thread's scratch buffer and parses it: resolves
/// with `Ok(true)` when bytes arrived (a sign of life, whether or not they completed an
/// event), `Ok(false)` at the end of the stream, or the protocol error they contain.
fn poll_read(
    read: &mut Reader,
    reader: &mut FrameReader,
    size: usize,
    events: &mut Vec<Inbound>,
    cx: &mut Context<'_>,
) -> Poll<Result<bool, ReadError>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < size {
            scratch.resize(size, 0);
        }
        let mut buf = ReadBuf::new(&mut scratch[..size]);
        match Pin::new(&mut *read).poll_read(cx, &mut buf) {
            Poll::Pending => return Poll::Pending,
            // A broken link reads as the end of the stream: no close handshake.
            Poll::Ready(Err(_)) => return Poll::Ready(Ok(false)),
            Poll::Ready(Ok(())) => {}
        }
        let n = buf.filled().len();
        if n == 0 {
            return Poll::Ready(Ok(false));
        }
        reader.feed(&mut scratch[..n], events)?;
        Poll::Ready(Ok(true))
    })
}

/// Completes the close: when we close, our close frame goes out after everything queued
/// (an evicted connection's queue is already discarded), then we wait briefly for the
/// peer's; when the peer closed, we echo its code. Returns the final reason.
async fn finish(
    read: &mut Reader,
    end: End,
    peer_closed: bool,
    registration: &Registration,
    write_wait: Duration,
) -> CloseReason {
    let outbox = &registration.outbox;
    let (reason, frame) = match end {
        End::Gone(reason) => return reason,
        End::PeerClosed(reason) => {
            // Echo the code (not the reason), as RFC 6455 §5.5.1 suggests.
            let echo = CloseReason::new(reason.code, "").to_frame();
            outbox.close(reason.clone());
            outbox.seal(echo);
            let _ = tokio::time::timeout(
                write_wait,
                std::future::poll_fn(|cx| outbox.poll_flushed(cx)),
            )
            .await;
            return reason;
        }
        End::Close(reason) => {
            registration
                .hub
                .metrics()
                .closed_for(reason.code, &reason.reason);
            // The first close request wins: an eviction or shutdown may have come first.
            outbox.close(reason.clone());
            let frame = reason.to_frame();
            (reason, frame)
        }
    };
    outbox.seal(frame);
    let flushed = tokio::time::timeout(
        write_wait,
        std::future::poll_fn(|cx| outbox.poll_flushed(cx)),
    )
    .await;
    // The peer's close frame came already when it was itself the error (a bad code, say).
    if matches!(flushed, Ok(true)) && !peer_closed {
        // Wait briefly for the peer's close frame; whatever else it sends is dropped.
        let mut reader = FrameReader::new(registration.hub.config().max_message_size);
        let mut events = Vec::new();
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Ok(true) =
                std::future::poll_fn(|cx| poll_read(read, &mut reader, 4096, &mut events, cx)).await
            {
                if events
                    .drain(..)
                    .any(|event| matches!(event, Inbound::Close(_)))
                {
                    break;
                }
            }
        })
        .await;
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection's task is most of a connection's memory: keep it small. This is a
    /// tripwire for changes that put a large value into the future (an array of
    /// `IoSlice`s held across an await cost 1 KiB once), not a benchmark.
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let hub = Hub::new(crate::Config::default(), crate::Broadcast).unwrap();
        let registration = hub.register(hub.admit(None).unwrap(), None);
        let request = Request {
            remote_addr: None,
            uri: http::Uri::default(),
            headers: None,
            structured: false,
            auth: crate::auth::Auth::Open,
            compressed: false,
        };
        let (socket, _peer) = tokio::io::duplex(64);
        let future = run(Socket::split(socket, Bytes::new()), registration, request);
        let size = std::mem::size_of_val(&future);
        println!("connection future: {size} bytes");
        assert!(size <= 840, "the connection future grew to {size} bytes");
    }

    /// The boxed `ConnInfo` is the rest of a connection's own memory: within jemalloc's
    /// 160-byte size class (the binary's allocator), so the rate limit's pointer costs a
    /// connection without one nothing.
    #[test]
    fn conn_info_fits_its_size_class() {
        let size = std::mem::size_of::<ConnInfo>();
        assert!(size <= 160, "ConnInfo grew to {size} bytes");
    }

    /// With `client_rate` set, each connection has a budget of its own: small, and only then.
    #[test]
    fn a_budget_is_small() {
        let size = std::mem::size_of::<crate::rate::Budget>();
        assert!(size <= 48, "a budget grew to {size} bytes");
    }
}
