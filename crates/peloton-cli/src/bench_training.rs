//! `peloton bench --training`: aggregate training throughput of 1, 2 and 4 in-process
//! workers under each way of sharing the cores, against one worker with all cores, with each
//! configuration's peak RSS, and evaluation time per 10,000 images.
//!
//! Each configuration is a real `peloton train` run (all-reduce SGD on generated images of the
//! model's input shape) in a child process of its own, so that its peak RSS is its own; the
//! throughput is taken from worker 0's per-step records after a warm-up, so start-up, data
//! generation and the final evaluation are not counted.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use peloton_burn::ModelName;

/// How a configuration shares the machine's cores between its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreSplit {
    /// The default: cores / workers threads each (at least 1); a worker with more than one
    /// splits its batch over them (one model replica per thread).
    Default,
    /// cores / workers threads each, used by burn's own multi-threaded kernels on the whole
    /// batch (`model.split_batch = false`).
    BurnThreads,
    /// Every worker gets all the cores for burn's kernels (oversubscribed when workers > 1).
    AllCoresEach,
}

impl CoreSplit {
    fn describe(&self, workers: usize, cores: usize) -> String {
        let share = (cores / workers).max(1);
        match self {
            CoreSplit::Default if share > 1 => format!("{share} lanes (batch split)"),
            CoreSplit::Default => "1 thread".to_string(),
            CoreSplit::BurnThreads => format!("{share} burn threads"),
            CoreSplit::AllCoresEach => format!("{cores} burn threads"),
        }
    }

    fn overrides(&self, workers: usize, cores: usize) -> Vec<String> {
        let share = (cores / workers).max(1);
        match self {
            CoreSplit::Default => vec![],
            CoreSplit::BurnThreads => vec![
                format!("model.threads={share}"),
                "model.split_batch=false".into(),
            ],
            CoreSplit::AllCoresEach => vec![
                format!("model.threads={cores}"),
                "model.split_batch=false".into(),
            ],
        }
    }
}

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct TrainingRow {
    pub model: ModelName,
    pub workers: usize,
    pub split: CoreSplit,
    pub description: String,
    pub samples_per_second: f64,
    pub peak_rss: Option<u64>,
}

/// The configurations measured for each model: the default split for 1, 2 and 4 workers,
/// and the alternatives wherever they differ from it.
fn configurations(cores: usize) -> Vec<(usize, CoreSplit)> {
    let mut out = Vec::new();
    for workers in [1usize, 2, 4] {
        out.push((workers, CoreSplit::Default));
        if cores / workers > 1 {
            out.push((workers, CoreSplit::BurnThreads));
        }
        if workers > 1 {
            out.push((workers, CoreSplit::AllCoresEach));
        }
    }
    out
}

/// Generated images of the model's input shape.
fn data_overrides(model: ModelName, batch: usize, workers: usize, steps: u64) -> Vec<String> {
    let [channels, size, _] = model.typical_input();
    // One epoch covers the run, so no configuration reshuffles at a different step.
    let train = workers * batch * (steps as usize + 1);
    vec![
        format!("data.batch_size={batch}"),
        format!("data.synthetic.channels={channels}"),
        format!("data.synthetic.size={size}"),
        format!("data.synthetic.train={train}"),
        "data.synthetic.test=64".into(),
    ]
}

/// Samples per second of worker 0 from its per-step records, after `warmup` steps.
fn throughput(run: &Path, batch: usize, workers: usize, warmup: u64) -> Result<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))
        .with_context(|| format!("{} has no metrics", run.display()))?;
    let mut points = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["type"] == "worker" && v["worker"] == 0 {
            let step = v["step"].as_u64().unwrap_or(0);
            let seconds = v["seconds"].as_f64().unwrap_or(0.0);
            points.push((step, seconds));
        }
    }
    let first = points.iter().find(|(s, _)| *s >= warmup);
    let last = points.last();
    match (first, last) {
        (Some(&(s0, t0)), Some(&(s1, t1))) if s1 > s0 && t1 > t0 => {
            Ok(((s1 - s0) as f64 * (batch * workers) as f64) / (t1 - t0))
        }
        _ => bail!("{}: too few step records to time", run.display()),
    }
}

