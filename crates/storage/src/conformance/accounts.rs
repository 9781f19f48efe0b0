//! Conformance checks for accounts, devices and tokens.

use std::sync::Arc;

use ruma::{device_id, owned_device_id, user_id};

use crate::{DataStore, DelayedEventRecord, NewAccessToken, RegistrationTokenRecord, UserRecord};

fn user(name: &str) -> UserRecord {
    UserRecord {
        user_id: ruma::UserId::parse(format!("@{name}:example.org")).expect("valid user ID"),
        password_hash: Some(format!("hash-of-{name}")),
        displayname: Some(name.to_owned()),
        avatar_url: None,
        is_admin: false,
        deactivated: false,
        created_ts: 1000,
    }
}

fn token(hash: &str, user: &str, device: &str, refresh: Option<&str>) -> NewAccessToken {
    NewAccessToken {
        token_hash: hash.to_owned(),
        refresh_token_hash: refresh.map(str::to_owned),
        user_id: ruma::UserId::parse(format!("@{user}:example.org")).expect("valid user ID"),
        device_id: device.into(),
        expires_ts: None,
    }
}

/// Accounts are unique, readable and updatable.
pub async fn users_are_created_once_and_updated(store: Arc<dyn DataStore>) {
    let alice = user("alice");
    store.create_user(&alice).await.unwrap();
    let error = store.create_user(&alice).await.unwrap_err();
    assert_eq!(
        error.matrix_kind().map(|kind| kind.errcode().to_string()),
        Some("M_USER_IN_USE".into())
    );
    assert_eq!(store.get_user(&alice.user_id).await.unwrap(), Some(alice.clone()));
    assert_eq!(store.get_user(user_id!("@nobody:example.org")).await.unwrap(), None);

    store.set_password_hash(&alice.user_id, "new-hash").await.unwrap();
    store.set_displayname(&alice.user_id, Some("Alice A.")).await.unwrap();
    store.set_avatar_url(&alice.user_id, Some("mxc://example.org/abc")).await.unwrap();
    let stored = store.get_user(&alice.user_id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash.as_deref(), Some("new-hash"));
    assert_eq!(stored.displayname.as_deref(), Some("Alice A."));
    assert_eq!(stored.avatar_url.as_ref().map(|url| url.as_str()), Some("mxc://example.org/abc"));
    store.set_displayname(&alice.user_id, None).await.unwrap();
    assert_eq!(store.get_user(&alice.user_id).await.unwrap().unwrap().displayname, None);
    assert_eq!(store.count_users().await.unwrap(), 1);
}

/// Deactivation drops the password, devices, tokens and delayed events, and keeps the ID
/// taken.
pub async fn deactivation_removes_devices_and_tokens(store: Arc<dyn DataStore>) {
    let alice = user("alice");
    store.create_user(&alice).await.unwrap();
    store.upsert_device(&alice.user_id, device_id!("D1"), Some("phone"), 5).await.unwrap();
    store.create_access_token(&token("t1", "alice", "D1", None)).await.unwrap();
    let delayed = DelayedEventRecord {
        delay_id: "later".into(),
        user_id: alice.user_id.clone(),
        device_id: Some("D1".into()),
        room_id: ruma::room_id!("!r:example.org").to_owned(),
        event_type: "m.room.message".into(),
        state_key: None,
        content: "{}".into(),
        delay_ms: 1_000,
        send_ts: 1_000,
        created_ts: 0,
    };
    store.add_delayed_event(&delayed).await.unwrap();
    store.deactivate_user(&alice.user_id).await.unwrap();
    assert_eq!(store.delayed_event("later").await.unwrap(), None);
    let stored = store.get_user(&alice.user_id).await.unwrap().unwrap();
    assert!(stored.deactivated);
    assert_eq!(stored.password_hash, None);
    assert!(store.list_devices(&alice.user_id).await.unwrap().is_empty());
    assert_eq!(store.find_access_token("t1").await.unwrap(), None);
    assert!(store.create_user(&alice).await.is_err(), "a deactivated ID was reused");
    assert_eq!(store.count_users().await.unwrap(), 0);
}

