//! Token buckets (the `governor` crate's GCRA): a connection's budget of inbound messages
//! (`client_rate`, `client_burst`) and the hub's rate of new connections per source
//! address (`connect_rate_per_ip`).
//!
//! Bookkeeping only: what is over a budget and for how long. The connection asks its
//! [`Budget`] before it handles a message and decides what to answer; the hub asks its
//! [`ConnectRate`] when it admits an upgrade. A refused check takes no token (GCRA leaves
//! the state as it was), which the hub relies on so that one upgrade request, asked about
//! by the accept loop's fast path and then again by hyper's endpoint, costs one token.
//! Must not know a socket, HTTP or a connection.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::MAX_RATE;

/// One connection's bucket. The clock is named rather than governor's default, so
/// enabling governor's `quanta` feature elsewhere cannot change what a connection holds
/// (this one is 40 bytes: the state, the quota, the start instant).
type Bucket = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<Instant>>;

/// The buckets of every address that connected lately, under one short lock (as the
/// hub's `max_connections_per_ip` count).
type Buckets =
    RateLimiter<IpAddr, HashMapStateStore<IpAddr>, MonotonicClock, NoOpMiddleware<Instant>>;

/// How often the per-address map forgets the addresses whose bucket is full again.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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

/// `connect_rate_per_ip`: a bucket per source address, forgotten once it is full again.
#[derive(Debug)]
pub(crate) struct ConnectRate {
    buckets: Buckets,
    /// New connections per second per address, for the refusal.
    rate: u32,
    /// When the map was last swept, in milliseconds since `epoch`.
    swept_at: AtomicU64,
    epoch: Instant,
}

impl ConnectRate {
    /// The hub's connect rate, or `None` when `connect_rate_per_ip` is 0 (off). The burst is
    /// the rate: `rate` upgrades at once, then one every `1/rate` seconds.
    pub(crate) fn new(rate: usize) -> Option<ConnectRate> {
        let rate = NonZeroU32::new(clamp(rate.min(MAX_RATE)))?;
        Some(ConnectRate {
            buckets: RateLimiter::new(
                Quota::per_second(rate),
                HashMapStateStore::default(),
                MonotonicClock,
            ),
            rate: rate.get(),
            swept_at: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// New connections per second per address.
    pub(crate) fn rate(&self) -> u32 {
        self.rate
    }

    /// Takes a token for a new connection from `ip`, or says how long until one is there:
    /// a refusal takes nothing.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let result = self.buckets.check_key(&ip);
        let now = Instant::now();
        self.sweep_if_due(now);
        result.map_err(|not_until| not_until.wait_time_from(now))
    }

    /// Addresses whose bucket is full again are the same as never seen: forgets them, at
    /// most every `SWEEP_EVERY` (one caller sweeps, the others carry on), so the map holds
    /// about the addresses of the last second.
    fn sweep_if_due(&self, now: Instant) {
        let since = u64::try_from(now.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX);
        let last = self.swept_at.load(Ordering::Relaxed);
        if since.saturating_sub(last) < SWEEP_EVERY.as_millis() as u64 {
            return;
        }
        if self
            .swept_at
            .compare_exchange(last, since, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
    }

    /// Addresses remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// The whole seconds a client should wait (`Retry-After`), at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
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
        assert!(ConnectRate::new(0).is_none());
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

    #[test]
    fn a_refused_connect_takes_no_token_and_others_are_apart() {
        // One a second: nothing comes back while the test runs.
        let limit = ConnectRate::new(1).unwrap();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert_eq!(limit.check(a), Ok(()));
        // Asked again and again while refused: still one token away, not more.
        for _ in 0..10 {
            let wait = limit.check(a).unwrap_err();
            assert!(wait <= Duration::from_secs(1), "{wait:?}");
        }
        assert_eq!(limit.check(b), Ok(()));
        assert_eq!(limit.len(), 2);
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }

    #[test]
    fn the_map_forgets_addresses_whose_bucket_is_full_again() {
        // The fastest rate: a bucket is full again a nanosecond after its token was taken.
        let limit = ConnectRate::new(MAX_RATE).unwrap();
        for i in 0..100u8 {
            assert_eq!(limit.check([10, 0, 0, i].into()), Ok(()));
        }
        assert_eq!(limit.len(), 100);
        // Not due yet: nothing is forgotten.
        limit.sweep_if_due(limit.epoch);
        assert_eq!(limit.len(), 100);
        // A sweep period later, every one of them is.
        limit.sweep_if_due(limit.epoch + SWEEP_EVERY * 2);
        assert_eq!(limit.len(), 0);
    }
}
