//! Federation between real servers over HTTPS on loopback: two Rhizome servers, a test peer of
//! our own that misbehaves on purpose, and Synapse.

mod device_peer;
mod device_synapse;
mod devices;
mod keys;
mod rooms;

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