/// Devices are upserted, renamed and deleted with their tokens.
pub async fn devices_and_tokens(store: Arc<dyn DataStore>) {
    let alice = user("alice");
    store.create_user(&alice).await.unwrap();
    store.upsert_device(&alice.user_id, device_id!("D1"), Some("phone"), 5).await.unwrap();
    store.upsert_device(&alice.user_id, device_id!("D2"), None, 6).await.unwrap();
    // Upserting without a name keeps the old name.
    store.upsert_device(&alice.user_id, device_id!("D1"), None, 7).await.unwrap();
    let devices = store.list_devices(&alice.user_id).await.unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].display_name.as_deref(), Some("phone"));
    assert_eq!(devices[0].last_seen_ts, Some(7));
    assert!(store.rename_device(&alice.user_id, device_id!("D2"), Some("laptop")).await.unwrap());
    assert!(!store.rename_device(&alice.user_id, device_id!("D9"), Some("x")).await.unwrap());
    let d2 = store.get_device(&alice.user_id, device_id!("D2")).await.unwrap().unwrap();
    assert_eq!(d2.display_name.as_deref(), Some("laptop"));

    store.create_access_token(&token("t1", "alice", "D1", None)).await.unwrap();
    store.create_access_token(&token("t2", "alice", "D2", None)).await.unwrap();
    let found = store.find_access_token("t1").await.unwrap().unwrap();
    assert_eq!(found.device_id, owned_device_id!("D1"));
    assert_eq!(found.user_id, alice.user_id);

    store.delete_user_tokens(&alice.user_id, Some(device_id!("D1"))).await.unwrap();
    assert!(store.find_access_token("t1").await.unwrap().is_some());
    assert!(store.find_access_token("t2").await.unwrap().is_none());

    store.delete_device(&alice.user_id, device_id!("D1")).await.unwrap();
    assert!(store.find_access_token("t1").await.unwrap().is_none());
    assert!(store.get_device(&alice.user_id, device_id!("D1")).await.unwrap().is_none());
    store.create_access_token(&token("t3", "alice", "D2", None)).await.unwrap();
    store.delete_access_token("t3").await.unwrap();
    assert!(store.find_access_token("t3").await.unwrap().is_none());
}

/// A refresh token is swapped for a new pair exactly once.
pub async fn refresh_tokens_rotate_once(store: Arc<dyn DataStore>) {
    let alice = user("alice");
    store.create_user(&alice).await.unwrap();
    store.upsert_device(&alice.user_id, device_id!("D1"), None, 5).await.unwrap();
    store.create_access_token(&token("a1", "alice", "D1", Some("r1"))).await.unwrap();
    let rotated = store.rotate_refresh_token("r1", "a2", "r2", Some(99)).await.unwrap();
    assert_eq!(rotated, Some((alice.user_id.clone(), owned_device_id!("D1"))));
    assert!(store.find_access_token("a1").await.unwrap().is_none(), "old access token survived");
    let new_token = store.find_access_token("a2").await.unwrap().unwrap();
    assert_eq!((new_token.device_id, new_token.expires_ts), (owned_device_id!("D1"), Some(99)));
    let again = store.rotate_refresh_token("r1", "a3", "r3", None).await.unwrap();
    assert_eq!(again, None, "a refresh token was used twice");
    assert!(store.find_access_token("a3").await.unwrap().is_none());
    assert!(store.rotate_refresh_token("r2", "a4", "r4", None).await.unwrap().is_some());
}

/// Registration tokens allow exactly their number of uses, even concurrently, and expire.
pub async fn registration_tokens_are_used_up_exactly(store: Arc<dyn DataStore>) {
    let limited = RegistrationTokenRecord {
        token: "limited".into(),
        uses_allowed: Some(3),
        completed: 0,
        expiry_ts: None,
        created_ts: 1,
    };
    store.create_registration_token(&limited).await.unwrap();
    assert!(store.create_registration_token(&limited).await.is_err());
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.use_registration_token("limited", 10).await.unwrap()
        }));
    }
    let mut used = 0;
    for task in tasks {
        if task.await.unwrap() {
            used += 1;
        }
    }
    assert_eq!(used, 3, "concurrent sign-ups overran the token");
    let stored = store.get_registration_token("limited").await.unwrap().unwrap();
    assert_eq!(stored.completed, 3);
    assert!(!stored.is_valid_at(10));

    let expiring = RegistrationTokenRecord {
        token: "expiring".into(),
        uses_allowed: None,
        completed: 0,
        expiry_ts: Some(100),
        created_ts: 1,
    };
    store.create_registration_token(&expiring).await.unwrap();
    assert!(store.use_registration_token("expiring", 50).await.unwrap());
    assert!(!store.use_registration_token("expiring", 150).await.unwrap());
    assert!(!store.use_registration_token("unknown", 1).await.unwrap());
    // Updates give it more uses or time, or take them away.
    assert!(store.update_registration_token("expiring", Some(2), Some(200)).await.unwrap());
    assert!(store.use_registration_token("expiring", 150).await.unwrap());
    assert!(!store.use_registration_token("expiring", 160).await.unwrap(), "only two uses");
    assert!(store.update_registration_token("expiring", None, None).await.unwrap());
    let updated = store.get_registration_token("expiring").await.unwrap().unwrap();
    assert_eq!((updated.uses_allowed, updated.expiry_ts, updated.completed), (None, None, 2));
    assert!(!store.update_registration_token("unknown", None, None).await.unwrap());
    assert_eq!(store.list_registration_tokens().await.unwrap().len(), 2);
    assert!(store.delete_registration_token("expiring").await.unwrap());
    assert!(!store.delete_registration_token("expiring").await.unwrap());
}

