//! The main process: starts the worker processes (this binary, `worker` subcommand), feeds
//! them their plans and commands, runs each scenario's phases on the clock, samples server
//! and client CPU/RSS at the phase boundaries, prints a progress line every second, and
//! merges the workers' final reports into the run's report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cli::{ChannelArgs, ChurnArgs, Common as CommonArgs, FanoutArgs, IdleArgs};
use crate::hist::{Histogram, Sparse};
use crate::payload::{self, Payload};
use crate::plan;
use crate::proto::{
    Command, Counters, Event, Mode, OffsetCheck, Plan, Schedule, SenderAnomaly, WorkerReport,
    send_line,
};
use crate::report::{
    ChannelReport, ChurnReport, ClientCpu, FanoutReport, IdleReport, Latency, ProcessCpu,
    ServerChurn, ServerCpu, ServerMemory, ServerProcess, UrlReport, si,
};
use crate::{sys, v1};

/// The worker processes of a run.
struct Fleet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    pids: Vec<u32>,
    events: mpsc::Receiver<(usize, Option<Event>)>,
    latest: Vec<Counters>,
    finals: Vec<Option<WorkerReport>>,
    /// CPU seconds per worker, read when its final report arrived (it is still alive then).
    final_cpu: Vec<f64>,
}

impl Fleet {
    fn spawn(plans: &[Plan]) -> Result<Fleet, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let (tx, events) = mpsc::channel();
        let mut fleet = Fleet {
            children: Vec::new(),
            stdins: Vec::new(),
            pids: Vec::new(),
            events,
            latest: vec![Counters::default(); plans.len()],
            finals: vec![None; plans.len()],
            final_cpu: vec![0.0; plans.len()],
        };
        for (i, plan) in plans.iter().enumerate() {
            let mut child = std::process::Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start worker {i}: {e}"))?;
            let mut stdin = child.stdin.take();
            if let Some(stdin) = stdin.as_mut() {
                send_line(stdin, plan).map_err(|e| format!("worker {i}: {e}"))?;
            }
            if let Some(stdout) = child.stdout.take() {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        match serde_json::from_str::<Event>(&line) {
                            Ok(event) => {
                                if tx.send((i, Some(event))).is_err() {
                                    return;
                                }
                            }
                            Err(e) => eprintln!("wshub-bench: worker {i} said {line:?}: {e}"),
                        }
                    }
                    let _ = tx.send((i, None));
                });
            }
            fleet.pids.push(child.id());
            fleet.children.push(child);
            fleet.stdins.push(stdin);
        }
        Ok(fleet)
    }

    fn len(&self) -> usize {
        self.children.len()
    }

    fn send(&mut self, command: &Command) {
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            if let Some(pipe) = stdin
                && send_line(pipe, command).is_err()
            {
                eprintln!("wshub-bench: worker {i} is gone");
                *stdin = None;
            }
        }
    }

    /// The next event before `until` (`Ok(None)`: timed out). Progress and counters are
    /// recorded here; a worker that fails or exits before its final report is an error.
    fn next(&mut self, until: Instant) -> Result<Option<(usize, Event)>, String> {
        let wait = until.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("all workers are gone".into()),
            Ok((i, None)) => {
                if self.finals[i].is_some() {
                    Ok(None)
                } else {
                    let status = self.children[i].try_wait().ok().flatten();
                    Err(format!("worker {i} exited early ({status:?})"))
                }
            }
            Ok((i, Some(event))) => {
                match &event {
                    Event::Progress(c) => self.latest[i] = c.clone(),
                    Event::Opened { counters, .. } => self.latest[i] = counters.clone(),
                    Event::Final(report) => {
                        self.latest[i] = report.counters.clone();
                        self.final_cpu[i] = sys::cpu_seconds(Some(self.pids[i])).unwrap_or(0.0);
                        self.finals[i] = Some((**report).clone());
                    }
                    Event::Fatal { message } => return Err(format!("worker {i}: {message}")),
                    Event::SendDone { .. } | Event::Done => {}
                }
                Ok(Some((i, event)))
            }
        }
    }

    /// Sums of the latest counters.
    fn totals(&self) -> Counters {
        let mut t = Counters::default();
        for c in &self.latest {
            t.opened += c.opened;
            t.failed += c.failed;
            t.alive += c.alive;
            t.dropped += c.dropped;
            t.sent += c.sent;
            t.sent_measured += c.sent_measured;
            t.delivered += c.delivered;
            t.received += c.received;
            t.received_in_window += c.received_in_window;
            t.cycles_ok += c.cycles_ok;
            t.cycles_failed += c.cycles_failed;
            t.declined += c.declined;
        }
        t
    }

    /// Sends `Stop` and waits for every final report.
    fn stop(&mut self) -> Result<Vec<WorkerReport>, String> {
        self.send(&Command::Stop);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.finals.iter().any(Option::is_none) {
            if Instant::now() > deadline {
                return Err("workers did not send their final reports".into());
            }
            self.next(deadline)?;
        }
        Ok(self.finals.iter().flatten().cloned().collect())
    }

    /// Lets the workers close their connections and exit; kills stragglers.
    fn finish(mut self) {
        self.stdins.clear();
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// CPU counters at one moment.
#[derive(Debug, Clone)]
struct CpuSample {
    at: Instant,
    me: f64,
    workers: Vec<f64>,
    /// The server processes' CPU seconds, summed (`None` without --server-pid).
    server: Option<f64>,
    /// Each one's (0 for a process that is gone).
    servers: Vec<f64>,
    /// The server's CPU time in ns resolution (schedstat), for short phases such as the
    /// opening of the connections, which /proc/PID/stat's 10 ms ticks cannot resolve.
    server_fine: Option<f64>,
    machine: f64,
}

impl CpuSample {
    fn take(fleet: &Fleet, pids: &[u32]) -> Self {
        let each: Vec<Option<f64>> = pids
            .iter()
            .map(|&pid| sys::cpu_seconds(Some(pid)))
            .collect();
        let fine: Option<Vec<f64>> = pids
            .iter()
            .map(|&pid| sys::cpu_seconds_fine(Some(pid)))
            .collect();
        Self {
            at: Instant::now(),
            me: sys::cpu_seconds(None).unwrap_or(0.0),
            workers: fleet
                .pids
                .iter()
                .map(|&pid| sys::cpu_seconds(Some(pid)).unwrap_or(0.0))
                .collect(),
            server: match pids {
                [] => None,
                [_] => each.first().copied().flatten(),
                _ => Some(each.iter().flatten().sum()),
            },
            servers: each.iter().map(|v| v.unwrap_or(0.0)).collect(),
            server_fine: fine.filter(|f| !f.is_empty()).map(|f| f.iter().sum()),
            machine: sys::machine_busy_seconds().unwrap_or(0.0),
        }
    }
}

/// The summed RSS of the server processes, KiB (`None` without --server-pid, or when one of
/// them is gone).
fn rss_sum(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| sys::rss_kib(pid)).sum()
}

