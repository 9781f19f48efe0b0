//! Rooms with the test peer in them: the peer joining a room of a Rhizome server (as any
//! remote server does, with `make_join` and `send_join`), and rooms the peer hosts itself,
//! built from events it signs, for Rhizome servers to join and ask for history.

use std::{collections::HashMap, sync::Arc};

use reqwest::Method;
use rhizome_room::{EventTemplate, Pdu};
use rhizome_testkit::{TestServer, encode, peer::TestPeer};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomVersionId};
use serde_json::{Value, json, value::to_raw_value};

/// A PDU as JSON.
pub fn json_of(pdu: &Pdu) -> Value {
    serde_json::from_str(pdu.json().get()).unwrap()
}

/// The peer's user `localpart` joins `room_id` on `server` through `make_join` and
/// `send_join`; returns the join's event ID. The peer then answers the server's transactions.
pub async fn peer_joins(
    peer: &TestPeer,
    server: &TestServer,
    room_id: &str,
    localpart: &str,
) -> OwnedEventId {
    peer.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", |_| json!({ "pdus": {} }));
    let base = server.tls_base_url.clone().unwrap();
    let destination = &server.config.server_name;
    let user = peer.user_id(localpart);
    let path = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=10&ver=11&ver=12",
        encode(room_id),
        encode(user.as_str())
    );
    let made = peer.request(destination, &base, Method::GET, &path, None).await;
    assert_eq!(made.status, 200, "make_join: {:?}", made.json());
    let made = made.json();
    let version = RoomVersionId::try_from(made["room_version"].as_str().unwrap()).unwrap();
    let template = &made["event"];
    let ids = |field: &str| -> Vec<OwnedEventId> {
        template[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| OwnedEventId::try_from(id.as_str().unwrap()).unwrap())
            .collect()
    };
    let event = EventTemplate {
        room_id: Some(OwnedRoomId::try_from(room_id).unwrap()),
        sender: user.clone(),
        kind: "m.room.member".into(),
        state_key: Some(user.to_string()),
        content: to_raw_value(&json!({ "membership": "join" })).unwrap(),
        redacts: None,
        prev_events: ids("prev_events"),
        auth_events: ids("auth_events"),
        depth: template["depth"].as_u64().unwrap(),
        origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
    };
    let join = peer.sign_pdu(&event, &version);
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        encode(room_id),
        encode(join.event_id.as_str())
    );
    let sent = peer.request(destination, &base, Method::PUT, &path, Some(json_of(&join))).await;
    assert_eq!(sent.status, 200, "send_join: {:?}", sent.json());
    join.event_id
}

/// A room of room version 10 the peer hosts: its creator's join, power levels, a public join
/// rule, `shared` history, then messages.
#[derive(Clone)]
pub struct PeerRoom {
    /// The room.
    pub room_id: OwnedRoomId,
    /// Every event, oldest first.
    pub events: Vec<Pdu>,
    /// The state events (create, creator's join, power levels, join rule, visibility).
    pub state: Vec<Pdu>,
}

impl PeerRoom {
    /// Builds the room `!name:<peer>` with one message per body.
    pub fn new(peer: &TestPeer, name: &str, bodies: &[&str]) -> Self {
        let version = RoomVersionId::V10;
        let room_id = OwnedRoomId::try_from(format!("!{name}:{}", peer.server_name())).unwrap();
        let creator = peer.user_id("creator");
        let mut events: Vec<Pdu> = Vec::new();
        let mut add = |kind: &str, key: Option<&str>, content: Value, auth: &[usize]| {
            let mut template =
                peer.event_template(Some(room_id.clone()), "creator", kind, key, content);
            template.prev_events =
                events.last().map(|last| last.event_id.clone()).into_iter().collect();
            template.auth_events =
                auth.iter().map(|index| events[*index].event_id.clone()).collect();
            template.depth = u64::try_from(events.len()).unwrap() + 1;
            events.push(peer.sign_pdu(&template, &version));
        };
        add("m.room.create", Some(""), json!({ "creator": creator, "room_version": "10" }), &[]);
        add("m.room.member", Some(creator.as_str()), json!({ "membership": "join" }), &[0]);
        let levels = json!({ "users": { creator.as_str(): 100 }, "users_default": 0, "events_default": 0, "state_default": 50 });
        add("m.room.power_levels", Some(""), levels, &[0, 1]);
        add("m.room.join_rules", Some(""), json!({ "join_rule": "public" }), &[0, 1, 2]);
        add(
            "m.room.history_visibility",
            Some(""),
            json!({ "history_visibility": "shared" }),
            &[0, 1, 2],
        );
        for body in bodies {
            add("m.room.message", None, json!({ "msgtype": "m.text", "body": body }), &[0, 1, 2]);
        }
        let state = events[..5].to_vec();
        Self { room_id, events, state }
    }

    /// The events as JSON, oldest first.
    pub fn events_json(&self) -> Vec<Value> {
        self.events.iter().map(json_of).collect()
    }
}

/// Makes the peer a resident of `rooms`: it answers `make_join` and `send_join` for them (and
/// takes any transaction). `/backfill` and the rest are the test's to answer.
pub fn host_rooms(peer: &TestPeer, rooms: &[&PeerRoom]) {
    let rooms: Arc<HashMap<String, PeerRoom>> =
        Arc::new(rooms.iter().map(|room| (room.room_id.to_string(), (*room).clone())).collect());
    let server = peer.server_name().to_owned();
    peer.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", |_| json!({ "pdus": {} }));
    let known = rooms.clone();
    peer.handle(Method::GET, "/_matrix/federation/v1/make_join/{room}/{user}", move |request| {
        let Some(room) = known.get(request.param("room")) else {
            return (404, json!({ "errcode": "M_NOT_FOUND", "error": "Unknown room" }));
        };
        let last = room.events.last().unwrap();
        let ids = |indexes: &[usize]| -> Vec<String> {
            indexes.iter().map(|index| room.events[*index].event_id.to_string()).collect()
        };
        let user = request.param("user");
        (
            200,
            json!({
                "room_version": "10",
                "event": {
                    "room_id": room.room_id,
                    "sender": user,
                    "type": "m.room.member",
                    "state_key": user,
                    "content": { "membership": "join" },
                    "prev_events": [last.event_id],
                    "auth_events": ids(&[0, 2, 3]),
                    "depth": last.depth + 1,
                    "origin": server,
                    "origin_server_ts": MilliSecondsSinceUnixEpoch::now(),
                }
            }),
        )
    });
    peer.handle(Method::PUT, "/_matrix/federation/v2/send_join/{room}/{event}", move |request| {
        let Some(room) = rooms.get(request.param("room")) else {
            return (404, json!({ "errcode": "M_NOT_FOUND", "error": "Unknown room" }));
        };
        let state: Vec<Value> = room.state.iter().map(json_of).collect();
        (200, json!({ "state": state, "auth_chain": state[..4], "servers_in_room": [] }))
    });
}

/// Pages back through `room` as `user` `limit` events at a time, to the start; returns every
/// event, newest first, and the pages taken.
pub async fn page_back(user: &rhizome_testkit::Api, room: &str, limit: u32) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for page in 1..=200 {
        let mut path =
            format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}", encode(room));
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", encode(from)));
        }
        let answer = user.get(&path).await.ok();
        events.extend(answer["chunk"].as_array().unwrap().iter().cloned());
        match answer["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return (events, page),
        }
    }
    panic!("history never ended");
}

/// The bodies of the messages among `events`, in their order.
pub fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect()
}
