//! Distributed algorithms, one file each, built from the blocks in [`leader`].
//!
//! An algorithm is a config type implementing [`AlgorithmSpec`] (its name, keys, validation,
//! timing and how to build one worker's state), registered in the [`registry`]; a config file's
//! `[algorithm]` table becomes an [`AlgorithmConfig`] through it. The built worker implements
//! [`Algorithm`] (and [`AsyncAlgorithm`] when it is asynchronous). The runner calls its hooks
//! around every local step:
//!
//! ```text
//! algorithm.before_compute(x)                // combine-while-computing sends start here
//! loss, grad = learner.loss_and_grad(x)      // mini-batch at the current parameters
//! algorithm.before_step(ctx)                 // gradient ready: all-reduce SGD averages it here
//! optimizer.step(x, grad, lr)                // the local optimizer (SGD / momentum / Nesterov)
//! algorithm.after_step(ctx)                  // parameters updated: pulls, averaging, gossip
//! ...
//! algorithm.drain(x)                         // before every evaluation and at the end
//! ```
//!
//! [`Algorithm::touches`] says which buffers each of these hooks uses at a step, so that a model
//! living on a GPU is copied to the host only where an algorithm communicates.
//!
//! The decentralized family (D-PSGD, SGP, MATCHA, AL-DSGD) takes its communication pattern
//! from a peloton-topology schedule and mixes through the shared [`gossip`] block.
//!
//! Algorithms talk only through `&mut dyn Communicator`, so one implementation runs on every
//! transport.

pub mod adpsgd;
pub mod aldsgd;
pub mod all_reduce;
pub mod async_easgd;
pub mod async_lsgd;
pub mod asynchronous;
pub mod choco;
mod config;
pub mod dpsgd;
pub mod easgd;
pub mod gossip;
pub mod independent;
pub mod layered;
pub mod leader;
pub mod local_sgd;
pub mod lsgd;
pub mod matcha;
pub mod registry;
pub mod sgp;
pub mod slowmo;

use crate::checkpoint::StateDict;
use crate::learner::HostBuffers;
use crate::transport::Communicator;
use crate::{Error, Result};

pub use adpsgd::AdPsgdConfig;
pub use aldsgd::AlDsgdConfig;
pub use all_reduce::AllReduceConfig;
pub use async_easgd::{AsyncEamsgdConfig, AsyncEasgdConfig};
pub use async_lsgd::AsyncLsgdConfig;
pub use config::AlgorithmConfig;
pub use dpsgd::DpsgdConfig;
pub use easgd::{EamsgdConfig, EasgdConfig};
pub use gossip::LinkStats;
pub use independent::IndependentConfig;
pub use layered::LayeredSgdConfig;
pub use local_sgd::LocalSgdConfig;
pub use lsgd::LsgdConfig;
pub use matcha::MatchaConfig;
pub use registry::{
    register, AlgorithmSpec, Asynchronous, Registration, RunShape, Synchronous, Worker,
};
pub use sgp::SgpConfig;
pub use slowmo::SlowMoConfig;

/// What an algorithm sees at one local step: the context every step-phase hook takes.
pub struct StepContext<'a> {
    pub comm: &'a mut dyn Communicator,
    pub params: &'a mut [f32],
    /// The mini-batch gradient of this step (after `before_step`, what the optimizer used).
    /// In `before_compute` it is not computed yet and still holds the previous step's.
    pub grad: &'a mut [f32],
    /// Index of this local step, counted from 0.
    pub step: u64,
    /// This step's mini-batch loss, at the parameters before the step; NaN in
    /// `before_compute`, where it is not known yet.
    pub loss: f64,
    /// The leader metric: mean of the last K mini-batch losses, this one included (in
    /// `before_compute`: the previous K).
    pub metric: f64,
    /// The learning rate of this step.
    pub lr: f32,
}

/// What an algorithm reports for the metrics, at log points and at the end (see
/// [`Algorithm::observe`]); a field is `None` where the algorithm has no such thing.
#[derive(Default)]
pub struct Observation<'a> {
    /// The world rank of the current (global) leader (leader-based algorithms).
    pub leader: Option<usize>,
    /// How many times the (global) leader changed so far (leader-based algorithms).
    pub leader_changes: Option<u64>,
    /// The center variable (EASGD); also what evaluation model "center" evaluates.
    pub center: Option<&'a [f32]>,
    /// Per-link traffic (algorithms that talk to individual peers).
    pub links: Option<&'a mut LinkStats>,
}

