//! The broker: where a channel's publications get their place in order, are kept for
//! recovery, and come back to the hub for delivery; and where presence is kept.
//!
//! The hub talks to a [`Broker`] and nothing else about channels' streams, so a node can
//! run alone ([`MemoryBroker`], the default) or share channels with other nodes through a
//! real distributed engine behind the same trait, without touching the hub.
//!
//! The contract a broker keeps:
//! - every publication of a channel gets the next `offset` of the channel's stream, within
//!   an `epoch` that changes whenever the stream's history is lost (a restart without
//!   persistence, an expired stream);
//! - publications of the channels this node is subscribed to come back through the
//!   [`Deliver`] sink in offset order per channel, each exactly once;
//! - [`Broker::history`] answers with the stream's current position and, when asked, the
//!   retained publications after a given position, or says they are no longer all there.
//!
//! The hub needs nothing more to promise gap-free, duplicate-free recovery: it buffers what
//! arrives while it reads history and merges the two by offset (see `channels`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::id::ConnId;

/// A position in a channel's stream: the publication with this `offset` in this `epoch`
/// (offset 0: before the first publication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// Names one life of the stream; a new epoch means the earlier history is gone.
    pub epoch: Arc<str>,
    /// The last publication's offset (1 for the first publication).
    pub offset: u64,
}

/// One message published to a channel, with its place in the channel's stream.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Its offset in the channel's stream.
    pub offset: u64,
    /// The stream's epoch when it was published.
    pub epoch: Arc<str>,
    /// The message: one JSON value, as text.
    pub data: Bytes,
}

/// A connection as presence lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The connection.
    pub conn: ConnId,
}

/// What a broker hands back to the hub for delivery.
#[derive(Debug, Clone)]
pub enum Event {
    /// A publication, in offset order within its channel.
    Publication(Publication),
    /// Someone subscribed to the channel.
    Join(Member),
    /// Someone left the channel.
    Leave(Member),
}

/// Where a broker delivers the events of the channels the node is subscribed to.
pub type Deliver = Arc<dyn Fn(&str, Event) + Send + Sync>;

/// A broker's answer to a history query.
#[derive(Debug, Clone)]
pub struct History {
    /// The stream's current position (what the next subscriber starts after).
    pub position: StreamPosition,
    /// The retained publications after the asked position, oldest first (empty when not
    /// asked or not recoverable).
    pub publications: Vec<Publication>,
    /// False if publications after the asked position are no longer all retained (other
    /// epoch, or older than the window): the client must resync.
    pub recovered: bool,
}

/// A broker failure (a remote engine unreachable, say); the hub reports it as code 500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError(pub String);

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "broker error: {}", self.0)
    }
}

impl std::error::Error for BrokerError {}

/// The future every broker call returns.
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// The seam between the hub and the engine that orders, keeps and spreads publications.
pub trait Broker: Send + Sync + 'static {
    /// Called once by the hub before anything else: where events are to be delivered.
    fn start(&self, deliver: Deliver);
    /// Appends `data` to `channel`'s stream and delivers it to every node subscribed.
    fn publish<'a>(&'a self, channel: &'a str, data: Bytes) -> BrokerFuture<'a, Publication>;
    /// The stream's position and, with `since`, the retained publications after it
    /// (at most `limit` of the newest when `since` is `None` and `limit` is set).
    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> BrokerFuture<'a, History>;
    /// This node starts receiving the channel's events (its first local subscriber).
    fn subscribe<'a>(&'a self, channel: &'a str) -> BrokerFuture<'a, ()>;
    /// This node stops receiving the channel's events (its last local subscriber left).
    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BrokerFuture<'a, ()>;
    /// Adds a member to the channel's presence and announces the join.
    fn join<'a>(&'a self, channel: &'a str, member: Member) -> BrokerFuture<'a, ()>;
    /// Removes a member from the channel's presence and announces the leave.
    fn leave<'a>(&'a self, channel: &'a str, member: Member) -> BrokerFuture<'a, ()>;
    /// Who is in the channel.
    fn presence<'a>(&'a self, channel: &'a str) -> BrokerFuture<'a, Vec<Member>>;
}

/// How much history a [`MemoryBroker`] keeps per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Publications kept per channel (0: none, so nothing can be recovered).
    pub size: usize,
    /// How long a publication is kept; a stream with no publication for this long and no
    /// subscriber is forgotten (its next publication starts a new epoch).
    pub ttl: Duration,
}

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
fn new_epoch() -> Arc<str> {
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
    fn start(&self, deliver: Deliver) {
        let _ = self.deliver.set(deliver);
    }

    fn publish<'a>(&'a self, channel: &'a str, data: Bytes) -> BrokerFuture<'a, Publication> {
        let now = Instant::now();
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
