//! Notifications to push gateways (Push Gateway API, `POST /_matrix/push/v1/notify`,
//! <https://spec.matrix.org/v1.19/push-gateway-api/>): when an event notifies a local user,
//! each `http` pusher of theirs is told, in the format the app asked for (`event_id_only`
//! leaves the event out), with the number of rooms they have unread notifications in.
//!
//! The event path only queues a job; one worker, started with the server, turns jobs into
//! requests, at most `push.concurrency` at once. At shutdown the worker is drained: what is
//! queued and in flight is sent (retries cut short) before the server closes its database.
//! A gateway is reached only at a public address (or one the organiser allowed, see
//! [`outbound`](crate::outbound)), without redirects, and retried with backoff when it fails
//! or is unreachable; a pushkey it rejects loses its pusher. Nothing of the notification is
//! logged.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use reqwest::{StatusCode, Url, redirect::Policy};
use rhizome_core::{Error, Result, config::PushConfig};
use rhizome_storage::{PushAction, PusherRecord};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId, events::StateEventType};
use serde_json::{Map, Value, json};
use tokio::{
    sync::{Semaphore, mpsc},
    time::Instant,
};

use crate::{
    Services,
    outbound::{self, Refusal},
    rooms::cache::LoadedEvent,
};

/// The path every push gateway serves.
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// Jobs waiting for the worker; past this, notifications are dropped (and said so).
const QUEUE_LENGTH: usize = 4096;
/// How long one request to a gateway may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits before each attempt: the first at once, then backing off.
const BACKOFF_SECS: [u64; 4] = [0, 2, 10, 60];

/// One event that notified some users.
pub(crate) struct PushJob {
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
    /// Each notified user and the actions of the rule that matched (JSON).
    users: Vec<(OwnedUserId, String)>,
}

/// The queue between the event path and the push worker.
pub(crate) struct PushQueue {
    sender: mpsc::Sender<PushJob>,
    receiver: Mutex<Option<mpsc::Receiver<PushJob>>>,
    started: AtomicBool,
    permits: Arc<Semaphore>,
    concurrency: u32,
    /// Set at shutdown: the worker drains the queue and ends; retries stop waiting.
    stopping: tokio::sync::watch::Sender<bool>,
    worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PushQueue {
    pub(crate) fn new(config: &PushConfig) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_LENGTH);
        let concurrency = u32::try_from(config.concurrency.max(1)).unwrap_or(u32::MAX);
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
            started: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
            stopping: tokio::sync::watch::channel(false).0,
            worker: Mutex::new(None),
        }
    }
}

/// Checks a pusher's gateway URL: http(s), no credentials, the Push Gateway API's path.
pub(crate) fn check_gateway_url(url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|_| Error::invalid_param("data.url is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https")
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.host().is_none()
    {
        return Err(Error::invalid_param("data.url must be an http(s) URL"));
    }
    if parsed.path() != NOTIFY_PATH {
        return Err(Error::invalid_param(format!("data.url must end in {NOTIFY_PATH}")));
    }
    Ok(parsed)
}

/// What became of one request to a gateway.
enum Outcome {
    /// Delivered; these pushkeys were rejected.
    Delivered(Vec<String>),
    /// Worth trying again later.
    Retry,
    /// Not worth trying again.
    GiveUp,
}

/// The tweaks of a rule's actions (`sound`, `highlight`, …) as the gateway wants them.
fn tweaks(actions: &str) -> Map<String, Value> {
    let mut tweaks = Map::new();
    let Ok(Value::Array(actions)) = serde_json::from_str::<Value>(actions) else { return tweaks };
    for action in actions {
        if let Some(name) = action.get("set_tweak").and_then(Value::as_str) {
            // A highlight tweak without a value means true.
            let value = action.get("value").cloned().unwrap_or(Value::Bool(name == "highlight"));
            tweaks.insert(name.to_owned(), value);
        }
    }
    tweaks
}

impl Services {
    /// Starts the worker that sends notifications to push gateways (once; the server calls it
    /// at start-up). Until it runs, nothing is queued.
    pub fn start_push_worker(self: &Arc<Self>) {
        if !self.config.push.enabled {
            return;
        }
        let Some(mut receiver) = self.push_queue.receiver.lock().take() else { return };
        self.push_queue.started.store(true, Ordering::SeqCst);
        // The worker holds the services weakly: when the server goes, the queue's sender goes
        // with it and the worker ends.
        let services = Arc::downgrade(self);
        let mut stopping = self.push_queue.stopping.subscribe();
        let worker = tokio::spawn(async move {
            loop {
                let job = tokio::select! {
                    job = receiver.recv() => job,
                    _ = stopping.wait_for(|stopping| *stopping) => break,
                };
                let Some(job) = job else { return };
                let Some(services) = services.upgrade() else { return };
                services.deliver_pushes(job).await;
            }
            // Stopping: nothing more comes in, and what is queued is still sent.
            receiver.close();
            while let Some(job) = receiver.recv().await {
                let Some(services) = services.upgrade() else { return };
                services.deliver_pushes(job).await;
            }
        });
        *self.push_queue.worker.lock() = Some(worker);
    }

