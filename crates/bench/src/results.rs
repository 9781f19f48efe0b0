//! The per-server results file written by `run` and read by `report`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything measured against one server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerResult {
    /// The column name, e.g. `rhizome` or `synapse-sqlite`.
    pub server: String,
    #[serde(default)]
    pub base_url: String,
    #[serde(default)]
    pub unix_time: u64,
    #[serde(default)]
    pub quick: bool,
    /// Flat metrics, keyed as in the report's metric list.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Per-workload details: parameters, full summaries, resource snapshots.
    #[serde(default)]
    pub details: BTreeMap<String, Value>,
    /// Failures, keyed by workload (or `server` when nothing could run).
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
}

impl ServerResult {
    pub fn load(path: &Path) -> Result<Self> {
        let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&raw).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes the file atomically (via a temporary file), so partial runs stay readable.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json(path, &serde_json::to_value(self)?)
    }

    pub fn set(&mut self, key: &str, value: f64) {
        if value.is_finite() {
            self.metrics.insert(key.to_owned(), value);
        }
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
