//! The hidden `worker` subcommand: one process holding a share of the connections on a
//! current-thread tokio runtime. Reads its `Plan` and then `Command`s from stdin, opens its
//! connections at the planned handshake rate/parallelism (or runs churn cycles), and reports
//! `Event`s on stdout until told to stop.

use std::io::BufRead;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{LocalSet, spawn_local};
use tokio::time::Instant;

use crate::conn::{self, Shared};
use crate::proto::{Command, Event, Mode, Plan, Schedule, WorkerReport, send_line};
use crate::{plan, sys};

/// Progress reports go out this often.
const TICK: Duration = Duration::from_millis(250);
/// ... and this often once the fan-out window is over.
const DRAIN_TICK: Duration = Duration::from_millis(20);

fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    if send_line(&mut out, event).is_err() {
        // The coordinator is gone: nobody to report to.
        std::process::exit(3);
    }
}

/// Runs a worker process to completion.
pub(crate) fn main() -> ExitCode {
    let soft = sys::raise_fd_limit();
    let stdin = std::io::stdin();
    let mut first = String::new();
    if stdin.lock().read_line(&mut first).is_err() {
        return ExitCode::FAILURE;
    }
    let plan: Plan = match serde_json::from_str(&first) {
        Ok(plan) => plan,
        Err(e) => {
            emit(&Event::Fatal {
                message: format!("bad plan: {e}"),
            });
            return ExitCode::FAILURE;
        }
    };
    let needed = plan.count + 64;
    if needed > soft {
        emit(&Event::Fatal {
            message: format!(
                "worker {} needs about {needed} file descriptors for {} connections but its limit is {soft}: use more --workers",
                plan.worker, plan.count
            ),
        });
        return ExitCode::FAILURE;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(cmd) => {
                    if tx.send(cmd).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("wshub-bench worker: bad command {line:?}: {e}"),
            }
        }
        // stdin closed: the coordinator is gone (or done); the receiver sees `None`.
    });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(&Event::Fatal {
                message: format!("runtime: {e}"),
            });
            return ExitCode::FAILURE;
        }
    };
    let local = LocalSet::new();
    runtime.block_on(local.run_until(work(plan, rx)));
    ExitCode::SUCCESS
}

async fn work(plan: Plan, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mode = plan.mode;
    let shared = Rc::new(Shared::new(plan));
    let (go_tx, go_rx) = watch::channel::<Option<Schedule>>(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let opener = match mode {
        Mode::Churn => spawn_local(churn(shared.clone())),
        Mode::Idle | Mode::Fanout | Mode::Channel => {
            spawn_local(open_all(shared.clone(), go_rx.clone(), stop_rx.clone()))
        }
    };
    tokio::pin!(opener);
    let mut opened = false;
    let mut open_times = (0, 0);
    let mut tick = tokio::time::interval(TICK);
    let far = Instant::now() + Duration::from_secs(10 * 365 * 86_400);
    let window = tokio::time::sleep_until(far);
    tokio::pin!(window);
    let mut window_armed = false;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Go(schedule)) => {
                    shared.window.set((schedule.warmup_end_us, schedule.window_end_us));
                    let _ = go_tx.send(Some(schedule));
                    // A little after the window closes, no sender can add a measured message.
                    let at = schedule.window_end_us.saturating_sub(sys::now_us()) + 5_000;
                    window.as_mut().reset(Instant::now() + Duration::from_micros(at));
                    window_armed = true;
                }
                Some(Command::Stop) | None => break,
            },
            times = &mut opener, if !opened => {
                opened = true;
                open_times = times.unwrap_or_default();
                if mode == Mode::Churn {
                    emit(&Event::Done);
                } else {
                    emit(&Event::Opened {
                        counters: shared.counters(),
                        open_start_us: open_times.0,
                        open_end_us: open_times.1,
                    });
                }
            }
            _ = &mut window, if window_armed => {
                window_armed = false;
                emit(&Event::SendDone { sent_measured: shared.sent_measured.get() });
                // While the coordinator waits for the last deliveries, tell it sooner.
                tick = tokio::time::interval(DRAIN_TICK);
            }
            _ = tick.tick() => emit(&Event::Progress(shared.counters())),
        }
    }
    let report = WorkerReport {
        counters: shared.counters(),
        open_start_us: open_times.0,
        open_end_us: open_times.1,
        latency: shared.hist.borrow().to_sparse(),
        echo_latency: shared.echo_hist.borrow().to_sparse(),
        anomalies: shared
            .anomalies
            .borrow()
            .iter()
            .filter(|a| a.duplicates + a.out_of_order + a.skipped > 0)
            .cloned()
            .collect(),
        foreign: shared.foreign.get(),
        pings: shared.pings.get(),
        stalls: shared.stalls.get(),
        backlog_skipped: shared.backlog_skipped.get(),
        errors: shared.errors(),
        offsets: shared.offsets.borrow().clone(),
        compressed_in_window: shared.compressed_in_window.get(),
        wire_received: shared.wire_received.get(),
        wire_sent: shared.wire_sent.get(),
        per_target: shared.per_target(),
    };
    emit(&Event::Final(Box::new(report)));
    // Close politely: every connection sends a close frame and waits (briefly) for the
    // server's close; then the process exits.
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(3);
    while shared.alive.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens this worker's connections; returns when every one was tried, with the wall-clock
