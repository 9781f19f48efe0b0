//! Rooms with a real client: sign-up with invite tokens, presets, memberships, messages through
//! sync, history, relations, redaction, typing, receipts, profiles, power levels, history
//! visibility, transaction idempotency and a restart.

use std::time::Duration;

use matrix_sdk::{
    Client, Room,
    config::SyncSettings,
    room::MessagesOptions,
    ruma::{
        OwnedEventId, OwnedRoomId,
        api::client::{
            account::register,
            receipt::create_receipt::v3::ReceiptType,
            room::{Visibility, create_room::v3::Request as CreateRoomRequest},
            uiaa::{AuthData, Dummy},
        },
        events::{
            receipt::ReceiptThread,
            relation::{InReplyTo, Reply, Thread},
            room::{
                history_visibility::{HistoryVisibility, RoomHistoryVisibilityEventContent},
                message::{
                    Relation, RoomMessageEventContent, RoomMessageEventContentWithoutRelation,
                },
            },
        },
        room::JoinRuleKind,
    },
};
use rhizome_testkit::{Api, Backend, TestServer};
use serde_json::{Value, json};

use crate::support::{PASSWORD, register, register_with_token, sync};

async fn create_room(client: &Client, preset: &str, name: &str) -> Room {
    let mut request = CreateRoomRequest::new();
    request.name = Some(name.to_owned());
    request.preset = Some(preset.into());
    if preset == "public_chat" {
        request.visibility = Visibility::Public;
    }
    client.create_room(request).await.expect("room created")
}

/// Syncs `client` until `room_id` has a timeline event matching `check`, returning it.
async fn sync_until_event(
    client: &Client,
    room_id: &OwnedRoomId,
    check: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..50 {
        let response = client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .expect("sync succeeds");
        if let Some(room) = response.rooms.joined.get(room_id) {
            for event in &room.timeline.events {
                let value: Value =
                    serde_json::from_str(event.raw().json().get()).expect("event JSON");
                if check(&value) {
                    return value;
                }
            }
        }
    }
    panic!("the event never arrived through sync");
}

fn body_is(text: &'static str) -> impl Fn(&Value) -> bool {
    move |event| event["content"]["body"] == text
}

async fn send_text(room: &Room, text: &str) -> OwnedEventId {
    room.send(RoomMessageEventContent::text_plain(text))
        .await
        .expect("message sent")
        .response
        .event_id
}

