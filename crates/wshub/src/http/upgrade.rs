//! HTTP → WebSocket: everything decided before a connection exists.
//!
//! This is the last point where the request is plain HTTP, so every refusal gets a status
//! and a one-line message: not an upgrade or a wrong version (426, naming version 13), a
//! bad key (400), a foreign browser origin (403), a hub shutting down, draining or full (503), an
//! address opening connections too fast (429 with `Retry-After`). Only then do we answer
//! 101 and hand the upgraded socket to [`crate::connection::run`].

use std::borrow::Cow;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::auth::{Auth, AuthError};
use crate::compression;
use crate::connection::{self, Socket};
use crate::http::prefixed::Prefixed;
use crate::hub::{Hub, Refusal, Registration};
use crate::metrics::Limit;

impl Hub {
    /// The WebSocket endpoint as an axum route, to mount at any path of any router:
    /// `Router::new().route("/ws", hub.endpoint())`. Methods other than GET get 405.
    pub fn endpoint<S: Clone + Send + Sync + 'static>(&self) -> axum::routing::MethodRouter<S> {
        axum::routing::get(endpoint).with_state(self.clone())
    }
}

/// The axum handler behind [`Hub::endpoint`]: the upgrade, and a refusal counted by
/// its status (`wshub_handshakes_refused_total`).
async fn endpoint(State(hub): State<Hub>, request: Request) -> Response {
    let response = upgrade(&hub, request);
    // Counted here, where the answer is given: the accept loop's fast path asks `admit`
    // too, and hands a refused request on to this endpoint.
    match response.status() {
        StatusCode::SWITCHING_PROTOCOLS => {}
        StatusCode::TOO_MANY_REQUESTS => {
            hub.metrics().refused(429);
            hub.metrics().rate_limited(Limit::ConnectRate);
        }
        status => hub.metrics().refused(status.as_u16()),
    }
    response
}

fn upgrade(hub: &Hub, mut request: Request) -> Response {
    let mut accepted = match check(request.headers(), request.uri().query(), hub) {
        Ok(accepted) => accepted,
        Err((status, message)) => return refuse(status, &message),
    };
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
        Err(refusal) => return refused(refusal),
    };
    // Registered before the 101 goes out: a client that has seen the 101 receives every
    // broadcast from then on (queued until its socket is ready).
    let registration = hub.register(admission, accepted.deflate);
    let (parts, _body) = request.into_parts();
    let request = connection::Request {
        remote_addr,
        // Like the header values, hyper's URI is a slice of its read buffer: copy it.
        uri: http::Uri::try_from(parts.uri.to_string()).unwrap_or_default(),
        headers: hub.handler().keeps_headers().then(|| {
            let headers = parts.headers.iter();
            let headers: Vec<_> = headers.map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
            Box::new(kept_headers(&headers))
        }),
        structured: accepted.structured,
        compressed: accepted.deflate.is_some(),
        auth: std::mem::replace(&mut accepted.auth, Auth::Open),
    };
    // One task for the connection's whole life: it waits for hyper to hand over the socket
    // (after our 101 is written), then runs the connection in the same place (`then`).
    // If the upgrade fails, dropping the registration leaves the hub.
    tokio::spawn(on_upgrade.then(move |upgraded| match upgraded {
        Ok(upgraded) => Either::Left(connection::run(
            into_socket(upgraded),
            registration,
            request,
        )),
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            Either::Right(std::future::ready(()))
        }
    }));

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    for (name, value) in accepted.response_headers() {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}

