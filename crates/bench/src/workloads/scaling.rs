//! Scaling: how the cost of a message's way from send to sync, and of an initial sync, grows
//! with what a user has: a user in N rooms, and a room of M members.
//!
//! Each dimension grows in stages (10, 100, 1000 by default) on the same user and room, so
//! the setup of the largest size pays for the smaller ones. At every stage the measured user
//! logs in anew (a new device, so no cached sync answer helps), is timed on an initial sync,
//! and then long-polls while another member of one of its rooms sends probe messages one at a
//! time. A cost that should stay flat (send→sync in one room while the user is in 1000) or
//! grow linearly shows its shape across the stages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use super::{
    Ctx, Outcome, PASSWORD, create_public_room, jitter, latency::receive, ms_between, parallel,
    register_users, small_sync_filter,
};
use crate::client::{SyncReq, User, joined_room_count, next_batch};
use crate::stats::median;

/// Settings of the scaling workload.
#[derive(Debug, Clone)]
pub struct Params {
    /// Rooms the measured user is in, stage by stage (ascending).
    pub room_sizes: Vec<usize>,
    /// Members of the measured room, stage by stage (ascending).
    pub member_sizes: Vec<usize>,
    /// Probe messages per measured run.
    pub probes: usize,
}

/// What grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    /// The rooms one user is in.
    Rooms,
    /// The members of one room.
    Members,
}

impl Dimension {
    /// The name in metric keys: `scaling.rooms_100.initial_ms`.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Rooms => "rooms",
            Dimension::Members => "members",
        }
    }
}

/// The user and room of one dimension, kept from stage to stage.
pub struct Prepared {
    /// The user whose syncs are measured: in every room (rooms), or the room's creator
    /// (members).
    user: Arc<User>,
    /// Sends the probes, in the probe room with `user`.
    sender: Arc<User>,
    probe_room: String,
    /// Rooms `user` is in so far (rooms dimension; 1 for members).
    rooms: usize,
    /// Members of the probe room so far.
    members: usize,
    /// Measured runs so far.
    runs: usize,
}

/// Grows a dimension to `size`: more rooms for the user, or more members in the room.
pub async fn grow(
    ctx: &Ctx,
    dim: Dimension,
    prepared: Option<Prepared>,
    size: usize,
) -> Result<Prepared> {
    let started = Instant::now();
    let mut prepared = match prepared {
        Some(prepared) => prepared,
        None => start(ctx, dim).await?,
    };
    match dim {
        Dimension::Rooms => {
            let more = size.saturating_sub(prepared.rooms);
            let user = prepared.user.clone();
            let first = prepared.rooms;
            parallel(more, ctx.concurrency, |i| {
                let user = user.clone();
                // A nonce in the create event keeps concurrent creations of one user from
                // deriving the same room ID (room version 12) on any server.
                let body = json!({ "preset": "private_chat", "name": format!("scale {}", first + i),
                    "creation_content": { "org.rhizome.bench.nonce": first + i } });
                async move { user.create_room(&body).await }
            })
            .await
            .context("creating rooms for the scaling workload")?;
            prepared.rooms += more;
        }
        Dimension::Members => {
            let more = size.saturating_sub(prepared.members);
            let users = register_users(ctx, &format!("sm{size}x"), more).await?;
            let room = prepared.probe_room.clone();
            parallel(more, ctx.concurrency, |i| {
                let (user, room) = (users[i].clone(), room.clone());
                async move { user.join(&room).await }
            })
            .await
            .context("joining the scaling room")?;
            prepared.members += more;
        }
    }
    ctx.log(&format!(
        "scaling: {} grown to {size} in {:.1}s",
        dim.name(),
        started.elapsed().as_secs_f64()
    ));
    Ok(prepared)
}

/// The measured user, the sender and their room.
async fn start(ctx: &Ctx, dim: Dimension) -> Result<Prepared> {
    let users = register_users(ctx, &format!("s{}", dim.name()), 2).await?;
    let (user, sender) = (users[0].clone(), users[1].clone());
    let probe_room = create_public_room(&user, &format!("scaling {}", dim.name())).await?;
    sender.join(&probe_room).await?;
    Ok(Prepared { user, sender, probe_room, rooms: 1, members: 2, runs: 0 })
}

/// One run at the current size: an initial sync of a new login, then the probes.
pub async fn measure(
    ctx: &Ctx,
    p: &Params,
    dim: Dimension,
    prepared: &mut Prepared,
) -> Result<Outcome> {
    let size = match dim {
        Dimension::Rooms => prepared.rooms,
        Dimension::Members => prepared.members,
    };
    let key = |what: &str| format!("scaling.{}_{size}.{what}", dim.name());
    let filter = small_sync_filter();
    let user = prepared.user.login_again(PASSWORD).await?;
    let mut out = Outcome::default();

    let cpu_before = ctx.cpu_s();
    let t0 = Instant::now();
    let raw = user
        .sync_raw(&SyncReq { since: None, timeout_ms: 0, filter: &filter }, 0)
        .await
        .context("initial sync")?;
    let initial_ms = ms_between(t0, Instant::now());
    out.cpu_per_op(&key("initial_cpu_ms"), cpu_before, ctx.cpu_s(), 1);
    let body: serde_json::Value = serde_json::from_slice(&raw).context("initial sync JSON")?;
    if joined_room_count(&body) != prepared.rooms {
        bail!(
            "initial sync listed {} rooms, expected {}",
            joined_room_count(&body),
            prepared.rooms
        );
    }
    let mut since = next_batch(&body)?;

    let (mut latencies, mut sends) = (Vec::new(), Vec::new());
    let mut seed = (prepared.runs as u64 + 7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let cpu_before = ctx.cpu_s();
    for k in 0..p.probes {
        let marker = format!("scale {} {} {size} {} {k}", ctx.run_id, dim.name(), prepared.runs);
        let wait = jitter(&mut seed, 50, 100);
        let recv = async {
            tokio::time::timeout(
                Duration::from_secs(60),
                receive(&user, &filter, &mut since, &marker),
            )
            .await
            .map_err(|_| anyhow!("probe not received within 60 s"))?
        };
        let send = async {
            tokio::time::sleep(wait).await;
            let t0 = Instant::now();
            prepared.sender.send_text(&prepared.probe_room, &marker, 0).await?;
            anyhow::Ok((t0, Instant::now()))
        };
        let (received, (sent, answered)) = tokio::try_join!(recv, send)?;
        latencies.push(ms_between(sent, received));
        sends.push(ms_between(sent, answered));
    }
    out.cpu_per_op(&key("msg_cpu_ms"), cpu_before, ctx.cpu_s(), p.probes);
    prepared.runs += 1;
    let (latency_ms, send_ms) = (median(&latencies), median(&sends));
    ctx.log(&format!(
        "scaling {} {size}: initial sync {initial_ms:.0} ms ({} KiB), send→sync {latency_ms:.1} ms, \
         send {send_ms:.1} ms",
        dim.name(),
        raw.len() / 1024
    ));
    out.metric(&key("initial_ms"), initial_ms);
    out.metric(&key("latency_ms"), latency_ms);
    out.metric(&key("send_ms"), send_ms);
    out.details = json!({
        "dimension": dim.name(), "size": size, "initial_ms": initial_ms,
        "initial_bytes": raw.len(), "latency_ms": latencies, "send_ms": sends,
    });
    Ok(out)
}
