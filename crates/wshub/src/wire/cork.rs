//! Corking: every frame a socket is given in one round leaves in one system call.
//!
//! A round is one poll of a connection's task: it reads what the client sent, runs the
//! handler for each message, and whatever those publish is only queued in the recipients'
//! outboxes (each noted once in this thread's list). When the poll returns, ready or not,
//! the list is flushed: one `writev` per recipient with all of its frames. So a client
//! that sends 8 messages in one packet costs each recipient one system call, not 8. A
//! poll is synchronous and runs on one thread, so a thread-local list is exact. Outside a
//! round (a publish from an HTTP handler, a timer, another thread) frames are written at
//! once.
//!
//! µWebSockets goes further: its cork spans a whole event-loop iteration, so ten clients
//! publishing at once cost each recipient one write, not ten. The same is had here on a
//! runtime whose workers call [`flush_corked`] when they park (the `wshub` binary's does:
//! `Builder::on_thread_park`): once a worker has done so, its list is kept across rounds
//! and flushed when it runs out of ready tasks, or after [`MAX_ROUNDS`] rounds, whichever
//! comes first. A thread that never called it flushes every round.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// What a round writes when it ends: an outbox. A trait, so that the cork, which the
/// outbox consults on every push, names no outbox and sits below it.
pub(crate) trait Corked {
    /// The end of a cork's round: writes what the round queued.
    fn uncork(&self);
}

thread_local! {
    /// Whether a round is open on this thread.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Outboxes with frames queued in this round (its allocation is reused).
    static CORKED: RefCell<Vec<Arc<dyn Corked>>> = const { RefCell::new(Vec::new()) };
    /// The outbox of the connection being polled (its address), see `round`.
    static OWN: Cell<usize> = const { Cell::new(0) };
    /// Publishers' own outboxes, written after the others.
    static LAST: RefCell<Vec<Arc<dyn Corked>>> = const { RefCell::new(Vec::new()) };
    /// This worker calls `flush_corked` when it parks: its list may outlive a round.
    static DEFERRING: Cell<bool> = const { Cell::new(false) };
    /// Rounds since this thread's list was last flushed.
    static ROUNDS: Cell<u32> = const { Cell::new(0) };
    /// Messages pushed on this thread, ever: a connection compares it before and after
    /// its handler to learn whether it published (see `backpressure`).
    static PUSHES: Cell<u64> = const { Cell::new(0) };
}

/// Counts one message pushed to an outbox.
pub(crate) fn count_push() {
    PUSHES.with(|pushes| pushes.set(pushes.get().wrapping_add(1)));
}

/// Messages pushed on this thread so far.
pub(crate) fn pushes() -> u64 {
    PUSHES.with(Cell::get)
}

/// Runs `poll` (one poll of a task's future) as a round: what it publishes is written
/// when it returns. A closure rather than a future adapter, so the caller's future is
/// stored once, pinned in place (an adapter's `async` block held it twice: 720 bytes
/// more per connection).
///
/// `own` is the polled connection's outbox: its frames are written after everyone
/// else's, so a publisher hears back about its message only once the others were sent
/// it, and a fast publisher cannot outrun its own fan-out.
pub(crate) fn round<T, R>(own: &Arc<T>, poll: impl FnOnce() -> R) -> R {
    let _round = Round::open();
    let outer = OWN.with(|o| o.replace(Arc::as_ptr(own).cast::<()>() as usize));
    let result = poll();
    OWN.with(|o| o.set(outer));
    result
}

/// Runs `deliver` as a round of its own, for deliveries that come from no connection
/// (a broker's messages from other nodes): a burst of them handled in one poll leaves
/// in one write per recipient, as a client's burst does.
pub(crate) fn batch<R>(deliver: impl FnOnce() -> R) -> R {
    let _round = Round::open();
    deliver()
}

/// True inside a round: pushes queue now and are written when it ends.
pub(crate) fn is_active() -> bool {
    ACTIVE.with(Cell::get)
}

/// On a deferring worker, the list is flushed at the latest after this many rounds, so a
/// worker that never runs out of work still writes every few dozen polls.
pub(crate) const MAX_ROUNDS: u32 = 32;

/// Writes everything this thread corked. Call it from your runtime's
/// `Builder::on_thread_park` to batch the writes of all connections a worker polled
/// before it went idle, as `wshub serve` does; without it, each connection's poll is
/// flushed on its own (correct, with less batching).
pub fn flush_corked() {
    DEFERRING.with(|deferring| deferring.set(true));
    if !ACTIVE.with(Cell::get) {
        flush();
    }
}

/// Notes an outbox that queued frames in the current round.
pub(crate) fn add(outbox: Arc<dyn Corked>) {
    if Arc::as_ptr(&outbox).cast::<()>() as usize == OWN.with(Cell::get) {
        LAST.with(|list| list.borrow_mut().push(outbox));
    } else {
        CORKED.with(|list| list.borrow_mut().push(outbox));
    }
}

/// An open round; closing it (on drop, also when unwinding) writes what it queued.
struct Round {
    /// False for a round opened inside another: the outer one flushes.
    outermost: bool,
}

impl Round {
    fn open() -> Round {
        Round {
            outermost: !ACTIVE.with(|active| active.replace(true)),
        }
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        ACTIVE.with(|active| active.set(false));
        if DEFERRING.with(Cell::get) {
            let rounds = ROUNDS.with(|rounds| {
                rounds.set(rounds.get() + 1);
                rounds.get()
            });
            if rounds < MAX_ROUNDS {
                return;
            }
        }
        flush();
    }
}

/// Writes what every outbox in this thread's lists queued, publishers' own last.
fn flush() {
    ROUNDS.with(|rounds| rounds.set(0));
    uncork_all(&CORKED);
    uncork_all(&LAST);
    crate::metrics::flush_thread();
}

fn uncork_all(list: &'static std::thread::LocalKey<RefCell<Vec<Arc<dyn Corked>>>>) {
    let mut corked = list.with(|list| std::mem::take(&mut *list.borrow_mut()));
    for outbox in corked.drain(..) {
        outbox.uncork();
    }
    // Give the allocation back for the next round.
    list.with(|list| {
        let mut list = list.borrow_mut();
        if list.capacity() < corked.capacity() {
            *list = corked;
        }
    });
}