    /// Stops the push worker at shutdown, before the database closes: no more jobs are taken,
    /// the queued ones are sent, and so are those in flight (a failing gateway gets one last
    /// try at once instead of its backoff). Gives up after `limit`, saying so.
    pub async fn stop_push_worker(&self, limit: Duration) {
        self.push_queue.started.store(false, Ordering::SeqCst);
        let _ = self.push_queue.stopping.send(true);
        let worker = self.push_queue.worker.lock().take();
        let deadline = Instant::now() + limit;
        if let Some(worker) = worker
            && tokio::time::timeout_at(deadline, worker).await.is_err()
        {
            tracing::warn!("the push queue was not drained in time: notifications were lost");
            return;
        }
        let permits = self.push_queue.permits.acquire_many(self.push_queue.concurrency);
        if tokio::time::timeout_at(deadline, permits).await.is_err() {
            tracing::warn!("push notifications still being sent at shutdown were lost");
        }
    }

    /// Queues the notifications of a persisted event (those of its actions that notify).
    pub(crate) fn queue_pushes(
        &self,
        room_id: &ruma::RoomId,
        event_id: &ruma::EventId,
        actions: &[PushAction],
    ) {
        if !self.push_queue.started.load(Ordering::SeqCst) {
            return;
        }
        let users: Vec<(OwnedUserId, String)> = actions
            .iter()
            .filter(|action| action.notify)
            .map(|action| (action.user_id.clone(), action.actions.clone()))
            .collect();
        if users.is_empty() {
            return;
        }
        let job = PushJob { room_id: room_id.to_owned(), event_id: event_id.to_owned(), users };
        if self.push_queue.sender.try_send(job).is_err() {
            tracing::warn!("the push queue is full: a notification was not sent");
        }
    }

