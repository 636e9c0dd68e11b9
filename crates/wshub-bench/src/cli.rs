//! The command line: subcommands, flags, defaults and the `--help` text that explains how the
//! tool measures and how it scales (source addresses, file limits, worker processes).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::payload::Payload;

const ABOUT: &str = "Load generator for WebSocket chat hubs (every message a client sends is \
broadcast to all clients, sender included) and for wshub.v1 channels: idle connections and \
server memory, broadcast fan-out with loss and latency, channel fan-out with offset checks, \
recovery after a reconnect, handshake churn.";

const LONG_ABOUT: &str = "\
Load generator for WebSocket chat hubs: servers that broadcast every message a client sends to \
all connected clients, the sender included, with the same frame type (wshub in chat mode, the \
gorilla chat example, a ws or uWS pub/sub chat...); and for the channels of wshub's own \
protocol, wshub.v1 (PROTOCOL.md).

  idle    open N connections at a bounded handshake rate, hold them, report the time to open \
and (with --server-pid) the server's RSS per connection
  fanout  N connections all receive; S of them send messages carrying (sender id, sequence \
number, send time); report loss, duplicates, order, deliveries/s, latency percentiles and \
(with --server-pid) deliveries per server CPU-second
  channel the same as fanout over the wshub.v1 protocol: N connections subscribe to one \
channel, S of them publish to it; also checks that every subscriber sees the channel's offsets \
one by one, without gaps or repeats
  recover a wshub.v1 subscriber misses M publications and catches up by subscribing with \
`since`; report the catch-up time, the reply's size and the server CPU it took, and check \
that every publication came back once, in order
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

WSHUB.V1. With `channel`, `recover` and `idle --subscribe` every connection asks for the \
subprotocol wshub.v1 (the handshake fails if the server does not choose it) and, after the \
101, sends {\"id\":0,\"cmd\":\"subscribe\",\"channel\":NAME} and counts as opened only once the reply \
came. Publications carry the benchmark header at the start of their `data` string; of each \
server frame the first 384 bytes are looked at (enough for the channel, offset, epoch and the \
header), so channel names are limited to 100 bytes. `recover` is different: one connection at a \
time, in the main process (no workers), reading whole messages; a catch-up lasts milliseconds, \
so it reads the server's CPU time with nanosecond resolution from /proc/PID/task/*/schedstat \
and its own from CLOCK_PROCESS_CPUTIME_ID, and marks CLIENT-BOUND when the tool used more than \
90% of a core during the catch-ups.

COMPRESSION. With --deflate (idle, fanout, channel, churn) every handshake offers \
`permessage-deflate; client_no_context_takeover; server_no_context_takeover` (RFC 7692). The \
server must agree, answering with server_no_context_takeover (wshub does with --compression \
true): a server that declines fails the run, so uncompressed traffic is never reported as \
compressed. Every compressed message (RSV1) is then a deflate stream of its own: each worker \
keeps one inflater for all its connections, reset per message, and inflates only the start \
of each message, as many bytes as it would look at uncompressed. The tool's own messages go \
out uncompressed, which RFC 7692 allows message by message: the server compresses and never \
inflates. fanout reports how many deliveries came compressed. RSV1 without the agreement is \
a protocol error.

SEVERAL SERVERS. --url may be given several times (or as a comma-separated list): connection \
i (the tool numbers them 0 to N-1; the senders are every (N/S)-th, starting at 0) connects to \
the (i mod n)-th of the n URLs, so the connections are spread evenly over n servers, e.g. the \
nodes of a wshub cluster on Redis, which share their channels. With --sender-url (fanout, \
channel) the S senders connect there instead (node A, say; it may be one of the --url list or \
not) and every other connection keeps its share of --url; without it the senders are spread \
like everyone else. Loss, order and offsets are checked as with one server: every message \
sent in the window must reach every connection on every server, once, in order. \
--server-pid may be given several times too: the server's CPU seconds, RSS and the figures \
per server CPU-second are then sums over all those processes (give every node and the \
redis-server behind them, and deliveries per CPU-second are per CPU-second of the whole \
cluster), `pid` in --json is the first one, and fanout and channel also report each \
process's CPU and RSS (`server.processes`) and each URL's connections, deliveries and latency \
(`per_url`). One URL and one pid give the same report as before, field for field.

PAYLOADS (fanout --payload). letters, the default: the 32-byte header, then a to z over and \
over, which deflate shrinks 25-fold (1 KiB to 42 bytes). json: every message is a JSON \
object of exactly --size bytes (at least 54) like a chat application's \"message created\" \
event, \
{\"bench\":\"<header>\",\"type\":\"message.created\",\"room\":...,\"seq\":...,\"ts\":<ms>,\
\"sent_at\":\"<ISO 8601>\",\"user\":{\"id\",\"name\",\"display\",\"avatar\",\"status\"},\"text\":\"<a \
sentence>\",\"likes\":...,\"edited\":...,\"history\":[{\"user\",\"ts\",\"reaction\",\"text\"}, \
...],\"note\":\"<words up to the size>\"}: repeated keys, user names, numbers and times that \
change from message to message, English words drawn from a vocabulary of a hundred or so \
(repeatably: each sender's generator is seeded with its id). The header is the value of the \
first field, at byte 10. Deflate at level 1, message by message as wshub does it, shrinks \
1 KiB of it to about 720 bytes (70%).

