//! The command line: subcommands, flags, defaults and the `--help` text that explains how the
//! tool measures and how it scales (source addresses, file limits, worker processes).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "Load generator for WebSocket chat hubs (every message a client sends is \
broadcast to all clients, sender included): idle connections and server memory, broadcast \
fan-out with loss and latency, handshake churn.";

const LONG_ABOUT: &str = "\
Load generator for WebSocket chat hubs: servers that broadcast every message a client sends to \
all connected clients, the sender included, with the same frame type (wshub in chat mode, the \
gorilla chat example, a ws or uWS pub/sub chat...).

  idle    open N connections at a bounded handshake rate, hold them, report the time to open \
and (with --server-pid) the server's RSS per connection
  fanout  N connections all receive; S of them send messages carrying (sender id, sequence \
number, send time); report loss, duplicates, order, deliveries/s, latency percentiles and \
(with --server-pid) deliveries per server CPU-second
  churn   connect / handshake / close cycles, N at a time; report accepted handshakes/s

THE CLIENT. Each connection is a raw TCP socket with a hand-written client handshake (random \
16-byte key, 101 and Sec-WebSocket-Accept checked) and a minimal frame decoder: one read per \
wake-up into a 256 KiB buffer shared by all connections of a process, frames walked in place, \
only the 32-byte benchmark header of each message parsed. Outgoing frames are masked (RFC \
6455); pings are answered with pongs, so connections can be held for as long as you like. \
Every connection sets TCP_NODELAY. After each read a receiving socket is put back in \
delayed-ACK mode (TCP_QUICKACK off; the kernel leaves that mode by itself): otherwise the \
kernel sends an ACK after nearly every read, and on loopback both sending it and the server \
socket's processing of it run in the reading process. That was about 45% of the tool's CPU \
at 10k connections; server CPU per delivery was the same either way in our runs. \
--quick-acks keeps the kernel's default.

SCALING TO 100,000+ CONNECTIONS. Three limits stand in the way, and the tool deals with each:
  * Ports: a source address has only the kernel's ephemeral port range (ip_local_port_range, \
28,232 ports by default) of local ports. When the target is on loopback (127.0.0.0/8), each \
socket is bound before connecting to one of 127.0.0.2, 127.0.0.3, ... (round-robin; all of \
127/8 reaches the loopback interface without any setup), enough of them that each carries at \
most a third of the range: the kernel searches one half of the range (even ports) first, and \
past that every connect scans a long way (19,500 sockets from one address opened in 4.8 s, \
from two in 0.7 s). --sources chooses the count, --sources 0 lets the kernel pick the \
address. The socket is bound with IP_BIND_ADDRESS_NO_PORT, so the port is chosen at \
connect time (unique per 4-tuple) rather than reserved by bind.
  * File descriptors: every process raises its RLIMIT_NOFILE soft limit to the hard limit at \
start. The hard limit cannot be raised without privileges, so:
  * Processes: the tool re-executes itself as hidden `worker` processes, one per 18,000 \
connections by default (--workers to choose). The main process only coordinates: it sends \
each worker its share (its connections, senders, handshake rate and parallelism) as a JSON \
line on the worker's stdin, tells them when to start and stop, and merges the counters and \
latency histograms they report as JSON lines on their stdout. Each worker runs one \
current-thread tokio runtime.

FAN-OUT ACCOUNTING. Senders start only after all N connections are open. Sending runs for \
--warmup (messages marked as warm-up, not counted), then for --duration (the measured window). \
Only messages sent inside the window count: expected deliveries = messages sent in the window \
x connections open at the start. After the window, senders stop and the tool waits up to \
--drain for those messages to arrive (it stops earlier once everything expected has arrived), \
so no message counts as lost just because the run ended. lost = expected - delivered. \
A closed loop bounds the server's queues only if the server delivers to everyone at about \
the same time: a server that hands the sender its copy before the other receivers get theirs \
lets the loop run ahead while its per-connection queues grow (watch the latency). \
Receivers check each sender's sequence numbers and report duplicates, out-of-order and \
skipped ones per sender. Latency is receive time - send time of every measured delivery \
(both from the same wall clock, shared by all processes), in a log-linear histogram with \
1.6% resolution. In fixed-rate mode the send time is the scheduled one, so a sender held up \
by a full socket does not hide the wait (no coordinated omission). deliveries/s and \
deliveries per server CPU-second count all of this run's messages received during the window.

CPU. Server CPU is utime + stime from /proc/PID/stat divided by the clock tick rate, read \
from the process's auxiliary vector (AT_CLKTCK, 100 on Linux). The tool reports its own CPU \
per process (coordinator and workers) and marks the run CLIENT-BOUND when any of its \
processes used more than 90% of a core on average during the measured phase (opening for \
idle, the window for fanout, the whole run for churn), or all of them together more than 90% \
of the CPUs they may run on (their affinity): then the numbers describe the client, not the \
server. It also reports OTHER LOAD: CPU used meanwhile by processes that are neither the tool \
nor the server (from /proc/stat), which disturbs any measurement. For real measurements pin the \
server and the tool to different cores, e.g. `taskset -c 0 SERVER` and `taskset -c 1 \
wshub-bench ...`. On loopback the kernel's TCP work for the server's side of connection setup \
and teardown runs in the connecting process, so churn is usually client-bound: compare servers \
by handshakes per server CPU-second.

