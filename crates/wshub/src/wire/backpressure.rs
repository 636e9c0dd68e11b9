//! Backpressure from the recipients' sockets to the publishing clients.
//!
//! A publish never waits, so a client that publishes in a closed loop is paced only by
//! its own copy coming back: when the recipients read slower than it publishes, their
//! kernel buffers fill, then their queues, and they would be evicted although they read.
//! So the hub counts the connections whose kernel is refusing our writes, and while that
//! is a large share of them (an eighth, and at least [`MIN_REFUSED`]), a connection that
//! just published stops reading from its client until the count falls again: TCP's own
//! flow control then slows the publisher down, and nobody's queue grows.
//!
//! A few stalled clients never pause anyone; many that stopped reading for good pause
//! publishers at most `write_wait`, after which they are dropped.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Below this many refusing connections the hub never counts as congested.
const MIN_REFUSED: usize = 2;

/// The hub-wide count, shared by every outbox.
#[derive(Debug, Default)]
pub(crate) struct Backpressure {
    /// Outboxes that exist (connections from registration to the end of their task).
    outboxes: AtomicUsize,
    /// Outboxes whose kernel refused our last write.
    refused: AtomicUsize,
    /// Publishers waiting for the count to fall.
    waiting: AtomicUsize,
    /// Wakes them when it does.
    relieved: Notify,
}

impl Backpressure {
    /// True while so many connections have bytes their kernel refused that publishers
    /// should wait.
    pub(crate) fn is_congested(&self) -> bool {
        let refused = self.refused.load(Ordering::SeqCst);
        refused >= MIN_REFUSED && refused * 8 >= self.outboxes.load(Ordering::SeqCst)
    }

    /// Resolves once the hub is not congested (at once if it is not).
    pub(crate) async fn relieved(&self) {
        let _waiting = Waiting::new(&self.waiting);
        loop {
            let relieved = self.relieved.notified();
            tokio::pin!(relieved);
            relieved.as_mut().enable();
            if !self.is_congested() {
                return;
            }
            relieved.await;
        }
    }

    pub(crate) fn outbox_created(&self) {
        self.outboxes.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn outbox_dropped(&self) {
        self.outboxes.fetch_sub(1, Ordering::SeqCst);
        self.wake_if_relieved();
    }

    pub(crate) fn refusing(&self) {
        self.refused.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn accepting(&self) {
        self.refused.fetch_sub(1, Ordering::SeqCst);
        self.wake_if_relieved();
    }

    fn wake_if_relieved(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 && !self.is_congested() {
            self.relieved.notify_waiters();
        }
    }
}

/// One waiting publisher, counted until it stops waiting (also when its wait is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
