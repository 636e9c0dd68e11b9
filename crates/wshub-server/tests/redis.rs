//! Scale-out on Redis: real `wshub` nodes sharing a real `redis-server`, and the faults
//! a deployment meets (Redis frozen, Redis restarted empty, a node killed).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::redis::{Cluster, Redis, V1, offsets};
use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

const KEY: &str = "redis-test-key";

/// These tests start several processes each; one at a time keeps them fast and clear.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn node(redis: &Redis, name: &str, extra: &[&str]) -> Server {
    node_at(&redis.url(), name, extra)
}

fn node_at(url: &str, name: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--broker",
        url,
        "--node-name",
        name,
        "--api-key",
        KEY,
        "--presence-ttl",
        "2s",
    ];
    args.extend_from_slice(extra);
    Server::start(&args, &[])
}

/// `POST /api/publish` → (status, body as JSON).
async fn publish(addr: SocketAddr, body: Value) -> (u16, Value) {
    let body = body.to_string();
    let response = http(
        addr,
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    status_and_json(&response)
}

/// `GET path` → body as JSON.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let response = http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {KEY}\r\n\r\n"),
    )
    .await;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("{response}"))
}

fn assert_exactly(offsets: &[u64], expected: std::ops::RangeInclusive<u64>, who: &str) {
    let expected: Vec<u64> = expected.collect();
    assert_eq!(
        offsets,
        expected.as_slice(),
        "{who}: every publication once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_are_one_hub() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    one_hub(&redis.url(), &["room"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_are_one_hub_on_a_redis_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start();
    // Channels on every shard: their keys and sharded pub/sub channel follow `{name}`.
    let names: Vec<String> = (0..6).map(|i| format!("room-{i}")).collect();
    let mut shards: Vec<usize> = names.iter().map(|n| cluster.shard_of(n)).collect();
    shards.sort();
    shards.dedup();
    assert_eq!(
        shards,
        [0, 1, 2],
        "the channels spread over the three shards"
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    one_hub(&cluster.url(), &names).await;
}

/// Three nodes on `url`, two subscribers of every channel on each: publications from node
/// A's API and from a client on B reach all of them exactly once, in order.
async fn one_hub(url: &str, channels: &[&str]) {
    let nodes = [
        node_at(url, "a", &[]),
        node_at(url, "b", &[]),
        node_at(url, "c", &[]),
    ];
    let mut subscribers = Vec::new();
    for server in &nodes {
        for _ in 0..2 {
            let mut client = V1::connect(&server.url()).await;
            for channel in channels {
                client.subscribe(channel).await;
            }
            subscribers.push(client);
        }
    }
    let mut publisher = V1::connect(&nodes[1].url()).await;
    for i in 0..10 {
        for channel in channels {
            let (status, body) = publish(
                nodes[0].addr,
                json!({"channel": channel, "data": {"api": i}}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let reply = publisher
                .call(json!({"cmd": "publish", "channel": channel, "data": {"client": i}}))
                .await;
            assert!(reply["result"]["offset"].is_u64(), "{reply}");
        }
    }
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        for channel in channels {
            let pushes = subscriber.publications_until(channel, 20).await;
            assert_exactly(
                &offsets(&pushes, channel),
                1..=20,
                &format!("subscriber {i} of {channel}"),
            );
        }
    }

    // Raw mode: an API broadcast on A reaches a raw client on C.
    let mut raw = connect(&nodes[2].url()).await;
    let started = std::time::Instant::now();
    loop {
        api_broadcast(nodes[0].addr, KEY, "hello everyone").await;
        let got = tokio::time::timeout(Duration::from_millis(200), next_data(&mut raw)).await;
        if matches!(got, Ok(Frame::Text(ref text)) if text.as_str() == "hello everyone") {
            break;
        }
        assert!(started.elapsed() < WAIT, "the broadcast crossed nodes");
    }

    // Presence counts everyone, across nodes; /api/info lists the three nodes.
    let reply = subscribers[0]
        .call(json!({"cmd": "presence", "channel": channels[0]}))
        .await;
    assert_eq!(
        reply["result"]["count"],
        json!(6),
        "every subscriber of every node: {reply}"
    );
    let info = get_json(nodes[2].addr, "/api/info").await;
    assert_eq!(info["node"], json!("c"));
    let names: Vec<&str> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "{info}");
    let health = get_json(nodes[1].addr, "/healthz").await;
    assert_eq!(health, json!({"status": "ok"}));
    drop(publisher);
    let _ = raw.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_is_idempotent_with_a_key() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut subscriber = V1::connect(&b.url()).await;
    subscriber.subscribe("orders").await;
    let body = json!({"channel": "orders", "data": 1, "idempotency_key": "order-1"});
    let (status, first) = publish(a.addr, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = publish(b.addr, body).await;
    assert_eq!(status, 200);
    assert_eq!(first, again, "a retry answers the first attempt");
    let (_, next) = publish(a.addr, json!({"channel": "orders", "data": 2})).await;
    assert_eq!(next["offset"], json!(2));
    let pushes = subscriber.publications_until("orders", 2).await;
    assert_exactly(&offsets(&pushes, "orders"), 1..=2, "subscriber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_a_dead_node_leaves_it() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let mut b = node(&redis, "b", &[]);
    let mut watcher = V1::connect(&a.url()).await;
    let reply = watcher
        .call(json!({"cmd": "subscribe", "channel": "room", "presence_events": true}))
        .await;
    assert!(reply.get("result").is_some());
    let mut on_b = V1::connect(&b.url()).await;
    on_b.subscribe("room").await;
    // The join crossed nodes.
    loop {
        if watcher.pushes.iter().any(|p| {
            p["join"]["conn"]
                .as_str()
                .is_some_and(|c| c.ends_with("@b"))
        }) {
            break;
        }
        watcher.call(json!({"cmd": "ping"})).await;
    }
    let count = |reply: &Value| reply["result"]["count"].as_u64().unwrap();
    let reply = watcher
        .call(json!({"cmd": "presence", "channel": "room"}))
        .await;
    assert_eq!(count(&reply), 2, "{reply}");

    // Node B dies without a word: its member is gone within presence_ttl (2 s).
    b.signal("KILL");
    b.wait_exit();
    let started = std::time::Instant::now();
    loop {
        let reply = watcher
            .call(json!({"cmd": "presence", "channel": "room"}))
            .await;
        if count(&reply) == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = get_json(a.addr, "/api/info").await;
    eventually_async(Duration::from_secs(10), || async {
        let info = get_json(a.addr, "/api/info").await;
        info["nodes"].as_array().unwrap().len() == 1
    })
    .await;
    drop(info);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_killed_node_recovers_on_another() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let mut b = node(&redis, "b", &[]);
    let c = node(&redis, "c", &[]);
    let mut client = V1::connect(&b.url()).await;
    let start = client.subscribe("feed").await;
    for i in 1..=5 {
        publish(a.addr, json!({"channel": "feed", "data": i})).await;
    }
    let pushes = client.publications_until("feed", 5).await;
    assert_exactly(&offsets(&pushes, "feed"), 1..=5, "before the kill");
    b.signal("KILL");
    b.wait_exit();
    for i in 6..=12 {
        publish(a.addr, json!({"channel": "feed", "data": i})).await;
    }
    // Reconnect to C with the last position seen.
    let mut client = V1::connect(&c.url()).await;
    let reply = client
        .call(json!({"cmd": "subscribe", "channel": "feed",
                     "since": {"epoch": start["epoch"], "offset": 5}}))
        .await;
    let result = &reply["result"];
    assert_eq!(result["recovered"], json!(true), "{reply}");
    let recovered: Vec<u64> = result["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(recovered, (6..=12).collect::<Vec<_>>());
    publish(a.addr, json!({"channel": "feed", "data": 13})).await;
    let pushes = client.publications_until("feed", 13).await;
    assert_exactly(&offsets(&pushes, "feed"), 13..=13, "live after recovery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_of_a_dropped_pubsub_connection_are_filled_from_history() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut subscriber = V1::connect(&b.url()).await;
    subscriber.subscribe("stream").await;
    let mut kills = 0;
    for i in 1..=300u64 {
        let (status, body) = publish(a.addr, json!({"channel": "stream", "data": i})).await;
        assert_eq!(status, 200, "{body}");
        if i % 60 == 30 {
            // Every node's pub/sub connection dies; what is published until it is back
            // never reaches them by pub/sub.
            let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            kills += killed.trim().parse::<u32>().unwrap_or(0);
        }
    }
    assert!(kills > 0, "pub/sub connections were killed");
    let pushes = subscriber.publications_until("stream", 300).await;
    assert_exactly(&offsets(&pushes, "stream"), 1..=300, "subscriber on B");
    assert!(
        !pushes.iter().any(|p| p.get("resync").is_some()),
        "history had it all"
    );
    let info = get_json(b.addr, "/api/info").await;
    println!(
        "gaps on B after {kills} killed pub/sub connections: {}",
        info["gaps"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut subscribers = Vec::new();
    for server in [&a, &b] {
        let mut client = V1::connect(&server.url()).await;
        client.subscribe("ticks").await;
        subscribers.push(client);
    }
    let mut local = connect(&b.url()).await; // a raw client of B, served throughout
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let publish_some = async |n: usize, acknowledged: &mut Vec<u64>, refused: &mut usize| {
        for i in 0..n {
            let (status, body) = publish(a.addr, json!({"channel": "ticks", "data": i})).await;
            match status {
                200 => acknowledged.push(body["offset"].as_u64().unwrap()),
                503 => *refused += 1,
                other => panic!("unexpected {other}: {body}"),
            }
        }
    };
    publish_some(5, &mut acknowledged, &mut refused).await;
    redis.signal("STOP");
    // Publications continue while Redis is frozen for 10 s: each waits at most the
    // command timeout and is refused with 503.
    let frozen = std::time::Instant::now();
    let mut saw_degraded = false;
    while frozen.elapsed() < Duration::from_secs(10) {
        publish_some(1, &mut acknowledged, &mut refused).await;
        let health = get_json(b.addr, "/healthz").await;
        saw_degraded |= health["status"] == json!("degraded");
        // B still serves its own clients.
        local.send(Frame::Text("still here".into())).await.unwrap();
        assert_eq!(
            next_data(&mut local).await,
            Frame::Text("still here".into())
        );
    }
    redis.signal("CONT");
    assert!(saw_degraded, "healthz said degraded while Redis was frozen");
    assert!(refused > 0, "publishers were told");
    eventually_async(WAIT, || async {
        get_json(b.addr, "/healthz").await == json!({"status": "ok"})
    })
    .await;
    publish_some(5, &mut acknowledged, &mut refused).await;
    let last = *acknowledged.last().unwrap();
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let pushes = subscriber.publications_until("ticks", last).await;
        let seen = offsets(&pushes, "ticks");
        // Refused publications may still have been made once Redis woke up; either way
        // every offset arrives once, in order, and every acknowledged one is there.
        assert_exactly(&seen, 1..=last, &format!("subscriber {i}"));
        assert!(acknowledged.iter().all(|o| seen.contains(o)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_is_told_not_hidden() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut subscriber = V1::connect(&b.url()).await;
    subscriber.subscribe("news").await;
    for i in 1..=3 {
        publish(a.addr, json!({"channel": "news", "data": i})).await;
    }
    let pushes = subscriber.publications_until("news", 3).await;
    assert_exactly(&offsets(&pushes, "news"), 1..=3, "before the restart");
    redis.restart_empty();
    // Publish until the nodes are back on the new Redis.
    let mut after = Vec::new();
    let started = std::time::Instant::now();
    while after.len() < 3 {
        let (status, body) = publish(a.addr, json!({"channel": "news", "data": "after"})).await;
        if status == 200 {
            after.push(body);
        }
        assert!(started.elapsed() < WAIT, "publishing works again");
    }
    let epoch = after[0]["epoch"].clone();
    let last = after.last().unwrap()["offset"].as_u64().unwrap();
    // The subscriber ends up told (a resync push) and complete in the new epoch.
    loop {
        let pushes = subscriber.publications_until("news", last).await;
        let resynced = pushes.iter().any(|p| p.get("resync").is_some());
        let new: Vec<u64> = pushes
            .iter()
            .filter(|p| p["epoch"] == epoch)
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        if new.last() == Some(&last) {
            assert!(resynced, "the lost history was announced: {pushes:?}");
            let first = new[0];
            assert_exactly(&new, first..=last, "the new epoch");
            break;
        }
        subscriber.call(json!({"cmd": "ping"})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_bad_broker_stops_the_start() {
    let port = common::redis::free_port().to_string();
    let url = format!("redis://127.0.0.1:{port}");
    let (code, _, stderr) = run(&["serve", "--bind", "127.0.0.1:0", "--broker", &url], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`broker`"), "{stderr}");
    let (code, _, stderr) = run(&["serve", "--broker", "mysql://x"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`broker`"), "{stderr}");
    let (code, _, stderr) = run(
        &["check", "--broker", "redis://x", "--node-name", "a b"],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`node_name`"), "{stderr}");
}
