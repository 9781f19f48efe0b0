//! Media with a real client: an avatar upload, an image sent to a room, and a second client
//! downloading the image, its server-made thumbnail and the avatar through the authenticated
//! media endpoints.

use std::{io::Cursor, time::Duration};

use image::{DynamicImage, GenericImageView, ImageFormat, Rgba, RgbaImage};
use matrix_sdk::{
    Client,
    attachment::AttachmentConfig,
    config::SyncSettings,
    media::{MediaFormat, MediaRequestParameters, MediaThumbnailSettings},
    ruma::{
        OwnedRoomId, UInt,
        api::client::room::create_room::v3::Request as CreateRoomRequest,
        events::room::{
            MediaSource,
            message::{MessageType, RoomMessageEventContent},
        },
        media::Method,
    },
};
use rhizome_testkit::TestServer;

use crate::support::{register, sync};

fn picture(width: u32, height: u32) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, y| {
        Rgba([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8, 255])
    });
    let mut bytes = Vec::new();
    DynamicImage::ImageRgba8(image)
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .expect("the test image encodes");
    bytes
}

/// Syncs until an `m.image` message arrives in the room and returns its content.
async fn wait_for_image(client: &Client, room_id: &OwnedRoomId) -> RoomMessageEventContent {
    for _ in 0..50 {
        let response = client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .expect("sync succeeds");
        let Some(room) = response.rooms.joined.get(room_id) else { continue };
        for event in &room.timeline.events {
            let value: serde_json::Value =
                serde_json::from_str(event.raw().json().get()).expect("event JSON");
            if value["type"] == "m.room.message" && value["content"]["msgtype"] == "m.image" {
                return serde_json::from_value(value["content"].clone()).expect("image content");
            }
        }
    }
    panic!("the image never arrived through sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_avatar_and_an_image_reach_another_client_with_a_thumbnail() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;

    // Alice sets an avatar.
    let avatar = picture(96, 96);
    let avatar_uri =
        alice.account().upload_avatar(&mime::IMAGE_PNG, avatar.clone()).await.expect("avatar set");
    assert_eq!(alice.account().get_avatar_url().await.unwrap(), Some(avatar_uri.clone()));

    // …and sends an image to a room Bob is in.
    let mut request = CreateRoomRequest::new();
    request.invite = vec![bob.user_id().unwrap().to_owned()];
    let room = alice.create_room(request).await.expect("room created");
    let room_id = room.room_id().to_owned();
    sync(&bob).await;
    bob.join_room_by_id(&room_id).await.expect("bob joins");
    let image = picture(640, 480);
    room.send_attachment("garden.png", &mime::IMAGE_PNG, image.clone(), AttachmentConfig::new())
        .await
        .expect("image sent");

    // Bob downloads the image and a thumbnail of it.
    let content = wait_for_image(&bob, &room_id).await;
    let MessageType::Image(image_content) = content.msgtype else {
        panic!("not an image message");
    };
    assert_eq!(image_content.body, "garden.png");
    assert!(matches!(image_content.source, MediaSource::Plain(_)));
    let file =
        MediaRequestParameters { source: image_content.source.clone(), format: MediaFormat::File };
    let downloaded = bob.media().get_media_content(&file, false).await.expect("image downloaded");
    assert_eq!(downloaded, image);

    let settings =
        MediaThumbnailSettings::with_method(Method::Crop, UInt::from(64u32), UInt::from(64u32));
    let thumbnail_request = MediaRequestParameters {
        source: image_content.source,
        format: MediaFormat::Thumbnail(settings),
    };
    let thumbnail =
        bob.media().get_media_content(&thumbnail_request, false).await.expect("thumbnail");
    assert_eq!(image::load_from_memory(&thumbnail).unwrap().dimensions(), (64, 64));
    let settings = MediaThumbnailSettings::new(UInt::from(320u32), UInt::from(320u32));
    let scaled = MediaRequestParameters {
        source: MediaSource::Plain(avatar_uri.clone()),
        format: MediaFormat::Thumbnail(settings),
    };
    let scaled = bob.media().get_media_content(&scaled, false).await.expect("avatar thumbnail");
    // Never enlarged: the 96 × 96 avatar stays 96 × 96.
    assert_eq!(image::load_from_memory(&scaled).unwrap().dimensions(), (96, 96));

    // Bob sees Alice's avatar and downloads it.
    let member = room_member_avatar(&bob, &room_id, &alice).await;
    assert_eq!(member, avatar_uri);
    let avatar_request =
        MediaRequestParameters { source: MediaSource::Plain(member), format: MediaFormat::File };
    assert_eq!(bob.media().get_media_content(&avatar_request, false).await.unwrap(), avatar);
}

async fn room_member_avatar(
    bob: &Client,
    room_id: &OwnedRoomId,
    alice: &Client,
) -> matrix_sdk::ruma::OwnedMxcUri {
    sync(bob).await;
    let room = bob.get_room(room_id).expect("bob knows the room");
    let member = room
        .get_member(alice.user_id().expect("alice is logged in"))
        .await
        .expect("members load")
        .expect("alice is a member");
    member.avatar_url().expect("alice has an avatar").to_owned()
}