FAN-OUT ACCOUNTING (fanout and channel). Senders start only after all N connections are open. Sending runs for \
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
deliveries per server CPU-second count all of this run's messages received during the window. \
Bytes on the wire are what the clients read from (and write to) their sockets during the \
window: WebSocket frames as they travel, compressed ones compressed, without TCP/IP headers; \
per delivery = bytes read / deliveries received during the window.

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
bytes per connection = (RSS at the end of the hold - RSS before) / opened. \
--subscribe CHANNEL opens every connection with wshub.v1 and subscribes it to CHANNEL before \
it counts as opened; the cost of one subscription is then the difference in bytes per \
connection between a run with --subscribe and one with --subprotocol wshub.v1 alone (both \
have a wshub.v1 session; a raw-mode connection has none)."
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
only K senders send). --payload json sends a chat application's JSON events instead of \
letters after the header (the header is then the value of their first field). See \
`wshub-bench --help` for how the window, loss and latency are defined and what the payloads \
look like."
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
    /// wshub.v1: N subscribers of one channel, S publishers: fanout's figures plus offsets.
    #[command(
        long_about = "Open --conns connections with the wshub.v1 subprotocol; each \
subscribes to --channel and counts as opened once the subscribe reply came (so sending starts \
only when every subscription is live). --senders of them (spread evenly) publish with \
{\"id\":1,\"cmd\":\"publish\",\"channel\":NAME,\"data\":\"...\"}, the data a string of --size \
characters whose first 32 carry the run tag, sender id, sequence number and send time. Every \
subscriber receives every publication as a push {\"channel\",\"offset\",\"epoch\",\"data\"}; \
the publish replies ({\"id\":1,\"result\":...}) are consumed and counted as acknowledgements \
(or errors), never as deliveries. Modes, window, loss and latency are as in `fanout` (see \
`wshub-bench --help`); closed loop waits for the publisher's own push. Each subscriber also \
checks the offsets: the first push must carry the subscribe reply's offset + 1 and each next \
one the offset after it; offsets jumped over count as gaps, an offset at or below one already \
seen as a duplicate. The report's `failures` adds up lost deliveries, offset gaps and \
duplicates, publish errors and per-sender sequence anomalies (0 in a good run). The publish \
command must fit the server's --max-message-size (wshub: 5120 bytes by default), so keep \
--size below about 5000. Other clients publishing to the channel meanwhile show as foreign \
messages (their offsets are checked too). Several --url spread the subscribers over several \
nodes sharing the channel (wshub --broker redis://...), --sender-url puts the publishers on \
one of them, several --server-pid sum the server CPU over the nodes and Redis: see SEVERAL \
SERVERS in `wshub-bench --help`."
    )]
    Channel(ChannelArgs),
    /// wshub.v1: miss M publications, reconnect with `since`, time the catch-up.
    #[command(
        long_about = "Measure recovery after a reconnect (PROTOCOL.md, Recovery). One \
subscriber (wshub.v1) subscribes to --channel, records the channel's position (epoch, offset) \
from the reply and disconnects. Then --messages M publications are made to the channel, over \
a WebSocket with the publish command or, with --api-key, with POST /api/publish (pipelined, \
64 requests at a time; the key is the server's --api-key). Then the subscriber reconnects and \
subscribes with `since` = the recorded position: the catch-up time runs from just before the \
subscribe command is written to the arrival of the last byte of the frame that completes the \
M publications (normally all of them are in the reply's `publications`; any that come as \
pushes after it count too). The tool reports it, the time to the reply's first byte, the \
reply's size in bytes and, with --server-pid, the server CPU seconds used from the subscribe \
to the last byte, with nanosecond resolution (/proc/PID/task/*/schedstat). It verifies \
`recovered: true`, the epoch, and that every offset after the recorded one up to the last \
publication's arrives exactly once and in order, each with the data that was published at \
that offset. --repeat reconnects that many times with the same position (every round \
recovers the same M publications) for steadier figures.\n\n\
THE SERVER MUST KEEP M PUBLICATIONS: run wshub with --history-size M or more (its default is \
100; fewer makes the reply say `recovered: false`, reported as a failure) and finish within \
its --history-ttl (300 s by default). Publishing over a WebSocket needs client_publish = \
true (the default); with --client-publish false use --api-key."
    )]
    Recover(RecoverArgs),
    /// wshub.v1: N subscribers on node A, A drained or SIGTERMed: loss, duplicates, reconnects/s.
    #[command(
        long_about = "Measure taking node A of a cluster out of service. --conns wshub.v1 \
subscribers connect to --url (node A) and subscribe to a fresh channel (--channel plus a \
unique suffix); a publisher connected to --publish-url (default: the first --reconnect-url) \
publishes {\"data\": n} at --rate per second and records the offset of every acknowledged \
publication. After --before, node A is stopped: --stop drain sends POST /api/drain with \
--api-key, --stop sigterm sends SIGTERM to --pid. A subscriber whose connection ends waits as \
wshub.js does (after close 1012 a random time in [0, --restart-jitter]; after anything else a \
random time between --min-delay and a cap doubling per failed attempt) and reconnects to the \
next of --reconnect-url (round-robin over all subscribers, as a load balancer without sticky \
sessions), subscribing with `since` = its last offset. Once every subscriber is back (and, \
with --pid, node A has exited), publishing goes on for --after, then stops; the tool waits \
until every subscriber has the last acknowledged offset. Each subscriber must have seen every \
acknowledged offset exactly once, in order, from the channel's start (recovered ones from the \
subscribe reply included; a `recovered: false` counts as a failure). Reports lost and \
duplicated publications, the successful reconnects (101 received) per wall-clock second since \
the stop, per node, their peak (and the busiest 100 ms), the close codes seen, failed \
attempts by reason, the time until all were back and until node A exited. One process, one \
thread: N up to about 18,000 (the file limit)."
    )]
    Drain(DrainArgs),
    /// Internal: one worker process (started by the tool itself).
    #[command(hide = true)]
    Worker,
}

