//! The `run` command: drives the workloads against one server and writes its results file.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use crate::client::{Api, ROOM_ID_COLLISIONS};
use crate::procfs::{Monitor, Snapshot};
use crate::results::{ServerResult, unix_now};
use crate::workloads::{Ctx, Outcome, fanout, initial_sync, latency, log, throughput};

/// The workloads, in the order they run.
pub const WORKLOADS: [&str; 4] = ["latency", "throughput", "initial_sync", "fanout"];

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the server's column in the report (e.g. rhizome, synapse-sqlite).
    #[arg(long)]
    server: String,
    /// Base URL of the Client-Server API, e.g. http://127.0.0.1:8008.
    #[arg(long)]
    base_url: String,
    /// PID of the server process, for RSS and CPU readings from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// PID of a database server's main process (e.g. PostgreSQL's postmaster), whose CPU
    /// time (with its children) is reported separately.
    #[arg(long)]
    db_pid: Option<u32>,
    /// Where to write this server's results JSON.
    #[arg(long)]
    out: PathBuf,
    /// Small sizes and short durations, for development.
    #[arg(long)]
    quick: bool,
    /// Comma-separated workloads to run (default: all).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(WORKLOADS))]
    workloads: Vec<String>,
    /// Concurrent requests while setting up users and rooms.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds to let the server settle before the idle reading.
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Latency: sender/receiver pairs [default: 10, quick 5].
    #[arg(long)]
    latency_pairs: Option<usize>,
    /// Latency: seconds of measurement [default: 20, quick 6].
    #[arg(long)]
    latency_secs: Option<u64>,
    /// Latency: mean milliseconds between a pair's messages [default: 500].
    #[arg(long, default_value_t = 500)]
    latency_interval_ms: u64,
    /// Throughput: concurrent senders [default: 20, quick 10].
    #[arg(long)]
    tp_senders: Option<usize>,
    /// Throughput: rooms the senders are spread over [default: 10, quick 5].
    #[arg(long)]
    tp_rooms: Option<usize>,
    /// Throughput: seconds of sending [default: 30, quick 10].
    #[arg(long)]
    tp_secs: Option<u64>,
    /// Initial sync: rooms the user is in [default: 300, quick 30].
    #[arg(long)]
    sync_rooms: Option<usize>,
    /// Initial sync: messages of history per room [default: 10, quick 5].
    #[arg(long)]
    sync_history: Option<usize>,
    /// Initial sync: incremental syncs measured, each after 5 new messages [default: 5]
    /// (more gives a profiler something to see).
    #[arg(long)]
    sync_rounds: Option<usize>,
    /// Fan-out: members of the room, all long-polling [default: 500, quick 100].
    #[arg(long)]
    fanout_members: Option<usize>,
    /// Fan-out: messages sent, one per round [default: 3, quick 2].
    #[arg(long)]
    fanout_rounds: Option<usize>,
}

/// Every workload's settings, resolved from the defaults, `--quick` and overrides.
struct Plan {
    latency: latency::Params,
    throughput: throughput::Params,
    initial_sync: initial_sync::Params,
    fanout: fanout::Params,
}

