//! The results of a run: one serializable struct per subcommand (printed as one JSON object
//! with `--json`) and its human-readable rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::hist::Histogram;
use crate::payload::Payload;
use crate::proto::{OffsetCheck, SenderAnomaly};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Latency {
    /// How many values.
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
}

impl Latency {
    /// Percentiles of a µs histogram.
    pub(crate) fn of(hist: &Histogram) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: hist.len(),
            p50_ms: ms(hist.quantile(0.50)),
            p90_ms: ms(hist.quantile(0.90)),
            p99_ms: ms(hist.quantile(0.99)),
            p999_ms: ms(hist.quantile(0.999)),
            max_ms: ms(hist.max()),
            mean_ms: hist.mean() / 1000.0,
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} (mean {}, {} samples)",
            ms(self.p50_ms),
            ms(self.p90_ms),
            ms(self.p99_ms),
            ms(self.p999_ms),
            ms(self.max_ms),
            ms(self.mean_ms),
            self.count
        )
    }
}

/// CPU use of one of the tool's processes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcessCpu {
    /// "coordinator" or "worker N".
    pub(crate) role: String,
    pub(crate) pid: u32,
    /// CPU seconds over the whole run.
    pub(crate) cpu_s: f64,
    /// CPU seconds during the measured phase.
    pub(crate) phase_cpu_s: f64,
    /// Average share of one core during the measured phase, %.
    pub(crate) phase_core_pct: f64,
}

/// The tool's own CPU use.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClientCpu {
    /// What the measured phase was ("opening", "window", "run").
    pub(crate) phase: String,
    /// Its length, s.
    pub(crate) phase_s: f64,
    /// CPU seconds of all the tool's processes over the whole run.
    pub(crate) total_cpu_s: f64,
    /// Per process.
    pub(crate) processes: Vec<ProcessCpu>,
    /// CPU used during the phase by processes that are neither the tool nor the server (with
    /// --server-pid; else the server counts here too), in % of one core, from /proc/stat.
    pub(crate) other_load_pct: f64,
    /// CPUs the tool's processes may run on (their affinity).
    pub(crate) cpus_allowed: usize,
    /// Some process used more than 90% of a core during the phase, or all of them together
    /// more than 90% of the CPUs they may run on: the client may have been the bottleneck.
    pub(crate) client_bound: bool,
}

impl ClientCpu {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "client cpu:        {:.2} s in all; during the {} ({:.2} s): {}",
            self.total_cpu_s,
            self.phase,
            self.phase_s,
            self.processes
                .iter()
                .map(|p| format!("{} {:.0}%", p.role, p.phase_core_pct))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if self.other_load_pct > 10.0 {
            let _ = writeln!(
                out,
                "OTHER LOAD:        other processes used {:.0}% of a core during the {}; \
                 the measurement may be disturbed",
                self.other_load_pct, self.phase
            );
        }
        if self.client_bound {
            let _ = writeln!(
                out,
                "CLIENT-BOUND:      the tool used more than 90% of a core in one process (or of \
                 its {} allowed CPUs in all); these numbers describe the client, not the server",
                self.cpus_allowed
            );
        }
    }
}

/// Server memory for `idle`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerMemory {
    /// The (first) server process.
    pub(crate) pid: u32,
    /// With several --server-pid: all of them (the RSS figures are their sums).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) pids: Vec<u32>,
    /// VmRSS before any connection, KiB.
    pub(crate) rss_before_kib: u64,
    /// Right after the last handshake.
    pub(crate) rss_opened_kib: u64,
    /// At the end of the hold (connections still open).
    pub(crate) rss_after_kib: u64,
    /// Highest sample (once a second).
    pub(crate) rss_peak_kib: u64,
    /// (after - before) / opened.
    pub(crate) bytes_per_conn: f64,
    /// Server CPU seconds while opening.
    pub(crate) open_cpu_s: f64,
}

