//! The Redis broker: many wshub nodes sharing one hub through one Redis.
//!
//! Keys and pub/sub channels all start with the `broker_prefix` (`P`), and everything of
//! one channel `C` sits under the hash tag `{C}`, so on a cluster it lives on one shard:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{C}:meta` | hash | `e`: the stream's epoch, `o`: its last offset |
//! | `P:{C}:history` | stream | the newest `history_size` publications, entry id `<offset>-0` |
//! | `P:{C}:idem:<key>` | string | `epoch:offset` of a publication made with that idempotency key |
//! | `P:{C}:presence` / `P:{C}:presence:exp` | hash / sorted set | members, and when each expires |
//! | `P:{C}` | pub/sub | `p<offset>:<epoch>:<data>`, `j<member>`, `l<member>` |
//! | `P:broadcast` | pub/sub | raw-mode broadcasts: `t`/`b`, node name, NUL, payload |
//! | `P:nodes` / `P:nodes:exp` | hash / sorted set | each node's last report, and when it expires |
//!
//! A publication is one Lua script (`scripts/publish.lua`): offset, Stream entry, expiries
//! and the pub/sub message together, so the order of offsets is the order of messages.
//! Pub/sub is at most once, so this node checks each channel's offsets as they arrive: a
//! jump (or a new epoch) is filled from the Stream before anything later is delivered; a
//! gap history cannot fill becomes an [`Event::Resync`]. After a lost connection, and
//! every few seconds for quiet channels, the node compares each channel's position in
//! Redis with what it delivered and fills the difference.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod conn;

use bytes::Bytes;
use redis::{PushInfo, PushKind, Script, Value};
use tokio::sync::mpsc;

use self::conn::{Conn, Target, Timeouts};
use super::{
    Broker, BrokerError, BrokerFuture, Event, Health, History, HistoryLimits, IDEMPOTENCY_WINDOW,
    Member, NodeInfo, NodeLink, NodeStats, Publication, StreamPosition,
};
use crate::message::Message;

/// How a [`RedisBroker`] reaches Redis and names itself.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://HOST:PORT[/DB]` (one Redis) or `redis+cluster://HOST:PORT[,HOST:PORT...]`
    /// (a Redis Cluster, these nodes as seeds).
    pub url: String,
    /// This node's name (`node_name`): unique among the nodes sharing the Redis.
    pub node_name: String,
    /// Start of every key and channel (`broker_prefix`), so several hubs share a Redis.
    pub prefix: String,
    /// How long a presence entry or a node's report outlives its last refresh
    /// (`presence_ttl`); refreshed every third of it.
    pub presence_ttl: Duration,
    /// History kept per channel (`history_size`, `history_ttl`), now shared by all nodes.
    pub history: HistoryLimits,
}

/// How long a command may take before its caller gets an error (and `/healthz` says
/// degraded): long enough for a busy Redis, short enough that a publisher is not left
/// waiting on a frozen one.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often Redis is pinged for `/healthz` and for noticing it is back.
const HEALTH_PERIOD: Duration = Duration::from_secs(1);
/// How often every subscribed channel's position is compared with Redis's, which catches
/// a lost tail of a channel that then went quiet.
const POSITION_CHECK_PERIOD: Duration = Duration::from_secs(5);
/// A channel's meta hash outlives its last publication by this much (or by `history_ttl`
/// if longer): its epoch, hence recovery, survives quiet periods.
const META_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Raw broadcasts waiting to be handed to Redis; past it they are dropped (and logged).
const BROADCAST_QUEUE: usize = 4096;
/// Channels whose positions one pipelined request reads.
const CHECK_BATCH: usize = 512;

/// The broker for several nodes on one Redis (7.0 or later). See the module docs.
pub struct RedisBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node", &self.shared.options.node_name)
            .field("prefix", &self.shared.options.prefix)
            .finish_non_exhaustive()
    }
}

