//! The results file `run` writes and `report` reads: every measured run of every server, in
//! the order they ran, with the CPU and steal around each.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything one `run` measured, across servers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResults {
    pub unix_time: u64,
    #[serde(default)]
    pub quick: bool,
    /// Rounds each step was measured for.
    #[serde(default)]
    pub rounds: usize,
    /// The servers, in the order they were given.
    #[serde(default)]
    pub servers: Vec<ServerResult>,
    /// Every measured run, in the order they ran.
    #[serde(default)]
    pub runs: Vec<Measurement>,
    /// The resolved workload settings.
    #[serde(default)]
    pub params: Value,
    /// Facts added by the caller (wall times, builds).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// One server: what was measured once (not per round), and what went wrong.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerResult {
    /// The column name, e.g. `rhizome` or `synapse-sqlite`.
    pub server: String,
    /// The server's base URL; for a server of several processes, each one's, space-separated.
    #[serde(default)]
    pub base_url: String,
    /// Metrics measured once: RSS, startup and setup CPU, the whole run's CPU.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Per-step setup details and resource snapshots.
    #[serde(default)]
    pub details: BTreeMap<String, Value>,
    /// Failures, keyed by step (or `server` when nothing could run).
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
}

impl ServerResult {
    pub fn set(&mut self, key: &str, value: f64) {
        if value.is_finite() {
            self.metrics.insert(key.to_owned(), value);
        }
    }
}

/// One measured run of one step on one server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measurement {
    /// The step: a workload (`latency`) or a stage of one (`scaling.rooms_100`).
    pub step: String,
    /// The round, from 0.
    pub round: usize,
    /// Where the server came in the round's order, from 0.
    pub position: usize,
    pub server: String,
    pub metrics: BTreeMap<String, f64>,
    /// Server CPU seconds during the run (user + system), and its database's.
    #[serde(default)]
    pub cpu_s: Option<f64>,
    #[serde(default)]
    pub db_cpu_s: Option<f64>,
    pub wall_s: f64,
    /// The machine's CPU steal during the run, in percent of all CPU time.
    #[serde(default)]
    pub steal_pct: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub details: Value,
}

impl RunResults {
    /// Writes the file atomically (via a temporary file), so partial runs stay readable.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json(path, &serde_json::to_value(self)?)
    }

    pub fn server_mut(&mut self, name: &str) -> Option<&mut ServerResult> {
        self.servers.iter_mut().find(|s| s.server == name)
    }
}

/// Writes pretty JSON through a temporary file and a rename.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
