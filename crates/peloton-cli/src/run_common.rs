//! What every way of running an experiment shares: `train` (threads, the simulator) and
//! `train_mpi` (one worker per MPI rank) both take from here the options, the progress bar and
//! its lines, the recorder that writes the run folder and its `summary.json`, and the summary
//! printed at the end.

use crate::outln;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use peloton_core::runner::{EvalRecord, Event, RunReport, WorkerRecord};
use peloton_core::transport::compressed::CompressionStats;
use serde_json::json;

use crate::config::ExperimentConfig;
use crate::run_folder::RunFolder;

/// What `train` prints and writes.
pub struct TrainOptions {
    pub out: Option<PathBuf>,
    pub quiet: bool,
    /// Simulator: real steps to time for the compute model.
    pub calibrate: Option<usize>,
}

pub(crate) fn describe_eval(e: &EvalRecord) -> String {
    let mut s = format!("step {:>6}  eval[{}", e.step, e.model);
    if let Some(w) = e.worker {
        s += &format!(" {w}");
    }
    s += &format!("]  loss {:.5}", e.eval.loss);
    if let Some(a) = e.eval.accuracy {
        s += &format!("  accuracy {:.2}%", 100.0 * a);
    }
    if let Some(g) = e.eval.grad_norm {
        s += &format!("  |grad| {g:.2e}");
    }
    s
}

/// A run's progress as its user sees it: a bar on a terminal; where standard error is not one
/// (a file, a pipe, a notebook) the bar's lines as plain lines, plus a line at every tenth of
/// the steps (or at every record of worker 0 when the run has a time budget only); nothing
/// when quiet.
pub(crate) struct Progress {
    bar: ProgressBar,
    quiet: bool,
    /// Where the bar cannot draw: the last tenth of the run reported.
    tenths: AtomicU64,
}

impl Progress {
    pub(crate) fn new(quiet: bool, steps: Option<u64>) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(steps.unwrap_or(0))
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
            )
            .expect("valid template"),
        );
        Self {
            bar,
            quiet,
            tenths: AtomicU64::new(0),
        }
    }

    /// One line above the bar, or on its own where the bar cannot draw.
    fn line(&self, text: String) {
        if self.quiet {
            return;
        }
        if self.bar.is_hidden() {
            outln!("{text}");
        } else {
            self.bar.println(text);
        }
    }

    /// Where the bar cannot draw: a line for worker 0's record at `step` when it starts a new
    /// tenth of the run.
    fn report_step(&self, step: u64, loss: f64) {
        if self.quiet || !self.bar.is_hidden() {
            return;
        }
        let total = self.bar.length().filter(|&l| l > 0);
        if let Some(total) = total {
            let tenth = (step * 10 / total).min(10);
            if self.tenths.fetch_max(tenth, Ordering::Relaxed) >= tenth {
                return;
            }
        }
        let of = total.map_or(String::new(), |t| format!("/{t}"));
        let elapsed = self.bar.elapsed().as_secs_f64();
        self.line(format!(
            "step {step:>6}{of}  loss {loss:.4}  ({elapsed:.0} s)"
        ));
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Shows an event.
    pub(crate) fn display(&self, header: &Header, event: &Event) {
        match event {
            Event::Started {
                workers,
                params,
                steps,
            } => {
                if let Some(s) = steps {
                    self.bar.set_length(*s);
                }
                self.line(format!(
                    "{} on {} · {workers} workers ({}) · {params} parameters · run folder {}",
                    header.algorithm,
                    header.task,
                    header.transport,
                    header.path.display()
                ));
                for note in &header.notes {
                    self.line(format!("note: {note}"));
                }
            }
            Event::Worker(r) => {
                self.bar.set_position(r.step);
                if r.worker == 0 {
                    self.bar.set_message(format!("loss {:.4}", r.loss));
                    self.report_step(r.step, r.loss);
                }
            }
            Event::Eval(e) => self.line(describe_eval(e)),
            Event::Checkpoint { .. } => {}
            Event::Diverged {
                step,
                worker,
                loss,
                reset_to,
            } => self.line(format!(
                "step {step:>6}  worker {worker} diverged (loss {loss}); reset to worker {reset_to}'s parameters"
            )),
        }
    }
}

/// What the first line of a run says.
pub(crate) struct Header {
    algorithm: &'static str,
    task: String,
    transport: &'static str,
    path: PathBuf,
    /// Lines printed under the header: settings that work against the machine.
    notes: Vec<String>,
}

impl Header {
    pub(crate) fn new(config: &ExperimentConfig, path: &std::path::Path) -> Self {
        Self {
            algorithm: config.algorithm.name(),
            task: config.task_name(),
            transport: config.transport.name(),
            path: path.to_path_buf(),
            notes: match config.task() {
                Ok(crate::config::Task::Network(model, _)) => peloton_torch::run_notes(&model),
                _ => Vec::new(),
            },
        }
    }
}