struct Shared {
    options: RedisOptions,
    /// Commands and scripts.
    commands: Conn,
    /// Subscriptions; its messages arrive on `inbound`.
    pubsub: Conn,
    publish: Script,
    history: Script,
    members: Script,
    link: OnceLock<NodeLink>,
    /// How many times the hub asked for each channel, under an async lock so that a last
    /// unsubscribe and a first subscribe reach Redis in the order they were asked.
    interest: tokio::sync::Mutex<HashMap<Arc<str>, usize>>,
    /// What was delivered last per subscribed channel (epoch "" before any publication).
    delivered: Mutex<HashMap<Arc<str>, StreamPosition>>,
    /// This node's presence entries (member key → user), refreshed every third of
    /// `presence_ttl`.
    present: Mutex<HashMap<Arc<str>, BTreeMap<String, String>>>,
    health: Mutex<Health>,
    gaps_filled: AtomicU64,
    gaps_unfillable: AtomicU64,
    inbound: mpsc::UnboundedSender<Inbound>,
    broadcasts: mpsc::Sender<Bytes>,
}

/// What the receiving task works through, in order.
enum Inbound {
    /// Something Redis pushed on the pub/sub connection.
    Push(PushInfo),
    /// Compare every subscribed channel's position with Redis's and fill the gaps.
    CheckAll,
}