    /// Sends one event's notifications to every `http` pusher of the users it notified.
    async fn deliver_pushes(self: &Arc<Self>, job: PushJob) {
        let event = match self.load_event(&job.event_id).await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "could not load an event to push");
                return;
            }
        };
        for (user_id, actions) in job.users {
            if let Err(error) = self.deliver_to_user(&event, &job.room_id, &user_id, &actions).await
            {
                tracing::warn!(%error, "could not prepare a push notification");
            }
        }
    }

    async fn deliver_to_user(
        self: &Arc<Self>,
        event: &LoadedEvent,
        room_id: &ruma::RoomId,
        user_id: &UserId,
        actions: &str,
    ) -> Result<()> {
        let pushers = self.store.list_pushers(user_id).await?;
        if pushers.is_empty() {
            return Ok(());
        }
        let unread = self.store.rooms_with_unread_notifications(user_id).await?;
        for pusher in pushers {
            let data: Value = serde_json::from_str(&pusher.json)?;
            if data.get("kind").and_then(Value::as_str) != Some("http") {
                continue;
            }
            let Some(data) = data.get("data").and_then(Value::as_object).cloned() else {
                continue;
            };
            let Some(Ok(url)) = data.get("url").and_then(Value::as_str).map(check_gateway_url)
            else {
                continue;
            };
            let body = self.push_body(event, room_id, user_id, &pusher, data, actions, unread);
            let body = body.await?;
            let Ok(permit) = self.push_queue.permits.clone().acquire_owned().await else {
                return Ok(());
            };
            let services = Arc::clone(self);
            tokio::spawn(async move {
                let _permit = permit;
                services.send_notification(&pusher, url, &body).await;
            });
        }
        Ok(())
    }

    /// The request body for one pusher.
    #[allow(clippy::too_many_arguments)] // One notification, each part distinct.
    async fn push_body(
        &self,
        event: &LoadedEvent,
        room_id: &ruma::RoomId,
        user_id: &UserId,
        pusher: &PusherRecord,
        mut data: Map<String, Value>,
        actions: &str,
        unread: u64,
    ) -> Result<Value> {
        let pdu = &event.pdu;
        let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
        data.remove("url");
        let tweaks = tweaks(actions);
        let encrypted = pdu.kind.to_string() == "m.room.encrypted";
        let urgent = encrypted
            || tweaks.get("highlight").is_some_and(|value| value == &Value::Bool(true))
            || tweaks.contains_key("sound");
        let mut device = json!({
            "app_id": pusher.app_id,
            "pushkey": pusher.pushkey,
            "data": data,
            "tweaks": tweaks,
        });
        if pusher.created_ts > 0 {
            device["pushkey_ts"] = json!(pusher.created_ts / 1000);
        }
        let mut notification = json!({
            "event_id": pdu.event_id,
            "room_id": room_id,
            "counts": { "unread": unread },
            "devices": [device],
            "prio": if urgent { "high" } else { "low" },
        });
        if !event_id_only {
            notification["type"] = json!(pdu.kind.to_string());
            notification["sender"] = json!(pdu.sender);
            let content: Value = serde_json::from_str(pdu.content.get())?;
            notification["content"] = content;
            if let Some(member) = self
                .current_state_event(room_id, &StateEventType::RoomMember, pdu.sender.as_str())
                .await?
                && let Some(name) = member.pdu.content_str("displayname")
            {
                notification["sender_display_name"] = json!(name);
            }
            if let Some(name) =
                self.current_state_event(room_id, &StateEventType::RoomName, "").await?
                && let Some(name) = name.pdu.content_str("name")
            {
                notification["room_name"] = json!(name);
            }
            if let Some(alias) =
                self.current_state_event(room_id, &StateEventType::RoomCanonicalAlias, "").await?
                && let Some(alias) = alias.pdu.content_str("alias")
            {
                notification["room_alias"] = json!(alias);
            }
            if pdu.state_key.as_deref() == Some(user_id.as_str()) {
                notification["user_is_target"] = json!(true);
            }
        }
        Ok(json!({ "notification": notification }))
    }

    /// Sends a notification, retrying with backoff; forgets a pusher whose pushkey the gateway
    /// rejects. At shutdown a retry waiting for its backoff goes at once, and is the last.
    async fn send_notification(&self, pusher: &PusherRecord, url: Url, body: &Value) {
        let mut stopping = self.push_queue.stopping.subscribe();
        for (attempt, wait) in BACKOFF_SECS.into_iter().enumerate() {
            if attempt > 0 && *stopping.borrow() {
                break;
            }
            let _ = tokio::time::timeout(
                Duration::from_secs(wait),
                stopping.wait_for(|stopping| *stopping),
            )
            .await;
            match self.post_notification(&url, body).await {
                Outcome::Delivered(rejected) => {
                    if rejected.contains(&pusher.pushkey) {
                        tracing::info!(app_id = %pusher.app_id, "a push gateway rejected a pushkey; its pusher is removed");
                        if let Err(error) = self
                            .store
                            .delete_pusher(&pusher.user_id, &pusher.app_id, &pusher.pushkey)
                            .await
                        {
                            tracing::warn!(%error, "could not remove a rejected pusher");
                        }
                    }
                    return;
                }
                Outcome::GiveUp => break,
                Outcome::Retry => {}
            }
        }
        tracing::warn!(app_id = %pusher.app_id, "a push notification could not be delivered");
    }

    async fn post_notification(&self, url: &Url, body: &Value) -> Outcome {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let allowed = &self.config.push.allowed_addresses;
        let address = match outbound::checked_address(url, deadline, allowed).await {
            Ok(address) => address,
            Err(Refusal::Unresolvable) => return Outcome::Retry,
            Err(Refusal::NotPublic | Refusal::Invalid(_)) => return Outcome::GiveUp,
        };
        let mut builder = reqwest::Client::builder()
            .redirect(Policy::none())
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("Rhizome/", env!("CARGO_PKG_VERSION")));
        if let Some(url::Host::Domain(domain)) = url.host() {
            builder = builder.resolve(domain, address);
        }
        let Ok(client) = builder.build() else { return Outcome::GiveUp };
        let response = match client.post(url.clone()).json(body).send().await {
            Ok(response) => response,
            Err(_) => return Outcome::Retry,
        };
        let status = response.status();
        if status.is_success() {
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            let rejected = answer
                .get("rejected")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default();
            Outcome::Delivered(rejected)
        } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Outcome::Retry
        } else {
            Outcome::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_are_checked() {
        assert!(check_gateway_url("https://push.example.org/_matrix/push/v1/notify").is_ok());
        for url in [
            "https://push.example.org/",
            "https://push.example.org/_matrix/push/v1/notify/extra",
            "ftp://push.example.org/_matrix/push/v1/notify",
            "https://user:pw@push.example.org/_matrix/push/v1/notify",
            "not a url",
        ] {
            assert!(check_gateway_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn tweaks_come_from_the_actions() {
        let actions = r#"["notify", {"set_tweak": "sound", "value": "default"},
                         {"set_tweak": "highlight"}]"#;
        assert_eq!(
            Value::Object(tweaks(actions)),
            json!({ "sound": "default", "highlight": true })
        );
        let quiet = r#"["notify", {"set_tweak": "highlight", "value": false}]"#;
        assert_eq!(Value::Object(tweaks(quiet)), json!({ "highlight": false }));
        assert!(tweaks("not json").is_empty());
    }
}
