//! Delayed events (MSC4140): a client schedules an event (MatrixRTC's "I left the call" member
//! state, a message for later) and the server sends it when the delay runs out, unless the
//! client restarts the delay (a heartbeat), cancels it or has it sent at once. The due time is
//! in the database, so a scheduled event survives a restart; one worker per server sends them.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use rhizome_core::{Error, Result, clock::now_millis, error::MatrixErrorKind};
use rhizome_storage::DelayedEventRecord;
use ruma::{OwnedDeviceId, OwnedEventId, OwnedUserId, RoomId, UserId, events::TimelineEventType};
use serde_json::value::RawValue as RawJsonValue;
use tokio::{sync::Notify, task::JoinHandle};

use crate::{Requester, Services, rooms::NewEvent};

/// How many due events the worker takes at a time.
const DUE_BATCH: i64 = 50;
/// The longest the worker sleeps without looking at the database.
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// How long a repeated transaction answers the first one's delay ID.
const TXN_MEMORY: Duration = Duration::from_secs(30 * 60);
/// How many transactions are remembered at most.
const TXN_CAPACITY: usize = 10_000;

/// A client's transaction: its user, device and transaction key.
type TxnKey = (OwnedUserId, OwnedDeviceId, String);

/// The worker's wake-up and lifecycle.
#[derive(Default)]
pub(crate) struct DelayedRuntime {
    /// Woken when an event is scheduled or restarted (it may be due sooner).
    wake: Arc<Notify>,
    /// Set at shutdown.
    stopped: Arc<Notify>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Recent transactions and the delay IDs they made, so a retried request (a client that
    /// missed the answer) schedules nothing new.
    transactions: Mutex<HashMap<TxnKey, (String, Instant)>>,
}

impl DelayedRuntime {
    fn remembered(&self, key: &TxnKey) -> Option<String> {
        let transactions = self.transactions.lock();
        let (delay_id, at) = transactions.get(key)?;
        (at.elapsed() < TXN_MEMORY).then(|| delay_id.clone())
    }

    fn remember(&self, key: TxnKey, delay_id: String) {
        let mut transactions = self.transactions.lock();
        if transactions.len() >= TXN_CAPACITY {
            transactions.retain(|_, (_, at)| at.elapsed() < TXN_MEMORY);
        }
        if transactions.len() < TXN_CAPACITY {
            transactions.insert(key, (delay_id, Instant::now()));
        }
    }
}

/// What a client asks of a delayed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayedAction {
    /// Start the delay again (a heartbeat).
    Restart,
    /// Send the event now.
    Send,
    /// Never send it.
    Cancel,
}

impl DelayedAction {
    /// The action named in a request (`restart`, `send`, `cancel`).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "restart" => Ok(Self::Restart),
            "send" => Ok(Self::Send),
            "cancel" => Ok(Self::Cancel),
            _ => Err(Error::invalid_param("The action must be restart, send or cancel")),
        }
    }
}

/// A random, unguessable delay ID (it is all the unauthenticated endpoints ask for).
fn random_delay_id() -> String {
    use rand::{Rng, distributions::Alphanumeric};
    let random: String =
        rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
    format!("syd_{random}")
}

fn max_delay_exceeded(max_delay_ms: u64) -> Error {
    let kind = serde_json::from_value::<MatrixErrorKind>(serde_json::json!({
        "errcode": "M_MAX_DELAY_EXCEEDED",
        "max_delay": max_delay_ms,
    }));
    match kind {
        Ok(kind) => Error::matrix(kind, "The delay is longer than this server allows"),
        Err(error) => Error::internal(error),
    }
}

impl Services {
    /// Schedules `event` in a room the requester is in, to be sent after `delay_ms`; returns
    /// the delay ID. A transaction (`txn_id`, unique to the requester's device) repeated within
    /// half an hour answers the first one's delay ID.
    pub async fn schedule_delayed_event(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        event: NewEvent,
        delay_ms: u64,
        txn_id: Option<&str>,
    ) -> Result<String> {
        let txn_key = txn_id.map(|txn_id| {
            let key = format!("{room_id}/{}/{txn_id}", event.kind);
            (requester.user_id.clone(), requester.device_id.clone(), key)
        });
        if let Some(delay_id) = txn_key.as_ref().and_then(|key| self.delayed.remembered(key)) {
            return Ok(delay_id);
        }
        let limits = &self.config.limits;
        if delay_ms > limits.max_event_delay_ms || limits.max_event_delay_ms == 0 {
            return Err(max_delay_exceeded(limits.max_event_delay_ms));
        }
        if !self.is_joined(room_id, &requester.user_id).await? {
            return Err(Error::forbidden("You are not in this room"));
        }
        let scheduled = self.store.delayed_events_of(&requester.user_id).await?;
        if scheduled.len() >= usize::try_from(limits.max_delayed_events_per_user).unwrap_or(0) {
            return Err(Error::matrix(
                MatrixErrorKind::LimitExceeded(Default::default()),
                "Too many delayed events are scheduled",
            ));
        }
        let now = now_millis();
        let delay = i64::try_from(delay_ms).map_err(Error::internal)?;
        let record = DelayedEventRecord {
            delay_id: random_delay_id(),
            user_id: requester.user_id.clone(),
            device_id: Some(requester.device_id.clone()),
            room_id: room_id.to_owned(),
            event_type: event.kind.to_string(),
            state_key: event.state_key,
            content: event.content.get().to_owned(),
            delay_ms: delay,
            send_ts: now.saturating_add(delay),
            created_ts: now,
        };
        self.store.add_delayed_event(&record).await?;
        self.delayed.wake.notify_one();
        if let Some(key) = txn_key {
            self.delayed.remember(key, record.delay_id.clone());
        }
        Ok(record.delay_id)
    }

