//! `peloton train`: resolve the experiment, run it on the threads transport or in the
//! simulator with a progress bar, and write the run folder (plus `sim.json` and `trace.json`
//! for simulated runs).

use crate::outln;
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use peloton_burn::memory::MemoryEstimate;
use peloton_core::checkpoint::CheckpointConfig;
use peloton_core::runner::{run_threads_with_faults, EvalRecord, Event, RunReport, WorkerRecord};
use peloton_sim::SimReport;
use serde_json::json;

use crate::config::{ExperimentConfig, Prepared, TransportConfig};
use crate::run_folder::{
    checkpoints_dir, default_path, fingerprint, read_manifest, write_atomic, RunFolder,
};
use crate::train_mpi::{train_mpi, MpiResume};

/// What `train` prints and writes.
pub struct TrainOptions {
    pub out: Option<PathBuf>,
    pub quiet: bool,
    /// Simulator: real steps to time for the compute model.
    pub calibrate: Option<usize>,
}

/// Times `steps` real local steps (after one warm-up) of worker 0's learner, as it runs when
/// all the run's workers share this host, and returns the median seconds per step.
fn calibrate(
    config: &ExperimentConfig,
    factory: &dyn peloton_core::learner::LearnerFactory,
    steps: usize,
) -> Result<f64> {
    let mut learner = factory.build(peloton_core::learner::LearnerContext {
        rank: 0,
        workers: config.workers,
        seed: config.seed,
    })?;
    let len = learner.layout().len();
    let (mut params, mut grad) = (vec![0.0f32; len], vec![0.0f32; len]);
    learner.init_params(&mut params);
    learner.loss_and_grad(&params, &mut grad)?;
    let mut times: Vec<f64> = (0..steps)
        .map(|_| {
            let start = std::time::Instant::now();
            learner
                .loss_and_grad(&params, &mut grad)
                .map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<peloton_core::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
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

/// Runs the experiment; returns the run folder.
pub fn train(config: &ExperimentConfig, options: &TrainOptions) -> Result<PathBuf> {
    if config.transport == TransportConfig::Mpi {
        return train_mpi(config, options, None);
    }
    config.validate()?;
    let path = options
        .out
        .clone()
        .unwrap_or_else(|| default_path(config.algorithm.name(), &config.task_name()));
    let Prepared { factory, memory } = config.factory(config.workers_in_process())?;
    print_memory(options, memory.as_ref());
    let mut calibrated;
    let config = match (options.calibrate, &config.transport) {
        (None, _) => config,
        (Some(steps), TransportConfig::Sim { .. }) => {
            anyhow::ensure!(steps >= 1, "--calibrate needs at least 1 step");
            let seconds = calibrate(config, factory.as_ref(), steps)?;
            calibrated = config.clone();
            if let TransportConfig::Sim { cluster } = &mut calibrated.transport {
                cluster.compute.seconds = seconds;
                cluster.compute.flops_per_step = None;
                cluster.compute.tflops = None;
            }
            if !options.quiet {
                outln!("calibrated: {seconds:.6} s per local step (median of {steps} real steps of worker 0)");
            }
            &calibrated
        }
        (Some(_), TransportConfig::Threads { .. } | TransportConfig::Mpi) => {
            anyhow::bail!("--calibrate only applies to the simulator (--transport sim)")
        }
    };
    let text = config.to_toml()?;
    let folder = RunFolder::create(&path, &text)?;
    let folder = Folder {
        path: &path,
        folder,
        fingerprint: fingerprint(&text),
    };
    run_in_folder(config, factory.as_ref(), options, folder, None)
}

/// Continues the interrupted run in `run_dir` from its last committed checkpoint (or from
/// the start when it was killed before the first one), with the folder's own `config.toml`.
pub fn resume(run_dir: &std::path::Path, options: &TrainOptions) -> Result<PathBuf> {
    let config_path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "cannot read {}: --resume needs a run folder",
            config_path.display()
        )
    })?;
    let config = crate::config::load(Some(&config_path), &[])?;
    config.validate()?;
    if let Ok(summary) = std::fs::read_to_string(run_dir.join("summary.json")) {
        let finished = serde_json::from_str::<serde_json::Value>(&summary)
            .ok()
            .is_some_and(|v| v["status"] == "ok");
        anyhow::ensure!(
            !finished,
            "{} finished already (summary.json says ok): nothing to resume",
            run_dir.display()
        );
    }
    anyhow::ensure!(
        !config.checkpoint.is_off(),
        "{} was run without checkpoints ([checkpoint] every = N), so it cannot be resumed",
        run_dir.display()
    );
    let fp = fingerprint(&text);
    let manifest = read_manifest(run_dir)?;
    if let Some(m) = &manifest {
        anyhow::ensure!(
            m.config_fingerprint == format!("{fp:016x}"),
            "{} changed since the checkpoint of step {} was written (fingerprint {} then, {fp:016x} now); restore it or start a new run",
            config_path.display(),
            m.step,
            m.config_fingerprint
        );
    }
    if let Some(m) = &manifest {
        // The kept metrics and every worker's file are read and checked before the folder is
        // touched: a refused resume leaves every file as it was.
        check_metrics_prefix(&run_dir.join("metrics.jsonl"), m.metrics_bytes)?;
        peloton_core::checkpoint::verify(&checkpoints_dir(run_dir), m.step, config.workers, fp)?;
    }
    if config.transport == TransportConfig::Mpi {
        // Every rank of `mpirun … peloton train --resume RUN_DIR` got here; rank 0 alone
        // reopens the folder.
        return train_mpi(
            &config,
            options,
            Some(MpiResume {
                dir: run_dir.to_path_buf(),
                step: manifest.as_ref().map(|m| m.step),
                metrics_bytes: manifest.as_ref().map_or(0, |m| m.metrics_bytes),
                fingerprint: fp,
            }),
        );
    }
    // The data and the memory check too, before the folder is touched.
    let Prepared { factory, memory } = config.factory(config.workers_in_process())?;
    let folder = RunFolder::reopen(run_dir, manifest.as_ref().map_or(0, |m| m.metrics_bytes))?;
    if !options.quiet {
        match &manifest {
            Some(m) => outln!(
                "resuming {} from the checkpoint of step {}",
                run_dir.display(),
                m.step
            ),
            None => outln!(
                "{}: no checkpoint was committed yet; starting over",
                run_dir.display()
            ),
        }
    }
    print_memory(options, memory.as_ref());
    let folder = Folder {
        path: run_dir,
        folder,
        fingerprint: fp,
    };
    run_in_folder(
        &config,
        factory.as_ref(),
        options,
        folder,
        Some(manifest.map(|m| m.step)),
    )
}

