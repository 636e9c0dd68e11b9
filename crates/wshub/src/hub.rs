//! The hub: the registry of live connections and the fan-out to them.
//!
//! [`Hub`] is a cheap, cloneable handle that any task or thread may use at any time. The
//! registry is split into shards, each behind its own short `std::sync::Mutex`, so a
//! broadcast never holds one global lock and registrations rarely contend. A broadcast
//! made inside a round is kept once by the fanout (`wire::fanout`) and, when the round
//! ends, `Inner::deliver_run` walks the registry once, giving each connection all of the
//! round's broadcasts in one write. Nothing here waits on a socket; a connection whose
//! kernel buffer and queue are full is evicted (close 1008 "slow consumer") on the spot,
//! alone.
//!
//! The hub knows nothing of HTTP or of sockets: connections register their outbox here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

use crate::auth::Verifier;
use crate::broker::{
    Broker, Event, Health, History, HistoryLimits, Member, MemoryBroker, NodeInfo, NodeLink,
    NodeStats, StreamPosition,
};
use crate::channels::Channels;
use crate::channels::protocol::ProtocolError;
use crate::compression::{Agreement, Policy};
use crate::config::{Config, ConfigError};
use crate::handler::{DynHandler, Handler};
use crate::id::ConnId;
use crate::message::{CloseReason, Message};
use crate::metrics::{Limit, Metrics};
use crate::rate::{ConnectRate, MessageRate};
use crate::wire::backpressure::Backpressure;
use crate::wire::cork;
use crate::wire::fanout::{Fanout, Run, Walk};
use crate::wire::outbox::{Deflating, Limits, Outbox, PushError, Sent};

/// Registry shards: enough that broadcasts and registrations on different cores rarely
/// meet on one lock, few enough that a broadcast's walk over them stays cheap.
const SHARDS: usize = 16;

/// Why [`Hub::send`] could not queue a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No live connection has this id.
    NotFound,
    /// The connection's queue was full: it has been evicted as a slow consumer.
    SlowConsumer,
    /// The connection is already closing.
    Closing,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SendError::NotFound => "no such connection",
            SendError::SlowConsumer => "connection evicted as a slow consumer",
            SendError::Closing => "connection is closing",
        })
    }
}

impl std::error::Error for SendError {}

type Shard = Mutex<HashMap<ConnId, Arc<Outbox>>>;

/// A handle to the hub. Clone it freely; all clones are the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// Limits and timeouts, validated once in [`Hub::new`].
    config: Config,
    /// The application's callbacks, called by each connection's own task.
    handler: Arc<dyn DynHandler>,
    /// Live connections by id, sharded by `id % SHARDS`.
    shards: Box<[Shard]>,
    /// Source of connection ids.
    next_id: AtomicU64,
    /// Connections whose task has not ended yet (registered or finishing their close).
    live: AtomicUsize,
    /// Woken when `live` drops to zero, for the shutdown drain.
    emptied: Notify,
    /// Set by [`Hub::shutdown`]: new upgrades are refused with 503.
    closing: AtomicBool,
    /// Set by [`Hub::drain`]: new upgrades are refused with 503, the connections are
    /// being closed with 1012 over `drain_period`.
    draining: AtomicBool,
    /// Becomes true when a drain is over (the last connection gone, or `drain_period` +
    /// `drain_timeout` passed): what [`Hub::drained`] waits for.
    drain_over: tokio::sync::watch::Sender<bool>,
    /// The broker has been healthy at least once (`GET /readyz`: "starting" until then).
    broker_reached: AtomicBool,
    /// Open connections per client address; only kept when `max_connections_per_ip` is set.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// New connections per second per address (`connect_rate_per_ip`), when set.
    connect_rate: Option<ConnectRate>,
    /// Each connection's budget of inbound messages (`client_rate`), when set.
    message_rate: Option<MessageRate>,
    /// Inbound messages refused for `client_rate` (error 429, dropped, or the last one
    /// before the close), since the hub started.
    rate_limited: AtomicU64,
    /// Connections whose kernel refuses our writes: publishers pause while many do.
    backpressure: Arc<Backpressure>,
    /// permessage-deflate: whether offered, from what size, and for how many.
    compression: Arc<Policy>,
    /// Channel subscribers on this node.
    channels: Arc<Channels>,
    /// Orders, keeps and spreads channel publications; delivers them back to `channels`.
    broker: Arc<dyn Broker>,
    /// Checks tokens, when `jwt_*` keys are configured.
    auth: Option<Arc<Verifier>>,
    /// When connections are to be closed because their identity runs out.
    deadlines: Mutex<Deadlines>,
    /// Wakes the deadline task when an earlier deadline is set (its own allocation, so
    /// the task can wait on it without keeping the hub alive).
    deadline_set: Arc<Notify>,
    /// Counters for `GET /metrics`; every outbox holds it too.
    metrics: Arc<Metrics>,
    /// Broadcasts made inside a round, written to everyone when it ends; every outbox
    /// holds it too, to write them before any other push.
    fanout: Arc<Fanout>,
}