    /// The user's scheduled events, the soonest first.
    pub async fn delayed_events(&self, user_id: &UserId) -> Result<Vec<DelayedEventRecord>> {
        self.store.delayed_events_of(user_id).await
    }

    /// One of the user's scheduled events (`M_NOT_FOUND` for others' and unknown ones).
    pub async fn delayed_event(
        &self,
        user_id: &UserId,
        delay_id: &str,
    ) -> Result<DelayedEventRecord> {
        self.store
            .delayed_event(delay_id)
            .await?
            .filter(|record| record.user_id == user_id)
            .ok_or_else(|| Error::not_found("No such delayed event"))
    }

    /// Restarts, sends or cancels a scheduled event. `owner` is the authenticated user, who
    /// must be the one who scheduled it; without one, the delay ID alone suffices (MSC4140's
    /// unauthenticated endpoints, for a call's focus to act when the client is gone).
    pub async fn update_delayed_event(
        &self,
        owner: Option<&UserId>,
        delay_id: &str,
        action: DelayedAction,
    ) -> Result<()> {
        let record = self
            .store
            .delayed_event(delay_id)
            .await?
            .filter(|record| owner.is_none_or(|owner| record.user_id == owner))
            .ok_or_else(|| Error::not_found("No such delayed event"))?;
        let gone = || Error::not_found("No such delayed event");
        match action {
            DelayedAction::Restart => {
                let send_ts = now_millis().saturating_add(record.delay_ms);
                if !self.store.reschedule_delayed_event(delay_id, send_ts).await? {
                    return Err(gone());
                }
                self.delayed.wake.notify_one();
            }
            DelayedAction::Cancel => {
                if !self.store.take_delayed_event(delay_id).await? {
                    return Err(gone());
                }
            }
            DelayedAction::Send => {
                if !self.store.take_delayed_event(delay_id).await? {
                    return Err(gone());
                }
                self.send_delayed_event(&record).await?;
            }
        }
        Ok(())
    }

    /// Cancels other users' delayed events for a piece of state `sender` just changed (MSC4140:
    /// a change by someone else makes them moot).
    pub(crate) async fn cancel_others_delayed_state(
        &self,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
        sender: &UserId,
    ) {
        let cancelled =
            self.store.cancel_delayed_state_events(room_id, event_type, state_key, sender).await;
        if let Err(error) = cancelled {
            tracing::warn!(%error, "could not cancel delayed state events");
        }
    }

    /// Cancels every event the user scheduled (their account is being deactivated).
    pub(crate) async fn cancel_all_delayed_events(&self, user_id: &UserId) -> Result<()> {
        for record in self.store.delayed_events_of(user_id).await? {
            self.store.take_delayed_event(&record.delay_id).await?;
        }
        Ok(())
    }

    /// Sends a scheduled event as its sender, through the same checks as any client event,
    /// unless the sender's account is gone.
    async fn send_delayed_event(&self, record: &DelayedEventRecord) -> Result<OwnedEventId> {
        self.active_account(&record.user_id).await?;
        let event = NewEvent {
            kind: TimelineEventType::from(record.event_type.clone()),
            content: RawJsonValue::from_string(record.content.clone())?,
            state_key: record.state_key.clone(),
            redacts: None,
        };
        if event.state_key.is_some() {
            self.send_state_event(&record.user_id, &record.room_id, event).await
        } else {
            self.send_event(&record.user_id, &record.room_id, event, None).await
        }
    }

    /// Sends every event due now; returns how long until the next one is due.
    async fn send_due_delayed_events(&self) -> Result<Option<Duration>> {
        loop {
            let due = self.store.due_delayed_events(now_millis(), DUE_BATCH).await?;
            let batch = due.len();
            for record in due {
                // Taken first: of two attempts (a client's `send` racing the timer), one sends.
                if !self.store.take_delayed_event(&record.delay_id).await? {
                    continue;
                }
                if let Err(error) = self.send_delayed_event(&record).await {
                    tracing::debug!(%error, "a delayed event could not be sent");
                }
            }
            if i64::try_from(batch).unwrap_or(i64::MAX) < DUE_BATCH {
                break;
            }
        }
        let next = self.store.next_delayed_event_ts().await?;
        Ok(next.map(|send_ts| {
            Duration::from_millis(send_ts.saturating_sub(now_millis()).max(0).unsigned_abs())
        }))
    }

    /// Starts the worker that sends delayed events when they are due (once; the server calls
    /// it at start-up, and events due while it was down are sent at once).
    pub fn start_delayed_events_worker(self: &Arc<Self>) {
        let mut task = self.delayed.task.lock();
        if task.is_some() {
            return;
        }
        let services: Weak<Self> = Arc::downgrade(self);
        let wake = self.delayed.wake.clone();
        let stopped = self.delayed.stopped.clone();
        *task = Some(tokio::spawn(async move {
            loop {
                let Some(strong) = services.upgrade() else { break };
                let wait = match strong.send_due_delayed_events().await {
                    Ok(next) => next.unwrap_or(IDLE_WAIT).min(IDLE_WAIT),
                    Err(error) => {
                        tracing::warn!(%error, "could not send delayed events");
                        Duration::from_secs(5)
                    }
                };
                drop(strong);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = wake.notified() => {}
                    () = stopped.notified() => break,
                }
            }
        }));
    }

    /// Stops the worker (at shutdown), letting an event being sent finish.
    pub async fn stop_delayed_events_worker(&self) {
        self.delayed.stopped.notify_one();
        let task = self.delayed.task.lock().take();
        if let Some(task) = task
            && tokio::time::timeout(Duration::from_secs(2), task).await.is_err()
        {
            tracing::debug!("the delayed events worker did not stop in time");
        }
    }
}
