//! Token buckets (the `governor` crate's GCRA): a connection's budget of inbound messages
//! (`client_rate`, `client_burst`).
//!
//! Bookkeeping only: what is over a budget and for how long. The connection asks its
//! [`Budget`] before it handles a message and decides what to answer. Must not know a
//! socket, HTTP or a connection.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::MAX_RATE;

/// One connection's bucket. The clock is named rather than governor's default, so
/// enabling governor's `quanta` feature elsewhere cannot change what a connection holds
/// (this one is 40 bytes: the state, the quota, the start instant).
type Bucket = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<Instant>>;

/// `client_rate` and `client_burst`, resolved once for the whole hub.
#[derive(Debug)]
pub(crate) struct MessageRate {
    quota: Quota,
    /// Messages per second, for the error message.
    rate: u32,
    /// Messages refused in a row that a connection may send before it is closed: the burst.
    tolerance: u32,
}

/// One connection's budget: its bucket and how many messages in a row it refused. Only
/// made when `client_rate` is set (boxed, so a connection without one holds a null
/// pointer).
#[derive(Debug)]
pub(crate) struct Budget {
    bucket: Bucket,
    /// Messages refused since the last one within the budget. Atomic only to be `Sync`
    /// (the connection's info is shared by reference); one task writes it.
    over: AtomicU32,
}

/// What a message costs the connection's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spend {
    /// Within the budget: handle it.
    Within,
    /// Over the budget: refuse it (error 429, or dropped), keep the connection.
    Over,
    /// Still over after `client_burst` refused messages: close the connection.
    Exhausted,
}

impl MessageRate {
    /// The hub's message rate, or `None` when `client_rate` is 0 (off). `burst` defaults
    /// to twice the rate. The config is validated: a rate or burst that does not fit is
    /// clamped, never a panic.
    pub(crate) fn new(rate: usize, burst: Option<usize>) -> Option<MessageRate> {
        let rate = NonZeroU32::new(clamp(rate.min(MAX_RATE)))?;
        let burst = burst.unwrap_or_else(|| rate.get() as usize * 2);
        let burst = NonZeroU32::new(clamp(burst)).unwrap_or(NonZeroU32::MIN);
        Some(MessageRate {
            quota: Quota::per_second(rate).allow_burst(burst),
            rate: rate.get(),
            tolerance: burst.get(),
        })
    }

    /// Messages per second.
    pub(crate) fn rate(&self) -> u32 {
        self.rate
    }

    /// A new connection's budget: a full bucket.
    pub(crate) fn budget(&self) -> Box<Budget> {
        Box::new(Budget {
            bucket: RateLimiter::direct_with_clock(self.quota, MonotonicClock),
            over: AtomicU32::new(0),
        })
    }

    /// Takes a token for one inbound message from `budget`, or counts one more refusal.
    pub(crate) fn spend(&self, budget: &Budget) -> Spend {
        if budget.bucket.check().is_ok() {
            budget.over.store(0, Ordering::Relaxed);
            return Spend::Within;
        }
        let over = budget.over.load(Ordering::Relaxed).saturating_add(1);
        budget.over.store(over, Ordering::Relaxed);
        if over > self.tolerance {
            Spend::Exhausted
        } else {
            Spend::Over
        }
    }
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_is_none() {
        assert!(MessageRate::new(0, None).is_none());
    }

    #[test]
    fn a_budget_allows_the_burst_then_refuses_burst_more_then_is_exhausted() {
        // One token a second: nothing comes back while the test runs.
        let rate = MessageRate::new(1, Some(3)).unwrap();
        let budget = rate.budget();
        let spent: Vec<Spend> = (0..8).map(|_| rate.spend(&budget)).collect();
        assert_eq!(
            spent,
            [
                Spend::Within,
                Spend::Within,
                Spend::Within,
                Spend::Over,
                Spend::Over,
                Spend::Over,
                Spend::Exhausted,
                Spend::Exhausted,
            ]
        );
    }

    #[test]
    fn the_default_burst_is_twice_the_rate() {
        let rate = MessageRate::new(2, None).unwrap();
        let budget = rate.budget();
        let within = (0..10)
            .take_while(|_| rate.spend(&budget) == Spend::Within)
            .count();
        assert_eq!(within, 4);
        assert_eq!(rate.tolerance, 4);
    }
}