/// Connections' deadlines: a token's `exp` (4002), or the wait for `connect` (4001).
#[derive(Default)]
struct Deadlines {
    by_time: std::collections::BTreeMap<(Instant, ConnId), (u16, &'static str)>,
    by_conn: HashMap<ConnId, Instant>,
    task_started: bool,
}

/// Why a new connection is refused before its upgrade (the server answers 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// [`Hub::shutdown`] has begun.
    ShuttingDown,
    /// [`Hub::drain`] has begun: the client should go to another node.
    Draining,
    /// `max_connections` are open.
    Full(usize),
    /// `max_connections_per_ip` are open from this address.
    FullForAddress(usize),
    /// This address opened `rate` connections in the last second (`connect_rate_per_ip`):
    /// the next token comes in `retry_after` seconds (429 with `Retry-After`).
    TooFast {
        /// `connect_rate_per_ip`.
        rate: u32,
        /// Whole seconds, at least 1.
        retry_after: u64,
    },
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.connection_count())
            .field("closing", &self.is_closing())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub with the given limits, calling `handler` for every connection event, with
    /// channels kept in this process ([`MemoryBroker`], history as configured).
    /// Fails if the config is not valid (see [`Config::validate`]).
    pub fn new(config: Config, handler: impl Handler) -> Result<Hub, ConfigError> {
        let broker = MemoryBroker::new(HistoryLimits {
            size: config.history_size,
            ttl: config.history_ttl,
        });
        Hub::with_broker(config, handler, broker)
    }

    /// A hub whose channels go through `broker` (to share them with other nodes).
    pub fn with_broker(
        config: Config,
        handler: impl Handler,
        broker: impl Broker,
    ) -> Result<Hub, ConfigError> {
        Hub::with_shared_broker(config, handler, Arc::new(broker))
    }

    /// [`Hub::with_broker`] for a broker chosen at run time (`memory` or Redis, say).
    pub fn with_shared_broker(
        config: Config,
        handler: impl Handler,
        broker: Arc<dyn Broker>,
    ) -> Result<Hub, ConfigError> {
        config.validate()?;
        let config_for_auth = config.clone();
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        let compression = Arc::new(Policy::new(config.compression, config.compression_min_size));
        let channels = Arc::new(Channels::new(compression.clone()));
        let connect_rate = ConnectRate::new(config.connect_rate_per_ip);
        let message_rate = MessageRate::new(config.client_rate, config.client_burst);
        let metrics = Arc::new(Metrics::new());
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            metrics.collect(Box::new(Gauges(weak.clone())));
            let deliver = weak.clone();
            let stats = weak.clone();
            broker.start(NodeLink {
                deliver: Arc::new(move |channel: &str, event: Event| {
                    let Some(inner) = deliver.upgrade() else {
                        return;
                    };
                    crate::wire::cork::batch(|| match event {
                        Event::Broadcast(message) => {
                            inner.broadcast_here(message);
                        }
                        event => {
                            let delivered = inner.channels.deliver(channel, event);
                            inner.metrics.deliveries(delivered);
                        }
                    });
                }),
                stats: Arc::new(move || {
                    stats
                        .upgrade()
                        .map_or_else(NodeStats::default, |inner| NodeStats {
                            connections: inner.live.load(Ordering::Relaxed),
                            subscriptions: inner.channels.list().iter().map(|(_, n)| n).sum(),
                        })
                }),
            });
            Inner {
                config,
                handler: Arc::new(handler),
                shards,
                next_id: AtomicU64::new(1),
                live: AtomicUsize::new(0),
                emptied: Notify::new(),
                closing: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                drain_over: tokio::sync::watch::Sender::new(false),
                broker_reached: AtomicBool::new(false),
                per_ip: Mutex::new(HashMap::new()),
                connect_rate,
                message_rate,
                rate_limited: AtomicU64::new(0),
                backpressure: Arc::default(),
                compression,
                channels,
                broker,
                auth: crate::auth::Verifier::from_config(&config_for_auth)
                    .ok()
                    .flatten()
                    .map(Arc::new),
                deadlines: Mutex::default(),
                deadline_set: Arc::new(Notify::new()),
                metrics,
                fanout: Arc::new(Fanout::new(weak.clone())),
            }
        });
        let hub = Hub { inner };
        // A broker that is healthy now (memory; Redis, connected) was reached: `/readyz`
        // need not wait for a first probe to learn it.
        if matches!(hub.broker_health(), Health::Ok) {
            hub.inner.broker_reached.store(true, Ordering::Release);
        }
        Ok(hub)
    }

    pub(crate) fn backpressure(&self) -> &Backpressure {
        &self.inner.backpressure
    }

    pub(crate) fn channel_registry(&self) -> &Channels {
        &self.inner.channels
    }

    pub(crate) fn broker(&self) -> &dyn Broker {
        &*self.inner.broker
    }

    /// Checks a channel name against the naming rules and the `channels` patterns:
    /// 400 for a bad name, 404 when no pattern admits it.
    pub fn check_channel(&self, channel: &str) -> Result<(), ProtocolError> {
        self.check_channel_name(channel)?;
        if !self.inner.config.channel_allowed(channel) {
            return Err(ProtocolError::new(
                404,
                format!(
                    "unknown channel `{channel}`: no pattern in `channels` ({}) matches it",
                    self.inner.config.channels.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The naming rules alone: 1 to 255 bytes, no spaces or control characters (400).
    pub(crate) fn check_channel_name(&self, channel: &str) -> Result<(), ProtocolError> {
        if channel.is_empty() || channel.len() > 255 {
            return Err(ProtocolError::new(
                400,
                "invalid channel name: 1 to 255 bytes",
            ));
        }
        if channel.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ProtocolError::new(
                400,
                format!("invalid channel name {channel:?}: no spaces or control characters"),
            ));
        }
        Ok(())
    }

    /// Publishes `data` (any value that serializes to JSON) to `channel`: every subscriber
    /// receives it with its offset, and it is kept in the channel's history.
    pub async fn publish(
        &self,
        channel: &str,
        data: &(impl serde::Serialize + ?Sized),
    ) -> Result<StreamPosition, ProtocolError> {
        self.publish_once(channel, data, None).await
    }

    /// [`Hub::publish`], once per `idempotency_key`: a retry with the same key for the
    /// same channel within five minutes publishes nothing and answers the first attempt's
    /// position. An error (503: the broker is unreachable) means it may not have been
    /// published; retry with the same key.
    pub async fn publish_once(
        &self,
        channel: &str,
        data: &(impl serde::Serialize + ?Sized),
        idempotency_key: Option<&str>,
    ) -> Result<StreamPosition, ProtocolError> {
        self.check_channel(channel)?;
        let data = serde_json::to_vec(data)
            .map_err(|e| ProtocolError::new(400, format!("data is not JSON: {e}")))?;
        let publication = self
            .broker_call(self.broker().publish(channel, data.into(), idempotency_key))
            .await?;
        self.inner.metrics.published();
        Ok(StreamPosition {
            epoch: publication.epoch,
            offset: publication.offset,
        })
    }

    /// Who is subscribed to `channel` (on every node the broker spans).
    pub async fn presence(&self, channel: &str) -> Result<Vec<Member>, ProtocolError> {
        self.check_channel(channel)?;
        self.broker_call(self.broker().presence(channel)).await
    }

    /// The channel's position and retained publications: after `since`, or the newest
    /// `limit` (all retained when `limit` is `None`).
    pub async fn history(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> Result<History, ProtocolError> {
        self.check_channel(channel)?;
        let limit = limit.or(Some(usize::MAX));
        self.broker_call(self.broker().history(channel, since, limit))
            .await
    }

    /// Runs a broker call, timed for `wshub_broker_round_trip_seconds`; a failure is
    /// counted and becomes a 503 (the caller may retry).
    pub(crate) async fn broker_call<T>(
        &self,
        call: impl Future<Output = Result<T, crate::broker::BrokerError>>,
    ) -> Result<T, ProtocolError> {
        let started = Instant::now();
        let result = call.await;
        let error = result.as_ref().err();
        self.inner.metrics.broker_call(
            started.elapsed(),
            error.map(|e| e as &dyn std::fmt::Display),
        );
        result.map_err(unavailable)
    }

    /// The hub's counters.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Every metric in the Prometheus text format (version 0.0.4), as `GET /metrics`
    /// serves it.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.encode()
    }

    /// Adds a metric of your own to [`Hub::metrics_text`], named `wshub_<name>`
    /// (counters get `_total`), e.g. a webhook's deliveries.
    pub fn register_metric(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.inner.metrics.register(name, help, metric);
    }

    /// Channels with subscribers on this node, with how many, sorted by name.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.inner
            .channels
            .list()
            .into_iter()
            .map(|(name, count)| (name.to_string(), count))
            .collect()
    }

    /// Removes a connection from a channel: presence leave, and the node's interest when
    /// it was the last subscriber here.
    pub(crate) async fn leave_channel(&self, channel: &str, id: ConnId, user: Option<Arc<str>>) {
        let (was, last) = self.inner.channels.remove(channel, id);
        if !was {
            return;
        }
        let member = Member {
            user,
            ..Member::local(id)
        };
        if let Err(error) = self.broker().leave(channel, member).await {
            tracing::warn!(%error, channel, "presence leave failed");
        }
        if last && let Err(error) = self.broker().unsubscribe(channel).await {
            tracing::warn!(%error, channel, "broker unsubscribe failed");
        }
    }

    /// The hub's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn handler(&self) -> &dyn DynHandler {
        &*self.inner.handler
    }

    /// Sends `message` to every connection. Never waits: outside a handler each socket is
    /// written at once and the count returned is of the connections that took it; inside a
    /// handler (a round, see `wire::cork`) the message is kept once and written to
    /// everyone when the round ends, with the round's other broadcasts in one write per
    /// connection, and the count is of the connections open at the call. A connection
    /// whose kernel buffer and queue are full is evicted with close 1008 "slow consumer".
    ///
    /// With a broker that spans several nodes, the message also goes to the other
    /// nodes' connections (at most once, in no order relative to other nodes'
    /// broadcasts); the count is this node's.
    pub fn broadcast(&self, message: impl Into<Message>) -> usize {
        let message = message.into();
        self.inner.broker.broadcast(&message);
        self.inner.broadcast_here(message)
    }

    /// The token checker, when `jwt_*` keys are configured.
    pub(crate) fn auth(&self) -> Option<&Verifier> {
        self.inner.auth.as_deref()
    }

    /// Closes connection `id` with `code` at `at`, unless its deadline is set again or
    /// cleared first (one deadline per connection).
    pub(crate) fn set_deadline(&self, id: ConnId, at: Instant, code: u16, reason: &'static str) {
        let mut deadlines = self
            .inner
            .deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = deadlines.by_conn.insert(id, at) {
            deadlines.by_time.remove(&(old, id));
        }
        deadlines.by_time.insert((at, id), (code, reason));
        if !std::mem::replace(&mut deadlines.task_started, true) {
            tokio::spawn(close_at_deadlines(
                Arc::downgrade(&self.inner),
                self.inner.deadline_set.clone(),
            ));
        }
        drop(deadlines);
        self.inner.deadline_set.notify_one();
    }

    /// Forgets connection `id`'s deadline.
    pub(crate) fn clear_deadline(&self, id: ConnId) {
        let mut deadlines = self
            .inner
            .deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = deadlines.by_conn.remove(&id) {
            deadlines.by_time.remove(&(at, id));
        }
    }

    /// The broker's view of its engine (`GET /healthz`).
    pub fn broker_health(&self) -> Health {
        self.inner.broker.health()
    }

    /// Whether the broker has been healthy at least once, and if not, why (`GET /readyz`
    /// says "starting" until then). Only the first success is remembered: a later outage
    /// is `/healthz`'s "degraded", while the node keeps serving its own clients.
    pub(crate) fn broker_reached(&self) -> Result<(), String> {
        if self.inner.broker_reached.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.broker_health() {
            Health::Ok => {
                self.inner.broker_reached.store(true, Ordering::Release);
                Ok(())
            }
            Health::Degraded(why) => Err(why),
        }
    }

    /// This node's name and every live node, when the broker spans several
    /// (`GET /api/info`); on a single node, no name and no list.
    pub async fn nodes(&self) -> Result<(Option<String>, Vec<NodeInfo>), ProtocolError> {
        let name = self.inner.broker.node_name().map(str::to_owned);
        let nodes = self.inner.broker.nodes().await.map_err(unavailable)?;
        Ok((name, nodes))
    }

    /// Gaps in the broker's delivery: (filled from history, not fillable).
    pub fn broker_gaps(&self) -> (u64, u64) {
        self.inner.broker.gaps()
    }

    /// Sends `message` to one connection.
    pub fn send(&self, id: ConnId, message: impl Into<Message>) -> Result<(), SendError> {
        let outbox = self.outbox(id).ok_or(SendError::NotFound)?;
        match outbox.try_push(message.into()) {
            Ok(()) => Ok(()),
            Err(PushError::Full) => Err(SendError::SlowConsumer),
            Err(PushError::Closed) => Err(SendError::Closing),
        }
    }

    /// Closes one connection with `code` and `reason` after it has written what is already
    /// queued for it. Returns false if there is no such connection or it is already closing.
    pub fn close(
        &self,
        id: ConnId,
        code: u16,
        reason: impl Into<std::borrow::Cow<'static, str>>,
    ) -> bool {
        self.outbox(id)
            .is_some_and(|outbox| outbox.close(CloseReason::new(code, reason)))
    }

    /// Inbound messages refused for `client_rate` since the hub started: `wshub.v1`
    /// commands answered with error 429, raw messages dropped, and each message that
    /// closed its connection with 1008 "rate limit" (`GET /api/stats`: `rate_limited`).
    pub fn rate_limited(&self) -> u64 {
        self.inner.rate_limited.load(Ordering::Relaxed)
    }

    /// The connections' message budget, when `client_rate` is set.
    pub(crate) fn message_rate(&self) -> Option<&MessageRate> {
        self.inner.message_rate.as_ref()
    }

    /// Counts one inbound message refused for `client_rate`.
    pub(crate) fn count_rate_limited(&self) {
        self.inner.rate_limited.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.rate_limited(Limit::ClientRate);
    }

    /// Connections currently open: admitted (upgrading or upgraded) and not yet finished.
    pub fn connection_count(&self) -> usize {
        self.inner.live.load(Ordering::Acquire)
    }

    /// True once [`Hub::shutdown`] has begun.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// True once [`Hub::drain`] has begun (and after it is over).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Starts draining the node: new upgrades are refused (503), and every connection is
    /// closed with 1012 "service restart", one after another, evenly over `drain_period`, so
    /// their clients reconnect to other nodes in a trickle instead of a storm. The drain is
    /// over ([`Hub::drained`]) when the last connection is gone, or `drain_timeout` after
    /// the period at the latest; [`crate::serve`] then returns. One hub-wide task does the
    /// closing (no timer per connection); call this inside a Tokio runtime.
    ///
    /// Returns false, and does nothing, if a drain or [`Hub::shutdown`] has begun already.
    pub fn drain(&self) -> bool {
        if self.is_closing() || self.inner.draining.swap(true, Ordering::AcqRel) {
            return false;
        }
        tokio::spawn(drain_connections(self.clone()));
        true
    }

    /// Resolves when a drain is over: its last connection is gone, or `drain_period` +
    /// `drain_timeout` have passed since [`Hub::drain`]. Pending until a drain begins.
    pub async fn drained(&self) {
        let mut over = self.inner.drain_over.subscribe();
        // The sender lives as long as the hub, which `self` keeps alive: no error here.
        let _ = over.wait_for(|over| *over).await;
    }

    /// Refuses new connections, asks every connection to close with 1001, and waits up to
    /// `drain_timeout` for them to finish. Returns how many were still open at the deadline.
    pub async fn shutdown(&self) -> usize {
        self.shutdown_within(self.inner.config.drain_timeout).await
    }

    /// [`Hub::shutdown`], waiting up to `wait` (`serve` after a drain: not again).
    pub(crate) async fn shutdown_within(&self, wait: std::time::Duration) -> usize {
        self.inner.closing.store(true, Ordering::Release);
        // Written before the close frames (and not under a shard's lock, which its walk takes).
        self.inner.fanout.settle();
        for shard in self.inner.shards.iter() {
            let outboxes: Vec<Arc<Outbox>> = lock(shard).values().cloned().collect();
            for outbox in outboxes {
                outbox.close(CloseReason::SHUTDOWN);
            }
        }
        let drained = tokio::time::timeout(wait, self.wait_empty());
        let _ = drained.await;
        self.connection_count()
    }

    async fn wait_empty(&self) {
        loop {
            let emptied = self.inner.emptied.notified();
            if self.connection_count() == 0 {
                return;
            }
            emptied.await;
        }
    }

    fn outbox(&self, id: ConnId) -> Option<Arc<Outbox>> {
        lock(self.shard(id)).get(&id).cloned()
    }

    fn shard(&self, id: ConnId) -> &Shard {
        // The modulo keeps the index in range for any id.
        &self.inner.shards[(id.0 % SHARDS as u64) as usize]
    }

    /// Reserves a place for a new connection from `ip`, or says why there is none. The
    /// place is counted from now (so concurrent upgrades cannot overshoot the limits)
    /// until the returned admission, or the registration made from it, is dropped.
    ///
    /// The connect rate (`connect_rate_per_ip`) is looked at last, so a token is taken only
    /// by an upgrade that is admitted, and a refused look takes none. One request therefore
    /// costs one token however often it is asked about: the accept loop's fast path
    /// refuses without a token and hands the request to hyper's endpoint, which asks again
    /// (and answers the 429); a fast path that admits never hands it on.
    pub(crate) fn admit(&self, ip: Option<IpAddr>) -> Result<Admission, Refusal> {
        if self.is_closing() {
            return Err(Refusal::ShuttingDown);
        }
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let config = &self.inner.config;
        let live = self.inner.live.fetch_add(1, Ordering::AcqRel) + 1;
        // From here on, the admission's Drop gives the place back on every path.
        let mut admission = Admission {
            hub: self.clone(),
            ip: None,
        };
        if config.max_connections > 0 && live > config.max_connections {
            return Err(Refusal::Full(config.max_connections));
        }
        if let (Some(ip), limit @ 1..) = (ip, config.max_connections_per_ip) {
            let mut per_ip = self.inner.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= limit {
                return Err(Refusal::FullForAddress(limit));
            }
            *count += 1;
            admission.ip = Some(ip);
        }
        if let (Some(ip), Some(rate)) = (ip, &self.inner.connect_rate) {
            // A refusal drops the admission: the places reserved above are given back.
            rate.check(ip).map_err(|wait| Refusal::TooFast {
                rate: rate.rate(),
                retry_after: crate::rate::retry_after_secs(wait),
            })?;
        }
        Ok(admission)
    }

    /// Whether upgrades may negotiate permessage-deflate (`compression`).
    pub(crate) fn compression(&self) -> &Arc<Policy> {
        &self.inner.compression
    }

    /// Adds an admitted connection to the registry; `deflate` is what it negotiated.
    pub(crate) fn register(
        &self,
        admission: Admission,
        deflate: Option<Agreement>,
    ) -> Registration {
        let id = ConnId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let limits = Limits {
            messages: self.inner.config.send_queue,
            bytes: self.inner.config.send_queue_bytes,
        };
        let deflate = deflate.map(|agreement| Deflating {
            window_bits: agreement.window_bits,
            policy: self.inner.compression.clone(),
        });
        let outbox = Arc::new(Outbox::new(
            id.0,
            limits,
            self.inner.backpressure.clone(),
            deflate,
            self.inner.metrics.clone(),
            self.inner.fanout.clone(),
        ));
        lock(self.shard(id)).insert(id, outbox.clone());
        if self.is_closing() {
            // Shutdown began between the upgrade check and now: close this one as well.
            outbox.close(CloseReason::SHUTDOWN);
        } else if self.is_draining() {
            // A drain began after this one was admitted, perhaps after the drain's snapshot
            // of the connections: it would be missed, so it goes now.
            outbox.close(CloseReason::SERVICE_RESTART);
        }
        Registration {
            hub: self.clone(),
            id,
            outbox,
            _admission: admission,
        }
    }
}

