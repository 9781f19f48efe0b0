//! Conformance checks for end-to-end encryption storage: device keys, one-time and fallback
//! keys (claimed once, even concurrently), cross-signing keys and signatures, device-list
//! changes, to-device messages, removal of deleted devices' data, key backups and dehydrated
//! devices.

// Conformance checks are tests run from a backend's test crate: a failed step panics.
#![allow(clippy::unwrap_used)]

use std::{collections::HashSet, sync::Arc};

use rhizome_core::error::MatrixErrorKind;
use ruma::{OwnedDeviceId, UserId, device_id, owned_device_id, room_id, user_id};
use serde_json::json;

use super::rooms::RoomBuilder;
use crate::{
    DataStore,
    e2ee::{
        BackupKeyRecord, CrossSigningKeyRecord, CrossSigningKeyType, OneTimeKeyRecord,
        SignatureRecord, ToDeviceMessage, ToDeviceTarget,
    },
};

/// The end-to-end encryption checks, for [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! e2ee_conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            device_keys_are_stored_and_changes_recorded,
            one_time_and_fallback_keys_are_claimed_in_order,
            concurrent_claims_hand_out_each_key_once,
            cross_signing_keys_and_signatures,
            memberships_changed_in_a_window,
            deleted_devices_lose_their_encryption_data,
            to_device_messages_are_queued_once_per_transaction,
            key_backups_keep_the_better_key,
            dehydrated_devices_replace_each_other,
        );
    };
}

fn otk(key_id: &str, key: &str) -> OneTimeKeyRecord {
    OneTimeKeyRecord { key_id: key_id.to_owned(), json: json!({ "key": key }).to_string() }
}

async fn add_device(store: &Arc<dyn DataStore>, user: &UserId, device: &str, name: &str) {
    store.upsert_device(user, device.into(), Some(name), 1).await.unwrap();
}

/// Device keys are stored per device; a change (not a repeat) records a device-list change.
pub async fn device_keys_are_stored_and_changes_recorded(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    add_device(&store, alice, "A1", "phone").await;
    add_device(&store, alice, "A2", "laptop").await;
    let start = store.current_stream_pos();
    let first = store.set_device_keys(alice, device_id!("A1"), "{\"k\":1}").await.unwrap();
    let first = first.expect("new keys are a change");
    assert!(first > start);
    assert_eq!(store.current_stream_pos(), first);
    assert_eq!(store.set_device_keys(alice, device_id!("A1"), "{\"k\":1}").await.unwrap(), None);
    assert_eq!(store.current_stream_pos(), first, "a repeat takes no position");
    let second = store.set_device_keys(alice, device_id!("A1"), "{\"k\":2}").await.unwrap();
    assert!(second.is_some_and(|pos| pos > first));
    store.set_device_keys(alice, device_id!("A2"), "{\"k\":3}").await.unwrap();
    // Keys of a device that does not exist (any more) are not shown.
    store.set_device_keys(alice, device_id!("GONE"), "{\"k\":4}").await.unwrap();

    let all = store.device_keys(alice, &[]).await.unwrap();
    let shown: Vec<_> = all
        .iter()
        .map(|keys| (keys.device_id.as_str(), keys.json.as_str(), keys.display_name.as_deref()))
        .collect();
    assert_eq!(shown, [("A1", "{\"k\":2}", Some("phone")), ("A2", "{\"k\":3}", Some("laptop"))]);
    let one = store.device_keys(alice, &[owned_device_id!("A2")]).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].device_id, "A2");
    assert!(store.device_keys(alice, &[owned_device_id!("NONE")]).await.unwrap().is_empty());
    assert!(store.device_keys(bob, &[]).await.unwrap().is_empty());

    // Changes are seen in their window; the latest change of a user counts.
    let latest = store.current_stream_pos();
    assert_eq!(store.device_list_changes(bob, start, latest).await.unwrap(), [alice]);
    assert!(store.device_list_changes(bob, latest, latest).await.unwrap().is_empty());
    let bob_change = store.record_device_list_change(bob).await.unwrap();
    assert!(bob_change > latest);
    assert_eq!(store.device_list_changes(alice, latest, bob_change).await.unwrap(), [bob]);
    assert_eq!(store.device_list_changes(alice, start, bob_change).await.unwrap(), [alice, bob]);
    assert!(store.device_list_changes(alice, start, start).await.unwrap().is_empty());
}