fn broker_error(error: redis::RedisError) -> BrokerError {
    BrokerError(format!("redis: {error}"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Checks a node name: it ends presence ids (`17@name`) and broadcast headers.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("`{name}` must be 1 to 128 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '@')
    {
        return Err(format!(
            "`{name}` may not hold spaces, control characters or `@`"
        ));
    }
    Ok(())
}

impl RedisBroker {
    /// Connects to Redis (both connections, and the scripts loaded) or says why not.
    /// Runs the background tasks on the current tokio runtime.
    pub async fn connect(options: RedisOptions) -> Result<RedisBroker, BrokerError> {
        check_node_name(&options.node_name).map_err(BrokerError)?;
        let target = Target::parse(&options.url)?;
        let url = options.url.clone();
        let unreachable =
            move |e: redis::RedisError| BrokerError(format!("cannot reach Redis at `{url}`: {e}"));
        let timeouts = Timeouts {
            command: COMMAND_TIMEOUT,
        };
        let commands = Conn::open(&target, &timeouts, None)
            .await
            .map_err(&unreachable)?;
        let (inbound, receiving) = mpsc::unbounded_channel();
        let pushes = inbound.clone();
        let pubsub = Conn::open(
            &target,
            &timeouts,
            Some(Box::new(move |push: PushInfo| {
                let _ = pushes.send(Inbound::Push(push));
            })),
        )
        .await
        .map_err(&unreachable)?;
        let (broadcasts, outgoing) = mpsc::channel(BROADCAST_QUEUE);
        let shared = Arc::new(Shared {
            options,
            commands,
            pubsub,
            publish: Script::new(include_str!("scripts/publish.lua")),
            history: Script::new(include_str!("scripts/history.lua")),
            members: Script::new(include_str!("scripts/members.lua")),
            link: OnceLock::new(),
            interest: tokio::sync::Mutex::new(HashMap::new()),
            delivered: Mutex::new(HashMap::new()),
            present: Mutex::new(HashMap::new()),
            health: Mutex::new(Health::Ok),
            gaps_filled: AtomicU64::new(0),
            gaps_unfillable: AtomicU64::new(0),
            inbound,
            broadcasts,
        });
        // Proves the server answers (on a cluster, a node of it): the scripts are loaded
        // by their first EVALSHA (NOSCRIPT → EVAL, the redis crate's `Script`).
        let mut commands = shared.commands.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut commands)
            .await
            .map_err(&unreachable)?;
        // On one Redis, loaded now, so the first publications do not all meet NOSCRIPT.
        if !shared.commands.sharded() {
            for script in [&shared.publish, &shared.history, &shared.members] {
                script
                    .prepare_invoke()
                    .load_async(&mut commands)
                    .await
                    .map_err(&unreachable)?;
            }
        }
        let mut pubsub = shared.pubsub.clone();
        pubsub
            .subscribe(&shared.broadcast_channel())
            .await
            .map_err(unreachable)?;
        let weak = Arc::downgrade(&shared);
        tokio::spawn(receive(weak.clone(), receiving));
        tokio::spawn(send_broadcasts(weak.clone(), outgoing));
        tokio::spawn(watch_health(weak.clone()));
        tokio::spawn(refresh_presence(weak));
        Ok(RedisBroker { shared })
    }
}

impl Shared {
    fn key(&self, channel: &str, suffix: &str) -> String {
        format!("{}:{{{channel}}}:{suffix}", self.options.prefix)
    }

    fn pubsub_channel(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}", self.options.prefix)
    }

    fn broadcast_channel(&self) -> String {
        format!("{}:{{broadcast}}", self.options.prefix)
    }

    /// The node list's keys, under one hash tag (one slot on a cluster).
    fn nodes_keys(&self) -> (String, String) {
        let prefix = &self.options.prefix;
        (
            format!("{prefix}:{{nodes}}"),
            format!("{prefix}:{{nodes}}:exp"),
        )
    }

    /// The channel named by a pub/sub channel of ours.
    fn channel_of<'a>(&self, pubsub_channel: &'a str) -> Option<&'a str> {
        pubsub_channel
            .strip_prefix(self.options.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix('}')
    }

    fn meta_ttl(&self) -> u64 {
        millis(META_TTL.max(self.options.history.ttl))
    }

    fn deliver(&self, channel: &str, event: Event) {
        if let Some(link) = self.link.get() {
            (link.deliver)(channel, event);
        }
    }

    fn set_health(&self, health: Health) {
        let mut current = lock(&self.health);
        if *current != health {
            match &health {
                Health::Ok => tracing::info!("redis reachable again"),
                Health::Degraded(why) => tracing::warn!(why, "broker degraded"),
            }
            *current = health;
        }
    }

    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<Publication, BrokerError> {
        let mut invocation = self.publish.prepare_invoke();
        invocation
            .key(self.key(channel, "meta"))
            .key(self.key(channel, "history"))
            .key(self.key(channel, &format!("idem:{}", idempotency_key.unwrap_or(""))))
            .arg(self.pubsub_channel(channel))
            .arg(data.as_ref())
            .arg(self.options.history.size)
            .arg(millis(self.options.history.ttl))
            .arg(self.meta_ttl())
            .arg(&*super::memory::new_epoch())
            .arg(if idempotency_key.is_some() { "1" } else { "0" })
            .arg(millis(IDEMPOTENCY_WINDOW))
            .arg(self.commands.publish_command());
        let mut commands = self.commands.clone();
        let (epoch, offset, _earlier): (String, u64, u8) = invocation
            .invoke_async(&mut commands)
            .await
            .map_err(broker_error)?;
        Ok(Publication {
            offset,
            epoch: epoch.into(),
            data,
        })
    }

    async fn history(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> Result<History, BrokerError> {
        let mut invocation = self.history.prepare_invoke();
        invocation
            .key(self.key(channel, "meta"))
            .key(self.key(channel, "history"))
            .arg(&*super::memory::new_epoch())
            .arg(self.meta_ttl());
        match &since {
            Some(since) => invocation.arg("since").arg(since.offset),
            None => invocation
                .arg("last")
                .arg(limit.unwrap_or(0).min(self.options.history.size)),
        };
        let mut commands = self.commands.clone();
        let (epoch, offset, entries): (String, u64, Value) = invocation
            .invoke_async(&mut commands)
            .await
            .map_err(broker_error)?;
        let epoch: Arc<str> = epoch.into();
        let publications = parse_entries(&entries, &epoch);
        let position = StreamPosition {
            epoch: epoch.clone(),
            offset,
        };
        Ok(match since {
            None => History {
                position,
                publications,
                recovered: true,
            },
            Some(since) => {
                let contiguous = publications
                    .iter()
                    .zip(since.offset + 1..)
                    .all(|(p, expected)| p.offset == expected);
                let complete = publications.last().map_or(since.offset, |p| p.offset) == offset;
                let recovered =
                    since.epoch == epoch && since.offset <= offset && contiguous && complete;
                History {
                    position,
                    publications: if recovered { publications } else { Vec::new() },
                    recovered,
                }
            }
        })
    }

    /// Lists a hash of members kept alive by a sorted set of expiry times.
    async fn members(
        &self,
        hash: String,
        expiry: String,
    ) -> Result<Vec<(String, String)>, BrokerError> {
        let mut invocation = self.members.prepare_invoke();
        invocation.key(hash).key(expiry).arg(now_ms());
        let mut commands = self.commands.clone();
        let pairs: Vec<(String, String)> = invocation
            .invoke_async(&mut commands)
            .await
            .map_err(broker_error)?;
        Ok(pairs)
    }

    /// Handles one message from the pub/sub connection, at once, unless it shows a gap:
    /// then the channel, what it had, and the publication that showed the gap, to fill.
    fn on_push(&self, push: PushInfo) -> Option<Gap> {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {}
            PushKind::Disconnection => {
                self.set_health(Health::Degraded(
                    "lost the pub/sub connection to Redis".into(),
                ));
                return None;
            }
            _ => return None,
        }
        let [Value::BulkString(name), Value::BulkString(payload)] = push.data.as_slice() else {
            return None;
        };
        let name = std::str::from_utf8(name).ok()?;
        if name == self.broadcast_channel() {
            self.on_broadcast(payload);
            return None;
        }
        let channel = self.channel_of(name)?;
        match payload.split_first() {
            Some((b'p', rest)) => {
                let publication = parse_publication(rest)?;
                self.on_publication(channel, publication)
            }
            Some((b'j', member)) => {
                self.deliver(channel, Event::Join(parse_member(member)?));
                None
            }
            Some((b'l', member)) => {
                self.deliver(channel, Event::Leave(parse_member(member)?));
                None
            }
            _ => None,
        }
    }

    fn on_broadcast(&self, payload: &[u8]) {
        let Some((&kind, rest)) = payload.split_first() else {
            return;
        };
        let Some(at) = rest.iter().position(|&b| b == 0) else {
            return;
        };
        let (node, data) = (&rest[..at], &rest[at + 1..]);
        if node == self.options.node_name.as_bytes() {
            return; // delivered here already
        }
        let message = match kind {
            b't' => match Message::text_from_bytes(Bytes::copy_from_slice(data)) {
                Ok(message) => message,
                Err(_) => return,
            },
            _ => Message::binary(data),
        };
        self.deliver("", Event::Broadcast(message));
    }

    /// Delivers a publication if it is the channel's next; a gap before it is returned,
    /// for `fill`.
    fn on_publication(&self, channel: &str, publication: Publication) -> Option<Gap> {
        let last = lock(&self.delivered).get(channel).cloned()?; // None: no longer here
        let same_epoch = *last.epoch == *publication.epoch;
        if same_epoch && publication.offset <= last.offset {
            return None; // delivered already (by a gap fill)
        }
        let next = (same_epoch || last.epoch.is_empty()) && publication.offset == last.offset + 1;
        if next {
            self.advance(channel, &publication.epoch, publication.offset);
            self.deliver(channel, Event::Publication(publication));
            return None;
        }
        Some(Gap {
            channel: channel.to_owned(),
            last,
            arrived: publication,
        })
    }

    /// Notes what was delivered last, if the channel is still subscribed.
    fn advance(&self, channel: &str, epoch: &Arc<str>, offset: u64) {
        if let Some(last) = lock(&self.delivered).get_mut(channel) {
            *last = StreamPosition {
                epoch: epoch.clone(),
                offset,
            };
        }
    }

    /// Brings a channel from `last` up to Redis's position: the missed publications from
    /// history, in order; what history no longer has, as one resync event. `arrived` is
    /// the publication that showed the gap (for its epoch, when `last` has none).
    async fn fill(
        self: &Arc<Self>,
        channel: &str,
        last: StreamPosition,
        arrived: Option<&Publication>,
    ) {
        let since = if last.epoch.is_empty() {
            // Nothing delivered yet: everything of the current epoch is missing.
            let epoch = match arrived {
                Some(arrived) => arrived.epoch.clone(),
                None => match self.history(channel, None, Some(0)).await {
                    Ok(history) => history.position.epoch,
                    Err(error) => {
                        tracing::warn!(%error, channel, "cannot fill a gap now");
                        return;
                    }
                },
            };
            StreamPosition { epoch, offset: 0 }
        } else {
            last
        };
        let history = match self.history(channel, Some(since.clone()), None).await {
            Ok(history) => history,
            Err(error) => {
                // Redis is unreachable: nothing later is delivered out of order; the
                // check after it is back fills this.
                tracing::warn!(%error, channel, "cannot fill a gap now");
                return;
            }
        };
        if !history.recovered {
            return self.fill_from_start(channel, history).await;
        }
        if !history.publications.is_empty() {
            self.gaps_filled.fetch_add(1, Ordering::Relaxed);
        }
        for publication in history.publications {
            self.advance(channel, &publication.epoch, publication.offset);
            self.deliver(channel, Event::Publication(publication));
        }
        self.advance(channel, &history.position.epoch, history.position.offset);
    }

    /// The gap cannot be filled: subscribers are told to resync, then get the current
    /// epoch from its start when history still holds it all.
    async fn fill_from_start(self: &Arc<Self>, channel: &str, current: History) {
        self.gaps_unfillable.fetch_add(1, Ordering::Relaxed);
        let from_start = StreamPosition {
            epoch: current.position.epoch.clone(),
            offset: 0,
        };
        let history = match self.history(channel, Some(from_start.clone()), None).await {
            Ok(history) if history.recovered => history,
            _ => {
                tracing::warn!(
                    channel,
                    "publications lost from history: subscribers resync"
                );
                self.deliver(channel, Event::Resync(current.position.clone()));
                self.advance(channel, &current.position.epoch, current.position.offset);
                return;
            }
        };
        tracing::warn!(
            channel,
            "publications lost before a new epoch: subscribers resync"
        );
        self.deliver(channel, Event::Resync(from_start));
        for publication in history.publications {
            self.advance(channel, &publication.epoch, publication.offset);
            self.deliver(channel, Event::Publication(publication));
        }
        self.advance(channel, &history.position.epoch, history.position.offset);
    }

    /// Compares every subscribed channel's position with Redis's; fills what differs.
    async fn check_all(self: &Arc<Self>) {
        let channels: Vec<Arc<str>> = lock(&self.delivered).keys().cloned().collect();
        for batch in channels.chunks(CHECK_BATCH) {
            let reads = batch
                .iter()
                .map(|channel| {
                    let mut read = redis::cmd("HMGET");
                    read.arg(self.key(channel, "meta")).arg("e").arg("o");
                    read
                })
                .collect();
            let positions: Vec<(Option<String>, Option<u64>)> =
                match self.commands.query_each(reads).await {
                    Ok(positions) => positions,
                    Err(error) => {
                        tracing::warn!(%error, "cannot check channel positions now");
                        return;
                    }
                };
            for (channel, (epoch, offset)) in batch.iter().zip(positions) {
                let Some(last) = lock(&self.delivered).get(channel).cloned() else {
                    continue;
                };
                let behind = match (&epoch, offset) {
                    (Some(epoch), Some(offset)) => {
                        **epoch != *last.epoch && !(last.epoch.is_empty() && offset == 0)
                            || offset > last.offset
                    }
                    // The stream is gone from Redis (restarted empty, or expired).
                    _ => last.offset > 0,
                };
                if behind {
                    self.fill(channel, last, None).await;
                }
            }
        }
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let mut interest = self.interest.lock().await;
        let count = interest.entry(channel.into()).or_insert(0);
        *count += 1;
        if *count > 1 {
            return Ok(());
        }
        let result = async {
            // The position before subscribing: whatever is published after it arrives by
            // pub/sub, or is filled from history when the next message shows the gap.
            let mut commands = self.commands.clone();
            let (epoch, offset): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                .arg(self.key(channel, "meta"))
                .arg("e")
                .arg("o")
                .query_async(&mut commands)
                .await
                .map_err(broker_error)?;
            let position = StreamPosition {
                epoch: epoch.unwrap_or_default().into(),
                offset: offset.unwrap_or(0),
            };
            lock(&self.delivered).insert(channel.into(), position);
            let mut pubsub = self.pubsub.clone();
            pubsub
                .subscribe(&self.pubsub_channel(channel))
                .await
                .map_err(broker_error)
        }
        .await;
        if result.is_err() {
            interest.remove(channel);
            lock(&self.delivered).remove(channel);
        }
        result
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let mut interest = self.interest.lock().await;
        let Some(count) = interest.get_mut(channel) else {
            return Ok(());
        };
        *count -= 1;
        if *count > 0 {
            return Ok(());
        }
        interest.remove(channel);
        lock(&self.delivered).remove(channel);
        let mut pubsub = self.pubsub.clone();
        pubsub
            .unsubscribe(&self.pubsub_channel(channel))
            .await
            .map_err(broker_error)
    }

    fn member(&self, member: Member) -> Member {
        Member {
            node: Some(self.options.node_name.as_str().into()),
            ..member
        }
    }

    async fn join(&self, channel: &str, member: Member) -> Result<(), BrokerError> {
        let user = member.user.as_deref().unwrap_or("").to_owned();
        let key = self.member(member).key();
        lock(&self.present)
            .entry(channel.into())
            .or_default()
            .insert(key.clone(), user.clone());
        let ttl = millis(self.options.presence_ttl);
        let (hash, expiry) = (
            self.key(channel, "presence"),
            self.key(channel, "presence:exp"),
        );
        let mut commands = self.commands.clone();
        redis::pipe()
            .atomic()
            .hset(&hash, &key, &user)
            .zadd(&expiry, &key, now_ms() + ttl)
            .pexpire(&hash, ttl as i64)
            .pexpire(&expiry, ttl as i64)
            .cmd(self.commands.publish_command())
            .arg(self.pubsub_channel(channel))
            .arg(format!("j{key}\n{user}"))
            .exec_async(&mut commands)
            .await
            .map_err(broker_error)
    }

    async fn leave(&self, channel: &str, member: Member) -> Result<(), BrokerError> {
        let user = member.user.as_deref().unwrap_or("").to_owned();
        let key = self.member(member).key();
        {
            let mut present = lock(&self.present);
            if let Some(members) = present.get_mut(channel) {
                members.remove(&key);
                if members.is_empty() {
                    present.remove(channel);
                }
            }
        }
        let mut commands = self.commands.clone();
        redis::pipe()
            .atomic()
            .hdel(self.key(channel, "presence"), &key)
            .zrem(self.key(channel, "presence:exp"), &key)
            .cmd(self.commands.publish_command())
            .arg(self.pubsub_channel(channel))
            .arg(format!("l{key}\n{user}"))
            .exec_async(&mut commands)
            .await
            .map_err(broker_error)
    }

    /// Refreshes this node's presence entries and its report in the node list.
    async fn refresh(&self) -> Result<(), BrokerError> {
        let ttl = millis(self.options.presence_ttl);
        let now = now_ms();
        let stats = self
            .link
            .get()
            .map_or_else(NodeStats::default, |link| (link.stats)());
        let report = serde_json::json!({
            "connections": stats.connections,
            "subscriptions": stats.subscriptions,
            "last_seen": now / 1000,
        })
        .to_string();
        let (nodes, nodes_expiry) = self.nodes_keys();
        let mut report_group = redis::pipe();
        report_group
            .hset(&nodes, &self.options.node_name, report)
            .zadd(&nodes_expiry, &self.options.node_name, now + ttl);
        let mut groups = vec![report_group];
        // A copy, so the lock is not held across the round trip.
        let present = lock(&self.present).clone();
        for (channel, members) in &present {
            let (hash, expiry) = (
                self.key(channel, "presence"),
                self.key(channel, "presence:exp"),
            );
            let mut group = redis::pipe();
            for (member, user) in members {
                group
                    .hset(&hash, member, user)
                    .zadd(&expiry, member, now + ttl);
            }
            group
                .pexpire(&hash, ttl as i64)
                .pexpire(&expiry, ttl as i64);
            groups.push(group);
        }
        self.commands.run_groups(groups).await.map_err(broker_error)
    }
}

