//! Users by JWT, against the real binary with real tokens (jsonwebtoken here, keys the
//! test makes): tokens on the upgrade and in `connect`, every refusal's status or close
//! code, `exp` enforced while connected, refresh in place, and the token's channels.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::redis::V1;
use common::*;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn server(extra: &[&str]) -> Server {
    let mut args = vec!["--jwt-hmac-secret", SECRET, "--handshake-timeout", "1s"];
    args.extend_from_slice(extra);
    Server::start(&args, &[])
}

/// The upgrade's HTTP answer when it is refused: (status, body).
async fn refused(server: &Server, path: &str, headers: &str) -> (u16, String) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n",
        server.addr
    );
    let response = http(server.addr, request).await;
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
    )
}

/// Waits for the close frame; returns (code, reason).
async fn closed(ws: &mut Client) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Frame::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_token_on_the_upgrade_is_checked_and_refusals_say_why() {
    let server = server(&[]);
    let good = hs256(json!({"sub": "alice", "exp": now() + 60}));
    // ?token= and Authorization: Bearer both work.
    let mut a = connect(&format!("{}?token={good}", server.url())).await;
    a.send(Frame::Text("hi".into())).await.unwrap();
    assert_eq!(next_data(&mut a).await, Frame::Text("hi".into()));
    let mut b = connect_with(&server.url(), "Authorization", &format!("Bearer {good}")).await;
    b.send(Frame::Text("bearer".into())).await.unwrap();
    loop {
        if next_data(&mut b).await == Frame::Text("bearer".into()) {
            break;
        }
    }

    let expired = hs256(json!({"sub": "alice", "exp": now() - 10}));
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "mallory", "exp": now() + 60}),
        &EncodingKey::from_secret(b"another-secret-of-32-bytes-long!").unwrap(),
    )
    .unwrap();
    let cases = [
        (format!("/ws?token={expired}"), "token expired"),
        (format!("/ws?token={forged}"), "unauthorized: bad signature"),
        ("/ws?token=nonsense".to_owned(), "unauthorized: not a JWT"),
        ("/ws".to_owned(), "unauthorized: a token is required"),
    ];
    for (path, reason) in cases {
        let (status, body) = refused(&server, &path, "").await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.starts_with(reason), "{path}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    }
}

use futures_util::SinkExt;

#[tokio::test]
async fn anonymous_connections_when_allowed() {
    let server = server(&["--allow-anonymous", "true"]);
    let mut a = connect(&server.url()).await;
    a.send(Frame::Text("anyone".into())).await.unwrap();
    assert_eq!(next_data(&mut a).await, Frame::Text("anyone".into()));
}

