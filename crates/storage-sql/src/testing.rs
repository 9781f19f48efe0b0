//! A throwaway PostgreSQL server for tests: `initdb` into a temporary directory, started on a
//! free loopback port, stopped (by a watchdog) when the test process ends.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

/// A running PostgreSQL server owned by this test process.
pub struct PostgresServer {
    port: u16,
    _dir: tempfile::TempDir,
}

fn find_bin_dir() -> Result<PathBuf, String> {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries.filter_map(|entry| entry.ok()).map(|entry| entry.path().join("bin")).collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates.into_iter().rev().find(|dir| dir.join("initdb").exists()).ok_or_else(|| {
        "PostgreSQL server binaries not found (install Debian's `postgresql` package)".to_owned()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (PostgreSQL refuses root).
fn run(bin_dir: &Path, tool: &str, args: &[&str]) -> Result<(), String> {
    let program = bin_dir.join(tool);
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&program);
        command
    } else {
        Command::new(&program)
    };
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{tool}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl PostgresServer {
    /// Starts a new server.
    pub fn start() -> Result<Self, String> {
        let bin_dir = find_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("rhizome-pg-")
            .tempdir()
            .map_err(|error| error.to_string())?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|error| error.to_string())?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|error| error.to_string())?;
            if !status.success() {
                return Err(
                    "chown to the postgres user failed (is the postgresql package installed?)"
                        .into(),
                );
            }
        }
        let data_str = data.to_string_lossy().into_owned();
        run(
            &bin_dir,
            "initdb",
            &[
                "-D",
                &data_str,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| error.to_string())?
            .port();
        let socket_dir = dir.path().to_string_lossy().into_owned();
        let options = format!(
            "-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        );
        let log = dir.path().join("postgres.log").to_string_lossy().into_owned();
        run(&bin_dir, "pg_ctl", &["-D", &data_str, "-o", &options, "-l", &log, "-w", "start"])?;
        // A watchdog stops the server when this process ends, however it ends.
        let pg_ctl = bin_dir.join("pg_ctl").to_string_lossy().into_owned();
        let stop = if is_root() {
            format!("runuser -u postgres -- {pg_ctl} -D {data_str} stop -m immediate")
        } else {
            format!("{pg_ctl} -D {data_str} stop -m immediate")
        };
        let watchdog = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {socket_dir}",
            std::process::id()
        );
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| error.to_string())?;
        Ok(Self { port, _dir: dir })
    }

    /// The URL of a database on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a fresh database and returns its URL.
    pub async fn create_database(&self) -> Result<String, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        sqlx::any::install_default_drivers();
        let mut connection =
            <sqlx::AnyConnection as sqlx::Connection>::connect(&self.url("postgres"))
                .await
                .map_err(|error| error.to_string())?;
        sqlx::Executor::execute(
            &mut connection,
            sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
        )
        .await
        .map_err(|error| error.to_string())?;
        Ok(self.url(&name))
    }
}

/// The one server shared by all tests of this process.
pub fn shared_postgres() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        PostgresServer::start()
            .unwrap_or_else(|error| panic!("cannot start PostgreSQL for tests: {error}"))
    })
}

/// A stream position taken by a write that stays open until [`HeldPosition::commit`] (or is
/// rolled back when dropped): a slow writer, for tests of what readers see meanwhile.
pub struct HeldPosition<'a>(crate::stream::StreamWrite<'a>);

impl HeldPosition<'_> {
    /// The position taken.
    pub fn pos(&self) -> rhizome_storage::StreamPos {
        self.0.pos()
    }

    /// Commits the (empty) write.
    pub async fn commit(self) -> rhizome_core::Result<rhizome_storage::StreamPos> {
        self.0.commit().await
    }
}

impl crate::SqlStore {
    /// Takes the next stream position in a write left open (see [`HeldPosition`]).
    pub async fn hold_stream_position(&self) -> rhizome_core::Result<HeldPosition<'_>> {
        Ok(HeldPosition(self.begin_stream_write().await?))
    }
}
