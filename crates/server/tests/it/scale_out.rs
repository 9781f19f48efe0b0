//! Three `rhizome serve` processes on one PostgreSQL database behind a round-robin proxy:
//! clients whose requests land on any process sign up, chat, type, send receipts and to-device
//! messages and follow the room with `/sync` and sliding sync; every client sees every message
//! once, in one order. Login and OpenID tokens made on one process work on another, and a
//! long-poll on one process wakes for an event sent through another.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::cluster::{Client, Cluster, encode};

/// What one client saw of the room through its syncs.
#[derive(Debug, Default)]
struct Seen {
    messages: Vec<String>,
    typing: HashSet<String>,
    receipts: HashSet<String>,
    to_device: Vec<Value>,
    limited: bool,
}

impl Seen {
    fn absorb(&mut self, room_id: &str, body: &Value) {
        let room = &body["rooms"]["join"][room_id];
        self.limited |= room["timeline"]["limited"] == json!(true);
        for event in room["timeline"]["events"].as_array().into_iter().flatten() {
            if event["type"] == "m.room.message" {
                self.messages.push(event["event_id"].as_str().unwrap().to_owned());
            }
        }
        for event in room["ephemeral"]["events"].as_array().into_iter().flatten() {
            if event["type"] == "m.typing" {
                for user in event["content"]["user_ids"].as_array().into_iter().flatten() {
                    self.typing.insert(user.as_str().unwrap().to_owned());
                }
            }
            if event["type"] == "m.receipt" {
                for receipts in event["content"].as_object().into_iter().flat_map(|c| c.values()) {
                    for user in receipts["m.read"].as_object().into_iter().flat_map(|r| r.keys()) {
                        self.receipts.insert(user.clone());
                    }
                }
            }
        }
        self.to_device
            .extend(body["to_device"]["events"].as_array().into_iter().flatten().cloned());
    }
}

