//! The `run` command's arguments, and the plan they resolve to: the servers, the steps (a
//! workload, or one stage of the scaling workload) and every workload's settings.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::workloads::{fanout, initial_sync, latency, scaling, throughput};

/// The workloads, in the order they run.
pub const WORKLOADS: [&str; 5] = ["latency", "throughput", "initial_sync", "fanout", "scaling"];

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A server to measure: NAME=URL[,url=URL...][,pid=PID...][,db-pid=PID] (repeat for each
    /// server). PID is the server's process, for RSS and CPU from /proc; db-pid a database
    /// server's main process (PostgreSQL's postmaster), whose CPU (with its children) is
    /// counted too. A server of several processes on one database gives every process's URL
    /// (its users are spread over them round-robin) and every process's pid (their CPU and
    /// RSS are summed).
    #[arg(long = "target", required = true, value_parser = parse_target)]
    targets: Vec<Target>,
    /// A server that could not be started: NAME=REASON (recorded, not measured).
    #[arg(long = "failed", value_parser = parse_failed)]
    pub failed: Vec<(String, String)>,
    /// Where to write the results JSON.
    #[arg(long)]
    pub out: PathBuf,
    /// Small sizes and short durations, for development.
    #[arg(long)]
    pub quick: bool,
    /// Comma-separated workloads to run (default: all).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(WORKLOADS))]
    workloads: Vec<String>,
    /// Rounds: each step is measured this many times on every server, the servers taking
    /// turns in an order that rotates from round to round [default: 5, quick 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Pause between two measured runs, so one server's leftover work does not fall into the
    /// next one's run [default: 1000, quick 300].
    #[arg(long)]
    pause_ms: Option<u64>,
    /// Concurrent requests while setting up users and rooms.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// A command run as `sh -c "CMD on"` just before every measured run and `sh -c "CMD off"`
    /// just after, e.g. `callgrind_control -i` to profile the measured phases only.
    #[arg(long)]
    pub profile_hook: Option<String>,
    /// Seconds to let the servers settle before the idle reading.
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Latency: sender/receiver pairs [default: 10, quick 5].
    #[arg(long)]
    latency_pairs: Option<usize>,
    /// Latency: seconds per measured run [default: 10, quick 3].
    #[arg(long)]
    latency_secs: Option<u64>,
    /// Latency: mean milliseconds between a pair's messages [default: 500].
    #[arg(long, default_value_t = 500)]
    latency_interval_ms: u64,
    /// Throughput: concurrent senders [default: 20, quick 10].
    #[arg(long)]
    tp_senders: Option<usize>,
    /// Throughput: rooms the senders are spread over [default: 10, quick 5].
    #[arg(long)]
    tp_rooms: Option<usize>,
    /// Throughput: seconds per measured run [default: 10, quick 3].
    #[arg(long)]
    tp_secs: Option<u64>,
    /// Initial sync: rooms the user is in [default: 300, quick 30].
    #[arg(long)]
    sync_rooms: Option<usize>,
    /// Initial sync: messages of history per room [default: 10, quick 5].
    #[arg(long)]
    sync_history: Option<usize>,
    /// Initial sync: incremental syncs per run, each after 5 new messages [default: 5, quick 3].
    #[arg(long)]
    sync_rounds: Option<usize>,
    /// Fan-out: members of the room, all long-polling [default: 500, quick 100].
    #[arg(long)]
    fanout_members: Option<usize>,
    /// Fan-out: messages per measured run, one at a time [default: 2, quick 1].
    #[arg(long)]
    fanout_messages: Option<usize>,
    /// Scaling: the sizes of the user's room list, ascending [default: 10,100,1000; quick 10,100].
    #[arg(long, value_delimiter = ',')]
    scale_rooms: Vec<usize>,
    /// Scaling: the sizes of the room's membership, ascending [default: 10,100,1000; quick 10,100].
    #[arg(long, value_delimiter = ',')]
    scale_members: Vec<usize>,
    /// Scaling: probe messages per measured run [default: 5, quick 3].
    #[arg(long)]
    scale_probes: Option<usize>,
}

/// A server to measure.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// One base URL per process of the server (usually one).
    pub base_urls: Vec<String>,
    /// The server's processes (none when not watched).
    pub pids: Vec<u32>,
    pub db_pid: Option<u32>,
}

