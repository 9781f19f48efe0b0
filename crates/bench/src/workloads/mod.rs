//! The workloads and the helpers they share: user registration, bounded parallelism and the
//! server's CPU meter.
//!
//! Every workload is split in two: `setup` (users, rooms, history; done once per server) and
//! `measure` (the timed part, run once per round on state `setup` left, so the rounds of all
//! servers can be interleaved).

pub mod fanout;
pub mod initial_sync;
pub mod latency;
pub mod scaling;
pub mod throughput;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Api, User};
use crate::procfs::Monitor;

/// The password of every user the workloads register.
pub const PASSWORD: &str = "bench-password-1";

/// What every workload needs: the server, a run-unique name prefix, setup concurrency and
/// the server's process (for CPU readings).
#[derive(Clone)]
pub struct Ctx {
    /// The server's name in the report.
    pub server: String,
    pub api: Api,
    pub run_id: String,
    pub concurrency: usize,
    pub monitor: Option<Monitor>,
}

impl Ctx {
    /// CPU seconds the server has used so far, its database's included (PostgreSQL runs in
    /// processes of its own; SQLite's work is already the server's).
    pub fn cpu_s(&self) -> Option<f64> {
        let snap = self.monitor.as_ref()?.snapshot().ok()?;
        Some(snap.cpu_s + snap.db_cpu_s.unwrap_or(0.0))
    }

    /// Progress output about this server.
    pub fn log(&self, msg: &str) {
        log(&format!("{}: {msg}", self.server));
    }
}

/// The measured outcome of one workload: flat metrics for the table, details for the JSON.
#[derive(Debug, Default)]
pub struct Outcome {
    pub metrics: Vec<(String, f64)>,
    pub details: Value,
}

impl Outcome {
    pub fn metric(&mut self, key: &str, value: f64) {
        self.metrics.push((key.to_owned(), value));
    }

    /// Records the server's CPU milliseconds per operation between two readings.
    pub fn cpu_per_op(&mut self, key: &str, before: Option<f64>, after: Option<f64>, ops: usize) {
        if let (Some(before), Some(after)) = (before, after)
            && ops > 0
        {
            self.metric(key, 1000.0 * (after - before) / ops as f64);
        }
    }
}

/// A sync filter that keeps long-poll responses small.
pub fn small_sync_filter() -> String {
    json!({
        "room": {
            "timeline": { "limit": 10 },
            "state": { "lazy_load_members": true },
            "ephemeral": { "types": [] },
            "account_data": { "types": [] }
        },
        "presence": { "types": [] },
        "account_data": { "types": [] }
    })
    .to_string()
}

/// Runs `f(0..n)` with at most `concurrency` in flight; results keep their index order.
/// The first error aborts the remaining tasks.
pub async fn parallel<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut store = |joined: Result<(usize, Result<T>), tokio::task::JoinError>| -> Result<()> {
        let (i, res) = joined.context("setup task panicked")?;
        out[i] = Some(res?);
        Ok(())
    };
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let fut = f(i);
        set.spawn(async move {
            let res = fut.await;
            drop(permit);
            (i, res)
        });
        while let Some(joined) = set.try_join_next() {
            store(joined)?;
        }
    }
    while let Some(joined) = set.join_next().await {
        store(joined)?;
    }
    out.into_iter().map(|o| o.context("a setup task left no result")).collect()
}

/// Registers `n` fresh users named after the run, the workload and their index.
pub async fn register_users(ctx: &Ctx, label: &str, n: usize) -> Result<Vec<Arc<User>>> {
    let started = Instant::now();
    let users = parallel(n, ctx.concurrency, |i| {
        // A server of several processes gets its users round-robin: user i talks to process
        // i mod P, so a latency pair's sender and receiver are on different processes.
        let api = ctx.api.pinned(i);
        let name = format!("bench{}{label}{i}", ctx.run_id);
        async move { api.register(&name, PASSWORD).await.map(Arc::new) }
    })
    .await
    .with_context(|| format!("registering {n} {label} users"))?;
    ctx.log(&format!("registered {n} {label} users in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(users)
}

/// Creates a public room (joinable by ID, not published) owned by `owner`.
pub async fn create_public_room(owner: &User, name: &str) -> Result<String> {
    owner.create_room(&json!({ "preset": "public_chat", "name": name })).await
}

/// Milliseconds elapsed between two instants.
pub fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// A cheap, dependency-free pseudo-random jitter in `[lo, hi)` milliseconds.
pub fn jitter(seed: &mut u64, lo: u64, hi: u64) -> Duration {
    // xorshift64
    let mut x = (*seed).max(1);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *seed = x;
    Duration::from_millis(lo + x % (hi - lo).max(1))
}

/// Progress output on stderr, so stdout stays for results.
pub fn log(msg: &str) {
    eprintln!("[bench] {msg}");
}
