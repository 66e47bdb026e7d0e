//! `peloton report`: read run folders written by `peloton train` and compare them — SVG plots
//! that overlay every run (test error, training loss, traffic, consensus, leaders) and a
//! Markdown summary with one row per run.
//!
//! Only `metrics.jsonl` is required; `config.toml` gives the algorithm, the worker count and
//! the clock (`[transport] kind = "sim"`: simulated time, else wall-clock time), and
//! `summary.json`, when the run finished, gives the final step, time and traffic.
//!
//! Aggregation: several records of one step (one per worker) become one point. Worker
//! records give the mean loss and the mean bytes sent over workers, the largest consensus
//! distance and every leader reported at that step; evaluations of the model "worker" (one
//! per worker) give the mean test loss and accuracy over workers. A point's time is the
//! latest time among its records: the moment every worker had reached the step.
//!
//! The plots are SVG only: plotters' bitmap backend needs a font to draw text, which would
//! have to be a system font (fontconfig) or a TTF embedded in the binary.

use crate::outln;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Deserialize;

/// Arguments of `peloton report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Run folders written by `peloton train` (each with a metrics.jsonl).
    #[arg(value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Output folder (default: `report` next to the first run folder); existing plots and
    /// summary.md in it are replaced.
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Legend name of each run, in order (repeatable; default: the folder's name).
    #[arg(long = "label", value_name = "NAME")]
    labels: Vec<String>,
    /// Test accuracy whose first time is reported (a fraction in [0, 1]; default: the best
    /// accuracy every run reaches, i.e. the lowest of the runs' best accuracies).
    #[arg(long, value_name = "FRACTION")]
    target_accuracy: Option<f64>,
    /// Test loss whose first time is reported, for runs without accuracy (analytic
    /// problems; default: the best loss every such run reaches).
    #[arg(long, value_name = "LOSS")]
    target_loss: Option<f64>,
    /// A sweep's numeric setting, for plots of final metrics against it (`peloton run`).
    #[arg(skip)]
    pub sweep: Option<SweepAxis>,
}

/// A setting that varies over a sweep's runs: each run's value (None: a run without it,
/// drawn as a horizontal reference line) and the series it belongs to.
#[derive(Clone, Debug)]
pub struct SweepAxis {
    pub name: String,
    pub values: Vec<Option<f64>>,
    pub series: Vec<String>,
}

