//! The outbound queue's senders: one task per destination server, each sending one
//! transaction at a time (up to 50 PDUs and 100 EDUs) from the durable queue, retrying the
//! same transaction (same ID, same contents) with exponential backoff until it is accepted,
//! and collapsing the queue to the latest event of each room after an outage (the destination
//! fetches the gap itself). Ephemeral EDUs (typing, receipts, presence) wait in memory only.
//!
//! A destination is sent to under a lease in the database, so that with several processes on
//! one database exactly one sends to it; the task renews the lease while it works. A task that
//! has nothing to send for a while ends; queuing wakes (or starts) it again.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Weak},
    time::Duration,
};

use parking_lot::Mutex;
use rhizome_core::{Result, clock::now_millis};
use rhizome_storage::{DestinationRecord, PendingTxnRecord, QueuedEdu, QueuedPdu};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, ServerName,
    api::federation::transactions::send_transaction_message, serde::Raw,
};
use serde_json::value::RawValue as RawJsonValue;
use tokio::sync::Notify;

use super::client::{FederationError, RequestLimits};
use crate::Services;

/// PDUs per transaction (the spec's limit).
pub const MAX_PDUS_PER_TXN: i64 = 50;
/// EDUs per transaction (the spec's limit).
pub const MAX_EDUS_PER_TXN: i64 = 100;
/// A destination that failed and has more PDUs than this queued gets a catch-up instead.
const CATCH_UP_THRESHOLD: i64 = 50;
/// Ephemeral EDUs kept per destination; older ones are dropped.
const MAX_EPHEMERAL_EDUS: usize = 500;
/// How long a lease lasts without renewal (another process takes a destination over after
/// it lapses). It is renewed before every transaction; a transaction that outlasts it may be
/// sent again by the process that takes over, under the same ID, which the destination
/// de-duplicates.
const LEASE_MS: i64 = 10_000;
/// The longest a backing-off sender sleeps before reading its destination's state again.
const BACKOFF_RECHECK: Duration = Duration::from_secs(60);
/// How often a process looks again at a destination another process holds.
const LEASE_RETRY: Duration = Duration::from_secs(2);
/// How long an idle sender task lives.
const IDLE_EXIT: Duration = Duration::from_secs(120);
/// With other processes: how often queues left by a process that died are looked for.
const TAKEOVER_SWEEP: Duration = Duration::from_secs(5);

/// One destination's in-memory part.
#[derive(Default)]
struct DestinationState {
    notify: Arc<Notify>,
    ephemeral: Mutex<VecDeque<Box<RawJsonValue>>>,
    running: Mutex<bool>,
}