/// How often the drain closes the connections that are due: often enough that a period
/// of a second spreads 20 closes, rarely enough to cost nothing.
const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(20);

/// The drain's one task: closes the connections open when it began with 1012, the `i`-th
/// of `n` at `i/n` of `drain_period`, then waits up to `drain_timeout` for the last ones to
/// finish, and marks the drain over. Stops closing if a shutdown (1001) overtakes it.
async fn drain_connections(hub: Hub) {
    let inner = &hub.inner;
    let started = tokio::time::Instant::now();
    let period = inner.config.drain_period;
    // Each is let go once closed, so a finished connection's outbox is not kept.
    let mut outboxes: Vec<Option<Arc<Outbox>>> = inner
        .shards
        .iter()
        .flat_map(|shard| lock(shard).values().cloned().map(Some).collect::<Vec<_>>())
        .collect();
    let total = outboxes.len();
    tracing::info!(connections = total, period = %crate::format_duration(period), "draining");
    let mut closed = 0;
    // Closes per tick at most: twice the even share of one tick, at least one.
    let burst = ((2.0 * total as f64 * DRAIN_TICK.as_secs_f64() / period.as_secs_f64()).ceil()
        as usize)
        .max(1);
    let mut tick = tokio::time::interval(DRAIN_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while closed < total && hub.connection_count() > 0 && !hub.is_closing() {
        tick.tick().await;
        let share = started.elapsed().as_secs_f64() / period.as_secs_f64();
        // The `i`-th is due at i/n of the period: the first at once, the last before its end.
        let mut due = ((share * total as f64).floor() as usize + 1).min(total);
        // A tick that came late (a busy node) catches up at twice the pace, not in one
        // burst of everything due; once the period is over, the rest go at once.
        if share < 1.0 {
            due = due.min(closed + burst);
        }
        for outbox in outboxes[closed..due.max(closed)].iter_mut() {
            if let Some(outbox) = outbox.take() {
                outbox.close(CloseReason::SERVICE_RESTART);
            }
        }
        closed = closed.max(due);
    }
    drop(outboxes);
    // A period or timeout too long for the clock to add (a config's "1000000y") means no
    // deadline at all.
    match started.checked_add(period.saturating_add(inner.config.drain_timeout)) {
        Some(deadline) => {
            let _ = tokio::time::timeout_at(deadline, hub.wait_empty()).await;
        }
        None => hub.wait_empty().await,
    }
    let left = hub.connection_count();
    if left > 0 {
        tracing::warn!(left, "drain timeout: connections still open");
    } else {
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "drained: no connection left"
        );
    }
    inner.drain_over.send_replace(true);
}

