//! A connection's outbound side: frames go straight to its socket, from whichever task
//! publishes them, and only what the kernel refused waits here.
//!
//! This is µWebSockets' model. A publisher locks the outbox, appends the shared,
//! pre-encoded frame and, when the kernel has not refused anything, writes the queue at
//! once with a non-blocking `writev` (a no-op waker: it never waits). Inside a
//! [`cork`](crate::wire::cork) the write waits for the end of the round, so every frame a socket
//! got in one round leaves in one system call. What the kernel refuses stays queued, and
//! the connection's own task drives it out as the socket becomes writable.
//!
//! So backpressure means what the kernel refused: a client that reads is never evicted by
//! a burst, and one that stops reading is evicted (1008 "slow consumer") as soon as its
//! kernel buffer and then `send_queue` messages or `send_queue_bytes` bytes are full.
//! Every write happens under the lock, so frames of one connection never interleave or
//! reorder, whichever threads publish. The outbox also carries the one request to close.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::AsyncWrite;
use tokio::time::Instant;

use crate::compression::codec::DEFAULT_WINDOW_BITS;
use crate::message::{CloseReason, Message};
use crate::metrics::{Kind, Metrics};
use crate::wire::backpressure::Backpressure;
use crate::wire::cork;
use crate::wire::fanout::{Fanout, Run};

/// How many frames one `writev` carries at most (Linux allows 1024; 64 is where the
/// measured cost per frame stops falling, see bench/floor).
const FRAMES_PER_WRITE: usize = 64;

/// The write half of a connection's socket.
pub(crate) enum Writer {
    /// A TCP socket: publishers write to it with a plain non-blocking `writev`.
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    /// Any other stream (TLS, a test's duplex), written through its `AsyncWrite`.
    Stream(Box<dyn AsyncWrite + Send + Unpin>),
}

impl Writer {
    /// One vectored write. A publisher (`cx` is `None`) writes a TCP socket with the
    /// system call alone: tokio's readiness bookkeeping cost a fifth of our user-space
    /// time per delivery at one frame per write (perf), and a refusal (`WouldBlock`)
    /// still reaches tokio when the connection's task writes next and registers for
    /// writability. With `cx`, it is the connection's task: through tokio, registered.
    fn poll_write(
        &mut self,
        cx: Option<&mut Context<'_>>,
        slices: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        use std::io::Write;
        match (self, cx) {
            (Writer::Tcp(half), None) => {
                let socket = socket2::SockRef::from(half.as_ref());
                // One slice (the common case, see `coalesced`): send(2), which spares the
                // kernel sendmsg's message header and iovec import.
                let sent = match slices {
                    [one] => socket.send(one),
                    _ => (&*socket).write_vectored(slices),
                };
                match sent {
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Poll::Pending,
                    result => Poll::Ready(result),
                }
            }
            (Writer::Tcp(half), Some(cx)) => Pin::new(half).poll_write_vectored(cx, slices),
            (Writer::Stream(stream), cx) => {
                let mut noop = Context::from_waker(Waker::noop());
                Pin::new(stream).poll_write_vectored(cx.unwrap_or(&mut noop), slices)
            }
        }
    }

    /// A plain TCP socket has nothing to flush; a TLS stream does.
    fn poll_flush(&mut self, cx: Option<&mut Context<'_>>) -> Poll<std::io::Result<()>> {
        match self {
            Writer::Tcp(_) => Poll::Ready(Ok(())),
            Writer::Stream(stream) => {
                let mut noop = Context::from_waker(Waker::noop());
                Pin::new(stream).poll_flush(cx.unwrap_or(&mut noop))
            }
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The kernel refused earlier frames and the queue is at its limit: the connection
    /// has been evicted as a slow consumer.
    Full,
    /// The connection is closing; the message will not be delivered.
    Closed,
}

/// What the user-space queue may hold once the kernel refuses more.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `send_queue`: messages.
    pub(crate) messages: usize,
    /// `send_queue_bytes`: bytes. One message is always allowed, however large.
    pub(crate) bytes: usize,
}

/// A connection that negotiated permessage-deflate: what its frames are compressed with.
#[derive(Debug)]
pub(crate) struct Deflating {
    pub(crate) window_bits: u8,
    /// The hub's policy (minimum size; it counts this connection while it lives).
    pub(crate) policy: Arc<crate::compression::Policy>,
}

/// Whose metrics a recipient of a run still needs counted ([`Outbox::push_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Counted already, message by message (queued, or deflated for this client).
    Counted,
    /// Sent the plain lane whole: the walk counts it.
    Plain,
    /// Sent the deflated lane whole: the walk counts it.
    Deflated,
}