/// The administrator lists every account and grants or withdraws administration.
pub async fn users_are_listed_and_made_admin(store: Arc<dyn DataStore>) {
    assert!(store.list_users().await.unwrap().is_empty());
    for name in ["carol", "alice", "bob"] {
        store.create_user(&user(name)).await.unwrap();
    }
    store.deactivate_user(user_id!("@bob:example.org")).await.unwrap();
    let users = store.list_users().await.unwrap();
    let ids: Vec<&str> = users.iter().map(|user| user.user_id.as_str()).collect();
    assert_eq!(ids, ["@alice:example.org", "@bob:example.org", "@carol:example.org"]);
    assert!(users[1].deactivated && !users[0].deactivated);
    assert_eq!(users[0], user("alice"));

    assert!(store.set_admin(user_id!("@alice:example.org"), true).await.unwrap());
    assert!(store.get_user(user_id!("@alice:example.org")).await.unwrap().unwrap().is_admin);
    assert!(!store.get_user(user_id!("@carol:example.org")).await.unwrap().unwrap().is_admin);
    assert!(store.set_admin(user_id!("@alice:example.org"), false).await.unwrap());
    assert!(!store.get_user(user_id!("@alice:example.org")).await.unwrap().unwrap().is_admin);
    assert!(!store.set_admin(user_id!("@nobody:example.org"), true).await.unwrap());
    assert!(store.get_user(user_id!("@nobody:example.org")).await.unwrap().is_none());
}

/// Client sessions are replaced, read until they expire, deleted, and swept.
pub async fn client_sessions_expire_and_are_replaced(store: Arc<dyn DataStore>) {
    store.save_client_session("uia", "s1", "{\"a\":1}", 1_000).await.unwrap();
    store.save_client_session("uia", "s1", "{\"a\":2}", 2_000).await.unwrap();
    store.save_client_session("sliding", "s1", "other", 2_000).await.unwrap();
    assert_eq!(
        store.get_client_session("uia", "s1", 1_500).await.unwrap().as_deref(),
        Some("{\"a\":2}"),
        "replaced, with the new expiry"
    );
    assert_eq!(store.get_client_session("uia", "s1", 2_000).await.unwrap(), None, "expired");
    assert_eq!(store.get_client_session("uia", "s2", 0).await.unwrap(), None);
    assert!(store.delete_client_session("sliding", "s1").await.unwrap());
    assert!(!store.delete_client_session("sliding", "s1").await.unwrap());
    for id in ["@a_b:x|D|c|1", "@a_b:x|D|c|2", "@a_b:x|D|c|3", "@a%b:x|D|c|1", "@a_b:x|D|cc|1"] {
        store.save_client_session("sliding", id, "x", 9_000).await.unwrap();
    }
    let deleted = store
        .delete_client_sessions_with_prefix("sliding", "@a_b:x|D|c|", Some("@a_b:x|D|c|2"))
        .await
        .unwrap();
    assert_eq!(deleted, 2, "only the other versions of that connection");
    assert!(store.get_client_session("sliding", "@a_b:x|D|c|2", 0).await.unwrap().is_some());
    assert!(store.get_client_session("sliding", "@a%b:x|D|c|1", 0).await.unwrap().is_some());
    assert!(store.get_client_session("sliding", "@a_b:x|D|cc|1", 0).await.unwrap().is_some());
    let deleted =
        store.delete_client_sessions_with_prefix("sliding", "@a_b:x|D|c|", None).await.unwrap();
    assert_eq!(deleted, 1);
    store.save_client_session("uia", "s3", "x", 5_000).await.unwrap();
    assert_eq!(store.delete_expired_client_sessions(3_000).await.unwrap(), 1);
    assert!(store.get_client_session("uia", "s3", 3_000).await.unwrap().is_some());
    assert_eq!(store.delete_expired_client_sessions(10_000).await.unwrap(), 3);
}
