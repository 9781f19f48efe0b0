//! Rhizome and Synapse (from PyPI) federating over HTTPS on loopback: keys both ways, directly
//! and through each other as notaries, versions, and rooms on either side joined from the
//! other, with messages and typing both ways.

use rhizome_testkit::{
    Api, TestServer, encode,
    synapse::{Synapse, SynapseOptions},
};
use serde_json::json;

use super::{has_message, wait_for_sync};

/// A client API session on Synapse for a freshly registered user.
async fn synapse_user(synapse: &Synapse, localpart: &str) -> Api {
    let user = synapse.register(localpart, false).await;
    let mut api = Api::with_client(synapse.base_url(), synapse.client());
    api.token = Some(user.access_token);
    api.user_id = Some(user.user_id.to_string());
    api
}

async fn synapse_on(ip: &str) -> Synapse {
    Synapse::start_with(SynapseOptions::default().ip(ip.parse().expect("an IP"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rhizome_and_synapse_fetch_each_others_keys_and_versions() {
    let (rhizome, synapse) =
        tokio::join!(TestServer::start_federating("127.0.0.101"), synapse_on("127.0.0.102"));
    let synapse_name = synapse.server_name().to_owned();
    // Rhizome fetches Synapse's keys directly (as it does to verify its requests).
    let document =
        rhizome.tls_api().get(&format!("/_matrix/key/v2/query/{synapse_name}")).await.ok();
    let keys = &document["server_keys"][0];
    assert_eq!(keys["server_name"], synapse_name.as_str());
    assert!(keys["signatures"][synapse_name.as_str()].is_object(), "Synapse's own signature");
    assert!(
        keys["signatures"][rhizome.config.server_name.as_str()].is_object(),
        "Rhizome's signature as notary"
    );
    // Synapse, as a notary, fetches Rhizome's keys from Rhizome (asked by key ID: Synapse
    // fetches only keys named in the query).
    let key_id = rhizome.services().signing_key.key_id();
    let answer = synapse
        .client()
        .post(synapse.url("/_matrix/key/v2/query"))
        .json(&json!({ "server_keys": { rhizome.config.server_name.as_str(): {
            &key_id: { "minimum_valid_until_ts": 0 }
        } } }))
        .send()
        .await
        .unwrap();
    let answer: serde_json::Value = answer.json().await.unwrap();
    let ours = &answer["server_keys"][0];
    assert_eq!(ours["server_name"], rhizome.config.server_name.as_str(), "{answer}");
    assert_eq!(
        ours["verify_keys"][&key_id]["key"],
        rhizome.services().signing_key.public_key_base64()
    );
    // Versions.
    let version: serde_json::Value = synapse
        .client()
        .get(synapse.url("/_matrix/federation/v1/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["server"]["name"], "Synapse");
    let ours = rhizome.tls_api().get("/_matrix/federation/v1/version").await.ok();
    assert_eq!(ours["server"]["name"], "Rhizome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rhizome_user_joins_a_synapse_room_and_both_chat_and_type() {
    let (rhizome, synapse) =
        tokio::join!(TestServer::start_federating("127.0.0.103"), synapse_on("127.0.0.104"));
    let sam = synapse_user(&synapse, "sam").await;
    let alice = Api::new_user(&rhizome.base_url, "alice").await;
    let room = sam
        .create_room(
            json!({ "preset": "public_chat", "room_alias_name": "commons", "name": "commons" }),
        )
        .await;
    let alias = format!("#commons:{}", synapse.server_name());
    let joined = alice.join(&alias).await;
    assert_eq!(joined["room_id"], room.as_str());
    let name = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", encode(&room)))
        .await
        .ok();
    assert_eq!(name["name"], "commons");
    sam.send_text(&room, "hello from Synapse").await;
    wait_for_sync(&alice, "Synapse's message", |sync| {
        has_message(sync, &room, "hello from Synapse")
    })
    .await;
    alice.send_text(&room, "hello from Rhizome").await;
    wait_for_sync(&sam, "Rhizome's message", |sync| has_message(sync, &room, "hello from Rhizome"))
        .await;
    // Typing from Synapse arrives as an EDU.
    sam.put(
        &format!("/_matrix/client/v3/rooms/{}/typing/{}", encode(&room), encode(sam.user())),
        json!({ "typing": true, "timeout": 20000 }),
    )
    .await
    .ok();
    wait_for_sync(&alice, "Synapse's typing", |sync| {
        sync["rooms"]["join"][&room]["ephemeral"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|event| {
                event["type"] == "m.typing"
                    && event["content"]["user_ids"]
                        .as_array()
                        .is_some_and(|users| users.iter().any(|user| user == sam.user()))
            })
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_user_is_invited_to_a_rhizome_room_and_joins() {
    let (rhizome, synapse) =
        tokio::join!(TestServer::start_federating("127.0.0.105"), synapse_on("127.0.0.106"));
    let alice = Api::new_user(&rhizome.base_url, "alice").await;
    let sam = synapse_user(&synapse, "sam").await;
    let room = alice.create_room(json!({ "preset": "private_chat", "name": "circle" })).await;
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&room)),
            json!({ "user_id": sam.user() }),
        )
        .await
        .ok();
    wait_for_sync(&sam, "the invite", |sync| sync["rooms"]["invite"][&room].is_object()).await;
    sam.post(&format!("/_matrix/client/v3/join/{}", encode(&room)), json!({})).await.ok();
    alice.send_text(&room, "welcome to the circle").await;
    wait_for_sync(&sam, "the welcome", |sync| has_message(sync, &room, "welcome to the circle"))
        .await;
    sam.send_text(&room, "thanks").await;
    wait_for_sync(&alice, "the thanks", |sync| has_message(sync, &room, "thanks")).await;
}
