//! The `run` command: sets every workload up on every server, then measures it in rounds, the
//! servers taking turns in an order that rotates from round to round, so a change in the
//! machine's load (CPU steal on a shared host) falls on all of them alike. Around every
//! measured run it reads the server's CPU time and the machine's steal.

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::json;

use crate::client::{Api, ROOM_ID_COLLISIONS};
use crate::plan::{Plan, RunArgs, Step, Target};
use crate::procfs::{Monitor, SystemCpu};
use crate::results::{Measurement, RunResults, ServerResult, unix_now};
use crate::workloads::scaling::{self, Dimension};
use crate::workloads::{Ctx, Outcome, fanout, initial_sync, latency, log, throughput};

/// One server under test: how to reach it, and what its workloads set up.
struct Server {
    ctx: Ctx,
    state: States,
    /// False once its process is gone: it is skipped from then on.
    alive: bool,
}

/// What each workload set up on a server, kept for its rounds.
#[derive(Default)]
struct States {
    latency: Option<latency::Prepared>,
    throughput: Option<throughput::Prepared>,
    initial_sync: Option<initial_sync::Prepared>,
    fanout: Option<fanout::Prepared>,
    rooms: Option<scaling::Prepared>,
    members: Option<scaling::Prepared>,
}

impl States {
    fn scaling(&mut self, dim: Dimension) -> &mut Option<scaling::Prepared> {
        match dim {
            Dimension::Rooms => &mut self.rooms,
            Dimension::Members => &mut self.members,
        }
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::from_args(&args)?;
    let mut results = RunResults {
        unix_time: unix_now(),
        quick: args.quick,
        rounds: plan.rounds,
        params: plan.describe(),
        ..RunResults::default()
    };
    let run_id = run_id();
    let mut servers = Vec::new();
    for target in &plan.servers {
        let mut result = ServerResult {
            server: target.name.clone(),
            base_url: target.base_urls.join(" "),
            ..ServerResult::default()
        };
        match connect(target, &run_id, args.concurrency).await {
            Ok(ctx) => servers.push(Server { ctx, state: States::default(), alive: true }),
            Err(e) => {
                log(&format!("{}: {e:#}", target.name));
                result.errors.insert("server".into(), format!("{e:#}"));
            }
        }
        results.servers.push(result);
    }
    for (name, reason) in &args.failed {
        results.servers.push(ServerResult {
            server: name.clone(),
            errors: [("server".to_owned(), reason.clone())].into(),
            ..ServerResult::default()
        });
    }
    if servers.is_empty() {
        results.save(&args.out)?;
        bail!("no server could be reached");
    }

    tokio::time::sleep(plan.idle).await;
    for server in &servers {
        record_idle(server, &mut results);
    }
    results.save(&args.out)?;

    for step in &plan.steps {
        for server in servers.iter_mut().filter(|s| s.alive) {
            setup_step(server, &plan, *step, &mut results).await;
            results.save(&args.out)?;
        }
        for round in 0..plan.rounds {
            let alive: Vec<usize> = (0..servers.len()).filter(|i| servers[*i].alive).collect();
            for position in 0..alive.len() {
                let index = alive[(position + round) % alive.len()];
                tokio::time::sleep(plan.pause).await;
                profile_hook(args.profile_hook.as_deref(), "on");
                let run = measure_step(&mut servers[index], &plan, *step, round, position).await;
                profile_hook(args.profile_hook.as_deref(), "off");
                results.runs.push(run);
                results.save(&args.out)?;
            }
        }
        for server in servers.iter().filter(|s| s.alive) {
            if let Some(snap) = server.ctx.monitor.as_ref().and_then(|m| m.snapshot().ok())
                && let Some(result) = results.server_mut(&server.ctx.server)
            {
                result.set(&format!("rss.after_{}_mb", step.name()), snap.rss_mb);
            }
        }
    }
    finish(&servers, &mut results, started);
    results.save(&args.out)?;
    log(&format!(
        "done in {:.1}s, results in {}",
        started.elapsed().as_secs_f64(),
        args.out.display()
    ));
    Ok(())
}

/// Runs the profiling hook, if any, with `on` or `off`.
fn profile_hook(hook: Option<&str>, switch: &str) {
    let Some(hook) = hook else { return };
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{hook} {switch}"))
        .stdout(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        log(&format!("the profile hook `{hook} {switch}` failed"));
    }
}

/// Waits until a server answers and starts watching its process.
async fn connect(target: &Target, run_id: &str, concurrency: usize) -> Result<Ctx> {
    let api = Api::new(&target.base_urls)?;
    api.wait_ready(std::time::Duration::from_secs(60)).await?;
    let monitor = match target.pids.is_empty() {
        false => Some(Monitor::new(target.pids.clone(), target.db_pid)?),
        true => None,
    };
    Ok(Ctx {
        server: target.name.clone(),
        api,
        run_id: run_id.to_owned(),
        concurrency: concurrency.max(1),
        monitor,
    })
}

fn record_idle(server: &Server, results: &mut RunResults) {
    let Some(snap) = server.ctx.monitor.as_ref().and_then(|m| m.snapshot().ok()) else { return };
    log(&format!(
        "{}: idle RSS {:.1} MiB, {:.2} CPU s since start",
        server.ctx.server, snap.rss_mb, snap.cpu_s
    ));
    let Some(result) = results.server_mut(&server.ctx.server) else { return };
    result.set("rss.idle_mb", snap.rss_mb);
    result.set("cpu.startup_s", snap.cpu_s);
    if let Some(db) = snap.db_cpu_s {
        result.set("db_cpu.startup_s", db);
    }
    result.details.insert("idle".into(), json!(snap));
}

/// Readings taken before and after a phase.
struct Readings {
    at: Instant,
    system: Option<SystemCpu>,
    process: Option<crate::procfs::Snapshot>,
}

impl Readings {
    fn now(ctx: &Ctx) -> Self {
        Self {
            at: Instant::now(),
            system: SystemCpu::read().ok(),
            process: ctx.monitor.as_ref().and_then(|m| m.snapshot().ok()),
        }
    }