/// One-time keys go oldest first and once; then the fallback key, which stays claimable.
pub async fn one_time_and_fallback_keys_are_claimed_in_order(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    let device = device_id!("A1");
    add_device(&store, alice, "A1", "phone").await;
    let batch = [otk("signed_curve25519:AAAA", "one"), otk("signed_curve25519:AAAB", "two")];
    store.add_one_time_keys(alice, device, &batch).await.unwrap();
    // The same keys again change nothing.
    store.add_one_time_keys(alice, device, &batch[..1]).await.unwrap();
    store.add_one_time_keys(alice, device, &[otk("curve25519:X", "plain")]).await.unwrap();
    let counts = store.one_time_key_counts(alice, device).await.unwrap();
    assert_eq!(counts, [("curve25519".to_owned(), 1), ("signed_curve25519".to_owned(), 2)]);

    // A key ID reused with another key is refused, and the batch it came in is not stored.
    let error = store
        .add_one_time_keys(
            alice,
            device,
            &[otk("signed_curve25519:AAAC", "three"), otk("signed_curve25519:AAAA", "other")],
        )
        .await
        .unwrap_err();
    assert!(matches!(error.matrix_kind(), Some(MatrixErrorKind::InvalidParam)), "{error}");
    assert_eq!(store.one_time_key_counts(alice, device).await.unwrap()[1].1, 2);

    assert!(store.unused_fallback_key_algorithms(alice, device).await.unwrap().is_empty());
    let fallback = otk("signed_curve25519:FFFF", "fallback");
    store.set_fallback_keys(alice, device, std::slice::from_ref(&fallback)).await.unwrap();
    assert_eq!(
        store.unused_fallback_key_algorithms(alice, device).await.unwrap(),
        ["signed_curve25519"]
    );

    let claim = || store.claim_key(alice, device, "signed_curve25519");
    assert_eq!(claim().await.unwrap(), Some(batch[0].clone()));
    assert_eq!(claim().await.unwrap(), Some(batch[1].clone()));
    assert_eq!(
        store.one_time_key_counts(alice, device).await.unwrap(),
        [("curve25519".to_owned(), 1)]
    );
    // Then the fallback key, as often as asked, now marked used.
    assert_eq!(claim().await.unwrap(), Some(fallback.clone()));
    assert_eq!(claim().await.unwrap(), Some(fallback.clone()));
    assert!(store.unused_fallback_key_algorithms(alice, device).await.unwrap().is_empty());
    // Uploading the same fallback key keeps it used; a new one is unused.
    store.set_fallback_keys(alice, device, std::slice::from_ref(&fallback)).await.unwrap();
    assert!(store.unused_fallback_key_algorithms(alice, device).await.unwrap().is_empty());
    let newer = otk("signed_curve25519:FFFG", "newer");
    store.set_fallback_keys(alice, device, std::slice::from_ref(&newer)).await.unwrap();
    assert_eq!(store.unused_fallback_key_algorithms(alice, device).await.unwrap().len(), 1);
    assert_eq!(claim().await.unwrap(), Some(newer));

    // Other algorithms and devices have nothing.
    assert_eq!(store.claim_key(alice, device, "other_algorithm").await.unwrap(), None);
    assert_eq!(store.claim_key(alice, device_id!("A2"), "signed_curve25519").await.unwrap(), None);
    assert_eq!(
        store.claim_key(alice, device, "curve25519").await.unwrap(),
        Some(otk("curve25519:X", "plain"))
    );
    assert_eq!(store.claim_key(alice, device, "curve25519").await.unwrap(), None);
}

