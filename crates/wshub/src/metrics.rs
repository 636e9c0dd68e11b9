//! What an operator watches: the hub's counters in the Prometheus text format
//! (`GET /metrics`, from `prometheus-client`), and the recent evictions and errors the
//! dashboard lists.
//!
//! Every handle is made once, with the hub, so counting costs an atomic add, never a
//! lookup by label. The counts made once per message per recipient (messages and bytes
//! sent: a broadcast to 10k connections is 10k of them) cost less still: inside a cork
//! round a thread adds them to a tally of its own, added to the shared counters when the
//! round's writes go out (`wire/cork.rs` calls [`flush_thread`]), so fan-out threads do
//! not fight over one cache line per message. Values the hub already holds (connections,
//! subscriptions, channels, the broker's gaps) are read when scraped, by the hub's
//! collector, not kept twice.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// The prefix of every metric's name.
const PREFIX: &str = "wshub";

/// How many evictions and errors [`Metrics::recent`] keeps.
const RECENT: usize = 32;

/// A data frame's type, as a label and as an index into the per-type handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text = 0,
    Binary = 1,
}

impl Kind {
    pub(crate) fn of(text: bool) -> Kind {
        if text { Kind::Text } else { Kind::Binary }
    }

    const ALL: [Kind; 2] = [Kind::Text, Kind::Binary];

    fn label(self) -> [(&'static str, &'static str); 1] {
        [(
            "type",
            match self {
                Kind::Text => "text",
                Kind::Binary => "binary",
            },
        )]
    }
}

/// Which limit refused an inbound message or a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    /// `client_rate` / `client_burst`: a message.
    ClientRate = 0,
    /// `connect_rate_per_ip`: an upgrade.
    ConnectRate = 1,
}

type TypeFamily = Family<[(&'static str, &'static str); 1], Counter>;

/// Close codes with a series of their own: every code the hub sends, and the usual ones
/// from clients. Any other (a client's 3xxx or 4xxx) is counted as `other`, so clients
/// cannot make series without end.
const CLOSE_CODES: [(u16, &str); 13] = [
    (1000, "1000"),
    (1001, "1001"),
    (1002, "1002"),
    (1003, "1003"),
    (1005, "1005"),
    (1006, "1006"),
    (1007, "1007"),
    (1008, "1008"),
    (1009, "1009"),
    (1011, "1011"),
    (1012, "1012"),
    (4001, "4001"),
    (4002, "4002"),
];

/// Every status an upgrade is refused with (anything else: `other`).
const REFUSAL_STATUSES: [(u16, &str); 7] = [
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (426, "426"),
    (429, "429"),
    (503, "503"),
];

/// A family whose every series is made in advance: the known codes and `other`.
#[derive(Debug)]
struct ByCode<const N: usize> {
    family: TypeFamily,
    codes: &'static [(u16, &'static str); N],
    handles: [Counter; N],
    other: Counter,
}

impl<const N: usize> ByCode<N> {
    fn new(label: &'static str, codes: &'static [(u16, &'static str); N]) -> Self {
        let family = TypeFamily::default();
        let handles = codes.map(|(_, name)| family.get_or_create_owned(&[(label, name)]));
        let other = family.get_or_create_owned(&[(label, "other")]);
        ByCode {
            family,
            codes,
            handles,
            other,
        }
    }

    fn inc(&self, code: u16) {
        match self.codes.iter().position(|&(known, _)| known == code) {
            Some(i) => self.handles[i].inc(),
            None => self.other.inc(),
        };
    }
}

/// Counter handles of one type, made once.
#[derive(Debug)]
struct PerKind([Counter; 2]);

impl PerKind {
    fn new(family: &TypeFamily) -> PerKind {
        PerKind(Kind::ALL.map(|kind| family.get_or_create_owned(&kind.label())))
    }

    fn add(&self, kind: Kind, n: u64) {
        if n > 0 {
            self.0[kind as usize].inc_by(n);
        }
    }
}

/// One hub's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    accepted: Counter,
    closed: ByCode<13>,
    refused: ByCode<7>,
    messages_received: PerKind,
    bytes_received: PerKind,
    messages_sent: PerKind,
    bytes_sent: PerKind,
    wire_bytes_sent: PerKind,
    deliveries: Counter,
    evictions: Counter,
    publications: Counter,
    recovered: Counter,
    not_recovered: Counter,
    broker_errors: Counter,
    broker_round_trip: Histogram,
    rate_limited: [Counter; 2],
    recent: Mutex<VecDeque<Incident>>,
}

/// Running totals since the hub started; a busy worker's last rounds (at most 32) are
/// added when it next parks.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Totals {
    pub(crate) messages_received: u64,
    pub(crate) messages_sent: u64,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) deliveries: u64,
    pub(crate) evictions: u64,
    pub(crate) publications: u64,
}

