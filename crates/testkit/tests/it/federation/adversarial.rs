//! Remote servers are untrusted: a test peer in a room of ours sends exactly the events a test
//! wants, and none of the bad ones may change what clients see.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use rhizome_room::{EventTemplate, Pdu, StateMap, auth::select_auth_events, received};
use rhizome_testkit::{
    Api, Backend, TestServer, encode,
    peer::{JoinedRoom, PduFlaw, Reply, TestPeer},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomVersionId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Value, json};

use super::wait_for_sync;

/// A room of the server with the peer's user `pat` joined, and what the peer knows of it.
pub(super) struct Scene {
    pub(super) server: TestServer,
    pub(super) peer: TestPeer,
    pub(super) alice: Api,
    pub(super) room: OwnedRoomId,
    pub(super) version: RoomVersionId,
    pub(super) state: StateMap,
    pub(super) head: OwnedEventId,
    depth: u64,
}

pub(super) async fn scene(server_ip: &str, peer_ip: &str) -> Scene {
    let server = TestServer::start_federating(server_ip).await;
    let peer = TestPeer::start_on(peer_ip.parse().unwrap()).await;
    peer.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", |_| json!({ "pdus": {} }));
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "original" })).await;
    let room = OwnedRoomId::try_from(room).unwrap();
    let JoinedRoom { version, join, answer } = peer
        .join_room(
            &server.config.server_name,
            server.tls_base_url.as_deref().unwrap(),
            &room,
            "pat",
        )
        .await;
    let mut state = StateMap::new();
    for event in answer["state"].as_array().unwrap() {
        let checked = received::check_format(&event.to_string(), &version, Some(&room)).unwrap();
        let kind = event["type"].as_str().unwrap();
        let key = event["state_key"].as_str().unwrap();
        state.insert((StateEventType::from(kind), key.to_owned()), checked.event_id);
    }
    state.insert((StateEventType::RoomMember, join.sender.to_string()), join.event_id.clone());
    Scene {
        server,
        peer,
        alice,
        room,
        version,
        state,
        head: join.event_id.clone(),
        depth: join.depth,
    }
}

impl Scene {
    /// A template after `prev` by `@localpart:<peer>`, with auth events picked from the state.
    pub(super) fn template(
        &self,
        prev: &[OwnedEventId],
        localpart: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
    ) -> EventTemplate {
        let mut template =
            self.peer.event_template(Some(self.room.clone()), localpart, kind, state_key, content);
        template.auth_events = select_auth_events(
            &self.version,
            &TimelineEventType::from(kind),
            &template.sender,
            state_key,
            &template.content,
            &self.state,
        )
        .unwrap();
        template.prev_events = prev.to_vec();
        template.depth = self.depth + 1;
        template
    }

    /// Sends PDUs in one transaction; returns the per-PDU results.
    pub(super) async fn send(&self, txn: &str, pdus: &[&Pdu]) -> Value {
        let base = self.server.tls_base_url.as_deref().unwrap();
        let response =
            self.peer.send_transaction(&self.server.config.server_name, base, txn, pdus).await;
        assert_eq!(response.status.as_u16(), 200, "{}", response.json());
        response.json()["pdus"].clone()
    }

    /// Whether the server has the event (to a member of the room).
    async fn alice_sees(&self, event_id: &OwnedEventId) -> bool {
        let response = self
            .alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                encode(self.room.as_str()),
                encode(event_id.as_str())
            ))
            .await;
        response.status == StatusCode::OK
    }

    async fn room_name(&self) -> Value {
        self.alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                encode(self.room.as_str())
            ))
            .await
            .ok()["name"]
            .clone()
    }
}