/// `<key>\n<user>` (a join or leave) → a member.
fn parse_member(payload: &[u8]) -> Option<Member> {
    let text = std::str::from_utf8(payload).ok()?;
    let (key, user) = text.split_once('\n').unwrap_or((text, ""));
    member_with_user(key, user)
}

fn member_with_user(key: &str, user: &str) -> Option<Member> {
    Some(Member {
        user: (!user.is_empty()).then(|| user.into()),
        ..Member::from_key(key)?
    })
}

/// `<offset>:<epoch>:<data>` → a publication.
fn parse_publication(rest: &[u8]) -> Option<Publication> {
    let at = rest.iter().position(|&b| b == b':')?;
    let offset = std::str::from_utf8(&rest[..at]).ok()?.parse().ok()?;
    let rest = &rest[at + 1..];
    let at = rest.iter().position(|&b| b == b':')?;
    let epoch = std::str::from_utf8(&rest[..at]).ok()?;
    Some(Publication {
        offset,
        epoch: epoch.into(),
        data: Bytes::copy_from_slice(&rest[at + 1..]),
    })
}

/// XRANGE's answer → publications: `[[id, [field, value, ...]], ...]`, id `<offset>-0`.
fn parse_entries(entries: &Value, epoch: &Arc<str>) -> Vec<Publication> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let [id, fields] = parts.as_slice() else {
                return None;
            };
            let id = match id {
                Value::BulkString(id) => std::str::from_utf8(id).ok()?,
                Value::SimpleString(id) => id.as_str(),
                _ => return None,
            };
            let offset = id.split('-').next()?.parse().ok()?;
            let Value::Array(fields) = fields else {
                return None;
            };
            let data = fields.chunks(2).find_map(|pair| match pair {
                [Value::BulkString(name), Value::BulkString(data)] if name == b"d" => {
                    Some(Bytes::copy_from_slice(data))
                }
                _ => None,
            })?;
            Some(Publication {
                offset,
                epoch: epoch.clone(),
                data,
            })
        })
        .collect()
}