/// Follows the room with `/sync` through the proxy until `done` or a minute has passed.
async fn follow(client: Client, room_id: String, since: String, done: fn(&Seen) -> bool) -> Seen {
    let mut seen = Seen::default();
    let mut since = since;
    let started = Instant::now();
    while !done(&seen) && started.elapsed() < Duration::from_secs(60) {
        let body = client.sync(Some(&since), 5_000).await;
        seen.absorb(&room_id, &body);
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
    seen
}

/// Follows the room with sliding sync through the proxy until `count` messages arrived or a
/// minute has passed; the messages.
async fn follow_sliding(client: Client, room_id: String, count: usize) -> Vec<String> {
    let path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let body = json!({
        "conn_id": "scale",
        "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 100, "required_state": [] } },
    });
    let mut pos: Option<String> = None;
    let mut messages = Vec::new();
    let started = Instant::now();
    while messages.len() < count && started.elapsed() < Duration::from_secs(60) {
        let url = match &pos {
            None => format!("{path}?timeout=0"),
            Some(pos) => format!("{path}?timeout=5000&pos={}", encode(pos)),
        };
        let (status, response) = client.post(&url, body.clone()).await;
        assert_eq!(status, 200, "sliding sync across processes: {response}");
        let room = &response["rooms"][&room_id];
        for event in room["timeline"].as_array().into_iter().flatten() {
            if event["type"] == "m.room.message" {
                messages.push(event["event_id"].as_str().unwrap().to_owned());
            }
        }
        pos = Some(response["pos"].as_str().unwrap().to_owned());
    }
    messages
}

const SENDERS: usize = 4;
const MESSAGES_EACH: usize = 10;
const ALL: usize = SENDERS * MESSAGES_EACH;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_serve_one_homeserver_behind_a_round_robin_proxy() {
    let cluster = Cluster::start(3).await;
    // Processes that started together publish one signing key.
    let mut keys = HashSet::new();
    for index in 0..3 {
        let keys_url = format!("{}/_matrix/key/v2/server", cluster.base(index));
        let body: Value = reqwest::get(keys_url).await.unwrap().json().await.unwrap();
        keys.insert(body["verify_keys"].to_string());
    }
    assert_eq!(keys.len(), 1, "{keys:?}");

    // Token sign-up is two requests, each reaching another process; the token is made by the
    // admin command, beside the running processes.
    let token = cluster.admin(&["token", "create", "--uses", "5"]).trim().to_owned();
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        users.push(cluster.sign_up(name, &token).await);
    }
    let (status, body) = Client::anonymous(&cluster.proxy.base)
        .post(
            "/_matrix/client/v3/register",
            json!({ "username": "frank", "password": "pw-pw-pw-pw" }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let (alice, erin) = (users[0].clone(), users[4].clone());
    let (status, room) = alice
        .post("/_matrix/client/v3/createRoom", json!({ "preset": "public_chat", "name": "Scale" }))
        .await;
    assert_eq!(status, 200, "{room}");
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    for user in &users[1..] {
        let (status, body) =
            user.post(&format!("/_matrix/client/v3/join/{room_id}"), json!({})).await;
        assert_eq!(status, 200, "{body}");
    }

    // Everyone follows the room, each sync reaching the next process.
    let mut followers = Vec::new();
    for (index, user) in users[..4].iter().enumerate() {
        let since = user.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
        let done: fn(&Seen) -> bool = match index {
            3 => |seen| {
                seen.messages.len() >= ALL
                    && seen.receipts.contains("@carol:localhost")
                    && !seen.to_device.is_empty()
            },
            _ => |seen| {
                seen.messages.len() >= ALL
                    && seen.receipts.contains("@carol:localhost")
                    && seen.typing.contains("@bob:localhost")
            },
        };
        followers.push(tokio::spawn(follow(user.clone(), room_id.clone(), since, done)));
    }
    let sliding = tokio::spawn(follow_sliding(erin, room_id.clone(), ALL));

    // Four senders at once, each request on the next process.
    let mut senders = Vec::new();
    for (sender, user) in users[..SENDERS].iter().enumerate() {
        let (user, room_id) = (user.clone(), room_id.clone());
        senders.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for index in 0..MESSAGES_EACH {
                sent.push(
                    user.say(&room_id, &format!("t{index}"), &format!("{sender}-{index}")).await,
                );
            }
            sent
        }));
    }
    let mut acknowledged = HashSet::new();
    for sender in senders {
        acknowledged.extend(sender.await.unwrap());
    }
    assert_eq!(acknowledged.len(), ALL);

    // Typing, a receipt and a to-device message, each through some process.
    let bob = &users[1];
    let path = format!("/_matrix/client/v3/rooms/{room_id}/typing/{}", bob.user_id);
    let (status, body) = bob.put(&path, json!({ "typing": true, "timeout": 30_000 })).await;
    assert_eq!(status, 200, "{body}");
    let last = acknowledged.iter().next().unwrap().clone();
    let path = format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{last}");
    let (status, body) = users[2].post(&path, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let dave = &users[3];
    let messages =
        json!({ "messages": { dave.user_id.clone(): { dave.device_id.clone(): { "n": 1 } } } });
    let (status, body) =
        alice.put("/_matrix/client/v3/sendToDevice/org.example.test/td1", messages).await;
    assert_eq!(status, 200, "{body}");

    // The room's order, as /messages gives it.
    let path = format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=200");
    let (status, page) = alice.get(&path).await;
    assert_eq!(status, 200, "{page}");
    let mut order: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect();
    order.reverse();
    assert_eq!(order.iter().cloned().collect::<HashSet<_>>(), acknowledged);

    for (index, follower) in followers.into_iter().enumerate() {
        let seen = follower.await.unwrap();
        assert!(!seen.limited, "follower {index}: a limited timeline");
        assert_eq!(seen.messages, order, "follower {index} saw another order or duplicates");
        assert!(seen.receipts.contains("@carol:localhost"), "follower {index}: {seen:?}");
        if index == 3 {
            assert_eq!(seen.to_device.len(), 1, "{:?}", seen.to_device);
            assert_eq!(seen.to_device[0]["content"]["n"], 1);
        } else {
            assert!(seen.typing.contains("@bob:localhost"), "follower {index}: {seen:?}");
        }
    }
    assert_eq!(sliding.await.unwrap(), order, "sliding sync saw another order or duplicates");

    let hits = cluster.proxy.hits();
    assert!(hits.iter().all(|hits| *hits > 20), "requests were not spread: {hits:?}");
    eprintln!("requests per process: {hits:?}");

    tokens_work_across_processes(&cluster, &alice).await;
    // An account deactivated by the admin command is refused by every process at once
    // (each had its token cached from the syncs above).
    cluster.admin(&["user", "deactivate", "@carol:localhost"]);
    for index in 0..3 {
        let carol = users[2].via(&cluster.base(index));
        let (status, body) = carol.get("/_matrix/client/v3/account/whoami").await;
        assert_eq!(status, 401, "process {index} still knows the deactivated account: {body}");
    }
    uploads_wake_downloads_across_processes(&cluster, &alice, bob).await;
    wakes_across_processes(&cluster, &alice, bob, &room_id).await;
}

