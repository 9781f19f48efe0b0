//! The media repository over HTTP: uploads (direct and asynchronous), authenticated and legacy
//! downloads, thumbnails, limits and quotas, hostile images, safe serving headers, URL
//! previews and the admin commands.

use std::{
    io::Cursor,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use image::{
    AnimationDecoder, Delay, DynamicImage, Frame, GenericImageView, ImageFormat, Rgba, RgbaImage,
    codecs::gif::{GifDecoder, GifEncoder, Repeat},
};
use rhizome_core::clock::now_millis;
use rhizome_testkit::{Api, Backend, TestServer, encode, mxc_parts};
use serde_json::json;

/// A `width` × `height` image with a gradient, encoded in `format`.
fn picture(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, y| {
        Rgba([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8, 255])
    });
    let image = if format == ImageFormat::Jpeg {
        DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(image).to_rgb8())
    } else {
        DynamicImage::ImageRgba8(image)
    };
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), format).expect("the test image encodes");
    bytes
}

fn animated_gif(frames: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder.set_repeat(Repeat::Infinite).expect("the animation loops");
        for index in 0..frames {
            let image = RgbaImage::from_pixel(200, 100, Rgba([index * 80, 40, 200, 255]));
            let delay = Delay::from_numer_denom_ms(100, 1);
            encoder.encode_frame(Frame::from_parts(image, 0, 0, delay)).expect("the frame encodes");
        }
    }
    bytes
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = 0xffff_ffffu32;
    for byte in kind.iter().chain(data) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_be_bytes());
}