/// Runs one configuration in a child `peloton train` and reads what it measured.
pub fn measure(
    model: ModelName,
    workers: usize,
    split: CoreSplit,
    batch: usize,
    steps: u64,
) -> Result<TrainingRow> {
    let cores = peloton_burn::config::machine_cores();
    let dir = std::env::temp_dir().join(format!(
        "peloton-bench-training-{}-{}-{workers}-{split:?}",
        std::process::id(),
        model.as_str()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut args: Vec<String> = vec![
        "train".into(),
        "--model".into(),
        model.as_str().into(),
        "--algorithm".into(),
        "all-reduce".into(),
        "--workers".into(),
        workers.to_string(),
        "--steps".into(),
        steps.to_string(),
        "--quiet".into(),
        "--out".into(),
        dir.display().to_string(),
    ];
    let sets = ["log_every=1".to_string(), "eval.every=0".to_string()]
        .into_iter()
        .chain(data_overrides(model, batch, workers, steps))
        .chain(split.overrides(workers, cores));
    for s in sets {
        args.push("--set".into());
        args.push(s);
    }
    let exe = std::env::current_exe().context("cannot find the peloton binary")?;
    let out = Command::new(exe)
        .args(&args)
        .output()
        .context("cannot start a child peloton")?;
    if !out.status.success() {
        bail!(
            "{} with {workers} workers ({split:?}) failed: {}",
            model.as_str(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let samples_per_second = throughput(&dir, batch, workers, 2)?;
    let summary = std::fs::read_to_string(dir.join("summary.json"))
        .with_context(|| format!("{} has no summary", dir.display()))?;
    let summary: serde_json::Value = serde_json::from_str(&summary)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(TrainingRow {
        model,
        workers,
        split,
        description: split.describe(workers, cores),
        samples_per_second,
        peak_rss: summary["peak_rss_bytes"].as_u64(),
    })
}

/// Every configuration of every model in `models`.
pub fn run(models: &[ModelName], batch: usize, steps: u64) -> Result<Vec<TrainingRow>> {
    anyhow::ensure!(
        steps >= 4,
        "--steps must be at least 4 (2 warm-up steps are not timed)"
    );
    let cores = peloton_burn::config::machine_cores();
    let mut rows = Vec::new();
    for &model in models {
        for (workers, split) in configurations(cores) {
            rows.push(measure(model, workers, split, batch, steps)?);
        }
    }
    Ok(rows)
}

/// The table: aggregate samples/s, its ratio to one worker with all cores for burn's
/// kernels (the "bare" way to give one worker the machine), and peak RSS. The default
/// split is marked; within each worker count it should be the fastest row.
pub fn format_table(rows: &[TrainingRow]) -> String {
    let cores = peloton_burn::config::machine_cores();
    let mut s = format!(
        "{:<9} {:>7}  {:<22} {:>10} {:>10} {:>10}\n",
        "model", "workers", "cores per worker", "samples/s", "× 1w·burn", "peak RSS"
    );
    for r in rows {
        // One worker with every core for burn's kernels: the default split for one worker
        // on a 1-core machine, the burn-threads row otherwise.
        let base = rows
            .iter()
            .find(|b| {
                b.model == r.model
                    && b.workers == 1
                    && (b.split == CoreSplit::BurnThreads
                        || (cores == 1 && b.split == CoreSplit::Default))
            })
            .map(|b| b.samples_per_second);
        let ratio = base.map_or("-".to_string(), |b| {
            format!("{:.2}", r.samples_per_second / b)
        });
        let rss = r
            .peak_rss
            .map_or("-".to_string(), peloton_burn::memory::human);
        let mark = if r.split == CoreSplit::Default {
            " (default)"
        } else {
            ""
        };
        s.push_str(&format!(
            "{:<9} {:>7}  {:<22} {:>10.1} {:>10} {:>10}{mark}\n",
            r.model.as_str(),
            r.workers,
            r.description,
            r.samples_per_second,
            ratio,
            rss
        ));
    }
    s
}
