//! Room-rule tests over fixture rooms: signing, event IDs, auth rules, redaction, state
//! resolution of forks, for each supported room version.

use std::collections::BTreeMap;

use ruma::{
    OwnedUserId, RoomVersionId,
    events::StateEventType,
    serde::Base64,
    signatures::{Verified, verify_event},
    user_id,
};
use serde_json::json;

use crate::{Pdu, build::event_id_of, fixture::FixtureRoom, versions::SUPPORTED_ROOM_VERSIONS};

fn alice() -> OwnedUserId {
    user_id!("@alice:example.org").to_owned()
}
fn bob() -> OwnedUserId {
    user_id!("@bob:example.org").to_owned()
}
fn carol() -> OwnedUserId {
    user_id!("@carol:example.org").to_owned()
}

fn check(version: &RoomVersionId, body: impl Fn(&RoomVersionId)) {
    body(version);
}

fn each_version(body: impl Fn(&RoomVersionId)) {
    for version in SUPPORTED_ROOM_VERSIONS {
        check(version, &body);
    }
}

fn name_of(room: &FixtureRoom, state: &crate::StateMap) -> Option<String> {
    room.state_event(state, "m.room.name", "").and_then(|event| event.content_str("name"))
}

#[test]
fn events_are_signed_hashed_and_identified_by_their_reference_hash() {
    each_version(|version| {
        let room = FixtureRoom::new(version.clone(), &alice());
        for event in room.events.values() {
            let object = event.canonical_object().unwrap();
            assert_eq!(event_id_of(&object, version).unwrap(), event.event_id);
            assert!(object.contains_key("hashes") && object.contains_key("signatures"));
            let legacy = matches!(version, RoomVersionId::V1 | RoomVersionId::V2);
            assert_eq!(
                object.contains_key("event_id"),
                legacy,
                "{version}: only v1 and v2 PDUs carry event_id"
            );
            if legacy {
                assert_eq!(event.event_id.server_name().map(|s| s.as_str()), Some("example.org"));
                let prevs = object.get("prev_events").unwrap();
                assert!(
                    event.prev_events.is_empty() || prevs.to_string().contains("[["),
                    "{version}: pairs"
                );
            }
        }
        let create = &room.events[&room.create_event_id];
        if *version == RoomVersionId::V12 {
            assert_eq!(
                room.room_id.as_str(),
                format!("!{}", create.event_id.as_str().trim_start_matches('$'))
            );
            assert!(!create.canonical_object().unwrap().contains_key("room_id"));
        } else {
            assert!(create.canonical_object().unwrap().contains_key("room_id"));
        }
    });
}

#[test]
fn signatures_verify_with_the_published_key_and_fail_when_tampered() {
    let key = crate::SigningKey::generate();
    let template = crate::EventTemplate {
        room_id: Some(ruma::owned_room_id!("!r:example.org")),
        sender: alice(),
        kind: "m.room.message".into(),
        state_key: None,
        content: serde_json::value::to_raw_value(&json!({"body": "hi", "msgtype": "m.text"}))
            .unwrap(),
        redacts: None,
        prev_events: vec![ruma::owned_event_id!("$prev")],
        auth_events: vec![],
        depth: 2,
        origin_server_ts: ruma::MilliSecondsSinceUnixEpoch(ruma::uint!(5)),
    };
    let server = ruma::server_name!("example.org");
    let pdu = crate::build_pdu(&template, &RoomVersionId::V11, server, &key).unwrap();
    let mut keys = BTreeMap::new();
    keys.insert(key.key_id(), Base64::parse(key.public_key_base64()).unwrap());
    let mut map = BTreeMap::new();
    map.insert("example.org".to_owned(), keys);
    let rules = RoomVersionId::V11.rules().unwrap();
    let object = pdu.canonical_object().unwrap();
    assert_eq!(verify_event(&map, &object, &rules).unwrap(), Verified::All);

    // Changing the content breaks the content hash (only redacted-form signature holds).
    let mut tampered = object.clone();
    tampered.insert("content".into(), ruma::CanonicalJsonValue::Object(Default::default()));
    assert_eq!(verify_event(&map, &tampered, &rules).unwrap(), Verified::Signatures);
    // Changing a signed field breaks the signature.
    let mut forged = object;
    forged.insert("sender".into(), ruma::CanonicalJsonValue::String("@mallory:example.org".into()));
    assert!(verify_event(&map, &forged, &rules).is_err());
}