fn parse_target(s: &str) -> Result<Target, String> {
    const USAGE: &str = "expected NAME=URL[,url=URL...][,pid=PID...][,db-pid=PID]";
    let (name, rest) = s.split_once('=').ok_or(USAGE)?;
    let mut parts = rest.split(',');
    let base_url = parts.next().unwrap_or_default().to_owned();
    if name.is_empty() || !base_url.starts_with("http") {
        return Err(format!("`{s}`: {USAGE}"));
    }
    let mut target =
        Target { name: name.to_owned(), base_urls: vec![base_url], pids: Vec::new(), db_pid: None };
    for part in parts {
        let (key, value) =
            part.split_once('=').ok_or_else(|| format!("`{part}`: expected KEY=VALUE"))?;
        if key == "url" {
            if !value.starts_with("http") {
                return Err(format!("`{value}` is not an http(s) URL"));
            }
            target.base_urls.push(value.to_owned());
            continue;
        }
        let pid = value.parse::<u32>().map_err(|_| format!("`{value}` is not a process ID"))?;
        match key {
            "pid" => target.pids.push(pid),
            "db-pid" => target.db_pid = Some(pid),
            _ => return Err(format!("unknown target option `{key}`")),
        }
    }
    Ok(target)
}

fn parse_failed(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=REASON, got `{s}`"))
}

/// One thing measured in rounds: a workload, or a stage of the scaling workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    Latency,
    Throughput,
    InitialSync,
    Fanout,
    Scale(scaling::Dimension, usize),
}

impl Step {
    /// The step's name in results: `latency`, `scaling.rooms_100`.
    pub fn name(self) -> String {
        match self {
            Step::Latency => "latency".into(),
            Step::Throughput => "throughput".into(),
            Step::InitialSync => "initial_sync".into(),
            Step::Fanout => "fanout".into(),
            Step::Scale(dim, size) => format!("scaling.{}_{size}", dim.name()),
        }
    }
}

/// Every setting, resolved from the defaults, `--quick` and overrides.
pub struct Plan {
    pub servers: Vec<Target>,
    pub steps: Vec<Step>,
    pub rounds: usize,
    pub pause: Duration,
    pub idle: Duration,
    pub latency: latency::Params,
    pub throughput: throughput::Params,
    pub initial_sync: initial_sync::Params,
    pub fanout: fanout::Params,
    pub scaling: scaling::Params,
}

impl Plan {
    pub fn from_args(a: &RunArgs) -> Result<Self> {
        let q = a.quick;
        let pick =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let secs = |v: Option<u64>, full: u64, quick: u64| {
            Duration::from_secs(v.unwrap_or(if q { quick } else { full }))
        };
        let sizes = |v: &[usize]| -> Result<Vec<usize>> {
            let sizes = if v.is_empty() {
                if q { vec![10, 100] } else { vec![10, 100, 1000] }
            } else {
                v.to_vec()
            };
            if sizes.windows(2).any(|w| w[0] >= w[1]) || sizes.first().is_some_and(|s| *s < 2) {
                bail!("scaling sizes must be ascending and at least 2: {sizes:?}");
            }
            Ok(sizes)
        };
        let scaling = scaling::Params {
            room_sizes: sizes(&a.scale_rooms).context("--scale-rooms")?,
            member_sizes: sizes(&a.scale_members).context("--scale-members")?,
            probes: pick(a.scale_probes, 5, 3).max(1),
        };
        let mut names = std::collections::HashSet::new();
        if let Some(t) = a.targets.iter().find(|t| !names.insert(t.name.clone())) {
            bail!("server {} is named twice", t.name);
        }
        Ok(Self {
            servers: a.targets.clone(),
            steps: steps(&a.workloads, &scaling),
            rounds: pick(a.rounds, 5, 3).max(1),
            pause: Duration::from_millis(a.pause_ms.unwrap_or(if q { 300 } else { 1000 })),
            idle: secs(a.idle_secs, 3, 1),
            latency: latency::Params {
                pairs: pick(a.latency_pairs, 10, 5),
                duration: secs(a.latency_secs, 10, 3),
                warmup: 2,
                interval: Duration::from_millis(a.latency_interval_ms),
                max_per_pair: 10_000,
            },
            throughput: throughput::Params {
                senders: pick(a.tp_senders, 20, 10),
                rooms: pick(a.tp_rooms, 10, 5),
                duration: secs(a.tp_secs, 10, 3),
                max_per_sender: 1_000_000,
            },
            initial_sync: initial_sync::Params {
                rooms: pick(a.sync_rooms, 300, 30),
                history: pick(a.sync_history, 10, 5),
                incremental_rounds: pick(a.sync_rounds, 5, 3),
            },
            fanout: fanout::Params {
                members: pick(a.fanout_members, 500, 100),
                messages: pick(a.fanout_messages, 2, 1).max(1),
                settle: Duration::from_millis(if q { 1000 } else { 2000 }),
                round_timeout: Duration::from_secs(120),
            },
            scaling,
        })
    }