/// Concurrent claims never hand out the same one-time key twice.
pub async fn concurrent_claims_hand_out_each_key_once(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    add_device(&store, alice, "A1", "phone").await;
    let keys: Vec<_> =
        (0..40).map(|index| otk(&format!("signed_curve25519:K{index:03}"), "k")).collect();
    store.add_one_time_keys(alice, device_id!("A1"), &keys).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .claim_key(user_id!("@alice:example.org"), device_id!("A1"), "signed_curve25519")
                .await
                .unwrap()
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        if let Some(key) = task.await.unwrap() {
            claimed.push(key.key_id);
        }
    }
    let unique: HashSet<_> = claimed.iter().cloned().collect();
    assert_eq!(claimed.len(), 40, "every key is claimed and no claim gets nothing twice");
    assert_eq!(unique.len(), 40, "no key is handed out twice");
    assert!(store.one_time_key_counts(alice, device_id!("A1")).await.unwrap().is_empty());
}

fn cross_key(key_type: CrossSigningKeyType, public_key: &str) -> CrossSigningKeyRecord {
    CrossSigningKeyRecord {
        key_type,
        public_key: public_key.to_owned(),
        json: json!({ "usage": [key_type.as_str()], "key": public_key }).to_string(),
    }
}

fn signature(target: &UserId, key: &str, signer: &UserId, by: &str) -> SignatureRecord {
    SignatureRecord {
        target_user_id: target.to_owned(),
        target_key_id: key.to_owned(),
        signer_user_id: signer.to_owned(),
        signer_key_id: format!("ed25519:{by}"),
        signature: format!("sig-{by}-{key}"),
    }
}

/// Cross-signing keys replace each other by type; signatures are found by signer, and their
/// device-list changes are seen by everyone (own keys) or the signer only (others' keys).
pub async fn cross_signing_keys_and_signatures(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    let carol = user_id!("@carol:example.org");
    assert_eq!(store.cross_signing_keys(alice).await.unwrap(), Default::default());
    let start = store.current_stream_pos();
    let master = cross_key(CrossSigningKeyType::Master, "M1");
    let pos = store
        .set_cross_signing_keys(
            alice,
            &[
                master.clone(),
                cross_key(CrossSigningKeyType::SelfSigning, "S1"),
                cross_key(CrossSigningKeyType::UserSigning, "U1"),
            ],
        )
        .await
        .unwrap();
    assert!(pos > start);
    assert_eq!(store.device_list_changes(bob, start, pos).await.unwrap(), [alice]);
    let keys = store.cross_signing_keys(alice).await.unwrap();
    assert_eq!(keys.master, Some(master.clone()));
    assert_eq!(keys.get(CrossSigningKeyType::SelfSigning).unwrap().public_key, "S1");
    assert_eq!(keys.get(CrossSigningKeyType::UserSigning).unwrap().public_key, "U1");
    store
        .set_cross_signing_keys(alice, &[cross_key(CrossSigningKeyType::SelfSigning, "S2")])
        .await
        .unwrap();
    let keys = store.cross_signing_keys(alice).await.unwrap();
    assert_eq!(keys.master, Some(master));
    assert_eq!(keys.self_signing.unwrap().public_key, "S2");
    assert!(store.cross_signing_keys(bob).await.unwrap().master.is_none());

    // Alice signs her device and her master key; then Bob's master key.
    let before = store.current_stream_pos();
    let own = store
        .add_signatures(
            alice,
            &[signature(alice, "A1", alice, "S2"), signature(alice, "M1", alice, "A1")],
        )
        .await
        .unwrap();
    assert_eq!(store.device_list_changes(carol, before, own).await.unwrap(), [alice]);
    let other = store.add_signatures(alice, &[signature(bob, "BM", alice, "U1")]).await.unwrap();
    assert_eq!(store.device_list_changes(alice, own, other).await.unwrap(), [bob]);
    assert!(store.device_list_changes(carol, own, other).await.unwrap().is_empty());
    assert!(store.device_list_changes(bob, own, other).await.unwrap().is_empty());
    // A signature from another user under Alice's name is refused.
    assert!(store.add_signatures(alice, &[signature(bob, "BM", carol, "U9")]).await.is_err());

    let on_alice = store.signatures_on(alice, &[alice]).await.unwrap();
    assert_eq!(on_alice.len(), 2);
    assert_eq!(on_alice[0].target_key_id, "A1");
    assert_eq!(on_alice[1].target_key_id, "M1");
    assert!(store.signatures_on(bob, &[bob]).await.unwrap().is_empty());
    assert_eq!(store.signatures_on(bob, &[bob, alice]).await.unwrap().len(), 1);
    assert!(store.signatures_on(bob, &[]).await.unwrap().is_empty());
    // Signing again with the same key replaces the signature.
    let mut again = signature(bob, "BM", alice, "U1");
    again.signature = "newer".into();
    store.add_signatures(alice, std::slice::from_ref(&again)).await.unwrap();
    assert_eq!(store.signatures_on(bob, &[alice]).await.unwrap(), [again]);
}