#[tokio::test]
async fn a_wshub_v1_client_sends_its_token_in_connect() {
    let server = server(&[]);
    let mut client = V1::connect(&server.url()).await;
    let early = client
        .call(json!({"cmd": "subscribe", "channel": "room"}))
        .await;
    assert_eq!(early["error"]["code"], json!(401), "{early}");
    let token = hs256(json!({"sub": "alice", "exp": now() + 120}));
    let reply = client.call(json!({"cmd": "connect", "token": token})).await;
    assert_eq!(reply["result"]["user"], json!("alice"), "{reply}");
    let expires_in = reply["result"]["expires_in"].as_u64().unwrap();
    assert!((110..=120).contains(&expires_in), "{reply}");
    // Presence names the user.
    let reply = client
        .call(json!({"cmd": "subscribe", "channel": "room"}))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let reply = client
        .call(json!({"cmd": "presence", "channel": "room"}))
        .await;
    let members = &reply["result"]["members"];
    assert_eq!(members[0]["user"], json!("alice"), "{reply}");
    // Join events carry the user too.
    let mut watcher = V1::connect(&server.url()).await;
    watcher
        .call(json!({"cmd": "connect", "token": hs256(json!({"sub": "watcher"}))}))
        .await;
    watcher
        .call(json!({"cmd": "subscribe", "channel": "lobby", "presence_events": true}))
        .await;
    let reply = client
        .call(json!({"cmd": "subscribe", "channel": "lobby"}))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    loop {
        let joined: Vec<&Value> = watcher
            .pushes
            .iter()
            .filter_map(|p| p.get("join"))
            .collect();
        if joined.len() == 2 {
            assert_eq!(joined[1]["user"], json!("alice"), "{joined:?}");
            break;
        }
        watcher.call(json!({"cmd": "ping"})).await;
    }

    // A bad token in connect closes with 4001, an expired one with 4002.
    let mut bad = V1::connect(&server.url()).await;
    bad.ws
        .send(Frame::Text(
            json!({"id": 1, "cmd": "connect", "token": "x.y.z"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let (code, reason) = closed(&mut bad.ws).await;
    assert_eq!(code, 4001);
    assert!(reason.starts_with("unauthorized: "), "{reason}");
    let mut late = V1::connect(&server.url()).await;
    let expired = hs256(json!({"sub": "alice", "exp": now() - 5}));
    late.ws
        .send(Frame::Text(
            json!({"id": 1, "cmd": "connect", "token": expired})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    assert_eq!(
        closed(&mut late.ws).await,
        (4002, "token expired".to_owned())
    );

    // No connect within handshake_timeout (1 s here): 4001.
    let mut silent = V1::connect(&server.url()).await;
    let (code, reason) = closed(&mut silent.ws).await;
    assert_eq!(code, 4001, "{reason}");
}

#[tokio::test]
async fn exp_is_enforced_while_connected_unless_refreshed() {
    let server = server(&[]);
    let short = |sub: &str| hs256(json!({"sub": sub, "exp": now() + 2}));
    // A raw client whose token runs out is closed with 4002.
    let mut raw = connect(&format!("{}?token={}", server.url(), short("bob"))).await;
    let started = std::time::Instant::now();
    assert_eq!(closed(&mut raw).await, (4002, "token expired".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(4));

    // A wshub.v1 client refreshes in place and stays.
    let mut client = V1::connect(&server.url()).await;
    client
        .call(json!({"cmd": "connect", "token": short("carol")}))
        .await;
    let other = client
        .call(json!({"cmd": "refresh", "token": hs256(json!({"sub": "dave", "exp": now() + 60}))}))
        .await;
    assert_eq!(other["error"]["code"], json!(403), "{other}");
    let reply = client
        .call(json!({"cmd": "refresh", "token": hs256(json!({"sub": "carol", "exp": now() + 60}))}))
        .await;
    assert!(
        reply["result"]["expires_in"].as_u64().unwrap() > 50,
        "{reply}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ping = client.call(json!({"cmd": "ping"})).await;
    assert!(
        ping.get("result").is_some(),
        "still connected after the first exp: {ping}"
    );
}

#[tokio::test]
async fn the_tokens_channels_decide_what_a_user_may_do() {
    let server = server(&[]);
    let token = hs256(json!({
        "sub": "erin", "exp": now() + 60,
        "channels": ["news", "team:*"], "publish": ["team:*"],
    }));
    let mut client = V1::connect(&format!("{}?token={token}", server.url())).await;
    for (cmd, channel, code) in [
        ("subscribe", "news", None),
        ("subscribe", "team:red", None),
        ("subscribe", "secret", Some(403)),
        ("publish", "team:red", None),
        ("publish", "news", Some(403)),
    ] {
        let reply = client
            .call(json!({"cmd": cmd, "channel": channel, "data": 1}))
            .await;
        match code {
            None => assert!(reply.get("result").is_some(), "{cmd} {channel}: {reply}"),
            Some(code) => {
                assert_eq!(
                    reply["error"]["code"],
                    json!(code),
                    "{cmd} {channel}: {reply}"
                );
                assert!(
                    reply["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains(channel)
                );
            }
        }
    }
}

#[tokio::test]
async fn public_keys_and_jwks_verify_ec_and_ed25519_tokens() {
    for (alg, rcgen_alg) in [
        (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
        (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
    ] {
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let public = temp_file(&format!("jwt-{alg:?}.pem"), &pair.public_key_pem());
        let server = Server::start(&["--jwt-public-key", public.to_str().unwrap()], &[]);
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()),
            _ => EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()),
        }
        .unwrap();
        let token = encode(
            &Header::new(alg),
            &json!({"sub": "frank", "exp": now() + 60}),
            &key,
        )
        .unwrap();
        let mut client = V1::connect(&format!("{}?token={token}", server.url())).await;
        let reply = client.call(json!({"cmd": "ping"})).await;
        assert!(reply.get("result").is_some(), "{alg:?}: {reply}");
        // An HMAC token is not accepted by a hub without the secret.
        let (status, body) = refused(
            &server,
            &format!("/ws?token={}", hs256(json!({"sub": "x"}))),
            "",
        )
        .await;
        assert_eq!(status, 401, "{body}");
    }
}

/// An RSA key pair made with Debian's openssl: (private PEM, public PEM).
fn rsa_pair() -> (String, String) {
    let dir = std::env::temp_dir().join(format!("wshub-jwt-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let status = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(status.success());
    (
        std::fs::read_to_string(&private).unwrap(),
        std::fs::read_to_string(&public).unwrap(),
    )
}

#[tokio::test]
async fn an_rsa_public_key_verifies_rs256_tokens() {
    let (private, public) = rsa_pair();
    let file = temp_file("jwt-rsa-public.pem", &public);
    let server = Server::start(&["--jwt-public-key", file.to_str().unwrap()], &[]);
    let key = EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
    let token = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "gina", "exp": now() + 60}),
        &key,
    )
    .unwrap();
    let mut client = V1::connect(&format!("{}?token={token}", server.url())).await;
    assert!(
        client
            .call(json!({"cmd": "ping"}))
            .await
            .get("result")
            .is_some()
    );
    // Another algorithm family than the key's: refused.
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let wrong = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "gina"}),
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let (status, body) = refused(&server, &format!("/ws?token={wrong}"), "").await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn a_jwks_file_picks_the_key_by_kid() {
    use base64_url as b64;
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = ec.public_key_raw(); // 0x04 || x || y
    let jwks = json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "alg": "EdDSA", "x": b64::encode(ed.public_key_raw())},
        {"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256",
         "x": b64::encode(&point[1..33]), "y": b64::encode(&point[33..65])},
    ]});
    let file = temp_file("jwt-jwks.json", &jwks.to_string());
    let server = Server::start(&["--jwt-jwks-file", file.to_str().unwrap()], &[]);
    for (kid, alg, key) in [
        (
            "ed-1",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
        ),
        (
            "ec-1",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
        ),
    ] {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        let token = encode(&header, &json!({"sub": kid, "exp": now() + 60}), &key).unwrap();
        let mut client = V1::connect(&format!("{}?token={token}", server.url())).await;
        assert!(
            client
                .call(json!({"cmd": "ping"}))
                .await
                .get("result")
                .is_some(),
            "{kid}"
        );
    }
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("nope".to_owned());
    let token = encode(
        &header,
        &json!({"sub": "x"}),
        &EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let (status, body) = refused(&server, &format!("/ws?token={token}"), "").await;
    assert_eq!(status, 401);
    assert!(body.contains("no key with kid `nope`"), "{body}");
}

/// Unpadded base64url, for JWK coordinates.
mod base64_url {
    pub(super) fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[test]
fn bad_jwt_settings_stop_the_start_naming_the_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["--jwt-hmac-secret", "short"], "`jwt_hmac_secret`"),
        (
            &["--jwt-public-key", "/no/such/key.pem"],
            "`jwt_public_key`",
        ),
        (
            &["--jwt-jwks-file", "/no/such/jwks.json"],
            "`jwt_jwks_file`",
        ),
    ];
    let not_a_key = temp_file("jwt-not-a-key.pem", "hello");
    let not_jwks = temp_file("jwt-not-jwks.json", "{}");
    let more: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--jwt-public-key".into(),
                not_a_key.to_str().unwrap().into(),
            ],
            "`jwt_public_key`",
        ),
        (
            vec!["--jwt-jwks-file".into(), not_jwks.to_str().unwrap().into()],
            "`jwt_jwks_file`",
        ),
    ];
    let all = cases
        .iter()
        .map(|(a, n)| (a.iter().map(|s| s.to_string()).collect::<Vec<_>>(), *n))
        .chain(more);
    for (args, needle) in all {
        let mut full = vec!["check".to_owned()];
        full.extend(args.iter().cloned());
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let (code, _, err) = run(&full, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(needle) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}
