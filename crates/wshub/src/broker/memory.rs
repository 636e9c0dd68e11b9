//! The single-node broker: streams, history and presence in this process's memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    Broker, BrokerFuture, Deliver, Event, History, HistoryLimits, IDEMPOTENCY_WINDOW, Member,
    NodeLink, Publication, StreamPosition,
};
use crate::id::ConnId;

/// The single-node broker: streams, history and presence in this process's memory. A
/// restart loses them, which the new epoch tells every client.
pub struct MemoryBroker {
    limits: HistoryLimits,
    deliver: std::sync::OnceLock<Deliver>,
    /// Streams sharded by channel name: publishers to different channels rarely share a
    /// lock, and a publication is delivered under its shard's lock (offset order).
    streams: Box<[Mutex<Streams>]>,
    /// Members per channel, by connection (ordered, so lists come out stable).
    presence: Mutex<HashMap<Arc<str>, BTreeMap<ConnId, Member>>>,
    /// Publications by (channel, idempotency key), for [`IDEMPOTENCY_WINDOW`].
    idempotent: Mutex<Idempotent>,
}

/// Answers remembered for retried publications.
#[derive(Default)]
struct Idempotent {
    by_key: HashMap<(Arc<str>, Box<str>), (Publication, Instant)>,
    last_sweep: Option<Instant>,
}

impl Idempotent {
    fn get(&mut self, channel: &str, key: &str, now: Instant) -> Option<Publication> {
        if self
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.last_sweep = Some(now);
            self.by_key
                .retain(|_, (_, at)| now.duration_since(*at) < IDEMPOTENCY_WINDOW);
        }
        let (publication, at) = self.by_key.get(&(channel.into(), key.into()))?;
        (now.duration_since(*at) < IDEMPOTENCY_WINDOW).then(|| publication.clone())
    }
}

/// Stream shards.
const SHARDS: usize = 16;

/// The streams of one shard, and when expired ones were last swept out.
struct Streams {
    by_channel: HashMap<Arc<str>, Stream>,
    last_sweep: Instant,
}

/// One channel's stream.
struct Stream {
    epoch: Arc<str>,
    offset: u64,
    /// (publication, when it was published), oldest first.
    kept: VecDeque<(Publication, Instant)>,
    last_publish: Instant,
}

impl Stream {
    fn new(now: Instant) -> Stream {
        Stream {
            epoch: new_epoch(),
            offset: 0,
            kept: VecDeque::new(),
            last_publish: now,
        }
    }

    /// Drops publications older than `ttl`; returns whether the stream itself is
    /// forgotten: nothing kept and nothing published for `ttl`. (A stream never
    /// published to is kept: it has lost nothing, so its epoch stays valid.)
    fn expire(&mut self, now: Instant, ttl: Duration) -> bool {
        while self
            .kept
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) >= ttl)
        {
            self.kept.pop_front();
        }
        self.offset > 0 && self.kept.is_empty() && now.duration_since(self.last_publish) >= ttl
    }
}

impl Streams {
    /// The channel's live stream, created (with a new epoch) if it has none or its history
    /// is gone. Expired streams of the shard are swept out at most once a second.
    fn current(&mut self, channel: &str, now: Instant, ttl: Duration) -> &mut Stream {
        if now.duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.last_sweep = now;
            self.by_channel.retain(|_, stream| !stream.expire(now, ttl));
        }
        if self
            .by_channel
            .get_mut(channel)
            .is_some_and(|stream| stream.expire(now, ttl))
        {
            self.by_channel.remove(channel);
        }
        self.by_channel
            .entry(channel.into())
            .or_insert_with(|| Stream::new(now))
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A broker keeping `limits` of history per channel.
    pub fn new(limits: HistoryLimits) -> MemoryBroker {
        MemoryBroker {
            limits,
            deliver: std::sync::OnceLock::new(),
            streams: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Streams {
                        by_channel: HashMap::new(),
                        last_sweep: Instant::now(),
                    })
                })
                .collect(),
            presence: Mutex::new(HashMap::new()),
            idempotent: Mutex::default(),
        }
    }

    fn deliver(&self, channel: &str, event: Event) {
        if let Some(deliver) = self.deliver.get() {
            deliver(channel, event);
        }
    }

    fn shard(&self, channel: &str) -> &Mutex<Streams> {
        use std::hash::BuildHasher;
        let hash =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(channel);
        &self.streams[(hash as usize) % SHARDS]
    }
}