/// What the connection's task learns from [`Outbox::poll_drive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Drive {
    /// A close was requested (by the application, the hub, or an eviction).
    Close(CloseReason),
    /// Writing failed: the link is broken.
    Failed,
}

#[derive(Default)]
struct State {
    /// Absent until the upgrade completes: frames queue until then.
    writer: Option<Writer>,
    /// Frames not yet (completely) written, oldest first.
    queue: VecDeque<Message>,
    /// Bytes of the front frame already written.
    written: usize,
    /// Bytes in `queue` not yet written.
    bytes: usize,
    /// The kernel refused our last write: the connection's task drives the queue out.
    refused: bool,
    /// The last time bytes went out while refused (for `write_wait`).
    progress: Option<Instant>,
    /// In a cork's list: its round will write the queue.
    corked: bool,
    /// The one close request; set, nothing more is accepted from publishers.
    close: Option<CloseReason>,
    /// Our close frame is queued: nothing at all may follow it.
    sealed: bool,
    /// A write failed: the link is broken, the queue discarded.
    failed: bool,
    /// The connection's task, to wake when it must drive or close.
    waker: Option<Waker>,
}

/// The outbound side shared by every publisher and the connection's task.
pub(crate) struct Outbox {
    /// Queue, socket and close request under one short lock, never held across an await.
    state: Mutex<State>,
    limits: Limits,
    /// The hub's count of refusing connections, kept by `set_refused`.
    backpressure: Arc<Backpressure>,
    /// Set when the client negotiated compression.
    deflate: Option<Deflating>,
    /// The hub's counters: messages and bytes sent.
    metrics: Arc<Metrics>,
    /// The hub's broadcasts kept for the end of a round: written before any other push.
    fanout: Arc<Fanout>,
    /// For the eviction log line.
    conn_id: u64,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        set_refused(state, false, &self.backpressure);
        self.backpressure.outbox_dropped();
        if let Some(deflate) = &self.deflate {
            deflate.policy.connection_closed();
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("conn_id", &self.conn_id)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    pub(crate) fn new(
        conn_id: u64,
        limits: Limits,
        backpressure: Arc<Backpressure>,
        deflate: Option<Deflating>,
        metrics: Arc<Metrics>,
        fanout: Arc<Fanout>,
    ) -> Self {
        backpressure.outbox_created();
        if let Some(deflate) = &deflate {
            deflate.policy.connection_opened();
        }
        Outbox {
            state: Mutex::new(State::default()),
            limits,
            backpressure,
            deflate,
            metrics,
            fanout,
            conn_id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything that could
        // panic (a write), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands over the socket's write half once the upgrade is done; what was queued
    /// before goes out with the connection task's first drive.
    pub(crate) fn attach(&self, writer: Writer) {
        let mut state = self.lock();
        state.writer = Some(writer);
        let queued = !state.queue.is_empty();
        set_refused(&mut state, queued, &self.backpressure);
    }

    /// Sends a message: written now, at the end of the current cork's round, or, when the
    /// kernel is refusing, queued within the limits. Never waits. `Full` means the
    /// connection was just evicted. Broadcasts kept for the end of the round go first, so
    /// this message never overtakes one made before it.
    pub(crate) fn try_push(self: &Arc<Self>, message: Message) -> Result<(), PushError> {
        self.fanout.settle();
        self.push_now(message)
    }

    /// [`Outbox::try_push`] without settling the fanout: the fanout's own walk.
    fn push_now(self: &Arc<Self>, message: Message) -> Result<(), PushError> {
        // Outside the lock: compressing for this client alone (a reply, a send) takes time.
        let message = match &self.deflate {
            Some(deflate) => {
                message.for_compressing_peer(deflate.window_bits, deflate.policy.min_size)
            }
            None => message,
        };
        let mut state = self.lock();
        self.push_locked(&mut state, message)?;
        if state.refused {
            return Ok(()); // the connection's task is driving the queue
        }
        if cork::is_active() && state.queue.len() < FRAMES_PER_WRITE {
            if !state.corked {
                state.corked = true;
                drop(state);
                cork::add(self.clone());
            }
            return Ok(());
        }
        self.write_now(state);
        Ok(())
    }

    /// Appends a message to the queue, within the limits while the kernel refuses.
    fn push_locked(&self, state: &mut State, message: Message) -> Result<(), PushError> {
        if state.close.is_some() || state.sealed || state.failed {
            return Err(PushError::Closed);
        }
        if state.refused || state.writer.is_none() {
            let over_count = state.queue.len() >= self.limits.messages;
            let over_bytes =
                !state.queue.is_empty() && state.bytes + message.wire().len() > self.limits.bytes;
            if over_count || over_bytes {
                self.evict_locked(state, CloseReason::SLOW_CONSUMER);
                return Err(PushError::Full);
            }
        }
        cork::count_push();
        self.metrics.sent(
            Kind::of(message.is_text()),
            message.uncompressed_len(),
            message.wire().len(),
            cork::is_active(),
        );
        state.bytes += message.wire().len();
        state.queue.push_back(message);
        Ok(())
    }

    /// A round's broadcasts (the fanout's walk): with nothing queued, on a plain TCP
    /// socket, all of them leave in one `send(2)` of the run's shared bytes (the plain
    /// ones, or the deflated ones for a client compressing with the default window) and
    /// nothing is queued unless the kernel refuses part of it. Returns how many messages
    /// were taken, and which lane's metrics the walk still has to count for this
    /// recipient (it counts them in bulk).
    pub(crate) fn push_run(self: &Arc<Self>, run: &Run) -> (usize, Sent) {
        let (lane, sent) = match &self.deflate {
            None => (&run.plain, Sent::Plain),
            Some(d) if d.window_bits == DEFAULT_WINDOW_BITS => {
                (run.deflated(d.policy.min_size), Sent::Deflated)
            }
            // A smaller window: deflated for this client alone, message by message.
            Some(_) => {
                let taken = run
                    .plain
                    .messages
                    .iter()
                    .take_while(|m| self.push_now((*m).clone()).is_ok())
                    .count();
                return (taken, Sent::Counted);
            }
        };
        let mut state = self.lock();
        let direct = !state.refused
            && state.queue.is_empty()
            && matches!(state.writer, Some(Writer::Tcp(_)))
            && state.close.is_none()
            && !state.sealed
            && !state.failed;
        if !direct {
            let mut taken = 0;
            for message in &lane.messages {
                if self.push_locked(&mut state, message.clone()).is_err() {
                    break;
                }
                taken += 1;
            }
            self.write_now(state);
            return (taken, Sent::Counted);
        }
        let Some(writer) = state.writer.as_mut() else {
            return (0, Sent::Counted);
        };
        let written = match writer.poll_write(None, &[IoSlice::new(&lane.wire)]) {
            Poll::Ready(Ok(n)) if n == lane.wire.len() => return (lane.messages.len(), sent),
            Poll::Ready(Ok(n)) => n,
            Poll::Pending => 0,
            Poll::Ready(Err(_)) => {
                fail(&mut state, &self.backpressure);
                return (lane.messages.len(), sent);
            }
        };
        // The kernel took `written` bytes: the rest waits, from the frame it stopped in.
        let first = lane.ends.partition_point(|&end| end <= written);
        let start = first.checked_sub(1).map_or(0, |i| lane.ends[i]);
        state.written = written - start;
        state.bytes = lane.wire.len() - written;
        state.queue.extend(lane.messages[first..].iter().cloned());
        self.write_now(state);
        (lane.messages.len(), sent)
    }

    /// A control frame from the connection itself (a ping, a pong): never refused by the
    /// limits while the connection is open, and sent ahead of queued data (after a frame
    /// already partly written), so a flood of data never starves it.
    pub(crate) fn push_control(&self, frame: Message) {
        let mut state = self.lock();
        if state.sealed || state.failed {
            return;
        }
        let at = usize::from(state.written > 0).min(state.queue.len());
        // A ping flood from a client that does not read must not grow the queue: a pong
        // still waiting (not even partly written) is replaced by the newer one, as RFC
        // 6455 §5.5.3 allows. Control frames sit at the front, so a short look suffices.
        let kind = frame.wire().first().copied();
        let waiting = (at..state.queue.len().min(at + 2))
            .find(|&i| state.queue[i].wire().first().copied() == kind);
        if let Some(i) = waiting {
            let old = std::mem::replace(&mut state.queue[i], frame);
            state.bytes = state.bytes - old.wire().len() + state.queue[i].wire().len();
        } else {
            state.bytes += frame.wire().len();
            state.queue.insert(at, frame);
        }
        self.write_now(state);
    }

    /// Queues our close frame after everything queued; nothing is accepted after it.
    pub(crate) fn seal(&self, close_frame: Message) {
        let mut state = self.lock();
        if state.sealed || state.failed {
            return;
        }
        state.sealed = true;
        state.bytes += close_frame.wire().len();
        state.queue.push_back(close_frame);
        self.write_now(state);
    }

    /// Writes the queue now unless the kernel is refusing (then the connection's task
    /// owns the writing). A refusal here hands the rest to that task.
    fn write_now(&self, mut state: MutexGuard<'_, State>) {
        if state.refused || state.queue.is_empty() || state.writer.is_none() {
            return;
        }
        match write_queue(&mut state, None) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending => {
                set_refused(&mut state, true, &self.backpressure);
                state.progress = Some(Instant::now());
                // What the kernel refused must fit the limits, as if pushed one by one.
                let len = state.queue.len();
                if len > self.limits.messages || (len > 1 && state.bytes > self.limits.bytes) {
                    self.evict_locked(&mut state, CloseReason::SLOW_CONSUMER);
                }
                wake(&state);
            }
            Poll::Ready(Err(_)) => fail(&mut state, &self.backpressure),
        }
    }

    /// Asks the connection to close after writing what is queued. The first request wins;
    /// returns false if the connection was already closing.
    pub(crate) fn close(&self, reason: CloseReason) -> bool {
        // Broadcasts made before the close reach this connection before its close frame.
        self.fanout.settle();
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        state.close = Some(reason);
        wake(&state);
        true
    }

    /// Closes at once, discarding the queue (a slow consumer would not read it anyway);
    /// only a frame already partly written is kept, so the stream stays valid.
    fn evict_locked(&self, state: &mut State, reason: CloseReason) -> bool {
        if state.close.is_some() {
            return false;
        }
        if reason == CloseReason::SLOW_CONSUMER {
            self.metrics.evicted(self.conn_id);
            tracing::info!(
                conn_id = self.conn_id,
                queued = state.queue.len(),
                bytes = state.bytes,
                refused = state.refused,
                stalled = ?state.progress.map(|p| p.elapsed()),
                "evicting slow consumer: send queue full"
            );
        }
        let keep = usize::from(state.written > 0).min(state.queue.len());
        state.queue.truncate(keep);
        // An evicted connection no longer holds publishers back.
        set_refused(state, false, &self.backpressure);
        state.bytes = state
            .queue
            .front()
            .map_or(0, |f| f.wire().len() - state.written);
        state.close = Some(reason);
        wake(state);
        true
    }

    /// The connection's task: writes what the kernel refused as the socket allows, and
    /// resolves when the connection must close or the link broke.
    pub(crate) fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<Drive> {
        let mut state = self.lock();
        if drive(&mut state, cx, &self.backpressure).is_err() {
            return Poll::Ready(Drive::Failed);
        }
        if let Some(reason) = &state.close {
            return Poll::Ready(Drive::Close(reason.clone()));
        }
        register(&mut state, cx);
        Poll::Pending
    }

    /// The connection's task, closing: resolves with true once everything queued (our
    /// close frame last) is written, false if the link broke.
    pub(crate) fn poll_flushed(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut state = self.lock();
        if drive(&mut state, cx, &self.backpressure).is_err() {
            return Poll::Ready(false);
        }
        if state.queue.is_empty() {
            return Poll::Ready(true);
        }
        register(&mut state, cx);
        Poll::Pending
    }

    /// Since when the kernel has refused our writes without taking a byte (`None`: it
    /// is not refusing); `write_wait` is measured from here.
    pub(crate) fn stalled_since(&self) -> Option<Instant> {
        let state = self.lock();
        if state.refused { state.progress } else { None }
    }
}

impl cork::Corked for Outbox {
    /// The end of a cork's round: writes what the round queued.
    fn uncork(&self) {
        let mut state = self.lock();
        state.corked = false;
        self.write_now(state);
    }
}

/// The connection's task writes the queue when the kernel refused it, or before the
/// upgrade's first drive; the waker it polls with is registered with the socket.
fn drive(state: &mut State, cx: &mut Context<'_>, backpressure: &Backpressure) -> Result<(), ()> {
    if state.failed {
        return Err(());
    }
    if state.queue.is_empty() || state.writer.is_none() {
        return Ok(());
    }
    let before = state.bytes;
    match write_queue(state, Some(cx)) {
        Poll::Ready(Ok(())) => {
            set_refused(state, false, backpressure);
            state.progress = None;
        }
        Poll::Pending => {
            set_refused(state, true, backpressure);
            if state.bytes != before || state.progress.is_none() {
                state.progress = Some(Instant::now());
            }
        }
        Poll::Ready(Err(_)) => {
            fail(state, backpressure);
            return Err(());
        }
    }
    Ok(())
}

/// Writes queued frames, up to [`FRAMES_PER_WRITE`] per `writev`, until the queue is empty
/// (`Ready(Ok)`) or the socket refuses (`Pending`). Nothing is copied: each slice is the
/// frame's shared buffer.
fn write_queue(state: &mut State, mut cx: Option<&mut Context<'_>>) -> Poll<std::io::Result<()>> {
    let State {
        writer: Some(writer),
        queue,
        written,
        bytes,
        ..
    } = state
    else {
        return Poll::Pending;
    };
    while !queue.is_empty() {
        let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE];
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(queue.iter()) {
            let wire = frame.wire();
            *slot = IoSlice::new(if count == 0 { &wire[*written..] } else { wire });
            count += 1;
        }
        let n = match coalesced(&slices[..count], |slices| {
            writer.poll_write(cx.as_deref_mut(), slices)
        }) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => return Poll::Pending,
        };
        *bytes -= n;
        *written += n;
        while let Some(front) = queue.front() {
            let len = front.wire().len();
            if *written < len {
                break;
            }
            *written -= len;
            queue.pop_front();
        }
    }
    if queue.capacity() > 4 * FRAMES_PER_WRITE {
        *queue = VecDeque::new(); // a burst's queue is not kept for the connection's life
    }
    writer.poll_flush(cx)
}