/// The senders of this process.
pub(crate) struct OutboundSender {
    destinations: Mutex<HashMap<OwnedServerName, Arc<DestinationState>>>,
    /// This process's name in leases.
    owner: String,
    /// Stops every sender.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Destinations currently backing off (an inbound request from one ends its backoff).
    backing_off: Mutex<std::collections::HashSet<OwnedServerName>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl OutboundSender {
    pub(crate) fn new() -> Self {
        let owner = format!("{}-{}", std::process::id(), super::random_string(12));
        Self {
            destinations: Mutex::new(HashMap::new()),
            owner,
            shutdown: tokio::sync::watch::channel(false).0,
            backing_off: Mutex::new(std::collections::HashSet::new()),
            tasks: Mutex::new(Vec::new()),
        }
    }

    fn state(&self, destination: &ServerName) -> Arc<DestinationState> {
        self.destinations.lock().entry(destination.to_owned()).or_default().clone()
    }
}

/// One EDU as a transaction carries it.
fn edu_json(edu_type: &str, content: &RawJsonValue) -> Option<Box<RawJsonValue>> {
    serde_json::value::to_raw_value(&serde_json::json!({
        "edu_type": edu_type,
        "content": content,
    }))
    .ok()
}

/// The next retry interval after a failure.
fn next_interval(previous_ms: i64, min_ms: i64, max_ms: i64) -> i64 {
    if previous_ms <= 0 { min_ms } else { previous_ms.saturating_mul(4).clamp(min_ms, max_ms) }
}

impl Services {
    /// Starts the senders of destinations with something queued (after a restart or a crash).
    pub fn start_federation_sender(&self) {
        if !self.config.federation.enabled {
            return;
        }
        let services = self.me.clone();
        tokio::spawn(async move {
            let Some(strong) = services.upgrade() else { return };
            // SQLite serves one process only (the data directory is locked): leases left by
            // a process that crashed are its own, and are taken back at once.
            if strong.store.backend_name() == "sqlite"
                && let Err(error) = strong.store.release_all_destination_leases().await
            {
                tracing::warn!(%error, "could not take back the federation leases");
            }
            let shared = strong.store.shared_by_processes();
            drop(strong);
            loop {
                let Some(strong) = services.upgrade() else { return };
                match strong.store.destinations_with_queue().await {
                    Ok(destinations) => {
                        for destination in destinations {
                            strong.wake_destination(&destination);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "could not read the federation queue"),
                }
                // With other processes, one that dies leaves its destinations' queues behind:
                // look for them again now and then (their leases lapse, and a sender here
                // takes them over).
                if !shared {
                    return;
                }
                drop(strong);
                tokio::time::sleep(TAKEOVER_SWEEP).await;
            }
        });
    }

    /// Stops every sender (at shutdown), waiting briefly for transactions in flight.
    pub async fn stop_federation_sender(&self) {
        let _ = self.federation.sender.shutdown.send(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.federation.sender.tasks.lock());
        for task in tasks {
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                tracing::debug!("a federation sender did not stop in time");
            }
        }
    }

    /// Wakes (or starts) the sender of a destination.
    pub(crate) fn wake_destination(&self, destination: &ServerName) {
        if destination == self.server_name() || *self.federation.sender.shutdown.borrow() {
            return;
        }
        let state = self.federation.sender.state(destination);
        state.notify.notify_one();
        let mut running = state.running.lock();
        if *running {
            return;
        }
        *running = true;
        let services = self.me.clone();
        let destination = destination.to_owned();
        let task = tokio::spawn(destination_task(services, destination, state.clone()));
        let mut tasks = self.federation.sender.tasks.lock();
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
    }

    /// Wakes the senders of destinations a persisted event was queued for, here and (the
    /// ones running) in the other processes.
    pub(crate) fn wake_destinations(&self, destinations: &[OwnedServerName]) {
        for destination in destinations {
            self.wake_destination(destination);
        }
        crate::processes::publish_destinations(self.store.as_ref(), destinations);
    }

    /// Wakes the senders of these destinations that run here (another process queued
    /// something for them).
    pub(crate) fn wake_running_destinations(&self, destinations: &[OwnedServerName]) {
        for destination in destinations {
            let state = self.federation.sender.destinations.lock().get(destination).cloned();
            if let Some(state) = state
                && *state.running.lock()
            {
                state.notify.notify_one();
            }
        }
    }

    /// Queues a durable EDU (to-device messages, device-list updates) for servers.
    pub async fn queue_durable_edu(
        &self,
        destinations: &[OwnedServerName],
        edu_type: &str,
        content: &serde_json::Value,
    ) -> Result<()> {
        let destinations: Vec<OwnedServerName> = destinations
            .iter()
            .filter(|server| {
                *server != self.server_name()
                    && self.config.federation.server_allowed(server.as_str())
            })
            .cloned()
            .collect();
        if destinations.is_empty() || !self.config.federation.enabled {
            return Ok(());
        }
        self.store.queue_edu(&destinations, edu_type, &content.to_string()).await?;
        self.wake_destinations(&destinations);
        Ok(())
    }

    /// Queues an ephemeral EDU (typing, receipts, presence) for servers: held in memory and
    /// lost if the server stops first, as they are worthless later.
    pub fn queue_ephemeral_edu(
        &self,
        destinations: &[OwnedServerName],
        edu_type: &str,
        content: &serde_json::Value,
    ) {
        if !self.config.federation.enabled {
            return;
        }
        let Ok(content) = serde_json::value::to_raw_value(content) else { return };
        let Some(edu) = edu_json(edu_type, &content) else { return };
        for destination in destinations {
            if destination == self.server_name()
                || !self.config.federation.server_allowed(destination.as_str())
            {
                continue;
            }
            let state = self.federation.sender.state(destination);
            {
                let mut ephemeral = state.ephemeral.lock();
                if ephemeral.len() >= MAX_EPHEMERAL_EDUS {
                    ephemeral.pop_front();
                }
                ephemeral.push_back(edu.clone());
            }
            self.wake_destination(destination);
        }
    }