/// One line of `metrics.jsonl` as a resumed run counts it.
pub(crate) enum Replayed {
    Start,
    Diverged(usize),
    Worker(WorkerRecord),
    Other,
}

impl Replayed {
    /// Line `i` (0-based) of `metrics`, or an error naming it.
    pub(crate) fn parse(line: &str, i: usize, metrics: &std::path::Path) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {} is not JSON", metrics.display(), i + 1))?;
        Ok(match value["type"].as_str() {
            Some("start") => Replayed::Start,
            Some("diverged") => Replayed::Diverged(value["worker"].as_u64().unwrap_or(0) as usize),
            Some("worker") => {
                Replayed::Worker(serde_json::from_value(value).with_context(|| {
                    format!(
                        "{} line {} is not a worker record",
                        metrics.display(),
                        i + 1
                    )
                })?)
            }
            _ => Replayed::Other,
        })
    }
}

/// Writes a run's events into its folder and keeps what the summary needs.
pub(crate) struct Recorder {
    folder: RunFolder,
    leader_counts: BTreeMap<usize, u64>,
    last_records: BTreeMap<usize, WorkerRecord>,
    write_error: Option<anyhow::Error>,
    /// The config's fingerprint, when the run takes checkpoints (they are committed here).
    checkpoints: Option<u64>,
    /// A resumed run's metrics already start with the original run's `start` line.
    skip_start: bool,
    /// Divergence resets per worker.
    resets: BTreeMap<usize, u64>,
}

impl Recorder {
    pub(crate) fn new(folder: RunFolder) -> Self {
        Self {
            folder,
            leader_counts: BTreeMap::new(),
            last_records: BTreeMap::new(),
            write_error: None,
            checkpoints: None,
            skip_start: false,
            resets: BTreeMap::new(),
        }
    }

    pub(crate) fn with_checkpoints(mut self, config_fingerprint: u64) -> Self {
        self.checkpoints = Some(config_fingerprint);
        self
    }

    /// A resumed run: counts the records kept from before the checkpoint, as if they had
    /// just been recorded, so the summary covers the whole run.
    pub(crate) fn replay(&mut self, metrics: &std::path::Path) -> Result<()> {
        let text = std::fs::read_to_string(metrics)
            .with_context(|| format!("cannot read {}", metrics.display()))?;
        for (i, line) in text.lines().enumerate() {
            match Replayed::parse(line, i, metrics)? {
                Replayed::Start => self.skip_start = true,
                Replayed::Diverged(worker) => *self.resets.entry(worker).or_default() += 1,
                Replayed::Worker(r) => self.count(&r),
                Replayed::Other => {}
            }
        }
        Ok(())
    }

    fn count(&mut self, r: &WorkerRecord) {
        if r.worker == 0 {
            if let Some(l) = r.leader {
                *self.leader_counts.entry(l).or_default() += 1;
            }
        }
        self.last_records.insert(r.worker, r.clone());
    }

    pub(crate) fn record(&mut self, event: &Event) {
        if self.write_error.is_some() {
            // Nothing more is written once the folder failed; the error ends the run's report.
        } else if let (Event::Checkpoint { step, .. }, Some(fp)) = (event, self.checkpoints) {
            if let Err(e) = self.folder.commit_checkpoint(*step, fp) {
                self.write_error = Some(e);
            }
        } else if matches!(event, Event::Started { .. }) && self.skip_start {
        } else if let Err(e) = self.folder.record(event) {
            self.write_error = Some(e);
        }
        if let Event::Worker(r) = event {
            self.count(r);
        }
        if let Event::Diverged { worker, .. } = event {
            *self.resets.entry(*worker).or_default() += 1;
        }
    }

    /// Writes `summary.json` (the run's report, or its error) and returns the last worker
    /// records.
    pub(crate) fn finish(
        self,
        config: &ExperimentConfig,
        result: std::result::Result<&RunReport, String>,
    ) -> Result<BTreeMap<usize, WorkerRecord>> {
        if let Some(e) = self.write_error {
            return Err(e.context("the run folder could not be written"));
        }
        let summary = match result {
            Ok(report) => {
                let mut summary =
                    summary_json(config, report, &self.leader_counts, &self.last_records);
                summary["divergence_resets"] = json!(self.resets);
                summary
            }
            Err(e) => json!({"status": "failed", "error": e}),
        };
        self.folder.finish(&summary)?;
        Ok(self.last_records)
    }
}

/// FNV-1a over the bit patterns of `values`: two runs ended with the same parameters, bit for
/// bit, exactly when their checksums match (up to a 2⁻⁶⁴ accident).
pub(crate) fn checksum(values: &[f32]) -> String {
    let h = peloton_core::layout::fnv1a(values.iter().flat_map(|v| v.to_bits().to_le_bytes()));
    format!("{h:016x}")
}

