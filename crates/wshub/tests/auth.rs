//! Users as the application sees them: `ConnInfo::user()` is the token's `sub`; and the
//! optional `aud` / `iss` checks of the library's `Config`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::SinkExt;
use jsonwebtoken::{EncodingKey, Header, encode};
use tokio_tungstenite::tungstenite::Message as Frame;
use wshub::{Config, ConnInfo, Hub, Message};

const SECRET: &str = "library-test-secret-of-32-bytes!";

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn exp() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60
}

/// Answers each message with the sender's user.
struct WhoAmI;

impl wshub::Handler for WhoAmI {
    async fn on_message(&self, hub: &Hub, conn: &ConnInfo, _message: Message) {
        let _ = hub.send(conn.id(), Message::text(conn.user().unwrap_or("anonymous")));
    }
}

fn config() -> Config {
    Config {
        jwt_hmac_secret: Some(SECRET.to_owned()),
        jwt_audience: Some("chat".to_owned()),
        jwt_issuer: Some("login.example".to_owned()),
        allow_anonymous: true,
        ..Config::default()
    }
}

#[tokio::test]
async fn the_application_sees_the_tokens_user() {
    let server = start(config(), WhoAmI).await;
    let good = token(
        serde_json::json!({"sub": "alice", "exp": exp(), "aud": "chat", "iss": "login.example"}),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}?token={good}", server.url()))
        .await
        .unwrap();
    ws.send(Frame::Text("who?".into())).await.unwrap();
    assert_eq!(recv(&mut ws).await, Frame::Text("alice".into()));
    let mut anonymous = connect(&server).await;
    anonymous.send(Frame::Text("who?".into())).await.unwrap();
    assert_eq!(recv(&mut anonymous).await, Frame::Text("anonymous".into()));
    server.shutdown().await;
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let server = start(config(), WhoAmI).await;
    for (claims, why) in [
        (
            serde_json::json!({"sub": "a", "exp": exp(), "aud": "other", "iss": "login.example"}),
            "wrong audience",
        ),
        (
            serde_json::json!({"sub": "a", "exp": exp(), "aud": "chat", "iss": "elsewhere"}),
            "wrong issuer",
        ),
        (
            serde_json::json!({"sub": "a", "exp": exp(), "iss": "login.example"}),
            "`aud`",
        ),
    ] {
        let url = format!("{}?token={}", server.url(), token(claims));
        let error = tokio_tungstenite::connect_async(url).await.unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
            panic!("expected an HTTP refusal, got {error}");
        };
        assert_eq!(response.status(), 401);
        let body =
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
        assert!(body.contains(why), "{why}: {body}");
    }
    server.shutdown().await;
}