    /// Another server contacted this one: if it was backing off, retry it now.
    pub async fn destination_contacted(&self, origin: &ServerName) {
        let was_backing_off = self.federation.sender.backing_off.lock().remove(origin);
        if was_backing_off {
            if let Err(error) = self.store.reset_destination_backoff(origin).await {
                tracing::debug!(%error, "could not reset a destination's backoff");
            }
            self.wake_destination(origin);
        }
    }

    /// Ends a destination's backoff and wakes its sender (`rhizome admin federation retry`).
    pub async fn retry_destination(&self, destination: &ServerName) -> Result<()> {
        self.store.reset_destination_backoff(destination).await?;
        self.federation.sender.backing_off.lock().remove(destination);
        self.wake_destination(destination);
        Ok(())
    }

    /// One attempt to send the next transaction. `Ok(true)`: something was sent (look again
    /// at once); `Ok(false)`: nothing to send.
    async fn send_next_transaction(
        &self,
        destination: &ServerName,
        state: &DestinationState,
        record: &DestinationRecord,
        in_flight_ephemeral: &mut Option<(String, Vec<Box<RawJsonValue>>)>,
    ) -> Result<bool, SendFailure> {
        let store = &self.store;
        let mut pending = record.pending_txn.clone();
        // A destination that failed with a long queue gets the latest event of each room
        // (the pending transaction is superseded); it fetches the gap itself.
        if record.failures > 0 && record.queued_pdus > CATCH_UP_THRESHOLD {
            let dropped =
                store.collapse_pdu_queue(destination).await.map_err(SendFailure::Local)?;
            tracing::info!(dropped, "catching a destination up with the latest events");
            pending = None;
            *in_flight_ephemeral = None;
        }
        let (pdus, edus) = store
            .next_transaction(destination, pending.as_ref(), MAX_PDUS_PER_TXN, MAX_EDUS_PER_TXN)
            .await
            .map_err(SendFailure::Local)?;
        // Ephemeral EDUs join a new transaction; a retried one keeps those it had.
        let ephemeral = match (&pending, in_flight_ephemeral.as_ref()) {
            (Some(pending), Some((txn_id, ephemeral))) if *txn_id == pending.txn_id => {
                ephemeral.clone()
            }
            (Some(_), _) => Vec::new(),
            (None, _) => {
                let room = usize::try_from(MAX_EDUS_PER_TXN).unwrap_or(100) - edus.len();
                let mut queue = state.ephemeral.lock();
                let take = queue.len().min(room);
                queue.drain(..take).collect()
            }
        };
        if pdus.is_empty() && edus.is_empty() && ephemeral.is_empty() {
            if pending.is_some() {
                store.set_pending_txn(destination, None).await.map_err(SendFailure::Local)?;
            }
            return Ok(false);
        }
        let pending = match pending.take() {
            Some(pending) => pending,
            None => {
                let pending = PendingTxnRecord {
                    txn_id: format!("{}-{}", now_millis(), super::random_string(8)),
                    max_pdu_pos: pdus.last().map_or(0, |pdu| pdu.stream_pos),
                    max_edu_id: edus.last().map_or(0, |edu| edu.id),
                };
                store
                    .set_pending_txn(destination, Some(&pending))
                    .await
                    .map_err(SendFailure::Local)?;
                pending
            }
        };
        *in_flight_ephemeral = Some((pending.txn_id.clone(), ephemeral.clone()));
        let request = self
            .transaction_request(&pending.txn_id, &pdus, &edus, ephemeral)
            .await
            .map_err(SendFailure::Local)?;
        let client = self.federation_client().map_err(SendFailure::Local)?;
        match client.send_with_limits(destination, request, RequestLimits::small()).await {
            Ok(response) => {
                for (event_id, result) in &response.pdus {
                    if let Err(error) = result {
                        tracing::debug!(%event_id, error = %error.chars().take(200).collect::<String>(), "a destination refused a PDU");
                    }
                }
                store
                    .complete_transaction(destination, &pending, now_millis())
                    .await
                    .map_err(SendFailure::Local)?;
                *in_flight_ephemeral = None;
                Ok(true)
            }
            Err(error) => {
                let permanent = matches!(&error, FederationError::Remote { status, .. }
                    if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 401 && status.as_u16() != 408);
                if permanent || error.is_refused_by_policy() {
                    // The destination will never take this transaction: drop it rather than
                    // block everything queued behind it.
                    tracing::warn!(%error, "a destination refused a transaction; it is dropped");
                    store
                        .complete_transaction(destination, &pending, now_millis())
                        .await
                        .map_err(SendFailure::Local)?;
                    *in_flight_ephemeral = None;
                    return Ok(true);
                }
                Err(SendFailure::Remote(error))
            }
        }
    }