/// "Every `period` local steps", the rhythm of most communication: due at the step that
/// completes `offset + period`, `offset + 2·period`, … steps (steps are counted from 0, so
/// with no offset at steps `period − 1`, `2·period − 1`, …). `offset` delays the first
/// round (post-local SGD's warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every {
    pub period: u64,
    pub offset: u64,
}

impl Every {
    /// Every `period` steps from the start.
    pub fn steps(period: u64) -> Self {
        Every { period, offset: 0 }
    }

    /// Whether the round falls on local step `step` (counted from 0).
    pub fn due(self, step: u64) -> bool {
        let done = step + 1;
        done > self.offset && (done - self.offset).is_multiple_of(self.period)
    }
}

/// Which host buffers each step hook of an algorithm touches (reads or writes) at one step.
///
/// A loop whose model lives on a GPU keeps it there and copies it to the host buffers only
/// where a hook touches them (see [`crate::learner::Learner::host_access`]): an algorithm that
/// talks every τ steps costs two model copies every τ steps, not every step. Saying too much
/// only costs copies; saying too little gives a hook stale values, so the default is
/// everything, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touches {
    pub before_compute: HostBuffers,
    pub before_step: HostBuffers,
    pub after_step: HostBuffers,
}

impl Touches {
    /// Every buffer at every hook: right for any algorithm.
    pub const ALL: Self = Touches {
        before_compute: HostBuffers::PARAMS_AND_GRAD,
        before_step: HostBuffers::PARAMS_AND_GRAD,
        after_step: HostBuffers::PARAMS_AND_GRAD,
    };
    /// Nothing at all (a step without communication).
    pub const NONE: Self = Touches {
        before_compute: HostBuffers::NONE,
        before_step: HostBuffers::NONE,
        after_step: HostBuffers::NONE,
    };

    /// Only the gradient, in `before_step` (gradient averaging).
    pub fn gradient_hook(when: bool) -> Self {
        Touches {
            before_step: if when {
                HostBuffers::GRAD
            } else {
                HostBuffers::NONE
            },
            ..Touches::NONE
        }
    }

    /// Only the parameters, in `after_step` (pulls, model averaging, gossip after the step).
    pub fn after_step_params(when: bool) -> Self {
        Touches {
            after_step: if when {
                HostBuffers::PARAMS
            } else {
                HostBuffers::NONE
            },
            ..Touches::NONE
        }
    }

    /// Only the parameters, in `before_step` and `after_step` (a difference taken before the
    /// step and applied after it: EASGD's elastic force).
    pub fn params_around_step(when: bool) -> Self {
        let params = if when {
            HostBuffers::PARAMS
        } else {
            HostBuffers::NONE
        };
        Touches {
            before_step: params,
            after_step: params,
            ..Touches::NONE
        }
    }

    /// Both sets, hook by hook.
    pub fn union(self, other: Self) -> Self {
        Touches {
            before_compute: self.before_compute.union(other.before_compute),
            before_step: self.before_step.union(other.before_step),
            after_step: self.after_step.union(other.after_step),
        }
    }
}

/// One worker's state of a distributed algorithm. Every hook is collective where the
/// algorithm communicates: all workers call it at the same step.
pub trait Algorithm: Send {
    /// Called once before the first step, after the parameters are initialized (and
    /// broadcast from worker 0 when the run asks for it).
    fn setup(&mut self, _comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        Ok(())
    }
    /// The parameters are about to be used for this step's gradient (communication that
    /// overlaps the gradient computation starts here).
    fn before_compute(&mut self, _ctx: &mut StepContext<'_>) -> Result<()> {
        Ok(())
    }
    /// The gradient is ready; the local optimizer has not stepped yet.
    fn before_step(&mut self, _ctx: &mut StepContext<'_>) -> Result<()> {
        Ok(())
    }
    /// The local optimizer has stepped.
    fn after_step(&mut self, _ctx: &mut StepContext<'_>) -> Result<()> {
        Ok(())
    }
    /// Completes communication still in flight so that `params` holds all of this worker's
    /// mass (overlap SGP). Collective; called before every evaluation and at the end.
    fn drain(&mut self, _comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        Ok(())
    }
    /// What the metrics record of this algorithm: leader, center, per-link traffic.
    fn observe(&mut self) -> Observation<'_> {
        Observation::default()
    }
    /// Which host buffers the hooks of local step `step` (counted from 0) touch; see
    /// [`Touches`]. The default, everything, is always right; an algorithm that communicates
    /// only now and then says when, so a model on a GPU is copied only then.
    fn touches(&self, _step: u64) -> Touches {
        Touches::ALL
    }

    // ---- Checkpoints (see [`crate::checkpoint`]) -------------------------------------------

    /// Writes everything this worker needs to continue exactly from here. Called at a step
    /// boundary after [`Algorithm::drain`], so nothing is in flight. Scratch buffers that every
    /// step overwrites are not state. An algorithm that keeps the default cannot be
    /// checkpointed, and says so.
    fn save_state(&self, _state: &mut StateDict) -> Result<()> {
        Err(Error::Checkpoint(
            "this algorithm cannot be checkpointed".into(),
        ))
    }
    /// Restores what [`Algorithm::save_state`] wrote, after [`Algorithm::setup`] ran again.
    fn load_state(&mut self, _state: &StateDict) -> Result<()> {
        Err(Error::Checkpoint(
            "this algorithm cannot be checkpointed".into(),
        ))
    }
}

