//! Initial sync: one user in many rooms, each with history and a couple of other members.
//!
//! Measures a first `/sync` with lazy-loaded members (of a new login each run), then
//! incremental syncs after a few new messages.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::{Ctx, Outcome, PASSWORD, create_public_room, ms_between, parallel, register_users};
use crate::client::{SyncReq, User, joined_room_count, next_batch};
use crate::stats::median;

/// Settings of the initial sync workload.
#[derive(Debug, Clone)]
pub struct Params {
    pub rooms: usize,
    pub history: usize,
    /// Incremental syncs measured per run (each after new messages in a few rooms).
    pub incremental_rounds: usize,
}

/// The user to sync, the member present in every room, and the rooms.
pub struct Prepared {
    target: Arc<User>,
    member: Arc<User>,
    rooms: Vec<String>,
    /// Measured runs so far.
    runs: usize,
}

/// Creates the rooms, joins the target user and a second member, and writes the history.
///
/// Rooms are created by a pool of owners, each creating its rooms one after the other (as
/// a client would), so the setup is concurrent without one user racing itself.
pub async fn setup(ctx: &Ctx, p: &Params) -> Result<Prepared> {
    let owners_n = ctx.concurrency.clamp(1, p.rooms.max(1));
    let users = register_users(ctx, "is", owners_n + 2).await?;
    let (target, member) = (users[0].clone(), users[1].clone());
    let owners: Vec<Arc<User>> = users[2..].to_vec();
    let started = Instant::now();
    let (history, rooms_n) = (p.history, p.rooms);
    let per_owner = parallel(owners_n, owners_n, |o| {
        let (owner, member, target) = (owners[o].clone(), member.clone(), target.clone());
        async move {
            let mut rooms = Vec::new();
            for i in (o..rooms_n).step_by(owners_n) {
                let room = create_public_room(&owner, &format!("history {i}")).await?;
                member.join(&room).await?;
                target.join(&room).await?;
                for m in 0..history {
                    let from = if m % 2 == 0 { &owner } else { &member };
                    let text = format!("history message {m} in room {i}");
                    from.send_text(&room, &text, crate::client::SETUP_RETRIES).await?;
                }
                rooms.push(room);
            }
            Ok(rooms)
        }
    })
    .await
    .context("creating rooms with history")?;
    let rooms: Vec<String> = per_owner.into_iter().flatten().collect();
    ctx.log(&format!(
        "initial sync: {} rooms with {history} messages each set up in {:.1}s",
        rooms.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(Prepared { target, member, rooms, runs: 0 })
}

/// Times a first sync of a new login of the user, then incremental syncs after new messages.
///
/// A new login each run keeps a server's cached answer for an earlier device's sync from
/// standing in for the work. CPU is read around each sync only, not around the sends.
pub async fn measure(ctx: &Ctx, p: &Params, prepared: &mut Prepared) -> Result<Outcome> {
    let filter = json!({
        "room": { "state": { "lazy_load_members": true }, "timeline": { "limit": 20 } }
    })
    .to_string();
    let Prepared { target, member, rooms, runs } = prepared;
    let target = target.login_again(PASSWORD).await?;

    let cpu_before = ctx.cpu_s();
    let t0 = Instant::now();
    let raw = target
        .sync_raw(&SyncReq { since: None, timeout_ms: 0, filter: &filter }, 0)
        .await
        .context("initial sync")?;
    let initial_ms = ms_between(t0, Instant::now());
    let mut out = Outcome::default();
    out.cpu_per_op("initial_sync.cpu_ms", cpu_before, ctx.cpu_s(), 1);
    let body: serde_json::Value = serde_json::from_slice(&raw).context("initial sync JSON")?;
    let joined = joined_room_count(&body);
    if joined != rooms.len() {
        bail!("initial sync listed {joined} joined rooms, expected {}", rooms.len());
    }
    let mut since = next_batch(&body)?;

    let mut incremental = Vec::new();
    let mut incremental_cpu = Some(0.0);
    let per_round = rooms.len().min(5);
    for round in 0..p.incremental_rounds {
        for k in 0..per_round {
            let room = &rooms[(round * 37 + k * 11 + *runs * 7) % rooms.len()];
            let text = format!("incremental {} {runs} {round} {k}", ctx.run_id);
            member.send_text(room, &text, crate::client::SETUP_RETRIES).await?;
        }
        let cpu_before = ctx.cpu_s();
        let t0 = Instant::now();
        let raw = target
            .sync_raw(&SyncReq { since: Some(&since), timeout_ms: 0, filter: &filter }, 0)
            .await
            .context("incremental sync")?;
        incremental.push(ms_between(t0, Instant::now()));
        incremental_cpu = match (incremental_cpu, cpu_before, ctx.cpu_s()) {
            (Some(sum), Some(before), Some(after)) => Some(sum + after - before),
            _ => None,
        };
        let body: serde_json::Value = serde_json::from_slice(&raw)?;
        since = next_batch(&body)?;
    }
    *runs += 1;
    let incremental_ms = median(&incremental);
    ctx.log(&format!(
        "initial sync: first {initial_ms:.0} ms ({} KiB), incremental median {incremental_ms:.1} ms",
        raw.len() / 1024
    ));
    out.metric("initial_sync.initial_ms", initial_ms);
    out.metric("initial_sync.incremental_ms", incremental_ms);
    out.cpu_per_op(
        "initial_sync.incremental_cpu_ms",
        Some(0.0),
        incremental_cpu,
        incremental.len(),
    );
    out.details = json!({
        "params": { "rooms": p.rooms, "history": p.history, "incremental_rounds": p.incremental_rounds },
        "initial_ms": initial_ms,
        "initial_bytes": raw.len(),
        "incremental_ms": incremental,
        "new_messages_per_incremental": per_round,
    });
    Ok(out)
}
