//! A connection's bounded outbound queue.
//!
//! The hub pushes into it without ever waiting (`try_push`); the connection's write pump
//! drains everything queued at once and writes it in one go. A full queue means a slow
//! consumer: the caller evicts that one connection and nobody else is slowed down.
//! The outbox also carries the one request to close, so a connection is closed once.

use std::collections::VecDeque;
use std::sync::Mutex;

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
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a single push/take), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message without waiting.
    pub(crate) fn try_push(&self, message: Message) -> Result<(), PushError> {
        {
            let mut state = self.lock();
            if state.close.is_some() {
                return Err(PushError::Closed);
            }
            if state.queue.len() >= self.capacity {
                return Err(PushError::Full);
            }
            state.queue.push_back(message);
        }
        self.ready.notify_one();
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
            if discard {
                state.queue = VecDeque::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_refuses_then_eviction_discards() {
        let o = Outbox::new(2);
        assert_eq!(o.try_push("a".into()), Ok(()));
        assert_eq!(o.try_push("b".into()), Ok(()));
        assert_eq!(o.try_push("c".into()), Err(PushError::Full));
        assert!(o.evict(CloseReason::SLOW_CONSUMER));
        assert!(!o.close(CloseReason::SHUTDOWN), "first close wins");
        let d = o.drain(VecDeque::new());
        assert!(d.messages.is_empty());
        assert_eq!(d.close, Some(CloseReason::SLOW_CONSUMER));
        assert_eq!(o.try_push("d".into()), Err(PushError::Closed));
    }

    #[test]
    fn graceful_close_keeps_the_queue() {
        let o = Outbox::new(4);
        o.try_push("a".into()).unwrap();
        o.close(CloseReason::SHUTDOWN);
        let d = o.drain(VecDeque::new());
        assert_eq!(d.messages.len(), 1);
        assert_eq!(d.close, Some(CloseReason::SHUTDOWN));
    }
}