/// An upgrade request that the accept loop parsed itself (see [`crate::http::server`]): if every
/// rule passes and the hub admits it, the connection is registered and this returns the
/// 101 to write and what the connection needs. `None` means "not here": the caller hands
/// the request to the router, which answers it (or refuses it with its specific status).
pub(crate) fn accept_parsed(
    head: &httparse::Request<'_, '_>,
    hub: &Hub,
    remote_addr: SocketAddr,
) -> Option<(Vec<u8>, Registration, connection::Request)> {
    let query = head
        .path
        .and_then(|path| path.split_once('?'))
        .map(|(_, query)| query);
    let mut accepted = check(head.headers, query, hub).ok()?;
    let uri = http::Uri::try_from(head.path?).unwrap_or_default();
    // Nothing after the admission hands the request on: an admitted request has taken its
    // connect token (`connect_rate_per_ip`) and must not be asked about again by hyper's
    // endpoint; a refused one took none, and the endpoint answers it.
    let admission = hub.admit(Some(remote_addr.ip())).ok()?;
    let registration = hub.register(admission, accepted.deflate);
    let request = connection::Request {
        remote_addr: Some(remote_addr),
        uri,
        headers: hub.handler().keeps_headers().then(|| {
            let headers: Vec<_> = head.headers.iter().map(|h| (h.name, h.value)).collect();
            Box::new(kept_headers(&headers))
        }),
        structured: accepted.structured,
        compressed: accepted.deflate.is_some(),
        auth: std::mem::replace(&mut accepted.auth, Auth::Open),
    };
    let mut response = Vec::with_capacity(256);
    response.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in accepted.response_headers() {
        response.extend_from_slice(name.as_bytes());
        response.extend_from_slice(b": ");
        response.extend_from_slice(value.as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"\r\n");
    Some((response, registration, request))
}

/// Why the hub admits no more connections: 503 with the reason, or for the connect rate
/// 429 with `Retry-After`.
fn refused(refusal: Refusal) -> Response {
    let message = match refusal {
        Refusal::ShuttingDown => "server shutting down".to_owned(),
        Refusal::Draining => "server draining: connect to another node".to_owned(),
        Refusal::Full(limit) => {
            format!("server full: {limit} connections open (max_connections)")
        }
        Refusal::FullForAddress(limit) => {
            format!("too many connections from your address: {limit} open (max_connections_per_ip)")
        }
        Refusal::TooFast { rate, retry_after } => {
            let mut response = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "too many new connections from your address: {rate} per second (connect_rate_per_ip); retry in {retry_after} s"
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return response;
        }
    };
    refuse(StatusCode::SERVICE_UNAVAILABLE, &message)
}

/// What a valid upgrade request asked for and gets.
struct Accepted {
    /// The client's `Sec-WebSocket-Key`.
    key: String,
    /// `wshub.v1` was offered: the connection speaks it; otherwise raw mode.
    structured: bool,
    /// permessage-deflate, when it is on and the client offered something we can honour.
    deflate: Option<compression::Agreement>,
    /// Who the client is, as far as the request shows.
    auth: Auth,
}

impl Accepted {
    /// The 101's headers besides its status line.
    fn response_headers(&self) -> impl Iterator<Item = (&'static str, Cow<'static, str>)> {
        [
            Some(("Upgrade", Cow::Borrowed("websocket"))),
            Some(("Connection", Cow::Borrowed("Upgrade"))),
            Some((
                "Sec-WebSocket-Accept",
                Cow::Owned(derive_accept_key(self.key.as_bytes())),
            )),
            self.structured.then_some((
                "Sec-WebSocket-Protocol",
                Cow::Borrowed(crate::channels::protocol::SUBPROTOCOL),
            )),
            self.deflate
                .map(|agreement| ("Sec-WebSocket-Extensions", Cow::Owned(agreement.response()))),
        ]
        .into_iter()
        .flatten()
    }
}

/// The request headers a connection keeps for its handler, in memory of their own.
///
/// Both sources borrow their read buffer (hyper's is 8 KiB): keeping those values would keep
/// that whole buffer alive for the life of every connection. We copy the values into one
/// buffer of the right size and leave out the handshake's own headers, which mean nothing
/// once the connection is open. A header whose name or value is not valid is left out.
fn kept_headers(headers: &[(&str, &[u8])]) -> HeaderMap {
    let handshake_only = |name: &str| {
        [
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-extensions",
            "upgrade",
            "connection",
        ]
        .iter()
        .any(|skip| name.eq_ignore_ascii_case(skip))
    };
    let kept = || headers.iter().filter(|(name, _)| !handshake_only(name));
    let mut values = bytes::BytesMut::with_capacity(kept().map(|(_, v)| v.len()).sum());
    for (_, value) in kept() {
        values.extend_from_slice(value);
    }
    let values = values.freeze();
    let mut copy = HeaderMap::with_capacity(kept().count());
    let mut start = 0;
    for (name, value) in kept() {
        let end = start + value.len();
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(values.slice(start..end)),
        ) {
            copy.append(name, value);
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
    let upgraded = match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
        Ok(parts) => return Socket::tcp(parts.io.into_inner(), parts.read_buf),
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<Prefixed>>() {
        Ok(parts) => {
            // hyper read the prefix first, so what is left of it precedes its own buffer.
            let (stream, prefix) = parts.io.into_inner().into_parts();
            let read_ahead = if prefix.is_empty() {
                parts.read_buf
            } else {
                [prefix, parts.read_buf].concat().into()
            };
            Socket::tcp(stream, read_ahead)
        }
        Err(upgraded) => Socket::split(TokioIo::new(upgraded), bytes::Bytes::new()),
    }
}

/// Why an upgrade request is rejected: the status and a one-line message.
type Rejection = (StatusCode, std::borrow::Cow<'static, str>);

/// Request headers as the upgrade rules read them: hyper's `HeaderMap` (the axum endpoint)
/// or the accept loop's own `httparse` parse.
trait Headers {
    /// Every value of header `name` (given in lower case), in order.
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]>;

    /// The first value of `name`.
    fn first(&self, name: &'static str) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// True if a comma-separated header contains `token` (case-insensitive), as
    /// `Connection: keep-alive, Upgrade` does.
    fn has_token(&self, name: &'static str, token: &str) -> bool {
        self.values(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

impl Headers for HeaderMap {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

impl Headers for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Checks the upgrade request against every rule and decides what it gets.
fn check(
    headers: &(impl Headers + ?Sized),
    query: Option<&str>,
    hub: &Hub,
) -> Result<Accepted, Rejection> {
    let config = hub.config();
    if !headers.has_token("connection", "upgrade") || !headers.has_token("upgrade", "websocket") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            Cow::Borrowed(
                "this is a WebSocket endpoint: send an upgrade request (Connection: Upgrade, Upgrade: websocket)",
            ),
        ));
    }
    match headers.first("sec-websocket-version") {
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
        .first("sec-websocket-key")
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|k| is_valid_key(k))
        .ok_or((
            StatusCode::BAD_REQUEST,
            Cow::Borrowed(
                "missing or malformed Sec-WebSocket-Key (must be 16 bytes, base64-encoded)",
            ),
        ))?;
    if let Some(origin) = headers.first("origin") {
        let host = headers
            .first("host")
            .and_then(|h| std::str::from_utf8(h).ok());
        let origin = std::str::from_utf8(origin).unwrap_or("");
        if !origin_allowed(origin, host, &config.allowed_origins) {
            return Err((
                StatusCode::FORBIDDEN,
                Cow::Owned(format!(
                    "origin `{origin}` is not allowed (see allowed_origins)"
                )),
            ));
        }
    }
    if hub.is_closing() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Cow::Borrowed("server shutting down"),
        ));
    }
    let deflate = hub
        .compression()
        .enabled
        .then(|| {
            let offers = headers.values("sec-websocket-extensions");
            compression::negotiate(offers.filter_map(|value| std::str::from_utf8(value).ok()))
        })
        .flatten();
    let structured = headers
        .values("sec-websocket-protocol")
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(','))
        .any(|offered| offered.trim() == crate::channels::protocol::SUBPROTOCOL);
    let auth = authenticate(headers, query, hub, structured)?;
    Ok(Accepted {
        key: key.to_owned(),
        structured,
        deflate,
        auth,
    })
}

