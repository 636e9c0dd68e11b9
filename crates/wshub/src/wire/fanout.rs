//! Broadcasts of one round, written once per recipient: µWebSockets' topic drain.
//!
//! Inside a [`cork`] round a broadcast is not pushed to every outbox at once. It is kept
//! here, once, and when the round ends the hub walks its connections a single time,
//! giving each all of the round's broadcasts in one `send(2)` of the same bytes (their
//! frames back to back, copied once for everybody). A recipient is then visited once per
//! round instead of once per message and once more to write: at 10,000 recipients that is
//! most of the user-space time per delivery (perf, BENCHMARKS.md).
//!
//! The order of each connection's frames is kept: any other push (a send, a channel
//! publication, a reply, a close), from any thread, first writes what is kept here
//! ([`Fanout::settle`]), and a settle holds the lock until every recipient has the
//! frames, so a push that comes after a broadcast never overtakes it.
//!
//! The publisher gets its copy where the walk meets it, as with µWebSockets' topics, not
//! last: publishers in a closed loop then answer during the walk, and the next round
//! carries all of their messages (writing publishers last halved the messages per write
//! at 10 publishers × 1,000 recipients). One cannot outrun its fan-out: its next message
//! waits for the walk, on any thread (the walk holds the fanout's lock).
//!
//! The walk itself is the hub's (it owns the registry): this module knows it only through
//! the one-method [`Walk`] trait, as the cork knows an outbox through `Corked`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use bytes::{Bytes, BytesMut};

use crate::compression::codec::DEFAULT_WINDOW_BITS;
use crate::message::Message;
use crate::metrics::Kind;
use crate::wire::cork;

/// A round's broadcasts are written at once when they reach this many frames or bytes:
/// a burst still leaves in writes of a useful size, and user space holds little.
const MAX_FRAMES: usize = 64;
const MAX_BYTES: usize = 256 * 1024;

/// What walks a hub's connections with a run of broadcasts: the hub.
pub(crate) trait Walk: Send + Sync {
    /// Gives every connection `run`.
    fn walk(&self, run: &Run);
}

/// Broadcasts kept until their round ends, in the order they were made: their frames as
/// every plain client is sent them, and as every client compressing with the default
/// window is (made at the first such recipient, then shared: deflated once for all).
pub(crate) struct Run {
    pub(crate) plain: Lane,
    /// `None`: no message is large enough to compress, so the plain lane serves.
    deflated: OnceLock<Option<Lane>>,
}

/// A run's frames in one form (plain or deflated).
pub(crate) struct Lane {
    /// The messages, in order.
    pub(crate) messages: Vec<Message>,
    /// Their frames back to back: what a recipient with nothing queued is sent.
    pub(crate) wire: Bytes,
    /// Where each message's frame ends in `wire`.
    pub(crate) ends: Vec<usize>,
    /// Per kind (text, binary): messages, payload bytes, wire bytes (for the metrics).
    pub(crate) counts: [(u64, u64, u64); 2],
}

impl Lane {
    fn new(messages: Vec<Message>) -> Lane {
        let mut ends = Vec::with_capacity(messages.len());
        let mut counts = [(0, 0, 0); 2];
        let mut total = 0;
        for message in &messages {
            total += message.wire().len();
            ends.push(total);
            let count = &mut counts[Kind::of(message.is_text()) as usize];
            count.0 += 1;
            count.1 += message.uncompressed_len() as u64;
            count.2 += message.wire().len() as u64;
        }
        let wire = match messages.as_slice() {
            [one] => one.wire_bytes().clone(),
            many => {
                let mut wire = BytesMut::with_capacity(total);
                for message in many {
                    wire.extend_from_slice(message.wire());
                }
                wire.freeze()
            }
        };
        Lane {
            messages,
            wire,
            ends,
            counts,
        }
    }
}

impl Run {
    fn new(messages: Vec<Message>) -> Run {
        Run {
            plain: Lane::new(messages),
            deflated: OnceLock::new(),
        }
    }

