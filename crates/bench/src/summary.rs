//! From measured runs to figures: each metric's median over rounds with its spread, the
//! subject's ratio to every other server paired round by round, the CPU steal of each step
//! (and the rounds where it differed a lot between servers), and the scaling curves.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::results::RunResults;
use crate::stats::median;

/// Which direction of a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
    #[serde(rename = "")]
    Neither,
}

/// The median of some samples, with their range.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Self> {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return None;
        }
        Some(Self {
            median: median(&finite),
            min: finite.iter().copied().fold(f64::INFINITY, f64::min),
            max: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: finite.len(),
        })
    }
}

/// The subject's ratio to another server, round by round.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    #[serde(flatten)]
    pub spread: Spread,
    /// Rounds whose steal differed between the two servers by more than the threshold.
    pub flagged_rounds: Vec<usize>,
    /// The median over the rounds that were not flagged, when some were.
    pub unflagged_median: Option<f64>,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: String,
    pub label: String,
    pub better: Better,
    pub values: BTreeMap<String, Spread>,
    pub ratios: BTreeMap<String, Ratio>,
}

/// The steal of one step's rounds.
#[derive(Debug, Clone, Serialize)]
pub struct StealRound {
    pub step: String,
    pub round: usize,
    pub by_server: BTreeMap<String, f64>,
    /// Highest minus lowest, in percentage points.
    pub spread_pct: f64,
    pub flagged: bool,
}

/// Samples of one metric on one server: (round, value); a metric measured once has no round.
type Samples = Vec<(Option<usize>, f64)>;

/// Every metric's samples, per server.
fn collect(results: &RunResults) -> BTreeMap<String, BTreeMap<String, Samples>> {
    let mut all: BTreeMap<String, BTreeMap<String, Samples>> = BTreeMap::new();
    let mut push = |key: String, server: &str, round: Option<usize>, value: f64| {
        if value.is_finite() {
            all.entry(key).or_default().entry(server.to_owned()).or_default().push((round, value));
        }
    };
    for run in results.runs.iter().filter(|r| r.error.is_none()) {
        let round = Some(run.round);
        for (key, value) in &run.metrics {
            push(key.clone(), &run.server, round, *value);
        }
        if let Some(cpu) = run.cpu_s {
            push(format!("cpu.{}_s", run.step), &run.server, round, cpu);
        }
        if let Some(db) = run.db_cpu_s {
            push(format!("db_cpu.{}_s", run.step), &run.server, round, db);
        }
        if let Some(steal) = run.steal_pct {
            push(format!("steal.{}_pct", run.step), &run.server, round, steal);
        }
    }
    for server in &results.servers {
        for (key, value) in &server.metrics {
            push(key.clone(), &server.server, None, *value);
        }
    }
    all
}

/// The steal of every (step, round), flagged when servers differ by more than `threshold`.
pub fn steal_rounds(results: &RunResults, threshold: f64) -> Vec<StealRound> {
    let mut by_round: BTreeMap<(usize, usize), StealRound> = BTreeMap::new();
    let order: Vec<&String> = steps_in_order(results);
    for run in &results.runs {
        let Some(steal) = run.steal_pct else { continue };
        let step_index = order.iter().position(|s| **s == run.step).unwrap_or(usize::MAX);
        let entry = by_round.entry((step_index, run.round)).or_insert_with(|| StealRound {
            step: run.step.clone(),
            round: run.round,
            by_server: BTreeMap::new(),
            spread_pct: 0.0,
            flagged: false,
        });
        entry.by_server.insert(run.server.clone(), steal);
    }
    let mut rounds: Vec<StealRound> = by_round.into_values().collect();
    for round in &mut rounds {
        let values: Vec<f64> = round.by_server.values().copied().collect();
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        round.spread_pct = if values.len() > 1 { hi - lo } else { 0.0 };
        round.flagged = round.spread_pct > threshold;
    }
    rounds
}

/// The steps in the order they ran.
pub fn steps_in_order(results: &RunResults) -> Vec<&String> {
    let mut seen = BTreeSet::new();
    results.runs.iter().map(|r| &r.step).filter(|s| seen.insert(s.as_str())).collect()
}

