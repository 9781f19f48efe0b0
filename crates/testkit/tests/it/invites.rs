//! Invites as clients show them: the stripped state of an invite names the inviter, through
//! the inviter's own member event, in `/sync` and in sliding sync.

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// The stripped member event of `user_id` among an invite's stripped state.
fn stripped_member<'a>(stripped: &'a Value, user_id: &str) -> Option<&'a Value> {
    stripped
        .as_array()
        .unwrap_or_else(|| panic!("no stripped state: {stripped}"))
        .iter()
        .find(|event| event["type"] == "m.room.member" && event["state_key"] == user_id)
}

#[tokio::test]
async fn invites_carry_the_inviters_member_event() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.user()),
            json!({ "displayname": "Alice A." }),
        )
        .await
        .ok();
    let room_id = alice.create_room(json!({ "name": "book club" })).await;
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({ "user_id": bob.user() }),
        )
        .await
        .ok();

    let sync = bob.sync("timeout=0").await;
    let stripped = &sync["rooms"]["invite"][&room_id]["invite_state"]["events"];
    let invite = stripped_member(stripped, bob.user()).expect("the invite itself");
    assert_eq!(invite["sender"], alice.user());
    assert_eq!(invite["content"]["membership"], "invite");
    let inviter = stripped_member(stripped, alice.user()).expect("the inviter's member event");
    assert_eq!(inviter["sender"], alice.user());
    assert_eq!(inviter["content"]["membership"], "join");
    assert_eq!(inviter["content"]["displayname"], "Alice A.");

    let body = json!({ "conn_id": "main", "lists": { "all": {
        "ranges": [[0, 9]], "timeline_limit": 1, "required_state": [],
    } } });
    let sliding = bob.post(&format!("{SLIDING}?timeout=0"), body).await.ok();
    let stripped = &sliding["rooms"][&room_id]["invite_state"];
    assert!(stripped_member(stripped, bob.user()).is_some(), "{stripped}");
    let inviter = stripped_member(stripped, alice.user()).expect("the inviter's member event");
    assert_eq!(inviter["content"]["membership"], "join");
    assert_eq!(inviter["content"]["displayname"], "Alice A.");

    // A knock's stripped state holds the knocker's event once, and no one else's.
    let carol = Api::new_user(&server.base_url, "carol").await;
    let knockable = alice
        .create_room(json!({ "initial_state": [
            { "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } },
        ] }))
        .await;
    carol.post(&format!("/_matrix/client/v3/knock/{knockable}"), json!({})).await.ok();
    let sync = carol.sync("timeout=0").await;
    let members: Vec<&Value> = sync["rooms"]["knock"][&knockable]["knock_state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.member")
        .collect();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["state_key"], carol.user());
}