/// Closes connections whose deadline passed; sleeps until the next one (or a new one).
async fn close_at_deadlines(weak: std::sync::Weak<Inner>, deadline_set: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (due, next) = {
            let mut deadlines = inner
                .deadlines
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut due = Vec::new();
            while let Some(entry) = deadlines.by_time.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((_, id), reason) = entry.remove_entry();
                deadlines.by_conn.remove(&id);
                due.push((id, reason));
            }
            (due, deadlines.by_time.keys().next().map(|(at, _)| *at))
        };
        for (id, (code, reason)) in due {
            let outbox = lock(&inner.shards[(id.0 % SHARDS as u64) as usize])
                .get(&id)
                .cloned();
            if let Some(outbox) = outbox {
                outbox.close(CloseReason::new(code, reason));
            }
        }
        drop(inner);
        let wake = deadline_set.notified();
        // Idle, it looks again every minute: it ends within one after its hub.
        let until = next.unwrap_or_else(|| now + std::time::Duration::from_secs(60));
        tokio::select! {
            () = tokio::time::sleep_until(until.into()) => {}
            () = wake => {}
        }
    }
}

impl Inner {
    /// Sends `message` to every connection of this node. Inside a round it is kept for
    /// the round's end (see `wire::fanout`) and the count is of the connections open now;
    /// outside one it is written at once and the count is of those that took it.
    fn broadcast_here(&self, message: Message) -> usize {
        let message = self.compression.prepare(message);
        if cork::is_active() {
            self.fanout.defer(message);
            return self.live.load(Ordering::Relaxed);
        }
        // Earlier broadcasts go first.
        self.fanout.settle();
        self.deliver_run(&Run::single(message))
    }

