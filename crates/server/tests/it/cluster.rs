//! Support for the scale-out tests: several `rhizome serve` processes sharing one
//! configuration, data directory and PostgreSQL database, a tiny round-robin TCP proxy in front
//! of them (one connection per request, so consecutive requests reach different processes),
//! and a client that speaks to the proxy.

use std::{
    path::PathBuf,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rhizome_storage_sql::testing::shared_postgres;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use super::{command, free_port};

/// Processes of one homeserver on one database.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub database_url: String,
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    pub proxy: Proxy,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// Starts `count` processes at once (they apply the migrations and make the signing key
    /// together) and the proxy in front of them.
    pub async fn start(count: usize) -> Self {
        Self::start_with(count, "").await
    }

    /// Like [`start`](Self::start), with more configuration (TOML appended to the file).
    pub async fn start_with(count: usize, extra_toml: &str) -> Self {
        let database_url = shared_postgres().create_database().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cluster.toml");
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = \"{database_url}\"\nmax_connections = 6\n\n\
                 [push]\nallowed_addresses = [\"127.0.0.1\"]\n{extra_toml}"
            ),
        )
        .unwrap();
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for (index, port) in ports.iter().enumerate() {
            let log = dir.path().join(format!("serve-{index}.log"));
            let log = std::fs::File::create(log).unwrap();
            let child = command(dir.path(), *port)
                .env("RHIZOME_CONFIG", &config)
                .arg("serve")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            children.push(Some(child));
        }
        let proxy = Proxy::start(ports.clone()).await;
        let cluster = Self { dir, config, database_url, ports, children, proxy };
        for index in 0..count {
            cluster.wait_ready(index).await;
        }
        cluster
    }

    /// The base URL of one process, for requests that must reach it.
    pub fn base(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[index])
    }

    async fn wait_ready(&self, index: usize) {
        let started = Instant::now();
        let url = format!("{}/_matrix/client/versions", self.base(index));
        loop {
            if reqwest::get(&url).await.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            let log = std::fs::read_to_string(self.dir.path().join(format!("serve-{index}.log")));
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "process {index} did not start: {log:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills a process with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The process ID of a process.
    pub fn pid(&self, index: usize) -> u32 {
        self.children[index].as_ref().map_or(0, Child::id)
    }

    /// Runs an admin command with the cluster's configuration; its output.
    pub fn admin(&self, args: &[&str]) -> String {
        let output = command(self.dir.path(), 0)
            .env("RHIZOME_CONFIG", &self.config)
            .arg("admin")
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "admin {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// A client of the proxy that signs up with a registration token, in two requests (which
    /// reach different processes).
    pub async fn sign_up(&self, name: &str, token: &str) -> Client {
        let mut client = Client::anonymous(&self.proxy.base);
        let url = "/_matrix/client/v3/register";
        let body = json!({ "username": name, "password": "a-long-password" });
        let (status, challenge) = client.post(url, body.clone()).await;
        assert_eq!(status, 401, "{challenge}");
        let mut body = body;
        body["auth"] = json!({
            "type": "m.login.registration_token", "token": token, "session": challenge["session"],
        });
        let (status, registered) = client.post(url, body).await;
        assert_eq!(status, 200, "{registered}");
        client.token = registered["access_token"].as_str().unwrap().to_owned();
        client.user_id = registered["user_id"].as_str().unwrap().to_owned();
        client.device_id = registered["device_id"].as_str().unwrap().to_owned();
        client
    }
}

/// A round-robin TCP proxy: each connection goes to the next process that accepts it.
pub struct Proxy {
    pub base: String,
    /// Connections each process was given.
    pub hits: Arc<Vec<AtomicUsize>>,
}

impl Proxy {
    async fn start(ports: Vec<u16>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<Vec<AtomicUsize>> =
            Arc::new(ports.iter().map(|_| AtomicUsize::new(0)).collect());
        let counters = hits.clone();
        tokio::spawn(async move {
            let next = AtomicUsize::new(0);
            while let Ok((mut inbound, _)) = listener.accept().await {
                let first = next.fetch_add(1, Ordering::SeqCst);
                let (ports, counters) = (ports.clone(), counters.clone());
                tokio::spawn(async move {
                    // A process that refuses the connection (a dead one) is skipped.
                    for offset in 0..ports.len() {
                        let index = (first + offset) % ports.len();
                        if let Ok(mut outbound) =
                            TcpStream::connect(("127.0.0.1", ports[index])).await
                        {
                            counters[index].fetch_add(1, Ordering::SeqCst);
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { base, hits }
    }

    pub fn hits(&self) -> Vec<usize> {
        self.hits.iter().map(|hits| hits.load(Ordering::SeqCst)).collect()
    }
}

/// A Matrix client of one base URL that opens a connection per request.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    pub token: String,
    pub user_id: String,
    pub device_id: String,
    /// Whether requests that fail without an answer are sent again (safe for idempotent ones).
    pub retry: bool,
}

impl Client {
    pub fn anonymous(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self {
            http,
            base: base.to_owned(),
            token: String::new(),
            user_id: String::new(),
            device_id: String::new(),
            retry: false,
        }
    }

    /// The same account through another base URL.
    pub fn via(&self, base: &str) -> Self {
        Self { base: base.to_owned(), ..self.clone() }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut attempts = 0;
        loop {
            let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
            if !self.token.is_empty() {
                request = request.bearer_auth(&self.token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.json::<Value>().await {
                        Ok(value) => return (status, value),
                        Err(error) if !self.retry || attempts >= 10 => panic!("{path}: {error}"),
                        Err(_) => {}
                    }
                }
                Err(error) if !self.retry || attempts >= 10 => panic!("{path}: {error}"),
                Err(_) => {}
            }
            attempts += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(&body)).await
    }

    /// Sends a text message with a transaction ID; the event ID.
    pub async fn say(&self, room_id: &str, txn: &str, text: &str) -> String {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
        let (status, sent) = self.put(&path, json!({ "msgtype": "m.text", "body": text })).await;
        assert_eq!(status, 200, "{sent}");
        sent["event_id"].as_str().unwrap().to_owned()
    }

    /// A `/sync`; its body.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Value {
        let filter = json!({ "room": { "timeline": { "limit": 500 } } }).to_string();
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}&filter=");
        path.push_str(&encode(&filter));
        if let Some(since) = since {
            path.push_str("&since=");
            path.push_str(&encode(since));
        }
        let (status, body) = self.get(&path).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// Percent-encodes a query parameter.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