#[test]
fn non_members_cannot_send_and_members_can() {
    each_version(|version| {
        let mut room = FixtureRoom::new(version.clone(), &alice());
        let head = room.head();
        let refused = room.send(
            std::slice::from_ref(&head),
            &bob(),
            "m.room.message",
            None,
            json!({"body": "x"}),
        );
        assert!(refused.is_err(), "{version}: a non-member sent a message");
        room.member(&bob(), &bob(), "join");
        let head = room.head();
        room.send(&[head], &bob(), "m.room.message", None, json!({"body": "x"}))
            .unwrap_or_else(|error| panic!("{version}: member refused: {error}"));
    });
}

#[test]
fn changing_the_room_name_needs_power() {
    each_version(|version| {
        let mut room = FixtureRoom::new(version.clone(), &alice());
        room.member(&bob(), &bob(), "join");
        let head = room.head();
        let refused = room.send_state(
            std::slice::from_ref(&head),
            &bob(),
            "m.room.name",
            "",
            json!({"name": "bob's"}),
        );
        let error = refused.expect_err("a power-0 user changed the name").to_string();
        assert!(error.contains("power") || error.contains("not allowed"), "{error}");
        room.send_state(&[head], &alice(), "m.room.name", "", json!({"name": "alice's"})).unwrap();
    });
}

#[test]
fn banned_users_cannot_join_and_only_moderators_ban() {
    each_version(|version| {
        let mut room = FixtureRoom::new(version.clone(), &alice());
        room.member(&bob(), &bob(), "join");
        room.member(&carol(), &carol(), "join");
        let head = room.head();
        assert!(
            room.send_state(
                std::slice::from_ref(&head),
                &bob(),
                "m.room.member",
                carol().as_str(),
                json!({"membership": "ban"})
            )
            .is_err(),
            "{version}: power-0 user banned someone"
        );
        let ban = room
            .send_state(
                &[head],
                &alice(),
                "m.room.member",
                carol().as_str(),
                json!({"membership": "ban"}),
            )
            .unwrap();
        let rejoin = room.send_state(
            &[ban],
            &carol(),
            "m.room.member",
            carol().as_str(),
            json!({"membership": "join"}),
        );
        assert!(rejoin.is_err(), "{version}: banned user rejoined");
    });
}

#[test]
fn invite_only_rooms_need_an_invite() {
    each_version(|version| {
        let mut room = FixtureRoom::new(version.clone(), &alice());
        let head = room.head();
        let private = room
            .send_state(&[head], &alice(), "m.room.join_rules", "", json!({"join_rule": "invite"}))
            .unwrap();
        assert!(
            room.send_state(
                std::slice::from_ref(&private),
                &bob(),
                "m.room.member",
                bob().as_str(),
                json!({"membership": "join"})
            )
            .is_err()
        );
        let invite = room
            .send_state(
                &[private],
                &alice(),
                "m.room.member",
                bob().as_str(),
                json!({"membership": "invite"}),
            )
            .unwrap();
        room.send_state(
            &[invite],
            &bob(),
            "m.room.member",
            bob().as_str(),
            json!({"membership": "join"}),
        )
        .unwrap();
    });
}

#[test]
fn room_creators_cannot_be_listed_in_power_levels_since_v12() {
    let mut room = FixtureRoom::new(RoomVersionId::V12, &alice());
    let head = room.head();
    let result = room.send_state(
        &[head],
        &alice(),
        "m.room.power_levels",
        "",
        json!({"users": {alice().as_str(): 100}}),
    );
    assert!(result.is_err(), "v12 accepted a creator in power_levels.users");
}