    /// Gives every connection the run, in the order they connected; returns the
    /// deliveries.
    ///
    /// Nearly all of a walk's time is the kernel's send path, and the kernel allocated
    /// each socket's state when it connected: walked in that order, consecutive sends
    /// touch neighbouring memory instead of a random page each (measured, 10k
    /// connections: 10–20 % more deliveries per CPU-second, p99 at a fixed rate 10–35 %
    /// lower). Ids are handed out in that order, and sorting them costs far less than
    /// one send per recipient.
    fn deliver_run(&self, run: &Run) -> usize {
        let mut deliveries = 0;
        // Recipients that still need the run's metrics counted (those sent a lane whole):
        // plain, deflated.
        let mut counted_in_bulk = [0u64; 2];
        let mut outboxes = Vec::with_capacity(self.live.load(Ordering::Relaxed));
        for shard in self.shards.iter() {
            // Taken out of the shards first: no lock is held across system calls.
            outboxes.extend(lock(shard).iter().map(|(id, o)| (*id, o.clone())));
        }
        outboxes.sort_unstable_by_key(|(id, _)| *id);
        for (_, outbox) in outboxes.drain(..) {
            let (taken, sent) = outbox.push_run(run);
            deliveries += taken;
            match sent {
                Sent::Plain => counted_in_bulk[0] += 1,
                Sent::Deflated => counted_in_bulk[1] += 1,
                Sent::Counted => {}
            }
        }
        self.metrics.sent_run(&run.plain.counts, counted_in_bulk[0]);
        if let Some(deflated) = run.deflated_lane() {
            self.metrics.sent_run(&deflated.counts, counted_in_bulk[1]);
        }
        self.metrics.deliveries(deliveries);
        deliveries
    }
}

