//! One connection's life: the Go original's read pump and write pump as one task.
//!
//! A single `select!` loop reads frames, drains the outbox, pings and watches the pong
//! deadline. It ends exactly once, for one [`CloseReason`]: then it sends that close frame
//! (if the link still works), waits briefly for the peer's, leaves the hub and tells the
//! handler. Nothing here loops on a failed read or closes twice: every exit goes through
//! the same `finish` path and the task ends with it.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use std::io::IoSlice;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, error::ProtocolError};

use crate::handler::ConnInfo;
use crate::hub::{Hub, Registration};
use crate::message::{CloseReason, Message};
use crate::outbox::Drained;
use crate::session::Session;

/// How long we wait for the peer's close frame after sending ours ("wait briefly").
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How the loop ended.
enum End {
    /// We close, for this reason: send the close frame, then wait for the peer's.
    Close(CloseReason),
    /// The peer closed (its close frame has been answered), or the link broke.
    Gone(CloseReason),
}

/// What the upgrade request told us about the peer, kept for the handler.
pub(crate) struct Request {
    pub(crate) remote_addr: Option<std::net::SocketAddr>,
    pub(crate) uri: http::Uri,
    pub(crate) headers: http::HeaderMap,
    /// The client chose the `wshub.v1` subprotocol: frames are commands, not messages.
    pub(crate) structured: bool,
}

/// Runs one connection to its end: waits for the upgraded socket (`upgrade` yields `None`
/// if the upgrade failed), then reads, writes and closes it.
///
/// This future is the connection's task for its whole life, so its size is per-connection
/// memory (about 1.2 KB; `size_of_val` in the tests below). Hence its shape: one
/// `async move` block, not an `async fn` (rustc stores an async fn's arguments twice), the
/// request turned into the handler's [`ConnInfo`] before the future exists, and the
/// WebSocket built inside, where it shares memory with the wait for the upgrade.
pub(crate) fn run<S>(
    upgrade: impl Future<Output = Option<S>> + Send,
    ws_config: WebSocketConfig,
    registration: Registration,
    request: Request,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let info = ConnInfo {
        id: registration.id,
        remote_addr: request.remote_addr,
        uri: request.uri,
        headers: request.headers,
    };
    let structured = request.structured;
    async move {
        let Some(socket) = upgrade.await else {
            return; // dropping the registration leaves the hub
        };
        let mut ws = WebSocketStream::from_raw_socket(socket, Role::Server, Some(ws_config)).await;
        let hub = &registration.hub;
        tracing::debug!(conn_id = %info.id, remote = ?info.remote_addr, "connected");
        hub.handler().on_connect(hub, &info).await;

        let mut session = structured.then(Box::<Session>::default);
        let end = pump(&mut ws, hub, &info, &registration, &mut session).await;
        // Boxed for the same reason as the writes in `pump`: it runs once, at the end.
        let reason = Box::pin(finish(&mut ws, end, &registration, hub.config().write_wait)).await;

        registration.leave();
        if let Some(session) = session {
            session.end(hub, &registration).await;
        }
        tracing::debug!(conn_id = %info.id, code = reason.code, reason = %reason.reason, "disconnected");
        hub.handler().on_disconnect(hub, &info, &reason).await;
        drop(registration);
    }
}

