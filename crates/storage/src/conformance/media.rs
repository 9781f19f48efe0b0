//! Conformance checks for media storage: every [`MediaStore`](crate::MediaStore) method.

// These are tests run by each backend's test crate: a failed step is a panic.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ruma::{server_name, user_id};

use crate::{
    DataStore,
    media::{
        MediaContent, MediaInsert, MediaRecord, PendingCompletion, ThumbnailKey, ThumbnailRecord,
    },
};

/// The media checks, for [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! media_conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            media_is_stored_found_and_touched,
            media_quota_is_enforced_and_given_back,
            pending_media_is_completed_once,
            thumbnails_are_kept_per_size_and_method,
            media_deletion_reports_unreferenced_content,
            unused_media_and_lapsed_reservations_are_found,
            url_previews_are_cached_by_hash,
        );
    };
}

fn content(sha256: &str, size: u64) -> MediaContent {
    MediaContent {
        content_type: Some("image/png".into()),
        filename: Some("cat.png".into()),
        size,
        sha256: sha256.into(),
        uploaded_ts: 1_000,
    }
}

fn uploaded(media_id: &str, uploader: &str, sha256: &str, size: u64) -> MediaRecord {
    MediaRecord {
        origin: server_name!("example.org").to_owned(),
        media_id: media_id.into(),
        uploader: uploader.try_into().unwrap(),
        created_ts: 1_000,
        last_access_ts: 1_000,
        content: Some(content(sha256, size)),
        expires_ts: None,
        counts_toward_quota: true,
    }
}

fn pending(media_id: &str, uploader: &str, expires_ts: i64) -> MediaRecord {
    MediaRecord {
        content: None,
        expires_ts: Some(expires_ts),
        ..uploaded(media_id, uploader, "", 0)
    }
}

fn thumbnail(media_id: &str, width: u32, method: &str, sha256: &str) -> ThumbnailRecord {
    ThumbnailRecord {
        origin: server_name!("example.org").to_owned(),
        media_id: media_id.into(),
        width,
        height: width,
        method: method.into(),
        animated: false,
        content_type: "image/png".into(),
        sha256: sha256.into(),
        size: 10,
        created_ts: 2_000,
    }
}

fn key(width: u32, method: &str, animated: bool) -> ThumbnailKey {
    ThumbnailKey { width, height: width, method: method.into(), animated }
}

/// Uploaded media is found again as stored, an ID is taken once, and touching only moves the
/// last-access time forwards.
pub async fn media_is_stored_found_and_touched(store: Arc<dyn DataStore>) {
    let origin = server_name!("example.org");
    let record = uploaded("abc", "@alice:example.org", "aa11", 5);
    assert_eq!(store.insert_media(&record, None).await.unwrap(), MediaInsert::Stored);
    assert_eq!(store.get_media(origin, "abc").await.unwrap(), Some(record.clone()));
    assert_eq!(store.get_media(origin, "other").await.unwrap(), None);
    assert_eq!(store.get_media(server_name!("elsewhere.org"), "abc").await.unwrap(), None);
    let again = uploaded("abc", "@bob:example.org", "bb22", 7);
    assert_eq!(store.insert_media(&again, None).await.unwrap(), MediaInsert::Exists);
    assert_eq!(store.get_media(origin, "abc").await.unwrap(), Some(record.clone()));
    // The failed insert charged nothing.
    assert_eq!(store.media_usage(user_id!("@bob:example.org")).await.unwrap(), 0);
    // No content type or file name is fine.
    let mut bare = uploaded("bare", "@alice:example.org", "cc33", 1);
    if let Some(content) = bare.content.as_mut() {
        content.content_type = None;
        content.filename = None;
    }
    assert_eq!(store.insert_media(&bare, None).await.unwrap(), MediaInsert::Stored);
    assert_eq!(store.get_media(origin, "bare").await.unwrap(), Some(bare));

    store.touch_media(origin, "abc", 5_000).await.unwrap();
    assert_eq!(store.get_media(origin, "abc").await.unwrap().unwrap().last_access_ts, 5_000);
    store.touch_media(origin, "abc", 4_000).await.unwrap();
    assert_eq!(store.get_media(origin, "abc").await.unwrap().unwrap().last_access_ts, 5_000);
    store.touch_media(origin, "missing", 4_000).await.unwrap();
    assert!(store.content_referenced("aa11").await.unwrap());
    assert!(!store.content_referenced("ffff").await.unwrap());
}

