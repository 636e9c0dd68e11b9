//! The real `wshub` binary, black-box: config precedence and errors, the chat demo,
//! stdio and webhook sinks, the publish API, and graceful shutdown on SIGTERM.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::sync::mpsc;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as Frame;

/// docs/operations.md shows the whole `wshub config` output; it must not drift from the
/// binary (`bash scripts/ops-config.sh` rewrites it).
#[test]
fn the_operations_guide_shows_the_real_default_config() {
    let (code, out, _) = run(&["config"], &[]);
    assert_eq!(code, 0);
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .unwrap();
    let block = doc
        .split("<!-- wshub config: begin -->\n```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```\n<!-- wshub config: end -->").next())
        .expect("the marked config block in docs/operations.md");
    assert_eq!(
        block, out,
        "docs/operations.md's sample config is stale: run bash scripts/ops-config.sh"
    );
}

#[test]
fn config_prints_every_key_with_a_comment_and_defaults() {
    let (code, out, _) = run(&["config"], &[]);
    assert_eq!(code, 0);
    for key in [
        "bind = \"127.0.0.1:8080\"",
        "max_message_size = 5120",
        "pong_wait = \"60s\"",
        "ping_period = \"54s\"",
        "write_wait = \"10s\"",
        "send_queue = 256",
        "read_buffer_size = 1024",
        "write_buffer_size = 1024",
        "on_message = \"chat\"",
        "drain_timeout = \"5s\"",
    ] {
        assert!(out.contains(key), "missing `{key}` in:\n{out}");
    }
    let comments = out.lines().filter(|l| l.starts_with("# ")).count();
    let keys = out
        .lines()
        .filter(|l| l.contains(" = ") && !l.starts_with('#'))
        .count();
    assert!(comments >= keys, "a comment per key");
    // The printed file is a valid config that changes nothing.
    let file = temp_file("defaults.toml", &out);
    let (code, checked, err) = run(&["check", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    let (_, plain, _) = run(&["check"], &[]);
    assert_eq!(checked, plain);
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let file = temp_file(
        "precedence.toml",
        "max_message_size = 100\nsend_queue = 7\npong_wait = \"2s\"\nping_period = \"1s\"\n",
    );
    let file = file.to_str().unwrap();
    let env = [("WSHUB_MAX_MESSAGE_SIZE", "200"), ("WSHUB_SEND_QUEUE", "8")];
    let (code, out, err) = run(
        &["check", "--config", file, "--max-message-size", "300"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_message_size = 300"), "flag wins:\n{out}");
    assert!(out.contains("send_queue = 8"), "env beats file:\n{out}");
    assert!(
        out.contains("pong_wait = \"2s\""),
        "file beats default:\n{out}"
    );
    assert!(
        out.contains("write_wait = \"10s\""),
        "default stays:\n{out}"
    );
    let (_, out, _) = run(&["check"], &[("WSHUB_CONFIG", file)]);
    assert!(
        out.contains("max_message_size = 100"),
        "WSHUB_CONFIG names the file:\n{out}"
    );
}

#[test]
fn invalid_values_are_one_line_naming_the_key_exit_2() {
    let cases: &[(&[&str], &[(&str, &str)], &[&str])] = &[
        (
            &["--max-message-size", "lots"],
            &[],
            &["max_message_size", "--max-message-size"],
        ),
        (
            &[],
            &[("WSHUB_PONG_WAIT", "60")],
            &["pong_wait", "WSHUB_PONG_WAIT", "unit"],
        ),
        (
            &["--ping-period", "60s"],
            &[],
            &["ping_period", "pong_wait"],
        ),
        (
            &["--on-message", "carrier-pigeon"],
            &[],
            &["on_message", "chat"],
        ),
        (&["--send-queue", "0"], &[], &["send_queue"]),
        (&["--on-message", "webhook"], &[], &["webhook_url"]),
        (
            &["--html", "/no/such/template.html"],
            &[],
            &["html", "/no/such/template.html"],
        ),
        (
            &["--static", "/no/such/dir"],
            &[],
            &["static", "/no/such/dir"],
        ),
        (&["--allowed-origins", "evil"], &[], &["allowed_origins"]),
        (
            &["--drain-period", "400d"],
            &[],
            &["drain_period", "a year"],
        ),
    ];
    for (args, env, needles) in cases {
        for command in ["check", "serve"] {
            let mut full = vec![command, "--bind", "127.0.0.1:0"];
            full.extend_from_slice(args);
            let (code, _, err) = run(&full, env);
            assert_eq!(code, 2, "{command} {args:?} {env:?}: {err}");
            let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "one line: {err}");
            for needle in *needles {
                assert!(
                    err.contains(needle),
                    "{command} {args:?}: `{needle}` not in: {err}"
                );
            }
        }
    }
    let bad_file = temp_file("bad.toml", "max_message_size = \"big\"\n");
    let (code, _, err) = run(&["serve", "--config", bad_file.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("max_message_size") && err.contains("bad.toml"),
        "{err}"
    );
    let unknown = temp_file("unknown.toml", "max_mesage_size = 10\n");
    let (code, _, err) = run(&["serve", "--config", unknown.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown config key `max_mesage_size`"),
        "{err}"
    );
    let (code, _, err) = run(&["serve", "--config", "/no/such.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/no/such.toml"), "{err}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(&["serve", "--bind", &addr], &[]);
    assert_ne!(code, 0);
    assert!(err.contains(&addr) && err.contains("bind"), "{err}");
}

#[tokio::test]
async fn the_home_template_is_minijinja_with_the_go_forms_and_a_broken_one_is_refused() {
    let broken = temp_file("broken.html", "<p>\n{% if %}</p>\n");
    let (code, _, err) = run(&["check", "--html", broken.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`html`") && err.contains("line 2"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let page = temp_file("page.html", "<p>{{ host }} {{host}} {{.}} {{$}}</p>");
    let server = Server::start(&["--html", page.to_str().unwrap()], &[]);
    let response = http(
        server.addr,
        "GET / HTTP/1.1\r\nHost: a<b\r\nConnection: close\r\n\r\n".to_owned(),
    )
    .await;
    assert!(
        response.ends_with("<p>a&lt;b a&lt;b a&lt;b a&lt;b</p>"),
        "{response}"
    );
}

#[test]
fn a_bind_that_is_no_address_is_a_config_error() {
    for bind in ["nonsense", "127.0.0.1", "127.0.0.1:99999"] {
        let (code, _, err) = run(&["serve", "--bind", bind], &[]);
        assert_eq!(code, 2, "{bind}: {err}");
        assert!(err.contains("`bind`") && err.lines().count() == 1, "{err}");
    }
}

#[test]
fn an_unknown_environment_variable_is_named_with_the_closest_key() {
    let mut server = Server::start(&[], &[("WSHUB_SNED_QUEUE", "8")]);
    let warnings: Vec<&String> = server
        .startup
        .iter()
        .filter(|line| line.contains("WSHUB_SNED_QUEUE"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", server.startup);
    assert!(
        warnings[0].contains("did you mean WSHUB_SEND_QUEUE"),
        "{warnings:?}"
    );
    server.signal("TERM");
    server.wait_exit();
}

#[tokio::test]
async fn serve_is_a_working_chat_demo() {
    let server = Server::start(&[], &[]);
    let mut a = connect(&server.url()).await;
    let mut b = connect(&server.url()).await;
    a.send(Frame::text("hello from a")).await.unwrap();
    assert_eq!(next_data(&mut a).await, Frame::text("hello from a"));
    assert_eq!(next_data(&mut b).await, Frame::text("hello from a"));

    let page = http(
        server.addr,
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        ),
    )
    .await;
    assert!(
        page.contains(&format!("{}/ws", server.addr)),
        "home page points at /ws"
    );
}

#[tokio::test]
async fn config_file_settings_take_effect_in_serve() {
    let file = temp_file("serve.toml", "max_message_size = 10\n");
    let server = Server::start(&["--config", file.to_str().unwrap()], &[]);
    let mut ws = connect(&server.url()).await;
    ws.send(Frame::text("0123456789")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Frame::text("0123456789"));
    ws.send(Frame::text("0123456789A")).await.unwrap();
    match next_data(&mut ws).await {
        Frame::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn sigterm_sends_1001_and_exits_0() {
    let mut server = Server::start(&["--drain-timeout", "3s"], &[]);
    let mut ws = connect(&server.url()).await;
    ws.send(Frame::text("x")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Frame::text("x"));
    server.signal("TERM");
    match next_data(&mut ws).await {
        Frame::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    drop(ws);
    assert_eq!(server.wait_exit().code(), Some(0));
    // Accepting stopped.
    assert!(
        tokio_tungstenite::connect_async(server.url())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn sigint_also_shuts_down_cleanly() {
    let mut server = Server::start(&[], &[]);
    server.signal("INT");
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[tokio::test]
async fn json_logs_are_json() {
    let server = Server::start(&["--log-format", "json"], &[("RUST_LOG", "debug")]);
    let _ws = connect(&server.url()).await;
    let line = server.stderr.recv_timeout(WAIT).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert!(parsed.get("level").is_some(), "{line}");
}

#[tokio::test]
async fn stdio_mode_writes_inbound_as_json_lines_and_broadcasts_stdin() {
    let mut server = Server::start(&["--on-message", "stdio"], &[]);
    let mut ws = connect(&server.url()).await;
    ws.send(Frame::text("hi there")).await.unwrap();
    ws.send(Frame::binary(vec![0u8, 1, 2])).await.unwrap();

    let stdout = server.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first: serde_json::Value = serde_json::from_str(&rx.recv_timeout(WAIT).unwrap()).unwrap();
    assert_eq!(first["type"], "text");
    assert_eq!(first["data"], "hi there");
    assert!(first["connection"].as_u64().is_some());
    let second: serde_json::Value = serde_json::from_str(&rx.recv_timeout(WAIT).unwrap()).unwrap();
    assert_eq!(second["type"], "binary");
    assert_eq!(second["data"], "AAEC", "binary data is base64");

    let stdin = server.child.stdin.as_mut().unwrap();
    stdin.write_all(b"line from stdin\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(next_data(&mut ws).await, Frame::text("line from stdin"));
}

#[tokio::test]
async fn webhook_mode_posts_each_message_as_json() {
    use axum::routing::post;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        post({
            let failures = failures.clone();
            move |headers: axum::http::HeaderMap, body: String| async move {
                // Fail the very first attempt, to exercise the retry.
                if failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let _ = tx.send((content_type, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = Server::start(
        &[
            "--on-message",
            "webhook",
            "--webhook-url",
            &hook,
            "--webhook-timeout",
            "2s",
        ],
        &[],
    );
    let mut ws = connect(&server.url()).await;
    ws.send(Frame::text("to the hook")).await.unwrap();
    let (content_type, body) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(content_type, "application/json");
    let event: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["type"], "text");
    assert_eq!(event["data"], "to the hook");
    assert!(event["connection"].as_u64().is_some());
    assert!(
        failures.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the failed attempt was retried"
    );
    // Counted in /metrics: one delivered (the retry does not count twice), none dropped.
    metric_reaches(server.addr, "wshub_webhook_deliveries_total 1").await;
    metric_reaches(server.addr, "wshub_webhook_drops_total 0").await;

    // A webhook that never answers: the message is given up after its attempts.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let server = Server::start(
        &[
            "--on-message",
            "webhook",
            "--webhook-url",
            &nowhere,
            "--webhook-retries",
            "0",
        ],
        &[],
    );
    let mut ws = connect(&server.url()).await;
    ws.send(Frame::text("lost")).await.unwrap();
    metric_reaches(server.addr, "wshub_webhook_drops_total 1").await;
}

/// Polls `GET /metrics` until it has the line `sample`.
async fn metric_reaches(addr: std::net::SocketAddr, sample: &str) {
    eventually_async(WAIT, || async {
        http(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
        )
        .await
        .lines()
        .any(|line| line == sample)
    })
    .await;
}

/// `systemctl reload` sends SIGHUP to every node; without TLS there is nothing to reload,
/// and the node must not die of it.
#[tokio::test]
async fn sighup_without_tls_is_logged_and_ignored() {
    let server = Server::start(&[], &[]);
    server.signal("HUP");
    let logged = server
        .stderr
        .recv_timeout(WAIT)
        .expect("a log line about SIGHUP");
    assert!(logged.contains("SIGHUP: nothing to reload"), "{logged}");
    let mut ws = connect(&server.url()).await;
    ws.send(Frame::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Frame::text("still here"));
}

#[tokio::test]
async fn broadcast_api_through_the_binary() {
    let server = Server::start(&["--api-key", "k3y"], &[]);
    let mut ws = connect(&server.url()).await;
    let post = |key: &str| {
        format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        )
    };
    for (key, expected) in [("wrong", "401"), ("k3y", "200")] {
        let out = http(server.addr, post(key)).await;
        assert!(out.starts_with(&format!("HTTP/1.1 {expected}")), "{out}");
        if expected == "200" {
            assert!(out.contains(r#"{"recipients":1}"#), "{out}");
        }
    }
    assert_eq!(next_data(&mut ws).await, Frame::text("hello"));
}
