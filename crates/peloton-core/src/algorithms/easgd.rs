//! Synchronous elastic averaging SGD (Zhang, Choromanska, LeCun 2015), ALGORITHMS.md §2.
//!
//! Every τ steps, with the *time-t* values on both sides (the symmetric elastic force):
//!
//! ```text
//! x_i ← x_i − η·g_i(x_i) − α·(x_i − x̃)
//! x̃  ← x̃ + α·Σ_i (x_i − x̃)   =  (1 − β)·x̃ + β·mean_i(x_i),   β = N·α
//! ```
//!
//! The center x̃ is replicated on every worker and updated with one all-reduce of the elastic
//! differences δ_i = α(x_i − x̃), as in torch-distlearn's AllReduceEA. Because our all-reduce
//! sums in rank order and returns the same bits everywhere, the replicas never drift apart
//! (no periodic re-broadcast is needed). Between communications workers do plain local steps.
//!
//! EAMSGD is the same exchange with a Nesterov-momentum local optimizer (validated by the
//! config). The gradient of a communication step is taken at the pre-pull point, as in the
//! equations and the author's code.
//!
//! Communication: one all-reduce of B bytes every τ steps (≈2B(N−1)/N each way).

use serde::{Deserialize, Serialize};

use super::{
    Algorithm, AlgorithmSpec, Every, Observation, RunShape, StepContext, Synchronous, Touches,
};
use crate::checkpoint::StateDict;
use crate::ensure_config;
use crate::kernels;
use crate::transport::{Communicator, ReduceOp};
use crate::Result;

/// `name = "easgd"` (and, through [`EamsgdConfig`], `"eamsgd"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EasgdConfig {
    /// τ: local steps between two elastic exchanges (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau: Option<u64>,
    /// α, the moving rate of each worker (α = η·ρ). Give α or β, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f32>,
    /// β = N·α, the moving rate of the center (default 0.9, the paper's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f32>,
}

const DEFAULT_TAU: u64 = 4;
const DEFAULT_BETA: f32 = 0.9;

impl EasgdConfig {
    pub fn tau(&self) -> u64 {
        self.tau.unwrap_or(DEFAULT_TAU)
    }

    /// α for a world of `workers`.
    pub fn alpha(&self, workers: usize) -> f32 {
        self.alpha
            .unwrap_or(self.beta.unwrap_or(DEFAULT_BETA) / workers as f32)
    }

    pub fn validate(&self, workers: usize) -> Result<()> {
        ensure_config!(self.tau() > 0, "algorithm.tau must be at least 1");
        ensure_config!(
            self.alpha.is_none() || self.beta.is_none(),
            "set either algorithm.alpha or algorithm.beta (β = N·α), not both"
        );
        let alpha = self.alpha(workers);
        ensure_config!(
            alpha > 0.0 && alpha <= 1.0,
            "algorithm.alpha must be in (0, 1], got {alpha}"
        );
        let beta = alpha * workers as f32;
        ensure_config!(
            beta <= 1.0,
            "the center's moving rate β = N·α = {beta} exceeds 1: the center would overshoot the workers' mean; lower algorithm.alpha or algorithm.beta"
        );
        Ok(())
    }

    pub fn init(&self, workers: usize, len: usize) -> Easgd {
        Easgd {
            tau: self.tau(),
            alpha: self.alpha(workers),
            center: vec![0.0; len],
            delta: vec![0.0; len],
            delta_sum: vec![0.0; len],
            pending: false,
        }
    }
}

impl AlgorithmSpec for EasgdConfig {
    const NAME: &'static str = "easgd";
    const SUMMARY: &'static str = "synchronous elastic averaging toward a replicated center";
    const HAS_CENTER: bool = true;
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(self.init(run.workers, len)))
    }
}

/// `name = "eamsgd"`: the keys of `easgd`, with a Nesterov-momentum local optimizer (checked).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EamsgdConfig {
    pub easgd: EasgdConfig,
}

impl AlgorithmSpec for EamsgdConfig {
    const NAME: &'static str = "eamsgd";
    const SUMMARY: &'static str = "EASGD with a Nesterov-momentum local optimizer";
    const HAS_CENTER: bool = true;
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        ensure_config!(
            run.optimizer.momentum > 0.0 && run.optimizer.nesterov,
            "eamsgd needs a Nesterov-momentum local optimizer: set optimizer.momentum > 0 (the paper uses 0.99) and optimizer.nesterov = true"
        );
        self.easgd.validate(run.workers)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(self.easgd.init(run.workers, len)))
    }
}

/// One worker's EASGD state: its replica of the center and its last elastic difference.
pub struct Easgd {
    tau: u64,
    alpha: f32,
    center: Vec<f32>,
    delta: Vec<f32>,
    delta_sum: Vec<f32>,
    /// True between `before_step` and `after_step` of a communication step.
    pending: bool,
}

impl Algorithm for Easgd {
    // `delta` and `delta_sum` live within one communication step (`pending`), never across one.
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        state.put_f32s("center", &self.center);
        Ok(())
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        state.f32s_into("center", &mut self.center)
    }
    fn setup(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        // The center starts at the workers' average: worker 0's parameters when the run
        // synchronizes the initialization (the default, like the author's server initialized
        // by the first client), and the exact midpoint of symmetric starts otherwise.
        self.center.copy_from_slice(params);
        comm.all_reduce(&mut self.center, ReduceOp::Mean)
    }

    fn before_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        if !Every::steps(self.tau).due(ctx.step) {
            return Ok(());
        }
        // δ_i = α(x_i − x̃) at time t, before the gradient step.
        kernels::sub_into(&mut self.delta, ctx.params, &self.center);
        kernels::scale(&mut self.delta, self.alpha);
        self.delta_sum.copy_from_slice(&self.delta);
        ctx.comm.all_reduce(&mut self.delta_sum, ReduceOp::Sum)?;
        kernels::axpy(&mut self.center, 1.0, &self.delta_sum);
        self.pending = true;
        Ok(())
    }

    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        if self.pending {
            kernels::sub_assign(ctx.params, &self.delta);
            self.pending = false;
        }
        Ok(())
    }
    /// The elastic difference is taken before the step and applied after it.
    fn touches(&self, step: u64) -> Touches {
        Touches::params_around_step(Every::steps(self.tau).due(step))
    }

    fn observe(&mut self) -> Observation<'_> {
        Observation {
            center: Some(&self.center),
            ..Default::default()
        }
    }
}
