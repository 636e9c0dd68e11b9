//! `GET /metrics` on the real binary: the counters move by what clients did, and the
//! exposition parses with the Python `prometheus_client` text parser (Debian's
//! python3-prometheus-client); `internal_bind` keeps the operators' routes off `bind`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Server, WAIT, connect, eventually_async, http, next_data};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Samples by name with their labels, e.g. `wshub_messages_sent_total{type="text"}`.
type Samples = BTreeMap<String, f64>;

async fn scrape(addr: SocketAddr) -> String {
    let response = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
    )
    .await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

/// Our reading of the text format: `name{labels} value` lines.
fn samples(text: &str) -> Samples {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The same samples, as Python's `prometheus_client.parser` reads them (it fails on
/// anything that is not the text format).
fn parsed_by_python(text: &str) -> Samples {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out[s.name + ("{%s}" % labels if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut python = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (Debian's, with python3-prometheus-client)");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python parser refused the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `/metrics` until every `expected` sample has its value.
async fn expect(addr: SocketAddr, expected: &[(&str, f64)]) -> String {
    let mut last = String::new();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            last = scrape(addr).await;
            let now = samples(&last);
            if expected
                .iter()
                .all(|(name, value)| now.get(*name) == Some(value))
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        let now = samples(&last);
        for (name, value) in expected {
            assert_eq!(now.get(*name), Some(value), "{name}\n{last}");
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_what_clients_did_and_python_parses_them() {
    let server = Server::start(&[], &[]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&server.url()).await);
    }
    expect(
        server.addr,
        &[
            ("wshub_connections", 3.0),
            ("wshub_connections_accepted_total", 3.0),
        ],
    )
    .await;

    // Chat: each message goes to all three (the sender too).
    for _ in 0..4 {
        clients[0].send(Frame::text("hello")).await.unwrap();
    }
    clients[1]
        .send(Frame::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    for client in &mut clients {
        for _ in 0..5 {
            next_data(client).await;
        }
    }
    expect(
        server.addr,
        &[
            ("wshub_messages_received_total{type=\"text\"}", 4.0),
            ("wshub_bytes_received_total{type=\"text\"}", 20.0),
            ("wshub_messages_received_total{type=\"binary\"}", 1.0),
            ("wshub_bytes_received_total{type=\"binary\"}", 3.0),
            ("wshub_messages_sent_total{type=\"text\"}", 12.0),
            ("wshub_bytes_sent_total{type=\"text\"}", 60.0),
            // A 5-byte payload goes out as a 7-byte frame (2 bytes of header).
            ("wshub_wire_bytes_sent_total{type=\"text\"}", 84.0),
            ("wshub_messages_sent_total{type=\"binary\"}", 3.0),
            ("wshub_bytes_sent_total{type=\"binary\"}", 9.0),
            ("wshub_deliveries_total", 15.0),
        ],
    )
    .await;

    // A close with 1000, and a refused upgrade (version 12 → 426).
    let mut gone = clients.pop().unwrap();
    gone.close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let refused = http(
        server.addr,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 12\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_owned(),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 426"), "{refused}");
    expect(
        server.addr,
        &[
            ("wshub_connections", 2.0),
            ("wshub_connections_closed_total{code=\"1000\"}", 1.0),
            ("wshub_handshakes_refused_total{status=\"426\"}", 1.0),
            ("wshub_slow_consumer_evictions_total", 0.0),
        ],
    )
    .await;

    // A client's own close is counted by its code, never as our eviction; a code of
    // its own making goes under `other` (clients cannot make series without end).
    for (code, reason) in [(1008u16, "slow consumer"), (4321, "mine")] {
        let mut client = connect(&server.url()).await;
        client
            .close(Some(CloseFrame {
                code: code.into(),
                reason: reason.into(),
            }))
            .await
            .unwrap();
    }
    let text = expect(
        server.addr,
        &[
            ("wshub_connections", 2.0),
            ("wshub_connections_closed_total{code=\"1008\"}", 1.0),
            ("wshub_connections_closed_total{code=\"other\"}", 1.0),
            ("wshub_slow_consumer_evictions_total", 0.0),
        ],
    )
    .await;

    // Python reads the same samples we do, every one of them.
    let python = parsed_by_python(&text);
    let ours: Samples = samples(&text)
        .into_iter()
        .map(|(name, value)| (normalize(&name), value))
        .collect();
    assert_eq!(python, ours);
    for family in [
        "wshub_broker_round_trip_seconds_count",
        "wshub_subscriptions",
        "wshub_channels",
        "wshub_publications_total",
        "wshub_broker_errors_total",
        "wshub_broker_gaps_filled_total",
        "wshub_broker_gaps_unfillable_total",
        "wshub_recoveries_total{result=\"recovered\"}",
        "wshub_rate_limited_total{limit=\"client_rate\"}",
    ] {
        assert!(python.contains_key(family), "{family} missing:\n{text}");
    }
}

/// Labels sorted by name, as the Python side prints them.
fn normalize(sample: &str) -> String {
    let Some((name, labels)) = sample.split_once('{') else {
        return sample.to_owned();
    };
    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_recoveries_and_rate_limits_are_counted() {
    let server = Server::start(
        &[
            "--api-key",
            "k",
            "--client-rate",
            "1",
            "--client-burst",
            "3",
        ],
        &[],
    );
    let publish = |n: u32| {
        let body = format!(r#"{{"channel":"news","data":{n}}}"#);
        http(
            server.addr,
            format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    for n in 0..3 {
        assert!(publish(n).await.starts_with("HTTP/1.1 200"));
    }
    // A wshub.v1 client recovers the three from the start of the stream.
    let mut v1 = common::connect_with(&server.url(), "Sec-WebSocket-Protocol", "wshub.v1").await;
    v1.send(Frame::text(
        r#"{"id":1,"cmd":"subscribe","channel":"news","since":{"epoch":"unknown","offset":0}}"#,
    ))
    .await
    .unwrap();
    let reply = next_data(&mut v1).await;
    assert!(
        reply.to_text().unwrap().contains(r#""recovered":false"#),
        "{reply}"
    );
    expect(
        server.addr,
        &[
            ("wshub_publications_total", 3.0),
            ("wshub_recoveries_total{result=\"not_recovered\"}", 1.0),
            ("wshub_subscriptions", 1.0),
            ("wshub_channels", 1.0),
            // Three publishes, then the subscribe: the channel on the broker, and its history.
            ("wshub_broker_round_trip_seconds_count", 5.0),
        ],
    )
    .await;

    // Over client_burst: each command past the budget is refused (429) and counted.
    for id in 2..8 {
        v1.send(Frame::text(format!(
            r#"{{"id":{id},"cmd":"presence","channel":"news"}}"#
        )))
        .await
        .unwrap();
    }
    eventually_async(WAIT, || async {
        let now = samples(&scrape(server.addr).await);
        now.get("wshub_rate_limited_total{limit=\"client_rate\"}")
            .is_some_and(|&n| n >= 1.0)
    })
    .await;
}

/// A refused upgrade is counted once, by its status and by its limit, although the accept
/// loop's fast path and the endpoint both look at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_rate_refusal_is_counted_once() {
    let server = Server::start(&["--connect-rate-per-ip", "1"], &[]);
    let mut refused = 0u32;
    let mut kept = Vec::new();
    for _ in 0..5 {
        match tokio_tungstenite::connect_async(server.url()).await {
            Ok((ws, _)) => kept.push(ws),
            Err(_) => refused += 1,
        }
    }
    assert!(refused >= 1, "the connect rate refused nothing");
    let limited = f64::from(refused);
    expect(
        server.addr,
        &[
            ("wshub_handshakes_refused_total{status=\"429\"}", limited),
            (
                "wshub_rate_limited_total{limit=\"connect_rate_per_ip\"}",
                limited,
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_bind_serves_the_operators_routes_there_and_only_there() {
    let server = Server::start(&["--api-key", "k", "--internal-bind", "127.0.0.1:0"], &[]);
    let internal: SocketAddr = server
        .startup
        .iter()
        .find_map(|line| {
            let rest = line.split("internal routes").nth(1)?;
            let rest = rest.split("http://").nth(1)?;
            rest.chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect::<String>()
                .parse()
                .ok()
        })
        .expect("the internal address in the log");
    let get = |addr: SocketAddr, path: &str| {
        http(
            addr,
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer k\r\n\r\n"
            ),
        )
    };
    for path in ["/metrics", "/healthz", "/admin", "/api/stats", "/api/info"] {
        let public = get(server.addr, path).await;
        assert!(
            public.starts_with("HTTP/1.1 404"),
            "public {path}: {public}"
        );
        let there = get(internal, path).await;
        assert!(
            there.starts_with("HTTP/1.1 200"),
            "internal {path}: {there}"
        );
    }
    // Clients' routes stay public only.
    assert!(get(server.addr, "/").await.starts_with("HTTP/1.1 200"));
    assert!(get(internal, "/").await.starts_with("HTTP/1.1 404"));
    // An upgrade there is not a WebSocket: 404 (read up to the status line; the
    // connection stays open for the next request).
    let mut stream = tokio::net::TcpStream::connect(internal).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut status = [0u8; 12];
    tokio::time::timeout(WAIT, stream.read_exact(&mut status))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&status, b"HTTP/1.1 404");
    let _client = connect(&server.url()).await;
}

#[test]
fn metrics_false_turns_the_route_off_and_a_bad_internal_bind_is_named() {
    let (code, _, stderr) = common::run(
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--internal-bind",
            "nowhere",
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`internal_bind`"), "{stderr}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = Server::start(&["--metrics", "false"], &[]);
    let response = runtime.block_on(http(
        server.addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
    ));
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}
