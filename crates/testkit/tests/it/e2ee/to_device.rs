//! To-device messages over HTTP: fan-out to `*`, idempotent transactions, delivery exactly once
//! (again on a retried sync, never after the next `since` acknowledged it), wake-ups, and the
//! per-sync limit.

use std::time::{Duration, Instant};

use rhizome_testkit::TestServer;
use serde_json::{Value, json};

use super::{Device, next_batch, to_device_events};

async fn send(
    from: &Device,
    event_type: &str,
    txn: &str,
    messages: Value,
) -> rhizome_testkit::Response {
    let path = format!("/_matrix/client/v3/sendToDevice/{event_type}/{txn}");
    from.api.put(&path, json!({ "messages": messages })).await
}

fn contents(events: &[Value]) -> Vec<Value> {
    events.iter().map(|event| event["content"].clone()).collect()
}

#[tokio::test]
async fn to_device_messages_arrive_exactly_once() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let bob_laptop = bob.login(&server).await;
    let since = next_batch(&bob.sync(None).await);
    let laptop_since = next_batch(&bob_laptop.sync(None).await);

    // An encrypted payload is relayed exactly as sent.
    let encrypted = json!({
        "algorithm": "m.olm.v1.curve25519-aes-sha2",
        "sender_key": "c2VuZGVy",
        "ciphertext": { "a2V5": { "type": 0, "body": "b3BhcXVl" } },
        "nested": { "list": [1, "two", null, { "deep": true }] },
    });
    let first = json!({
        &bob.user_id: { "*": encrypted },
        &alice.user_id: { &alice.device_id: { "to": "myself" } },
    });
    send(&alice, "m.room.encrypted", "t1", first.clone()).await.ok();
    // The same transaction again sends nothing.
    send(&alice, "m.room.encrypted", "t1", first).await.ok();
    send(&alice, "m.test", "t2", json!({ &bob.user_id: { &bob.device_id: { "n": 2 } } }))
        .await
        .ok();
    // Unknown devices and users of other servers get nothing, and that is not an error.
    let nowhere = json!({
        &bob.user_id: { "NOSUCHDEVICE": { "n": 3 } },
        "@x:elsewhere.example": { "*": {} },
    });
    send(&alice, "m.test", "t3", nowhere).await.ok();

    let received = bob.sync(Some(&since)).await;
    let events = to_device_events(&received);
    assert_eq!(contents(&events), [encrypted.clone(), json!({ "n": 2 })], "{received}");
    assert_eq!(events[0]["sender"], alice.user_id);
    assert_eq!(events[0]["type"], "m.room.encrypted");
    assert_eq!(events[1]["type"], "m.test");
    // The response was lost: the same sync again gets the same messages.
    let retried = bob.sync(Some(&since)).await;
    assert_eq!(to_device_events(&retried), events);
    // Syncing from the new token acknowledges them: they never come again.
    let next = next_batch(&received);
    assert!(to_device_events(&bob.sync(Some(&next)).await).is_empty());
    assert!(to_device_events(&bob.sync(Some(&next)).await).is_empty());
    assert!(to_device_events(&bob.sync(Some(&since)).await).is_empty(), "deleted once received");

    // The other device got its own copy of the `*` message only.
    let laptop = to_device_events(&bob_laptop.sync(Some(&laptop_since)).await);
    assert_eq!(contents(&laptop), [encrypted]);
    // The sender's own device got the message addressed to it.
    assert_eq!(contents(&to_device_events(&alice.sync(None).await)), [json!({ "to": "myself" })]);

    // A waiting sync wakes for a to-device message.
    let waiting = {
        let api = bob.api.clone();
        let next = next.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (api.sync(&format!("since={next}&timeout=20000")).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&alice, "m.test", "t4", json!({ &bob.user_id: { "*": { "n": 4 } } })).await.ok();
    let (woken, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(10), "not woken ({waited:?})");
    assert_eq!(contents(&to_device_events(&woken)), [json!({ "n": 4 })]);
}

#[tokio::test]
async fn bad_to_device_requests_are_refused() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let since = next_batch(&bob.sync(None).await);
    send(&alice, "m.test", "b1", json!({ &bob.user_id: { "*": "not an object" } }))
        .await
        .expect_error(400, "M_BAD_JSON");
    alice
        .api
        .put("/_matrix/client/v3/sendToDevice/m.test/b2", json!({ "nothing": true }))
        .await
        .expect_error(400, "M_BAD_JSON");
    send(&alice, "m.test", "b3", json!({ "not-a-user": { "*": {} } }))
        .await
        .expect_error(400, "M_BAD_JSON");
    assert!(to_device_events(&bob.sync(Some(&since)).await).is_empty());
}

#[tokio::test]
async fn many_messages_come_over_several_syncs_without_loss() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let mut since = next_batch(&bob.sync(None).await);
    for n in 0..150 {
        let message = json!({ &bob.user_id: { &bob.device_id: { "n": n } } });
        send(&alice, "m.test", &format!("m{n}"), message).await.ok();
    }
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..4 {
        let response = bob.sync(Some(&since)).await;
        let events = to_device_events(&response);
        sizes.push(events.len());
        seen.extend(events.iter().map(|event| event["content"]["n"].as_i64().unwrap()));
        since = next_batch(&response);
    }
    assert_eq!(sizes, [100, 50, 0, 0]);
    assert_eq!(seen, (0..150).collect::<Vec<_>>(), "every message once, in order");
}
