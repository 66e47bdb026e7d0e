//! Helpers shared by the integration tests.
#![allow(dead_code)]

use peloton_core::algorithms::AlgorithmConfig;
use peloton_core::optim::OptimizerConfig;
use peloton_core::runner::{run_threads, Event, RunConfig, RunReport};
use peloton_problems::ProblemConfig;

/// A run config with `workers` workers and `steps` steps, metrics at the end only.
pub fn config(
    workers: usize,
    steps: u64,
    algorithm: AlgorithmConfig,
    optimizer: OptimizerConfig,
) -> RunConfig {
    RunConfig {
        workers,
        seed: 42,
        steps: Some(steps),
        log_every: steps,
        consensus: false,
        optimizer,
        algorithm,
        ..Default::default()
    }
}

pub fn sgd(lr: f32) -> OptimizerConfig {
    OptimizerConfig {
        lr,
        ..Default::default()
    }
}

pub fn run(config: &RunConfig, problem: &ProblemConfig) -> RunReport {
    run_threads(config, problem, &mut |_| {}).unwrap_or_else(|e| panic!("run failed: {e}"))
}

pub fn run_with_events(config: &RunConfig, problem: &ProblemConfig) -> (RunReport, Vec<Event>) {
    let mut events = Vec::new();
    let report = run_threads(config, problem, &mut |e| events.push(e.clone())).unwrap();
    (report, events)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `rounds` communication-only steps of an algorithm on one worker (zero gradient, no
/// optimizer step, the given loss as this step's loss and metric), then drains it.
pub fn gossip_steps(
    comm: &mut dyn peloton_core::transport::Communicator,
    algorithm: &mut dyn peloton_core::algorithms::Algorithm,
    params: &mut Vec<f32>,
    rounds: u64,
    loss: f64,
) -> peloton_core::Result<()> {
    let mut grad = vec![0.0; params.len()];
    for step in 0..rounds {
        let mut ctx = peloton_core::algorithms::StepContext {
            comm: &mut *comm,
            params,
            grad: &mut grad,
            step,
            loss,
            metric: loss,
            lr: 0.1,
        };
        algorithm.before_compute(&mut ctx)?;
        algorithm.before_step(&mut ctx)?;
        algorithm.after_step(&mut ctx)?;
    }
    algorithm.drain(comm, params)
}