/// The table's rows, in reading order, for the metrics any server has.
pub fn rows(results: &RunResults, subject: &str, steal: &[StealRound], threshold: f64) -> Vec<Row> {
    let samples = collect(results);
    let mut specs = crate::labels::row_specs(results);
    let known: BTreeSet<String> = specs.iter().map(|(k, _, _)| k.clone()).collect();
    specs.extend(
        samples
            .keys()
            .filter(|k| !known.contains(*k))
            .map(|k| (k.clone(), k.clone(), Better::Neither)),
    );
    let servers: Vec<&str> = results.servers.iter().map(|s| s.server.as_str()).collect();
    let mut rows = Vec::new();
    for (key, label, better) in specs {
        let Some(by_server) = samples.get(&key) else { continue };
        let values: BTreeMap<String, Spread> = by_server
            .iter()
            .filter_map(|(server, s)| {
                let v: Vec<f64> = s.iter().map(|(_, v)| *v).collect();
                Spread::of(&v).map(|spread| (server.clone(), spread))
            })
            .collect();
        let mut ratios = BTreeMap::new();
        if let Some(subj) = by_server.get(subject) {
            for other in servers.iter().filter(|s| **s != subject) {
                let Some(theirs) = by_server.get(*other) else { continue };
                let step = key_step(&key, results);
                if let Some(r) =
                    ratio(subj, theirs, step.as_deref(), subject, other, steal, threshold)
                {
                    ratios.insert(format!("{subject}/{other}"), r);
                }
            }
        }
        rows.push(Row { metric: key, label, better, values, ratios });
    }
    rows
}

/// The step a metric was measured in (for steal flags): `latency.p50_ms` → `latency`.
fn key_step(key: &str, results: &RunResults) -> Option<String> {
    results.runs.iter().find(|r| r.metrics.contains_key(key)).map(|r| r.step.clone()).or_else(
        || {
            let inner = key.strip_prefix("cpu.").or_else(|| key.strip_prefix("db_cpu."))?;
            let inner = inner.strip_suffix("_s")?;
            results.runs.iter().any(|r| r.step == inner).then(|| inner.to_owned())
        },
    )
}

/// The subject's ratio to another server, paired by round (or the single pair of values).
fn ratio(
    subject: &Samples,
    other: &Samples,
    step: Option<&str>,
    subject_name: &str,
    other_name: &str,
    steal: &[StealRound],
    threshold: f64,
) -> Option<Ratio> {
    let mut pairs = Vec::new();
    for (round, a) in subject {
        if let Some((_, b)) = other.iter().find(|(r, _)| r == round)
            && *b != 0.0
        {
            pairs.push((*round, a / b));
        }
    }
    let spread = Spread::of(&pairs.iter().map(|(_, r)| *r).collect::<Vec<_>>())?;
    let flagged_rounds: Vec<usize> = pairs
        .iter()
        .filter_map(|(round, _)| *round)
        .filter(|round| {
            steal.iter().any(|s| {
                Some(s.step.as_str()) == step
                    && s.round == *round
                    && match (s.by_server.get(subject_name), s.by_server.get(other_name)) {
                        (Some(a), Some(b)) => (a - b).abs() > threshold,
                        _ => false,
                    }
            })
        })
        .collect();
    let unflagged: Vec<f64> = pairs
        .iter()
        .filter(|(round, _)| round.is_none_or(|r| !flagged_rounds.contains(&r)))
        .map(|(_, r)| *r)
        .collect();
    let unflagged_median =
        (!flagged_rounds.is_empty() && !unflagged.is_empty()).then(|| median(&unflagged));
    Some(Ratio { spread, flagged_rounds, unflagged_median })
}

/// One server's curve along one scaling dimension for one measure.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub dimension: String,
    pub measure: String,
    pub server: String,
    /// (size, median) in ascending size.
    pub points: Vec<(usize, f64)>,
    /// Between consecutive sizes: log(v2/v1) / log(n2/n1). 0 is flat, 1 linear.
    pub exponents: Vec<f64>,
}