impl ReportArgs {
    /// A report of `runs` with their legend `labels`, written to `out`.
    pub fn new(runs: Vec<PathBuf>, labels: Vec<String>, out: PathBuf) -> Self {
        Self {
            runs,
            out: Some(out),
            labels,
            target_accuracy: None,
            target_loss: None,
            sweep: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading a run folder.

/// An f64 field that serde_json writes as `null` when it is NaN or infinite (a diverged
/// loss): read back as NaN rather than refused.
fn nullable_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Record {
    Start {
        workers: Option<usize>,
    },
    Worker(WorkerLine),
    Eval(EvalLine),
    /// Record types of later versions are skipped.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WorkerLine {
    step: u64,
    worker: usize,
    #[serde(deserialize_with = "nullable_f64")]
    loss: f64,
    #[serde(default)]
    leader: Option<usize>,
    #[serde(default)]
    consensus: Option<f64>,
    bytes_sent: u64,
    #[serde(deserialize_with = "nullable_f64")]
    seconds: f64,
    /// Present for tiny models (toy problems): the trajectory.
    #[serde(default)]
    params: Option<Vec<Option<f64>>>,
}

#[derive(Deserialize)]
struct EvalLine {
    step: u64,
    model: String,
    #[serde(default)]
    worker: Option<usize>,
    #[serde(default)]
    grad_norm: Option<f64>,
    #[serde(deserialize_with = "nullable_f64")]
    loss: f64,
    #[serde(default)]
    accuracy: Option<f64>,
    #[serde(deserialize_with = "nullable_f64")]
    seconds: f64,
}

/// The worker records of one step.
#[derive(Default)]
struct WorkerStep {
    records: usize,
    loss_sum: f64,
    bytes_sum: f64,
    seconds: f64,
    consensus: Option<f64>,
    leaders: BTreeSet<usize>,
}

/// The evaluations of one model at one step.
#[derive(Default)]
struct EvalStep {
    records: usize,
    loss_sum: f64,
    accuracy_sum: f64,
    accuracies: usize,
    seconds: f64,
    /// Per evaluated worker (model "worker"): loss, or 1 − accuracy, and gradient norm.
    per_worker: BTreeMap<usize, (f64, Option<f64>)>,
    /// Gradient norm of the model (not per worker).
    grad_norm: Option<f64>,
}

impl EvalStep {
    fn loss(&self) -> f64 {
        self.loss_sum / self.records as f64
    }

    /// The mean accuracy, when every record of the step has one.
    fn accuracy(&self) -> Option<f64> {
        (self.accuracies == self.records).then(|| self.accuracy_sum / self.records as f64)
    }

    /// 1 − accuracy, or the test loss without accuracy.
    fn error(&self) -> f64 {
        self.accuracy().map_or_else(|| self.loss(), |a| 1.0 - a)
    }

    /// The best evaluated worker's error and gradient norm (lowest error; ties → lowest rank).
    fn best_worker(&self) -> Option<(usize, f64, Option<f64>)> {
        self.per_worker
            .iter()
            .filter(|(_, (e, _))| e.is_finite())
            .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
            .map(|(&w, &(e, g))| (w, e, g))
    }

    /// The gradient norm to report: the model's, or the best worker's.
    fn reported_grad_norm(&self) -> Option<f64> {
        self.grad_norm
            .or_else(|| self.best_worker().and_then(|(_, _, g)| g))
    }
}

/// One run folder, aggregated per step.
struct Run {
    label: String,
    path: PathBuf,
    simulated: bool,
    algorithm: String,
    task: String,
    transport: String,
    workers: Option<usize>,
    status: String,
    steps: Option<u64>,
    seconds: Option<f64>,
    /// Mean bytes sent per worker over the whole run.
    bytes_per_worker: Option<f64>,
    worker_steps: BTreeMap<u64, WorkerStep>,
    /// Evaluated models in order of appearance, each with its steps.
    evals: Vec<(String, BTreeMap<u64, EvalStep>)>,
    /// Each worker's (x₀, x₁) at its records, for models with 2 to 4 parameters.
    trajectories: BTreeMap<usize, Vec<(f64, f64)>>,
    /// Passes over each worker's shard, when the run's budget was given in epochs.
    epochs: Option<f64>,
}

fn read_toml(path: &Path) -> Result<Option<toml::Table>> {
    match peloton_topology::text_file::read_text_file(path) {
        // toml's own message spans several lines (a snippet of the file): keep it to one.
        Ok(text) => text.parse::<toml::Table>().map(Some).map_err(|e| {
            let line = e
                .span()
                .map_or(0, |s| text[..s.start].matches('\n').count() + 1);
            anyhow::anyhow!(
                "{} line {line}: not valid TOML: {}",
                path.display(),
                e.message().trim().replace('\n', "; ")
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match peloton_topology::text_file::read_text_file(path) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("{} is not valid JSON", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

impl Run {
    fn load(path: &Path, label: String) -> Result<Run> {
        ensure!(
            path.exists(),
            "run folder {} does not exist",
            path.display()
        );
        ensure!(path.is_dir(), "{} is not a folder", path.display());
        let metrics = path.join("metrics.jsonl");
        ensure!(
            metrics.is_file(),
            "{} has no metrics.jsonl: not a run folder of `peloton train`",
            path.display()
        );
        let config = read_toml(&path.join("config.toml"))?;
        let summary = read_json(&path.join("summary.json"))?;
        let get = |table: &str, key: &str| {
            config
                .as_ref()
                .and_then(|c| c.get(table))
                .and_then(|t| t.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let transport = get("transport", "kind").unwrap_or_else(|| {
            if path.join("sim.json").exists() {
                "sim".into()
            } else {
                "threads".into()
            }
        });
        let summary_str = |key: &str| {
            summary
                .as_ref()
                .and_then(|s| s.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let algorithm = get("algorithm", "name")
            .or_else(|| summary_str("algorithm"))
            .unwrap_or_else(|| "?".into());
        let task = summary_str("task")
            .or_else(|| get("model", "name"))
            .or_else(|| get("problem", "kind"))
            .unwrap_or_else(|| "?".into());
        let mut run = Run {
            label,
            path: path.to_path_buf(),
            simulated: transport == "sim",
            algorithm,
            task,
            transport,
            workers: config
                .as_ref()
                .and_then(|c| c.get("workers"))
                .and_then(|v| v.as_integer())
                .and_then(|w| usize::try_from(w).ok()),
            status: "incomplete".into(),
            steps: None,
            seconds: None,
            bytes_per_worker: None,
            worker_steps: BTreeMap::new(),
            evals: Vec::new(),
            trajectories: BTreeMap::new(),
            epochs: config
                .as_ref()
                .and_then(|c| c.get("epochs"))
                .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64))),
        };
        let last_bytes = run.read_metrics(&metrics)?;
        if let Some(s) = &summary {
            run.status = match summary_str("status").as_deref() {
                Some("ok") => "ok".into(),
                Some("failed") => match summary_str("error") {
                    Some(e) => format!("failed: {e}"),
                    None => "failed".into(),
                },
                Some(other) => other.into(),
                None => "?".into(),
            };
            run.steps = s.get("steps").and_then(|v| v.as_u64());
            run.seconds = s.get("seconds").and_then(|v| v.as_f64());
            let sent: Option<Vec<f64>> = s.get("per_worker").and_then(|w| w.as_array()).map(|w| {
                w.iter()
                    .filter_map(|w| w.get("bytes_sent").and_then(|b| b.as_f64()))
                    .collect()
            });
            if let Some(sent) = sent.filter(|s| !s.is_empty()) {
                run.bytes_per_worker = Some(sent.iter().sum::<f64>() / sent.len() as f64);
            }
        }
        // Runs that did not finish: what the records say.
        if run.steps.is_none() {
            run.steps = run.worker_steps.keys().next_back().copied();
        }
        if run.seconds.is_none() {
            run.seconds = run
                .worker_steps
                .values()
                .map(|s| s.seconds)
                .chain(
                    run.evals
                        .iter()
                        .flat_map(|(_, e)| e.values().map(|e| e.seconds)),
                )
                .filter(|s| s.is_finite())
                .reduce(f64::max);
        }
        if run.bytes_per_worker.is_none() && !last_bytes.is_empty() {
            run.bytes_per_worker = Some(last_bytes.values().sum::<f64>() / last_bytes.len() as f64);
        }
        if run.workers.is_none() && !last_bytes.is_empty() {
            run.workers = Some(last_bytes.len());
        }
        Ok(run)
    }

    /// Reads `metrics.jsonl`; returns each worker's last bytes_sent.
    fn read_metrics(&mut self, path: &Path) -> Result<BTreeMap<usize, f64>> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut last_bytes = BTreeMap::new();
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(&line).with_context(|| {
                format!("{} line {}: not a valid record", path.display(), i + 1)
            })?;
            match record {
                Record::Start { workers } => {
                    if self.workers.is_none() {
                        self.workers = workers;
                    }
                }
                Record::Worker(w) => {
                    let s = self.worker_steps.entry(w.step).or_default();
                    s.records += 1;
                    s.loss_sum += w.loss;
                    s.bytes_sum += w.bytes_sent as f64;
                    s.seconds = s.seconds.max(w.seconds);
                    if let Some(c) = w.consensus {
                        s.consensus = Some(s.consensus.map_or(c, |m| m.max(c)));
                    }
                    s.leaders.extend(w.leader);
                    last_bytes.insert(w.worker, w.bytes_sent as f64);
                    if let Some(p) = w.params.as_deref().filter(|p| p.len() >= 2) {
                        let (x, y) = (p[0].unwrap_or(f64::NAN), p[1].unwrap_or(f64::NAN));
                        self.trajectories.entry(w.worker).or_default().push((x, y));
                    }
                }
                Record::Eval(e) => {
                    let k = match self.evals.iter().position(|(m, _)| *m == e.model) {
                        Some(k) => k,
                        None => {
                            self.evals.push((e.model.clone(), BTreeMap::new()));
                            self.evals.len() - 1
                        }
                    };
                    let s = self.evals[k].1.entry(e.step).or_default();
                    s.records += 1;
                    s.loss_sum += e.loss;
                    if let Some(a) = e.accuracy {
                        s.accuracy_sum += a;
                        s.accuracies += 1;
                    }
                    s.seconds = s.seconds.max(e.seconds);
                    match e.worker.filter(|_| e.model == "worker") {
                        Some(w) => {
                            let err = e.accuracy.map_or(e.loss, |a| 1.0 - a);
                            s.per_worker.insert(w, (err, e.grad_norm));
                        }
                        None => s.grad_norm = e.grad_norm,
                    }
                }
                Record::Other => {}
            }
        }
        Ok(last_bytes)
    }

    /// The evaluations of the first evaluated model (the run's `eval.model`).
    fn main_evals(&self) -> Option<&BTreeMap<u64, EvalStep>> {
        self.evals.first().map(|(_, e)| e)
    }

    /// Log points at which each worker was leader (a record's leader counted once per step).
    fn leader_counts(&self) -> BTreeMap<usize, usize> {
        let mut counts = BTreeMap::new();
        for s in self.worker_steps.values() {
            for &l in &s.leaders {
                *counts.entry(l).or_default() += 1;
            }
        }
        counts
    }

    fn has_accuracy(&self) -> bool {
        self.main_evals()
            .is_some_and(|e| e.values().any(|s| s.accuracy().is_some()))
    }

    fn best_accuracy(&self) -> Option<f64> {
        self.main_evals()?
            .values()
            .filter_map(EvalStep::accuracy)
            .filter(|a| a.is_finite())
            .reduce(f64::max)
    }

    fn best_loss(&self) -> Option<f64> {
        self.main_evals()?
            .values()
            .map(EvalStep::loss)
            .filter(|l| l.is_finite())
            .reduce(f64::min)
    }

    /// The time of the first evaluation that reaches the target.
    fn time_to(&self, target: Target) -> Option<f64> {
        self.main_evals()?
            .values()
            .find(|s| match target {
                Target::Accuracy(t) => s.accuracy().is_some_and(|a| a >= t),
                Target::Loss(t) => s.loss() <= t,
            })
            .map(|s| s.seconds)
    }

    /// The eval series to plot: one per evaluated model (named after the model when the run
    /// has several).
    fn eval_series(&self) -> impl Iterator<Item = (String, &BTreeMap<u64, EvalStep>)> {
        let several = self.evals.len() > 1;
        self.evals.iter().map(move |(model, steps)| {
            let label = if several {
                format!("{} [{model}]", self.label)
            } else {
                self.label.clone()
            };
            (label, steps)
        })
    }
}

#[derive(Clone, Copy)]
enum Target {
    Accuracy(f64),
    Loss(f64),
}

// ---------------------------------------------------------------------------------------
// Plots.

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

#[derive(Clone, Copy, PartialEq)]
enum Mark {
    /// A line with a dot at each point (sparse data such as evaluations).
    LineDots,
    Line,
    Points,
}

struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

struct Plot {
    file: &'static str,
    title: String,
    x_desc: String,
    y_desc: String,
    mark: Mark,
    integer_x: bool,
    integer_y: bool,
    /// The y axis starts at zero (cumulative counts).
    y_from_zero: bool,
    legend: SeriesLabelPosition,
}

/// A range around `lo..hi` with a margin, never empty.
fn padded(lo: f64, hi: f64, from_zero: bool) -> (f64, f64) {
    let lo = if from_zero { lo.min(0.0) } else { lo };
    let span = hi - lo;
    if span > 0.0 && span.is_finite() {
        let pad = 0.05 * span;
        (if from_zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad)
    } else {
        let pad = (hi.abs() * 0.1).max(1.0);
        (if from_zero { lo } else { lo - pad }, hi + pad)
    }
}

fn draw(path: &Path, plot: &Plot, series: &[Series]) -> Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (x_lo, x_hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let (y_lo, y_hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    let x = padded(x_lo, x_hi, true);
    let y = if plot.integer_y {
        (y_lo - 0.5, y_hi + 0.5)
    } else {
        padded(y_lo, y_hi, plot.y_from_zero)
    };
    let fail = || format!("cannot draw {}", path.display());
    let legend = plot.legend.clone();
    draw_chart(path, &plot.title, (x, y), legend, |chart| {
        let integer = integer_label;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(plot.x_desc.as_str())
            .y_desc(plot.y_desc.as_str())
            .axis_desc_style(("sans-serif", 17))
            .label_style(("sans-serif", 14))
            .light_line_style(WHITE.mix(0.0));
        if plot.integer_x {
            mesh.x_label_formatter(&integer);
        }
        if plot.integer_y {
            let span = (y.1 - y.0).round() as usize;
            mesh.y_label_formatter(&integer).y_labels(span + 1);
        }
        mesh.draw().with_context(fail)?;
        for s in series {
            let color = s.color;
            let anno = match plot.mark {
                Mark::Line | Mark::LineDots => chart
                    .draw_series(
                        LineSeries::new(s.points.iter().copied(), color.filled().stroke_width(2))
                            .point_size(if plot.mark == Mark::LineDots { 3 } else { 0 }),
                    )
                    .with_context(fail)?,
                Mark::Points => chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(|&p| Circle::new(p, 3, color.mix(0.8).filled())),
                    )
                    .with_context(fail)?,
            };
            if s.label.is_empty() {
                // One legend entry per run when a run draws several lines (one per worker).
                continue;
            }
            let anno = anno.label(s.label.as_str());
            if plot.mark == Mark::Points {
                anno.legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
            } else {
                anno.legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            }
        }
        Ok(())
    })
}

/// Every worker's path through (x₀, x₁), one color per run: a hollow circle at the first
/// record, a filled one at the last. The double-well's minima (±1, 0) and saddle (0, 0) are
/// marked when every run is that problem.
fn draw_trajectories(path: &Path, runs: &[Run], double_well: bool) -> Result<()> {
    let points = || runs.iter().flat_map(|r| r.trajectories.values().flatten());
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = points().filter(finite).fold(
        (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ),
        |(a, b, c, d), p| (a.min(p.0), b.max(p.0), c.min(p.1), d.max(p.1)),
    );
    if double_well {
        (x_lo, x_hi, y_lo, y_hi) = (x_lo.min(-1.0), x_hi.max(1.0), y_lo.min(0.0), y_hi.max(0.0));
    }
    let x = padded(x_lo, x_hi, false);
    let y = padded(y_lo, y_hi, false);
    let fail = || format!("cannot draw {}", path.display());
    let title = "Trajectories of every worker (x₀, x₁)";
    draw_chart(
        path,
        title,
        (x, y),
        SeriesLabelPosition::UpperRight,
        |chart| {
            chart
                .configure_mesh()
                .x_desc("x₀")
                .y_desc("x₁")
                .axis_desc_style(("sans-serif", 17))
                .label_style(("sans-serif", 14))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .with_context(fail)?;
            if double_well {
                let marks = [(-1.0, 0.0), (1.0, 0.0)];
                chart
                    .draw_series(
                        marks
                            .iter()
                            .map(|&p| Cross::new(p, 8, BLACK.stroke_width(2))),
                    )
                    .with_context(fail)?
                    .label("minima (±1, 0)")
                    .legend(|(x, y)| Cross::new((x + 10, y), 6, BLACK.stroke_width(2)));
                chart
                    .draw_series(std::iter::once(TriangleMarker::new(
                        (0.0, 0.0),
                        8,
                        BLACK.filled(),
                    )))
                    .with_context(fail)?
                    .label("saddle (0, 0)")
                    .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, BLACK.filled()));
            }
            for (i, r) in runs.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                for (k, t) in r.trajectories.values().enumerate() {
                    let t: Vec<(f64, f64)> = t.iter().copied().filter(|p| finite(&p)).collect();
                    let (Some(&first), Some(&last)) = (t.first(), t.last()) else {
                        continue;
                    };
                    let line = chart
                        .draw_series(LineSeries::new(t, color.mix(0.8).stroke_width(2)))
                        .with_context(fail)?;
                    if k == 0 {
                        line.label(r.label.as_str()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                        });
                    }
                    chart
                        .draw_series([
                            Circle::new(first, 5, color.stroke_width(2)),
                            Circle::new(last, 5, color.filled()),
                        ])
                        .with_context(fail)?;
                }
            }
            Ok(())
        },
    )
}

/// The chart every plot of a report draws on: a 960×600 SVG with the title, axes over the
/// ranges `x` × `y`, and the legend at `legend`. `draw` adds the mesh and the series.
fn draw_chart(
    path: &Path,
    title: &str,
    (x, y): ((f64, f64), (f64, f64)),
    legend: SeriesLabelPosition,
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Result<()>,
) -> Result<()> {
    let fail = || format!("cannot draw {}", path.display());
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).with_context(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .with_context(fail)?;
    draw(&mut chart)?;
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 17))
        .draw()
        .with_context(fail)?;
    root.present().with_context(fail)?;
    drop(chart);
    drop(root);
    write_png(path)
}

/// Renders the SVG plot at `path` to a PNG beside it (same name, `.png`), with the system's
/// fonts: plotters' own bitmap backend would need fontconfig or an embedded font to draw text.
fn write_png(svg: &Path) -> Result<()> {
    use resvg::{tiny_skia, usvg};
    static OPTIONS: std::sync::OnceLock<usvg::Options<'static>> = std::sync::OnceLock::new();
    let options = OPTIONS.get_or_init(|| {
        let mut options = usvg::Options::default();
        let fonts = options.fontdb_mut();
        fonts.load_system_fonts();
        // Plotters writes font-family "sans-serif"; point it at a sans face this machine has
        // (fontdb's default, Arial, is rarely installed on Linux).
        let has = |name: &str| {
            fonts
                .faces()
                .any(|f| f.families.iter().any(|(family, _)| family == name))
        };
        if let Some(name) = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"]
            .into_iter()
            .find(|n| has(n))
        {
            fonts.set_sans_serif_family(name);
        }
        options
    });
    let png = svg.with_extension("png");
    let fail = || format!("cannot render {}", png.display());
    let data = std::fs::read(svg).with_context(fail)?;
    let tree = usvg::Tree::from_data(&data, options).with_context(fail)?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| anyhow::anyhow!("cannot render {}: empty image", png.display()))?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    let bytes = pixmap.encode_png().with_context(fail)?;
    crate::run_folder::write_atomic(&png, &bytes)
}

/// A plot's drawing context.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Tick labels at whole numbers only (worker indices, counts).
fn integer_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// How often each worker was leader: one bar per (run, worker), the share of log points.
fn draw_leader_counts(path: &Path, runs: &[(usize, &Run)]) -> Result<()> {
    let workers = runs
        .iter()
        .filter_map(|(_, r)| r.leader_counts().keys().next_back().copied())
        .max()
        .unwrap_or(0)
        + 1;
    let fail = || format!("cannot draw {}", path.display());
    let title = "How often each worker was leader";
    let x = (-0.5, workers as f64 - 0.5);
    draw_chart(
        path,
        title,
        (x, (0.0, 1.05)),
        SeriesLabelPosition::UpperRight,
        |chart| {
            let integer = integer_label;
            chart
                .configure_mesh()
                .x_desc("worker")
                .y_desc("share of log points as leader")
                .x_label_formatter(&integer)
                .x_labels(workers.min(32) + 1)
                .axis_desc_style(("sans-serif", 17))
                .label_style(("sans-serif", 14))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .with_context(fail)?;
            let width = 0.8 / runs.len().max(1) as f64;
            for (k, &(i, r)) in runs.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let counts = r.leader_counts();
                let total: usize = counts.values().sum();
                let left = -0.4 + k as f64 * width;
                chart
                    .draw_series(counts.iter().map(|(&w, &c)| {
                        let x0 = w as f64 + left;
                        Rectangle::new(
                            [(x0, 0.0), (x0 + width, c as f64 / total.max(1) as f64)],
                            color.filled(),
                        )
                    }))
                    .with_context(fail)?
                    .label(r.label.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                    });
            }
            Ok(())
        },
    )
}