/// `idle` results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleReport {
    pub(crate) scenario: &'static str,
    /// The (first) --url.
    pub(crate) url: String,
    /// With several --url: all of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) urls: Vec<String>,
    pub(crate) conns: u64,
    /// permessage-deflate was offered (and agreed: a decline fails the run).
    pub(crate) deflate: bool,
    /// The subprotocol asked for (`--subprotocol`, or wshub.v1 with `--subscribe`).
    pub(crate) subprotocol: Option<String>,
    /// The channel every connection subscribed to (`--subscribe`).
    pub(crate) subscribe: Option<String>,
    pub(crate) opened: u64,
    pub(crate) failed: u64,
    /// From the first connect to the last handshake (with --subscribe: subscribe reply), s.
    pub(crate) time_to_open_s: f64,
    /// opened / time_to_open.
    pub(crate) open_rate_per_s: f64,
    pub(crate) hold_s: f64,
    /// Connections lost during the hold.
    pub(crate) dropped: u64,
    /// Pings answered.
    pub(crate) pings: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) server: Option<ServerMemory>,
    pub(crate) workers: usize,
    pub(crate) sources: usize,
    pub(crate) client: ClientCpu,
    pub(crate) wall_s: f64,
}

/// Server CPU for `fanout`: with several --server-pid, sums over all of them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerCpu {
    /// The (first) server process.
    pub(crate) pid: u32,
    /// utime + stime during the window, s.
    pub(crate) cpu_s: f64,
    /// Average share of one core during the window, %.
    pub(crate) core_pct: f64,
    /// Deliveries received during the window / cpu_s.
    pub(crate) deliveries_per_cpu_s: f64,
    /// VmRSS at the end of the window, KiB.
    pub(crate) rss_kib: u64,
    /// With several --server-pid: each one's share.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) processes: Vec<ServerProcess>,
}

/// One of several server processes during the window.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerProcess {
    pub(crate) pid: u32,
    /// Its command name (/proc/PID/comm), e.g. "wshub" or "redis-server".
    pub(crate) name: String,
    /// utime + stime during the window, s.
    pub(crate) cpu_s: f64,
    /// Average share of one core during the window, %.
    pub(crate) core_pct: f64,
    /// VmRSS at the end of the window, KiB.
    pub(crate) rss_kib: u64,
}

/// With several servers: one server's connections and what they received.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UrlReport {
    pub(crate) url: String,
    /// The senders connected here (`--sender-url`).
    pub(crate) senders: bool,
    /// Connections opened to it.
    pub(crate) opened: u64,
    /// Messages sent in the window × opened.
    pub(crate) expected: u64,
    /// Deliveries of the window's messages to its connections.
    pub(crate) delivered: u64,
    /// expected − delivered.
    pub(crate) lost: i64,
    /// Over its connections' measured deliveries.
    pub(crate) latency: Latency,
}

/// `fanout` results (and the part of `channel`'s they share).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FanoutReport {
    /// "fanout" or "channel".
    pub(crate) scenario: &'static str,
    /// The (first) --url.
    pub(crate) url: String,
    /// With several --url: all of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) urls: Vec<String>,
    /// --sender-url, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sender_url: Option<String>,
    pub(crate) conns: u64,
    pub(crate) opened: u64,
    pub(crate) failed: u64,
    pub(crate) senders: u64,
    /// "closed-loop" or "fixed-rate".
    pub(crate) mode: &'static str,
    pub(crate) in_flight: Option<u64>,
    pub(crate) rate: Option<f64>,
    /// Senders that send at all (closed loop with K < S: only K).
    pub(crate) active_senders: u64,
    /// Whether the kernel's quick ACKs were left on (`--quick-acks`).
    pub(crate) quick_acks: bool,
    /// permessage-deflate was offered (and agreed: a decline fails the run).
    pub(crate) deflate: bool,
    /// What the messages looked like ("letters" or "json").
    pub(crate) payload: Payload,
    pub(crate) size: usize,
    pub(crate) warmup_s: f64,
    pub(crate) duration_s: f64,
    /// How long the drain actually took, s.
    pub(crate) drain_s: f64,
    /// Messages sent inside the window.
    pub(crate) sent: u64,
    /// Messages sent in all (warm-up included).
    pub(crate) sent_total: u64,
    /// sent × opened.
    pub(crate) expected: u64,
    /// Deliveries of the window's messages.
    pub(crate) delivered: u64,
    /// expected − delivered.
    pub(crate) lost: i64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) skipped: u64,
    /// Per sender, only those with anomalies.
    pub(crate) anomalies: Vec<SenderAnomaly>,
    /// Deliveries of this run's messages received during the window.
    pub(crate) received_in_window: u64,
    /// Of those, the ones that came compressed (RSV1 set).
    pub(crate) compressed_in_window: u64,
    /// Bytes the clients read from their sockets during the window: frames as they travel
    /// (compressed ones compressed), without TCP/IP headers.
    pub(crate) wire_bytes_received: u64,
    /// Bytes the clients wrote to their sockets during the window.
    pub(crate) wire_bytes_sent: u64,
    /// wire_bytes_received / received_in_window.
    pub(crate) wire_bytes_per_delivery: f64,
    /// received_in_window / duration.
    pub(crate) deliveries_per_s: f64,
    /// Over all measured deliveries.
    pub(crate) latency: Latency,
    /// Over the senders' own copies only (in closed loop: the loop's round trip).
    pub(crate) echo_latency: Latency,
    /// Connections lost during the run.
    pub(crate) dropped: u64,
    pub(crate) foreign: u64,
    pub(crate) stalls: u64,
    pub(crate) backlog_skipped: u64,
    pub(crate) pings: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) server: Option<ServerCpu>,
    /// With several servers: per server (the --url ones, then --sender-url's if not among
    /// them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) per_url: Vec<UrlReport>,
    pub(crate) workers: usize,
    pub(crate) sources: usize,
    pub(crate) client: ClientCpu,
    pub(crate) wall_s: f64,
}

