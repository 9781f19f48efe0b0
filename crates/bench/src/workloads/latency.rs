//! Latency: pairs of users in their own rooms; one sends while the other long-polls `/sync`.
//!
//! A sample is the time from just before the send request to the moment the receiver's
//! sync response holding that message has been parsed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use super::{Ctx, Outcome, create_public_room, jitter, log, ms_between, parallel, register_users};
use crate::client::{SyncReq, User, next_batch, timeline_has_body};
use crate::stats::Summary;

/// Settings of the latency workload.
#[derive(Debug, Clone)]
pub struct Params {
    pub pairs: usize,
    pub duration: Duration,
    pub warmup: usize,
    /// Mean pause between a pair's messages (jittered by ±50%), so the server is measured
    /// under moderate load rather than saturated.
    pub interval: Duration,
    /// Upper bound on measured messages per pair, whatever the duration.
    pub max_per_pair: usize,
}

/// One pair, ready to measure: a sender, a receiver with its sync token, and their room.
pub struct Pair {
    index: usize,
    sender: Arc<User>,
    receiver: Arc<User>,
    room: String,
    since: String,
}

/// Registers the pairs, gives each a room and an initial sync.
pub async fn setup(ctx: &Ctx, p: &Params) -> Result<Vec<Pair>> {
    let users = register_users(ctx, "lat", p.pairs * 2).await?;
    let filter = super::small_sync_filter();
    parallel(p.pairs, ctx.concurrency, |i| {
        let sender = users[2 * i].clone();
        let receiver = users[2 * i + 1].clone();
        let filter = filter.clone();
        async move {
            let room = create_public_room(&sender, &format!("latency {i}")).await?;
            receiver.join(&room).await?;
            let req = SyncReq { since: None, timeout_ms: 0, filter: &filter };
            let since = next_batch(&receiver.sync(&req, 3).await?)?;
            Ok(Pair { index: i, sender, receiver, room, since })
        }
    })
    .await
    .context("setting up latency pairs")
}

/// Result of one pair's run.
#[derive(Default)]
struct PairRun {
    samples: Vec<f64>,
    lost: usize,
}

/// Runs all pairs concurrently until the duration is up.
pub async fn measure(ctx: &Ctx, p: &Params, pairs: Vec<Pair>) -> Result<Outcome> {
    let deadline = Instant::now() + p.duration;
    let mut handles = Vec::new();
    for pair in pairs {
        let params = p.clone();
        let run_id = ctx.run_id.clone();
        handles.push(tokio::spawn(run_pair(pair, params, run_id, deadline)));
    }
    let mut samples = Vec::new();
    let mut lost = 0;
    for h in handles {
        let run = h.await.context("latency task panicked")??;
        samples.extend(run.samples);
        lost += run.lost;
    }
    let Some(summary) = Summary::of(&samples) else {
        bail!("no latency samples were collected ({lost} messages lost)");
    };
    log(&format!(
        "latency: {} samples, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, {lost} lost",
        summary.count, summary.p50, summary.p90, summary.p99
    ));
    let mut out = Outcome::default();
    out.metric("latency.p50_ms", summary.p50);
    out.metric("latency.p90_ms", summary.p90);
    out.metric("latency.p99_ms", summary.p99);
    out.metric("latency.samples", summary.count as f64);
    out.metric("latency.lost", lost as f64);
    out.details = json!({ "params": { "pairs": p.pairs, "duration_s": p.duration.as_secs_f64(),
        "warmup_per_pair": p.warmup,
        "interval_ms": p.interval.as_millis() as u64 }, "summary_ms": summary, "lost": lost });
    Ok(out)
}

async fn run_pair(pair: Pair, p: Params, run_id: String, deadline: Instant) -> Result<PairRun> {
    let Pair { index, sender, receiver, room, mut since } = pair;
    let filter = super::small_sync_filter();
    let mut seed = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut run = PairRun::default();
    let mut seq = 0usize;
    while Instant::now() < deadline && run.samples.len() < p.max_per_pair {
        let marker = format!("lat {run_id} {index} {seq}");
        let warm = seq < p.warmup;
        seq += 1;
        // The receiver is in its long-poll before the send starts: the sender waits a
        // jittered while (at least 50 ms), which also spreads the pairs' sends over time.
        let mean = u64::try_from(p.interval.as_millis()).unwrap_or(u64::MAX).max(100);
        let wait = jitter(&mut seed, mean / 2, mean + mean / 2);
        let recv = async {
            tokio::time::timeout(
                Duration::from_secs(60),
                receive(&receiver, &filter, &mut since, &marker),
            )
            .await
            .map_err(|_| anyhow!("message not received within 60 s"))?
        };
        let send = async {
            tokio::time::sleep(wait).await;
            let t0 = Instant::now();
            sender.send_text(&room, &marker, 0).await?;
            anyhow::Ok(t0)
        };
        match tokio::try_join!(recv, send) {
            Ok((t1, t0)) if !warm => run.samples.push(ms_between(t0, t1)),
            Ok(_) => {}
            Err(e) => {
                log(&format!("latency pair {index}: {e:#}"));
                run.lost += 1;
            }
        }
    }
    Ok(run)
}

/// Long-polls until a sync response holds `marker`; returns when that response was parsed.
async fn receive(user: &User, filter: &str, since: &mut String, marker: &str) -> Result<Instant> {
    loop {
        let req = SyncReq { since: Some(since), timeout_ms: 30_000, filter };
        let resp = user.sync(&req, 0).await?;
        let found = timeline_has_body(&resp, marker);
        let now = Instant::now();
        *since = next_batch(&resp)?;
        if found {
            return Ok(now);
        }
    }
}
