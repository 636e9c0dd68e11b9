//! The coordinator ↔ worker protocol: JSON lines over the worker's stdin (the `Plan`, then
//! `Command`s) and stdout (`Event`s: progress counters, "connections open", "sending done",
//! and the final report with its histograms).

use std::io::Write;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::hist::Sparse;
use crate::payload::Payload;
use crate::plan::Target;

/// Which workload a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Open and hold connections.
    Idle,
    /// Open connections; some of them send, all count what they receive.
    Fanout,
    /// Connect / handshake / close, over and over.
    Churn,
    /// `wshub.v1`: every connection subscribes to one channel; some of them publish to it,
    /// all count the pushes they receive and check their offsets.
    Channel,
}

/// Everything a worker needs, sent as the first line on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// The workload.
    pub(crate) mode: Mode,
    /// Worker number (0-based), for messages.
    pub(crate) worker: usize,
    /// The servers (address, `Host` header, path): connection i goes to the
    /// (i mod `spread`)-th, senders to `sender_target` when set.
    pub(crate) targets: Vec<Target>,
    /// How many of `targets` (the first ones) the connections are spread over.
    pub(crate) spread: usize,
    /// The senders' server in `targets` (`--sender-url`), if they have their own.
    #[serde(default)]
    pub(crate) sender_target: Option<usize>,
    /// Local addresses to bind before connecting, round-robin by global connection index
    /// (empty: let the kernel choose).
    pub(crate) sources: Vec<IpAddr>,
    /// Global index of this worker's first connection.
    pub(crate) first: u64,
    /// Connections this worker opens (churn: concurrent cycles).
    pub(crate) count: u64,
    /// Connections across all workers.
    pub(crate) total: u64,
    /// Handshakes this worker keeps in flight at most.
    pub(crate) parallel: u64,
    /// Handshakes per second this worker starts at most (0: no limit).
    pub(crate) connect_rate: f64,
    /// Give up on a connect + handshake after this long.
    pub(crate) connect_timeout_ms: u64,
    /// Fan-out: senders across all workers.
    pub(crate) senders: u64,
    /// Fan-out: message size in bytes.
    pub(crate) size: usize,
    /// Fan-out: total messages per second across all senders (fixed-rate mode), else 0.
    pub(crate) msg_rate: f64,
    /// Fan-out: messages outstanding across all senders (closed-loop mode), else 0.
    pub(crate) in_flight: u64,
    /// Fan-out: random tag that marks this run's messages.
    pub(crate) tag: u16,
    /// Churn: cycles this worker runs.
    pub(crate) cycles: u64,
    /// Leave the kernel's quick ACKs on (else TCP_QUICKACK is cleared after every read).
    pub(crate) quick_acks: bool,
    /// The WebSocket subprotocol to ask for (the server must choose it), if any.
    #[serde(default)]
    pub(crate) protocol: Option<String>,
    /// `wshub.v1`: the channel every connection subscribes to right after its handshake
    /// (it counts as opened once the subscribe reply arrived); channel mode publishes to it.
    #[serde(default)]
    pub(crate) channel: Option<String>,
    /// Offer permessage-deflate in every handshake (the server must agree) and inflate the
    /// compressed messages' prefixes.
    #[serde(default)]
    pub(crate) deflate: bool,
    /// Fan-out: what the messages look like around the benchmark header.
    #[serde(default)]
    pub(crate) payload: Payload,
}

/// When fan-out senders start, when warm-up ends and when sending stops (µs since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Schedule {
    /// Senders begin.
    pub(crate) start_us: u64,
    /// Messages sent from here on are measured.
    pub(crate) warmup_end_us: u64,
    /// Senders stop; nothing sent from here on is measured.
    pub(crate) window_end_us: u64,
}

/// Coordinator → worker, after the plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Fan-out: everyone is connected, start sending on this schedule.
    Go(Schedule),
    /// Send the final report and close everything.
    Stop,
}

/// Counters a worker reports as it goes (cumulative).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    /// Handshakes completed (101 checked).
    pub(crate) opened: u64,
    /// Connects or handshakes that failed.
    pub(crate) failed: u64,
    /// Connections open right now.
    pub(crate) alive: u64,
    /// Open connections that the server closed or that broke afterwards.
    pub(crate) dropped: u64,
    /// Messages sent (all phases).
    pub(crate) sent: u64,
    /// Messages sent inside the measured window.
    pub(crate) sent_measured: u64,
    /// Deliveries of measured messages.
    pub(crate) delivered: u64,
    /// Deliveries of this run's messages of any phase.
    pub(crate) received: u64,
    /// Deliveries of this run's messages received inside the measured window.
    pub(crate) received_in_window: u64,
    /// Churn: cycles completed (handshake and close).
    pub(crate) cycles_ok: u64,
    /// Churn: cycles that failed.
    pub(crate) cycles_failed: u64,
    /// Handshakes whose 101 declined the permessage-deflate offer (`--deflate`).
    #[serde(default)]
    pub(crate) declined: u64,
}

