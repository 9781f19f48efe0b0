//! Simplified sliding sync (MSC4186) over HTTP: lists sorted by activity and cut to ranges,
//! incremental `pos`, unknown positions, long-polling, required state (wildcards, `$LAZY`,
//! `$ME`, expansion), history visibility, invites and leaves, subscriptions, filters and the
//! extensions.

use std::time::{Duration, Instant};

use rhizome_testkit::{Api, Backend, Response, TestServer};
use serde_json::{Value, json};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// One sliding sync connection of a client, remembering its `pos`.
struct Conn {
    api: Api,
    conn_id: &'static str,
    pos: Option<String>,
}

impl Conn {
    fn new(api: &Api, conn_id: &'static str) -> Self {
        Self { api: api.clone(), conn_id, pos: None }
    }

    /// Sends a request from `pos` (none: a new connection) and returns the raw response.
    fn request(
        &self,
        pos: Option<&str>,
        timeout_ms: u64,
        body: Value,
    ) -> impl Future<Output = Response> + Send + 'static {
        post_sync(self.api.clone(), self.conn_id, pos.map(str::to_owned), timeout_ms, body)
    }

    /// Syncs from the current `pos`, waiting up to `timeout_ms`, and moves `pos` on.
    async fn sync_wait(&mut self, timeout_ms: u64, body: Value) -> Value {
        let response = self.request(self.pos.as_deref(), timeout_ms, body).await.ok();
        self.pos = Some(response["pos"].as_str().expect("a pos").to_owned());
        response
    }

    /// Syncs from the current `pos` without waiting.
    async fn sync(&mut self, body: Value) -> Value {
        self.sync_wait(0, body).await
    }
}

async fn post_sync(
    api: Api,
    conn_id: &'static str,
    pos: Option<String>,
    timeout_ms: u64,
    mut body: Value,
) -> Response {
    body["conn_id"] = json!(conn_id);
    let query = match pos {
        Some(pos) => format!("?pos={pos}&timeout={timeout_ms}"),
        None => format!("?timeout={timeout_ms}"),
    };
    api.post(&format!("{PATH}{query}"), body).await
}

/// A body with one list `all`.
fn one_list(ranges: Value, timeline_limit: u64, required_state: Value) -> Value {
    json!({ "lists": { "all": {
        "ranges": ranges, "timeline_limit": timeline_limit, "required_state": required_state,
    } } })
}

