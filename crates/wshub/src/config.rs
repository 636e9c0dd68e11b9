//! The hub's tunables: plain data with the seed's values as defaults.
//!
//! This module owns the *meaning* of each limit and the one `validate()` that rejects
//! nonsense before anything listens. It never reads files, environment variables or flags:
//! the `wshub` binary does that and hands us a finished [`Config`].

use std::time::Duration;

/// Every limit and timeout of the hub. `Config::default()` is the Go original's behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest inbound message in bytes, counted across fragments; larger → close 1009.
    pub max_message_size: usize,
    /// A connection from which no frame arrived for this long is dropped.
    pub pong_wait: Duration,
    /// How often the server pings each connection; must be shorter than `pong_wait` so an
    /// idle but healthy peer always answers in time.
    pub ping_period: Duration,
    /// A connection whose socket takes no byte for this long, while we have bytes for
    /// it, is dropped.
    pub write_wait: Duration,
    /// Messages a connection may have waiting in user space once the kernel refuses more
    /// (its socket buffer is full); past it, evicted with 1008 "slow consumer".
    pub send_queue: usize,
    /// Bytes a connection may have waiting in user space, as `send_queue` (one message is
    /// always allowed, however large).
    pub send_queue_bytes: usize,
    /// Most bytes one read system call takes. The buffer is the worker thread's, shared
    /// by its connections: an idle connection holds no read buffer.
    pub read_buffer_size: usize,
    /// Kept from the Go original for compatibility; it has no effect: frames are written
    /// straight from their shared buffers, up to 64 per system call.
    pub write_buffer_size: usize,
    /// Offer permessage-deflate (RFC 7692) to clients that ask for it.
    pub compression: bool,
    /// Messages smaller than this (payload bytes) are sent uncompressed.
    pub compression_min_size: usize,
    /// Browser origins allowed to upgrade besides the same host; `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// How long a shutdown waits for connections to finish their close handshake; after a
    /// drain's `drain_period`, how much longer the drain waits for the last ones.
    pub drain_timeout: Duration,
    /// A drain ([`Hub::drain`](crate::Hub::drain)) closes the node's connections with 1012
    /// "service restart" spread evenly over this long, so their clients reconnect to
    /// other nodes in a trickle rather than all at once.
    pub drain_period: Duration,
    /// An HTTP request (including a WebSocket upgrade) must arrive in full within this time.
    pub handshake_timeout: Duration,
    /// Open connections at most (0 = no limit); over it, upgrades get 503.
    pub max_connections: usize,
    /// Open connections per client IP address at most (0 = no limit); over it, 503.
    pub max_connections_per_ip: usize,
    /// Inbound messages per second per connection (0 = no limit), a token bucket. Over it, a
    /// `wshub.v1` command gets error 429 and a raw message is dropped (counted in
    /// [`Hub::rate_limited`](crate::Hub::rate_limited)); a client still over it after
    /// `client_burst` more messages is closed with 1008 "rate limit". Pings, pongs and
    /// closes are never counted.
    pub client_rate: usize,
    /// Messages a connection may send at once (the bucket's size), and how many more over
    /// its budget before it is closed. `None`: twice `client_rate`. Needs `client_rate`.
    pub client_burst: Option<usize>,
    /// New connections per second per client IP address (0 = no limit), `connect_rate_per_ip`
    /// at once; over it, upgrades get 429 with `Retry-After`.
    pub connect_rate_per_ip: usize,
    /// Channel names clients may use: exact names, or prefixes ending in `*` (`chat:*`);
    /// `*` alone admits every name. Others get error 404 (unknown channel).
    pub channels: Vec<String>,
    /// Whether `wshub.v1` clients may publish (otherwise only the server: error 403).
    pub client_publish: bool,
    /// Publications kept per channel for history and recovery (0: none).
    pub history_size: usize,
    /// How long a publication stays in history.
    pub history_ttl: Duration,
    /// Channels one connection may be subscribed to at once (0 = no limit); over it, 429.
    pub max_subscriptions: usize,
    /// JWT HMAC secret (HS256/384/512). With any `jwt_*` key set, connections need a token.
    pub jwt_hmac_secret: Option<String>,
    /// JWT public key, PEM text (RSA → RS*/PS*, EC → ES256/384, Ed25519 → EdDSA).
    pub jwt_public_key_pem: Option<String>,
    /// A JWKS document (JSON text): keys chosen by the token's `kid`.
    pub jwt_jwks: Option<String>,
    /// When set, a token's `aud` must hold it.
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must be it.
    pub jwt_issuer: Option<String>,
    /// With JWT keys set: whether connections without a token are admitted (anonymous).
    pub allow_anonymous: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: 5120,
            pong_wait: Duration::from_secs(60),
            ping_period: Duration::from_secs(54),
            write_wait: Duration::from_secs(10),
            send_queue: 256,
            send_queue_bytes: 1 << 20,
            read_buffer_size: 1024,
            write_buffer_size: 1024,
            compression: false,
            compression_min_size: 256,
            allowed_origins: Vec::new(),
            drain_timeout: Duration::from_secs(5),
            drain_period: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 0,
            max_connections_per_ip: 0,
            client_rate: 0,
            client_burst: None,
            connect_rate_per_ip: 0,
            channels: vec!["*".to_owned()],
            client_publish: true,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            max_subscriptions: 128,
            jwt_hmac_secret: None,
            jwt_public_key_pem: None,
            jwt_jwks: None,
            jwt_audience: None,
            jwt_issuer: None,
            allow_anonymous: false,
        }
    }
}