/// Works through what Redis pushes, in order; ends with the broker.
async fn receive(weak: Weak<Shared>, mut inbound: mpsc::UnboundedReceiver<Inbound>) {
    let mut batch = Vec::new();
    while inbound.recv_many(&mut batch, 256).await > 0 {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let mut items = batch.drain(..);
        loop {
            // What arrived together and is in order is delivered in one round: one write
            // per recipient for all of it, as when a client sends a burst.
            let stop = crate::wire::cork::batch(|| {
                for item in items.by_ref() {
                    match item {
                        Inbound::Push(push) => {
                            if let Some(gap) = shared.on_push(push) {
                                return Some(Stop::Gap(gap));
                            }
                        }
                        Inbound::CheckAll => return Some(Stop::Check),
                    }
                }
                None
            });
            match stop {
                None => break,
                Some(Stop::Gap(gap)) => {
                    shared
                        .fill(&gap.channel, gap.last, Some(&gap.arrived))
                        .await;
                }
                Some(Stop::Check) => shared.check_all().await,
            }
        }
    }
}

/// A publication that arrived after a gap: the channel and what it had delivered.
struct Gap {
    channel: String,
    last: StreamPosition,
    arrived: Publication,
}

/// Why the receiving task leaves its round: a round trip to Redis is needed.
enum Stop {
    Gap(Gap),
    Check,
}