/// times of the first connect and of the last handshake.
async fn open_all(
    shared: Rc<Shared>,
    go: watch::Receiver<Option<Schedule>>,
    stop: watch::Receiver<bool>,
) -> (u64, u64) {
    let plan = &shared.plan;
    let parallel = plan.parallel.clamp(1, u64::from(u32::MAX >> 3)) as u32;
    let permits = Arc::new(Semaphore::new(parallel as usize));
    let start_us = sys::now_us();
    let start = Instant::now();
    for i in 0..plan.count {
        if *stop.borrow() {
            break;
        }
        if plan.connect_rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / plan.connect_rate))
                .await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let index = plan.first + i;
        let shared = shared.clone();
        let (go, stop) = (go.clone(), stop.clone());
        spawn_local(async move {
            let source = source_for(&shared.plan, index);
            let me = shared.sender_of(index);
            let target = plan::target_of(&shared.plan, index, me.is_some());
            let limit = Duration::from_millis(shared.plan.connect_timeout_ms);
            let result =
                match tokio::time::timeout(limit, conn::open(&shared, target, source, me)).await {
                    Ok(result) => result,
                    Err(_) => Err("timeout (connect + handshake)".into()),
                };
            drop(permit);
            match result {
                Ok(conn) => {
                    shared.opened.set(shared.opened.get() + 1);
                    shared.opened_to(conn.target);
                    shared.alive.set(shared.alive.get() + 1);
                    conn::run(conn, shared, go, stop).await;
                }
                Err(why) => {
                    shared.failed.set(shared.failed.get() + 1);
                    shared.error(why);
                }
            }
        });
    }
    let _ = permits.acquire_many(parallel).await;
    (start_us, sys::now_us())
}

fn source_for(plan: &Plan, index: u64) -> Option<std::net::IpAddr> {
    if plan.sources.is_empty() {
        None
    } else {
        plan.sources
            .get((index % plan.sources.len() as u64) as usize)
            .copied()
    }
}

/// Churn: `count` loops, each connecting, completing the handshake and closing, until this
/// worker's `cycles` are done. The handshake time (connect to 101) goes in the histogram.
async fn churn(shared: Rc<Shared>) -> (u64, u64) {
    let start_us = sys::now_us();
    let next = Rc::new(std::cell::Cell::new(0u64));
    let mut loops = Vec::new();
    for _ in 0..shared.plan.count.max(1) {
        let shared = shared.clone();
        let next = next.clone();
        loops.push(spawn_local(async move {
            let plan = &shared.plan;
            let limit = Duration::from_millis(plan.connect_timeout_ms);
            loop {
                let cycle = next.get();
                if cycle >= plan.cycles {
                    break;
                }
                next.set(cycle + 1);
                let index = plan.first + cycle;
                let began = Instant::now();
                let result = match tokio::time::timeout(
                    limit,
                    conn::open(
                        &shared,
                        plan::target_of(plan, index, false),
                        source_for(plan, index),
                        None,
                    ),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err("timeout (connect + handshake)".into()),
                };
                match result {
                    Ok(conn) => {
                        shared
                            .hist
                            .borrow_mut()
                            .record(began.elapsed().as_micros() as u64);
                        shared.opened.set(shared.opened.get() + 1);
                        conn.close(&shared, Duration::from_secs(2)).await;
                        shared.cycles_ok.set(shared.cycles_ok.get() + 1);
                    }
                    Err(why) => {
                        shared.failed.set(shared.failed.get() + 1);
                        shared.cycles_failed.set(shared.cycles_failed.get() + 1);
                        shared.error(why);
                    }
                }
            }
        }));
    }
    for handle in loops {
        let _ = handle.await;
    }
    (start_us, sys::now_us())
}
