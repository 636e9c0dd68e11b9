//! The HTTP surface, readable top to bottom: the home page, the browser client
//! (`/wshub.js`, `/wshub.d.ts`), static files, the WebSocket endpoint and the publish API,
//! each a route with its own small handler.
//!
//! Anything not routed is 404; a routed path with the wrong method is 405 (as the Go
//! original). The routes only translate HTTP into hub calls; the hub does the work.

mod admin;
mod defer_accept;
mod home;
mod prefixed;
pub(crate) mod server;
pub(crate) mod tls;
mod upgrade;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tower_http::services::ServeDir;

use self::home::HomePage;
pub use self::home::{TemplateError, check_home_template};
use crate::channels::protocol::ProtocolError;
use crate::hub::Hub;
use crate::message::Message;

/// The home page used when no template is given: a chat client for `/ws`.
pub const DEFAULT_HOME_TEMPLATE: &str = include_str!("../../assets/home.html");

/// The browser client of the `wshub.v1` protocol, an ES module served at `/wshub.js`.
pub const CLIENT_JS: &str = include_str!("../../assets/wshub.js");

/// The TypeScript declarations of [`CLIENT_JS`], served at `/wshub.d.ts`.
pub const CLIENT_DTS: &str = include_str!("../../assets/wshub.d.ts");

/// Where [`router`] mounts the hub's WebSocket endpoint, and the path whose upgrades
/// [`crate::serve`] answers itself, ahead of the router.
pub const WS_PATH: &str = "/ws";

/// What the HTTP surface serves besides `/ws`.
#[derive(Debug, Clone)]
pub struct Site {
    /// The home page template (minijinja, HTML auto-escaping): `{{ host }}` (or the Go
    /// template's `{{.}}` and `{{$}}`) becomes the request's `Host`. Check it first with
    /// [`check_home_template`]: a broken one answers 500 with the reason.
    pub home_template: String,
    /// Directory served under `/static/`; `None` → every `/static/…` is 404.
    pub static_dir: Option<PathBuf>,
    /// Bearer token for `/api/*`; `None` → the API is off (404).
    pub api_key: Option<String>,
    /// Largest request body the API accepts, in bytes (413 above).
    pub api_max_body_size: usize,
    /// Serve `GET /metrics` (the Prometheus text format, no key: put it behind
    /// [`internal_router`] where it must not face the internet).
    pub metrics: bool,
}

impl Default for Site {
    fn default() -> Self {
        Site {
            home_template: DEFAULT_HOME_TEMPLATE.to_owned(),
            static_dir: None,
            api_key: None,
            api_max_body_size: 1024 * 1024,
            metrics: true,
        }
    }
}

/// The whole HTTP surface for `hub` on one listener: [`public_router`]'s routes and
/// [`internal_router`]'s.
pub fn router(hub: Hub, site: Site) -> Router {
    let internal = internal_routes(hub.clone(), &site);
    public_routes(hub, site).merge(internal).fallback(not_found)
}

/// What clients use: `/`, `/wshub.js`, `/wshub.d.ts`, `/static/` and `/ws`.
pub fn public_router(hub: Hub, site: Site) -> Router {
    public_routes(hub, site).fallback(not_found)
}

/// What operators and the application's backend use, to serve on an address of its
/// own (`internal_bind`): `GET /metrics`, `GET /healthz`, `GET /readyz`, the dashboard
/// (`/admin`) and, with an API key, `POST /api/broadcast`, `POST /api/publish`,
/// `POST /api/drain`, `GET /api/channels`, `GET /api/info`, `GET /api/stats` and the
/// dashboard's feed.
pub fn internal_router(hub: Hub, site: Site) -> Router {
    internal_routes(hub, &site).fallback(not_found)
}