fn rooms(response: &Value) -> Vec<&str> {
    let mut ids: Vec<&str> = response["rooms"]
        .as_object()
        .map(|rooms| rooms.keys().map(String::as_str).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

fn bodies(room: &Value) -> Vec<&str> {
    room["timeline"]
        .as_array()
        .map(|events| events.iter().filter_map(|event| event["content"]["body"].as_str()).collect())
        .unwrap_or_default()
}

/// `(type, state_key)` of the room's required state.
fn state_slots(room: &Value) -> Vec<(String, String)> {
    let mut slots: Vec<(String, String)> = room["required_state"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|event| {
                    let kind = event["type"].as_str().unwrap_or_default().to_owned();
                    (kind, event["state_key"].as_str().unwrap_or_default().to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    slots.sort();
    slots
}

fn slot(kind: &str, key: &str) -> (String, String) {
    (kind.to_owned(), key.to_owned())
}

#[tokio::test]
async fn lists_sort_rooms_by_activity_and_send_only_what_ranges_add() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let first = alice.create_room(json!({ "name": "first" })).await;
    let second = alice.create_room(json!({ "name": "second" })).await;
    let third = alice.create_room(json!({ "name": "third" })).await;
    alice.send_text(&first, "first is busy").await;
    // Activity order: first, third, second.
    let mut conn = Conn::new(&alice, "main");
    let response = conn.sync(one_list(json!([[0, 1]]), 1, json!([["m.room.name", ""]]))).await;
    assert_eq!(response["lists"]["all"]["count"], 3);
    let mut expected = vec![first.as_str(), third.as_str()];
    expected.sort_unstable();
    assert_eq!(rooms(&response), expected);
    let busy = &response["rooms"][&first];
    assert_eq!(busy["initial"], true);
    assert_eq!(busy["name"], "first");
    assert_eq!(bodies(busy), vec!["first is busy"]);
    assert_eq!(busy["limited"], true);
    assert_eq!(busy["joined_count"], 1);
    assert_eq!(state_slots(busy), vec![slot("m.room.name", "")]);
    let quiet = &response["rooms"][&third];
    assert!(busy["bump_stamp"].as_u64().unwrap() > quiet["bump_stamp"].as_u64().unwrap());
    // Widening the range sends only the room it adds.
    let wider = conn.sync(one_list(json!([[0, 2]]), 1, json!([["m.room.name", ""]]))).await;
    assert_eq!(rooms(&wider), vec![second.as_str()]);
    assert_eq!(wider["rooms"][&second]["initial"], true);
    // A list without ranges covers every room; nothing is new to this connection.
    let all = conn.sync(one_list(json!([]), 1, json!([["m.room.name", ""]]))).await;
    assert!(rooms(&all).is_empty(), "{all}");
    assert_eq!(all["lists"]["all"]["count"], 3);
}

#[tokio::test]
async fn an_incremental_pos_long_polls_and_sends_only_new_events() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    alice.send_text(&room_id, "before").await;
    let body = one_list(json!([[0, 9]]), 5, json!([]));
    let mut conn = Conn::new(&bob, "main");
    let initial = conn.sync(body.clone()).await;
    assert_eq!(bodies(&initial["rooms"][&room_id]), vec!["before"]);
    let from = conn.pos.clone().unwrap();

    let waiting = {
        let request = conn.request(Some(&from), 20_000, body.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            (request.await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send_text(&room_id, "wake up").await;
    let (response, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(10), "the request was not woken ({waited:?})");
    let response = response.ok();
    let room = &response["rooms"][&room_id];
    assert_eq!(bodies(room), vec!["wake up"]);
    assert!(room.get("initial").is_none(), "{room}");
    assert_eq!(room["num_live"], 1);
    assert!(room.get("limited").is_none_or(|limited| limited == false));
    // The same pos again (a retry) gets the same events.
    let retried = conn.request(Some(&from), 0, body.clone()).await.ok();
    assert_eq!(bodies(&retried["rooms"][&room_id]), vec!["wake up"]);
    // From the new pos nothing is new: the request waits out its timeout.
    conn.pos = Some(retried["pos"].as_str().unwrap().to_owned());
    let started = Instant::now();
    let idle = conn.sync_wait(300, body).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(rooms(&idle).is_empty(), "{idle}");
}

#[tokio::test]
async fn unknown_positions_are_refused_with_m_unknown_pos() {
    let mut server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    alice.create_room(json!({})).await;
    let body = one_list(json!([[0, 9]]), 1, json!([]));
    let mut conn = Conn::new(&alice, "main");
    conn.sync(body.clone()).await;
    let pos = conn.pos.clone().unwrap();
    conn.request(Some(&pos), 0, body.clone()).await.ok();
    for bad in ["garbage", "s1_1_1", "s999999_1_1"] {
        conn.request(Some(bad), 0, body.clone()).await.expect_error(400, "M_UNKNOWN_POS");
    }
    // A pos belongs to its connection.
    Conn::new(&alice, "other")
        .request(Some(&pos), 0, body.clone())
        .await
        .expect_error(400, "M_UNKNOWN_POS");
    // Connections live in memory: a restart forgets them, and the client starts again.
    server.restart().await;
    conn.request(Some(&pos), 0, body.clone()).await.expect_error(400, "M_UNKNOWN_POS");
    conn.pos = None;
    let fresh = conn.sync(body).await;
    assert_eq!(fresh["lists"]["all"]["count"], 1);
}

/// On PostgreSQL (where several processes may serve one client) connections are kept in the
/// database: a restart forgets none, and a connection continues where it was.
#[tokio::test]
async fn connections_outlive_a_restart_on_postgresql() {
    let mut server = TestServer::start_with(Backend::Postgres, |_| {}).await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let body = one_list(json!([[0, 9]]), 1, json!([]));
    let mut conn = Conn::new(&alice, "main");
    let first = conn.sync(body.clone()).await;
    assert_eq!(rooms(&first), vec![room_id.as_str()]);
    let pos = conn.pos.clone().unwrap();
    Conn::new(&alice, "other")
        .request(Some(&pos), 0, body.clone())
        .await
        .expect_error(400, "M_UNKNOWN_POS");
    server.restart().await;
    let again = conn.sync(body.clone()).await;
    assert!(rooms(&again).is_empty(), "sent again after a restart: {again}");
    alice.send_text(&room_id, "after").await;
    let next = conn.sync(body).await;
    assert_eq!(rooms(&next), vec![room_id.as_str()]);
    // The version continued from is the only one kept.
    conn.request(Some(&pos), 0, one_list(json!([[0, 9]]), 1, json!([])))
        .await
        .expect_error(400, "M_UNKNOWN_POS");
}

#[tokio::test]
async fn prev_batch_pages_back_with_messages() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    for index in 0..8 {
        alice.send_text(&room_id, &format!("m{index}")).await;
    }
    let mut conn = Conn::new(&alice, "main");
    let response = conn.sync(one_list(json!([[0, 0]]), 3, json!([]))).await;
    let room = &response["rooms"][&room_id];
    assert_eq!(bodies(room), vec!["m5", "m6", "m7"]);
    assert_eq!(room["limited"], true);
    let prev_batch = room["prev_batch"].as_str().unwrap();
    let page = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=3&from={prev_batch}"
        ))
        .await
        .ok();
    let older: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["content"]["body"].as_str())
        .collect();
    assert_eq!(older, vec!["m4", "m3", "m2"]);
    // The pos works as a `/messages` token too.
    let pos = conn.pos.as_deref().unwrap();
    let from_pos = alice
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=1&from={pos}"))
        .await
        .ok();
    assert_eq!(from_pos["chunk"][0]["content"]["body"], "m7");
    // Raising the timeline limit sends the room again with the longer timeline.
    let expanded = conn.sync(one_list(json!([[0, 0]]), 5, json!([]))).await;
    assert_eq!(bodies(&expanded["rooms"][&room_id]), vec!["m3", "m4", "m5", "m6", "m7"]);
}

#[tokio::test]
async fn required_state_takes_wildcards_lazy_members_and_me() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "name": "club", "topic": "things" }))
        .await;
    bob.join(&room_id).await;
    carol.join(&room_id).await;
    bob.send_text(&room_id, "hi from bob").await;

    let lazy = json!([["m.room.name", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"]]);
    let mut conn = Conn::new(&alice, "lazy");
    let response = conn.sync(one_list(json!([[0, 0]]), 1, lazy.clone())).await;
    let room = &response["rooms"][&room_id];
    assert_eq!(
        state_slots(room),
        vec![
            slot("m.room.member", alice.user()),
            slot("m.room.member", bob.user()),
            slot("m.room.name", "")
        ]
    );
    assert_eq!(room["joined_count"], 3);
    assert!(room.get("heroes").is_none(), "a named room has no heroes");

    // Carol speaks: her membership comes once, Bob's is not sent again.
    carol.send_text(&room_id, "hi from carol").await;
    bob.send_text(&room_id, "bob again").await;
    let next = conn.sync(one_list(json!([[0, 0]]), 2, lazy.clone())).await;
    let room = &next["rooms"][&room_id];
    assert_eq!(bodies(room), vec!["hi from carol", "bob again"]);
    assert_eq!(state_slots(room), vec![slot("m.room.member", carol.user())]);

    // A state change the config asks for arrives as required state; others do not.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name"),
            json!({ "name": "new" }),
        )
        .await
        .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"),
            json!({ "topic": "t" }),
        )
        .await
        .ok();
    let changed = conn.sync(one_list(json!([[0, 0]]), 2, lazy.clone())).await;
    let room = &changed["rooms"][&room_id];
    assert_eq!(room["name"], "new");
    assert_eq!(state_slots(room), vec![slot("m.room.name", "")]);

    // Asking for more state sends what the new entries match, with no new events.
    let mut wider = lazy.as_array().unwrap().clone();
    wider.push(json!(["m.room.topic", ""]));
    let expanded = conn.sync(one_list(json!([[0, 0]]), 2, json!(wider))).await;
    let room = &expanded["rooms"][&room_id];
    assert_eq!(state_slots(room), vec![slot("m.room.topic", "")]);
    assert!(bodies(room).is_empty());

    // `*` for everything.
    let mut all = Conn::new(&alice, "all");
    let response = all.sync(one_list(json!([[0, 0]]), 1, json!([["*", "*"]]))).await;
    let slots = state_slots(&response["rooms"][&room_id]);
    for expected in [
        slot("m.room.create", ""),
        slot("m.room.topic", ""),
        slot("m.room.power_levels", ""),
        slot("m.room.member", carol.user()),
    ] {
        assert!(slots.contains(&expected), "{expected:?} missing from {slots:?}");
    }
    // `[type, "*"]` for every key of a type.
    let mut members = Conn::new(&alice, "members");
    let response =
        members.sync(one_list(json!([[0, 0]]), 0, json!([["m.room.member", "*"]]))).await;
    let room = &response["rooms"][&room_id];
    assert_eq!(state_slots(room).len(), 3);
    assert!(room.get("timeline").is_none(), "a zero timeline limit sends no events");
}

