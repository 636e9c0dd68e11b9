//! Every setting of the standalone server, from one table: defaults, the TOML file,
//! `WSHUB_<KEY>` environment variables and `--<key>` flags, merged in that order
//! (flags win). The same table prints `wshub config` and builds the flags, so a key
//! cannot exist in one place and be missing in another.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How a key's value is written and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text (may be empty).
    Text,
    /// A whole number ≥ 0.
    Count,
    /// A duration like `60s`, `300ms`, `1m`.
    Duration,
    /// A list; on the command line and in the environment, comma-separated.
    List,
    /// One of the listed words.
    Choice(&'static [&'static str]),
}

/// One configuration key.
#[derive(Debug)]
pub struct Key {
    /// The TOML key; the flag is `--` + name with `-` for `_`, the env var `WSHUB_` + NAME.
    pub name: &'static str,
    /// How the value is written.
    pub kind: Kind,
    /// The default, written as in the TOML file.
    pub default: &'static str,
    /// One line for `wshub config` and `--help`.
    pub doc: &'static str,
}

impl Key {
    /// The command-line flag, without the leading `--`.
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }
    /// The environment variable.
    pub fn env(&self) -> String {
        format!("WSHUB_{}", self.name.to_ascii_uppercase())
    }
}

const fn key(name: &'static str, kind: Kind, default: &'static str, doc: &'static str) -> Key {
    Key {
        name,
        kind,
        default,
        doc,
    }
}