fn public_routes(hub: Hub, site: Site) -> Router {
    let mut router = Router::new()
        .route(
            "/",
            get(home).with_state(Arc::new(HomePage::new(&site.home_template))),
        )
        .route(
            "/wshub.js",
            Asset::route(CLIENT_JS, "text/javascript; charset=utf-8"),
        )
        .route(
            "/wshub.d.ts",
            Asset::route(CLIENT_DTS, "application/typescript; charset=utf-8"),
        )
        .route(WS_PATH, hub.endpoint());
    if let Some(dir) = site.static_dir {
        router = router.nest_service("/static", static_files(dir));
    }
    router
}

fn internal_routes(hub: Hub, site: &Site) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz).with_state(hub.clone()))
        .route("/readyz", get(readyz).with_state(hub.clone()))
        .route(
            "/admin",
            Asset::route(admin::PAGE, "text/html; charset=utf-8"),
        );
    if site.metrics {
        router = router.route("/metrics", get(metrics).with_state(hub.clone()));
    }
    if let Some(key) = site.api_key.clone() {
        let api = Arc::new(Api { hub, key });
        router = router
            .route(
                "/api/broadcast",
                post(api_broadcast)
                    .with_state(api.clone())
                    .layer(DefaultBodyLimit::max(site.api_max_body_size)),
            )
            .route(
                "/api/publish",
                post(api_publish)
                    .with_state(api.clone())
                    .layer(DefaultBodyLimit::max(site.api_max_body_size)),
            )
            .route("/api/channels", get(api_channels).with_state(api.clone()))
            .route("/api/drain", post(api_drain).with_state(api.clone()))
            .route("/api/info", get(api_info).with_state(api.clone()))
            .route("/api/admin/feed", get(admin::feed).with_state(api.clone()))
            .route("/api/stats", get(api_stats).with_state(api));
    }
    router
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// `GET /metrics`: every counter and gauge in the Prometheus text format (0.0.4).
async fn metrics(State(hub): State<Hub>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        hub.metrics_text(),
    )
        .into_response()
}

/// `/static/…`: tower-http's `ServeDir` (content types, ranges, `..` refused), behind a
/// check that the file really lies inside the directory, so a symlink cannot lead out
/// and a path the file system rejects is a 404, not a 500.
fn static_files(dir: PathBuf) -> axum::routing::MethodRouter {
    let root = Arc::new(std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone()));
    let serve = ServeDir::new(dir);
    axum::routing::get_service(serve).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let root = root.clone();
            async move {
                if escapes(&root, request.uri().path()).await {
                    return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
                }
                next.run(request).await
            }
        },
    ))
}

/// True unless `path` (as requested, percent-encoded) resolves to something inside
/// `root`. A path that does not resolve at all (missing, name too long, not a directory)
/// is answered 404 here too, rather than as whatever error the file system gives.
async fn escapes(root: &std::path::Path, path: &str) -> bool {
    let Ok(decoded) = percent_encoding::percent_decode_str(path).decode_utf8() else {
        return true;
    };
    let relative = decoded.trim_start_matches('/');
    if relative.split(['/', '\\']).any(|part| part == "..") {
        return true;
    }
    match tokio::fs::canonicalize(root.join(relative)).await {
        Ok(real) => !real.starts_with(root),
        Err(_) => true,
    }
}

/// `GET /` (and HEAD): the template with the request's host filled in.
async fn home(
    State(page): State<Arc<Result<HomePage, TemplateError>>>,
    headers: HeaderMap,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    match page
        .as_ref()
        .as_ref()
        .map_err(Clone::clone)
        .map(|page| page.render(host))
    {
        Ok(Ok(html)) => Html(html).into_response(),
        // The binary checks its template before it listens (`check_home_template`); a
        // library user who passed a broken one learns why here.
        Ok(Err(error)) | Err(error) => {
            tracing::error!(%error, "home page template");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("home page template: {error}\n"),
            )
                .into_response()
        }
    }
}

