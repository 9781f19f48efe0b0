//! A push gateway for tests, served on loopback: it records every notification a server sends
//! it (`POST /_matrix/push/v1/notify`), rejects the pushkeys a test tells it to, and may take
//! its time answering. Connections are kept open between requests, and counted.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the gateway has seen and what it refuses.
#[derive(Default)]
struct Record {
    received: Vec<Value>,
    rejecting: Vec<String>,
    connections: usize,
}

/// A push gateway on `127.0.0.1`: every notification it is sent, in order of arrival, and the
/// pushkeys it answers as rejected.
#[derive(Clone)]
pub struct RecordingPushGateway {
    url: String,
    record: Arc<Mutex<Record>>,
}

impl RecordingPushGateway {
    /// Starts the gateway on a free loopback port.
    pub async fn start() -> Self {
        Self::start_slow(Duration::ZERO).await
    }

    /// Starts a gateway that takes `delay` over each notification before it records and
    /// answers it (a server sending one at a time then has the others queued for a while).
    pub async fn start_slow(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free loopback port");
        let address = listener.local_addr().expect("invariant: a bound listener has an address");
        let record = Arc::new(Mutex::new(Record::default()));
        let shared = record.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                lock(&shared).connections += 1;
                tokio::spawn(answer(stream, shared.clone(), delay));
            }
        });
        Self { url: format!("http://{address}/_matrix/push/v1/notify"), record }
    }

    /// The URL to give a pusher (`data.url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        lock(&self.record)
    }

    /// How many connections the server opened to the gateway so far.
    pub fn connections(&self) -> usize {
        self.record().connections
    }

    /// Every notification received so far (the request bodies), oldest first.
    pub fn received(&self) -> Vec<Value> {
        self.record().received.clone()
    }

    /// The event IDs of the notifications received so far, oldest first.
    pub fn event_ids(&self) -> Vec<String> {
        let record = self.record();
        let event_ids = record.received.iter();
        event_ids
            .filter_map(|notification| notification["notification"]["event_id"].as_str())
            .map(str::to_owned)
            .collect()
    }

    /// Answers notifications for `pushkey` as rejected from now on (the server should then
    /// drop its pusher).
    pub fn reject(&self, pushkey: &str) {
        self.record().rejecting.push(pushkey.to_owned());
    }

    /// Waits (up to five seconds) until `count` notifications have arrived; returns them all.
    pub async fn wait_for(&self, count: usize) -> Vec<Value> {
        for _ in 0..200 {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the gateway got {:?}, not {count} notifications", self.received());
    }
}

fn lock(record: &Mutex<Record>) -> MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Answers the requests of one connection, one after the other, until the server closes it.
async fn answer(mut stream: TcpStream, record: Arc<Mutex<Record>>, delay: Duration) {
    let mut buffer = Vec::new();
    while let Some(body) = read_request(&mut stream, &mut buffer).await {
        let response = notify(&body, &record, delay).await;
        if stream.write_all(response.as_bytes()).await.is_err() {
            // The server may have given up waiting; nothing to do then.
            return;
        }
    }
}

/// Reads one request (the head, then as much body as `Content-Length` says) and returns its
/// body; what follows it stays in `buffer`. `None` when the connection ends first.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                let body = buffer[end + 4..end + 4 + length].to_vec();
                buffer.drain(..end + 4 + length);
                return Some(body);
            }
        }
        let read = stream.read(&mut chunk).await.unwrap_or(0);
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Waits `delay`, records a notification and returns the response: the rejected pushkeys
/// among its devices'.
async fn notify(body: &[u8], record: &Mutex<Record>, delay: Duration) -> String {
    let notification: Value = serde_json::from_slice(body).unwrap_or_default();
    let pushkeys: Vec<String> = notification["notification"]["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|device| device["pushkey"].as_str())
        .map(str::to_owned)
        .collect();
    tokio::time::sleep(delay).await;
    let rejected: Vec<String> = {
        let mut record = lock(record);
        record.received.push(notification);
        pushkeys.into_iter().filter(|pushkey| record.rejecting.contains(pushkey)).collect()
    };
    let answer = json!({ "rejected": rejected }).to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
        answer.len()
    )
}
