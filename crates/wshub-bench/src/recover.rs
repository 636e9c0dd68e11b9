//! `recover`: recovery after a reconnect, on one connection in the main process (no
//! workers). A subscriber records the channel's position and leaves; M publications are
//! made (publish commands over a WebSocket, or pipelined `POST /api/publish`); then, once per
//! round, the subscriber reconnects, subscribes with `since` and is timed until it holds all
//! of them, while the server's CPU time is read with nanosecond resolution. Every recovered
//! publication is checked against what was published at its offset.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::cli::RecoverArgs;
use crate::client::{Client, Http};
use crate::plan::{self, Target};
use crate::report::{RecoverClient, RecoverReport, RecoverRound, RecoverServer, Spread, si};
use crate::wire::{HEADER_LEN, Header};
use crate::{sys, v1};

/// Publish commands or requests in flight at once.
const WINDOW: u64 = 64;

/// Any frame from the server: with an `id` a reply, else (with an `offset`) a push.
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(default)]
    id: Option<Box<RawValue>>,
    #[serde(default)]
    result: Option<Position>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// A result with a stream position (subscribe, publish; `POST /api/publish`'s body).
#[derive(Debug, Deserialize)]
struct Position {
    epoch: String,
    offset: u64,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    publications: Vec<Publication>,
}

#[derive(Debug, Deserialize)]
struct Publication {
    offset: u64,
    data: Box<RawValue>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: u64,
    message: String,
}