/// A built-in file, served with `cache-control: no-cache` (revalidate on every use, so an
/// upgraded server's client is picked up at once) and an `ETag` of its content, answered
/// with 304 when the browser has it already.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    /// `GET` (and HEAD) of `body`.
    fn route(body: &'static str, content_type: &'static str) -> axum::routing::MethodRouter {
        let asset = Arc::new(Asset {
            body,
            content_type,
            etag: etag(body),
        });
        get(move |headers: HeaderMap| async move { asset.respond(&headers) })
    }

    fn respond(&self, request: &HeaderMap) -> Response {
        let fresh = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| {
                tags.split(',')
                    .map(str::trim)
                    .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag)
            });
        let mut response = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            ([(header::CONTENT_TYPE, self.content_type)], self.body).into_response()
        };
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Ok(etag) = HeaderValue::from_str(&self.etag) {
            headers.insert(header::ETAG, etag);
        }
        response
    }
}

/// A strong validator of `body`: its FNV-1a hash, the same in every build and process.
fn etag(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

struct Api {
    hub: Hub,
    key: String,
}

/// `POST /api/broadcast`: the body goes to every connection, as text for `text/*` and
/// JSON content types, as binary otherwise. Answers `{"recipients": N}`.
async fn api_broadcast(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(why) = authorize(&headers, &api.key) {
        return unauthorized(why);
    }
    let message = if is_textual(&headers) {
        match Message::text_from_bytes(body) {
            Ok(m) => m,
            Err(_) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "body is not valid UTF-8 but its content type is textual",
                );
            }
        }
    } else {
        Message::binary(body)
    };
    let recipients = api.hub.broadcast(message);
    axum::Json(serde_json::json!({ "recipients": recipients })).into_response()
}

/// `POST /api/publish` with `{"channel": "…", "data": <any JSON>}`: publishes to the
/// channel's subscribers and history. Answers `{"epoch", "offset"}`; 400 for a body that is
/// not that shape (with the JSON error's position) or a bad channel name, 404 for a channel
/// no `channels` pattern admits.
async fn api_publish(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(why) = authorize(&headers, &api.key) {
        return unauthorized(why);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Publish {
        channel: String,
        data: Box<serde_json::value::RawValue>,
        #[serde(default)]
        idempotency_key: Option<String>,
    }
    let request: Publish = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected {{\"channel\": \"…\", \"data\": …, \"idempotency_key\": \"…\" (optional)}}: {error}"
                ),
            );
        }
    };
    if let Some(key) = &request.idempotency_key
        && (key.is_empty() || key.len() > 255)
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "`idempotency_key` must be 1 to 255 bytes",
        );
    }
    let published = api
        .hub
        .publish_once(
            &request.channel,
            &*request.data,
            request.idempotency_key.as_deref(),
        )
        .await;
    match published {
        Ok(position) => axum::Json(serde_json::json!({
            "epoch": &*position.epoch,
            "offset": position.offset,
        }))
        .into_response(),
        Err(error) => json_error(
            StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &error.message,
        ),
    }
}

/// `GET /healthz` (no key): `{"status": "ok"}`, or `{"status": "degraded", "broker":
/// "<why>"}` while the broker cannot reach its engine; 200 either way, because the node
/// still serves its own clients.
async fn healthz(State(hub): State<Hub>) -> Response {
    match hub.broker_health() {
        crate::broker::Health::Ok => axum::Json(serde_json::json!({ "status": "ok" })),
        crate::broker::Health::Degraded(why) => {
            axum::Json(serde_json::json!({ "status": "degraded", "broker": why }))
        }
    }
    .into_response()
}

/// `GET /readyz` (no key): whether a load balancer should send this node traffic. 200
/// `{"status": "ready"}`; 503 `{"status": "shutting down"}`, `{"status": "draining"}`, or
/// `{"status": "starting", "broker": "<why>"}` until the broker has been reachable once.
async fn readyz(State(hub): State<Hub>) -> Response {
    let not_ready = if hub.is_closing() {
        serde_json::json!({ "status": "shutting down" })
    } else if hub.is_draining() {
        serde_json::json!({ "status": "draining" })
    } else if let Err(why) = hub.broker_reached() {
        serde_json::json!({ "status": "starting", "broker": why })
    } else {
        return axum::Json(serde_json::json!({ "status": "ready" })).into_response();
    };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(not_ready)).into_response()
}

