//! Serving history to other servers: `/event`, `/state`, `/state_ids`, `/event_auth`,
//! `/backfill`, `/get_missing_events` and `/timestamp_to_event` refused (403) to a server whose
//! users were never in the room, answered to one in it (within the spec's limits, what its
//! history visibility hides given redacted or refused), and refused again once the room's
//! server ACL denies it.

use reqwest::Method;
use rhizome_testkit::{Api, TestServer, encode, peer::TestPeer};
use serde_json::{Value, json};

use super::peer_rooms::peer_joins;

/// Every history endpoint about `event` in `room`, as (name, method, path, body).
fn endpoints(room: &str, event: &str) -> Vec<(&'static str, Method, String, Option<Value>)> {
    let (room, event_enc) = (encode(room), encode(event));
    let now = rhizome_core::clock::now_millis();
    vec![
        ("event", Method::GET, format!("/_matrix/federation/v1/event/{event_enc}"), None),
        (
            "state",
            Method::GET,
            format!("/_matrix/federation/v1/state/{room}?event_id={event_enc}"),
            None,
        ),
        (
            "state_ids",
            Method::GET,
            format!("/_matrix/federation/v1/state_ids/{room}?event_id={event_enc}"),
            None,
        ),
        (
            "event_auth",
            Method::GET,
            format!("/_matrix/federation/v1/event_auth/{room}/{event_enc}"),
            None,
        ),
        (
            "backfill",
            Method::GET,
            format!("/_matrix/federation/v1/backfill/{room}?v={event_enc}&limit=10"),
            None,
        ),
        (
            "get_missing_events",
            Method::POST,
            format!("/_matrix/federation/v1/get_missing_events/{room}"),
            Some(json!({ "earliest_events": [], "latest_events": [event], "limit": 5 })),
        ),
        (
            "timestamp_to_event",
            Method::GET,
            format!("/_matrix/federation/v1/timestamp_to_event/{room}?ts={now}&dir=b"),
            None,
        ),
    ]
}

/// Every endpoint answers `status` to the peer.
async fn expect_all(peer: &TestPeer, server: &TestServer, room: &str, event: &str, status: u16) {
    let base = server.tls_base_url.clone().unwrap();
    for (name, method, path, body) in endpoints(room, event) {
        let answer = peer.request(&server.config.server_name, &base, method, &path, body).await;
        assert_eq!(answer.status, status, "{name}: {:?}", answer.json());
        if status == 403 {
            assert_eq!(answer.errcode().as_deref(), Some("M_FORBIDDEN"), "{name}");
        }
    }
}

/// The room on A, the peer, and the events the checks look at.
struct Scene {
    a: TestServer,
    peer: TestPeer,
    room: String,
    /// 105 messages while the history was `shared`.
    shared: Vec<String>,
    /// A message once it was `joined`, before the peer joined.
    secret: String,
}