/// Every key, in the order `wshub config` prints them.
pub const KEYS: &[Key] = &[
    key(
        "bind",
        Kind::Text,
        "\"127.0.0.1:8080\"",
        "Address and port to listen on (port 0 picks a free port).",
    ),
    key(
        "internal_bind",
        Kind::Text,
        "\"\"",
        "Address for /metrics, /healthz, /readyz, /admin and /api/*, served there and only there (keep it off the internet). Empty: all on bind.",
    ),
    key(
        "metrics",
        Kind::Choice(&["true", "false"]),
        "true",
        "Serve GET /metrics (the Prometheus text format, no key: put it on internal_bind).",
    ),
    key(
        "tls_cert",
        Kind::Text,
        "\"\"",
        "PEM certificate chain: with tls_key, the listener speaks HTTPS and wss://; SIGHUP reads both again. Empty: plain HTTP.",
    ),
    key(
        "tls_key",
        Kind::Text,
        "\"\"",
        "PEM private key of tls_cert (PKCS#8, PKCS#1 or SEC1).",
    ),
    key(
        "jwt_hmac_secret",
        Kind::Text,
        "\"\"",
        "JWT HMAC secret (HS256/384/512, 16 bytes or more). With any jwt_* key set, every connection needs a token (?token=, Authorization: Bearer, or a wshub.v1 connect command).",
    ),
    key(
        "jwt_public_key",
        Kind::Text,
        "\"\"",
        "PEM file of the JWT public key: RSA (RS*/PS*), EC (ES256/384) or Ed25519 (EdDSA).",
    ),
    key(
        "jwt_jwks_file",
        Kind::Text,
        "\"\"",
        "JWKS file: JWT keys chosen by the token's `kid`.",
    ),
    key(
        "jwt_audience",
        Kind::Text,
        "\"\"",
        "When set, a token's `aud` must hold it.",
    ),
    key(
        "jwt_issuer",
        Kind::Text,
        "\"\"",
        "When set, a token's `iss` must be it.",
    ),
    key(
        "allow_anonymous",
        Kind::Choice(&["true", "false"]),
        "false",
        "With jwt_* keys: admit connections without a token (anonymous).",
    ),
    key(
        "html",
        Kind::Text,
        "\"\"",
        "Home page template file (minijinja, HTML-escaped): `{{ host }}` (or the Go original's `{{.}}`, `{{$}}`) becomes the request's Host. Empty: the built-in chat page.",
    ),
    key(
        "static",
        Kind::Text,
        "\"\"",
        "Directory served under /static/. Empty: /static/ is 404.",
    ),
    key(
        "on_message",
        Kind::Choice(&["chat", "webhook", "stdio"]),
        "\"chat\"",
        "Where inbound messages go: chat (broadcast to all), webhook (POST as JSON), stdio (JSON lines on stdout; stdin lines are broadcast).",
    ),
    key(
        "webhook_url",
        Kind::Text,
        "\"\"",
        "URL that receives each inbound message with on_message = \"webhook\".",
    ),
    key(
        "webhook_timeout",
        Kind::Duration,
        "\"5s\"",
        "Timeout of one webhook request.",
    ),
    key(
        "webhook_retries",
        Kind::Count,
        "3",
        "Retries of a failed webhook request (with doubling backoff from 100ms).",
    ),
    key(
        "webhook_queue",
        Kind::Count,
        "1024",
        "Messages waiting for the webhook; when full, new ones are dropped and logged.",
    ),
    key(
        "api_key",
        Kind::Text,
        "\"\"",
        "Bearer token for /api/* (broadcast, publish, channels, info, stats, drain) and the /admin dashboard. Empty: the API is off (404).",
    ),
    key(
        "api_max_body_size",
        Kind::Count,
        "1048576",
        "Largest API request body in bytes (413 above).",
    ),
    key(
        "allowed_origins",
        Kind::List,
        "[]",
        "Browser origins allowed besides the page's own host, e.g. [\"https://app.example.com\"]; [\"*\"] allows any.",
    ),
    key(
        "max_message_size",
        Kind::Count,
        "5120",
        "Largest inbound message in bytes, across fragments; larger closes with 1009.",
    ),
    key(
        "pong_wait",
        Kind::Duration,
        "\"60s\"",
        "Drop a connection that sent no frame for this long.",
    ),
    key(
        "ping_period",
        Kind::Duration,
        "\"54s\"",
        "Ping each connection this often; must be shorter than pong_wait.",
    ),
    key(
        "write_wait",
        Kind::Duration,
        "\"10s\"",
        "Drop a connection whose write stalls longer than this.",
    ),
    key(
        "send_queue",
        Kind::Count,
        "256",
        "Messages waiting per connection once its kernel buffer is full; past it the client is evicted with 1008 \"slow consumer\".",
    ),
    key(
        "send_queue_bytes",
        Kind::Count,
        "1048576",
        "Bytes waiting per connection once its kernel buffer is full (one message always fits); past it, evicted with 1008.",
    ),
    key(
        "read_buffer_size",
        Kind::Count,
        "1024",
        "Most bytes one read takes (a per-thread buffer: idle connections hold none).",
    ),
    key(
        "write_buffer_size",
        Kind::Count,
        "1024",
        "No effect (kept from the Go original): frames are written from shared buffers, up to 64 per write.",
    ),
    key(
        "compression",
        Kind::Choice(&["true", "false"]),
        "false",
        "Offer permessage-deflate to clients that ask (browsers do); a broadcast is compressed once for all of them.",
    ),
    key(
        "compression_min_size",
        Kind::Count,
        "256",
        "Messages with fewer payload bytes than this are sent uncompressed.",
    ),
    key(
        "handshake_timeout",
        Kind::Duration,
        "\"10s\"",
        "An HTTP request or WebSocket handshake must arrive in full within this time.",
    ),
    key(
        "max_connections",
        Kind::Count,
        "0",
        "Open connections at most; over it, upgrades get 503. 0: no limit (the fd limit still applies).",
    ),
    key(
        "max_connections_per_ip",
        Kind::Count,
        "0",
        "Open connections per client IP at most; over it, 503. 0: no limit. Behind a proxy every client shares its IP.",
    ),
    key(
        "connect_rate_per_ip",
        Kind::Count,
        "0",
        "New connections per second per client IP (that many at once); over it, upgrades get 429 with Retry-After. 0: no limit. Behind a proxy every client shares its IP.",
    ),
    key(
        "client_rate",
        Kind::Count,
        "0",
        "Messages per second each connection may send; over it a wshub.v1 command gets error 429 and a raw message is dropped (counted: /api/stats rate_limited); still over after client_burst more, closed with 1008 \"rate limit\". Pings and pongs are free. 0: no limit.",
    ),
    key(
        "client_burst",
        Kind::Count,
        "0",
        "With client_rate: messages a connection may send at once, and how many more over its rate before it is closed. 0: twice client_rate.",
    ),
    key(
        "channels",
        Kind::List,
        "[\"*\"]",
        "Channel names wshub.v1 clients may use: exact names or prefixes ending in `*` (\"chat:*\"); [\"*\"] admits all. Others get error 404.",
    ),
    key(
        "client_publish",
        Kind::Choice(&["true", "false"]),
        "true",
        "Whether wshub.v1 clients may publish to channels (false: only the publish API; clients get error 403).",
    ),
    key(
        "history_size",
        Kind::Count,
        "100",
        "Publications kept per channel for history and recovery after a reconnect; 0 keeps none.",
    ),
    key(
        "history_ttl",
        Kind::Duration,
        "\"300s\"",
        "How long a publication stays in a channel's history.",
    ),
    key(
        "broker",
        Kind::Text,
        "\"memory\"",
        "Where channels live: memory (this node alone), redis://HOST:PORT[/DB] (every node on that Redis is one hub) or redis+cluster://HOST:PORT[,HOST:PORT...] (a Redis Cluster, sharded pub/sub).",
    ),
    key(
        "node_name",
        Kind::Text,
        "\"\"",
        "This node's name among the nodes on one Redis. Empty: host name and process id.",
    ),
    key(
        "presence_ttl",
        Kind::Duration,
        "\"60s\"",
        "With Redis: a presence entry (and a node's report) outlives its node's last refresh by this much; refreshed every third of it.",
    ),
    key(
        "broker_prefix",
        Kind::Text,
        "\"wshub\"",
        "With Redis: every key and channel starts with this, so several hubs can share one Redis.",
    ),
    key(
        "max_subscriptions",
        Kind::Count,
        "128",
        "Channels one connection may subscribe to at once; over it, error 429. 0: no limit.",
    ),
    key(
        "drain_timeout",
        Kind::Duration,
        "\"5s\"",
        "On SIGINT/SIGTERM, how long to wait for connections to close; after a drain's drain_period, how much longer it waits for the last ones.",
    ),
    key(
        "drain_period",
        Kind::Duration,
        "\"30s\"",
        "On SIGUSR1 or POST /api/drain: close every client with 1012 \"service restart\", spread evenly over this long (new upgrades get 503), then exit.",
    ),
    key(
        "log_format",
        Kind::Choice(&["human", "json"]),
        "\"human\"",
        "Log format on stderr; RUST_LOG filters (default info).",
    ),
];