    /// The settings, for the results file.
    pub fn describe(&self) -> Value {
        json!({
            "rounds": self.rounds,
            "pause_ms": self.pause.as_millis() as u64,
            "steps": self.steps.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "latency": { "pairs": self.latency.pairs, "secs_per_run": self.latency.duration.as_secs(),
                "warmup_per_pair": self.latency.warmup,
                "interval_ms": self.latency.interval.as_millis() as u64 },
            "throughput": { "senders": self.throughput.senders, "rooms": self.throughput.rooms,
                "secs_per_run": self.throughput.duration.as_secs() },
            "initial_sync": { "rooms": self.initial_sync.rooms, "history": self.initial_sync.history,
                "incremental_per_run": self.initial_sync.incremental_rounds },
            "fanout": { "members": self.fanout.members, "messages_per_run": self.fanout.messages },
            "scaling": { "rooms": self.scaling.room_sizes, "members": self.scaling.member_sizes,
                "probes_per_run": self.scaling.probes },
        })
    }
}

/// The steps of the selected workloads (all when none is named), in order.
fn steps(selected: &[String], scaling: &scaling::Params) -> Vec<Step> {
    let wanted = |w: &str| selected.is_empty() || selected.iter().any(|s| s == w);
    let mut steps = Vec::new();
    for (name, step) in [
        ("latency", Step::Latency),
        ("throughput", Step::Throughput),
        ("initial_sync", Step::InitialSync),
        ("fanout", Step::Fanout),
    ] {
        if wanted(name) {
            steps.push(step);
        }
    }
    if wanted("scaling") {
        use scaling::Dimension::{Members, Rooms};
        steps.extend(scaling.room_sizes.iter().map(|n| Step::Scale(Rooms, *n)));
        steps.extend(scaling.member_sizes.iter().map(|n| Step::Scale(Members, *n)));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = parse_target("rhizome=http://127.0.0.1:8008,pid=12,db-pid=34").unwrap();
        assert_eq!(
            (t.name.as_str(), t.base_urls.as_slice()),
            ("rhizome", &["http://127.0.0.1:8008".to_owned()][..])
        );
        assert_eq!((t.pids.as_slice(), t.db_pid), (&[12][..], Some(34)));
        let t = parse_target("x=http://h:1").unwrap();
        assert_eq!((t.pids.len(), t.db_pid), (0, None));
        let t = parse_target("x=http://h:1,url=http://h:2,pid=1,pid=2,db-pid=3").unwrap();
        assert_eq!(t.base_urls, ["http://h:1", "http://h:2"]);
        assert_eq!(t.pids, [1, 2]);
        assert!(parse_target("x=http://h:1,url=h:2").is_err());
        assert!(parse_target("http://h:1").is_err());
        assert!(parse_target("x=http://h:1,pid=abc").is_err());
        assert!(parse_target("x=http://h:1,cpu=1").is_err());
    }

    #[test]
    fn scaling_steps_follow_the_sizes() {
        let params =
            scaling::Params { room_sizes: vec![10, 100], member_sizes: vec![5], probes: 1 };
        let names: Vec<String> =
            steps(&["scaling".into()], &params).into_iter().map(Step::name).collect();
        assert_eq!(names, ["scaling.rooms_10", "scaling.rooms_100", "scaling.members_5"]);
        assert_eq!(steps(&[], &params).len(), 7);
    }
}