/// Fails unless every `--server-pid` is a process that can be measured.
fn check_pids(pids: &[u32]) -> Result<(), String> {
    match pids
        .iter()
        .find(|&&pid| sys::cpu_seconds(Some(pid)).is_none())
    {
        Some(pid) => Err(format!("no process {pid} to measure")),
        None => Ok(()),
    }
}

/// The server's CPU seconds between two samples: from schedstat (ns) when both have it and
/// it moved forward (a thread that exited in between takes its time with it), else from
/// /proc/PID/stat's ticks.
fn phase_cpu(from: &CpuSample, to: &CpuSample) -> f64 {
    match (from.server_fine, to.server_fine) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => to.server.unwrap_or(0.0) - from.server.unwrap_or(0.0),
    }
}

/// The client CPU section: whole-run totals and the measured phase between `from` and `to`.
fn client_cpu(fleet: &Fleet, phase: &str, from: &CpuSample, to: &CpuSample) -> ClientCpu {
    let phase_s = to.at.duration_since(from.at).as_secs_f64().max(1e-9);
    let me_total = sys::cpu_seconds(None).unwrap_or(0.0);
    let mut processes = vec![ProcessCpu {
        role: "coordinator".into(),
        pid: std::process::id(),
        cpu_s: me_total,
        phase_cpu_s: to.me - from.me,
        phase_core_pct: (to.me - from.me) / phase_s * 100.0,
    }];
    for (i, &pid) in fleet.pids.iter().enumerate() {
        let used =
            to.workers.get(i).copied().unwrap_or(0.0) - from.workers.get(i).copied().unwrap_or(0.0);
        processes.push(ProcessCpu {
            role: format!("worker {i}"),
            pid,
            cpu_s: fleet.final_cpu[i],
            phase_cpu_s: used,
            phase_core_pct: used / phase_s * 100.0,
        });
    }
    let mine: f64 = processes.iter().map(|p| p.phase_cpu_s).sum();
    let cpus = sys::allowed_cpus();
    let server = to.server.unwrap_or(0.0) - from.server.unwrap_or(0.0);
    let other = (to.machine - from.machine - mine - server).max(0.0);
    ClientCpu {
        phase: phase.into(),
        phase_s,
        other_load_pct: other / phase_s * 100.0,
        total_cpu_s: processes.iter().map(|p| p.cpu_s).sum(),
        client_bound: processes.iter().any(|p| p.phase_core_pct > 90.0)
            || mine / phase_s > 0.9 * cpus as f64,
        cpus_allowed: cpus,
        processes,
    }
}

