//! The `wshub.v1` protocol over real sockets: every command and error, presence, history
//! bounds, and exact recovery after a cut-off.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wshub::{Broadcast, Config, Site};

/// Connects speaking `wshub.v1`; checks the server agreed to it.
async fn connect_v1(server: &TestServer) -> Client {
    let mut request = server.url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wshub.v1".parse().unwrap());
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
        .expect("connect");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "wshub.v1"
    );
    ws
}

async fn send(ws: &mut Client, command: Value) {
    ws.send(Frame::text(command.to_string())).await.unwrap();
}

/// The next JSON frame.
async fn next(ws: &mut Client) -> Value {
    match recv(ws).await {
        Frame::Text(text) => serde_json::from_str(&text).expect("JSON frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Sends a command and returns its reply (the next frame, which must carry its id).
async fn call(ws: &mut Client, command: Value) -> Value {
    let id = command["id"].clone();
    send(ws, command).await;
    let reply = next(ws).await;
    assert_eq!(reply["id"], id, "reply to the right command: {reply}");
    reply
}

fn error_code(reply: &Value) -> u64 {
    reply["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an error: {reply}"))
}

#[tokio::test]
async fn ping_subscribe_publish_and_only_subscribers_receive() {
    let server = start(Config::default(), Broadcast).await;
    let mut a = connect_v1(&server).await;
    let mut b = connect_v1(&server).await;
    assert_eq!(
        call(&mut a, json!({"id": 1, "cmd": "ping"})).await["result"],
        json!({})
    );

    let sub = call(
        &mut a,
        json!({"id": 2, "cmd": "subscribe", "channel": "room"}),
    )
    .await;
    let epoch = sub["result"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(sub["result"]["offset"], 0);
    call(
        &mut b,
        json!({"id": 1, "cmd": "subscribe", "channel": "other"}),
    )
    .await;

    let published = call(
        &mut b,
        json!({"id": 2, "cmd": "publish", "channel": "room", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(published["result"], json!({"epoch": epoch, "offset": 1}));
    let push = next(&mut a).await;
    assert_eq!(
        push,
        json!({"channel": "room", "offset": 1, "epoch": epoch, "data": {"text": "hi"}})
    );
    // b is not in "room": its next frame is the reply to its ping, not the publication.
    assert_eq!(
        call(&mut b, json!({"id": 3, "cmd": "ping"})).await["result"],
        json!({})
    );

    // The library API publishes to the same stream.
    let position = server.hub.publish("room", &json!([1, 2])).await.unwrap();
    assert_eq!(position.offset, 2);
    assert_eq!(next(&mut a).await["data"], json!([1, 2]));

    assert_eq!(
        call(
            &mut a,
            json!({"id": 4, "cmd": "unsubscribe", "channel": "room"})
        )
        .await["result"],
        json!({})
    );
    server.hub.publish("room", &"after").await.unwrap();
    assert_eq!(
        call(&mut a, json!({"id": 5, "cmd": "ping"})).await["result"],
        json!({})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn every_bad_command_gets_a_specific_error_and_the_connection_survives() {
    let config = Config {
        channels: vec!["chat:*".into(), "news".into()],
        client_publish: false,
        max_subscriptions: 2,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut ws = connect_v1(&server).await;

    ws.send(Frame::text("{\"id\": 1, \"cmd\": ")).await.unwrap();
    let reply = next(&mut ws).await;
    assert_eq!(error_code(&reply), 400);
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("bad JSON") && message.contains("column"),
        "{message}"
    );

    let reply = call(&mut ws, json!({"id": 2, "cmd": "dance"})).await;
    assert_eq!(error_code(&reply), 405);
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dance")
    );

    let reply = call(&mut ws, json!({"id": 3, "cmd": "subscribe"})).await;
    assert_eq!(error_code(&reply), 400, "missing channel: {reply}");

    let reply = call(
        &mut ws,
        json!({"id": 4, "cmd": "subscribe", "channel": "random"}),
    )
    .await;
    assert_eq!(error_code(&reply), 404, "unknown channel: {reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chat:*")
    );

    let reply = call(
        &mut ws,
        json!({"id": 5, "cmd": "subscribe", "channel": "bad name"}),
    )
    .await;
    assert_eq!(error_code(&reply), 400);

    let reply = call(
        &mut ws,
        json!({"id": 6, "cmd": "publish", "channel": "news", "data": 1}),
    )
    .await;
    assert_eq!(error_code(&reply), 403, "not permitted: {reply}");

    assert!(
        call(
            &mut ws,
            json!({"id": 7, "cmd": "subscribe", "channel": "chat:a"})
        )
        .await["result"]
            .is_object()
    );
    let reply = call(
        &mut ws,
        json!({"id": 8, "cmd": "subscribe", "channel": "chat:a"}),
    )
    .await;
    assert_eq!(error_code(&reply), 409, "already subscribed: {reply}");
    assert!(
        call(
            &mut ws,
            json!({"id": 9, "cmd": "subscribe", "channel": "news"})
        )
        .await["result"]
            .is_object()
    );
    let reply = call(
        &mut ws,
        json!({"id": 10, "cmd": "subscribe", "channel": "chat:b"}),
    )
    .await;
    assert_eq!(error_code(&reply), 429, "too many: {reply}");

    let reply = call(
        &mut ws,
        json!({"id": 11, "cmd": "unsubscribe", "channel": "chat:zzz"}),
    )
    .await;
    assert_eq!(error_code(&reply), 409, "not subscribed: {reply}");

    let reply = call(&mut ws, json!({"id": 12, "cmd": "ping", "extra": true})).await;
    assert_eq!(error_code(&reply), 400, "unknown field: {reply}");

    ws.send(Frame::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(error_code(&next(&mut ws).await), 400);

    assert_eq!(
        call(&mut ws, json!({"id": 13, "cmd": "ping"})).await["result"],
        json!({})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn presence_lists_subscribers_and_announces_joins_and_leaves() {
    let server = start(Config::default(), Broadcast).await;
    let mut a = connect_v1(&server).await;
    let mut b = connect_v1(&server).await;
    call(
        &mut a,
        json!({"id": 1, "cmd": "subscribe", "channel": "room", "presence_events": true}),
    )
    .await;
    let own_join = next(&mut a).await;
    assert!(own_join["join"]["conn"].is_string(), "{own_join}");

    call(
        &mut b,
        json!({"id": 1, "cmd": "subscribe", "channel": "room"}),
    )
    .await;
    let join = next(&mut a).await;
    assert_eq!(join["channel"], "room");
    let b_id = join["join"]["conn"].as_str().unwrap().to_owned();
    assert_ne!(b_id, own_join["join"]["conn"].as_str().unwrap());

    let presence = call(
        &mut a,
        json!({"id": 2, "cmd": "presence", "channel": "room"}),
    )
    .await;
    assert_eq!(presence["result"]["count"], 2, "{presence}");
    assert_eq!(server.hub.channels(), vec![("room".to_owned(), 2)]);

    drop(b); // abrupt: the leave still comes
    let leave = next(&mut a).await;
    assert_eq!(leave["leave"]["conn"], b_id.as_str());
    let presence = call(
        &mut a,
        json!({"id": 3, "cmd": "presence", "channel": "room"}),
    )
    .await;
    assert_eq!(presence["result"]["count"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn history_is_bounded_and_recovery_outside_it_says_so() {
    let config = Config {
        history_size: 3,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let first = server.hub.publish("log", &0).await.unwrap();
    for i in 1..5 {
        server.hub.publish("log", &i).await.unwrap();
    }
    let mut ws = connect_v1(&server).await;
    let history = call(
        &mut ws,
        json!({"id": 1, "cmd": "history", "channel": "log"}),
    )
    .await;
    let offsets: Vec<u64> = history["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![3, 4, 5]);
    assert_eq!(history["result"]["offset"], 5);

    let limited = call(
        &mut ws,
        json!({"id": 2, "cmd": "history", "channel": "log", "limit": 1}),
    )
    .await;
    assert_eq!(limited["result"]["publications"][0]["data"], 4);

    // Offset 1 is gone (only 3..=5 kept): subscribing since it cannot recover.
    let since = json!({"epoch": &*first.epoch, "offset": 1});
    let sub = call(
        &mut ws,
        json!({"id": 3, "cmd": "subscribe", "channel": "log", "since": since}),
    )
    .await;
    assert_eq!(sub["result"]["recovered"], false, "{sub}");
    // A wrong epoch cannot either.
    let sub = call(&mut ws, json!({"id": 4, "cmd": "subscribe", "channel": "log:x", "since": {"epoch": "nope", "offset": 0}})).await;
    assert_eq!(sub["result"]["recovered"], false, "{sub}");
    server.shutdown().await;
}

/// The guarantee: a subscriber cut off mid-stream while 10,000 messages are published
/// reconnects with `since` and sees every offset exactly once, in order, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_cut_off_sees_every_offset_exactly_once_in_order() {
    const TOTAL: u64 = 10_000;
    let config = Config {
        history_size: 20_000,
        send_queue: 20_000,
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut ws = connect_v1(&server).await;
    let sub = call(
        &mut ws,
        json!({"id": 1, "cmd": "subscribe", "channel": "feed"}),
    )
    .await;
    let epoch = sub["result"]["epoch"].as_str().unwrap().to_owned();

    let hub = server.hub.clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=TOTAL {
            hub.publish("feed", &json!({"n": i})).await.unwrap();
            // Paced, so the cut-off and the reconnect happen while it publishes: the
            // reconnect then gets both recovered and buffered publications to merge.
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    // Read a part of the stream, then the link dies.
    let mut last = 0;
    while last < 500 {
        let push = next(&mut ws).await;
        let offset = push["offset"].as_u64().unwrap();
        assert_eq!(offset, last + 1);
        last = offset;
    }
    drop(ws);

    // Reconnect while the publisher is (most likely) still going.
    let mut ws = connect_v1(&server).await;
    let since = json!({"epoch": epoch, "offset": last});
    let sub = call(
        &mut ws,
        json!({"id": 1, "cmd": "subscribe", "channel": "feed", "since": since}),
    )
    .await;
    assert_eq!(
        sub["result"]["recovered"], true,
        "{}",
        sub["result"]["offset"]
    );
    for publication in sub["result"]["publications"].as_array().unwrap() {
        let offset = publication["offset"].as_u64().unwrap();
        assert_eq!(offset, last + 1, "recovered in order, no gap, no duplicate");
        assert_eq!(publication["data"]["n"], offset);
        last = offset;
    }
    while last < TOTAL {
        let push = next(&mut ws).await;
        let offset = push["offset"].as_u64().unwrap();
        assert_eq!(
            offset,
            last + 1,
            "live after recovered: no gap, no duplicate"
        );
        last = offset;
    }
    tokio::time::timeout(WAIT, publisher)
        .await
        .unwrap()
        .unwrap();
    // Nothing more: the next frame is the ping's reply.
    assert_eq!(
        call(&mut ws, json!({"id": 2, "cmd": "ping"})).await["result"],
        json!({})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn http_publish_and_channel_list() {
    let site = Site {
        api_key: Some("k".into()),
        ..Site::default()
    };
    let server = start_site(Config::default(), Broadcast, site).await;
    let mut ws = connect_v1(&server).await;
    call(
        &mut ws,
        json!({"id": 1, "cmd": "subscribe", "channel": "news"}),
    )
    .await;

    let post = |body: &str| {
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let response = raw_http(server.addr, &post(r#"{"channel":"news","data":{"a":1}}"#)).await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(response.contains(r#""offset":1"#), "{response}");
    assert_eq!(next(&mut ws).await["data"], json!({"a": 1}));

    let response = raw_http(server.addr, &post(r#"{"channel":"news","data":"#)).await;
    assert_eq!(status(&response), 400, "{response}");
    assert!(response.contains("column"), "{response}");
    let response = raw_http(server.addr, &post(r#"{"channel":"bad name","data":1}"#)).await;
    assert_eq!(status(&response), 400, "{response}");

    let response = get(server.addr, "/api/channels", "Authorization: Bearer k\r\n").await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(
        response.contains(r#"{"channels":[{"name":"news","subscribers":1}]}"#),
        "{response}"
    );
    let response = get(server.addr, "/api/channels", "").await;
    assert_eq!(status(&response), 401);
    drop(ws);
    tokio::time::sleep(Duration::from_millis(0)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn history_expires_after_its_ttl_and_then_recovery_says_so() {
    let config = Config {
        history_ttl: Duration::from_millis(100),
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let position = server.hub.publish("news", &"old").await.unwrap();
    // Past the TTL for certain (waiting longer than a TTL cannot race with it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let history = server.hub.history("news", None, None).await.unwrap();
    assert!(
        history.publications.is_empty(),
        "expired publications are gone"
    );

    let mut ws = connect_v1(&server).await;
    let since = json!({"epoch": &*position.epoch, "offset": 0});
    let sub = call(
        &mut ws,
        json!({"id": 1, "cmd": "subscribe", "channel": "news", "since": since}),
    )
    .await;
    assert_eq!(sub["result"]["recovered"], false, "{sub}");
    assert_ne!(
        sub["result"]["epoch"], &*position.epoch,
        "a forgotten stream starts a new epoch"
    );
    server.shutdown().await;
}