    /// Wall seconds, server CPU, database CPU and steal percentage from `self` to `later`.
    fn until(&self, later: &Readings) -> (f64, Option<f64>, Option<f64>, Option<f64>) {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let (cpu, db) = match (&self.process, &later.process) {
            (Some(a), Some(b)) => {
                (Some(b.cpu_s - a.cpu_s), a.db_cpu_s.zip(b.db_cpu_s).map(|(a, b)| b - a))
            }
            _ => (None, None),
        };
        let steal = self.system.zip(later.system).map(|(a, b)| a.steal_pct_until(&b));
        (wall, cpu, db, steal)
    }
}

/// Sets a step up on one server, recording its cost; a failure is recorded, not fatal.
async fn setup_step(server: &mut Server, plan: &Plan, step: Step, results: &mut RunResults) {
    let name = step.name();
    server.ctx.log(&format!("setting up {name}"));
    let before = Readings::now(&server.ctx);
    let outcome = match step {
        Step::Latency => {
            latency::setup(&server.ctx, &plan.latency).await.map(|p| server.state.latency = Some(p))
        }
        Step::Throughput => throughput::setup(&server.ctx, &plan.throughput)
            .await
            .map(|p| server.state.throughput = Some(p)),
        Step::InitialSync => initial_sync::setup(&server.ctx, &plan.initial_sync)
            .await
            .map(|p| server.state.initial_sync = Some(p)),
        Step::Fanout => {
            fanout::setup(&server.ctx, &plan.fanout).await.map(|p| server.state.fanout = Some(p))
        }
        Step::Scale(dim, size) => {
            let previous = server.state.scaling(dim).take();
            scaling::grow(&server.ctx, dim, previous, size)
                .await
                .map(|p| *server.state.scaling(dim) = Some(p))
        }
    };
    let after = Readings::now(&server.ctx);
    let (wall, cpu, db, steal) = before.until(&after);
    server.ctx.log(&format!("{name} set up in {wall:.1}s"));
    let alive = after.process.is_some() || server.ctx.monitor.is_none();
    let Some(result) = results.server_mut(&server.ctx.server) else { return };
    if let Err(e) = outcome {
        server.ctx.log(&format!("setting up {name} failed: {e:#}"));
        result.errors.insert(format!("{name} setup"), format!("{e:#}"));
    }
    if let Some(cpu) = cpu {
        result.set(&format!("cpu.{name}_setup_s"), cpu);
    }
    if let Some(db) = db {
        result.set(&format!("db_cpu.{name}_setup_s"), db);
    }
    result.details.insert(
        format!("{name} setup"),
        json!({ "wall_s": wall, "cpu_s": cpu, "db_cpu_s": db, "steal_pct": steal }),
    );
    if !alive {
        result.errors.insert("server".into(), format!("the process exited during {name} setup"));
        server.alive = false;
    }
}

/// Measures one run of a step on one server.
async fn measure_step(
    server: &mut Server,
    plan: &Plan,
    step: Step,
    round: usize,
    position: usize,
) -> Measurement {
    let before = Readings::now(&server.ctx);
    let outcome = measure_outcome(server, plan, step).await;
    let after = Readings::now(&server.ctx);
    let (wall, cpu, db, steal) = before.until(&after);
    if server.ctx.monitor.is_some() && after.process.is_none() {
        server.alive = false;
    }
    let mut run = Measurement {
        step: step.name(),
        round,
        position,
        server: server.ctx.server.clone(),
        cpu_s: cpu,
        db_cpu_s: db,
        wall_s: wall,
        steal_pct: steal,
        ..Measurement::default()
    };
    match outcome {
        Ok(outcome) => {
            run.metrics = outcome.metrics.into_iter().filter(|(_, v)| v.is_finite()).collect();
            run.details = outcome.details;
        }
        Err(e) => {
            server.ctx.log(&format!("{} round {round} failed: {e:#}", step.name()));
            run.error = Some(format!("{e:#}"));
        }
    }
    server.ctx.log(&format!(
        "{} round {round}: {wall:.1}s, CPU {}, steal {}",
        step.name(),
        cpu.map_or("-".into(), |c| format!("{c:.2}s")),
        steal.map_or("-".into(), |s| format!("{s:.0}%")),
    ));
    run
}

async fn measure_outcome(server: &mut Server, plan: &Plan, step: Step) -> Result<Outcome> {
    let (ctx, state) = (&server.ctx, &mut server.state);
    let missing = || anyhow::anyhow!("{} was not set up on this server", step.name());
    match step {
        Step::Latency => {
            let prepared = state.latency.as_mut().ok_or_else(missing)?;
            latency::measure(ctx, &plan.latency, prepared).await
        }
        Step::Throughput => {
            let prepared = state.throughput.as_ref().ok_or_else(missing)?;
            throughput::measure(ctx, &plan.throughput, prepared).await
        }
        Step::InitialSync => {
            let prepared = state.initial_sync.as_mut().ok_or_else(missing)?;
            initial_sync::measure(ctx, &plan.initial_sync, prepared).await
        }
        Step::Fanout => {
            let prepared = state.fanout.as_mut().ok_or_else(missing)?;
            fanout::measure(ctx, &plan.fanout, prepared).await
        }
        Step::Scale(dim, _) => {
            let prepared = state.scaling(dim).as_mut().ok_or_else(missing)?;
            scaling::measure(ctx, &plan.scaling, dim, prepared).await
        }
    }
}

/// The whole run's figures: peak RSS, total CPU, the load generator's own CPU.
fn finish(servers: &[Server], results: &mut RunResults, started: Instant) {
    for server in servers {
        let snap = server.ctx.monitor.as_ref().and_then(|m| m.snapshot().ok());
        let Some(result) = results.server_mut(&server.ctx.server) else { continue };
        if let Some(s) = snap {
            result.set("rss.peak_mb", s.peak_rss_mb);
            result.set("cpu.total_s", s.cpu_s);
            if let Some(db) = s.db_cpu_s {
                result.set("db_cpu.total_s", db);
            }
        }
    }
    let collisions = ROOM_ID_COLLISIONS.load(Ordering::Relaxed);
    if collisions > 0 {
        log(&format!(
            "{collisions} createRoom requests were refused with M_ROOM_IN_USE (room ID \
             collision between concurrent requests of one user) and retried"
        ));
        results.meta.insert("room_id_collisions".into(), collisions.to_string());
    }
    results
        .meta
        .insert("bench_elapsed_s".into(), format!("{:.0}", started.elapsed().as_secs_f64()));
    // The load generator shares the machine with the servers: say how much CPU it took.
    if let Ok(own) = Monitor::new(vec![std::process::id()], None).and_then(|m| m.snapshot()) {
        results.meta.insert("bench_cpu_s".into(), format!("{:.1}", own.cpu_s));
    }
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