#[test]
fn redaction_keeps_the_event_verifiable_and_strips_content() {
    each_version(|version| {
        let mut room = FixtureRoom::new(version.clone(), &alice());
        let head = room.head();
        let message = room
            .send(
                &[head],
                &alice(),
                "m.room.message",
                None,
                json!({"body": "secret", "msgtype": "m.text"}),
            )
            .unwrap();
        let original = room.events[&message].clone();
        let redacted: Pdu = original.redacted(version, None).unwrap();
        assert_eq!(redacted.content.get(), "{}");
        let object = redacted.canonical_object().unwrap();
        assert_eq!(event_id_of(&object, version).unwrap(), original.event_id);
        assert!(object.contains_key("hashes"));
    });
}

#[test]
fn state_at_each_event_follows_the_graph() {
    each_version(|version| {
        let mut room = FixtureRoom::new(version.clone(), &alice());
        let head = room.head();
        let first =
            room.send_state(&[head], &alice(), "m.room.name", "", json!({"name": "one"})).unwrap();
        let second = room
            .send_state(
                std::slice::from_ref(&first),
                &alice(),
                "m.room.name",
                "",
                json!({"name": "two"}),
            )
            .unwrap();
        let message = room
            .send(
                std::slice::from_ref(&second),
                &alice(),
                "m.room.message",
                None,
                json!({"body": "x"}),
            )
            .unwrap();
        assert_eq!(name_of(&room, room.state_after(&first).unwrap()).as_deref(), Some("one"));
        let before_first = room.state_before(&room.events[&first].prev_events);
        assert_eq!(name_of(&room, &before_first).as_deref(), None);
        assert_eq!(
            name_of(&room, &room.state_before(std::slice::from_ref(&message))).as_deref(),
            Some("two")
        );
        assert_eq!(room.state_after(&message), room.state_after(&second));
    });
}

#[test]
fn a_fork_with_two_names_resolves_to_one_deterministically() {
    each_version(|version| {
        let mut room = FixtureRoom::new(version.clone(), &alice());
        let base = room.head();
        let left = room
            .send_state(
                std::slice::from_ref(&base),
                &alice(),
                "m.room.name",
                "",
                json!({"name": "left"}),
            )
            .unwrap();
        let right = room
            .send_state(&[base], &alice(), "m.room.name", "", json!({"name": "right"}))
            .unwrap();
        let once = room.state_before(&[left.clone(), right.clone()]);
        let again = room.state_before(&[right, left]);
        assert_eq!(once, again, "{version}: resolution depends on the order of branches");
        let name = name_of(&room, &once).unwrap();
        assert!(name == "left" || name == "right");
        // The right branch was sent later (higher timestamp), so mainline ordering puts it last.
        assert_eq!(name, "right", "{version}");
    });
}

#[test]
fn a_demotion_on_one_branch_voids_the_demoted_users_change_on_the_other() {
    each_version(|version| {
        let mut room = FixtureRoom::new(version.clone(), &alice());
        room.member(&bob(), &bob(), "join");
        let head = room.head();
        // Alice makes Bob a moderator.
        let mut users = serde_json::Map::new();
        if *version != RoomVersionId::V12 {
            users.insert(alice().to_string(), json!(100));
        }
        users.insert(bob().to_string(), json!(50));
        let promote = room
            .send_state(
                &[head],
                &alice(),
                "m.room.power_levels",
                "",
                json!({"users": users.clone()}),
            )
            .unwrap();
        // Branch A: Alice demotes Bob. Branch B: Bob renames the room.
        users.insert(bob().to_string(), json!(0));
        let demote = room
            .send_state(
                std::slice::from_ref(&promote),
                &alice(),
                "m.room.power_levels",
                "",
                json!({"users": users}),
            )
            .unwrap();
        let rename = room
            .send_state(&[promote], &bob(), "m.room.name", "", json!({"name": "bob was here"}))
            .unwrap();
        let resolved = room.state_before(&[demote.clone(), rename]);
        assert_eq!(
            resolved.get(&(StateEventType::RoomPowerLevels, String::new())),
            Some(&demote),
            "{version}"
        );
        if *version == RoomVersionId::V1 {
            // Room version 1's resolution keeps an unconflicted change whoever made it: the
            // flaw version 2 fixed.
            assert_eq!(name_of(&room, &resolved).as_deref(), Some("bob was here"));
        } else {
            assert_eq!(
                name_of(&room, &resolved),
                None,
                "{version}: the demoted user's rename survived"
            );
        }
        // And the merged room goes on from the resolved state: Bob can no longer rename.
        let head = room
            .send(
                &[demote.clone(), room.head()],
                &alice(),
                "m.room.message",
                None,
                json!({"body": "merge"}),
            )
            .unwrap();
        assert!(
            room.send_state(&[head], &bob(), "m.room.name", "", json!({"name": "again"})).is_err()
        );
    });
}