/// Hands raw broadcasts to Redis, many per round trip.
async fn send_broadcasts(weak: Weak<Shared>, mut outgoing: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::new();
    while outgoing.recv_many(&mut batch, 256).await > 0 {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let channel = shared.broadcast_channel();
        let publish = shared.commands.publish_command();
        let mut pipe = redis::pipe();
        for payload in batch.drain(..) {
            pipe.cmd(publish)
                .arg(&channel)
                .arg(payload.as_ref())
                .ignore();
        }
        let mut commands = shared.commands.clone();
        if let Err(error) = pipe.exec_async(&mut commands).await {
            tracing::warn!(%error, "raw broadcasts not handed to the other nodes");
        }
    }
}

/// Pings Redis on both connections; says degraded while either fails, and after one is
/// back, checks every channel for what pub/sub lost meanwhile.
async fn watch_health(weak: Weak<Shared>) {
    let mut ticker = tokio::time::interval(HEALTH_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since_check = Duration::ZERO;
    let mut was_ok = true;
    loop {
        ticker.tick().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let mut commands = shared.commands.clone();
        let mut pubsub = shared.pubsub.clone();
        let ping = |mut conn: Conn| async move {
            let answer: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
            answer
        };
        let (a, b) = tokio::join!(ping(commands.clone()), ping(pubsub.clone()));
        let _ = (&mut commands, &mut pubsub);
        let health = match (a, b) {
            (Ok(_), Ok(_)) => Health::Ok,
            (Err(error), _) | (_, Err(error)) => {
                Health::Degraded(format!("redis unreachable: {error}"))
            }
        };
        let ok = health == Health::Ok;
        let degraded_before = *lock(&shared.health) != Health::Ok;
        shared.set_health(health);
        since_check += HEALTH_PERIOD;
        if ok && (!was_ok || degraded_before || since_check >= POSITION_CHECK_PERIOD) {
            since_check = Duration::ZERO;
            let _ = shared.inbound.send(Inbound::CheckAll);
        }
        was_ok = ok;
    }
}

/// Every third of `presence_ttl`: this node's presence entries and its report.
async fn refresh_presence(weak: Weak<Shared>) {
    let period = weak
        .upgrade()
        .map_or(Duration::from_secs(20), |shared| {
            shared.options.presence_ttl / 3
        })
        .max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if let Err(error) = shared.refresh().await {
            tracing::warn!(%error, "presence refresh failed");
        }
    }
}

