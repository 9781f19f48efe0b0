//! Queries and media between Rhizome and Synapse, both ways: profiles, the public room
//! directory and media (Synapse's `multipart/mixed` read by Rhizome, and Rhizome's by Synapse).

use std::io::Cursor;

use image::{GenericImageView, ImageFormat, Rgba, RgbaImage};
use rhizome_testkit::{Api, TestServer, encode, synapse::Synapse};
use serde_json::json;

fn picture(width: u32, height: u32) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, y| Rgba([x as u8, y as u8, 90, 255]));
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).expect("the image encodes");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_directories_and_media_cross_between_rhizome_and_synapse() {
    let synapse = Synapse::shared().await;
    let rhizome = TestServer::start_federating("127.0.0.72").await;
    let localpart = format!("queries{}", std::process::id());
    let registered = synapse.register(&localpart, false).await;
    let mut sam = Api::with_client(synapse.base_url(), synapse.client());
    sam.token = Some(registered.access_token.clone());
    sam.user_id = Some(registered.user_id.to_string());
    let rita = Api::new_user(&rhizome.base_url, "rita").await;
    let profile = |user: &str| format!("/_matrix/client/v3/profile/{}", encode(user));
    let synapse_name = synapse.server_name().to_string();
    let rhizome_name = rhizome.config.server_name.to_string();

    // Profiles, both ways.
    sam.put(&format!("{}/displayname", profile(sam.user())), json!({ "displayname": "Sam" }))
        .await
        .ok();
    rita.put(&format!("{}/displayname", profile(rita.user())), json!({ "displayname": "Rita" }))
        .await
        .ok();
    assert_eq!(rita.get(&profile(sam.user())).await.ok()["displayname"], "Sam");
    assert_eq!(sam.get(&profile(rita.user())).await.ok()["displayname"], "Rita");

    // Public room directories, both ways.
    let sam_room = sam
        .create_room(json!({ "preset": "public_chat", "visibility": "public",
                             "name": format!("Synapse room {localpart}") }))
        .await;
    let rita_room = rita
        .create_room(
            json!({ "preset": "public_chat", "visibility": "public", "name": "Rhizome room" }),
        )
        .await;
    let listed = rita
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={synapse_name}"),
            json!({ "filter": { "generic_search_term": localpart } }),
        )
        .await
        .ok();
    assert_eq!(listed["chunk"][0]["room_id"], sam_room.as_str(), "{listed}");
    let listed =
        sam.get(&format!("/_matrix/client/v3/publicRooms?server={rhizome_name}")).await.ok();
    assert_eq!(listed["chunk"][0]["room_id"], rita_room.as_str(), "{listed}");

    // Media, both ways, and a thumbnail Synapse makes for Rhizome.
    let sam_picture = picture(90, 60);
    let sam_uri = sam.upload_ok("image/png", sam_picture.clone()).await;
    assert_eq!(rita.download(&sam_uri).await.ok(), sam_picture);
    let unfetched_uri = sam.upload_ok("image/png", picture(200, 150)).await;
    let thumbnail = rita.thumbnail(&unfetched_uri, "width=32&height=32&method=crop").await.ok();
    let (width, height) = image::load_from_memory(&thumbnail).unwrap().dimensions();
    assert!(width < 200 && height < 150, "{width}x{height}");
    let rita_picture = picture(70, 50);
    let rita_uri = rita.upload_ok("image/png", rita_picture.clone()).await;
    let fetched = sam.download(&rita_uri).await;
    assert_eq!(fetched.header("content-type"), Some("image/png"));
    assert_eq!(fetched.ok(), rita_picture);
}