/// A config value that cannot work, with the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config key at fault (as written in the TOML file).
    pub key: &'static str,
    /// Why the value was refused.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid config `{}`: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks every value and the relations between them; the first problem wins.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: String| Err(ConfigError { key, reason });
        let positive: [(&'static str, usize); 5] = [
            ("max_message_size", self.max_message_size),
            ("send_queue", self.send_queue),
            ("send_queue_bytes", self.send_queue_bytes),
            ("read_buffer_size", self.read_buffer_size),
            ("write_buffer_size", self.write_buffer_size),
        ];
        for (key, value) in positive {
            if value == 0 {
                return err(key, "must be at least 1".into());
            }
        }
        let durations: [(&'static str, Duration); 6] = [
            ("pong_wait", self.pong_wait),
            ("ping_period", self.ping_period),
            ("write_wait", self.write_wait),
            ("drain_timeout", self.drain_timeout),
            ("drain_period", self.drain_period),
            ("handshake_timeout", self.handshake_timeout),
        ];
        for (key, value) in durations {
            if value.is_zero() {
                return err(key, "must be longer than 0".into());
            }
        }
        // Deadlines are instants `now + duration`: a duration past what the clock can add
        // would panic there. A year is more than any of them can mean.
        let year = Duration::from_secs(365 * 24 * 3600);
        for (key, value) in durations
            .into_iter()
            .chain([("history_ttl", self.history_ttl)])
        {
            if value > year {
                return err(key, "must be at most a year (365d)".into());
            }
        }
        if self.ping_period >= self.pong_wait {
            return err(
                "ping_period",
                format!(
                    "ping_period ({}) must be shorter than pong_wait ({}), or healthy idle clients are dropped",
                    format_duration(self.ping_period),
                    format_duration(self.pong_wait)
                ),
            );
        }
        for (key, rate) in [
            ("client_rate", self.client_rate),
            ("connect_rate_per_ip", self.connect_rate_per_ip),
        ] {
            if rate > MAX_RATE {
                return err(
                    key,
                    format!(
                        "{rate} per second is more than the token bucket resolves (at most {MAX_RATE}); 0 turns it off"
                    ),
                );
            }
        }
        match (self.client_rate, self.client_burst) {
            (0, Some(_)) => {
                return err(
                    "client_burst",
                    "is set but client_rate is 0 (off): a burst needs a rate".into(),
                );
            }
            (_, Some(0)) => {
                return err(
                    "client_burst",
                    "must be at least 1 (unset: twice client_rate)".into(),
                );
            }
            (_, Some(burst)) if u32::try_from(burst).is_err() => {
                return err("client_burst", format!("must be at most {}", u32::MAX));
            }
            _ => {}
        }
        if self.history_size > 0 && self.history_ttl.is_zero() {
            return err(
                "history_ttl",
                "must be longer than 0 when history_size is set".into(),
            );
        }
        for pattern in &self.channels {
            let stem = pattern.strip_suffix('*').unwrap_or(pattern);
            if (pattern.is_empty() || stem.contains('*'))
                || pattern.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return err(
                    "channels",
                    format!("`{pattern}` is not a channel name or a prefix ending in `*`"),
                );
            }
        }
        for origin in &self.allowed_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return err(
                    "allowed_origins",
                    format!("`{origin}` is not `*` nor an origin like `https://example.com`"),
                );
            }
        }
        crate::auth::Verifier::from_config(self)?;
        Ok(())
    }

    /// Whether connections must show a token (a `jwt_*` key is set).
    pub fn requires_tokens(&self) -> bool {
        self.jwt_hmac_secret.is_some()
            || self.jwt_public_key_pem.is_some()
            || self.jwt_jwks.is_some()
    }
}

