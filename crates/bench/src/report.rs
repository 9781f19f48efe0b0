//! The `report` command: merges per-server results into one table and one combined JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::results::{ServerResult, unix_now, write_json};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Per-server results files written by `run`, in column order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The server compared against all others in the ratio columns
    /// [default: `rhizome` if present, else the first file's server].
    #[arg(long)]
    subject: Option<String>,
    /// Where to write the combined results JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Extra facts to store in the combined JSON, as KEY=VALUE (e.g. wall times).
    #[arg(long = "meta", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

/// Which direction of a metric is better.
#[derive(Clone, Copy, PartialEq)]
enum Better {
    Lower,
    Higher,
    Neither,
}

/// The table's rows, in order: metric key, label, better direction.
const METRICS: &[(&str, &str, Better)] = &[
    ("latency.p50_ms", "latency p50 (ms)", Better::Lower),
    ("latency.p90_ms", "latency p90 (ms)", Better::Lower),
    ("latency.p99_ms", "latency p99 (ms)", Better::Lower),
    ("latency.samples", "latency samples", Better::Neither),
    ("latency.lost", "latency messages lost", Better::Lower),
    ("throughput.events_per_s", "throughput (events/s)", Better::Higher),
    ("throughput.errors", "throughput errors", Better::Lower),
    ("throughput.error_pct", "throughput error rate (%)", Better::Lower),
    ("throughput.send_p50_ms", "send latency p50 (ms)", Better::Lower),
    ("throughput.send_p99_ms", "send latency p99 (ms)", Better::Lower),
    ("throughput.cpu_ms_per_event", "server CPU per event (ms)", Better::Lower),
    ("initial_sync.initial_ms", "initial sync (ms)", Better::Lower),
    ("initial_sync.incremental_ms", "incremental sync (ms)", Better::Lower),
    ("fanout.last_ms", "fan-out last receiver (ms)", Better::Lower),
    ("fanout.p50_ms", "fan-out p50 receiver (ms)", Better::Lower),
    ("rss.idle_mb", "RSS idle (MiB)", Better::Lower),
    ("rss.after_latency_mb", "RSS after latency (MiB)", Better::Lower),
    ("rss.after_throughput_mb", "RSS after throughput (MiB)", Better::Lower),
    ("rss.after_initial_sync_mb", "RSS after initial sync (MiB)", Better::Lower),
    ("rss.after_fanout_mb", "RSS after fan-out (MiB)", Better::Lower),
    ("rss.peak_mb", "RSS peak (MiB)", Better::Lower),
    ("cpu.startup_s", "CPU s: startup to idle", Better::Lower),
    ("cpu.latency_s", "CPU s: latency", Better::Lower),
    ("cpu.throughput_s", "CPU s: throughput", Better::Lower),
    ("cpu.initial_sync_s", "CPU s: initial sync", Better::Lower),
    ("cpu.fanout_s", "CPU s: fan-out", Better::Lower),
    ("cpu.latency_setup_s", "CPU s: latency setup", Better::Lower),
    ("cpu.throughput_setup_s", "CPU s: throughput setup", Better::Lower),
    ("cpu.initial_sync_setup_s", "CPU s: initial sync setup", Better::Lower),
    ("cpu.fanout_setup_s", "CPU s: fan-out setup", Better::Lower),
    ("cpu.total_s", "CPU s: whole run", Better::Lower),
    ("db_cpu.startup_s", "PostgreSQL CPU s: startup to idle", Better::Lower),
    ("db_cpu.latency_s", "PostgreSQL CPU s: latency", Better::Lower),
    ("db_cpu.throughput_s", "PostgreSQL CPU s: throughput", Better::Lower),
    ("db_cpu.initial_sync_s", "PostgreSQL CPU s: initial sync", Better::Lower),
    ("db_cpu.fanout_s", "PostgreSQL CPU s: fan-out", Better::Lower),
    ("db_cpu.total_s", "PostgreSQL CPU s: whole run", Better::Lower),
    ("bench.elapsed_s", "bench wall time (s)", Better::Neither),
    ("bench.cpu_s", "load generator CPU s", Better::Neither),
];