fn raw_api(server: &TestServer, client: &Client) -> Api {
    let mut api = server.api();
    api.token = client.access_token();
    api.user_id = client.user_id().map(|user| user.to_string());
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_needs_a_valid_invite_token() {
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.registration.mode = rhizome_core::config::RegistrationMode::Token;
    })
    .await;
    let services = server.services();
    let token =
        services.create_registration_token(Some("welcome-1".into()), Some(1), None).await.unwrap();
    assert_eq!(token.token, "welcome-1");

    // The flows Element reads from the first 401 name the registration token stage.
    let api = server.api();
    let first = api
        .post("/_matrix/client/v3/register", json!({ "username": "x", "password": PASSWORD }))
        .await;
    assert_eq!(first.status.as_u16(), 401);
    assert_eq!(first.body["flows"][0]["stages"][0], "m.login.registration_token");
    let validity = api
        .get("/_matrix/client/v1/register/m.login.registration_token/validity?token=welcome-1")
        .await
        .ok();
    assert_eq!(validity["valid"], true);

    // Without a token, with a wrong one: refused, and nothing is created.
    let client = crate::support::client(&server.base_url).await;
    let mut request = register::v3::Request::new();
    request.username = Some("nobody".to_owned());
    request.password = Some(PASSWORD.to_owned());
    assert!(
        client.matrix_auth().register(request.clone()).await.is_err(),
        "signed up without a token"
    );
    request.auth = Some(AuthData::Dummy(Dummy::new()));
    assert!(
        client.matrix_auth().register(request).await.is_err(),
        "signed up with the dummy stage"
    );
    assert!(register_with_token(&server.base_url, "mallory", "wrong").await.is_err());
    assert_eq!(
        services.store.count_users().await.unwrap(),
        0,
        "a refused sign-up created an account"
    );

    // With it: signed up and logged in; the token is then used up.
    let alice = register_with_token(&server.base_url, "alice", "welcome-1")
        .await
        .expect("sign-up with the token");
    assert_eq!(alice.user_id().unwrap().as_str(), "@alice:localhost");
    assert!(
        register_with_token(&server.base_url, "bob", "welcome-1").await.is_err(),
        "a one-use token was used twice"
    );
    let validity = api
        .get("/_matrix/client/v1/register/m.login.registration_token/validity?token=welcome-1")
        .await
        .ok();
    assert_eq!(validity["valid"], false);

    // The password works for login on a new device.
    let other = crate::support::client(&server.base_url).await;
    other.matrix_auth().login_username("alice", PASSWORD).send().await.expect("login");
    assert_ne!(other.device_id(), alice.device_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_set_the_state_the_spec_gives() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let api = raw_api(&server, &alice);
    for (preset, join_rule, guest_access) in [
        ("private_chat", "invite", "can_join"),
        ("trusted_private_chat", "invite", "can_join"),
        ("public_chat", "public", "forbidden"),
    ] {
        let room = create_room(&alice, preset, preset).await;
        let base = format!("/_matrix/client/v3/rooms/{}/state", room.room_id());
        assert_eq!(
            api.get(&format!("{base}/m.room.join_rules/")).await.ok()["join_rule"],
            join_rule,
            "{preset}"
        );
        assert_eq!(
            api.get(&format!("{base}/m.room.guest_access/")).await.ok()["guest_access"],
            guest_access,
            "{preset}"
        );
        assert_eq!(
            api.get(&format!("{base}/m.room.history_visibility")).await.ok()["history_visibility"],
            "shared"
        );
        assert_eq!(api.get(&format!("{base}/m.room.name/")).await.ok()["name"], preset);
        let create = api.get(&format!("{base}/m.room.create/")).await.ok();
        assert_eq!(create["room_version"], "12", "rooms default to version 12");
    }
    let public = api.get("/_matrix/client/v3/publicRooms").await.ok();
    assert_eq!(public["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(public["chunk"][0]["name"], "public_chat");
    // An absent join rule means public.
    let join_rule =
        public["chunk"][0]["join_rule"].as_str().unwrap_or(JoinRuleKind::Public.as_str());
    assert_eq!(join_rule, "public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_joins_leaves_kicks_and_bans() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    let bob_id = bob.user_id().unwrap().to_owned();
    let room = create_room(&alice, "private_chat", "club").await;
    let room_id = room.room_id().to_owned();

    // Bob cannot join an invite-only room uninvited.
    assert!(bob.join_room_by_id(&room_id).await.is_err());
    room.invite_user_by_id(&bob_id).await.unwrap();
    sync(&bob).await;
    let invited = bob.get_room(&room_id).expect("the invite arrives through sync");
    assert_eq!(invited.state(), matrix_sdk::RoomState::Invited);
    invited.join().await.unwrap();
    sync(&bob).await;
    assert_eq!(bob.get_room(&room_id).unwrap().state(), matrix_sdk::RoomState::Joined);

    // Bob leaves, is invited back, joins, and is kicked.
    bob.get_room(&room_id).unwrap().leave().await.unwrap();
    sync(&alice).await;
    room.invite_user_by_id(&bob_id).await.unwrap();
    bob.join_room_by_id(&room_id).await.expect("joining after a re-invite");
    room.kick_user(&bob_id, Some("a break")).await.unwrap();
    sync(&bob).await;
    assert_eq!(bob.get_room(&room_id).unwrap().state(), matrix_sdk::RoomState::Left);

    // A ban keeps Bob out even when invited; unbanning lets an invite work again.
    room.ban_user(&bob_id, Some("spam")).await.unwrap();
    assert!(room.invite_user_by_id(&bob_id).await.is_err(), "a banned user was invited");
    assert!(bob.join_room_by_id(&room_id).await.is_err(), "a banned user joined");
    room.unban_user(&bob_id, None).await.unwrap();
    room.invite_user_by_id(&bob_id).await.unwrap();
    bob.join_room_by_id(&room_id).await.expect("joining after an unban and invite");

    let api = raw_api(&server, &alice);
    let members = api.get(&format!("/_matrix/client/v3/rooms/{room_id}/joined_members")).await.ok();
    let joined: Vec<&String> = members["joined"].as_object().unwrap().keys().collect();
    assert_eq!(joined, vec!["@alice:localhost", "@bob:localhost"]);
    let left =
        api.get(&format!("/_matrix/client/v3/rooms/{room_id}/members?membership=join")).await.ok();
    assert_eq!(left["chunk"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_through_sync_and_history_pages_back() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    let room = create_room(&alice, "public_chat", "town").await;
    let room_id = room.room_id().to_owned();
    bob.join_room_by_id(&room_id).await.unwrap();
    sync(&bob).await;

    // A message reaches Bob through sync, with Alice's transaction ID only on her own echo.
    send_text(&room, "hello bob").await;
    let received = sync_until_event(&bob, &room_id, body_is("hello bob")).await;
    assert_eq!(received["sender"], "@alice:localhost");
    assert!(received["unsigned"].get("transaction_id").is_none());

    // Thirty more; Bob pages back through all of them in order.
    for index in 0..30 {
        send_text(&room, &format!("message {index}")).await;
    }
    let bob_room = bob.get_room(&room_id).unwrap();
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut options = MessagesOptions::backward().from(from.as_deref());
        options.limit = 10u32.into();
        let page = bob_room.messages(options).await.unwrap();
        for event in &page.chunk {
            let value: Value = serde_json::from_str(event.raw().json().get()).unwrap();
            if let Some(body) = value["content"]["body"].as_str()
                && body.starts_with("message ")
            {
                bodies.push(body.to_owned());
            }
        }
        match page.end {
            Some(end) if !page.chunk.is_empty() => from = Some(end),
            _ => break,
        }
    }
    let expected: Vec<String> = (0..30).rev().map(|index| format!("message {index}")).collect();
    assert_eq!(bodies, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_replies_threads_and_redactions() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    let room = create_room(&alice, "public_chat", "town").await;
    let room_id = room.room_id().to_owned();
    bob.join_room_by_id(&room_id).await.unwrap();
    let original = send_text(&room, "helo").await;

    // An edit is bundled with the original.
    let mut edit = RoomMessageEventContent::text_plain("* hello");
    edit.relates_to =
        Some(Relation::Replacement(matrix_sdk::ruma::events::relation::Replacement::new(
            original.clone(),
            RoomMessageEventContentWithoutRelation::text_plain("hello"),
        )));
    room.send(edit).await.unwrap();
    // A reply and a thread reply.
    let mut reply = RoomMessageEventContent::text_plain("a reply");
    reply.relates_to = Some(Relation::Reply(Reply::new(InReplyTo::new(original.clone()))));
    room.send(reply).await.unwrap();
    let mut threaded = RoomMessageEventContent::text_plain("in a thread");
    threaded.relates_to = Some(Relation::Thread(Thread::plain(original.clone(), original.clone())));
    let thread_reply = room.send(threaded).await.unwrap().response.event_id;

    let api = raw_api(&server, &bob.clone());
    let event = api.get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{original}")).await.ok();
    assert_eq!(
        event["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"]["body"],
        "hello"
    );
    assert_eq!(event["unsigned"]["m.relations"]["m.thread"]["count"], 1);
    assert_eq!(
        event["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"],
        thread_reply.as_str()
    );
    let threads = api.get(&format!("/_matrix/client/v1/rooms/{room_id}/threads")).await.ok();
    assert_eq!(threads["chunk"][0]["event_id"], original.as_str());
    let relations = api
        .get(&format!("/_matrix/client/v1/rooms/{room_id}/relations/{original}/m.thread"))
        .await
        .ok();
    assert_eq!(relations["chunk"].as_array().unwrap().len(), 1);

    // Bob may not redact Alice's message; Alice may, and its content goes.
    let bob_room = bob.get_room(&room_id).unwrap();
    assert!(
        bob_room.redact(&original, None, None).await.is_err(),
        "a power-0 user redacted someone else's event"
    );
    room.redact(&original, Some("typo"), None).await.unwrap();
    let redacted =
        api.get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{original}")).await.ok();
    assert_eq!(redacted["content"], json!({}));
    assert_eq!(redacted["unsigned"]["redacted_because"]["content"]["reason"], "typo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_receipts_and_read_markers() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    let room = create_room(&alice, "public_chat", "town").await;
    let room_id = room.room_id().to_owned();
    bob.join_room_by_id(&room_id).await.unwrap();
    let bob_api = raw_api(&server, &bob);
    let since = bob_api.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    room.typing_notice(true).await.unwrap();
    let typing = bob_api.sync(&format!("since={since}&timeout=5000")).await;
    let ephemeral = &typing["rooms"]["join"][room_id.as_str()]["ephemeral"]["events"];
    assert_eq!(ephemeral[0]["type"], "m.typing");
    assert_eq!(ephemeral[0]["content"]["user_ids"][0], "@alice:localhost");

    // Messages count as unread for Bob until his read receipt.
    send_text(&room, "one").await;
    let last = send_text(&room, "two").await;
    let counts = bob_api.sync("timeout=0").await;
    assert_eq!(
        counts["rooms"]["join"][room_id.as_str()]["unread_notifications"]["notification_count"],
        2
    );
    let since = counts["next_batch"].as_str().unwrap().to_owned();
    bob.get_room(&room_id)
        .unwrap()
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, last.clone())
        .await
        .unwrap();
    let after = bob_api.sync("timeout=0").await;
    assert_eq!(
        after["rooms"]["join"][room_id.as_str()]["unread_notifications"]["notification_count"],
        0
    );
    let alice_api = raw_api(&server, &alice);
    let receipts = alice_api.sync(&format!("since={since}&timeout=0")).await;
    let events = receipts["rooms"]["join"][room_id.as_str()]["ephemeral"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let receipt =
        events.iter().find(|event| event["type"] == "m.receipt").expect("Alice sees Bob's receipt");
    assert!(receipt["content"][last.as_str()]["m.read"]["@bob:localhost"]["ts"].is_u64());

    // The fully-read marker is room account data.
    bob_api
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/read_markers"),
            json!({ "m.fully_read": last }),
        )
        .await
        .ok();
    let marker = bob_api
        .get(&format!(
            "/_matrix/client/v3/user/@bob:localhost/rooms/{room_id}/account_data/m.fully_read"
        ))
        .await
        .ok();
    assert_eq!(marker["event_id"], last.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_power_levels_and_history_visibility() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    let carol = register(&server.base_url, "carol").await;
    let room = create_room(&alice, "public_chat", "town").await;
    let room_id = room.room_id().to_owned();
    bob.join_room_by_id(&room_id).await.unwrap();

    // A new display name reaches the room's member event.
    bob.account().set_display_name(Some("Bob B.")).await.unwrap();
    let alice_api = raw_api(&server, &alice);
    let member = alice_api
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/@bob:localhost"))
        .await
        .ok();
    assert_eq!(member["displayname"], "Bob B.");

    // Bob has power 0: he cannot rename the room (M_FORBIDDEN), Alice can.
    let bob_api = raw_api(&server, &bob);
    let refused = bob_api
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/"),
            json!({ "name": "bob's" }),
        )
        .await;
    refused.expect_error(403, "M_FORBIDDEN");
    room.set_name("Town hall".into()).await.unwrap();

    // With `joined` visibility, Carol joining later cannot read what came before her join.
    room.send_state_event(RoomHistoryVisibilityEventContent::new(HistoryVisibility::Joined))
        .await
        .unwrap();
    send_text(&room, "before carol").await;
    carol.join_room_by_id(&room_id).await.unwrap();
    send_text(&room, "after carol").await;
    let carol_api = raw_api(&server, &carol);
    let page = carol_api
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50"))
        .await
        .ok();
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["after carol"]);
    let hidden = bob_api
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50"))
        .await
        .ok();
    assert!(
        hidden["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["content"]["body"] == "before carol")
    );
    // The same rule holds for /context and /event.
    let before_id = page_event_id(&bob_api, &room_id, "before carol").await;
    carol_api
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{before_id}"))
        .await
        .expect_error(404, "M_NOT_FOUND");
    carol_api
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/context/{before_id}"))
        .await
        .expect_error(404, "M_NOT_FOUND");
}

async fn page_event_id(api: &Api, room_id: &OwnedRoomId, body: &str) -> String {
    let page =
        api.get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50")).await.ok();
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["content"]["body"] == body)
        .and_then(|event| event["event_id"].as_str())
        .expect("the event is in history")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_id_sends_once_and_everything_survives_a_restart() {
    let mut server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let room = create_room(&alice, "private_chat", "kept").await;
    let room_id = room.room_id().to_owned();
    let api = raw_api(&server, &alice);
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/same-txn");
    let first = api.put(&path, json!({ "msgtype": "m.text", "body": "once" })).await.ok();
    let again = api.put(&path, json!({ "msgtype": "m.text", "body": "once" })).await.ok();
    assert_eq!(first["event_id"], again["event_id"]);
    let page =
        api.get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50")).await.ok();
    let copies = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["content"]["body"] == "once")
        .count();
    assert_eq!(copies, 1);

    server.restart().await;
    // The session, the room, its state and history are all still there.
    let whoami = api.get("/_matrix/client/v3/account/whoami").await.ok();
    assert_eq!(whoami["user_id"], "@alice:localhost");
    let name =
        api.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/")).await.ok();
    assert_eq!(name["name"], "kept");
    let page =
        api.get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50")).await.ok();
    assert!(
        page["chunk"].as_array().unwrap().iter().any(|event| event["content"]["body"] == "once")
    );
    // The same transaction after the restart still maps to the same event.
    let after_restart = api.put(&path, json!({ "msgtype": "m.text", "body": "once" })).await.ok();
    assert_eq!(after_restart["event_id"], first["event_id"]);
    // And the room goes on.
    let later = api.send_text(room_id.as_str(), "after the restart").await;
    assert!(later.starts_with('$'));
}
