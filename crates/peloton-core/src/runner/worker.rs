//! One worker's side of a run, shared by the synchronous and asynchronous loops: the
//! collective preparation ([`prepare`]), the state both loops work on ([`Local`]), one local
//! step, and the clock.

use std::time::Instant;

use super::divergence::DivergenceGuard;
use super::records::at_the_end;
use super::traffic::DiagnosticTraffic;
use super::{Event, RunConfig, WorkerOutcome};
use crate::algorithms::leader::LossWindow;
use crate::algorithms::{Algorithm, RunShape, StepContext, Worker};
use crate::flat::Flat;
use crate::learner::{Access, HostBuffers, Learner, LearnerContext, LearnerFactory};
use crate::optim::Sgd;
use crate::transport::compressed::{CompressionLayer, Phase};
use crate::transport::{CommStats, Communicator, CommunicatorExt};
use crate::{Error, Result};

/// One worker's state after the collective preparation shared by every algorithm.
pub(super) struct Prepared {
    learner: Box<dyn crate::learner::Learner>,
    params: Flat,
    grad: Flat,
    pub total_steps: Option<u64>,
    state_len: usize,
    shared_state: Vec<f32>,
    diag: DiagnosticTraffic,
    pub layout_fingerprint: u64,
    compression: Option<CompressionLayer>,
}

/// Builds the learner, agrees on the model, initializes the parameters and the algorithm,
/// and works out the step budget (collective: every worker calls it).
pub(super) fn prepare(
    comm: &mut dyn Communicator,
    compression: Option<CompressionLayer>,
    factory: &dyn LearnerFactory,
    config: &RunConfig,
    emit: &(dyn Fn(Event) + Sync),
) -> Result<(Prepared, Worker)> {
    let rank = comm.rank();
    let n = comm.size();
    let mut learner = factory.build(LearnerContext {
        rank,
        workers: n,
        seed: config.seed,
    })?;
    let len = learner.layout().len();
    let mut diag = DiagnosticTraffic::default();
    if let Some(layer) = &compression {
        // The initial model broadcast below stays exact: the layer is in its Exact phase.
        layer.set_model(learner.layout())?;
    }

    // Ranks agree on the model before anything else moves.
    let fingerprint = learner.layout().fingerprint();
    diag.run(comm, |c| {
        c.agree("the model size (parameter count)", len as u64)?;
        c.agree("the model layout (tensor names and shapes)", fingerprint)
    })?;

    let state_len = learner.shared_state_len();
    diag.run(comm, |c| {
        c.agree(
            "the size of the averaged model state (BatchNorm statistics)",
            state_len as u64,
        )
    })?;
    let shared_state = vec![0.0f32; state_len];

    // A loop outside peloton shares its model's memory; other learners get the runner's own.
    let (mut params, grad) = match learner.shared_buffers() {
        Some((params, grad)) => {
            if params.len() != len || grad.len() != len {
                return Err(Error::Config(format!(
                    "the learner's shared buffers hold {} and {} values, its model {len}",
                    params.len(),
                    grad.len()
                )));
            }
            (Flat::Shared(params), Flat::Shared(grad))
        }
        None => (Flat::zeros(len), Flat::zeros(len)),
    };
    learner.init_params(&mut params);
    if config.sync_init {
        comm.broadcast(&mut params, 0)?;
    }
    let run = RunShape {
        workers: n,
        seed: config.seed,
        optimizer: &config.optimizer,
    };
    let mut algorithm = config.algorithm.build(&run, len)?;
    set_phase(compression.as_ref(), Phase::Models);
    algorithm.as_algorithm_mut().setup(comm, &mut params)?;

    let total_steps = match (config.steps, config.epochs) {
        (steps, None) => steps,
        (steps, Some(epochs)) => {
            let per_epoch = learner.steps_per_epoch().ok_or_else(|| {
                Error::Config(
                    "an epochs budget needs a problem with a finite dataset; give steps instead"
                        .into(),
                )
            })?;
            // Shards may differ by a sample: every worker must run the same number of steps.
            let fewest = diag.run(comm, |c| {
                Ok(c.gather_scalar(per_epoch as f64)?
                    .into_iter()
                    .fold(f64::INFINITY, f64::min))
            })?;
            let from_epochs = (epochs * fewest).ceil().max(1.0) as u64;
            Some(steps.map_or(from_epochs, |s| s.min(from_epochs)))
        }
    };
    if rank == 0 {
        emit(Event::Started {
            workers: n,
            params: len,
            steps: total_steps,
        });
    }

    Ok((
        Prepared {
            learner,
            params,
            grad,
            total_steps,
            state_len,
            shared_state,
            diag,
            layout_fingerprint: fingerprint,
            compression,
        },
        algorithm,
    ))
}

