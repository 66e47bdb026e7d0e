//! Layered SGD (Yu, Flynn, Yoo, D'Imperio 2019), ALGORITHMS.md §6: synchronous data-parallel
//! SGD whose gradient averaging is split in two layers.
//!
//! Workers form subgroups of `group_size` consecutive ranks (a node); the first worker of each
//! subgroup is its *communicator*. Every step:
//!
//! ```text
//! 1. reduce the gradients inside the subgroup to its communicator   (fast, intra-node)
//! 2. all-reduce among the communicators only                         (slow, inter-node)
//! 3. broadcast the result back inside the subgroup
//! ```
//!
//! The result is the mean gradient over all workers, as in all-reduce SGD (summation order
//! differs, so they agree to f32 rounding, not bit for bit), but only one worker per node
//! crosses the slow network. In the paper the inter-subgroup phase overlaps the workers'
//! loading of the next batch; peloton's learners hold their data in memory, so on the threads
//! and MPI transports there is no I/O latency to hide and the phases run back to back (the
//! simulator charges each phase on its own link).
//!
//! Communication per step: a non-communicator sends B and receives B; a communicator receives
//! (g−1)·B, all-reduces B among the N/g communicators and sends (g−1)·B.

use serde::{Deserialize, Serialize};

use super::{Algorithm, AlgorithmSpec, RunShape, StepContext, Synchronous, Touches};
use crate::checkpoint::StateDict;
use crate::ensure_config;
use crate::kernels;
use crate::transport::{Communicator, ReduceOp};
use crate::Result;

/// `name = "layered-sgd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayeredSgdConfig {
    /// Workers per subgroup (node); must divide the number of workers.
    #[serde(default = "default_group_size")]
    pub group_size: usize,
}

fn default_group_size() -> usize {
    2
}

impl Default for LayeredSgdConfig {
    fn default() -> Self {
        Self {
            group_size: default_group_size(),
        }
    }
}

impl LayeredSgdConfig {
    pub fn validate(&self, workers: usize) -> Result<()> {
        let g = self.group_size;
        ensure_config!(
            g >= 1 && g <= workers && workers.is_multiple_of(g),
            "algorithm.group_size = {g} must divide the number of workers ({workers})"
        );
        Ok(())
    }

    pub fn init(&self, workers: usize) -> LayeredSgd {
        LayeredSgd {
            group_size: self.group_size,
            workers,
            subgroup: None,
            communicators: None,
        }
    }
}

impl AlgorithmSpec for LayeredSgdConfig {
    const NAME: &'static str = "layered-sgd";
    const SUMMARY: &'static str =
        "gradients reduced inside nodes, all-reduced among node communicators";
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers)
    }

    fn build(&self, run: &RunShape<'_>, _len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(self.init(run.workers)))
    }
}

/// One worker's layered-SGD state.
pub struct LayeredSgd {
    group_size: usize,
    workers: usize,
    subgroup: Option<Box<dyn Communicator>>,
    /// The group of communicators (only meaningful on subgroup roots).
    communicators: Option<Box<dyn Communicator>>,
}

impl Algorithm for LayeredSgd {
    // Stateless between steps (the groups are rebuilt by `setup`): nothing to save.
    fn save_state(&self, _state: &mut StateDict) -> Result<()> {
        Ok(())
    }
    fn load_state(&mut self, _state: &StateDict) -> Result<()> {
        Ok(())
    }
    fn setup(&mut self, comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        let rank = comm.rank();
        self.subgroup = Some(comm.split(rank / self.group_size, rank)?);
        let is_root = rank.is_multiple_of(self.group_size);
        self.communicators = Some(comm.split(usize::from(!is_root), rank)?);
        Ok(())
    }

    fn before_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        let (Some(subgroup), Some(communicators)) =
            (self.subgroup.as_mut(), self.communicators.as_mut())
        else {
            return Err(crate::Error::Config("layered-sgd used before setup".into()));
        };
        subgroup.reduce(ctx.grad, 0, ReduceOp::Sum)?;
        if subgroup.rank() == 0 {
            communicators.all_reduce(ctx.grad, ReduceOp::Sum)?;
            kernels::scale(ctx.grad, 1.0 / self.workers as f32);
        }
        subgroup.broadcast(ctx.grad, 0)
    }
    fn touches(&self, _step: u64) -> Touches {
        Touches::gradient_hook(true)
    }
}