/// Membership changes are found by room and window.
pub async fn memberships_changed_in_a_window(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "e2ee").await;
    room.join("@alice:example.org").await;
    let since = store.current_stream_pos();
    room.join("@bob:example.org").await;
    let until = store.current_stream_pos();
    room.join("@carol:example.org").await;
    let mut other = RoomBuilder::new(store.clone(), "other").await;
    other.join("@dave:example.org").await;
    let rooms = [room.room_id.clone(), other.room_id.clone()];
    let changed = store.memberships_changed_between(&rooms, since, until).await.unwrap();
    let users: Vec<_> =
        changed.iter().map(|m| (m.user_id.as_str(), m.membership.as_str())).collect();
    assert_eq!(users, [("@bob:example.org", "join")]);
    let everything =
        store.memberships_changed_between(&rooms, 0, store.current_stream_pos()).await.unwrap();
    assert_eq!(everything.len(), 4);
    assert!(store.memberships_changed_between(&[], 0, until).await.unwrap().is_empty());
}

/// Deleting a device (then removing its encryption data) leaves nothing of it behind.
pub async fn deleted_devices_lose_their_encryption_data(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    for device in ["A1", "A2"] {
        add_device(&store, alice, device, device).await;
        let device = <&ruma::DeviceId>::from(device);
        store.set_device_keys(alice, device, "{}").await.unwrap();
        store.add_one_time_keys(alice, device, &[otk("signed_curve25519:1", "x")]).await.unwrap();
        store.set_fallback_keys(alice, device, &[otk("signed_curve25519:F", "f")]).await.unwrap();
    }
    add_device(&store, bob, "B1", "bob").await;
    let message = ToDeviceMessage {
        user_id: alice.to_owned(),
        target: ToDeviceTarget::AllDevices,
        content: "{}".into(),
    };
    store.queue_to_device(bob, device_id!("B1"), "t1", "m.test", &[message]).await.unwrap();
    store
        .set_cross_signing_keys(alice, &[cross_key(CrossSigningKeyType::Master, "M1")])
        .await
        .unwrap();
    store
        .add_signatures(
            alice,
            &[signature(alice, "A1", alice, "S"), signature(alice, "M1", alice, "A1")],
        )
        .await
        .unwrap();
    assert_eq!(store.remove_deleted_devices_e2ee(alice).await.unwrap(), 0);

    store.delete_device(alice, device_id!("A1")).await.unwrap();
    assert_eq!(store.remove_deleted_devices_e2ee(alice).await.unwrap(), 1);
    let a1 = device_id!("A1");
    let pos = store.current_stream_pos();
    // Recreating the device shows none of the old data.
    add_device(&store, alice, "A1", "again").await;
    assert!(store.device_keys(alice, &[a1.to_owned()]).await.unwrap().is_empty());
    assert!(store.one_time_key_counts(alice, a1).await.unwrap().is_empty());
    assert!(store.unused_fallback_key_algorithms(alice, a1).await.unwrap().is_empty());
    assert!(store.to_device_messages(alice, a1, pos, 10).await.unwrap().is_empty());
    let left = store.signatures_on(alice, &[alice]).await.unwrap();
    assert_eq!(left.len(), 1, "the signature on the master key stays");
    assert_eq!(left[0].target_key_id, "M1");
    // The other device keeps everything.
    let a2 = device_id!("A2");
    assert_eq!(store.device_keys(alice, &[]).await.unwrap().len(), 1);
    assert_eq!(store.one_time_key_counts(alice, a2).await.unwrap().len(), 1);
    assert_eq!(store.to_device_messages(alice, a2, pos, 10).await.unwrap().len(), 1);

    // Deleting all of a user's encryption data.
    let version = store.create_backup_version(alice, "{}").await.unwrap();
    store.add_signatures(alice, &[signature(bob, "BM", alice, "U")]).await.unwrap();
    store.delete_user_e2ee(alice).await.unwrap();
    assert!(store.device_keys(alice, &[]).await.unwrap().is_empty());
    assert!(store.one_time_key_counts(alice, a2).await.unwrap().is_empty());
    assert!(store.to_device_messages(alice, a2, pos, 10).await.unwrap().is_empty());
    assert_eq!(store.cross_signing_keys(alice).await.unwrap(), Default::default());
    assert!(store.signatures_on(alice, &[alice]).await.unwrap().is_empty());
    assert!(store.signatures_on(bob, &[alice]).await.unwrap().is_empty());
    assert!(store.backup_version(alice, Some(&version)).await.unwrap().is_none());
}

