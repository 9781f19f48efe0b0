//! Conformance checks for device lists across servers: local users' published lists numbered
//! in their own sequence, and remote users' cached lists updated, marked stale and forgotten,
//! each change of a cached list seen as a device-list change of its user.

// Conformance checks are tests run from a backend's test crate: a failed step panics.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ruma::{device_id, owned_device_id, user_id};

use crate::{
    DataStore, StreamPos,
    device_lists::{PublishedDevice, PublishedDeviceChange, RemoteDevice, RemoteDeviceList},
};

/// The device-list checks, for [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! device_list_conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            published_device_changes_are_numbered_per_user,
            remote_device_lists_are_cached_updated_and_forgotten,
        );
    };
}

fn change(device: &str, keys: Option<&str>, deleted: bool) -> PublishedDeviceChange {
    PublishedDeviceChange { device_id: device.into(), keys: keys.map(str::to_owned), deleted }
}

/// Each published change takes the next ID of its user's sequence; the published state is
/// what the changes made it.
pub async fn published_device_changes_are_numbered_per_user(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    let nothing = store.published_device_list(alice).await.unwrap();
    assert_eq!((nothing.stream_id, nothing.devices.len()), (0, 0));
    assert_eq!(nothing.master_key, None);

    let first = [change("A1", None, false), change("A2", Some("{\"k\":2}"), false)];
    assert_eq!(store.publish_device_changes(alice, &first).await.unwrap(), (0, vec![1, 2]));
    let more = [change("A1", Some("{\"k\":1}"), false), change("A2", None, true)];
    assert_eq!(store.publish_device_changes(alice, &more).await.unwrap(), (2, vec![3, 4]));
    // Another user's sequence is their own.
    assert_eq!(
        store.publish_device_changes(bob, &[change("B1", None, false)]).await.unwrap(),
        (0, vec![1])
    );
    store.publish_signing_keys(alice, Some("{\"m\":1}"), Some("{\"s\":1}")).await.unwrap();

    let published = store.published_device_list(alice).await.unwrap();
    assert_eq!(published.stream_id, 4);
    assert_eq!(
        published.devices,
        [PublishedDevice { device_id: owned_device_id!("A1"), keys: Some("{\"k\":1}".into()) }]
    );
    assert_eq!(published.master_key.as_deref(), Some("{\"m\":1}"));
    assert_eq!(published.self_signing_key.as_deref(), Some("{\"s\":1}"));
    // Keys published before any device change still start the sequence at 0.
    let carol = user_id!("@carol:example.org");
    store.publish_signing_keys(carol, Some("{\"m\":2}"), None).await.unwrap();
    let carols = store.published_device_list(carol).await.unwrap();
    assert_eq!((carols.stream_id, carols.self_signing_key), (0, None));
    assert_eq!(store.publish_device_changes(carol, &[]).await.unwrap(), (0, vec![]));
}

fn remote(device: &str, keys: &str) -> RemoteDevice {
    RemoteDevice { device_id: device.into(), keys: Some(keys.to_owned()), display_name: None }
}

/// A remote user's list is cached whole, updated device by device (each update a device-list
/// change of the user), marked stale, and forgotten; an untracked user is never updated.
pub async fn remote_device_lists_are_cached_updated_and_forgotten(store: Arc<dyn DataStore>) {
    let bob = user_id!("@bob:remote.example");
    let viewer = user_id!("@alice:example.org");
    assert_eq!(store.remote_device_list(bob).await.unwrap(), None);
    // Updates of a user not tracked change nothing.
    let device = remote("B1", "{\"k\":1}");
    assert_eq!(
        store.update_remote_device(bob, 3, device_id!("B1"), Some(&device)).await.unwrap(),
        None
    );
    assert_eq!(store.update_remote_signing_keys(bob, Some("{}"), None).await.unwrap(), None);
    assert!(!store.mark_remote_device_list_stale(bob).await.unwrap());
    assert_eq!(store.remote_device_list(bob).await.unwrap(), None);

    let list = RemoteDeviceList {
        user_id: bob.to_owned(),
        stream_id: 5,
        stale: false,
        fetched_ts: 1_000,
        fetched_pos: 12,
        devices: vec![remote("B1", "{\"k\":1}"), remote("B2", "{\"k\":2}")],
        master_key: Some("{\"m\":1}".into()),
        self_signing_key: None,
    };
    let before = store.current_stream_pos();
    // A first fetch need not be announced. (Not told by the stream position staying put: on
    // PostgreSQL the untracked updates above took positions they gave up, and the watermark
    // passes those at its own moment.)
    assert_eq!(store.replace_remote_device_list(&list, false).await.unwrap(), None);
    let changes = store.device_list_changes(viewer, before, StreamPos::MAX).await.unwrap();
    assert!(changes.is_empty(), "a first fetch is no change: {changes:?}");
    assert_eq!(store.remote_device_list(bob).await.unwrap().as_ref(), Some(&list));
    assert_eq!(store.tracked_remote_users(false).await.unwrap(), [bob.to_owned()]);
    assert!(store.tracked_remote_users(true).await.unwrap().is_empty());

    // An update of one device, and a deletion, each a change seen by others.
    let mut renamed = remote("B1", "{\"k\":10}");
    renamed.display_name = Some("phone".into());
    let pos = store.update_remote_device(bob, 6, device_id!("B1"), Some(&renamed)).await.unwrap();
    let pos = pos.expect("a tracked user's update is a change");
    assert!(pos > before);
    assert_eq!(store.device_list_changes(viewer, before, pos).await.unwrap(), [bob.to_owned()]);
    let deleted = store.update_remote_device(bob, 7, device_id!("B2"), None).await.unwrap();
    assert!(deleted.unwrap() > pos);
    let pos = store.update_remote_signing_keys(bob, None, Some("{\"s\":1}")).await.unwrap();
    assert!(pos.is_some());
    let cached = store.remote_device_list(bob).await.unwrap().unwrap();
    assert_eq!(cached.stream_id, 7);
    assert_eq!(cached.devices, [renamed]);
    assert_eq!(cached.master_key.as_deref(), Some("{\"m\":1}"), "kept when not given");
    assert_eq!(cached.self_signing_key.as_deref(), Some("{\"s\":1}"));

    // Stale after a missed update, fresh again after a fetch (announced this time).
    assert!(store.mark_remote_device_list_stale(bob).await.unwrap());
    assert!(store.remote_device_list(bob).await.unwrap().unwrap().stale);
    assert_eq!(store.tracked_remote_users(true).await.unwrap(), [bob.to_owned()]);
    let fetched =
        RemoteDeviceList { stream_id: 9, fetched_ts: 2_000, fetched_pos: 20, ..list.clone() };
    let announced = store.replace_remote_device_list(&fetched, true).await.unwrap();
    assert_eq!(announced, Some(store.current_stream_pos()));
    assert_eq!(store.remote_device_list(bob).await.unwrap(), Some(fetched));
    assert!(store.tracked_remote_users(true).await.unwrap().is_empty());

    // Forgotten when no longer shared.
    assert!(store.forget_remote_device_list(bob).await.unwrap());
    assert!(!store.forget_remote_device_list(bob).await.unwrap());
    assert_eq!(store.remote_device_list(bob).await.unwrap(), None);
    assert!(store.tracked_remote_users(false).await.unwrap().is_empty());
}
