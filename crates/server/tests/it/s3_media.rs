//! Media in an S3-compatible object store: two `rhizome serve` processes on one PostgreSQL
//! database keep their media in one bucket of a local S3 stand-in (moto's server, installed from
//! PyPI by `scripts/s3-venv.sh`). An upload through one process downloads byte for byte and
//! thumbnails through the other; the objects are in the bucket (listed with the S3 API) and
//! none in the data directory; deleting the media removes them; the backup says media stays in
//! the bucket; an unreachable store gives `500 M_UNKNOWN` quickly; bad settings stop start-up,
//! and the secret is never shown.

use std::{
    io::Cursor,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{cluster::Cluster, command, free_port};

/// The environment variable naming the virtual environment moto is installed in.
const VENV_VARIABLE: &str = "S3_VENV";
const BUCKET: &str = "rhizome-media";
const PREFIX: &str = "media";

/// The virtual environment moto is installed in: `$S3_VENV`, or the one `scripts/s3-venv.sh`
/// installs (it reuses an installed one at once).
fn venv() -> PathBuf {
    if let Some(path) = std::env::var_os(VENV_VARIABLE).filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.join("bin/moto_server").exists(),
            "{VENV_VARIABLE}={} holds no moto_server (run scripts/s3-venv.sh)",
            path.display()
        );
        return path;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3-venv.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "{} failed", script.display());
    let stdout = String::from_utf8(output.stdout).unwrap();
    PathBuf::from(stdout.lines().last().unwrap().trim())
}