/// What both loops work on: the worker's learner and parameters, its optimizer, its losses
/// and leader metric, the averaged model state and the diagnostic traffic.
pub(super) struct Local {
    pub learner: Box<dyn Learner>,
    pub params: Flat,
    /// The latest mini-batch gradient.
    pub grad: Flat,
    /// Room for a model besides the worker's own (an average, the center).
    pub scratch: Vec<f32>,
    pub optimizer: Sgd,
    /// The last K mini-batch losses (the leader metric).
    pub window: LossWindow,
    /// Every step's mini-batch loss.
    pub losses: Vec<f64>,
    pub state_len: usize,
    /// The model state averaged before evaluations (BatchNorm statistics).
    pub shared_state: Vec<f32>,
    pub diag: DiagnosticTraffic,
    /// The compression layer around the communicator (`[compression]`), whose phase the
    /// steps set and whose state checkpoints keep.
    pub compression: Option<CompressionLayer>,
}

impl Local {
    /// The state after the shared preparation, with room for `capacity` losses.
    pub(super) fn new(prepared: Prepared, config: &RunConfig, capacity: usize) -> Self {
        let Prepared {
            learner,
            params,
            grad,
            total_steps: _,
            state_len,
            shared_state,
            diag,
            layout_fingerprint: _,
            compression,
        } = prepared;
        let len = params.len();
        let scratch = vec![0.0f32; len];
        let optimizer = config.optimizer.init(learner.layout());
        let window = LossWindow::new(config.leader_window);
        Self {
            learner,
            params,
            grad,
            scratch,
            optimizer,
            window,
            losses: Vec::with_capacity(capacity),
            state_len,
            shared_state,
            diag,
            compression,
        }
    }

    /// This worker's outcome: its model, losses, leader metric and shared state, what the
    /// algorithm observed at the end (per-link traffic, the center, the leader changes), and
    /// the loop's counts; no final evaluations and no fault stop (the loop adds its own).
    pub(super) fn outcome(
        self,
        algorithm: &mut dyn Algorithm,
        rank: usize,
        steps: u64,
        seconds: f64,
        stats: CommStats,
    ) -> WorkerOutcome {
        let (links, center, leader_changes) = at_the_end(algorithm);
        WorkerOutcome {
            rank,
            stats,
            links,
            center,
            params: self.params.into_vec(),
            losses: self.losses,
            final_evals: Vec::new(),
            steps,
            seconds,
            metric: self.window.mean(),
            shared_state: self.shared_state,
            stopped_at: None,
            leader_changes,
            compression: self.compression.as_ref().map(CompressionLayer::stats),
        }
    }
}

/// A worker's clock: virtual time on the simulator, wall-clock time elsewhere (a resumed run
/// continues from the checkpoint's time).
pub(super) struct Clock {
    start: Instant,
    /// Seconds before `start` (a resumed run's time at its checkpoint).
    pub offset: f64,
}

impl Clock {
    pub(super) fn start() -> Self {
        Self {
            start: Instant::now(),
            offset: 0.0,
        }
    }

    pub(super) fn now(&self, comm: &dyn Communicator) -> f64 {
        comm.now()
            .unwrap_or_else(|| self.offset + self.start.elapsed().as_secs_f64())
    }
}