/// Usage grows with each counted upload up to the quota, never past it, and deletion gives it
/// back; uncounted media is free.
pub async fn media_quota_is_enforced_and_given_back(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    let origin = server_name!("example.org");
    assert_eq!(store.media_usage(alice).await.unwrap(), 0);
    let first = uploaded("q1", alice.as_str(), "h1", 60);
    assert_eq!(store.insert_media(&first, Some(100)).await.unwrap(), MediaInsert::Stored);
    assert_eq!(store.media_usage(alice).await.unwrap(), 60);
    let second = uploaded("q2", alice.as_str(), "h2", 50);
    assert_eq!(store.insert_media(&second, Some(100)).await.unwrap(), MediaInsert::QuotaExceeded);
    assert_eq!(store.get_media(origin, "q2").await.unwrap(), None);
    assert_eq!(store.media_usage(alice).await.unwrap(), 60);
    // Exactly reaching the quota is allowed.
    let exact = uploaded("q3", alice.as_str(), "h3", 40);
    assert_eq!(store.insert_media(&exact, Some(100)).await.unwrap(), MediaInsert::Stored);
    assert_eq!(store.media_usage(alice).await.unwrap(), 100);
    // Without a quota, usage still grows.
    let unlimited = uploaded("q4", alice.as_str(), "h4", 1_000);
    assert_eq!(store.insert_media(&unlimited, None).await.unwrap(), MediaInsert::Stored);
    assert_eq!(store.media_usage(alice).await.unwrap(), 1_100);
    let free =
        MediaRecord { counts_toward_quota: false, ..uploaded("q5", alice.as_str(), "h5", 9) };
    assert_eq!(store.insert_media(&free, Some(1)).await.unwrap(), MediaInsert::Stored);
    assert_eq!(store.media_usage(alice).await.unwrap(), 1_100);
    store.delete_media(origin, "q5").await.unwrap().unwrap();
    assert_eq!(store.media_usage(alice).await.unwrap(), 1_100);
    store.delete_media(origin, "q4").await.unwrap().unwrap();
    assert_eq!(store.media_usage(alice).await.unwrap(), 100);
    store.delete_media(origin, "q1").await.unwrap().unwrap();
    assert_eq!(store.media_usage(alice).await.unwrap(), 40);
    assert_eq!(store.insert_media(&second, Some(100)).await.unwrap(), MediaInsert::Stored);
    assert_eq!(store.media_usage(user_id!("@bob:example.org")).await.unwrap(), 0);

    // Concurrent uploads never pass the quota together.
    let bob = user_id!("@bob:example.org");
    let mut tasks = Vec::new();
    for index in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let record = uploaded(&format!("c{index}"), "@bob:example.org", "same", 30);
            store.insert_media(&record, Some(100)).await.unwrap()
        }));
    }
    let mut stored = 0;
    for task in tasks {
        if task.await.unwrap() == MediaInsert::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 3);
    assert_eq!(store.media_usage(bob).await.unwrap(), 90);
}

/// A reservation is limited per user, completed once by its owner before it lapses, charged
/// against the quota, and lapsed ones are removed.
pub async fn pending_media_is_completed_once(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    let origin = server_name!("example.org");
    assert!(
        store.create_pending_media(&pending("p1", alice.as_str(), 10_000), 2, 1_000).await.unwrap()
    );
    assert!(
        store.create_pending_media(&pending("p2", alice.as_str(), 10_000), 2, 1_000).await.unwrap()
    );
    assert!(
        !store
            .create_pending_media(&pending("p3", alice.as_str(), 10_000), 2, 1_000)
            .await
            .unwrap()
    );
    assert!(store.get_media(origin, "p3").await.unwrap().is_none());
    // Bob's reservations are counted apart.
    assert!(
        store.create_pending_media(&pending("p4", bob.as_str(), 10_000), 2, 1_000).await.unwrap()
    );
    let stored = store.get_media(origin, "p1").await.unwrap().unwrap();
    assert_eq!(stored, pending("p1", alice.as_str(), 10_000));
    assert!(stored.content.is_none());

    let body = content("ph", 30);
    let complete = |media_id: &'static str, who: &'static ruma::UserId, quota, now| {
        let store = store.clone();
        let body = body.clone();
        async move {
            store.complete_pending_media(origin, media_id, who, &body, quota, now).await.unwrap()
        }
    };
    assert_eq!(complete("p1", bob, None, 2_000).await, PendingCompletion::NotUploader);
    assert_eq!(complete("nope", alice, None, 2_000).await, PendingCompletion::NotFound);
    assert_eq!(complete("p1", alice, Some(10), 2_000).await, PendingCompletion::QuotaExceeded);
    assert!(store.get_media(origin, "p1").await.unwrap().unwrap().content.is_none());
    assert_eq!(complete("p1", alice, Some(100), 2_000).await, PendingCompletion::Stored);
    assert_eq!(complete("p1", alice, Some(100), 2_000).await, PendingCompletion::AlreadyUploaded);
    let done = store.get_media(origin, "p1").await.unwrap().unwrap();
    assert_eq!(done.content, Some(body.clone()));
    assert_eq!(done.expires_ts, None);
    assert_eq!(store.media_usage(alice).await.unwrap(), 30);
    // A completed upload frees a reservation slot.
    assert!(
        store.create_pending_media(&pending("p5", alice.as_str(), 10_000), 2, 1_000).await.unwrap()
    );
    // A lapsed reservation cannot be completed, does not count, and is removed.
    assert_eq!(complete("p2", alice, None, 10_000).await, PendingCompletion::NotFound);
    assert!(
        store
            .create_pending_media(&pending("p6", alice.as_str(), 30_000), 2, 20_000)
            .await
            .unwrap()
    );
    assert_eq!(store.delete_expired_pending_media(20_000).await.unwrap(), 3);
    assert!(store.get_media(origin, "p2").await.unwrap().is_none());
    assert!(store.get_media(origin, "p4").await.unwrap().is_none());
    assert!(store.get_media(origin, "p6").await.unwrap().is_some());
    assert!(store.get_media(origin, "p1").await.unwrap().is_some());
    assert_eq!(store.delete_expired_pending_media(20_000).await.unwrap(), 0);
}