/// Frames up to this many bytes in all are copied into one buffer before a write.
const COALESCE_BYTES: usize = 16 * 1024;

thread_local! {
    /// Where small frames are gathered for one write (µWebSockets' cork buffer).
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `write` with the slices, or, when there are several and they are small, with
/// one slice holding their copy: the kernel's cost per `iovec` in a `writev` is larger
/// than a user-space copy of a few hundred bytes (measured: at 8 frames of 70 bytes per
/// write, as many system calls as bun-uws but 15 % more server CPU, until coalesced).
fn coalesced<T>(slices: &[IoSlice<'_>], write: impl FnOnce(&[IoSlice<'_>]) -> T) -> T {
    let total: usize = slices.iter().map(|s| s.len()).sum();
    if slices.len() < 2 || total > COALESCE_BYTES {
        return write(slices);
    }
    GATHER.with(|gather| {
        let mut gather = gather.borrow_mut();
        gather.clear();
        for slice in slices {
            gather.extend_from_slice(slice);
        }
        write(&[IoSlice::new(&gather)])
    })
}

/// Keeps the hub's count of refusing connections in step with `refused`.
fn set_refused(state: &mut State, refused: bool, backpressure: &Backpressure) {
    if state.refused == refused {
        return;
    }
    state.refused = refused;
    if refused {
        backpressure.refusing();
    } else {
        backpressure.accepting();
    }
}