/// `POST /api/drain`: starts the drain ([`Hub::drain`]) and answers 202 `{"draining": true,
/// "already": false, "connections": N, "drain_period": "30s"}` (N: open when asked); asked
/// again while draining, the same with `"already": true`. 503 once shutting down.
async fn api_drain(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(why) = authorize(&headers, &api.key) {
        return unauthorized(why);
    }
    if api.hub.is_closing() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    let connections = api.hub.connection_count();
    let started = api.hub.drain();
    if started {
        tracing::info!(connections, "POST /api/drain: draining");
    }
    let body = serde_json::json!({
        "draining": true,
        "already": !started,
        "connections": connections,
        "drain_period": crate::format_duration(api.hub.config().drain_period),
    });
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// `GET /api/info`: `{"node": NAME, "nodes": [{"name", "connections", "subscriptions",
/// "last_seen"}], "gaps": {"filled", "unfillable"}}`; on a single node `node` is null and
/// `nodes` lists this one.
async fn api_info(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(why) = authorize(&headers, &api.key) {
        return unauthorized(why);
    }
    let (name, nodes) = match nodes(&api.hub).await {
        Ok(nodes) => nodes,
        Err(error) => return json_error(StatusCode::SERVICE_UNAVAILABLE, &error.message),
    };
    let (filled, unfillable) = api.hub.broker_gaps();
    axum::Json(serde_json::json!({
        "node": name,
        "nodes": nodes,
        "gaps": { "filled": filled, "unfillable": unfillable },
    }))
    .into_response()
}

/// This node's name and every node as `/api/info` lists them; on a single node (no name)
/// this one alone.
async fn nodes(hub: &Hub) -> Result<(Option<String>, Vec<serde_json::Value>), ProtocolError> {
    let (name, nodes) = hub.nodes().await?;
    let nodes = if name.is_none() {
        let subscriptions: usize = hub.channels().iter().map(|(_, n)| n).sum();
        vec![serde_json::json!({
            "name": null,
            "connections": hub.connection_count(),
            "subscriptions": subscriptions,
            "last_seen": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })]
    } else {
        nodes
            .iter()
            .map(|node| {
                serde_json::json!({
                    "name": node.name,
                    "connections": node.stats.connections,
                    "subscriptions": node.stats.subscriptions,
                    "last_seen": node.last_seen,
                })
            })
            .collect()
    };
    Ok((name, nodes))
}

/// `GET /api/channels`: `{"channels": [{"name", "subscribers"}]}`, channels with
/// subscribers on this node, sorted by name.
async fn api_channels(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(why) = authorize(&headers, &api.key) {
        return unauthorized(why);
    }
    let channels: Vec<_> = api
        .hub
        .channels()
        .into_iter()
        .map(|(name, subscribers)| serde_json::json!({ "name": name, "subscribers": subscribers }))
        .collect();
    axum::Json(serde_json::json!({ "channels": channels })).into_response()
}

/// `GET /api/stats`: `{"connections": N, "tasks": M, "rate_limited": R}`, for monitoring
/// and for tests that check nothing is left behind (tasks are the runtime's live tasks;
/// `rate_limited` counts the inbound messages refused for `client_rate`).
async fn api_stats(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(why) = authorize(&headers, &api.key) {
        return unauthorized(why);
    }
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    axum::Json(serde_json::json!({
        "connections": api.hub.connection_count(),
        "tasks": tasks,
        "rate_limited": api.hub.rate_limited(),
    }))
    .into_response()
}

fn authorize(headers: &HeaderMap, key: &str) -> Result<(), &'static str> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err("wrong API key"),
        None => Err("missing `Authorization: Bearer <api key>` header"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = json_error(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    response
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// Compares without an early exit, so the time taken does not reveal the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_textual(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime.starts_with("text/") || mime == "application/json" || mime.ends_with("+json")
}
