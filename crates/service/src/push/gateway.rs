//! Notifications to push gateways (Push Gateway API, `POST /_matrix/push/v1/notify`,
//! <https://spec.matrix.org/v1.19/push-gateway-api/>): when an event notifies a local user,
//! each `http` pusher of theirs is told, in the format the app asked for (`event_id_only`
//! leaves the event out), with the number of rooms they have unread notifications in.
//!
//! The event path queues a job durably (in the transaction that persists the event); one
//! worker among all the processes sharing the database, under a lease ([`super::worker`]),
//! turns jobs into requests, at most `push.concurrency` at once, and deletes a job once its
//! requests are done; at shutdown it takes no more jobs and lets the deliveries under way
//! finish before the database closes. A gateway is reached only at a public
//! address (or one the organiser allowed, see [`outbound`](crate::outbound)), without
//! redirects, and retried with backoff when it fails or is unreachable; a pushkey it rejects
//! loses its pusher. Nothing of the notification is logged.

use std::{sync::Arc, time::Duration};

use reqwest::{StatusCode, Url, redirect::Policy};
use rhizome_core::{Error, Result, config::PushConfig};
use rhizome_storage::{PusherRecord, QueuedPush};
use ruma::{UserId, events::StateEventType};
use serde_json::{Map, Value, json};
use tokio::{sync::Semaphore, task::JoinHandle};

use crate::{Services, outbound, rooms::cache::LoadedEvent};

/// The path every push gateway serves.
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// How long one request to a gateway may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits before each attempt: the first at once, then backing off.
const BACKOFF_SECS: [u64; 4] = [0, 2, 10, 60];

/// The push worker's state in this process.
pub(crate) struct PushQueue {
    /// Wakes the worker when this process queued a job.
    pub(super) wake: tokio::sync::Notify,
    /// Whether the worker was started here.
    pub(super) started: std::sync::atomic::AtomicBool,
    /// Set at shutdown: the worker takes no more jobs.
    pub(super) stopping: std::sync::atomic::AtomicBool,
    /// The deliveries under way in this process.
    pub(super) deliveries: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The worker's name in the lease.
    pub(super) holder: parking_lot::Mutex<Option<String>>,
    permits: Arc<Semaphore>,
    /// One client for every gateway, built on first use, so connections to a gateway are kept
    /// between notifications (`None`: it could not be built).
    client: std::sync::OnceLock<Option<reqwest::Client>>,
}

impl PushQueue {
    pub(crate) fn new(config: &PushConfig) -> Self {
        Self {
            wake: tokio::sync::Notify::new(),
            started: std::sync::atomic::AtomicBool::new(false),
            stopping: std::sync::atomic::AtomicBool::new(false),
            deliveries: parking_lot::Mutex::new(Vec::new()),
            holder: parking_lot::Mutex::new(None),
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
            client: std::sync::OnceLock::new(),
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
    /// Sends one queued event's notifications to every `http` pusher of the users it
    /// notified, and returns once every request is done (delivered, rejected or given up).
    pub(super) async fn deliver_pushes(self: &Arc<Self>, job: &QueuedPush) {
        let event = match self.load_event(&job.event_id).await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "could not load an event to push");
                return;
            }
        };
        let mut sends = Vec::new();
        for (user_id, actions) in &job.users {
            match self.deliver_to_user(&event, &job.room_id, user_id, actions).await {
                Ok(mut started) => sends.append(&mut started),
                Err(error) => tracing::warn!(%error, "could not prepare a push notification"),
            }
        }
        for send in sends {
            let _ = send.await;
        }
    }

    async fn deliver_to_user(
        self: &Arc<Self>,
        event: &LoadedEvent,
        room_id: &ruma::RoomId,
        user_id: &UserId,
        actions: &str,
    ) -> Result<Vec<JoinHandle<()>>> {
        let mut sends = Vec::new();
        let pushers = self.store.list_pushers(user_id).await?;
        if pushers.is_empty() {
            return Ok(sends);
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
                return Ok(sends);
            };
            let services = Arc::clone(self);
            sends.push(tokio::spawn(async move {
                let _permit = permit;
                services.send_notification(&pusher, url, &body).await;
            }));
        }
        Ok(sends)
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
    /// rejects.
    async fn send_notification(&self, pusher: &PusherRecord, url: Url, body: &Value) {
        for wait in BACKOFF_SECS {
            tokio::time::sleep(Duration::from_secs(wait)).await;
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

    /// The client that sends to gateways: it connects only to addresses it checked (public, or
    /// allowed by the organiser: `outbound::CheckedResolver`), follows no redirect, and keeps
    /// connections, so a notification need not open one (and, over TLS, shake hands again).
    fn push_client(&self) -> Option<&reqwest::Client> {
        self.push_queue
            .client
            .get_or_init(|| {
                let resolver = outbound::CheckedResolver::new(&self.config.push.allowed_addresses);
                self.outbound_tls
                    .client_builder()
                    .redirect(Policy::none())
                    .no_proxy()
                    .dns_resolver(resolver)
                    .user_agent(concat!("Rhizome/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|error| tracing::warn!(%error, "no client for push gateways"))
                    .ok()
            })
            .as_ref()
    }

    async fn post_notification(&self, url: &Url, body: &Value) -> Outcome {
        // An address in the URL is checked here; a name, by the client's resolver.
        let allowed = &self.config.push.allowed_addresses;
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Outcome::GiveUp,
        };
        if ip.is_some_and(|ip| !outbound::fetchable(ip, allowed)) {
            return Outcome::GiveUp;
        }
        let Some(client) = self.push_client() else { return Outcome::GiveUp };
        let request = client.post(url.clone()).timeout(REQUEST_TIMEOUT).json(body);
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) if outbound::refused_by_resolver(&error) => return Outcome::GiveUp,
            Err(_) => return Outcome::Retry,
        };
        // The connection went to a checked address (no proxy, checked resolution); refuse
        // anything else all the same.
        if response.remote_addr().is_some_and(|remote| !outbound::fetchable(remote.ip(), allowed)) {
            return Outcome::GiveUp;
        }
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
