//! Throughput: many senders in many rooms send as fast as the server answers, for a fixed time.
//!
//! Each sender awaits every response before sending the next message; a message counts as
//! persisted when the server returned its event ID.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::{Ctx, Outcome, create_public_room, ms_between, parallel, register_users};
use crate::client::User;
use crate::stats::Summary;

/// Settings of the throughput workload.
#[derive(Debug, Clone)]
pub struct Params {
    pub senders: usize,
    pub rooms: usize,
    /// How long one measured run lasts.
    pub duration: Duration,
    /// Upper bound on messages per sender, whatever the duration.
    pub max_per_sender: usize,
}

/// Senders, each with the room it sends to.
pub struct Prepared {
    senders: Vec<(Arc<User>, String)>,
}

/// Registers the senders, creates the rooms and has every sender join its room.
pub async fn setup(ctx: &Ctx, p: &Params) -> Result<Prepared> {
    let rooms_n = p.rooms.clamp(1, p.senders.max(1));
    let users = register_users(ctx, "tp", p.senders).await?;
    let rooms = parallel(rooms_n, ctx.concurrency, |i| {
        let owner = users[i].clone();
        async move { create_public_room(&owner, &format!("throughput {i}")).await }
    })
    .await
    .context("creating throughput rooms")?;
    let senders: Vec<(Arc<User>, String)> =
        users.iter().enumerate().map(|(i, u)| (u.clone(), rooms[i % rooms_n].clone())).collect();
    let joins = senders.iter().skip(rooms_n).cloned().collect::<Vec<_>>();
    parallel(joins.len(), ctx.concurrency, |i| {
        let (user, room) = joins[i].clone();
        async move { user.join(&room).await }
    })
    .await
    .context("joining throughput rooms")?;
    Ok(Prepared { senders })
}

#[derive(Default)]
struct SenderRun {
    ok: usize,
    errors: usize,
    send_ms: Vec<f64>,
    first_error: Option<String>,
}

/// Sends until the duration is up; reports persisted events per second and errors.
pub async fn measure(ctx: &Ctx, p: &Params, prepared: &Prepared) -> Result<Outcome> {
    let cpu_before = ctx.cpu_s();
    let started = Instant::now();
    let deadline = started + p.duration;
    let mut handles = Vec::new();
    for (i, (user, room)) in prepared.senders.iter().cloned().enumerate() {
        let run_id = ctx.run_id.clone();
        let max = p.max_per_sender;
        handles.push(tokio::spawn(async move {
            let mut run = SenderRun::default();
            let mut seq = 0usize;
            while Instant::now() < deadline && run.ok + run.errors < max {
                let text = format!("tp {run_id} {i} {seq}");
                seq += 1;
                let t0 = Instant::now();
                match user.send_text(&room, &text, 0).await {
                    Ok(_) => {
                        run.ok += 1;
                        run.send_ms.push(ms_between(t0, Instant::now()));
                    }
                    Err(e) => {
                        run.errors += 1;
                        run.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            run
        }));
    }
    let mut total = SenderRun::default();
    for h in handles {
        let run = h.await.context("throughput task panicked")?;
        total.ok += run.ok;
        total.errors += run.errors;
        total.send_ms.extend(run.send_ms);
        if total.first_error.is_none() {
            total.first_error = run.first_error;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = ctx.cpu_s();
    let rate = total.ok as f64 / elapsed;
    let attempts = (total.ok + total.errors).max(1);
    let error_pct = 100.0 * total.errors as f64 / attempts as f64;
    let summary = Summary::of(&total.send_ms);
    ctx.log(&format!(
        "throughput: {} events in {elapsed:.1}s = {rate:.1} ev/s, {} errors{}",
        total.ok,
        total.errors,
        total.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
    ));
    let mut out = Outcome::default();
    out.metric("throughput.events_per_s", rate);
    out.metric("throughput.errors", total.errors as f64);
    out.metric("throughput.error_pct", error_pct);
    if let Some(s) = &summary {
        out.metric("throughput.send_p50_ms", s.p50);
        out.metric("throughput.send_p99_ms", s.p99);
    }
    out.cpu_per_op("throughput.cpu_ms_per_event", cpu_before, cpu_after, total.ok);
    out.details = json!({
        "params": { "senders": p.senders, "rooms": p.rooms, "duration_s": p.duration.as_secs_f64() },
        "events": total.ok,
        "errors": total.errors,
        "elapsed_s": elapsed,
        "send_latency_ms": summary,
        "first_error": total.first_error,
    });
    Ok(out)
}
