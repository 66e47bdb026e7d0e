//! `peloton train`: resolve the experiment, run it on the threads transport or in the
//! simulator with a progress bar, and write the run folder (plus `sim.json` and `trace.json`
//! for simulated runs).

use crate::outln;
use std::path::PathBuf;

use anyhow::{Context, Result};
use peloton_burn::memory::MemoryEstimate;
use peloton_core::checkpoint::CheckpointConfig;
use peloton_core::runner::{run_threads_with_faults, Event};
use peloton_sim::SimReport;

use crate::config::{ExperimentConfig, Prepared, TransportConfig};
pub use crate::run_common::TrainOptions;
use crate::run_common::{print_summary, Header, Progress, Recorder, Replayed};
use crate::run_folder::{
    checkpoints_dir, default_path, fingerprint, read_manifest, write_atomic, RunFolder,
};
// The one way into MPI: `--transport mpi` runs and resumes go to `train_mpi`.
use crate::train_mpi::{train_mpi, MpiResume};

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

/// Runs the experiment; returns the run folder.
pub fn train(config: &ExperimentConfig, options: &TrainOptions) -> Result<PathBuf> {
    if config.transport == TransportConfig::Mpi {
        return train_mpi(config, options, None, None);
    }
    config.validate()?;
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
    run_in_new_folder(config, factory.as_ref(), options)
}

/// Runs an experiment whose learners come from `factory` rather than from the config: a
/// training loop outside peloton (`[external]`, the Python package's `peloton.run`, with
/// [`peloton_core::external::ExternalLoops`] as the factory) on threads, the simulator or MPI
/// (this process's rank), into a run folder like any `peloton train` run's. Returns the run
/// folder.
pub fn train_external(
    config: &ExperimentConfig,
    factory: &dyn peloton_core::learner::LearnerFactory,
    options: &TrainOptions,
) -> Result<PathBuf> {
    config.validate()?;
    anyhow::ensure!(
        matches!(config.task()?, crate::config::Task::External(_)),
        "a run driven by an outside training loop needs an [external] task, not [problem] or [model]"
    );
    anyhow::ensure!(
        options.calibrate.is_none(),
        "--calibrate times peloton's own learners; an outside loop gives transport.cluster.compute instead"
    );
    if config.transport == TransportConfig::Mpi {
        return train_mpi(config, options, None, Some(factory));
    }
    run_in_new_folder(config, factory, options)
}

/// Creates the run folder (`--out`, or one named after the algorithm and task) with the
/// resolved config, and runs `config` into it.
fn run_in_new_folder(
    config: &ExperimentConfig,
    factory: &dyn peloton_core::learner::LearnerFactory,
    options: &TrainOptions,
) -> Result<PathBuf> {
    let path = options
        .out
        .clone()
        .unwrap_or_else(|| default_path(config.algorithm.name(), &config.task_name()));
    let text = config.to_toml()?;
    let folder = RunFolder::create(&path, &text)?;
    let folder = Folder {
        path: &path,
        folder,
        fingerprint: fingerprint(&text),
    };
    run_in_folder(config, factory, options, folder, None)
}

/// Continues the interrupted run in `run_dir` from its last committed checkpoint (or from
/// the start when it was killed before the first one), with the folder's own `config.toml`.
pub fn resume(run_dir: &std::path::Path, options: &TrainOptions) -> Result<PathBuf> {
    resume_with(run_dir, options, None)
}

/// [`resume`] for a run driven by training loops outside peloton (`[external]`, the Python
/// package's `peloton.run(..., resume=...)`): `factory` is their meeting point, and each loop
/// gets its own state back ([`peloton_core::external::Request::LoadState`]).
pub fn resume_external(
    run_dir: &std::path::Path,
    factory: &dyn peloton_core::learner::LearnerFactory,
    options: &TrainOptions,
) -> Result<PathBuf> {
    resume_with(run_dir, options, Some(factory))
}

fn resume_with(
    run_dir: &std::path::Path,
    options: &TrainOptions,
    external: Option<&dyn peloton_core::learner::LearnerFactory>,
) -> Result<PathBuf> {
    let config_path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "cannot read {}: --resume needs a run folder",
            config_path.display()
        )
    })?;
    let config = crate::config::load(Some(&config_path), &[])?;
    config.validate()?;
    let outside = matches!(config.task()?, crate::config::Task::External(_));
    anyhow::ensure!(
        outside == external.is_some(),
        "{} was run {}: resume it {}",
        run_dir.display(),
        if outside {
            "by a training loop outside peloton ([external])"
        } else {
            "by peloton's own learners"
        },
        if outside {
            "from that loop (peloton.run(train, resume=...) in Python)"
        } else {
            "with peloton train --resume"
        }
    );
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
            external,
        );
    }
    // The data and the memory check too, before the folder is touched.
    let own: Prepared;
    let (factory, memory) = match external {
        Some(outside) => (outside, None),
        None => {
            own = config.factory(config.workers_in_process())?;
            (own.factory.as_ref(), own.memory.as_ref())
        }
    };
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
    print_memory(options, memory);
    let folder = Folder {
        path: run_dir,
        folder,
        fingerprint: fp,
    };
    run_in_folder(
        &config,
        factory,
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
    let progress = Progress::new(options.quiet, run.steps);
    let mut recorder = Recorder::new(folder).with_checkpoints(config_fingerprint);
    if resume.is_some() {
        recorder.replay(&path.join("metrics.jsonl"))?;
    }
    let header = Header::new(config, &path);
    let mut on_event = |event: &Event| {
        recorder.record(event);
        progress.display(&header, event);
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
    progress.finish();
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