    /// The run as a client that compresses with the default window is sent it (messages
    /// under `min_size` plain): built by the first such recipient, shared by the rest.
    pub(crate) fn deflated(&self, min_size: usize) -> &Lane {
        self.deflated
            .get_or_init(|| {
                let messages = &self.plain.messages;
                messages.iter().any(|m| m.len() >= min_size).then(|| {
                    Lane::new(
                        messages
                            .iter()
                            .map(|m| m.for_compressing_peer(DEFAULT_WINDOW_BITS, min_size))
                            .collect(),
                    )
                })
            })
            .as_ref()
            .unwrap_or(&self.plain)
    }

    /// The lane [`Run::deflated`] gave, if a recipient asked for it.
    pub(crate) fn deflated_lane(&self) -> Option<&Lane> {
        self.deflated
            .get()
            .map(|lane| lane.as_ref().unwrap_or(&self.plain))
    }

    /// One message, now (a broadcast outside any round).
    pub(crate) fn single(message: Message) -> Run {
        Run::new(vec![message])
    }
}

#[derive(Default)]
struct Pending {
    messages: Vec<Message>,
    bytes: usize,
}

/// A hub's broadcasts waiting for the end of their round; every outbox holds it.
pub(crate) struct Fanout {
    /// Set while `pending` holds messages: what every push looks at first.
    has_pending: AtomicBool,
    /// Held by a settle until its walk is over.
    pending: Mutex<Pending>,
    /// The hub.
    walker: Weak<dyn Walk>,
}

impl Default for Fanout {
    /// A fanout of no hub (an outbox in a unit test): nothing is ever walked.
    fn default() -> Self {
        Fanout::new(Weak::<NoHub>::new())
    }
}

struct NoHub;

impl Walk for NoHub {
    fn walk(&self, _run: &Run) {}
}

thread_local! {
    /// The fanout this thread's cork list holds (its address), so it is added once.
    static REGISTERED: Cell<usize> = const { Cell::new(0) };
}

impl Fanout {
    pub(crate) fn new(walker: Weak<dyn Walk>) -> Fanout {
        Fanout {
            has_pending: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            walker,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A walk that panicked left the list empty or whole: still usable.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a broadcast made inside a round, to be written when the round ends.
    pub(crate) fn defer(self: &Arc<Self>, message: Message) {
        let full = {
            let mut pending = self.lock();
            pending.bytes += message.wire().len();
            pending.messages.push(message);
            self.has_pending.store(true, Ordering::Release);
            pending.messages.len() >= MAX_FRAMES || pending.bytes >= MAX_BYTES
        };
        // The publisher learns that it published (see `backpressure`).
        cork::count_push();
        let me = Arc::as_ptr(self).cast::<()>() as usize;
        if full {
            self.settle();
        } else if REGISTERED.with(|r| r.replace(me)) != me {
            cork::add(self.clone());
        }
    }

    /// Writes every broadcast kept so far to every connection; returns once they all
    /// have them (queued or written). Every other push calls it first.
    pub(crate) fn settle(&self) {
        if !self.has_pending.load(Ordering::Acquire) {
            return;
        }
        let mut pending = self.lock();
        if pending.messages.is_empty() {
            return;
        }
        let run = Run::new(std::mem::take(&mut pending.messages));
        pending.bytes = 0;
        if let Some(hub) = self.walker.upgrade() {
            hub.walk(&run);
        }
        // Cleared only now: a push on another thread meanwhile waited on the lock.
        self.has_pending.store(false, Ordering::Release);
    }
}

impl cork::Corked for Fanout {
    /// The end of this thread's round.
    fn uncork(&self) {
        let me = std::ptr::from_ref(self).cast::<()>() as usize;
        REGISTERED.with(|r| {
            if r.get() == me {
                r.set(0);
            }
        });
        self.settle();
    }
}