/// `channel` results: fanout's figures, the offsets the subscribers saw, and a verdict.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChannelReport {
    #[serde(flatten)]
    pub(crate) run: FanoutReport,
    pub(crate) channel: String,
    /// Offset gaps and duplicates seen by the subscribers, publish acknowledgements/errors.
    pub(crate) offsets: OffsetCheck,
    /// Lost deliveries (if positive) + offset gaps + offset duplicates + publish errors +
    /// per-sender duplicates, out-of-order and skipped sequence numbers: 0 in a good run.
    pub(crate) failures: u64,
}

/// One reconnect-and-catch-up of `recover`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RecoverRound {
    /// From writing the subscribe to the last byte of the frame that completed the set, ms.
    pub(crate) catch_up_ms: f64,
    /// From writing the subscribe to the first byte of the reply, ms.
    pub(crate) first_byte_ms: f64,
    /// Payload bytes of the subscribe reply.
    pub(crate) reply_bytes: u64,
    /// The reply's `recovered`.
    pub(crate) recovered: bool,
    /// The reply's epoch is the recorded one.
    pub(crate) same_epoch: bool,
    /// Publications in the reply.
    pub(crate) in_reply: u64,
    /// Publications that came as pushes after the reply.
    pub(crate) as_pushes: u64,
    /// Expected offsets that never came (before the timeout).
    pub(crate) missing: u64,
    /// Offsets that came more than once.
    pub(crate) duplicates: u64,
    /// Offsets that came after a higher one.
    pub(crate) out_of_order: u64,
    /// Offsets outside the expected range.
    pub(crate) unexpected: u64,
    /// Publications whose data is not what was published at that offset.
    pub(crate) bad_data: u64,
    /// Server CPU seconds from the subscribe to the last byte (with --server-pid).
    pub(crate) server_cpu_s: Option<f64>,
    /// This process's CPU seconds over the same time.
    pub(crate) client_cpu_s: f64,
    /// The error that ended the round early, if any.
    pub(crate) error: Option<String>,
}

impl RecoverRound {
    /// Everything that is wrong with the round, counted.
    pub(crate) fn failures(&self) -> u64 {
        self.missing
            + self.duplicates
            + self.out_of_order
            + self.unexpected
            + self.bad_data
            + u64::from(!self.recovered)
            + u64::from(!self.same_epoch)
            + u64::from(self.error.is_some())
    }
}

/// Min / median / mean / max of some values, ms.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Spread {
    pub(crate) min_ms: f64,
    pub(crate) median_ms: f64,
    pub(crate) mean_ms: f64,
    pub(crate) max_ms: f64,
}

impl Spread {
    /// Of `values` (ms).
    pub(crate) fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        Self {
            min_ms: sorted[0],
            median_ms: if n % 2 == 1 {
                sorted[n / 2]
            } else {
                (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
            },
            mean_ms: sorted.iter().sum::<f64>() / n as f64,
            max_ms: sorted[n - 1],
        }
    }