/// A valid 60-byte PNG claiming 100 000 × 100 000 pixels (40 GB decoded).
fn png_bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = 100_000u32.to_be_bytes().to_vec();
    header.extend_from_slice(&100_000u32.to_be_bytes());
    header.extend_from_slice(&[8, 6, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &header);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    image::load_from_memory(bytes).expect("a decodable image").dimensions()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_image_downloads_identically_with_authentication() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let bytes = picture(320, 200, ImageFormat::Png);
    let body = alice.upload("image/png", Some("café.png"), bytes.clone()).await.ok();
    let mxc = body["content_uri"].as_str().unwrap().to_owned();
    let (server_name, media_id) = mxc_parts(&mxc);
    assert_eq!(server_name, server.config.server_name.as_str());

    let download = bob.download(&mxc).await;
    assert_eq!(download.header("content-type"), Some("image/png"));
    let disposition = download.header("content-disposition").unwrap().to_owned();
    assert!(disposition.starts_with("inline"), "{disposition}");
    assert!(disposition.contains("caf%C3%A9.png"), "{disposition}");
    assert_eq!(download.ok(), bytes);

    let named = bob
        .get_raw(&format!("/_matrix/client/v1/media/download/{server_name}/{media_id}/other.png"))
        .await;
    assert!(named.header("content-disposition").unwrap().contains("other.png"));
    assert_eq!(named.ok(), bytes);

    // No token, no media.
    Api::new(&server.base_url).download(&mxc).await.expect_error(401, "M_MISSING_TOKEN");
    bob.download(&format!("mxc://{server_name}/nosuchmedia"))
        .await
        .expect_error(404, "M_NOT_FOUND");
    bob.download("mxc://elsewhere.example/abc").await.expect_error(404, "M_NOT_FOUND");

    let config = bob.get("/_matrix/client/v1/media/config").await.ok();
    assert_eq!(config["m.upload.size"], json!(50 * 1024 * 1024));
    let legacy_config = bob.get("/_matrix/media/v3/config").await.ok();
    assert_eq!(legacy_config["m.upload.size"], json!(50 * 1024 * 1024));

    // Identical uploads are stored once, under their SHA-256.
    let again = bob.upload_ok("image/png", bytes.clone()).await;
    assert_ne!(again, mxc);
    assert_eq!(bob.download(&again).await.ok(), bytes);
    let services = server.services();
    let first = services.store.get_media(&server.config.server_name, &media_id).await.unwrap();
    let (_, again_id) = mxc_parts(&again);
    let second = services.store.get_media(&server.config.server_name, &again_id).await.unwrap();
    let (first, second) = (first.unwrap().content.unwrap(), second.unwrap().content.unwrap());
    assert_eq!(first.sha256, second.sha256);
    let hash = &first.sha256;
    let path = server.config.data_dir.join("media").join(&hash[0..2]).join(&hash[2..4]).join(hash);
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    let usage = services.store.media_usage(ruma::user_id!("@bob:localhost")).await.unwrap();
    assert_eq!(usage, bytes.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_endpoints_serve_only_media_from_before_the_freeze() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let mxc = alice.upload_ok("image/png", picture(64, 64, ImageFormat::Png)).await;
    let (server_name, media_id) = mxc_parts(&mxc);
    let anonymous = Api::new(&server.base_url);
    for path in [
        format!("/_matrix/media/v3/download/{server_name}/{media_id}"),
        format!("/_matrix/media/r0/download/{server_name}/{media_id}"),
        format!("/_matrix/media/v3/download/{server_name}/{media_id}/a.png"),
        format!("/_matrix/media/v3/thumbnail/{server_name}/{media_id}?width=32&height=32"),
    ] {
        anonymous.get_raw(&path).await.expect_error(404, "M_NOT_FOUND");
        // A token does not make the legacy endpoints serve new media either.
        alice.get_raw(&path).await.expect_error(404, "M_NOT_FOUND");
    }
    assert_eq!(alice.download(&mxc).await.status.as_u16(), 200);

    // Media made before the freeze is still served there.
    let freeze = now_millis() + 3_600_000;
    let old = TestServer::start_with(Backend::Sqlite, |config| {
        config.media.legacy_freeze_ts = Some(freeze);
    })
    .await;
    let carol = Api::new_user(&old.base_url, "carol").await;
    let bytes = picture(64, 48, ImageFormat::Png);
    let mxc = carol.upload_ok("image/png", bytes.clone()).await;
    let (server_name, media_id) = mxc_parts(&mxc);
    let anonymous = Api::new(&old.base_url);
    let legacy =
        anonymous.get_raw(&format!("/_matrix/media/v3/download/{server_name}/{media_id}")).await;
    assert_eq!(legacy.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(legacy.ok(), bytes);
    let thumbnail = anonymous
        .get_raw(&format!(
            "/_matrix/media/v3/thumbnail/{server_name}/{media_id}?width=32&height=32&method=crop"
        ))
        .await;
    assert_eq!(dimensions(&thumbnail.ok()), (32, 32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_have_the_requested_dimensions_and_method() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let png = alice.upload_ok("image/png", picture(640, 480, ImageFormat::Png)).await;

    let crop = alice.thumbnail(&png, "width=100&height=100&method=crop").await;
    assert_eq!(crop.header("content-type"), Some("image/png"));
    assert!(crop.header("content-security-policy").unwrap().starts_with("sandbox"));
    let crop = crop.ok();
    assert_eq!(dimensions(&crop), (100, 100));
    let scale = alice.thumbnail(&png, "width=100&height=100&method=scale").await.ok();
    assert_eq!(dimensions(&scale), (100, 75));
    let tall = alice.thumbnail(&png, "width=50&height=120&method=crop").await.ok();
    assert_eq!(dimensions(&tall), (50, 120));
    // Never enlarged.
    let big = alice.thumbnail(&png, "width=1000&height=1000&method=scale").await.ok();
    assert_eq!(dimensions(&big), (640, 480));
    // Made once, then served from the cache.
    assert_eq!(alice.thumbnail(&png, "width=100&height=100&method=crop").await.ok(), crop);
    let (_, media_id) = mxc_parts(&png);
    let stored = server.services().store.list_thumbnails(&server.config.server_name, &media_id);
    let stored = stored.await.unwrap();
    assert!(stored.iter().any(|t| (t.width, t.height, t.method.as_str()) == (100, 100, "crop")));
    alice.thumbnail(&png, "width=0&height=10").await.expect_error(400, "M_INVALID_PARAM");

    // JPEG, GIF and WebP sources.
    for (format, content_type, expected) in [
        (ImageFormat::Jpeg, "image/jpeg", "image/jpeg"),
        (ImageFormat::Gif, "image/gif", "image/png"),
        (ImageFormat::WebP, "image/webp", "image/png"),
    ] {
        let mxc = alice.upload_ok(content_type, picture(300, 300, format)).await;
        let thumbnail = alice.thumbnail(&mxc, "width=64&height=32&method=crop").await;
        assert_eq!(thumbnail.header("content-type"), Some(expected), "{format:?}");
        assert_eq!(dimensions(&thumbnail.ok()), (64, 32), "{format:?}");
    }

    // Animated thumbnails when asked for, still ones otherwise.
    let gif = alice.upload_ok("image/gif", animated_gif(4)).await;
    let animated = alice.thumbnail(&gif, "width=100&height=50&method=scale&animated=true").await;
    assert_eq!(animated.header("content-type"), Some("image/gif"));
    let decoder = GifDecoder::new(Cursor::new(animated.ok())).unwrap();
    let frames = decoder.into_frames().collect_frames().unwrap();
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[0].buffer().dimensions(), (100, 50));
    let still = alice.thumbnail(&gif, "width=100&height=50&method=scale&animated=false").await;
    assert_eq!(still.header("content-type"), Some("image/png"));
    assert_eq!(dimensions(&still.ok()), (100, 50));
}

#[tokio::test]
async fn configured_sizes_are_made_at_upload_and_cap_the_others() {
    use rhizome_core::config::{ThumbnailMethod, ThumbnailSize};
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.media.thumbnail_sizes = vec![
            ThumbnailSize { width: 32, height: 32, method: ThumbnailMethod::Crop },
            ThumbnailSize { width: 96, height: 96, method: ThumbnailMethod::Crop },
        ];
        config.media.max_dynamic_thumbnails = 1;
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let png = alice.upload_ok("image/png", picture(640, 480, ImageFormat::Png)).await;
    let (_, media_id) = mxc_parts(&png);
    let stored = || async {
        let mut sizes: Vec<(u32, u32, String)> = server
            .services()
            .store
            .list_thumbnails(&server.config.server_name, &media_id)
            .await
            .unwrap()
            .into_iter()
            .map(|thumbnail| (thumbnail.width, thumbnail.height, thumbnail.method))
            .collect();
        sizes.sort();
        sizes
    };
    // The configured sizes are made in the background right after the upload.
    let configured = [(32, 32, "crop".to_owned()), (96, 96, "crop".to_owned())];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stored().await != configured {
        assert!(
            std::time::Instant::now() < deadline,
            "configured thumbnails: {:?}",
            stored().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One size of the client's own choosing is made; past that, the nearest configured one.
    let own = alice.thumbnail(&png, "width=50&height=50&method=crop").await.ok();
    assert_eq!(dimensions(&own), (50, 50));
    let capped = alice.thumbnail(&png, "width=60&height=60&method=crop").await.ok();
    assert_eq!(dimensions(&capped), (96, 96));
    assert_eq!(stored().await.len(), 3, "{:?}", stored().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_uploads_arrive_once() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let created = alice.post("/_matrix/media/v1/create", json!({})).await.ok();
    let mxc = created["content_uri"].as_str().unwrap().to_owned();
    assert!(created["unused_expires_at"].as_u64().unwrap() > now_millis() as u64);
    let (server_name, media_id) = mxc_parts(&mxc);
    let path = format!("/_matrix/client/v1/media/download/{server_name}/{media_id}");

    // Not there yet.
    alice.get_raw(&format!("{path}?timeout_ms=100")).await.expect_error(504, "M_NOT_YET_UPLOADED");
    // A download waiting for it gets it when it arrives.
    let waiting = {
        let bob = bob.clone();
        let path = format!("{path}?timeout_ms=20000");
        tokio::spawn(async move { bob.get_raw(&path).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bytes = picture(40, 40, ImageFormat::Png);
    bob.upload_to(&mxc, "image/png", bytes.clone()).await.expect_error(403, "M_FORBIDDEN");
    alice.upload_to(&mxc, "image/png", bytes.clone()).await.ok();
    assert_eq!(waiting.await.unwrap().ok(), bytes);
    assert_eq!(alice.download(&mxc).await.ok(), bytes);

    // The second upload to the same ID is refused.
    alice
        .upload_to(&mxc, "image/png", b"other".to_vec())
        .await
        .expect_error(409, "M_CANNOT_OVERWRITE_MEDIA");
    assert_eq!(alice.download(&mxc).await.ok(), bytes);
    alice
        .upload_to(&format!("mxc://{server_name}/unknown"), "image/png", bytes.clone())
        .await
        .expect_error(404, "M_NOT_FOUND");

    // The number of IDs waiting for content is limited.
    for _ in 0..10 {
        bob.post("/_matrix/media/v1/create", json!({})).await.ok();
    }
    bob.post("/_matrix/media/v1/create", json!({})).await.expect_error(429, "M_LIMIT_EXCEEDED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_uploads_are_too_large_and_quotas_hold() {
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.media.max_upload_bytes = 1000;
        config.media.quota_bytes_per_user = 2500;
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    alice.upload("text/plain", None, vec![b'x'; 1001]).await.expect_error(413, "M_TOO_LARGE");
    // Far past the limit, the body is not even read in full.
    alice.upload("text/plain", None, vec![b'x'; 100_000]).await.expect_error(413, "M_TOO_LARGE");
    let created = alice.post("/_matrix/media/v1/create", json!({})).await.ok();
    let pending = created["content_uri"].as_str().unwrap().to_owned();
    alice
        .upload_to(&pending, "text/plain", vec![b'x'; 1001])
        .await
        .expect_error(413, "M_TOO_LARGE");
    let config = alice.get("/_matrix/client/v1/media/config").await.ok();
    assert_eq!(config["m.upload.size"], json!(1000));

    let first = alice.upload_ok("text/plain", vec![b'a'; 1000]).await;
    alice.upload_ok("text/plain", vec![b'b'; 1000]).await;
    alice.upload("text/plain", None, vec![b'c'; 1000]).await.expect_error(403, "M_FORBIDDEN");
    alice
        .upload_to(&pending, "text/plain", vec![b'c'; 1000])
        .await
        .expect_error(403, "M_FORBIDDEN");
    alice.upload_ok("text/plain", vec![b'd'; 500]).await;
    alice.upload("text/plain", None, vec![b'e'; 1]).await.expect_error(403, "M_FORBIDDEN");
    // Quotas are per user.
    let bob = Api::new_user(&server.base_url, "bob").await;
    bob.upload_ok("text/plain", vec![b'a'; 1000]).await;
    // Deleting media gives its bytes back.
    let report = rhizome::admin::delete_media(server.services(), &first).await.unwrap();
    assert!(report.contains("deleted"), "{report}");
    alice.upload_to(&pending, "text/plain", vec![b'f'; 1000]).await.ok();
    alice.upload("text/plain", None, vec![b'g'; 1]).await.expect_error(403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_images_and_decompression_bombs_give_errors() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bomb = png_bomb();
    let bomb_mxc = alice.upload_ok("image/png", bomb.clone()).await;
    let started = std::time::Instant::now();
    alice
        .thumbnail(&bomb_mxc, "width=32&height=32&method=crop")
        .await
        .expect_error(413, "M_TOO_LARGE");
    // Remembered: asking again does not decode again.
    alice.thumbnail(&bomb_mxc, "width=64&height=64").await.expect_error(413, "M_TOO_LARGE");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The upload itself is still served as it was sent.
    assert_eq!(alice.download(&bomb_mxc).await.ok(), bomb);

    let mut corrupt = picture(300, 300, ImageFormat::Png);
    corrupt.truncate(corrupt.len() / 3);
    let corrupt_mxc = alice.upload_ok("image/png", corrupt).await;
    alice.thumbnail(&corrupt_mxc, "width=32&height=32").await.expect_error(404, "M_NOT_FOUND");
    let text = alice.upload_ok("image/png", b"this is not an image".to_vec()).await;
    alice.thumbnail(&text, "width=32&height=32").await.expect_error(404, "M_NOT_FOUND");

    // The server is unharmed.
    let good = alice.upload_ok("image/png", picture(100, 100, ImageFormat::Png)).await;
    assert_eq!(dimensions(&alice.thumbnail(&good, "width=50&height=50").await.ok()), (50, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_content_is_served_as_an_attachment() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let html = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    for (content_type, name) in [
        ("text/html", "page.html"),
        ("image/svg+xml", "drawing.svg"),
        ("application/javascript", "code.js"),
        ("text/html; charset=utf-8", "page2.html"),
        ("application/xhtml+xml", "page.xhtml"),
    ] {
        let body = alice.upload(content_type, Some(name), html.clone()).await.ok();
        let mxc = body["content_uri"].as_str().unwrap();
        let download = alice.download(mxc).await;
        assert_eq!(download.header("content-type"), Some(content_type));
        assert_eq!(
            download.header("content-disposition"),
            Some(format!("attachment; filename={name}").as_str())
        );
        let csp = download.header("content-security-policy").unwrap();
        assert!(csp.starts_with("sandbox") && csp.contains("script-src 'none'"), "{csp}");
        assert_eq!(download.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(download.header("cross-origin-resource-policy"), Some("cross-origin"));
        assert_eq!(download.ok(), html);
    }
    // Without a usable type, the bytes are served as an octet stream attachment.
    let untyped = alice.upload_ok("not a type", html.clone()).await;
    let download = alice.download(&untyped).await;
    assert_eq!(download.header("content-type"), Some("application/octet-stream"));
    assert!(download.header("content-disposition").unwrap().starts_with("attachment"));
    let text = alice.upload_ok("text/plain", b"hello".to_vec()).await;
    let download = alice.download(&text).await;
    assert_eq!(download.header("content-disposition"), Some("inline"));
    assert_eq!(download.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_previews_refuse_private_addresses() {
    // A page on loopback that must never be fetched.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let disabled = TestServer::start().await;
    let alice = Api::new_user(&disabled.base_url, "alice").await;
    let query = encode(&format!("http://127.0.0.1:{port}/"));
    let path = format!("/_matrix/client/v1/media/preview_url?url={query}");
    alice.get(&path).await.expect_error(403, "M_FORBIDDEN");

    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.media.url_preview.enabled = true;
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/page"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://0x7f000001:{port}/"),
        format!("http://2130706433:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.1.2.3/".to_owned(),
        "http://[fd00::1]/".to_owned(),
    ] {
        let path = format!("/_matrix/client/v1/media/preview_url?url={}", encode(&url));
        alice.get(&path).await.expect_error(403, "M_FORBIDDEN");
        let legacy = format!("/_matrix/media/v3/preview_url?url={}", encode(&url));
        alice.get(&legacy).await.expect_error(403, "M_FORBIDDEN");
    }
    let ftp = encode("ftp://example.org/");
    alice
        .get(&format!("/_matrix/client/v1/media/preview_url?url={ftp}"))
        .await
        .expect_error(400, "M_INVALID_PARAM");
    Api::new(&server.base_url).get(&path).await.expect_error(401, "M_MISSING_TOKEN");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "a private address was connected to");
}

/// A tiny web site on loopback: `/page` (OpenGraph tags and an image), `/image.png`,
/// `/to-page` (a redirect to `/page`), `/to-private` (a redirect to a private address) and
/// `/endless` (a body far over the size limit). Counts the requests it answers.
async fn fixture_site() -> (u16, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let image = picture(120, 60, ImageFormat::Png);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let image = image.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let read = stream.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..read]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (head, body): (String, Vec<u8>) = match path.as_str() {
                    "/page" => (
                        "200 OK\r\nContent-Type: text/html; charset=utf-8".into(),
                        br#"<html><head><title>Plain title</title>
                            <meta property="og:title" content="Tenants' assembly">
                            <meta property="og:description" content="Thursday, 7pm, the hall">
                            <meta property="og:image" content="/image.png"></head></html>"#
                            .to_vec(),
                    ),
                    "/image.png" => ("200 OK\r\nContent-Type: image/png".into(), image),
                    "/to-page" => ("302 Found\r\nLocation: /page".into(), Vec::new()),
                    "/to-private" => {
                        ("302 Found\r\nLocation: http://10.11.12.13/".into(), Vec::new())
                    }
                    "/endless" => (
                        "200 OK\r\nContent-Type: text/html".into(),
                        [
                            b"<html><head><title>Endless</title></head><body>".to_vec(),
                            vec![b'x'; 300_000],
                        ]
                        .concat(),
                    ),
                    _ => ("404 Not Found".into(), Vec::new()),
                };
                let response = format!(
                    "HTTP/1.1 {head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    (port, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_previews_read_open_graph_follow_checked_redirects_and_cache() {
    let (port, requests) = fixture_site().await;
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.media.url_preview.enabled = true;
        config.media.url_preview.max_page_bytes = 64 * 1024;
        config.media.url_preview.allowed_addresses = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let preview = |path: &str| {
        let url = encode(&format!("http://127.0.0.1:{port}{path}"));
        format!("/_matrix/client/v1/media/preview_url?url={url}")
    };

    // A redirect to the page, then its image: three requests.
    let page = alice.get(&preview("/to-page")).await.ok();
    assert_eq!(page["og:title"], "Tenants' assembly");
    assert_eq!(page["og:description"], "Thursday, 7pm, the hall");
    assert_eq!(
        (page["og:image:width"].as_u64(), page["og:image:height"].as_u64()),
        (Some(120), Some(60))
    );
    // The image is served from this server, not from the site.
    let image = page["og:image"].as_str().unwrap();
    assert!(image.starts_with("mxc://localhost/"), "{image}");
    assert_eq!(dimensions(&alice.download(image).await.ok()), (120, 60));
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    // Cached: asking again fetches nothing.
    assert_eq!(alice.get(&preview("/to-page")).await.ok(), page);
    assert_eq!(requests.load(Ordering::SeqCst), 3);

    // A redirect into a private network is refused at the hop, the allowed address or not.
    alice.get(&preview("/to-private")).await.expect_error(403, "M_FORBIDDEN");
    assert_eq!(requests.load(Ordering::SeqCst), 4);
    // A body over the limit is cut, not read to the end.
    let endless = alice.get(&preview("/endless")).await.ok();
    assert_eq!(endless["og:title"], "Endless");
    // Only the allowed address: loopback by another address is still refused.
    let other = encode(&format!("http://127.0.0.2:{port}/page"));
    alice
        .get(&format!("/_matrix/client/v1/media/preview_url?url={other}"))
        .await
        .expect_error(403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_delete_and_purge_media() {
    let server = TestServer::start_with(Backend::Postgres, |_| {}).await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bytes = picture(200, 100, ImageFormat::Png);
    let mxc = alice.upload_ok("image/png", bytes.clone()).await;
    let twin = alice.upload_ok("image/png", bytes.clone()).await;
    alice.thumbnail(&mxc, "width=20&height=20&method=crop").await.ok();
    let services = server.services();
    let (_, media_id) = mxc_parts(&mxc);
    let sha256 = services.store.get_media(&server.config.server_name, &media_id).await.unwrap();
    let sha256 = sha256.unwrap().content.unwrap().sha256;
    let file =
        server.config.data_dir.join("media").join(&sha256[0..2]).join(&sha256[2..4]).join(&sha256);

    rhizome::admin::delete_media(services, &mxc).await.unwrap();
    alice.download(&mxc).await.expect_error(404, "M_NOT_FOUND");
    alice.thumbnail(&mxc, "width=20&height=20&method=crop").await.expect_error(404, "M_NOT_FOUND");
    // The twin shares the file, which therefore stays.
    assert!(file.exists());
    assert_eq!(alice.download(&twin).await.ok(), bytes);
    assert!(rhizome::admin::delete_media(services, &mxc).await.is_err());
    assert!(rhizome::admin::delete_media(services, "https://not/mxc").await.is_err());

    // Recently used media survives a purge of media unused for 30 days…
    let report = rhizome::admin::purge_media(services, "30d").await.unwrap();
    assert!(report.starts_with("deleted 0 media items"), "{report}");
    assert_eq!(alice.download(&twin).await.ok(), bytes);
    // …and goes in a purge of media unused for no time at all, with its file.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = rhizome::admin::purge_media(services, "0s").await.unwrap();
    assert!(report.starts_with("deleted 1 media items ("), "{report}");
    alice.download(&twin).await.expect_error(404, "M_NOT_FOUND");
    assert!(!file.exists());
}