/// A login token and an OpenID token made on one process are honoured on another (once, for
/// the login token).
async fn tokens_work_across_processes(cluster: &Cluster, alice: &Client) {
    let path = "/_matrix/client/v1/login/get_token";
    let (status, first) = alice.via(&cluster.base(0)).post(path, json!({})).await;
    assert_eq!(status, 401, "{first}");
    let auth = json!({
        "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
        "password": "a-long-password", "session": first["session"],
    });
    let (status, issued) = alice.via(&cluster.base(1)).post(path, json!({ "auth": auth })).await;
    assert_eq!(status, 200, "{issued}");
    let login = json!({ "type": "m.login.token", "token": issued["login_token"] });
    let (status, session) =
        Client::anonymous(&cluster.base(2)).post("/_matrix/client/v3/login", login.clone()).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["user_id"], alice.user_id);
    let (status, again) =
        Client::anonymous(&cluster.base(0)).post("/_matrix/client/v3/login", login).await;
    assert_eq!(status, 403, "a login token was used twice: {again}");

    let path = format!("/_matrix/client/v3/user/{}/openid/request_token", alice.user_id);
    let (status, openid) = alice.via(&cluster.base(0)).post(&path, json!({})).await;
    assert_eq!(status, 200, "{openid}");
    let token = openid["access_token"].as_str().unwrap();
    let path = format!("/_matrix/federation/v1/openid/userinfo?access_token={}", encode(token));
    let (status, info) = Client::anonymous(&cluster.base(1)).get(&path).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info, json!({ "sub": alice.user_id }));
}

/// A long-poll parked on one process wakes for a message sent through another: the time from
/// the send's answer to the sync's, for each pair of processes.
async fn wakes_across_processes(cluster: &Cluster, alice: &Client, bob: &Client, room_id: &str) {
    let mut latencies = Vec::new();
    for round in 0..6 {
        let (waiter, writer) =
            (alice.via(&cluster.base(round % 3)), bob.via(&cluster.base((round + 1) % 3)));
        let since = waiter.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
        let poll = tokio::spawn(async move {
            let body = waiter.sync(Some(&since), 20_000).await;
            (Instant::now(), body)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let event_id = writer.say(room_id, &format!("wake{round}"), "wake up").await;
        let acknowledged = Instant::now();
        let (woke, body) = poll.await.unwrap();
        let mut seen = Seen::default();
        seen.absorb(room_id, &body);
        assert_eq!(seen.messages, vec![event_id], "round {round}");
        latencies.push(woke.saturating_duration_since(acknowledged));
    }
    latencies.sort();
    eprintln!("send answered → other process's sync answered: {latencies:?}");
    assert!(latencies[latencies.len() / 2] < Duration::from_millis(50), "{latencies:?}");
    assert!(latencies.iter().all(|latency| *latency < Duration::from_millis(200)), "{latencies:?}");
}

/// A download waiting on one process for an asynchronous upload gets it as soon as another
/// process receives the content.
async fn uploads_wake_downloads_across_processes(cluster: &Cluster, alice: &Client, bob: &Client) {
    let (status, created) =
        alice.via(&cluster.base(0)).post("/_matrix/media/v1/create", json!({})).await;
    assert_eq!(status, 200, "{created}");
    let media = created["content_uri"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
    let download =
        format!("{}/_matrix/client/v1/media/download/{media}?timeout_ms=20000", cluster.base(1));
    let token = bob.token.clone();
    let waiting = tokio::spawn(async move {
        let response =
            reqwest::Client::new().get(download).bearer_auth(token).send().await.unwrap();
        (Instant::now(), response.status().as_u16(), response.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let upload = format!("{}/_matrix/media/v3/upload/{media}", cluster.base(2));
    let response = reqwest::Client::new()
        .put(upload)
        .bearer_auth(&alice.token)
        .header("content-type", "text/plain")
        .body("arrived")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let uploaded = Instant::now();
    let (woke, status, body) = waiting.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "arrived"));
    let waited = woke.saturating_duration_since(uploaded);
    assert!(waited < Duration::from_secs(2), "the download waited {waited:?} after the upload");
}