impl Walk for Inner {
    fn walk(&self, run: &Run) {
        self.deliver_run(run);
    }
}

/// What `GET /metrics` reads from the hub when scraped: its gauges, and the broker's
/// gap counts (kept by the broker, so not counted twice).
struct Gauges(std::sync::Weak<Inner>);

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gauges")
    }
}

impl prometheus_client::collector::Collector for Gauges {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(inner) = self.0.upgrade() else {
            return Ok(());
        };
        let channels = inner.channels.list();
        let subscriptions: usize = channels.iter().map(|(_, n)| n).sum();
        let gauges = [
            (
                "connections",
                "Connections open: upgrading, open or closing",
                inner.live.load(Ordering::Relaxed),
            ),
            (
                "subscriptions",
                "Channel subscriptions on this node",
                subscriptions,
            ),
            (
                "channels",
                "Channels with subscribers on this node",
                channels.len(),
            ),
            (
                "draining",
                "1 while the node is draining or shutting down (not ready)",
                usize::from(
                    inner.draining.load(Ordering::Relaxed) || inner.closing.load(Ordering::Relaxed),
                ),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let (filled, unfillable) = inner.broker.gaps();
        let counters = [
            (
                "broker_gaps_filled",
                "Gaps in the broker's delivery filled from history",
                filled,
            ),
            (
                "broker_gaps_unfillable",
                "Gaps history could not fill: subscribers were sent a resync",
                unfillable,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// A broker failure as clients see it: 503, the publication may be retried.
fn unavailable(error: crate::broker::BrokerError) -> ProtocolError {
    ProtocolError::new(503, error.to_string())
}

fn lock(shard: &Shard) -> MutexGuard<'_, HashMap<ConnId, Arc<Outbox>>> {
    // Each critical section is a single map operation or a walk of try_push calls that
    // cannot panic midway, so a poisoned shard is still consistent.
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection's reserved place (see [`Hub::admit`]); dropping it frees the place.
pub(crate) struct Admission {
    hub: Hub,
    /// Set when counted in `per_ip`.
    ip: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let inner = &self.hub.inner;
        if let Some(ip) = self.ip {
            let mut per_ip = inner.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        if inner.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            inner.emptied.notify_waiters();
        }
    }
}

/// A connection's place in the hub. `leave()` stops deliveries; dropping it (and with it
/// the admission) ends the connection's count, so [`Hub::shutdown`] waits for the task
/// itself to finish.
pub(crate) struct Registration {
    pub(crate) hub: Hub,
    pub(crate) id: ConnId,
    pub(crate) outbox: Arc<Outbox>,
    _admission: Admission,
}

impl Registration {
    /// Removes the connection from the registry: nothing more is queued for it.
    pub(crate) fn leave(&self) {
        lock(self.hub.shard(self.id)).remove(&self.id);
        self.hub.clear_deadline(self.id);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One upgrade costs one token: only an admitted one takes it. Refusals for the other
    /// limits, and the rate's own refusals, leave the bucket as it was.
    #[tokio::test]
    async fn only_an_admitted_upgrade_takes_a_connect_token() {
        let config = Config {
            max_connections_per_ip: 1,
            // Two a second: nothing comes back while the test runs (a token every 500 ms).
            connect_rate_per_ip: 2,
            ..Config::default()
        };
        let hub = Hub::new(config, crate::Broadcast).unwrap();
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        let first = hub.admit(ip).unwrap();
        for _ in 0..5 {
            assert_eq!(hub.admit(ip).err(), Some(Refusal::FullForAddress(1)));
        }
        drop(first);
        let second = hub.admit(ip).unwrap();
        drop(second);
        for _ in 0..5 {
            assert!(matches!(
                hub.admit(ip).err(),
                Some(Refusal::TooFast {
                    rate: 2,
                    retry_after: 1
                })
            ));
        }
        // Nothing of the refused ones is left counted: another address is admitted.
        let other = hub.admit(Some(IpAddr::from([127, 0, 0, 2]))).unwrap();
        assert_eq!(hub.connection_count(), 1);
        drop(other);
    }
}
