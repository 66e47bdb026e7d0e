//! # peloton-sim
//!
//! A deterministic simulator **transport**: the same algorithm code that runs on threads and
//! MPI runs here, doing its real computation, while time is virtual. Each worker has a clock
//! advanced by a compute model (per-step times: constant or from FLOPs, per-worker speeds,
//! log-normal noise, stragglers, injected slowdowns and stops) and by an α-β network model
//! (intra- and inter-node links, per-link overrides, NIC contention; collectives costed as
//! ring / tree algorithms). Metrics are stamped with virtual time, so test error can be
//! plotted against simulated wall-clock time for any cluster shape; a run also reports time
//! spent computing, communicating and blocked per worker, bytes per link, and a
//! Chrome/Perfetto trace.
//!
//! ```text
//! run_sim(config, cluster, factory) ── N threads ── SimComm (Communicator) ── shared state:
//!                                                   clocks, mailboxes, NICs, collectives
//! ```

pub mod bench;
pub mod cluster;
pub mod compute;
pub mod cost;
pub mod engine;
pub mod trace;

pub use cluster::{ClusterConfig, CollectiveAlgorithm, Fault, FaultKind, Link, LinkOverride};
pub use compute::ComputeModel;
pub use engine::{run_workers, SimComm, SimReport, SimWorld};

use peloton_core::learner::LearnerFactory;
use peloton_core::runner::{run_with, Event, RunConfig, RunReport};
use peloton_core::Result;

/// Runs `config` in the simulator on `cluster`: like `run_threads`, with every time in the
/// events and the report virtual. Returns the run's report and the simulator's (plus the
/// trace as JSON when `cluster.trace_events > 0`).
pub fn run_sim(
    config: &RunConfig,
    cluster: &ClusterConfig,
    factory: &dyn LearnerFactory,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(RunReport, SimReport, Option<String>)> {
    config.validate()?;
    cluster.validate(config.workers)?;
    // A worker stopped by a fault leaves for good: an asynchronous cut would wait for it, and
    // a resumed run could not bring it back.
    peloton_core::ensure_config!(
        config.checkpoint.is_none()
            || !config.algorithm.is_async()
            || cluster.faults.iter().all(|f| f.kind != FaultKind::Stop),
        "checkpoints of an asynchronous run cannot be combined with \"stop\" faults (a stopped worker never reaches a checkpoint cut)"
    );
    let world = std::sync::Mutex::new(None);
    let report = run_with(config, factory, on_event, &|work| match run_workers(
        config.workers,
        cluster,
        config.seed,
        |comm| work(comm),
    ) {
        Ok((results, sim)) => {
            *world.lock().unwrap_or_else(|e| e.into_inner()) = Some(sim);
            results
        }
        Err(e) => vec![Err(e)],
    })?;
    let sim = world
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .expect("the simulator ran");
    let trace = (cluster.trace_events > 0).then(|| sim.trace_json());
    Ok((report, sim.report(), trace))
}
