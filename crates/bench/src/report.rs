//! The `report` command: turns a results file into the table (stdout) and the combined JSON
//! kept under bench-results/: medians over rounds with their spread, ratios paired by round,
//! CPU steal per step with the rounds where it differed between servers, scaling curves.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::results::{RunResults, unix_now, write_json};
use crate::summary::{self, Better, Curve, Row, Spread, StealRound};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The results file written by `run` (or a combined file written by `report`).
    file: PathBuf,
    /// The server compared against all others in the ratio columns
    /// [default: `rhizome` if present, else the first server].
    #[arg(long)]
    subject: Option<String>,
    /// Flag a round when the CPU steal of two servers differs by more than this many
    /// percentage points.
    #[arg(long, default_value_t = 10.0)]
    steal_flag_pct: f64,
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

pub fn report(args: ReportArgs) -> Result<()> {
    let raw =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let value: Value = serde_json::from_slice(&raw).context("parsing the results file")?;
    // A combined file holds the results it was made from.
    let mut results: RunResults =
        serde_json::from_value(value.get("results").cloned().unwrap_or(value))
            .context("reading the results")?;
    results.meta.extend(args.meta.iter().cloned());
    let subject = args
        .subject
        .clone()
        .or_else(|| {
            results.servers.iter().find(|s| s.server == "rhizome").map(|s| s.server.clone())
        })
        .or_else(|| results.servers.first().map(|s| s.server.clone()));
    let Some(subject) = subject else { bail!("no results to report") };
    let steal = summary::steal_rounds(&results, args.steal_flag_pct);
    let rows = summary::rows(&results, &subject, &steal, args.steal_flag_pct);
    let curves = summary::curves(&rows);
    println!("{}", render(&results, &subject, &rows, &steal, &curves, args.steal_flag_pct));
    if let Some(out) = &args.out {
        let combined = json!({
            "generated_unix": unix_now(),
            "subject": subject,
            "columns": results.servers.iter().map(|s| s.server.as_str()).collect::<Vec<_>>(),
            "rounds": results.rounds,
            "steal_flag_pct": args.steal_flag_pct,
            "meta": results.meta,
            "table": rows,
            "steal": steal,
            "scaling": curves,
            "results": results,
        });
        write_json(out, &combined)?;
        eprintln!("[bench] combined results written to {}", out.display());
    }
    Ok(())
}

/// The whole text report.
fn render(
    results: &RunResults,
    subject: &str,
    rows: &[Row],
    steal: &[StealRound],
    curves: &[Curve],
    threshold: f64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Medians over {} rounds [min–max]; ratios are {subject}/other paired round by round. \
         CPU ms figures count the server's process and its PostgreSQL.",
        results.rounds
    );
    out.push_str(&main_table(results, subject, rows));
    out.push_str(&steal_section(results, steal, threshold));
    out.push_str(&curves_section(results, curves));
    for s in &results.servers {
        for (what, err) in &s.errors {
            let _ = writeln!(out, "error: {} {what}: {err}", s.server);
        }
    }
    for run in results.runs.iter().filter(|r| r.error.is_some()) {
        let _ = writeln!(
            out,
            "error: {} {} round {}: {}",
            run.server,
            run.step,
            run.round,
            run.error.as_deref().unwrap_or_default()
        );
    }
    if results.quick {
        let _ = writeln!(out, "note: measured with --quick sizes");
    }
    out
}

fn main_table(results: &RunResults, subject: &str, rows: &[Row]) -> String {
    let servers: Vec<&str> = results.servers.iter().map(|s| s.server.as_str()).collect();
    let others: Vec<&str> = servers.iter().copied().filter(|s| *s != subject).collect();
    let mut header = vec!["metric".to_owned()];
    header.extend(servers.iter().map(|s| (*s).to_owned()));
    header.extend(others.iter().map(|o| format!("{subject}/{o}")));
    header.push("better".to_owned());
    let mut cells = vec![header];
    let mut flagged_any = false;
    for row in rows {
        let mut line = vec![row.label.clone()];
        line.extend(servers.iter().map(|s| fmt_spread(row.values.get(*s), false)));
        for o in &others {
            let cell = match row.ratios.get(&format!("{subject}/{o}")) {
                Some(r) => {
                    let mark = if r.flagged_rounds.is_empty() { "" } else { "*" };
                    flagged_any |= !r.flagged_rounds.is_empty();
                    format!("{}{mark}", fmt_spread(Some(&r.spread), true))
                }
                None => "-".to_owned(),
            };
            line.push(cell);
        }
        line.push(
            match row.better {
                Better::Lower => "lower",
                Better::Higher => "higher",
                Better::Neither => "",
            }
            .to_owned(),
        );
        cells.push(line);
    }
    let mut out = layout(&cells);
    if flagged_any {
        out.push_str(
            "* some rounds of this ratio had steal differing between the two servers (see below)\n",
        );
    }
    out
}

