//! PDUs from the peer: built and signed with its key in a room version, correctly or with one
//! thing broken, and sent in federation transactions.

use rhizome_room::{EventTemplate, Pdu, build::event_id_of, build_pdu, versions};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedRoomId,
    OwnedServerName, RoomVersionId, ServerName, UserId,
    canonical_json::redact,
    events::TimelineEventType,
    signatures::{Ed25519KeyPair, hash_and_sign_event, sign_json},
};
use serde_json::{Value, json, value::to_raw_value};

use super::{PeerResponse, TestPeer};

/// The one thing a flawed PDU gets wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PduFlaw {
    /// `hashes.sha256` does not match the content; the signature (over the redacted event,
    /// which keeps the hashes) is valid, so a receiver must store it redacted.
    ContentHashWrong,
    /// Signed under the peer's key ID with another key.
    SignatureWrong,
    /// The sender belongs to another server; only the peer signs it.
    ForeignSender(OwnedServerName),
    /// No signatures at all.
    Unsigned,
}

impl TestPeer {
    /// A template for an event by `@localpart:<peer>`: no `prev_events` or `auth_events` yet
    /// (fill them), depth 1, sent now.
    pub fn event_template(
        &self,
        room_id: Option<OwnedRoomId>,
        localpart: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
    ) -> EventTemplate {
        EventTemplate {
            room_id,
            sender: self.user_id(localpart),
            kind: TimelineEventType::from(kind),
            state_key: state_key.map(ToOwned::to_owned),
            content: to_raw_value(&content).expect("invariant: JSON serialises"),
            redacts: None,
            prev_events: Vec::new(),
            auth_events: Vec::new(),
            depth: 1,
            origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
        }
    }

    /// Builds the PDU of `template` in `room_version`, hashed and signed with the peer's key.
    pub fn sign_pdu(&self, template: &EventTemplate, room_version: &RoomVersionId) -> Pdu {
        build_pdu(template, room_version, self.server_name(), &self.signing_key())
            .unwrap_or_else(|error| panic!("building a PDU: {error}"))
    }

    /// Builds the PDU of `template` with `flaw`, and its event ID as a receiver computes it.
    pub fn sign_flawed_pdu(
        &self,
        template: &EventTemplate,
        room_version: &RoomVersionId,
        flaw: PduFlaw,
    ) -> Pdu {
        if let PduFlaw::ForeignSender(server) = &flaw {
            let mut template = template.clone();
            template.sender = foreign_user(&template.sender, server);
            return self.sign_pdu(&template, room_version);
        }
        let rules = versions::rules(room_version)
            .unwrap_or_else(|| panic!("room version {room_version} is not supported"));
        let valid = self.sign_pdu(template, room_version);
        let mut object = valid.canonical_object().expect("invariant: a built PDU parses");
        object.remove("signatures");
        let origin = self.server_name().as_str();
        let key = self.signing_key();
        match flaw {
            PduFlaw::ContentHashWrong => {
                let wrong = CanonicalJsonValue::String("A".repeat(43));
                object.insert(
                    "hashes".to_owned(),
                    CanonicalJsonValue::Object(CanonicalJsonObject::from([(
                        "sha256".to_owned(),
                        wrong,
                    )])),
                );
                // Sign the redacted form, as a server does, so only the hash is wrong.
                let mut redacted = redact(object.clone(), &rules.redaction, None)
                    .expect("invariant: a built PDU redacts");
                sign_json(origin, key.pair(), &mut redacted).expect("invariant: JSON signs");
                if let Some(signatures) = redacted.remove("signatures") {
                    object.insert("signatures".to_owned(), signatures);
                }
            }
            PduFlaw::SignatureWrong => {
                let version = key.pair().version().to_owned();
                let other = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version)
                    .expect("invariant: a freshly generated key parses");
                hash_and_sign_event(origin, &other, &mut object, &rules.redaction)
                    .expect("invariant: a built PDU signs");
            }
            PduFlaw::Unsigned | PduFlaw::ForeignSender(_) => {}
        }
        let event_id = event_id_of(&object, room_version).expect("invariant: a PDU hashes");
        let json = to_raw_value(&object).expect("invariant: canonical JSON serialises");
        Pdu::from_json(event_id, json, room_version).expect("invariant: a built PDU parses")
    }

    /// The body of a federation transaction (`PUT /_matrix/federation/v1/send/{txnId}`) from
    /// this peer.
    pub fn transaction(&self, pdus: &[&Pdu], edus: Vec<Value>) -> Value {
        let pdus: Vec<Value> = pdus
            .iter()
            .map(|pdu| serde_json::from_str(pdu.json().get()).expect("invariant: PDU JSON parses"))
            .collect();
        json!({
            "origin": self.server_name(),
            "origin_server_ts": MilliSecondsSinceUnixEpoch::now(),
            "pdus": pdus,
            "edus": edus,
        })
    }

    /// Sends `pdus` in a correctly signed transaction `txn_id` to `destination`.
    pub async fn send_transaction(
        &self,
        destination: &ServerName,
        base_url: &str,
        txn_id: &str,
        pdus: &[&Pdu],
    ) -> PeerResponse {
        let body = self.transaction(pdus, Vec::new());
        let path = format!("/_matrix/federation/v1/send/{txn_id}");
        self.request(destination, base_url, http::Method::PUT, &path, Some(body)).await
    }
}

fn foreign_user(user: &UserId, server: &ServerName) -> ruma::OwnedUserId {
    UserId::parse(format!("@{}:{server}", user.localpart()))
        .expect("invariant: a valid localpart on a valid server name")
}