/// To-device messages fan out to devices, once per transaction, and wait until received.
pub async fn to_device_messages_are_queued_once_per_transaction(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    let carol = user_id!("@carol:example.org");
    add_device(&store, alice, "A1", "a").await;
    for device in ["B1", "B2"] {
        add_device(&store, bob, device, device).await;
    }
    let to_bob = |content: &str| ToDeviceMessage {
        user_id: bob.to_owned(),
        target: ToDeviceTarget::AllDevices,
        content: content.to_owned(),
    };
    let to_one = |user: &UserId, device: &str| ToDeviceMessage {
        user_id: user.to_owned(),
        target: ToDeviceTarget::Device(OwnedDeviceId::from(device)),
        content: format!("{{\"to\":\"{device}\"}}"),
    };
    let a1 = device_id!("A1");
    let messages = [to_bob("{\"n\":1}"), to_one(alice, "A1"), to_one(carol, "C1")];
    let (first, recipients) =
        store.queue_to_device(alice, a1, "txn1", "m.test", &messages).await.unwrap().unwrap();
    assert_eq!(recipients, [bob, alice], "Carol has no such device");
    assert_eq!(store.current_stream_pos(), first);
    // The same transaction again queues nothing; another one does.
    assert!(store.queue_to_device(alice, a1, "txn1", "m.test", &messages).await.unwrap().is_none());
    let (second, _) = store
        .queue_to_device(alice, a1, "txn2", "m.other", &[to_bob("{\"n\":2}")])
        .await
        .unwrap()
        .unwrap();
    // A transaction ID is per sending device.
    add_device(&store, alice, "A2", "a2").await;
    let (third, _) = store
        .queue_to_device(alice, device_id!("A2"), "txn1", "m.third", &[to_one(bob, "B2")])
        .await
        .unwrap()
        .unwrap();

    let b2 = device_id!("B2");
    let waiting = store.to_device_messages(bob, b2, third, 100).await.unwrap();
    let seen: Vec<_> = waiting.iter().map(|m| (m.event_type.as_str(), m.stream_pos)).collect();
    assert_eq!(seen, [("m.test", first), ("m.other", second), ("m.third", third)]);
    assert_eq!(waiting[0].sender, alice);
    assert_eq!(waiting[0].content, "{\"n\":1}");
    assert_eq!(store.to_device_messages(bob, b2, second, 100).await.unwrap().len(), 2);
    assert_eq!(store.to_device_messages(bob, b2, third, 1).await.unwrap().len(), 1);
    assert_eq!(store.to_device_messages(bob, device_id!("B1"), third, 100).await.unwrap().len(), 2);
    assert_eq!(store.to_device_messages(alice, a1, third, 100).await.unwrap().len(), 1);

    // Deferring moves the later ones past the current position, in order.
    let deferred = store.defer_to_device_messages(bob, b2, &waiting[0]).await.unwrap();
    assert!(deferred > third);
    assert_eq!(store.to_device_messages(bob, b2, third, 100).await.unwrap().len(), 1);
    let after = store.to_device_messages(bob, b2, deferred, 100).await.unwrap();
    let order: Vec<_> = after.iter().map(|m| (m.event_type.as_str(), m.stream_pos)).collect();
    assert_eq!(order, [("m.test", first), ("m.other", deferred), ("m.third", deferred)]);

    // Receiving deletes up to a position.
    assert_eq!(store.delete_to_device_messages(bob, b2, first).await.unwrap(), 1);
    assert_eq!(store.delete_to_device_messages(bob, b2, first).await.unwrap(), 0);
    assert_eq!(store.to_device_messages(bob, b2, deferred, 100).await.unwrap().len(), 2);
    assert_eq!(store.delete_to_device_messages(bob, b2, deferred).await.unwrap(), 2);
    assert!(store.to_device_messages(bob, b2, deferred, 100).await.unwrap().is_empty());
    assert_eq!(store.to_device_messages(bob, device_id!("B1"), third, 100).await.unwrap().len(), 2);
}

