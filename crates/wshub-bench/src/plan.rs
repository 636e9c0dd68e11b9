//! Turning the command line into worker plans: parsing the ws:// URL, choosing the source
//! addresses to spread sockets over, the number of worker processes, and each worker's share
//! of connections, senders, handshake rate and parallelism.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

use crate::payload::Payload;
use crate::proto::{Mode, Plan};

/// Connections per worker process when `--workers` is not given (the hard fd limit here is
/// 20,000 per process; this leaves room for everything else a process holds).
pub(crate) const CONNS_PER_WORKER: u64 = 18_000;

/// A parsed `ws://` URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Target {
    /// Where to connect.
    pub(crate) addr: SocketAddr,
    /// `Host` header (host[:port] as written).
    pub(crate) host: String,
    /// Path and query, at least "/".
    pub(crate) path: String,
}

/// Parses and resolves a `ws://host[:port][/path]` URL.
pub(crate) fn parse_url(url: &str) -> Result<Target, String> {
    let rest = if let Some(rest) = url.strip_prefix("ws://") {
        rest
    } else if url.starts_with("wss://") {
        return Err("wss:// is not supported (plain ws:// only)".into());
    } else {
        return Err(format!("not a ws:// URL: {url}"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() {
        return Err(format!("no host in {url}"));
    }
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_string()
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    Ok(Target {
        addr,
        host: authority.to_string(),
        path,
    })
}

/// Where a run's connections go: the `--url` list (connection i to the (i mod n)-th) and, with
/// `--sender-url`, the senders' own server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Targets {
    /// The servers: the `--url` ones in order, then the `--sender-url` one if it is not among
    /// them.
    pub(crate) list: Vec<Target>,
    /// Their URLs as given, same order.
    pub(crate) urls: Vec<String>,
    /// How many of `list` are `--url` ones (the connections are spread over those).
    pub(crate) spread: usize,
    /// The senders' index in `list` (`--sender-url`), if they have their own.
    pub(crate) senders: Option<usize>,
}

/// Parses the `--url` list (at least one) and the `--sender-url`: a sender URL equal to one
/// of the list's is that one (its connections and deliveries count together).
pub(crate) fn parse_targets(urls: &[String], sender: Option<&str>) -> Result<Targets, String> {
    if urls.is_empty() {
        return Err("--url: at least one URL".into());
    }
    let mut list = urls
        .iter()
        .map(|url| parse_url(url))
        .collect::<Result<Vec<_>, _>>()?;
    let mut all = urls.to_vec();
    let spread = list.len();
    let senders = match sender {
        None => None,
        Some(url) => match urls.iter().position(|u| u == url) {
            Some(i) => Some(i),
            None => {
                list.push(parse_url(url).map_err(|e| format!("--sender-url: {e}"))?);
                all.push(url.to_string());
                Some(spread)
            }
        },
    };
    Ok(Targets {
        list,
        urls: all,
        spread,
        senders,
    })
}

/// Which of the plan's targets connection `index` goes to (`sender`: it is a sender).
pub(crate) fn target_of(plan: &Plan, index: u64, sender: bool) -> usize {
    match plan.sender_target {
        Some(t) if sender => t,
        _ => (index % plan.spread.max(1) as u64) as usize,
    }
}

/// Whether sockets to all of `targets` may be bound to 127.0.0.2.. (all IPv4 loopback).
pub(crate) fn all_loopback(targets: &[Target]) -> bool {
    targets
        .iter()
        .all(|t| matches!(t.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()))
}

/// The source addresses to bind: `requested` of them (`None`: enough that each carries at
/// most a third of the ephemeral port range for `sockets` sockets), 127.0.0.2 upwards, only
/// when the target is IPv4 loopback. Why a third: the kernel looks for a free port among the
/// even (or odd) half of the range first, and past half the range every connect scans long:
/// 19,500 sockets from one address took 4.8 s to open, from two 0.7 s.
pub(crate) fn sources(
    target: &SocketAddr,
    requested: Option<u32>,
    sockets: u64,
    ports: u64,
) -> Vec<IpAddr> {
    let IpAddr::V4(ip) = target.ip() else {
        return Vec::new();
    };
    if !ip.is_loopback() {
        return Vec::new();
    }
    let per_source = (ports / 3).max(1);
    let count = requested.unwrap_or_else(|| sockets.div_ceil(per_source).max(1) as u32);
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    (0..count.min(250 * 256))
        .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
        .collect()
}

/// Worker count: `requested`, or one per `CONNS_PER_WORKER` connections.
pub(crate) fn workers(requested: Option<usize>, conns: u64) -> usize {
    requested
        .unwrap_or_else(|| conns.div_ceil(CONNS_PER_WORKER) as usize)
        .max(1)
}

/// What is shared by all of a run's plans.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub(crate) mode: Mode,
    pub(crate) targets: Targets,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) total: u64,
    pub(crate) parallel: u64,
    pub(crate) connect_rate: f64,
    pub(crate) connect_timeout_ms: u64,
    pub(crate) senders: u64,
    pub(crate) size: usize,
    pub(crate) msg_rate: f64,
    pub(crate) in_flight: u64,
    pub(crate) tag: u16,
    pub(crate) cycles: u64,
    pub(crate) quick_acks: bool,
    pub(crate) protocol: Option<String>,
    pub(crate) channel: Option<String>,
    pub(crate) deflate: bool,
    pub(crate) payload: Payload,
}

