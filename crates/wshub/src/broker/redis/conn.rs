//! One connection to "Redis", whichever kind it is: a single server (`redis://`, through
//! the redis crate's `ConnectionManager`, which reconnects and resubscribes) or a Redis
//! Cluster (`redis+cluster://`, through its `ClusterConnection`, which follows the slots
//! and resubscribes). The broker speaks to this and never asks which.
//!
//! The one difference the broker sees: on a cluster, pub/sub is sharded (SSUBSCRIBE,
//! SPUBLISH, Redis ≥ 7), and commands for different channels may live on different
//! shards, so a batch of them is sent as separate requests rather than one pipeline.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture,
    RedisResult, Value,
};

use crate::broker::BrokerError;

/// Where Redis is, from the `broker` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `redis://HOST:PORT[/DB]`.
    Single(String),
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]`: the seeds, as `redis://` URLs.
    Cluster(Vec<String>),
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, BrokerError> {
        if let Some(seeds) = url.strip_prefix("redis+cluster://") {
            let seeds: Vec<String> = seeds
                .trim_end_matches('/')
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| format!("redis://{s}"))
                .collect();
            if seeds.is_empty() {
                return Err(BrokerError(format!(
                    "`{url}` names no node: write redis+cluster://HOST:PORT[,HOST:PORT...]"
                )));
            }
            for seed in &seeds {
                seed.as_str().into_connection_info().map_err(|e| {
                    BrokerError(format!("`{url}`: `{seed}` is not a node address: {e}"))
                })?;
            }
            return Ok(Target::Cluster(seeds));
        }
        if url.starts_with("redis://") {
            url.into_connection_info()
                .map_err(|e| BrokerError(format!("`{url}` is not a Redis URL: {e}")))?;
            return Ok(Target::Single(url.to_owned()));
        }
        Err(BrokerError(format!(
            "`{url}` is neither a redis:// nor a redis+cluster:// URL"
        )))
    }
}

/// A connection to a single Redis or to a cluster; cheap to clone (shared underneath).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How long a connection attempt or a command may take.
pub(crate) struct Timeouts {
    pub(crate) command: Duration,
}

impl Conn {
    /// Connects; with `pushes`, this connection carries subscriptions and hands every
    /// message (and, on a single Redis, every disconnection) to it.
    pub(crate) async fn open(
        target: &Target,
        timeouts: &Timeouts,
        pushes: Option<Box<dyn Fn(PushInfo) + Send + Sync>>,
    ) -> RedisResult<Conn> {
        match target {
            Target::Single(url) => {
                let info = url.as_str().into_connection_info()?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(settings))?;
                let mut config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.command))
                    .set_response_timeout(Some(timeouts.command))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                if let Some(pushes) = pushes {
                    config = config
                        .set_push_sender(move |push: PushInfo| {
                            pushes(push);
                            Ok::<(), ()>(())
                        })
                        .set_automatic_resubscription();
                }
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Target::Cluster(seeds) => {
                let mut builder = ClusterClientBuilder::new(seeds.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(timeouts.command)
                    .response_timeout(timeouts.command)
                    .retries(2)
                    .max_retry_wait(500);
                if let Some(pushes) = pushes {
                    builder = builder.push_sender(move |push: PushInfo| {
                        pushes(push);
                        Ok::<(), ()>(())
                    });
                }
                Ok(Conn::Cluster(
                    builder.build()?.get_async_connection().await?,
                ))
            }
        }
    }

    /// Whether pub/sub is sharded here (a cluster): SPUBLISH, not PUBLISH.
    pub(crate) fn sharded(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    pub(crate) fn publish_command(&self) -> &'static str {
        if self.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    pub(crate) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(conn) => conn.subscribe(channel).await,
            Conn::Cluster(conn) => conn.ssubscribe(channel).await,
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(conn) => conn.unsubscribe(channel).await,
            Conn::Cluster(conn) => conn.sunsubscribe(channel).await,
        }
    }

    /// Runs independent groups of commands, each group atomic and on one slot: on a
    /// single Redis as one pipeline, on a cluster as concurrent requests.
    pub(crate) async fn run_groups(&self, groups: Vec<Pipeline>) -> RedisResult<()> {
        match self {
            Conn::Single(_) => {
                let mut all = redis::pipe();
                for group in &groups {
                    for command in group.cmd_iter() {
                        all.add_command(command.clone()).ignore();
                    }
                }
                all.exec_async(&mut self.clone()).await
            }
            Conn::Cluster(_) => {
                let runs = groups.into_iter().map(|group| {
                    let mut conn = self.clone();
                    async move { group.exec_async(&mut conn).await }
                });
                futures_util::future::try_join_all(runs).await.map(|_| ())
            }
        }
    }

    /// Sends independent one-key commands and collects their answers, in order.
    pub(crate) async fn query_each<T: FromRedisValue + Send>(
        &self,
        commands: Vec<Cmd>,
    ) -> RedisResult<Vec<T>> {
        match self {
            Conn::Single(_) => {
                let mut all = redis::pipe();
                for command in commands {
                    all.add_command(command);
                }
                all.query_async(&mut self.clone()).await
            }
            Conn::Cluster(_) => {
                let runs = commands.into_iter().map(|command| {
                    let mut conn = self.clone();
                    async move { command.query_async::<T>(&mut conn).await }
                });
                futures_util::future::try_join_all(runs).await
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}