/// Per-sender ordering anomalies seen by receivers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SenderAnomaly {
    /// Global sender id.
    pub(crate) sender: u32,
    /// The same sequence number as the one just before it.
    pub(crate) duplicates: u64,
    /// A sequence number lower than one already seen (late or repeated).
    pub(crate) out_of_order: u64,
    /// Sequence numbers jumped over (missing at the time, possibly late later).
    pub(crate) skipped: u64,
}

/// A worker's last word.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WorkerReport {
    /// Final counters.
    pub(crate) counters: Counters,
    /// Wall clock (µs since epoch) when the first connect started.
    pub(crate) open_start_us: u64,
    /// Wall clock when the last handshake finished (opened or failed).
    pub(crate) open_end_us: u64,
    /// Fan-out latencies of measured deliveries, µs. Churn: connect + handshake times.
    pub(crate) latency: Sparse,
    /// Fan-out: latencies of the senders' own copies, µs.
    pub(crate) echo_latency: Sparse,
    /// Senders with ordering anomalies.
    pub(crate) anomalies: Vec<SenderAnomaly>,
    /// Messages that were not this run's (another client's, or malformed).
    pub(crate) foreign: u64,
    /// Pings answered.
    pub(crate) pings: u64,
    /// Closed-loop senders that got no echo for 5 s and started over.
    pub(crate) stalls: u64,
    /// Fixed-rate messages that were due but could not be written before the window ended.
    pub(crate) backlog_skipped: u64,
    /// Errors by kind (e.g. "connect: Connection refused"), with counts.
    pub(crate) errors: Vec<(String, u64)>,
    /// Channel: the integrity of each subscriber's offsets and the publish replies.
    #[serde(default)]
    pub(crate) offsets: OffsetCheck,
    /// Deliveries of this run's messages received compressed during the window.
    #[serde(default)]
    pub(crate) compressed_in_window: u64,
    /// Bytes read from the sockets during the window.
    #[serde(default)]
    pub(crate) wire_received: u64,
    /// Bytes written to the sockets during the window.
    #[serde(default)]
    pub(crate) wire_sent: u64,
    /// With several servers (fan-out, channel): per server of the plan's `targets`.
    #[serde(default)]
    pub(crate) per_target: Vec<TargetTally>,
}

/// One server's share of a worker's connections and deliveries (with several servers).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TargetTally {
    /// Connections opened to it.
    pub(crate) opened: u64,
    /// Deliveries of measured messages to those connections.
    pub(crate) delivered: u64,
    /// Their latencies, µs.
    pub(crate) latency: Sparse,
}

/// Channel mode: what the subscribers saw of the channel's offsets (each push must carry the
/// offset after the previous one, starting after the subscribe reply's), and how the
/// publish commands were answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct OffsetCheck {
    /// Pushes whose offsets were checked.
    pub(crate) pushes: u64,
    /// Offsets jumped over, summed over subscribers.
    pub(crate) gaps: u64,
    /// Pushes with an offset at or below one already seen (repeated or late).
    pub(crate) duplicates: u64,
    /// Subscribers that saw at least one gap or duplicate.
    pub(crate) subscribers_affected: u64,
    /// Publish commands answered with a result.
    pub(crate) publish_acks: u64,
    /// Publish commands answered with an error.
    pub(crate) publish_errors: u64,
}

impl OffsetCheck {
    /// Adds `other`'s counts.
    pub(crate) fn add(&mut self, other: &OffsetCheck) {
        self.pushes += other.pushes;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.subscribers_affected += other.subscribers_affected;
        self.publish_acks += other.publish_acks;
        self.publish_errors += other.publish_errors;
    }
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub(crate) enum Event {
    /// Counters so far (about 4 times a second).
    Progress(Counters),
    /// Every connection of this worker was tried.
    Opened {
        /// Counters at that moment.
        counters: Counters,
        /// When the first connect started.
        open_start_us: u64,
        /// When the last handshake finished.
        open_end_us: u64,
    },
    /// Fan-out: the window ended; this is the final count of measured messages sent.
    SendDone {
        /// Messages sent inside the window.
        sent_measured: u64,
    },
    /// Churn: all cycles are done.
    Done,
    /// The final report (after `Stop`).
    Final(Box<WorkerReport>),
    /// A fatal problem; the worker exits.
    Fatal {
        /// What went wrong.
        message: String,
    },
}

/// Writes one JSON line to `out` and flushes.
pub(crate) fn send_line<T: Serialize>(out: &mut impl Write, value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let mut out = Vec::new();
        send_line(
            &mut out,
            &Command::Go(Schedule {
                start_us: 1,
                warmup_end_us: 2,
                window_end_us: 3,
            }),
        )
        .unwrap_or_default();
        send_line(&mut out, &Command::Stop).unwrap_or_default();
        let text = String::from_utf8_lossy(&out).into_owned();
        let cmds: Vec<Command> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(cmds.len(), 2);
        assert!(matches!(cmds[0], Command::Go(s) if s.window_end_us == 3));
        let ev: Option<Event> = serde_json::from_str(
            &serde_json::to_string(&Event::SendDone { sent_measured: 7 }).unwrap_or_default(),
        )
        .ok();
        assert!(matches!(ev, Some(Event::SendDone { sent_measured: 7 })));
    }
}
