//! Media across servers: each of two Rhizome servers fetches the other's media for its users
//! over the authenticated federation endpoints, keeps a copy (served when the other server is
//! gone) within its size limit, and asks for thumbnails; the served `multipart/mixed` answers
//! read by a test peer; and a misbehaving peer (huge, malformed, redirecting, old) whose
//! answers reach the client as clear errors and leave nothing stored.

use std::{io::Cursor, sync::Arc};

use http::{Method, StatusCode};
use image::{GenericImageView, ImageFormat, Rgba, RgbaImage};
use rhizome_service::federation::media::{REMOTE_MEDIA_OWNER, multipart};
use rhizome_testkit::{
    Api, Backend, TestServer, mxc_parts,
    peer::{Reply, Signing, TestPeer},
};
use ruma::ServerName;

fn picture(width: u32, height: u32) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, y| {
        Rgba([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8, 255])
    });
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).expect("the image encodes");
    bytes
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    image::load_from_memory(bytes).expect("a decodable image").dimensions()
}

/// Whether a server holds a media item of `origin`.
async fn stored(server: &TestServer, origin: &str, media_id: &str) -> bool {
    let origin = ServerName::parse(origin).unwrap();
    server.services().store.get_media(&origin, media_id).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_crosses_servers_both_ways_and_is_served_from_the_copy() {
    let a = TestServer::start_federating("127.0.0.78").await;
    let b = TestServer::start_federating_with(Backend::Sqlite, "127.0.0.79", |config| {
        config.media.max_upload_bytes = 1_000_000;
    })
    .await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let a_name = a.config.server_name.to_string();
    let b_name = b.config.server_name.to_string();

    // Bob's server fetches Alice's picture from A and keeps a copy.
    let cat = picture(120, 90);
    let body = alice.upload("image/png", Some("cat.png"), cat.clone()).await.ok();
    let cat_uri = body["content_uri"].as_str().unwrap().to_owned();
    let (_, cat_id) = mxc_parts(&cat_uri);
    let download = bob.download(&cat_uri).await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.header("content-type"), Some("image/png"));
    assert!(download.header("content-disposition").unwrap().contains("cat.png"));
    assert_eq!(download.bytes, cat);
    let copy = b
        .services()
        .store
        .get_media(&ServerName::parse(&a_name).unwrap(), &cat_id)
        .await
        .unwrap()
        .expect("a copy is kept");
    assert_eq!(copy.uploader.localpart(), REMOTE_MEDIA_OWNER);
    assert_eq!(copy.content.unwrap().size, cat.len() as u64);
    // Thumbnails of the copy are made here.
    let thumbnail = bob.thumbnail(&cat_uri, "width=32&height=32&method=crop").await;
    assert_eq!(thumbnail.status, StatusCode::OK);
    assert_eq!(dimensions(&thumbnail.bytes), (32, 32));
    // The legacy unauthenticated endpoint fetches nothing from other servers.
    let legacy = Api::new(&b.base_url)
        .get_raw(&format!("/_matrix/media/v3/download/{a_name}/{cat_id}"))
        .await;
    assert_eq!(legacy.status, StatusCode::NOT_FOUND);

    // Alice's server fetches Bob's, and asks B for a thumbnail of media it has no copy of.
    let dog = picture(64, 48);
    let dog_uri = bob.upload_ok("image/png", dog.clone()).await;
    assert_eq!(alice.download(&dog_uri).await.ok(), dog);
    let fox_uri = bob.upload_ok("image/png", picture(400, 300)).await;
    let (_, fox_id) = mxc_parts(&fox_uri);
    let thumbnail = alice.thumbnail(&fox_uri, "width=100&height=100&method=scale").await;
    assert_eq!(thumbnail.status, StatusCode::OK, "{:?}", thumbnail.json());
    assert_eq!(thumbnail.header("content-type"), Some("image/png"));
    assert_eq!(dimensions(&thumbnail.bytes), (100, 75));
    assert!(!stored(&a, &b_name, &fox_id).await, "a thumbnail keeps no copy of the original");

    // Media over B's size limit is refused, and nothing is kept.
    let big_uri = alice.upload_ok("application/octet-stream", vec![7u8; 1_500_000]).await;
    let (_, big_id) = mxc_parts(&big_uri);
    bob.download(&big_uri).await.expect_error(413, "M_TOO_LARGE");
    assert!(!stored(&b, &a_name, &big_id).await);
    // Unknown media of the other server is not found.
    bob.download(&format!("mxc://{a_name}/NoSuchMedia")).await.expect_error(404, "M_NOT_FOUND");
    assert!(!stored(&b, &a_name, "NoSuchMedia").await);

    // With A gone, B still serves its copy.
    a.stop().await;
    assert_eq!(bob.download(&cat_uri).await.ok(), cat);
    let unreachable = bob.download(&format!("mxc://{a_name}/NeverFetched")).await;
    unreachable.expect_error(404, "M_NOT_FOUND");
    assert!(unreachable.json()["error"].as_str().unwrap().contains("could not be reached"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_media_is_multipart_and_of_this_server_only() {
    let a = TestServer::start_federating("127.0.0.60").await;
    let peer = TestPeer::start_on("127.0.0.61".parse().unwrap()).await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let picture = picture(80, 60);
    let body = alice.upload("image/png", Some("frog.png"), picture.clone()).await.ok();
    let (_, media_id) = mxc_parts(body["content_uri"].as_str().unwrap());
    let destination = ServerName::parse(a.config.server_name.as_str()).unwrap();
    let base = a.tls_base_url.as_deref().unwrap();
    let (peer_ref, destination) = (&peer, &destination);
    let ask = move |signing: Signing, path: String| async move {
        peer_ref.request_with(signing, destination, base, Method::GET, &path, None).await
    };

    let answer =
        ask(Signing::Valid, format!("/_matrix/federation/v1/media/download/{media_id}")).await;
    assert_eq!(answer.status, StatusCode::OK);
    let content_type = answer.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("multipart/mixed; boundary="), "{content_type}");
    let part = multipart::parse(content_type, &answer.body).unwrap();
    assert_eq!(part.bytes, picture);
    assert_eq!(part.content_type.as_deref(), Some("image/png"));
    assert_eq!(part.filename.as_deref(), Some("frog.png"));
    // Strictly framed: exactly two parts, the first empty JSON metadata.
    let text = String::from_utf8_lossy(&answer.body);
    assert!(
        text.starts_with("--") && text.contains("Content-Type: application/json\r\n\r\n{}\r\n")
    );

    let path =
        format!("/_matrix/federation/v1/media/thumbnail/{media_id}?width=32&height=32&method=crop");
    let thumbnail = ask(Signing::Valid, path).await;
    assert_eq!(thumbnail.status, StatusCode::OK);
    let part =
        multipart::parse(thumbnail.headers["content-type"].to_str().unwrap(), &thumbnail.body)
            .unwrap();
    assert_eq!(dimensions(&part.bytes), (32, 32));

    let unknown =
        ask(Signing::Valid, "/_matrix/federation/v1/media/download/Nothing".to_owned()).await;
    assert_eq!(
        (unknown.status, unknown.errcode().as_deref()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
    );
    let unsigned =
        ask(Signing::NoHeader, format!("/_matrix/federation/v1/media/download/{media_id}")).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
}

/// A `multipart/mixed` answer around `media`.
fn multipart_reply(media: &[u8]) -> Reply {
    let mut body = b"--frontier\r\nContent-Type: application/json\r\n\r\n{}\r\n--frontier\r\n\
        Content-Type: text/plain\r\nContent-Disposition: attachment; filename=notes.txt\r\n\r\n"
        .to_vec();
    body.extend_from_slice(media);
    body.extend_from_slice(b"\r\n--frontier--\r\n");
    Reply::raw(StatusCode::OK, "multipart/mixed; boundary=frontier", body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_media_servers_give_clear_errors_and_leave_nothing_stored() {
    let a = TestServer::start_federating_with(Backend::Sqlite, "127.0.0.62", |config| {
        config.media.max_upload_bytes = 64 * 1024;
        config.media.remote_cache_quota_bytes = 50_000;
    })
    .await;
    let peer = TestPeer::start_on("127.0.0.63".parse().unwrap()).await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let origin = peer.server_name().to_string();
    let thirty_kb = Arc::new(vec![b'x'; 30_000]);
    let served = thirty_kb.clone();
    peer.handle(Method::GET, "/_matrix/federation/v1/media/download/{id}", move |request| {
        match request.param("id") {
            "huge" => multipart_reply(&vec![0u8; 100_000]),
            "garbled" => Reply::raw(
                StatusCode::OK,
                "multipart/mixed; boundary=frontier",
                "--frontier\r\n\r\n{}\r\n--frontier\r\n--frontier",
            ),
            "json" => Reply::json(StatusCode::OK, &serde_json::json!({ "file": "none" })),
            "redirect" => Reply::raw(
                StatusCode::OK,
                "multipart/mixed; boundary=frontier",
                "--frontier\r\n\r\n{}\r\n--frontier\r\nLocation: https://127.0.0.1/x\r\n\r\n\r\n--frontier--",
            ),
            "missing" => Reply::error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such media"),
            "first" | "second" => multipart_reply(&served),
            _ => Reply::error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "unknown endpoint"),
        }
    });
    peer.handle(Method::GET, "/_matrix/media/v3/download/{server}/{id}", |request| {
        match request.param("id") {
            "old" => Reply::raw(StatusCode::OK, "text/plain", "legacy bytes"),
            _ => Reply::raw(StatusCode::OK, "application/octet-stream", vec![1u8; 100_000]),
        }
    });
    let (alice, origin_ref) = (&alice, &origin);
    let download = move |id: &'static str| async move {
        alice.download(&format!("mxc://{origin_ref}/{id}")).await
    };

    download("huge").await.expect_error(413, "M_TOO_LARGE");
    for id in ["garbled", "json", "redirect"] {
        let refused = download(id).await;
        refused.expect_error(400, "M_UNKNOWN");
        assert!(refused.json()["error"].as_str().unwrap().contains("invalid media"));
    }
    download("missing").await.expect_error(404, "M_NOT_FOUND");
    download("oldhuge").await.expect_error(413, "M_TOO_LARGE");
    for id in ["huge", "garbled", "json", "redirect", "missing", "oldhuge"] {
        assert!(!stored(&a, &origin, id).await, "{id} was kept");
    }

    // An old server: the legacy path is tried after the federation one, and the copy kept.
    let old = download("old").await;
    assert_eq!(old.status, StatusCode::OK);
    assert_eq!(old.bytes, b"legacy bytes");
    assert_eq!(old.header("content-type"), Some("text/plain"));
    assert_eq!(download("old").await.ok(), b"legacy bytes");
    let legacy_requests =
        peer.received_matching(&Method::GET, "/_matrix/media/v3/download/{server}/{id}");
    let old_requests =
        legacy_requests.iter().filter(|request| request.param("id") == "old").count();
    assert_eq!(old_requests, 1, "the second download came from the copy");
    let legacy = &legacy_requests[0];
    assert!(legacy.query.as_deref().unwrap_or_default().contains("allow_remote=false"));

    // The cache quota: the first copy fits, the second is passed on but not kept.
    assert_eq!(download("first").await.ok(), *thirty_kb);
    assert_eq!(download("second").await.ok(), *thirty_kb);
    assert!(stored(&a, &origin, "first").await);
    assert!(!stored(&a, &origin, "second").await);
    // Bad media IDs are refused before anything is asked.
    peer.clear_received();
    download("bad.id").await.expect_error(404, "M_NOT_FOUND");
    assert!(peer.received().is_empty());
}
