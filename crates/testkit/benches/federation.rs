//! Federation figures, measured on loopback (not asserted: machines differ and share their CPU).
//!
//! `cargo bench -p rhizome-testkit --bench federation -- [queue|verify|latency|join] [--synapse]`
//!
//! - `queue`: the outbound queue's throughput, PDUs per second, to one destination and to 50.
//! - `verify`: the added time of verifying a request's X-Matrix signature, per request.
//! - `latency`: a message sent on one server to a long-polling `/sync` on another (median and
//!   p90 of 100), Rhizome to Rhizome, and with `--synapse` both ways with Synapse.
//! - `join`: with `--synapse`, a Rhizome user joining a Synapse room of 1,000 members and
//!   10,000 events, and a Synapse user joining such a room on Rhizome.

// A benchmark: a failed step ends it at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use rhizome_testkit::{
    Api, TestServer, encode,
    peer::{Reply, Signing, TestPeer},
    synapse::Synapse,
};
use ruma::RoomId;
use serde_json::{Value, json};

fn main() {
    let args: Vec<String> =
        std::env::args().skip(1).filter(|arg| !arg.starts_with("--bench")).collect();
    let with_synapse = args.iter().any(|arg| arg == "--synapse");
    let wanted: Vec<&str> =
        args.iter().map(String::as_str).filter(|arg| !arg.starts_with("--")).collect();
    let run = |name: &str| wanted.is_empty() || wanted.contains(&name);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        if run("queue") {
            queue_throughput(1, 2000).await;
            queue_throughput(50, 200).await;
        }
        if run("verify") {
            verification_cost().await;
        }
        if run("latency") {
            latency_rhizome_to_rhizome().await;
            if with_synapse {
                latency_with_synapse().await;
            }
        }
        if (run("join") || run("join-to-synapse") || run("join-to-rhizome")) && with_synapse {
            let to_synapse = run("join") || run("join-to-synapse");
            let to_rhizome = run("join") || run("join-to-rhizome");
            big_room_joins(to_synapse, to_rhizome).await;
        }
    });
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// PDUs per second from one server to `destinations` peers: the peers hold back their first
/// transaction while `messages` queue up, then take everything as fast as the queue sends.
async fn queue_throughput(destinations: usize, messages: usize) {
    // The held first transaction must not time out (a failure would start a catch-up).
    let server = TestServer::start_federating_with(
        rhizome_testkit::Backend::Sqlite,
        "127.0.0.201",
        |config| {
            config.federation.request_timeout_secs = 120;
        },
    )
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let room_id = <&RoomId>::try_from(room.as_str()).unwrap();
    // When each message PDU arrived, and when the first transaction of each peer came.
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let first_transaction = Arc::new(Mutex::new(None::<Instant>));
    let mut peers = Vec::new();
    for index in 0..destinations {
        let ip = format!("127.0.1.{}", index + 1);
        let peer = TestPeer::start_on(ip.parse().unwrap()).await;
        peer.join_room(
            &server.config.server_name,
            server.tls_base_url.as_deref().unwrap(),
            room_id,
            "p",
        )
        .await;
        peers.push(peer);
    }
    for peer in &peers {
        let arrivals = arrivals.clone();
        let first_transaction = first_transaction.clone();
        let held = Arc::new(Mutex::new(true));
        peer.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", move |request| {
            let now = Instant::now();
            let count = request
                .json()
                .and_then(|body| {
                    body["pdus"].as_array().map(|pdus| {
                        pdus.iter()
                            .filter(|pdu| {
                                pdu["content"]["body"].as_str().is_some_and(|b| b.starts_with('m'))
                            })
                            .count()
                    })
                })
                .unwrap_or(0);
            arrivals.lock().unwrap().extend(std::iter::repeat_n(now, count));
            let reply = Reply::json(StatusCode::OK, &json!({ "pdus": {} }));
            // Each peer's first transaction is answered after HOLD, so that every message is
            // queued behind it before the measured draining starts.
            let mut held = held.lock().unwrap();
            if std::mem::replace(&mut *held, false) {
                first_transaction.lock().unwrap().get_or_insert(now);
                reply.after(HOLD)
            } else {
                reply
            }
        });
    }
    alice.send_text(&room, "opening").await;
    let sending = Instant::now();
    let sends: Vec<_> = (0..messages)
        .map(|index| {
            let alice = alice.clone();
            let room = room.clone();
            async move { alice.send_text(&room, &format!("m{index}")).await }
        })
        .collect();
    futures_util::future::join_all(sends).await;
    let sent_in = sending.elapsed();
    let expected = messages * destinations;
    loop {
        let count = arrivals.lock().unwrap().len();
        if count >= expected {
            break;
        }
        assert!(sending.elapsed() < Duration::from_secs(600), "only {count} of {expected} arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let released = first_transaction.lock().unwrap().expect("a first transaction") + HOLD;
    let arrivals = arrivals.lock().unwrap();
    let before = arrivals.iter().filter(|at| **at < released).count();
    let last = arrivals.iter().max().copied().unwrap();
    let drained = last.saturating_duration_since(released);
    println!(
        "queue: {messages} PDUs to {destinations} destination(s) (sent in {:.1} s, {before} \
         delivered before the queue was released): {} delivered in {:.2} s: {:.0} PDUs/s",
        sent_in.as_secs_f64(),
        expected - before,
        drained.as_secs_f64(),
        (expected - before) as f64 / drained.as_secs_f64()
    );
}

/// How long each peer holds its first transaction while the messages are queued.
const HOLD: Duration = Duration::from_secs(20);

/// The added cost of X-Matrix verification: signed requests to `/send` with an empty
/// transaction against unsigned ones to `/version`, interleaved on one connection.
async fn verification_cost() {
    let server = TestServer::start_federating("127.0.0.202").await;
    let peer = TestPeer::start_on("127.0.0.203".parse().unwrap()).await;
    let base = server.tls_base_url.clone().unwrap();
    let name = server.config.server_name.clone();
    // Warm up: the server fetches the peer's keys once.
    let body = json!({ "origin": peer.server_name(), "origin_server_ts": 1, "pdus": [] });
    peer.request(&name, &base, Method::PUT, "/_matrix/federation/v1/send/warm", Some(body.clone()))
        .await;
    let (mut signed, mut unsigned) = (Vec::new(), Vec::new());
    for round in 0..500 {
        let started = Instant::now();
        let response = peer
            .request(
                &name,
                &base,
                Method::PUT,
                &format!("/_matrix/federation/v1/send/t{round}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(response.status.as_u16(), 200);
        signed.push(started.elapsed());
        let started = Instant::now();
        let response = peer
            .request_with(
                Signing::NoHeader,
                &name,
                &base,
                Method::GET,
                "/_matrix/federation/v1/version",
                None,
            )
            .await;
        assert_eq!(response.status.as_u16(), 200);
        unsigned.push(started.elapsed());
    }
    signed.sort();
    unsigned.sort();
    let (signed, unsigned) = (percentile(&signed, 0.5), percentile(&unsigned, 0.5));
    println!(
        "verify: median signed /send (empty) {} µs, unsigned /version {} µs: verification and \
         de-duplication add about {} µs per request",
        signed.as_micros(),
        unsigned.as_micros(),
        signed.as_micros().saturating_sub(unsigned.as_micros())
    );
}

/// Waits for `body` in `room` at `receiver` from `since`; returns the next batch.
async fn wait_for(receiver: &Api, room: &str, body: &str, since: &str) -> String {
    let mut since = since.to_owned();
    loop {
        let sync = receiver.sync(&format!("timeout=30000&since={since}")).await;
        since = sync["next_batch"].as_str().unwrap().to_owned();
        let events = sync["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if events.iter().any(|event| event["content"]["body"] == body) {
            return since;
        }
    }
}

async fn measure_latency(label: &str, sender: &Api, receiver: &Api, room: &str) {
    let mut since = receiver.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let mut samples = Vec::new();
    for round in 0..100 {
        let body = format!("ping {round}");
        let waiter = {
            let receiver = receiver.clone();
            let room = room.to_owned();
            let body = body.clone();
            let since = since.clone();
            tokio::spawn(async move { wait_for(&receiver, &room, &body, &since).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        sender.send_text(room, &body).await;
        since = waiter.await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "latency {label}: send to the other server's /sync, median {:.1} ms, p90 {:.1} ms (100 messages)",
        percentile(&samples, 0.5).as_secs_f64() * 1000.0,
        percentile(&samples, 0.9).as_secs_f64() * 1000.0
    );
}

async fn latency_rhizome_to_rhizome() {
    let a = TestServer::start_federating("127.0.0.204").await;
    let b = TestServer::start_federating("127.0.0.205").await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(
        &format!("/_matrix/client/v3/join/{}?via={}", encode(&room), a.config.server_name),
        json!({}),
    )
    .await
    .ok();
    measure_latency("Rhizome → Rhizome", &alice, &bob, &room).await;
    measure_latency("Rhizome ← Rhizome", &bob, &alice, &room).await;
}

async fn synapse_user(synapse: &Synapse, localpart: &str) -> Api {
    let user = synapse.register(localpart, false).await;
    let mut api = Api::with_client(synapse.base_url(), synapse.client());
    api.token = Some(user.access_token);
    api.user_id = Some(user.user_id.to_string());
    api
}

async fn latency_with_synapse() {
    let rhizome = TestServer::start_federating("127.0.0.206").await;
    let synapse = Synapse::start_with(
        rhizome_testkit::synapse::SynapseOptions::default().ip("127.0.0.207".parse().unwrap()),
    )
    .await;
    let alice = Api::new_user(&rhizome.base_url, "alice").await;
    let sam = synapse_user(&synapse, "sam").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    sam.post(
        &format!("/_matrix/client/v3/join/{}?via={}", encode(&room), rhizome.config.server_name),
        json!({}),
    )
    .await
    .ok();
    measure_latency("Rhizome → Synapse", &alice, &sam, &room).await;
    measure_latency("Synapse → Rhizome", &sam, &alice, &room).await;
}

/// Fills a room with `members` joined users and `events` messages, through a server's client
/// API, `users` being fresh sessions on that server.
async fn fill_room(creator: &Api, room: &str, members: &[Api], events: usize) {
    let started = Instant::now();
    for chunk in members.chunks(20) {
        let path = format!("/_matrix/client/v3/join/{}", encode(room));
        let joins = chunk.iter().map(|member| {
            let path = path.clone();
            async move { member.post(&path, json!({})).await }
        });
        futures_util::future::join_all(joins).await;
    }
    println!("join: {} members joined in {:.0} s", members.len(), started.elapsed().as_secs_f64());
    let started = Instant::now();
    for batch in (0..events).collect::<Vec<_>>().chunks(20) {
        let sends: Vec<_> = batch
            .iter()
            .map(|index| async move { creator.send_text(room, &format!("history {index}")).await })
            .collect();
        futures_util::future::join_all(sends).await;
    }
    println!("join: {events} messages sent in {:.0} s", started.elapsed().as_secs_f64());
}

async fn big_room_joins(to_synapse: bool, to_rhizome: bool) {
    let rhizome = TestServer::start_federating_with(
        rhizome_testkit::Backend::Sqlite,
        "127.0.0.208",
        |config| {
            config.federation.request_timeout_secs = 600;
        },
    )
    .await;
    let synapse = Synapse::start_with(
        rhizome_testkit::synapse::SynapseOptions::default()
            .ip("127.0.0.209".parse().unwrap())
            // Sign-ups of a thousand members: the password hash is not what is measured.
            .config("bcrypt_rounds", json!(4)),
    )
    .await;
    if to_synapse {
        join_a_synapse_room(&rhizome, &synapse).await;
    }
    if to_rhizome {
        join_a_rhizome_room(&rhizome, &synapse).await;
    }
}

/// A Rhizome user joins a Synapse room of 1,000 members and 10,000 events.
async fn join_a_synapse_room(rhizome: &TestServer, synapse: &Synapse) {
    let owner = synapse_user(synapse, "owner").await;
    let room = owner.create_room(json!({ "preset": "public_chat" })).await;
    let mut members = Vec::new();
    for chunk in (0..999).collect::<Vec<_>>().chunks(20) {
        let sign_ups = chunk
            .iter()
            .map(|index| async move { synapse_user(synapse, &format!("member{index}")).await });
        members.extend(futures_util::future::join_all(sign_ups).await);
    }
    println!("join: the Synapse room is being filled");
    fill_room(&owner, &room, &members, 10_000).await;
    let alice = Api::new_user(&rhizome.base_url, "alice").await;
    let started = Instant::now();
    let joined = alice
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", encode(&room), synapse.server_name()),
            json!({}),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(joined.status.as_u16(), 200, "{}", joined.body);
    println!(
        "join: a Rhizome user joined a Synapse room of 1,000 members and 10,000 events in {:.2} s",
        elapsed.as_secs_f64()
    );
}

/// A Synapse user joins a Rhizome room of 1,000 members and 10,000 events.
async fn join_a_rhizome_room(rhizome: &TestServer, synapse: &Synapse) {
    let host = Api::new_user(&rhizome.base_url, "host").await;
    let room = host.create_room(json!({ "preset": "public_chat" })).await;
    let mut members = Vec::new();
    for chunk in (0..999).collect::<Vec<_>>().chunks(20) {
        let base_url = &rhizome.base_url;
        let sign_ups = chunk
            .iter()
            .map(|index| async move { Api::new_user(base_url, &format!("member{index}")).await });
        members.extend(futures_util::future::join_all(sign_ups).await);
    }
    println!("join: the Rhizome room is being filled");
    // FEDERATION_BENCH_MESSAGES shortens the history (the join transfers the state and the
    // auth chain, whose size the members set, not the messages).
    let messages = std::env::var("FEDERATION_BENCH_MESSAGES")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(10_000);
    fill_room(&host, &room, &members, messages).await;
    let sam = synapse_user(synapse, "sam").await;
    let started = Instant::now();
    let joined = sam
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                encode(&room),
                rhizome.config.server_name
            ),
            json!({}),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(joined.status.as_u16(), 200, "{}", joined.body);
    println!(
        "join: a Synapse user joined a Rhizome room of 1,000 members and {messages} messages in \
         {:.2} s",
        elapsed.as_secs_f64()
    );
    let _: Value = joined.body;
}