/// `n` split into `parts` near-equal shares: (first index, count) of each.
fn split(n: u64, parts: usize) -> Vec<(u64, u64)> {
    let parts = parts as u64;
    let mut first = 0;
    (0..parts)
        .map(|i| {
            let count = n / parts + u64::from(i < n % parts);
            let share = (first, count);
            first += count;
            share
        })
        .collect()
}

/// One plan per worker.
pub(crate) fn split_plans(common: &Common, workers: usize) -> Vec<Plan> {
    let conns = split(common.total, workers);
    let cycles = split(common.cycles, workers);
    let w = workers as u64;
    (0..workers)
        .map(|i| {
            let (first, count, cycles) = if common.mode == Mode::Churn {
                (cycles[i].0, conns[i].1, cycles[i].1)
            } else {
                (conns[i].0, conns[i].1, 0)
            };
            Plan {
                mode: common.mode,
                worker: i,
                targets: common.targets.list.clone(),
                spread: common.targets.spread,
                sender_target: common.targets.senders,
                sources: common.sources.clone(),
                first,
                count,
                total: common.total,
                parallel: common.parallel.div_ceil(w).max(1),
                connect_rate: common.connect_rate / w as f64,
                connect_timeout_ms: common.connect_timeout_ms,
                senders: common.senders,
                size: common.size,
                msg_rate: common.msg_rate,
                in_flight: common.in_flight,
                tag: common.tag,
                cycles,
                quick_acks: common.quick_acks,
                protocol: common.protocol.clone(),
                channel: common.channel.clone(),
                deflate: common.deflate,
                payload: common.payload,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:8080/ws").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap_or(t.addr));
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/ws");
        let t = parse_url("ws://127.0.0.1?x=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.path, "/?x=1");
        assert_eq!(t.addr.port(), 80);
        let t = parse_url("ws://[::1]:9/a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.addr.port(), 9);
        assert!(parse_url("wss://x/").is_err());
        assert!(parse_url("http://x/").is_err());
    }

    #[test]
    fn spreading() {
        let lo: SocketAddr = ([127, 0, 0, 1], 80).into();
        let s = sources(&lo, None, 100_000, 28_232);
        assert_eq!(s.len(), 11);
        assert_eq!(s[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(sources(&lo, Some(0), 100_000, 28_232).len(), 0);
        assert_eq!(sources(&lo, None, 10, 28_232).len(), 1);
        let far: SocketAddr = ([10, 0, 0, 1], 80).into();
        assert!(sources(&far, None, 100_000, 28_232).is_empty());
        assert_eq!(workers(None, 19_500), 2);
        assert_eq!(workers(Some(1), 19_500), 1);
        assert_eq!(workers(None, 100), 1);
    }

    #[test]
    fn targets_and_who_goes_where() {
        let urls: Vec<String> = ["ws://127.0.0.1:1/a", "ws://127.0.0.1:2/b"]
            .iter()
            .map(|u| u.to_string())
            .collect();
        let t = parse_targets(&urls, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.list.len(), t.spread, t.senders), (2, 2, None));
        // A sender URL of the list is that one; another one comes after the list.
        let t = parse_targets(&urls, Some("ws://127.0.0.1:2/b")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.list.len(), t.senders), (2, Some(1)));
        let t = parse_targets(&urls, Some("ws://127.0.0.1:3/")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.list.len(), t.spread, t.senders), (3, 2, Some(2)));
        assert_eq!(t.urls[2], "ws://127.0.0.1:3/");
        assert!(all_loopback(&t.list));
        assert!(parse_targets(&[], None).is_err());
        assert!(parse_targets(&urls, Some("http://x/")).is_err());
        let common = Common {
            mode: Mode::Channel,
            targets: t,
            sources: Vec::new(),
            total: 10,
            parallel: 10,
            connect_rate: 0.0,
            connect_timeout_ms: 1000,
            senders: 2,
            size: 64,
            msg_rate: 0.0,
            in_flight: 8,
            tag: 1,
            cycles: 0,
            quick_acks: false,
            protocol: None,
            channel: Some("bench".into()),
            deflate: false,
            payload: Payload::Letters,
        };
        let plans = split_plans(&common, 2);
        let plan = &plans[1];
        assert_eq!(plan.targets.len(), 3);
        assert_eq!(target_of(plan, 4, false), 0);
        assert_eq!(target_of(plan, 5, false), 1);
        assert_eq!(target_of(plan, 5, true), 2);
    }

    #[test]
    fn shares_cover_everything() {
        let s = split(10, 3);
        assert_eq!(s, vec![(0, 4), (4, 3), (7, 3)]);
    }
}
