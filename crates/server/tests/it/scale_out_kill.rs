//! One of three processes on one PostgreSQL database killed with SIGKILL under load: no
//! acknowledged event is lost or doubled, a client following the room sees each once, and the
//! push worker's lease moves to a live process, which sends every notification.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rhizome_testkit::RecordingPushGateway;
use serde_json::json;

use super::cluster::{Client, Cluster};

/// The push worker's lease holder (`push-<pid>_…`), if any.
async fn push_lease_holder(database_url: &str) -> Option<String> {
    sqlx::any::install_default_drivers();
    let mut connection =
        <sqlx::AnyConnection as sqlx::Connection>::connect(database_url).await.unwrap();
    sqlx::query_scalar("SELECT holder FROM job_leases WHERE job = 'push'")
        .fetch_optional(&mut connection)
        .await
        .unwrap()
}

/// The index of the process holding the push lease, waiting for one to take it.
async fn push_worker(cluster: &Cluster, alive: &[usize]) -> usize {
    let started = Instant::now();
    loop {
        if let Some(holder) = push_lease_holder(&cluster.database_url).await
            && let Some(index) = alive
                .iter()
                .copied()
                .find(|index| holder.starts_with(&format!("push-{}_", cluster.pid(*index))))
        {
            return index;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no live process took the push lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bob's syncs through the proxy: the messages, until `target` arrived (or two minutes).
async fn follow(
    bob: Client,
    room_id: String,
    since: String,
    target: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut since = since;
    let started = Instant::now();
    while seen.len() < target.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120)
    {
        let body = bob.sync(Some(&since), 2_000).await;
        let room = &body["rooms"]["join"][&room_id];
        assert_ne!(room["timeline"]["limited"], json!(true), "a gap in Bob's timeline");
        for event in room["timeline"]["events"].as_array().into_iter().flatten() {
            if event["type"] == "m.room.message" {
                seen.push(event["event_id"].as_str().unwrap().to_owned());
            }
        }
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_no_acknowledged_event_and_its_push_work_moves() {
    let mut cluster = Cluster::start(3).await;
    let gateway = RecordingPushGateway::start().await;
    let token = cluster.admin(&["token", "create", "--uses", "2"]).trim().to_owned();
    let mut alice = cluster.sign_up("alice", &token).await;
    let mut bob = cluster.sign_up("bob", &token).await;
    alice.retry = true;
    bob.retry = true;
    let pusher = json!({
        "pushkey": "bob-phone", "kind": "http", "app_id": "org.example.chat",
        "app_display_name": "Chat", "device_display_name": "phone", "lang": "en",
        "data": { "url": gateway.url() },
    });
    let (status, body) = bob.post("/_matrix/client/v3/pushers/set", pusher).await;
    assert_eq!(status, 200, "{body}");
    let (status, room) = alice
        .post("/_matrix/client/v3/createRoom", json!({ "preset": "public_chat", "name": "Kill" }))
        .await;
    assert_eq!(status, 200, "{room}");
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let (status, body) = bob.post(&format!("/_matrix/client/v3/join/{room_id}"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // Bob follows the room through the proxy, during the load, until he saw `target` messages.
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let follower = tokio::spawn(follow(bob.clone(), room_id.clone(), since, target.clone()));

    // Three senders through the proxy; a request cut off by the kill is sent again with its
    // transaction ID, as a client does.
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for sender in 0..3 {
        let (alice, room_id, stop) = (alice.clone(), room_id.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut index = 0;
            while !stop.load(Ordering::SeqCst) {
                let txn = format!("k{sender}-{index}");
                acknowledged.push(alice.say(&room_id, &txn, &txn).await);
                index += 1;
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim = push_worker(&cluster, &[0, 1, 2]).await;
    let before_kill = gateway.event_ids().len();
    cluster.kill(victim);
    let killed = Instant::now();
    let alive: Vec<usize> = (0..3).filter(|index| *index != victim).collect();
    let heir = push_worker(&cluster, &alive).await;
    let takeover = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for sender in senders {
        acknowledged.extend(sender.await.unwrap());
    }
    let unique: HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(unique.len(), acknowledged.len(), "a retried send made a second event");
    assert!(acknowledged.len() > 30, "too little load to mean anything: {}", acknowledged.len());

    // Every acknowledged message is in the room once, and Bob's syncs see each once.
    target.store(acknowledged.len(), Ordering::SeqCst);
    let seen = follower.await.unwrap();
    let seen_set: HashSet<&String> = seen.iter().collect();
    assert_eq!(seen_set.len(), seen.len(), "Bob saw a message twice");
    assert_eq!(seen_set, unique, "Bob's syncs and the acknowledged messages differ");

    // Every notification reaches the gateway, sent by the process that took the lease over.
    let started = Instant::now();
    let missing = loop {
        let received: HashSet<String> = gateway.event_ids().into_iter().collect();
        let missing: Vec<&String> =
            acknowledged.iter().filter(|event_id| !received.contains(*event_id)).collect();
        if missing.is_empty() || started.elapsed() > Duration::from_secs(60) {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(missing, 0, "notifications lost with the killed process");
    let received = gateway.event_ids();
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for event_id in &received {
        *counts.entry(event_id).or_default() += 1;
    }
    let doubled = counts.values().filter(|count| **count > 1).count();
    eprintln!(
        "{} messages acknowledged; process {victim} killed after {before_kill} notifications; \
         process {heir} took the push lease over in {takeover:?}; {doubled} notifications sent \
         twice; requests per process: {:?}",
        acknowledged.len(),
        cluster.proxy.hits()
    );
    assert!(takeover < Duration::from_secs(10), "{takeover:?}");
    assert!(received.len() > before_kill, "nothing was pushed after the kill");
}
