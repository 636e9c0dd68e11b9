//! wshub: a WebSocket hub. It holds many connections open, hands what clients send to the
//! application, and pushes what the application sends to every client, fast and without
//! blocking on the slow ones.
//!
//! ```no_run
//! use wshub::{Broadcast, Config, Hub, Site};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A chat server: every message goes to everyone.
//! let hub = Hub::new(Config::default(), Broadcast)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let router = wshub::router(hub.clone(), Site::default());
//! wshub::serve(listener, hub, router, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! To mount only the WebSocket endpoint in your own axum app:
//! `Router::new().route("/ws", hub.endpoint())`.
//!
//! Several nodes, one hub: give each a [`RedisBroker`] on the same Redis
//! (`Hub::with_broker(config, handler, RedisBroker::connect(options).await?)`); channels,
//! history, presence and raw broadcasts then span every node.
//!
//! # Layout
//!
//! Data flows one way: socket → connection (frame reader) → handler (the application) →
//! hub → outboxes → sockets, written from the publishing task. One line per part, the
//! lowest first: a module imports only modules listed before it, except
//! `compression/codec.rs`, which sits below `message` (a message deflates itself with
//! it), and the [`Handler`]'s callbacks, which are given the [`Hub`] (`handler` → `hub`,
//! the one import upwards).
//!
//! - [`config`](Config): limits and timeouts with the Go original's defaults; `validate()`.
//! - `id`: [`ConnId`], a connection's identity to the hub, the channels and the broker.
//! - `auth`: JWTs and the [`Identity`] they carry (user, `exp`, channel patterns).
//! - `message`: [`Message`] (text/binary, shared payload) and [`CloseReason`].
//! - `metrics`: the Prometheus counters ([`Hub::metrics_text`]), counted without a lookup
//!   (per-recipient counts tallied per thread and added when a round writes).
//! - `rate`: token buckets (governor): a connection's message budget (`client_rate`) and
//!   the connect rate per address (`connect_rate_per_ip`); bookkeeping, no I/O.
//! - `compression/`: permessage-deflate, a broadcast compressed once: the agreement and
//!   the hub's policy (`mod.rs`), the pooled codec below `message` (`codec.rs`).
//! - `wire/`: bytes in and out of a socket, below the hub: `reader`, the frame reader
//!   (RFC 6455 rules, UTF-8, limits, inflating); `outbox`, a connection's outbound side
//!   (writes straight to its socket, queues only what the kernel refused: bounded, past
//!   it slow consumer); `cork`, rounds (what a round publishes leaves in one write per
//!   recipient; [`flush_corked`] extends a round to a worker's whole run);
//!   `backpressure`, publishers pause while many recipients' kernels refuse.
//! - `broker/`: the [`Broker`] seam (ordering, history, presence) and the types it
//!   shares with the hub; [`MemoryBroker`] (`memory.rs`, one node) and [`RedisBroker`]
//!   (`redis/`: many nodes on one Redis or a cluster; Lua scripts, gap filling, presence
//!   expiry, node reports).
//! - `channels/`: channel subscribers on this node; exact recovery (buffer, then merge);
//!   `protocol`, the `wshub.v1` wire format (commands, replies, pushes), no state.
//! - `handler`: the application's [`Handler`] callbacks and [`ConnInfo`].
//! - `hub`: [`Hub`], the sharded registry and the non-blocking fan-out.
//! - `connection/`: one task per connection: reads, drives refused bytes, pings,
//!   deadlines, close; `session`, what a `wshub.v1` connection's commands do, its
//!   subscriptions.
//! - `http/`: the HTTP surface ([`router`], or apart: [`public_router`] and
//!   [`internal_router`]): home page, browser client (`/wshub.js`), static files, `/ws`,
//!   publish API, `/metrics`, `/healthz`; `admin`, the dashboard and its feed; `server`,
//!   [`serve`] / [`serve_tls`]: the accept loop, handshake limits and graceful shutdown;
//!   `tls`, [`Tls`] (reloadable); `home`, the home page template; `upgrade`, HTTP →
//!   WebSocket checks (version, key, origin) and the 101; `prefixed`, a stream with its
//!   first bytes already read.

mod auth;
mod broker;
mod channels;
mod compression;
mod config;
mod connection;
mod handler;
mod http;
mod hub;
mod id;
mod message;
mod metrics;
mod rate;
mod wire;

#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;

pub use auth::{AuthError, Identity};
pub use broker::redis::{RedisBroker, RedisOptions, check_node_name};
pub use broker::{
    Broker, BrokerError, BrokerFuture, Deliver, Event, Health, History, HistoryLimits,
    IDEMPOTENCY_WINDOW, Member, MemoryBroker, NodeInfo, NodeLink, NodeStats, Publication,
    StreamPosition,
};
pub use channels::protocol::{ProtocolError, SUBPROTOCOL};
pub use config::{Config, ConfigError, format_duration};
pub use handler::{Broadcast, ConnInfo, Handler};
pub use http::server::{MAX_HEADER_BYTES, serve, serve_tls};
pub use http::tls::{Tls, TlsError};
pub use http::{
    CLIENT_DTS, CLIENT_JS, DEFAULT_HOME_TEMPLATE, Site, TemplateError, WS_PATH,
    check_home_template, internal_router, public_router, router,
};
pub use hub::{Hub, SendError};
pub use id::ConnId;
pub use message::{CloseReason, Message};
pub use wire::cork::flush_corked;

/// The metrics crate, for [`Hub::register_metric`]'s metric types.
pub use prometheus_client;
