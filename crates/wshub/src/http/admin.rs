//! The live dashboard: `/admin`, one page with no build step, and its feed,
//! `GET /api/admin/feed` (API key), a server-sent event stream with one snapshot a second.
//!
//! The page asks for the API key, keeps it in `sessionStorage`, and reads the feed with
//! `fetch` (an `EventSource` cannot send the `Authorization` header). Rates are the
//! page's work: the feed sends running totals, the same counters `GET /metrics` shows.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;

use super::{Api, authorize, unauthorized};
use crate::hub::Hub;

/// The dashboard page.
pub(super) const PAGE: &str = include_str!("../../assets/admin.html");

/// How often the feed sends a snapshot.
const EVERY: Duration = Duration::from_secs(1);

/// How many channels the snapshot lists, the most subscribed first.
const TOP_CHANNELS: usize = 10;

/// `GET /api/admin/feed`: `event: snapshot` with a JSON [`snapshot`], every second until
/// the page goes away.
pub(super) async fn feed(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(why) = authorize(&headers, &api.key) {
        return unauthorized(why);
    }
    let hub = api.hub.clone();
    let ticks = futures_util::stream::unfold(
        (hub, None::<tokio::time::Interval>),
        |(hub, interval)| async move {
            let mut interval = match interval {
                Some(interval) => interval,
                None => {
                    let mut interval = tokio::time::interval(EVERY);
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    interval
                }
            };
            interval.tick().await;
            // A shutting-down server waits for open responses: end this one.
            if hub.is_closing() {
                return None;
            }
            let event = Event::default()
                .event("snapshot")
                .data(snapshot(&hub).await.to_string());
            Some((Ok::<_, Infallible>(event), (hub, Some(interval))))
        },
    );
    Sse::new(ticks)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What the dashboard shows: this node's counts, running totals, the top channels, the
/// nodes the broker knows, and the last evictions and errors.
async fn snapshot(hub: &Hub) -> serde_json::Value {
    let mut channels = hub.channels();
    let channel_count = channels.len();
    let subscriptions: usize = channels.iter().map(|(_, n)| n).sum();
    channels.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    channels.truncate(TOP_CHANNELS);
    let (node, nodes, nodes_error) = match super::nodes(hub).await {
        Ok((node, nodes)) => (node, nodes, None),
        Err(error) => (None, Vec::new(), Some(error.message)),
    };
    let broker = match hub.broker_health() {
        crate::broker::Health::Ok => None,
        crate::broker::Health::Degraded(why) => Some(why),
    };
    let metrics = hub.metrics();
    serde_json::json!({
        "at": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        "node": node,
        "connections": hub.connection_count(),
        "closing": hub.is_closing(),
        "draining": hub.is_draining(),
        "subscriptions": subscriptions,
        "channel_count": channel_count,
        "channels": channels
            .iter()
            .map(|(name, subscribers)| serde_json::json!({"name": name, "subscribers": subscribers}))
            .collect::<Vec<_>>(),
        "totals": metrics.totals(),
        "nodes": nodes,
        "nodes_error": nodes_error,
        "broker_degraded": broker,
        "recent": metrics.recent(),
    })
}