/// Objectives that fall over more than three decades (exact-gradient problems converging
/// linearly) are unreadable on a linear axis: plot log₁₀ of them instead. Only plots whose
/// file name says "worker" (per-worker and best-worker objectives) are eligible.
fn log_scale_if_wide(mut plot: Plot, series: Vec<Series>) -> (Plot, Vec<Series>) {
    let values = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let positive = values().all(|v| v > 0.0);
    let (lo, hi) = values().fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    if !plot.file.contains("worker") || !positive || hi < 1e3 * lo {
        return (plot, series);
    }
    plot.y_desc = format!("log₁₀ {}", plot.y_desc);
    let series = series
        .into_iter()
        .map(|mut s| {
            s.points.iter_mut().for_each(|p| p.1 = p.1.log10());
            s
        })
        .collect();
    (plot, series)
}

/// Keeps the finite points; drops series left empty.
fn finite(series: Vec<Series>) -> Vec<Series> {
    series
        .into_iter()
        .map(|mut s| {
            s.points.retain(|p| p.0.is_finite() && p.1.is_finite());
            s
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// A unit for byte counts up to `max`: (divisor, name).
fn byte_unit(max: f64) -> (f64, &'static str) {
    [(1e9, "GB"), (1e6, "MB"), (1e3, "kB")]
        .into_iter()
        .find(|(d, _)| max >= *d)
        .unwrap_or((1.0, "bytes"))
}

fn format_bytes(b: f64) -> String {
    let (d, unit) = byte_unit(b);
    if d == 1.0 {
        format!("{b:.0} bytes")
    } else {
        format!("{:.2} {unit}", b / d)
    }
}

/// Draws every plot that has data; returns the files written with a description.
fn plots(
    runs: &[Run],
    out: &Path,
    sweep: Option<&SweepAxis>,
) -> Result<Vec<(&'static str, String)>> {
    let color = |i: usize| COLORS[i % COLORS.len()];
    let time_desc = if runs.iter().all(|r| r.simulated) {
        "simulated time (s)"
    } else if runs.iter().all(|r| !r.simulated) {
        "wall-clock time (s)"
    } else {
        "time (s, simulated or wall-clock per run)"
    };
    let with_acc = runs.iter().filter(|r| r.has_accuracy()).count();
    let with_evals = runs.iter().filter(|r| r.main_evals().is_some()).count();
    let error_desc = if with_acc == with_evals {
        "test error (1 − accuracy)"
    } else if with_acc == 0 {
        "test loss"
    } else {
        "test error (1 − accuracy, or test loss without accuracy)"
    };
    let mut written = Vec::new();
    // Plots drawn by their own functions, listed after the overlaid ones.
    let mut extra: Vec<(&'static str, String)> = Vec::new();
    let mut emit = |plot: Plot, series: Vec<Series>, what: &str| -> Result<()> {
        let (plot, series) = log_scale_if_wide(plot, finite(series));
        if !series.is_empty() {
            draw(&out.join(plot.file), &plot, &series)?;
            written.push((plot.file, what.to_string()));
        }
        Ok(())
    };
    let plot = |file, title: &str, x_desc: &str, y_desc: &str, mark, integer_x| Plot {
        file,
        title: title.into(),
        x_desc: x_desc.into(),
        y_desc: y_desc.into(),
        mark,
        integer_x,
        integer_y: false,
        y_from_zero: false,
        legend: SeriesLabelPosition::UpperRight,
    };

    let eval_series = |by_time: bool| -> Vec<Series> {
        runs.iter()
            .enumerate()
            .flat_map(|(i, r)| {
                r.eval_series().map(move |(label, steps)| Series {
                    label,
                    color: color(i),
                    points: steps
                        .iter()
                        .map(|(&step, s)| {
                            (if by_time { s.seconds } else { step as f64 }, s.error())
                        })
                        .collect(),
                })
            })
            .collect()
    };
    emit(
        plot(
            "test_error_vs_time.svg",
            "Test error against time",
            time_desc,
            error_desc,
            Mark::LineDots,
            false,
        ),
        eval_series(true),
        "test error against time",
    )?;
    emit(
        plot(
            "test_error_vs_steps.svg",
            "Test error against steps",
            "step",
            error_desc,
            Mark::LineDots,
            true,
        ),
        eval_series(false),
        "test error against steps",
    )?;

    let worker_series = |f: &dyn Fn(&WorkerStep) -> Option<f64>, by_time: bool| -> Vec<Series> {
        runs.iter()
            .enumerate()
            .map(|(i, r)| Series {
                label: r.label.clone(),
                color: color(i),
                points: r
                    .worker_steps
                    .iter()
                    .filter_map(|(&step, s)| {
                        f(s).map(|v| (if by_time { s.seconds } else { step as f64 }, v))
                    })
                    .collect(),
            })
            .collect()
    };
    emit(
        plot(
            "train_loss_vs_time.svg",
            "Training loss (mean over workers) against time",
            time_desc,
            "training loss",
            Mark::Line,
            false,
        ),
        worker_series(&|s| Some(s.loss_sum / s.records as f64), true),
        "training loss, mean over workers, against time",
    )?;

    let max_bytes = runs
        .iter()
        .flat_map(|r| r.worker_steps.values())
        .map(|s| s.bytes_sum / s.records as f64)
        .filter(|b| b.is_finite())
        .fold(0.0, f64::max);
    let (divisor, unit) = byte_unit(max_bytes);
    emit(
        Plot {
            legend: SeriesLabelPosition::UpperLeft,
            y_from_zero: true,
            ..plot(
                "bytes_vs_time.svg",
                "Traffic: bytes sent per worker (mean) against time",
                time_desc,
                &format!("sent per worker ({unit})"),
                Mark::Line,
                false,
            )
        },
        worker_series(&|s| Some(s.bytes_sum / s.records as f64 / divisor), true),
        "bytes sent per worker, mean over workers, against time",
    )?;
    emit(
        plot(
            "consensus_vs_steps.svg",
            "Consensus: largest distance of a worker to the average model",
            "step",
            "max over workers of ‖x_i − x̄‖",
            Mark::Line,
            true,
        ),
        worker_series(&|s| s.consensus, false),
        "consensus distance, max over workers, against steps",
    )?;
    emit(
        Plot {
            integer_y: true,
            ..plot(
                "leader_vs_steps.svg",
                "Leader over steps",
                "step",
                "leader (worker)",
                Mark::Points,
                true,
            )
        },
        runs.iter()
            .enumerate()
            .map(|(i, r)| {
                // Runs are offset vertically a little so that equal leaders stay visible.
                let n = runs.len() as f64;
                let dodge = (i as f64 - (n - 1.0) / 2.0) * (0.6 / n).min(0.12);
                Series {
                    label: r.label.clone(),
                    color: color(i),
                    points: r
                        .worker_steps
                        .iter()
                        .flat_map(|(&step, s)| {
                            s.leaders
                                .iter()
                                .map(move |&l| (step as f64, l as f64 + dodge))
                        })
                        .collect(),
                }
            })
            .collect(),
        "leader identity against steps (each run's points slightly offset vertically)",
    )?;

    // Leader counts: runs that elected leaders.
    let leading: Vec<(usize, &Run)> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.leader_counts().is_empty())
        .collect();
    if !leading.is_empty() {
        draw_leader_counts(&out.join("leader_counts.svg"), &leading)?;
        extra.push((
            "leader_counts.svg",
            "share of log points at which each worker was leader".into(),
        ));
    }

    // Runs evaluated per worker: each worker's objective, and the best worker's.
    let per_worker = |r: &Run| {
        r.main_evals()
            .is_some_and(|e| e.values().any(|s| !s.per_worker.is_empty()))
    };
    if runs.iter().any(per_worker) {
        let mut series = Vec::new();
        for (i, r) in runs.iter().enumerate().filter(|(_, r)| per_worker(r)) {
            let evals = r.main_evals().expect("checked");
            let workers: BTreeSet<usize> = evals
                .values()
                .flat_map(|s| s.per_worker.keys().copied())
                .collect();
            for (k, w) in workers.into_iter().enumerate() {
                series.push(Series {
                    label: if k == 0 {
                        r.label.clone()
                    } else {
                        String::new()
                    },
                    color: color(i),
                    points: evals
                        .iter()
                        .filter_map(|(&step, s)| s.per_worker.get(&w).map(|v| (step as f64, v.0)))
                        .collect(),
                });
            }
        }
        emit(
            plot(
                "worker_error_vs_steps.svg",
                "Every worker's evaluation against steps (one line per worker)",
                "step",
                error_desc,
                Mark::Line,
                true,
            ),
            series,
            "each worker's test error (or objective) against steps, one color per run",
        )?;
        let best = |by_time: bool| -> Vec<Series> {
            runs.iter()
                .enumerate()
                .filter(|(_, r)| per_worker(r))
                .map(|(i, r)| Series {
                    label: r.label.clone(),
                    color: color(i),
                    points: r
                        .main_evals()
                        .expect("checked")
                        .iter()
                        .filter_map(|(&step, s)| {
                            s.best_worker()
                                .map(|b| (if by_time { s.seconds } else { step as f64 }, b.1))
                        })
                        .collect(),
                })
                .collect()
        };
        emit(
            plot(
                "best_worker_vs_steps.svg",
                "The best worker's evaluation against steps",
                "step",
                error_desc,
                Mark::LineDots,
                true,
            ),
            best(false),
            "the best worker's test error (or objective) against steps",
        )?;
        emit(
            plot(
                "best_worker_vs_time.svg",
                "The best worker's evaluation against time",
                time_desc,
                error_desc,
                Mark::LineDots,
                false,
            ),
            best(true),
            "the best worker's test error (or objective) against time",
        )?;
    }

    if runs.iter().any(|r| !r.trajectories.is_empty()) {
        let double_well = runs.iter().all(|r| r.task == "double-well");
        draw_trajectories(&out.join("trajectories.svg"), runs, double_well)?;
        extra.push((
            "trajectories.svg",
            "every worker's trajectory in the first two coordinates (hollow: start, filled: end)"
                .into(),
        ));
    }

    if let Some(axis) = sweep {
        sweep_plots(runs, axis, error_desc, &mut emit)?;
    }
    written.extend(extra);
    Ok(written)
}

/// Draws one overlay plot and lists it.
type Emit<'a> = dyn FnMut(Plot, Vec<Series>, &str) -> Result<()> + 'a;

/// The final metrics of a sweep's runs against one of its settings: one series per group of
/// runs that differ only in that setting; runs without it are horizontal reference lines.
fn sweep_plots(
    runs: &[Run],
    axis: &SweepAxis,
    error_desc: &str,
    emit: &mut Emit<'_>,
) -> Result<()> {
    let lo = axis
        .values
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let hi = axis
        .values
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let mut names: Vec<&str> = Vec::new();
    for s in &axis.series {
        if !names.contains(&s.as_str()) {
            names.push(s);
        }
    }
    let series_of = |f: &dyn Fn(&Run) -> Option<f64>| -> Vec<Series> {
        names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let mut points: Vec<(f64, f64)> = Vec::new();
                for (i, r) in runs.iter().enumerate() {
                    if axis.series.get(i).map(String::as_str) != Some(*name) {
                        continue;
                    }
                    if let Some(v) = f(r) {
                        match axis.values.get(i).copied().flatten() {
                            Some(x) => points.push((x, v)),
                            None => points.extend([(lo, v), (hi, v)]),
                        }
                    }
                }
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    label: name.to_string(),
                    color: COLORS[k % COLORS.len()],
                    points,
                }
            })
            .collect()
    };
    let sweep_plot = |file: &'static str, title: String, y_desc: String| Plot {
        file,
        title,
        x_desc: axis.name.clone(),
        y_desc,
        mark: Mark::LineDots,
        integer_x: false,
        integer_y: false,
        y_from_zero: false,
        legend: SeriesLabelPosition::UpperRight,
    };
    let final_error = |r: &Run| {
        r.main_evals()
            .and_then(|e| e.values().next_back())
            .map(EvalStep::error)
    };
    emit(
        sweep_plot(
            "sweep_error.svg",
            format!("Final evaluation against {}", axis.name),
            format!("final {error_desc}"),
        ),
        series_of(&final_error),
        &format!("final test error (or loss) against {}", axis.name),
    )?;
    let per_epoch = runs.iter().all(|r| r.epochs.is_some());
    emit(
        sweep_plot(
            "sweep_time.svg",
            format!(
                "{} against {}",
                if per_epoch {
                    "Time per epoch"
                } else {
                    "Run time"
                },
                axis.name
            ),
            if per_epoch {
                "seconds per epoch (run's clock)".into()
            } else {
                "seconds (run's clock)".into()
            },
        ),
        series_of(&|r: &Run| {
            let t = r.seconds?;
            Some(if per_epoch { t / r.epochs? } else { t })
        }),
        &format!(
            "{} against {}",
            if per_epoch {
                "time per epoch"
            } else {
                "run time"
            },
            axis.name
        ),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The summary.

/// A number with four significant digits, scientific when very small or large.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn percent(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

/// A Markdown table cell: no pipes or line breaks.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn summary_md(
    runs: &[Run],
    accuracy_target: Option<(f64, bool)>,
    loss_target: Option<(f64, bool)>,
    plots: &[(&'static str, String)],
    sweep: Option<&SweepAxis>,
) -> String {
    let dash = || "—".to_string();
    let mut md = String::from("# peloton report\n\n");
    md += "| Run | Algorithm | Task | Transport | Workers | Steps | Final test error | Best worker, final | Final ‖∇f‖ | Final accuracy | Best accuracy | Time to target (s) | Sent per worker | Time (s) | Status |\n";
    md += "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n";
    for r in runs {
        let last = r.main_evals().and_then(|e| e.values().next_back());
        let target = if r.has_accuracy() {
            accuracy_target.map(|(t, _)| Target::Accuracy(t))
        } else {
            loss_target.map(|(t, _)| Target::Loss(t))
        };
        let time_to = match target {
            Some(t) if r.main_evals().is_some() => {
                r.time_to(t).map_or_else(|| "not reached".into(), num)
            }
            _ => dash(),
        };
        let row = [
            cell(&r.label),
            cell(&r.algorithm),
            cell(&r.task),
            cell(&r.transport),
            r.workers.map_or_else(dash, |w| w.to_string()),
            r.steps.map_or_else(dash, |s| s.to_string()),
            last.map_or_else(dash, |s| num(s.error())),
            last.and_then(EvalStep::best_worker)
                .map_or_else(dash, |(w, e, _)| format!("{} (worker {w})", num(e))),
            last.and_then(EvalStep::reported_grad_norm)
                .map_or_else(dash, num),
            last.and_then(EvalStep::accuracy).map_or_else(dash, percent),
            r.best_accuracy().map_or_else(dash, percent),
            time_to,
            r.bytes_per_worker.map_or_else(dash, format_bytes),
            r.seconds.map_or_else(dash, num),
            cell(&r.status),
        ];
        md += &format!("| {} |\n", row.join(" | "));
    }
    md += "\n## Notes\n\n";
    md += "- Final test error: 1 − accuracy of the last evaluation (the test loss for problems \
           without accuracy); for the model \"worker\" (every worker evaluated), the mean over \
           workers.\n";
    if let Some((t, given)) = accuracy_target {
        let why = if given {
            "set with --target-accuracy"
        } else {
            "the default: the best accuracy every run reaches, i.e. the lowest of the runs' \
             best accuracies; set another with --target-accuracy"
        };
        let _ = writeln!(
            md,
            "- Time to target: time of the first evaluation with test accuracy ≥ {} ({why}).",
            percent(t)
        );
    }
    if let Some((t, given)) = loss_target {
        let why = if given {
            "set with --target-loss"
        } else {
            "the default: the best test loss every such run reaches; set another with \
             --target-loss"
        };
        let _ = writeln!(
            md,
            "- Time to target, runs without accuracy: time of the first evaluation with test \
             loss ≤ {} ({why}).",
            num(t)
        );
    }
    md += "- Best worker, final: with every worker evaluated (model \"worker\"), the lowest \
           final test error (or objective) and its worker. Final ‖∇f‖: the norm of the full \
           gradient of the original objective at the evaluated model (the best worker's when \
           every worker is evaluated), where the problem computes it: a stationarity check.\n";
    md += "- Times are in each run's own clock: simulated seconds for `sim` runs, wall-clock \
           seconds for `threads` runs.\n";
    md += "- Sent per worker: the algorithm's bytes sent (diagnostics excluded) over the whole \
           run, mean over workers.\n";
    let leading: Vec<&Run> = runs
        .iter()
        .filter(|r| !r.leader_counts().is_empty())
        .collect();
    if !leading.is_empty() {
        md += "\n## Leaders\n\nShare of log points at which each worker was leader.\n\n";
        for r in leading {
            let counts = r.leader_counts();
            let total: usize = counts.values().sum();
            let shares: Vec<String> = counts
                .iter()
                .map(|(w, c)| format!("{w}: {:.0}%", 100.0 * *c as f64 / total as f64))
                .collect();
            let changes = r
                .worker_steps
                .values()
                .filter_map(|s| s.leaders.iter().next().copied())
                .collect::<Vec<_>>()
                .windows(2)
                .filter(|w| w[0] != w[1])
                .count();
            let _ = writeln!(
                md,
                "- **{}**: {} ({} leader changes over {} log points)",
                cell(&r.label),
                shares.join(", "),
                changes,
                total
            );
        }
    }
    if let Some(axis) = sweep {
        let _ = writeln!(
            md,
            "\n## Against {}\n\n| Series | {} | Final test error | Time (s) | Time per epoch (s) |\n|---|--:|--:|--:|--:|",
            cell(&axis.name),
            cell(&axis.name)
        );
        for (i, r) in runs.iter().enumerate() {
            let last = r.main_evals().and_then(|e| e.values().next_back());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                cell(axis.series.get(i).map_or("", String::as_str)),
                axis.values
                    .get(i)
                    .copied()
                    .flatten()
                    .map_or_else(|| "—".into(), num),
                last.map_or_else(dash, |s| num(s.error())),
                r.seconds.map_or_else(dash, num),
                r.seconds
                    .zip(r.epochs)
                    .map_or_else(dash, |(t, e)| num(t / e)),
            );
        }
    }
    md += "\n## Runs\n\n";
    for r in runs {
        let models: Vec<&str> = r.evals.iter().map(|(m, _)| m.as_str()).collect();
        let _ = writeln!(
            md,
            "- **{}**: `{}` — {} time; evaluated model: {}",
            r.label.replace(['\n', '\r'], " "),
            r.path.display(),
            if r.simulated {
                "simulated"
            } else {
                "wall-clock"
            },
            if models.is_empty() {
                "none (no evaluations)".into()
            } else {
                models.join(", ")
            }
        );
    }
    md += "\n## Plots\n\n";
    if plots.is_empty() {
        md += "No plots: the runs have no records.\n";
    }
    for (file, what) in plots {
        let _ = writeln!(md, "- [{file}]({file}): {what}");
    }
    md
}

// ---------------------------------------------------------------------------------------

/// Runs `peloton report`.
pub fn report(args: &ReportArgs) -> Result<()> {
    ensure!(
        !args.runs.is_empty(),
        "no run folders given: peloton report RUN_DIR... [--out DIR] [--label NAME]..."
    );
    ensure!(
        args.labels.len() <= args.runs.len(),
        "{} --label values for {} run folders",
        args.labels.len(),
        args.runs.len()
    );
    if let Some(t) = args.target_accuracy {
        ensure!(
            (0.0..=1.0).contains(&t),
            "--target-accuracy must be a fraction in [0, 1], got {t}"
        );
    }
    if let Some(t) = args.target_loss {
        ensure!(t.is_finite(), "--target-loss must be a finite number");
    }
    let mut runs = Vec::new();
    for (i, path) in args.runs.iter().enumerate() {
        ensure!(
            path.exists(),
            "run folder {} does not exist",
            path.display()
        );
        let full = std::fs::canonicalize(path)
            .with_context(|| format!("cannot open run folder {}", path.display()))?;
        let label = match args.labels.get(i) {
            Some(l) => l.clone(),
            None => full
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| full.display().to_string()),
        };
        runs.push(Run::load(path, label)?);
    }
    let out = match &args.out {
        Some(o) => o.clone(),
        None => {
            let first = std::fs::canonicalize(&args.runs[0])?;
            first.parent().unwrap_or(&first).join("report")
        }
    };
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create report folder {}", out.display()))?;

    let accuracy_target = match args.target_accuracy {
        Some(t) => Some((t, true)),
        None => runs
            .iter()
            .filter(|r| r.has_accuracy())
            .filter_map(Run::best_accuracy)
            .reduce(f64::min)
            .map(|t| (t, false)),
    };
    let loss_target = match args.target_loss {
        Some(t) => Some((t, true)),
        None => runs
            .iter()
            .filter(|r| !r.has_accuracy() && r.main_evals().is_some())
            .filter_map(Run::best_loss)
            .reduce(f64::max)
            .map(|t| (t, false)),
    };

    if let Some(axis) = &args.sweep {
        ensure!(
            axis.values.len() == runs.len() && axis.series.len() == runs.len(),
            "the sweep axis needs one value per run"
        );
    }
    let written = plots(&runs, &out, args.sweep.as_ref())?;
    let summary = out.join("summary.md");
    crate::run_folder::write_atomic(
        &summary,
        summary_md(
            &runs,
            accuracy_target,
            loss_target,
            &written,
            args.sweep.as_ref(),
        )
        .as_bytes(),
    )?;
    outln!(
        "wrote {} and {} plots to {}",
        summary.display(),
        written.len(),
        out.display()
    );
    Ok(())
}
