//! Spaces across servers: a space on one Rhizome server with children on both, walked by users
//! of each (the server asks the other about the rooms it is not in), the served `/hierarchy`
//! read by a test peer (inaccessible children, `suggested_only`), and a child whose server
//! answers garbage left out.

use http::{Method, StatusCode};
use rhizome_testkit::{
    Api, TestServer, encode,
    peer::{Reply, TestPeer},
};
use ruma::ServerName;
use serde_json::{Value, json};

use super::wait_for_sync;

/// Adds a child to a space; children are ordered by `order`, so by the order they are added.
async fn add_child(user: &Api, space: &str, child: &str, via: &str, suggested: bool) {
    let order = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    user.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
            encode(space),
            encode(child)
        ),
        json!({ "via": [via], "suggested": suggested, "order": order }),
    )
    .await
    .ok();
}

fn names(page: &Value) -> Vec<String> {
    page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|room| room["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn hierarchy_path(space: &str, query: &str) -> String {
    format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", encode(space))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_with_children_on_two_servers_is_walked_from_both() {
    let a = TestServer::start_federating("127.0.0.73").await;
    let b = TestServer::start_federating("127.0.0.74").await;
    let peer = TestPeer::start_on("127.0.0.75".parse().unwrap()).await;
    peer.handle(Method::GET, "/_matrix/federation/v1/hierarchy/{room}", |_| {
        Reply::raw(StatusCode::OK, "application/json", "{\"room\": [")
    });
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let (a_name, b_name) = (a.config.server_name.to_string(), b.config.server_name.to_string());
    let space = alice
        .create_room(json!({ "preset": "public_chat", "name": "Space", "room_alias_name": "space",
                             "creation_content": { "type": "m.space" } }))
        .await;
    let r1 = alice.create_room(json!({ "preset": "public_chat", "name": "R1" })).await;
    let r4 = alice.create_room(json!({ "preset": "private_chat", "name": "R4" })).await;
    let r2 = bob.create_room(json!({ "preset": "public_chat", "name": "R2" })).await;
    let r3 = bob.create_room(json!({ "preset": "private_chat", "name": "R3" })).await;
    add_child(&alice, &space, &r1, &a_name, true).await;
    add_child(&alice, &space, &r2, &b_name, false).await;
    add_child(&alice, &space, &r3, &b_name, false).await;
    add_child(&alice, &space, &r4, &a_name, false).await;
    let nowhere = format!("!nowhere:{}", peer.server_name());
    add_child(&alice, &space, &nowhere, peer.server_name().as_str(), false).await;

    // Alice's server asks B about R2 and R3: R2 is public, R3 is closed to A. The peer's
    // garbage leaves its room out. R4 is invite-only, and Alice is in it.
    let page = alice.get(&hierarchy_path(&space, "")).await.ok();
    assert_eq!(names(&page), ["Space", "R1", "R2", "R4"]);
    assert_eq!(page["rooms"][0]["children_state"].as_array().unwrap().len(), 5);
    assert_eq!(page["rooms"][2]["room_id"], r2.as_str());
    assert!(page["rooms"][2].get("join_rule").is_none_or(|rule| rule == "public"));
    assert_eq!(page["rooms"][3]["join_rule"], "invite");
    let suggested = alice.get(&hierarchy_path(&space, "?suggested_only=true")).await.ok();
    assert_eq!(names(&suggested), ["Space", "R1"]);
    let first = alice.get(&hierarchy_path(&space, "?limit=2")).await.ok();
    assert_eq!(names(&first), ["Space", "R1"]);
    let token = first["next_batch"].as_str().unwrap();
    let rest = alice.get(&hierarchy_path(&space, &format!("?limit=2&from={token}"))).await.ok();
    assert_eq!(names(&rest), ["R2", "R4"]);

    // Bob joins the space: his server walks it, asking A about R1 and R4 (closed to B).
    bob.join(&format!("#space:{a_name}")).await;
    wait_for_sync(&bob, "the space", |sync| sync["rooms"]["join"][&space].is_object()).await;
    let page = bob.get(&hierarchy_path(&space, "")).await.ok();
    assert_eq!(names(&page), ["Space", "R1", "R2", "R3"]);
    assert_eq!(page["rooms"][1]["room_id"], r1.as_str());
    assert_eq!(page["rooms"][1]["num_joined_members"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_hierarchy_lists_children_and_inaccessible_ones() {
    let a = TestServer::start_federating("127.0.0.76").await;
    let peer = TestPeer::start_on("127.0.0.77".parse().unwrap()).await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let a_name = a.config.server_name.to_string();
    let space = alice
        .create_room(json!({ "preset": "public_chat", "name": "Space", "topic": "all of it",
                             "creation_content": { "type": "m.space" } }))
        .await;
    let open = alice.create_room(json!({ "preset": "public_chat", "name": "Open" })).await;
    let closed = alice.create_room(json!({ "preset": "private_chat", "name": "Closed" })).await;
    let secret_space =
        alice.create_room(json!({ "preset": "private_chat", "name": "Secret" })).await;
    add_child(&alice, &space, &open, &a_name, true).await;
    add_child(&alice, &space, &closed, &a_name, false).await;
    add_child(&alice, &space, "!elsewhere:example.org", "example.org", false).await;
    let destination = ServerName::parse(a.config.server_name.as_str()).unwrap();
    let base = a.tls_base_url.as_deref().unwrap();
    let (peer_ref, destination_ref) = (&peer, &destination);
    let ask = move |room: &str, query: &str| {
        let path = format!("/_matrix/federation/v1/hierarchy/{}{query}", encode(room));
        async move { peer_ref.request(destination_ref, base, Method::GET, &path, None).await }
    };

    let answer = ask(&space, "").await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = answer.json();
    assert_eq!(answer["room"]["room_id"], space.as_str());
    assert_eq!(answer["room"]["name"], "Space");
    assert_eq!(answer["room"]["topic"], "all of it");
    assert_eq!(answer["room"]["room_type"], "m.space");
    assert_eq!(answer["room"]["children_state"].as_array().unwrap().len(), 3);
    let child = &answer["room"]["children_state"][0];
    assert_eq!(child["type"], "m.space.child");
    assert!(child["origin_server_ts"].is_i64());
    // The open child is described; the closed one is named as inaccessible; the unknown one
    // is left out.
    let children = answer["children"].as_array().unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0]["room_id"], open.as_str());
    assert_eq!(children[0]["name"], "Open");
    assert_eq!(answer["inaccessible_children"], json!([closed]));

    let suggested = ask(&space, "?suggested_only=true").await.json();
    assert_eq!(suggested["room"]["children_state"].as_array().unwrap().len(), 1);
    assert_eq!(suggested["inaccessible_children"], json!([]));
    // A room closed to the peer, and one this server does not know, are not found.
    for room in [secret_space.as_str(), "!unknown:example.org"] {
        let refused = ask(room, "").await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND);
        assert_eq!(refused.errcode().as_deref(), Some("M_NOT_FOUND"));
    }
}
