//! Latency: pairs of users in their own rooms; one sends while the other long-polls `/sync`.
//!
//! A sample is the time from just before the send request to the moment the receiver's
//! sync response holding that message has been parsed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use super::{Ctx, Outcome, create_public_room, jitter, ms_between, parallel, register_users};
use crate::client::{SyncReq, User, next_batch, timeline_has_body};
use crate::stats::Summary;

/// Settings of the latency workload.
#[derive(Debug, Clone)]
pub struct Params {
    pub pairs: usize,
    /// How long one measured run lasts.
    pub duration: Duration,
    /// Unmeasured messages per pair at the start of every run (connections and caches warm).
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
    /// Messages sent so far (over all runs), for unique markers.
    sent: usize,
}

/// The pairs, kept between runs.
pub struct Prepared {
    pairs: Vec<Pair>,
}

/// Registers the pairs, gives each a room and an initial sync.
pub async fn setup(ctx: &Ctx, p: &Params) -> Result<Prepared> {
    let users = register_users(ctx, "lat", p.pairs * 2).await?;
    let filter = super::small_sync_filter();
    let pairs = parallel(p.pairs, ctx.concurrency, |i| {
        let sender = users[2 * i].clone();
        let receiver = users[2 * i + 1].clone();
        let filter = filter.clone();
        async move {
            let room = create_public_room(&sender, &format!("latency {i}")).await?;
            receiver.join(&room).await?;
            let req = SyncReq { since: None, timeout_ms: 0, filter: &filter };
            let since = next_batch(&receiver.sync(&req, 3).await?)?;
            Ok(Pair { index: i, sender, receiver, room, since, sent: 0 })
        }
    })
    .await
    .context("setting up latency pairs")?;
    Ok(Prepared { pairs })
}

/// Result of one pair's run.
#[derive(Default)]
struct PairRun {
    samples: Vec<f64>,
    /// Messages sent, warm-up included.
    sent: usize,
    lost: usize,
}

/// Runs all pairs concurrently until the duration is up.
pub async fn measure(ctx: &Ctx, p: &Params, prepared: &mut Prepared) -> Result<Outcome> {
    let deadline = Instant::now() + p.duration;
    let cpu_before = ctx.cpu_s();
    let mut handles = Vec::new();
    for pair in std::mem::take(&mut prepared.pairs) {
        let params = p.clone();
        let run_id = ctx.run_id.clone();
        handles.push(tokio::spawn(run_pair(pair, params, run_id, deadline)));
    }
    let mut samples = Vec::new();
    let (mut lost, mut sent) = (0, 0);
    for h in handles {
        let (pair, run) = h.await.context("latency task panicked")??;
        prepared.pairs.push(pair);
        samples.extend(run.samples);
        lost += run.lost;
        sent += run.sent;
    }
    let cpu_after = ctx.cpu_s();
    let Some(summary) = Summary::of(&samples) else {
        bail!("no latency samples were collected ({lost} messages lost)");
    };
    ctx.log(&format!(
        "latency: {} samples, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, {lost} lost",
        summary.count, summary.p50, summary.p90, summary.p99
    ));
    let mut out = Outcome::default();
    out.metric("latency.p50_ms", summary.p50);
    out.metric("latency.p90_ms", summary.p90);
    out.metric("latency.p99_ms", summary.p99);
    out.metric("latency.samples", summary.count as f64);
    out.metric("latency.lost", lost as f64);
    // Every message sent costs the server a send and a sync wake-up, measured or not.
    out.cpu_per_op("latency.cpu_ms_per_msg", cpu_before, cpu_after, sent);
    out.details = json!({ "params": { "pairs": p.pairs, "duration_s": p.duration.as_secs_f64(),
        "warmup_per_pair": p.warmup, "interval_ms": p.interval.as_millis() as u64 },
        "summary_ms": summary, "lost": lost, "sent": sent });
    Ok(out)
}

async fn run_pair(
    mut pair: Pair,
    p: Params,
    run_id: String,
    deadline: Instant,
) -> Result<(Pair, PairRun)> {
    let filter = super::small_sync_filter();
    let mut seed = (pair.index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (pair.sent as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut run = PairRun::default();
    while Instant::now() < deadline && run.samples.len() < p.max_per_pair {
        let marker = format!("lat {run_id} {} {}", pair.index, pair.sent);
        let warm = run.sent < p.warmup;
        pair.sent += 1;
        run.sent += 1;
        // The receiver is in its long-poll before the send starts: the sender waits a
        // jittered while (at least 50 ms), which also spreads the pairs' sends over time.
        let mean = u64::try_from(p.interval.as_millis()).unwrap_or(u64::MAX).max(100);
        let wait = jitter(&mut seed, mean / 2, mean + mean / 2);
        let (sender, receiver, room) = (&pair.sender, &pair.receiver, &pair.room);
        let since = &mut pair.since;
        let recv = async {
            tokio::time::timeout(
                Duration::from_secs(60),
                receive(receiver, &filter, since, &marker),
            )
            .await
            .map_err(|_| anyhow!("message not received within 60 s"))?
        };
        let send = async {
            tokio::time::sleep(wait).await;
            let t0 = Instant::now();
            sender.send_text(room, &marker, 0).await?;
            anyhow::Ok(t0)
        };
        match tokio::try_join!(recv, send) {
            Ok((t1, t0)) if !warm => run.samples.push(ms_between(t0, t1)),
            Ok(_) => {}
            Err(e) => {
                super::log(&format!("latency pair {}: {e:#}", pair.index));
                run.lost += 1;
            }
        }
    }
    Ok((pair, run))
}

/// Long-polls until a sync response holds `marker`; returns when that response was parsed.
pub async fn receive(
    user: &User,
    filter: &str,
    since: &mut String,
    marker: &str,
) -> Result<Instant> {
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