fn steal_section(results: &RunResults, steal: &[StealRound], threshold: f64) -> String {
    let mut out = String::new();
    if steal.is_empty() {
        return out;
    }
    let servers: Vec<&str> = results.servers.iter().map(|s| s.server.as_str()).collect();
    let _ =
        writeln!(out, "\nCPU steal per step (% of all CPU time, median [min–max] over rounds):");
    let mut cells = vec![
        std::iter::once("step".to_owned())
            .chain(servers.iter().map(|s| (*s).to_owned()))
            .chain(["flagged rounds".to_owned()])
            .collect::<Vec<_>>(),
    ];
    let mut steps: Vec<&str> = Vec::new();
    for s in steal {
        if !steps.contains(&s.step.as_str()) {
            steps.push(&s.step);
        }
    }
    for step in steps {
        let rounds: Vec<&StealRound> = steal.iter().filter(|s| s.step == step).collect();
        let mut line = vec![step.to_owned()];
        for server in &servers {
            let v: Vec<f64> =
                rounds.iter().filter_map(|r| r.by_server.get(*server)).copied().collect();
            line.push(fmt_spread(Spread::of(&v).as_ref(), false));
        }
        let flagged: Vec<String> = rounds
            .iter()
            .filter(|r| r.flagged)
            .map(|r| format!("{} ({:.0} pts)", r.round, r.spread_pct))
            .collect();
        line.push(if flagged.is_empty() { "-".into() } else { flagged.join(", ") });
        cells.push(line);
    }
    out.push_str(&layout(&cells));
    let _ = writeln!(
        out,
        "(a round is flagged when two servers' steal differs by more than {threshold:.0} points)"
    );
    out
}

fn curves_section(results: &RunResults, curves: &[Curve]) -> String {
    let mut out = String::new();
    if curves.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nScaling curves (medians by size; growth exponent between sizes: 0 flat, 1 linear):"
    );
    let order: Vec<&str> = results.servers.iter().map(|s| s.server.as_str()).collect();
    let mut cells = vec![vec![
        "dimension".to_owned(),
        "measure".into(),
        "server".into(),
        "by size".into(),
        "exponents".into(),
    ]];
    let mut sorted: Vec<&Curve> = curves.iter().collect();
    sorted.sort_by_key(|c| {
        (
            c.dimension != "rooms",
            c.measure.clone(),
            order.iter().position(|s| *s == c.server).unwrap_or(usize::MAX),
        )
    });
    for c in sorted {
        let points: Vec<String> =
            c.points.iter().map(|(n, v)| format!("{n}: {}", fmt_num(*v))).collect();
        let exps: Vec<String> = c.exponents.iter().map(|e| format!("{e:.2}")).collect();
        cells.push(vec![
            c.dimension.clone(),
            c.measure.clone(),
            c.server.clone(),
            points.join(", "),
            exps.join(", "),
        ]);
    }
    out.push_str(&layout(&cells));
    out
}

/// Lays cells out in columns, the first left-aligned, a rule under the header.
fn layout(cells: &[Vec<String>]) -> String {
    let columns = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| cells.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
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
            let total: usize = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    out
}

/// `4.80 [4.52–5.10]`, or one value alone; ratios get an `x`.
fn fmt_spread(spread: Option<&Spread>, ratio: bool) -> String {
    let Some(s) = spread else { return "-".to_owned() };
    let f = |v: f64| if ratio { format!("{v:.2}x") } else { fmt_num(v) };
    if s.n <= 1 || s.min == s.max {
        f(s.median)
    } else if ratio {
        format!("{} [{:.2}–{:.2}]", f(s.median), s.min, s.max)
    } else {
        format!("{} [{}–{}]", f(s.median), fmt_num(s.min), fmt_num(s.max))
    }
}

fn fmt_num(v: f64) -> String {
    match v {
        v if !v.is_finite() => "-".to_owned(),
        v if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        v if v.abs() >= 100.0 => format!("{v:.0}"),
        v if v.abs() >= 10.0 => format!("{v:.1}"),
        v if v.abs() >= 0.1 => format!("{v:.2}"),
        v => format!("{v:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_and_spreads() {
        assert_eq!(fmt_num(1234.4), "1234");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.01234), "0.012");
        assert_eq!(fmt_num(3.0), "3");
        let s = Spread { median: 4.8, min: 4.52, max: 5.1, n: 3 };
        assert_eq!(fmt_spread(Some(&s), false), "4.80 [4.52–5.10]");
        let r = Spread { median: 0.16, min: 0.14, max: 0.19, n: 3 };
        assert_eq!(fmt_spread(Some(&r), true), "0.16x [0.14–0.19]");
        assert_eq!(fmt_spread(None, false), "-");
    }

    #[test]
    fn layout_aligns_columns() {
        let cells = vec![
            vec!["metric".to_owned(), "a".to_owned()],
            vec!["latency".to_owned(), "12.5".to_owned()],
        ];
        assert_eq!(layout(&cells), "metric      a\n-------------\nlatency  12.5\n");
    }
}