/// A fresh epoch: unique across restarts of this process (time) and within it (counter).
pub(super) fn new_epoch() -> Arc<str> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}", nanos ^ n.rotate_left(40)).into()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Broker for MemoryBroker {
    fn start(&self, link: NodeLink) {
        let _ = self.deliver.set(link.deliver);
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        idempotency_key: Option<&'a str>,
    ) -> BrokerFuture<'a, Publication> {
        let now = Instant::now();
        // Held across the publication, so a retry racing its first attempt waits for it.
        let mut idempotent = idempotency_key.map(|_| lock(&self.idempotent));
        if let (Some(remembered), Some(key)) = (idempotent.as_mut(), idempotency_key)
            && let Some(first) = remembered.get(channel, key, now)
        {
            return Box::pin(std::future::ready(Ok(first)));
        }
        let mut streams = lock(self.shard(channel));
        let stream = streams.current(channel, now, self.limits.ttl);
        stream.offset += 1;
        stream.last_publish = now;
        let publication = Publication {
            offset: stream.offset,
            epoch: stream.epoch.clone(),
            data,
        };
        if self.limits.size > 0 {
            while stream.kept.len() >= self.limits.size {
                stream.kept.pop_front();
            }
            stream.kept.push_back((publication.clone(), now));
        }
        // Delivered under the streams lock: concurrent publishers to one channel reach the
        // hub in offset order.
        self.deliver(channel, Event::Publication(publication.clone()));
        drop(streams);
        if let (Some(remembered), Some(key)) = (idempotent.as_mut(), idempotency_key) {
            remembered
                .by_key
                .insert((channel.into(), key.into()), (publication.clone(), now));
        }
        Box::pin(std::future::ready(Ok(publication)))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> BrokerFuture<'a, History> {
        let now = Instant::now();
        let mut streams = lock(self.shard(channel));
        // A channel nobody has published to yet still has a position (offset 0) and an
        // epoch, so its first subscriber can recover from it later.
        let stream = streams.current(channel, now, self.limits.ttl);
        let position = StreamPosition {
            epoch: stream.epoch.clone(),
            offset: stream.offset,
        };
        let history = match since {
            Some(since) => {
                let oldest = stream
                    .kept
                    .front()
                    .map_or(stream.offset + 1, |(p, _)| p.offset);
                let recovered = since.epoch == stream.epoch
                    && since.offset <= stream.offset
                    && since.offset + 1 >= oldest;
                let publications = if recovered {
                    stream
                        .kept
                        .iter()
                        .filter(|(p, _)| p.offset > since.offset)
                        .map(|(p, _)| p.clone())
                        .collect()
                } else {
                    Vec::new()
                };
                History {
                    position,
                    publications,
                    recovered,
                }
            }
            None => {
                let take = limit.unwrap_or(0).min(stream.kept.len());
                History {
                    position,
                    publications: stream
                        .kept
                        .iter()
                        .skip(stream.kept.len() - take)
                        .map(|(p, _)| p.clone())
                        .collect(),
                    recovered: true,
                }
            }
        };
        Box::pin(std::future::ready(Ok(history)))
    }

    fn subscribe<'a>(&'a self, _channel: &'a str) -> BrokerFuture<'a, ()> {
        // One node: every publication is delivered here anyway.
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe<'a>(&'a self, _channel: &'a str) -> BrokerFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn join<'a>(&'a self, channel: &'a str, member: Member) -> BrokerFuture<'a, ()> {
        lock(&self.presence)
            .entry(channel.into())
            .or_default()
            .insert(member.conn, member.clone());
        self.deliver(channel, Event::Join(member));
        Box::pin(std::future::ready(Ok(())))
    }

    fn leave<'a>(&'a self, channel: &'a str, member: Member) -> BrokerFuture<'a, ()> {
        let mut presence = lock(&self.presence);
        if let Some(members) = presence.get_mut(channel) {
            members.remove(&member.conn);
            if members.is_empty() {
                presence.remove(channel);
            }
        }
        drop(presence);
        self.deliver(channel, Event::Leave(member));
        Box::pin(std::future::ready(Ok(())))
    }

    fn presence<'a>(&'a self, channel: &'a str) -> BrokerFuture<'a, Vec<Member>> {
        let members = lock(&self.presence)
            .get(channel)
            .map(|members| members.values().cloned().collect())
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(members)))
    }
}
