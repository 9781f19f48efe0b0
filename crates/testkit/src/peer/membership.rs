//! The peer joining a room of the server under test, as another homeserver does:
//! `make_join`, the template signed, `send_join`.

use rhizome_room::{EventTemplate, Pdu};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName};
use serde_json::Value;

use super::TestPeer;

/// A room the peer joined: its version, the peer's join, and the server's answer.
#[derive(Debug)]
pub struct JoinedRoom {
    /// The room version.
    pub version: RoomVersionId,
    /// The peer's signed join event.
    pub join: Pdu,
    /// The `send_join` answer (state and auth chain).
    pub answer: Value,
}

impl TestPeer {
    /// Joins `room_id` on `destination` (at `base_url`) as `@localpart:<peer>`; panics when
    /// the server refuses.
    pub async fn join_room(
        &self,
        destination: &ServerName,
        base_url: &str,
        room_id: &RoomId,
        localpart: &str,
    ) -> JoinedRoom {
        let user = self.user_id(localpart);
        let versions: String = (1..=12).map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&");
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{versions}",
            urlencode(room_id.as_str()),
            urlencode(user.as_str())
        );
        let made = self.request(destination, base_url, http::Method::GET, &path, None).await;
        assert_eq!(made.status.as_u16(), 200, "make_join: {}", made.json());
        let made = made.json();
        let version = RoomVersionId::try_from(made["room_version"].as_str().unwrap_or("1"))
            .expect("a room version");
        let template_json =
            serde_json::value::to_raw_value(&made["event"]).expect("invariant: JSON serialises");
        let template = Pdu::from_json(
            OwnedEventId::try_from("$template").expect("invariant: a valid ID"),
            template_json,
            &version,
        )
        .expect("a template of the room's version");
        let event = EventTemplate {
            room_id: Some(room_id.to_owned()),
            sender: user.clone(),
            kind: "m.room.member".into(),
            state_key: Some(user.to_string()),
            content: template.content.clone(),
            redacts: None,
            prev_events: template.prev_events.clone(),
            auth_events: template.auth_events.clone(),
            depth: template.depth,
            origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
        };
        let join = self.sign_pdu(&event, &version);
        let body: Value = serde_json::from_str(join.json().get()).expect("invariant: PDU JSON");
        let path = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            urlencode(room_id.as_str()),
            urlencode(join.event_id.as_str())
        );
        let sent = self.request(destination, base_url, http::Method::PUT, &path, Some(body)).await;
        assert_eq!(sent.status.as_u16(), 200, "send_join: {}", sent.json());
        JoinedRoom { version, join, answer: sent.json() }
    }
}

/// Percent-encodes a path segment.
fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