OUTPUT. A human-readable report on stdout (--json: one JSON object instead), and a progress \
line on stderr every second (--quiet: none). Durations take units: 500ms, 5s, 5m, 1h.";

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(name = "wshub-bench", version, about = ABOUT, long_about = LONG_ABOUT)]
pub(crate) struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Open N connections, hold them, report time to open and server RSS per connection.
    #[command(
        long_about = "Open --conns connections at a bounded handshake rate (--rate per \
second and/or --parallel in flight), hold them for --hold (pings are answered, so minutes are \
fine), then close them. Reports opened/failed (with error kinds), the time from the first \
connect to the last handshake, connections dropped during the hold, and with --server-pid the \
server's VmRSS before opening, after opening, at the end of the hold and at its peak, and \
bytes per connection = (RSS at the end of the hold - RSS before) / opened."
    )]
    Idle(IdleArgs),
    /// N receivers, S senders: loss, latency, deliveries per server CPU-second.
    #[command(
        long_about = "Open --conns connections; --senders of them (spread evenly) also \
send text messages of --size bytes whose first 32 bytes carry a run tag, the sender id, a \
sequence number and the send time. Two modes: fixed rate (--rate R: R messages/s in total, \
spread evenly over the senders and staggered) and closed loop (--in-flight K, the default with \
K = 8: K messages outstanding in total, each sender keeping its share; a message is complete \
when its sender receives its own copy back, and then that sender sends the next; with K < S \
only K senders send). See `wshub-bench --help` for how the window, loss and latency are \
defined."
    )]
    Fanout(FanoutArgs),
    /// Connect / handshake / close cycles, N concurrently: handshakes/s.
    #[command(
        long_about = "Run --cycles connect + handshake + close cycles, --conns of them \
at a time. Each cycle sends a close frame after the 101 and waits for the server's close and \
its end of the TCP connection (so TIME_WAIT stays on the server side). Reports completed \
cycles, failures by kind, accepted handshakes/s and the connect-to-101 time percentiles."
    )]
    Churn(ChurnArgs),
    /// Internal: one worker process (started by the tool itself).
    #[command(hide = true)]
    Worker,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// Flags every load subcommand has.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// WebSocket URL of the server (ws:// only), e.g. ws://127.0.0.1:8080/ws
    #[arg(long, value_name = "URL")]
    pub(crate) url: String,
    /// The server's process id: report its RSS (VmRSS) and CPU time from /proc.
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,
    /// Worker processes [default: one per 18,000 connections].
    #[arg(long, value_name = "W")]
    pub(crate) workers: Option<usize>,
    /// Source addresses 127.0.0.2.. to spread sockets over when the target is on loopback
    /// (0: don't bind, let the kernel choose) [default: a third of the port range each].
    #[arg(long, value_name = "K")]
    pub(crate) sources: Option<u32>,
    /// Handshakes in flight at most, across all workers.
    #[arg(long, value_name = "P", default_value_t = 100)]
    pub(crate) parallel: u64,
    /// Give up on one connect + handshake after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub(crate) connect_timeout: Duration,
    /// Keep the kernel's quick ACKs (see --help: by default every receiving socket is put
    /// back in delayed-ACK mode after each read).
    #[arg(long)]
    pub(crate) quick_acks: bool,
    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

/// `idle` flags.
#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections to open.
    #[arg(long, short = 'n', value_name = "N")]
    pub(crate) conns: u64,
    /// Handshakes started per second at most, across all workers (0: no limit, --parallel
    /// alone bounds them).
    #[arg(long, value_name = "PER_SEC", default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// How long to hold the connections once all are open.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub(crate) hold: Duration,
}

/// `fanout` flags.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections, all of them receivers.
    #[arg(long, short = 'n', value_name = "N")]
    pub(crate) conns: u64,
    /// How many of the connections also send.
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub(crate) senders: u64,
    /// Fixed-rate mode: messages per second in total across all senders.
    #[arg(long, value_name = "R", conflicts_with = "in_flight")]
    pub(crate) rate: Option<f64>,
    /// Closed-loop mode: messages outstanding in total [default mode, with K = 8].
    #[arg(long, value_name = "K")]
    pub(crate) in_flight: Option<u64>,
    /// Message size in bytes (at least 32, the benchmark header).
    #[arg(long, value_name = "B", default_value_t = 64)]
    pub(crate) size: usize,
    /// The measured window.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub(crate) duration: Duration,
    /// Sending before the window, not counted.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    pub(crate) warmup: Duration,
    /// After the window: how long to wait at most for its messages to arrive.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    pub(crate) drain: Duration,
    /// Handshakes started per second at most while connecting (0: no limit).
    #[arg(long, value_name = "PER_SEC", default_value_t = 0.0)]
    pub(crate) connect_rate: f64,
}

/// `churn` flags.
#[derive(Debug, Args)]
pub(crate) struct ChurnArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Cycles running at the same time.
    #[arg(long, short = 'n', value_name = "N")]
    pub(crate) conns: u64,
    /// Cycles in all.
    #[arg(long, value_name = "K")]
    pub(crate) cycles: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_fanout() {
        let cli = Cli::try_parse_from([
            "wshub-bench",
            "fanout",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--conns",
            "10",
            "--rate",
            "100",
            "--duration",
            "2s",
        ]);
        assert!(matches!(
            cli,
            Ok(Cli { command: Cmd::Fanout(FanoutArgs { rate: Some(r), duration, .. }) })
                if r == 100.0 && duration == Duration::from_secs(2)
        ));
        assert!(
            Cli::try_parse_from([
                "wshub-bench",
                "fanout",
                "--url",
                "ws://x/",
                "--conns",
                "1",
                "--rate",
                "1",
                "--in-flight",
                "2"
            ])
            .is_err()
        );
    }
}
