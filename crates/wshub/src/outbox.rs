//! A connection's bounded outbound queue.
//!
//! The hub pushes into it without ever waiting (`try_push`); the connection's write pump
//! drains everything queued at once and writes it in one go. A full queue means a slow
//! consumer: the caller evicts that one connection and nobody else is slowed down.
//! The outbox also carries the one request to close, so a connection is closed once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::message::{CloseReason, Message};

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue holds `send_queue` messages already: the consumer is too slow.
    Full,
    /// The connection is closing; the message will not be delivered.
    Closed,
}

/// What the write pump takes out in one go.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// Messages to write, oldest first.
    pub(crate) messages: VecDeque<Message>,
    /// Set once the connection must close (after writing `messages`).
    pub(crate) close: Option<CloseReason>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Message>,
    close: Option<CloseReason>,
}

/// The per-connection queue shared by the hub (producer) and the write pump (consumer).
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Queue and close request under one short lock; never held across an await.
    state: Mutex<State>,
    /// Wakes the write pump; a notification sent while it is busy is kept, so none is lost.
    ready: Notify,
    /// Maximum queued messages (`send_queue`).
    capacity: usize,
    /// The hub's count of outboxes holding undelivered messages: this one counts while its
    /// queue is not empty. Readers look at it to hold back while the fan-out catches up.
    backlog: Arc<AtomicUsize>,
}

impl Outbox {
    pub(crate) fn new(capacity: usize, backlog: Arc<AtomicUsize>) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity,
            backlog,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a single push/take), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message without waiting.
    pub(crate) fn try_push(&self, message: Message) -> Result<(), PushError> {
        let was_empty;
        {
            let mut state = self.lock();
            if state.close.is_some() {
                return Err(PushError::Closed);
            }
            if state.queue.len() >= self.capacity {
                return Err(PushError::Full);
            }
            was_empty = state.queue.is_empty();
            state.queue.push_back(message);
        }
        // Only the first message since the last drain needs to wake the write pump: it
        // takes everything queued when it runs.
        if was_empty {
            self.backlog.fetch_add(1, Ordering::Relaxed);
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Asks the connection to close after writing what is queued. The first request wins;
    /// returns false if the connection was already closing.
    pub(crate) fn close(&self, reason: CloseReason) -> bool {
        self.request_close(reason, false)
    }

    /// Closes at once, discarding the queue (a slow consumer would not read it anyway).
    pub(crate) fn evict(&self, reason: CloseReason) -> bool {
        self.request_close(reason, true)
    }

    fn request_close(&self, reason: CloseReason, discard: bool) -> bool {
        {
            let mut state = self.lock();
            if state.close.is_some() {
                return false;
            }
            if discard && !state.queue.is_empty() {
                state.queue = VecDeque::new();
                self.backlog.fetch_sub(1, Ordering::Relaxed);
            }
            state.close = Some(reason);
        }
        self.ready.notify_one();
        true
    }

    /// Takes everything queued, swapping in `spare` (an empty queue whose allocation is
    /// reused, so a busy connection does not reallocate on every drain).
    pub(crate) fn drain(&self, spare: VecDeque<Message>) -> Drained {
        let mut state = self.lock();
        if !state.queue.is_empty() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
        let messages = std::mem::replace(&mut state.queue, spare);
        Drained {
            messages,
            close: state.close.clone(),
        }
    }

    /// Resolves when something was pushed or a close was requested since the last drain.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // A connection that ended with messages still queued no longer counts.
        if !self.lock().queue.is_empty() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_refuses_then_eviction_discards() {
        let backlog = Arc::new(AtomicUsize::new(0));
        let o = Outbox::new(2, backlog.clone());
        assert_eq!(o.try_push("a".into()), Ok(()));
        assert_eq!(o.try_push("b".into()), Ok(()));
        assert_eq!(o.try_push("c".into()), Err(PushError::Full));
        assert_eq!(backlog.load(Ordering::Relaxed), 1, "one outbox is behind");
        assert!(o.evict(CloseReason::SLOW_CONSUMER));
        assert_eq!(
            backlog.load(Ordering::Relaxed),
            0,
            "an evicted queue is gone"
        );
        assert!(!o.close(CloseReason::SHUTDOWN), "first close wins");
        let d = o.drain(VecDeque::new());
        assert!(d.messages.is_empty());
        assert_eq!(d.close, Some(CloseReason::SLOW_CONSUMER));
        assert_eq!(o.try_push("d".into()), Err(PushError::Closed));
    }

    #[test]
    fn graceful_close_keeps_the_queue() {
        let backlog = Arc::new(AtomicUsize::new(0));
        let o = Outbox::new(4, backlog.clone());
        o.try_push("a".into()).unwrap();
        o.try_push("b".into()).unwrap();
        o.close(CloseReason::SHUTDOWN);
        assert_eq!(backlog.load(Ordering::Relaxed), 1);
        let d = o.drain(VecDeque::new());
        assert_eq!(backlog.load(Ordering::Relaxed), 0);
        assert_eq!(d.messages.len(), 2);
        assert_eq!(d.close, Some(CloseReason::SHUTDOWN));
    }
}