/// A moto S3 server on a loopback port, killed when dropped.
struct Moto {
    child: Option<Child>,
    endpoint: String,
    http: reqwest::Client,
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Moto {
    async fn start(log: &Path) -> Self {
        let port = free_port();
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let moto = Self {
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        while moto.http.get(&moto.endpoint).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn create_bucket(&self) {
        let response = self.http.put(format!("{}/{BUCKET}", self.endpoint)).send().await.unwrap();
        assert!(response.status().is_success(), "{:?}", response.text().await);
    }

    /// The keys in the bucket (ListObjectsV2).
    async fn keys(&self) -> Vec<String> {
        let url = format!("{}/{BUCKET}?list-type=2", self.endpoint);
        let response = self.http.get(url).send().await.unwrap();
        assert!(response.status().is_success());
        let xml = response.text().await.unwrap();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|part| part.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Every file under a directory.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn s3_settings(endpoint: &str, secret_file: &Path) -> String {
    format!(
        "\n[media.s3]\nenabled = true\nendpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\n\
         region = \"us-east-1\"\naccess_key_id = \"testing\"\n\
         secret_access_key_file = \"{}\"\nprefix = \"{PREFIX}\"\npath_style = true\n\
         allow_http = true\n",
        secret_file.display()
    )
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn request(request: reqwest::RequestBuilder) -> Answer {
    let response = request.timeout(Duration::from_secs(60)).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    Answer { status, headers, body }
}

/// Uploads a PNG through the process at `base`; the media's `server/id` path and the answer.
async fn upload(base: &str, token: &str, bytes: Vec<u8>, query: &str) -> (String, Answer) {
    let answer = request(
        reqwest::Client::new()
            .post(format!("{base}/_matrix/media/v3/upload{query}"))
            .bearer_auth(token)
            .header("content-type", "image/png")
            .body(bytes),
    )
    .await;
    let path = answer.json()["content_uri"].as_str().unwrap_or_default().replacen("mxc://", "", 1);
    (path, answer)
}

async fn get(url: String, token: &str) -> Answer {
    request(reqwest::Client::new().get(url).bearer_auth(token)).await
}

/// The object key of content under the test's prefix.
fn key_of(bytes: &[u8]) -> String {
    let hash = sha256_hex(bytes);
    format!("{PREFIX}/{}/{}/{hash}", &hash[0..2], &hash[2..4])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_keep_media_in_one_s3_bucket() {
    let scratch = tempfile::tempdir().unwrap();
    let mut moto = Moto::start(&scratch.path().join("moto.log")).await;
    moto.create_bucket().await;
    let secret_file = scratch.path().join("s3-secret");
    std::fs::write(&secret_file, "testing-secret\n").unwrap();
    let cluster = Cluster::start_with(2, &s3_settings(&moto.endpoint, &secret_file)).await;
    let token = cluster.admin(&["token", "create", "--uses", "1"]).trim().to_owned();
    let alice = cluster.sign_up("alice", &token).await;

    // Upload through the first process; download and thumbnail through the second.
    let bytes = png(200, 150);
    let (path, uploaded) =
        upload(&cluster.base(0), &alice.token, bytes.clone(), "?filename=cat.png").await;
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.json());
    let base = cluster.base(1);
    let download =
        get(format!("{base}/_matrix/client/v1/media/download/{path}"), &alice.token).await;
    assert_eq!(download.status, 200);
    assert!(download.body == bytes, "the download differs from the upload");
    assert_eq!(download.header("content-type"), "image/png");
    assert_eq!(download.header("content-length"), bytes.len().to_string());
    let disposition = download.header("content-disposition");
    assert!(disposition.starts_with("inline") && disposition.contains("cat.png"), "{disposition}");
    let query = "width=40&height=40&method=crop";
    let url = format!("{base}/_matrix/client/v1/media/thumbnail/{path}?{query}");
    let thumbnail = get(url, &alice.token).await;
    assert_eq!(thumbnail.status, 200, "{:?}", thumbnail.json());
    let decoded = image::load_from_memory(&thumbnail.body).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (40, 40));

    // The objects are in the bucket, under the prefix, named by their content; the data
    // directory holds no media.
    let keys = moto.keys().await;
    assert!(keys.contains(&key_of(&bytes)), "{keys:?}");
    assert!(keys.contains(&key_of(&thumbnail.body)), "{keys:?}");
    assert!(keys.iter().all(|key| key.starts_with("media/")), "{keys:?}");
    let media_files = files_under(&cluster.dir.path().join("media"));
    assert!(media_files.is_empty(), "media in the data directory: {media_files:?}");

    // The backup says media stays in the bucket, and copies none.
    let backup_dir = scratch.path().join("backup");
    let report = cluster.admin(&["backup", backup_dir.to_str().unwrap()]);
    assert!(report.contains(&format!("media stays in the S3 bucket {BUCKET}")), "{report}");
    assert!(files_under(&backup_dir.join("media")).is_empty());

    // Deleting the media removes its objects (the configured thumbnails made in the
    // background too).
    let deleted = cluster.admin(&["media", "delete", &format!("mxc://{path}")]);
    assert!(!deleted.is_empty());
    let started = Instant::now();
    loop {
        let keys = moto.keys().await;
        if keys.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "left in the bucket: {keys:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = format!("{}/_matrix/client/v1/media/download/{path}", cluster.base(0));
    assert_eq!(get(url, &alice.token).await.status, 404);

    unreachable_store_fails_cleanly(&cluster, &mut moto, &alice.token).await;
}

/// Another upload, then the store goes away: uploads and downloads fail with `500 M_UNKNOWN`,
/// fast; the processes still serve; the failure is logged, the secret never.
async fn unreachable_store_fails_cleanly(cluster: &Cluster, moto: &mut Moto, token: &str) {
    let (path, uploaded) = upload(&cluster.base(1), token, png(20, 20), "").await;
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.json());
    moto.stop();
    let started = Instant::now();
    let url = format!("{}/_matrix/client/v1/media/download/{path}", cluster.base(0));
    let failed = get(url, token).await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["errcode"], "M_UNKNOWN");
    let (_, failed) = upload(&cluster.base(0), token, png(30, 30), "").await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["errcode"], "M_UNKNOWN");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let versions =
        request(reqwest::Client::new().get(format!("{}/_matrix/client/versions", cluster.base(1))))
            .await;
    assert_eq!(versions.status, 200);
    let logs: String = (0..2)
        .map(|index| {
            std::fs::read_to_string(cluster.dir.path().join(format!("serve-{index}.log"))).unwrap()
        })
        .collect();
    assert!(logs.contains("media object store"), "{logs}");
    assert!(!logs.contains("testing-secret"));
}

#[test]
fn start_up_refuses_unusable_s3_settings() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(dir.path(), free_port())
        .env("RHIZOME_MEDIA__S3__ENABLED", "true")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("media.s3.enabled needs media.s3.bucket"), "{stderr}");

    let missing = dir.path().join("no-such-secret");
    let output = command(dir.path(), free_port())
        .env("RHIZOME_MEDIA__S3__ENABLED", "true")
        .env("RHIZOME_MEDIA__S3__BUCKET", "media")
        .env("RHIZOME_MEDIA__S3__ACCESS_KEY_ID", "AKID")
        .env("RHIZOME_MEDIA__S3__SECRET_ACCESS_KEY_FILE", &missing)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("secret_access_key_file"), "{stderr}");
    assert!(files_under(&dir.path().join("media")).is_empty());

    // The effective configuration shown to the organiser hides the secret.
    let output = command(dir.path(), free_port())
        .env("RHIZOME_MEDIA__S3__ENABLED", "true")
        .env("RHIZOME_MEDIA__S3__BUCKET", "media")
        .env("RHIZOME_MEDIA__S3__ACCESS_KEY_ID", "AKID")
        .env("RHIZOME_MEDIA__S3__SECRET_ACCESS_KEY", "very-secret")
        .args(["config", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("bucket = \"media\"") && stdout.contains("(hidden)"), "{stdout}");
    assert!(!stdout.contains("very-secret"));
}
