//! The table's rows: which metrics, in what order, under what label, and which way is better.

use crate::results::RunResults;
use crate::summary::{Better, steps_in_order};

use Better::{Higher, Lower, Neither};

/// One row: the metric's key, its label, and which way is better.
type RowSpec = (&'static str, &'static str, Better);

/// The rows of each fixed workload, in order.
const WORKLOAD_ROWS: &[(&str, &[RowSpec])] = &[
    (
        "latency",
        &[
            ("latency.p50_ms", "latency p50 (ms)", Lower),
            ("latency.p90_ms", "latency p90 (ms)", Lower),
            ("latency.p99_ms", "latency p99 (ms)", Lower),
            ("latency.samples", "latency samples", Neither),
            ("latency.lost", "latency messages lost", Lower),
            ("latency.cpu_ms_per_msg", "latency: CPU ms per message", Lower),
        ],
    ),
    (
        "throughput",
        &[
            ("throughput.events_per_s", "throughput (events/s)", Higher),
            ("throughput.errors", "throughput errors", Lower),
            ("throughput.error_pct", "throughput error rate (%)", Lower),
            ("throughput.send_p50_ms", "send latency p50 (ms)", Lower),
            ("throughput.send_p99_ms", "send latency p99 (ms)", Lower),
            ("throughput.cpu_ms_per_event", "throughput: CPU ms per event", Lower),
        ],
    ),
    (
        "initial_sync",
        &[
            ("initial_sync.initial_ms", "initial sync (ms)", Lower),
            ("initial_sync.cpu_ms", "initial sync: CPU ms", Lower),
            ("initial_sync.incremental_ms", "incremental sync (ms)", Lower),
            ("initial_sync.incremental_cpu_ms", "incremental sync: CPU ms", Lower),
        ],
    ),
    (
        "fanout",
        &[
            ("fanout.last_ms", "fan-out last receiver (ms)", Lower),
            (
                "fanout.last_after_send_ms",
                "fan-out last receiver after the send returned (ms)",
                Lower,
            ),
            ("fanout.p50_ms", "fan-out p50 receiver (ms)", Lower),
            ("fanout.cpu_ms_per_delivery", "fan-out: CPU ms per delivery", Lower),
        ],
    ),
];

/// The measures of a scaling stage, in order.
const SCALING_MEASURES: &[(&str, &str)] = &[
    ("initial_ms", "initial sync (ms)"),
    ("initial_cpu_ms", "initial sync CPU ms"),
    ("latency_ms", "send→sync (ms)"),
    ("send_ms", "send request (ms)"),
    ("msg_cpu_ms", "CPU ms per message"),
];

/// `scaling.rooms_100.initial_ms` → (`rooms`, 100, `initial_ms`).
pub fn parse_scaling_key(key: &str) -> Option<(&str, usize, &str)> {
    let rest = key.strip_prefix("scaling.")?;
    let (stage, measure) = rest.split_once('.')?;
    let (dim, size) = stage.rsplit_once('_')?;
    Some((dim, size.parse().ok()?, measure))
}

/// How a step is named in labels.
fn step_label(step: &str) -> String {
    match step.strip_prefix("scaling.").and_then(|s| s.rsplit_once('_')) {
        Some(("rooms", n)) => format!("user in {n} rooms"),
        Some(("members", n)) => format!("room of {n} members"),
        _ => step.replace('_', " "),
    }
}

/// Every row the results may have, in reading order: each step's own metrics, its CPU and
/// steal, then the resources (RSS, setup and whole-run CPU).
pub fn row_specs(results: &RunResults) -> Vec<(String, String, Better)> {
    let steps = steps_in_order(results);
    let mut specs: Vec<(String, String, Better)> = Vec::new();
    let mut add = |k: String, l: String, b: Better| specs.push((k, l, b));
    for step in &steps {
        if let Some((_, rows)) = WORKLOAD_ROWS.iter().find(|(w, _)| *w == step.as_str()) {
            for (key, label, better) in *rows {
                add((*key).to_owned(), (*label).to_owned(), *better);
            }
        } else if step.starts_with("scaling.") {
            for (measure, label) in SCALING_MEASURES {
                add(format!("{step}.{measure}"), format!("{}: {label}", step_label(step)), Lower);
            }
        }
        let name = step_label(step);
        add(format!("cpu.{step}_s"), format!("{name}: server CPU s per run"), Lower);
        add(format!("db_cpu.{step}_s"), format!("{name}: PostgreSQL CPU s per run"), Lower);
        add(format!("steal.{step}_pct"), format!("{name}: CPU steal (%)"), Neither);
    }
    add("rss.idle_mb".into(), "RSS idle (MiB)".into(), Lower);
    for step in &steps {
        add(format!("rss.after_{step}_mb"), format!("RSS after {} (MiB)", step_label(step)), Lower);
    }
    add("rss.peak_mb".into(), "RSS peak (MiB)".into(), Lower);
    add("cpu.startup_s".into(), "CPU s: startup to idle".into(), Lower);
    add("db_cpu.startup_s".into(), "PostgreSQL CPU s: startup to idle".into(), Lower);
    for step in &steps {
        let name = step_label(step);
        add(format!("cpu.{step}_setup_s"), format!("CPU s: {name} setup"), Lower);
        add(format!("db_cpu.{step}_setup_s"), format!("PostgreSQL CPU s: {name} setup"), Lower);
    }
    add("cpu.total_s".into(), "CPU s: whole run".into(), Lower);
    add("db_cpu.total_s".into(), "PostgreSQL CPU s: whole run".into(), Lower);
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keys_parse() {
        assert_eq!(
            parse_scaling_key("scaling.rooms_100.initial_ms"),
            Some(("rooms", 100, "initial_ms"))
        );
        assert_eq!(
            parse_scaling_key("scaling.members_10.msg_cpu_ms"),
            Some(("members", 10, "msg_cpu_ms"))
        );
        assert_eq!(parse_scaling_key("latency.p50_ms"), None);
        assert_eq!(step_label("scaling.rooms_1000"), "user in 1000 rooms");
        assert_eq!(step_label("initial_sync"), "initial sync");
    }
}
