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

mod memory;
pub(crate) mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::id::ConnId;
use crate::message::Message;

pub use memory::MemoryBroker;

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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    /// The connection, as its node numbers it.
    pub conn: ConnId,
    /// The node it is on, when the broker spans several (`None` on a single node).
    pub node: Option<Arc<str>>,
    /// The user (a token's `sub`), when the connection has one.
    pub user: Option<Arc<str>>,
}

impl Member {
    /// A connection of this node, before the broker says which node that is.
    pub fn local(conn: ConnId) -> Member {
        Member {
            conn,
            node: None,
            user: None,
        }
    }

    /// The id clients see: `17` on a single node, `17@node-a` across nodes, so ids of
    /// different nodes never collide.
    pub fn key(&self) -> String {
        match &self.node {
            Some(node) => format!("{}@{node}", self.conn),
            None => self.conn.to_string(),
        }
    }

    /// Reads back what [`Member::key`] wrote.
    pub fn from_key(key: &str) -> Option<Member> {
        let (conn, node) = match key.split_once('@') {
            Some((conn, node)) => (conn, Some(Arc::from(node))),
            None => (key, None),
        };
        Some(Member {
            conn: ConnId(conn.parse::<u64>().ok()?),
            node,
            user: None,
        })
    }
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
    /// Publications of the channel were lost on the way to this node and could not be
    /// read back from history (trimmed, expired, a new epoch): subscribers must reload
    /// their state; the stream carries on after this position.
    Resync(StreamPosition),
    /// A raw-mode broadcast from another node (delivered to every raw connection here;
    /// the channel name is empty).
    Broadcast(Message),
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

/// A broker failure (a remote engine unreachable, say); the hub reports it as code 503
/// (HTTP 503 on the API): the publication may not have been made, and may be retried.
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

/// How much history a [`MemoryBroker`] keeps per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Publications kept per channel (0: none, so nothing can be recovered).
    pub size: usize,
    /// How long a publication is kept; a stream with no publication for this long and no
    /// subscriber is forgotten (its next publication starts a new epoch).
    pub ttl: Duration,
}

/// What this node reports about itself to the others (`GET /api/info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Open connections.
    pub connections: usize,
    /// Channel subscriptions of those connections.
    pub subscriptions: usize,
}

/// A node as the broker last heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its `node_name`.
    pub name: String,
    /// What it last reported.
    pub stats: NodeStats,
    /// When, in seconds since the Unix epoch.
    pub last_seen: u64,
}

/// What the hub hands its broker when it starts: where events go, and what the node
/// reports about itself.
#[derive(Clone)]
pub struct NodeLink {
    /// Delivery of the events of the channels this node is subscribed to.
    pub deliver: Deliver,
    /// This node's counts, read whenever the broker reports them.
    pub stats: Arc<dyn Fn() -> NodeStats + Send + Sync>,
}

impl std::fmt::Debug for NodeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLink").finish_non_exhaustive()
    }
}

/// Whether the broker can reach what it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working.
    Ok,
    /// Not reaching its engine: the node serves its own clients, publications fail.
    Degraded(String),
}

/// How long an `idempotency_key` is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// The seam between the hub and the engine that orders, keeps and spreads publications.
pub trait Broker: Send + Sync + 'static {
    /// Called once by the hub before anything else: where events are to be delivered.
    fn start(&self, link: NodeLink);
    /// Appends `data` to `channel`'s stream and delivers it to every node subscribed.
    /// With an `idempotency_key` seen for this channel within [`IDEMPOTENCY_WINDOW`], it
    /// publishes nothing and answers the first attempt's publication.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        idempotency_key: Option<&'a str>,
    ) -> BrokerFuture<'a, Publication>;
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
    /// Hands a raw-mode broadcast to the other nodes (they deliver it as
    /// [`Event::Broadcast`]); this node has delivered it already. Never waits.
    fn broadcast(&self, _message: &Message) {}
    /// Whether the broker reaches its engine.
    fn health(&self) -> Health {
        Health::Ok
    }
    /// This node's name, when the broker spans several.
    fn node_name(&self) -> Option<&str> {
        None
    }
    /// Every live node and what it last reported (empty on a single node).
    fn nodes(&self) -> BrokerFuture<'_, Vec<NodeInfo>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
    /// Counters of the broker's gap repair: (gaps filled from history, gaps history could
    /// not fill).
    fn gaps(&self) -> (u64, u64) {
        (0, 0)
    }
}