impl Plan {
    fn from_args(a: &RunArgs) -> Self {
        let q = a.quick;
        let pick =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let secs = |v: Option<u64>, full: u64, quick: u64| {
            Duration::from_secs(v.unwrap_or(if q { quick } else { full }))
        };
        Self {
            latency: latency::Params {
                pairs: pick(a.latency_pairs, 10, 5),
                duration: secs(a.latency_secs, 20, 6),
                warmup: 3,
                interval: Duration::from_millis(a.latency_interval_ms),
                max_per_pair: 10_000,
            },
            throughput: throughput::Params {
                senders: pick(a.tp_senders, 20, 10),
                rooms: pick(a.tp_rooms, 10, 5),
                duration: secs(a.tp_secs, 30, 10),
                max_per_sender: 1_000_000,
            },
            initial_sync: initial_sync::Params {
                rooms: pick(a.sync_rooms, 300, 30),
                history: pick(a.sync_history, 10, 5),
                incremental_rounds: a.sync_rounds.unwrap_or(5),
            },
            fanout: fanout::Params {
                members: pick(a.fanout_members, 500, 100),
                rounds: pick(a.fanout_rounds, 3, 2),
                settle: Duration::from_millis(if q { 1000 } else { 2000 }),
                round_timeout: Duration::from_secs(120),
            },
        }
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::from_args(&args);
    let selected: Vec<&str> = if args.workloads.is_empty() {
        WORKLOADS.to_vec()
    } else {
        WORKLOADS.into_iter().filter(|w| args.workloads.iter().any(|s| s == w)).collect()
    };
    let api = Api::new(&args.base_url)?;
    let mut result = ServerResult {
        server: args.server.clone(),
        base_url: args.base_url.clone(),
        unix_time: unix_now(),
        quick: args.quick,
        ..ServerResult::default()
    };
    api.wait_ready(Duration::from_secs(60)).await?;
    let monitor = match args.pid {
        Some(pid) => Some(Monitor::new(pid, args.db_pid)?),
        None => None,
    };
    let snap = |m: &Option<Monitor>| m.as_ref().map(Monitor::snapshot).transpose();

    let idle = Duration::from_secs(args.idle_secs.unwrap_or(if args.quick { 1 } else { 3 }));
    tokio::time::sleep(idle).await;
    if let Some(s) = snap(&monitor)? {
        log(&format!(
            "{}: idle RSS {:.1} MiB, {:.2} CPU s since start",
            args.server, s.rss_mb, s.cpu_s
        ));
        result.set("rss.idle_mb", s.rss_mb);
        result.set("cpu.startup_s", s.cpu_s);
        if let Some(db) = s.db_cpu_s {
            result.set("db_cpu.startup_s", db);
        }
        result.details.insert("idle".into(), json!(s));
    }
    result.save(&args.out)?;

    let ctx = Ctx { api, run_id: run_id(), concurrency: args.concurrency.max(1) };
    for name in selected {
        log(&format!("{}: workload {name}", args.server));
        let before = snap(&monitor)?;
        let w_started = Instant::now();
        match run_workload(&ctx, &plan, name, &monitor).await {
            Ok((outcome, setup_end)) => {
                let after = snap(&monitor)?;
                record(&mut result, name, outcome, before, setup_end, after);
            }
            Err(e) => {
                log(&format!("{}: workload {name} failed: {e:#}", args.server));
                result.errors.insert(name.to_owned(), format!("{e:#}"));
                if monitor.is_some() && snap(&monitor).is_err() {
                    result.save(&args.out)?;
                    bail!("the server process has exited");
                }
            }
        }
        log(&format!(
            "{}: workload {name} took {:.1}s",
            args.server,
            w_started.elapsed().as_secs_f64()
        ));
        result.save(&args.out)?;
    }
    if let Some(s) = snap(&monitor)? {
        result.set("rss.peak_mb", s.peak_rss_mb);
        result.set("cpu.total_s", s.cpu_s);
        if let Some(db) = s.db_cpu_s {
            result.set("db_cpu.total_s", db);
        }
    }
    let collisions = ROOM_ID_COLLISIONS.load(Ordering::Relaxed);
    if collisions > 0 {
        let msg = format!(
            "{collisions} createRoom requests were refused with M_ROOM_IN_USE (room ID \
             collision between concurrent requests of one user) and retried"
        );
        log(&format!("{}: {msg}", args.server));
        result.errors.insert("create_room".into(), msg);
    }
    result.set("bench.elapsed_s", started.elapsed().as_secs_f64());
    // The load generator shares the machine with the server: say how much CPU it took.
    if let Ok(own) = Monitor::new(std::process::id(), None).and_then(|m| m.snapshot()) {
        result.set("bench.cpu_s", own.cpu_s);
    }
    result.save(&args.out)?;
    log(&format!(
        "{}: done in {:.1}s, results in {}",
        args.server,
        started.elapsed().as_secs_f64(),
        args.out.display()
    ));
    Ok(())
}

/// Sets one workload up and measures it; returns the outcome and the reading between both.
async fn run_workload(
    ctx: &Ctx,
    plan: &Plan,
    name: &str,
    monitor: &Option<Monitor>,
) -> Result<(Outcome, Option<Snapshot>)> {
    let snap = || monitor.as_ref().map(Monitor::snapshot).transpose();
    match name {
        "latency" => {
            let prepared = latency::setup(ctx, &plan.latency).await?;
            let mid = snap()?;
            Ok((latency::measure(ctx, &plan.latency, prepared).await?, mid))
        }
        "throughput" => {
            let prepared = throughput::setup(ctx, &plan.throughput).await?;
            let mid = snap()?;
            Ok((throughput::measure(ctx, &plan.throughput, prepared).await?, mid))
        }
        "initial_sync" => {
            let prepared = initial_sync::setup(ctx, &plan.initial_sync).await?;
            let mid = snap()?;
            Ok((initial_sync::measure(ctx, &plan.initial_sync, prepared).await?, mid))
        }
        "fanout" => {
            let prepared = fanout::setup(ctx, &plan.fanout).await?;
            let mid = snap()?;
            Ok((fanout::measure(ctx, &plan.fanout, prepared).await?, mid))
        }
        other => bail!("unknown workload {other}"),
    }
}

/// Stores a workload's metrics and the resources it used (measured phase and setup).
fn record(
    result: &mut ServerResult,
    name: &str,
    outcome: Outcome,
    before: Option<Snapshot>,
    mid: Option<Snapshot>,
    after: Option<Snapshot>,
) {
    for (k, v) in &outcome.metrics {
        result.set(k, *v);
    }
    let mut details = outcome.details;
    if let (Some(b), Some(m), Some(a)) = (before, mid, after) {
        result.set(&format!("rss.after_{name}_mb"), a.rss_mb);
        result.set(&format!("cpu.{name}_s"), a.cpu_s - m.cpu_s);
        result.set(&format!("cpu.{name}_setup_s"), m.cpu_s - b.cpu_s);
        if let (Some(db_m), Some(db_a)) = (m.db_cpu_s, a.db_cpu_s) {
            result.set(&format!("db_cpu.{name}_s"), db_a - db_m);
        }
        if name == "throughput"
            && let Some(events) = details.get("events").and_then(|v| v.as_f64())
            && events > 0.0
        {
            result.set("throughput.cpu_ms_per_event", 1000.0 * (a.cpu_s - m.cpu_s) / events);
        }
        details["resources"] = json!({ "before_setup": b, "before_measure": m, "after": a });
    }
    result.details.insert(name.to_owned(), details);
}

/// A short, run-unique prefix for user names, so reruns against one server never collide.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut n = (nanos / 1_000_000) % 36u128.pow(6);
    let mut s = String::new();
    for _ in 0..6 {
        let d = u32::try_from(n % 36).unwrap_or(0);
        s.push(char::from_digit(d, 36).unwrap_or('x'));
        n /= 36;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_lowercase_alphanumeric() {
        let id = run_id();
        assert_eq!(id.len(), 6);
        assert!(id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }
}