/// The identity rules of an upgrade: a token in the request is checked now (401 with the
/// reason); without one, a `wshub.v1` client may still send `connect`, anyone else needs
/// `allow_anonymous`.
fn authenticate(
    headers: &(impl Headers + ?Sized),
    query: Option<&str>,
    hub: &Hub,
    structured: bool,
) -> Result<Auth, Rejection> {
    let Some(verifier) = hub.auth() else {
        return Ok(Auth::Open);
    };
    match crate::auth::token_of(query, headers.first("authorization")) {
        Some(token) => match verifier.verify(&token) {
            Ok(identity) => Ok(Auth::User(Box::new(identity))),
            Err(AuthError::Expired) => {
                Err((StatusCode::UNAUTHORIZED, Cow::Borrowed("token expired")))
            }
            Err(AuthError::Invalid(why)) => Err((
                StatusCode::UNAUTHORIZED,
                Cow::Owned(format!("unauthorized: {why}")),
            )),
        },
        None if hub.config().allow_anonymous => Ok(Auth::Open),
        None if structured => Ok(Auth::Pending),
        None => Err((
            StatusCode::UNAUTHORIZED,
            Cow::Borrowed(
                "unauthorized: a token is required (?token=…, Authorization: Bearer …, or a wshub.v1 `connect` command)",
            ),
        )),
    }
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