pub fn report(args: ReportArgs) -> Result<()> {
    let servers = args.files.iter().map(|f| ServerResult::load(f)).collect::<Result<Vec<_>>>()?;
    let subject = args
        .subject
        .clone()
        .or_else(|| servers.iter().find(|s| s.server == "rhizome").map(|s| s.server.clone()))
        .or_else(|| servers.first().map(|s| s.server.clone()));
    let Some(subject) = subject else {
        bail!("no results to report");
    };
    let (table, rows) = render(&servers, &subject);
    println!("{table}");
    if let Some(out) = &args.out {
        let by_name: BTreeMap<&str, &ServerResult> =
            servers.iter().map(|s| (s.server.as_str(), s)).collect();
        let meta: BTreeMap<&str, &str> =
            args.meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let combined = json!({
            "generated_unix": unix_now(),
            "subject": subject,
            "columns": servers.iter().map(|s| s.server.as_str()).collect::<Vec<_>>(),
            "meta": meta,
            "table": rows,
            "servers": by_name,
        });
        write_json(out, &combined)?;
        eprintln!("[bench] combined results written to {}", out.display());
    }
    Ok(())
}

/// Renders the text table; also returns its rows as JSON.
fn render(servers: &[ServerResult], subject: &str) -> (String, Vec<Value>) {
    let subj = servers.iter().find(|s| s.server == subject);
    let others: Vec<&ServerResult> = servers.iter().filter(|s| s.server != subject).collect();
    let mut header = vec!["metric".to_owned()];
    header.extend(servers.iter().map(|s| s.server.clone()));
    header.extend(others.iter().map(|o| format!("{subject}/{}", o.server)));
    header.push("better".to_owned());

    // Known metrics first, then anything else a results file holds, sorted.
    let mut keys: Vec<(String, String, Better)> =
        METRICS.iter().map(|(k, l, b)| ((*k).to_owned(), (*l).to_owned(), *b)).collect();
    let mut extra: Vec<&String> = servers
        .iter()
        .flat_map(|s| s.metrics.keys())
        .filter(|k| !METRICS.iter().any(|(m, _, _)| m == k))
        .collect();
    extra.sort();
    extra.dedup();
    keys.extend(extra.into_iter().map(|k| (k.clone(), k.clone(), Better::Neither)));

    let mut cells = vec![header];
    let mut rows = Vec::new();
    for (key, label, better) in keys {
        if !servers.iter().any(|s| s.metrics.contains_key(&key)) {
            continue;
        }
        let mut line = vec![label.clone()];
        line.extend(servers.iter().map(|s| fmt_num(s.metrics.get(&key).copied())));
        let mut ratios = BTreeMap::new();
        for o in &others {
            let r = ratio(subj.and_then(|s| s.metrics.get(&key)), o.metrics.get(&key));
            line.push(r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")));
            if let Some(r) = r {
                ratios.insert(format!("{subject}/{}", o.server), r);
            }
        }
        let better_s = match better {
            Better::Lower => "lower",
            Better::Higher => "higher",
            Better::Neither => "",
        };
        line.push(better_s.to_owned());
        cells.push(line);
        let values: BTreeMap<&str, f64> = servers
            .iter()
            .filter_map(|s| s.metrics.get(&key).map(|v| (s.server.as_str(), *v)))
            .collect();
        rows.push(json!({ "metric": key, "label": label, "better": better_s,
            "values": values, "ratios": ratios }));
    }

    let widths: Vec<usize> = (0..cells[0].len())
        .map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let w = widths[c];
            if c == 0 {
                let _ = write!(line, "{cell:<w$}");
            } else {
                let _ = write!(line, "  {cell:>w$}");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    for s in servers {
        if s.quick {
            let _ = writeln!(out, "note: {} was measured with --quick sizes", s.server);
        }
        for (workload, err) in &s.errors {
            let _ = writeln!(out, "error: {} {workload}: {err}", s.server);
        }
    }
    (out, rows)
}

fn ratio(a: Option<&f64>, b: Option<&f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if *b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if !v.is_finite() => "-".to_owned(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, metrics: &[(&str, f64)]) -> ServerResult {
        ServerResult {
            server: name.to_owned(),
            metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            ..ServerResult::default()
        }
    }

    #[test]
    fn table_has_ratio_columns() {
        let servers = vec![
            server("rhizome", &[("latency.p50_ms", 5.0), ("custom", 1.0)]),
            server("synapse-sqlite", &[("latency.p50_ms", 20.0)]),
            server("synapse-postgres", &[("latency.p50_ms", 10.0)]),
        ];
        let (table, rows) = render(&servers, "rhizome");
        assert!(table.contains("rhizome/synapse-sqlite"), "{table}");
        assert!(table.contains("0.25x") && table.contains("0.50x"), "{table}");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["ratios"]["rhizome/synapse-postgres"], 0.5);
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(fmt_num(Some(1234.4)), "1234");
        assert_eq!(fmt_num(Some(12.34)), "12.3");
        assert_eq!(fmt_num(Some(1.234)), "1.23");
        assert_eq!(fmt_num(Some(3.0)), "3");
        assert_eq!(fmt_num(None), "-");
    }
}