    fn line(&self) -> String {
        format!(
            "median {} (min {}, mean {}, max {})",
            ms(self.median_ms),
            ms(self.min_ms),
            ms(self.mean_ms),
            ms(self.max_ms)
        )
    }
}

/// Server CPU for `recover`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RecoverServer {
    pub(crate) pid: u32,
    /// Over the complete rounds' catch-ups, s.
    pub(crate) cpu_s: f64,
    /// Per round, s.
    pub(crate) cpu_s_per_round: f64,
    /// Per recovered publication, µs.
    pub(crate) cpu_us_per_publication: f64,
    /// Where the CPU time came from: "schedstat" (ns resolution) or "stat" (10 ms ticks).
    pub(crate) source: &'static str,
}

/// The tool's CPU for `recover`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RecoverClient {
    /// This process's CPU seconds during the catch-ups.
    pub(crate) cpu_s: f64,
    /// Its share of one core during them, %.
    pub(crate) core_pct: f64,
    /// More than 90%: the catch-up time may be the client's.
    pub(crate) client_bound: bool,
}

/// `recover` results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RecoverReport {
    pub(crate) scenario: &'static str,
    pub(crate) url: String,
    pub(crate) channel: String,
    /// Publications made while the subscriber was away.
    pub(crate) messages: u64,
    /// Length of each one's data string.
    pub(crate) size: usize,
    /// "websocket" (publish command) or "http" (POST /api/publish).
    pub(crate) published_via: &'static str,
    /// Time to publish them all, s.
    pub(crate) publish_s: f64,
    pub(crate) publishes_per_s: f64,
    /// The recorded position.
    pub(crate) epoch: String,
    pub(crate) since_offset: u64,
    /// Offset of the last publication.
    pub(crate) last_offset: u64,
    /// Publications by others in between (offsets that were not ours).
    pub(crate) foreign: u64,
    pub(crate) repeat: u32,
    pub(crate) rounds: Vec<RecoverRound>,
    /// Over the rounds that got every publication back (so are `server` and `client`).
    pub(crate) catch_up: Spread,
    pub(crate) first_byte: Spread,
    /// Of the first round's reply.
    pub(crate) reply_bytes: u64,
    /// reply_bytes / publications in it.
    pub(crate) reply_bytes_per_publication: f64,
    /// Recovered publications per second of catch-up (median round).
    pub(crate) publications_per_s: f64,
    pub(crate) server: Option<RecoverServer>,
    pub(crate) client: RecoverClient,
    /// Sum of the rounds' failures (missing, duplicate, out-of-order, unexpected offsets,
    /// wrong data, `recovered: false`, another epoch, errors): 0 in a good run.
    pub(crate) failures: u64,
    pub(crate) wall_s: f64,
}

/// Server CPU for `churn`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerChurn {
    /// The (first) server process.
    pub(crate) pid: u32,
    /// With several --server-pid: all of them (cpu_s is their sum).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) pids: Vec<u32>,
    pub(crate) cpu_s: f64,
    pub(crate) handshakes_per_cpu_s: f64,
}

/// `churn` results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChurnReport {
    pub(crate) scenario: &'static str,
    /// The (first) --url.
    pub(crate) url: String,
    /// With several --url: all of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) urls: Vec<String>,
    pub(crate) concurrency: u64,
    pub(crate) cycles: u64,
    /// permessage-deflate was offered (and agreed: a decline fails the run).
    pub(crate) deflate: bool,
    /// Cycles whose handshake and close completed.
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) elapsed_s: f64,
    /// ok / elapsed.
    pub(crate) handshakes_per_s: f64,
    /// Connect to 101.
    pub(crate) handshake: Latency,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) server: Option<ServerChurn>,
    pub(crate) workers: usize,
    pub(crate) sources: usize,
    pub(crate) client: ClientCpu,
    pub(crate) wall_s: f64,
}

fn ms(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.2} s", value / 1000.0)
    } else if value >= 10.0 {
        format!("{value:.1} ms")
    } else {
        format!("{value:.3} ms")
    }
}