/// The read pump and the write pump, interleaved; returns why the connection must end.
async fn pump<S>(
    ws: &mut WebSocketStream<S>,
    hub: &Hub,
    info: &ConnInfo,
    registration: &Registration,
    session: &mut Option<Box<Session>>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = hub.config();
    let outbox = &registration.outbox;
    let mut spare = VecDeque::new();
    // One timer serves both keepalive duties: the next ping and the pong deadline. Any
    // frame from the peer proves it alive; rather than re-arm the timer per frame, we note
    // the time and look at it when the timer fires.
    // The writes below are boxed: this future is part of every connection's task for its
    // whole life, and an idle connection should not carry a write in progress (about 400
    // bytes). One small allocation per drain, not per message.
    let mut last_seen = Instant::now();
    let mut next_ping = last_seen + config.ping_period;
    let keepalive = tokio::time::sleep_until(next_ping.min(last_seen + config.pong_wait));
    tokio::pin!(keepalive);

    loop {
        // Unbiased: under a steady stream of broadcasts the outbox is always ready, and a
        // fixed order would never get to read the peer's pongs.
        tokio::select! {
            () = outbox.ready() => {
                let Drained { mut messages, close } = outbox.drain(std::mem::take(&mut spare));
                if !messages.is_empty() {
                    if let Err(end) = Box::pin(write_messages(ws, &mut messages, config.write_wait)).await {
                        return end;
                    }
                }
                spare = messages;
                if let Some(reason) = close {
                    return End::Close(reason);
                }
            }
            frame = ws.next() => {
                last_seen = Instant::now();
                match frame {
                    Some(Ok(frame @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_)))) => {
                        if let Some(message) = Message::from_frame(frame) {
                            match session {
                                // Boxed: a command in progress should not size every idle task.
                                Some(session) => Box::pin(session.handle(hub, registration, message)).await,
                                None => hub.handler().on_message(hub, info, message).await,
                            }
                            // Fairness with the fan-out. This task is also the sender's own
                            // write pump: left alone it would write the sender's copy of what
                            // it just broadcast at once, the sender would send its next
                            // message, and fast senders would outrun every other queue
                            // (measured: p99 of seconds, evictions). When the fan-out is
                            // behind, go to the back of the run queue, behind the write
                            // pumps the broadcast woke.
                            if hub.is_behind() {
                                to_the_back().await;
                            }
                        }
                    }
                    Some(Ok(tungstenite::Message::Ping(_))) => {
                        // tungstenite queued the pong; send it now rather than with the next write.
                        if let Err(end) = Box::pin(flush(ws, config.write_wait)).await {
                            return end;
                        }
                    }
                    Some(Ok(tungstenite::Message::Close(frame))) => {
                        // tungstenite queued the echo of the peer's close; send it.
                        let _ = Box::pin(flush(ws, config.write_wait)).await;
                        let reason = frame.map_or(CloseReason::new(1005, ""), |f| {
                            CloseReason::new(u16::from(f.code), f.reason.to_string())
                        });
                        return End::Gone(reason);
                    }
                    Some(Ok(_)) => {} // pong (already counted as a sign of life) or raw frame
                    Some(Err(error)) => return classify(error),
                    None => return End::Gone(CloseReason::ABNORMAL),
                }
            }
            () = &mut keepalive => {
                let now = Instant::now();
                if now >= last_seen + config.pong_wait {
                    return End::Close(CloseReason::PONG_TIMEOUT);
                }
                if now >= next_ping {
                    let ping = tungstenite::Message::Ping(Default::default());
                    if let Err(end) = Box::pin(write_all(ws, std::iter::once(ping), config.write_wait)).await {
                        return end;
                    }
                    next_ping = now + config.ping_period;
                }
                keepalive.as_mut().reset(next_ping.min(last_seen + config.pong_wait));
            }
        }
    }
}

