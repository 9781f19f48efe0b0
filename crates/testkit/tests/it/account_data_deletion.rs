//! Deleting account data (MSC3391): by `DELETE` or by setting `{}`, globally and per room;
//! incremental syncs pass the deletion on, reads and fresh syncs no longer see it.

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

const TYPE: &str = "org.example.test";

fn global_of<'a>(sync: &'a Value, kind: &str) -> Option<&'a Value> {
    sync["account_data"]["events"].as_array()?.iter().find(|event| event["type"] == kind)
}

fn room_of<'a>(sync: &'a Value, room_id: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room_id]["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|event| event["type"] == kind)
}

#[tokio::test]
async fn global_account_data_is_deleted_by_delete_or_an_empty_object() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let user = encode(alice.user());
    let path = format!("/_matrix/client/v3/user/{user}/account_data/{TYPE}");
    let unstable =
        format!("/_matrix/client/unstable/org.matrix.msc3391/user/{user}/account_data/{TYPE}");
    for via_delete in [true, false] {
        alice.put(&path, json!({ "a": 1 })).await.ok();
        let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
        if via_delete {
            alice.delete(&unstable).await.ok();
        } else {
            alice.put(&path, json!({})).await.ok();
        }
        let next = alice.sync(&format!("since={since}&timeout=0")).await;
        assert_eq!(global_of(&next, TYPE).unwrap()["content"], json!({}), "{next}");
        alice.get(&path).await.expect_error(404, "M_NOT_FOUND");
        let fresh = alice.sync("timeout=0").await;
        assert!(global_of(&fresh, TYPE).is_none(), "{fresh}");
        let sliding = alice
            .post(
                "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
                json!({ "extensions": { "account_data": { "enabled": true } } }),
            )
            .await
            .ok();
        let global = sliding["extensions"]["account_data"]["global"].as_array().unwrap();
        assert!(!global.iter().any(|event| event["type"] == TYPE), "{sliding}");
    }
    // Only one's own.
    let bob = Api::new_user(&server.base_url, "bob").await;
    bob.delete(&unstable).await.expect_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn room_account_data_is_deleted_too() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let user = encode(alice.user());
    let path = format!("/_matrix/client/v3/user/{user}/rooms/{room_id}/account_data/{TYPE}");
    let unstable = format!(
        "/_matrix/client/unstable/org.matrix.msc3391/user/{user}/rooms/{room_id}/account_data/{TYPE}"
    );
    for via_delete in [true, false] {
        alice.put(&path, json!({ "b": 2 })).await.ok();
        let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
        if via_delete {
            alice.delete(&unstable).await.ok();
        } else {
            alice.put(&path, json!({})).await.ok();
        }
        let next = alice.sync(&format!("since={since}&timeout=0")).await;
        assert_eq!(room_of(&next, &room_id, TYPE).unwrap()["content"], json!({}), "{next}");
        alice.get(&path).await.expect_error(404, "M_NOT_FOUND");
        let fresh = alice.sync("timeout=0").await;
        assert!(room_of(&fresh, &room_id, TYPE).is_none(), "{fresh}");
    }
}
