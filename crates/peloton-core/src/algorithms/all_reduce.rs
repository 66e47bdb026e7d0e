//! All-reduce SGD (synchronous data parallelism, PyTorch DDP's algorithm): every step the
//! gradients are averaged over all workers before the local optimizer steps, so all workers
//! keep identical parameters and the run equals single-worker SGD on the union of their
//! mini-batches.
//!
//! Communication: one all-reduce of the gradient (≈2B(N−1)/N bytes each way) every step.

use serde::{Deserialize, Serialize};

use super::{Algorithm, AlgorithmSpec, RunShape, StepContext, Synchronous, Touches};
use crate::checkpoint::StateDict;
use crate::transport::ReduceOp;
use crate::Result;

/// `name = "all-reduce"`; no keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllReduceConfig {}

impl AlgorithmSpec for AllReduceConfig {
    const NAME: &'static str = "all-reduce";
    const SUMMARY: &'static str = "gradients averaged over all workers every step";
    type Timing = Synchronous;

    fn build(&self, _run: &RunShape<'_>, _len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(AllReduceSgd))
    }
}

/// Gradient averaging before every step.
pub struct AllReduceSgd;

impl Algorithm for AllReduceSgd {
    // Stateless between steps: nothing to save.
    fn save_state(&self, _state: &mut StateDict) -> Result<()> {
        Ok(())
    }
    fn load_state(&mut self, _state: &StateDict) -> Result<()> {
        Ok(())
    }
    fn before_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        ctx.comm.all_reduce(ctx.grad, ReduceOp::Mean)
    }
    fn touches(&self, _step: u64) -> Touches {
        Touches::gradient_hook(true)
    }
}