impl Scene {
    async fn start() -> (Self, Api) {
        let a = TestServer::start_federating("127.0.0.44").await;
        let peer = TestPeer::start_on("127.0.0.45".parse().unwrap()).await;
        let alice = Api::new_user(&a.base_url, "alice").await;
        let room = alice.create_room(json!({ "preset": "public_chat", "name": "ledger" })).await;
        let mut shared = Vec::new();
        for i in 0..105 {
            shared.push(alice.send_text(&room, &format!("shared {i}")).await);
        }
        alice
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                    encode(&room)
                ),
                json!({ "history_visibility": "joined" }),
            )
            .await
            .ok();
        let secret = alice.send_text(&room, "secret").await;
        (Self { a, peer, room, shared, secret }, alice)
    }

    /// The peer's request to A.
    async fn ask(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let base = self.a.tls_base_url.clone().unwrap();
        let answer = self.peer.request(&self.a.config.server_name, &base, method, path, body).await;
        (answer.status.as_u16(), answer.json())
    }

    /// A `GET` that must succeed.
    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.ask(Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// A `/get_missing_events` that must succeed: its events.
    async fn missing(&self, body: Value) -> Vec<Value> {
        let path = format!("/_matrix/federation/v1/get_missing_events/{}", encode(&self.room));
        let (status, answer) = self.ask(Method::POST, &path, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        answer["events"].as_array().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_served_to_servers_in_the_room_and_refused_to_others() {
    let (scene, alice) = Scene::start().await;
    let (a, peer, room) = (&scene.a, &scene.peer, scene.room.as_str());

    // A server none of whose users was ever in the room gets nothing.
    expect_all(peer, a, room, &scene.secret, 403).await;
    expect_all(peer, a, room, &scene.shared[3], 403).await;
    let unknown = format!("/_matrix/federation/v1/event/{}", encode("$unknown"));
    assert_eq!(scene.ask(Method::GET, &unknown, None).await.0, 404);

    // Once its user joined, it gets what the room's history visibility lets it see.
    let join = peer_joins(peer, a, room, "mallory").await;
    let after = alice.send_text(room, "after the join").await;
    expect_all(peer, a, room, &after, 200).await;
    events_and_state(&scene, &after, join.as_str()).await;
    walks(&scene, &after).await;
    timestamps(&scene, &after).await;

    // The room's server ACL denies the peer: nothing more.
    let peer_host = peer.address().ip().to_string();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.server_acl/", encode(room)),
            json!({ "allow": ["*"], "deny": [peer_host], "allow_ip_literals": true }),
        )
        .await
        .ok();
    expect_all(peer, a, room, &after, 403).await;
}

/// `/event`, `/state_ids`, `/state` and `/event_auth` to a server in the room.
async fn events_and_state(scene: &Scene, after: &str, join: &str) {
    let room = encode(&scene.room);
    let event = scene.get(&format!("/_matrix/federation/v1/event/{}", encode(after))).await;
    assert_eq!(event["pdus"][0]["content"]["body"], "after the join");
    assert_eq!(event["origin"], scene.a.config.server_name.as_str());
    // `shared` history: visible to a server in the room now; `joined` history: not.
    let path = format!("/_matrix/federation/v1/event/{}", encode(&scene.shared[3]));
    assert_eq!(scene.get(&path).await["pdus"][0]["content"]["body"], "shared 3");
    let path = format!("/_matrix/federation/v1/event/{}", encode(&scene.secret));
    let (status, _) = scene.ask(Method::GET, &path, None).await;
    assert_eq!(status, 403, "the peer joined after the `joined` history");

    // The state before the event: the peer's join in it, its auth chain beside it.
    let query = format!("{room}?event_id={}", encode(after));
    let ids = scene.get(&format!("/_matrix/federation/v1/state_ids/{query}")).await;
    let pdu_ids: Vec<&str> =
        ids["pdu_ids"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(pdu_ids.contains(&join));
    assert!(!pdu_ids.contains(&after), "the state before the event");
    assert!(ids["auth_chain_ids"].is_array());
    let state = scene.get(&format!("/_matrix/federation/v1/state/{query}")).await;
    let pdus = state["pdus"].as_array().unwrap();
    assert_eq!(pdus.len(), pdu_ids.len());
    assert!(
        pdus.iter().any(|pdu| pdu["type"] == "m.room.name" && pdu["content"]["name"] == "ledger")
    );
    assert!(pdus.iter().any(|pdu| pdu["state_key"] == scene.peer.user_id("mallory").as_str()));
    let path = format!("/_matrix/federation/v1/event_auth/{room}/{}", encode(after));
    let auth = scene.get(&path).await;
    let auth_chain = auth["auth_chain"].as_array().unwrap();
    assert!(auth_chain.iter().any(|pdu| pdu["type"] == "m.room.power_levels"));
    assert!(auth_chain.iter().all(|pdu| pdu["type"] != "m.room.message"));
}

/// `/backfill` and `/get_missing_events` to a server in the room: most recent first (oldest
/// first), what it may not see redacted, within the spec's limits.
async fn walks(scene: &Scene, after: &str) {
    let room = encode(&scene.room);
    let path = format!("/_matrix/federation/v1/backfill/{room}?v={}&limit=5", encode(after));
    let backfill = scene.get(&path).await;
    let pdus = backfill["pdus"].as_array().unwrap();
    assert_eq!(pdus.len(), 5);
    assert_eq!(pdus[0]["content"]["body"], "after the join", "the event asked from first");
    let hidden = pdus
        .iter()
        .find(|pdu| pdu["type"] == "m.room.message" && pdu["content"]["msgtype"].is_null());
    assert!(hidden.is_some(), "the `joined` message comes redacted: {pdus:?}");
    assert!(pdus.iter().all(|pdu| pdu["content"]["body"] != "secret"));
    let path = format!("/_matrix/federation/v1/backfill/{room}?v={}&limit=1000", encode(after));
    assert_eq!(scene.get(&path).await["pdus"].as_array().unwrap().len(), 100, "at most 100");

    let shared = &scene.shared;
    let events = scene
        .missing(json!({ "earliest_events": [shared[50]], "latest_events": [after], "limit": 100 }))
        .await;
    assert_eq!(events.len(), 20, "at most 20");
    let depths: Vec<u64> = events.iter().map(|event| event["depth"].as_u64().unwrap()).collect();
    assert!(depths.windows(2).all(|pair| pair[0] < pair[1]), "oldest first: {depths:?}");
    let events = scene
        .missing(json!({ "earliest_events": [shared[102]], "latest_events": [shared[104]] }))
        .await;
    assert_eq!(events.len(), 1, "between the two: only shared 103");
    assert_eq!(events[0]["content"]["body"], "shared 103");
}

/// `/timestamp_to_event` to a server in the room: the latest event now, the room's creation at
/// the start of time.
async fn timestamps(scene: &Scene, after: &str) {
    let room = encode(&scene.room);
    let now = rhizome_core::clock::now_millis() + 1000;
    let path = format!("/_matrix/federation/v1/timestamp_to_event/{room}?ts={now}&dir=b");
    assert_eq!(scene.get(&path).await["event_id"], after);
    let path = format!("/_matrix/federation/v1/timestamp_to_event/{room}?ts=0&dir=f");
    let first = scene.get(&path).await;
    let path =
        format!("/_matrix/federation/v1/event/{}", encode(first["event_id"].as_str().unwrap()));
    assert_eq!(scene.get(&path).await["pdus"][0]["type"], "m.room.create");
}
