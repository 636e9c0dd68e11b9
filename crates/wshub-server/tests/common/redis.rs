//! A real `redis-server` (Debian's package) on a free port in a temp dir, for the
//! scale-out tests; and `wshub.v1` clients speaking to real `wshub` nodes.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Client, WAIT};

/// A `redis-server` of our own; killed when dropped.
pub struct Redis {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
}

/// A port nobody listens on now (the OS's next ephemeral one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// Starts `redis-server` without persistence on a free port; waits until it answers.
    pub fn start() -> Redis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wshub-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            child: None,
            port,
            dir,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&mut self, extra: &[&str]) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, then a new empty `redis-server` on the same port.
    pub fn restart_empty(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// One command through `redis-cli`; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `wshub.v1` client: commands with ids, pushes collected in order.
pub struct V1 {
    pub ws: Client,
    next_id: u64,
    /// Pushes (publications, presence, resync) seen while waiting for replies.
    pub pushes: Vec<Value>,
}

impl V1 {
    pub async fn connect(url: &str) -> V1 {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "wshub.v1".parse().unwrap());
        let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            "wshub.v1"
        );
        V1 {
            ws,
            next_id: 1,
            pushes: Vec::new(),
        }
    }

    async fn next_json(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .expect("a frame");
            if let Frame::Text(text) = frame {
                // A raw-mode broadcast reaches wshub.v1 connections too, as plain text.
                return serde_json::from_str(&text).unwrap_or_else(|_| json!(text.as_str()));
            }
        }
    }

    /// Sends a command; returns its reply (`result` or `error` object), keeping pushes.
    pub async fn call(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.ws
            .send(Frame::Text(command.to_string().into()))
            .await
            .unwrap();
        loop {
            let message = self.next_json().await;
            if message["id"] == json!(id) {
                return message;
            }
            self.pushes.push(message);
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let reply = self
            .call(json!({"cmd": "subscribe", "channel": channel}))
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
        reply["result"].clone()
    }

    /// Waits until pushes of `channel` hold a publication with `offset` (or a resync
    /// at or past it); returns them all.
    pub async fn publications_until(&mut self, channel: &str, offset: u64) -> Vec<Value> {
        loop {
            let done = self.pushes.iter().any(|p| {
                p["channel"] == json!(channel)
                    && (p["offset"].as_u64() >= Some(offset)
                        || p["resync"]["offset"].as_u64() >= Some(offset))
            });
            if done {
                return self.pushes.clone();
            }
            let message = self.next_json().await;
            self.pushes.push(message);
        }
    }
}

/// The offsets of `channel`'s publications among `pushes`, in arrival order.
pub fn offsets(pushes: &[Value], channel: &str) -> Vec<u64> {
    pushes
        .iter()
        .filter(|p| p["channel"] == json!(channel) && p.get("offset").is_some())
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

/// A Redis Cluster of three masters (no replicas) started here: `--cluster-enabled yes`,
/// a third of the slots each (`CLUSTER ADDSLOTSRANGE`), joined by `CLUSTER MEET`.
pub struct Cluster {
    pub shards: Vec<Redis>,
}

/// A port free for a cluster node: it and its bus port (+10000) both.
fn free_cluster_port() -> u16 {
    loop {
        let port = 20000 + (std::process::id() as u16 % 50) * 100 + (rand_u16() % 100);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
    );
    hasher.finish() as u16
}

impl Cluster {
    pub fn start() -> Cluster {
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        let mut shards = Vec::new();
        for _ in ranges {
            let port = free_cluster_port();
            let dir =
                std::env::temp_dir().join(format!("wshub-cluster-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut shard = Redis {
                child: None,
                port,
                dir,
            };
            shard.spawn_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
            shards.push(shard);
        }
        for (shard, (from, to)) in shards.iter().zip(ranges) {
            let out = shard.cli(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &from.to_string(),
                &to.to_string(),
            ]);
            assert!(out.contains("OK"), "ADDSLOTSRANGE: {out}");
        }
        for other in &shards[1..] {
            let out = shards[0].cli(&["CLUSTER", "MEET", "127.0.0.1", &other.port.to_string()]);
            assert!(out.contains("OK"), "MEET: {out}");
        }
        let deadline = std::time::Instant::now() + WAIT;
        while !shards.iter().all(|s| {
            let info = s.cli(&["CLUSTER", "INFO"]);
            info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster did not form"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Cluster { shards }
    }

    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .shards
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Which shard (0, 1, 2) holds `key`'s slot.
    pub fn shard_of(&self, key: &str) -> usize {
        let slot: u16 = self.shards[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        match slot {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        }
    }
}
