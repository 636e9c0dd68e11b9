//! HTTP → WebSocket: everything decided before a connection exists.
//!
//! This is the last point where the request is plain HTTP, so every refusal gets a status
//! and a one-line message: not an upgrade or a wrong version (426, naming version 13), a
//! bad key (400), a foreign browser origin (403), a hub shutting down (503). Only then do
//! we answer 101 and hand the upgraded socket to [`crate::connection::run`].

use std::borrow::Cow;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::compression;
use crate::config::Config;
use crate::connection::{self, Socket};
use crate::hub::{Hub, Refusal};

impl Hub {
    /// The WebSocket endpoint as an axum route, to mount at any path of any router:
    /// `Router::new().route("/ws", hub.endpoint())`. Methods other than GET get 405.
    pub fn endpoint<S: Clone + Send + Sync + 'static>(&self) -> axum::routing::MethodRouter<S> {
        axum::routing::get(endpoint).with_state(self.clone())
    }
}

/// The axum handler behind [`Hub::endpoint`].
async fn endpoint(State(hub): State<Hub>, mut request: Request) -> Response {
    let key = match check(&request, hub.config()) {
        Ok(key) => key,
        Err((status, message)) => return refuse(status, &message),
    };
    if hub.is_closing() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded (HTTP/1.1 required)",
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let remote_addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    let admission = match hub.admit(remote_addr.map(|addr| addr.ip())) {
        Ok(admission) => admission,
        Err(Refusal::ShuttingDown) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
        }
        Err(Refusal::Full(limit)) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("server full: {limit} connections open (max_connections)"),
            );
        }
        Err(Refusal::FullForAddress(limit)) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "too many connections from your address: {limit} open (max_connections_per_ip)"
                ),
            );
        }
    };
    // permessage-deflate when it is on and the client offers something we can honour.
    let deflate = hub
        .compression()
        .enabled
        .then(|| {
            let offers = request.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
            compression::negotiate(offers.iter().filter_map(|value| value.to_str().ok()))
        })
        .flatten();
    // Registered before the 101 goes out: a client that has seen the 101 receives every
    // broadcast from then on (queued until its socket is ready).
    let registration = hub.register(admission, deflate);
    // `wshub.v1` when the client offers it; otherwise raw mode (no subprotocol header).
    let structured = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|offered| offered.trim() == crate::protocol::SUBPROTOCOL);
    let (parts, _body) = request.into_parts();
    let request = connection::Request {
        remote_addr,
        // Like the header values, hyper's URI is a slice of its read buffer: copy it.
        uri: http::Uri::try_from(parts.uri.to_string()).unwrap_or_default(),
        headers: hub
            .handler()
            .keeps_headers()
            .then(|| Box::new(kept_headers(&parts.headers))),
        structured,
        compressed: deflate.is_some(),
    };
    // One task for the connection's whole life: it waits for hyper to hand over the socket
    // (after our 101 is written), then runs the connection in place.
    let upgrade = async move {
        match on_upgrade.await {
            Ok(upgraded) => Some(into_socket(upgraded)),
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                None
            }
        }
    };
    tokio::spawn(connection::run(upgrade, registration, request));

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if structured {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(crate::protocol::SUBPROTOCOL),
        );
    }
    if let Some(agreement) = deflate
        && let Ok(value) = HeaderValue::from_str(&agreement.response())
    {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
    }
    response
}

/// The request headers a connection keeps for its handler, in memory of their own.
///
/// hyper's header values are slices of its 8 KiB read buffer: keeping them would keep that
/// whole buffer alive for the life of every connection (measured: 8 KiB of heap each). We
/// copy the values into one buffer of the right size and leave out the handshake's own
/// headers, which mean nothing once the connection is open.
fn kept_headers(headers: &HeaderMap) -> HeaderMap {
    let handshake_only = |name: &header::HeaderName| {
        name == header::SEC_WEBSOCKET_KEY
            || name == header::SEC_WEBSOCKET_VERSION
            || name == header::SEC_WEBSOCKET_EXTENSIONS
            || name == header::UPGRADE
            || name == header::CONNECTION
    };
    let kept = || headers.iter().filter(|(name, _)| !handshake_only(name));
    let mut values = bytes::BytesMut::with_capacity(kept().map(|(_, v)| v.len()).sum());
    for (_, value) in kept() {
        values.extend_from_slice(value.as_bytes());
    }
    let values = values.freeze();
    let mut copy = HeaderMap::with_capacity(kept().count());
    let mut start = 0;
    for (name, value) in kept() {
        let end = start + value.len();
        // The bytes were a valid header value a moment ago, so this cannot fail; if it
        // ever did, the header is left out rather than the connection refused.
        if let Ok(value) = HeaderValue::from_maybe_shared(values.slice(start..end)) {
            copy.append(name.clone(), value);
        }
        start = end;
    }
    copy
}