#[tokio::test]
async fn history_visibility_hides_what_came_before_a_join() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "joined" } }],
        }))
        .await;
    alice.send_text(&room_id, "before bob").await;
    bob.join(&room_id).await;
    alice.send_text(&room_id, "after bob").await;
    let mut conn = Conn::new(&bob, "main");
    let response = conn.sync(one_list(json!([[0, 0]]), 10, json!([]))).await;
    let room = &response["rooms"][&room_id];
    assert_eq!(bodies(room), vec!["after bob"]);
    assert!(!response.to_string().contains("before bob"));
}

#[tokio::test]
async fn invites_bring_stripped_state_then_the_joined_room() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "name": "party", "invite": [bob.user()] })).await;
    alice.send_text(&room_id, "welcome").await;
    let body = json!({ "lists": {
        "invites": { "ranges": [[0, 9]], "timeline_limit": 5, "required_state": [],
            "filters": { "is_invite": true } },
        "joined": { "ranges": [[0, 9]], "timeline_limit": 5,
            "required_state": [["m.room.member", "$ME"]], "filters": { "is_invite": false } },
    } });
    let mut conn = Conn::new(&bob, "main");
    let response = conn.sync(body.clone()).await;
    assert_eq!(response["lists"]["invites"]["count"], 1);
    assert_eq!(response["lists"]["joined"]["count"], 0);
    let invite = &response["rooms"][&room_id];
    assert_eq!(invite["initial"], true);
    assert!(invite.get("timeline").is_none(), "an invitee sees no timeline");
    let stripped = invite["invite_state"].as_array().unwrap();
    assert!(
        stripped
            .iter()
            .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "party")
    );
    assert!(stripped.iter().any(|event| event["type"] == "m.room.member"
        && event["state_key"] == bob.user()
        && event["content"]["membership"] == "invite"));
    assert!(!response.to_string().contains("welcome"));

    bob.join(&room_id).await;
    let joined = conn.sync(body.clone()).await;
    assert_eq!(joined["lists"]["joined"]["count"], 1);
    let room = &joined["rooms"][&room_id];
    assert_eq!(room["initial"], true, "a newly joined room is sent in full");
    assert!(room.get("invite_state").is_none());
    assert!(bodies(room).contains(&"welcome"));
    assert_eq!(state_slots(room), vec![slot("m.room.member", bob.user())]);

    // A kick shows Bob his leave once; the room stays listed as a kick.
    alice
        .post(&format!("/_matrix/client/v3/rooms/{room_id}/kick"), json!({ "user_id": bob.user() }))
        .await
        .ok();
    alice.send_text(&room_id, "after the kick").await;
    let kicked = conn.sync(body.clone()).await;
    let room = &kicked["rooms"][&room_id];
    let own = room["required_state"].as_array().unwrap();
    assert_eq!(own[0]["content"]["membership"], "leave");
    assert!(!kicked.to_string().contains("after the kick"));
    let quiet = conn.sync(body).await;
    assert!(rooms(&quiet).is_empty(), "{quiet}");
}