/// The memory estimate of a network run, before it starts.
fn print_memory(options: &TrainOptions, memory: Option<&MemoryEstimate>) {
    if let (false, Some(m)) = (options.quiet, memory) {
        outln!("{m}");
    }
}

/// An open run folder, where it is, and the fingerprint of its `config.toml`.
struct Folder<'a> {
    path: &'a std::path::Path,
    folder: RunFolder,
    fingerprint: u64,
}

/// Runs `config` into an open run folder. `resume` is `Some(step)` for a resumed run: the
/// checkpoint to start from (`None`: from the start, the folder's metrics cut to nothing).
fn run_in_folder(
    config: &ExperimentConfig,
    factory: &dyn peloton_core::learner::LearnerFactory,
    options: &TrainOptions,
    folder: Folder<'_>,
    resume: Option<Option<u64>>,
) -> Result<PathBuf> {
    let Folder {
        path,
        folder,
        fingerprint: config_fingerprint,
    } = folder;
    let path = path.to_path_buf();
    let mut run = config.run_config();
    if !config.checkpoint.is_off() {
        run.checkpoint = Some(CheckpointConfig {
            every: config.checkpoint.every,
            dir: checkpoints_dir(&path),
            fingerprint: config_fingerprint,
            resume: resume.flatten(),
        });
    }
    let bar = progress_bar(options.quiet, run.steps);
    let mut recorder = Recorder::new(folder).with_checkpoints(config_fingerprint);
    if resume.is_some() {
        recorder.replay(&path.join("metrics.jsonl"))?;
    }
    let header = Header::new(config, &path);
    let mut on_event = |event: &Event| {
        recorder.record(event);
        display(&bar, &header, event);
    };
    let mut sim = None;
    let result = match &config.transport {
        TransportConfig::Threads { faults } => {
            run_threads_with_faults(&run, faults, factory, &mut on_event)
        }
        TransportConfig::Mpi => unreachable!("MPI runs return above"),
        TransportConfig::Sim { cluster } => {
            peloton_sim::run_sim(&run, cluster, factory, &mut on_event).map(
                |(report, sim_report, trace)| {
                    sim = Some((sim_report, trace));
                    report
                },
            )
        }
    };
    bar.finish_and_clear();
    if let Some((report, trace)) = &sim {
        write_atomic(
            &path.join("sim.json"),
            serde_json::to_string_pretty(report)?.as_bytes(),
        )?;
        if let Some(trace) = trace {
            write_atomic(&path.join("trace.json"), trace.as_bytes())?;
        }
    }
    let last_records = recorder.finish(config, result.as_ref().map_err(|e| e.to_string()))?;
    let report = result?;
    if !options.quiet {
        print_summary(sim.is_some(), &report, &last_records, &path);
        if let Some((sim, _)) = &sim {
            print_sim(sim);
        }
    }
    Ok(path)
}

