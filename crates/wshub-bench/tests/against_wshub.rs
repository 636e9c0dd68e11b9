//! End-to-end checks of the wshub-bench binary against a real `wshub serve` (the debug build
//! of crates/wshub-server, target/debug/wshub): each test starts its own server on an
//! ephemeral port, runs one subcommand with `--json`, and checks the counts — every message
//! sent in the window delivered to every connection, nothing lost, every handshake accepted,
//! every channel offset seen once and in order, every missed publication recovered.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The wshub binary: `WSHUB_BIN` if set, else the workspace's target/debug/wshub.
fn wshub_binary() -> PathBuf {
    let path = std::env::var_os("WSHUB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/wshub")
        });
    assert!(
        path.exists(),
        "{} is missing: these tests run the real server; build it first with \
         `cargo build -p wshub-server` (or point WSHUB_BIN at a wshub binary)",
        path.display()
    );
    path
}

/// A running `wshub serve --bind 127.0.0.1:0`; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut command = Command::new(wshub_binary());
        for (key, _) in std::env::vars() {
            if key.starts_with("WSHUB_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wshub");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(15))
                .expect("wshub printed `listening on http://ADDR`");
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\u{1b}')
                    .collect();
                break addr
                    .parse()
                    .expect("an address after `listening on http://`");
            }
        };
        Server { child, addr }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs wshub-bench with `--json --quiet`; returns its JSON report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wshub-bench"))
        .args(args)
        .args(["--json", "--quiet"])
        .output()
        .expect("run wshub-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "wshub-bench {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected, got: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn n(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {report}"))
}

fn check_fanout(report: &Value, conns: u64) {
    check_broadcast(report, "fanout", conns);
}

fn check_broadcast(report: &Value, scenario: &str, conns: u64) {
    assert_eq!(report["scenario"], scenario);
    assert_eq!(n(report, "opened"), conns, "{report}");
    assert_eq!(n(report, "failed"), 0, "{report}");
    let sent = n(report, "sent");
    assert!(sent > 0, "nothing sent: {report}");
    assert_eq!(n(report, "expected"), sent * conns, "{report}");
    assert_eq!(
        n(report, "delivered"),
        n(report, "expected"),
        "deliveries: {report}"
    );
    assert_eq!(report["lost"].as_i64(), Some(0), "{report}");
    for key in [
        "duplicates",
        "out_of_order",
        "skipped",
        "dropped",
        "foreign",
    ] {
        assert_eq!(n(report, key), 0, "{key}: {report}");
    }
    assert!(n(report, "sent_total") >= sent);
    let latency = &report["latency"];
    assert_eq!(n(latency, "count"), n(report, "delivered"));
    let p50 = latency["p50_ms"].as_f64().unwrap();
    let p99 = latency["p99_ms"].as_f64().unwrap();
    let max = latency["max_ms"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{latency}");
    assert!(report["deliveries_per_s"].as_f64().unwrap() > 0.0);
    let server = &report["server"];
    assert!(server["cpu_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(server["deliveries_per_cpu_s"].as_f64().unwrap() > 0.0);
    let client = &report["client"];
    assert!(client["processes"].as_array().unwrap().len() >= 2);
    assert!(client["client_bound"].is_boolean());
}

#[test]
fn fanout_closed_loop_delivers_everything() {
    let server = Server::start(&[]);
    let report = bench(&[
        "fanout",
        "--url",
        &server.url(),
        "--conns",
        "50",
        "--senders",
        "5",
        "--in-flight",
        "10",
        "--warmup",
        "500ms",
        "--duration",
        "1500ms",
        "--drain",
        "10s",
        "--server-pid",
        &server.pid(),
    ]);
    check_fanout(&report, 50);
    assert_eq!(report["mode"], "closed-loop");
    assert_eq!(n(&report, "in_flight"), 10);
    assert_eq!(n(&report, "stalls"), 0, "{report}");
}

#[test]
fn fanout_fixed_rate_over_two_workers_delivers_everything() {
    let server = Server::start(&[]);
    let report = bench(&[
        "fanout",
        "--url",
        &server.url(),
        "--conns",
        "50",
        "--senders",
        "5",
        "--rate",
        "200",
        "--size",
        "100",
        "--warmup",
        "500ms",
        "--duration",
        "1s",
        "--drain",
        "10s",
        "--workers",
        "2",
        "--sources",
        "3",
        "--server-pid",
        &server.pid(),
    ]);
    check_fanout(&report, 50);
    assert_eq!(report["mode"], "fixed-rate");
    assert_eq!(n(&report, "workers"), 2);
    assert_eq!(n(&report, "sources"), 3);
    // 200 msg/s for 1 s, give or take the scheduling at the window's edges (a sender that
    // could not keep up on a loaded machine counts what it owed as backlog).
    let sent = n(&report, "sent") + n(&report, "backlog_skipped");
    assert!((190..=210).contains(&sent), "sent {sent}: {report}");
    assert_eq!(report["client"]["processes"].as_array().unwrap().len(), 3);
}

#[test]
fn idle_opens_holds_and_measures_rss() {
    let server = Server::start(&[]);
    let report = bench(&[
        "idle",
        "--url",
        &server.url(),
        "--conns",
        "300",
        "--parallel",
        "20",
        "--hold",
        "1s",
        "--server-pid",
        &server.pid(),
    ]);
    assert_eq!(report["scenario"], "idle");
    assert_eq!(n(&report, "opened"), 300, "{report}");
    assert_eq!(n(&report, "failed"), 0, "{report}");
    assert_eq!(n(&report, "dropped"), 0, "{report}");
    assert!(report["time_to_open_s"].as_f64().unwrap() > 0.0);
    let s = &report["server"];
    assert!(n(s, "rss_before_kib") > 0, "{report}");
    assert!(n(s, "rss_after_kib") > 0, "{report}");
    assert!(n(s, "rss_peak_kib") >= n(s, "rss_after_kib"));
    assert!(s["bytes_per_conn"].is_number());
}

#[test]
fn churn_completes_every_cycle() {
    let server = Server::start(&[]);
    let report = bench(&[
        "churn",
        "--url",
        &server.url(),
        "--conns",
        "10",
        "--cycles",
        "500",
        "--server-pid",
        &server.pid(),
    ]);
    assert_eq!(report["scenario"], "churn");
    assert_eq!(n(&report, "ok"), 500, "{report}");
    assert_eq!(n(&report, "failed"), 0, "{report}");
    assert_eq!(n(&report["handshake"], "count"), 500);
    assert!(report["handshakes_per_s"].as_f64().unwrap() > 0.0);
}

/// The channel workload's own checks: every push's offset one after the previous one, every
/// publish answered with a result, no failures.
fn check_channel(report: &Value, conns: u64) {
    check_broadcast(report, "channel", conns);
    let offsets = &report["offsets"];
    for key in [
        "gaps",
        "duplicates",
        "subscribers_affected",
        "publish_errors",
    ] {
        assert_eq!(n(offsets, key), 0, "{key}: {report}");
    }
    // Pushes of one channel arrive in order, so once the window's last message reached every
    // subscriber, so had every earlier one (warm-up included).
    let sent_total = n(report, "sent_total");
    assert_eq!(n(offsets, "pushes"), sent_total * conns, "{report}");
    // Replies are consumed, not counted as deliveries (they may still be on the way at the
    // end).
    assert!(n(offsets, "publish_acks") <= sent_total, "{report}");
    assert!(n(offsets, "publish_acks") > 0, "{report}");
    assert_eq!(n(report, "failures"), 0, "{report}");
}

#[test]
fn channel_closed_loop_delivers_every_offset_once() {
    let server = Server::start(&[]);
    let report = bench(&[
        "channel",
        "--url",
        &server.url(),
        "--conns",
        "50",
        "--senders",
        "5",
        "--in-flight",
        "10",
        "--warmup",
        "500ms",
        "--duration",
        "1500ms",
        "--drain",
        "10s",
        "--channel",
        "bench:test",
        "--server-pid",
        &server.pid(),
    ]);
    check_channel(&report, 50);
    assert_eq!(report["channel"], "bench:test");
    assert_eq!(report["mode"], "closed-loop");
    assert_eq!(n(&report, "stalls"), 0, "{report}");
}

#[test]
fn channel_fixed_rate_over_two_workers_delivers_every_offset_once() {
    let server = Server::start(&[]);
    let report = bench(&[
        "channel",
        "--url",
        &server.url(),
        "--conns",
        "40",
        "--senders",
        "4",
        "--rate",
        "200",
        "--size",
        "200",
        "--warmup",
        "300ms",
        "--duration",
        "1s",
        "--drain",
        "10s",
        "--workers",
        "2",
        "--server-pid",
        &server.pid(),
    ]);
    check_channel(&report, 40);
    assert_eq!(report["mode"], "fixed-rate");
    assert_eq!(n(&report, "workers"), 2);
}

#[test]
fn channel_reports_publish_errors_as_failures() {
    let server = Server::start(&["--client-publish", "false"]);
    let report = bench(&[
        "channel",
        "--url",
        &server.url(),
        "--conns",
        "5",
        "--senders",
        "1",
        "--in-flight",
        "2",
        "--warmup",
        "100ms",
        "--duration",
        "300ms",
        "--drain",
        "200ms",
    ]);
    assert_eq!(n(&report, "opened"), 5, "{report}");
    assert_eq!(n(&report["offsets"], "publish_errors"), 2, "{report}");
    assert_eq!(n(&report["offsets"], "pushes"), 0, "{report}");
    assert!(n(&report, "failures") >= 2, "{report}");
    let errors = report["errors"].as_object().unwrap();
    assert!(errors.keys().any(|k| k.contains("403")), "{report}");
}

/// A `redis-server` of this test's own (Debian's package), without persistence, on a free
/// port, its files in a temp dir; killed (and the dir removed) when dropped.
struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("wshub-bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is installed");
        let redis = Redis { child, port, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn channel_spread_over_two_redis_nodes_delivers_every_offset_once() {
    // Two nodes sharing their channels through one Redis: subscribers spread over both
    // (connection i to the (i mod 2)-th URL), publishers on node A, the server CPU summed
    // over both nodes and redis-server.
    let redis = Redis::start();
    let a = Server::start(&["--broker", &redis.url(), "--node-name", "a"]);
    let b = Server::start(&["--broker", &redis.url(), "--node-name", "b"]);
    let pids = format!("{},{}", a.pid(), b.pid());
    let redis_pid = redis.child.id().to_string();
    let report = bench(&[
        "channel",
        "--url",
        &a.url(),
        "--url",
        &b.url(),
        "--sender-url",
        &a.url(),
        "--conns",
        "60",
        "--senders",
        "4",
        "--in-flight",
        "8",
        "--warmup",
        "300ms",
        "--duration",
        "1s",
        "--drain",
        "10s",
        "--channel",
        "bench:nodes",
        "--server-pid",
        &pids,
        "--server-pid",
        &redis_pid,
    ]);
    check_channel(&report, 60);
    assert_eq!(report["url"], a.url(), "{report}");
    assert_eq!(report["urls"], serde_json::json!([a.url(), b.url()]));
    assert_eq!(report["sender_url"], a.url(), "{report}");
    let per_url = report["per_url"].as_array().unwrap();
    assert_eq!(per_url.len(), 2, "{report}");
    let sent = n(&report, "sent");
    for (entry, url, senders) in [(&per_url[0], a.url(), true), (&per_url[1], b.url(), false)] {
        assert_eq!(entry["url"], url, "{report}");
        assert_eq!(entry["senders"], senders, "{report}");
        // Senders are connections 0, 15, 30, 45 (every 60/4-th): all on A; the others
        // alternate, so A has the 28 even others and the 4 senders, B the 28 odd others.
        let opened = n(entry, "opened");
        assert_eq!(opened, if senders { 32 } else { 28 }, "{report}");
        assert_eq!(n(entry, "expected"), sent * opened, "{report}");
        assert_eq!(n(entry, "delivered"), sent * opened, "{report}");
        assert_eq!(entry["lost"].as_i64(), Some(0), "{report}");
        assert!(
            entry["latency"]["p99_ms"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
    let processes = report["server"]["processes"].as_array().unwrap();
    let names: Vec<&str> = processes
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{report}");
    assert!(names.contains(&"redis-server"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "wshub").count(),
        2,
        "{names:?}"
    );
    let summed: f64 = processes.iter().map(|p| p["cpu_s"].as_f64().unwrap()).sum();
    let cpu_s = report["server"]["cpu_s"].as_f64().unwrap();
    assert!((summed - cpu_s).abs() < 1e-6, "{report}");
}

#[test]
fn one_url_and_one_pid_report_as_before() {
    // The fields for several servers stay out of a one-server report.
    let server = Server::start(&[]);
    let report = bench(&[
        "channel",
        "--url",
        &server.url(),
        "--conns",
        "20",
        "--senders",
        "2",
        "--in-flight",
        "8",
        "--warmup",
        "200ms",
        "--duration",
        "1s",
        "--drain",
        "10s",
        "--server-pid",
        &server.pid(),
    ]);
    check_channel(&report, 20);
    for key in ["urls", "sender_url", "per_url"] {
        assert!(report.get(key).is_none(), "{key}: {report}");
    }
    assert!(report["server"].get("processes").is_none(), "{report}");
    assert_eq!(report["server"]["pid"].as_u64(), server.pid().parse().ok());
}

fn check_recover(report: &Value, messages: u64, rounds: u64) {
    assert_eq!(report["scenario"], "recover");
    assert_eq!(n(report, "failures"), 0, "{report}");
    assert_eq!(n(report, "messages"), messages);
    assert_eq!(
        n(report, "last_offset") - n(report, "since_offset"),
        messages,
        "{report}"
    );
    let list = report["rounds"].as_array().unwrap();
    assert_eq!(list.len() as u64, rounds, "{report}");
    for round in list {
        assert_eq!(round["recovered"], true, "{report}");
        assert_eq!(round["same_epoch"], true, "{report}");
        assert_eq!(n(round, "in_reply") + n(round, "as_pushes"), messages);
        for key in [
            "missing",
            "duplicates",
            "out_of_order",
            "unexpected",
            "bad_data",
        ] {
            assert_eq!(n(round, key), 0, "{key}: {report}");
        }
        assert!(round["error"].is_null(), "{report}");
        let catch_up = round["catch_up_ms"].as_f64().unwrap();
        let first_byte = round["first_byte_ms"].as_f64().unwrap();
        assert!(0.0 < first_byte && first_byte <= catch_up, "{round}");
    }
    // Every publication's data is a 64-character string: the reply holds at least that.
    assert!(n(report, "reply_bytes") > messages * 64, "{report}");
    assert!(report["catch_up"]["median_ms"].as_f64().unwrap() > 0.0);
    let server = &report["server"];
    assert!(server["cpu_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(server["cpu_us_per_publication"].as_f64().unwrap() > 0.0);
}

#[test]
fn recover_over_websocket_gets_all_2000_back() {
    let server = Server::start(&["--history-size", "2000"]);
    let report = bench(&[
        "recover",
        "--url",
        &server.url(),
        "--messages",
        "2000",
        "--repeat",
        "2",
        "--server-pid",
        &server.pid(),
    ]);
    check_recover(&report, 2000, 2);
    assert_eq!(report["published_via"], "websocket");
}

#[test]
fn recover_after_http_publishing_gets_all_2000_back() {
    let server = Server::start(&["--history-size", "2000", "--api-key", "secret"]);
    let report = bench(&[
        "recover",
        "--url",
        &server.url(),
        "--messages",
        "2000",
        "--api-key",
        "secret",
        "--channel",
        "recover:http",
        "--server-pid",
        &server.pid(),
    ]);
    check_recover(&report, 2000, 1);
    assert_eq!(report["published_via"], "http");
    assert_eq!(report["channel"], "recover:http");
}

#[test]
fn recover_beyond_the_history_is_a_failure() {
    let server = Server::start(&["--history-size", "100"]);
    let report = bench(&["recover", "--url", &server.url(), "--messages", "150"]);
    let round = &report["rounds"][0];
    assert_eq!(round["recovered"], false, "{report}");
    assert_eq!(n(round, "missing"), 150, "{report}");
    assert!(n(&report, "failures") > 0, "{report}");
}

#[test]
fn idle_subscribe_opens_subscribed_connections() {
    let server = Server::start(&["--channels", "chat:*"]);
    let report = bench(&[
        "idle",
        "--url",
        &server.url(),
        "--conns",
        "100",
        "--hold",
        "300ms",
        "--subscribe",
        "chat:idle",
        "--server-pid",
        &server.pid(),
    ]);
    assert_eq!(n(&report, "opened"), 100, "{report}");
    assert_eq!(n(&report, "failed"), 0, "{report}");
    assert_eq!(report["subprotocol"], "wshub.v1");
    assert_eq!(report["subscribe"], "chat:idle");
    assert!(report["server"]["bytes_per_conn"].is_number());
    // A channel the server does not admit: every subscribe is refused and reported.
    let report = bench(&[
        "idle",
        "--url",
        &server.url(),
        "--conns",
        "5",
        "--hold",
        "0s",
        "--subscribe",
        "room",
    ]);
    assert_eq!(n(&report, "opened"), 0, "{report}");
    assert_eq!(n(&report, "failed"), 5, "{report}");
    let errors = report["errors"].as_object().unwrap();
    assert!(
        errors.keys().any(|k| k.starts_with("subscribe: 404")),
        "{report}"
    );
}

#[test]
fn refused_connections_are_reported_not_fatal_for_idle() {
    // A port nothing listens on: every connect fails, and the report says so.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let report = bench(&[
        "idle",
        "--url",
        &format!("ws://{addr}/ws"),
        "--conns",
        "5",
        "--hold",
        "0s",
    ]);
    assert_eq!(n(&report, "opened"), 0);
    assert_eq!(n(&report, "failed"), 5);
    let errors = report["errors"].as_object().unwrap();
    assert!(errors.keys().any(|k| k.starts_with("connect")), "{report}");
}

#[test]
fn fanout_with_deflate_gets_every_message_compressed_and_fewer_bytes() {
    let server = Server::start(&["--compression", "true"]);
    let (url, pid) = (server.url(), server.pid());
    let run = |deflate: bool| {
        let mut args = vec![
            "fanout",
            "--url",
            &url,
            "--conns",
            "20",
            "--senders",
            "2",
            "--in-flight",
            "4",
            "--size",
            "1024",
            "--payload",
            "json",
            "--warmup",
            "300ms",
            "--duration",
            "1s",
            "--drain",
            "10s",
            "--server-pid",
            &pid,
        ];
        if deflate {
            args.push("--deflate");
        }
        bench(&args)
    };
    let (on, off) = (run(true), run(false));
    check_fanout(&on, 20);
    check_fanout(&off, 20);
    assert_eq!(on["deflate"], true);
    assert_eq!(on["payload"], "json");
    let received = n(&on, "received_in_window");
    assert!(received > 0, "{on}");
    assert_eq!(n(&on, "compressed_in_window"), received, "{on}");
    assert_eq!(n(&off, "compressed_in_window"), 0, "{off}");
    let per_delivery = |r: &Value| r["wire_bytes_per_delivery"].as_f64().unwrap();
    // Uncompressed: the 1024 bytes and a 4-byte frame header.
    assert!((1024.0..1100.0).contains(&per_delivery(&off)), "{off}");
    assert!(per_delivery(&on) < 0.85 * per_delivery(&off), "{on}");
    assert!(n(&on, "wire_bytes_sent") > 0, "{on}");
}

#[test]
fn deflate_against_a_server_that_declines_fails_the_run() {
    let server = Server::start(&[]);
    let url = server.url();
    for args in [
        &["idle", "--conns", "5"][..],
        &["fanout", "--conns", "5", "--senders", "1"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wshub-bench"))
            .args(args)
            .args(["--url", &url, "--deflate", "--json", "--quiet"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("declined permessage-deflate in 5 of 5 handshakes"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn help_explains_scaling() {
    let out = Command::new(env!("CARGO_BIN_EXE_wshub-bench"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "127.0.0.2",
        "RLIMIT_NOFILE",
        "worker",
        "--workers",
        "--drain",
        "wshub.v1",
        "recover",
        "permessage-deflate",
        "--payload",
        "SEVERAL SERVERS",
        "--sender-url",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wshub-bench"))
        .args(["recover", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--history-size", "--api-key", "since", "recovered"] {
        assert!(
            help.contains(needle),
            "recover --help lacks {needle}: {help}"
        );
    }
}