fn backup_key(session: &str, index: i64, forwarded: i64, verified: bool) -> BackupKeyRecord {
    BackupKeyRecord {
        room_id: room_id!("!r:example.org").to_owned(),
        session_id: session.to_owned(),
        first_message_index: index,
        forwarded_count: forwarded,
        is_verified: verified,
        session_data: format!("{{\"i\":{index},\"f\":{forwarded},\"v\":{verified}}}"),
    }
}

/// Backup versions, their etag and count, and the spec's rule for conflicting keys.
pub async fn key_backups_keep_the_better_key(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    assert!(store.backup_version(alice, None).await.unwrap().is_none());
    let v1 = store.create_backup_version(alice, "{\"a\":1}").await.unwrap();
    let v2 = store.create_backup_version(alice, "{\"a\":2}").await.unwrap();
    assert_ne!(v1, v2);
    let current = store.backup_version(alice, None).await.unwrap().unwrap();
    assert_eq!((current.version.as_str(), current.count), (v2.as_str(), 0));
    assert_eq!(
        store.backup_version(alice, Some(&v1)).await.unwrap().unwrap().algorithm,
        "{\"a\":1}"
    );
    assert!(store.backup_version(alice, Some("999")).await.unwrap().is_none());
    assert!(store.backup_version(alice, Some("nonsense")).await.unwrap().is_none());
    assert!(store.backup_version(user_id!("@bob:example.org"), Some(&v2)).await.unwrap().is_none());
    assert!(store.update_backup_version(alice, &v2, "{\"a\":3}").await.unwrap());
    assert!(!store.update_backup_version(alice, "999", "{}").await.unwrap());
    assert_eq!(store.backup_version(alice, None).await.unwrap().unwrap().algorithm, "{\"a\":3}");

    // Keys go into the current version only.
    let error = store.put_backup_keys(alice, &v1, &[backup_key("s", 0, 0, false)]).await;
    match error.unwrap_err().matrix_kind() {
        Some(MatrixErrorKind::WrongRoomKeysVersion(data)) => assert_eq!(data.current_version, v2),
        other => panic!("unexpected error {other:?}"),
    }
    let error = store.put_backup_keys(alice, "999", &[backup_key("s", 0, 0, false)]).await;
    assert!(matches!(error.unwrap_err().matrix_kind(), Some(MatrixErrorKind::NotFound)));

    let put = |keys: Vec<BackupKeyRecord>| {
        let store = store.clone();
        let version = v2.clone();
        async move { store.put_backup_keys(alice, &version, &keys).await.unwrap() }
    };
    let first = put(vec![backup_key("s1", 5, 1, false), backup_key("s2", 0, 0, true)]).await;
    assert_eq!(first.count, 2);
    let stored = |session: &'static str| {
        let store = store.clone();
        let version = v2.clone();
        async move {
            let keys = store
                .backup_keys(alice, &version, Some(room_id!("!r:example.org")), Some(session))
                .await
                .unwrap();
            assert_eq!(keys.len(), 1);
            keys[0].clone()
        }
    };
    // Not better: unverified over verified, higher index, same index with more forwards.
    for worse in [backup_key("s2", 0, 0, false), backup_key("s1", 6, 0, false)] {
        let counts = put(vec![worse]).await;
        assert_eq!(counts, first, "a worse key changes nothing, not even the etag");
    }
    assert_eq!(put(vec![backup_key("s1", 5, 2, false)]).await, first);
    assert_eq!(stored("s1").await, backup_key("s1", 5, 1, false));
    // Better: fewer forwards, then a lower index, then verified.
    let second = put(vec![backup_key("s1", 5, 0, false)]).await;
    assert_ne!(second.etag, first.etag);
    assert_eq!(stored("s1").await, backup_key("s1", 5, 0, false));
    put(vec![backup_key("s1", 2, 3, false)]).await;
    assert_eq!(stored("s1").await, backup_key("s1", 2, 3, false));
    put(vec![backup_key("s1", 9, 9, true)]).await;
    assert_eq!(stored("s1").await, backup_key("s1", 9, 9, true));

    let mut other_room = backup_key("s3", 0, 0, false);
    other_room.room_id = room_id!("!other:example.org").to_owned();
    let third = put(vec![other_room]).await;
    assert_eq!(third.count, 3);
    assert_eq!(store.backup_version(alice, None).await.unwrap().unwrap().etag, third.etag);
    assert_eq!(store.backup_keys(alice, &v2, None, None).await.unwrap().len(), 3);
    let in_room =
        store.backup_keys(alice, &v2, Some(room_id!("!r:example.org")), None).await.unwrap();
    assert_eq!(in_room.len(), 2);
    assert!(store.backup_keys(alice, &v1, None, None).await.unwrap().is_empty());

    // Deleting keys by session, room or all.
    let room = room_id!("!r:example.org");
    let counts = store.delete_backup_keys(alice, &v2, Some(room), Some("s1")).await.unwrap();
    assert_eq!(counts.count, 2);
    assert_ne!(counts.etag, third.etag);
    assert_eq!(store.delete_backup_keys(alice, &v2, Some(room), None).await.unwrap().count, 1);
    assert_eq!(store.delete_backup_keys(alice, &v2, None, None).await.unwrap().count, 0);
    let error = store.delete_backup_keys(alice, "999", None, None).await.unwrap_err();
    assert!(matches!(error.matrix_kind(), Some(MatrixErrorKind::NotFound)));

    // Deleting versions; numbers are not reused.
    put(vec![backup_key("s9", 0, 0, false)]).await;
    assert!(store.delete_backup_version(alice, &v2).await.unwrap());
    assert!(!store.delete_backup_version(alice, &v2).await.unwrap());
    assert!(store.backup_keys(alice, &v2, None, None).await.unwrap().is_empty());
    assert_eq!(store.backup_version(alice, None).await.unwrap().unwrap().version, v1);
    let v3 = store.create_backup_version(alice, "{}").await.unwrap();
    assert!(v3 != v1 && v3 != v2);
    assert_eq!(store.backup_version(alice, None).await.unwrap().unwrap().version, v3);
}

/// A user has one dehydrated device; storing another replaces it.
pub async fn dehydrated_devices_replace_each_other(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    assert!(store.dehydrated_device(alice).await.unwrap().is_none());
    assert_eq!(
        store.set_dehydrated_device(alice, device_id!("D1"), "{\"p\":1}").await.unwrap(),
        None
    );
    assert_eq!(
        store.dehydrated_device(alice).await.unwrap(),
        Some((owned_device_id!("D1"), "{\"p\":1}".to_owned()))
    );
    assert_eq!(
        store.set_dehydrated_device(alice, device_id!("D1"), "{\"p\":2}").await.unwrap(),
        None
    );
    assert_eq!(
        store.set_dehydrated_device(alice, device_id!("D2"), "{\"p\":3}").await.unwrap(),
        Some(owned_device_id!("D1"))
    );
    assert!(store.dehydrated_device(user_id!("@bob:example.org")).await.unwrap().is_none());
    assert_eq!(store.delete_dehydrated_device(alice).await.unwrap(), Some(owned_device_id!("D2")));
    assert_eq!(store.delete_dehydrated_device(alice).await.unwrap(), None);
    assert!(store.dehydrated_device(alice).await.unwrap().is_none());
}