/// Prints a progress line on stderr at most once a second.
struct Progress {
    quiet: bool,
    began: Instant,
    next: Instant,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let now = Instant::now();
        Self {
            quiet,
            began: now,
            next: now + Duration::from_secs(1),
        }
    }

    fn due(&self) -> Instant {
        self.next
    }

    /// Prints `line()` if a second has passed since the last one.
    fn tick(&mut self, line: impl FnOnce(f64) -> String) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        while self.next <= now {
            self.next += Duration::from_secs(1);
        }
        if !self.quiet {
            let elapsed = now.duration_since(self.began).as_secs_f64();
            eprintln!("[{elapsed:6.1}s] {}", line(elapsed));
        }
    }
}

fn merge_errors(reports: &[WorkerReport]) -> BTreeMap<String, u64> {
    let mut errors = BTreeMap::new();
    for report in reports {
        for (what, count) in &report.errors {
            *errors.entry(what.clone()).or_default() += count;
        }
    }
    errors
}

fn merge_hist(reports: &[WorkerReport], which: impl Fn(&WorkerReport) -> &Sparse) -> Histogram {
    let mut hist = Histogram::new();
    for report in reports {
        hist.merge(&Histogram::from_sparse(which(report)));
    }
    hist
}

/// What every scenario sets up the same way.
struct Setup {
    sources: usize,
    fleet: Fleet,
    /// The servers the connections went to.
    targets: plan::Targets,
}

/// What the connections send and how they speak.
#[derive(Debug, Default)]
struct Traffic {
    senders: u64,
    size: usize,
    msg_rate: f64,
    in_flight: u64,
    /// Subprotocol to ask for.
    protocol: Option<String>,
    /// wshub.v1 channel to subscribe to (and, in channel mode, publish to).
    channel: Option<String>,
    /// Fan-out: what the messages look like.
    payload: Payload,
    /// Fan-out: the senders' own server (`--sender-url`).
    sender_url: Option<String>,
}

fn setup(
    mode: Mode,
    args: &CommonArgs,
    conns: u64,
    sockets: u64,
    connect_rate: f64,
    traffic: Traffic,
    cycles: u64,
) -> Result<Setup, String> {
    sys::raise_fd_limit();
    let targets = plan::parse_targets(&args.url, traffic.sender_url.as_deref())?;
    let sources = match targets.list.first() {
        Some(first) if plan::all_loopback(&targets.list) => {
            plan::sources(&first.addr, args.sources, sockets, sys::ephemeral_ports())
        }
        _ => Vec::new(),
    };
    let workers = plan::workers(args.workers, conns);
    let per_worker = conns.div_ceil(workers as u64);
    let hard = sys::hard_fd_limit();
    if per_worker + 64 > hard {
        return Err(format!(
            "{per_worker} connections per worker need more than the hard file limit ({hard}); use --workers {}",
            conns.div_ceil(hard.saturating_sub(2_000).max(1))
        ));
    }
    let Traffic {
        senders,
        size,
        msg_rate,
        in_flight,
        protocol,
        channel,
        payload,
        sender_url: _,
    } = traffic;
    let common = plan::Common {
        mode,
        targets: targets.clone(),
        sources: sources.clone(),
        total: conns,
        parallel: args.parallel,
        connect_rate,
        connect_timeout_ms: args.connect_timeout.as_millis() as u64,
        senders,
        size,
        msg_rate,
        in_flight,
        tag: fastrand::u16(..),
        cycles,
        quick_acks: args.quick_acks,
        protocol,
        channel,
        deflate: args.deflate,
        payload,
    };
    let plans = plan::split_plans(&common, workers);
    let fleet = Fleet::spawn(&plans)?;
    Ok(Setup {
        sources: sources.len(),
        fleet,
        targets,
    })
}

