//! Fan-out: one room with many members, all long-polling `/sync`; one message is sent and
//! the time until each member has received it is recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use super::{Ctx, Outcome, create_public_room, ms_between, parallel, register_users};
use crate::client::{SyncReq, User, next_batch, timeline_has_body};
use crate::stats::{Summary, median};

/// Settings of the fan-out workload.
#[derive(Debug, Clone)]
pub struct Params {
    pub members: usize,
    /// Messages sent per measured run, one at a time.
    pub messages: usize,
    /// Pause after every member has issued its long-poll, before the message is sent.
    pub settle: Duration,
    /// How long a round waits for the last member.
    pub round_timeout: Duration,
}

/// The room, its members and their sync tokens.
pub struct Prepared {
    room: String,
    members: Vec<(Arc<User>, String)>,
    /// Measured runs so far.
    runs: usize,
}

/// Registers the members, has them join one room and gives each an initial sync.
pub async fn setup(ctx: &Ctx, p: &Params) -> Result<Prepared> {
    let users = register_users(ctx, "fo", p.members.max(2)).await?;
    let room = create_public_room(&users[0], "fan-out").await?;
    let started = Instant::now();
    parallel(users.len() - 1, ctx.concurrency, |i| {
        let user = users[i + 1].clone();
        let room = room.clone();
        async move { user.join(&room).await }
    })
    .await
    .context("joining the fan-out room")?;
    ctx.log(&format!(
        "fan-out: {} members joined in {:.1}s",
        users.len(),
        started.elapsed().as_secs_f64()
    ));
    let filter = super::small_sync_filter();
    let members = parallel(users.len(), ctx.concurrency, |i| {
        let user = users[i].clone();
        let filter = filter.clone();
        async move {
            let req = SyncReq { since: None, timeout_ms: 0, filter: &filter };
            let since = next_batch(&user.sync(&req, 3).await?)?;
            Ok((user, since))
        }
    })
    .await
    .context("initial syncs of fan-out members")?;
    Ok(Prepared { room, members, runs: 0 })
}

/// Sends the run's messages: every member long-polls, one message is sent, arrivals are
/// timed; then the next.
pub async fn measure(ctx: &Ctx, p: &Params, prepared: &mut Prepared) -> Result<Outcome> {
    let cpu_before = ctx.cpu_s();
    let members = std::mem::take(&mut prepared.members);
    let n = members.len();
    let Some(sender) = members.first().map(|(user, _)| user.clone()) else {
        bail!("fan-out: no members left from an earlier failed run");
    };
    let ready = Arc::new(Semaphore::new(0));
    let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let run = prepared.runs;
    prepared.runs += 1;
    let markers: Arc<Vec<String>> = Arc::new(
        (0..p.messages).map(|r| format!("fanout {} run {run} message {r}", ctx.run_id)).collect(),
    );
    let overall = p.round_timeout * u32::try_from(p.messages + 1).unwrap_or(u32::MAX);
    let mut tasks = Vec::with_capacity(n);
    for (user, since) in members {
        let (ready, tx, markers) = (ready.clone(), arrived_tx.clone(), markers.clone());
        tasks.push(tokio::spawn(tokio::time::timeout(
            overall,
            listen(user, since, markers, ready, tx),
        )));
    }
    drop(arrived_tx);

    let mut rounds = Vec::new();
    let mut after_send = Vec::new();
    for (r, marker) in markers.iter().enumerate() {
        // Wait until every member has (re)issued its long-poll for this round.
        match tokio::time::timeout(p.round_timeout, ready.acquire_many(n as u32)).await {
            Ok(permit) => permit.context("fan-out ready semaphore closed")?.forget(),
            Err(_) => bail!("fan-out message {r}: members did not all start polling"),
        }
        tokio::time::sleep(p.settle).await;
        let t0 = Instant::now();
        sender.send_text(&prepared.room, marker, 0).await.context("sending the fan-out message")?;
        let sent = Instant::now();
        let mut delays = Vec::with_capacity(n);
        let mut last_arrival = t0;
        let round_deadline = tokio::time::Instant::now() + p.round_timeout;
        while delays.len() < n {
            match tokio::time::timeout_at(round_deadline, arrived_rx.recv()).await {
                Ok(Some((round, at))) if round == r => {
                    last_arrival = last_arrival.max(at);
                    delays.push(ms_between(t0, at));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let summary = Summary::of(&delays);
        ctx.log(&format!(
            "fan-out message {r}: {}/{n} received, p50 {:.0} ms, last {:.0} ms",
            delays.len(),
            summary.as_ref().map_or(f64::NAN, |s| s.p50),
            summary.as_ref().map_or(f64::NAN, |s| s.max),
        ));
        if delays.len() < n {
            bail!(
                "fan-out message {r}: only {}/{n} members received the message within {:?}",
                delays.len(),
                p.round_timeout
            );
        }
        rounds.push(summary);
        // The last arrival counted from the send's answer (a member may have had it sooner).
        after_send.push(ms_between(sent, last_arrival.max(sent)));
    }
    // Every member has had the last message: its listener ends and hands its token back.
    for t in tasks {
        let member = t.await.context("fan-out listener panicked")?;
        let member = member.context("a fan-out listener timed out")??;
        prepared.members.push(member);
    }
    let cpu_after = ctx.cpu_s();
    let lasts: Vec<f64> = rounds.iter().flatten().map(|s| s.max).collect();
    let p50s: Vec<f64> = rounds.iter().flatten().map(|s| s.p50).collect();
    let mut out = Outcome::default();
    out.metric("fanout.last_ms", median(&lasts));
    out.metric("fanout.p50_ms", median(&p50s));
    out.metric("fanout.last_after_send_ms", median(&after_send));
    // The settle pauses cost an idle server nothing: this is the work of delivering.
    out.cpu_per_op("fanout.cpu_ms_per_delivery", cpu_before, cpu_after, n * p.messages);
    out.details = json!({
        "params": { "members": n, "messages": p.messages, "settle_ms": p.settle.as_millis() as u64 },
        "messages_ms": rounds,
        "note": "metrics are the median over the run's messages of each one's last and p50 arrival",
    });
    Ok(out)
}

/// One member: for each message, announce the long-poll and sync until it arrives; returns
/// the member with its latest sync token.
async fn listen(
    user: Arc<User>,
    mut since: String,
    markers: Arc<Vec<String>>,
    ready: Arc<Semaphore>,
    arrived: mpsc::UnboundedSender<(usize, Instant)>,
) -> Result<(Arc<User>, String)> {
    let filter = super::small_sync_filter();
    for (r, marker) in markers.iter().enumerate() {
        ready.add_permits(1);
        loop {
            let req = SyncReq { since: Some(&since), timeout_ms: 30_000, filter: &filter };
            let resp = match user.sync(&req, 0).await {
                Ok(resp) => resp,
                Err(e) => {
                    super::log(&format!("fan-out sync of {} failed: {e:#}", user.user_id));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let found = timeline_has_body(&resp, marker);
            let now = Instant::now();
            since = next_batch(&resp)?;
            if found {
                // The receiver may be gone once the measuring side has given up.
                let _ = arrived.send((r, now));
                break;
            }
        }
    }
    Ok((user, since))
}