#[test]
fn concurrent_joins_on_two_branches_both_survive_resolution() {
    each_version(|version| {
        let mut room = FixtureRoom::new(version.clone(), &alice());
        let base = room.head();
        let bob_join = room
            .send_state(
                std::slice::from_ref(&base),
                &bob(),
                "m.room.member",
                bob().as_str(),
                json!({"membership": "join"}),
            )
            .unwrap();
        let carol_join = room
            .send_state(
                &[base],
                &carol(),
                "m.room.member",
                carol().as_str(),
                json!({"membership": "join"}),
            )
            .unwrap();
        let resolved = room.state_before(&[bob_join.clone(), carol_join.clone()]);
        assert_eq!(resolved.get(&(StateEventType::RoomMember, bob().to_string())), Some(&bob_join));
        assert_eq!(
            resolved.get(&(StateEventType::RoomMember, carol().to_string())),
            Some(&carol_join)
        );
    });
}

#[test]
fn a_ban_on_one_branch_beats_a_join_on_the_other() {
    each_version(|version| {
        let mut room = FixtureRoom::new(version.clone(), &alice());
        let base = room.head();
        let ban = room
            .send_state(
                std::slice::from_ref(&base),
                &alice(),
                "m.room.member",
                carol().as_str(),
                json!({"membership": "ban"}),
            )
            .unwrap();
        let join = room
            .send_state(
                &[base],
                &carol(),
                "m.room.member",
                carol().as_str(),
                json!({"membership": "join"}),
            )
            .unwrap();
        let resolved = room.state_before(&[join.clone(), ban.clone()]);
        assert_eq!(
            resolved.get(&(StateEventType::RoomMember, carol().to_string())),
            Some(&ban),
            "{version}"
        );
    });
}

#[test]
fn one_field_of_the_content_is_read_as_the_whole_would_be() {
    use crate::pdu::field_str;
    let whole = |object: &str, field: &str| {
        let value: serde_json::Value = serde_json::from_str(object).ok()?;
        value.get(field)?.as_str().map(str::to_owned)
    };
    let cases = [
        (r#"{"membership":"join","displayname":"Ada"}"#, "displayname"),
        (r#"{"membership":"join"}"#, "displayname"),
        (r#"{"displayname":null}"#, "displayname"),
        (r#"{"displayname":7,"x":{"displayname":"nested"}}"#, "displayname"),
        (r#"{"display\u006eame":"escaped key","a":[1,{"b":"c"}]}"#, "displayname"),
        (r#"{"name":"first","name":"last"}"#, "name"),
        (r#"{"name":"a\"quoted\" \u00e9"}"#, "name"),
        (r#"["name","x"]"#, "name"),
        (r#"{"name":"x"} trailing"#, "name"),
        (r#"{"name":"#, "name"),
        ("", "name"),
    ];
    for (object, field) in cases {
        assert_eq!(field_str(object, field), whole(object, field), "{object}");
    }
    assert_eq!(
        field_str(r#"{"display\u006eame":"escaped key"}"#, "displayname").as_deref(),
        Some("escaped key")
    );
    assert_eq!(field_str(r#"{"name":"first","name":"last"}"#, "name").as_deref(), Some("last"));
}
