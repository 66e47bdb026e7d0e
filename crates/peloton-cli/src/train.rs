//! `peloton train`: resolve the experiment, run it on the threads transport or in the
//! simulator with a progress bar, and write the run folder (plus `sim.json` and `trace.json`
//! for simulated runs).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use peloton_core::runner::{run_threads_with_faults, EvalRecord, Event, RunReport};
use peloton_sim::SimReport;
use serde_json::json;

use crate::config::{ExperimentConfig, TransportConfig};
use crate::run_folder::{default_path, write_atomic, RunFolder};

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

fn describe_eval(e: &EvalRecord) -> String {
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
    config.validate()?;
    let run = config.run_config();
    let path = options
        .out
        .clone()
        .unwrap_or_else(|| default_path(config.algorithm.name(), &config.task_name()));
    let factory = config.factory()?;
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
                println!("calibrated: {seconds:.6} s per local step (median of {steps} real steps of worker 0)");
            }
            &calibrated
        }
        (Some(_), TransportConfig::Threads { .. }) => {
            anyhow::bail!("--calibrate only applies to the simulator (--transport sim)")
        }
    };
    let mut folder = RunFolder::create(&path, &config.to_toml()?)?;

    let bar = if options.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(run.steps.unwrap_or(0))
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
        )
        .expect("valid template"),
    );
    let mut leader_counts: BTreeMap<usize, u64> = BTreeMap::new();
    let mut last_records = BTreeMap::new();
    let mut write_error = None;
    let transport = config.transport.name();
    let mut on_event = |event: &Event| {
        if write_error.is_none() {
            if let Err(e) = folder.record(event) {
                write_error = Some(e);
            }
        }
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
                    "{} on {} · {workers} workers ({transport}) · {params} parameters · run folder {}",
                    config.algorithm.name(),
                    config.task_name(),
                    path.display()
                ));
            }
            Event::Worker(r) => {
                bar.set_position(r.step);
                if r.worker == 0 {
                    if let Some(l) = r.leader {
                        *leader_counts.entry(l).or_default() += 1;
                    }
                    bar.set_message(format!("loss {:.4}", r.loss));
                }
                last_records.insert(r.worker, r.clone());
            }
            Event::Eval(e) => bar.println(describe_eval(e)),
        }
    };
    let mut sim = None;
    let result = match &config.transport {
        TransportConfig::Threads { faults } => {
            run_threads_with_faults(&run, faults, factory.as_ref(), &mut on_event)
        }
        TransportConfig::Sim { cluster } => {
            peloton_sim::run_sim(&run, cluster, factory.as_ref(), &mut on_event).map(
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
    if let Some(e) = write_error {
        return Err(e.context("the run folder could not be written"));
    }
    let summary = match &result {
        Ok(report) => summary_json(config, report, &leader_counts, &last_records),
        Err(e) => json!({"status": "failed", "error": e.to_string()}),
    };
    folder.finish(&summary)?;
    let report = result?;
    if !options.quiet {
        print_summary(sim.is_some(), &report, &last_records, &path);
        if let Some((sim, _)) = &sim {
            print_sim(sim);
        }
    }
    Ok(path)
}

fn summary_json(
    config: &ExperimentConfig,
    report: &RunReport,
    leader_counts: &BTreeMap<usize, u64>,
    last: &BTreeMap<usize, peloton_core::runner::WorkerRecord>,
) -> serde_json::Value {
    json!({
        "status": "ok",
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
        })).collect::<Vec<_>>(),
    })
}

fn print_sim(sim: &SimReport) {
    let n = sim.workers.len().max(1) as f64;
    let mean = |f: fn(&peloton_sim::engine::WorkerTotals) -> f64| {
        sim.workers.iter().map(f).sum::<f64>() / n
    };
    println!(
        "simulated {:.2} s in {:.2} s of host time ({:.0} events/s) · per worker on average: compute {:.2} s, communicate {:.2} s, blocked {:.2} s",
        sim.simulated_seconds,
        sim.wall_seconds,
        sim.events_per_second,
        mean(|w| w.compute_seconds),
        mean(|w| w.communicate_seconds),
        mean(|w| w.blocked_seconds),
    );
}

fn print_summary(
    virtual_time: bool,
    report: &RunReport,
    last: &BTreeMap<usize, peloton_core::runner::WorkerRecord>,
    path: &std::path::Path,
) {
    let clock = if virtual_time { " of virtual time" } else { "" };
    println!(
        "finished {} steps in {:.2} s{clock}",
        report.steps, report.seconds
    );
    for e in &report.final_evals {
        println!("final {}", describe_eval(e));
    }
    let sent: u64 = report.workers.iter().map(|w| w.stats.bytes_sent).sum();
    let consensus = last
        .values()
        .filter_map(|r| r.consensus)
        .reduce(f64::max)
        .map(|c| format!(" · largest distance to the average model {c:.3e}"))
        .unwrap_or_default();
    println!(
        "traffic {:.2} MB sent per worker on average{consensus}",
        sent as f64 / report.workers.len().max(1) as f64 / 1e6
    );
    let steps: Vec<String> = report.workers.iter().map(|w| w.steps.to_string()).collect();
    if report.workers.iter().any(|w| w.steps != report.steps) {
        println!("steps per worker: {}", steps.join(" "));
    }
    for w in report.workers.iter().filter(|w| w.stopped_at.is_some()) {
        println!(
            "worker {} stopped at {:.3} s{clock} after {} steps (injected fault); the others went on",
            w.rank,
            w.stopped_at.unwrap_or(0.0),
            w.steps
        );
    }
    println!("run folder: {}", path.display());
}