/// A checked value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text or a choice.
    Text(String),
    /// A count.
    Count(u64),
    /// A duration.
    Duration(Duration),
    /// A list of strings.
    List(Vec<String>),
}

/// A refused setting: which key, from where, and why. Printed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError(pub String);

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingError {}

/// The merged settings, every key present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings(BTreeMap<&'static str, Value>);

impl Settings {
    /// The defaults.
    pub fn defaults() -> Settings {
        let mut map = BTreeMap::new();
        for key in KEYS {
            // The default literals are ours and parse by construction (a unit test checks).
            if let Ok(value) = parse_toml_literal(key, key.default) {
                map.insert(key.name, value);
            }
        }
        Settings(map)
    }

    /// Overlays a TOML document (a config file).
    pub fn apply_toml(&mut self, text: &str, origin: &str) -> Result<(), SettingError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            SettingError(format!("{origin}: not valid TOML: {}", e.message()))
        })?;
        for (name, raw) in table {
            let key = find(&name).ok_or_else(|| {
                SettingError(format!(
                    "{origin}: unknown config key `{name}` (see `wshub config` for the keys)"
                ))
            })?;
            let value = from_toml(key, &raw)
                .map_err(|why| SettingError(format!("{origin}: `{}`: {why}", key.name)))?;
            self.0.insert(key.name, value);
        }
        Ok(())
    }

    /// Overlays `WSHUB_<KEY>` variables found by `lookup`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), SettingError> {
        for key in KEYS {
            let var = key.env();
            if let Some(raw) = lookup(&var) {
                self.set_text(key, &raw, &format!("environment {var}"))?;
            }
        }
        Ok(())
    }

    /// Sets one key from text as written on a command line or in the environment.
    pub fn set_text(
        &mut self,
        key: &'static Key,
        raw: &str,
        origin: &str,
    ) -> Result<(), SettingError> {
        let value = from_text(key, raw)
            .map_err(|why| SettingError(format!("`{}` (from {origin}): {why}", key.name)))?;
        self.0.insert(key.name, value);
        Ok(())
    }

    /// A text or choice value (empty if unset).
    pub fn text(&self, name: &str) -> &str {
        match self.0.get(name) {
            Some(Value::Text(s)) => s,
            _ => "",
        }
    }

    /// A text value, `None` when empty.
    pub fn optional(&self, name: &str) -> Option<&str> {
        Some(self.text(name)).filter(|s| !s.is_empty())
    }

    /// A path value, `None` when empty.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.optional(name).map(PathBuf::from)
    }

    /// A count value.
    pub fn count(&self, name: &str) -> usize {
        match self.0.get(name) {
            Some(Value::Count(n)) => usize::try_from(*n).unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    /// A duration value.
    pub fn duration(&self, name: &str) -> Duration {
        match self.0.get(name) {
            Some(Value::Duration(d)) => *d,
            _ => Duration::ZERO,
        }
    }

    /// A list value.
    pub fn list(&self, name: &str) -> Vec<String> {
        match self.0.get(name) {
            Some(Value::List(l)) => l.clone(),
            _ => Vec::new(),
        }
    }

    /// The effective settings as a TOML file (`wshub check`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for key in KEYS {
            let literal = match self.0.get(key.name) {
                Some(Value::Text(s)) => toml::Value::String(s.clone()).to_string(),
                Some(Value::Count(n)) => n.to_string(),
                Some(Value::Duration(d)) => format!("\"{}\"", wshub::format_duration(*d)),
                Some(Value::List(items)) => {
                    toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect())
                        .to_string()
                }
                None => continue,
            };
            out.push_str(&format!("{} = {literal}\n", key.name));
        }
        out
    }

    /// The hub's part of the settings.
    pub fn hub_config(&self) -> wshub::Config {
        wshub::Config {
            max_message_size: self.count("max_message_size"),
            pong_wait: self.duration("pong_wait"),
            ping_period: self.duration("ping_period"),
            write_wait: self.duration("write_wait"),
            send_queue: self.count("send_queue"),
            send_queue_bytes: self.count("send_queue_bytes"),
            read_buffer_size: self.count("read_buffer_size"),
            write_buffer_size: self.count("write_buffer_size"),
            compression: self.text("compression") == "true",
            compression_min_size: self.count("compression_min_size"),
            allowed_origins: self.list("allowed_origins"),
            drain_timeout: self.duration("drain_timeout"),
            drain_period: self.duration("drain_period"),
            handshake_timeout: self.duration("handshake_timeout"),
            max_connections: self.count("max_connections"),
            max_connections_per_ip: self.count("max_connections_per_ip"),
            client_rate: self.count("client_rate"),
            // 0 in the file is the default: twice client_rate.
            client_burst: Some(self.count("client_burst")).filter(|&burst| burst > 0),
            connect_rate_per_ip: self.count("connect_rate_per_ip"),
            channels: self.list("channels"),
            client_publish: self.text("client_publish") == "true",
            history_size: self.count("history_size"),
            history_ttl: self.duration("history_ttl"),
            max_subscriptions: self.count("max_subscriptions"),
            jwt_hmac_secret: self.optional("jwt_hmac_secret").map(str::to_owned),
            // Files: read by the binary's plan, which names the key when one cannot be.
            jwt_public_key_pem: None,
            jwt_jwks: None,
            jwt_audience: self.optional("jwt_audience").map(str::to_owned),
            jwt_issuer: self.optional("jwt_issuer").map(str::to_owned),
            allow_anonymous: self.text("allow_anonymous") == "true",
        }
    }
}