/// An eviction or an error, for the dashboard's list.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Incident {
    /// Seconds since the Unix epoch.
    pub(crate) at: f64,
    /// `eviction` (a slow consumer closed with 1008) or `error` (a broker call failed, a
    /// connection closed for a protocol or limit violation).
    pub(crate) kind: &'static str,
    /// What happened, in a line.
    pub(crate) what: String,
}

impl Metrics {
    /// The handles, registered under `wshub_`.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "WebSocket connections that completed their upgrade",
            accepted.clone(),
        );
        let closed = ByCode::new("code", &CLOSE_CODES);
        registry.register(
            "connections_closed",
            "Connections ended, by close code (ours or the client's; 1006: no close frame)",
            closed.family.clone(),
        );
        let refused = ByCode::new("status", &REFUSAL_STATUSES);
        registry.register(
            "handshakes_refused",
            "Upgrade requests refused, by HTTP status",
            refused.family.clone(),
        );
        let per_kind = |registry: &mut Registry, name: &str, help: &str| {
            let family = TypeFamily::default();
            registry.register(name, help, family.clone());
            PerKind::new(&family)
        };
        let messages_received = per_kind(
            &mut registry,
            "messages_received",
            "Data messages received from clients, by frame type",
        );
        let bytes_received = per_kind(
            &mut registry,
            "bytes_received",
            "Payload bytes of the messages received (after inflating), by frame type",
        );
        let messages_sent = per_kind(
            &mut registry,
            "messages_sent",
            "Data messages handed to connections (one per recipient), by frame type",
        );
        let bytes_sent = per_kind(
            &mut registry,
            "bytes_sent",
            "Payload bytes of the messages sent, before compression, by frame type",
        );
        let wire_bytes_sent = per_kind(
            &mut registry,
            "wire_bytes_sent",
            "Bytes of the frames sent as they go on the wire (after compression, with frame headers), by frame type",
        );
        let deliveries = Counter::default();
        registry.register(
            "deliveries",
            "Broadcast and channel messages handed to a recipient",
            deliveries.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "slow_consumer_evictions",
            "Connections closed with 1008 slow consumer: their send queue was full",
            evictions.clone(),
        );
        let publications = Counter::default();
        registry.register(
            "publications",
            "Channel publications accepted through this node (API and clients; an idempotent retry counts again)",
            publications.clone(),
        );
        let recoveries = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "recoveries",
            "Subscriptions with `since`: result recovered (every missed publication) or not_recovered",
            recoveries.clone(),
        );
        let recovered = recoveries.get_or_create_owned(&[("result", "recovered")]);
        let not_recovered = recoveries.get_or_create_owned(&[("result", "not_recovered")]);
        let broker_errors = Counter::default();
        registry.register(
            "broker_errors",
            "Broker calls made for a client or the API that failed (publish, history, presence, subscribe; answered 503)",
            broker_errors.clone(),
        );
        // 50 µs (memory) to about 1.6 s (a Redis on its way down; calls time out at 2 s).
        let broker_round_trip = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register_with_unit(
            "broker_round_trip",
            "Time of a broker call (publish, history, presence)",
            prometheus_client::registry::Unit::Seconds,
            broker_round_trip.clone(),
        );
        let rate_limits = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "rate_limited",
            "Refused by a rate limit: limit client_rate (a message) or connect_rate_per_ip (an upgrade)",
            rate_limits.clone(),
        );
        let rate_limited = [
            rate_limits.get_or_create_owned(&[("limit", "client_rate")]),
            rate_limits.get_or_create_owned(&[("limit", "connect_rate_per_ip")]),
        ];
        Metrics {
            registry: Mutex::new(registry),
            accepted,
            closed,
            refused,
            messages_received,
            bytes_received,
            messages_sent,
            bytes_sent,
            wire_bytes_sent,
            deliveries,
            evictions,
            publications,
            recovered,
            not_recovered,
            broker_errors,
            broker_round_trip,
            rate_limited,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }

    /// Adds what is read when scraped (the hub's gauges).
    pub(crate) fn collect(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .register_collector(collector);
    }

    /// Adds a metric of the application's (a webhook's deliveries, say) under `wshub_`.
    pub(crate) fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .register(name, help, metric);
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing into a String cannot fail; a collector's error would end the text early.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        {
            tracing::error!(%error, "metrics encoding");
        }
        text
    }

    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    /// A connection ended with `code` (ours or the client's).
    pub(crate) fn closed(&self, code: u16) {
        self.closed.inc(code);
    }

    /// We evicted a slow consumer (its send queue was full).
    pub(crate) fn evicted(&self, conn_id: u64) {
        self.evictions.inc();
        self.incident(
            "eviction",
            format!("connection {conn_id}: slow consumer, closed with 1008"),
        );
    }

    /// We closed a connection for breaking a rule (1002, 1007, 1009, 1011): the
    /// dashboard lists it. Closes a client asked for are not incidents.
    pub(crate) fn closed_for(&self, code: u16, reason: &str) {
        if matches!(code, 1002 | 1007 | 1009 | 1011) {
            self.incident(
                "error",
                format!("a connection was closed with {code} {reason}"),
            );
        }
    }

    pub(crate) fn refused(&self, status: u16) {
        self.refused.inc(status);
    }

    /// A run of broadcasts sent whole to `recipients` connections (the fanout's walk,
    /// counted once for all): per kind, messages, payload bytes and wire bytes.
    pub(crate) fn sent_run(&self, counts: &[(u64, u64, u64); 2], recipients: u64) {
        for kind in Kind::ALL {
            let (messages, payload, wire) = counts[kind as usize];
            self.messages_sent.add(kind, messages * recipients);
            self.bytes_sent.add(kind, payload * recipients);
            self.wire_bytes_sent.add(kind, wire * recipients);
        }
    }

    pub(crate) fn deliveries(&self, n: usize) {
        if n > 0 {
            self.deliveries.inc_by(n as u64);
        }
    }

    pub(crate) fn published(&self) {
        self.publications.inc();
    }

    pub(crate) fn recovery(&self, recovered: bool) {
        if recovered {
            self.recovered.inc();
        } else {
            self.not_recovered.inc();
        }
    }

    pub(crate) fn broker_call(&self, took: Duration, error: Option<&dyn std::fmt::Display>) {
        self.broker_round_trip.observe(took.as_secs_f64());
        if let Some(error) = error {
            self.broker_errors.inc();
            self.incident("error", format!("broker: {error}"));
        }
    }

    pub(crate) fn rate_limited(&self, limit: Limit) {
        self.rate_limited[limit as usize].inc();
    }

    /// The running totals the dashboard turns into rates.
    pub(crate) fn totals(&self) -> Totals {
        let sum = |per: &PerKind| per.0.iter().map(Counter::get).sum();
        Totals {
            messages_received: sum(&self.messages_received),
            messages_sent: sum(&self.messages_sent),
            bytes_received: sum(&self.bytes_received),
            bytes_sent: sum(&self.bytes_sent),
            deliveries: self.deliveries.get(),
            evictions: self.evictions.get(),
            publications: self.publications.get(),
        }
    }

    /// The last evictions and errors, oldest first.
    pub(crate) fn recent(&self) -> Vec<Incident> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().cloned().collect()
    }

    fn incident(&self, kind: &'static str, what: String) {
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(Incident { at, kind, what });
    }

    /// A message `kind` of `payload` bytes (`wire` as framed for its recipient) was handed
    /// to a connection. `in_round`: a cork round is open on this thread, which flushes
    /// the tally when it writes.
    pub(crate) fn sent(self: &Arc<Self>, kind: Kind, payload: usize, wire: usize, in_round: bool) {
        if in_round {
            tally(self, |tally| {
                tally.sent[kind as usize] += 1;
                tally.sent_bytes[kind as usize] += payload as u64;
                tally.sent_wire[kind as usize] += wire as u64;
            });
        } else {
            self.messages_sent.add(kind, 1);
            self.bytes_sent.add(kind, payload as u64);
            self.wire_bytes_sent.add(kind, wire as u64);
        }
    }

    /// A message `kind` of `payload` bytes arrived from a client; as [`Metrics::sent`].
    pub(crate) fn received(self: &Arc<Self>, kind: Kind, payload: usize, in_round: bool) {
        if in_round {
            tally(self, |tally| {
                tally.received[kind as usize] += 1;
                tally.received_bytes[kind as usize] += payload as u64;
            });
        } else {
            self.messages_received.add(kind, 1);
            self.bytes_received.add(kind, payload as u64);
        }
    }

    fn add(&self, tally: &Tally) {
        for kind in Kind::ALL {
            let i = kind as usize;
            self.messages_sent.add(kind, tally.sent[i]);
            self.bytes_sent.add(kind, tally.sent_bytes[i]);
            self.wire_bytes_sent.add(kind, tally.sent_wire[i]);
            self.messages_received.add(kind, tally.received[i]);
            self.bytes_received.add(kind, tally.received_bytes[i]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One thread's counts not yet added to its hub's counters.
#[derive(Default)]
struct Tally {
    sent: [u64; 2],
    sent_bytes: [u64; 2],
    sent_wire: [u64; 2],
    received: [u64; 2],
    received_bytes: [u64; 2],
}

/// A thread's tally and the hub it is for; added there when the thread flushes, when
/// it counts for another hub (tests run many in one process), and when it exits.
struct Pending(Option<(Arc<Metrics>, Tally)>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((metrics, tally)) = self.0.take() {
            metrics.add(&tally);
        }
    }
}

thread_local! {
    static PENDING: RefCell<Pending> = const { RefCell::new(Pending(None)) };
}

fn tally(metrics: &Arc<Metrics>, count: impl FnOnce(&mut Tally)) {
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        match &mut pending.0 {
            Some((for_hub, tally)) if Arc::ptr_eq(for_hub, metrics) => count(tally),
            other => {
                if let Some((previous, tally)) = other.take() {
                    previous.add(&tally);
                }
                let mut tally = Tally::default();
                count(&mut tally);
                *other = Some((metrics.clone(), tally));
            }
        }
    });
}

/// Adds this thread's tally to its hub's counters: the end of a cork round.
pub(crate) fn flush_thread() {
    // `try_with`: a round can end while the thread's locals are being torn down.
    let _ = PENDING.try_with(|pending| {
        // The hub's handle stays: taking it would cost the next round a reference
        // count on a line every thread shares.
        if let Ok(mut pending) = pending.try_borrow_mut()
            && let Some((metrics, tally)) = &mut pending.0
        {
            metrics.add(tally);
            *tally = Tally::default();
        }
    });
}