/// How `drain` stops node A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Stop {
    /// `POST /api/drain` (needs --api-key).
    Drain,
    /// SIGTERM to --pid.
    Sigterm,
}

/// `drain` flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct DrainArgs {
    /// Node A's WebSocket URL (ws://HOST:PORT/ws): every subscriber starts there.
    #[arg(long, value_name = "URL")]
    pub(crate) url: String,
    /// The other nodes, where dropped subscribers reconnect (round-robin).
    #[arg(long, value_name = "URL", value_delimiter = ',', required = true)]
    pub(crate) reconnect_url: Vec<String>,
    /// Where the publisher connects [default: the first --reconnect-url].
    #[arg(long, value_name = "URL")]
    pub(crate) publish_url: Option<String>,
    /// Subscribers.
    #[arg(long, short = 'n', value_name = "N")]
    pub(crate) conns: u64,
    /// Publications per second.
    #[arg(long, value_name = "R", default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// How node A is stopped.
    #[arg(long, value_enum, value_name = "HOW")]
    pub(crate) stop: Stop,
    /// Node A's API key (for --stop drain).
    #[arg(long, value_name = "KEY")]
    pub(crate) api_key: Option<String>,
    /// Node A's process id: SIGTERM goes there (--stop sigterm); with either, its exit is timed.
    #[arg(long, value_name = "PID")]
    pub(crate) pid: Option<u32>,
    /// The channel's name prefix (a unique suffix is added).
    #[arg(long, value_name = "NAME", default_value = "bench:drain")]
    pub(crate) channel: String,
    /// Publishing before node A is stopped.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    pub(crate) before: Duration,
    /// Publishing after every subscriber is back.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    pub(crate) after: Duration,
    /// After close 1012: reconnect within a random time up to this (wshub.js's restartJitter).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    pub(crate) restart_jitter: Duration,
    /// After any other end: the backoff's minimum (wshub.js's minDelay; the cap doubles).
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = duration)]
    pub(crate) min_delay: Duration,
    /// Handshakes in flight at most while opening on node A.
    #[arg(long, value_name = "P", default_value_t = 200)]
    pub(crate) parallel: usize,
    /// Give up on one connect + handshake after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub(crate) connect_timeout: Duration,
    /// Give up waiting for the opening, or for everyone to be back, after this long.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = duration)]
    pub(crate) timeout: Duration,
    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// Flags every load subcommand has.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// WebSocket URL of the server (ws:// only), e.g. ws://127.0.0.1:8080/ws. Several
    /// (repeat the flag, or separate them with commas): connection i goes to the
    /// (i mod n)-th, e.g. subscribers spread over the nodes of a cluster (see --help).
    #[arg(long, value_name = "URL", required = true, value_delimiter = ',')]
    pub(crate) url: Vec<String>,
    /// The server's process id: report its RSS (VmRSS) and CPU time from /proc. Several
    /// (repeat the flag, or separate them with commas): the server figures are the sums over
    /// all of them, e.g. every node and the Redis behind them (see --help).
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub(crate) server_pid: Vec<u32>,
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
    /// Offer permessage-deflate (no context takeover either way) in every handshake and
    /// inflate compressed messages; a server that declines fails the run. The tool's own
    /// messages go out uncompressed (RFC 7692 allows it per message).
    #[arg(long)]
    pub(crate) deflate: bool,
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
    /// Ask for this WebSocket subprotocol in every handshake (the server must choose it),
    /// e.g. wshub.v1.
    #[arg(long, value_name = "NAME")]
    pub(crate) subprotocol: Option<String>,
    /// wshub.v1: every connection subscribes to CHANNEL after its handshake and counts as
    /// opened once the reply came (implies --subprotocol wshub.v1).
    #[arg(long, value_name = "CHANNEL")]
    pub(crate) subscribe: Option<String>,
}