/// Thumbnails are kept once per size, method and animation, only for existing uploaded media.
pub async fn thumbnails_are_kept_per_size_and_method(store: Arc<dyn DataStore>) {
    let origin = server_name!("example.org");
    store.insert_media(&uploaded("img", "@alice:example.org", "full", 100), None).await.unwrap();
    let small = thumbnail("img", 32, "crop", "t32");
    assert!(store.insert_thumbnail(&small).await.unwrap());
    assert!(
        !store
            .insert_thumbnail(&ThumbnailRecord { sha256: "x".into(), ..small.clone() })
            .await
            .unwrap()
    );
    let scaled = thumbnail("img", 32, "scale", "t32s");
    assert!(store.insert_thumbnail(&scaled).await.unwrap());
    let animated =
        ThumbnailRecord { animated: true, content_type: "image/gif".into(), ..small.clone() };
    assert!(store.insert_thumbnail(&animated).await.unwrap());
    let large = ThumbnailRecord { height: 24, ..thumbnail("img", 640, "scale", "t640") };
    assert!(store.insert_thumbnail(&large).await.unwrap());

    assert_eq!(
        store.get_thumbnail(origin, "img", &key(32, "crop", false)).await.unwrap(),
        Some(small.clone())
    );
    assert_eq!(
        store.get_thumbnail(origin, "img", &key(32, "crop", true)).await.unwrap(),
        Some(animated.clone())
    );
    assert_eq!(
        store.get_thumbnail(origin, "img", &key(32, "scale", false)).await.unwrap(),
        Some(scaled.clone())
    );
    assert_eq!(store.get_thumbnail(origin, "img", &key(64, "crop", false)).await.unwrap(), None);
    let large_key =
        ThumbnailKey { width: 640, height: 24, method: "scale".into(), animated: false };
    assert_eq!(store.get_thumbnail(origin, "img", &large_key).await.unwrap(), Some(large.clone()));
    assert_eq!(store.get_thumbnail(origin, "other", &key(32, "crop", false)).await.unwrap(), None);
    let all = store.list_thumbnails(origin, "img").await.unwrap();
    assert_eq!(all, vec![small, animated, scaled, large]);
    assert!(store.list_thumbnails(origin, "other").await.unwrap().is_empty());
    assert!(store.content_referenced("t32s").await.unwrap());

    // No thumbnails of missing or pending media.
    assert!(!store.insert_thumbnail(&thumbnail("missing", 32, "crop", "m")).await.unwrap());
    store
        .create_pending_media(&pending("later", "@alice:example.org", 10_000), 5, 0)
        .await
        .unwrap();
    assert!(!store.insert_thumbnail(&thumbnail("later", 32, "crop", "l")).await.unwrap());
    assert!(store.list_thumbnails(origin, "later").await.unwrap().is_empty());
}