/// The scaling curves: for every dimension, measure and server, the medians by size.
pub fn curves(rows: &[Row]) -> Vec<Curve> {
    let mut points: BTreeMap<(String, String, String), Vec<(usize, f64)>> = BTreeMap::new();
    for row in rows {
        let Some((dim, size, measure)) = crate::labels::parse_scaling_key(&row.metric) else {
            continue;
        };
        for (server, spread) in &row.values {
            points
                .entry((dim.to_owned(), measure.to_owned(), server.clone()))
                .or_default()
                .push((size, spread.median));
        }
    }
    points
        .into_iter()
        .map(|((dimension, measure, server), mut points)| {
            points.sort_by_key(|(size, _)| *size);
            let exponents = points
                .windows(2)
                .map(|w| {
                    let ((n1, v1), (n2, v2)) = (w[0], w[1]);
                    if v1 > 0.0 && v2 > 0.0 {
                        (v2 / v1).ln() / (n2 as f64 / n1 as f64).ln()
                    } else {
                        f64::NAN
                    }
                })
                .collect();
            Curve { dimension, measure, server, points, exponents }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Measurement, ServerResult};

    fn run(step: &str, round: usize, server: &str, p50: f64, steal: f64) -> Measurement {
        Measurement {
            step: step.into(),
            round,
            server: server.into(),
            metrics: [("latency.p50_ms".to_owned(), p50)].into(),
            steal_pct: Some(steal),
            cpu_s: Some(1.0),
            ..Measurement::default()
        }
    }

    fn results() -> RunResults {
        RunResults {
            servers: ["a", "b"]
                .iter()
                .map(|s| ServerResult { server: (*s).into(), ..ServerResult::default() })
                .collect(),
            runs: vec![
                run("latency", 0, "a", 5.0, 30.0),
                run("latency", 0, "b", 20.0, 32.0),
                run("latency", 1, "b", 40.0, 10.0),
                run("latency", 1, "a", 6.0, 40.0),
                run("latency", 2, "a", 4.0, 31.0),
                run("latency", 2, "b", 10.0, 33.0),
            ],
            ..RunResults::default()
        }
    }

    #[test]
    fn ratios_pair_rounds_and_flag_steal() {
        let results = results();
        let steal = steal_rounds(&results, 10.0);
        assert_eq!(steal.len(), 3);
        assert!(!steal[0].flagged && steal[1].flagged && !steal[2].flagged);
        assert_eq!(steal[1].spread_pct, 30.0);
        let rows = rows(&results, "a", &steal, 10.0);
        let p50 = rows.iter().find(|r| r.metric == "latency.p50_ms").unwrap();
        assert_eq!(p50.values["a"].median, 5.0);
        assert_eq!((p50.values["b"].min, p50.values["b"].max), (10.0, 40.0));
        let r = &p50.ratios["a/b"];
        // Round ratios 0.25, 0.15, 0.4: median 0.25; round 1 flagged.
        assert_eq!((r.spread.median, r.spread.min, r.spread.max), (0.25, 0.15, 0.4));
        assert_eq!(r.flagged_rounds, vec![1]);
        assert!(r.unflagged_median.is_some());
        let cpu = rows.iter().find(|r| r.metric == "cpu.latency_s").unwrap();
        assert_eq!(cpu.ratios["a/b"].spread.median, 1.0);
    }

    #[test]
    fn curves_have_growth_exponents() {
        let mut results = results();
        for (size, v) in [(10, 2.0), (100, 20.0), (1000, 20.0)] {
            let mut m = run(&format!("scaling.rooms_{size}"), 0, "a", 0.0, 0.0);
            m.metrics = [(format!("scaling.rooms_{size}.initial_ms"), v)].into();
            results.runs.push(m);
        }
        let rows = rows(&results, "a", &[], 10.0);
        let curves = curves(&rows);
        let c = curves.iter().find(|c| c.measure == "initial_ms").unwrap();
        assert_eq!(c.points, vec![(10, 2.0), (100, 20.0), (1000, 20.0)]);
        assert!((c.exponents[0] - 1.0).abs() < 1e-9 && c.exponents[1].abs() < 1e-9);
    }
}