/// The progress bar of a run (hidden when quiet, or when the output is not a terminal).
pub(crate) fn progress_bar(quiet: bool, steps: Option<u64>) -> ProgressBar {
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
    bar
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

/// Shows an event on the progress bar.
pub(crate) fn display(bar: &ProgressBar, header: &Header, event: &Event) {
    match event {
        Event::Started {
            workers,
            params,
            steps,
        } => {
            if let Some(s) = steps {
                bar.set_length(*s);
            }
            bar.println(format!(
                "{} on {} · {workers} workers ({}) · {params} parameters · run folder {}",
                header.algorithm,
                header.task,
                header.transport,
                header.path.display()
            ));
            for note in &header.notes {
                bar.println(format!("note: {note}"));
            }
        }
        Event::Worker(r) => {
            bar.set_position(r.step);
            if r.worker == 0 {
                bar.set_message(format!("loss {:.4}", r.loss));
            }
        }
        Event::Eval(e) => bar.println(describe_eval(e)),
        Event::Checkpoint { .. } => {}
        Event::Diverged {
            step,
            worker,
            loss,
            reset_to,
        } => bar.println(format!(
            "step {step:>6}  worker {worker} diverged (loss {loss}); reset to worker {reset_to}'s parameters"
        )),
    }
}

/// One line of `metrics.jsonl` as a resumed run counts it.
enum Replayed {
    Start,
    Diverged(usize),
    Worker(WorkerRecord),
    Other,
}

impl Replayed {
    /// Line `i` (0-based) of `metrics`, or an error naming it.
    fn parse(line: &str, i: usize, metrics: &std::path::Path) -> Result<Self> {
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

/// Checks, before a resume touches anything, that the first `bytes` of `metrics` — what the
/// checkpoint committed — are whole records that the resumed run can count.
fn check_metrics_prefix(metrics: &std::path::Path, bytes: u64) -> Result<()> {
    let data =
        std::fs::read(metrics).with_context(|| format!("cannot read {}", metrics.display()))?;
    let prefix = usize::try_from(bytes)
        .ok()
        .and_then(|b| data.get(..b))
        .with_context(|| {
            format!(
                "{} is shorter ({} bytes) than at the checkpoint ({bytes} bytes): it was damaged",
                metrics.display(),
                data.len()
            )
        })?;
    anyhow::ensure!(
        prefix.is_empty() || prefix.ends_with(b"\n"),
        "{}: the checkpoint's {bytes} bytes end inside a record: the file was damaged",
        metrics.display()
    );
    let text = std::str::from_utf8(prefix)
        .with_context(|| format!("{} is not UTF-8 text: it was damaged", metrics.display()))?;
    for (i, line) in text.lines().enumerate() {
        Replayed::parse(line, i, metrics)?;
    }
    Ok(())
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
            "params_checksum": checksum(&w.params),
            "center_checksum": w.center.as_deref().map(checksum),
        })).collect::<Vec<_>>(),
    })
}

fn print_sim(sim: &SimReport) {
    let n = sim.workers.len().max(1) as f64;
    let mean = |f: fn(&peloton_sim::engine::WorkerTotals) -> f64| {
        sim.workers.iter().map(f).sum::<f64>() / n
    };
    outln!(
        "simulated {:.2} s in {:.2} s of host time ({:.0} events/s) · per worker on average: compute {:.2} s, communicate {:.2} s, blocked {:.2} s",
        sim.simulated_seconds,
        sim.wall_seconds,
        sim.events_per_second,
        mean(|w| w.compute_seconds),
        mean(|w| w.communicate_seconds),
        mean(|w| w.blocked_seconds),
    );
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