pub(super) fn is_error(results: &Value, event_id: &OwnedEventId) -> bool {
    results[event_id.as_str()]["error"].is_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_events_are_refused_and_good_ones_pass() {
    let scene = scene("127.0.0.131", "127.0.0.132").await;
    let head = vec![scene.head.clone()];
    let message = |body: &str| json!({ "msgtype": "m.text", "body": body });
    let bad_signature = scene.peer.sign_flawed_pdu(
        &scene.template(&head, "pat", "m.room.message", None, message("bad signature")),
        &scene.version,
        PduFlaw::SignatureWrong,
    );
    // A user of the server itself, signed only by the peer.
    let mut impostor = scene.template(&head, "pat", "m.room.message", None, message("impostor"));
    impostor.sender = ruma::UserId::parse(scene.alice.user()).unwrap();
    let impostor = scene.peer.sign_pdu(&impostor, &scene.version);
    let foreign = scene.peer.sign_flawed_pdu(
        &scene.template(&head, "pat", "m.room.message", None, message("foreign")),
        &scene.version,
        PduFlaw::ForeignSender(ruma::owned_server_name!("elsewhere.example")),
    );
    let mut crowded = scene.template(&head, "pat", "m.room.message", None, message("crowded"));
    crowded.prev_events =
        (0..21).map(|i| OwnedEventId::try_from(format!("$e{i}")).unwrap()).collect();
    let crowded = scene.peer.sign_pdu(&crowded, &scene.version);
    let mut deep = scene.template(&head, "pat", "m.room.message", None, message("deep"));
    deep.depth = rhizome_room::build::MAX_DEPTH;
    let deep = scene.peer.sign_pdu(&deep, &scene.version);
    let good = scene.peer.sign_pdu(
        &scene.template(&head, "pat", "m.room.message", None, message("good")),
        &scene.version,
    );
    let results =
        scene.send("t1", &[&bad_signature, &impostor, &foreign, &crowded, &deep, &good]).await;
    for (name, pdu) in [
        ("a bad signature", &bad_signature),
        ("an impostor", &impostor),
        ("a foreign sender", &foreign),
    ] {
        assert!(is_error(&results, &pdu.event_id), "{name} was accepted: {results}");
        assert!(!scene.alice_sees(&pdu.event_id).await, "{name} is visible");
    }
    assert!(!scene.alice_sees(&crowded.event_id).await, "21 prev_events were accepted");
    assert!(!is_error(&results, &good.event_id), "{results}");
    assert!(!is_error(&results, &deep.event_id), "the largest depth is valid: {results}");
    wait_for_sync(&scene.alice, "the good message", |sync| {
        super::has_message(sync, scene.room.as_str(), "good")
    })
    .await;
    assert!(scene.alice_sees(&good.event_id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_hash_does_not_match_is_kept_redacted() {
    let scene = scene("127.0.0.133", "127.0.0.134").await;
    let tampered = scene.peer.sign_flawed_pdu(
        &scene.template(
            std::slice::from_ref(&scene.head),
            "pat",
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": "altered in transit" }),
        ),
        &scene.version,
        PduFlaw::ContentHashWrong,
    );
    let results = scene.send("t1", &[&tampered]).await;
    assert!(!is_error(&results, &tampered.event_id), "{results}");
    let event = scene
        .alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            encode(scene.room.as_str()),
            encode(tampered.event_id.as_str())
        ))
        .await
        .ok();
    assert_eq!(event["content"], json!({}), "the content is stripped: {event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_auth_rules_refuse_change_nothing() {
    let scene = scene("127.0.0.135", "127.0.0.136").await;
    let head = vec![scene.head.clone()];
    // Pat has no power: renaming the room and taking power are refused.
    let rename = scene.peer.sign_pdu(
        &scene.template(&head, "pat", "m.room.name", Some(""), json!({ "name": "taken over" })),
        &scene.version,
    );
    let pat = scene.peer.user_id("pat");
    let grab = scene.peer.sign_pdu(
        &scene.template(
            &head,
            "pat",
            "m.room.power_levels",
            Some(""),
            json!({ "users": { pat.as_str(): 100 } }),
        ),
        &scene.version,
    );
    // A member event for someone else than its sender (a forged join of another server's user).
    let other = "@someone:elsewhere.example";
    let forged_join = scene.peer.sign_pdu(
        &scene.template(
            &head,
            "pat",
            "m.room.member",
            Some(other),
            json!({ "membership": "join" }),
        ),
        &scene.version,
    );
    let results = scene.send("t1", &[&rename, &grab, &forged_join]).await;
    for (name, pdu) in
        [("the rename", &rename), ("the power grab", &grab), ("the forged join", &forged_join)]
    {
        assert!(is_error(&results, &pdu.event_id), "{name} was accepted: {results}");
        assert!(!scene.alice_sees(&pdu.event_id).await, "{name} is visible");
    }
    assert_eq!(scene.room_name().await, "original");
    let members = scene
        .alice
        .get(&format!("/_matrix/client/v3/rooms/{}/joined_members", encode(scene.room.as_str())))
        .await
        .ok();
    assert!(members["joined"].get(other).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_from_before_a_demotion_cannot_reassert_the_old_power() {
    let mut scene = scene("127.0.0.137", "127.0.0.138").await;
    let pat = scene.peer.user_id("pat");
    let levels_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
        encode(scene.room.as_str())
    );
    let mut levels = scene.alice.get(&levels_path).await.ok();
    // Alice makes Pat a moderator, then demotes him again.
    levels["users"][pat.as_str()] = json!(100);
    let promoted = scene.alice.put(&levels_path, levels.clone()).await.ok();
    let promoted = OwnedEventId::try_from(promoted["event_id"].as_str().unwrap()).unwrap();
    levels["users"][pat.as_str()] = json!(0);
    scene.alice.put(&levels_path, levels).await.ok();
    // Pat's server builds on the state where he still had power.
    scene.state.insert((StateEventType::RoomPowerLevels, String::new()), promoted.clone());
    scene.depth += 2;
    let rename = scene.peer.sign_pdu(
        &scene.template(&[promoted], "pat", "m.room.name", Some(""), json!({ "name": "reset" })),
        &scene.version,
    );
    let results = scene.send("t1", &[&rename]).await;
    // Allowed by the state it claims, not by the room's present: soft-failed, never shown.
    let _ = results;
    assert!(!scene.alice_sees(&rename.event_id).await, "the stale branch's event is visible");
    assert_eq!(scene.room_name().await, "original");
    let levels = scene.alice.get(&levels_path).await.ok();
    assert_eq!(levels["users"][pat.as_str()], 0, "the demotion stands");
    // The room goes on.
    scene.alice.send_text(scene.room.as_str(), "still ours").await;
    assert_eq!(scene.room_name().await, "original");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_after_events_that_never_arrive_is_refused_promptly() {
    let scene = scene("127.0.0.139", "127.0.0.140").await;
    for path in [
        "/_matrix/federation/v1/get_missing_events/{room}",
        "/_matrix/federation/v1/state_ids/{room}",
        "/_matrix/federation/v1/state/{room}",
        "/_matrix/federation/v1/event/{id}",
    ] {
        let method = if path.contains("missing") { Method::POST } else { Method::GET };
        scene
            .peer
            .handle(method, path, |_| Reply::error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "gone"));
    }
    let orphan = scene.peer.sign_pdu(
        &scene.template(
            &[OwnedEventId::try_from("$never-arrives").unwrap()],
            "pat",
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": "orphan" }),
        ),
        &scene.version,
    );
    let started = Instant::now();
    let results = scene.send("t1", &[&orphan]).await;
    assert!(started.elapsed() < Duration::from_secs(10), "the transaction hung");
    assert!(is_error(&results, &orphan.event_id), "{results}");
    assert!(!scene.alice_sees(&orphan.event_id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_the_room_acl_denies_is_refused() {
    let scene = scene("127.0.0.141", "127.0.0.142").await;
    scene
        .alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.server_acl/", encode(scene.room.as_str())),
            json!({ "allow": ["*"], "deny": [scene.peer.server_name().host()], "allow_ip_literals": true }),
        )
        .await
        .ok();
    let message = scene.peer.sign_pdu(
        &scene.template(
            std::slice::from_ref(&scene.head),
            "pat",
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": "denied" }),
        ),
        &scene.version,
    );
    let results = scene.send("t1", &[&message]).await;
    assert!(is_error(&results, &message.event_id), "{results}");
    assert!(!scene.alice_sees(&message.event_id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_to_rooms_of_an_unknown_version_are_refused() {
    let server = TestServer::start_federating("127.0.0.143").await;
    let peer = TestPeer::start_on("127.0.0.144".parse().unwrap()).await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room = OwnedRoomId::try_from(format!("!strange:{}", peer.server_name())).unwrap();
    let mut template = peer.event_template(
        Some(room.clone()),
        "pat",
        "m.room.member",
        Some(alice.user()),
        json!({ "membership": "invite" }),
    );
    template.origin_server_ts = MilliSecondsSinceUnixEpoch::now();
    let invite = peer.sign_pdu(&template, &RoomVersionId::V10);
    let body = json!({
        "room_version": "99",
        "event": serde_json::from_str::<Value>(invite.json().get()).unwrap(),
        "invite_room_state": [],
    });
    let response = peer
        .request(
            &server.config.server_name,
            server.tls_base_url.as_deref().unwrap(),
            Method::PUT,
            &format!(
                "/_matrix/federation/v2/invite/{}/{}",
                encode(room.as_str()),
                encode(invite.event_id.as_str())
            ),
            Some(body),
        )
        .await;
    assert_eq!(response.status.as_u16(), 400, "{}", response.json());
    assert_eq!(response.errcode().as_deref(), Some("M_INCOMPATIBLE_ROOM_VERSION"));
    let sync = alice.sync("timeout=0").await;
    assert!(sync["rooms"]["invite"].as_object().is_none_or(|invites| invites.is_empty()));
}

/// A room on the peer: its create, the creator's join, power levels and public join rules.
fn peer_room(peer: &TestPeer, version: &RoomVersionId) -> (OwnedRoomId, Vec<Pdu>) {
    let room = OwnedRoomId::try_from(format!("!hosted:{}", peer.server_name())).unwrap();
    let creator = peer.user_id("host");
    let mut events: Vec<Pdu> = Vec::new();
    let mut state: HashMap<&str, OwnedEventId> = HashMap::new();
    let steps: [(&str, Option<String>, Value, &str); 4] = [
        (
            "m.room.create",
            Some(String::new()),
            json!({ "creator": creator, "room_version": version.as_str() }),
            "create",
        ),
        ("m.room.member", Some(creator.to_string()), json!({ "membership": "join" }), "member"),
        (
            "m.room.power_levels",
            Some(String::new()),
            json!({ "users": { creator.as_str(): 100 } }),
            "power",
        ),
        ("m.room.join_rules", Some(String::new()), json!({ "join_rule": "public" }), "rules"),
    ];
    for (depth, (kind, state_key, content, name)) in steps.into_iter().enumerate() {
        let mut template =
            peer.event_template(Some(room.clone()), "host", kind, state_key.as_deref(), content);
        template.prev_events =
            events.last().map(|event| vec![event.event_id.clone()]).unwrap_or_default();
        template.auth_events = ["create", "power", "member"]
            .iter()
            .filter_map(|name| state.get(name).cloned())
            .collect();
        template.depth = depth as u64 + 1;
        let pdu = peer.sign_pdu(&template, version);
        state.insert(name, pdu.event_id.clone());
        events.push(pdu);
    }
    (room, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_answered_with_forged_state_or_garbage_fails_cleanly() {
    let server = TestServer::start_federating_with(Backend::Sqlite, "127.0.0.145", |config| {
        config.federation.request_timeout_secs = 3;
    })
    .await;
    let peer = TestPeer::start_on("127.0.0.146".parse().unwrap()).await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let version = RoomVersionId::V10;
    let (room, events) = peer_room(&peer, &version);
    let alice_id = ruma::UserId::parse(alice.user()).unwrap().to_owned();
    let last = events.last().unwrap().event_id.clone();
    let auth: Vec<OwnedEventId> =
        events.iter().take(3).map(|event| event.event_id.clone()).collect();
    let template = json!({
        "room_id": room, "sender": alice_id, "type": "m.room.member", "state_key": alice_id,
        "content": { "membership": "join" }, "prev_events": [last], "auth_events": auth,
        "depth": 5, "origin_server_ts": 1,
    });
    peer.handle(
        Method::GET,
        "/_matrix/federation/v1/make_join/{room}/{user}",
        move |_| json!({ "room_version": "10", "event": template.clone() }),
    );
    // The state comes back with the create event's signature forged.
    let forged_create = peer.sign_flawed_pdu(
        &{
            let mut template = peer.event_template(
                Some(room.clone()),
                "host",
                "m.room.create",
                Some(""),
                json!({ "creator": peer.user_id("host"), "room_version": "10" }),
            );
            template.depth = 1;
            template
        },
        &version,
        PduFlaw::SignatureWrong,
    );
    let as_json = |pdu: &Pdu| serde_json::from_str::<Value>(pdu.json().get()).unwrap();
    let state: Vec<Value> = std::iter::once(as_json(&forged_create))
        .chain(events.iter().skip(1).map(as_json))
        .collect();
    peer.handle(
        Method::PUT,
        "/_matrix/federation/v2/send_join/{room}/{event}",
        move |_| json!({ "state": state.clone(), "auth_chain": [] }),
    );
    let path =
        format!("/_matrix/client/v3/join/{}?via={}", encode(room.as_str()), peer.server_name());
    let refused = alice.post(&path, json!({})).await;
    assert!(refused.status.is_client_error(), "a forged state was accepted: {}", refused.body);
    let joined = alice.get("/_matrix/client/v3/joined_rooms").await.ok();
    assert_eq!(joined["joined_rooms"], json!([]));
    // Garbage, then silence: clear errors, no hang.
    peer.handle(Method::PUT, "/_matrix/federation/v2/send_join/{room}/{event}", |_| {
        Reply::raw(StatusCode::OK, "application/json", "{ not json")
    });
    let garbage = alice.post(&path, json!({})).await;
    assert!(!garbage.status.is_success(), "{}", garbage.body);
    peer.handle(Method::GET, "/_matrix/federation/v1/make_join/{room}/{user}", |_| {
        Reply::json(StatusCode::OK, &json!({})).after(Duration::from_secs(60))
    });
    let started = Instant::now();
    let silent = alice.post(&path, json!({})).await;
    assert!(!silent.status.is_success());
    assert!(started.elapsed() < Duration::from_secs(10), "the join hung");
    let joined = alice.get("/_matrix/client/v3/joined_rooms").await.ok();
    assert_eq!(joined["joined_rooms"], json!([]));
}