/// Waits until every worker reported `Opened`, printing progress; returns the wall-clock
/// open interval (first connect, last handshake).
fn wait_opened(
    fleet: &mut Fleet,
    progress: &mut Progress,
    conns: u64,
) -> Result<(u64, u64), String> {
    let mut done = vec![false; fleet.len()];
    let (mut first, mut last) = (u64::MAX, 0);
    let mut previous = 0;
    while done.iter().any(|d| !d) {
        if let Some((
            i,
            Event::Opened {
                open_start_us,
                open_end_us,
                ..
            },
        )) = fleet.next(progress.due())?
        {
            done[i] = true;
            first = first.min(open_start_us);
            last = last.max(open_end_us);
        }
        let t = fleet.totals();
        progress.tick(|_| {
            let line = format!(
                "opening: {} open, {} failed of {conns} ({}/s)",
                t.opened,
                t.failed,
                si((t.opened + t.failed - previous) as f64)
            );
            previous = t.opened + t.failed;
            line
        });
    }
    Ok((first, last.max(first)))
}

/// Fails the run if the server declined the permessage-deflate offer (`--deflate`): rather
/// than measure uncompressed traffic and call it compressed.
fn refuse_declined(totals: &Counters, tried: u64) -> Result<(), String> {
    if totals.declined == 0 {
        return Ok(());
    }
    Err(format!(
        "--deflate: the server declined permessage-deflate in {} of {tried} handshakes (its 101 \
         had no permessage-deflate in Sec-WebSocket-Extensions); wshub compresses only with \
         --compression true",
        totals.declined
    ))
}

/// `idle`.
pub(crate) fn idle(args: &IdleArgs) -> Result<(IdleReport, bool), String> {
    let began = Instant::now();
    let pids = args.common.server_pid.as_slice();
    let subprotocol = match (&args.subscribe, &args.subprotocol) {
        (Some(channel), Some(p)) if p != v1::SUBPROTOCOL => {
            return Err(format!(
                "--subscribe {channel} speaks {}, not --subprotocol {p}",
                v1::SUBPROTOCOL
            ));
        }
        (Some(_), _) => Some(v1::SUBPROTOCOL.to_string()),
        (None, p) => p.clone(),
    };
    if let Some(channel) = &args.subscribe {
        v1::check_channel(channel)?;
    }
    check_pids(pids)?;
    let rss_before = rss_sum(pids);
    let Setup {
        sources,
        mut fleet,
        targets,
    } = setup(
        Mode::Idle,
        &args.common,
        args.conns,
        args.conns,
        args.rate,
        Traffic {
            protocol: subprotocol.clone(),
            channel: args.subscribe.clone(),
            ..Traffic::default()
        },
        0,
    )?;
    let start = CpuSample::take(&fleet, pids);
    let mut progress = Progress::new(args.common.quiet);
    let (first, last) = wait_opened(&mut fleet, &mut progress, args.conns)?;
    refuse_declined(&fleet.totals(), args.conns)?;
    let opened_sample = CpuSample::take(&fleet, pids);
    let rss_opened = rss_sum(pids).unwrap_or(0);
    let mut rss_peak = rss_opened;
    let hold_end = Instant::now() + args.hold;
    let hold_start = Instant::now();
    while Instant::now() < hold_end {
        fleet.next(progress.due().min(hold_end))?;
        let rss = rss_sum(pids);
        if let Some(rss) = rss {
            rss_peak = rss_peak.max(rss);
        }
        let t = fleet.totals();
        progress.tick(|_| {
            format!(
                "holding {:.0}/{:.0} s: {} open, {} dropped{}",
                hold_start.elapsed().as_secs_f64().round(),
                args.hold.as_secs_f64(),
                t.alive,
                t.dropped,
                rss.map(|r| format!(", server rss {:.1} MiB", r as f64 / 1024.0))
                    .unwrap_or_default()
            )
        });
    }
    let rss_after = rss_sum(pids).unwrap_or(0);
    rss_peak = rss_peak.max(rss_after);
    let reports = fleet.stop()?;
    let totals = fleet.totals();
    let time_to_open_s = last.saturating_sub(first) as f64 / 1e6;
    let client = client_cpu(&fleet, "opening", &start, &opened_sample);
    let server = match (pids.first(), rss_before) {
        (Some(&pid), Some(before)) => Some(ServerMemory {
            pid,
            pids: several(pids),
            rss_before_kib: before,
            rss_opened_kib: rss_opened,
            rss_after_kib: rss_after,
            rss_peak_kib: rss_peak,
            bytes_per_conn: if totals.opened > 0 {
                (rss_after as f64 - before as f64) * 1024.0 / totals.opened as f64
            } else {
                0.0
            },
            open_cpu_s: phase_cpu(&start, &opened_sample),
        }),
        _ => None,
    };
    let workers = fleet.len();
    fleet.finish();
    let report = IdleReport {
        scenario: "idle",
        url: targets.urls.first().cloned().unwrap_or_default(),
        urls: several(&targets.urls),
        conns: args.conns,
        deflate: args.common.deflate,
        subprotocol,
        subscribe: args.subscribe.clone(),
        opened: totals.opened,
        failed: totals.failed,
        time_to_open_s,
        open_rate_per_s: if time_to_open_s > 0.0 {
            totals.opened as f64 / time_to_open_s
        } else {
            0.0
        },
        hold_s: args.hold.as_secs_f64(),
        dropped: totals.dropped,
        pings: reports.iter().map(|r| r.pings).sum(),
        errors: merge_errors(&reports),
        server,
        workers,
        sources,
        client,
        wall_s: began.elapsed().as_secs_f64(),
    };
    Ok((report, args.common.json))
}

