//! The application's hook into the hub: the Go original's `SubmitCallback`, plus connect
//! and disconnect events.
//!
//! Each connection calls its handler from its own task, so a slow handler only delays the
//! connection it is handling; every other connection keeps reading and writing. Work that
//! should not delay even that one connection belongs in a task the handler spawns.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use http::{HeaderMap, Uri};

// The one import upwards in the crate: the hub calls the handler, and the handler's
// callbacks are given the hub to answer with (send, broadcast, close). A callback, not a
// layer: nothing else here depends on the hub.
use crate::hub::Hub;
use crate::id::ConnId;
use crate::message::{CloseReason, Message};

/// What the server knew about a connection when it upgraded.
#[derive(Debug)]
pub struct ConnInfo {
    pub(crate) id: ConnId,
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) uri: Uri,
    /// `None` unless the handler keeps headers: a boxed map costs 8 bytes when absent.
    pub(crate) headers: Option<Box<HeaderMap>>,
    /// The token's `sub`, when the upgrade request carried a valid one.
    pub(crate) user: Option<std::sync::Arc<str>>,
    /// The connection's message budget, only when `client_rate` is set: kept here, where
    /// its pointer fits the allocation's size class (152 → 160 bytes, jemalloc's class
    /// either way), rather than in the task's future.
    pub(crate) budget: Option<Box<crate::rate::Budget>>,
}

/// What [`ConnInfo::headers`] shows when none were kept.
static NO_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

impl ConnInfo {
    /// The connection's id in its hub.
    pub fn id(&self) -> ConnId {
        self.id
    }
    /// The user (the token's `sub`) when the upgrade request carried a valid JWT
    /// (`?token=` or `Authorization: Bearer`); `None` without authentication, for
    /// anonymous connections, and for `wshub.v1` clients that send their token in
    /// `connect` (the session knows them).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
    /// The peer's address, when the server knows it (always with [`crate::serve`]).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }
    /// The upgrade request's URI (path and query).
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
    /// The upgrade request's path.
    pub fn path(&self) -> &str {
        self.uri.path()
    }
    /// The upgrade request's query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.uri.query()
    }
    /// The upgrade request's headers, less the handshake's own (`Connection`, `Upgrade`,
    /// `Sec-WebSocket-Key`, `-Version`, `-Extensions`), which mean nothing once it is open.
    ///
    /// Empty unless the handler's [`Handler::keeps_headers`] returns true: kept for every
    /// connection's life, they would be about a tenth of an idle connection's memory.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.as_deref().unwrap_or(&NO_HEADERS)
    }
}

/// The application's callbacks. Only `on_message` is required.
///
/// ```
/// use wshub::{ConnInfo, Handler, Hub, Message};
///
/// /// Echo every message back to its sender only.
/// struct Echo;
///
/// impl Handler for Echo {
///     async fn on_message(&self, hub: &Hub, conn: &ConnInfo, message: Message) {
///         let _ = hub.send(conn.id(), message);
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Whether [`ConnInfo::headers`] should hold the upgrade request's headers (a cookie,
    /// a user agent) for this handler; by default they are not kept (see there).
    fn keeps_headers(&self) -> bool {
        false
    }

    /// A connection was upgraded and registered; it can be sent to already.
    fn on_connect(&self, hub: &Hub, conn: &ConnInfo) -> impl Future<Output = ()> + Send {
        let _ = (hub, conn);
        async {}
    }

    /// A message arrived. The connection reads its next frame once this returns.
    fn on_message(
        &self,
        hub: &Hub,
        conn: &ConnInfo,
        message: Message,
    ) -> impl Future<Output = ()> + Send;

    /// The connection ended, for `reason` (ours, the peer's, or 1006 when the link broke).
    /// It no longer receives messages.
    fn on_disconnect(
        &self,
        hub: &Hub,
        conn: &ConnInfo,
        reason: &CloseReason,
    ) -> impl Future<Output = ()> + Send {
        let _ = (hub, conn, reason);
        async {}
    }
}

/// The chat handler (`--on-message chat`): every message goes to every connection,
/// sender included, with its type kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct Broadcast;

impl Handler for Broadcast {
    async fn on_message(&self, hub: &Hub, _conn: &ConnInfo, message: Message) {
        hub.broadcast(message);
    }
}

type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// [`Handler`] made object-safe, so the hub can hold any handler without a type parameter.
/// One small allocation per inbound message; none per delivery.
pub(crate) trait DynHandler: Send + Sync {
    fn keeps_headers(&self) -> bool;
    fn on_connect<'a>(&'a self, hub: &'a Hub, conn: &'a ConnInfo) -> BoxFuture<'a>;
    fn on_message<'a>(
        &'a self,
        hub: &'a Hub,
        conn: &'a ConnInfo,
        message: Message,
    ) -> BoxFuture<'a>;
    fn on_disconnect<'a>(
        &'a self,
        hub: &'a Hub,
        conn: &'a ConnInfo,
        reason: &'a CloseReason,
    ) -> BoxFuture<'a>;
}

impl<H: Handler> DynHandler for H {
    fn keeps_headers(&self) -> bool {
        Handler::keeps_headers(self)
    }
    fn on_connect<'a>(&'a self, hub: &'a Hub, conn: &'a ConnInfo) -> BoxFuture<'a> {
        Box::pin(Handler::on_connect(self, hub, conn))
    }
    fn on_message<'a>(
        &'a self,
        hub: &'a Hub,
        conn: &'a ConnInfo,
        message: Message,
    ) -> BoxFuture<'a> {
        Box::pin(Handler::on_message(self, hub, conn, message))
    }
    fn on_disconnect<'a>(
        &'a self,
        hub: &'a Hub,
        conn: &'a ConnInfo,
        reason: &'a CloseReason,
    ) -> BoxFuture<'a> {
        Box::pin(Handler::on_disconnect(self, hub, conn, reason))
    }
}