/// Returns `Pending` once after waking itself: tokio then queues the task at the back of
/// the worker's run queue. (`tokio::task::yield_now` defers the wake-up to the next driver
/// poll, which puts the task in the scheduler's LIFO slot: it runs again after a few dozen
/// tasks, ahead of thousands of woken write pumps. Measured: no effect on fairness.)
fn to_the_back() -> impl Future<Output = ()> {
    let mut woke = false;
    std::future::poll_fn(move |cx| {
        if woke {
            return std::task::Poll::Ready(());
        }
        woke = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
}

/// How many frames one `writev` carries at most.
const FRAMES_PER_WRITE: usize = 64;

/// Writes the queued messages' pre-encoded frames straight to the socket, up to
/// [`FRAMES_PER_WRITE`] per `writev` system call (what uWS calls corking), within
/// `write_wait`. Nothing is copied: each frame is the broadcast's shared buffer. The
/// queue is emptied (or the connection ends).
///
/// tungstenite's own buffer (a pong, say) is flushed first, and reads wait until every
/// frame is fully written, so a control frame can never land inside a data frame.
async fn write_messages<S>(
    ws: &mut WebSocketStream<S>,
    messages: &mut VecDeque<Message>,
    write_wait: Duration,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    flush(ws, write_wait).await?;
    let socket = ws.get_mut();
    let write = async {
        // Bytes of the front frame already written by an earlier, partial writev.
        let mut offset = 0;
        while !messages.is_empty() {
            // The slices are built inside the poll, never held across an await: an array
            // of 64 `IoSlice`s (1 KiB) in the future would sit in every connection's task.
            let written = std::future::poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE];
                let mut count = 0;
                for (slot, message) in slices.iter_mut().zip(messages.iter()) {
                    let wire = message.wire();
                    *slot = IoSlice::new(if count == 0 { &wire[offset..] } else { wire });
                    count += 1;
                }
                std::pin::Pin::new(&mut *socket).poll_write_vectored(cx, &slices[..count])
            })
            .await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            offset += written;
            while let Some(front) = messages.front() {
                let len = front.wire().len();
                if offset < len {
                    break;
                }
                offset -= len;
                messages.pop_front();
            }
        }
        socket.flush().await
    };
    match tokio::time::timeout(write_wait, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone(CloseReason::ABNORMAL)),
        Err(_) => Err(End::Gone(CloseReason::new(1006, "write timeout"))),
    }
}

/// Queues `frames` and flushes them in one go, within `write_wait`.
async fn write_all<S>(
    ws: &mut WebSocketStream<S>,
    frames: impl Iterator<Item = tungstenite::Message>,
    write_wait: Duration,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let write = async {
        for frame in frames {
            ws.feed(frame).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(write_wait, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(classify(error)),
        Err(_) => Err(End::Gone(CloseReason::new(1006, "write timeout"))),
    }
}

async fn flush<S>(ws: &mut WebSocketStream<S>, write_wait: Duration) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    write_all(ws, std::iter::empty(), write_wait).await
}

/// The one mapping from a WebSocket error to how the connection ends.
fn classify(error: tungstenite::Error) -> End {
    use tungstenite::Error as E;
    match error {
        E::Capacity(_) => End::Close(CloseReason::MESSAGE_TOO_BIG),
        E::Utf8(_) => End::Close(CloseReason::INVALID_UTF8),
        E::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            End::Gone(CloseReason::ABNORMAL)
        }
        E::Protocol(_) => End::Close(CloseReason::PROTOCOL_ERROR),
        _ => End::Gone(CloseReason::ABNORMAL),
    }
}

/// Completes the close handshake when we are the one closing; returns the final reason.
/// Messages queued before the close are written first (an evicted connection's queue is
/// already empty), so a client never loses what it was sent before, say, its own protocol
/// error.
async fn finish<S>(
    ws: &mut WebSocketStream<S>,
    end: End,
    registration: &Registration,
    write_wait: Duration,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reason = match end {
        End::Gone(reason) => return reason,
        End::Close(reason) => reason,
    };
    registration.outbox.close(reason.clone());
    let mut queued = registration.outbox.drain(VecDeque::new()).messages;
    if write_messages(ws, &mut queued, write_wait).await.is_err() {
        return reason;
    }
    let sent = tokio::time::timeout(write_wait, ws.send(reason.to_frame())).await;
    if matches!(sent, Ok(Ok(()))) {
        // Wait briefly for the peer's close frame; whatever else it sends is dropped.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(frame)) = ws.next().await {
                if frame.is_close() {
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
        let registration = hub.register(hub.admit(None).unwrap());
        let request = Request {
            remote_addr: None,
            uri: http::Uri::default(),
            headers: http::HeaderMap::new(),
            structured: false,
        };
        let upgrade = std::future::ready(None::<tokio::io::DuplexStream>);
        let future = run(upgrade, WebSocketConfig::default(), registration, request);
        let size = std::mem::size_of_val(&future);
        println!("connection future: {size} bytes");
        assert!(size <= 1400, "the connection future grew to {size} bytes");
    }
}