/// The fastest `client_rate` / `connect_rate_per_ip`: the token buckets count in
/// nanoseconds, so anything faster would refill in no time at all.
pub(crate) const MAX_RATE: usize = 1_000_000_000;

/// Whether a channel pattern (an exact name, or a prefix ending in `*`) admits `channel`.
pub(crate) fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

impl Config {
    /// Whether a `channels` pattern admits this channel name.
    pub fn channel_allowed(&self, channel: &str) -> bool {
        self.channels
            .iter()
            .any(|pattern| pattern_matches(pattern, channel))
    }
}

/// Formats a duration the way config files write it, exactly: `60s`, `300ms`, `250us`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    match nanos {
        n if n % 1_000_000_000 == 0 => format!("{}s", n / 1_000_000_000),
        n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{}us", n / 1_000),
        n => format!("{n}ns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_and_valid() {
        let c = Config::default();
        assert_eq!(c.max_message_size, 5120);
        assert_eq!(c.ping_period, Duration::from_secs(54));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn ping_period_must_be_below_pong_wait_naming_both() {
        let c = Config {
            ping_period: Duration::from_secs(60),
            ..Config::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "ping_period");
        assert!(e.reason.contains("pong_wait"), "{e}");
    }

    #[test]
    fn rate_limits_are_checked_naming_the_key() {
        let key_of = |c: Config| c.validate().unwrap_err().key;
        let burst_alone = Config {
            client_burst: Some(5),
            ..Config::default()
        };
        let e = burst_alone.validate().unwrap_err();
        assert_eq!(e.key, "client_burst");
        assert!(e.reason.contains("client_rate"), "{e}");
        let no_burst = Config {
            client_rate: 5,
            client_burst: Some(0),
            ..Config::default()
        };
        assert_eq!(key_of(no_burst), "client_burst");
        let too_fast = Config {
            connect_rate_per_ip: MAX_RATE + 1,
            ..Config::default()
        };
        assert_eq!(key_of(too_fast), "connect_rate_per_ip");
        let too_fast = Config {
            client_rate: MAX_RATE + 1,
            ..Config::default()
        };
        assert_eq!(key_of(too_fast), "client_rate");
        let fine = Config {
            client_rate: 5,
            client_burst: Some(1),
            connect_rate_per_ip: 10,
            ..Config::default()
        };
        assert_eq!(fine.validate(), Ok(()));
    }

    #[test]
    fn durations_format_as_written() {
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1500us");
        assert_eq!(format_duration(Duration::from_nanos(711)), "711ns");
    }
}