fn extensions_body() -> Value {
    let mut body = one_list(json!([[0, 9]]), 5, json!([]));
    body["extensions"] = json!({
        "to_device": { "enabled": true },
        "e2ee": { "enabled": true },
        "account_data": { "enabled": true },
        "receipts": { "enabled": true },
        "typing": { "enabled": true },
    });
    body
}

fn global_types(response: &Value) -> Vec<&str> {
    response["extensions"]["account_data"]["global"]
        .as_array()
        .map(|events| events.iter().filter_map(|event| event["type"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn extensions_carry_to_device_e2ee_account_data_receipts_and_typing() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let message = alice.send_text(&room_id, "read me").await;
    let mut conn = Conn::new(&bob, "main");
    let mut body = extensions_body();
    let first = conn.sync(body.clone()).await;
    let extensions = &first["extensions"];
    let next_batch = extensions["to_device"]["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(extensions["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(extensions["e2ee"]["device_unused_fallback_key_types"], json!([]));
    assert!(global_types(&first).contains(&"m.push_rules"), "{first}");

    let bob_path = format!("/_matrix/client/v3/user/{}", bob.user());
    alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/t1",
            json!({ "messages": { bob.user(): { "*": { "secret": 1 } } } }),
        )
        .await
        .ok();
    alice
        .post(&format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{message}"), json!({}))
        .await
        .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/typing/{}", alice.user()),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await
        .ok();
    bob.put(&format!("{bob_path}/account_data/org.example.setting"), json!({ "on": true }))
        .await
        .ok();
    bob.put(&format!("{bob_path}/rooms/{room_id}/tags/u.work"), json!({ "order": 0.5 })).await.ok();
    // A new device of Alice's changes her device list, which Bob shares a room with.
    alice
        .post(
            "/_matrix/client/v3/login",
            json!({ "type": "m.login.password", "password": "a-long-password",
                "identifier": { "type": "m.id.user", "user": alice.user() } }),
        )
        .await
        .ok();

    body["extensions"]["to_device"]["since"] = json!(next_batch);
    let next = conn.sync(body.clone()).await;
    let extensions = &next["extensions"];
    let to_device = extensions["to_device"]["events"].as_array().unwrap();
    assert_eq!(to_device.len(), 1, "{next}");
    assert_eq!(to_device[0]["type"], "m.test");
    assert_eq!(to_device[0]["sender"], alice.user());
    assert_eq!(to_device[0]["content"]["secret"], 1);
    assert_eq!(extensions["e2ee"]["device_lists"]["changed"], json!([alice.user()]));
    let receipt = &extensions["receipts"]["rooms"][&room_id];
    assert_eq!(receipt["type"], "m.receipt");
    assert!(receipt["content"][&message]["m.read"][alice.user()]["ts"].is_u64(), "{receipt}");
    assert_eq!(
        extensions["typing"]["rooms"][&room_id]["content"]["user_ids"],
        json!([alice.user()])
    );
    assert_eq!(global_types(&next), vec!["org.example.setting"]);
    let room_data = extensions["account_data"]["rooms"][&room_id].as_array().unwrap();
    assert_eq!(room_data[0]["type"], "m.tag");
    assert_eq!(room_data[0]["content"]["tags"]["u.work"]["order"], 0.5);

    // Received messages are gone once `since` moves past them; nothing else is new.
    body["extensions"]["to_device"]["since"] = extensions["to_device"]["next_batch"].clone();
    let quiet = conn.sync(body).await;
    let extensions = &quiet["extensions"];
    assert!(extensions["to_device"]["events"].as_array().is_none_or(Vec::is_empty), "{quiet}");
    for part in ["receipts", "typing", "account_data"] {
        assert!(extensions.get(part).is_none(), "{part} again: {quiet}");
    }
    assert!(extensions["e2ee"].get("device_lists").is_none(), "{quiet}");
}

#[tokio::test]
async fn extension_scopes_follow_lists_and_subscriptions() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let listed = alice.create_room(json!({})).await;
    let subscribed = alice.create_room(json!({})).await;
    let listed_message = alice.send_text(&listed, "in the list").await;
    let subscribed_message = alice.send_text(&subscribed, "subscribed").await;
    for (room_id, event_id) in [(&listed, &listed_message), (&subscribed, &subscribed_message)] {
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{event_id}"),
                json!({}),
            )
            .await
            .ok();
    }
    // `listed` is the most recent: the list's single slot holds it.
    alice.send_text(&listed, "latest").await;
    let mut body = one_list(json!([[0, 0]]), 1, json!([]));
    body["room_subscriptions"] = json!({ subscribed.as_str(): { "timeline_limit": 1 } });
    let receipt_rooms = |response: &Value| {
        let mut ids: Vec<String> = response["extensions"]["receipts"]["rooms"]
            .as_object()
            .map(|rooms| rooms.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    for (scope, expected) in [
        (json!({}), vec![listed.clone(), subscribed.clone()]),
        (json!({ "lists": [] }), vec![subscribed.clone()]),
        (json!({ "rooms": [] }), vec![listed.clone()]),
        (json!({ "lists": ["all"], "rooms": [] }), vec![listed.clone()]),
        (json!({ "lists": [], "rooms": [subscribed.as_str()] }), vec![subscribed.clone()]),
        (json!({ "lists": [], "rooms": [] }), vec![]),
    ] {
        let mut request = body.clone();
        request["extensions"]["receipts"] = scope.clone();
        request["extensions"]["receipts"]["enabled"] = json!(true);
        let response = Conn::new(&alice, "scoped").sync(request).await;
        let mut expected = expected;
        expected.sort();
        assert_eq!(receipt_rooms(&response), expected, "scope {scope}");
    }
}

#[tokio::test]
async fn filters_subscriptions_and_heroes() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let dm = alice.create_room(json!({ "is_direct": true, "invite": [bob.user()] })).await;
    let space = alice
        .create_room(json!({ "name": "space", "creation_content": { "type": "m.space" } }))
        .await;
    let encrypted = alice
        .create_room(json!({ "name": "secret", "initial_state": [{ "type": "m.room.encryption",
            "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }))
        .await;
    let plain = alice.create_room(json!({ "name": "plain" })).await;
    let not_mine = bob.create_room(json!({ "name": "bob's" })).await;
    alice
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/m.direct", alice.user()),
            json!({ bob.user(): [dm.as_str()] }),
        )
        .await
        .ok();
    let list = |filters: Value| {
        let mut list = one_list(json!([[0, 9]]), 0, json!([]))["lists"]["all"].take();
        list["filters"] = filters;
        list
    };
    let body = json!({
        "lists": {
            "dms": list(json!({ "is_dm": true })),
            "not_dms": list(json!({ "is_dm": false })),
            "spaces": list(json!({ "room_types": ["m.space"] })),
            "no_spaces": list(json!({ "not_room_types": ["m.space"] })),
            "default_type": list(json!({ "room_types": [null] })),
            "encrypted": list(json!({ "is_encrypted": true })),
        },
        "room_subscriptions": {
            plain.as_str(): { "timeline_limit": 1, "required_state": [["m.room.name", ""]] },
            not_mine.as_str(): { "timeline_limit": 1 },
        },
    });
    let response = Conn::new(&alice, "main").sync(body).await;
    let counts: Vec<(&str, u64)> =
        ["dms", "not_dms", "spaces", "no_spaces", "default_type", "encrypted"]
            .into_iter()
            .map(|name| (name, response["lists"][name]["count"].as_u64().unwrap()))
            .collect();
    assert_eq!(
        counts,
        vec![
            ("dms", 1),
            ("not_dms", 3),
            ("spaces", 1),
            ("no_spaces", 3),
            ("default_type", 3),
            ("encrypted", 1)
        ]
    );
    let mut expected = vec![dm.as_str(), space.as_str(), encrypted.as_str(), plain.as_str()];
    expected.sort_unstable();
    assert_eq!(rooms(&response), expected, "a room the user is not in is never sent");
    let direct = &response["rooms"][&dm];
    assert_eq!(direct["is_dm"], true);
    assert_eq!(direct["joined_count"], 1);
    assert_eq!(direct["invited_count"], 1);
    assert_eq!(direct["heroes"][0]["user_id"], bob.user());
    assert!(direct.get("name").is_none());
    assert!(response["rooms"][&plain].get("is_dm").is_none());
    assert_eq!(bodies(&response["rooms"][&plain]).len(), 0);
    assert_eq!(response["rooms"][&plain]["timeline"].as_array().unwrap().len(), 1);
    assert_eq!(state_slots(&response["rooms"][&plain]), vec![slot("m.room.name", "")]);
}

#[tokio::test]
async fn bad_requests_are_refused() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let conn = Conn::new(&alice, "main");
    conn.request(None, 0, one_list(json!([[5, 1]]), 1, json!([])))
        .await
        .expect_error(400, "M_INVALID_PARAM");
    let mut long = one_list(json!([[0, 1]]), 1, json!([]));
    long["conn_id"] = json!("x".repeat(100));
    alice.post(PATH, long).await.expect_error(400, "M_INVALID_PARAM");
    let mut to_device = one_list(json!([[0, 1]]), 1, json!([]));
    to_device["extensions"] = json!({ "to_device": { "enabled": true, "since": "nonsense" } });
    conn.request(None, 0, to_device).await.expect_error(400, "M_INVALID_PARAM");
    Api::new(&server.base_url).post(PATH, json!({})).await.expect_error(401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn a_rejected_invite_shows_only_the_leave() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice
        .create_room(json!({ "name": "private", "topic": "members only", "invite": [bob.user()] }))
        .await;
    let body = one_list(json!([[0, 9]]), 5, json!([["*", "*"]]));
    let mut conn = Conn::new(&bob, "main");
    let invited = conn.sync(body.clone()).await;
    assert!(invited["rooms"][&room_id]["invite_state"].is_array());
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    let rejected = conn.sync(body.clone()).await;
    let room = &rejected["rooms"][&room_id];
    assert_eq!(room["initial"], true, "{rejected}");
    assert_eq!(state_slots(room), vec![slot("m.room.member", bob.user())]);
    assert_eq!(room["required_state"][0]["content"]["membership"], "leave");
    assert!(room.get("name").is_none());
    assert!(!rejected.to_string().contains("members only"), "{rejected}");
    // The room the user left themselves is not listed again.
    let later = conn.sync(body).await;
    assert_eq!(later["lists"]["all"]["count"], 0);
    assert!(rooms(&later).is_empty());
}

#[tokio::test]
async fn a_waiting_request_wakes_for_a_to_device_message_and_an_invite() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let mut body = one_list(json!([[0, 0]]), 1, json!([]));
    body["extensions"] = json!({ "to_device": { "enabled": true } });
    let mut conn = Conn::new(&bob, "main");
    let first = conn.sync(body.clone()).await;
    body["extensions"]["to_device"]["since"] =
        first["extensions"]["to_device"]["next_batch"].clone();
    let waiting = conn.request(conn.pos.as_deref(), 20_000, body.clone());
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        (waiting.await.ok(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/t1",
            json!({ "messages": { bob.user(): { "*": { "ping": true } } } }),
        )
        .await
        .ok();
    let (response, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(10), "not woken ({waited:?})");
    assert_eq!(response["extensions"]["to_device"]["events"][0]["content"]["ping"], true);
    conn.pos = Some(response["pos"].as_str().unwrap().to_owned());
    body["extensions"]["to_device"]["since"] =
        response["extensions"]["to_device"]["next_batch"].clone();

    // A one-room window: an invite, newer than Bob's room, takes its place.
    let first_room = bob.create_room(json!({})).await;
    let settled = conn.sync(body.clone()).await;
    assert_eq!(rooms(&settled), vec![first_room.as_str()]);
    body["extensions"]["to_device"]["since"] =
        settled["extensions"]["to_device"]["next_batch"].clone();
    let waiting = conn.request(conn.pos.as_deref(), 20_000, body);
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        (waiting.await.ok(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second_room = alice.create_room(json!({ "invite": [bob.user()] })).await;
    let (response, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(10), "not woken ({waited:?})");
    assert_eq!(response["lists"]["all"]["count"], 2);
    assert_eq!(rooms(&response), vec![second_room.as_str()]);
}