fn summary_json(
    config: &ExperimentConfig,
    report: &RunReport,
    leader_counts: &BTreeMap<usize, u64>,
    last: &BTreeMap<usize, peloton_core::runner::WorkerRecord>,
) -> serde_json::Value {
    json!({
        "status": "ok",
        "peak_rss_bytes": peloton_burn::memory::peak_rss(),
        "algorithm": config.algorithm.name(),
        "task": config.task_name(),
        "workers": config.workers,
        "steps": report.steps,
        "seconds": report.seconds,
        "eval_model": config.eval.model,
        "final_evals": report.final_evals,
        "leader_counts": leader_counts,
        "leader_changes": report.workers.first().and_then(|w| w.leader_changes),
        "compression": compression_total(report).map(|c| json!({
            "kind": config.compression.kind().as_str(),
            "operations": c.operations,
            "bytes_sent": c.bytes_sent,
            "fp32_bytes_sent": c.fp32_bytes_sent,
            "ratio": c.ratio(),
        })),
        "stopped": report.workers.iter().filter_map(|w| w.stopped_at.map(|at| json!({
            "worker": w.rank,
            "at_seconds": at,
            "steps": w.steps,
        }))).collect::<Vec<_>>(),
        "per_worker": report.workers.iter().map(|w| json!({
            "worker": w.rank,
            "steps": w.steps,
            "stopped_at": w.stopped_at,
            "final_loss": last.get(&w.rank).map(|r| r.loss),
            "bytes_sent": w.stats.bytes_sent,
            "bytes_received": w.stats.bytes_received,
            "consensus": last.get(&w.rank).and_then(|r| r.consensus),
            "links": w.links,
            "compressed_bytes_sent": w.compression.map(|c| c.bytes_sent),
            "compressed_fp32_bytes_sent": w.compression.map(|c| c.fp32_bytes_sent),
            "params_checksum": checksum(&w.params),
            "center_checksum": w.center.as_deref().map(checksum),
        })).collect::<Vec<_>>(),
    })
}

/// What the compression layer did, summed over the workers (`None`: `[compression]` is off).
fn compression_total(report: &RunReport) -> Option<CompressionStats> {
    report
        .workers
        .iter()
        .filter_map(|w| w.compression)
        .reduce(|a, b| CompressionStats {
            operations: a.operations + b.operations,
            bytes_sent: a.bytes_sent + b.bytes_sent,
            fp32_bytes_sent: a.fp32_bytes_sent + b.fp32_bytes_sent,
        })
}

pub(crate) fn print_summary(
    virtual_time: bool,
    report: &RunReport,
    last: &BTreeMap<usize, peloton_core::runner::WorkerRecord>,
    path: &std::path::Path,
) {
    let clock = if virtual_time { " of virtual time" } else { "" };
    outln!(
        "finished {} steps in {:.2} s{clock}",
        report.steps,
        report.seconds
    );
    for e in &report.final_evals {
        outln!("final {}", describe_eval(e));
    }
    let sent: u64 = report.workers.iter().map(|w| w.stats.bytes_sent).sum();
    let consensus = last
        .values()
        .filter_map(|r| r.consensus)
        .reduce(f64::max)
        .map(|c| format!(" · largest distance to the average model {c:.3e}"))
        .unwrap_or_default();
    outln!(
        "traffic {:.2} MB sent per worker on average{consensus}",
        sent as f64 / report.workers.len().max(1) as f64 / 1e6
    );
    if let Some(c) = compression_total(report) {
        if c.operations == 0 {
            outln!("compression: no message was compressed (none had a role compression.apply_to names and the model's length)");
        } else {
            outln!(
                "compression: {} operations sent {:.2} MB per worker instead of {:.2} MB as fp32 (÷{:.1})",
                c.operations / report.workers.len().max(1) as u64,
                c.bytes_sent as f64 / report.workers.len().max(1) as f64 / 1e6,
                c.fp32_bytes_sent as f64 / report.workers.len().max(1) as f64 / 1e6,
                c.ratio()
            );
        }
    }
    let steps: Vec<String> = report.workers.iter().map(|w| w.steps.to_string()).collect();
    if report.workers.iter().any(|w| w.steps != report.steps) {
        outln!("steps per worker: {}", steps.join(" "));
    }
    for w in report.workers.iter().filter(|w| w.stopped_at.is_some()) {
        outln!(
            "worker {} stopped at {:.3} s{clock} after {} steps (injected fault); the others went on",
            w.rank,
            w.stopped_at.unwrap_or(0.0),
            w.steps
        );
    }
    outln!("run folder: {}", path.display());
}
