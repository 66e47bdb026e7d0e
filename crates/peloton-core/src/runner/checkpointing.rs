//! What a worker saves at a checkpoint and restores when it resumes: the runner's state both
//! loops keep, the synchronous loop's file at a step, the optimizer's, learner's, algorithm's
//! and transport's states, and the traffic counters carried across a resume.

use super::traffic::Traffic;
use super::worker::Local;
use super::{Event, RunConfig};
use crate::algorithms::Algorithm;
use crate::checkpoint::{self, Identity, StateDict, WorkerCheckpoint};
use crate::learner::Learner;
use crate::optim::Sgd;
use crate::transport::{CommStats, Communicator, CommunicatorExt};
use crate::{Error, Result};

/// Traffic counters as a checkpoint stores them.
fn stats_to(s: CommStats) -> [u64; 3] {
    [s.bytes_sent, s.bytes_received, s.operations]
}

/// Traffic counters from a checkpoint.
fn stats_from(v: &[u64]) -> Result<CommStats> {
    match v {
        &[bytes_sent, bytes_received, operations] => Ok(CommStats {
            bytes_sent,
            bytes_received,
            operations,
        }),
        _ => Err(Error::Checkpoint(
            "traffic counters must be three numbers".into(),
        )),
    }
}

/// What a synchronous worker saves at a checkpoint, besides the state both loops keep and its
/// algorithm's own state.
pub(super) struct WorkerState<'a> {
    pub local: &'a mut Local,
    pub interval: (f64, u64),
    pub seconds: f64,
    pub traffic: &'a Traffic,
    pub algorithm: &'a mut dyn Algorithm,
}

/// Writes this worker's file of the checkpoint at `step` (collective: messages still in
/// flight are drained first, so no push-sum mass is lost) and tells the caller.
pub(super) fn save_checkpoint(
    comm: &mut dyn Communicator,
    config: &RunConfig,
    identity: Option<&Identity>,
    step: u64,
    emit: &(dyn Fn(Event) + Sync),
    state: WorkerState<'_>,
) -> Result<()> {
    let Some(identity) = identity else {
        return Ok(());
    };
    let local = state.local;
    state.algorithm.drain(comm, &mut local.params)?;
    let transport = comm.checkpoint_cut(None)?.unwrap_or_default();
    let mut runner = runner_state(local);
    runner.put_f64("interval_sum", state.interval.0);
    runner.put_u64("interval_count", state.interval.1);
    runner.put_f64("seconds", state.seconds);
    // After the drain: its messages are part of the traffic so far.
    runner.put_u64s("traffic", &stats_to(state.traffic.total(comm.stats())));
    write_checkpoint(
        config,
        identity,
        step,
        emit,
        CheckpointParts {
            runner,
            optimizer: &local.optimizer,
            learner: local.learner.as_mut(),
            algorithm: state.algorithm,
            transport,
        },
    )
}

/// The runner's state both loops save at a checkpoint, once the cut is made: parameters,
/// losses, leader window, shared model state and diagnostic traffic. Each loop adds its own.
pub(super) fn runner_state(local: &Local) -> StateDict {
    let mut runner = StateDict::new();
    runner.put_f32s("params", &local.params);
    runner.put_f64s("losses", &local.losses);
    runner.put_dict("window", local.window.save_state());
    runner.put_f32s("shared_state", &local.shared_state);
    runner.put_u64s("diagnostic_traffic", &stats_to(local.diag.0));
    if let Some(layer) = &local.compression {
        // Every stream's residual: exact resume holds with error feedback on.
        runner.put_dict("compression", layer.save_state());
    }
    runner
}

/// Who a worker's checkpoint files belong to, when the run takes checkpoints.
pub(super) fn checkpoint_identity(
    config: &RunConfig,
    rank: usize,
    workers: usize,
    layout: u64,
) -> Option<Identity> {
    config.checkpoint.as_ref().map(|c| Identity {
        rank: rank as u64,
        workers: workers as u64,
        config: c.fingerprint,
        layout,
        algorithm: config.algorithm.name().to_string(),
    })
}

