//! Thread subscriptions (MSC4306): by hand or automatic, unsubscriptions that win over older
//! automatic ones, and the changes in sliding sync (MSC4308) and page by page.

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

fn path(room_id: &str, root: &str) -> String {
    format!(
        "/_matrix/client/unstable/io.element.msc4306/rooms/{room_id}/thread/{}/subscription",
        encode(root)
    )
}

async fn reply(api: &Api, room_id: &str, root: &str, body: &str) -> String {
    let txn = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{body}");
    let content = json!({ "msgtype": "m.text", "body": body,
        "m.relates_to": { "rel_type": "m.thread", "event_id": root } });
    api.put(&txn, content).await.ok()["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn subscriptions_by_hand_and_automatic() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let root = alice.send_text(&room_id, "reply in a thread").await;
    let sub = path(&room_id, &root);

    alice.put(&sub, json!({})).await.ok();
    assert_eq!(alice.get(&sub).await.ok(), json!({ "automatic": false }));
    alice.delete(&sub).await.ok();
    alice.get(&sub).await.expect_error(404, "M_NOT_FOUND");
    alice.delete(&sub).await.ok();

    // Automatic: the cause must be in the thread.
    alice
        .put(&sub, json!({ "automatic": root }))
        .await
        .expect_error(400, "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD");
    let other_root = alice.send_text(&room_id, "another").await;
    let elsewhere = reply(&alice, &room_id, &other_root, "elsewhere").await;
    alice
        .put(&sub, json!({ "automatic": elsewhere }))
        .await
        .expect_error(400, "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD");

    // Unsubscribing wins over automatic subscriptions caused by earlier replies.
    let first = reply(&alice, &room_id, &root, "r1").await;
    let second = reply(&alice, &room_id, &root, "r2").await;
    let third = reply(&alice, &room_id, &root, "r3").await;
    let fresh_root = alice.send_text(&room_id, "fresh").await;
    let fresh = path(&room_id, &fresh_root);
    let fresh_reply = reply(&alice, &room_id, &fresh_root, "f1").await;
    alice.put(&fresh, json!({ "automatic": fresh_reply })).await.ok();
    assert_eq!(alice.get(&fresh).await.ok(), json!({ "automatic": true }));
    alice.put(&fresh, json!({})).await.ok();
    assert_eq!(alice.get(&fresh).await.ok(), json!({ "automatic": false }), "by hand wins");

    alice.delete(&sub).await.ok();
    let fourth = reply(&alice, &room_id, &root, "r4").await;
    for earlier in [&first, &second, &third] {
        alice
            .put(&sub, json!({ "automatic": earlier }))
            .await
            .expect_error(409, "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION");
        alice.get(&sub).await.expect_error(404, "M_NOT_FOUND");
    }
    alice.put(&sub, json!({ "automatic": fourth })).await.ok();
    assert_eq!(alice.get(&sub).await.ok(), json!({ "automatic": true }));

    // Threads that do not exist, or that the user cannot see.
    let missing = path(&room_id, "$notathread:example.org");
    alice.put(&missing, json!({})).await.expect_error(404, "M_NOT_FOUND");
    alice.get(&missing).await.expect_error(404, "M_NOT_FOUND");
    let stranger = Api::new_user(&server.base_url, "stranger").await;
    stranger.put(&sub, json!({})).await.expect_error(404, "M_NOT_FOUND");
}

async fn sliding(api: &Api, pos: Option<&str>, limit: u64) -> Value {
    let body = json!({ "extensions": {
        "io.element.msc4308.thread_subscriptions": { "enabled": true, "limit": limit } } });
    let query = pos.map(|pos| format!("?pos={pos}&timeout=0")).unwrap_or_default();
    let path = format!("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync{query}");
    api.post(&path, body).await.ok()
}

#[tokio::test]
async fn changes_come_through_sliding_sync_and_page_by_page() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let roots: Vec<String> = {
        let mut roots = Vec::new();
        for index in 0..3 {
            roots.push(alice.send_text(&room_id, &format!("root {index}")).await);
        }
        roots
    };
    let first = sliding(&alice, None, 10).await;
    assert!(first["extensions"]["io.element.msc4308.thread_subscriptions"]["subscribed"].is_null());
    let pos = first["pos"].as_str().unwrap().to_owned();

    alice.put(&path(&room_id, &roots[0]), json!({})).await.ok();
    alice.put(&path(&room_id, &roots[1]), json!({})).await.ok();
    alice.put(&path(&room_id, &roots[2]), json!({})).await.ok();
    alice.delete(&path(&room_id, &roots[1])).await.ok();
    let next = sliding(&alice, Some(&pos), 2).await;
    let ext = &next["extensions"]["io.element.msc4308.thread_subscriptions"];
    let subscribed = &ext["subscribed"][&room_id];
    assert_eq!(subscribed[&roots[2]]["automatic"], false, "{next}");
    assert!(subscribed[&roots[2]]["bump_stamp"].is_u64());
    assert!(ext["unsubscribed"][&room_id][&roots[1]]["bump_stamp"].is_u64(), "{next}");
    assert!(subscribed[&roots[0]].is_null(), "beyond the limit: {next}");
    let prev_batch = ext["prev_batch"].as_str().unwrap();

    // The companion endpoint gives the rest.
    let rest = alice
        .get(&format!(
            "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions?dir=b&from={prev_batch}"
        ))
        .await
        .ok();
    assert_eq!(rest["subscribed"][&room_id][&roots[0]]["automatic"], false, "{rest}");
    assert!(rest["end"].is_null());

    // Nothing new: nothing; a new change: just it.
    let pos = next["pos"].as_str().unwrap().to_owned();
    let quiet = sliding(&alice, Some(&pos), 10).await;
    assert!(quiet["extensions"]["io.element.msc4308.thread_subscriptions"].is_null(), "{quiet}");
    alice.put(&path(&room_id, &roots[1]), json!({})).await.ok();
    let pos = quiet["pos"].as_str().unwrap().to_owned();
    let again = sliding(&alice, Some(&pos), 10).await;
    let ext = &again["extensions"]["io.element.msc4308.thread_subscriptions"];
    assert_eq!(ext["subscribed"][&room_id].as_object().unwrap().len(), 1, "{again}");
    assert!(ext["subscribed"][&room_id][&roots[1]].is_object());
}