/// Variables of our own scripts (test, benchmark, browser tests), not settings.
const NOT_SETTINGS: &[&str] = &[
    "WSHUB_SHARED",
    "WSHUB_WORK",
    "WSHUB_BIN",
    "WSHUB_AUTOBAHN",
    "WSHUB_FUZZ_SECONDS",
];

/// One warning per `WSHUB_*` variable among `names` that is no setting (a typo would
/// otherwise do nothing), naming the closest key.
pub fn unknown_env(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut warnings: Vec<String> = names
        .filter(|name| name.starts_with("WSHUB_") && !NOT_SETTINGS.contains(&name.as_str()))
        .filter(|name| !KEYS.iter().any(|key| key.env() == *name))
        .map(|name| {
            let closest = KEYS
                .iter()
                .min_by_key(|key| edit_distance(&key.env(), &name))
                .map(|key| format!("; did you mean {} (`{}`)?", key.env(), key.name))
                .unwrap_or_default();
            format!("unknown environment variable {name} is ignored{closest}")
        })
        .collect();
    warnings.sort();
    warnings
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// The key called `name`.
pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The full default config file with a comment per key (`wshub config`).
pub fn default_file() -> String {
    let mut out = String::from(
        "# wshub configuration. Every key can also be set as WSHUB_<KEY> in the environment\n\
         # or as --<key> on the command line (with - for _); flags > env > file > defaults.\n\
         # Durations are written like \"60s\" or \"300ms\".\n",
    );
    for key in KEYS {
        out.push_str(&format!(
            "\n# {}\n{} = {}\n",
            key.doc, key.name, key.default
        ));
    }
    out
}

fn parse_toml_literal(key: &Key, literal: &str) -> Result<Value, String> {
    let table: toml::Table = format!("v = {literal}")
        .parse()
        .map_err(|e: toml::de::Error| e.to_string())?;
    let raw = table.get("v").ok_or("empty")?;
    from_toml(key, raw)
}

fn from_toml(key: &Key, raw: &toml::Value) -> Result<Value, String> {
    match (key.kind, raw) {
        (Kind::Count, toml::Value::Integer(n)) => u64::try_from(*n)
            .map(Value::Count)
            .map_err(|_| format!("expected a whole number ≥ 0, got {n}")),
        (Kind::List, toml::Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("expected a list of strings, got {item}"))
            })
            .collect::<Result<_, _>>()
            .map(Value::List),
        (_, toml::Value::String(s)) => from_text(key, s),
        (Kind::Choice(_), toml::Value::Boolean(b)) => from_text(key, &b.to_string()),
        (kind, other) => Err(format!("expected {}, got {other}", describe(kind))),
    }
}

