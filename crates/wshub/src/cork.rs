//! Corking: every frame a socket is given in one round leaves in one system call.
//!
//! A round is one poll of a connection's task: it reads what the client sent, runs the
//! handler for each message, and whatever those publish is only queued in the recipients'
//! outboxes (each noted once in this thread's list). When the poll returns, ready or not,
//! the list is flushed: one `writev` per recipient with all of its frames. So a client
//! that sends 8 messages in one packet costs each recipient one system call, not 8 (what
//! µWebSockets does around its event handlers). A poll is synchronous and runs on one
//! thread, so a thread-local list is exact. Outside a round (a publish from an HTTP
//! handler, a timer, another thread) frames are written at once.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::outbox::Outbox;

thread_local! {
    /// Whether a round is open on this thread.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Outboxes with frames queued in this round (its allocation is reused).
    static CORKED: RefCell<Vec<Arc<Outbox>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `poll` (one poll of a task's future) as a round: what it publishes is written
/// when it returns. A closure rather than a future adapter, so the caller's future is
/// stored once, pinned in place (an adapter's `async` block held it twice: 720 bytes
/// more per connection).
pub(crate) fn round<R>(poll: impl FnOnce() -> R) -> R {
    let _round = Round::open();
    poll()
}

/// True inside a round: pushes queue now and are written when it ends.
pub(crate) fn is_active() -> bool {
    ACTIVE.with(Cell::get)
}

/// Notes an outbox that queued frames in the current round.
pub(crate) fn add(outbox: Arc<Outbox>) {
    CORKED.with(|list| list.borrow_mut().push(outbox));
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
        let mut corked = CORKED.with(|list| std::mem::take(&mut *list.borrow_mut()));
        for outbox in corked.drain(..) {
            outbox.uncork();
        }
        CORKED.with(|list| {
            let mut list = list.borrow_mut();
            if list.capacity() < corked.capacity() {
                *list = corked;
            }
        });
    }
}
