//! The public room directory across servers: each of two Rhizome servers lists the other's
//! rooms for its users (paged, filtered by term and type), a server that does not publish its
//! directory refuses other servers, and the served endpoints read by a test peer.

use http::{Method, StatusCode};
use rhizome_testkit::{Api, Backend, TestServer, peer::TestPeer};
use ruma::ServerName;
use serde_json::{Value, json};

fn room_ids(page: &Value) -> Vec<String> {
    let mut ids: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|room| room["room_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|id| (*id).clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_lists_the_others_public_rooms() {
    let a = TestServer::start_federating("127.0.0.68").await;
    let b = TestServer::start_federating("127.0.0.69").await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let garden = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public",
                             "name": "Garden", "topic": "seeds and soil" }))
        .await;
    let commons = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public", "name": "Commons",
                             "creation_content": { "type": "m.space" } }))
        .await;
    alice.create_room(json!({ "preset": "public_chat", "name": "Unlisted" })).await;
    let workshop = bob
        .create_room(json!({ "preset": "public_chat", "visibility": "public", "name": "Workshop" }))
        .await;
    let a_name = a.config.server_name.to_string();
    let b_name = b.config.server_name.to_string();

    // Bob lists A's directory through B, plain and filtered.
    let page = bob.get(&format!("/_matrix/client/v3/publicRooms?server={a_name}")).await.ok();
    assert_eq!(room_ids(&page), sorted(&[&garden, &commons]));
    assert_eq!(page["total_room_count_estimate"], 2);
    let garden_entry = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|room| room["room_id"] == garden.as_str())
        .unwrap();
    assert_eq!(garden_entry["name"], "Garden");
    assert_eq!(garden_entry["topic"], "seeds and soil");
    // `public` is the join rule's default, left out on the wire.
    assert!(garden_entry.get("join_rule").is_none_or(|rule| rule == "public"));
    let path = format!("/_matrix/client/v3/publicRooms?server={a_name}");
    let by_term =
        bob.post(&path, json!({ "filter": { "generic_search_term": "SOIL" } })).await.ok();
    assert_eq!(room_ids(&by_term), vec![garden.clone()]);
    let spaces = bob.post(&path, json!({ "filter": { "room_types": ["m.space"] } })).await.ok();
    assert_eq!(room_ids(&spaces), vec![commons.clone()]);
    assert_eq!(spaces["chunk"][0]["room_type"], "m.space");
    // Paged: one room, then the other with the token A gave.
    let first = bob.post(&path, json!({ "limit": 1 })).await.ok();
    assert_eq!(first["chunk"].as_array().unwrap().len(), 1);
    let since = first["next_batch"].as_str().expect("a next page").to_owned();
    let second = bob
        .get(&format!("/_matrix/client/v3/publicRooms?server={a_name}&limit=1&since={since}"))
        .await
        .ok();
    assert_eq!(second["chunk"].as_array().unwrap().len(), 1);
    assert_ne!(first["chunk"][0]["room_id"], second["chunk"][0]["room_id"]);

    // Alice lists B's directory through A; her own server's list is hers alone.
    let page = alice.get(&format!("/_matrix/client/v3/publicRooms?server={b_name}")).await.ok();
    assert_eq!(room_ids(&page), vec![workshop.clone()]);
    let own = alice.get("/_matrix/client/v3/publicRooms").await.ok();
    assert_eq!(room_ids(&own), sorted(&[&garden, &commons]));
    let own_by_name =
        alice.get(&format!("/_matrix/client/v3/publicRooms?server={a_name}")).await.ok();
    assert_eq!(room_ids(&own_by_name), sorted(&[&garden, &commons]));
    // The plain list takes no access token, for other servers' rooms too.
    let anonymous =
        Api::new(&a.base_url).get(&format!("/_matrix/client/v3/publicRooms?server={b_name}")).await;
    assert_eq!(room_ids(&anonymous.ok()), vec![workshop.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_directory_follows_the_publishing_setting() {
    let open = TestServer::start_federating("127.0.0.70").await;
    let closed = TestServer::start_federating_with(Backend::Sqlite, "127.0.0.71", |config| {
        config.federation.publish_room_directory = false;
    })
    .await;
    let peer = TestPeer::start_on("127.0.0.72".parse().unwrap()).await;
    for server in [&open, &closed] {
        let organiser = Api::new_user(&server.base_url, "organiser").await;
        organiser
            .create_room(json!({ "preset": "public_chat", "visibility": "public", "name": "Hall" }))
            .await;
        organiser
            .create_room(json!({ "preset": "public_chat", "visibility": "public", "name": "Yard" }))
            .await;
    }
    let ask = |server: &TestServer, method: Method, body: Option<Value>| {
        let destination = ServerName::parse(server.config.server_name.as_str()).unwrap();
        let base = server.tls_base_url.clone().unwrap();
        let peer = &peer;
        async move {
            let path = if method == Method::GET {
                "/_matrix/federation/v1/publicRooms?limit=1"
            } else {
                "/_matrix/federation/v1/publicRooms"
            };
            peer.request(&destination, &base, method, path, body).await
        }
    };

    let page = ask(&open, Method::GET, None).await;
    assert_eq!(page.status, StatusCode::OK);
    let page = page.json();
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(page["total_room_count_estimate"], 2);
    assert!(page["next_batch"].is_string());
    let filtered = ask(
        &open,
        Method::POST,
        Some(json!({ "filter": { "generic_search_term": "yard" },
                     "third_party_instance_id": "irc" })),
    )
    .await;
    assert_eq!(filtered.status, StatusCode::OK, "{}", filtered.json());
    let filtered = filtered.json();
    let chunk = filtered["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1);
    assert_eq!(chunk[0]["name"], "Yard");
    assert_eq!(chunk[0]["num_joined_members"], 1);

    for method in [Method::GET, Method::POST] {
        let body = (method == Method::POST).then(|| json!({}));
        let refused = ask(&closed, method, body).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(refused.errcode().as_deref(), Some("M_FORBIDDEN"));
    }
    // Its own users still see the list; the open server's users are told it is closed.
    let local = Api::new_user(&closed.base_url, "member").await;
    let own = local.get("/_matrix/client/v3/publicRooms").await.ok();
    assert_eq!(own["chunk"].as_array().unwrap().len(), 2);
    let visitor = Api::new_user(&open.base_url, "visitor").await;
    visitor
        .get(&format!("/_matrix/client/v3/publicRooms?server={}", closed.config.server_name))
        .await
        .expect_error(403, "M_FORBIDDEN");
}