/// 1234567 → "1.23M".
pub(crate) fn si(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e9 {
        format!("{:.2}G", value / 1e9)
    } else if abs >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// The URL, or the URLs, for a report's first line.
fn shown_urls(url: &str, urls: &[String]) -> String {
    if urls.len() > 1 {
        urls.join(" + ")
    } else {
        url.to_string()
    }
}

/// " (pids 1, 2, 3)" or " (pid 1)".
fn shown_pids(pid: u32, pids: &[u32]) -> String {
    if pids.len() > 1 {
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        format!("pids {}, summed", list.join(", "))
    } else {
        format!("pid {pid}")
    }
}

fn errors(out: &mut String, errors: &BTreeMap<String, u64>) {
    for (what, count) in errors {
        let _ = writeln!(out, "  error x{count}: {what}");
    }
}

impl IdleReport {
    /// The human-readable report.
    pub(crate) fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "idle {}{}{}",
            shown_urls(&self.url, &self.urls),
            match (&self.subscribe, &self.subprotocol) {
                (Some(channel), Some(p)) =>
                    format!(" ({p}, every connection subscribed to {channel})"),
                (None, Some(p)) => format!(" ({p})"),
                _ => String::new(),
            },
            if self.deflate {
                ", permessage-deflate"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "connections:       {} opened, {} failed (of {}), {} workers, {} source addresses",
            self.opened, self.failed, self.conns, self.workers, self.sources
        );
        errors(&mut out, &self.errors);
        let _ = writeln!(
            out,
            "time to open:      {:.3} s ({}/s)",
            self.time_to_open_s,
            si(self.open_rate_per_s)
        );
        let _ = writeln!(
            out,
            "hold:              {:.1} s, {} dropped, {} pings answered",
            self.hold_s, self.dropped, self.pings
        );
        if let Some(s) = &self.server {
            let _ = writeln!(
                out,
                "server rss:        {:.1} MiB before, {:.1} MiB opened, {:.1} MiB after hold, {:.1} MiB peak ({})",
                s.rss_before_kib as f64 / 1024.0,
                s.rss_opened_kib as f64 / 1024.0,
                s.rss_after_kib as f64 / 1024.0,
                s.rss_peak_kib as f64 / 1024.0,
                shown_pids(s.pid, &s.pids)
            );
            let _ = writeln!(
                out,
                "per connection:    {:.0} bytes ({:.1} KB); server cpu while opening {:.2} s",
                s.bytes_per_conn,
                s.bytes_per_conn / 1000.0,
                s.open_cpu_s
            );
        }
        self.client.render(&mut out);
        let _ = writeln!(out, "wall time:         {:.1} s", self.wall_s);
        out
    }
}

impl FanoutReport {
    /// The human-readable report.
    pub(crate) fn human(&self) -> String {
        self.render(|_| {})
    }

