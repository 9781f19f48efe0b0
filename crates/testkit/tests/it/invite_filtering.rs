//! Invite filtering (MSC4155) and invite blocking (spec 1.18, MSC4380): blocked invites are
//! 403 `M_INVITE_BLOCKED`, ignored ones are made but never shown, allow lists win over block
//! lists, users over servers; from this server and from another; as Synapse does.

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
const FILTER: &str = "org.matrix.msc4155.invite_permission_config";

async fn set_account_data(api: &Api, kind: &str, content: Value) {
    let path = format!("/_matrix/client/v3/user/{}/account_data/{kind}", api.user());
    api.put(&path, content).await.ok();
}

async fn invite(inviter: &Api, invitee: &Api) -> (String, rhizome_testkit::Response) {
    let room_id = inviter.create_room(json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{room_id}/invite");
    let answer = inviter.post(&path, json!({ "user_id": invitee.user() })).await;
    (room_id, answer)
}

/// The rooms the user is invited to, by `/sync` and by sliding sync.
async fn invited_rooms(api: &Api) -> (Vec<String>, Vec<String>) {
    let sync = api.sync("").await;
    let mut by_sync: Vec<String> = sync["rooms"]["invite"]
        .as_object()
        .map(|rooms| rooms.keys().cloned().collect())
        .unwrap_or_default();
    by_sync.sort();
    let body = json!({ "lists": { "all": { "ranges": [[0, 49]], "timeline_limit": 1 } } });
    let sliding = api.post(&format!("{SLIDING}?timeout=0"), body).await.ok();
    let mut by_sliding: Vec<String> = sliding["rooms"]
        .as_object()
        .map(|rooms| {
            rooms
                .iter()
                .filter(|(_, room)| room.get("invite_state").is_some())
                .map(|(room_id, _)| room_id.clone())
                .collect()
        })
        .unwrap_or_default();
    by_sliding.sort();
    (by_sync, by_sliding)
}

#[tokio::test]
async fn invites_are_allowed_ignored_or_blocked_as_the_invitee_filters_them() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let dave = Api::new_user(&server.base_url, "dave").await;
    let versions = bob.get("/_matrix/client/versions").await.ok();
    assert_eq!(versions["unstable_features"]["org.matrix.msc4155"], true);

    // Only Alice from this server; Carol is ignored (silently); everyone else is blocked.
    set_account_data(
        &bob,
        FILTER,
        json!({
            "allowed_users": ["@alice:localhost"],
            "ignored_users": ["@car?l:*"],
            "blocked_servers": ["*"],
        }),
    )
    .await;
    let (from_alice, answer) = invite(&alice, &bob).await;
    answer.ok();
    let (from_carol, answer) = invite(&carol, &bob).await;
    answer.ok();
    let (_, answer) = invite(&dave, &bob).await;
    answer.expect_error(403, "M_INVITE_BLOCKED");
    let created =
        dave.post("/_matrix/client/v3/createRoom", json!({ "invite": [bob.user()] })).await;
    created.expect_error(403, "M_INVITE_BLOCKED");
    let (by_sync, by_sliding) = invited_rooms(&bob).await;
    assert_eq!(by_sync, vec![from_alice.clone()], "Carol's invite is hidden");
    assert_eq!(by_sliding, vec![from_alice.clone()]);
    // Nor does it notify him.
    let notifications = bob.get("/_matrix/client/v3/notifications").await.ok();
    let notified: Vec<&Value> = notifications["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|notification| &notification["room_id"])
        .collect();
    assert_eq!(notified, vec![&json!(from_alice)], "{notifications}");
    // The ignored invite was made: Carol sees Bob invited.
    let members = carol
        .get(&format!("/_matrix/client/v3/rooms/{from_carol}/members?membership=invite"))
        .await
        .ok();
    assert_eq!(members["chunk"].as_array().unwrap().len(), 1, "{members}");

    // Without the filter, all invites are welcome, and Carol's shows again.
    set_account_data(&bob, FILTER, json!({})).await;
    invite(&dave, &bob).await.1.ok();
    let (by_sync, _) = invited_rooms(&bob).await;
    assert_eq!(by_sync.len(), 3, "{by_sync:?}");
    assert!(by_sync.contains(&from_carol));

    // Blocking a server by name blocks its users, unless a user is allowed.
    set_account_data(&bob, FILTER, json!({ "blocked_servers": ["LOCALHOST"] })).await;
    invite(&alice, &bob).await.1.expect_error(403, "M_INVITE_BLOCKED");
}

#[tokio::test]
async fn invite_blocking_refuses_every_invite_and_hides_those_before() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let (earlier, answer) = invite(&alice, &bob).await;
    answer.ok();
    assert_eq!(invited_rooms(&bob).await.0, vec![earlier.clone()]);

    set_account_data(&bob, "m.invite_permission_config", json!({ "default_action": "block" }))
        .await;
    invite(&alice, &bob).await.1.expect_error(403, "M_INVITE_BLOCKED");
    assert_eq!(invited_rooms(&bob).await, (vec![], vec![]), "earlier invites are hidden too");
    // An allow list does not undo blocking everything.
    set_account_data(&bob, FILTER, json!({ "allowed_users": ["*"] })).await;
    invite(&alice, &bob).await.1.expect_error(403, "M_INVITE_BLOCKED");

    set_account_data(&bob, "m.invite_permission_config", json!({})).await;
    invite(&alice, &bob).await.1.ok();
    set_account_data(
        &bob,
        "org.matrix.msc4380.invite_permission_config",
        json!({ "block_all": true }),
    )
    .await;
    invite(&alice, &bob).await.1.expect_error(403, "M_INVITE_BLOCKED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_from_another_server_are_filtered_too() {
    let a = TestServer::start_federating("127.0.0.176").await;
    let b = TestServer::start_federating("127.0.0.177").await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let a_host = a.config.server_name.host().to_owned();
    set_account_data(&bob, FILTER, json!({ "blocked_servers": [a_host] })).await;
    let (_, answer) = invite(&alice, &bob).await;
    answer.expect_error(403, "M_INVITE_BLOCKED");
    set_account_data(&bob, FILTER, json!({ "ignored_users": [alice.user()] })).await;
    let (ignored, answer) = invite(&alice, &bob).await;
    answer.ok();
    set_account_data(&bob, FILTER, json!({})).await;
    let (welcome, answer) = invite(&alice, &bob).await;
    answer.ok();
    set_account_data(&bob, FILTER, json!({ "ignored_users": [alice.user()] })).await;
    let (by_sync, by_sliding) = invited_rooms(&bob).await;
    assert!(by_sync.is_empty() && by_sliding.is_empty(), "{by_sync:?} {by_sliding:?}");
    set_account_data(&bob, FILTER, json!({})).await;
    let (by_sync, _) = invited_rooms(&bob).await;
    let mut expected = vec![ignored, welcome];
    expected.sort();
    assert_eq!(by_sync, expected);
}

/// What an invitee's filter does, seen through the client API of a server at `base_url`:
/// the answers to an invite from a user they block and from one they ignore, and how many
/// invites the invitee's `/sync` shows. Users are (user ID, access token).
async fn filtered(
    http: &reqwest::Client,
    base_url: &str,
    blocked: (&str, &str),
    ignored: (&str, &str),
    invitee: (&str, &str),
) -> (Vec<(u16, Value)>, usize) {
    let url = |path: &str| format!("{base_url}{path}");
    let filter = json!({ "ignored_users": [ignored.0], "blocked_users": [blocked.0] });
    let path = format!("/_matrix/client/v3/user/{}/account_data/{FILTER}", invitee.0);
    let request = http.put(url(&path)).bearer_auth(invitee.1).json(&filter);
    assert!(request.send().await.unwrap().status().is_success());
    let mut answers = Vec::new();
    for inviter in [blocked, ignored] {
        let request = http.post(url("/_matrix/client/v3/createRoom")).bearer_auth(inviter.1);
        let created: Value = request.json(&json!({})).send().await.unwrap().json().await.unwrap();
        let room_id = created["room_id"].as_str().unwrap();
        let path = format!("/_matrix/client/v3/rooms/{room_id}/invite");
        let request = http.post(url(&path)).bearer_auth(inviter.1);
        let response = request.json(&json!({ "user_id": invitee.0 })).send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        answers.push((status, body["errcode"].clone()));
    }
    let request = http.get(url("/_matrix/client/v3/sync?timeout=0")).bearer_auth(invitee.1);
    let sync: Value = request.send().await.unwrap().json().await.unwrap();
    let shown = sync["rooms"]["invite"].as_object().map_or(0, serde_json::Map::len);
    (answers, shown)
}

#[tokio::test]
async fn invite_filters_act_as_they_do_on_synapse() {
    use rhizome_testkit::synapse::{Synapse, SynapseOptions};
    let options = SynapseOptions::default()
        .ip([127, 0, 0, 179].into())
        .config("experimental_features", json!({ "msc4155_enabled": true }));
    let synapse = Synapse::start_with(options).await;
    let [blocked, ignored, invitee] = [
        synapse.register("blocked", false).await,
        synapse.register("ignored", false).await,
        synapse.register("invitee", false).await,
    ];
    let user = |user: &rhizome_testkit::synapse::RegisteredUser| {
        (user.user_id.to_string(), user.access_token.clone())
    };
    let (blocked, ignored, invitee) = (user(&blocked), user(&ignored), user(&invitee));
    let on_synapse = filtered(
        &synapse.client(),
        synapse.base_url(),
        (&blocked.0, &blocked.1),
        (&ignored.0, &ignored.1),
        (&invitee.0, &invitee.1),
    )
    .await;
    assert_eq!(on_synapse.0[0], (403, json!("M_INVITE_BLOCKED")), "Synapse: {on_synapse:?}");

    let server = TestServer::start().await;
    let [blocked, ignored, invitee] = [
        Api::new_user(&server.base_url, "blocked").await,
        Api::new_user(&server.base_url, "ignored").await,
        Api::new_user(&server.base_url, "invitee").await,
    ];
    let token = |api: &Api| api.token.clone().unwrap();
    let on_rhizome = filtered(
        &reqwest::Client::new(),
        &server.base_url,
        (blocked.user(), &token(&blocked)),
        (ignored.user(), &token(&ignored)),
        (invitee.user(), &token(&invitee)),
    )
    .await;
    assert_eq!(on_rhizome, on_synapse);
}