/// `values` if there are several, else nothing (the report's plural fields are left out for
/// one server, so its JSON stays as it was).
fn several<T: Clone>(values: &[T]) -> Vec<T> {
    if values.len() > 1 {
        values.to_vec()
    } else {
        Vec::new()
    }
}

/// `fanout`.
pub(crate) fn fanout(args: &FanoutArgs) -> Result<(FanoutReport, bool), String> {
    broadcast(args, None).map(|(report, _)| (report, args.common.json))
}

/// `channel`.
pub(crate) fn channel(args: &ChannelArgs) -> Result<(ChannelReport, bool), String> {
    v1::check_channel(&args.channel)?;
    let (run, reports) = broadcast(&args.load, Some(&args.channel))?;
    let mut offsets = OffsetCheck::default();
    for report in &reports {
        offsets.add(&report.offsets);
    }
    let failures = run.lost.max(0) as u64
        + offsets.gaps
        + offsets.duplicates
        + offsets.publish_errors
        + run.duplicates
        + run.out_of_order
        + run.skipped;
    let report = ChannelReport {
        run,
        channel: args.channel.clone(),
        offsets,
        failures,
    };
    Ok((report, args.load.common.json))
}

/// `fanout`, or with a channel `channel`: open, send on the schedule, drain, merge.
fn broadcast(
    args: &FanoutArgs,
    channel: Option<&str>,
) -> Result<(FanoutReport, Vec<WorkerReport>), String> {
    let began = Instant::now();
    let pids = args.common.server_pid.as_slice();
    if args.size < crate::wire::HEADER_LEN {
        return Err(format!(
            "--size must be at least {} (the benchmark header)",
            crate::wire::HEADER_LEN
        ));
    }
    if args.payload == Payload::Json {
        if channel.is_some() {
            return Err(
                "--payload json is for fanout (a publication's data is a JSON string)".into(),
            );
        }
        if args.size < payload::JSON_MIN_SIZE {
            return Err(format!(
                "--payload json needs --size {} or more",
                payload::JSON_MIN_SIZE
            ));
        }
    }
    if args.senders == 0 || args.senders > args.conns {
        return Err("--senders must be between 1 and --conns".into());
    }
    if args.conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    let (rate, in_flight) = match (args.rate, args.in_flight) {
        (Some(r), _) if r > 0.0 => (r, 0),
        (Some(_), _) => return Err("--rate must be positive".into()),
        (None, k) => (0.0, k.unwrap_or(8).max(1)),
    };
    check_pids(pids)?;
    let Setup {
        sources,
        mut fleet,
        targets,
    } = setup(
        if channel.is_some() {
            Mode::Channel
        } else {
            Mode::Fanout
        },
        &args.common,
        args.conns,
        args.conns,
        args.connect_rate,
        Traffic {
            senders: args.senders,
            size: args.size,
            msg_rate: rate,
            in_flight,
            protocol: channel.map(|_| v1::SUBPROTOCOL.to_string()),
            channel: channel.map(str::to_string),
            payload: args.payload,
            sender_url: args.sender_url.clone(),
        },
        0,
    )?;
    let mut progress = Progress::new(args.common.quiet);
    wait_opened(&mut fleet, &mut progress, args.conns)?;
    let opened = fleet.totals();
    refuse_declined(&opened, args.conns)?;
    if opened.opened == 0 {
        let reports = fleet.stop()?;
        let errors = merge_errors(&reports);
        return Err(format!("no connection opened: {errors:?}"));
    }
    if opened.failed > 0 && !args.common.quiet {
        eprintln!(
            "wshub-bench: {} of {} connections failed; going on with {}",
            opened.failed, args.conns, opened.opened
        );
    }
    let start_us = sys::now_us() + 200_000;
    let schedule = Schedule {
        start_us,
        warmup_end_us: start_us + args.warmup.as_micros() as u64,
        window_end_us: start_us + (args.warmup + args.duration).as_micros() as u64,
    };
    let at = |us: u64| Instant::now() + Duration::from_micros(us.saturating_sub(sys::now_us()));
    let warmup_end = at(schedule.warmup_end_us);
    let window_end = at(schedule.window_end_us);
    let drain_end = window_end + args.drain;
    fleet.send(&Command::Go(schedule));
    let mut window_start_sample = None;
    let mut window_end_sample = None;
    let mut send_done = vec![None; fleet.len()];
    let mut expected = None;
    let mut previous = (fleet.totals().received, Instant::now());
    let stopped_at = loop {
        let now = Instant::now();
        if window_start_sample.is_none() && now >= warmup_end {
            window_start_sample = Some(CpuSample::take(&fleet, pids));
        }
        if window_end_sample.is_none() && now >= window_end {
            window_end_sample = Some(CpuSample::take(&fleet, pids));
        }
        let t = fleet.totals();
        if let Some(expected) = expected
            && t.delivered >= expected
        {
            break now;
        }
        if now >= drain_end {
            break now;
        }
        let phase = if now < warmup_end {
            "warm-up"
        } else if now < window_end {
            "window"
        } else {
            "drain"
        };
        progress.tick(|_| {
            let rate =
                (t.received - previous.0) as f64 / previous.1.elapsed().as_secs_f64().max(1e-9);
            previous = (t.received, Instant::now());
            format!(
                "{phase}: {} open, {} dropped, {} sent, {} deliveries/s",
                t.alive,
                t.dropped,
                t.sent,
                si(rate)
            )
        });
        let mut until = progress.due().min(drain_end);
        if window_start_sample.is_none() {
            until = until.min(warmup_end);
        }
        if window_end_sample.is_none() {
            until = until.min(window_end);
        }
        if let Some((i, Event::SendDone { sent_measured })) = fleet.next(until)? {
            send_done[i] = Some(sent_measured);
            if send_done.iter().all(Option::is_some) {
                let sent: u64 = send_done.iter().flatten().sum();
                expected = Some(sent * opened.opened);
            }
        }
    };
    let window_start_sample = window_start_sample.unwrap_or_else(|| CpuSample::take(&fleet, pids));
    let window_end_sample = window_end_sample.unwrap_or_else(|| CpuSample::take(&fleet, pids));
    let server_rss: Vec<u64> = pids
        .iter()
        .map(|&pid| sys::rss_kib(pid).unwrap_or(0))
        .collect();
    let reports = fleet.stop()?;
    let totals = fleet.totals();
    let hist = merge_hist(&reports, |r| &r.latency);
    let mut anomalies: BTreeMap<u32, SenderAnomaly> = BTreeMap::new();
    for a in reports.iter().flat_map(|r| &r.anomalies) {
        let e = anomalies.entry(a.sender).or_insert_with(|| SenderAnomaly {
            sender: a.sender,
            ..SenderAnomaly::default()
        });
        e.duplicates += a.duplicates;
        e.out_of_order += a.out_of_order;
        e.skipped += a.skipped;
    }
    let anomalies: Vec<SenderAnomaly> = anomalies.into_values().collect();
    let sent = send_done
        .iter()
        .flatten()
        .sum::<u64>()
        .max(totals.sent_measured);
    let expected = sent * opened.opened;
    let duration_s = args.duration.as_secs_f64();
    let wire_received: u64 = reports.iter().map(|r| r.wire_received).sum();
    let wire_sent: u64 = reports.iter().map(|r| r.wire_sent).sum();
    let client = client_cpu(&fleet, "window", &window_start_sample, &window_end_sample);
    let server = pids.first().map(|&pid| {
        let cpu_s =
            window_end_sample.server.unwrap_or(0.0) - window_start_sample.server.unwrap_or(0.0);
        let window_s = window_end_sample
            .at
            .duration_since(window_start_sample.at)
            .as_secs_f64()
            .max(1e-9);
        let processes = if pids.len() > 1 {
            pids.iter()
                .enumerate()
                .map(|(i, &pid)| {
                    let used = window_end_sample.servers.get(i).copied().unwrap_or(0.0)
                        - window_start_sample.servers.get(i).copied().unwrap_or(0.0);
                    ServerProcess {
                        pid,
                        name: sys::process_name(pid).unwrap_or_default(),
                        cpu_s: used,
                        core_pct: used / window_s * 100.0,
                        rss_kib: server_rss.get(i).copied().unwrap_or(0),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        ServerCpu {
            pid,
            cpu_s,
            core_pct: cpu_s / window_s * 100.0,
            deliveries_per_cpu_s: if cpu_s > 0.0 {
                totals.received_in_window as f64 / cpu_s
            } else {
                0.0
            },
            rss_kib: server_rss.iter().sum(),
            processes,
        }
    });
    let per_url = per_url(&targets, &reports, sent);
    let workers = fleet.len();
    fleet.finish();
    let report = FanoutReport {
        scenario: if channel.is_some() {
            "channel"
        } else {
            "fanout"
        },
        url: targets.urls.first().cloned().unwrap_or_default(),
        urls: several(&targets.urls[..targets.spread.min(targets.urls.len())]),
        sender_url: args.sender_url.clone(),
        conns: args.conns,
        opened: opened.opened,
        failed: opened.failed,
        senders: args.senders,
        mode: if in_flight > 0 {
            "closed-loop"
        } else {
            "fixed-rate"
        },
        in_flight: (in_flight > 0).then_some(in_flight),
        rate: (rate > 0.0).then_some(rate),
        active_senders: if in_flight > 0 {
            args.senders.min(in_flight)
        } else {
            args.senders
        },
        quick_acks: args.common.quick_acks,
        deflate: args.common.deflate,
        payload: args.payload,
        size: args.size,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s,
        drain_s: stopped_at
            .saturating_duration_since(window_end)
            .as_secs_f64(),
        sent,
        sent_total: totals.sent,
        expected,
        delivered: totals.delivered,
        lost: expected as i64 - totals.delivered as i64,
        duplicates: anomalies.iter().map(|a| a.duplicates).sum(),
        out_of_order: anomalies.iter().map(|a| a.out_of_order).sum(),
        skipped: anomalies.iter().map(|a| a.skipped).sum(),
        anomalies,
        received_in_window: totals.received_in_window,
        compressed_in_window: reports.iter().map(|r| r.compressed_in_window).sum(),
        wire_bytes_received: wire_received,
        wire_bytes_sent: wire_sent,
        wire_bytes_per_delivery: wire_received as f64 / totals.received_in_window.max(1) as f64,
        deliveries_per_s: totals.received_in_window as f64 / duration_s.max(1e-9),
        latency: Latency::of(&hist),
        echo_latency: Latency::of(&merge_hist(&reports, |r| &r.echo_latency)),
        dropped: totals.dropped,
        foreign: reports.iter().map(|r| r.foreign).sum(),
        stalls: reports.iter().map(|r| r.stalls).sum(),
        backlog_skipped: reports.iter().map(|r| r.backlog_skipped).sum(),
        pings: reports.iter().map(|r| r.pings).sum(),
        errors: merge_errors(&reports),
        server,
        per_url,
        workers,
        sources,
        client,
        wall_s: began.elapsed().as_secs_f64(),
    };
    Ok((report, reports))
}

/// With several servers: each one's connections, deliveries and latency, merged over the
/// workers (`sent`: messages sent in the window, so each connection expects that many).
fn per_url(targets: &plan::Targets, reports: &[WorkerReport], sent: u64) -> Vec<UrlReport> {
    if targets.list.len() < 2 {
        return Vec::new();
    }
    targets
        .urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let mut hist = Histogram::new();
            let (mut opened, mut delivered) = (0, 0);
            for tally in reports.iter().filter_map(|r| r.per_target.get(i)) {
                opened += tally.opened;
                delivered += tally.delivered;
                hist.merge(&Histogram::from_sparse(&tally.latency));
            }
            let expected = sent * opened;
            UrlReport {
                url: url.clone(),
                senders: targets.senders == Some(i),
                opened,
                expected,
                delivered,
                lost: expected as i64 - delivered as i64,
                latency: Latency::of(&hist),
            }
        })
        .collect()
}

/// `churn`.
pub(crate) fn churn(args: &ChurnArgs) -> Result<(ChurnReport, bool), String> {
    let began = Instant::now();
    let pids = args.common.server_pid.as_slice();
    if args.conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    check_pids(pids)?;
    let Setup {
        sources,
        mut fleet,
        targets,
    } = setup(
        Mode::Churn,
        &args.common,
        args.conns,
        args.conns.max(args.cycles),
        0.0,
        Traffic::default(),
        args.cycles,
    )?;
    let start = CpuSample::take(&fleet, pids);
    let mut progress = Progress::new(args.common.quiet);
    let mut done = vec![false; fleet.len()];
    let mut previous = 0;
    while done.iter().any(|d| !d) {
        if let Some((i, Event::Done)) = fleet.next(progress.due())? {
            done[i] = true;
        }
        let t = fleet.totals();
        progress.tick(|_| {
            let line = format!(
                "churn: {} ok, {} failed of {} ({}/s)",
                t.cycles_ok,
                t.cycles_failed,
                args.cycles,
                si((t.cycles_ok - previous) as f64)
            );
            previous = t.cycles_ok;
            line
        });
    }
    let end = CpuSample::take(&fleet, pids);
    let reports = fleet.stop()?;
    let totals = fleet.totals();
    refuse_declined(&totals, args.cycles)?;
    let first = reports.iter().map(|r| r.open_start_us).min().unwrap_or(0);
    let last = reports.iter().map(|r| r.open_end_us).max().unwrap_or(0);
    let elapsed_s = (last.saturating_sub(first) as f64 / 1e6).max(1e-9);
    let hist = merge_hist(&reports, |r| &r.latency);
    let client = client_cpu(&fleet, "run", &start, &end);
    let server = pids.first().map(|&pid| {
        let cpu_s = end.server.unwrap_or(0.0) - start.server.unwrap_or(0.0);
        ServerChurn {
            pid,
            pids: several(pids),
            cpu_s,
            handshakes_per_cpu_s: if cpu_s > 0.0 {
                totals.cycles_ok as f64 / cpu_s
            } else {
                0.0
            },
        }
    });
    let workers = fleet.len();
    fleet.finish();
    let report = ChurnReport {
        scenario: "churn",
        url: targets.urls.first().cloned().unwrap_or_default(),
        urls: several(&targets.urls),
        concurrency: args.conns,
        cycles: args.cycles,
        deflate: args.common.deflate,
        ok: totals.cycles_ok,
        failed: totals.cycles_failed,
        elapsed_s,
        handshakes_per_s: totals.cycles_ok as f64 / elapsed_s,
        handshake: Latency::of(&hist),
        errors: merge_errors(&reports),
        server,
        workers,
        sources,
        client,
        wall_s: began.elapsed().as_secs_f64(),
    };
    Ok((report, args.common.json))
}
