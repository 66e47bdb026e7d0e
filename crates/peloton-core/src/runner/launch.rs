//! Whole runs on in-process transports: [`run_threads`] (one thread per worker),
//! [`run_threads_with_faults`], and [`run_with`] for any launcher, which delivers the
//! workers' events in a deterministic order and gathers their outcomes into a report.

use std::sync::mpsc;

use super::ordering::{Reorder, TimeOrder};
use super::worker::prepare;
use super::{asynchronous, synchronous};
use super::{
    final_evaluations, EvalRecord, Event, RunConfig, RunReport, WorkerOutcome, MAX_THREAD_WORKERS,
};
use crate::algorithms::Worker;
use crate::ensure_config;
use crate::learner::LearnerFactory;
use crate::transport::compressed::CompressionLayer;
use crate::transport::{threads, Communicator};
use crate::{Error, Result};

/// The error that explains a failed run: the first worker's own error, not the "aborted"
/// errors it caused on the others.
pub fn root_cause(errors: Vec<Error>) -> Error {
    let is_consequence = |e: &Error| matches!(e, Error::Aborted { .. } | Error::Left { .. });
    let first = errors.iter().position(|e| !is_consequence(e)).unwrap_or(0);
    errors.into_iter().nth(first).expect("at least one error")
}

/// Runs `config` on the threads transport: one thread per worker, events delivered to
/// `on_event` on the calling thread in a deterministic order.
pub fn run_threads(
    config: &RunConfig,
    factory: &dyn LearnerFactory,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunReport> {
    config.validate()?;
    ensure_config!(
        config.workers <= MAX_THREAD_WORKERS,
        "the threads transport runs at most {MAX_THREAD_WORKERS} workers, got {}",
        config.workers
    );
    run_threads_with_faults(config, &[], factory, on_event)
}

/// [`run_threads`] with injected faults: `slow` workers sleep to take `factor` times longer
/// per step, `stop` faults end a worker at a wall-clock time (see [`threads::world_with_faults`]).
pub fn run_threads_with_faults(
    config: &RunConfig,
    faults: &[crate::transport::Fault],
    factory: &dyn LearnerFactory,
    on_event: &mut dyn FnMut(&Event),
) -> Result<RunReport> {
    config.validate()?;
    for f in faults {
        f.validate(config.workers)
            .map_err(|e| Error::Config(format!("transport.faults: {e}")))?;
    }
    ensure_config!(
        config.checkpoint.is_none() || !config.algorithm.is_async(),
        "checkpoints of asynchronous algorithms ({}) need the simulator: on threads the workers' interleaving, and so any cut of it, cannot be reproduced",
        config.algorithm.name()
    );
    let watchdog = config
        .watchdog
        .map(|w| crate::limits::seconds("watchdog_seconds", w))
        .transpose()?;
    run_with(config, factory, on_event, &|work| {
        threads::run_workers_with_options(config.workers, faults, watchdog, |comm| work(comm))
    })
}

/// One worker's whole run on a communicator (what a transport's launcher calls per worker).
pub type WorkerFn<'a> = dyn Fn(&mut dyn Communicator) -> Result<WorkerOutcome> + Sync + 'a;

/// Runs `config` on any in-process transport: `launch` starts one worker per rank, calls
/// `work` on each with its communicator, and returns the results in rank order. Events reach
/// `on_event` on the calling thread in a deterministic order (by step; evaluations, then
/// worker records by rank). `config` must be validated by the caller.
pub fn run_with(
    config: &RunConfig,
    factory: &dyn LearnerFactory,
    on_event: &mut dyn FnMut(&Event),
    launch: &(dyn Fn(&WorkerFn<'_>) -> Vec<Result<WorkerOutcome>> + Sync),
) -> Result<RunReport> {
    let (tx, rx) = mpsc::channel::<Event>();
    let results = std::thread::scope(|s| {
        let workers = s.spawn(move || {
            let emit = move |e: Event| {
                // The receiver outlives the workers; a send can only fail if it panicked.
                let _ = tx.send(e);
            };
            let work = |comm: &mut dyn Communicator| run_worker(comm, factory, config, &emit);
            launch(&work)
        });
        if config.algorithm.is_async() {
            let mut order = TimeOrder::new(config.workers);
            for event in rx {
                order.push(event, on_event);
            }
            order.finish(on_event);
        } else {
            let mut reorder = Reorder::new(config.workers);
            for event in rx {
                reorder.push(event, on_event);
            }
            reorder.finish(on_event);
        }
        workers.join()
    });
    let results = results.map_err(|_| Error::Panic {
        worker: 0,
        message: "runner thread died".into(),
    })?;
    let mut outcomes = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(o) => outcomes.push(o),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(root_cause(errors));
    }
    let mut final_evals: Vec<EvalRecord> = outcomes
        .iter()
        .flat_map(|o| o.final_evals.clone())
        .collect();
    if config.algorithm.is_async() {
        // Asynchronous workers never gather: the runner evaluates the final average, leader
        // or center model itself.
        for e in final_evaluations(config, factory, &outcomes)? {
            on_event(&Event::Eval(e.clone()));
            final_evals.push(e);
        }
    }
    Ok(RunReport {
        steps: outcomes.iter().map(|o| o.steps).max().unwrap_or(0),
        seconds: outcomes.iter().map(|o| o.seconds).fold(0.0, f64::max),
        final_evals,
        workers: outcomes,
    })
}

/// Runs one worker to the end of its budget. Every worker of `comm` must call it with the
/// same config; `emit` receives this worker's events. With `[compression]` on, the
/// algorithm talks through the compression layer around `comm`.
pub fn run_worker(
    comm: &mut dyn Communicator,
    factory: &dyn LearnerFactory,
    config: &RunConfig,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<WorkerOutcome> {
    let layer = CompressionLayer::new(&config.compression, config.seed, config.algorithm.name());
    match layer {
        None => run_worker_on(comm, None, factory, config, emit),
        Some(layer) => {
            let mut compressed = layer.wrap(comm);
            run_worker_on(&mut compressed, Some(layer), factory, config, emit)
        }
    }
}

fn run_worker_on(
    comm: &mut dyn Communicator,
    compression: Option<CompressionLayer>,
    factory: &dyn LearnerFactory,
    config: &RunConfig,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<WorkerOutcome> {
    let (prepared, algorithm) = prepare(comm, compression, factory, config, emit)?;
    match algorithm {
        Worker::Asynchronous(algorithm) => {
            asynchronous::run_async_worker(comm, config, emit, prepared, algorithm)
        }
        Worker::Synchronous(algorithm) => {
            synchronous::run_sync_worker(comm, config, emit, prepared, algorithm)
        }
    }
}