fn from_text(key: &Key, raw: &str) -> Result<Value, String> {
    let raw = raw.trim();
    match key.kind {
        Kind::Text => Ok(Value::Text(raw.to_owned())),
        Kind::Count => raw
            .replace('_', "")
            .parse::<u64>()
            .map(Value::Count)
            .map_err(|_| format!("expected {}, got `{raw}`", describe(key.kind))),
        Kind::Duration => parse_duration(raw).map(Value::Duration),
        Kind::List => Ok(Value::List(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
        Kind::Choice(choices) => {
            if choices.contains(&raw) {
                Ok(Value::Text(raw.to_owned()))
            } else {
                Err(format!(
                    "expected one of {}, got `{raw}`",
                    choices.join(", ")
                ))
            }
        }
    }
}

/// `60s`, `300ms`, `1m`, `1h 30m`: a number with a unit (a bare number is refused, so a
/// forgotten unit cannot turn seconds into milliseconds).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    if raw.chars().all(|c| c.is_ascii_digit()) && !raw.is_empty() {
        return Err(format!(
            "`{raw}` has no unit: write e.g. `{raw}s` or `{raw}ms`"
        ));
    }
    humantime::parse_duration(raw)
        .map_err(|_| format!("expected a duration like `60s` or `300ms`, got `{raw}`"))
}

fn describe(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "a string",
        Kind::Count => "a whole number ≥ 0",
        Kind::Duration => "a duration like \"60s\" or \"300ms\"",
        Kind::List => "a list of strings",
        Kind::Choice(_) => "one of the listed words",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_library() {
        let s = Settings::defaults();
        assert_eq!(s.0.len(), KEYS.len(), "every default literal parses");
        assert_eq!(s.hub_config(), wshub::Config::default());
    }

    #[test]
    fn printed_config_parses_back_to_the_defaults() {
        let mut s = Settings::defaults();
        s.apply_toml(&default_file(), "test").unwrap();
        assert_eq!(s, Settings::defaults());
    }

    #[test]
    fn errors_name_the_key_and_origin() {
        let mut s = Settings::defaults();
        let e = s.apply_toml("pong_wait = 60", "wshub.toml").unwrap_err().0;
        assert!(e.contains("`pong_wait`") && e.contains("wshub.toml"), "{e}");
        let e = s.apply_toml("nope = 1", "f.toml").unwrap_err().0;
        assert!(e.contains("unknown config key `nope`"), "{e}");
        let e = s
            .apply_env(|v| (v == "WSHUB_MAX_MESSAGE_SIZE").then(|| "big".to_string()))
            .unwrap_err()
            .0;
        assert!(
            e.contains("max_message_size") && e.contains("WSHUB_MAX_MESSAGE_SIZE"),
            "{e}"
        );
    }

    #[test]
    fn rendered_settings_parse_back() {
        let mut s = Settings::defaults();
        s.apply_toml(
            "api_key = \"a\\\"b\"\nallowed_origins = [\"*\"]\npong_wait = \"1500ms\"",
            "t",
        )
        .unwrap();
        let mut back = Settings::defaults();
        back.apply_toml(&s.render(), "rendered").unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn unknown_env_names_the_closest_key() {
        let warnings = unknown_env(
            [
                "WSHUB_SNED_QUEUE",
                "WSHUB_SEND_QUEUE",
                "WSHUB_SHARED",
                "PATH",
            ]
            .into_iter()
            .map(String::from),
        );
        assert_eq!(
            warnings,
            [
                "unknown environment variable WSHUB_SNED_QUEUE is ignored; did you mean WSHUB_SEND_QUEUE (`send_queue`)?"
            ]
        );
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("60").is_err());
    }
}