/// The connection takes the TCP socket itself when it can (`wshub::serve`, or any server
/// that hands hyper a `TokioIo<TcpStream>`): its two halves then need no lock between the
/// reader and the publishers. Any other stream (TLS, a server that wraps its sockets)
/// works the same through a shared lock.
fn into_socket(upgraded: hyper::upgrade::Upgraded) -> Socket {
    match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
        Ok(parts) => Socket::tcp(parts.io.into_inner(), parts.read_buf),
        Err(upgraded) => Socket::split(TokioIo::new(upgraded), bytes::Bytes::new()),
    }
}

/// Why an upgrade request is rejected: the status and a one-line message.
type Rejection = (StatusCode, std::borrow::Cow<'static, str>);

/// Checks the upgrade request; returns the client's `Sec-WebSocket-Key`.
fn check(request: &Request, config: &Config) -> Result<String, Rejection> {
    let headers = request.headers();
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            Cow::Borrowed(
                "this is a WebSocket endpoint: send an upgrade request (Connection: Upgrade, Upgrade: websocket)",
            ),
        ));
    }
    match headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
    {
        Some(b"13") => {}
        Some(other) => {
            let other = String::from_utf8_lossy(other);
            return Err((
                StatusCode::UPGRADE_REQUIRED,
                Cow::Owned(format!(
                    "unsupported Sec-WebSocket-Version `{other}`: this server speaks 13"
                )),
            ));
        }
        None => {
            return Err((
                StatusCode::UPGRADE_REQUIRED,
                Cow::Borrowed("missing Sec-WebSocket-Version: this server speaks 13"),
            ));
        }
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| is_valid_key(k))
        .ok_or((
            StatusCode::BAD_REQUEST,
            Cow::Borrowed(
                "missing or malformed Sec-WebSocket-Key (must be 16 bytes, base64-encoded)",
            ),
        ))?;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin = origin.to_str().unwrap_or("");
        if !origin_allowed(origin, host, &config.allowed_origins) {
            return Err((
                StatusCode::FORBIDDEN,
                Cow::Owned(format!(
                    "origin `{origin}` is not allowed (see allowed_origins)"
                )),
            ));
        }
    }
    Ok(key.to_owned())
}

/// True if a comma-separated header contains `token` (case-insensitive), as
/// `Connection: keep-alive, Upgrade` does.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A key is 16 random bytes in base64: 22 significant characters and `==`.
fn is_valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The Go upgrader's default check (the origin's host equals the request's `Host`),
/// widened by `allowed_origins` (exact origins, or `*`).
pub(crate) fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((_scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    host.is_some_and(|host| authority.eq_ignore_ascii_case(host))
}

/// A refusal: status, plain-text reason, and for 426 the version we speak.
fn refuse(status: StatusCode, message: &str) -> Response {
    let mut response = (status, format!("{message}\n")).into_response();
    if status == StatusCode::UPGRADE_REQUIRED {
        let headers = response.headers_mut();
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_origin_passes_foreign_fails() {
        assert!(origin_allowed(
            "http://localhost:8080",
            Some("localhost:8080"),
            &[]
        ));
        assert!(origin_allowed(
            "http://LOCALHOST:8080",
            Some("localhost:8080"),
            &[]
        ));
        assert!(!origin_allowed(
            "http://evil.example",
            Some("localhost:8080"),
            &[]
        ));
        assert!(!origin_allowed("null", Some("localhost:8080"), &[]));
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            "https://app.example",
            Some("localhost"),
            &allowed
        ));
        assert!(origin_allowed(
            "https://x.example",
            None,
            &["*".to_string()]
        ));
    }

    #[test]
    fn keys_are_checked() {
        assert!(is_valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25j!Q=="));
    }
}
