//! The [`Learner`]: one worker's local training problem (model + data), seen through a flat
//! parameter buffer. Algorithms never see a model or a dataset, only this trait.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::StateDict;
use crate::flat::SharedBuffer;
use crate::layout::ParamLayout;
use crate::{Error, Result};

/// Where a learner sits in the run; passed to the factory that builds each worker's learner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnerContext {
    /// This worker's rank, `0..workers`.
    pub rank: usize,
    pub workers: usize,
    /// The run seed: the learner derives its shared (dataset) and per-worker (sampling,
    /// initialization) streams from it with [`crate::seed::derive`].
    pub seed: u64,
}

/// The result of evaluating a parameter vector on held-out data (or the exact objective).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Test loss, or the exact objective for analytic problems.
    pub loss: f64,
    /// Classification accuracy in [0, 1], when the problem has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<f64>,
    /// Norm of the full (training) gradient, when cheap to compute: a stationarity check.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
}

/// Which of a worker's host buffers (parameters, gradient, averaged model state) something
/// reads or writes: what a
/// learner whose model lives off the host (a GPU) has to copy, see [`Learner::host_access`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostBuffers {
    pub params: bool,
    pub grad: bool,
    /// The model state averaged before evaluations ([`Learner::read_shared_state`]).
    pub state: bool,
}

impl HostBuffers {
    pub const NONE: Self = HostBuffers {
        params: false,
        grad: false,
        state: false,
    };
    pub const PARAMS: Self = HostBuffers {
        params: true,
        ..Self::NONE
    };
    pub const GRAD: Self = HostBuffers {
        grad: true,
        ..Self::NONE
    };
    /// The parameters and the gradient.
    pub const PARAMS_AND_GRAD: Self = HostBuffers {
        params: true,
        grad: true,
        state: false,
    };
    pub const STATE: Self = HostBuffers {
        state: true,
        ..Self::NONE
    };

    pub fn any(self) -> bool {
        self.params || self.grad || self.state
    }

    /// Both sets together.
    pub fn union(self, other: Self) -> Self {
        HostBuffers {
            params: self.params || other.params,
            grad: self.grad || other.grad,
            state: self.state || other.state,
        }
    }
}

/// How the runner is about to use host buffers: see [`Learner::host_access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// It only reads them (a checkpoint, a record, the consensus distance).
    Read,
    /// It reads and may change them (an algorithm's hook, a reset, a resume).
    Write,
}

/// One worker's local training.
///
/// Contract: the learner owns its data stream (seeded from [`LearnerContext`]), so calling
/// `loss_and_grad` the same number of times with the same parameters gives the same losses on
/// every run.
pub trait Learner: Send {
    /// The segment table of the parameter buffer.
    fn layout(&self) -> &ParamLayout;

    /// Writes this worker's initial parameters (`params.len() == layout().len()`).
    fn init_params(&mut self, params: &mut [f32]);

    /// Draws the next mini-batch, writes the gradient of its loss at `params` into `grad`, and
    /// returns the mini-batch loss (at `params`, before any step).
    fn loss_and_grad(&mut self, params: &[f32], grad: &mut [f32]) -> Result<f64>;

    /// Evaluates `params` on held-out data, or computes the exact objective.
    fn evaluate(&mut self, params: &[f32]) -> Result<Evaluation>;

    /// Local steps in one pass over this worker's shard, when the data is finite.
    fn steps_per_epoch(&self) -> Option<u64> {
        None
    }

    /// Length of the model's non-trainable state that the runner averages over all workers
    /// before every evaluation — BatchNorm running statistics under the "average" policy.
    /// 0 (the default) when there is none, or when it stays local to each worker.
    fn shared_state_len(&self) -> usize {
        0
    }

    /// Copies that state into `out` (`shared_state_len()` values).
    fn read_shared_state(&mut self, _out: &mut [f32]) {}

    /// Replaces that state by `state`.
    fn write_shared_state(&mut self, _state: &[f32]) {}

    /// The parameter and gradient buffers, when this learner's model lives in memory shared
    /// with a training loop outside peloton (see [`crate::external`]): the runner then works
    /// on them in place instead of on vectors of its own, and `init_params`, `loss_and_grad`
    /// and the optimizer step get exactly these buffers. `None` (the default): the runner's own.
    fn shared_buffers(&self) -> Option<(Arc<SharedBuffer>, Arc<SharedBuffer>)> {
        None
    }

    /// For a learner whose model lives somewhere else than the host buffers (a loop's model on
    /// a GPU, see [`crate::external`]): the runner is about to use the host buffers `which`, so
    /// the learner brings them up to date (copies its newer values in) and, after an
    /// [`Access::Write`], copies them back before its model is used again. Everything the
    /// runner and the algorithms do with the buffers is announced through this, so such a
    /// learner copies only where an algorithm communicates (see
    /// [`crate::algorithms::Algorithm::touches`]). The default does nothing: the host
    /// buffers are the model.
    fn host_access(&mut self, _which: HostBuffers, _access: Access) -> Result<()> {
        Ok(())
    }

    /// Takes the local optimizer step itself (a loop outside peloton with an optimizer of its
    /// own, e.g. PyTorch's) with this step's learning rate, instead of peloton's optimizer;
    /// `None` (the default): peloton's optimizer steps.
    fn optimizer_step(
        &mut self,
        _params: &mut [f32],
        _grad: &[f32],
        _lr: f32,
    ) -> Option<Result<()>> {
        None
    }

    /// Forgets the state of the optimizer that [`Learner::optimizer_step`] uses (its momentum),
    /// as peloton's own is cleared when a diverged worker is reset to the leader.
    fn clear_optimizer(&mut self) -> Result<()> {
        Ok(())
    }

    /// Writes what this learner needs to continue exactly from here: its random streams, the
    /// position of its data iterator, non-trainable model state (not the parameters, which the
    /// runner saves). A learner that keeps the default cannot be checkpointed, and says so.
    fn save_state(&mut self, _state: &mut StateDict) -> Result<()> {
        Err(Error::Checkpoint(
            "this learner cannot be checkpointed".into(),
        ))
    }

    /// Restores what [`Learner::save_state`] wrote, on a freshly built learner.
    fn load_state(&mut self, _state: &StateDict) -> Result<()> {
        Err(Error::Checkpoint(
            "this learner cannot be checkpointed".into(),
        ))
    }
}

/// Builds the learner of each worker. Called once per worker, on that worker's thread.
pub trait LearnerFactory: Sync {
    fn build(&self, ctx: LearnerContext) -> Result<Box<dyn Learner>>;
}

impl<F> LearnerFactory for F
where
    F: Fn(LearnerContext) -> Result<Box<dyn Learner>> + Sync,
{
    fn build(&self, ctx: LearnerContext) -> Result<Box<dyn Learner>> {
        self(ctx)
    }
}