/// An algorithm built around another one (SlowMo around local SGD or SGP, asynchronous LSGD
/// around LSGD's rounds): implement this instead of [`Algorithm`], say where the inner
/// algorithm is, and override only the hooks that differ — every other hook, the
/// observations and the checkpoint state go to the inner algorithm.
pub trait Wrapper: Send {
    /// The wrapped algorithm.
    fn inner(&mut self) -> &mut dyn Algorithm;
    /// The wrapped algorithm, for the hooks that only read it.
    fn inner_ref(&self) -> &dyn Algorithm;

    fn setup(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        self.inner().setup(comm, params)
    }
    fn before_compute(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        self.inner().before_compute(ctx)
    }
    fn before_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        self.inner().before_step(ctx)
    }
    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        self.inner().after_step(ctx)
    }
    fn drain(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        self.inner().drain(comm, params)
    }
    /// Everything, always: a wrapper's own hooks may touch what the inner algorithm's do not.
    /// A wrapper that knows better says so (SlowMo: the inner algorithm's, plus its slow step).
    fn touches(&self, _step: u64) -> Touches {
        Touches::ALL
    }
    fn observe(&mut self) -> Observation<'_> {
        self.inner().observe()
    }
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        self.inner_ref().save_state(state)
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        self.inner().load_state(state)
    }
}

impl<W: Wrapper> Algorithm for W {
    fn setup(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        Wrapper::setup(self, comm, params)
    }
    fn before_compute(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        Wrapper::before_compute(self, ctx)
    }
    fn before_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        Wrapper::before_step(self, ctx)
    }
    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        Wrapper::after_step(self, ctx)
    }
    fn drain(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        Wrapper::drain(self, comm, params)
    }
    fn observe(&mut self) -> Observation<'_> {
        Wrapper::observe(self)
    }
    fn touches(&self, step: u64) -> Touches {
        Wrapper::touches(self, step)
    }
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        Wrapper::save_state(self, state)
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        Wrapper::load_state(self, state)
    }
}

/// The hooks of an asynchronous algorithm, on top of [`Algorithm`]'s: the runner hands out
/// work through a global work counter instead of a per-worker step count and never
/// synchronizes the workers itself (see [`asynchronous`]). Registered with
/// [`Asynchronous`] timing, whose `build` returns one of these.
pub trait AsyncAlgorithm: Algorithm {
    /// τ of algorithms with collective rounds: a [`AsyncAlgorithm::round`] after every N·τ
    /// steps of the whole run; `None` for algorithms without rounds.
    fn round_tau(&self) -> Option<u64> {
        None
    }
    /// Collective round `index` of an asynchronous algorithm with rounds; `metric` is this
    /// worker's leader metric. Every worker takes part in every round.
    fn round(
        &mut self,
        _comm: &mut dyn Communicator,
        _params: &mut [f32],
        _index: u64,
        _metric: f64,
    ) -> Result<()> {
        Ok(())
    }
    /// Called once after the worker's last step, before it leaves (asynchronous algorithms:
    /// a passive AD-PSGD worker keeps answering its peers until every worker is done).
    fn finish(&mut self, _comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        Ok(())
    }
    /// Staleness of the models pulled or averaged since the previous call, in this worker's
    /// steps: (mean, max); `None` when nothing was received.
    fn staleness(&mut self) -> Option<(f64, u64)> {
        None
    }
    /// Whether this worker must keep answering its peers while it waits at a checkpoint cut
    /// for the others (a passive AD-PSGD worker: an active peer still in its step waits for
    /// the reply). Such a worker's [`AsyncAlgorithm::serve_at_cut`] is called until every other
    /// worker has reached the cut.
    fn serves_at_cut(&self, _rank: usize) -> bool {
        false
    }
    /// Answers what peers sent so far (see [`AsyncAlgorithm::serves_at_cut`]).
    fn serve_at_cut(&mut self, _comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        Ok(())
    }
}