    /// The `/send` request of a transaction.
    async fn transaction_request(
        &self,
        txn_id: &str,
        pdus: &[QueuedPdu],
        edus: &[QueuedEdu],
        ephemeral: Vec<Box<RawJsonValue>>,
    ) -> Result<send_transaction_message::v1::Request> {
        let ids: Vec<_> = pdus.iter().map(|pdu| pdu.event_id.clone()).collect();
        let events = self.load_events(&ids).await?;
        let mut request = send_transaction_message::v1::Request::new(
            OwnedTransactionId::from(txn_id),
            self.owned_server_name(),
            MilliSecondsSinceUnixEpoch::now(),
        );
        request.pdus = events
            .iter()
            .filter(|event| !event.record.outlier)
            .map(|event| event.pdu.json().to_owned())
            .collect();
        let mut all_edus: Vec<Raw<ruma::api::federation::transactions::edu::Edu>> = Vec::new();
        for edu in edus {
            let Ok(content) = RawJsonValue::from_string(edu.content.clone()) else { continue };
            if let Some(json) = edu_json(&edu.edu_type, &content) {
                all_edus.push(Raw::from_json(json));
            }
        }
        all_edus.extend(ephemeral.into_iter().map(Raw::from_json));
        request.edus = all_edus;
        Ok(request)
    }