impl Broker for RedisBroker {
    fn start(&self, link: NodeLink) {
        let _ = self.shared.link.set(link);
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        idempotency_key: Option<&'a str>,
    ) -> BrokerFuture<'a, Publication> {
        Box::pin(self.shared.publish(channel, data, idempotency_key))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> BrokerFuture<'a, History> {
        Box::pin(self.shared.history(channel, since, limit))
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BrokerFuture<'a, ()> {
        Box::pin(self.shared.subscribe(channel))
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BrokerFuture<'a, ()> {
        Box::pin(self.shared.unsubscribe(channel))
    }

    fn join<'a>(&'a self, channel: &'a str, member: Member) -> BrokerFuture<'a, ()> {
        Box::pin(self.shared.join(channel, member))
    }

    fn leave<'a>(&'a self, channel: &'a str, member: Member) -> BrokerFuture<'a, ()> {
        Box::pin(self.shared.leave(channel, member))
    }

    fn presence<'a>(&'a self, channel: &'a str) -> BrokerFuture<'a, Vec<Member>> {
        Box::pin(async move {
            let pairs = self
                .shared
                .members(
                    self.shared.key(channel, "presence"),
                    self.shared.key(channel, "presence:exp"),
                )
                .await?;
            let mut members: Vec<Member> = pairs
                .iter()
                .filter_map(|(key, user)| member_with_user(key, user))
                .collect();
            members.sort();
            Ok(members)
        })
    }

    fn broadcast(&self, message: &Message) {
        let node = self.shared.options.node_name.as_bytes();
        let mut payload = Vec::with_capacity(2 + node.len() + message.len());
        payload.push(if message.is_text() { b't' } else { b'b' });
        payload.extend_from_slice(node);
        payload.push(0);
        payload.extend_from_slice(message.as_bytes());
        if self.shared.broadcasts.try_send(payload.into()).is_err() {
            tracing::warn!("raw broadcast not handed to the other nodes: Redis is behind");
        }
    }

    fn health(&self) -> Health {
        lock(&self.shared.health).clone()
    }

    fn node_name(&self) -> Option<&str> {
        Some(&self.shared.options.node_name)
    }

    fn nodes(&self) -> BrokerFuture<'_, Vec<NodeInfo>> {
        Box::pin(async move {
            let (hash, expiry) = self.shared.nodes_keys();
            let pairs = self.shared.members(hash, expiry).await?;
            let mut nodes: Vec<NodeInfo> = pairs
                .into_iter()
                .map(|(name, report)| {
                    let report: serde_json::Value =
                        serde_json::from_str(&report).unwrap_or_default();
                    let count = |field: &str| report[field].as_u64().unwrap_or(0);
                    NodeInfo {
                        name,
                        stats: NodeStats {
                            connections: count("connections") as usize,
                            subscriptions: count("subscriptions") as usize,
                        },
                        last_seen: count("last_seen"),
                    }
                })
                .collect();
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(nodes)
        })
    }

    fn gaps(&self) -> (u64, u64) {
        (
            self.shared.gaps_filled.load(Ordering::Relaxed),
            self.shared.gaps_unfillable.load(Ordering::Relaxed),
        )
    }
}