/// `fanout` flags.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections, all of them receivers.
    #[arg(long, short = 'n', value_name = "N")]
    pub(crate) conns: u64,
    /// How many of the connections also send (channel: publish).
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub(crate) senders: u64,
    /// Fixed-rate mode: messages per second in total across all senders.
    #[arg(long, value_name = "R", conflicts_with = "in_flight")]
    pub(crate) rate: Option<f64>,
    /// Closed-loop mode: messages outstanding in total [default mode, with K = 8].
    #[arg(long, value_name = "K")]
    pub(crate) in_flight: Option<u64>,
    /// Message size in bytes, at least 32 (the benchmark header); channel: the length of each
    /// publication's data string (a push is about 70 bytes + the channel name longer).
    #[arg(long, value_name = "B", default_value_t = 64)]
    pub(crate) size: usize,
    /// What the messages look like around the header (fanout only; see `--help`).
    #[arg(long, value_enum, value_name = "KIND", default_value_t = Payload::Letters)]
    pub(crate) payload: Payload,
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
    /// The senders (channel: publishers) connect here instead of to their share of --url,
    /// e.g. node A of a cluster while the subscribers are spread over every node.
    #[arg(long, value_name = "URL")]
    pub(crate) sender_url: Option<String>,
}

/// `channel` flags: fanout's, and the channel.
#[derive(Debug, Args)]
pub(crate) struct ChannelArgs {
    #[command(flatten)]
    pub(crate) load: FanoutArgs,
    /// The channel every connection subscribes to and the senders publish to (at most 100
    /// bytes; the server's `channels` must admit it).
    #[arg(long, value_name = "NAME", default_value = "bench")]
    pub(crate) channel: String,
}