    /// Records a failure and returns how long to wait.
    async fn back_off(&self, destination: &ServerName, record: &DestinationRecord) -> Duration {
        let config = &self.config.federation;
        let min = i64::try_from(config.min_retry_interval_secs).unwrap_or(30).saturating_mul(1000);
        let max =
            i64::try_from(config.max_retry_interval_secs).unwrap_or(86_400).saturating_mul(1000);
        let interval = next_interval(record.retry_interval_ms, min, max);
        let now = now_millis();
        if let Err(error) =
            self.store.record_destination_failure(destination, now + interval, interval, now).await
        {
            tracing::warn!(%error, "could not record a federation failure");
        }
        self.federation.sender.backing_off.lock().insert(destination.to_owned());
        Duration::from_millis(u64::try_from(interval).unwrap_or(30_000))
    }
}

/// Why a transaction could not be sent.
enum SendFailure {
    /// Something on this side (the database).
    Local(rhizome_core::Error),
    /// The destination could not take it (down, timing out, answering 5xx).
    Remote(FederationError),
}

/// The sender of one destination, until it has been idle for a while or the server stops.
async fn destination_task(
    services: Weak<Services>,
    destination: OwnedServerName,
    state: Arc<DestinationState>,
) {
    let mut shutdown = match services.upgrade() {
        Some(services) => services.federation.sender.shutdown.subscribe(),
        None => return,
    };
    let mut in_flight_ephemeral: Option<(String, Vec<Box<RawJsonValue>>)> = None;
    // Since when another process has held the lease (this task ends after a while of that).
    let mut held_elsewhere_since: Option<tokio::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let Some(services) = services.upgrade() else { break };
        let notified = state.notify.notified();
        let owner = services.federation.sender.owner.clone();
        let now = now_millis();
        let wait = match services
            .store
            .acquire_destination_lease(&destination, &owner, now + LEASE_MS, now)
            .await
        {
            Ok(true) => {
                held_elsewhere_since = None;
                match services.store.get_destination(&destination).await {
                    // Backing off: look again at the latest within a minute (the administrator
                    // may end the backoff from the command line).
                    Ok(Some(record)) if record.retry_at > now => Some(
                        Duration::from_millis(u64::try_from(record.retry_at - now).unwrap_or(0))
                            .min(BACKOFF_RECHECK),
                    ),
                    Ok(record) => {
                        let record = record.unwrap_or_else(|| empty_record(&destination));
                        match services
                            .send_next_transaction(
                                &destination,
                                &state,
                                &record,
                                &mut in_flight_ephemeral,
                            )
                            .await
                        {
                            Ok(true) => continue,
                            Ok(false) => None,
                            Err(SendFailure::Local(error)) => {
                                tracing::warn!(%error, "the federation sender hit a local error");
                                Some(Duration::from_secs(5))
                            }
                            Err(SendFailure::Remote(error)) => {
                                tracing::debug!(%error, "a transaction could not be sent");
                                Some(services.back_off(&destination, &record).await)
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not read a destination");
                        Some(Duration::from_secs(5))
                    }
                }
            }
            // Another process sends to it: look again when its lease may have lapsed, for a
            // while (the sweep of queues left behind starts a task again if needed).
            Ok(false) if given_up(&mut held_elsewhere_since) => break,
            Ok(false) => Some(LEASE_RETRY),
            Err(error) => {
                tracing::warn!(%error, "could not take a destination's lease");
                Some(Duration::from_secs(5))
            }
        };
        drop(services);
        let idle = wait.is_none();
        let sleep = tokio::time::sleep(wait.unwrap_or(IDLE_EXIT));
        tokio::select! {
            () = notified => {}
            () = sleep => {
                if idle {
                    break;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    *state.running.lock() = false;
    // Queued while stopping: the next wake starts a new task.
    if let Some(services) = services.upgrade()
        && !*shutdown.borrow()
        && !state.ephemeral.lock().is_empty()
    {
        services.wake_destination(&destination);
    }
    if let Some(services) = services.upgrade() {
        let owner = services.federation.sender.owner.clone();
        let _ = services.store.release_destination_lease(&destination, &owner).await;
    }
}

/// Whether another process has held the lease for longer than [`IDLE_EXIT`] (since when is
/// noted on the first call).
fn given_up(held_elsewhere_since: &mut Option<tokio::time::Instant>) -> bool {
    held_elsewhere_since.get_or_insert_with(tokio::time::Instant::now).elapsed() > IDLE_EXIT
}

fn empty_record(destination: &ServerName) -> DestinationRecord {
    DestinationRecord {
        destination: destination.to_owned(),
        failures: 0,
        retry_at: 0,
        retry_interval_ms: 0,
        last_success_ts: None,
        last_failure_ts: None,
        pending_txn: None,
        queued_pdus: 0,
        queued_edus: 0,
    }
}

/// Per-destination figures for the administrator.
pub fn describe(record: &DestinationRecord) -> BTreeMap<&'static str, String> {
    let time = |ts: Option<i64>| ts.map_or_else(|| "never".to_owned(), |ts| ts.to_string());
    BTreeMap::from([
        ("destination", record.destination.to_string()),
        ("last_success", time(record.last_success_ts)),
        ("failures", record.failures.to_string()),
        (
            "backoff_until",
            if record.retry_at > 0 { record.retry_at.to_string() } else { "-".into() },
        ),
        ("queued_pdus", record.queued_pdus.to_string()),
        ("queued_edus", record.queued_edus.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_fourfold_within_bounds() {
        assert_eq!(next_interval(0, 1_000, 60_000), 1_000);
        assert_eq!(next_interval(1_000, 1_000, 60_000), 4_000);
        assert_eq!(next_interval(32_000, 1_000, 60_000), 60_000);
        assert_eq!(next_interval(60_000, 1_000, 60_000), 60_000);
    }
}
