//! Federation between real servers over HTTPS on loopback: two Rhizome servers, a test peer of
//! our own that misbehaves on purpose, and Synapse.
//!
//! Loopback addresses: 127.0.0.21-39 for keys and rooms, 40-59 history, 60-79 queries, the room
//! directory, spaces and media, 80-99 encryption, 101-106 Synapse, 111-156 the queue, misbehaving
//! peers and convergence, 181-186 redactions.

mod adversarial;
mod backfill_garbage;
mod convergence;
mod device_peer;
mod device_synapse;
mod devices;
mod features;
mod history;
mod history_serving;
mod keys;
mod knock;
mod media;
mod peer_rooms;
mod public_rooms;
mod queries;
mod queue;
mod redactions;
mod rooms;
mod spaces;
mod synapse;
mod synapse_queries;
mod synapse_rooms;

use std::time::{Duration, Instant};

use rhizome_testkit::Api;
use serde_json::Value;

/// Waits until `check` finds what it looks for in `user`'s syncs, or fails after 20 s.
pub async fn wait_for_sync(user: &Api, what: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
    let started = Instant::now();
    let mut since: Option<String> = None;
    loop {
        let query = match &since {
            Some(since) => format!("timeout=2000&since={since}"),
            None => "timeout=0".to_owned(),
        };
        let sync = user.sync(&query).await;
        if check(&sync) {
            return sync;
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
        assert!(started.elapsed() < Duration::from_secs(20), "never saw {what}");
    }
}

/// Whether a sync carries a timeline event of `room` with this body.
pub fn has_message(sync: &Value, room: &str, body: &str) -> bool {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|event| event["content"]["body"] == body))
}