    /// The human-readable report, with `more` lines after the deliveries.
    fn render(&self, more: impl FnOnce(&mut String)) -> String {
        let mut out = String::new();
        let mode = match (self.in_flight, self.rate) {
            (Some(k), _) => format!(
                "closed loop, {k} in flight ({} senders active)",
                self.active_senders
            ),
            (_, Some(r)) => format!("fixed rate, {} msg/s", si(r)),
            _ => self.mode.to_string(),
        };
        let _ = writeln!(
            out,
            "{} {}: {} conns, {} senders{}, {mode}, {} B {}messages{}{}",
            self.scenario,
            shown_urls(&self.url, &self.urls),
            self.conns,
            self.senders,
            self.sender_url
                .as_deref()
                .map(|u| format!(" on {u}"))
                .unwrap_or_default(),
            self.size,
            if self.payload == Payload::Json {
                "JSON "
            } else {
                ""
            },
            if self.quick_acks { ", quick ACKs" } else { "" },
            if self.deflate {
                ", permessage-deflate"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "connections:       {} opened, {} failed, {} dropped during the run; {} workers, {} source addresses",
            self.opened, self.failed, self.dropped, self.workers, self.sources
        );
        errors(&mut out, &self.errors);
        let _ = writeln!(
            out,
            "window:            {:.1} s after {:.1} s warm-up; drain took {:.2} s",
            self.duration_s, self.warmup_s, self.drain_s
        );
        let _ = writeln!(
            out,
            "messages sent:     {} in the window ({} in all)",
            self.sent, self.sent_total
        );
        let _ = writeln!(
            out,
            "deliveries:        {} expected, {} delivered, {} lost",
            self.expected, self.delivered, self.lost
        );
        if self.duplicates + self.out_of_order + self.skipped > 0 {
            let _ = writeln!(
                out,
                "ordering:          {} duplicates, {} out of order, {} skipped",
                self.duplicates, self.out_of_order, self.skipped
            );
            for a in self.anomalies.iter().take(20) {
                let _ = writeln!(
                    out,
                    "  sender {}: {} duplicates, {} out of order, {} skipped",
                    a.sender, a.duplicates, a.out_of_order, a.skipped
                );
            }
        }
        if self.stalls + self.backlog_skipped + self.foreign > 0 {
            let _ = writeln!(
                out,
                "other:             {} sender stalls, {} fixed-rate messages not sent in time, {} foreign messages",
                self.stalls, self.backlog_skipped, self.foreign
            );
        }
        more(&mut out);
        if self.deflate {
            let _ = writeln!(
                out,
                "compressed:        {} of the {} deliveries received during the window (RSV1)",
                self.compressed_in_window, self.received_in_window
            );
        }
        let _ = writeln!(
            out,
            "wire:              {} bytes read in the window, {:.0} per delivery; {} bytes written",
            self.wire_bytes_received, self.wire_bytes_per_delivery, self.wire_bytes_sent
        );
        let _ = writeln!(
            out,
            "throughput:        {} deliveries/s ({} received during the window)",
            si(self.deliveries_per_s),
            self.received_in_window
        );
        let _ = writeln!(out, "latency:           {}", self.latency.line());
        let _ = writeln!(out, "  own copy back:   {}", self.echo_latency.line());
        if let Some(s) = &self.server {
            let _ = writeln!(
                out,
                "server cpu:        {:.2} s in the window ({:.0}% of a core), {} deliveries per CPU-second; rss {:.1} MiB{}",
                s.cpu_s,
                s.core_pct,
                si(s.deliveries_per_cpu_s),
                s.rss_kib as f64 / 1024.0,
                if s.processes.is_empty() {
                    ""
                } else {
                    " (sums of:)"
                }
            );
            for p in &s.processes {
                let _ = writeln!(
                    out,
                    "  pid {} {}: {:.2} s ({:.0}% of a core), rss {:.1} MiB",
                    p.pid,
                    p.name,
                    p.cpu_s,
                    p.core_pct,
                    p.rss_kib as f64 / 1024.0
                );
            }
        }
        for u in &self.per_url {
            let _ = writeln!(
                out,
                "{} {}{}: {} conns, {} expected, {} delivered, {} lost; p50 {} p99 {} max {}",
                if u.lost == 0 { "  url" } else { "  URL LOSS" },
                u.url,
                if u.senders { " (senders)" } else { "" },
                u.opened,
                u.expected,
                u.delivered,
                u.lost,
                ms(u.latency.p50_ms),
                ms(u.latency.p99_ms),
                ms(u.latency.max_ms)
            );
        }
        self.client.render(&mut out);
        let _ = writeln!(out, "wall time:         {:.1} s", self.wall_s);
        out
    }
}

impl ChannelReport {
    /// The human-readable report.
    pub(crate) fn human(&self) -> String {
        self.run.render(|out| {
            let o = &self.offsets;
            let _ = writeln!(
                out,
                "offsets:           channel {}: {} pushes checked, {} gaps, {} duplicates ({} subscribers affected)",
                self.channel, o.pushes, o.gaps, o.duplicates, o.subscribers_affected
            );
            let _ = writeln!(
                out,
                "publish replies:   {} results, {} errors ({} publishes sent)",
                o.publish_acks, o.publish_errors, self.run.sent_total
            );
            if self.failures > 0 {
                let _ = writeln!(
                    out,
                    "FAILURES:          {} (lost deliveries, offset gaps and duplicates, publish errors, sequence anomalies)",
                    self.failures
                );
            }
        })
    }
}

impl RecoverReport {
    /// The human-readable report.
    pub(crate) fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "recover {}: channel {}, {} publications of {} B missed, {} round{}",
            self.url,
            self.channel,
            self.messages,
            self.size,
            self.repeat,
            if self.repeat == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            out,
            "published:         via {} in {:.2} s ({}/s); offsets {}..={} of epoch {}{}",
            self.published_via,
            self.publish_s,
            si(self.publishes_per_s),
            self.since_offset + 1,
            self.last_offset,
            self.epoch,
            if self.foreign > 0 {
                format!(", {} of them by others", self.foreign)
            } else {
                String::new()
            }
        );
        let complete = self
            .rounds
            .iter()
            .filter(|r| r.error.is_none() && r.recovered && r.missing == 0)
            .count();
        let _ = writeln!(
            out,
            "catch-up:          {}{}",
            if complete == 0 {
                "none: no round recovered everything".to_string()
            } else {
                self.catch_up.line()
            },
            if complete > 0 && complete < self.rounds.len() {
                format!(
                    " over the {complete} of {} rounds that recovered everything",
                    self.rounds.len()
                )
            } else {
                String::new()
            }
        );
        if complete > 0 {
            let _ = writeln!(out, "  first byte:      {}", self.first_byte.line());
        }
        let _ = writeln!(
            out,
            "reply:             {} bytes ({:.0} per publication); {} publications/s",
            self.reply_bytes,
            self.reply_bytes_per_publication,
            si(self.publications_per_s)
        );
        if let Some(s) = &self.server {
            let _ = writeln!(
                out,
                "server cpu:        {:.4} s per catch-up, {:.2} µs per publication ({}, pid {})",
                s.cpu_s_per_round, s.cpu_us_per_publication, s.source, s.pid
            );
        }
        for (i, r) in self.rounds.iter().enumerate() {
            let failures = r.failures();
            if failures > 0 || self.rounds.len() <= 5 {
                let _ = writeln!(
                    out,
                    "  round {}: {} in {} (first byte {}), {} in the reply + {} pushes, recovered {}{}",
                    i + 1,
                    r.in_reply + r.as_pushes,
                    ms(r.catch_up_ms),
                    ms(r.first_byte_ms),
                    r.in_reply,
                    r.as_pushes,
                    r.recovered,
                    if failures > 0 {
                        format!(
                            "; {} missing, {} duplicates, {} out of order, {} unexpected, {} wrong data{}{}",
                            r.missing,
                            r.duplicates,
                            r.out_of_order,
                            r.unexpected,
                            r.bad_data,
                            if r.same_epoch { "" } else { ", another epoch" },
                            r.error
                                .as_deref()
                                .map(|e| format!(", error: {e}"))
                                .unwrap_or_default()
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
        if self.rounds.iter().any(|r| !r.recovered) {
            let _ = writeln!(
                out,
                "NOT RECOVERED:     the server no longer had the publications: run it with \
                 --history-size {} or more and catch up within its --history-ttl",
                self.messages
            );
        }
        let _ = writeln!(
            out,
            "client cpu:        {:.4} s during the catch-ups ({:.0}% of a core){}",
            self.client.cpu_s,
            self.client.core_pct,
            if self.client.client_bound {
                "; CLIENT-BOUND: the catch-up time may be the client's"
            } else {
                ""
            }
        );
        if self.failures > 0 {
            let _ = writeln!(out, "FAILURES:          {}", self.failures);
        } else {
            let _ = writeln!(
                out,
                "verified:          every offset exactly once, in order, with its data; recovered: true"
            );
        }
        let _ = writeln!(out, "wall time:         {:.1} s", self.wall_s);
        out
    }
}

impl ChurnReport {
    /// The human-readable report.
    pub(crate) fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "churn {}: {} cycles, {} at a time{}",
            shown_urls(&self.url, &self.urls),
            self.cycles,
            self.concurrency,
            if self.deflate {
                ", permessage-deflate"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "cycles:            {} ok, {} failed; {} workers, {} source addresses",
            self.ok, self.failed, self.workers, self.sources
        );
        errors(&mut out, &self.errors);
        let _ = writeln!(
            out,
            "rate:              {} handshakes/s over {:.2} s",
            si(self.handshakes_per_s),
            self.elapsed_s
        );
        let _ = writeln!(out, "handshake time:    {}", self.handshake.line());
        if let Some(s) = &self.server {
            let _ = writeln!(
                out,
                "server cpu:        {:.2} s, {} handshakes per CPU-second",
                s.cpu_s,
                si(s.handshakes_per_cpu_s)
            );
        }
        self.client.render(&mut out);
        let _ = writeln!(out, "wall time:         {:.1} s", self.wall_s);
        out
    }
}