fn parse(payload: &[u8]) -> Result<Incoming, String> {
    serde_json::from_slice(payload).map_err(|e| {
        format!(
            "not a wshub.v1 frame ({e}): {}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        )
    })
}

/// The benchmark header at the start of a publication's data string.
fn header_of(data: &RawValue) -> Option<Header> {
    data.get()
        .strip_prefix('"')
        .and_then(|text| Header::parse(text.as_bytes()))
}

/// Prints progress lines on stderr unless quiet.
struct Say {
    quiet: bool,
    began: Instant,
}

impl Say {
    fn line(&self, text: impl FnOnce() -> String) {
        if !self.quiet {
            eprintln!("[{:6.1}s] {}", self.began.elapsed().as_secs_f64(), text());
        }
    }
}

/// Subscribes, reads the position from the reply, disconnects.
fn position(target: &Target, args: &RecoverArgs) -> Result<(String, u64), String> {
    let mut client = Client::connect(target, Some(v1::SUBPROTOCOL), args.connect_timeout)?;
    client.send_text(v1::subscribe(&args.channel, v1::SUBSCRIBE_ID, None).as_bytes())?;
    let deadline = Instant::now() + args.timeout;
    loop {
        let message = client.next(deadline)?;
        let incoming = parse(&message.payload)?;
        if incoming.id.is_none() {
            continue;
        }
        if let Some(e) = incoming.error {
            return Err(format!(
                "subscribe to {}: {} {}",
                args.channel, e.code, e.message
            ));
        }
        if let Some(p) = incoming.result {
            client.close();
            return Ok((p.epoch, p.offset));
        }
    }
}

/// The header of publication `seq` of this run.
fn header(tag: u16, seq: u64) -> Header {
    Header {
        measured: true,
        tag,
        sender: 0,
        seq: seq as u32,
        sent_us: sys::now_us(),
    }
}

/// Publishes `args.messages` publications with the publish command, `WINDOW` at a time;
/// returns each one's (epoch, offset).
fn publish_ws(
    target: &Target,
    args: &RecoverArgs,
    tag: u16,
    say: &Say,
) -> Result<Vec<(String, u64)>, String> {
    let mut client = Client::connect(target, Some(v1::SUBPROTOCOL), args.connect_timeout)?;
    let mut positions = Vec::with_capacity(args.messages as usize);
    let mut next_say = Instant::now() + Duration::from_secs(1);
    let mut first = 0;
    while first < args.messages {
        let end = (first + WINDOW).min(args.messages);
        for seq in first..end {
            let (mut command, at) = v1::publish_template(&args.channel, seq, args.size);
            header(tag, seq).write(&mut command[at..at + HEADER_LEN]);
            client.send_text(&command)?;
        }
        let deadline = Instant::now() + args.timeout;
        while (positions.len() as u64) < end {
            let message = client.next(deadline)?;
            let incoming = parse(&message.payload)?;
            let Some(id) = incoming.id else { continue };
            if let Some(e) = incoming.error {
                let hint = if e.code == 403 {
                    " (the server does not let clients publish: use --api-key)"
                } else {
                    ""
                };
                return Err(format!(
                    "publish (id {}): {} {}{hint}",
                    id.get(),
                    e.code,
                    e.message
                ));
            }
            let Some(p) = incoming.result else {
                return Err(format!(
                    "publish (id {}): a reply without a result",
                    id.get()
                ));
            };
            if id.get() != positions.len().to_string() {
                return Err(format!(
                    "publish replies out of order: id {} where {} was due",
                    id.get(),
                    positions.len()
                ));
            }
            positions.push((p.epoch, p.offset));
        }
        first = end;
        if Instant::now() >= next_say {
            next_say += Duration::from_secs(1);
            say.line(|| format!("publishing: {first} of {}", args.messages));
        }
    }
    client.close();
    Ok(positions)
}

/// Publishes `args.messages` publications with `POST /api/publish`, `WINDOW` requests
/// pipelined at a time; returns each one's (epoch, offset).
fn publish_http(
    target: &Target,
    args: &RecoverArgs,
    key: &str,
    tag: u16,
    say: &Say,
) -> Result<Vec<(String, u64)>, String> {
    let mut http = Http::connect(target, "/api/publish", key, args.connect_timeout)?;
    let mut positions = Vec::with_capacity(args.messages as usize);
    let mut next_say = Instant::now() + Duration::from_secs(1);
    let mut first = 0;
    while first < args.messages {
        let end = (first + WINDOW).min(args.messages);
        let mut out = Vec::new();
        for seq in first..end {
            let (mut body, at) = v1::api_body_template(&args.channel, args.size);
            header(tag, seq).write(&mut body[at..at + HEADER_LEN]);
            http.push_request(&mut out, &body);
        }
        http.send(&out)?;
        let deadline = Instant::now() + args.timeout;
        for _ in first..end {
            let response = http.response(deadline)?;
            if response.status != 200 {
                let hint = match response.status {
                    401 | 403 => " (wrong --api-key?)",
                    404 => {
                        " (is the server's --api-key set, and does `channels` admit the channel?)"
                    }
                    _ => "",
                };
                return Err(format!(
                    "POST /api/publish: HTTP {}: {}{hint}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                ));
            }
            let p: Position = serde_json::from_slice(&response.body).map_err(|e| {
                format!(
                    "POST /api/publish answered {} ({e})",
                    String::from_utf8_lossy(&response.body)
                )
            })?;
            positions.push((p.epoch, p.offset));
        }
        first = end;
        if Instant::now() >= next_say {
            next_say += Duration::from_secs(1);
            say.line(|| format!("publishing: {first} of {}", args.messages));
        }
    }
    Ok(positions)
}

/// What one round has seen of the expected offsets `since + 1 ..= since + seq_at.len()`.
struct Tally<'a> {
    since: u64,
    tag: u16,
    /// Per expected offset: which of our publications it is (`None`: someone else's).
    seq_at: &'a [Option<u64>],
    seen: Vec<bool>,
    distinct: usize,
    highest: u64,
    round: RecoverRound,
}

impl Tally<'_> {
    fn record(&mut self, offset: u64, data: Option<&RawValue>) {
        let span = self.seen.len() as u64;
        if offset <= self.since || offset > self.since + span {
            self.round.unexpected += 1;
            return;
        }
        let k = (offset - self.since - 1) as usize;
        if self.seen[k] {
            self.round.duplicates += 1;
            return;
        }
        self.seen[k] = true;
        self.distinct += 1;
        if offset < self.highest {
            self.round.out_of_order += 1;
        } else {
            self.highest = offset;
        }
        if let Some(seq) = self.seq_at[k] {
            match data.and_then(header_of) {
                Some(h) if h.tag == self.tag && u64::from(h.seq) == seq => {}
                _ => self.round.bad_data += 1,
            }
        }
    }

    fn complete(&self) -> bool {
        self.distinct == self.seen.len()
    }
}

/// Reconnects, subscribes with `since` and waits for every expected publication.
fn round(
    target: &Target,
    args: &RecoverArgs,
    epoch: &str,
    since: u64,
    seq_at: &[Option<u64>],
    tag: u16,
) -> RecoverRound {
    let mut tally = Tally {
        since,
        tag,
        seq_at,
        seen: vec![false; seq_at.len()],
        distinct: 0,
        highest: since,
        round: RecoverRound {
            catch_up_ms: 0.0,
            first_byte_ms: 0.0,
            reply_bytes: 0,
            recovered: false,
            same_epoch: false,
            in_reply: 0,
            as_pushes: 0,
            missing: 0,
            duplicates: 0,
            out_of_order: 0,
            unexpected: 0,
            bad_data: 0,
            server_cpu_s: None,
            client_cpu_s: 0.0,
            error: None,
        },
    };
    let mut client = match Client::connect(target, Some(v1::SUBPROTOCOL), args.connect_timeout) {
        Ok(client) => client,
        Err(e) => {
            tally.round.error = Some(e);
            tally.round.missing = seq_at.len() as u64;
            return tally.round;
        }
    };
    let command = v1::subscribe(&args.channel, v1::SUBSCRIBE_ID, Some((epoch, since)));
    let server_cpu = |pid: u32| sys::cpu_seconds_fine(Some(pid)).or(sys::cpu_seconds(Some(pid)));
    let server_before = args.server_pid.and_then(server_cpu);
    let me_before = sys::own_cpu_seconds();
    let sent = Instant::now();
    let deadline = sent + args.timeout;
    let mut done_at = None;
    // This process's CPU time when the last message it needed had arrived (before parsing it).
    let mut me_done = None;
    let outcome = (|| -> Result<(), String> {
        client.send_text(command.as_bytes())?;
        let mut replied = false;
        while !replied || !tally.complete() {
            let message = client.next(deadline)?;
            let me_now = sys::own_cpu_seconds();
            let incoming = parse(&message.payload)?;
            if incoming.id.is_some() && !replied {
                replied = true;
                tally.round.first_byte_ms = ms_between(sent, message.first_at);
                tally.round.reply_bytes = message.payload.len() as u64;
                if let Some(e) = incoming.error {
                    return Err(format!("subscribe: {} {}", e.code, e.message));
                }
                let Some(p) = incoming.result else {
                    return Err("subscribe reply without a result".into());
                };
                tally.round.recovered = p.recovered == Some(true);
                tally.round.same_epoch = p.epoch == epoch;
                tally.round.in_reply = p.publications.len() as u64;
                for publication in &p.publications {
                    tally.record(publication.offset, Some(&publication.data));
                }
                if !tally.round.recovered {
                    // Nothing will come: the server no longer has them.
                    return Ok(());
                }
            } else if let (None, Some(offset)) = (&incoming.id, incoming.offset) {
                tally.round.as_pushes += 1;
                tally.record(offset, incoming.data.as_deref());
            }
            if replied && tally.complete() {
                done_at = Some(message.done_at);
                me_done = Some(me_now);
            }
        }
        Ok(())
    })();
    let end = done_at.unwrap_or_else(Instant::now);
    tally.round.server_cpu_s = match (args.server_pid.and_then(server_cpu), server_before) {
        (Some(after), Some(before)) => Some((after - before).max(0.0)),
        _ => None,
    };
    tally.round.client_cpu_s = (me_done.unwrap_or_else(sys::own_cpu_seconds) - me_before).max(0.0);
    tally.round.catch_up_ms = ms_between(sent, end);
    if let Err(e) = outcome {
        tally.round.error = Some(e);
    }
    client.close();
    tally.round.missing = (tally.seen.len() - tally.distinct) as u64;
    tally.round
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// `recover`.
pub(crate) fn recover(args: &RecoverArgs) -> Result<(RecoverReport, bool), String> {
    let began = Instant::now();
    let say = Say {
        quiet: args.quiet,
        began,
    };
    if args.messages == 0 {
        return Err("--messages must be at least 1".into());
    }
    if args.size < HEADER_LEN {
        return Err(format!(
            "--size must be at least {HEADER_LEN} (the benchmark header)"
        ));
    }
    if args.repeat == 0 {
        return Err("--repeat must be at least 1".into());
    }
    v1::check_channel(&args.channel)?;
    let target = plan::parse_url(&args.url)?;
    if let Some(pid) = args.server_pid
        && sys::cpu_seconds(Some(pid)).is_none()
    {
        return Err(format!("no process {pid} to measure"));
    }

    let (epoch, since) = position(&target, args)?;
    say.line(|| {
        format!(
            "subscribed to {}: epoch {epoch}, offset {since}; disconnected",
            args.channel
        )
    });

    let tag = fastrand::u16(..);
    let publishing = Instant::now();
    let positions = match &args.api_key {
        Some(key) => publish_http(&target, args, key, tag, &say)?,
        None => publish_ws(&target, args, tag, &say)?,
    };
    let publish_s = publishing.elapsed().as_secs_f64();
    if let Some((other, _)) = positions.iter().find(|(e, _)| *e != epoch) {
        return Err(format!(
            "the channel's epoch changed from {epoch} to {other} while publishing (history \
             expired or the server restarted): nothing to recover"
        ));
    }
    let mut previous = since;
    for &(_, offset) in &positions {
        if offset <= previous {
            return Err(format!(
                "publish offsets do not increase: {offset} after {previous}"
            ));
        }
        previous = offset;
    }
    let last = previous;
    let span = (last - since) as usize;
    let mut seq_at = vec![None; span];
    for (seq, &(_, offset)) in positions.iter().enumerate() {
        seq_at[(offset - since - 1) as usize] = Some(seq as u64);
    }
    let foreign = span as u64 - args.messages;
    say.line(|| {
        format!(
            "published {} in {publish_s:.2} s; offsets {}..={last}",
            args.messages,
            since + 1
        )
    });

    let mut rounds = Vec::with_capacity(args.repeat as usize);
    for i in 0..args.repeat {
        let r = round(&target, args, &epoch, since, &seq_at, tag);
        say.line(|| {
            format!(
                "round {}/{}: {} publications in {:.2} ms, reply {} bytes{}",
                i + 1,
                args.repeat,
                r.in_reply + r.as_pushes,
                r.catch_up_ms,
                r.reply_bytes,
                r.error
                    .as_deref()
                    .map(|e| format!(", error: {e}"))
                    .unwrap_or_default()
            )
        });
        rounds.push(r);
    }

    // Timing figures come from the rounds that got everything back.
    let good: Vec<&RecoverRound> = rounds
        .iter()
        .filter(|r| r.error.is_none() && r.recovered && r.missing == 0)
        .collect();
    let catch_up = Spread::of(&good.iter().map(|r| r.catch_up_ms).collect::<Vec<_>>());
    let first_byte = Spread::of(&good.iter().map(|r| r.first_byte_ms).collect::<Vec<_>>());
    let first = rounds.first();
    let reply_bytes = first.map_or(0, |r| r.reply_bytes);
    let in_reply = first.map_or(0, |r| r.in_reply);
    let n = good.len().max(1) as f64;
    let server = args.server_pid.map(|pid| {
        let cpu_s: f64 = good.iter().filter_map(|r| r.server_cpu_s).sum();
        RecoverServer {
            pid,
            cpu_s,
            cpu_s_per_round: cpu_s / n,
            cpu_us_per_publication: cpu_s / n / span.max(1) as f64 * 1e6,
            source: if sys::cpu_seconds_fine(Some(pid)).is_some() {
                "schedstat"
            } else {
                "stat"
            },
        }
    });
    let client_cpu_s: f64 = good.iter().map(|r| r.client_cpu_s).sum();
    let catch_up_s: f64 = good.iter().map(|r| r.catch_up_ms).sum::<f64>() / 1000.0;
    let core_pct = client_cpu_s / catch_up_s.max(1e-9) * 100.0;
    let publications_per_s = if catch_up.median_ms > 0.0 {
        span as f64 / (catch_up.median_ms / 1000.0)
    } else {
        0.0
    };
    let report = RecoverReport {
        scenario: "recover",
        url: args.url.clone(),
        channel: args.channel.clone(),
        messages: args.messages,
        size: args.size,
        published_via: if args.api_key.is_some() {
            "http"
        } else {
            "websocket"
        },
        publish_s,
        publishes_per_s: args.messages as f64 / publish_s.max(1e-9),
        epoch,
        since_offset: since,
        last_offset: last,
        foreign,
        repeat: args.repeat,
        catch_up,
        first_byte,
        reply_bytes,
        reply_bytes_per_publication: reply_bytes as f64 / in_reply.max(1) as f64,
        publications_per_s,
        server,
        client: RecoverClient {
            cpu_s: client_cpu_s,
            core_pct,
            client_bound: core_pct > 90.0,
        },
        failures: rounds.iter().map(RecoverRound::failures).sum(),
        rounds,
        wall_s: began.elapsed().as_secs_f64(),
    };
    say.line(|| {
        format!(
            "done: {} publications/s caught up",
            si(report.publications_per_s)
        )
    });
    Ok((report, args.json))
}