/// Deleting media removes its thumbnails and reports exactly the hashes nothing else uses.
pub async fn media_deletion_reports_unreferenced_content(store: Arc<dyn DataStore>) {
    let origin = server_name!("example.org");
    let first = uploaded("one", "@alice:example.org", "shared", 10);
    store.insert_media(&first, None).await.unwrap();
    store.insert_media(&uploaded("two", "@bob:example.org", "shared", 10), None).await.unwrap();
    store.insert_thumbnail(&thumbnail("one", 32, "crop", "thumb-one")).await.unwrap();
    store.insert_thumbnail(&thumbnail("one", 64, "crop", "thumb-both")).await.unwrap();
    store.insert_thumbnail(&thumbnail("two", 64, "crop", "thumb-both")).await.unwrap();

    let deleted = store.delete_media(origin, "one").await.unwrap().unwrap();
    assert_eq!(deleted.record, first);
    assert_eq!(deleted.unreferenced, vec!["thumb-one".to_owned()]);
    assert!(store.get_media(origin, "one").await.unwrap().is_none());
    assert!(store.list_thumbnails(origin, "one").await.unwrap().is_empty());
    assert_eq!(store.list_thumbnails(origin, "two").await.unwrap().len(), 1);
    assert!(store.content_referenced("shared").await.unwrap());
    assert!(!store.content_referenced("thumb-one").await.unwrap());
    assert!(store.delete_media(origin, "one").await.unwrap().is_none());

    let deleted = store.delete_media(origin, "two").await.unwrap().unwrap();
    let mut hashes = deleted.unreferenced;
    hashes.sort();
    assert_eq!(hashes, vec!["shared".to_owned(), "thumb-both".to_owned()]);
    assert!(!store.content_referenced("shared").await.unwrap());
    assert_eq!(store.media_usage(user_id!("@bob:example.org")).await.unwrap(), 0);

    // Pending media can be deleted too; it had no content.
    store.create_pending_media(&pending("p", "@alice:example.org", 10_000), 5, 0).await.unwrap();
    let deleted = store.delete_media(origin, "p").await.unwrap().unwrap();
    assert!(deleted.record.content.is_none());
    assert!(deleted.unreferenced.is_empty());
}

/// Uploaded media of one origin not used since a time is listed, least recently used first;
/// pending media and other origins are not.
pub async fn unused_media_and_lapsed_reservations_are_found(store: Arc<dyn DataStore>) {
    let origin = server_name!("example.org");
    for (media_id, last_access_ts) in [("old", 100), ("older", 50), ("new", 900)] {
        let record =
            MediaRecord { last_access_ts, ..uploaded(media_id, "@alice:example.org", media_id, 1) };
        store.insert_media(&record, None).await.unwrap();
    }
    let remote = MediaRecord {
        origin: server_name!("remote.org").to_owned(),
        last_access_ts: 1,
        ..uploaded("far", "@alice:example.org", "far", 1)
    };
    store.insert_media(&remote, None).await.unwrap();
    let reserved =
        MediaRecord { last_access_ts: 1, ..pending("wait", "@alice:example.org", 99_999) };
    store.create_pending_media(&reserved, 5, 0).await.unwrap();

    assert_eq!(store.media_unused_since(origin, 500, 10).await.unwrap(), vec!["older", "old"]);
    assert_eq!(store.media_unused_since(origin, 500, 1).await.unwrap(), vec!["older"]);
    assert_eq!(store.media_unused_since(origin, 50, 10).await.unwrap(), Vec::<String>::new());
    assert_eq!(
        store.media_unused_since(server_name!("remote.org"), 500, 10).await.unwrap(),
        vec!["far"]
    );
    store.touch_media(origin, "older", 950).await.unwrap();
    assert_eq!(
        store.media_unused_since(origin, 1_000, 10).await.unwrap(),
        vec!["old", "new", "older"]
    );
}

/// URL previews are cached by hash, replaced when fetched again, and expire by age.
pub async fn url_previews_are_cached_by_hash(store: Arc<dyn DataStore>) {
    assert_eq!(store.get_url_preview("h1", 0).await.unwrap(), None);
    store.set_url_preview("h1", "{\"og:title\":\"A\"}", 1_000).await.unwrap();
    store.set_url_preview("h2", "{}", 3_000).await.unwrap();
    assert_eq!(
        store.get_url_preview("h1", 500).await.unwrap().as_deref(),
        Some("{\"og:title\":\"A\"}")
    );
    assert_eq!(
        store.get_url_preview("h1", 1_000).await.unwrap().as_deref(),
        Some("{\"og:title\":\"A\"}")
    );
    assert_eq!(store.get_url_preview("h1", 1_001).await.unwrap(), None);
    store.set_url_preview("h1", "{\"og:title\":\"B\"}", 2_000).await.unwrap();
    assert_eq!(
        store.get_url_preview("h1", 1_500).await.unwrap().as_deref(),
        Some("{\"og:title\":\"B\"}")
    );
    assert_eq!(store.delete_url_previews_before(2_500).await.unwrap(), 1);
    assert_eq!(store.get_url_preview("h1", 0).await.unwrap(), None);
    assert_eq!(store.get_url_preview("h2", 0).await.unwrap().as_deref(), Some("{}"));
    assert_eq!(store.delete_url_previews_before(2_500).await.unwrap(), 0);
}