/// The checkpoint this worker resumes from (`checkpoint.resume`), loaded and checked against
/// its `identity`; `None` when the run starts afresh.
pub(super) fn resumed(
    config: &RunConfig,
    identity: Option<&Identity>,
    rank: usize,
) -> Result<Option<WorkerCheckpoint>> {
    let (Some(c), Some(identity)) = (&config.checkpoint, identity) else {
        return Ok(None);
    };
    let Some(at) = c.resume else {
        return Ok(None);
    };
    let saved = checkpoint::load(&c.worker_file(at, rank))?;
    saved.check(identity, at)?;
    Ok(Some(saved))
}

/// A resumed worker, after its runner's own state: restores the optimizer's, learner's and
/// algorithm's states from `saved`, checks that every worker resumes the same checkpoint (or
/// the run would mix two cuts), and puts back the transport's state at the cut (the
/// simulator's clocks, queues, counters and parameter server). Then the traffic counters:
/// the synchronous loop's totals (`traffic`), and the diagnostic traffic.
pub(super) fn restore_components(
    comm: &mut dyn Communicator,
    config: &RunConfig,
    saved: &WorkerCheckpoint,
    local: &mut Local,
    algorithm: &mut dyn Algorithm,
    traffic: Option<&mut Traffic>,
) -> Result<()> {
    local.optimizer.load_state(&saved.optimizer)?;
    local.learner.load_state(&saved.learner)?;
    match (&local.compression, saved.runner.contains("compression")) {
        (Some(layer), true) => layer.load_state(saved.runner.dict("compression")?)?,
        (None, false) => {}
        (Some(_), false) => return Err(Error::Checkpoint(
            "the checkpoint was taken without [compression]; resume it with the same compression"
                .into(),
        )),
        (None, true) => {
            return Err(Error::Checkpoint(
                "the checkpoint was taken with [compression]; resume it with the same compression"
                    .into(),
            ))
        }
    }
    algorithm
        .load_state(&saved.algorithm)
        .map_err(|e| Error::Checkpoint(format!("{}: {}", config.algorithm.name(), e)))?;
    local.diag.run(comm, |c| {
        c.agree("the checkpoint step to resume", saved.step)
    })?;
    comm.restore_cut(&saved.transport)?;
    let r = &saved.runner;
    if let Some(traffic) = traffic {
        traffic.resume(comm.stats(), stats_from(r.u64s("traffic")?)?);
    }
    // After the agreement above, whose traffic the checkpoint's totals do not hold.
    local.diag.0 = stats_from(r.u64s("diagnostic_traffic")?)?;
    Ok(())
}

/// What a worker's checkpoint file holds besides its identity.
pub(super) struct CheckpointParts<'a> {
    /// The runner's own state (parameters, losses, counters).
    pub runner: StateDict,
    pub optimizer: &'a Sgd,
    pub learner: &'a mut dyn Learner,
    pub algorithm: &'a dyn Algorithm,
    /// The transport's state at the cut (world rank 0's file; empty elsewhere).
    pub transport: StateDict,
}

/// Writes this worker's file of the checkpoint at `step` (atomically) and tells the caller.
pub(super) fn write_checkpoint(
    config: &RunConfig,
    identity: &Identity,
    step: u64,
    emit: &(dyn Fn(Event) + Sync),
    parts: CheckpointParts<'_>,
) -> Result<()> {
    let Some(c) = &config.checkpoint else {
        return Ok(());
    };
    let mut algorithm = StateDict::new();
    parts
        .algorithm
        .save_state(&mut algorithm)
        .map_err(|e| Error::Checkpoint(format!("{}: {}", config.algorithm.name(), e)))?;
    let mut learner = StateDict::new();
    parts.learner.save_state(&mut learner)?;
    let file = WorkerCheckpoint {
        identity: identity.clone(),
        step,
        runner: parts.runner,
        optimizer: parts.optimizer.save_state(),
        algorithm,
        learner,
        transport: parts.transport,
    };
    checkpoint::save(&c.worker_file(step, identity.rank as usize), &file)?;
    emit(Event::Checkpoint {
        step,
        worker: identity.rank as usize,
    });
    Ok(())
}