fn fail(state: &mut State, backpressure: &Backpressure) {
    set_refused(state, false, backpressure);
    state.failed = true;
    state.queue = VecDeque::new();
    state.bytes = 0;
    wake(state);
}

fn wake(state: &State) {
    if let Some(waker) = &state.waker {
        waker.wake_by_ref();
    }
}

fn register(state: &mut State, cx: &Context<'_>) {
    match &mut state.waker {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        slot => *slot = Some(cx.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: usize) -> Limits {
        Limits {
            messages,
            bytes: 1 << 20,
        }
    }

    #[test]
    fn a_waiting_pong_is_replaced_not_added() {
        let o = Arc::new(Outbox::new(
            1,
            limits(4),
            Default::default(),
            None,
            Default::default(),
            Default::default(),
        ));
        o.try_push("data".into()).unwrap();
        for i in 0..100u8 {
            o.push_control(Message::pong(&[i]));
        }
        o.push_control(Message::ping());
        let state = o.lock();
        assert_eq!(state.queue.len(), 3, "one ping, one pong, the data");
        assert!(
            state
                .queue
                .iter()
                .any(|m| m.wire() == Message::pong(&[99]).wire())
        );
        assert_eq!(
            state.bytes,
            state.queue.iter().map(|m| m.wire().len()).sum::<usize>()
        );
    }

    #[test]
    fn before_the_socket_frames_queue_within_the_limits() {
        let o = Arc::new(Outbox::new(
            1,
            limits(2),
            Default::default(),
            None,
            Default::default(),
            Default::default(),
        ));
        assert_eq!(o.try_push("a".into()), Ok(()));
        assert_eq!(o.try_push("b".into()), Ok(()));
        assert_eq!(o.try_push("c".into()), Err(PushError::Full), "evicted");
        assert!(!o.close(CloseReason::SHUTDOWN), "first close wins");
        assert_eq!(o.try_push("d".into()), Err(PushError::Closed));
        assert!(o.lock().queue.is_empty(), "an evicted queue is discarded");
    }

    #[tokio::test]
    async fn frames_go_straight_to_the_socket() {
        let (client, server) = tokio::io::duplex(64);
        let o = Arc::new(Outbox::new(
            1,
            limits(4),
            Default::default(),
            None,
            Default::default(),
            Default::default(),
        ));
        o.attach(Writer::Stream(Box::new(server)));
        o.try_push("hi".into()).unwrap();
        assert!(o.lock().queue.is_empty(), "written at once");
        drop(o);
        let mut got = Vec::new();
        let mut client = client;
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"\x81\x02hi");
    }

    #[tokio::test]
    async fn what_the_kernel_refuses_is_counted_and_the_non_reader_evicted() {
        let (_client, server) = tokio::io::duplex(16);
        let o = Arc::new(Outbox::new(
            1,
            limits(3),
            Default::default(),
            None,
            Default::default(),
            Default::default(),
        ));
        o.attach(Writer::Stream(Box::new(server)));
        let ten = Message::text("0123456789");
        o.try_push(ten.clone()).unwrap(); // 12 bytes: fits
        o.try_push(ten.clone()).unwrap(); // 4 written, 8 refused
        assert!(o.stalled_since().is_some());
        o.try_push(ten.clone()).unwrap();
        o.try_push(ten.clone()).unwrap();
        assert_eq!(o.try_push(ten), Err(PushError::Full));
        let state = o.lock();
        assert_eq!(
            state.queue.len(),
            1,
            "only the partly written frame is kept"
        );
        assert_eq!(state.close, Some(CloseReason::SLOW_CONSUMER));
    }
}