/// `recover` flags.
#[derive(Debug, Args)]
pub(crate) struct RecoverArgs {
    /// WebSocket URL of the server (ws:// only), e.g. ws://127.0.0.1:8080/ws; the publish
    /// API is on the same host and port.
    #[arg(long, value_name = "URL")]
    pub(crate) url: String,
    /// Publications to miss and recover (the server's --history-size must be at least M).
    #[arg(long, short = 'm', value_name = "M")]
    pub(crate) messages: u64,
    /// Length of each publication's data string, at least 32 (the benchmark header).
    #[arg(long, value_name = "B", default_value_t = 64)]
    pub(crate) size: usize,
    /// The channel (at most 100 bytes; the server's `channels` must admit it).
    #[arg(long, value_name = "NAME", default_value = "bench:recover")]
    pub(crate) channel: String,
    /// Publish with POST /api/publish and `Authorization: Bearer KEY` (the server's
    /// --api-key) instead of the publish command over a WebSocket.
    #[arg(long, value_name = "KEY")]
    pub(crate) api_key: Option<String>,
    /// Reconnect and catch up this many times from the same position.
    #[arg(long, value_name = "R", default_value_t = 1)]
    pub(crate) repeat: u32,
    /// Give up on one catch-up (or on publishing) after this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub(crate) timeout: Duration,
    /// Give up on one connect + handshake after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub(crate) connect_timeout: Duration,
    /// The server's process id: report the CPU time the catch-up cost it.
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,
    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub(crate) quiet: bool,
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

    #[test]
    fn parses_several_urls_and_pids() {
        let cli = Cli::try_parse_from([
            "wshub-bench",
            "channel",
            "--url",
            "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws",
            "--url",
            "ws://127.0.0.1:3/ws",
            "--sender-url",
            "ws://127.0.0.1:1/ws",
            "--server-pid",
            "10,11",
            "--server-pid",
            "12",
            "--conns",
            "10",
        ]);
        let Ok(Cli {
            command: Cmd::Channel(ChannelArgs { load, .. }),
        }) = cli
        else {
            panic!("not parsed: {cli:?}");
        };
        assert_eq!(
            load.common.url,
            [
                "ws://127.0.0.1:1/ws",
                "ws://127.0.0.1:2/ws",
                "ws://127.0.0.1:3/ws"
            ]
        );
        assert_eq!(load.common.server_pid, [10, 11, 12]);
        assert_eq!(load.sender_url.as_deref(), Some("ws://127.0.0.1:1/ws"));
        // One of each, as before; --url stays required.
        let cli = Cli::try_parse_from([
            "wshub-bench",
            "idle",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--conns",
            "1",
        ]);
        assert!(matches!(
            cli,
            Ok(Cli { command: Cmd::Idle(IdleArgs { common: Common { ref url, ref server_pid, .. }, .. }) })
                if url.len() == 1 && server_pid.is_empty()
        ));
        assert!(Cli::try_parse_from(["wshub-bench", "idle", "--conns", "1"]).is_err());
    }

    #[test]
    fn parses_channel_and_recover() {
        let cli = Cli::try_parse_from([
            "wshub-bench",
            "channel",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--conns",
            "10",
            "--senders",
            "2",
            "--in-flight",
            "4",
            "--channel",
            "room",
        ]);
        assert!(matches!(
            cli,
            Ok(Cli { command: Cmd::Channel(ChannelArgs { load: FanoutArgs { conns: 10, senders: 2, in_flight: Some(4), .. }, channel }) })
                if channel == "room"
        ));
        let cli = Cli::try_parse_from([
            "wshub-bench",
            "recover",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--messages",
            "2000",
            "--api-key",
            "k",
        ]);
        assert!(matches!(
            cli,
            Ok(Cli { command: Cmd::Recover(RecoverArgs { messages: 2000, api_key: Some(k), repeat: 1, .. }) })
                if k == "k"
        ));
    }
}