/// The algorithm's hook before this step's gradient: its context holds the step's learning
/// rate and the leader metric so far; the loss is not known yet (NaN) and `grad` still holds
/// the previous step's gradient.
pub(super) fn before_compute(
    algorithm: &mut dyn Algorithm,
    comm: &mut dyn Communicator,
    local: &mut Local,
    step: u64,
    lr: f32,
) -> Result<()> {
    let touched = algorithm.touches(step).before_compute;
    if touched.any() {
        local.learner.host_access(touched, Access::Write)?;
    }
    set_phase(local.compression.as_ref(), Phase::Models);
    algorithm.before_compute(&mut StepContext {
        comm,
        params: &mut local.params,
        grad: &mut local.grad,
        step,
        loss: f64::NAN,
        metric: local.window.mean(),
        lr,
    })
}

/// One local step once its compute is charged: the mini-batch gradient (a NaN/∞ loss stops the
/// run naming the worker), the leader metric, and the algorithm's hooks around the local
/// optimizer. Returns the mini-batch loss. Shared by the synchronous and asynchronous loops.
pub(super) fn local_step(
    comm: &mut dyn Communicator,
    local: &mut Local,
    algorithm: &mut dyn Algorithm,
    step: u64,
    lr: f32,
    guard: Option<&mut DivergenceGuard>,
) -> Result<f64> {
    let Local {
        learner,
        params,
        grad,
        optimizer,
        window,
        compression,
        ..
    } = local;
    let compression = compression.as_ref();
    let (params, grad): (&mut [f32], &mut [f32]) = (params, grad);
    let touches = algorithm.touches(step);
    let mut loss = learner.loss_and_grad(params, grad)?;
    // A learner whose gradient stays on its device reports a non-finite one as a non-finite
    // loss; the host gradient it left holds finite values.
    let finite = loss.is_finite() && grad.iter().all(|g| g.is_finite());
    match guard {
        None if !finite => {
            return Err(Error::Diverged {
                worker: comm.rank(),
                step,
                loss: if loss.is_finite() { f64::NAN } else { loss },
            })
        }
        None => window.push(loss),
        Some(guard) => {
            if finite {
                window.push(loss);
            }
            // A diverged worker is reset to the leader's exact model.
            set_phase(compression, Phase::Exact);
            let mut to_host = |access| learner.host_access(HostBuffers::PARAMS, access);
            let reset = guard.check(
                comm,
                params,
                &mut to_host,
                (finite, window.mean()),
                step,
                loss,
            )?;
            set_phase(compression, Phase::Models);
            if reset {
                // This worker diverged: it now holds the leader's parameters. Its momentum
                // belongs to the diverged trajectory, and its metric is NaN for K steps, so it
                // cannot lead before it has K good losses of its own.
                optimizer.clear();
                learner.clear_optimizer()?;
                window.push(f64::NAN);
                loss = learner.loss_and_grad(params, grad)?;
                if !(loss.is_finite() && grad.iter().all(|g| g.is_finite())) {
                    return Err(Error::Diverged {
                        worker: comm.rank(),
                        step,
                        loss,
                    });
                }
            }
        }
    }
    let mut ctx = StepContext {
        comm,
        params,
        grad,
        step,
        loss,
        metric: window.mean(),
        lr,
    };
    if touches.before_step.any() {
        learner.host_access(touches.before_step, Access::Write)?;
    }
    set_phase(compression, Phase::Gradients);
    algorithm.before_step(&mut ctx)?;
    set_phase(compression, Phase::Models);
    // A loop outside peloton may step its own optimizer (PyTorch's).
    match learner.optimizer_step(ctx.params, ctx.grad, lr) {
        Some(stepped) => stepped?,
        None => {
            learner.host_access(HostBuffers::PARAMS_AND_GRAD, Access::Write)?;
            optimizer.step(ctx.params, ctx.grad, lr)
        }
    }
    if touches.after_step.any() {
        learner.host_access(touches.after_step, Access::Write)?;
    }
    algorithm.after_step(&mut ctx).map(|()| loss)
}

/// Tells the compression layer, where there is one, what the next collectives carry.
fn set_phase(layer: Option<&CompressionLayer>, phase: Phase) {
    if let Some(layer) = layer {
        layer.set_phase(phase);
    }
}
