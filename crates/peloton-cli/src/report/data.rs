//! Reading run folders for `peloton report`: `metrics.jsonl` aggregated per step, `summary.json`
//! and `config.toml`, into one [`Run`] per folder.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

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
pub(super) struct WorkerStep {
    pub(super) records: usize,
    pub(super) loss_sum: f64,
    pub(super) bytes_sum: f64,
    pub(super) seconds: f64,
    pub(super) consensus: Option<f64>,
    pub(super) leaders: BTreeSet<usize>,
}

/// The evaluations of one model at one step.
#[derive(Default)]
pub(super) struct EvalStep {
    pub(super) records: usize,
    pub(super) loss_sum: f64,
    pub(super) accuracy_sum: f64,
    pub(super) accuracies: usize,
    pub(super) seconds: f64,
    /// Per evaluated worker (model "worker"): loss, or 1 − accuracy, and gradient norm.
    pub(super) per_worker: BTreeMap<usize, (f64, Option<f64>)>,
    /// Gradient norm of the model (not per worker).
    pub(super) grad_norm: Option<f64>,
}

impl EvalStep {
    pub(super) fn loss(&self) -> f64 {
        self.loss_sum / self.records as f64
    }

    /// The mean accuracy, when every record of the step has one.
    pub(super) fn accuracy(&self) -> Option<f64> {
        (self.accuracies == self.records).then(|| self.accuracy_sum / self.records as f64)
    }

    /// 1 − accuracy, or the test loss without accuracy.
    pub(super) fn error(&self) -> f64 {
        self.accuracy().map_or_else(|| self.loss(), |a| 1.0 - a)
    }

    /// The best evaluated worker's error and gradient norm (lowest error; ties → lowest rank).
    pub(super) fn best_worker(&self) -> Option<(usize, f64, Option<f64>)> {
        self.per_worker
            .iter()
            .filter(|(_, (e, _))| e.is_finite())
            .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
            .map(|(&w, &(e, g))| (w, e, g))
    }

    /// The gradient norm to report: the model's, or the best worker's.
    pub(super) fn reported_grad_norm(&self) -> Option<f64> {
        self.grad_norm
            .or_else(|| self.best_worker().and_then(|(_, _, g)| g))
    }
}

/// One run folder, aggregated per step.
pub(super) struct Run {
    pub(super) label: String,
    pub(super) path: PathBuf,
    pub(super) simulated: bool,
    pub(super) algorithm: String,
    pub(super) task: String,
    pub(super) transport: String,
    pub(super) workers: Option<usize>,
    pub(super) status: String,
    pub(super) steps: Option<u64>,
    pub(super) seconds: Option<f64>,
    /// Mean bytes sent per worker over the whole run.
    pub(super) bytes_per_worker: Option<f64>,
    pub(super) worker_steps: BTreeMap<u64, WorkerStep>,
    /// Evaluated models in order of appearance, each with its steps.
    pub(super) evals: Vec<(String, BTreeMap<u64, EvalStep>)>,
    /// Each worker's (x₀, x₁) at its records, for models with 2 to 4 parameters.
    pub(super) trajectories: BTreeMap<usize, Vec<(f64, f64)>>,
    /// Passes over each worker's shard, when the run's budget was given in epochs.
    pub(super) epochs: Option<f64>,
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
    pub(super) fn load(path: &Path, label: String) -> Result<Run> {
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
            run.read_summary(s);
        }
        run.complete_from_records(&last_bytes);
        Ok(run)
    }

    /// Reads the status, steps, time and traffic of a finished run from its `summary.json`.
    fn read_summary(&mut self, s: &serde_json::Value) {
        let str_of = |key: &str| s.get(key).and_then(|v| v.as_str()).map(str::to_string);
        self.status = match str_of("status").as_deref() {
            Some("ok") => "ok".into(),
            Some("failed") => match str_of("error") {
                Some(e) => format!("failed: {e}"),
                None => "failed".into(),
            },
            Some(other) => other.into(),
            None => "?".into(),
        };
        self.steps = s.get("steps").and_then(|v| v.as_u64());
        self.seconds = s.get("seconds").and_then(|v| v.as_f64());
        let sent: Option<Vec<f64>> = s.get("per_worker").and_then(|w| w.as_array()).map(|w| {
            w.iter()
                .filter_map(|w| w.get("bytes_sent").and_then(|b| b.as_f64()))
                .collect()
        });
        if let Some(sent) = sent.filter(|s| !s.is_empty()) {
            self.bytes_per_worker = Some(sent.iter().sum::<f64>() / sent.len() as f64);
        }
    }

    /// What `summary.json` did not give (a run that did not finish), from the records;
    /// `last_bytes`: each worker's last bytes_sent.
    fn complete_from_records(&mut self, last_bytes: &BTreeMap<usize, f64>) {
        // Runs that did not finish: what the records say.
        if self.steps.is_none() {
            self.steps = self.worker_steps.keys().next_back().copied();
        }
        if self.seconds.is_none() {
            self.seconds = self
                .worker_steps
                .values()
                .map(|s| s.seconds)
                .chain(
                    self.evals
                        .iter()
                        .flat_map(|(_, e)| e.values().map(|e| e.seconds)),
                )
                .filter(|s| s.is_finite())
                .reduce(f64::max);
        }
        if self.bytes_per_worker.is_none() && !last_bytes.is_empty() {
            self.bytes_per_worker =
                Some(last_bytes.values().sum::<f64>() / last_bytes.len() as f64);
        }
        if self.workers.is_none() && !last_bytes.is_empty() {
            self.workers = Some(last_bytes.len());
        }
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
    pub(super) fn main_evals(&self) -> Option<&BTreeMap<u64, EvalStep>> {
        self.evals.first().map(|(_, e)| e)
    }

    /// Log points at which each worker was leader (a record's leader counted once per step).
    pub(super) fn leader_counts(&self) -> BTreeMap<usize, usize> {
        let mut counts = BTreeMap::new();
        for s in self.worker_steps.values() {
            for &l in &s.leaders {
                *counts.entry(l).or_default() += 1;
            }
        }
        counts
    }

    pub(super) fn has_accuracy(&self) -> bool {
        self.main_evals()
            .is_some_and(|e| e.values().any(|s| s.accuracy().is_some()))
    }

    pub(super) fn best_accuracy(&self) -> Option<f64> {
        self.main_evals()?
            .values()
            .filter_map(EvalStep::accuracy)
            .filter(|a| a.is_finite())
            .reduce(f64::max)
    }

    pub(super) fn best_loss(&self) -> Option<f64> {
        self.main_evals()?
            .values()
            .map(EvalStep::loss)
            .filter(|l| l.is_finite())
            .reduce(f64::min)
    }

    /// The time of the first evaluation that reaches the target.
    pub(super) fn time_to(&self, target: Target) -> Option<f64> {
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
    pub(super) fn eval_series(&self) -> impl Iterator<Item = (String, &BTreeMap<u64, EvalStep>)> {
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
pub(super) enum Target {
    Accuracy(f64),
    Loss(f64),
}
